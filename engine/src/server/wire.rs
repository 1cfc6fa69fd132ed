//! The server's side of the wire protocol: turning request frames into
//! operations and results into reply frames. Everything about the frame
//! format itself (header, checksums, rkyv validation) is in
//! `holdfast_net::frame` and `holdfast_net::message`.

use holdfast_net::SiblingSet;
use holdfast_net::message::{
    DeleteReply, ErrorCode, ErrorReply, GetReply, Pong, PutReply, encode_message,
};

/// A set's live values and context, as a get reply.
pub(crate) fn get_reply(request_id: u64, set: &SiblingSet) -> Vec<u8> {
    let reply = GetReply {
        values: set.values().map(<[u8]>::to_vec).collect(),
        context: set.context().encode(),
    };
    encode_message(request_id, &reply)
}

pub(crate) fn put_reply(request_id: u64, set: &SiblingSet) -> Vec<u8> {
    encode_message(request_id, &PutReply { context: set.context().encode() })
}

pub(crate) fn delete_reply(request_id: u64, set: &SiblingSet) -> Vec<u8> {
    encode_message(request_id, &DeleteReply { context: set.context().encode() })
}

pub(crate) fn pong(request_id: u64) -> Vec<u8> {
    encode_message(request_id, &Pong {})
}

pub(crate) fn error(request_id: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    encode_message(request_id, &ErrorReply::new(code, message))
}
