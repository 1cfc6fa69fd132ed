//! The blocking client: [`ClientCore`]s driven over `std::net` sockets.
//!
//! A [`Client`] keeps a small pool of idle connections. Each call takes one
//! (or opens one, trying the addresses in turn), runs its requests on it, and
//! puts it back if it is still healthy; a connection that failed is dropped,
//! so the next call reconnects. Calls may come from many threads at once;
//! each uses its own connection.
//!
//! Time: the driver reads `Instant::now()` and hands it to the core, and
//! sets the socket's read timeout to the core's next deadline, so a request
//! times out within about a tenth of its timeout of when it should.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{
    ClientCore, ClientError, Context, CoreOptions, GetResult, ReadOptions, RequestId, Response,
    WriteOptions, Written,
};
use crate::limits::{IN_FLIGHT_MAX_DEFAULT, REPLY_FRAME_BYTES_MAX_DEFAULT};

/// Configuration of a [`Client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long a request may wait for its reply.
    pub timeout: Duration,
    /// How long opening a connection may take, per address.
    pub connect_timeout: Duration,
    /// The most idle connections kept for reuse. Calls running at the same
    /// time each hold their own connection; beyond this many, connections
    /// are closed when their call ends.
    pub pool_size: usize,
    /// The most requests a [`Batch`] keeps in flight on its connection.
    pub in_flight_max: usize,
    /// The largest reply frame accepted, header included.
    pub reply_frame_bytes_max: u32,
    /// How long a pooled connection may sit idle before it is checked, on
    /// reuse, for a close by the node (say, a restart). Checking costs three
    /// system calls, too many for every request of a busy client; a write on
    /// a connection that died within this window fails with
    /// [`ClientError::ConnectionLost`] rather than being retried.
    pub idle_check_after: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            pool_size: 4,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            reply_frame_bytes_max: REPLY_FRAME_BYTES_MAX_DEFAULT,
            idle_check_after: Duration::from_secs(1),
        }
    }
}

/// One request of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Per-request options.
        options: ReadOptions,
    },
    /// Write a value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The versions the write supersedes.
        context: Option<Context>,
        /// Per-request options.
        options: WriteOptions,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The versions the delete supersedes.
        context: Context,
        /// Per-request options.
        options: WriteOptions,
    },
    /// Ping the node.
    Ping,
}

impl Operation {
    /// Whether sending the operation twice has the same effect as once, so
    /// that it may be retried when its connection broke.
    fn is_idempotent(&self) -> bool {
        matches!(self, Operation::Get { .. } | Operation::Ping)
    }
}

/// Requests to pipeline on one connection: all are sent (up to
/// [`ClientOptions::in_flight_max`] at a time) before their replies are
/// waited for. Built up, then run by [`Client::execute`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    operations: Vec<Operation>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a read of `key`.
    pub fn get(&mut self, key: &[u8]) -> &mut Batch {
        self.push(Operation::Get { key: key.to_vec(), options: ReadOptions::default() })
    }

    /// Adds a write of `value` to `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8], context: Option<&Context>) -> &mut Batch {
        self.push(Operation::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.cloned(),
            options: WriteOptions::default(),
        })
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: &[u8], context: &Context) -> &mut Batch {
        self.push(Operation::Delete {
            key: key.to_vec(),
            context: context.clone(),
            options: WriteOptions::default(),
        })
    }

    /// Adds any operation.
    pub fn push(&mut self, operation: Operation) -> &mut Batch {
        self.operations.push(operation);
        self
    }

    /// The operations, in order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// A blocking client for one holdfast cluster. `Send` and `Sync`: share one
/// per process.
#[derive(Debug)]
pub struct Client {
    addrs: Vec<SocketAddr>,
    options: ClientOptions,
    idle: Mutex<Vec<Connection>>,
    /// Where the next new connection starts trying addresses, so new
    /// connections spread over the nodes.
    next_addr: AtomicUsize,
}

/// The most request bytes queued on a connection before its replies are
/// read. Keeps a batch from writing so much ahead that the node, blocked on
/// sending replies nobody reads, stops reading too.
const BATCH_TRANSMIT_BYTES_MAX: usize = 256 * 1024;

/// Bytes read from the socket at a time.
const READ_BUFFER_BYTES: usize = 64 * 1024;

impl Client {
    /// Resolves `addrs` and opens one connection, to check that the cluster
    /// is reachable.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] if no address resolves or none accepts a
    /// connection.
    ///
    /// # Panics
    ///
    /// If `options.in_flight_max` is 0.
    pub fn connect<A: ToSocketAddrs>(
        addrs: &[A],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        assert!(options.in_flight_max >= 1, "in_flight_max must be at least 1");
        let mut resolved = Vec::new();
        let mut last_error = None;
        for addr in addrs {
            match addr.to_socket_addrs() {
                Ok(found) => resolved.extend(found),
                Err(error) => last_error = Some(error),
            }
        }
        if resolved.is_empty() {
            let source = last_error
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address given"));
            return Err(ClientError::Connect { addrs: resolved, source });
        }
        let client = Client {
            addrs: resolved,
            options,
            idle: Mutex::new(Vec::new()),
            next_addr: AtomicUsize::new(0),
        };
        let connection = client.open()?;
        client.check_in(connection);
        Ok(client)
    }

    /// The resolved addresses, in the order given.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Reads `key`: its siblings and context.
    pub fn get(&self, key: &[u8]) -> Result<GetResult, ClientError> {
        self.get_with(key, ReadOptions::default())
    }

    /// Reads `key` with per-request options.
    pub fn get_with(&self, key: &[u8], options: ReadOptions) -> Result<GetResult, ClientError> {
        match self.call(&Operation::Get { key: key.to_vec(), options })? {
            Response::Get(result) => Ok(result),
            other => unreachable!("a get completed as {other:?}"),
        }
    }

    /// Writes `value` to `key`, superseding what `context` covers, and
    /// returns the key's context after the write and the new version's dot.
    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
    ) -> Result<Written, ClientError> {
        self.put_with(key, value, context, WriteOptions::default())
    }

    /// Writes with per-request options.
    pub fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
        options: WriteOptions,
    ) -> Result<Written, ClientError> {
        let operation = Operation::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.cloned(),
            options,
        };
        match self.call(&operation)? {
            Response::Put(written) => Ok(written),
            other => unreachable!("a put completed as {other:?}"),
        }
    }

    /// Deletes `key`, superseding what `context` covers, and returns the
    /// key's context after the delete and the tombstone's dot.
    pub fn delete(&self, key: &[u8], context: &Context) -> Result<Written, ClientError> {
        self.delete_with(key, context, WriteOptions::default())
    }

    /// Deletes with per-request options.
    pub fn delete_with(
        &self,
        key: &[u8],
        context: &Context,
        options: WriteOptions,
    ) -> Result<Written, ClientError> {
        let operation = Operation::Delete { key: key.to_vec(), context: context.clone(), options };
        match self.call(&operation)? {
            Response::Delete(written) => Ok(written),
            other => unreachable!("a delete completed as {other:?}"),
        }
    }

    /// Asks a node to answer, and returns the round trip time.
    pub fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.call(&Operation::Ping)? {
            Response::Pong => Ok(started.elapsed()),
            other => unreachable!("a ping completed as {other:?}"),
        }
    }

    /// Runs every operation of `batch` pipelined on one connection and
    /// returns their outcomes in the batch's order.
    ///
    /// If the connection breaks, the operations in flight fail with
    /// [`ClientError::ConnectionLost`] and those not yet sent with
    /// [`ClientError::Closed`] (safe to send again).
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] if no connection could be had.
    pub fn execute(
        &self,
        batch: &Batch,
    ) -> Result<Vec<Result<Response, ClientError>>, ClientError> {
        let operations = batch.operations();
        let mut connection = self.check_out()?;
        let mut results: Vec<Option<Result<Response, ClientError>>> =
            operations.iter().map(|_| None).collect();
        let mut index_of: std::collections::BTreeMap<RequestId, usize> = Default::default();
        let (mut next, mut done) = (0, 0);
        while done < operations.len() {
            let now = Instant::now();
            while next < operations.len()
                && connection.core.in_flight() < self.options.in_flight_max
                && connection.core.pending_transmit().len() < BATCH_TRANSMIT_BYTES_MAX
            {
                match connection.start(now, &operations[next]) {
                    Ok(id) => {
                        index_of.insert(id, next);
                    }
                    Err(error) => {
                        results[next] = Some(Err(error));
                        done += 1;
                    }
                }
                next += 1;
            }
            connection.flush();
            connection.wait();
            while let Some(completion) = connection.core.poll_completion() {
                let index = index_of.remove(&completion.id).expect("a batch request completed");
                assert!(results[index].is_none(), "operation {index} completed twice");
                results[index] = Some(completion.result);
                done += 1;
            }
        }
        assert!(index_of.is_empty());
        self.check_in(connection);
        Ok(results
            .into_iter()
            .map(|result| result.expect("every operation of a batch completes"))
            .collect())
    }

    /// Runs one operation, retrying an idempotent one once on a fresh
    /// connection when a pooled connection turns out to be dead.
    fn call(&self, operation: &Operation) -> Result<Response, ClientError> {
        let mut connection = self.check_out()?;
        let result = connection.run(operation);
        let result = match result {
            Err(ClientError::ConnectionLost | ClientError::Closed)
                if connection.reused && operation.is_idempotent() =>
            {
                connection = self.open()?;
                connection.run(operation)
            }
            result => result,
        };
        self.check_in(connection);
        result
    }

    /// An idle pooled connection that still looks alive, or a new one.
    fn check_out(&self) -> Result<Connection, ClientError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some(mut connection) = idle else {
                return self.open();
            };
            let idle_for = connection.last_used.elapsed();
            if idle_for < self.options.idle_check_after || connection.is_alive() {
                connection.reused = true;
                return Ok(connection);
            }
        }
    }

    /// Returns a connection to the pool if it is healthy, idle, and the pool
    /// has room; otherwise closes it.
    fn check_in(&self, mut connection: Connection) {
        if connection.core.is_closed() || connection.core.in_flight() > 0 {
            return;
        }
        connection.last_used = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.options.pool_size {
            idle.push(connection);
        }
    }

    /// Opens a connection, trying each address once, starting from a
    /// different one each time.
    fn open(&self) -> Result<Connection, ClientError> {
        let first = self.next_addr.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..self.addrs.len() {
            let addr = self.addrs[(first + offset) % self.addrs.len()];
            match Connection::open(addr, &self.options) {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = Some(error),
            }
        }
        let source = last_error.expect("a client has at least one address");
        Err(ClientError::Connect { addrs: self.addrs.clone(), source })
    }
}

/// One socket and the protocol state riding on it.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    core: ClientCore,
    read_buffer: Vec<u8>,
    /// The read timeout currently set on the socket, to skip the system call
    /// when it would barely change.
    read_timeout: Option<Duration>,
    last_used: Instant,
    /// Whether the connection came from the pool (so it may have died while
    /// idle) rather than being opened for this call.
    reused: bool,
}

impl Connection {
    fn open(addr: SocketAddr, options: &ClientOptions) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, options.connect_timeout)?;
        // Requests are small and latency matters more than packet count;
        // coalescing is done by the core, which writes batches in one call.
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(options.timeout))?;
        let core = ClientCore::new(CoreOptions {
            timeout: options.timeout,
            in_flight_max: options.in_flight_max,
            reply_frame_bytes_max: options.reply_frame_bytes_max,
        });
        Ok(Connection {
            stream,
            core,
            read_buffer: vec![0; READ_BUFFER_BYTES],
            read_timeout: None,
            last_used: Instant::now(),
            reused: false,
        })
    }

    fn start(&mut self, now: Instant, operation: &Operation) -> Result<RequestId, ClientError> {
        match operation {
            Operation::Get { key, options } => self.core.start_get(now, key, *options),
            Operation::Put { key, value, context, options } => {
                self.core.start_put(now, key, value, context.as_ref(), *options)
            }
            Operation::Delete { key, context, options } => {
                self.core.start_delete(now, key, context, *options)
            }
            Operation::Ping => self.core.start_ping(now),
        }
    }

    /// Sends one operation and waits for its outcome.
    fn run(&mut self, operation: &Operation) -> Result<Response, ClientError> {
        assert_eq!(self.core.in_flight(), 0, "a pooled connection has nothing in flight");
        let id = self.start(Instant::now(), operation)?;
        self.flush();
        loop {
            self.wait();
            if let Some(completion) = self.core.poll_completion() {
                assert_eq!(completion.id, id, "the only request in flight completed");
                return completion.result;
            }
        }
    }

    /// Writes every queued request. A failed write closes the core, which
    /// completes everything in flight as lost.
    fn flush(&mut self) {
        let transmit = self.core.pending_transmit();
        if transmit.is_empty() {
            return;
        }
        match self.stream.write_all(transmit) {
            Ok(()) => {
                let written = transmit.len();
                self.core.advance_transmit(written);
            }
            Err(_) => self.core.close(),
        }
    }

    /// Blocks until some request completes (by reply, timeout or the
    /// connection's loss), or returns at once if none is awaited.
    fn wait(&mut self) {
        loop {
            let now = Instant::now();
            self.core.handle_timeout(now);
            if self.core.in_flight() > self.core.awaiting_reply() {
                return; // Something completed.
            }
            let Some(deadline) = self.core.poll_timeout() else {
                return; // Nothing awaited (or the core is closed).
            };
            let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(1));
            if self.set_read_timeout(wait).is_err() {
                self.core.close();
                return;
            }
            match self.stream.read(&mut self.read_buffer) {
                // The node closed the connection.
                Ok(0) => self.core.close(),
                Ok(len) => {
                    // A framing error closes the core itself; the requests
                    // in flight complete as lost and the socket is dropped
                    // with the connection.
                    let _ = self.core.handle_input(&self.read_buffer[..len]);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => self.core.close(),
            }
        }
    }

    /// Sets the socket's read timeout to about `wait`: at once if that is
    /// sooner than the current one by more than a tenth, or much later (a
    /// timeout that is only a little late costs nothing; one that is early
    /// costs a spurious wake-up and another call).
    fn set_read_timeout(&mut self, wait: Duration) -> io::Result<()> {
        let current = self.read_timeout;
        let needed = current.is_none_or(|current| wait < current * 9 / 10 || wait > current * 2);
        if needed {
            self.stream.set_read_timeout(Some(wait))?;
            self.read_timeout = Some(wait);
        }
        Ok(())
    }

    /// Whether the node has not closed the connection while it sat idle. A
    /// peek that would block means alive; end of stream or an error, dead.
    /// Bytes waiting (late replies to timed-out requests) mean alive.
    fn is_alive(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let alive = match self.stream.peek(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(error) => error.kind() == io::ErrorKind::WouldBlock,
        };
        self.stream.set_nonblocking(false).is_ok() && alive
    }
}
