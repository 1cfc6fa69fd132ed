//! A node in miniature for the client tests: one replica of every key in a
//! `BTreeMap`, speaking the protocol through the crate's own server-side API
//! (`Request::parse`, `encode_message_into`), so the tests also show that
//! API in use.

#![allow(dead_code)]

use std::collections::BTreeMap;

use holdfast_net::frame::{Frame, FrameDecoder};
use holdfast_net::limits::FRAME_BYTES_MAX_DEFAULT;
use holdfast_net::message::{
    DeleteReply, ErrorCode, ErrorReply, GetReply, Pong, PutReply, Request, RequestLimits,
    encode_dot, encode_message_into,
};
use holdfast_net::{Actor, SiblingSet};

/// The store and the coordinator of a one-node cluster.
#[derive(Debug)]
pub struct FakeNode {
    pub actor: Actor,
    pub limits: RequestLimits,
    pub keys: BTreeMap<Vec<u8>, SiblingSet>,
    pub requests: u64,
}

impl Default for FakeNode {
    fn default() -> FakeNode {
        FakeNode {
            actor: Actor::new(1, 0),
            limits: RequestLimits::default(),
            keys: BTreeMap::new(),
            requests: 0,
        }
    }
}

impl FakeNode {
    /// Answers one frame, appending the reply frame to `out`.
    pub fn handle(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        self.requests += 1;
        let id = frame.request_id();
        let request = match Request::parse(frame, &self.limits) {
            Ok(request) => request,
            Err(refusal) => return encode_message_into(out, id, &refusal.to_reply()),
        };
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

    /// A decoder with the node's default limit.
    pub fn decoder() -> FrameDecoder {
        FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT)
    }
}
