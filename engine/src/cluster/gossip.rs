//! Gossip: how every node comes to know every member and the newest ring.
//!
//! A pure state machine in the style of [`super::coordinator`]: the driver
//! calls [`Gossip::tick`] with the time and a random number generator,
//! hands received messages to [`Gossip::handle`], and carries out the
//! [`GossipAction`]s they append (send a message, route by a new ring,
//! persist changed records). Nothing here reads a clock, opens a socket,
//! touches a file, draws randomness it was not given or iterates a hash
//! map: a seeded simulator replays it exactly
//! (`engine/tests/gossip_sim.rs`).
//!
//! # What is gossiped
//!
//! A [`GossipState`]: one [`MemberRecord`] per node (its address, weight,
//! zone, [`MemberStatus`] and version) and the newest ring. Records and
//! rings merge by the rule in [`holdfast_net::membership`]: a `Left`
//! record is final, then the higher version wins, then the later status,
//! then a deterministic tie-break. The merge is a join (commutative,
//! associative, idempotent), so it does not matter in what order, how
//! often, or through whom a node hears something: nodes that have heard
//! the same things hold byte-identical states. Versions, not timestamps,
//! decide, because a version is issued only by someone who saw the version
//! before it: no clock skew can make an older change win.
//!
//! # The exchange (push-pull, by digest)
//!
//! Every [`GossipOptions::interval`] a node picks one peer uniformly at
//! random among the members it knows that are not `Left` (or, while it
//! knows none, one of its seed addresses) and runs one exchange:
//!
//! ```text
//! initiator                                   receiver
//!   Digest { own record, (id, stamp) per record, ring key }  ->
//!                                             merges the initiator's record;
//!                                             compares stamps, id by id
//!   <-  Reply { records and ring newer here, ids newer there, ring wanted? }
//! merges them
//!   Push { the records (and ring) asked for }  ->
//!                                             merges them
//! ```
//!
//! After one exchange both hold the join of what both held when it began.
//! A digest costs about 32 bytes per known record and a ring hash, whatever
//! changed; records and rings travel only where they are newer, so a
//! quiet cluster sends O(n) bytes per node per interval and a change costs
//! one record (or one ring) per node it reaches. A new node that knows only
//! a seed address sends its digest (just its own record) to the seed and
//! receives every record and the ring in the reply; the seed now holds its
//! record and spreads it like any other change.
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
//! `engine/examples/gossip_convergence.rs` prints the measured rounds.
//!
//! # What this does not do
//!
//! - Detect failures: a crashed node stays `Up` here and is still picked
//!   (its exchanges fail). Suspicion is the failure detector's business.
//! - Decide membership: joining the ring (rebalancing) and marking nodes
//!   `Up` or `Left` are decisions made elsewhere, through
//!   [`Gossip::set_status`] and [`Gossip::propose_ring`]; gossip only
//!   spreads them.
//! - Heal a split membership: a node gossips only with members it knows,
//!   falling back to seeds only while it knows none, so two clusters that
//!   never shared a member never meet.
//! - Defend against a lying peer: a peer can send any record at any
//!   version. Digests compare records by a 64-bit hash of their fields, so
//!   two different records with equal version, status and hash would never
//!   be exchanged (a 2^-64 event per pair).
//!
//! Bounds: one exchange per interval (fan-out 1); at most
//! [`MEMBERS_MAX`](holdfast_net::membership::MEMBERS_MAX) records, so every
//! message is bounded; every message is validated before it is merged.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use holdfast_net::membership::{
    DigestEntry, GossipDigest, GossipPush, GossipReply, GossipState, MemberRecord, MemberStatus,
    MembershipError, Merged, RingKey, ring_key,
};
use holdfast_net::ring::{Member, NodeId, Ring, RingState};
use rand::Rng;

/// How a node gossips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GossipOptions {
    /// How often a node starts an exchange.
    pub interval: Duration,
}

impl Default for GossipOptions {
    fn default() -> GossipOptions {
        GossipOptions { interval: Duration::from_secs(1) }
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

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipAction {
    /// Send `message` to `to`. Best effort: a message that cannot be
    /// delivered is dropped, and the next round makes up for it.
    Send { to: Peer, message: GossipMessage },
    /// The ring changed: route by it from now on.
    RingChanged(Arc<Ring>),
    /// These members' records changed (ascending ids). Together with
    /// `RingChanged`, the moments to persist [`Gossip::state`].
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
    /// its limit): configuration is checked before this.
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
    pub fn from_state(
        me: Member,
        state: GossipState,
        mut seeds: Vec<String>,
        options: GossipOptions,
    ) -> Result<Gossip, MembershipError> {
        state.validate()?;
        MemberRecord::new(me.clone(), MemberStatus::Joining, 1).validate()?;
        seeds.retain(|seed| *seed != me.addr);
        seeds.sort();
        seeds.dedup();
        let ring = ring_of(&state.ring);
        let ring_key = ring_key(&state.ring);
        let mut gossip = Gossip {
            me,
            options,
            seeds,
            state,
            ring,
            ring_key,
            next_tick: Duration::ZERO,
            stats: GossipStats::default(),
        };
        if gossip.state.record(gossip.me.id).is_none() {
            let record = MemberRecord::new(gossip.me.clone(), MemberStatus::Joining, 1);
            assert!(gossip.state.merge_record(&record), "a new record is added");
        }
        gossip.reassert();
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

    /// The newest ring known, if any.
    pub fn ring(&self) -> Option<Arc<Ring>> {
        self.ring.clone()
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
                let merged = self.state.merge(&push.delta);
                self.applied(merged, out);
            }
        }
    }

    /// An operator's change of `id`'s status, made at this node on the
    /// node's behalf: its record at the next version, with the same fields.
    /// Any change but one out of `Left` is allowed (a `Leaving` node may be
    /// brought back `Up`).
    pub fn set_status(
        &mut self,
        id: NodeId,
        status: MemberStatus,
        out: &mut Vec<GossipAction>,
    ) -> Result<(), StatusError> {
        let record = self.record(id).ok_or(StatusError::UnknownMember { id })?;
        if record.is_left() {
            return Err(StatusError::Left { id });
        }
        let version = record.version.checked_add(1).ok_or(StatusError::VersionExhausted { id })?;
        let record = MemberRecord::new(record.member.clone(), status, version);
        assert!(self.state.merge_record(&record), "a higher version wins");
        out.push(GossipAction::MembersChanged { ids: vec![id] });
        Ok(())
    }

    /// Adopts `ring` if it is valid and wins over the current ring (a
    /// higher version, see [`ring_precedence`](holdfast_net::membership::ring_precedence)).
    /// Gossip spreads it from the next tick.
    pub fn propose_ring(
        &mut self,
        ring: RingState,
        out: &mut Vec<GossipAction>,
    ) -> Result<Arc<Ring>, ProposeError> {
        let current = self.state.ring.version;
        if ring.version <= current {
            return Err(ProposeError::NotNewer { version: ring.version, current });
        }
        let proposed = GossipState { members: Vec::new(), ring };
        proposed.validate()?;
        let merged = self.state.merge(&proposed);
        assert!(merged.ring, "a ring of a higher version wins");
        self.ring_changed(out);
        Ok(self.ring.clone().expect("a ring was just adopted"))
    }

    /// This node restarted: its record at the next version (same status,
    /// its current fields), so that gossip carries the news. A node that
    /// has left stays left.
    pub fn restart(&mut self, out: &mut Vec<GossipAction>) {
        let own = self.own();
        if own.is_left() {
            return;
        }
        let Some(version) = own.version.checked_add(1) else { return };
        let status = own.status().expect("a validated record's status");
        let record = MemberRecord::new(self.me.clone(), status, version);
        assert!(self.state.merge_record(&record), "a higher version wins");
        out.push(GossipAction::MembersChanged { ids: vec![self.me.id] });
    }

    fn own(&self) -> &MemberRecord {
        self.state.record(self.me.id).expect("a node always holds its own record")
    }

    fn pick_peer(&self, rng: &mut impl Rng) -> Option<Peer> {
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
        let merged = self
            .state
            .merge(&GossipState { members: vec![sender.clone()], ring: RingState::default() });
        self.applied(merged, out);

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
        let ours = self.ring_key;
        let ring =
            if ours > digest.ring_key() { self.state.ring.clone() } else { RingState::default() };
        let reply = GossipReply {
            from: self.me.id,
            delta: GossipState { members: newer, ring },
            wants,
            wants_ring: digest.ring_key() > ours,
        };
        let to = Peer::Node { id: sender.id(), addr: sender.member.addr };
        out.push(GossipAction::Send { to, message: GossipMessage::Reply(reply) });
    }

    fn on_reply(&mut self, reply: GossipReply, out: &mut Vec<GossipAction>) {
        let merged = self.state.merge(&reply.delta);
        self.applied(merged, out);
        if reply.wants.is_empty() && !reply.wants_ring {
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
        let ring = if reply.wants_ring { self.state.ring.clone() } else { RingState::default() };
        let push = GossipPush { from: self.me.id, delta: GossipState { members, ring } };
        out.push(GossipAction::Send { to, message: GossipMessage::Push(push) });
    }

    /// After a merge of peer state: refute stale news about this node,
    /// rebuild the ring if it changed, and tell the driver.
    fn applied(&mut self, mut merged: Merged, out: &mut Vec<GossipAction>) {
        self.stats.records_learned += merged.members.len() as u64;
        // Re-issuing changes only this node's record, which is then in
        // `merged.members` already.
        if merged.members.binary_search(&self.me.id).is_ok() && self.reassert() {
            self.stats.refuted += 1;
        }
        if merged.ring {
            self.stats.rings_learned += 1;
            self.ring_changed(out);
        }
        if !merged.members.is_empty() {
            out.push(GossipAction::MembersChanged { ids: std::mem::take(&mut merged.members) });
        }
    }

    /// `state.ring` changed: rebuild what derives from it, tell the driver.
    fn ring_changed(&mut self, out: &mut Vec<GossipAction>) {
        self.ring = ring_of(&self.state.ring);
        self.ring_key = ring_key(&self.state.ring);
        if let Some(ring) = &self.ring {
            out.push(GossipAction::RingChanged(ring.clone()));
        }
    }

    /// If the winning record of this node has other fields than the node
    /// itself (an old address, say, from before a restart that lost its
    /// state), re-issues it at the next version with this node's fields
    /// and the winning status (an operator's `Leaving` stands). A `Left`
    /// record stands as it is. Returns whether it re-issued.
    fn reassert(&mut self) -> bool {
        let own = self.own();
        if own.is_left() || own.member == self.me {
            return false;
        }
        let Some(version) = own.version.checked_add(1) else { return false };
        let status = own.status().expect("a validated record's status");
        let record = MemberRecord::new(self.me.clone(), status, version);
        assert!(self.state.merge_record(&record), "a higher version wins");
        true
    }
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
                ring: RingState::default(),
            },
        };
        a.handle(GossipMessage::Push(push), &mut out);
        assert!(out.is_empty());
        assert_eq!(a.stats().refused, 2);
        assert_eq!(a.members().len(), 1);
    }
}
