//! How to talk to a target: each target's wire protocol as a sans-IO codec
//! that turns requests into bytes and bytes into replies.
//!
//! Architecture invariant: nothing here does I/O or reads a clock. The
//! connection core ([`crate::connection`]) owns the buffers and calls in;
//! the glommio driver and the tests' simulated targets move the bytes.
//!
//! Requests carry a `tag` chosen by the caller (a small slot number); a
//! codec hands it back on the matching [`Reply`], whether its protocol
//! answers in order (RESP) or by request id (holdfast).

pub mod holdfast;
pub mod resp;

use thiserror::Error;

/// Which server to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// holdfast's binary protocol.
    Holdfast,
    /// Redis (RESP2, GET and SET).
    Redis,
}

impl TargetKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Holdfast => "holdfast",
            Self::Redis => "redis",
        }
    }
}

/// One request, borrowing its key and value from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read one key.
    Read {
        /// The key.
        key: &'a [u8],
    },
    /// Write one key. `context` is what a read of it returned (holdfast's
    /// causal context; empty for a blind write or a target without one).
    Write {
        /// The key.
        key: &'a [u8],
        /// The new value.
        value: &'a [u8],
        /// The causal context read before, or empty.
        context: &'a [u8],
    },
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read found the key; `context` is its causal context (empty where
    /// the target has none).
    Found {
        /// Opaque bytes to send back with a write of the same key.
        context: Vec<u8>,
    },
    /// A read found no value (not an error); `context` is what a write
    /// should still carry (holdfast's covers tombstones).
    NotFound {
        /// Opaque bytes to send back with a write of the same key.
        context: Vec<u8>,
    },
    /// A write was acknowledged; `context` covers the new value (empty
    /// where the target has none).
    Written {
        /// Opaque bytes to send with the next write of the same key.
        context: Vec<u8>,
    },
    /// The target answered with an error.
    Failed {
        /// The target's message.
        message: String,
    },
}

/// One decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The tag its request was encoded with.
    pub tag: u32,
    /// How the request ended.
    pub outcome: Outcome,
}

/// The byte stream cannot be a reply stream of this protocol; the
/// connection is unusable after it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Bytes that no reply starts with, or a malformed reply.
    #[error("malformed reply: {detail}")]
    Malformed {
        /// What was wrong.
        detail: String,
    },
    /// A reply longer than the codec accepts.
    #[error("reply of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// The length announced.
        len: u64,
        /// The most accepted.
        limit: u64,
    },
    /// A reply nothing was waiting for.
    #[error("unexpected reply: {detail}")]
    Unexpected {
        /// Which reply.
        detail: String,
    },
    /// A request the codec cannot express.
    #[error("cannot encode request: {detail}")]
    Encode {
        /// Why.
        detail: String,
    },
}

/// A target's wire protocol, without I/O.
pub trait Protocol {
    /// Appends the bytes of `request` to `tx`, to be answered with `tag`.
    fn encode(
        &mut self,
        request: Request<'_>,
        tag: u32,
        tx: &mut Vec<u8>,
    ) -> Result<(), ProtocolError>;

    /// Takes in received bytes and returns how many it consumed; the rest
    /// (the start of an incomplete reply) is offered again, with more
    /// bytes after it, next time. Complete replies wait in
    /// [`Protocol::poll_reply`]. An error means the stream is unusable.
    fn receive(&mut self, rx: &[u8]) -> Result<usize, ProtocolError>;

    /// The next complete reply, in the order they arrived.
    fn poll_reply(&mut self) -> Option<Reply>;
}
