//! One connection's whole behaviour, without I/O: what to send when, which
//! reply finishes which operation, and what each operation measured.
//!
//! The driver (glommio in [`mod@crate::run`], a simulated target in the tests)
//! moves bytes and supplies the time:
//!
//! ```text
//! loop {
//!     read into core.recv_buffer(); core.on_received(now, n)?   // replies
//!     let status = core.poll(now);                               // due requests
//!     write core.tx(); core.on_sent(n)                           // flush
//!     wait for: readable | writable (if tx left) | status.wake_at
//! }
//! ```
//!
//! Invariants: at most `depth` operations in flight, each in one slot of a
//! fixed table whose index is the protocol tag; an operation's latency runs
//! from its intended time (see [`crate::pacer`]) to the decoding of its
//! last reply; a read-modify-write holds its slot through both requests.
//! Fault model: the target may answer with errors (counted), stop answering
//! (operations in flight time out after the reply timeout, or at the
//! phase's stop time) or send garbage (the connection fails and its
//! operations count as errors); none of these panics. A connection that
//! ended its phase with nothing outstanding ([`ConnectionCore::ended_cleanly`])
//! can carry the next phase.

use crate::keys::{KeyOrder, key_len, write_key};
use crate::pacer::{Decision, Pace, Pacer, PacerLimits};
use crate::protocol::{Outcome, Protocol, ProtocolError, Reply, Request};
use crate::stats::{PhaseStats, SharedStats};
use crate::workload::{OpKind, OpSource, Operation};

/// The receive buffer's starting size; it grows for larger replies.
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// A read is offered at least this much free space.
const RECV_SPACE_MIN: usize = 16 * 1024;

/// The most records whose context a [`ContextCache`] keeps (about 100
/// bytes each); writes of records beyond it carry no context.
pub const CONTEXT_CACHE_ENTRIES_MAX: usize = 4 << 20;

/// The latest causal context the target returned for each record, shared by
/// all connections of a run (they run on one thread).
///
/// Why: in holdfast, as in Dynamo, a write without a context supersedes
/// nothing, so a blind update adds a sibling beside the value instead of
/// replacing it, and a hot key's siblings pile up until the node refuses
/// them. YCSB's update means "replace", as Redis's SET does, so the load
/// generator writes like a client that keeps the contexts its replies
/// carry. Concurrent writes of one key can still make siblings; the next
/// write, carrying a context that covers them, resolves them.
#[derive(Debug, Default)]
pub struct ContextCache {
    contexts: std::collections::HashMap<u64, Vec<u8>>,
}

impl ContextCache {
    /// The latest context seen for `record`.
    pub fn get(&self, record: u64) -> Option<&[u8]> {
        self.contexts.get(&record).map(Vec::as_slice)
    }

    /// Keeps `context` as the latest for `record` (while there is room).
    pub fn remember(&mut self, record: u64, context: Vec<u8>) {
        if self.contexts.len() < CONTEXT_CACHE_ENTRIES_MAX || self.contexts.contains_key(&record) {
            self.contexts.insert(record, context);
        }
    }

    /// Records with a context.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether no context is kept.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }
}

/// A [`ContextCache`] shared by the connections on one executor.
pub type SharedContexts = std::rc::Rc<std::cell::RefCell<ContextCache>>;

/// What the connection needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// More to do: wait for a reply, room to write, or `wake_at` (on the
    /// run's clock), whichever comes first.
    Active {
        /// When to call [`ConnectionCore::poll`] again even if nothing
        /// arrives.
        wake_at: u64,
    },
    /// The phase is over for this connection; its stats are final.
    Done,
}

/// An operation in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    op: Operation,
    intended_ns: u64,
    /// For a read-modify-write: whether its write has been sent.
    writing: bool,
}

/// Per-connection options.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionOptions {
    /// How record numbers become keys.
    pub key_order: KeyOrder,
    /// Bytes in every value written.
    pub value_bytes: usize,
    /// Varies the values this connection writes from other connections'.
    pub seed: u64,
    /// With operations in flight and no reply for this long, the target
    /// is taken to be stuck: they time out and the connection is done.
    pub reply_timeout_ns: u64,
}

/// One connection's protocol, schedule, operations in flight and stats.
#[derive(Debug)]
pub struct ConnectionCore<P> {
    protocol: P,
    source: OpSource,
    pacer: Pacer,
    key_order: KeyOrder,
    /// Indexed by tag; `None` is a free slot.
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<u32>,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    tx: Vec<u8>,
    tx_sent: usize,
    key: Vec<u8>,
    value: Vec<u8>,
    writes: u64,
    reply_timeout_ns: u64,
    /// Whether requests have intended times to be late for.
    open_loop: bool,
    /// Contexts for updates, shared by the connections of a run.
    contexts: Option<SharedContexts>,
    /// The last reply, or the last send into an idle connection: with
    /// nothing heard for `reply_timeout_ns` after it, give up.
    heard_ns: u64,
    stats: SharedStats,
    done: bool,
    /// The connection broke or operations were given up on.
    failed: bool,
}

impl<P: Protocol> ConnectionCore<P> {
    /// A connection that will issue `source`'s operations at `pace`
    /// within `limits`. A finite source (the load phase) caps the
    /// operations.
    pub fn new(
        protocol: P,
        source: OpSource,
        pace: Pace,
        limits: PacerLimits,
        options: ConnectionOptions,
    ) -> Self {
        let ops_max = source.remaining().map_or(limits.ops_max, |n| n.min(limits.ops_max));
        let pacer = Pacer::new(pace, PacerLimits { ops_max, ..limits });
        let depth = limits.depth;
        let mut value = vec![0; options.value_bytes];
        crate::keys::fill_value(options.seed, &mut value);
        Self {
            protocol,
            source,
            stats: SharedStats::new(PhaseStats::new(pacer.limits().start_ns).into()),
            pacer,
            key_order: options.key_order,
            slots: vec![None; depth as usize],
            free_slots: (0..depth).rev().collect(),
            rx: vec![0; RECV_BUFFER_BYTES],
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(RECV_BUFFER_BYTES),
            tx_sent: 0,
            key: Vec::with_capacity(key_len(options.key_order)),
            value,
            writes: options.seed.wrapping_mul(1 << 32),
            reply_timeout_ns: options.reply_timeout_ns,
            open_loop: matches!(pace, Pace::Open { .. }),
            contexts: None,
            failed: false,
            heard_ns: limits.start_ns,
            done: false,
        }
    }

    /// Makes updates carry the latest context any connection sharing
    /// `contexts` saw for their record (see [`ContextCache`]).
    pub fn with_contexts(mut self, contexts: SharedContexts) -> Self {
        self.contexts = Some(contexts);
        self
    }

    /// Issues what is due at `now_ns` into the transmit buffer and says
    /// what to wait for next.
    pub fn poll(&mut self, now_ns: u64) -> Status {
        if self.done {
            return Status::Done;
        }
        let decision = loop {
            let idle = self.pacer.in_flight() == 0;
            match self.pacer.poll(now_ns) {
                Decision::Issue { intended_ns } => {
                    if idle {
                        self.heard_ns = now_ns;
                    }
                    // The pacer's budget never exceeds a finite source.
                    let op = self.source.next_op().unwrap_or_else(|| {
                        panic!("operation source ran dry before the pacer's budget")
                    });
                    if self.open_loop {
                        self.stats.borrow_mut().record_send_lag(intended_ns, now_ns);
                    }
                    if let Err(error) = self.issue(op, intended_ns) {
                        self.fail(now_ns, &error.to_string());
                        return Status::Done;
                    }
                }
                decision => break decision,
            }
        };
        let in_flight = self.pacer.in_flight() > 0;
        // Operations in flight are given up on at the phase's stop time, or
        // when the target has been silent for the reply timeout.
        let silent_at = self.heard_ns.saturating_add(self.reply_timeout_ns);
        let stop_ns = if in_flight { self.pacer.limits().stop_ns.min(silent_at) } else { u64::MAX };
        match decision {
            Decision::Finished if !in_flight => {
                self.finish(now_ns);
                Status::Done
            }
            _ if now_ns >= stop_ns => {
                let reason = if now_ns >= silent_at {
                    format!("no reply for {} ms", self.reply_timeout_ns / 1_000_000)
                } else {
                    "still unanswered at the end of the drain time".to_owned()
                };
                self.give_up(now_ns, &reason);
                Status::Done
            }
            // Wake for the next send, and in any case at the stop time to
            // give up on what is still in flight then.
            Decision::WaitUntil(at) => Status::Active { wake_at: at.min(stop_ns) },
            // Waiting for replies (or an idle finished connection, which
            // was handled above): wake only to give up.
            _ => Status::Active { wake_at: stop_ns },
        }
    }

    /// Free space to read into; pass the number of bytes read to
    /// [`ConnectionCore::on_received`].
    pub fn recv_buffer(&mut self) -> &mut [u8] {
        if self.rx_start == self.rx_end {
            (self.rx_start, self.rx_end) = (0, 0);
        }
        if self.rx.len() - self.rx_end < RECV_SPACE_MIN {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            (self.rx_start, self.rx_end) = (0, self.rx_end - self.rx_start);
            if self.rx.len() - self.rx_end < RECV_SPACE_MIN {
                // A reply larger than the buffer: the protocol caps how
                // large, so this growth is bounded.
                self.rx.resize(self.rx.len() * 2, 0);
            }
        }
        &mut self.rx[self.rx_end..]
    }

    /// `n` bytes were read into [`ConnectionCore::recv_buffer`] at
    /// `now_ns`: finishes the operations they answer. On an error the
    /// connection has failed (its operations count as errors) and is done.
    pub fn on_received(&mut self, now_ns: u64, n: usize) -> Result<(), ProtocolError> {
        assert!(self.rx_end + n <= self.rx.len(), "read past the receive buffer");
        self.rx_end += n;
        let received = self.protocol.receive(&self.rx[self.rx_start..self.rx_end]);
        // Replies decoded before a malformed one still count.
        while let Some(reply) = self.protocol.poll_reply() {
            self.heard_ns = now_ns;
            if let Err(error) = self.answer(now_ns, reply) {
                self.fail(now_ns, &error.to_string());
                return Err(error);
            }
        }
        match received {
            Ok(used) => {
                assert!(used <= self.rx_end - self.rx_start, "consumed more than received");
                self.rx_start += used;
                Ok(())
            }
            Err(error) => {
                self.fail(now_ns, &error.to_string());
                Err(error)
            }
        }
    }

    /// Bytes waiting to be written.
    pub fn tx(&self) -> &[u8] {
        &self.tx[self.tx_sent..]
    }

    /// `n` bytes of [`ConnectionCore::tx`] were written.
    pub fn on_sent(&mut self, n: usize) {
        self.tx_sent += n;
        assert!(self.tx_sent <= self.tx.len(), "wrote more than was queued");
        if self.tx_sent == self.tx.len() {
            self.tx.clear();
            self.tx_sent = 0;
        }
    }

    /// The connection broke (`reason`): everything in flight and not yet
    /// sent counts as an error, and the connection is done.
    pub fn fail(&mut self, now_ns: u64, reason: &str) {
        if self.done {
            return;
        }
        let mut stats = self.stats.borrow_mut();
        stats.connection_errors += 1;
        for slot in &mut self.slots {
            if let Some(in_flight) = slot.take() {
                stats.record_error(in_flight.op.kind, || format!("connection: {reason}"), now_ns);
            }
        }
        if stats.first_error.is_none() {
            stats.first_error = Some(format!("connection: {reason}"));
        }
        stats.behind += self.pacer.behind(now_ns);
        self.done = true;
        self.failed = true;
    }

    /// Whether the phase is over for this connection.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the phase ended with every reply received and nothing left
    /// to send or decode, so the connection can carry another phase.
    pub fn ended_cleanly(&self) -> bool {
        self.done
            && !self.failed
            && self.slots.iter().all(Option::is_none)
            && self.rx_start == self.rx_end
            && self.tx().is_empty()
    }

    /// Records into `stats`, shared with the other connections of the
    /// phase, instead of stats of its own; call before the first poll.
    /// (One set of histograms per phase rather than per connection: each
    /// is a few hundred KiB, and zeroing fifty of them at the start of a
    /// run stalled it for tens of milliseconds.)
    pub fn with_shared_stats(mut self, stats: SharedStats) -> Self {
        assert!(self.pacer.issued() == 0, "stats are shared before the first operation");
        self.stats = stats;
        self
    }

    /// What this connection measured (with every connection sharing its
    /// stats, if shared).
    pub fn stats(&self) -> std::cell::Ref<'_, PhaseStats> {
        self.stats.borrow()
    }

    /// Consumes the core, keeping its stats (a copy, if shared).
    pub fn into_stats(self) -> PhaseStats {
        match std::rc::Rc::try_unwrap(self.stats) {
            Ok(stats) => stats.into_inner(),
            Err(shared) => shared.borrow().clone(),
        }
    }

    fn issue(&mut self, op: Operation, intended_ns: u64) -> Result<(), ProtocolError> {
        // The pacer never allows more than `depth` in flight, and there
        // are `depth` slots.
        let tag = self.free_slots.pop().unwrap_or_else(|| panic!("no free slot at depth"));
        self.slots[tag as usize] = Some(InFlight { op, intended_ns, writing: false });
        match op.kind {
            OpKind::Read | OpKind::ReadModifyWrite => self.send_read(op.record, tag),
            OpKind::Insert | OpKind::Update => {
                // A write that read nothing first carries the latest
                // context seen for the record, if any, so that it replaces
                // the value rather than adding a sibling beside it.
                let cache = self.contexts.clone();
                let cached = cache.as_ref().map(|cache| cache.borrow());
                let context = cached.as_ref().and_then(|cache| cache.get(op.record));
                self.send_write(op.record, context.unwrap_or_default(), tag)
            }
        }
    }

    fn send_read(&mut self, record: u64, tag: u32) -> Result<(), ProtocolError> {
        write_key(self.key_order, record, &mut self.key);
        self.protocol.encode(Request::Read { key: &self.key }, tag, &mut self.tx)
    }

    fn send_write(&mut self, record: u64, context: &[u8], tag: u32) -> Result<(), ProtocolError> {
        write_key(self.key_order, record, &mut self.key);
        self.writes = self.writes.wrapping_add(1);
        // Successive writes differ in their first bytes (up to 16 hex
        // digits of a per-connection counter).
        for (i, byte) in self.value.iter_mut().take(16).enumerate() {
            *byte = b"0123456789abcdef"[((self.writes >> (60 - 4 * i)) & 0xf) as usize];
        }
        let request = Request::Write { key: &self.key, value: &self.value, context };
        self.protocol.encode(request, tag, &mut self.tx)
    }

    fn answer(&mut self, now_ns: u64, reply: Reply) -> Result<(), ProtocolError> {
        let unexpected = |detail: String| ProtocolError::Unexpected { detail };
        let tag = reply.tag;
        let Some(mut in_flight) = self.slots.get_mut(tag as usize).and_then(Option::take) else {
            return Err(unexpected(format!("reply to tag {tag} with nothing in flight there")));
        };
        let (kind, record) = (in_flight.op.kind, in_flight.op.record);
        let reading =
            matches!(kind, OpKind::Read) || (kind == OpKind::ReadModifyWrite && !in_flight.writing);
        let latency_ns = now_ns.saturating_sub(in_flight.intended_ns);
        let not_found = matches!(reply.outcome, Outcome::NotFound { .. });
        match reply.outcome {
            Outcome::Failed { message } => {
                self.stats.borrow_mut().record_error(kind, || message, now_ns)
            }
            Outcome::Written { context } => {
                if reading {
                    return Err(unexpected(format!("a write's answer to a {} read", kind.name())));
                }
                self.remember(record, context);
                self.stats.borrow_mut().record(kind, latency_ns, now_ns);
            }
            Outcome::Found { context } | Outcome::NotFound { context } => {
                if !reading {
                    return Err(unexpected(format!("a read's answer to a {} write", kind.name())));
                }
                if not_found {
                    self.stats.borrow_mut().ops[kind.index()].not_found += 1;
                }
                if kind == OpKind::ReadModifyWrite {
                    // The modify step: write back under the context just
                    // read, in the same slot, with the clock still running.
                    in_flight.writing = true;
                    self.slots[tag as usize] = Some(in_flight);
                    let sent = self.send_write(record, &context, tag);
                    self.remember(record, context);
                    return sent;
                }
                self.remember(record, context);
                self.stats.borrow_mut().record(kind, latency_ns, now_ns);
            }
        }
        self.free_slots.push(tag);
        self.pacer.complete();
        Ok(())
    }

    /// Keeps the latest context the target returned for `record`, for the
    /// next blind write of it.
    fn remember(&mut self, record: u64, context: Vec<u8>) {
        if let Some(cache) = &self.contexts
            && !context.is_empty()
        {
            cache.borrow_mut().remember(record, context);
        }
    }

    fn finish(&mut self, now_ns: u64) {
        self.stats.borrow_mut().behind += self.pacer.behind(now_ns);
        self.done = true;
    }

    fn give_up(&mut self, now_ns: u64, reason: &str) {
        self.failed = true;
        for slot in 0..self.slots.len() {
            if let Some(in_flight) = self.slots[slot].take() {
                self.stats.borrow_mut().timeouts += 1;
                let message = || format!("timed out: {reason}");
                self.stats.borrow_mut().record_error(in_flight.op.kind, message, now_ns);
            }
        }
        self.finish(now_ns);
    }
}

#[cfg(test)]
mod tests {
    //! The connection core against a simulated target in virtual time: no
    //! sockets, no clocks, exact and fast.

    use std::collections::VecDeque;

    use super::*;
    use crate::distribution::{DistributionKind, KeyChooser};
    use crate::workload::Workload;

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// A toy protocol: a request is its tag (4 bytes LE) and a kind byte
    /// (0 read, 1 write); a reply is the tag and an outcome byte (0 found,
    /// 1 written, 2 failed).
    #[derive(Debug, Default)]
    struct Toy {
        replies: VecDeque<Reply>,
    }

    impl Protocol for Toy {
        fn encode(
            &mut self,
            request: Request<'_>,
            tag: u32,
            tx: &mut Vec<u8>,
        ) -> Result<(), ProtocolError> {
            tx.extend_from_slice(&tag.to_le_bytes());
            tx.push(u8::from(matches!(request, Request::Write { .. })));
            Ok(())
        }

        fn receive(&mut self, rx: &[u8]) -> Result<usize, ProtocolError> {
            let mut consumed = 0;
            while let Some(reply) = rx.get(consumed..consumed + 5) {
                let tag = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
                let outcome = match reply[4] {
                    0 => Outcome::Found { context: b"ctx".to_vec() },
                    1 => Outcome::Written { context: b"ctx".to_vec() },
                    2 => Outcome::Failed { message: "no".into() },
                    other => {
                        let detail = format!("outcome {other}");
                        return Err(ProtocolError::Malformed { detail });
                    }
                };
                self.replies.push_back(Reply { tag, outcome });
                consumed += 5;
            }
            Ok(consumed)
        }

        fn poll_reply(&mut self) -> Option<Reply> {
            self.replies.pop_front()
        }
    }

    /// A single-threaded target answering in order: each request takes
    /// `service_ns`, except that the first one to start at or after
    /// `stall_at_ns` takes `stall_ns` (a GC pause, a disk hiccup).
    #[derive(Debug)]
    struct Target {
        service_ns: u64,
        stall_at_ns: u64,
        stall_ns: u64,
        stalled: bool,
        free_at_ns: u64,
        /// (done at, reply bytes), in order.
        replies: VecDeque<(u64, [u8; 5])>,
        requests: u64,
        writes: u64,
        silent: bool,
    }

    impl Target {
        fn new(service_ns: u64, stall_at_ns: u64, stall_ns: u64) -> Self {
            Self {
                service_ns,
                stall_at_ns,
                stall_ns,
                stalled: false,
                free_at_ns: 0,
                replies: VecDeque::new(),
                requests: 0,
                writes: 0,
                silent: false,
            }
        }

        fn receive(&mut self, now_ns: u64, bytes: &[u8]) {
            assert_eq!(bytes.len() % 5, 0, "the core writes whole requests here");
            for request in bytes.chunks(5) {
                let start = now_ns.max(self.free_at_ns);
                let mut took = self.service_ns;
                if start >= self.stall_at_ns && !self.stalled {
                    self.stalled = true;
                    took = self.stall_ns;
                }
                self.free_at_ns = start + took;
                self.requests += 1;
                self.writes += u64::from(request[4]);
                let mut reply = [0; 5];
                reply[..4].copy_from_slice(&request[..4]);
                reply[4] = request[4];
                if !self.silent {
                    self.replies.push_back((self.free_at_ns, reply));
                }
            }
        }
    }

    fn core(workload: Workload, pace: Pace, duration_ns: u64, depth: u32) -> ConnectionCore<Toy> {
        let chooser = KeyChooser::new(DistributionKind::Uniform, 1000);
        let limits = PacerLimits {
            start_ns: 0,
            end_ns: duration_ns,
            stop_ns: duration_ns + 10 * S,
            ops_max: u64::MAX,
            depth,
        };
        let options = ConnectionOptions {
            key_order: KeyOrder::Ordered,
            value_bytes: 8,
            seed: 1,
            reply_timeout_ns: 5 * S,
        };
        ConnectionCore::new(
            Toy::default(),
            OpSource::run(workload, chooser, 1),
            pace,
            limits,
            options,
        )
    }

    /// Runs `core` against `target` in virtual time until it is done.
    fn simulate(core: &mut ConnectionCore<Toy>, target: &mut Target) {
        let mut now = 0;
        for _ in 0..10_000_000 {
            let status = core.poll(now);
            let sent = core.tx().to_vec();
            core.on_sent(sent.len());
            target.receive(now, &sent);
            let Status::Active { wake_at } = status else { return };
            let next_reply = target.replies.front().map_or(u64::MAX, |(at, _)| *at);
            now = now.max(wake_at.min(next_reply));
            while target.replies.front().is_some_and(|(at, _)| *at <= now) {
                let (_, reply) = target.replies.pop_front().unwrap();
                core.recv_buffer()[..5].copy_from_slice(&reply);
                core.on_received(now, 5).unwrap();
            }
        }
        panic!("the simulation did not finish");
    }

    fn p(stats: &PhaseStats, kind: OpKind, quantile: f64) -> u64 {
        stats.op(kind).latency_ns.value_at_quantile(quantile)
    }

    /// The reason the load generator has an open loop: one 100 ms stall in
    /// a 10 s run. Open loop at 1000/s, the requests intended during the
    /// stall queue behind it and each counts its wait, so p99.9 shows the
    /// stall; closed loop, the one connection just stops sending, so only
    /// one request (of 100k) is slow and p99.9 hides it.
    #[test]
    fn open_loop_counts_the_queueing_a_closed_loop_hides() {
        let open = Pace::Open { rate: 1000, connections: 1, index: 0 };
        let mut core_open = core(Workload::C, open, 10 * S, 1);
        let mut target = Target::new(100 * US, 5 * S, 100 * MS);
        simulate(&mut core_open, &mut target);
        let open = core_open.into_stats();

        let mut core_closed = core(Workload::C, Pace::Closed, 10 * S, 1);
        let mut target = Target::new(100 * US, 5 * S, 100 * MS);
        simulate(&mut core_closed, &mut target);
        let closed = core_closed.into_stats();

        // Open: exactly the 10 000 scheduled reads, none lost or behind.
        assert_eq!(open.op(OpKind::Read).count(), 10_000);
        assert_eq!((open.total_errors(), open.behind), (0, 0));
        assert!((100 * US..=101 * US).contains(&p(&open, OpKind::Read, 0.5)));
        // About 110 reads were intended during the stall or while its
        // backlog drained: p99 and p99.9 are inside it.
        assert!(p(&open, OpKind::Read, 0.99) > 5 * MS, "{}", p(&open, OpKind::Read, 0.99));
        assert!(p(&open, OpKind::Read, 0.999) > 80 * MS, "{}", p(&open, OpKind::Read, 0.999));

        // Closed: 100 000 reads, one of them slow.
        let reads = closed.op(OpKind::Read);
        assert!(reads.count() > 98_000, "{}", reads.count());
        assert!(p(&closed, OpKind::Read, 0.999) <= 101 * US);
        assert!(reads.latency_ns.max() >= 100 * MS);
    }

    #[test]
    fn open_loop_at_depth_times_the_wait_for_a_free_slot() {
        // 4 in flight allowed, 2 ms service, 1000/s: the target keeps up
        // only with 500/s, so requests wait for slots and the latency grows
        // along the run; every one is still timed from its schedule.
        let pace = Pace::Open { rate: 1000, connections: 1, index: 0 };
        let mut core = core(Workload::C, pace, S, 4);
        let mut target = Target::new(2 * MS, u64::MAX, 0);
        simulate(&mut core, &mut target);
        let stats = core.into_stats();
        assert_eq!(stats.op(OpKind::Read).count(), 1000);
        // The last of 1000 requests finishes near 2 s, intended near 1 s.
        let max = stats.op(OpKind::Read).latency_ns.max();
        assert!((900 * MS..1100 * MS).contains(&max), "{max}");
    }

    #[test]
    fn read_modify_write_is_one_operation_of_two_requests() {
        let mut core = core(Workload::F, Pace::Closed, 100 * MS, 2);
        let mut target = Target::new(50 * US, u64::MAX, 0);
        simulate(&mut core, &mut target);
        let stats = core.into_stats();
        let (reads, rmws) = (stats.op(OpKind::Read), stats.op(OpKind::ReadModifyWrite));
        assert!(reads.count() > 100 && rmws.count() > 100);
        assert_eq!(target.requests, reads.count() + 2 * rmws.count());
        assert_eq!(target.writes, rmws.count());
        // Two service times at least, as the target is serial.
        assert!(p(&stats, OpKind::ReadModifyWrite, 0.5) >= 100 * US);
    }

    #[test]
    fn a_silent_target_times_out_at_the_stop_time() {
        let mut core = core(Workload::A, Pace::Closed, 10 * MS, 8);
        let mut target = Target::new(50 * US, u64::MAX, 0);
        target.silent = true;
        simulate(&mut core, &mut target);
        let stats = core.into_stats();
        assert_eq!((stats.timeouts, stats.total_errors(), stats.total_count()), (8, 8, 8));
        assert_eq!(stats.first_error.as_deref(), Some("timed out: no reply for 5000 ms"));
    }

    #[test]
    fn garbage_fails_the_connection_without_panicking() {
        let mut core = core(Workload::C, Pace::Closed, S, 3);
        assert!(matches!(core.poll(0), Status::Active { .. }));
        core.recv_buffer()[..5].copy_from_slice(&[0, 0, 0, 0, 9]);
        assert!(core.on_received(10, 5).is_err());
        assert!(core.is_done());
        assert_eq!(core.poll(20), Status::Done);
        let stats = core.into_stats();
        assert_eq!((stats.connection_errors, stats.total_errors()), (1, 3));
    }

    #[test]
    fn a_reply_to_an_empty_slot_is_refused() {
        let mut core = core(Workload::C, Pace::Closed, S, 1);
        core.poll(0);
        core.recv_buffer()[..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(core.on_received(10, 10), Err(ProtocolError::Unexpected { .. })));
    }

    #[test]
    fn error_replies_are_counted_not_timed() {
        let mut core = core(Workload::C, Pace::Closed, S, 1);
        core.poll(0);
        core.recv_buffer()[..5].copy_from_slice(&[0, 0, 0, 0, 2]);
        core.on_received(10, 5).unwrap();
        let stats = core.stats();
        assert_eq!(stats.op(OpKind::Read).errors, 1);
        assert!(stats.op(OpKind::Read).latency_ns.is_empty());
    }
}
