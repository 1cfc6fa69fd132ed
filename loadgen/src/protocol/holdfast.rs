//! holdfast's binary protocol, through the client library's own sans-IO
//! core ([`holdfast_net::client::ClientCore`]): the load generator frames,
//! validates and matches replies exactly as every holdfast client does, so
//! what it measures is what applications get.
//!
//! This adapter only translates: a read is `start_get`, a write
//! `start_put` with the context a read returned (empty: none), and each
//! completion becomes a [`Reply`] under the tag its request was sent with
//! (replies may come back in any order; the core matches them by request
//! id). Timeouts are the connection core's business ([`crate::connection`]
//! gives up on a silent target), so the client core's own deadlines are
//! set beyond them and never polled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use holdfast_net::client::{
    ClientCore, ClientError, Completion, Context, CoreOptions, ReadOptions, Response, WriteOptions,
};

use super::{Outcome, Protocol, ProtocolError, Reply, Request};

/// The client core's per-request deadline: far beyond any reply timeout
/// the load generator uses, since it never asks the core about deadlines.
const CORE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The holdfast codec of one connection.
#[derive(Debug)]
pub struct Holdfast {
    core: ClientCore,
    /// Request id to the tag it was sent with.
    tags: HashMap<u64, u32>,
    /// The instant handed to the core as "now" (it only uses it for the
    /// deadlines this adapter never polls; see the module doc).
    epoch: Instant,
}

impl Holdfast {
    /// A codec allowing `depth` requests in flight.
    pub fn new(depth: u32) -> Self {
        let options = CoreOptions {
            timeout: CORE_TIMEOUT,
            in_flight_max: depth as usize,
            ..CoreOptions::default()
        };
        Self { core: ClientCore::new(options), tags: HashMap::new(), epoch: Instant::now() }
    }
}

/// What a completed request means to the load generator. Every failure of
/// one request is counted against that request; failures of the whole
/// connection surface from [`Protocol::receive`] instead.
fn outcome(completion: Completion) -> Outcome {
    match completion.result {
        Ok(Response::Get(read)) => {
            let context = read.context.into_bytes();
            if read.values.is_empty() {
                Outcome::NotFound { context }
            } else {
                Outcome::Found { context }
            }
        }
        Ok(Response::Put(written)) => Outcome::Written { context: written.context.into_bytes() },
        Ok(other) => Outcome::Failed { message: format!("unexpected response {other:?}") },
        Err(error) => Outcome::Failed { message: error.to_string() },
    }
}

impl Protocol for Holdfast {
    fn encode(
        &mut self,
        request: Request<'_>,
        tag: u32,
        tx: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let encode_error = |error: ClientError| ProtocolError::Encode { detail: error.to_string() };
        let id = match request {
            Request::Read { key } => self
                .core
                .start_get(self.epoch, key, ReadOptions::default())
                .map_err(encode_error)?,
            Request::Write { key, value, context } => {
                let context = if context.is_empty() {
                    None
                } else {
                    let context = Context::from_bytes(context)
                        .map_err(|error| ProtocolError::Encode { detail: error.to_string() })?;
                    Some(context)
                };
                self.core
                    .start_put(self.epoch, key, value, context.as_ref(), WriteOptions::default())
                    .map_err(encode_error)?
            }
        };
        let previous = self.tags.insert(id.get(), tag);
        assert!(previous.is_none(), "the client core reused request id {}", id.get());
        let transmit = self.core.pending_transmit();
        tx.extend_from_slice(transmit);
        let sent = transmit.len();
        self.core.advance_transmit(sent);
        Ok(())
    }

    fn receive(&mut self, rx: &[u8]) -> Result<usize, ProtocolError> {
        // The core buffers a partial frame itself, so it takes everything.
        self.core
            .handle_input(rx)
            .map_err(|error| ProtocolError::Malformed { detail: error.to_string() })?;
        Ok(rx.len())
    }

    fn poll_reply(&mut self) -> Option<Reply> {
        let completion = self.core.poll_completion()?;
        let id = completion.id.get();
        let Some(tag) = self.tags.remove(&id) else {
            // The core completes only requests it started, all of which
            // went through `encode`.
            panic!("completion for request id {id}, which was never started");
        };
        Some(Reply { tag, outcome: outcome(completion) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use holdfast_net::frame::FrameDecoder;
    use holdfast_net::message::{
        ErrorCode, ErrorReply, GetReply, PutReply, Request as NodeRequest, RequestLimits,
        encode_dot, encode_message_into,
    };
    use holdfast_net::{Actor, Dot, VersionVector};

    use super::*;
    use crate::connection::{ConnectionCore, ConnectionOptions, SharedContexts, Status};
    use crate::distribution::{DistributionKind, KeyChooser};
    use crate::keys::KeyOrder;
    use crate::pacer::{Pace, PacerLimits};
    use crate::workload::{OpKind, OpSource, Workload};

    /// A one-replica node that keeps one version per key, counts the
    /// writes that carried the key's current context, and can answer a
    /// batch of requests in reverse order.
    #[derive(Debug)]
    struct FakeNode {
        decoder: FrameDecoder,
        store: HashMap<Vec<u8>, (Vec<u8>, u64)>,
        puts: u64,
        puts_with_current_context: u64,
        reverse: bool,
    }

    impl FakeNode {
        fn new(reverse: bool) -> Self {
            Self {
                decoder: FrameDecoder::new(1 << 20),
                store: HashMap::new(),
                puts: 0,
                puts_with_current_context: 0,
                reverse,
            }
        }

        /// The context after `counter` writes (the empty clock for none).
        fn context(counter: u64) -> Vec<u8> {
            if counter == 0 {
                return VersionVector::new().encode();
            }
            VersionVector::from_entries(vec![(Actor::new(1, 0), counter)]).unwrap().encode()
        }

        /// Answers every request in `bytes`.
        fn serve(&mut self, mut bytes: &[u8]) -> Vec<u8> {
            let mut replies = Vec::new();
            while !bytes.is_empty() {
                let decoded = self.decoder.decode(bytes).unwrap();
                bytes = &bytes[decoded.consumed..];
                let Some(frame) = decoded.frame else { continue };
                let id = frame.request_id();
                let mut reply = Vec::new();
                match NodeRequest::parse(&frame, &RequestLimits::default()).unwrap() {
                    NodeRequest::Get { key, .. } if key == b"refused" => {
                        let error = ErrorReply::new(ErrorCode::Overloaded, "busy");
                        encode_message_into(&mut reply, id, &error);
                    }
                    NodeRequest::Get { key, .. } => {
                        let (values, counter) = match self.store.get(key) {
                            Some((value, counter)) => (vec![value.clone()], *counter),
                            None => (vec![], 0),
                        };
                        let get = GetReply { values, context: Self::context(counter) };
                        encode_message_into(&mut reply, id, &get);
                    }
                    NodeRequest::Put { key, value, context, .. } => {
                        let entry = self.store.entry(key.to_vec()).or_insert((vec![], 0));
                        self.puts += 1;
                        if entry.1 > 0 && context.get(Actor::new(1, 0)) == entry.1 {
                            self.puts_with_current_context += 1;
                        }
                        *entry = (value.to_vec(), entry.1 + 1);
                        let put = PutReply {
                            context: Self::context(entry.1),
                            dot: encode_dot(Dot::new(Actor::new(1, 0), entry.1)),
                        };
                        encode_message_into(&mut reply, id, &put);
                    }
                    other => panic!("unexpected request {other:?}"),
                }
                replies.push(reply);
            }
            if self.reverse {
                replies.reverse();
            }
            replies.concat()
        }
    }

    fn replies(codec: &mut Holdfast, bytes: &[u8]) -> HashMap<u32, Outcome> {
        // Byte by byte: the client core reassembles frames itself.
        for byte in bytes {
            assert_eq!(codec.receive(std::slice::from_ref(byte)).unwrap(), 1);
        }
        std::iter::from_fn(|| codec.poll_reply()).map(|reply| (reply.tag, reply.outcome)).collect()
    }

    #[test]
    fn replies_out_of_order_find_their_tags() {
        let mut node = FakeNode::new(true);
        let mut codec = Holdfast::new(8);
        let mut tx = Vec::new();
        let write = Request::Write { key: b"k1", value: b"v1", context: b"" };
        codec.encode(write, 5, &mut tx).unwrap();
        codec.encode(Request::Read { key: b"k1" }, 6, &mut tx).unwrap();
        codec.encode(Request::Read { key: b"missing" }, 7, &mut tx).unwrap();
        codec.encode(Request::Read { key: b"refused" }, 3, &mut tx).unwrap();
        let outcomes = replies(&mut codec, &node.serve(&tx));
        assert_eq!(outcomes.len(), 4);
        assert_eq!(outcomes[&5], Outcome::Written { context: FakeNode::context(1) });
        assert_eq!(outcomes[&6], Outcome::Found { context: FakeNode::context(1) });
        assert_eq!(outcomes[&7], Outcome::NotFound { context: FakeNode::context(0) });
        assert!(matches!(&outcomes[&3], Outcome::Failed { message } if message.contains("busy")));
    }

    #[test]
    fn a_write_carries_the_context_it_was_given() {
        let mut node = FakeNode::new(false);
        let mut codec = Holdfast::new(1);
        let mut tx = Vec::new();
        codec.encode(Request::Write { key: b"k", value: b"1", context: b"" }, 0, &mut tx).unwrap();
        replies(&mut codec, &node.serve(&tx));
        tx.clear();
        let context = FakeNode::context(1);
        codec
            .encode(Request::Write { key: b"k", value: b"2", context: &context }, 0, &mut tx)
            .unwrap();
        node.serve(&tx);
        assert_eq!((node.puts, node.puts_with_current_context), (2, 1));
        // A context that is not an encoded clock is refused before sending.
        tx.clear();
        let bad = Request::Write { key: b"k", value: b"3", context: b"\xff\xff" };
        assert!(matches!(codec.encode(bad, 0, &mut tx), Err(ProtocolError::Encode { .. })));
        assert!(tx.is_empty());
    }

    #[test]
    fn garbage_is_a_connection_error() {
        let mut codec = Holdfast::new(1);
        assert!(codec.receive(&[0xAB; 64]).is_err());
    }

    fn options() -> ConnectionOptions {
        ConnectionOptions {
            key_order: KeyOrder::Hashed,
            value_bytes: 32,
            seed: 3,
            reply_timeout_ns: u64::MAX / 4,
        }
    }

    fn limits(ops_max: u64) -> PacerLimits {
        PacerLimits { start_ns: 0, end_ns: u64::MAX / 2, stop_ns: u64::MAX / 2, ops_max, depth: 4 }
    }

    /// Runs `core` against `node` to the end of its phase, one batch of
    /// requests per virtual nanosecond.
    fn drive(node: &mut FakeNode, core: &mut ConnectionCore<Holdfast>) {
        for now in 1.. {
            if core.poll(now) == Status::Done {
                return;
            }
            let sent = core.tx().to_vec();
            core.on_sent(sent.len());
            let answer = node.serve(&sent);
            core.recv_buffer()[..answer.len()].copy_from_slice(&answer);
            core.on_received(now, answer.len()).unwrap();
        }
    }

    /// Loads 50 records, then runs 2000 operations of `workload`; returns
    /// the run's stats.
    fn load_and_run(
        node: &mut FakeNode,
        workload: Workload,
        contexts: Option<&SharedContexts>,
    ) -> crate::stats::PhaseStats {
        let with = |core: ConnectionCore<Holdfast>| match contexts {
            Some(contexts) => core.with_contexts(contexts.clone()),
            None => core,
        };
        let load = OpSource::load(50, 0, 1);
        let core = ConnectionCore::new(Holdfast::new(4), load, Pace::Closed, limits(50), options());
        let mut core = with(core);
        drive(node, &mut core);
        assert_eq!(core.stats().op(OpKind::Insert).count(), 50);
        let run = OpSource::run(workload, KeyChooser::new(DistributionKind::Uniform, 50), 9);
        let core =
            ConnectionCore::new(Holdfast::new(4), run, Pace::Closed, limits(2000), options());
        let mut core = with(core);
        drive(node, &mut core);
        let stats = core.into_stats();
        assert_eq!(stats.total_count(), 2000);
        assert_eq!(stats.total_errors(), 0, "{:?}", stats.first_error);
        stats
    }

    /// Workload F end to end through the connection core: every
    /// read-modify-write's put carries the context its get returned.
    #[test]
    fn read_modify_writes_supersede_what_they_read() {
        let mut node = FakeNode::new(true);
        let stats = load_and_run(&mut node, Workload::F, None);
        let rmws = stats.op(OpKind::ReadModifyWrite).count();
        assert!(rmws > 800);
        // Pipelined read-modify-writes of one key can interleave (read,
        // read, write, write), so the second write's context is stale:
        // most, not all, carry the current one.
        assert_eq!(node.puts, 50 + rmws);
        let current = node.puts_with_current_context;
        assert!(current > rmws * 9 / 10, "{current} of {rmws}");
    }

    /// Workload A: with a shared context cache, updates replace the value
    /// (they carry the context of the last write or read of the key);
    /// blind updates carry none.
    #[test]
    fn updates_carry_the_latest_context_seen() {
        let mut node = FakeNode::new(false);
        let contexts = SharedContexts::default();
        let stats = load_and_run(&mut node, Workload::A, Some(&contexts));
        let updates = stats.op(OpKind::Update).count();
        assert!(updates > 800);
        assert_eq!(contexts.borrow().len(), 50);
        let current = node.puts_with_current_context;
        assert!(current > updates * 9 / 10, "{current} of {updates}");

        let mut node = FakeNode::new(false);
        load_and_run(&mut node, Workload::A, None);
        assert_eq!(node.puts_with_current_context, 0);
    }
}
