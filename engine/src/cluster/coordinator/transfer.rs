//! Ownership transfer: pulling the partitions this node gains in a pending
//! ring, and handing off the ones it holds but no longer replicates.
//!
//! # Pull (before ownership switches)
//!
//! A membership change is a pending ring gossiped beside the current one
//! ([`crate::cluster::gossip`]). Each node computes the partitions it gains
//! in it ([`Ring::gained_by`]) and pulls each of them from a current
//! replica believed up: pages of keys with their whole sibling sets
//! ([`PeerRequest::Scan`]), merged into its own store exactly as a replica
//! write would merge them ([`LocalOp::Pulled`]), together with a durable
//! progress record (the last key merged), so a pull resumes where it
//! stopped after a crash of the puller, and from another replica after a
//! crash of the source. Once every partition it gains is pulled, the node
//! reports itself ready for that ring version ([`Coordinator::ready_for`]);
//! gossip installs the ring as current once every gaining node is ready.
//! Until then requests keep routing by the current ring: ownership
//! switches only after the data is in place.
//!
//! # Sweep (after ownership switched)
//!
//! Writes keep landing on the current owners while a pull runs, and hints
//! may reach a node after it stopped owning a key, so a pull alone would
//! miss some. So every node sweeps, every `handoff_interval`, the
//! partitions it holds keys of but replicates in neither the current nor
//! the pending ring (a node that lost a partition to a joiner, a node that
//! left, a fallback whose hints are delivered): a page at a time, it offers
//! each key's token (a hash of its set) to every current owner
//! ([`PeerRequest::Offer`]), sends the whole set to each owner that lacks
//! that exact set, and once every owner holds it removes its own copy, only
//! if unchanged meanwhile ([`LocalOp::Remove`]). An owner answers an offer
//! only if it replicates the partition itself by its own rings, so two
//! nodes with different rings never hand a key to each other and both
//! drop it: a key leaves a node only once a node that keeps it has it
//! durably. A partition with an owner believed down waits for a later
//! pass (counted in `partitions_waiting`).
//!
//! Removing a key forgets the dots this node issued for it: a later write
//! of the key here would issue them again (Riak's kv679), and its version
//! would lack the old ones while its dot claims to follow them. So before
//! removing a key that mentions the partition's current actor, the replica
//! moves the partition's actor epoch on, durably, and writes there from
//! then on as a fresh actor (see `Replica::remove`). A counter floor
//! would not do: it keeps dots unique but not the causal claim. (The
//! simulator found that one: seed 4611 of the membership test.)
//!
//! Both are throttled by one token bucket (`transfer_keys_per_second`
//! keys per second, per shard) and run in the background on ticks; a page
//! is at most [`PAGE_KEYS`] keys and about [`PAGE_BYTES`] bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use holdfast_net::SiblingSet;
use holdfast_net::ring::{NodeId, Ring};

use super::{
    Action, Coordinator, LocalOp, LocalResult, OpId, Operation, PeerReply, PeerRequest, Progress,
};

/// Keys per page of a pull or a sweep.
pub const PAGE_KEYS: usize = 128;
/// Bytes of sets per page, past which a page ends early (it always holds
/// at least one key).
pub const PAGE_BYTES: usize = 512 << 10;
/// Partitions a shard pulls at once.
const PULLS_IN_FLIGHT: usize = 2;
/// How long a partition whose page failed waits before it is tried again
/// (from the next source).
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(super) struct Transfers {
    /// The pending ring, as the driver last set it.
    pub(super) next: Option<Arc<Ring>>,
    /// The pull progress records, once loaded from the replica.
    progress: Option<BTreeMap<u32, Progress>>,
    loading: bool,
    /// The partitions this shard gains, for (current, pending) versions.
    gained: Option<((u64, u64), Vec<u32>)>,
    /// Partitions being pulled: the op of the page in flight.
    pulling: BTreeMap<u32, OpId>,
    /// Partitions whose last page failed: when to try again, and how many
    /// sources failed (which one to try next).
    backoff: BTreeMap<u32, (Duration, usize)>,
    /// The pending ring version this shard has pulled everything for.
    pub(super) ready: Option<u64>,
    sweep: Sweep,
    tokens: f64,
    refilled: Duration,
}

#[derive(Debug, Default)]
struct Sweep {
    next_pass: Duration,
    passing: bool,
    listing: bool,
    /// Partitions of this pass not yet swept.
    queue: VecDeque<u32>,
    /// The partition being swept, and the key its next page starts after.
    current: Option<(u32, Option<Vec<u8>>)>,
    /// The page in flight.
    page: Option<OpId>,
    /// Partitions of this pass that could not be handed off.
    waiting: u64,
}

#[derive(Debug)]
pub(in crate::cluster) enum TransferOp {
    LoadProgress,
    /// A page pulled from `source` under current ring `base`; once it
    /// arrived, `merging` holds the progress it makes, recorded only when
    /// the merge is durable.
    Pull {
        partition: u32,
        source: NodeId,
        base: u64,
        merging: Option<Progress>,
    },
    ListPartitions,
    Sweep(SweepPage),
    /// One key's set sent to one owner for sweep page `page`.
    SweepWrite {
        page: OpId,
    },
}

#[derive(Debug)]
pub(in crate::cluster) struct SweepPage {
    partition: u32,
    owners: Vec<NodeId>,
    stage: Stage,
    /// Key, set, token, and the set's encoded length.
    entries: Vec<(Vec<u8>, SiblingSet, u64, usize)>,
    more: bool,
    /// Owners whose answer to the offer is awaited.
    offered: Vec<NodeId>,
    writes: usize,
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Scanning,
    Offering,
    Removing,
}

impl Coordinator {
    /// The pending ring version for which this shard has pulled every
    /// partition it gains (so the node may report itself ready), if a
    /// change is pending.
    pub fn ready_for(&self) -> Option<u64> {
        self.transfers.ready
    }

    /// Whether this node replicates `partition` in the current or the
    /// pending ring: what a sweep's offer must find true at the receiver.
    pub fn replicates(&self, partition: u32) -> bool {
        let n = usize::from(self.options.n);
        let holds = |ring: &Ring| ring.preference_list(partition, n).contains(&self.node);
        self.ring.as_deref().is_some_and(holds) || self.pending().as_deref().is_some_and(holds)
    }

    /// Whether a pull or a sweep is under way on this shard.
    pub fn transferring(&self) -> bool {
        !self.transfers.pulling.is_empty() || self.transfers.sweep.passing
    }

    /// The pending ring, if it is newer than the current one.
    pub(super) fn pending(&self) -> Option<Arc<Ring>> {
        let ring = self.ring.as_ref()?;
        self.transfers.next.clone().filter(|next| next.version() > ring.version())
    }

    pub(super) fn mine(&self, partition: u32) -> bool {
        partition % self.shards == self.shard
    }

    pub(super) fn transfer_tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.ring.is_none() {
            return;
        }
        let rate = f64::from(self.options.transfer_keys_per_second);
        let elapsed = now.saturating_sub(self.transfers.refilled).as_secs_f64();
        self.transfers.tokens = (self.transfers.tokens + elapsed * rate).min(rate);
        self.transfers.refilled = now;
        if self.transfers.progress.is_none() {
            if !self.transfers.loading {
                self.transfers.loading = true;
                let op = self.next_op();
                out.push(Action::Local { op, local: LocalOp::Progress });
                self.operations.insert(op, Operation::Transfer(TransferOp::LoadProgress));
            }
            return;
        }
        self.pull_more(now, out);
        self.sweep_more(now, out);
    }

    /// The partitions of this shard gained in the pending ring.
    fn gained(&mut self) -> Vec<u32> {
        let (Some(ring), Some(next)) = (self.ring.clone(), self.pending()) else {
            return Vec::new();
        };
        let versions = (ring.version(), next.version());
        if let Some((cached, gained)) = &self.transfers.gained
            && *cached == versions
        {
            return gained.clone();
        }
        let mut gained = ring.gained_by(&next, self.node, usize::from(self.options.n));
        gained.retain(|&partition| self.mine(partition));
        self.transfers.gained = Some((versions, gained.clone()));
        gained
    }

    fn pulled(&self, partition: u32, base: u64) -> Option<&Progress> {
        let progress = self.transfers.progress.as_ref()?.get(&partition)?;
        (progress.base == base).then_some(progress)
    }

    fn pull_more(&mut self, now: Duration, out: &mut Vec<Action>) {
        let (Some(ring), Some(next)) = (self.ring.clone(), self.pending()) else {
            self.transfers.ready = None;
            self.stats.transfers_waiting = 0;
            return;
        };
        let base = ring.version();
        let waiting: Vec<u32> = self
            .gained()
            .into_iter()
            .filter(|&partition| !self.pulled(partition, base).is_some_and(|p| p.done))
            .collect();
        self.stats.transfers_waiting = waiting.len() as u64;
        self.transfers.ready = waiting.is_empty().then_some(next.version());
        let n = usize::from(self.options.n);
        for partition in waiting {
            if self.transfers.pulling.len() >= PULLS_IN_FLIGHT || self.transfers.tokens < 1.0 {
                break;
            }
            if self.transfers.pulling.contains_key(&partition) {
                continue;
            }
            let failures = match self.transfers.backoff.get(&partition) {
                Some(&(until, _)) if until > now => continue,
                Some(&(_, failures)) => failures,
                None => 0,
            };
            let sources: Vec<NodeId> = ring
                .preference_list(partition, n)
                .into_iter()
                .filter(|&node| node != self.node && self.is_up(node, now))
                .collect();
            if sources.is_empty() {
                continue;
            }
            let source = sources[failures % sources.len()];
            let after = self.pulled(partition, base).and_then(|progress| progress.cursor.clone());
            let op = self.next_op();
            let request =
                PeerRequest::Scan { partition, after, keys: PAGE_KEYS, bytes: PAGE_BYTES };
            out.push(Action::Send { op, to: source, request });
            out.push(Action::Timer { op, at: now + self.options.request_timeout });
            let pull = TransferOp::Pull { partition, source, base, merging: None };
            self.operations.insert(op, Operation::Transfer(pull));
            self.transfers.pulling.insert(partition, op);
        }
    }

    /// A page of `partition` could not be pulled: try again later, from the
    /// next source.
    fn pull_failed(&mut self, now: Duration, op: OpId, partition: u32) {
        self.operations.remove(&op);
        self.transfers.pulling.remove(&partition);
        let failures = self.transfers.backoff.get(&partition).map_or(0, |&(_, count)| count);
        self.transfers.backoff.insert(partition, (now + RETRY, failures + 1));
    }

    fn sweep_more(&mut self, now: Duration, out: &mut Vec<Action>) {
        let Some(ring) = self.ring.clone() else { return };
        let sweep = &mut self.transfers.sweep;
        if !sweep.passing {
            if now < sweep.next_pass {
                return;
            }
            sweep.passing = true;
            sweep.listing = true;
            sweep.waiting = 0;
            let op = self.next_op();
            out.push(Action::Local { op, local: LocalOp::Partitions });
            self.operations.insert(op, Operation::Transfer(TransferOp::ListPartitions));
            return;
        }
        if sweep.listing || sweep.page.is_some() {
            return;
        }
        let n = usize::from(self.options.n);
        loop {
            let sweep = &mut self.transfers.sweep;
            let (partition, after) = match sweep.current.take() {
                Some(current) => current,
                None => match sweep.queue.pop_front() {
                    Some(partition) => (partition, None),
                    None => {
                        sweep.passing = false;
                        sweep.next_pass = now + self.options.handoff_interval;
                        self.stats.partitions_waiting = sweep.waiting;
                        return;
                    }
                },
            };
            if self.replicates(partition) {
                continue; // It came back to this node meanwhile.
            }
            let owners = ring.preference_list(partition, n);
            if owners.iter().any(|&owner| !self.is_up(owner, now)) {
                self.transfers.sweep.waiting += 1;
                continue;
            }
            if self.transfers.tokens < 1.0 {
                // Resume here on a later tick.
                self.transfers.sweep.current = Some((partition, after));
                return;
            }
            let op = self.next_op();
            let local = LocalOp::Scan {
                partition,
                after: after.clone(),
                keys: PAGE_KEYS,
                bytes: PAGE_BYTES,
            };
            out.push(Action::Local { op, local });
            let page = SweepPage {
                partition,
                owners,
                stage: Stage::Scanning,
                entries: Vec::new(),
                more: false,
                offered: Vec::new(),
                writes: 0,
                failed: false,
            };
            self.operations.insert(op, Operation::Transfer(TransferOp::Sweep(page)));
            self.transfers.sweep.page = Some(op);
            self.transfers.sweep.current = Some((partition, after));
            return;
        }
    }

    pub(super) fn on_transfer_local(
        &mut self,
        now: Duration,
        op: OpId,
        result: LocalResult,
        out: &mut Vec<Action>,
    ) {
        let Some(Operation::Transfer(transfer)) = self.operations.get_mut(&op) else { return };
        match transfer {
            TransferOp::LoadProgress => {
                self.operations.remove(&op);
                self.transfers.loading = false;
                if let LocalResult::Progress(records) = result {
                    let records = records.into_iter().map(|p| (p.partition, p)).collect();
                    self.transfers.progress = Some(records);
                    self.transfer_tick(now, out);
                }
                // Failed: loaded again on the next tick.
            }
            TransferOp::Pull { partition, merging, .. } => {
                let partition = *partition;
                let (LocalResult::Merged, Some(progress)) = (result, merging.take()) else {
                    // Not merged: the page is pulled again from where the
                    // last durable progress left off.
                    return self.pull_failed(now, op, partition);
                };
                if progress.done {
                    self.stats.partitions_pulled += 1;
                }
                if let Some(records) = &mut self.transfers.progress {
                    records.insert(partition, progress);
                }
                self.operations.remove(&op);
                self.transfers.pulling.remove(&partition);
                self.transfers.backoff.remove(&partition);
                self.pull_more(now, out);
            }
            TransferOp::ListPartitions => {
                self.operations.remove(&op);
                let sweep = &mut self.transfers.sweep;
                sweep.listing = false;
                let LocalResult::Partitions(partitions) = result else {
                    sweep.passing = false;
                    sweep.next_pass = now + self.options.handoff_interval;
                    return;
                };
                let count = self.ring.as_ref().map_or(0, |ring| ring.partitions());
                let foreign: VecDeque<u32> = partitions
                    .into_iter()
                    .filter(|&p| p < count && self.mine(p) && !self.replicates(p))
                    .collect();
                self.transfers.sweep.queue = foreign;
                self.sweep_more(now, out);
            }
            TransferOp::Sweep(page) => match (page.stage, result) {
                (Stage::Scanning, LocalResult::Scanned { entries, more, .. }) => {
                    if entries.is_empty() {
                        return self.page_ended(now, op, false, out);
                    }
                    self.transfers.tokens -= entries.len() as f64;
                    page.entries = entries
                        .into_iter()
                        .map(|(key, set)| {
                            let encoded = set.encode();
                            let token = xxhash_rust::xxh3::xxh3_64(&encoded);
                            (key, set, token, encoded.len())
                        })
                        .collect();
                    let keys: Vec<(Vec<u8>, u64)> = page
                        .entries
                        .iter()
                        .map(|(key, _, token, _)| (key.clone(), *token))
                        .collect();
                    page.more = more;
                    page.stage = Stage::Offering;
                    page.offered = page.owners.clone();
                    let partition = page.partition;
                    for &owner in &page.owners {
                        let request = PeerRequest::Offer { partition, keys: keys.clone() };
                        out.push(Action::Send { op, to: owner, request });
                    }
                    out.push(Action::Timer { op, at: now + self.options.request_timeout });
                }
                (Stage::Removing, LocalResult::Merged) => {
                    self.stats.keys_removed += page.entries.len() as u64;
                    let more = page.more;
                    self.page_ended(now, op, more, out);
                }
                // The page could not be read or removed: the partition
                // waits for the next pass.
                _ => self.page_ended(now, op, false, out),
            },
            TransferOp::SweepWrite { .. } => {}
        }
    }

    pub(super) fn on_transfer_peer(
        &mut self,
        now: Duration,
        op: OpId,
        from: NodeId,
        reply: PeerReply,
        out: &mut Vec<Action>,
    ) {
        let Some(Operation::Transfer(transfer)) = self.operations.get_mut(&op) else { return };
        match transfer {
            TransferOp::Pull { partition, source, base, merging } => {
                let partition = *partition;
                if from != *source || merging.is_some() {
                    return;
                }
                let PeerReply::Scanned { entries, more, bytes } = reply else {
                    return self.pull_failed(now, op, partition);
                };
                let base = *base;
                let cursor = match entries.last() {
                    Some((key, _)) => Some(key.clone()),
                    None => self.pulled(partition, base).and_then(|p| p.cursor.clone()),
                };
                let progress = Progress { partition, base, cursor, done: !more };
                if let Some(Operation::Transfer(TransferOp::Pull { merging, .. })) =
                    self.operations.get_mut(&op)
                {
                    *merging = Some(progress.clone());
                }
                self.stats.keys_pulled += entries.len() as u64;
                self.stats.bytes_pulled += bytes;
                self.transfers.tokens -= entries.len() as f64;
                out.push(Action::Local {
                    op,
                    local: LocalOp::Pulled { partition, entries, progress },
                });
            }
            TransferOp::Sweep(page) => {
                if page.stage != Stage::Offering {
                    return;
                }
                let Some(index) = page.offered.iter().position(|&owner| owner == from) else {
                    return;
                };
                page.offered.swap_remove(index);
                match reply {
                    PeerReply::Have(have) if have.len() == page.entries.len() => {
                        let partition = page.partition;
                        let lacking: Vec<(Vec<u8>, SiblingSet, usize)> = page
                            .entries
                            .iter()
                            .zip(have)
                            .filter(|(_, has)| !has)
                            .map(|((key, set, _, len), _)| (key.clone(), set.clone(), *len))
                            .collect();
                        page.writes += lacking.len();
                        for (key, set, len) in lacking {
                            self.stats.keys_handed_off += 1;
                            self.stats.bytes_handed_off += len as u64;
                            let write = self.next_op();
                            let request = PeerRequest::Write { partition, key, set, hint: None };
                            out.push(Action::Send { op: write, to: from, request });
                            out.push(Action::Timer {
                                op: write,
                                at: now + self.options.request_timeout,
                            });
                            let sweep_write = TransferOp::SweepWrite { page: op };
                            self.operations.insert(write, Operation::Transfer(sweep_write));
                        }
                    }
                    _ => page.failed = true,
                }
                self.page_progress(now, op, out);
            }
            TransferOp::SweepWrite { page } => {
                let page = *page;
                self.operations.remove(&op);
                self.sweep_write_ended(now, page, matches!(reply, PeerReply::Written), out);
            }
            TransferOp::LoadProgress | TransferOp::ListPartitions => {}
        }
    }

    pub(super) fn on_transfer_timer(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(Operation::Transfer(transfer)) = self.operations.get_mut(&op) else { return };
        match transfer {
            TransferOp::Pull { partition, merging: None, .. } => {
                let partition = *partition;
                self.pull_failed(now, op, partition);
            }
            TransferOp::Sweep(page) if page.stage == Stage::Offering => {
                page.failed = true;
                self.page_ended(now, op, false, out);
            }
            TransferOp::SweepWrite { page } => {
                let page = *page;
                self.operations.remove(&op);
                self.sweep_write_ended(now, page, false, out);
            }
            _ => {}
        }
    }

    fn sweep_write_ended(
        &mut self,
        now: Duration,
        page: OpId,
        written: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(Operation::Transfer(TransferOp::Sweep(sweep))) = self.operations.get_mut(&page)
        else {
            return;
        };
        if sweep.stage != Stage::Offering {
            return;
        }
        sweep.writes -= 1;
        sweep.failed |= !written;
        self.page_progress(now, page, out);
    }

    /// Once every owner answered the offer and has every key it lacked:
    /// removes the page's keys here (or gives the partition up for this
    /// pass if an owner failed).
    fn page_progress(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(Operation::Transfer(TransferOp::Sweep(page))) = self.operations.get_mut(&op)
        else {
            return;
        };
        if !page.offered.is_empty() || page.writes > 0 {
            return;
        }
        if page.failed {
            return self.page_ended(now, op, false, out);
        }
        page.stage = Stage::Removing;
        let keys = page.entries.iter().map(|(key, _, token, _)| (key.clone(), *token)).collect();
        out.push(Action::Local { op, local: LocalOp::Remove { partition: page.partition, keys } });
    }

    /// The sweep page `op` ended: the partition continues after it if
    /// `more`, else the next partition is taken.
    fn page_ended(&mut self, now: Duration, op: OpId, more: bool, out: &mut Vec<Action>) {
        let Some(Operation::Transfer(TransferOp::Sweep(page))) = self.operations.remove(&op) else {
            return;
        };
        let sweep = &mut self.transfers.sweep;
        sweep.page = None;
        if page.failed {
            sweep.waiting += 1;
        }
        sweep.current = match sweep.current.take() {
            Some((partition, _)) if more && !page.failed => {
                Some((partition, page.entries.last().map(|(key, _, _, _)| key.clone())))
            }
            _ => None,
        };
        self.sweep_more(now, out);
    }
}

#[cfg(test)]
mod tests {
    use holdfast_net::message::ErrorCode;
    use holdfast_net::ring::Member;
    use holdfast_net::{Actor, VersionVector};

    use super::*;
    use crate::cluster::ClusterOptions;
    use crate::cluster::coordinator::Input;

    fn member(id: NodeId) -> Member {
        Member { id, addr: format!("10.0.0.{id}:7070"), weight: 1, zone: String::new() }
    }

    /// The scans `out` asks peers for: (op, partition, resume after).
    fn scans(out: &[Action]) -> Vec<(OpId, u32, Option<Vec<u8>>)> {
        out.iter()
            .filter_map(|action| match action {
                Action::Send {
                    op, request: PeerRequest::Scan { partition, after, .. }, ..
                } => Some((*op, *partition, after.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_page_whose_merge_failed_is_pulled_again_and_the_node_is_not_ready() {
        let options = ClusterOptions { n: 2, r: 1, w: 1, ..ClusterOptions::default() };
        let ring = Ring::new(8, vec![member(1), member(2)], 1).unwrap();
        let next = ring.rebalance(vec![member(1), member(2), member(3)]).unwrap();
        let mut coordinator = Coordinator::new(3, options);
        coordinator.set_ring(Arc::new(ring.clone()));
        coordinator.set_next_ring(Some(Arc::new(next)));
        let at = Duration::from_millis;
        let mut out = Vec::new();
        coordinator.handle(at(0), Input::Tick, &mut out);
        let load = out.iter().find_map(|action| match action {
            Action::Local { op, local: LocalOp::Progress } => Some(*op),
            _ => None,
        });
        out.clear();
        let result = LocalResult::Progress(Vec::new());
        coordinator.handle(at(1), Input::Local { op: load.unwrap(), result }, &mut out);
        let (op, partition, after) = scans(&out)[0].clone();
        assert_eq!(after, None);
        let source = ring.preference_list(partition, 2)[0];

        // The page arrives; its merge fails (say, the disk is full).
        let mut set = SiblingSet::new();
        set.write(Actor::new(1, 0), &VersionVector::new(), Some(b"v".to_vec())).unwrap();
        let entries = vec![(b"k".to_vec(), set)];
        let reply = PeerReply::Scanned { entries, more: false, bytes: 1 };
        out.clear();
        coordinator.handle(at(2), Input::Peer { op, from: source, reply }, &mut out);
        assert!(matches!(&out[..], [Action::Local { local: LocalOp::Pulled { .. }, .. }]));
        let result = LocalResult::Failed { code: ErrorCode::DiskFull, message: "full".into() };
        out.clear();
        coordinator.handle(at(3), Input::Local { op, result }, &mut out);

        // The partition is neither done nor resumed past the lost page.
        assert_eq!(coordinator.ready_for(), None);
        assert_eq!(coordinator.stats().partitions_pulled, 0);
        out.clear();
        coordinator.handle(at(1000), Input::Tick, &mut out);
        let again = scans(&out);
        assert!(
            again.iter().any(|(_, p, after)| *p == partition && after.is_none()),
            "partition {partition} is pulled again from the start: {again:?}"
        );
    }
}
