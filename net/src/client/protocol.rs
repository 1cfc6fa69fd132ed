//! The sans-IO protocol state of one client connection.
//!
//! [`ClientCore`] never touches a socket or reads a clock. Its driver feeds
//! it operations and the time (`start_*`), the bytes the socket received
//! ([`ClientCore::handle_input`]) and the passing of time
//! ([`ClientCore::handle_timeout`]); it hands back bytes to send
//! ([`ClientCore::pending_transmit`]), the next instant it needs waking at
//! ([`ClientCore::poll_timeout`]) and completed requests
//! ([`ClientCore::poll_completion`]). The same core therefore runs under the
//! blocking client, an async runtime, the load generator, or a test that
//! plays the node itself and controls time exactly.
//!
//! # Invariants
//!
//! - Every started request completes exactly once: with its reply, a node's
//!   error, a timeout, or the connection's loss.
//! - Requests started and not yet collected (in flight, or completed and not
//!   yet polled) never exceed [`CoreOptions::in_flight_max`]: a stalled node
//!   or a driver that forgets to poll costs bounded memory.
//! - Replies are matched by request id, so they may arrive in any order; a
//!   reply for an id not in flight (one that already timed out) is counted
//!   and dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{
    AdminOutcome, ClientError, Context, GetResult, Inspected, ReadOptions, Response, RingInfo,
    WriteOptions, Written,
};
use crate::frame::{Frame, FrameDecoder, Kind};
use crate::limits::{
    IN_FLIGHT_MAX_DEFAULT, KEY_BYTES_MAX, REPLY_FRAME_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX,
};
use crate::membership::MemberStatus;
use crate::message::{
    AdminOp, AdminRequest, DeleteRequest, GetRequest, InspectReply, InspectRequest, MessageError,
    Ping, PutRequest, RepairRequest, Reply, RingReply, RingRequest, StatsRequest, decode_dot,
    encode_message_into,
};
use crate::ring::Ring;
use crate::siblings::{DecodeLimits, SiblingSet};

/// Configuration of one connection's protocol state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreOptions {
    /// How long a request may wait for its reply.
    pub timeout: Duration,
    /// The most requests started and not yet collected.
    pub in_flight_max: usize,
    /// The largest reply frame accepted, header included.
    pub reply_frame_bytes_max: u32,
}

impl Default for CoreOptions {
    fn default() -> CoreOptions {
        CoreOptions {
            timeout: Duration::from_secs(5),
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            reply_frame_bytes_max: REPLY_FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

/// Names one request on one connection; the frame's request id. Never 0,
/// which the protocol keeps for messages that expect no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// The id as it travels in the frame header.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A request that finished, one way or another.
#[derive(Debug)]
pub struct Completion {
    /// Which request.
    pub id: RequestId,
    /// Its outcome.
    pub result: Result<Response, ClientError>,
}

/// The requests a core starts. [`complete`] matches on this exhaustively,
/// so a new request cannot be started without saying how it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Started {
    Get,
    Put,
    Delete,
    Ping,
    Ring,
    Inspect,
    Stats,
    Admin,
    Repair,
}

impl Started {
    /// The kind of the request's frame.
    fn kind(self) -> Kind {
        match self {
            Started::Get => Kind::GET,
            Started::Put => Kind::PUT,
            Started::Delete => Kind::DELETE,
            Started::Ping => Kind::PING,
            Started::Ring => Kind::RING,
            Started::Inspect => Kind::INSPECT,
            Started::Stats => Kind::STATS,
            Started::Admin => Kind::ADMIN,
            Started::Repair => Kind::REPAIR,
        }
    }
}

/// A request sent and not yet answered.
#[derive(Clone, Copy, Debug)]
struct Pending {
    started: Started,
    deadline: Instant,
}

/// The protocol state of one client connection. See the module docs.
#[derive(Debug)]
pub struct ClientCore {
    options: CoreOptions,
    /// The id the next request gets; ids are never reused on a connection,
    /// so a late reply can never be taken for a newer request's.
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    /// `pending`'s deadlines in order, for finding the expired ones.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Encoded frames not yet handed to the socket, coalesced.
    transmit: Vec<u8>,
    decoder: FrameDecoder,
    completions: VecDeque<Completion>,
    closed: bool,
    stray_replies: u64,
}

impl ClientCore {
    /// A fresh connection's state.
    ///
    /// # Panics
    ///
    /// If `options.in_flight_max` is 0, or the frame limit is outside what
    /// [`FrameDecoder::new`] accepts.
    pub fn new(options: CoreOptions) -> ClientCore {
        assert!(options.in_flight_max >= 1, "in_flight_max must be at least 1");
        ClientCore {
            options,
            next_id: 1,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            transmit: Vec::new(),
            decoder: FrameDecoder::new(options.reply_frame_bytes_max),
            completions: VecDeque::new(),
            closed: false,
            stray_replies: 0,
        }
    }

    /// The options this core was built with.
    pub fn options(&self) -> &CoreOptions {
        &self.options
    }

    /// Starts a read of `key`.
    pub fn start_get(
        &mut self,
        now: Instant,
        key: &[u8],
        options: ReadOptions,
    ) -> Result<RequestId, ClientError> {
        self.admit(key, &[])?;
        let request = GetRequest { key: key.to_vec(), r: options.r };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Started::Get))
    }

    /// Starts a write of `value` to `key`, superseding what `context` covers
    /// (nothing if `None`).
    pub fn start_put(
        &mut self,
        now: Instant,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
        options: WriteOptions,
    ) -> Result<RequestId, ClientError> {
        self.admit(key, value)?;
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.map(|context| context.as_bytes().to_vec()).unwrap_or_default(),
            w: options.w,
        };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Started::Put))
    }

    /// Starts a delete of `key`, superseding what `context` covers.
    pub fn start_delete(
        &mut self,
        now: Instant,
        key: &[u8],
        context: &Context,
        options: WriteOptions,
    ) -> Result<RequestId, ClientError> {
        self.admit(key, &[])?;
        let request =
            DeleteRequest { key: key.to_vec(), context: context.as_bytes().to_vec(), w: options.w };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Started::Delete))
    }

    /// Starts a ping.
    pub fn start_ping(&mut self, now: Instant) -> Result<RequestId, ClientError> {
        self.admit(&[], &[])?;
        Ok(self.send(now, |out, id| encode_message_into(out, id, &Ping {}), Started::Ping))
    }

    /// Starts a request for the node's ring and the cluster's replication
    /// settings.
    pub fn start_ring(&mut self, now: Instant) -> Result<RequestId, ClientError> {
        self.admit(&[], &[])?;
        Ok(self.send(now, |out, id| encode_message_into(out, id, &RingRequest {}), Started::Ring))
    }

    /// Starts a request for the node's hints and the peers it believes
    /// down.
    pub fn start_stats(&mut self, now: Instant) -> Result<RequestId, ClientError> {
        self.admit(&[], &[])?;
        Ok(self.send(now, |out, id| encode_message_into(out, id, &StatsRequest {}), Started::Stats))
    }

    /// Starts an operator's membership change of `node` (0: the receiving
    /// node itself), made at the receiving node.
    pub fn start_admin(
        &mut self,
        now: Instant,
        op: AdminOp,
        node: u64,
    ) -> Result<RequestId, ClientError> {
        self.admit(&[], &[])?;
        let request = AdminRequest { op: op.as_u8(), node };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Started::Admin))
    }

    /// Starts an operator's anti-entropy repair at the receiving node: of
    /// `partition`, or of every partition it replicates (`None`). The node
    /// answers when its exchanges are done, so give it a long timeout.
    pub fn start_repair(
        &mut self,
        now: Instant,
        partition: Option<u32>,
    ) -> Result<RequestId, ClientError> {
        self.admit(&[], &[])?;
        let request = RepairRequest { all: partition.is_none(), partition: partition.unwrap_or(0) };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Started::Repair))
    }

    /// Starts a read of the node's own replica of `key`, without
    /// coordination (the node answers even if it is not a replica).
    pub fn start_inspect(&mut self, now: Instant, key: &[u8]) -> Result<RequestId, ClientError> {
        self.admit(key, &[])?;
        let request = InspectRequest { key: key.to_vec() };
        Ok(self.send(now, |out, id| encode_message_into(out, id, &request), Started::Inspect))
    }

    /// Checks that a request may start: the connection is open, there is
    /// room in flight, and the sizes are within the protocol's limits.
    fn admit(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if self.in_flight() >= self.options.in_flight_max {
            return Err(ClientError::InFlightFull { max: self.options.in_flight_max });
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(ClientError::KeyTooLarge { len: key.len(), max: KEY_BYTES_MAX });
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(ClientError::ValueTooLarge { len: value.len(), max: VALUE_BYTES_MAX });
        }
        Ok(())
    }

    fn send(
        &mut self,
        now: Instant,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        started: Started,
    ) -> RequestId {
        assert!(!self.closed && self.in_flight() < self.options.in_flight_max);
        let id = self.next_id;
        self.next_id += 1;
        let transmit_before = self.transmit.len();
        encode(&mut self.transmit, id);
        assert!(self.transmit.len() > transmit_before);
        let deadline = now + self.options.timeout;
        let previous = self.pending.insert(id, Pending { started, deadline });
        assert!(previous.is_none(), "request id {id} reused");
        self.deadlines.insert((deadline, id));
        debug_assert_eq!(self.pending.len(), self.deadlines.len());
        RequestId(id)
    }

    /// The encoded requests waiting to be written to the socket, oldest
    /// first, as one buffer (so many requests leave in one write).
    pub fn pending_transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// Marks the first `written` bytes of [`pending_transmit`](Self::pending_transmit)
    /// as sent.
    ///
    /// # Panics
    ///
    /// If `written` is more than is pending.
    pub fn advance_transmit(&mut self, written: usize) {
        assert!(written <= self.transmit.len(), "advanced past the pending bytes");
        self.transmit.drain(..written);
    }

    /// Takes every byte waiting to be sent, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.transmit.is_empty() { None } else { Some(std::mem::take(&mut self.transmit)) }
    }

    /// Feeds bytes the socket received. Completes every request whose reply
    /// is now whole.
    ///
    /// # Errors
    ///
    /// When the bytes break the framing ([`ClientError::Frame`]): the core
    /// is then closed, every request in flight completes with
    /// [`ClientError::ConnectionLost`], and the driver must close the
    /// socket. [`ClientError::Closed`] if the core was already closed.
    pub fn handle_input(&mut self, mut bytes: &[u8]) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        while !bytes.is_empty() {
            let decoded = match self.decoder.decode(bytes) {
                Ok(decoded) => decoded,
                Err(error) => {
                    self.close();
                    return Err(ClientError::Frame(error));
                }
            };
            assert!(decoded.consumed <= bytes.len());
            bytes = &bytes[decoded.consumed..];
            if let Some(frame) = decoded.frame {
                self.handle_frame(&frame);
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: &Frame) {
        let id = frame.request_id();
        let Some(pending) = self.pending.remove(&id) else {
            // A reply to a request that timed out, or a one-way message this
            // version does not expect: nothing waits for it.
            self.stray_replies += 1;
            return;
        };
        let removed = self.deadlines.remove(&(pending.deadline, id));
        assert!(removed);
        let result = complete(pending.started, frame);
        self.completions.push_back(Completion { id: RequestId(id), result });
    }

    /// Completes, with [`ClientError::Timeout`], every request whose
    /// deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let pending = self.pending.remove(&id);
            assert!(pending.is_some_and(|pending| pending.deadline == deadline));
            self.completions.push_back(Completion {
                id: RequestId(id),
                result: Err(ClientError::Timeout { timeout: self.options.timeout }),
            });
        }
        debug_assert_eq!(self.pending.len(), self.deadlines.len());
    }

    /// The earliest deadline of a request in flight: when the driver must
    /// call [`handle_timeout`](Self::handle_timeout) if no reply comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// The next completed request, oldest first.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// The connection is gone (the peer closed it, or the socket failed):
    /// every request in flight completes with [`ClientError::ConnectionLost`]
    /// and no new one starts. Idempotent.
    pub fn close(&mut self) {
        self.closed = true;
        self.transmit = Vec::new();
        self.deadlines.clear();
        for (id, _) in std::mem::take(&mut self.pending) {
            self.completions.push_back(Completion {
                id: RequestId(id),
                result: Err(ClientError::ConnectionLost),
            });
        }
    }

    /// Whether the core was closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Requests started and not yet collected: waiting for a reply, or
    /// completed and not yet taken by [`poll_completion`](Self::poll_completion).
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.completions.len()
    }

    /// Requests waiting for a reply.
    pub fn awaiting_reply(&self) -> usize {
        self.pending.len()
    }

    /// Whether the stream is at a frame boundary: a node closing the
    /// connection now closed it cleanly, not in the middle of a reply.
    pub fn at_frame_boundary(&self) -> bool {
        self.decoder.buffered() == 0
    }

    /// Frames received for no request in flight (late replies to requests
    /// that timed out), since the core was made.
    pub fn stray_replies(&self) -> u64 {
        self.stray_replies
    }
}

/// The outcome of a request `started` answered by `frame`.
fn complete(started: Started, frame: &Frame) -> Result<Response, ClientError> {
    let reply = match Reply::decode(frame)? {
        Reply::Error(error) => {
            return Err(ClientError::Server { code: error.error_code(), message: error.message });
        }
        reply => reply,
    };
    let unexpected = |reply: Reply| ClientError::UnexpectedReply {
        request: started.kind(),
        reply: reply.kind(),
    };
    match started {
        Started::Get => match reply {
            Reply::Get(reply) => Ok(Response::Get(GetResult {
                values: reply.values,
                context: Context::from_reply(reply.context)?,
            })),
            other => Err(unexpected(other)),
        },
        Started::Put => match reply {
            Reply::Put(reply) => {
                Ok(Response::Put(written(Kind::PUT_REPLY, reply.context, &reply.dot)?))
            }
            other => Err(unexpected(other)),
        },
        Started::Delete => match reply {
            Reply::Delete(reply) => {
                Ok(Response::Delete(written(Kind::DELETE_REPLY, reply.context, &reply.dot)?))
            }
            other => Err(unexpected(other)),
        },
        Started::Ping => match reply {
            Reply::Pong(_) => Ok(Response::Pong),
            other => Err(unexpected(other)),
        },
        Started::Ring => match reply {
            Reply::Ring(reply) => Ok(Response::Ring(ring_info(reply)?)),
            other => Err(unexpected(other)),
        },
        Started::Inspect => match reply {
            Reply::Inspect(reply) => Ok(Response::Inspect(inspected(reply)?)),
            other => Err(unexpected(other)),
        },
        Started::Stats => match reply {
            Reply::Stats(reply) => Ok(Response::Stats(reply)),
            other => Err(unexpected(other)),
        },
        Started::Admin => match reply {
            Reply::Admin(reply) => Ok(Response::Admin(AdminOutcome {
                node: reply.node,
                status: MemberStatus::from_u8(reply.status),
                message: reply.message,
            })),
            other => Err(unexpected(other)),
        },
        Started::Repair => match reply {
            Reply::Repair(reply) => Ok(Response::Repair(reply)),
            other => Err(unexpected(other)),
        },
    }
}

/// A reply body that decoded but does not make sense.
fn invalid(kind: Kind, reason: String) -> ClientError {
    ClientError::Reply(MessageError::Invalid { kind, reason })
}

/// A ring reply, its ring validated. Version 0 is the one way to say "not
/// formed yet", and then the ring must be empty: anything else is a ring
/// and must pass [`Ring::from_state`].
fn ring_info(reply: RingReply) -> Result<RingInfo, ClientError> {
    let RingReply { node, ring: state, n, r, w } = reply;
    let ring = if state.version == 0 {
        if !state.members.is_empty() || !state.owners.is_empty() {
            let reason = "a ring of version 0 (not formed) has members or owners".to_string();
            return Err(invalid(Kind::RING_REPLY, reason));
        }
        None
    } else {
        let ring = Ring::from_state(state)
            .map_err(|error| invalid(Kind::RING_REPLY, format!("bad ring: {error}")))?;
        Some(ring)
    };
    Ok(RingInfo { node, ring, n, r, w })
}

/// An inspect reply, its sibling set decoded (empty bytes: nothing held).
fn inspected(reply: InspectReply) -> Result<Inspected, ClientError> {
    let InspectReply { node, partition, replica, set } = reply;
    let set = if set.is_empty() {
        SiblingSet::new()
    } else {
        SiblingSet::decode(&set, DecodeLimits::default())
            .map_err(|error| invalid(Kind::INSPECT_REPLY, format!("bad sibling set: {error}")))?
    };
    Ok(Inspected { node, partition, replica, set })
}

/// A write's outcome from its reply's fields.
fn written(kind: Kind, context: Vec<u8>, dot: &[u8]) -> Result<Written, ClientError> {
    let context = Context::from_reply(context)?;
    let Some(dot) = decode_dot(dot) else {
        return Err(invalid(kind, "the dot is not one encoded dot".to_string()));
    };
    Ok(Written { context, dot })
}
