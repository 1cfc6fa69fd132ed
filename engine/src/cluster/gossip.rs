//! Gossip: how every node comes to know every member and the ring, and how
//! the nodes change the ring when members join, leave or are removed.
//!
//! A pure state machine in the style of [`super::coordinator`]: the driver
//! calls [`Gossip::tick`] with the time and a random number generator,
//! hands received messages to [`Gossip::handle`], and carries out the
//! [`GossipAction`]s they append (send a message, route by a new ring, pull
//! for a pending ring, persist changed records). Nothing here reads a
//! clock, opens a socket, touches a file, draws randomness it was not given
//! or iterates a hash map: a seeded simulator replays it exactly
//! (`engine/tests/gossip_sim.rs`).
//!
//! # What is gossiped
//!
//! A [`GossipState`]: one [`MemberRecord`] per node (its address, weight,
//! zone, [`MemberStatus`], version and readiness), the current ring and the
//! pending ("next") ring. Records and rings merge by the rule in
//! [`holdfast_net::membership`]: a `Left` record is final, then the higher
//! version wins, then the later status, then a deterministic tie-break. The
//! merge is a join (commutative, associative, idempotent), so it does not
//! matter in what order, how often, or through whom a node hears something:
//! nodes that have heard the same things hold byte-identical states.
//! Versions, not timestamps, decide, because a version is issued only by
//! someone who saw the version before it: no clock skew can make an older
//! change win.
//!
//! A node re-issues its own record often (to report readiness, to mark
//! itself `Up`, on restart), one version up each time, while an operator
//! may change its status at another node concurrently. So that the node's
//! re-issues cannot overtake a status change they have not seen, an
//! operator's change of another node's record jumps to the next multiple
//! of [`STATUS_EPOCH`] ([`Gossip::set_status`]).
//!
//! # The exchange (push-pull, by digest)
//!
//! Every [`GossipOptions::interval`] a node picks one peer uniformly at
//! random among the members it knows that are not `Left` (or, while it
//! knows none, one of its seed addresses) and runs one exchange:
//!
//! ```text
//! initiator                                   receiver
//!   Digest { own record, (id, stamp) per record, ring key, next key }  ->
//!                                             merges the initiator's record;
//!                                             compares stamps, id by id
//!   <-  Reply { records and rings newer here, ids newer there, rings wanted? }
//! merges them
//!   Push { the records (and rings) asked for }  ->
//!                                             merges them
//! ```
//!
//! After one exchange both hold the join of what both held when it began
//! (and whatever each derived from it, below). A digest costs about 32
//! bytes per known record and two ring hashes, whatever changed; records
//! and rings travel only where they are newer, so a quiet cluster sends
//! O(n) bytes per node per interval and a change costs one record (or one
//! ring) per node it reaches. A new node that knows only a seed address
//! sends its digest (just its own record) to the seed and receives every
//! record and both rings in the reply; the seed now holds its record and
//! spreads it like any other change.
//!
//! # Changing the ring in two phases
//!
//! Routing by a ring in which a node replicates a partition it has no data
//! for would answer reads from an empty replica, and count its acks towards
//! a quorum it cannot serve. So a membership change moves the ring in two
//! steps, with no coordinator:
//!
//! 1. **Propose.** After every change of its state, each node computes the
//!    member set the ring should have, from its records: the members of
//!    the target ring (the pending ring if there is one, else the current
//!    one) without those whose record is `Leaving` or `Left`, with the
//!    fields of their records (a new address or weight), plus every
//!    `Joining` or `Up` record not in the target. If that differs from the
//!    target's members, it proposes `target.rebalance(desired)` (one
//!    version up) as the pending ring. A proposal is a pure function of the
//!    target and the records, so nodes that hold the same state propose
//!    byte-identical rings. Nodes that propose from different views (one
//!    has heard of a joiner, another of a leaver) make different rings of
//!    the same version; the ring rule picks one everywhere, and whoever
//!    then knows more records proposes again on top of it, until the
//!    records have converged and so have the proposals.
//! 2. **Pull, report ready.** The nodes that gain partitions going from
//!    the current ring to the pending one ([`Gossip::gainers`], by
//!    [`Ring::gained_by`] with [`GossipOptions::replicas`]) pull those
//!    partitions; each then calls [`Gossip::set_ready`], which re-issues
//!    its record with `ready` naming that exact change
//!    ([`ready_token`]: both rings' keys).
//! 3. **Install.** A node installs the pending ring (makes it current) as
//!    soon as its own state shows every gainer, by records that are not
//!    `Left`, ready for that change. Installing is a deterministic function
//!    of the state, so every node that has heard the same readiness
//!    installs the same ring, and the current ring then also spreads by
//!    gossip like any ring. A node whose own record is `Joining` marks
//!    itself `Up` once the current ring contains it.
//!
//! Why this is safe:
//!
//! - Ownership moves to a node only after it has pulled: no node routes by
//!   a ring until every node that gains in it is ready for that exact
//!   change. Readiness names the change by both rings' keys, not by a
//!   version, because competing proposals share a version and gain
//!   different partitions: readiness for the proposal that lost never
//!   counts for the one that won, nor readiness judged against another
//!   current ring.
//! - No agreement protocol is needed beyond gossip: proposal and install
//!   are functions of the state, and the state converges.
//! - `Left` is final, so a removed node is never proposed back.
//! - A member of the target ring that has no record here stays: records
//!   arrive gradually (a node restored from an old snapshot may lack
//!   some), and the absence of a record never removes anyone. Only a
//!   `Leaving` or `Left` record does.
//!
//! What it does not do:
//!
//! - A gainer that is down blocks the install until it comes back and
//!   pulls, or until it is removed (`Left`), which makes the next proposal
//!   leave it out. Nothing here times it out.
//! - A `Leaving` node is left out of the next proposal, but whether it has
//!   handed everything away, and so when it becomes `Left`, is the
//!   driver's decision ([`Gossip::set_status`]), not this module's.
//! - Pulling is the driver's: it learns of a pending change from
//!   [`GossipAction::NextChanged`], pulls
//!   `ring().gained_by(next, id, replicas)`, and calls
//!   [`Gossip::set_ready`] only if no later `NextChanged` came meanwhile.
//! - Two competing proposals can, in a narrow race, each be installed
//!   somewhere: the loser by nodes that saw all its gainers ready before
//!   they heard of the winner. The ring rule then moves those nodes to the
//!   winner in one step, not two. It needs every gainer of the loser to
//!   have pulled and reported within the rounds the winner takes to reach
//!   them, a gainer reports for one change at a time, and the winner
//!   reaches everyone in `O(log n)` rounds; the data it may leave a new
//!   replica short of is what anti-entropy repairs.
//!
//! # Why it converges in O(log n) rounds
//!
//! Call a round one interval, in which every node starts one exchange.
//! While few nodes know a change, each of them tells the peer it picks
//! (push) and, on average, one other node that picks it learns it too
//! (pull): the informed count roughly triples per round, so about `log3 n`
//! rounds bring it to a constant fraction. After that the pull side
//! dominates: an uninformed node stays uninformed through a round only if
//! the peer it picks is uninformed (probability `p`, the uninformed
//! fraction) and no informed node picks it (about `e^-(1-p)`), so `p`
//! roughly squares every round and the last stragglers are reached in
//! `O(log log n)` rounds. Push alone would shrink `p` only by `1/e` per
//! round, adding `ln n` rounds at the end (Karp, Schindelhauer, Shenker and
//! Vöcking, "Randomized rumor spreading", FOCS 2000). Lost messages and
//! crashed peers waste some exchanges, which stretches this by a constant
//! factor: each exchange that fails is just one more round's coin flip.
//! `engine/examples/gossip_convergence.rs` prints the measured rounds. A
//! ring change takes a few such spreads: the records, the proposal, each
//! gainer's readiness (after its pull), then the install.
//!
//! # What this does not do
//!
//! - Detect failures: a crashed node stays `Up` here and is still picked
//!   (its exchanges fail). Suspicion is the failure detector's business.
//! - Decide statuses: an operator (or the driver) marks nodes `Leaving`
//!   or `Left` through [`Gossip::set_status`]; gossip only spreads that,
//!   and proposes rings from it. [`Gossip::propose_ring`] installs a ring
//!   at once, bypassing both phases: for a new cluster's first ring, or an
//!   operator's override.
//! - Heal a split membership: a node gossips only with members it knows,
//!   falling back to seeds only while it has no ring (it is joining), so
//!   two clusters that never shared a member never meet.
//! - Defend against a lying peer: a peer can send any record at any
//!   version. Digests compare records by a 64-bit hash of their fields, so
//!   two different records with equal version, status and hash would never
//!   be exchanged (a 2^-64 event per pair).
//!
//! Bounds: one exchange per interval (fan-out 1); at most
//! [`MEMBERS_MAX`](holdfast_net::membership::MEMBERS_MAX) records, so every
//! message is bounded; every message is validated before it is merged;
//! [`RECONCILE_PASSES_MAX`] passes of propose and install per change.

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use holdfast_net::membership::{
    DigestEntry, GossipDigest, GossipPush, GossipReply, GossipState, MemberRecord, MemberStatus,
    MembershipError, Merged, RingKey, ready_token, ring_key,
};
use holdfast_net::ring::{Member, NodeId, Ring, RingState};
use rand::Rng;

/// The most passes of install, propose and promote after one change. Two
/// suffice in practice (a proposal with no gainers is installed in the
/// second pass, which proposes nothing more); a change left over is taken
/// up after the next one, so the bound only caps the work per message.
pub const RECONCILE_PASSES_MAX: usize = 4;

/// What [`Gossip::set_status`] rounds another node's record version up to
/// a multiple of: far more than the re-issues a node makes of its own
/// record between two status changes, so those never overtake one.
pub const STATUS_EPOCH: u64 = 1 << 32;

/// How a node gossips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GossipOptions {
    /// How often a node starts an exchange.
    pub interval: Duration,
    /// `N`, the replicas per key: whose preference lists a ring change
    /// grows, and so who must pull before it is installed. At least 1.
    pub replicas: usize,
}

impl Default for GossipOptions {
    fn default() -> GossipOptions {
        GossipOptions { interval: Duration::from_secs(1), replicas: 3 }
    }
}

/// Whom to send a message to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A member, at the address in its record.
    Node { id: NodeId, addr: String },
    /// A seed address from the configuration, whose node is not known yet.
    Seed { addr: String },
}

/// One step of an exchange (see the module docs). The wire types are in
/// [`holdfast_net::membership`], each with its own checked `decode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipMessage {
    /// Initiator to receiver: what the initiator holds.
    Digest(GossipDigest),
    /// Receiver to initiator: what it holds newer, and what it wants.
    Reply(GossipReply),
    /// Initiator to receiver: what the receiver wanted.
    Push(GossipPush),
}

impl GossipMessage {
    /// The wire type's `validate`.
    pub fn validate(&self) -> Result<(), MembershipError> {
        match self {
            GossipMessage::Digest(digest) => digest.validate(),
            GossipMessage::Reply(reply) => reply.validate(),
            GossipMessage::Push(push) => push.validate(),
        }
    }
}

/// What the driver must do. One call appends at most one each of
/// `RingChanged`, `NextChanged` and `MembersChanged`, in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipAction {
    /// Send `message` to `to`. Best effort: a message that cannot be
    /// delivered is dropped, and the next round makes up for it.
    Send { to: Peer, message: GossipMessage },
    /// The current ring changed: route by it from now on.
    RingChanged(Arc<Ring>),
    /// The pending change changed: a new pending ring, the same one against
    /// a new current ring (what a node gains depends on both), or `None`
    /// once nothing is pending (installed, or overtaken by a newer current
    /// ring). A pull for the change before is void: if this node is among
    /// [`Gossip::gainers`], pull what it gains and then call
    /// [`Gossip::set_ready`].
    NextChanged(Option<Arc<Ring>>),
    /// These members' records changed (ascending ids). Together with
    /// `RingChanged` and `NextChanged`, the moments to persist
    /// [`Gossip::state`].
    MembersChanged { ids: Vec<NodeId> },
}

/// Why [`Gossip::set_status`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// No record of this node.
    #[error("node {id} is not a known member")]
    UnknownMember { id: NodeId },
    /// The node has left; that is final.
    #[error("node {id} has left the cluster; a node that left never rejoins under its id")]
    Left { id: NodeId },
    /// The record's version cannot be incremented.
    #[error("node {id}'s record is at the last version")]
    VersionExhausted { id: NodeId },
}

/// Why [`Gossip::propose_ring`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// The ring is not valid (or is the empty ring).
    #[error("invalid ring: {0}")]
    Invalid(#[from] MembershipError),
    /// The ring does not win over the current one (its version is not
    /// higher, or it is the current ring).
    #[error("ring version {version} does not win over the current version {current}")]
    NotNewer { version: u64, current: u64 },
}

/// Counters for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Exchanges started.
    pub exchanges: u64,
    /// Ticks on which there was nobody to gossip with.
    pub idle: u64,
    /// Digests answered.
    pub answered: u64,
    /// Records that changed through gossip.
    pub records_learned: u64,
    /// Rings adopted through gossip.
    pub rings_learned: u64,
    /// Messages refused: invalid, or claiming to come from this node.
    pub refused: u64,
    /// Times this node re-issued its own record because gossip carried a
    /// newer one with other fields (say, its old address).
    pub refuted: u64,
    /// Pushes not sent because the replying node's address was unknown.
    pub unanswerable: u64,
    /// Pending rings this node installed (made current) itself.
    pub rings_installed: u64,
    /// Pending rings this node proposed (that won over the one it held).
    pub rings_proposed: u64,
}

/// What the driver was last told, to tell it what changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    ring: RingKey,
    next: Option<RingKey>,
}

/// One node's gossip.
#[derive(Debug)]
pub struct Gossip {
    me: Member,
    options: GossipOptions,
    /// Addresses to contact while no other member is known.
    seeds: Vec<String>,
    state: GossipState,
    /// `state.ring` as a [`Ring`], unless it is the empty ring.
    ring: Option<Arc<Ring>>,
    /// `state.ring`'s key, which every digest sent and received needs.
    ring_key: RingKey,
    /// `state.next` as a [`Ring`] while it is pending (its version above
    /// `state.ring`'s), else `None`.
    next: Option<Arc<Ring>>,
    /// `state.next`'s key, pending or not.
    next_key: RingKey,
    /// The gainers of the pending change, ascending, once something needed
    /// them; empty until then and reset whenever a ring changes. They take
    /// two preference lists per partition, so an install check computes
    /// them only once no cheaper sign says it must wait (see `install`);
    /// a driver asking [`gainers`](Self::gainers) on every tick computes
    /// them once per change.
    gainers: OnceCell<Vec<NodeId>>,
    next_tick: Duration,
    stats: GossipStats,
}

impl Gossip {
    /// A node that knows only itself (`Joining`, version 1) and its seed
    /// addresses. Its own address among the seeds is ignored.
    ///
    /// # Panics
    ///
    /// If `me` is not a valid member (weight 0, or an address or zone over
    /// its limit), or `options.replicas` is 0: configuration is checked
    /// before this.
    pub fn new(me: Member, seeds: Vec<String>, options: GossipOptions) -> Gossip {
        let record = MemberRecord::new(me.clone(), MemberStatus::Joining, 1);
        let state = GossipState::new(vec![record], RingState::default())
            .expect("this node's own member is valid");
        Gossip::from_state(me, state, seeds, options).expect("a state of one valid record")
    }

    /// A node that starts from `state` (say, persisted, or written by an
    /// operator for a new cluster). Its own record is added if missing
    /// (`Joining`, version 1) and re-issued at the next version if its
    /// fields differ from `me` (unless it has left). This does not bump the
    /// node's version: a node that was running before, and restarts, calls
    /// [`restart`](Self::restart) too.
    ///
    /// The state is then reconciled as after any change (see the module
    /// docs): a pending ring whose gainers are all ready is installed, a
    /// ring is proposed if the records call for one, and this node's record
    /// becomes `Up` if it is `Joining` in the current ring. With no `out`
    /// to tell, nothing announces these: the driver reads
    /// [`ring`](Self::ring), [`next_ring`](Self::next_ring) and
    /// [`state`](Self::state) after construction.
    ///
    /// # Panics
    ///
    /// If `options.replicas` is 0.
    pub fn from_state(
        me: Member,
        state: GossipState,
        mut seeds: Vec<String>,
        options: GossipOptions,
    ) -> Result<Gossip, MembershipError> {
        assert!(options.replicas >= 1, "a key has at least one replica");
        state.validate()?;
        MemberRecord::new(me.clone(), MemberStatus::Joining, 1).validate()?;
        seeds.retain(|seed| *seed != me.addr);
        seeds.sort();
        seeds.dedup();
        let mut gossip = Gossip {
            me,
            options,
            seeds,
            state,
            ring: None,
            ring_key: RingKey { version: 0, check: 0 },
            next: None,
            next_key: RingKey { version: 0, check: 0 },
            gainers: OnceCell::new(),
            next_tick: Duration::ZERO,
            stats: GossipStats::default(),
        };
        gossip.rings_changed(true, true);
        if gossip.state.record(gossip.me.id).is_none() {
            let record = MemberRecord::new(gossip.me.clone(), MemberStatus::Joining, 1);
            assert!(gossip.state.merge_record(&record), "a new record is added");
        }
        gossip.reassert();
        gossip.reconcile(&mut Vec::new());
        Ok(gossip)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// This node as it describes itself.
    pub fn me(&self) -> &Member {
        &self.me
    }

    pub fn options(&self) -> &GossipOptions {
        &self.options
    }

    /// When the next [`tick`](Self::tick) starts an exchange.
    pub fn next_tick(&self) -> Duration {
        self.next_tick
    }

    /// Every record, tombstones included, sorted by id.
    pub fn members(&self) -> &[MemberRecord] {
        &self.state.members
    }

    /// The record of `id`.
    pub fn record(&self, id: NodeId) -> Option<&MemberRecord> {
        self.state.record(id)
    }

    /// The version of `id`'s record.
    pub fn version_of(&self, id: NodeId) -> Option<u64> {
        self.record(id).map(|record| record.version)
    }

    /// The status of `id`.
    pub fn status_of(&self, id: NodeId) -> Option<MemberStatus> {
        self.record(id).and_then(MemberRecord::status)
    }

    /// The current ring, the one to route by, if any.
    pub fn ring(&self) -> Option<Arc<Ring>> {
        self.ring.clone()
    }

    /// The pending ring: `Some` only while `state().next`'s version is
    /// above the current ring's.
    pub fn next_ring(&self) -> Option<Arc<Ring>> {
        self.next.clone()
    }

    /// The nodes that gain partitions going from the current ring to the
    /// pending one (the union of [`Ring::gained_by`] over the pending
    /// ring's members, with [`GossipOptions::replicas`]), ascending: those
    /// whose readiness the install waits for. Empty while nothing is
    /// pending. With no current ring, every node in a preference list of
    /// the pending ring (but then nothing waits: the first ring is
    /// installed at once).
    pub fn gainers(&self) -> Vec<NodeId> {
        match &self.next {
            Some(next) => self
                .gainers
                .get_or_init(|| gainers_of(self.ring.as_deref(), next, self.options.replicas))
                .clone(),
            None => Vec::new(),
        }
    }

    /// Everything this node knows: what it persists.
    pub fn state(&self) -> &GossipState {
        &self.state
    }

    /// [`GossipState::fingerprint`]: equal on nodes that agree on
    /// everything. Linear in the number of records.
    pub fn fingerprint(&self) -> u64 {
        self.state.fingerprint()
    }

    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// Starts an exchange if `now` has reached [`next_tick`](Self::next_tick):
    /// a digest to a peer picked uniformly with `rng` among the known
    /// members that are neither this node nor `Left`, or, while there are
    /// none, among the seeds. The next exchange is due `interval` later.
    pub fn tick(&mut self, now: Duration, rng: &mut impl Rng, out: &mut Vec<GossipAction>) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now.saturating_add(self.options.interval);
        let Some(to) = self.pick_peer(rng) else {
            self.stats.idle += 1;
            return;
        };
        self.stats.exchanges += 1;
        let digest = GossipDigest {
            from: self.own().clone(),
            members: self.state.members.iter().map(DigestEntry::of).collect(),
            ring_version: self.ring_key.version,
            ring_check: self.ring_key.check,
            next_version: self.next_key.version,
            next_check: self.next_key.check,
        };
        out.push(GossipAction::Send { to, message: GossipMessage::Digest(digest) });
    }

    /// Takes one message from a peer. An invalid message, or one claiming
    /// to come from this node, is refused (counted, nothing else).
    pub fn handle(&mut self, message: GossipMessage, out: &mut Vec<GossipAction>) {
        let from = match &message {
            GossipMessage::Digest(digest) => digest.from.id(),
            GossipMessage::Reply(reply) => reply.from,
            GossipMessage::Push(push) => push.from,
        };
        if from == self.me.id || message.validate().is_err() {
            self.stats.refused += 1;
            return;
        }
        match message {
            GossipMessage::Digest(digest) => self.on_digest(digest, out),
            GossipMessage::Reply(reply) => self.on_reply(reply, out),
            GossipMessage::Push(push) => {
                let seen = self.seen();
                let merged = self.state.merge(&push.delta);
                self.applied(seen, merged, out);
            }
        }
    }

    /// An operator's change of `id`'s status, made at this node on the
    /// node's behalf: its record with the same fields and readiness at a
    /// higher version. Any change but one out of `Left` is allowed (a
    /// `Leaving` node may be brought back `Up`). Marking a `Leaving` node
    /// `Left` once it has handed its partitions away is the driver's call:
    /// gossip only leaves a `Leaving` node out of the rings it proposes.
    ///
    /// The version is the next one for this node's own record, and for
    /// `Left` (which wins at any version). For another node's record it is
    /// the next multiple of [`STATUS_EPOCH`]: that node re-issues its own
    /// record a few times per ring change (readiness, `Up`, restarts), each
    /// one version up, and re-issues made before it has heard of the
    /// operator's change must not overtake it and silently undo it.
    pub fn set_status(
        &mut self,
        id: NodeId,
        status: MemberStatus,
        out: &mut Vec<GossipAction>,
    ) -> Result<(), StatusError> {
        let seen = self.seen();
        let record = self.record(id).ok_or(StatusError::UnknownMember { id })?;
        if record.is_left() {
            return Err(StatusError::Left { id });
        }
        let version = if id == self.me.id || status == MemberStatus::Left {
            record.version.checked_add(1)
        } else {
            (record.version / STATUS_EPOCH + 1).checked_mul(STATUS_EPOCH)
        };
        let version = version.ok_or(StatusError::VersionExhausted { id })?;
        let record = MemberRecord { status: status.as_u8(), version, ..record.clone() };
        assert!(self.state.merge_record(&record), "a higher version wins");
        self.settle(seen, vec![id], out);
        Ok(())
    }

    /// This node has pulled every partition it gains in the pending ring
    /// of `version` (against the current ring it held when the pull
    /// began): its record at the next version with `ready` naming that
    /// change ([`ready_token`] of the current and pending rings' keys),
    /// then whatever that makes possible (the install, if it was the last
    /// gainer). A no-op unless the pending ring is of `version`, or if this
    /// node already reported ready for it or has left.
    ///
    /// Call it only if no [`GossipAction::NextChanged`] came since the pull
    /// began: that would mean the change is another one, whose gains this
    /// pull may not cover.
    pub fn set_ready(&mut self, version: u64, out: &mut Vec<GossipAction>) {
        let seen = self.seen();
        if self.next.as_ref().is_none_or(|next| next.version() != version) {
            return;
        }
        let token = ready_token(self.ring_key, self.next_key);
        let own = self.own();
        if own.is_left() || own.ready == token {
            return;
        }
        let status = own.status().expect("a validated record's status");
        if self.reissue(status, token) {
            self.settle(seen, vec![self.me.id], out);
        }
    }

    /// Installs `ring` as the current ring at once, bypassing the two
    /// phases (see the module docs), if it is valid and wins over the
    /// current ring (a higher version, see
    /// [`ring_precedence`](holdfast_net::membership::ring_precedence)):
    /// for a new cluster's first ring, or an operator's override. Gossip
    /// spreads it from the next tick.
    pub fn propose_ring(
        &mut self,
        ring: RingState,
        out: &mut Vec<GossipAction>,
    ) -> Result<Arc<Ring>, ProposeError> {
        let current = self.state.ring.version;
        if ring.version <= current {
            return Err(ProposeError::NotNewer { version: ring.version, current });
        }
        let proposed = GossipState { ring, ..GossipState::default() };
        proposed.validate()?;
        let seen = self.seen();
        assert!(self.state.merge_ring(&proposed.ring), "a ring of a higher version wins");
        self.rings_changed(true, false);
        let installed = self.ring.clone().expect("a ring was just adopted");
        self.settle(seen, Vec::new(), out);
        Ok(installed)
    }

    /// This node restarted: its record at the next version (same status,
    /// readiness, its current fields), so that gossip carries the news. A
    /// node that has left stays left.
    pub fn restart(&mut self, out: &mut Vec<GossipAction>) {
        let seen = self.seen();
        let own = self.own();
        if own.is_left() {
            return;
        }
        let status = own.status().expect("a validated record's status");
        let ready = own.ready;
        if self.reissue(status, ready) {
            self.settle(seen, vec![self.me.id], out);
        }
    }

    fn own(&self) -> &MemberRecord {
        self.state.record(self.me.id).expect("a node always holds its own record")
    }

    fn pick_peer(&self, rng: &mut impl Rng) -> Option<Peer> {
        if self.ring.is_none() && !self.seeds.is_empty() {
            // Joining: the seeds are the running cluster. Members met
            // before the ring arrived may be joining too (another joiner
            // that was given this one as a seed); gossiping only with them,
            // two joiners would wait for each other for ever.
            let pick = rng.random_range(0..self.seeds.len());
            return Some(Peer::Seed { addr: self.seeds[pick].clone() });
        }
        let candidate = |record: &&MemberRecord| record.id() != self.me.id && !record.is_left();
        let count = self.state.members.iter().filter(candidate).count();
        if count > 0 {
            let pick = rng.random_range(0..count);
            let record = self.state.members.iter().filter(candidate).nth(pick)?;
            return Some(Peer::Node { id: record.id(), addr: record.member.addr.clone() });
        }
        if self.seeds.is_empty() {
            return None;
        }
        let pick = rng.random_range(0..self.seeds.len());
        Some(Peer::Seed { addr: self.seeds[pick].clone() })
    }

    fn on_digest(&mut self, digest: GossipDigest, out: &mut Vec<GossipAction>) {
        self.stats.answered += 1;
        let sender = digest.from.clone();
        let seen = self.seen();
        let merged = self
            .state
            .merge(&GossipState { members: vec![sender.clone()], ..GossipState::default() });
        self.applied(seen, merged, out);

        // Both lists are sorted by id: one walk finds what each side lacks.
        let mut newer = Vec::new();
        let mut wants = Vec::new();
        let mut ours = self.state.members.iter().peekable();
        let mut theirs = digest.members.iter().peekable();
        loop {
            let order = match (ours.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(mine), Some(their)) => mine.id().cmp(&their.id),
            };
            match order {
                Ordering::Less => newer.extend(ours.next().cloned()),
                Ordering::Greater => wants.extend(theirs.next().map(|their| their.id)),
                Ordering::Equal => {
                    let (Some(mine), Some(their)) = (ours.next(), theirs.next()) else { break };
                    match mine.stamp().cmp(&their.stamp()) {
                        Ordering::Greater => newer.push(mine.clone()),
                        Ordering::Less => wants.push(their.id),
                        Ordering::Equal => {}
                    }
                }
            }
        }
        let newer_ring = |ours: RingKey, theirs: RingKey, ring: &RingState| {
            if ours > theirs { ring.clone() } else { RingState::default() }
        };
        let reply = GossipReply {
            from: self.me.id,
            delta: GossipState {
                members: newer,
                ring: newer_ring(self.ring_key, digest.ring_key(), &self.state.ring),
                next: newer_ring(self.next_key, digest.next_key(), &self.state.next),
            },
            wants,
            wants_ring: digest.ring_key() > self.ring_key,
            wants_next: digest.next_key() > self.next_key,
        };
        let to = Peer::Node { id: sender.id(), addr: sender.member.addr };
        out.push(GossipAction::Send { to, message: GossipMessage::Reply(reply) });
    }

    fn on_reply(&mut self, reply: GossipReply, out: &mut Vec<GossipAction>) {
        let seen = self.seen();
        let merged = self.state.merge(&reply.delta);
        self.applied(seen, merged, out);
        if reply.wants.is_empty() && !reply.wants_ring && !reply.wants_next {
            return;
        }
        // The replier is known: either it was picked from the records, or
        // (a seed) its own record came in the delta, since the digest did
        // not have it. A replier that has left may be unknown after all.
        let Some(replier) = self.record(reply.from) else {
            self.stats.unanswerable += 1;
            return;
        };
        let to = Peer::Node { id: replier.id(), addr: replier.member.addr.clone() };
        let members = reply.wants.iter().filter_map(|&id| self.record(id).cloned()).collect();
        let wanted = |wanted: bool, ring: &RingState| {
            if wanted { ring.clone() } else { RingState::default() }
        };
        let delta = GossipState {
            members,
            ring: wanted(reply.wants_ring, &self.state.ring),
            next: wanted(reply.wants_next, &self.state.next),
        };
        let push = GossipPush { from: self.me.id, delta };
        out.push(GossipAction::Send { to, message: GossipMessage::Push(push) });
    }

    /// After a merge of peer state: refute stale news about this node,
    /// rebuild what derives from the rings, reconcile, and tell the driver.
    fn applied(&mut self, seen: Seen, merged: Merged, out: &mut Vec<GossipAction>) {
        self.stats.records_learned += merged.members.len() as u64;
        // Re-issuing changes only this node's record, which is then in
        // `merged.members` already.
        if merged.members.binary_search(&self.me.id).is_ok() && self.reassert() {
            self.stats.refuted += 1;
        }
        if merged.ring {
            self.stats.rings_learned += 1;
        }
        self.rings_changed(merged.ring, merged.next);
        self.settle(seen, merged.members, out);
    }

    /// What the driver has been told, before a change.
    fn seen(&self) -> Seen {
        Seen { ring: self.ring_key, next: self.next.as_ref().map(|_| self.next_key) }
    }

    /// After any change of state: reconciles, then appends what changed
    /// since `seen` (see [`GossipAction`]), `ids` being the records changed
    /// so far (reconciling may add this node's).
    fn settle(&mut self, seen: Seen, mut ids: Vec<NodeId>, out: &mut Vec<GossipAction>) {
        self.reconcile(&mut ids);
        let now = self.seen();
        if now.ring != seen.ring
            && let Some(ring) = &self.ring
        {
            out.push(GossipAction::RingChanged(ring.clone()));
        }
        // A pending ring against a new current ring is a new change too.
        if now.next != seen.next || (now.next.is_some() && now.ring != seen.ring) {
            out.push(GossipAction::NextChanged(self.next.clone()));
        }
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            out.push(GossipAction::MembersChanged { ids });
        }
    }

    /// Brings the state to its fixed point under install, propose and
    /// promote (see the module docs), in at most [`RECONCILE_PASSES_MAX`]
    /// passes. Adds this node's id to `ids` if its record changed.
    fn reconcile(&mut self, ids: &mut Vec<NodeId>) {
        for _ in 0..RECONCILE_PASSES_MAX {
            // Each step sees what the one before it did.
            let installed = self.install();
            let proposed = self.propose();
            let promoted = self.promote();
            if promoted {
                ids.push(self.me.id);
            }
            if !(installed || proposed || promoted) {
                return;
            }
        }
    }

    /// Makes the pending ring current if every gainer is ready for exactly
    /// this change (or there is no current ring to move data from).
    fn install(&mut self) -> bool {
        let Some(next) = &self.next else { return false };
        if let Some(ring) = &self.ring {
            let token = ready_token(self.ring_key, self.next_key);
            let ready = |id: &NodeId| {
                self.state
                    .record(*id)
                    .is_some_and(|record| !record.is_left() && record.ready == token)
            };
            // A member new in `next` that owns a partition there gains it:
            // while one of those is not ready, the install waits, and the
            // full list (the costly part) is not needed yet. This is the
            // common case of a join, checked after every message.
            let new_and_unready = next.members().iter().any(|member| {
                !ring.contains(member.id)
                    && !ready(&member.id)
                    && (0..next.partitions()).any(|partition| next.owner(partition) == member.id)
            });
            if new_and_unready {
                return false;
            }
            let gainers =
                self.gainers.get_or_init(|| gainers_of(Some(ring), next, self.options.replicas));
            if !gainers.iter().all(ready) {
                return false;
            }
        }
        let next = next.clone();
        self.state.ring = self.state.next.clone();
        self.ring = Some(next);
        self.ring_key = self.next_key;
        self.next = None;
        self.gainers = OnceCell::new();
        self.stats.rings_installed += 1;
        true
    }

    /// Proposes the ring the records call for, on top of the pending ring
    /// (or the current one), if it differs from it.
    fn propose(&mut self) -> bool {
        let Some(target) = self.next.as_ref().or(self.ring.as_ref()) else { return false };
        let desired = desired_members(target, &self.state);
        if desired.is_empty() || desired == target.members() {
            return false;
        }
        // Too many members for the partitions, or the last version: no
        // ring can be proposed, and the current one stays.
        let Ok(proposal) = target.rebalance(desired) else { return false };
        assert!(
            self.state.merge_next(&proposal.state()),
            "a ring one version above the target wins over the pending ring"
        );
        self.rings_changed(false, true);
        self.stats.rings_proposed += 1;
        true
    }

    /// Marks this node `Up` once the current ring contains it while its
    /// record says `Joining`.
    fn promote(&mut self) -> bool {
        let own = self.own();
        if own.status() != Some(MemberStatus::Joining)
            || !self.ring.as_ref().is_some_and(|ring| ring.contains(self.me.id))
        {
            return false;
        }
        let ready = own.ready;
        self.reissue(MemberStatus::Up, ready)
    }

    /// Rebuilds what derives from `state.ring` (if `ring`) and `state.next`
    /// (if `next`): the rings, their keys and what is pending, and forgets
    /// the gainers.
    fn rings_changed(&mut self, ring: bool, next: bool) {
        if ring {
            self.ring = ring_of(&self.state.ring);
            self.ring_key = ring_key(&self.state.ring);
        }
        if next {
            self.next_key = ring_key(&self.state.next);
        }
        if !(ring || next) {
            return;
        }
        let pending = self.state.next.version > self.state.ring.version;
        if !pending {
            self.next = None;
        } else if next || self.next.is_none() {
            self.next = ring_of(&self.state.next);
        }
        self.gainers = OnceCell::new();
    }

    /// If the winning record of this node has other fields than the node
    /// itself (an old address, say, from before a restart that lost its
    /// state), re-issues it at the next version with this node's fields
    /// and the winning status and readiness (an operator's `Leaving`
    /// stands). A `Left` record stands as it is. Returns whether it
    /// re-issued.
    fn reassert(&mut self) -> bool {
        let own = self.own();
        if own.is_left() || own.member == self.me {
            return false;
        }
        let status = own.status().expect("a validated record's status");
        let ready = own.ready;
        self.reissue(status, ready)
    }

    /// Issues this node's record at the next version with its own fields,
    /// `status` and `ready`. Returns false (changing nothing) if the
    /// version cannot be incremented.
    fn reissue(&mut self, status: MemberStatus, ready: u64) -> bool {
        let Some(version) = self.own().version.checked_add(1) else { return false };
        let record =
            MemberRecord { member: self.me.clone(), status: status.as_u8(), version, ready };
        assert!(self.state.merge_record(&record), "a higher version wins");
        true
    }
}

/// The members the ring should have, by id: `target`'s, without those
/// whose record is `Leaving` or `Left` and with their records' fields, plus
/// every `Joining` or `Up` record not in it. A member without a record
/// stays as it is.
fn desired_members(target: &Ring, state: &GossipState) -> Vec<Member> {
    let mut desired: Vec<Member> = target
        .members()
        .iter()
        .filter_map(|member| match state.record(member.id) {
            None => Some(member.clone()),
            Some(record) => staying(record).then(|| record.member.clone()),
        })
        .collect();
    desired.extend(
        state
            .members
            .iter()
            .filter(|record| staying(record) && !target.contains(record.id()))
            .map(|record| record.member.clone()),
    );
    desired.sort_by_key(|member| member.id);
    desired
}

/// Whether a record's node belongs in the ring: `Joining` or `Up`.
fn staying(record: &MemberRecord) -> bool {
    matches!(record.status(), Some(MemberStatus::Joining | MemberStatus::Up))
}

/// The nodes that gain partitions going from `ring` to `next` with
/// `replicas` replicas per key, ascending: for each partition, whoever is
/// in `next`'s preference list and not in `ring`'s. Equal to the union of
/// [`Ring::gained_by`] over `next`'s members, in one walk over the
/// partitions instead of one per member. With no `ring` (or one of another
/// partition count), every node in a preference list of `next` gains.
fn gainers_of(ring: Option<&Ring>, next: &Ring, replicas: usize) -> Vec<NodeId> {
    let ring = ring.filter(|ring| ring.partitions() == next.partitions());
    let mut gainers = BTreeSet::new();
    for partition in 0..next.partitions() {
        let before = ring.map(|ring| ring.preference_list(partition, replicas)).unwrap_or_default();
        gainers.extend(
            next.preference_list(partition, replicas).into_iter().filter(|id| !before.contains(id)),
        );
    }
    gainers.into_iter().collect()
}

/// The ring of a validated state, or `None` for the empty ring.
fn ring_of(state: &RingState) -> Option<Arc<Ring>> {
    if state.version == 0 {
        return None;
    }
    let ring = Ring::from_state(state.clone()).expect("gossip states are validated before use");
    Some(Arc::new(ring))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn member(id: u64) -> Member {
        Member { id, addr: format!("10.0.0.{id}:7070"), weight: 1, zone: String::new() }
    }

    fn node(id: u64, seeds: &[u64]) -> Gossip {
        let seeds = seeds.iter().map(|&seed| member(seed).addr).collect();
        Gossip::new(member(id), seeds, GossipOptions::default())
    }

    /// Runs one exchange started by `a` with `b` (whichever peer `a` picks
    /// is taken to be `b`).
    fn exchange(a: &mut Gossip, b: &mut Gossip, rng: &mut ChaCha8Rng) {
        let mut out = Vec::new();
        let now = a.next_tick();
        a.tick(now, rng, &mut out);
        let mut to_b: Vec<GossipMessage> = sends(&mut out);
        while !to_b.is_empty() {
            let mut out = Vec::new();
            for message in to_b.drain(..) {
                b.handle(message, &mut out);
            }
            let to_a = sends(&mut out);
            let mut back = Vec::new();
            for message in to_a {
                a.handle(message, &mut back);
            }
            to_b = sends(&mut back);
        }
    }

    /// The state of a cluster of `ids`, all up at version 1, with a ring of
    /// 64 partitions over them at version 1.
    fn cluster_state(ids: &[u64]) -> GossipState {
        let members: Vec<Member> = ids.iter().map(|&id| member(id)).collect();
        let ring = Ring::new(64, members.clone(), 1).expect("valid").state();
        let records = members.into_iter().map(|m| MemberRecord::new(m, MemberStatus::Up, 1));
        GossipState::new(records.collect(), ring).expect("valid")
    }

    fn from_state(id: u64, state: &GossipState) -> Gossip {
        Gossip::from_state(member(id), state.clone(), Vec::new(), GossipOptions::default())
            .expect("valid")
    }

    /// Every node runs an exchange with every other, in order.
    fn gossip_all(nodes: &mut [Gossip], rng: &mut ChaCha8Rng) {
        for i in 0..nodes.len() {
            for j in 0..nodes.len() {
                if i != j {
                    let (a, b) = pair(nodes, i, j);
                    exchange(a, b, rng);
                }
            }
        }
    }

    fn pair(nodes: &mut [Gossip], i: usize, j: usize) -> (&mut Gossip, &mut Gossip) {
        assert_ne!(i, j);
        if i < j {
            let (left, right) = nodes.split_at_mut(j);
            (&mut left[i], &mut right[0])
        } else {
            let (left, right) = nodes.split_at_mut(i);
            (&mut right[0], &mut left[j])
        }
    }

    fn ids_of(ring: &Ring) -> Vec<u64> {
        ring.members().iter().map(|member| member.id).collect()
    }

    fn sends(out: &mut Vec<GossipAction>) -> Vec<GossipMessage> {
        out.drain(..)
            .filter_map(|action| match action {
                GossipAction::Send { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_node_learns_everything_from_one_seed_in_one_exchange() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seed = node(1, &[]);
        let mut out = Vec::new();
        let ring = Ring::new(16, vec![member(1)], 1).expect("valid").state();
        seed.propose_ring(ring, &mut out).expect("newer");
        let mut newcomer = node(2, &[1]);
        let mut out = Vec::new();
        newcomer.tick(Duration::ZERO, &mut rng, &mut out);
        assert!(
            matches!(&out[0], GossipAction::Send { to: Peer::Seed { addr }, .. } if *addr == member(1).addr)
        );
        exchange(&mut newcomer, &mut seed, &mut rng);
        assert_eq!(newcomer.fingerprint(), seed.fingerprint());
        assert_eq!(newcomer.ring().map(|ring| ring.version()), Some(1));
        assert_eq!(seed.status_of(2), Some(MemberStatus::Joining));
    }

    #[test]
    fn a_joiner_that_met_another_joiner_first_still_asks_its_seeds() {
        // Joiner 6 was given joiner 5 and member 1 as seeds, and reached 5
        // before 5 had the ring: each now knows a member without one.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut cluster = from_state(1, &cluster_state(&[1, 2, 3]));
        let mut five = node(5, &[1]);
        let mut six = node(6, &[5, 1]);
        exchange(&mut six, &mut five, &mut rng);
        assert!(five.record(6).is_some() && six.record(5).is_some());
        // Without a ring both keep asking their seeds, and get it.
        for _ in 0..20 {
            let mut out = Vec::new();
            let now = six.next_tick();
            six.tick(now, &mut rng, &mut out);
            let picked = out.iter().any(|action| {
                matches!(action, GossipAction::Send { to: Peer::Seed { addr }, .. } if *addr == member(1).addr)
            });
            if picked {
                exchange(&mut six, &mut cluster, &mut rng);
                break;
            }
        }
        exchange(&mut five, &mut cluster, &mut rng);
        assert_eq!(five.ring().map(|ring| ring.version()), Some(1));
        assert_eq!(six.ring().map(|ring| ring.version()), Some(1));
    }

    #[test]
    fn left_is_final_and_local_changes_bump_versions() {
        let mut a = node(1, &[]);
        let mut out = Vec::new();
        a.set_status(1, MemberStatus::Up, &mut out).expect("known");
        assert_eq!(a.version_of(1), Some(2));
        a.restart(&mut out);
        assert_eq!((a.version_of(1), a.status_of(1)), (Some(3), Some(MemberStatus::Up)));
        a.set_status(1, MemberStatus::Left, &mut out).expect("known");
        assert_eq!(a.set_status(1, MemberStatus::Up, &mut out), Err(StatusError::Left { id: 1 }));
        a.restart(&mut out);
        assert_eq!(a.status_of(1), Some(MemberStatus::Left));
        assert_eq!(
            a.set_status(9, MemberStatus::Up, &mut out),
            Err(StatusError::UnknownMember { id: 9 })
        );
    }

    #[test]
    fn stale_or_invalid_rings_are_refused() {
        let mut a = node(1, &[]);
        let mut out = Vec::new();
        let ring = Ring::new(16, vec![member(1)], 2).expect("valid");
        a.propose_ring(ring.state(), &mut out).expect("newer");
        assert_eq!(
            a.propose_ring(ring.state(), &mut out),
            Err(ProposeError::NotNewer { version: 2, current: 2 })
        );
        let broken = RingState { version: 3, owners: vec![5; 16], ..ring.state() };
        assert!(matches!(a.propose_ring(broken, &mut out), Err(ProposeError::Invalid(_))));
        assert_eq!(a.ring().map(|ring| ring.version()), Some(2));
    }

    #[test]
    fn a_node_refutes_a_stale_record_of_itself() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // Node 2 remembers node 1 at an old address and a higher version
        // (node 1 lost its state and came back elsewhere).
        let old =
            MemberRecord::new(Member { addr: "old:1".into(), ..member(1) }, MemberStatus::Up, 5);
        let state = GossipState::new(vec![old], RingState::default()).expect("valid");
        let mut b =
            Gossip::from_state(member(2), state, vec![], GossipOptions::default()).expect("valid");
        let mut a = node(1, &[2]);
        exchange(&mut a, &mut b, &mut rng);
        assert_eq!(
            a.record(1).map(|r| (r.version, r.member.addr.as_str())),
            Some((6, "10.0.0.1:7070"))
        );
        assert_eq!(a.status_of(1), Some(MemberStatus::Up), "the winning status stands");
        assert_eq!(a.stats().refuted, 1);
        exchange(&mut a, &mut b, &mut rng);
        assert_eq!(b.record(1), a.record(1));
    }

    #[test]
    fn a_joining_node_is_installed_once_every_gainer_is_ready() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let state = cluster_state(&[1, 2, 3]);
        let mut nodes: Vec<Gossip> = [1, 2, 3].iter().map(|&id| from_state(id, &state)).collect();
        nodes.push(node(4, &[1]));
        assert!(nodes.iter().all(|node| node.next_ring().is_none()), "nothing pending yet");

        // The joiner knows only the seed; one exchange and both hold a
        // pending ring with it, the current ring unchanged.
        let (joiner, seed) = pair(&mut nodes, 3, 0);
        exchange(joiner, seed, &mut rng);
        for node in [&*joiner, &*seed] {
            let next = node.next_ring().expect("a pending ring");
            assert_eq!((next.version(), ids_of(&next)), (2, vec![1, 2, 3, 4]));
            assert_eq!(node.ring().map(|ring| ring.version()), Some(1));
        }
        assert_eq!(seed.stats().rings_proposed, 1);

        gossip_all(&mut nodes, &mut rng);
        let gainers = nodes[0].gainers();
        assert!(gainers.contains(&4), "the joiner gains: {gainers:?}");
        let expected: BTreeSet<u64> = [1, 2, 3, 4]
            .into_iter()
            .filter(|&id| {
                let (ring, next) =
                    (nodes[0].ring().expect("ring"), nodes[0].next_ring().expect("next"));
                !ring.gained_by(&next, id, 3).is_empty()
            })
            .collect();
        assert_eq!(gainers, expected.into_iter().collect::<Vec<_>>());
        for node in &nodes {
            assert_eq!(node.gainers(), gainers);
            assert_eq!(node.fingerprint(), nodes[0].fingerprint());
        }

        // Everyone but the last gainer reports ready (the joiner takes over
        // whole partitions, so it may be the only gainer): nothing is
        // installed, since readiness only counts from gainers.
        let index = |id: u64| (id - 1) as usize;
        let last = *gainers.last().expect("gainers");
        for id in (1..=4).filter(|&id| id != last) {
            let mut out = Vec::new();
            nodes[index(id)].set_ready(2, &mut out);
            assert_eq!(out, vec![GossipAction::MembersChanged { ids: vec![id] }]);
            // Again, or for another version: nothing.
            nodes[index(id)].set_ready(2, &mut out);
            nodes[index(id)].set_ready(3, &mut out);
            assert_eq!(out.len(), 1);
        }
        gossip_all(&mut nodes, &mut rng);
        for node in &nodes {
            assert_eq!(node.ring().map(|ring| ring.version()), Some(1), "node {}", node.id());
            assert!(node.next_ring().is_some());
        }

        // The last one reports ready: it installs at once (it has heard
        // of everyone else's readiness), and gossip carries it everywhere.
        let mut out = Vec::new();
        nodes[index(last)].set_ready(2, &mut out);
        let ring = nodes[index(last)].ring().expect("a ring");
        assert_eq!(ring.version(), 2);
        assert!(out.contains(&GossipAction::RingChanged(ring.clone())));
        assert!(out.contains(&GossipAction::NextChanged(None)));
        gossip_all(&mut nodes, &mut rng);
        gossip_all(&mut nodes, &mut rng);
        for node in &nodes {
            assert_eq!(node.ring().as_deref(), Some(&*ring), "node {}", node.id());
            assert!(node.next_ring().is_none());
            assert!(node.gainers().is_empty());
            assert_eq!(node.status_of(4), Some(MemberStatus::Up));
            assert_eq!(node.fingerprint(), nodes[0].fingerprint());
        }
    }

    #[test]
    fn nodes_that_hold_the_same_state_propose_the_same_ring() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let state = cluster_state(&[1, 2, 3, 4]);
        let (mut a, mut b, mut c) =
            (from_state(1, &state), from_state(2, &state), from_state(3, &state));
        // a and b each hear of the same two joiners, in one push each (no
        // ring with them): each proposes on its own.
        let joiners: Vec<MemberRecord> = [5, 6]
            .iter()
            .map(|&id| MemberRecord::new(member(id), MemberStatus::Joining, 1))
            .collect();
        let push = |from| {
            GossipMessage::Push(GossipPush {
                from,
                delta: GossipState { members: joiners.clone(), ..GossipState::default() },
            })
        };
        a.handle(push(5), &mut Vec::new());
        b.handle(push(6), &mut Vec::new());
        let (next_a, next_b) = (a.next_ring().expect("pending"), b.next_ring().expect("pending"));
        assert_eq!((next_a.version(), ids_of(&next_a)), (2, vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(next_a, next_b, "byte-identical proposals");
        assert_eq!(a.fingerprint(), b.fingerprint());
        exchange(&mut a, &mut b, &mut rng);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.next_ring().as_ref(), Some(&next_a), "nothing more to propose");
        assert_eq!((a.stats().rings_proposed, b.stats().rings_proposed), (1, 1));

        // c hears of them one at a time: it proposes twice, ending a
        // version higher, and that wins everywhere.
        for joiner in &joiners {
            let delta = GossipState { members: vec![joiner.clone()], ..GossipState::default() };
            c.handle(GossipMessage::Push(GossipPush { from: joiner.id(), delta }), &mut Vec::new());
        }
        assert_eq!(
            c.next_ring().map(|next| (next.version(), ids_of(&next))),
            Some((3, vec![1, 2, 3, 4, 5, 6]))
        );
        exchange(&mut a, &mut c, &mut rng);
        exchange(&mut b, &mut c, &mut rng);
        assert_eq!(a.fingerprint(), c.fingerprint());
        assert_eq!(b.fingerprint(), c.fingerprint());

        // And from a persisted state, the proposal is the same again.
        let d = from_state(4, &state);
        let mut d = d;
        d.handle(push(5), &mut Vec::new());
        assert_eq!(d.next_ring().as_ref(), Some(&next_a));
    }

    #[test]
    fn leaving_and_left_members_are_left_out_of_the_proposal() {
        let state = cluster_state(&[1, 2, 3, 4, 5]);
        let mut a = from_state(1, &state);
        let mut out = Vec::new();
        a.set_status(3, MemberStatus::Leaving, &mut out).expect("known");
        let next = a.next_ring().expect("pending");
        assert_eq!((next.version(), ids_of(&next)), (2, vec![1, 2, 4, 5]));
        assert!(out.contains(&GossipAction::NextChanged(Some(next.clone()))));
        assert!(!a.gainers().is_empty() && !a.gainers().contains(&3));
        assert_eq!(a.ring().map(|ring| ring.version()), Some(1), "not before the pull");

        // Left as well, on top of the pending ring.
        a.set_status(5, MemberStatus::Left, &mut out).expect("known");
        let next = a.next_ring().expect("pending");
        assert_eq!((next.version(), ids_of(&next)), (3, vec![1, 2, 4]));

        // Straight to Left, elsewhere: the same ring without it.
        let mut b = from_state(2, &state);
        b.set_status(4, MemberStatus::Left, &mut Vec::new()).expect("known");
        assert_eq!(b.next_ring().map(|next| ids_of(&next)), Some(vec![1, 2, 3, 5]));
        // A Leaving node brought back Up is proposed back.
        a.set_status(3, MemberStatus::Up, &mut out).expect("known");
        assert_eq!(a.next_ring().map(|next| ids_of(&next)), Some(vec![1, 2, 3, 4]));
    }

    #[test]
    fn an_address_change_is_installed_at_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let state = cluster_state(&[1, 2, 3]);
        let mut a = from_state(1, &state);
        // Node 2 comes back at a new address, from its persisted state.
        let moved = Member { addr: "10.0.1.2:7070".into(), ..member(2) };
        let mut b =
            Gossip::from_state(moved.clone(), state.clone(), vec![], GossipOptions::default())
                .expect("valid");
        let ring = b.ring().expect("a ring");
        assert_eq!(ring.version(), 2, "the new address needs no pull");
        assert_eq!(ring.member(2), Some(&moved));
        assert!(b.next_ring().is_none() && b.gainers().is_empty());
        assert_eq!(b.stats().rings_installed, 1);
        let old = Ring::from_state(state.ring.clone()).expect("valid");
        assert_eq!(ring.state().owners, old.state().owners, "the same owners");

        exchange(&mut b, &mut a, &mut rng);
        assert_eq!(a.ring(), b.ring());
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn a_ring_member_without_a_record_is_never_removed() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        // Node 1 knows the ring over 1..=4 but records of only 1 and 2 (a
        // snapshot from before the others' records arrived).
        let full = cluster_state(&[1, 2, 3, 4]);
        let state = GossipState::new(full.members[..2].to_vec(), full.ring.clone()).expect("valid");
        let mut a = from_state(1, &state);
        assert!(a.next_ring().is_none(), "no record is no reason to propose");
        // A joiner arrives: the proposal keeps 3 and 4.
        let mut joiner = node(5, &[1]);
        exchange(&mut joiner, &mut a, &mut rng);
        let next = a.next_ring().expect("pending");
        assert_eq!(ids_of(&next), vec![1, 2, 3, 4, 5]);
        // Only the joiner gains (it takes over whole partitions, and the
        // spread keeps everyone else's lists as they were): once it is
        // ready, the ring is installed, 3 and 4 in it.
        assert_eq!(a.gainers(), vec![5]);
        joiner.set_ready(2, &mut Vec::new());
        exchange(&mut joiner, &mut a, &mut rng);
        let ring = a.ring().expect("a ring");
        assert_eq!((ring.version(), ids_of(&ring)), (2, vec![1, 2, 3, 4, 5]));

        // Node 2 leaves: 3 or 4 take some of its replicas, and without a
        // record they cannot be ready, so the install waits for them
        // whoever else is ready.
        a.set_status(2, MemberStatus::Leaving, &mut Vec::new()).expect("known");
        let gainers = a.gainers();
        assert!(gainers.contains(&3) || gainers.contains(&4), "gainers {gainers:?}");
        exchange(&mut joiner, &mut a, &mut rng);
        joiner.set_ready(3, &mut Vec::new());
        a.set_ready(3, &mut Vec::new());
        exchange(&mut joiner, &mut a, &mut rng);
        assert_eq!(a.ring().map(|ring| ring.version()), Some(2));

        // Their records arrive, ready: the ring is installed, with them.
        let token = ready_token(a.state().ring_key(), a.state().next_key());
        let ready = [3, 4]
            .iter()
            .map(|&id| MemberRecord {
                ready: token,
                ..MemberRecord::new(member(id), MemberStatus::Up, 2)
            })
            .collect();
        let delta = GossipState { members: ready, ..GossipState::default() };
        let mut out = Vec::new();
        a.handle(GossipMessage::Push(GossipPush { from: 3, delta }), &mut out);
        let ring = a.ring().expect("a ring");
        assert_eq!((ring.version(), ids_of(&ring)), (3, vec![1, 3, 4, 5]));
        assert_eq!(
            out,
            vec![
                GossipAction::RingChanged(ring),
                GossipAction::NextChanged(None),
                GossipAction::MembersChanged { ids: vec![3, 4] },
            ]
        );
    }

    #[test]
    fn an_operators_status_change_is_not_undone_by_the_nodes_own_reissues() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let state = cluster_state(&[1, 2, 3]);
        let (mut a, mut b) = (from_state(1, &state), from_state(2, &state));
        // At b, an operator marks a as leaving; meanwhile a re-issues its
        // own record twice, not having heard of it.
        b.set_status(1, MemberStatus::Leaving, &mut Vec::new()).expect("known");
        assert_eq!(b.version_of(1), Some(STATUS_EPOCH));
        a.restart(&mut Vec::new());
        a.restart(&mut Vec::new());
        exchange(&mut a, &mut b, &mut rng);
        for node in [&a, &b] {
            assert_eq!(node.status_of(1), Some(MemberStatus::Leaving), "at {}", node.id());
        }
        // The node's own re-issues build on it from then on.
        a.restart(&mut Vec::new());
        assert_eq!(
            (a.version_of(1), a.status_of(1)),
            (Some(STATUS_EPOCH + 1), Some(MemberStatus::Leaving))
        );
        // Left needs no jump: it wins whatever the version.
        b.set_status(3, MemberStatus::Left, &mut Vec::new()).expect("known");
        assert_eq!(b.version_of(3), Some(2));
    }

    #[test]
    fn messages_from_oneself_or_invalid_are_refused() {
        let mut a = node(1, &[]);
        let mut out = Vec::new();
        let digest = a.state().digest(a.record(1).cloned().expect("own"));
        a.handle(GossipMessage::Digest(digest), &mut out);
        let push = GossipPush {
            from: 2,
            delta: GossipState {
                members: vec![MemberRecord {
                    status: 9,
                    ..MemberRecord::new(member(3), MemberStatus::Up, 1)
                }],
                ..GossipState::default()
            },
        };
        a.handle(GossipMessage::Push(push), &mut out);
        assert!(out.is_empty());
        assert_eq!(a.stats().refused, 2);
        assert_eq!(a.members().len(), 1);
    }
}
