//! Anti-entropy: replicas compare their Merkle trees and repair the keys
//! on which they differ.
//!
//! Read repair fixes only keys that are read, and hints only what a
//! fallback saw. A replica that missed writes for longer, came back from
//! an old or empty disk, or lost a record to corruption converges through
//! this.
//!
//! # Rounds
//!
//! Each shard walks the (partition, peer) pairs of its partitions that its
//! node replicates in the current ring, for each of the partition's other
//! replicas, in ascending order: one exchange at a time, started at most
//! every `anti_entropy_period / pairs`, so every pair is compared once per
//! period while the budget lasts. A pair whose peer is believed down, or
//! whose exchange fails, is skipped; a round in which every pair was
//! compared is a *full* round, counted with the time it ended
//! (`holdfast status` shows both). Both replicas of a pair run rounds, so
//! every pair is compared twice per period; each exchange repairs both
//! directions, so one node's rounds alone would converge the pair.
//!
//! # One exchange
//!
//! The initiator asks its own replica and the peer for the same tree nodes
//! ([`PeerRequest::TreeHashes`]): the roots, then the children of every
//! node that differed, level by level down to the leaves
//! ([`merkle::DEPTH`] + 1 round trips, each carrying only the children of
//! differing nodes). For the differing leaves, a batch at a time, both
//! sides list their keys with entry hashes ([`PeerRequest::LeafEntries`]);
//! a key whose entry differs (or that one side lacks) is repaired: the
//! initiator fetches the peer's set ([`PeerRequest::Fetch`]) and merges it
//! into its own (so concurrent versions become siblings and dominated ones
//! vanish, exactly as a replica write would), then sends its resulting set
//! wherever it differs from the peer's ([`PeerRequest::Repair`]), which
//! the peer merges likewise. Afterwards both hold the merge of the two.
//!
//! Trees move on while an exchange runs (client writes); a key that only
//! looked different because a write landed between two reads is merged
//! needlessly, which is harmless: merging is idempotent.
//!
//! # Reaping tombstones
//!
//! A delete leaves a tombstone, and a tombstone may go only once every
//! replica holds it: a replica that missed the delete would otherwise hand
//! the deleted value back. The first replica of a partition (by the current
//! ring, with no change pending) checks its tombstones once per round:
//! those it has held unchanged for `tombstone_grace` are offered to every
//! other replica ([`PeerRequest::Offer`], which answers per key whether the
//! peer holds exactly that set); the ones all hold are reaped on every
//! peer ([`PeerRequest::Reap`]) and then here, each only if its set is
//! still that tombstone (a write meanwhile keeps the key). A replica that
//! missed a reap still holds the tombstone and gets it back from this one's
//! next exchange, which reaps it again: harmless, and it converges.
//!
//! The grace is for copies anti-entropy cannot see: a fallback holding an
//! old value for an owner (a hint), down longer than the grace, could hand
//! it back after the tombstone is gone, and nothing would then say it was
//! deleted. That is Cassandra's `gc_grace_seconds` trade-off; the default
//! is an hour. Reaping forgets the counters a replica issued for the key,
//! so a replica raises its partition's counter floor first (see
//! `Replica::reap`).
//!
//! # Budget
//!
//! Exchanges run in the background and are throttled by two token buckets
//! per shard: keys (listed, fetched or sent) and bytes of sets (fetched or
//! sent) per second. A batch starts only when both have tokens, and
//! charges what it moved. The node runs the replica work of exchanges in
//! its low-priority task queue, behind client requests.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use holdfast_net::SiblingSet;
use holdfast_net::ring::NodeId;

use super::{Action, Coordinator, LocalOp, LocalResult, OpId, Operation, PeerReply, PeerRequest};
use crate::cluster::merkle::{self, DEPTH, FANOUT};

/// Differing leaves whose keys are listed at once.
const LEAVES_PER_BATCH: usize = 64;
/// Bytes of sets one fetch answer or one repair request carries about at
/// most (it always carries at least one key).
const FRAME_BYTES: usize = 512 << 10;
/// Keys per repair request.
const REPAIR_KEYS: usize = 128;
/// Keys fetched per batch at most (within the protocol's limit); the rest
/// still differ and are repaired by a later exchange.
const FETCH_KEYS: usize = 1024;
/// Tombstones a reap check lists, and offers at most (the offer limit).
const TOMBSTONES_LISTED: usize = 4096;
const REAP_KEYS: usize = 1024;

/// What anti-entropy compared and repaired: one exchange's, an operator's
/// repair's, or a shard's total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Exchanges completed (trees compared to the leaves if need be).
    pub exchanges: u64,
    /// Exchanges skipped: the peer believed down, a tree not comparable
    /// yet (being built after a restart), or a request that failed.
    pub skipped: u64,
    /// Completed exchanges whose roots differed.
    pub partitions_differing: u64,
    /// Leaves that differed.
    pub leaves_differing: u64,
    /// Tree hashes the peers sent.
    pub hashes: u64,
    /// Leaf entries (key and entry hash) the peers sent.
    pub entries: u64,
    /// Keys found differing, and repaired.
    pub keys_repaired: u64,
    /// Sets fetched from peers, and their bytes.
    pub keys_received: u64,
    pub bytes_received: u64,
    /// Sets sent to peers, and their bytes.
    pub keys_sent: u64,
    pub bytes_sent: u64,
}

impl std::ops::AddAssign for RepairReport {
    fn add_assign(&mut self, other: RepairReport) {
        let RepairReport {
            exchanges,
            skipped,
            partitions_differing,
            leaves_differing,
            hashes,
            entries,
            keys_repaired,
            keys_received,
            bytes_received,
            keys_sent,
            bytes_sent,
        } = other;
        self.exchanges += exchanges;
        self.skipped += skipped;
        self.partitions_differing += partitions_differing;
        self.leaves_differing += leaves_differing;
        self.hashes += hashes;
        self.entries += entries;
        self.keys_repaired += keys_repaired;
        self.keys_received += keys_received;
        self.bytes_received += bytes_received;
        self.keys_sent += keys_sent;
        self.bytes_sent += bytes_sent;
    }
}

#[derive(Debug, Default)]
pub(super) struct AntiEntropy {
    /// The pairs of this shard under a ring version, ascending.
    pairs: Option<(u64, Vec<(u32, NodeId)>)>,
    /// The last pair of the round started.
    cursor: Option<(u32, NodeId)>,
    /// Whether every pair of the round so far was compared.
    round_full: bool,
    round_started: bool,
    next_start: Duration,
    /// The exchange in flight, if any.
    exchange: Option<OpId>,
    /// Operators' repairs, oldest first.
    manual: VecDeque<Manual>,
    /// Partitions due for a reap check (this node is their first replica).
    reaps: VecDeque<u32>,
    /// Per partition, the tombstones seen by reap checks: token and when
    /// first seen with it.
    candidates: BTreeMap<u32, BTreeMap<Vec<u8>, (u64, Duration)>>,
    keys: f64,
    bytes: f64,
    refilled: Option<Duration>,
}

#[derive(Debug)]
struct Manual {
    ticket: u64,
    pairs: VecDeque<(u32, NodeId)>,
    report: RepairReport,
}

#[derive(Debug)]
pub(in crate::cluster) struct Exchange {
    partition: u32,
    peer: NodeId,
    /// The operator's repair it belongs to, if any.
    ticket: Option<u64>,
    stage: Stage,
    deadline: Duration,
    report: RepairReport,
    /// Differing leaves not yet repaired.
    leaves: VecDeque<u16>,
}

/// A reap check of one partition.
#[derive(Debug)]
pub(in crate::cluster) struct Reaping {
    partition: u32,
    peers: Vec<NodeId>,
    stage: ReapStage,
    deadline: Duration,
    /// The tombstones old enough, and per key whether every peer answered
    /// holding it so far.
    keys: Vec<(Vec<u8>, u64)>,
    held: Vec<bool>,
    /// Peers whose answer is awaited.
    waiting: Vec<NodeId>,
}

impl Reaping {
    /// Sends every peer `request` of `keys` and waits for them all in
    /// `stage`.
    fn ask_peers(
        &mut self,
        op: OpId,
        stage: ReapStage,
        keys: Vec<(Vec<u8>, u64)>,
        deadline: Duration,
        request: impl Fn(Vec<(Vec<u8>, u64)>) -> PeerRequest,
        out: &mut Vec<Action>,
    ) {
        self.stage = stage;
        self.deadline = deadline;
        self.waiting = self.peers.clone();
        for &peer in &self.peers {
            out.push(Action::Send { op, to: peer, request: request(keys.clone()) });
        }
        self.keys = keys;
        out.push(Action::Timer { op, at: deadline });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReapStage {
    Listing,
    Offering,
    Reaping,
    Removing,
}

#[derive(Debug)]
enum Stage {
    /// Comparing the nodes `indices` of `level`: each side's hashes once
    /// it answered.
    Hashes { level: u8, indices: Vec<u16>, mine: Option<Vec<u64>>, theirs: Option<Vec<u64>> },
    /// Waiting for budget before the next batch of leaves.
    Budget,
    /// Listing a batch of leaves on both sides.
    Entries { mine: Option<Vec<(Vec<u8>, u64)>>, theirs: Option<Vec<(Vec<u8>, u64)>> },
    /// Fetching the peer's sets of the keys it has differently, and this
    /// replica's sets of the keys only it has.
    Fetching {
        theirs_entries: BTreeMap<Vec<u8>, u64>,
        theirs: Option<Vec<(Vec<u8>, SiblingSet)>>,
        mine: Option<Vec<(Vec<u8>, SiblingSet)>>,
    },
    /// Merging the peer's sets here; `send` is what goes back regardless.
    Merging { theirs_entries: BTreeMap<Vec<u8>, u64>, send: Vec<(Vec<u8>, SiblingSet)> },
    /// Repair requests in flight.
    Sending { waiting: usize },
}

impl Coordinator {
    /// Refills the budget: at most a second's worth saved up (and a full
    /// second's at the start, so that a repair asked for before the first
    /// tick runs at once).
    fn refill(&mut self, now: Duration) {
        let ae = &mut self.anti_entropy;
        let keys_rate = f64::from(self.options.anti_entropy_keys_per_second);
        let bytes_rate = self.options.anti_entropy_bytes_per_second as f64;
        let elapsed = match ae.refilled {
            Some(refilled) => now.saturating_sub(refilled).as_secs_f64(),
            None => 1.0,
        };
        ae.keys = (ae.keys + elapsed * keys_rate).min(keys_rate);
        ae.bytes = (ae.bytes + elapsed * bytes_rate).min(bytes_rate);
        ae.refilled = Some(now);
    }

    pub(super) fn anti_entropy_tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.refill(now);
        match self.anti_entropy.exchange {
            Some(op) => {
                // A batch waiting for budget resumes when there is some.
                if let Some(Operation::AntiEntropy(exchange)) = self.operations.get(&op)
                    && matches!(exchange.stage, Stage::Budget)
                {
                    self.next_batch(now, op, out);
                }
            }
            None => self.start_exchange(now, out),
        }
    }

    /// An operator's repair of `partitions` (all of this shard's, for
    /// `None`): queued before the periodic round's next exchange.
    pub(super) fn request_repair(
        &mut self,
        now: Duration,
        ticket: u64,
        partitions: Option<Vec<u32>>,
        out: &mut Vec<Action>,
    ) {
        self.refill(now);
        let pairs: VecDeque<(u32, NodeId)> = self
            .anti_entropy_pairs()
            .into_iter()
            .filter(|(p, _)| partitions.as_ref().is_none_or(|wanted| wanted.contains(p)))
            .collect();
        if pairs.is_empty() {
            out.push(Action::Repaired { ticket, report: RepairReport::default() });
            return;
        }
        self.anti_entropy.manual.push_back(Manual {
            ticket,
            pairs,
            report: RepairReport::default(),
        });
        if self.anti_entropy.exchange.is_none() {
            self.start_exchange(now, out);
        }
    }

    /// The (partition, peer) pairs this shard compares under the current
    /// ring, ascending.
    fn anti_entropy_pairs(&mut self) -> Vec<(u32, NodeId)> {
        let Some(ring) = self.ring.clone() else { return Vec::new() };
        if let Some((version, pairs)) = &self.anti_entropy.pairs
            && *version == ring.version()
        {
            return pairs.clone();
        }
        let n = usize::from(self.options.n);
        let mut pairs = Vec::new();
        for partition in (0..ring.partitions()).filter(|&p| self.mine(p)) {
            let replicas = ring.preference_list(partition, n);
            if !replicas.contains(&self.node) {
                continue;
            }
            let mut peers: Vec<NodeId> =
                replicas.into_iter().filter(|&node| node != self.node).collect();
            peers.sort_unstable();
            pairs.extend(peers.into_iter().map(|peer| (partition, peer)));
        }
        self.anti_entropy.pairs = Some((ring.version(), pairs.clone()));
        pairs
    }

    /// Starts the next exchange: an operator's first, else the round's
    /// next pair once it is due.
    fn start_exchange(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.ring.is_none() || self.anti_entropy.keys < 1.0 || self.anti_entropy.bytes < 1.0 {
            return;
        }
        while let Some(manual) = self.anti_entropy.manual.front_mut() {
            let ticket = manual.ticket;
            let Some((partition, peer)) = manual.pairs.pop_front() else {
                let report = manual.report;
                self.anti_entropy.manual.pop_front();
                out.push(Action::Repaired { ticket, report });
                continue;
            };
            if self.is_up(peer, now) {
                return self.begin(now, partition, peer, Some(ticket), out);
            }
            if let Some(manual) = self.anti_entropy.manual.front_mut() {
                manual.report.skipped += 1;
            }
        }
        while let Some(partition) = self.anti_entropy.reaps.pop_front() {
            if self.begin_reap(now, partition, out) {
                return;
            }
        }
        let period = self.options.anti_entropy_period;
        if period.is_zero() || now < self.anti_entropy.next_start {
            return;
        }
        let pairs = self.anti_entropy_pairs();
        if pairs.is_empty() {
            return;
        }
        let interval = period / u32::try_from(pairs.len()).unwrap_or(u32::MAX);
        self.anti_entropy.next_start = now + interval;
        // Skip pairs whose peer is down, at most one whole round's worth.
        for _ in 0..pairs.len() {
            let ae = &mut self.anti_entropy;
            let next = match ae.cursor {
                Some(cursor) => pairs.iter().copied().find(|&pair| pair > cursor),
                None => pairs.first().copied(),
            };
            let Some((partition, peer)) = next else {
                // The round is over.
                if ae.round_started && ae.round_full {
                    self.stats.anti_entropy_rounds += 1;
                    self.stats.anti_entropy_last_round = Some(now);
                }
                ae.cursor = None;
                ae.round_started = false;
                continue;
            };
            if !ae.round_started {
                ae.round_started = true;
                ae.round_full = true;
            }
            ae.cursor = Some((partition, peer));
            if self.is_up(peer, now) {
                return self.begin(now, partition, peer, None, out);
            }
            self.anti_entropy.round_full = false;
            self.stats.anti_entropy.skipped += 1;
        }
    }

    fn begin(
        &mut self,
        now: Duration,
        partition: u32,
        peer: NodeId,
        ticket: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        let op = self.next_op();
        let exchange = Exchange {
            partition,
            peer,
            ticket,
            stage: Stage::Budget,
            deadline: now,
            report: RepairReport::default(),
            leaves: VecDeque::new(),
        };
        self.operations.insert(op, Operation::AntiEntropy(exchange));
        self.anti_entropy.exchange = Some(op);
        self.ask_hashes(now, op, 0, vec![0], out);
    }

    fn exchange(&mut self, op: OpId) -> Option<&mut Exchange> {
        match self.operations.get_mut(&op) {
            Some(Operation::AntiEntropy(exchange)) => Some(exchange),
            _ => None,
        }
    }

    /// Asks both sides for the hashes of nodes `indices` of `level`.
    fn ask_hashes(
        &mut self,
        now: Duration,
        op: OpId,
        level: u8,
        indices: Vec<u16>,
        out: &mut Vec<Action>,
    ) {
        let deadline = now + self.options.request_timeout;
        let Some(exchange) = self.exchange(op) else { return };
        let (partition, peer) = (exchange.partition, exchange.peer);
        exchange.deadline = deadline;
        exchange.stage =
            Stage::Hashes { level, indices: indices.clone(), mine: None, theirs: None };
        let local = LocalOp::TreeHashes { partition, level, indices: indices.clone() };
        out.push(Action::Local { op, local });
        let request = PeerRequest::TreeHashes { partition, level, indices };
        out.push(Action::Send { op, to: peer, request });
        out.push(Action::Timer { op, at: deadline });
    }

    /// Lists the next batch of differing leaves on both sides, budget
    /// permitting; ends the exchange when none are left.
    fn next_batch(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let deadline = now + self.options.request_timeout;
        let has_budget = self.anti_entropy.keys >= 1.0 && self.anti_entropy.bytes >= 1.0;
        let Some(exchange) = self.exchange(op) else { return };
        if exchange.leaves.is_empty() {
            return self.end_exchange(now, op, true, out);
        }
        if !has_budget {
            exchange.stage = Stage::Budget;
            return;
        }
        let take = exchange.leaves.len().min(LEAVES_PER_BATCH);
        let leaves: Vec<u16> = exchange.leaves.drain(..take).collect();
        let (partition, peer) = (exchange.partition, exchange.peer);
        exchange.stage = Stage::Entries { mine: None, theirs: None };
        exchange.deadline = deadline;
        let local = LocalOp::LeafEntries { partition, leaves: leaves.clone() };
        out.push(Action::Local { op, local });
        out.push(Action::Send {
            op,
            to: peer,
            request: PeerRequest::LeafEntries { partition, leaves },
        });
        out.push(Action::Timer { op, at: deadline });
    }

    pub(super) fn on_anti_entropy_local(
        &mut self,
        now: Duration,
        op: OpId,
        result: LocalResult,
        out: &mut Vec<Action>,
    ) {
        self.on_answer(now, op, Answer::Mine(result), out);
    }

    pub(super) fn on_anti_entropy_peer(
        &mut self,
        now: Duration,
        op: OpId,
        from: NodeId,
        reply: PeerReply,
        out: &mut Vec<Action>,
    ) {
        match self.exchange(op) {
            Some(exchange) if exchange.peer == from => {}
            _ => return,
        }
        self.on_answer(now, op, Answer::Theirs(reply), out);
    }

    pub(super) fn on_anti_entropy_timer(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(exchange) = self.exchange(op) else { return };
        if now >= exchange.deadline && !matches!(exchange.stage, Stage::Budget) {
            self.end_exchange(now, op, false, out);
        }
    }

    fn on_answer(&mut self, now: Duration, op: OpId, answer: Answer, out: &mut Vec<Action>) {
        let Some(exchange) = self.exchange(op) else { return };
        match (&mut exchange.stage, answer) {
            (Stage::Hashes { mine, .. }, Answer::Mine(LocalResult::Hashes(Some(hashes)))) => {
                *mine = Some(hashes);
            }
            (Stage::Hashes { theirs, .. }, Answer::Theirs(PeerReply::Hashes(Some(hashes)))) => {
                exchange.report.hashes += hashes.len() as u64;
                *theirs = Some(hashes);
            }
            (Stage::Entries { mine, .. }, Answer::Mine(LocalResult::Entries(Some(entries)))) => {
                *mine = Some(entries);
            }
            (Stage::Entries { theirs, .. }, Answer::Theirs(PeerReply::Entries(Some(entries)))) => {
                exchange.report.entries += entries.len() as u64;
                *theirs = Some(entries);
            }
            (Stage::Fetching { mine, .. }, Answer::Mine(LocalResult::Scanned { entries, .. })) => {
                *mine = Some(entries)
            }
            (
                Stage::Fetching { theirs, .. },
                Answer::Theirs(PeerReply::Scanned { entries, bytes, .. }),
            ) => {
                exchange.report.keys_received += entries.len() as u64;
                exchange.report.bytes_received += bytes;
                let keys = entries.len() as f64;
                *theirs = Some(entries);
                self.anti_entropy.keys -= keys;
                self.anti_entropy.bytes -= bytes as f64;
            }
            (Stage::Merging { .. }, Answer::Mine(LocalResult::Scanned { entries, .. })) => {
                let Stage::Merging { theirs_entries, mut send } =
                    std::mem::replace(&mut exchange.stage, Stage::Sending { waiting: 0 })
                else {
                    unreachable!("matched")
                };
                // What the merge made goes back where the peer's differs.
                for (key, set) in entries {
                    let entry = merkle::entry_hash(&key, &set.encode());
                    if theirs_entries.get(&key) != Some(&entry) {
                        send.push((key, set));
                    }
                }
                return self.send_repairs(now, op, send, out);
            }
            (Stage::Sending { waiting }, Answer::Theirs(reply)) => {
                if matches!(reply, PeerReply::Failed { .. }) {
                    return self.end_exchange(now, op, false, out);
                }
                *waiting -= 1;
                if *waiting == 0 {
                    self.next_batch(now, op, out);
                }
                return;
            }
            // Not comparable yet, on either side.
            (_, Answer::Mine(LocalResult::Hashes(None) | LocalResult::Entries(None)))
            | (_, Answer::Theirs(PeerReply::Hashes(None) | PeerReply::Entries(None))) => {
                return self.end_exchange(now, op, false, out);
            }
            // A failure, or an answer out of turn.
            _ => return self.end_exchange(now, op, false, out),
        }
        self.advance(now, op, out);
    }

    /// Moves the exchange on once both sides answered its current stage.
    fn advance(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(exchange) = self.exchange(op) else { return };
        match &mut exchange.stage {
            Stage::Hashes { level, indices, mine: Some(mine), theirs: Some(theirs) } => {
                if mine.len() != indices.len() || theirs.len() != indices.len() {
                    return self.end_exchange(now, op, false, out);
                }
                let level = *level;
                let differing: Vec<u16> = indices
                    .iter()
                    .zip(mine.iter().zip(theirs.iter()))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(&index, _)| index)
                    .collect();
                if differing.is_empty() {
                    return self.end_exchange(now, op, true, out);
                }
                if level == 0 {
                    exchange.report.partitions_differing += 1;
                }
                if usize::from(level) == DEPTH {
                    exchange.report.leaves_differing += differing.len() as u64;
                    exchange.leaves = differing.into();
                    return self.next_batch(now, op, out);
                }
                let fanout = FANOUT as u16;
                let children: Vec<u16> = differing
                    .iter()
                    .flat_map(|&index| (0..fanout).map(move |child| index * fanout + child))
                    .collect();
                self.ask_hashes(now, op, level + 1, children, out);
            }
            Stage::Entries { mine: Some(mine), theirs: Some(theirs) } => {
                let mine: BTreeMap<Vec<u8>, u64> = std::mem::take(mine).into_iter().collect();
                let theirs: BTreeMap<Vec<u8>, u64> = std::mem::take(theirs).into_iter().collect();
                let listed = (mine.len() + theirs.len()) as f64;
                // The peer's set is needed where it holds the key otherwise.
                let fetch: Vec<Vec<u8>> = theirs
                    .iter()
                    .filter(|(key, entry)| mine.get(*key) != Some(entry))
                    .map(|(key, _)| key.clone())
                    .take(FETCH_KEYS)
                    .collect();
                // This replica's set goes as it is where only it holds the key.
                let only_mine: Vec<Vec<u8>> =
                    mine.keys().filter(|key| !theirs.contains_key(*key)).cloned().collect();
                exchange.report.keys_repaired += (fetch.len() + only_mine.len()) as u64;
                let (partition, peer) = (exchange.partition, exchange.peer);
                let asked_theirs = !fetch.is_empty();
                exchange.stage = Stage::Fetching {
                    theirs_entries: theirs,
                    theirs: (!asked_theirs).then(Vec::new),
                    mine: only_mine.is_empty().then(Vec::new),
                };
                self.anti_entropy.keys -= listed;
                if asked_theirs {
                    let request = PeerRequest::Fetch { partition, keys: fetch, bytes: FRAME_BYTES };
                    out.push(Action::Send { op, to: peer, request });
                }
                if !only_mine.is_empty() {
                    let local = LocalOp::Fetch { partition, keys: only_mine, bytes: usize::MAX };
                    out.push(Action::Local { op, local });
                }
                if !asked_theirs
                    && self
                        .exchange(op)
                        .is_some_and(|e| matches!(e.stage, Stage::Fetching { mine: Some(_), .. }))
                {
                    // Nothing differs after all (a write landed meanwhile).
                    self.advance(now, op, out);
                }
            }
            Stage::Fetching { theirs: Some(theirs), mine: Some(mine), .. } => {
                let theirs = std::mem::take(theirs);
                let send = std::mem::take(mine);
                let Stage::Fetching { theirs_entries, .. } =
                    std::mem::replace(&mut exchange.stage, Stage::Sending { waiting: 0 })
                else {
                    unreachable!("matched")
                };
                if theirs.is_empty() {
                    return self.send_repairs(now, op, send, out);
                }
                let partition = exchange.partition;
                exchange.stage = Stage::Merging { theirs_entries, send };
                out.push(Action::Local {
                    op,
                    local: LocalOp::MergeAll { partition, entries: theirs },
                });
            }
            _ => {}
        }
    }

    /// Sends `sets` to the peer in requests of bounded size, or goes on to
    /// the next batch if there are none.
    fn send_repairs(
        &mut self,
        now: Duration,
        op: OpId,
        sets: Vec<(Vec<u8>, SiblingSet)>,
        out: &mut Vec<Action>,
    ) {
        let deadline = now + self.options.request_timeout;
        let Some(exchange) = self.exchange(op) else { return };
        let (partition, peer) = (exchange.partition, exchange.peer);
        let mut requests = 0;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut total_bytes = 0;
        let keys = sets.len();
        for (key, set) in sets {
            let len = key.len() + set.encoded_len();
            if !batch.is_empty() && (batch.len() >= REPAIR_KEYS || batch_bytes + len > FRAME_BYTES)
            {
                let entries = std::mem::take(&mut batch);
                out.push(Action::Send {
                    op,
                    to: peer,
                    request: PeerRequest::Repair { partition, entries },
                });
                requests += 1;
                batch_bytes = 0;
            }
            batch_bytes += len;
            total_bytes += len;
            batch.push((key, set));
        }
        if !batch.is_empty() {
            out.push(Action::Send {
                op,
                to: peer,
                request: PeerRequest::Repair { partition, entries: batch },
            });
            requests += 1;
        }
        exchange.report.keys_sent += keys as u64;
        exchange.report.bytes_sent += total_bytes as u64;
        if requests == 0 {
            return self.next_batch(now, op, out);
        }
        exchange.stage = Stage::Sending { waiting: requests };
        exchange.deadline = deadline;
        out.push(Action::Timer { op, at: deadline });
        self.anti_entropy.keys -= keys as f64;
        self.anti_entropy.bytes -= total_bytes as f64;
    }

    fn end_exchange(&mut self, now: Duration, op: OpId, compared: bool, out: &mut Vec<Action>) {
        let Some(Operation::AntiEntropy(exchange)) = self.operations.remove(&op) else { return };
        let mut report = exchange.report;
        if compared {
            report.exchanges += 1;
        } else {
            report.skipped += 1;
            if exchange.ticket.is_none() {
                self.anti_entropy.round_full = false;
            }
        }
        self.stats.anti_entropy += report;
        if let Some(ticket) = exchange.ticket
            && let Some(manual) = self.anti_entropy.manual.iter_mut().find(|m| m.ticket == ticket)
        {
            manual.report += report;
        }
        if exchange.ticket.is_none() && self.reaps_after(exchange.partition, exchange.peer) {
            self.anti_entropy.reaps.push_back(exchange.partition);
        }
        if self.anti_entropy.exchange == Some(op) {
            self.anti_entropy.exchange = None;
        }
        self.start_exchange(now, out);
    }

    /// Whether this node checks `partition`'s tombstones after comparing it
    /// with `peer`: it is the partition's first replica, `peer` is the last
    /// of the round's pairs for it, and no ring change is pending.
    fn reaps_after(&self, partition: u32, peer: NodeId) -> bool {
        let Some(ring) = self.ring.as_deref() else { return false };
        if self.pending().is_some() {
            return false;
        }
        let replicas = ring.preference_list(partition, usize::from(self.options.n));
        let last = replicas.iter().copied().filter(|&node| node != self.node).max();
        replicas.first() == Some(&self.node) && last == Some(peer)
    }

    /// Starts a reap check of `partition`; false if there is nothing to do.
    fn begin_reap(&mut self, now: Duration, partition: u32, out: &mut Vec<Action>) -> bool {
        let Some(ring) = self.ring.clone() else { return false };
        let replicas = ring.preference_list(partition, usize::from(self.options.n));
        if replicas.first() != Some(&self.node) || self.pending().is_some() {
            return false;
        }
        let peers: Vec<NodeId> = replicas.into_iter().filter(|&node| node != self.node).collect();
        if peers.iter().any(|&peer| !self.is_up(peer, now)) {
            return false;
        }
        let op = self.next_op();
        let deadline = now + self.options.request_timeout;
        let reaping = Reaping {
            partition,
            peers,
            stage: ReapStage::Listing,
            deadline,
            keys: Vec::new(),
            held: Vec::new(),
            waiting: Vec::new(),
        };
        self.operations.insert(op, Operation::Reap(reaping));
        self.anti_entropy.exchange = Some(op);
        let local = LocalOp::Tombstones { partition, limit: TOMBSTONES_LISTED };
        out.push(Action::Local { op, local });
        out.push(Action::Timer { op, at: deadline });
        true
    }

    fn reaping(&mut self, op: OpId) -> Option<&mut Reaping> {
        match self.operations.get_mut(&op) {
            Some(Operation::Reap(reaping)) => Some(reaping),
            _ => None,
        }
    }

    pub(super) fn on_reap_local(
        &mut self,
        now: Duration,
        op: OpId,
        result: LocalResult,
        out: &mut Vec<Action>,
    ) {
        let grace = self.options.tombstone_grace;
        let deadline = now + self.options.request_timeout;
        let Some(reaping) = self.reaping(op) else { return };
        match (reaping.stage, result) {
            (ReapStage::Listing, LocalResult::Entries(Some(listed))) => {
                let partition = reaping.partition;
                let seen = self.anti_entropy.candidates.remove(&partition).unwrap_or_default();
                let mut candidates = BTreeMap::new();
                let mut old_enough = Vec::new();
                for (key, token) in listed {
                    let since = match seen.get(&key) {
                        Some(&(known, since)) if known == token => since,
                        _ => now,
                    };
                    if now.saturating_sub(since) >= grace && old_enough.len() < REAP_KEYS {
                        old_enough.push((key.clone(), token));
                    }
                    candidates.insert(key, (token, since));
                }
                if !candidates.is_empty() {
                    self.anti_entropy.candidates.insert(partition, candidates);
                }
                let Some(reaping) = self.reaping(op) else { return };
                if old_enough.is_empty() {
                    return self.end_reap(now, op, out);
                }
                reaping.held = vec![true; old_enough.len()];
                let offer = |keys| PeerRequest::Offer { partition, keys };
                reaping.ask_peers(op, ReapStage::Offering, old_enough, deadline, offer, out);
            }
            (ReapStage::Removing, LocalResult::Merged) => {
                self.stats.tombstones_reaped += reaping.keys.len() as u64;
                self.end_reap(now, op, out);
            }
            _ => self.end_reap(now, op, out),
        }
    }

    pub(super) fn on_reap_peer(
        &mut self,
        now: Duration,
        op: OpId,
        from: NodeId,
        reply: PeerReply,
        out: &mut Vec<Action>,
    ) {
        let deadline = now + self.options.request_timeout;
        let Some(reaping) = self.reaping(op) else { return };
        let Some(index) = reaping.waiting.iter().position(|&peer| peer == from) else { return };
        reaping.waiting.swap_remove(index);
        match (reaping.stage, reply) {
            (ReapStage::Offering, PeerReply::Have(have)) if have.len() == reaping.keys.len() => {
                for (held, has) in reaping.held.iter_mut().zip(have) {
                    *held &= has;
                }
            }
            (ReapStage::Reaping, PeerReply::Failed { .. }) | (ReapStage::Offering, _) => {
                return self.end_reap(now, op, out);
            }
            (ReapStage::Reaping, _) => {}
            _ => return,
        }
        if !reaping.waiting.is_empty() {
            return;
        }
        let partition = reaping.partition;
        match reaping.stage {
            ReapStage::Offering => {
                let held = std::mem::take(&mut reaping.held);
                let keys: Vec<(Vec<u8>, u64)> = std::mem::take(&mut reaping.keys)
                    .into_iter()
                    .zip(held)
                    .filter_map(|(key, held)| held.then_some(key))
                    .collect();
                if keys.is_empty() {
                    return self.end_reap(now, op, out);
                }
                let reap = |keys| PeerRequest::Reap { partition, keys };
                reaping.ask_peers(op, ReapStage::Reaping, keys, deadline, reap, out);
            }
            ReapStage::Reaping => {
                // Every peer reaped (or kept what changed): now this one.
                reaping.stage = ReapStage::Removing;
                let keys = reaping.keys.clone();
                out.push(Action::Local { op, local: LocalOp::Reap { partition, keys } });
            }
            _ => {}
        }
    }

    pub(super) fn on_reap_timer(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(reaping) = self.reaping(op) else { return };
        if now >= reaping.deadline && reaping.stage != ReapStage::Removing {
            self.end_reap(now, op, out);
        }
    }

    fn end_reap(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        self.operations.remove(&op);
        if self.anti_entropy.exchange == Some(op) {
            self.anti_entropy.exchange = None;
        }
        self.start_exchange(now, out);
    }
}

enum Answer {
    Mine(LocalResult),
    Theirs(PeerReply),
}
