//! The server's side of the wire protocol: turning request frames into
//! operations and results into reply frames. Everything about the frame
//! format itself (header, checksums, rkyv validation) is in
//! `holdfast_net::frame` and `holdfast_net::message`.

use holdfast_net::SiblingSet;
use holdfast_net::frame::Kind;
use holdfast_net::message::{
    DeleteReply, ErrorCode, ErrorReply, GetReply, HelloReply, InspectReply, Pong, PutReply,
    ReplicaReadReply, ReplicaWriteReply, RingReply, encode_dot, encode_message,
};
use holdfast_net::ring::{Member, NodeId, Ring};

use crate::cluster::ClusterOptions;
use crate::cluster::coordinator::ClientReply;

pub(crate) fn pong(request_id: u64) -> Vec<u8> {
    encode_message(request_id, &Pong {})
}

pub(crate) fn error(request_id: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    encode_message(request_id, &ErrorReply::new(code, message))
}

/// The reply to a coordinated client request of `kind`.
pub(crate) fn client_reply(request_id: u64, kind: Kind, reply: ClientReply) -> Vec<u8> {
    match reply {
        ClientReply::Get { values, context } => {
            encode_message(request_id, &GetReply { values, context: context.encode() })
        }
        ClientReply::Put { context, dot } if kind == Kind::DELETE => {
            let reply = DeleteReply { context: context.encode(), dot: encode_dot(dot) };
            encode_message(request_id, &reply)
        }
        ClientReply::Put { context, dot } => {
            let reply = PutReply { context: context.encode(), dot: encode_dot(dot) };
            encode_message(request_id, &reply)
        }
        ClientReply::Error { code, message } => error(request_id, code, &message),
    }
}

/// A set as a replica sends it: empty bytes for none.
fn set_bytes(set: &SiblingSet) -> Vec<u8> {
    if set.is_empty() { Vec::new() } else { set.encode() }
}

pub(crate) fn replica_read_reply(request_id: u64, set: &SiblingSet) -> Vec<u8> {
    encode_message(request_id, &ReplicaReadReply { set: set_bytes(set) })
}

pub(crate) fn replica_write_reply(request_id: u64) -> Vec<u8> {
    encode_message(request_id, &ReplicaWriteReply {})
}

pub(crate) fn partition_mismatch(request_id: u64, theirs: u32, ours: u32) -> Vec<u8> {
    let message = format!(
        "the sender placed the key in partition {theirs}, this node in {ours}: \
         the nodes disagree on the number of partitions"
    );
    error(request_id, ErrorCode::BadRequest, &message)
}

pub(crate) fn inspect_reply(
    request_id: u64,
    node: u64,
    partition: u32,
    replica: bool,
    set: &SiblingSet,
) -> Vec<u8> {
    let reply = InspectReply { node, partition, replica, set: set_bytes(set) };
    encode_message(request_id, &reply)
}

pub(crate) fn ring_reply(
    request_id: u64,
    node: u64,
    ring: Option<&Ring>,
    options: &ClusterOptions,
) -> Vec<u8> {
    let reply = RingReply {
        node,
        ring: ring.map(Ring::state).unwrap_or_default(),
        n: options.n,
        r: options.r,
        w: options.w,
    };
    encode_message(request_id, &reply)
}

pub(crate) fn hello_reply(request_id: u64, member: Member, ring: Option<&Ring>) -> Vec<u8> {
    let reply = HelloReply { member, ring: ring.map(Ring::state).unwrap_or_default() };
    encode_message(request_id, &reply)
}

pub(crate) fn stats_reply(
    request_id: u64,
    node: NodeId,
    stats: super::cluster::ShardStats,
) -> Vec<u8> {
    let reply = holdfast_net::message::StatsReply {
        node,
        hinted_keys: stats.hinted_keys,
        hints_waiting: stats.coordinator.hints_waiting,
        hints_delivered: stats.coordinator.hints_delivered,
        hinted_writes: stats.coordinator.hinted_writes,
        down: stats.down,
    };
    encode_message(request_id, &reply)
}
