//! holdfast-net: what travels between holdfast nodes and their clients, and
//! the client library.
//!
//! - [`clock`]: the actors, dots and version vectors that order writes, and
//!   the canonical encoding of a vector, which is the causal context a client
//!   carries from a read to its next write.
//! - [`siblings`]: the set of concurrent versions of one key, with the
//!   canonical byte encoding that stores and replicas hash.
//! - [`frame`]: the unit every connection carries, a hand-checked 32-byte
//!   header and an rkyv body, and the sans-IO [`frame::FrameDecoder`].
//! - [`message`]: the message types and the one place archived bytes are
//!   read (rkyv's validating access); [`message::Request::parse`] is what a
//!   node runs on every frame a client sends.
//! - [`ring`]: partitions, their owners and preference lists.
//! - [`membership`]: member records and gossip messages (versioned, with a
//!   merge that converges), read through the same checked access.
//! - [`limits`]: every size a peer can make us accept, and how they relate.
//! - [`client`]: the sans-IO [`client::ClientCore`] and the blocking
//!   [`Client`] over `std::net`.
//!
//! The wire protocol is described in `net/PROTOCOL.md` (header, kinds,
//! messages, limits, error codes, versioning, pipelining).
//!
//! The crate is deliberately small and free of runtimes: it does not depend
//! on glommio, io_uring or any async executor, so an application that only
//! talks to holdfast links little more than this, and the cluster core can
//! use the same types inside a deterministic simulator. The blocking client
//! is the only code here that touches a socket or reads a clock.
//!
//! What it is not: a store (the engine keeps encoded sibling sets as opaque
//! bytes) or a conflict resolver. Siblings are returned as they are;
//! last-writer-wins and mergeable types are built on top.
//!
//! Invariants the rest of the system relies on:
//!
//! - A sibling set holds exactly the versions nothing else in it supersedes,
//!   and [`SiblingSet::merge`] is commutative, associative and idempotent on
//!   every state the write process can reach, so replicas converge whatever
//!   order replication, read repair and anti-entropy deliver state in.
//! - Equal sets (and equal clocks) encode to equal bytes, and the decoders
//!   accept only such canonical bytes, so replicas can compare sets by
//!   hashing their bytes.
//! - Decoding untrusted bytes never panics and never allocates much beyond
//!   the input's length: a frame over the configured limit is refused from
//!   its header before its body is buffered, and a body is read only after
//!   its checksum and rkyv's validation passed.
//!
//! Limits: [`clock::CLOCK_ENTRIES_MAX`] actors per clock,
//! [`siblings::VERSIONS_MAX`] versions per key, 64 KiB keys and 1 MiB
//! values ([`limits`]), 2 MiB request frames and 65 MiB reply frames by
//! default. Clocks are never pruned (see [`clock`] for why they stay small).
//!
//! Versioned values, as a node handles them (the client side is in
//! [`client`]'s docs):
//!
//! ```
//! use holdfast_net::{Actor, DecodeLimits, SiblingSet, VersionVector};
//!
//! let (a, b) = (Actor::new(1, 0), Actor::new(2, 0));
//!
//! // Two clients write the same key through different coordinators without
//! // reading it first: the writes are concurrent, and replication keeps both.
//! let mut replica_a = SiblingSet::new();
//! replica_a.write(a, &VersionVector::new(), Some(b"red".to_vec()))?;
//! let mut replica_b = SiblingSet::new();
//! replica_b.write(b, &VersionVector::new(), Some(b"blue".to_vec()))?;
//! replica_a.merge(&replica_b);
//! assert_eq!(replica_a.values().collect::<Vec<_>>(), [b"red".as_slice(), b"blue"]);
//!
//! // A read returns both siblings and their context; a write carrying that
//! // context supersedes exactly what was read.
//! let context = replica_a.context();
//! replica_a.write(a, &context, Some(b"purple".to_vec()))?;
//! assert_eq!(replica_a.values().collect::<Vec<_>>(), [b"purple".as_slice()]);
//!
//! // What the store keeps and replicas hash: canonical bytes.
//! let bytes = replica_a.encode();
//! assert_eq!(SiblingSet::decode(&bytes, DecodeLimits::default())?, replica_a);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod clock;
pub mod frame;
pub mod limits;
pub mod membership;
pub mod message;
pub mod ring;
pub mod siblings;

pub use client::{Client, ClientError, ClientOptions, Context, GetResult, Written};
pub use clock::{Actor, Causality, ClockDecodeError, Dot, VersionVector};
pub use siblings::{DecodeError, DecodeLimits, SiblingSet, Version, WriteError};
