//! holdfast-net: what travels between holdfast nodes and their clients.
//!
//! Today that is causality and versioned values: [`clock`] has the actors,
//! dots and version vectors that order writes, and [`siblings`] the set of
//! concurrent versions of one key with its canonical byte encoding. Frames,
//! message types and the client library will join them here. The crate is
//! deliberately small and free of I/O: it does not depend on glommio,
//! io_uring or any runtime, so an application that only talks to holdfast
//! links little more than this, and the cluster core can use the same types
//! inside a deterministic simulator.
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
//! - Equal sets encode to equal bytes, and the decoder accepts only such
//!   canonical bytes, so replicas can compare sets by hashing their bytes.
//! - Decoding untrusted bytes never panics and never allocates much beyond
//!   the input's length.
//!
//! Limits: [`clock::CLOCK_ENTRIES_MAX`] actors per clock,
//! [`siblings::VERSIONS_MAX`] versions per key, and a per-value byte cap
//! ([`siblings::DecodeLimits`], 1 MiB by default), all enforced by the
//! decoder. Clocks are never pruned (see [`clock`] for why they stay small).
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
pub mod message;
pub mod siblings;

pub use client::{Client, ClientError, ClientOptions, Context, GetResult};
pub use clock::{Actor, Causality, ClockDecodeError, Dot, VersionVector};
pub use siblings::{DecodeError, DecodeLimits, SiblingSet, Version, WriteError};
