//! Every size a peer can make us accept, in one place.
//!
//! A node and a client each refuse anything larger than these, so a hostile
//! or buggy peer can cost at most a bounded amount of memory per connection.
//! The relations between the limits are checked at compile time below: a
//! request carrying the largest key, value and context must fit in the
//! default request frame, and a reply carrying the largest sibling set must
//! fit in the default reply frame.
//!
//! The numbers are protocol constants, not tuning knobs: a node may be
//! configured to accept less (and answers `KeyTooLarge`, `ValueTooLarge` or
//! closes on `FrameTooLarge`), never more than a client built against this
//! crate will send or accept.

use crate::clock::{CLOCK_BYTES_MAX, CLOCK_ENTRIES_MAX};
use crate::frame::HEADER_BYTES;
use crate::siblings::{VALUE_BYTES_MAX_DEFAULT, VERSIONS_MAX};

/// The longest key: 64 KiB, the same as the store's.
pub const KEY_BYTES_MAX: usize = 64 * 1024;

/// The longest value: 1 MiB, the same as the sibling set decoder's default.
pub const VALUE_BYTES_MAX: usize = VALUE_BYTES_MAX_DEFAULT as usize;

/// The longest causal context: an encoded clock at its entry limit.
pub const CONTEXT_BYTES_MAX: usize = CLOCK_BYTES_MAX;

/// The longest message in an error reply. Nodes cut longer ones at a
/// character boundary; the code, not the text, is what programs act on.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// rkyv's own bytes in a message body beyond its byte payloads: the root
/// struct (an 8-byte relative pointer and length per vector, the integers)
/// and alignment padding before it. The largest root, `PutRequest`'s, is 28
/// bytes with at most 3 bytes of padding; 256 leaves room to add fields.
pub const MESSAGE_OVERHEAD_BYTES_MAX: usize = 256;

/// rkyv's bytes per element of a vector of byte vectors (a reply's
/// siblings): one archived vector, an 8-byte pointer and length.
pub const SIBLING_OVERHEAD_BYTES: usize = 8;

/// The default largest frame a node accepts from a client, header included:
/// 2 MiB, comfortably above the largest request (a put of a 64 KiB key, a
/// 1 MiB value and a full context is about 1.07 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 2 * 1024 * 1024;

/// The default largest frame a client accepts from a node, header included:
/// 65 MiB, because a read returns every sibling, and a key may hold
/// [`VERSIONS_MAX`] of them at [`VALUE_BYTES_MAX`] each. Node-to-node frames
/// that ship a whole sibling set need the same room. The decoder grows its
/// buffer only as bytes arrive, so the limit costs nothing until a reply
/// that large actually comes.
pub const REPLY_FRAME_BYTES_MAX_DEFAULT: u32 = 65 * 1024 * 1024;

/// The largest frame limit a decoder may be configured with: 1 GiB. rkyv's
/// relative pointers are 32-bit signed offsets, so an archive must stay well
/// under 2 GiB; nothing in the protocol comes near this.
pub const FRAME_BYTES_MAX_CEILING: u32 = 1 << 30;

/// The default bound on requests a client keeps in flight on one connection
/// (started, and not yet completed and collected). Enough to keep a loopback
/// connection busy (Redis reaches its peak with 16), small enough that a
/// stalled node costs a client little memory.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 128;

/// The largest request a client can send.
pub const REQUEST_BYTES_MAX: usize =
    HEADER_BYTES + KEY_BYTES_MAX + VALUE_BYTES_MAX + CONTEXT_BYTES_MAX + MESSAGE_OVERHEAD_BYTES_MAX;

/// The largest reply to a read: every sibling at the value limit.
pub const READ_REPLY_BYTES_MAX: usize = HEADER_BYTES
    + VERSIONS_MAX * (VALUE_BYTES_MAX + SIBLING_OVERHEAD_BYTES)
    + CONTEXT_BYTES_MAX
    + MESSAGE_OVERHEAD_BYTES_MAX;

/// The longest encoded sibling set: [`VERSIONS_MAX`] versions, each a dot
/// (20 bytes), a clock of [`CLOCK_ENTRIES_MAX`] entries (a count and 20
/// bytes an entry) and a value at the limit (a tag and a length first),
/// after the set's 5-byte header (see `siblings`' encoding).
pub const SET_BYTES_MAX: usize =
    5 + VERSIONS_MAX * (20 + 4 + CLOCK_ENTRIES_MAX * 20 + 1 + 4 + VALUE_BYTES_MAX);

/// The most keys one `ScanReply` carries; a node answers a `ScanRequest`
/// asking for more with at most this many.
pub const SCAN_KEYS_MAX: usize = 1024;

/// The most bytes of keys and sets one `ScanReply` carries beyond its first
/// entry: a node ends the page before an entry that would pass it (and sets
/// `more`). The first entry always goes, so a page makes progress whatever
/// the size of one key's set.
pub const SCAN_PAGE_BYTES_MAX: usize = 8 << 20;

/// rkyv's bytes per entry of a `ScanReply` (two archived vectors) or of an
/// `OfferRequest` (a vector and a `u64`, aligned).
pub const SCAN_ENTRY_OVERHEAD_BYTES: usize = 16;

/// The largest `ScanReply` frame: a page of [`SCAN_PAGE_BYTES_MAX`], or one
/// entry with the longest key and set, whichever is larger.
pub const SCAN_REPLY_BYTES_MAX: usize = HEADER_BYTES
    + MESSAGE_OVERHEAD_BYTES_MAX
    + SCAN_KEYS_MAX * SCAN_ENTRY_OVERHEAD_BYTES
    + if SCAN_PAGE_BYTES_MAX > KEY_BYTES_MAX + SET_BYTES_MAX {
        SCAN_PAGE_BYTES_MAX
    } else {
        KEY_BYTES_MAX + SET_BYTES_MAX
    };

/// The most keys one `OfferRequest` may carry (each within the key limit;
/// the whole request is held to the node's request frame limit too).
pub const OFFER_KEYS_MAX: usize = 1024;

/// Anti-entropy: the Merkle trees' fan-out (interior nodes have this many
/// children), as the engine's `cluster::merkle` builds them.
pub const TREE_FANOUT: usize = 16;

/// Anti-entropy: the deepest level of a tree (0 is the root, this the
/// leaves). A `TreeRequest` for a deeper level is refused.
pub const TREE_LEVEL_MAX: u8 = 3;

/// Anti-entropy: leaves of a tree (`TREE_FANOUT ^ TREE_LEVEL_MAX`), so a
/// leaf index is below this.
pub const TREE_LEAVES: usize = 4096;

const _: () = assert!(TREE_LEAVES == TREE_FANOUT.pow(TREE_LEVEL_MAX as u32));

/// The most node indices one `TreeRequest` may name (each below the width
/// of its level: `TREE_FANOUT ^ level`).
pub const TREE_INDICES_MAX: usize = TREE_LEAVES;

/// The most leaves one `LeafRequest` may name (each below
/// [`TREE_LEAVES`]).
pub const LEAF_LEAVES_MAX: usize = TREE_LEAVES;

/// The most keys one `LeafReply` carries (the replica lists at most this
/// many).
pub const LEAF_ENTRIES_MAX: usize = 4096;

/// The most bytes of keys one `LeafReply` carries beyond its first entry:
/// a node leaves the rest of the listing out (the keys of these leaves
/// are few in practice; only keys near the key limit come near it).
pub const LEAF_REPLY_KEY_BYTES_MAX: usize = 16 << 20;

/// The most keys one `FetchRequest` may name (each within the key limit).
pub const FETCH_KEYS_MAX: usize = 4096;

/// The most bytes of sets a `FetchReply` carries beyond its first entry,
/// whatever the request asked (the keys left out are simply absent).
pub const FETCH_PAGE_BYTES_MAX: usize = SCAN_PAGE_BYTES_MAX;

/// The most entries one `RepairWrite` may carry (each key within the key
/// limit; the whole request is held to the node's request frame limit too).
pub const REPAIR_ENTRIES_MAX: usize = 4096;

/// rkyv's bytes per entry of a `LeafReply` (a vector and a `u64`).
pub const LEAF_ENTRY_OVERHEAD_BYTES: usize = 16;

/// The largest `LeafReply` frame.
pub const LEAF_REPLY_BYTES_MAX: usize = HEADER_BYTES
    + MESSAGE_OVERHEAD_BYTES_MAX
    + LEAF_ENTRIES_MAX * LEAF_ENTRY_OVERHEAD_BYTES
    + LEAF_REPLY_KEY_BYTES_MAX
    + KEY_BYTES_MAX;

/// The largest `FetchReply` frame: as a scan page's.
pub const FETCH_REPLY_BYTES_MAX: usize = HEADER_BYTES
    + MESSAGE_OVERHEAD_BYTES_MAX
    + FETCH_KEYS_MAX * SCAN_ENTRY_OVERHEAD_BYTES
    + if FETCH_PAGE_BYTES_MAX > KEY_BYTES_MAX + SET_BYTES_MAX {
        FETCH_PAGE_BYTES_MAX
    } else {
        KEY_BYTES_MAX + SET_BYTES_MAX
    };

/// The largest `TreeRequest` and `LeafRequest`: every index, two bytes each.
pub const TREE_REQUEST_BYTES_MAX: usize =
    HEADER_BYTES + MESSAGE_OVERHEAD_BYTES_MAX + 2 * TREE_INDICES_MAX;

const _: () = assert!(LEAF_REPLY_BYTES_MAX <= REPLY_FRAME_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(FETCH_REPLY_BYTES_MAX <= REPLY_FRAME_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(TREE_REQUEST_BYTES_MAX <= FRAME_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(REQUEST_BYTES_MAX <= FRAME_BYTES_MAX_DEFAULT as usize);
// A scan reply travels node to node as a reply, under the reply limit.
const _: () = assert!(SCAN_REPLY_BYTES_MAX <= REPLY_FRAME_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(READ_REPLY_BYTES_MAX <= REPLY_FRAME_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(FRAME_BYTES_MAX_DEFAULT <= REPLY_FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(REPLY_FRAME_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_CEILING);
const _: () = assert!(FRAME_BYTES_MAX_CEILING < i32::MAX as u32);
// A key must be shorter than a value's limit (so a store record bounded by
// the value limit plus a key stays small), and an error message must fit
// any frame.
const _: () = assert!(KEY_BYTES_MAX < VALUE_BYTES_MAX);
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(
    HEADER_BYTES + ERROR_MESSAGE_BYTES_MAX + MESSAGE_OVERHEAD_BYTES_MAX
        <= FRAME_BYTES_MAX_DEFAULT as usize
);
const _: () = assert!(IN_FLIGHT_MAX_DEFAULT >= 1);
