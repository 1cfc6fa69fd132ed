//! The server's side of the wire protocol: turning request frames into
//! operations and results into reply frames. Everything about the frame
//! format itself (header, checksums, rkyv validation) is in
//! `holdfast_net::frame` and `holdfast_net::message`.

use holdfast_net::SiblingSet;
use holdfast_net::frame::Kind;
use holdfast_net::limits::{
    FETCH_KEYS_MAX, FETCH_PAGE_BYTES_MAX, LEAF_ENTRIES_MAX, LEAF_REPLY_KEY_BYTES_MAX,
    SCAN_KEYS_MAX, SCAN_PAGE_BYTES_MAX,
};
use holdfast_net::membership::MemberStatus;
use holdfast_net::message::{
    AdminReply, DeleteReply, ErrorCode, ErrorReply, FetchReply, GetReply, HelloReply, InspectReply,
    LeafReply, NEVER, OfferReply, Pong, PutReply, RepairWriteReply, ReplicaReadReply,
    ReplicaWriteReply, RingReply, STATUS_UNKNOWN, ScanEntry, ScanReply, TreeReply, encode_dot,
    encode_message,
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
        anti_entropy_exchanges: transfers.anti_entropy.exchanges,
        anti_entropy_skipped: transfers.anti_entropy.skipped,
        anti_entropy_keys_repaired: transfers.anti_entropy.keys_repaired,
        anti_entropy_bytes_received: transfers.anti_entropy.bytes_received,
        anti_entropy_bytes_sent: transfers.anti_entropy.bytes_sent,
        anti_entropy_rounds: stats.anti_entropy_rounds,
        anti_entropy_last_round_ms: stats.anti_entropy_last_round.map_or(NEVER, |at| {
            u64::try_from(at.elapsed().as_millis()).unwrap_or(NEVER - 1).min(NEVER - 1)
        }),
        trees_building: stats.trees_building,
        tombstones_reaped: transfers.tombstones_reaped,
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

/// A tree's hashes (`None`: not comparable yet) as their reply.
pub(crate) fn tree_reply(request_id: u64, hashes: Option<Vec<u64>>) -> Vec<u8> {
    encode_message(request_id, &TreeReply::new(hashes))
}

/// Leaves' keys as their reply (`None`: not comparable yet): at most
/// [`LEAF_ENTRIES_MAX`], and the keys within [`LEAF_REPLY_KEY_BYTES_MAX`]
/// beyond the first, so the reply fits the reply frame whatever the keys.
pub(crate) fn leaf_reply(request_id: u64, entries: Option<Vec<(Vec<u8>, u64)>>) -> Vec<u8> {
    let entries = entries.map(|entries| {
        let mut bytes = 0;
        let mut kept = Vec::with_capacity(entries.len().min(LEAF_ENTRIES_MAX));
        for (key, hash) in entries.into_iter().take(LEAF_ENTRIES_MAX) {
            if !kept.is_empty() && bytes + key.len() > LEAF_REPLY_KEY_BYTES_MAX {
                break;
            }
            bytes += key.len();
            kept.push((key, hash));
        }
        kept
    });
    encode_message(request_id, &LeafReply::new(entries))
}

/// Fetched sets as their reply: in order while they stay within
/// [`FETCH_PAGE_BYTES_MAX`] (the first always goes); keys left out are
/// absent to the asker, which fetches them again in a later exchange.
pub(crate) fn fetch_reply(request_id: u64, entries: Vec<(Vec<u8>, SiblingSet)>) -> Vec<u8> {
    let mut page = Vec::with_capacity(entries.len().min(FETCH_KEYS_MAX));
    let mut bytes = 0;
    for (key, set) in entries.into_iter().take(FETCH_KEYS_MAX) {
        let set = set.encode();
        let size = key.len() + set.len();
        if !page.is_empty() && bytes + size > FETCH_PAGE_BYTES_MAX {
            break;
        }
        bytes += size;
        page.push(ScanEntry { key, set });
    }
    encode_message(request_id, &FetchReply { entries: page })
}

pub(crate) fn repair_write_reply(request_id: u64) -> Vec<u8> {
    encode_message(request_id, &RepairWriteReply {})
}

pub(crate) fn reap_reply(request_id: u64) -> Vec<u8> {
    encode_message(request_id, &holdfast_net::message::ReapReply {})
}
