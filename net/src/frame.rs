//! Frames: the unit every connection carries, between clients and nodes and
//! between nodes.
//!
//! A frame is a fixed 32-byte header, checked by hand, followed by a body of
//! `body length` bytes, an rkyv archive of one message (see
//! [`crate::message`]). All integers are little-endian.
//!
//! ```text
//!  0        4    5    6         8                  16        20        24        28        32
//!  +--------+----+----+---------+------------------+---------+---------+---------+---------+
//!  | magic  |ver |kind| reserved| request id       | body    | body    | header  | reserved|
//!  | "hfw1" | 1  | u8 | 0u16    | u64              | len u32 | crc32c  | crc32c  | 0u32    |
//!  +--------+----+----+---------+------------------+---------+---------+---------+---------+
//!  | body: `body len` bytes, an rkyv archive, starting 16-byte aligned in memory          ...
//!  +---------------------------------------------------------------------------------------
//! ```
//!
//! - `header crc32c` covers bytes 0..24 and 28..32, so every header bit but
//!   its own is protected, and a damaged length is never trusted.
//! - `body crc32c` is the CRC-32C of the body (0 for an empty body).
//! - `request id` is chosen by whoever sends a request and echoed in its
//!   reply, so many requests can be in flight on one connection and be
//!   answered in any order. 0 is for messages that expect no reply.
//! - `kind` says which message the body holds; see [`Kind`] for the table.
//!
//! # Decoding order, and what each failure means
//!
//! [`FrameDecoder`] is fed bytes as they arrive and checks, in this order:
//!
//! 1. The magic. A stranger (an HTTP client, a port scanner) is told so.
//! 2. The header checksum, before any field is believed.
//! 3. The reserved bytes are zero (in version 1 frames only; see below).
//! 4. The frame length against the configured limit, from the header alone,
//!    before a byte of the body is buffered.
//! 5. The body checksum, once the whole body is in.
//!
//! Any failure there is a [`FrameError`], and the connection must be closed:
//! after a damaged header the stream has no trustworthy frame boundary, and a
//! peer that sends bad checksums is broken. Then, per message, come the checks
//! that leave the connection usable (in [`crate::message`]): the protocol
//! version, the kind, and rkyv's validating access to the body before any
//! field is read.
//!
//! # Versioning
//!
//! The header's layout is fixed for every protocol version: magic, version
//! byte, kind, request id, body length and the two checksums keep their
//! places and meanings forever, so any peer can find the frame boundary and
//! the request id of a frame from a newer peer. A peer that receives a frame
//! whose version it does not speak, or whose kind it does not know, skips the
//! body, answers [`Kind::ERROR`] with `UnsupportedVersion` or `UnknownKind`
//! under the same request id, and keeps the connection. A later version may
//! give the reserved bytes a meaning, which is why they are checked for zero
//! only in version 1 frames.
//!
//! # Alignment
//!
//! rkyv (with the workspace's `aligned` format) reads fields in place, so a
//! body must start at a 16-byte-aligned address. A [`Frame`] keeps header and
//! body in one [`AlignedVec`] and the header is 32 bytes long, so its body is
//! always aligned; that is also what lets a node forward the exact bytes it
//! received to another core with no re-encoding ([`Frame::as_bytes`]).

use std::fmt;

/// The 16-byte-aligned buffer frames live in (rkyv's), re-exported so that
/// callers need no direct rkyv dependency to hold or build one.
pub use rkyv::util::AlignedVec;

use crate::limits::FRAME_BYTES_MAX_CEILING;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"hfw1";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of the fixed header.
pub const HEADER_BYTES: usize = 32;

/// The alignment a body needs in memory for rkyv's validating access.
pub const BODY_ALIGNMENT: usize = 16;

const _: () = assert!(HEADER_BYTES.is_multiple_of(BODY_ALIGNMENT));
const _: () = assert!(BODY_ALIGNMENT.is_power_of_two());

// Header field offsets, as in the diagram above.
const OFFSET_VERSION: usize = 4;
const OFFSET_KIND: usize = 5;
const OFFSET_RESERVED_LOW: usize = 6;
const OFFSET_REQUEST_ID: usize = 8;
const OFFSET_BODY_LEN: usize = 16;
const OFFSET_BODY_CHECKSUM: usize = 20;
const OFFSET_HEADER_CHECKSUM: usize = 24;
const OFFSET_RESERVED_HIGH: usize = 28;

const _: () = assert!(OFFSET_RESERVED_HIGH + 4 == HEADER_BYTES);

/// Which message a frame's body holds.
///
/// The byte is laid out so that its class can be read from two bits:
///
/// | bits      | meaning                                                      |
/// |-----------|--------------------------------------------------------------|
/// | `0x80`    | node to node (the cluster issues define these kinds)         |
/// | `0x40`    | a reply; a request's reply is the request's kind `\| 0x40`   |
/// | `0x3f`    | the operation, 1..=62 (0 and 63 are never an operation)      |
///
/// | kind | name            | direction      | body                              |
/// |------|-----------------|----------------|-----------------------------------|
/// | 1    | `GET`           | client → node  | [`GetRequest`](crate::message::GetRequest)       |
/// | 2    | `PUT`           | client → node  | [`PutRequest`](crate::message::PutRequest)       |
/// | 3    | `DELETE`        | client → node  | [`DeleteRequest`](crate::message::DeleteRequest) |
/// | 4    | `PING`          | client → node  | [`Ping`](crate::message::Ping)                   |
/// | 65   | `GET_REPLY`     | node → client  | [`GetReply`](crate::message::GetReply)           |
/// | 66   | `PUT_REPLY`     | node → client  | [`PutReply`](crate::message::PutReply)           |
/// | 67   | `DELETE_REPLY`  | node → client  | [`DeleteReply`](crate::message::DeleteReply)     |
/// | 68   | `PONG`          | node → client  | [`Pong`](crate::message::Pong)                   |
/// | 5    | `RING`          | client → node  | [`RingRequest`](crate::message::RingRequest)     |
/// | 6    | `INSPECT`       | client → node  | [`InspectRequest`](crate::message::InspectRequest) |
/// | 69   | `RING_REPLY`    | node → client  | [`RingReply`](crate::message::RingReply)         |
/// | 70   | `INSPECT_REPLY` | node → client  | [`InspectReply`](crate::message::InspectReply)   |
/// | 127  | `ERROR`         | any reply      | [`ErrorReply`](crate::message::ErrorReply)       |
/// | 129  | `REPLICA_READ`  | node → node    | [`ReplicaRead`](crate::message::ReplicaRead)     |
/// | 130  | `REPLICA_WRITE` | node → node    | [`ReplicaWrite`](crate::message::ReplicaWrite)   |
/// | 131  | `COORDINATE`    | node → node    | [`Coordinate`](crate::message::Coordinate)       |
/// | 132  | `HELLO`         | node → node    | [`Hello`](crate::message::Hello)                 |
/// | 133  | `HINTED_WRITE`  | node → node    | [`HintedWrite`](crate::message::HintedWrite)     |
/// | 193  | `REPLICA_READ_REPLY` | node → node | [`ReplicaReadReply`](crate::message::ReplicaReadReply) |
/// | 194  | `REPLICA_WRITE_REPLY` | node → node | [`ReplicaWriteReply`](crate::message::ReplicaWriteReply) |
/// | 196  | `HELLO_REPLY`   | node → node    | [`HelloReply`](crate::message::HelloReply)            |
/// | 7    | `STATS`         | client → node  | [`StatsRequest`](crate::message::StatsRequest)   |
/// | 71   | `STATS_REPLY`   | node → client  | [`StatsReply`](crate::message::StatsReply)       |
/// | 8    | `ADMIN`         | client → node  | [`AdminRequest`](crate::message::AdminRequest)   |
/// | 72   | `ADMIN_REPLY`   | node → client  | [`AdminReply`](crate::message::AdminReply)       |
/// | 134  | `SCAN`          | node → node    | [`ScanRequest`](crate::message::ScanRequest)     |
/// | 198  | `SCAN_REPLY`    | node → node    | [`ScanReply`](crate::message::ScanReply)         |
/// | 135  | `OFFER`         | node → node    | [`OfferRequest`](crate::message::OfferRequest)   |
/// | 199  | `OFFER_REPLY`   | node → node    | [`OfferReply`](crate::message::OfferReply)       |
/// | 136  | `GOSSIP_DIGEST` | node → node    | [`GossipDigest`](crate::membership::GossipDigest) |
/// | 200  | `GOSSIP_REPLY`  | node → node    | [`GossipReply`](crate::membership::GossipReply)   |
/// | 137  | `GOSSIP_PUSH`   | node → node    | [`GossipPush`](crate::membership::GossipPush)     |
/// | 201  | `GOSSIP_PUSH_REPLY` | node → node | [`GossipPushReply`](crate::message::GossipPushReply) |
/// | 9    | `REPAIR`        | client → node  | [`RepairRequest`](crate::message::RepairRequest) |
/// | 73   | `REPAIR_REPLY`  | node → client  | [`RepairReply`](crate::message::RepairReply)     |
/// | 138  | `TREE`          | node → node    | [`TreeRequest`](crate::message::TreeRequest)     |
/// | 202  | `TREE_REPLY`    | node → node    | [`TreeReply`](crate::message::TreeReply)         |
/// | 139  | `LEAF`          | node → node    | [`LeafRequest`](crate::message::LeafRequest)     |
/// | 203  | `LEAF_REPLY`    | node → node    | [`LeafReply`](crate::message::LeafReply)         |
/// | 140  | `FETCH`         | node → node    | [`FetchRequest`](crate::message::FetchRequest)   |
/// | 204  | `FETCH_REPLY`   | node → node    | [`FetchReply`](crate::message::FetchReply)       |
/// | 141  | `REPAIR_WRITE`  | node → node    | [`RepairWrite`](crate::message::RepairWrite)     |
/// | 205  | `REPAIR_WRITE_REPLY` | node → node | [`RepairWriteReply`](crate::message::RepairWriteReply) |
/// | 142  | `REAP`          | node → node    | [`ReapRequest`](crate::message::ReapRequest)     |
/// | 206  | `REAP_REPLY`    | node → node    | [`ReapReply`](crate::message::ReapReply)         |
///
/// The gossip bodies are `holdfast_net::membership`'s types, read only
/// through their own checked `from_frame` (rkyv's validating access, then
/// the type's `validate`).
///
/// `ERROR` answers any request, client or node, in place of its reply; a
/// `COORDINATE` is answered with the reply the wrapped client request gets.
/// Other kinds are unassigned. A kind is a plain byte (not an enum)
/// so that a frame of a kind this build does not know can still be decoded,
/// answered `UnknownKind`, and skipped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(u8);

impl Kind {
    /// Read a key's siblings and context.
    pub const GET: Kind = Kind(1);
    /// Write a value with the context it supersedes.
    pub const PUT: Kind = Kind(2);
    /// Delete (write a tombstone) with the context it supersedes.
    pub const DELETE: Kind = Kind(3);
    /// Ask a node to answer; measures liveness and round trip time.
    pub const PING: Kind = Kind(4);
    /// Reply to [`GET`](Self::GET).
    pub const GET_REPLY: Kind = Kind(65);
    /// Reply to [`PUT`](Self::PUT).
    pub const PUT_REPLY: Kind = Kind(66);
    /// Reply to [`DELETE`](Self::DELETE).
    pub const DELETE_REPLY: Kind = Kind(67);
    /// Reply to [`PING`](Self::PING).
    pub const PONG: Kind = Kind(68);
    /// Fetch the node's ring (to route requests straight to coordinators).
    pub const RING: Kind = Kind(5);
    /// Read one node's local replica of a key, without coordination.
    pub const INSPECT: Kind = Kind(6);
    /// Ask a node for its hints and the peers it believes down.
    pub const STATS: Kind = Kind(7);
    /// Reply to [`STATS`](Self::STATS).
    pub const STATS_REPLY: Kind = Kind(71);
    /// Reply to [`RING`](Self::RING).
    pub const RING_REPLY: Kind = Kind(69);
    /// Reply to [`INSPECT`](Self::INSPECT).
    pub const INSPECT_REPLY: Kind = Kind(70);
    /// A request failed; answers any request in place of its reply.
    pub const ERROR: Kind = Kind(127);

    /// Node to node: read a replica's sibling set of a key.
    pub const REPLICA_READ: Kind = Kind(0x81);
    /// Node to node: merge a sibling set into a replica, durably.
    pub const REPLICA_WRITE: Kind = Kind(0x82);
    /// Node to node: coordinate a client request that reached a node outside
    /// the key's preference list.
    pub const COORDINATE: Kind = Kind(0x83);
    /// Node to node: exchange identities and rings.
    pub const HELLO: Kind = Kind(0x84);
    /// Node to node: merge a sibling set into a fallback node that holds it
    /// for a key's owner (sloppy quorum); answered by
    /// [`REPLICA_WRITE_REPLY`](Self::REPLICA_WRITE_REPLY).
    pub const HINTED_WRITE: Kind = Kind(0x85);
    /// Reply to [`REPLICA_READ`](Self::REPLICA_READ).
    pub const REPLICA_READ_REPLY: Kind = Kind(0xc1);
    /// Reply to [`REPLICA_WRITE`](Self::REPLICA_WRITE).
    pub const REPLICA_WRITE_REPLY: Kind = Kind(0xc2);
    /// Reply to [`HELLO`](Self::HELLO).
    pub const HELLO_REPLY: Kind = Kind(0xc4);
    /// An operator's membership change (leave, remove), made at the
    /// receiving node and spread by gossip.
    pub const ADMIN: Kind = Kind(8);
    /// Reply to [`ADMIN`](Self::ADMIN).
    pub const ADMIN_REPLY: Kind = Kind(72);
    /// Node to node: a page of a replica's keys of one partition, with their
    /// sibling sets (ownership transfer pulls with it).
    pub const SCAN: Kind = Kind(0x86);
    /// Reply to [`SCAN`](Self::SCAN).
    pub const SCAN_REPLY: Kind = Kind(0xc6);
    /// Node to node: which of these keys (with these set tokens) the
    /// receiver holds exactly (a sweep offers what it hands off).
    pub const OFFER: Kind = Kind(0x87);
    /// Reply to [`OFFER`](Self::OFFER).
    pub const OFFER_REPLY: Kind = Kind(0xc7);
    /// Node to node: the first step of a gossip exchange (a digest).
    pub const GOSSIP_DIGEST: Kind = Kind(0x88);
    /// Reply to [`GOSSIP_DIGEST`](Self::GOSSIP_DIGEST): the second step.
    pub const GOSSIP_REPLY: Kind = Kind(0xc8);
    /// Node to node: the third step of a gossip exchange (what the other
    /// side asked for).
    pub const GOSSIP_PUSH: Kind = Kind(0x89);
    /// Reply to [`GOSSIP_PUSH`](Self::GOSSIP_PUSH): an empty acknowledgement.
    pub const GOSSIP_PUSH_REPLY: Kind = Kind(0xc9);
    /// An operator's "repair now": anti-entropy of one partition, or of
    /// every partition the receiving node replicates.
    pub const REPAIR: Kind = Kind(9);
    /// Reply to [`REPAIR`](Self::REPAIR): what was compared and repaired.
    pub const REPAIR_REPLY: Kind = Kind(73);
    /// Node to node (anti-entropy): hashes of nodes of one level of a
    /// partition's Merkle tree.
    pub const TREE: Kind = Kind(0x8a);
    /// Reply to [`TREE`](Self::TREE).
    pub const TREE_REPLY: Kind = Kind(0xca);
    /// Node to node (anti-entropy): the keys and entry hashes in leaves of
    /// a partition's Merkle tree.
    pub const LEAF: Kind = Kind(0x8b);
    /// Reply to [`LEAF`](Self::LEAF).
    pub const LEAF_REPLY: Kind = Kind(0xcb);
    /// Node to node (anti-entropy): the receiver's sets of some keys.
    pub const FETCH: Kind = Kind(0x8c);
    /// Reply to [`FETCH`](Self::FETCH).
    pub const FETCH_REPLY: Kind = Kind(0xcc);
    /// Node to node (anti-entropy): merge these sets, durably (repair).
    pub const REPAIR_WRITE: Kind = Kind(0x8d);
    /// Reply to [`REPAIR_WRITE`](Self::REPAIR_WRITE): an empty
    /// acknowledgement.
    pub const REPAIR_WRITE_REPLY: Kind = Kind(0xcd);
    /// Node to node (anti-entropy): remove these tombstones, each only if
    /// its set still has the token (every replica was found holding it).
    pub const REAP: Kind = Kind(0x8e);
    /// Reply to [`REAP`](Self::REAP): an empty acknowledgement.
    pub const REAP_REPLY: Kind = Kind(0xce);

    /// The bit set in every node-to-node kind.
    pub const NODE_BIT: u8 = 0x80;
    /// The bit set in every reply kind.
    pub const REPLY_BIT: u8 = 0x40;
    /// The bits that name the operation.
    pub const OPERATION_MASK: u8 = 0x3f;

    /// The kind with this wire byte, whether or not this build knows it.
    pub const fn new(byte: u8) -> Kind {
        Kind(byte)
    }

    /// The wire byte.
    pub const fn as_u8(self) -> u8 {
        self.0
    }

    /// Whether the kind is in the node-to-node range (128..=255).
    pub const fn is_node(self) -> bool {
        self.0 & Kind::NODE_BIT != 0
    }

    /// Whether the kind is a reply (including [`ERROR`](Self::ERROR)).
    pub const fn is_reply(self) -> bool {
        self.0 & Kind::REPLY_BIT != 0
    }

    /// The kind that answers this request kind, or `None` if this is a reply
    /// or names no operation (operation 0 or 63).
    pub const fn reply(self) -> Option<Kind> {
        let operation = self.0 & Kind::OPERATION_MASK;
        if self.is_reply() || operation == 0 || operation == Kind::OPERATION_MASK {
            None
        } else {
            Some(Kind(self.0 | Kind::REPLY_BIT))
        }
    }

    /// The name of a kind this build knows.
    pub const fn name(self) -> Option<&'static str> {
        match self {
            Kind::GET => Some("Get"),
            Kind::PUT => Some("Put"),
            Kind::DELETE => Some("Delete"),
            Kind::PING => Some("Ping"),
            Kind::GET_REPLY => Some("GetReply"),
            Kind::PUT_REPLY => Some("PutReply"),
            Kind::DELETE_REPLY => Some("DeleteReply"),
            Kind::PONG => Some("Pong"),
            Kind::RING => Some("Ring"),
            Kind::INSPECT => Some("Inspect"),
            Kind::RING_REPLY => Some("RingReply"),
            Kind::INSPECT_REPLY => Some("InspectReply"),
            Kind::ERROR => Some("Error"),
            Kind::REPLICA_READ => Some("ReplicaRead"),
            Kind::REPLICA_WRITE => Some("ReplicaWrite"),
            Kind::COORDINATE => Some("Coordinate"),
            Kind::HELLO => Some("Hello"),
            Kind::HINTED_WRITE => Some("HintedWrite"),
            Kind::STATS => Some("Stats"),
            Kind::STATS_REPLY => Some("StatsReply"),
            Kind::REPLICA_READ_REPLY => Some("ReplicaReadReply"),
            Kind::REPLICA_WRITE_REPLY => Some("ReplicaWriteReply"),
            Kind::HELLO_REPLY => Some("HelloReply"),
            Kind::ADMIN => Some("Admin"),
            Kind::ADMIN_REPLY => Some("AdminReply"),
            Kind::SCAN => Some("Scan"),
            Kind::SCAN_REPLY => Some("ScanReply"),
            Kind::OFFER => Some("Offer"),
            Kind::OFFER_REPLY => Some("OfferReply"),
            Kind::GOSSIP_DIGEST => Some("GossipDigest"),
            Kind::GOSSIP_REPLY => Some("GossipReply"),
            Kind::GOSSIP_PUSH => Some("GossipPush"),
            Kind::GOSSIP_PUSH_REPLY => Some("GossipPushReply"),
            Kind::REPAIR => Some("Repair"),
            Kind::REPAIR_REPLY => Some("RepairReply"),
            Kind::TREE => Some("Tree"),
            Kind::TREE_REPLY => Some("TreeReply"),
            Kind::LEAF => Some("Leaf"),
            Kind::LEAF_REPLY => Some("LeafReply"),
            Kind::FETCH => Some("Fetch"),
            Kind::FETCH_REPLY => Some("FetchReply"),
            Kind::REPAIR_WRITE => Some("RepairWrite"),
            Kind::REPAIR_WRITE_REPLY => Some("RepairWriteReply"),
            Kind::REAP => Some("Reap"),
            Kind::REAP_REPLY => Some("ReapReply"),
            _ => None,
        }
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "Kind({})", self.0),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The fields of a checked header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The protocol version the sender speaks.
    pub version: u8,
    /// Which message the body holds.
    pub kind: Kind,
    /// The sender's request id (echoed in replies), 0 for one-way messages.
    pub request_id: u64,
    /// Bytes of body after the header.
    pub body_len: u32,
    /// CRC-32C of the body.
    pub body_checksum: u32,
}

impl Header {
    /// The header's bytes, reserved bytes zero and the header checksum filled
    /// in.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[OFFSET_VERSION] = self.version;
        bytes[OFFSET_KIND] = self.kind.as_u8();
        bytes[OFFSET_REQUEST_ID..OFFSET_BODY_LEN].copy_from_slice(&self.request_id.to_le_bytes());
        bytes[OFFSET_BODY_LEN..OFFSET_BODY_CHECKSUM].copy_from_slice(&self.body_len.to_le_bytes());
        bytes[OFFSET_BODY_CHECKSUM..OFFSET_HEADER_CHECKSUM]
            .copy_from_slice(&self.body_checksum.to_le_bytes());
        let checksum = header_checksum(&bytes);
        bytes[OFFSET_HEADER_CHECKSUM..OFFSET_RESERVED_HIGH]
            .copy_from_slice(&checksum.to_le_bytes());
        debug_assert_eq!(Header::decode(&bytes), Ok(*self));
        bytes
    }

    /// Checks and parses a header: magic, header checksum, and (for version 1
    /// frames) reserved bytes. Does not apply a length limit; that is the
    /// decoder's configuration.
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<Header, FrameError> {
        let magic = read_array::<4>(bytes, 0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let expected = u32::from_le_bytes(read_array(bytes, OFFSET_HEADER_CHECKSUM));
        let actual = header_checksum(bytes);
        if expected != actual {
            return Err(FrameError::HeaderChecksum { expected, actual });
        }
        let version = bytes[OFFSET_VERSION];
        if version == 1 {
            let reserved_low = &bytes[OFFSET_RESERVED_LOW..OFFSET_REQUEST_ID];
            let reserved_high = &bytes[OFFSET_RESERVED_HIGH..HEADER_BYTES];
            if let Some(at) = reserved_low.iter().position(|&byte| byte != 0) {
                return Err(FrameError::ReservedNotZero { offset: OFFSET_RESERVED_LOW + at });
            }
            if let Some(at) = reserved_high.iter().position(|&byte| byte != 0) {
                return Err(FrameError::ReservedNotZero { offset: OFFSET_RESERVED_HIGH + at });
            }
        }
        Ok(Header {
            version,
            kind: Kind(bytes[OFFSET_KIND]),
            request_id: u64::from_le_bytes(read_array(bytes, OFFSET_REQUEST_ID)),
            body_len: u32::from_le_bytes(read_array(bytes, OFFSET_BODY_LEN)),
            body_checksum: u32::from_le_bytes(read_array(bytes, OFFSET_BODY_CHECKSUM)),
        })
    }

    /// Bytes of the whole frame this header starts.
    pub fn frame_len(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.body_len)
    }
}

/// CRC-32C of the header without its own checksum field.
fn header_checksum(bytes: &[u8; HEADER_BYTES]) -> u32 {
    let head = crc32c::crc32c(&bytes[..OFFSET_HEADER_CHECKSUM]);
    crc32c::crc32c_append(head, &bytes[OFFSET_RESERVED_HIGH..])
}

fn read_array<const N: usize>(bytes: &[u8; HEADER_BYTES], offset: usize) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(&bytes[offset..offset + N]);
    array
}

/// Why a byte stream is not a sequence of frames. Every variant means the
/// connection must be closed: its frame boundaries can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not [`MAGIC`]: the peer does not speak this
    /// protocol.
    #[error("bad magic {found:02x?}: the peer does not speak the holdfast protocol")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The header's checksum does not match its bytes.
    #[error("header checksum mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    HeaderChecksum {
        /// The checksum the header carries.
        expected: u32,
        /// The checksum of the bytes received.
        actual: u32,
    },
    /// A reserved header byte of a version 1 frame is not zero.
    #[error("reserved header byte {offset} is not zero")]
    ReservedNotZero {
        /// Offset of the first nonzero reserved byte.
        offset: usize,
    },
    /// The frame is longer than the decoder's limit. Refused from the header
    /// alone; the header is intact, so the peer can still be told which
    /// request was refused before the connection closes.
    #[error("frame of {len} bytes (request {request_id}), more than the limit of {max}")]
    TooLarge {
        /// The frame's length, header included.
        len: u64,
        /// The limit.
        max: u32,
        /// The refused frame's request id.
        request_id: u64,
    },
    /// The body's checksum does not match its bytes. The header is intact,
    /// so the peer can still be told which request was refused.
    #[error(
        "body checksum mismatch (request {request_id}): header says {expected:#010x}, body gives {actual:#010x}"
    )]
    BodyChecksum {
        /// The checksum the header carries.
        expected: u32,
        /// The checksum of the body received.
        actual: u32,
        /// The refused frame's request id.
        request_id: u64,
    },
    /// [`Frame::from_bytes`] was given less than one whole frame.
    #[error("incomplete frame: need {needed} bytes, {available} available")]
    Incomplete {
        /// Bytes needed so far (the header, or the whole frame once the
        /// header is known).
        needed: u64,
        /// Bytes given.
        available: usize,
    },
    /// [`Frame::from_bytes`] was given more than one whole frame.
    #[error("{count} bytes after the frame")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

impl FrameError {
    /// The request id of the refused frame, when its header passed its
    /// checks so the id can be trusted: a node may answer that request
    /// ([`FrameTooLarge`](crate::message::ErrorCode::FrameTooLarge) or
    /// [`BadRequest`](crate::message::ErrorCode::BadRequest)) before it
    /// closes the connection.
    pub fn request_id(&self) -> Option<u64> {
        match *self {
            FrameError::TooLarge { request_id, .. }
            | FrameError::BodyChecksum { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
}

/// One whole, checksummed frame: header and body in one 16-byte-aligned
/// buffer, exactly as received.
///
/// A frame's header and body checksums have been verified; its body has not
/// yet been validated as a message (see [`Frame::access`], [`Frame::decode`]).
#[derive(Clone)]
pub struct Frame {
    header: Header,
    bytes: AlignedVec,
}

impl Frame {
    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The message kind.
    pub fn kind(&self) -> Kind {
        self.header.kind
    }

    /// The sender's request id.
    pub fn request_id(&self) -> u64 {
        self.header.request_id
    }

    /// The protocol version the sender speaks.
    pub fn version(&self) -> u8 {
        self.header.version
    }

    /// The body: an rkyv archive, 16-byte aligned, checksum verified, not yet
    /// validated.
    pub fn body(&self) -> &[u8] {
        let body = &self.bytes[HEADER_BYTES..];
        debug_assert!(body.as_ptr().addr().is_multiple_of(BODY_ALIGNMENT));
        body
    }

    /// The whole frame exactly as received, header included: what a node
    /// forwards to another core or peer without re-encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole frame's buffer, header included.
    pub fn into_bytes(self) -> AlignedVec {
        self.bytes
    }

    /// Decodes exactly one whole frame from `bytes`, copying it into an
    /// aligned buffer; see [`from_aligned_bytes`](Self::from_aligned_bytes).
    pub fn from_bytes(bytes: &[u8], frame_bytes_max: u32) -> Result<Frame, FrameError> {
        let mut aligned = AlignedVec::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        Frame::from_aligned_bytes(aligned, frame_bytes_max)
    }

    /// Takes a buffer holding exactly one whole frame (say, one forwarded
    /// from another core) without copying it, after the [`FrameDecoder`]'s
    /// checks in the same order, plus [`FrameError::Incomplete`] and
    /// [`FrameError::TrailingBytes`].
    pub fn from_aligned_bytes(
        bytes: AlignedVec,
        frame_bytes_max: u32,
    ) -> Result<Frame, FrameError> {
        let Some(header_bytes) = bytes.first_chunk::<HEADER_BYTES>() else {
            return Err(FrameError::Incomplete {
                needed: HEADER_BYTES as u64,
                available: bytes.len(),
            });
        };
        let header = check_header(header_bytes, frame_bytes_max)?;
        let frame_len = header.frame_len();
        let len = bytes.len() as u64;
        if len < frame_len {
            return Err(FrameError::Incomplete { needed: frame_len, available: bytes.len() });
        }
        if len > frame_len {
            // Less than the frame limit, so it fits a usize.
            return Err(FrameError::TrailingBytes { count: (len - frame_len) as usize });
        }
        check_body(&header, &bytes[HEADER_BYTES..])?;
        Ok(Frame { header, bytes })
    }
}

/// Steps 1 to 4 of the decoding order: everything the header alone can tell.
fn check_header(bytes: &[u8; HEADER_BYTES], frame_bytes_max: u32) -> Result<Header, FrameError> {
    let header = Header::decode(bytes)?;
    if header.frame_len() > u64::from(frame_bytes_max) {
        return Err(FrameError::TooLarge {
            len: header.frame_len(),
            max: frame_bytes_max,
            request_id: header.request_id,
        });
    }
    Ok(header)
}

/// Step 5 of the decoding order, once the whole body is in.
fn check_body(header: &Header, body: &[u8]) -> Result<(), FrameError> {
    assert_eq!(body.len() as u64, u64::from(header.body_len));
    let actual = crc32c::crc32c(body);
    if actual != header.body_checksum {
        return Err(FrameError::BodyChecksum {
            expected: header.body_checksum,
            actual,
            request_id: header.request_id,
        });
    }
    Ok(())
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame").field("header", &self.header).finish_non_exhaustive()
    }
}

/// What one call to [`FrameDecoder::decode`] did.
#[derive(Debug)]
pub struct Decoded {
    /// How many bytes of the input were taken. When no frame completed this
    /// is the whole input (the decoder buffers partial frames); when one did,
    /// the rest of the input starts the next frame and must be passed again.
    pub consumed: usize,
    /// The frame that completed, if any.
    pub frame: Option<Frame>,
}

/// Reassembles frames from a byte stream fed in pieces of any size (sans-IO:
/// the caller reads the socket and hands the bytes over).
///
/// Memory is bounded by the limit: a partial frame is buffered only after its
/// header has been checked and its length accepted, and the buffer grows only
/// as body bytes actually arrive, so a peer that announces a large frame and
/// sends nothing costs nothing.
///
/// After an error the decoder is stuck: every later call returns the same
/// error, because the stream has no trustworthy boundary left.
///
/// ```
/// use holdfast_net::frame::{FrameDecoder, Kind, encode_frame};
///
/// let mut stream = encode_frame(Kind::PING, 7, &[]);
/// stream.extend(encode_frame(Kind::PING, 8, &[]));
///
/// let mut decoder = FrameDecoder::new(1 << 20);
/// let mut input = &stream[..];
/// let mut ids = Vec::new();
/// while !input.is_empty() {
///     let decoded = decoder.decode(input)?;
///     input = &input[decoded.consumed..];
///     if let Some(frame) = decoded.frame {
///         ids.push(frame.request_id());
///     }
/// }
/// assert_eq!(ids, [7, 8]);
/// # Ok::<(), holdfast_net::frame::FrameError>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    frame_bytes_max: u32,
    /// The partial frame: up to a header's worth of bytes, then, once
    /// `header` is set, the header and the body bytes received so far.
    buffer: AlignedVec,
    /// The current frame's header, once it has been checked and accepted.
    header: Option<Header>,
    /// The first error; sticky.
    error: Option<FrameError>,
}

/// How much buffer to reserve when a body starts: enough for a typical
/// request in one allocation, never the announced length up front.
const BODY_RESERVE_BYTES: usize = 16 * 1024;

impl FrameDecoder {
    /// A decoder that refuses frames longer than `frame_bytes_max` bytes,
    /// header included.
    ///
    /// # Panics
    ///
    /// If the limit is below [`HEADER_BYTES`] or above
    /// [`FRAME_BYTES_MAX_CEILING`]: a configuration bug.
    pub fn new(frame_bytes_max: u32) -> FrameDecoder {
        assert!(
            (HEADER_BYTES as u32..=FRAME_BYTES_MAX_CEILING).contains(&frame_bytes_max),
            "frame limit {frame_bytes_max} outside {HEADER_BYTES}..={FRAME_BYTES_MAX_CEILING}"
        );
        FrameDecoder { frame_bytes_max, buffer: AlignedVec::new(), header: None, error: None }
    }

    /// The limit this decoder applies, header included.
    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Bytes of a partial frame held. Zero at a frame boundary, which is the
    /// only place a peer may cleanly close the connection.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Takes bytes from `input` until one frame completes or the input runs
    /// out. Call again with `&input[consumed..]` while it returns frames.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, FrameError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let result = self.decode_inner(input);
        if let Err(error) = result {
            self.error = Some(error);
            self.header = None;
            self.buffer = AlignedVec::new();
        }
        result
    }

    fn decode_inner(&mut self, input: &[u8]) -> Result<Decoded, FrameError> {
        let mut consumed = 0;
        let header = match self.header {
            Some(header) => header,
            None => {
                debug_assert!(self.buffer.len() < HEADER_BYTES);
                let take = (HEADER_BYTES - self.buffer.len()).min(input.len());
                self.buffer.extend_from_slice(&input[..take]);
                consumed += take;
                let Some(header_bytes) = self.buffer.first_chunk::<HEADER_BYTES>() else {
                    assert_eq!(consumed, input.len());
                    return Ok(Decoded { consumed, frame: None });
                };
                let header = check_header(header_bytes, self.frame_bytes_max)?;
                self.buffer.reserve((header.body_len as usize).min(BODY_RESERVE_BYTES));
                self.header = Some(header);
                header
            }
        };
        // The length was checked against a limit far below `usize::MAX`.
        let frame_len = HEADER_BYTES + header.body_len as usize;
        assert!(self.buffer.len() >= HEADER_BYTES && self.buffer.len() <= frame_len);
        let take = (frame_len - self.buffer.len()).min(input.len() - consumed);
        self.buffer.extend_from_slice(&input[consumed..consumed + take]);
        consumed += take;
        if self.buffer.len() < frame_len {
            assert_eq!(consumed, input.len());
            return Ok(Decoded { consumed, frame: None });
        }
        check_body(&header, &self.buffer[HEADER_BYTES..])?;
        let bytes = std::mem::take(&mut self.buffer);
        self.header = None;
        assert_eq!(bytes.len(), frame_len);
        Ok(Decoded { consumed, frame: Some(Frame { header, bytes }) })
    }
}

/// A whole frame of `kind` carrying `body` (already an archive, or empty).
///
/// # Panics
///
/// If the body is 4 GiB or longer; no message the crate builds comes near.
pub fn encode_frame(kind: Kind, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&[0; HEADER_BYTES]);
    out.extend_from_slice(body);
    finish_frame(&mut out, 0, kind, request_id);
    out
}

/// Fills in the header of the frame that starts at `start` in `out`, whose
/// body is everything after the header's place.
pub(crate) fn finish_frame(out: &mut [u8], start: usize, kind: Kind, request_id: u64) {
    let body = &out[start + HEADER_BYTES..];
    let body_len = u32::try_from(body.len()).expect("frame body fits the u32 length field");
    let header = Header {
        version: PROTOCOL_VERSION,
        kind,
        request_id,
        body_len,
        body_checksum: crc32c::crc32c(body),
    };
    out[start..start + HEADER_BYTES].copy_from_slice(&header.encode());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_has_the_documented_layout() {
        let header = Header {
            version: PROTOCOL_VERSION,
            kind: Kind::PUT,
            request_id: 0x0102_0304_0506_0708,
            body_len: 0x1122_3344,
            body_checksum: 0xdead_beef,
        };
        let bytes = header.encode();
        assert_eq!(&bytes[0..4], b"hfw1");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 2);
        assert_eq!(bytes[6..8], [0, 0]);
        assert_eq!(bytes[8..16], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(bytes[16..20], 0x1122_3344u32.to_le_bytes());
        assert_eq!(bytes[20..24], 0xdead_beefu32.to_le_bytes());
        assert_eq!(bytes[28..32], [0, 0, 0, 0]);
        assert_eq!(Header::decode(&bytes), Ok(header));
    }

    #[test]
    fn kinds_pair_requests_with_replies() {
        assert_eq!(Kind::GET.reply(), Some(Kind::GET_REPLY));
        assert_eq!(Kind::PUT.reply(), Some(Kind::PUT_REPLY));
        assert_eq!(Kind::DELETE.reply(), Some(Kind::DELETE_REPLY));
        assert_eq!(Kind::PING.reply(), Some(Kind::PONG));
        assert_eq!(Kind::GET_REPLY.reply(), None);
        assert_eq!(Kind::ERROR.reply(), None);
        assert_eq!(Kind::new(0).reply(), None);
        assert_eq!(Kind::new(63).reply(), None);
        assert_eq!(Kind::new(128 + 5).reply(), Some(Kind::new(192 + 5)));
        assert!(Kind::ERROR.is_reply() && !Kind::ERROR.is_node());
        assert!(Kind::new(200).is_node());
        for (request, reply) in [
            (Kind::STATS, Kind::STATS_REPLY),
            (Kind::ADMIN, Kind::ADMIN_REPLY),
            (Kind::SCAN, Kind::SCAN_REPLY),
            (Kind::OFFER, Kind::OFFER_REPLY),
            (Kind::GOSSIP_DIGEST, Kind::GOSSIP_REPLY),
            (Kind::GOSSIP_PUSH, Kind::GOSSIP_PUSH_REPLY),
            (Kind::REPAIR, Kind::REPAIR_REPLY),
            (Kind::TREE, Kind::TREE_REPLY),
            (Kind::LEAF, Kind::LEAF_REPLY),
            (Kind::FETCH, Kind::FETCH_REPLY),
            (Kind::REPAIR_WRITE, Kind::REPAIR_WRITE_REPLY),
            (Kind::REAP, Kind::REAP_REPLY),
        ] {
            assert_eq!(request.reply(), Some(reply));
            assert!(request.name().is_some() && reply.name().is_some());
        }
        for byte in 0..=u8::MAX {
            let kind = Kind::new(byte);
            if let Some(reply) = kind.reply() {
                assert!(reply.is_reply() && !kind.is_reply());
                assert_eq!(reply.is_node(), kind.is_node());
                assert_ne!(reply, Kind::ERROR);
            }
        }
    }

    #[test]
    fn reserved_bytes_are_checked_only_in_version_one() {
        let header =
            Header { version: 1, kind: Kind::GET, request_id: 1, body_len: 0, body_checksum: 0 };
        let mut bytes = header.encode();
        bytes[30] = 9;
        let checksum = header_checksum(&bytes);
        bytes[24..28].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(Header::decode(&bytes), Err(FrameError::ReservedNotZero { offset: 30 }));
        bytes[4] = 2;
        let checksum = header_checksum(&bytes);
        bytes[24..28].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(Header::decode(&bytes).map(|h| h.version), Ok(2));
    }

    #[test]
    fn frame_bodies_are_aligned() {
        for len in [0, 1, 15, 17, 1000] {
            let frame = Frame::from_bytes(&encode_frame(Kind::PING, 1, &vec![7; len]), 4096)
                .expect("a frame we encoded decodes");
            assert_eq!(frame.body().len(), len);
            assert!(frame.body().as_ptr().addr().is_multiple_of(BODY_ALIGNMENT));
        }
    }
}
