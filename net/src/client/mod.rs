//! The client library: read, write and delete keys on a holdfast cluster.
//!
//! Two layers share one protocol implementation:
//!
//! - [`ClientCore`] is the protocol state of one connection, free of I/O
//!   and of clocks: it turns operations into bytes to send, bytes received
//!   into completions, and the time it is given into timeouts. Any driver can
//!   run it: the blocking [`Client`] here, an async client, or the load
//!   generator, which keeps many requests in flight on each connection.
//! - [`Client`] drives cores over blocking `std::net` sockets, with a small
//!   pool of connections per node, timeouts, reconnection, routing of each
//!   request to a replica of its key, and [`Batch`]es that pipeline many
//!   requests per connection.
//!
//! Between them sits [`Router`], the pure decision of which nodes a key's
//! requests go to, which any driver can share.
//!
//! # Siblings and contexts
//!
//! holdfast never silently drops a write. When two clients write the same key
//! without one having seen the other's write, both values are kept as
//! *siblings*, and a read returns all of them ([`GetResult::values`]),
//! together with a [`Context`]: an opaque token saying which versions the
//! read saw. A write that carries that context replaces exactly those
//! versions, so the usual pattern is read, merge the siblings the way the
//! application understands (union a shopping cart, take the larger counter),
//! and write the result back with the context:
//!
//! ```no_run
//! use holdfast_net::client::{Client, ClientOptions};
//!
//! let client = Client::connect(&["127.0.0.1:7070"], ClientOptions::default())?;
//!
//! // A first write needs no context.
//! let context = client.put(b"cart:ada", b"apples", None)?.context;
//!
//! // Overwriting our own write: the context from the put covers it.
//! client.put(b"cart:ada", b"apples,pears", Some(&context))?;
//!
//! // Read, resolve any siblings, write back with the read's context.
//! let read = client.get(b"cart:ada")?;
//! let mut items: Vec<&[u8]> =
//!     read.values.iter().flat_map(|value| value.split(|&byte| byte == b',')).collect();
//! items.sort();
//! items.dedup();
//! let merged = items.join(&b","[..]);
//! let context = client.put(b"cart:ada", &merged, Some(&read.context))?.context;
//!
//! // A delete needs the context of what it deletes.
//! client.delete(b"cart:ada", &context)?;
//! assert!(client.get(b"cart:ada")?.values.is_empty());
//!
//! // Pipelining: many requests on one connection, one round trip's wait.
//! let mut batch = holdfast_net::client::Batch::new();
//! for i in 0..100u32 {
//!     batch.put(format!("key:{i}").as_bytes(), b"value", None);
//! }
//! for result in client.execute(&batch)? {
//!     result?;
//! }
//! # Ok::<(), holdfast_net::client::ClientError>(())
//! ```
//!
//! A write with no context, or an old one, supersedes nothing newer than
//! what it covers, so it may *add* a sibling rather than replace the value.
//! Contexts are small (at most [`CONTEXT_BYTES_MAX`] bytes) and can be stored
//! with the application's data between a read and a write, as bytes
//! ([`Context::as_bytes`], [`Context::from_bytes`]).
//!
//! Not found is not an error: a key never written, or deleted, reads as no
//! values and a context.
//!
//! # Routing
//!
//! Every key lives on the N nodes of its preference list, and any node
//! accepts any request: one outside the list forwards it to a replica, an
//! extra hop. The addresses given to [`Client::connect`] are *seeds*. With
//! [`ClientOptions::route_by_ring`] (the default), the first read, write or
//! delete fetches the ring from a seed; from then on each such request goes
//! straight to the first node of its key's preference list that accepts a
//! connection, so it is coordinated where it lands. When none of the list
//! can be reached, or the seed has no ring yet, or the fetch failed, the
//! request goes to the seeds, as with routing off. Pings, [`Client::ring`]
//! and [`Client::inspect`] always go to the seeds.
//!
//! The ring is fetched again on the next request after
//! [`ClientOptions::ring_refresh_interval`] (30 s by default), and sooner,
//! though at most every 100 ms, when something suggests it changed: a
//! replica could not be reached or lost a connection, or a node answered
//! that it is "not a replica" of the key. A failed fetch keeps the ring the
//! client had and is tried again a second later. A node that refused a
//! connection is tried last among a key's replicas for a second.
//!
//! Routing never affects correctness, only the hop: a stale ring sends a
//! request to a node that forwards it. What routing does not guarantee:
//! that a request lands on a replica (a stale ring, or members advertising
//! addresses the client cannot use, see [`Router`]), or that reads spread
//! over replicas (the first reachable one coordinates every request for a
//! key).
//!
//! A request whose connection to a replica was refused goes on to the next
//! replica: it was not sent. A read whose connection broke goes on too
//! (reading twice is harmless); a write whose connection broke fails with
//! [`ClientError::ConnectionLost`] and is never sent again.
//!
//! ```no_run
//! use holdfast_net::client::{Client, ClientOptions};
//!
//! // Any node of the cluster will do as a seed; listing several helps
//! // when one is down.
//! let client = Client::connect(&["10.0.0.1:7070", "10.0.0.2:7070"], ClientOptions::default())?;
//! let info = client.ring()?;
//! let ring = info.ring.expect("the seed has formed its ring");
//! let replicas = ring.preference_list(ring.partition_of(b"cart:ada"), usize::from(info.n));
//! // Each replica's own copy, read without coordination, node by node:
//! // a client connected to one address asks that node.
//! let mut versions = Vec::new();
//! for id in replicas {
//!     let addr = &ring.member(id).expect("a member").addr;
//!     let node = Client::connect(&[addr.as_str()], ClientOptions::default())?;
//!     let inspected = node.inspect(b"cart:ada")?;
//!     assert!(inspected.replica);
//!     versions.push((id, inspected.set.len()));
//! }
//! # Ok::<(), holdfast_net::client::ClientError>(())
//! ```
//!
//! # Failures
//!
//! A request that timed out or whose connection broke may or may not have
//! been applied ([`ClientError::Timeout`], [`ClientError::ConnectionLost`]).
//! The blocking client retries reads and pings once on a fresh connection
//! when a pooled connection turns out dead (and, routing, on the next
//! replica), and never retries a write by itself: a write sent twice can
//! leave its value as two siblings.

mod blocking;
mod protocol;
mod routing;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use self::blocking::{Batch, Client, ClientOptions, Operation};
pub use self::protocol::{ClientCore, Completion, CoreOptions, RequestId};
pub use self::routing::Router;
use crate::clock::{ClockDecodeError, Dot, VersionVector};
use crate::frame::{FrameError, Kind};
#[cfg(doc)]
use crate::limits::CONTEXT_BYTES_MAX;
use crate::membership::MemberStatus;
use crate::message::{ErrorCode, MessageError, RepairReply, StatsReply};
use crate::ring::{NodeId, Ring};
use crate::siblings::SiblingSet;

/// The causal context of a read or a write: which versions of a key the
/// client has seen. Pass it to the next write of the same key so that the
/// write supersedes exactly those versions.
///
/// Opaque to applications; it is the encoded [`VersionVector`], always valid
/// (checked when built from bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Context {
    bytes: Vec<u8>,
}

impl Context {
    /// A context from bytes that [`as_bytes`](Self::as_bytes) returned
    /// (possibly stored elsewhere in between).
    pub fn from_bytes(bytes: &[u8]) -> Result<Context, ClockDecodeError> {
        VersionVector::decode(bytes)?;
        Ok(Context { bytes: bytes.to_vec() })
    }

    /// The context of `vector`.
    pub fn from_version_vector(vector: &VersionVector) -> Context {
        Context { bytes: vector.encode() }
    }

    /// The encoded context, for storing or sending.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded context.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The version vector the context encodes.
    pub fn version_vector(&self) -> VersionVector {
        // Every constructor checked the bytes, so this cannot fail.
        VersionVector::decode(&self.bytes).expect("a context holds a valid encoded clock")
    }

    /// The context a node sent, where empty bytes (which a node should not
    /// send, but which mean "none" on the wire) read as the empty clock.
    pub(crate) fn from_reply(bytes: Vec<u8>) -> Result<Context, ClockDecodeError> {
        if bytes.is_empty() {
            return Ok(Context::from_version_vector(&VersionVector::new()));
        }
        VersionVector::decode(&bytes)?;
        Ok(Context { bytes })
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Context[")?;
        for (index, (actor, counter)) in self.version_vector().iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{actor}:{counter}")?;
        }
        f.write_str("]")
    }
}

/// What a read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    /// The live siblings: empty if the key was never written or is deleted,
    /// one value normally, several after concurrent writes.
    pub values: Vec<Vec<u8>>,
    /// The context covering everything read (tombstones included): pass it
    /// to the next write of this key.
    pub context: Context,
}

impl GetResult {
    /// Whether the key has a value.
    pub fn is_found(&self) -> bool {
        !self.values.is_empty()
    }
}

/// What a write returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The key's context after the write (covering the new version and any
    /// sibling concurrent with it): pass it to overwrite this write without
    /// reading first.
    pub context: Context,
    /// The dot of the version the write created. A later write supersedes
    /// this one exactly when its context contains this dot.
    pub dot: Dot,
}

/// Per-request read options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Replicas that must answer; 0 for the cluster's default R.
    pub r: u8,
}

/// Per-request write options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replicas that must acknowledge; 0 for the cluster's default W.
    pub w: u8,
}

/// The outcome of a successful request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A read's siblings and context.
    Get(GetResult),
    /// A write's context afterwards and its version's dot.
    Put(Written),
    /// A delete's context afterwards and its tombstone's dot.
    Delete(Written),
    /// A ping's answer.
    Pong,
    /// A node's ring and replication settings.
    Ring(RingInfo),
    /// One node's own replica of a key.
    Inspect(Inspected),
    /// One node's hints and opinion of its peers.
    Stats(StatsReply),
    /// What an operator's membership change did.
    Admin(AdminOutcome),
    /// What an operator's repair compared and repaired.
    Repair(RepairReply),
}

/// What an operator's membership change ([`Client::admin_leave`],
/// [`Client::admin_remove`]) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminOutcome {
    /// The node changed.
    pub node: NodeId,
    /// Its status now, as the node that made the change holds it (`None`
    /// for a status this build does not know).
    pub status: Option<MemberStatus>,
    /// What happens next, in the node's words.
    pub message: String,
}

/// A node's ring and the cluster's replication settings: what a client
/// needs to send each request straight to a replica of its key (see
/// [`Router`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingInfo {
    /// The id of the node that answered.
    pub node: NodeId,
    /// The node's ring, validated by [`Ring::from_state`]; `None` while the
    /// node has not formed one (it is still waiting for its seeds).
    pub ring: Option<Ring>,
    /// Replicas per key.
    pub n: u8,
    /// The default read quorum.
    pub r: u8,
    /// The default write quorum.
    pub w: u8,
}

/// One node's own replica of a key, read without coordination: for
/// operators and tests that want to see where a key's versions are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// The id of the node that answered.
    pub node: NodeId,
    /// The key's partition.
    pub partition: u32,
    /// Whether the node is in the key's preference list (by its ring).
    pub replica: bool,
    /// The node's sibling set of the key, tombstones and clocks included;
    /// empty if it holds nothing for the key.
    pub set: SiblingSet,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node refused the request (see [`ErrorCode`] for what each code
    /// means and whether to retry).
    #[error("the node refused the request: {code}: {message}")]
    Server {
        /// What went wrong.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// No reply came in time. The request may or may not have been applied.
    #[error("no reply within {timeout:?}; the request may or may not have been applied")]
    Timeout {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The connection closed or broke while the request was in flight. The
    /// request may or may not have been applied.
    #[error("connection lost while the request was in flight; it may or may not have been applied")]
    ConnectionLost,
    /// The request was not sent because its connection is closed; sending it
    /// on another connection is safe.
    #[error("the connection is closed; the request was not sent")]
    Closed,
    /// The key is longer than the protocol allows; nothing was sent.
    #[error("key of {len} bytes, more than the limit of {max}")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than the protocol allows; nothing was sent.
    #[error("value of {len} bytes, more than the limit of {max}")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection already has its limit of requests in flight; nothing
    /// was sent.
    #[error("{max} requests already in flight on this connection")]
    InFlightFull {
        /// The limit ([`CoreOptions::in_flight_max`]).
        max: usize,
    },
    /// The node's bytes broke the framing; the connection was closed.
    #[error("the node broke the framing: {0}")]
    Frame(#[from] FrameError),
    /// The node's reply did not validate.
    #[error("the node sent an invalid reply: {0}")]
    Reply(#[from] MessageError),
    /// The node answered with a reply of the wrong kind.
    #[error("the node answered a {request} request with {reply}")]
    UnexpectedReply {
        /// The request's kind.
        request: Kind,
        /// The reply's kind.
        reply: Kind,
    },
    /// The node's context did not decode.
    #[error("the node sent an invalid context: {0}")]
    BadContext(#[from] ClockDecodeError),
    /// No address accepted a connection.
    #[error("could not connect to any of {addrs:?}: {source}")]
    Connect {
        /// The addresses tried.
        addrs: Vec<SocketAddr>,
        /// The last address's error.
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}
