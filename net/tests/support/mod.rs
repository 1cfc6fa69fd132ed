//! A node in miniature for the client tests: one replica of every key in a
//! `BTreeMap`, speaking the protocol through the crate's own server-side API
//! (`Request::parse`, `encode_message_into`), so the tests also show that
//! API in use. It answers `RingRequest` with whatever ring it is given (by
//! default none: version 0, no members) and `InspectRequest` with its own
//! set of the key; it never forwards, so a test sees exactly where each
//! request landed.

#![allow(dead_code)]

use std::collections::BTreeMap;

use holdfast_net::frame::{Frame, FrameDecoder, Kind};
use holdfast_net::limits::FRAME_BYTES_MAX_DEFAULT;
use holdfast_net::message::{
    DeleteReply, ErrorCode, ErrorReply, GetReply, InspectReply, Pong, PutReply, Request,
    RequestLimits, RingReply, encode_dot, encode_message_into,
};
use holdfast_net::ring::{Ring, RingState, partition_of};
use holdfast_net::{Actor, SiblingSet};

/// The store and the coordinator of a one-node cluster.
#[derive(Debug)]
pub struct FakeNode {
    pub actor: Actor,
    pub limits: RequestLimits,
    pub keys: BTreeMap<Vec<u8>, SiblingSet>,
    pub requests: u64,
    /// Requests answered, by kind.
    pub by_kind: BTreeMap<Kind, u64>,
    /// The ring it answers `RingRequest` with (the default: not formed).
    pub ring: RingState,
    /// The replication settings it answers `RingRequest` with.
    pub n: u8,
    /// While set, reads, writes and deletes are refused the way a node
    /// refuses a forwarded request for a key it is not a replica of.
    pub not_a_replica: bool,
}

impl Default for FakeNode {
    fn default() -> FakeNode {
        FakeNode {
            actor: Actor::new(1, 0),
            limits: RequestLimits::default(),
            keys: BTreeMap::new(),
            requests: 0,
            by_kind: BTreeMap::new(),
            ring: RingState::default(),
            n: 3,
            not_a_replica: false,
        }
    }
}

impl FakeNode {
    /// Answers one frame, appending the reply frame to `out`.
    pub fn handle(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        self.requests += 1;
        *self.by_kind.entry(frame.kind()).or_default() += 1;
        let id = frame.request_id();
        let request = match Request::parse(frame, &self.limits) {
            Ok(request) => request,
            Err(refusal) => return encode_message_into(out, id, &refusal.to_reply()),
        };
        let keyed =
            matches!(request, Request::Get { .. } | Request::Put { .. } | Request::Delete { .. });
        if keyed && self.not_a_replica {
            let message = format!(
                "node {:016x} is not a replica of this key under ring version {}",
                self.actor.node, self.ring.version
            );
            let reply = ErrorReply::new(ErrorCode::Unavailable, message);
            return encode_message_into(out, id, &reply);
        }
        match request {
            Request::Get { key, .. } => {
                let set = self.keys.get(key).cloned().unwrap_or_default();
                let reply = GetReply {
                    values: set.values().map(<[u8]>::to_vec).collect(),
                    context: set.context().encode(),
                };
                encode_message_into(out, id, &reply);
            }
            Request::Put { key, value, context, .. } => {
                let set = self.keys.entry(key.to_vec()).or_default();
                let dot = set
                    .write(self.actor, &context, Some(value.to_vec()))
                    .expect("fake writes succeed");
                let reply = PutReply { context: set.context().encode(), dot: encode_dot(dot) };
                encode_message_into(out, id, &reply);
            }
            Request::Delete { key, context, .. } => {
                let set = self.keys.entry(key.to_vec()).or_default();
                let dot = set.write(self.actor, &context, None).expect("fake writes succeed");
                let reply = DeleteReply { context: set.context().encode(), dot: encode_dot(dot) };
                encode_message_into(out, id, &reply);
            }
            Request::Ping => encode_message_into(out, id, &Pong {}),
            Request::Ring => {
                let reply = RingReply {
                    node: self.actor.node,
                    ring: self.ring.clone(),
                    n: self.n,
                    r: 1,
                    w: 1,
                };
                encode_message_into(out, id, &reply);
            }
            Request::Inspect { key } => {
                let set = self.keys.get(key).map(SiblingSet::encode).unwrap_or_default();
                let (partition, replica) = match Ring::from_state(self.ring.clone()) {
                    Ok(ring) => {
                        let partition = ring.partition_of(key);
                        let replicas = ring.preference_list(partition, usize::from(self.n));
                        (partition, replicas.contains(&self.actor.node))
                    }
                    Err(_) => (partition_of(key, 1), true),
                };
                let reply = InspectReply { node: self.actor.node, partition, replica, set };
                encode_message_into(out, id, &reply);
            }
            other => {
                let reply = ErrorReply::new(ErrorCode::UnknownKind, format!("{:?}", other.kind()));
                encode_message_into(out, id, &reply);
            }
        }
    }

    /// Decodes every whole frame in `input` and returns them; panics on a
    /// framing error (the client under test must never send one).
    pub fn frames(decoder: &mut FrameDecoder, mut input: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !input.is_empty() {
            let decoded = decoder.decode(input).expect("the client sends valid frames");
            input = &input[decoded.consumed..];
            frames.extend(decoded.frame);
        }
        frames
    }

    /// How many requests of `kind` it answered.
    pub fn count(&self, kind: Kind) -> u64 {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// A decoder with the node's default limit.
    pub fn decoder() -> FrameDecoder {
        FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT)
    }
}
