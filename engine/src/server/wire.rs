//! The server's side of the wire protocol: turning request frames into
//! operations and results into reply frames. Everything about the frame
//! format itself (header, checksums, rkyv validation) is in
//! `holdfast_net::frame` and `holdfast_net::message`.

use holdfast_net::SiblingSet;
use holdfast_net::frame::Kind;
use holdfast_net::limits::{SCAN_KEYS_MAX, SCAN_PAGE_BYTES_MAX};
use holdfast_net::membership::MemberStatus;
use holdfast_net::message::{
    AdminReply, DeleteReply, ErrorCode, ErrorReply, GetReply, HelloReply, InspectReply, OfferReply,
    Pong, PutReply, ReplicaReadReply, ReplicaWriteReply, RingReply, STATUS_UNKNOWN, ScanEntry,
    ScanReply, encode_dot, encode_message,
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
    view: super::membership::View,
) -> Vec<u8> {
    let transfers = stats.coordinator;
    let reply = holdfast_net::message::StatsReply {
        node,
        hinted_keys: stats.hinted_keys,
        hints_waiting: transfers.hints_waiting,
        hints_delivered: transfers.hints_delivered,
        hinted_writes: transfers.hinted_writes,
        down: stats.down,
        status: view.status.map_or(STATUS_UNKNOWN, MemberStatus::as_u8),
        ring_version: view.ring.as_ref().map_or(0, |ring| ring.version()),
        next_version: view.next.as_ref().map_or(0, |next| next.version()),
        transfers_waiting: transfers.transfers_waiting,
        partitions_pulled: transfers.partitions_pulled,
        keys_pulled: transfers.keys_pulled,
        bytes_pulled: transfers.bytes_pulled,
        keys_handed_off: transfers.keys_handed_off,
        bytes_handed_off: transfers.bytes_handed_off,
        keys_removed: transfers.keys_removed,
        partitions_waiting: transfers.partitions_waiting,
        data_partitions: stats.data_partitions,
        members: view.members,
    };
    encode_message(request_id, &reply)
}

pub(crate) fn admin_reply(
    request_id: u64,
    node: NodeId,
    status: MemberStatus,
    message: &str,
) -> Vec<u8> {
    let reply = AdminReply { node, status: status.as_u8(), message: message.to_owned() };
    encode_message(request_id, &reply)
}

/// A scanned page as its reply: entries in order while the reply stays
/// within [`SCAN_PAGE_BYTES_MAX`] (the first always goes), `more` set if
/// any were left out.
pub(crate) fn scan_reply(
    request_id: u64,
    entries: Vec<(Vec<u8>, SiblingSet)>,
    mut more: bool,
) -> Vec<u8> {
    let mut page = Vec::with_capacity(entries.len());
    let mut bytes = 0;
    let count = entries.len();
    for (key, set) in entries.into_iter().take(SCAN_KEYS_MAX) {
        let set = set.encode();
        let size = key.len() + set.len();
        if !page.is_empty() && bytes + size > SCAN_PAGE_BYTES_MAX {
            more = true;
            break;
        }
        bytes += size;
        page.push(ScanEntry { key, set });
    }
    more |= page.len() < count;
    encode_message(request_id, &ScanReply { entries: page, more })
}

pub(crate) fn offer_reply(request_id: u64, have: Vec<bool>) -> Vec<u8> {
    encode_message(request_id, &OfferReply { have })
}
