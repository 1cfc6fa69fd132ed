//! The sans-IO protocol state of one client connection.
//!
//! [`ClientCore`] never touches a socket or reads a clock. Its driver feeds
//! it operations and the time (`start_*`), the bytes the socket received
//! ([`ClientCore::handle_input`]) and the passing of time
//! ([`ClientCore::handle_timeout`]); it hands back bytes to send
//! ([`ClientCore::pending_transmit`]), the next instant it needs waking at
//! ([`ClientCore::poll_timeout`]) and completed requests
//! ([`ClientCore::poll_completion`]). The same core therefore runs under the
//! blocking client, an async runtime, the load generator, or a test that
//! plays the node itself and controls time exactly.
//!
//! # Invariants
//!
//! - Every started request completes exactly once: with its reply, a node's
//!   error, a timeout, or the connection's loss.
//! - Requests started and not yet collected (in flight, or completed and not
//!   yet polled) never exceed [`CoreOptions::in_flight_max`]: a stalled node
//!   or a driver that forgets to poll costs bounded memory.
//! - Replies are matched by request id, so they may arrive in any order; a
//!   reply for an id not in flight (one that already timed out) is counted
//!   and dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{ClientError, Context, GetResult, ReadOptions, Response, WriteOptions, Written};
use crate::frame::{Frame, FrameDecoder, Kind};
use crate::limits::{
    IN_FLIGHT_MAX_DEFAULT, KEY_BYTES_MAX, REPLY_FRAME_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX,
};
use crate::message::{
    DeleteRequest, GetRequest, MessageError, Ping, PutRequest, Reply, decode_dot,
    encode_message_into,
};

/// Configuration of one connection's protocol state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreOptions {
    /// How long a request may wait for its reply.
    pub timeout: Duration,
    /// The most requests started and not yet collected.
    pub in_flight_max: usize,
    /// The largest reply frame accepted, header included.
    pub reply_frame_bytes_max: u32,
}

impl Default for CoreOptions {
    fn default() -> CoreOptions {
        CoreOptions {
            timeout: Duration::from_secs(5),
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            reply_frame_bytes_max: REPLY_FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

/// Names one request on one connection; the frame's request id. Never 0,
/// which the protocol keeps for messages that expect no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// The id as it travels in the frame header.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A request that finished, one way or another.
#[derive(Debug)]
pub struct Completion {
    /// Which request.
    pub id: RequestId,
    /// Its outcome.
    pub result: Result<Response, ClientError>,
}

/// A request sent and not yet answered.
#[derive(Clone, Copy, Debug)]
struct Pending {
    kind: Kind,
    deadline: Instant,
}

/// The protocol state of one client connection. See the module docs.
#[derive(Debug)]
pub struct ClientCore {
    options: CoreOptions,
    /// The id the next request gets; ids are never reused on a connection,
    /// so a late reply can never be taken for a newer request's.
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    /// `pending`'s deadlines in order, for finding the expired ones.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Encoded frames not yet handed to the socket, coalesced.
    transmit: Vec<u8>,
    decoder: FrameDecoder,
    completions: VecDeque<Completion>,
    closed: bool,
    stray_replies: u64,
}

impl ClientCore {
    /// A fresh connection's state.
    ///
    /// # Panics
    ///
    /// If `options.in_flight_max` is 0, or the frame limit is outside what
    /// [`FrameDecoder::new`] accepts.
    pub fn new(options: CoreOptions) -> ClientCore {
        assert!(options.in_flight_max >= 1, "in_flight_max must be at least 1");
        ClientCore {
            options,
            next_id: 1,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            transmit: Vec::new(),
            decoder: FrameDecoder::new(options.reply_frame_bytes_max),
            completions: VecDeque::new(),
            closed: false,
            stray_replies: 0,
        }
    }

    /// The options this core was built with.
    pub fn options(&self) -> &CoreOptions {
        &self.options
    }

    /// Starts a read of `key`.
    pub fn start_get(
        &mut self,
        now: Instant,
        key: &[u8],
        options: ReadOptions,
    ) -> Result<RequestId, ClientError> {
        self.admit(key, &[])?;
        let request = GetRequest { key: key.to_vec(), r: options.r };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Kind::GET))
    }

    /// Starts a write of `value` to `key`, superseding what `context` covers
    /// (nothing if `None`).
    pub fn start_put(
        &mut self,
        now: Instant,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
        options: WriteOptions,
    ) -> Result<RequestId, ClientError> {
        self.admit(key, value)?;
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.map(|context| context.as_bytes().to_vec()).unwrap_or_default(),
            w: options.w,
        };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Kind::PUT))
    }

    /// Starts a delete of `key`, superseding what `context` covers.
    pub fn start_delete(
        &mut self,
        now: Instant,
        key: &[u8],
        context: &Context,
        options: WriteOptions,
    ) -> Result<RequestId, ClientError> {
        self.admit(key, &[])?;
        let request =
            DeleteRequest { key: key.to_vec(), context: context.as_bytes().to_vec(), w: options.w };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Kind::DELETE))
    }

    /// Starts a ping.
    pub fn start_ping(&mut self, now: Instant) -> Result<RequestId, ClientError> {
        self.admit(&[], &[])?;
        Ok(self.send(now, |out, id| encode_message_into(out, id, &Ping {}), Kind::PING))
    }

    /// Checks that a request may start: the connection is open, there is
    /// room in flight, and the sizes are within the protocol's limits.
    fn admit(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if self.in_flight() >= self.options.in_flight_max {
            return Err(ClientError::InFlightFull { max: self.options.in_flight_max });
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(ClientError::KeyTooLarge { len: key.len(), max: KEY_BYTES_MAX });
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(ClientError::ValueTooLarge { len: value.len(), max: VALUE_BYTES_MAX });
        }
        Ok(())
    }

    fn send(
        &mut self,
        now: Instant,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        kind: Kind,
    ) -> RequestId {
        assert!(!self.closed && self.in_flight() < self.options.in_flight_max);
        let id = self.next_id;
        self.next_id += 1;
        let transmit_before = self.transmit.len();
        encode(&mut self.transmit, id);
        assert!(self.transmit.len() > transmit_before);
        let deadline = now + self.options.timeout;
        let previous = self.pending.insert(id, Pending { kind, deadline });
        assert!(previous.is_none(), "request id {id} reused");
        self.deadlines.insert((deadline, id));
        debug_assert_eq!(self.pending.len(), self.deadlines.len());
        RequestId(id)
    }

    /// The encoded requests waiting to be written to the socket, oldest
    /// first, as one buffer (so many requests leave in one write).
    pub fn pending_transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// Marks the first `written` bytes of [`pending_transmit`](Self::pending_transmit)
    /// as sent.
    ///
    /// # Panics
    ///
    /// If `written` is more than is pending.
    pub fn advance_transmit(&mut self, written: usize) {
        assert!(written <= self.transmit.len(), "advanced past the pending bytes");
        self.transmit.drain(..written);
    }

    /// Takes every byte waiting to be sent, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.transmit.is_empty() { None } else { Some(std::mem::take(&mut self.transmit)) }
    }

    /// Feeds bytes the socket received. Completes every request whose reply
    /// is now whole.
    ///
    /// # Errors
    ///
    /// When the bytes break the framing ([`ClientError::Frame`]): the core
    /// is then closed, every request in flight completes with
    /// [`ClientError::ConnectionLost`], and the driver must close the
    /// socket. [`ClientError::Closed`] if the core was already closed.
    pub fn handle_input(&mut self, mut bytes: &[u8]) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        while !bytes.is_empty() {
            let decoded = match self.decoder.decode(bytes) {
                Ok(decoded) => decoded,
                Err(error) => {
                    self.close();
                    return Err(ClientError::Frame(error));
                }
            };
            assert!(decoded.consumed <= bytes.len());
            bytes = &bytes[decoded.consumed..];
            if let Some(frame) = decoded.frame {
                self.handle_frame(&frame);
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: &Frame) {
        let id = frame.request_id();
        let Some(pending) = self.pending.remove(&id) else {
            // A reply to a request that timed out, or a one-way message this
            // version does not expect: nothing waits for it.
            self.stray_replies += 1;
            return;
        };
        let removed = self.deadlines.remove(&(pending.deadline, id));
        assert!(removed);
        let result = complete(pending.kind, frame);
        self.completions.push_back(Completion { id: RequestId(id), result });
    }

    /// Completes, with [`ClientError::Timeout`], every request whose
    /// deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let pending = self.pending.remove(&id);
            assert!(pending.is_some_and(|pending| pending.deadline == deadline));
            self.completions.push_back(Completion {
                id: RequestId(id),
                result: Err(ClientError::Timeout { timeout: self.options.timeout }),
            });
        }
        debug_assert_eq!(self.pending.len(), self.deadlines.len());
    }

    /// The earliest deadline of a request in flight: when the driver must
    /// call [`handle_timeout`](Self::handle_timeout) if no reply comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// The next completed request, oldest first.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// The connection is gone (the peer closed it, or the socket failed):
    /// every request in flight completes with [`ClientError::ConnectionLost`]
    /// and no new one starts. Idempotent.
    pub fn close(&mut self) {
        self.closed = true;
        self.transmit = Vec::new();
        self.deadlines.clear();
        for (id, _) in std::mem::take(&mut self.pending) {
            self.completions.push_back(Completion {
                id: RequestId(id),
                result: Err(ClientError::ConnectionLost),
            });
        }
    }

    /// Whether the core was closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Requests started and not yet collected: waiting for a reply, or
    /// completed and not yet taken by [`poll_completion`](Self::poll_completion).
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.completions.len()
    }

    /// Requests waiting for a reply.
    pub fn awaiting_reply(&self) -> usize {
        self.pending.len()
    }

    /// Whether the stream is at a frame boundary: a node closing the
    /// connection now closed it cleanly, not in the middle of a reply.
    pub fn at_frame_boundary(&self) -> bool {
        self.decoder.buffered() == 0
    }

    /// Frames received for no request in flight (late replies to requests
    /// that timed out), since the core was made.
    pub fn stray_replies(&self) -> u64 {
        self.stray_replies
    }
}

/// The outcome of a request of `kind` answered by `frame`.
fn complete(kind: Kind, frame: &Frame) -> Result<Response, ClientError> {
    let reply = Reply::decode(frame)?;
    match (kind, reply) {
        (_, Reply::Error(error)) => {
            Err(ClientError::Server { code: error.error_code(), message: error.message })
        }
        (Kind::GET, Reply::Get(reply)) => Ok(Response::Get(GetResult {
            values: reply.values,
            context: Context::from_reply(reply.context)?,
        })),
        (Kind::PUT, Reply::Put(reply)) => {
            Ok(Response::Put(written(Kind::PUT_REPLY, reply.context, &reply.dot)?))
        }
        (Kind::DELETE, Reply::Delete(reply)) => {
            Ok(Response::Delete(written(Kind::DELETE_REPLY, reply.context, &reply.dot)?))
        }
        (Kind::PING, Reply::Pong(_)) => Ok(Response::Pong),
        (request, reply) => Err(ClientError::UnexpectedReply { request, reply: reply.kind() }),
    }
}

/// A write's outcome from its reply's fields.
fn written(kind: Kind, context: Vec<u8>, dot: &[u8]) -> Result<Written, ClientError> {
    let context = Context::from_reply(context)?;
    let Some(dot) = decode_dot(dot) else {
        let reason = "the dot is not one encoded dot".to_string();
        return Err(ClientError::Reply(MessageError::Invalid { kind, reason }));
    };
    Ok(Written { context, dot })
}
