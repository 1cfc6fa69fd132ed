//! The simulator: a whole cluster in one thread, from one seed.
//!
//! Every node is the real [`Coordinator`] over a real [`Replica`] and
//! [`Store`] on a [`SimDisk`]; what is simulated is everything at the
//! edges: the network (delay, loss, duplication, reordering, partitions
//! between any sets of nodes, refused connections to dead nodes), the disk
//! (a crash loses what was not yet synced), time (a virtual clock that
//! jumps from event to event) and the clients (a workload that logs every
//! operation in a [`History`]). All randomness comes from one seeded
//! ChaCha generator and every collection iterates in a fixed order, so a
//! seed replays exactly: a failure prints its seed, and
//! `HOLDFAST_SEED=n` runs just that one again.
//!
//! In the spirit of FoundationDB's simulation and TigerBeetle's VOPR: the
//! code under test is the production code, stepped by a deterministic
//! driver instead of glommio and TCP.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use holdfast_net::message::ErrorCode;
use holdfast_net::ring::{Member, NodeId, Ring};
use holdfast_net::{Actor, SiblingSet, VersionVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::coordinator::{
    Action, ClientRef, ClientReply, ClientRequest, Coordinator, Input, LocalOp, OpId, PeerReply,
    PeerRequest, RepairReport,
};
use super::gossip::{Gossip, GossipAction, GossipMessage, GossipOptions, Peer};
use super::history::{self, Call, CheckOptions, FinalState, History, Outcome, Presence, Report};
use super::{ClusterOptions, DetectorOptions};
use crate::disk::sim::{SimDisk, SimDiskOptions};
use crate::replica::Replica;
use crate::store::{Store, StoreOptions, SyncPolicy};
use holdfast_net::membership::{GossipState, MemberRecord, MemberStatus};

/// What the simulated network does to messages.
#[derive(Clone, Copy, Debug)]
pub struct NetworkFaults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay, uniform in this range (so messages reorder).
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl NetworkFaults {
    /// A network that delivers everything once, with small delays.
    pub fn none() -> NetworkFaults {
        NetworkFaults {
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_micros(50),
            delay_max: Duration::from_micros(500),
        }
    }

    /// A lossy, duplicating, slow and reordering network.
    pub fn lossy() -> NetworkFaults {
        NetworkFaults {
            loss: 0.05,
            duplicate: 0.03,
            delay_min: Duration::from_micros(50),
            delay_max: Duration::from_millis(20),
        }
    }
}

/// A simulated cluster's shape and workload.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: usize,
    pub partitions: u32,
    pub cluster: ClusterOptions,
    pub network: NetworkFaults,
    /// Clients issuing operations one after another.
    pub clients: usize,
    /// Keys the clients write (few, so that writes collide).
    pub keys: usize,
    /// Operations per client.
    pub operations_per_client: usize,
    /// Crash and restart nodes during the workload.
    pub crashes: bool,
    /// Partition the network during the workload.
    pub partitions_during_run: bool,
    /// The nodes' sync policy (`always`: nothing acknowledged is lost in a
    /// crash).
    pub sync: SyncPolicy,
    /// How often each node starts a gossip exchange.
    pub gossip_interval: Duration,
    /// Nodes that join during the workload (each through one random seed).
    pub joins: usize,
    /// Nodes asked to leave during the workload.
    pub leaves: usize,
    /// Nodes crashed for good and removed by an operator during the
    /// workload.
    pub removals: usize,
}

impl SimOptions {
    /// Three nodes, N=3 R=2 W=2, a clean network, a small workload.
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 3,
            partitions: 16,
            cluster: ClusterOptions {
                request_timeout: Duration::from_millis(500),
                read_repair_wait: Duration::from_millis(20),
                hint_after: Duration::from_millis(100),
                detector: DetectorOptions {
                    heartbeat_interval: Duration::from_millis(50),
                    acceptable_pause: Duration::from_millis(100),
                    min_std_dev: Duration::from_millis(20),
                    ..DetectorOptions::default()
                },
                handoff_interval: Duration::from_millis(200),
                ..ClusterOptions::default()
            },
            network: NetworkFaults::none(),
            clients: 4,
            keys: 4,
            operations_per_client: 25,
            crashes: false,
            partitions_during_run: false,
            sync: SyncPolicy::Always,
            gossip_interval: Duration::from_millis(100),
            joins: 0,
            leaves: 0,
            removals: 0,
        }
    }
}

/// Counters from one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimStats {
    pub messages: u64,
    pub messages_lost: u64,
    pub messages_cut: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub events: u64,
}

/// `epoch`: the requester's life when it asked. A reply to an earlier life
/// is dropped on arrival, as a restarted process never hears answers sent
/// on its old connections (its new operations reuse op ids).
#[derive(Clone, Debug)]
enum Message {
    Request {
        op: OpId,
        epoch: u64,
        request: PeerRequest,
    },
    /// `background`: the answer to an anti-entropy request.
    Reply {
        op: OpId,
        epoch: u64,
        reply: PeerReply,
        background: bool,
    },
    Gossip(GossipMessage),
}

#[derive(Debug)]
enum Work {
    /// A coordinator's own local operation.
    Coordinator { op: OpId, local: LocalOp },
    /// A peer's request served by this node's replica.
    Serve { from: usize, op: OpId, epoch: u64, request: PeerRequest },
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        message: Message,
    },
    Disk {
        node: usize,
        epoch: u64,
        work: Work,
    },
    Timer {
        node: usize,
        epoch: u64,
        op: OpId,
    },
    /// A node's periodic tick (heartbeats, hint delivery).
    Tick {
        node: usize,
        epoch: u64,
    },
    ClientNext {
        client: usize,
    },
    ClientGiveUp {
        client: usize,
        op: history::OpId,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Partition {
        groups: Vec<usize>,
    },
    Heal,
    /// A node's gossip round.
    Gossip {
        node: usize,
        epoch: u64,
    },
    /// A new node joins through `seed`.
    Join {
        seed: usize,
    },
    /// An operator asks `node` to leave.
    Leave {
        node: usize,
    },
    /// `node` dies for good and an operator removes it at another node.
    Remove {
        node: usize,
    },
}

impl Event {
    /// Periodic upkeep that never ends by itself (ticks and heartbeats),
    /// and deadlines: a client's (moot once it has its answer) and a
    /// coordinator's (moot once its operation ended). The cluster is quiet
    /// when nothing else is queued, no client waits and no coordinator is
    /// busy.
    fn is_background(&self) -> bool {
        matches!(
            self,
            Event::Tick { .. }
                | Event::Gossip { .. }
                | Event::Deliver { message: Message::Gossip(_), .. }
                | Event::ClientGiveUp { .. }
                | Event::Timer { .. }
                | Event::Deliver {
                    message: Message::Request { request: PeerRequest::Ping, .. },
                    ..
                }
                | Event::Deliver { message: Message::Reply { reply: PeerReply::Pong, .. }, .. }
                | Event::Deliver { message: Message::Reply { background: true, .. }, .. }
        ) || match self {
            // Anti-entropy is upkeep too: it runs for ever.
            Event::Deliver { message: Message::Request { request, .. }, .. } => {
                request.is_anti_entropy()
            }
            Event::Disk { work: Work::Coordinator { local, .. }, .. } => local.is_anti_entropy(),
            Event::Disk { work: Work::Serve { request, .. }, .. } => request.is_anti_entropy(),
            _ => false,
        }
    }
}

/// How often a simulated node ticks.
const TICK: Duration = Duration::from_millis(25);
/// Keys a simulated node reads per tick building its Merkle trees.
const TREE_KEYS_PER_TICK: usize = 16;

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Scheduled) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Scheduled) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Scheduled) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    id: NodeId,
    /// Its gossip, which survives crashes (a real node persists its state
    /// on every change before acting on it).
    gossip: Gossip,
    /// Crashed for good and removed: never restarted.
    removed: bool,
    disk: SimDisk,
    incarnation: u32,
    /// Bumped on every crash: events of an earlier life are dropped.
    epoch: u64,
    running: Option<Running>,
}

impl SimNode {
    /// A node not started yet.
    fn new(id: NodeId, gossip: Gossip, disk: SimDisk) -> SimNode {
        SimNode { id, gossip, removed: false, disk, incarnation: 0, epoch: 0, running: None }
    }
}

struct Running {
    coordinator: Coordinator,
    replica: Replica<SimDisk>,
    /// Requests other nodes asked this one to coordinate: client ref to
    /// (node, op) to answer.
    coordinating: BTreeMap<u64, (usize, OpId, u64)>,
    next_coordinating: u64,
}

/// The bit that marks a client ref as a peer's forwarded request.
const PEER_CLIENT: u64 = 1 << 63;

#[derive(Default)]
struct SimClient {
    /// The operation waiting for its reply: history op, the node, the key,
    /// and the ref the coordinator answers it by.
    waiting: Option<(history::OpId, usize, Vec<u8>, ClientRef)>,
    /// Requests submitted, for unique refs: a late answer to a request the
    /// client gave up on must not be taken for the next one's.
    submitted: u64,
    done: usize,
    /// The context of the last read or write of each key.
    contexts: BTreeMap<Vec<u8>, VersionVector>,
}

/// A simulated cluster.
pub struct Sim {
    options: SimOptions,
    rng: ChaCha8Rng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// Queued events that are not background upkeep.
    foreground: usize,
    ring: Arc<Ring>,
    nodes: Vec<SimNode>,
    /// Per node, the side of the network partition it is on.
    sides: Vec<usize>,
    clients: Vec<SimClient>,
    history: History,
    /// Every key a client asked about.
    keys: std::collections::BTreeSet<Vec<u8>>,
    /// The last error a client was answered with.
    last_error: Option<(ErrorCode, String)>,
    /// Every finished operation's outcome, by history op.
    outcomes: BTreeMap<history::OpId, Outcome>,
    next_value: u64,
    stats: SimStats,
    actions: Vec<Action>,
    /// Operators' repairs that ended, by ticket.
    repairs: BTreeMap<u64, RepairReport>,
    next_ticket: u64,
}

impl Sim {
    /// Builds the cluster: every node opens its store and knows the ring.
    pub fn new(options: SimOptions) -> Sim {
        assert!(options.nodes >= 1 && options.clients >= 1 && options.keys >= 1);
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let members: Vec<Member> = (0..options.nodes)
            .map(|index| Member {
                id: index as NodeId + 1,
                addr: format!("sim-node-{index}"),
                weight: 1,
                zone: String::new(),
            })
            .collect();
        let ring =
            Arc::new(Ring::new(options.partitions, members.clone(), 1).expect("a valid sim ring"));
        let records =
            members.iter().map(|member| MemberRecord::new(member.clone(), MemberStatus::Up, 1));
        let state =
            GossipState::new(records.collect(), ring.state()).expect("a valid sim gossip state");
        let mut nodes = Vec::new();
        for (index, member) in members.into_iter().enumerate() {
            let disk = SimDisk::new(SimDiskOptions::new(rng.random()));
            let gossip_options = gossip_options(&options);
            let gossip = Gossip::from_state(member, state.clone(), Vec::new(), gossip_options)
                .expect("a valid sim gossip state");
            nodes.push(SimNode::new(index as NodeId + 1, gossip, disk));
        }
        let mut sim = Sim {
            rng,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            foreground: 0,
            ring,
            sides: vec![0; options.nodes],
            clients: (0..options.clients).map(|_| SimClient::default()).collect(),
            history: History::new(),
            outcomes: BTreeMap::new(),
            last_error: None,
            keys: std::collections::BTreeSet::new(),
            next_value: 0,
            stats: SimStats::default(),
            actions: Vec::new(),
            repairs: BTreeMap::new(),
            next_ticket: 0,
            nodes,
            options,
        };
        for node in 0..sim.nodes.len() {
            sim.start_node(node);
        }
        sim
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// The code and message of the last error a client was answered with.
    pub fn last_error(&self) -> Option<&(ErrorCode, String)> {
        self.last_error.as_ref()
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            segment_bytes_max: 1 << 20,
            value_bytes_max: 64 << 10,
            sync: self.options.sync,
            ..StoreOptions::default()
        }
    }

    fn start_node(&mut self, index: usize) {
        let options = self.store_options();
        let node = &mut self.nodes[index];
        assert!(node.running.is_none(), "node {index} is already running");
        let (store, report) = block_on(Store::open(node.disk.clone(), options.clone()))
            .unwrap_or_else(|error| panic!("node {index}: the store does not reopen: {error}"));
        // As the real node does (see `identity`): a node that may have
        // lost writes it acknowledged comes back as a new actor.
        let lost = report.torn_tails_truncated > 0 || report.corrupt_records_skipped > 0;
        if node.epoch > 0 && (lost || options.sync != SyncPolicy::Always) {
            node.incarnation += 1;
        }
        let replica = Replica::new(store, Actor::new(node.id, node.incarnation));
        let mut coordinator = Coordinator::new(node.id, self.options.cluster);
        if let Some(ring) = node.gossip.ring() {
            coordinator.set_ring(ring);
        }
        coordinator.set_next_ring(node.gossip.next_ring());
        node.running = Some(Running {
            coordinator,
            replica,
            coordinating: BTreeMap::new(),
            next_coordinating: 0,
        });
        let epoch = node.epoch;
        let restarted = epoch > 0;
        self.schedule(TICK, Event::Tick { node: index, epoch });
        let first = self.random_delay(Duration::ZERO, self.options.gossip_interval);
        self.schedule(first, Event::Gossip { node: index, epoch });
        if restarted {
            let mut out = Vec::new();
            self.nodes[index].gossip.restart(&mut out);
            self.gossip_actions(index, out);
        }
    }

    /// Stops `node` abruptly: what its disk had not synced is lost, and so
    /// is every operation it was coordinating.
    pub fn crash(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        if sim_node.running.take().is_some() {
            sim_node.disk.crash();
            sim_node.epoch += 1;
            self.stats.crashes += 1;
        }
    }

    /// Starts a crashed node again from its disk (not one removed).
    pub fn restart(&mut self, node: usize) {
        if self.nodes[node].running.is_none() && !self.nodes[node].removed {
            self.start_node(node);
        }
    }

    /// A new node joins the cluster knowing only `seed`'s address; returns
    /// its index.
    pub fn join(&mut self, seed: usize) -> usize {
        self.join_through(&[seed])
    }

    /// A new node joins knowing the addresses of the nodes `seeds`.
    pub fn join_through(&mut self, seeds: &[usize]) -> usize {
        let seeds = seeds.iter().map(|&seed| self.nodes[seed].gossip.me().addr.clone()).collect();
        self.join_with(seeds)
    }

    fn join_with(&mut self, seeds: Vec<String>) -> usize {
        let index = self.nodes.len();
        let id = self.nodes.iter().map(|node| node.id).max().unwrap_or(0) + 1;
        let member =
            Member { id, addr: format!("sim-node-{index}"), weight: 1, zone: String::new() };
        let gossip = Gossip::new(member, seeds, gossip_options(&self.options));
        let disk = SimDisk::new(SimDiskOptions::new(self.rng.random()));
        self.nodes.push(SimNode::new(id, gossip, disk));
        self.sides.push(0);
        self.start_node(index);
        index
    }

    /// An operator asks `node` (at `node` itself) to leave the cluster: it
    /// hands its partitions over and then marks itself `Left`.
    pub fn leave(&mut self, node: usize) {
        let id = self.nodes[node].id;
        let mut out = Vec::new();
        if self.nodes[node].gossip.set_status(id, MemberStatus::Leaving, &mut out).is_ok() {
            self.gossip_actions(node, out);
        }
    }

    /// `node` dies for good, and an operator removes it at node `at`: its
    /// partitions are re-replicated from the survivors.
    pub fn remove(&mut self, node: usize, at: usize) {
        self.crash(node);
        self.nodes[node].removed = true;
        let id = self.nodes[node].id;
        let mut out = Vec::new();
        if self.nodes[at].gossip.set_status(id, MemberStatus::Left, &mut out).is_ok() {
            self.gossip_actions(at, out);
        }
    }

    /// `node` loses its disk: it is stopped, and started again on an empty
    /// one as the same member (an operator replaced the disk and started
    /// it with its old id). Its earlier life's actors are unknown to it, so
    /// it writes as an incarnation drawn at random far from them (see
    /// `identity`).
    pub fn wipe(&mut self, node: usize) {
        self.crash(node);
        self.nodes[node].disk = SimDisk::new(SimDiskOptions::new(self.rng.random()));
        self.nodes[node].incarnation = self.rng.random_range(1 << 30..1 << 31);
        self.restart(node);
    }

    /// Corrupts the stored records of `key` on `node`'s disk (bit rot
    /// under a running node); reads of it then report the corruption.
    pub fn corrupt(&mut self, node: usize, key: &[u8]) -> bool {
        let Some(running) = self.nodes[node].running.as_ref() else { return false };
        let partition = self.ring.partition_of(key);
        let Ok(Some(value)) = block_on(running.replica.store().get(partition, key)) else {
            return false;
        };
        // Drop the store's cache so the next read goes to the disk.
        let flipped = self.nodes[node].disk.corrupt_bytes(&value);
        if flipped {
            running.replica.store().clear_cache();
        }
        flipped
    }

    /// Asks `node` to run anti-entropy now for `partitions` (all of them
    /// for `None`) and runs until it reports; the report.
    pub fn repair(&mut self, node: usize, partitions: Option<Vec<u32>>) -> Option<RepairReport> {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.step(node, Input::Repair { ticket, partitions });
        while !self.repairs.contains_key(&ticket) && self.run_one() {}
        self.repairs.remove(&ticket)
    }

    /// Per partition of the ring, whether every running replica's tree is
    /// comparable and all their roots agree; the partitions that do not.
    pub fn trees_differing(&self) -> Vec<u32> {
        let n = usize::from(self.options.cluster.n);
        let mut differing = Vec::new();
        for partition in 0..self.ring.partitions() {
            let mut roots = Vec::new();
            for id in self.ring.preference_list(partition, n) {
                let Some(running) = self.nodes[self.index_of(id)].running.as_ref() else {
                    continue;
                };
                roots.push(running.replica.tree_hashes(partition, 0, &[0]).ok().flatten());
            }
            if roots.iter().any(Option::is_none) || roots.windows(2).any(|w| w[0] != w[1]) {
                differing.push(partition);
            }
        }
        differing
    }

    /// Runs until every partition's replicas have equal trees or `limit`
    /// of virtual time passed; how long it took, if they converged.
    pub fn converge_trees(&mut self, limit: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            if self.trees_differing().is_empty() {
                return Some(self.now - start);
            }
            let step = self.now + Duration::from_millis(50);
            self.run_until(step);
        }
        None
    }

    /// Whether `node` has left (by its own gossip) or was removed.
    pub fn has_left(&self, node: usize) -> bool {
        let sim_node = &self.nodes[node];
        sim_node.removed || sim_node.gossip.status_of(sim_node.id) == Some(MemberStatus::Left)
    }

    /// The number of nodes ever started (left and removed ones included).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// `node`'s gossip.
    pub fn gossip(&self, node: usize) -> &Gossip {
        &self.nodes[node].gossip
    }

    /// Carries out what a node's gossip asked for.
    fn gossip_actions(&mut self, node: usize, actions: Vec<GossipAction>) {
        for action in actions {
            match action {
                GossipAction::Send { to, message } => {
                    let to = match &to {
                        Peer::Node { id, .. } => self.nodes.iter().position(|n| n.id == *id),
                        Peer::Seed { addr } => {
                            self.nodes.iter().position(|n| n.gossip.me().addr == *addr)
                        }
                    };
                    let Some(to) = to else { continue };
                    if to != node {
                        self.send(node, to, Message::Gossip(message));
                    }
                }
                GossipAction::RingChanged(ring) => {
                    if ring.version() > self.ring.version() {
                        self.ring = ring.clone();
                    }
                    if let Some(running) = self.nodes[node].running.as_mut() {
                        running.coordinator.set_ring(ring);
                    }
                }
                GossipAction::NextChanged(next) => {
                    if let Some(running) = self.nodes[node].running.as_mut() {
                        running.coordinator.set_next_ring(next);
                    }
                }
                GossipAction::MembersChanged { .. } => {}
            }
        }
    }

    /// After a tick: reports this node ready for the pending ring once its
    /// coordinator pulled everything it gains, and marks a leaving node
    /// `Left` once it holds nothing anyone needs.
    fn membership_upkeep(&mut self, node: usize) {
        let Some(running) = self.nodes[node].running.as_ref() else { return };
        let ready = running.coordinator.ready_for();
        let empty =
            running.replica.data_partitions().is_empty() && running.replica.hinted_keys() == 0;
        let sim_node = &mut self.nodes[node];
        let id = sim_node.id;
        let mut out = Vec::new();
        if let Some(version) = ready {
            sim_node.gossip.set_ready(version, &mut out);
        }
        let gossip = &sim_node.gossip;
        let gone = |ring: Option<Arc<Ring>>| ring.is_none_or(|ring| !ring.contains(id));
        if gossip.status_of(id) == Some(MemberStatus::Leaving)
            && gone(gossip.ring())
            && gone(gossip.next_ring())
            && empty
        {
            let _ = sim_node.gossip.set_status(id, MemberStatus::Left, &mut out);
        }
        self.gossip_actions(node, out);
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].running.is_some()
    }

    /// Cuts the network: nodes talk only to nodes on the same side
    /// (`sides[i]` is node i's side).
    /// Nodes that joined after the sides were drawn are on side 0.
    pub fn partition(&mut self, mut sides: Vec<usize>) {
        assert!(sides.len() <= self.nodes.len());
        sides.resize(self.nodes.len(), 0);
        self.sides = sides;
        self.stats.partitions += 1;
    }

    /// Joins every side of the network again.
    pub fn heal(&mut self) {
        self.sides = vec![0; self.nodes.len()];
    }

    /// The set `node`'s own replica holds for `key` (no coordination).
    pub fn inspect(&self, node: usize, key: &[u8]) -> Option<SiblingSet> {
        let running = self.nodes[node].running.as_ref()?;
        let partition = self.ring.partition_of(key);
        Some(block_on(running.replica.read(partition, key)).expect("a sim replica reads"))
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|node| node.id == id).expect("a sim node id")
    }

    /// The replicas of `key`, as node indexes in preference order.
    pub fn replicas_of(&self, key: &[u8]) -> Vec<usize> {
        let partition = self.ring.partition_of(key);
        let list = self.ring.preference_list(partition, usize::from(self.options.cluster.n));
        list.into_iter().map(|id| self.index_of(id)).collect()
    }

    fn schedule(&mut self, delay: Duration, event: Event) {
        self.seq += 1;
        if !event.is_background() {
            self.foreground += 1;
        }
        let at = self.now + delay;
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, event }));
    }

    fn random_delay(&mut self, min: Duration, max: Duration) -> Duration {
        let (min, max) = (min.as_nanos() as u64, max.as_nanos() as u64);
        Duration::from_nanos(if max > min { self.rng.random_range(min..=max) } else { min })
    }

    /// Sends a message over the simulated network.
    fn send(&mut self, from: usize, to: usize, message: Message) {
        self.stats.messages += 1;
        if self.sides[from] != self.sides[to] {
            self.stats.messages_cut += 1;
            return;
        }
        let faults = self.options.network;
        if self.rng.random_bool(faults.loss) {
            self.stats.messages_lost += 1;
            return;
        }
        let copies = if self.rng.random_bool(faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.random_delay(faults.delay_min, faults.delay_max);
            let message = message.clone();
            self.schedule(delay, Event::Deliver { from, to, message });
        }
    }

    /// Starts a client operation at `node` now; the reply is logged in the
    /// history when it comes.
    pub fn submit(&mut self, client: usize, node: usize, request: ClientRequest) -> history::OpId {
        let call = match &request {
            ClientRequest::Get { key, .. } => Call::Get { key: key.clone() },
            ClientRequest::Put { key, value: Some(value), context, .. } => {
                Call::Put { key: key.clone(), value: value.clone(), context: context.clone() }
            }
            ClientRequest::Put { key, value: None, context, .. } => {
                Call::Delete { key: key.clone(), context: context.clone() }
            }
        };
        self.keys.insert(request.key().to_vec());
        let op = self.history.start(client as u64, call, self.now);
        assert!(self.clients[client].waiting.is_none(), "client {client} has an op in flight");
        self.clients[client].submitted += 1;
        let reference =
            ClientRef(((client as u64) << 32) | (self.clients[client].submitted & 0xffff_ffff));
        self.clients[client].waiting = Some((op, node, request.key().to_vec(), reference));
        // A client gives up long after any coordinator would have answered.
        let give_up = self.options.cluster.request_timeout * 4;
        self.schedule(give_up, Event::ClientGiveUp { client, op });
        if self.nodes[node].running.is_none() {
            // Connection refused.
            self.finish_client(client, Outcome::Failed { reason: "node down".into() });
            return op;
        }
        let input = Input::Client { client: reference, request, forwarded: false };
        self.step(node, input);
        op
    }

    fn finish_client(&mut self, client: usize, outcome: Outcome) {
        let Some((op, _, _, _)) = self.clients[client].waiting.take() else { return };
        self.outcomes.insert(op, outcome.clone());
        self.history.finish(op, outcome, self.now);
        self.clients[client].done += 1;
        let think = self.random_delay(Duration::ZERO, Duration::from_millis(5));
        self.schedule(think, Event::ClientNext { client });
    }

    /// Feeds one input to `node`'s coordinator and carries out its actions.
    fn step(&mut self, node: usize, input: Input) {
        let now = self.now;
        let mut actions = std::mem::take(&mut self.actions);
        match self.nodes[node].running.as_mut() {
            Some(running) => running.coordinator.handle(now, input, &mut actions),
            None => return,
        }
        let epoch = self.nodes[node].epoch;
        for action in actions.drain(..) {
            match action {
                Action::Reply { client, reply } => self.reply(node, client, reply),
                Action::Local { op, local } => {
                    let delay =
                        self.random_delay(Duration::from_micros(20), Duration::from_micros(400));
                    let work = Work::Coordinator { op, local };
                    self.schedule(delay, Event::Disk { node, epoch, work });
                }
                Action::Send { op, to, request } => {
                    let to = self.index_of(to);
                    self.send(node, to, Message::Request { op, epoch, request });
                }
                Action::Timer { op, at } => {
                    let delay = at.saturating_sub(self.now);
                    self.schedule(delay, Event::Timer { node, epoch, op });
                }
                Action::Repaired { ticket, report } => {
                    self.repairs.insert(ticket, report);
                }
            }
        }
        self.actions = actions;
    }

    fn reply(&mut self, node: usize, client: ClientRef, reply: ClientReply) {
        if client.0 & PEER_CLIENT != 0 {
            let Some(running) = self.nodes[node].running.as_mut() else { return };
            let Some((from, op, epoch)) = running.coordinating.remove(&client.0) else { return };
            let reply = PeerReply::Coordinated(reply);
            self.send(node, from, Message::Reply { op, epoch, reply, background: false });
            return;
        }
        let reference = client;
        let client = (client.0 >> 32) as usize;
        let Some((_, at, key, waiting)) = &self.clients[client].waiting else { return };
        if *at != node || *waiting != reference {
            return; // The client gave up on it.
        }
        let key = key.clone();
        if let ClientReply::Error { code, message } = &reply {
            self.last_error = Some((*code, message.clone()));
        }
        let outcome = match reply {
            ClientReply::Get { values, context } => {
                self.clients[client].contexts.insert(key, context.clone());
                Outcome::Read { values, context }
            }
            ClientReply::Put { context, dot } => {
                self.clients[client].contexts.insert(key, context.clone());
                Outcome::Written { dot, context }
            }
            ClientReply::Error { code, message } => match code {
                // Nothing happened: the request was refused before any
                // version was made.
                ErrorCode::BadRequest
                | ErrorCode::BadContext
                | ErrorCode::TooManySiblings
                | ErrorCode::DiskFull => Outcome::Failed { reason: format!("{code}: {message}") },
                // The write may be on some replicas.
                _ => Outcome::Unknown,
            },
        };
        self.finish_client(client, outcome);
    }

    /// Runs one event; false when there are none left.
    fn run_one(&mut self) -> bool {
        let Some(Reverse(next)) = self.queue.pop() else { return false };
        assert!(next.at >= self.now, "time runs forward");
        if !next.event.is_background() {
            self.foreground -= 1;
        }
        self.now = next.at;
        self.stats.events += 1;
        match next.event {
            Event::Deliver { from, to, message } => self.deliver(from, to, message),
            Event::Disk { node, epoch, work } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].running.is_some() {
                    self.disk(node, work);
                }
            }
            Event::Timer { node, epoch, op } => {
                if self.nodes[node].epoch == epoch {
                    self.step(node, Input::Timer { op });
                }
            }
            Event::Tick { node, epoch } => {
                if let Some(running) = self.nodes[node].running.as_ref()
                    && self.nodes[node].epoch == epoch
                {
                    // Trees are built in the background after a start, a
                    // few keys per tick (as the node does between requests).
                    block_on(running.replica.build_trees(TREE_KEYS_PER_TICK));
                    self.step(node, Input::Tick);
                    self.membership_upkeep(node);
                    self.schedule(TICK, Event::Tick { node, epoch });
                }
            }
            Event::Gossip { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].running.is_some() {
                    let mut out = Vec::new();
                    let now = self.now;
                    self.nodes[node].gossip.tick(now, &mut self.rng, &mut out);
                    self.gossip_actions(node, out);
                    let interval = self.options.gossip_interval;
                    self.schedule(interval, Event::Gossip { node, epoch });
                }
            }
            Event::Join { seed } => {
                // An operator gives two seeds, so that one node removed
                // while the new one still knows only its seeds does not
                // strand it.
                let members = self.members();
                let other = members
                    [(members.iter().position(|&m| m == seed).unwrap_or(0) + 1) % members.len()];
                self.join_through(&[seed, other]);
            }
            Event::Leave { node } => self.leave(node),
            Event::Remove { node } => {
                let at = (0..self.nodes.len()).find(|&at| at != node && !self.has_left(at));
                if let Some(at) = at {
                    self.remove(node, at);
                }
            }
            Event::ClientNext { client } => self.client_next(client),
            Event::ClientGiveUp { client, op } => {
                if self.clients[client].waiting.as_ref().is_some_and(|waiting| waiting.0 == op) {
                    self.finish_client(client, Outcome::Unknown);
                }
            }
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => self.restart(node),
            Event::Partition { groups } => self.partition(groups),
            Event::Heal => self.heal(),
        }
        true
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message) {
        if self.sides[from] != self.sides[to] {
            self.stats.messages_cut += 1;
            return;
        }
        if self.nodes[to].running.is_none() {
            // A dead node's port refuses the connection: the sender hears.
            if let Message::Request { op, epoch, request } = message {
                let reply =
                    PeerReply::Failed { code: ErrorCode::Unavailable, message: "refused".into() };
                let background = request.is_anti_entropy();
                self.send(to, from, Message::Reply { op, epoch, reply, background });
            }
            return;
        }
        match message {
            Message::Gossip(message) => {
                let mut out = Vec::new();
                self.nodes[to].gossip.handle(message, &mut out);
                self.gossip_actions(to, out);
            }
            Message::Request { op, epoch: asked, request: PeerRequest::Coordinate(request) } => {
                let Some(running) = self.nodes[to].running.as_mut() else { return };
                running.next_coordinating += 1;
                let token = PEER_CLIENT | running.next_coordinating;
                running.coordinating.insert(token, (from, op, asked));
                self.step(to, Input::Client { client: ClientRef(token), request, forwarded: true });
            }
            Message::Request { op, epoch, request: PeerRequest::Ping } => {
                let reply = PeerReply::Pong;
                self.send(to, from, Message::Reply { op, epoch, reply, background: false });
            }
            Message::Request { op, epoch: asked, request } => {
                let delay =
                    self.random_delay(Duration::from_micros(20), Duration::from_micros(400));
                let epoch = self.nodes[to].epoch;
                let work = Work::Serve { from, op, epoch: asked, request };
                self.schedule(delay, Event::Disk { node: to, epoch, work });
            }
            Message::Reply { op, epoch, reply, .. } => {
                if self.nodes[to].epoch != epoch {
                    return;
                }
                let from = self.nodes[from].id;
                self.step(to, Input::Peer { op, from, reply });
            }
        }
    }

    fn disk(&mut self, node: usize, work: Work) {
        let Some(running) = self.nodes[node].running.as_ref() else { return };
        let replica = &running.replica;
        match work {
            Work::Coordinator { op, local } => {
                let result = block_on(replica.apply(local));
                self.step(node, Input::Local { op, result });
            }
            Work::Serve { from, op, epoch, request } => {
                let checked = request.partition_checked();
                let background = request.is_anti_entropy();
                let reply = match (checked, request.into_local()) {
                    (Some(partition), _) if !running.coordinator.replicates(partition) => {
                        PeerReply::Failed {
                            code: ErrorCode::NotReplica,
                            message: "this node does not replicate the partition".into(),
                        }
                    }
                    (_, Some(local)) => PeerReply::from_local(block_on(replica.apply(local))),
                    (_, None) => unreachable!("answered on delivery"),
                };
                self.send(node, from, Message::Reply { op, epoch, reply, background });
            }
        }
    }

    fn client_next(&mut self, client: usize) {
        if self.clients[client].done >= self.options.operations_per_client
            || self.clients[client].waiting.is_some()
        {
            return;
        }
        let key = format!("key-{}", self.rng.random_range(0..self.options.keys)).into_bytes();
        let node = self.rng.random_range(0..self.nodes.len());
        let roll: f64 = self.rng.random();
        let request = if roll < 0.35 {
            ClientRequest::Get { key, r: 0 }
        } else {
            // Most writes carry the context of the client's last read or
            // write of the key; some are blind, which makes siblings.
            let context = if self.rng.random_bool(0.7) {
                self.clients[client].contexts.get(&key).cloned().unwrap_or_default()
            } else {
                VersionVector::new()
            };
            let value = if roll < 0.9 {
                self.next_value += 1;
                Some(format!("v{}-c{client}", self.next_value).into_bytes())
            } else {
                None
            };
            ClientRequest::Put { key, value, context, w: 0 }
        };
        self.submit(client, node, request);
    }

    /// Runs until no event is left or `until` is reached.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            self.run_one();
        }
        self.now = self.now.max(until);
    }

    /// Runs until nothing is left to do but periodic upkeep (ticks and
    /// heartbeats): no client, message, disk operation or coordinator
    /// operation is under way.
    pub fn run_to_quiescence(&mut self) {
        loop {
            let busy = self.nodes.iter().any(|node| {
                node.running.as_ref().is_some_and(|running| running.coordinator.busy())
            });
            let waiting = self.clients.iter().any(|client| client.waiting.is_some());
            if self.foreground == 0 && !busy && !waiting {
                return;
            }
            if !self.run_one() {
                return;
            }
        }
    }

    /// Keys for which some running node holds hints.
    pub fn hinted_keys(&self) -> usize {
        let running = self.nodes.iter().filter_map(|node| node.running.as_ref());
        running.map(|running| running.replica.hinted_keys()).sum()
    }

    /// Runs until every hint was delivered, or `limit` of virtual time
    /// passed; true if every hint was.
    pub fn deliver_hints(&mut self, limit: Duration) -> bool {
        let until = self.now + limit;
        while self.hinted_keys() > 0 && self.now < until {
            let step = self.now + Duration::from_millis(50);
            self.run_until(step);
        }
        self.run_to_quiescence();
        self.hinted_keys() == 0
    }

    /// The coordinator counters of every running node, summed.
    pub fn coordinator_stats(&self) -> super::coordinator::CoordinatorStats {
        let mut total = super::coordinator::CoordinatorStats::default();
        for running in self.nodes.iter().filter_map(|node| node.running.as_ref()) {
            total += running.coordinator.stats();
        }
        total
    }

    /// `node`'s coordinator counters (of its current life; zero if down).
    pub fn coordinator_stats_of(&self, node: usize) -> super::coordinator::CoordinatorStats {
        self.nodes[node]
            .running
            .as_ref()
            .map(|running| running.coordinator.stats())
            .unwrap_or_default()
    }

    /// Runs an operation from `client` at `node` to its end and returns its
    /// outcome.
    pub fn call(&mut self, client: usize, node: usize, request: ClientRequest) -> Outcome {
        let op = self.submit(client, node, request);
        while !self.outcomes.contains_key(&op) && self.run_one() {}
        self.outcomes.get(&op).cloned().unwrap_or(Outcome::Unknown)
    }

    /// The random workload, with the faults the options ask for, then a
    /// heal, restarts, a read of every key at R=N (whose read repair brings
    /// every replica up to date) and the check of the whole history.
    pub fn run_workload(&mut self) -> Report {
        self.run_clients();
        self.settle_and_check()
    }

    /// The random workload with the faults the options ask for, run until
    /// the clients are done and the cluster is quiet; nothing is healed.
    pub fn run_clients(&mut self) {
        for client in 0..self.clients.len() {
            let start = self.random_delay(Duration::ZERO, Duration::from_millis(2));
            self.schedule(start, Event::ClientNext { client });
        }
        // Faults, at random times within the workload's expected span.
        let span = Duration::from_millis(15 * self.options.operations_per_client as u64);
        if self.options.crashes {
            for _ in 0..self.rng.random_range(1..=3) {
                let node = self.rng.random_range(0..self.nodes.len());
                let at = self.random_delay(Duration::ZERO, span);
                let down = self.random_delay(Duration::from_millis(1), span / 2);
                self.schedule(at, Event::Crash { node });
                self.schedule(at + down, Event::Restart { node });
            }
        }
        if self.options.partitions_during_run {
            for _ in 0..self.rng.random_range(1..=3) {
                let sides: Vec<usize> =
                    (0..self.nodes.len()).map(|_| self.rng.random_range(0..2)).collect();
                let at = self.random_delay(Duration::ZERO, span);
                let lasts = self.random_delay(Duration::from_millis(1), span / 2);
                self.schedule(at, Event::Partition { groups: sides });
                self.schedule(at + lasts, Event::Heal);
            }
        }
        // Membership changes, likewise; never the last node standing.
        let original = self.nodes.len();
        for _ in 0..self.options.joins {
            let seed = self.rng.random_range(0..original);
            let at = self.random_delay(Duration::ZERO, span);
            self.schedule(at, Event::Join { seed });
        }
        let mut chosen: Vec<usize> = (0..original).collect();
        let changes = (self.options.leaves + self.options.removals).min(original.saturating_sub(1));
        for change in 0..changes {
            let node = chosen.swap_remove(self.rng.random_range(0..chosen.len()));
            let at = self.random_delay(Duration::ZERO, span);
            let event = if change < self.options.leaves {
                Event::Leave { node }
            } else {
                Event::Remove { node }
            };
            self.schedule(at, event);
        }
        self.run_to_quiescence();
    }

    /// The nodes that are members (not left, not removed).
    pub fn members(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&node| !self.has_left(node)).collect()
    }

    /// Whether membership has settled: every member runs, holds the same
    /// gossip state with no ring change pending, no node asked to leave
    /// is still handing over, and no node holds keys of partitions it does
    /// not replicate.
    pub fn membership_settled(&self) -> bool {
        let running: Vec<&Running> =
            self.nodes.iter().filter_map(|node| node.running.as_ref()).collect();
        let members = self.members();
        let Some(&first) = members.first() else { return true };
        let fingerprint = self.nodes[first].gossip.fingerprint();
        members.iter().all(|&node| {
            let gossip = &self.nodes[node].gossip;
            self.nodes[node].running.is_some()
                && gossip.fingerprint() == fingerprint
                && gossip.next_ring().is_none()
                && gossip.status_of(self.nodes[node].id) != Some(MemberStatus::Leaving)
        }) && running.iter().all(|running| {
            let ring = running.coordinator.ring();
            running
                .replica
                .data_partitions()
                .iter()
                .all(|&partition| ring.is_none_or(|_| running.coordinator.replicates(partition)))
        })
    }

    /// One line per node: what it believes about membership, for a test
    /// that failed to settle.
    pub fn membership_report(&self) -> String {
        let mut report = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let gossip = &node.gossip;
            let version = |ring: Option<Arc<Ring>>| ring.map_or(0, |ring| ring.version());
            let record = gossip.record(node.id);
            let foreign: Vec<u32> = node.running.as_ref().map_or(Vec::new(), |running| {
                let held = running.replica.data_partitions();
                held.into_iter().filter(|&p| !running.coordinator.replicates(p)).collect()
            });
            let stats = node.running.as_ref().map(|running| running.coordinator.stats());
            report += &format!(
                "node {index} (id {}): running {} removed {} status {:?} ready {:?} ring {} next {} \
                 gainers {:?} fingerprint {:x} foreign {foreign:?} transfers waiting {:?} \
                 partitions waiting {:?}\n",
                node.id,
                node.running.is_some(),
                node.removed,
                gossip.status_of(node.id),
                record.map(|record| record.ready),
                version(gossip.ring()),
                version(gossip.next_ring()),
                gossip.gainers(),
                gossip.fingerprint(),
                stats.map(|stats| stats.transfers_waiting),
                stats.map(|stats| stats.partitions_waiting),
            );
        }
        report
    }

    /// Runs until membership settles ([`membership_settled`](Self::membership_settled))
    /// or `limit` of virtual time passed; true if it settled.
    pub fn settle_membership(&mut self, limit: Duration) -> bool {
        let until = self.now + limit;
        while !self.membership_settled() && self.now < until {
            let step = self.now + Duration::from_millis(50);
            self.run_until(step);
        }
        self.run_to_quiescence();
        self.membership_settled()
    }

    /// Heals the network for good (no more loss or duplicates either) and
    /// restarts every crashed node (not removed ones); reads nothing.
    pub fn heal_network(&mut self) {
        self.heal();
        self.options.network = NetworkFaults::none();
        for node in 0..self.nodes.len() {
            self.restart(node);
        }
    }

    /// Every key a client asked about.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.keys.iter().cloned().collect()
    }

    /// `node`'s own replica of `key`: its set, or the read's error (a
    /// corrupt record); `None` if the node is down.
    pub fn try_inspect(&self, node: usize, key: &[u8]) -> Option<Result<SiblingSet, String>> {
        let running = self.nodes[node].running.as_ref()?;
        let partition = self.ring.partition_of(key);
        Some(block_on(running.replica.read(partition, key)).map_err(|error| error.to_string()))
    }

    /// Heals everything, reads every key at R=N through a rotating node, and
    /// checks the history against every replica's final state.
    pub fn settle_and_check(&mut self) -> Report {
        // Whether the workload's network was clean decides what is checked.
        let clean = self.options.network.loss == 0.0
            && !self.options.crashes
            && !self.options.partitions_during_run;
        // The network is healed for good: no more loss or duplicates, so the
        // final reads and their repairs all arrive.
        self.heal_network();
        self.run_to_quiescence();
        // Joins finish, leavers hand over and leave, removed nodes'
        // partitions are copied again, and every node agrees on the ring.
        let settled = self.settle_membership(Duration::from_secs(120));
        assert!(
            settled,
            "membership did not settle two minutes after healing: {self:?}\n{}",
            self.membership_report()
        );
        // Every owner is back: the fallbacks hand over what they hold.
        let delivered = self.deliver_hints(Duration::from_secs(60));
        assert!(delivered, "hints still undelivered a minute after healing: {self:?}");
        for node in 0..self.nodes.len() {
            let Some(running) = self.nodes[node].running.as_ref() else { continue };
            if self.has_left(node) {
                let held = running.replica.data_partitions();
                assert!(held.is_empty(), "node {node} left but holds partitions {held:?}");
            }
        }
        let members = self.members();
        let n = self.options.cluster.n.min(members.len() as u8);
        let keys: Vec<Vec<u8>> = self.keys.iter().cloned().collect();
        for (index, key) in keys.iter().enumerate() {
            let node = members[index % members.len()];
            self.call(0, node, ClientRequest::Get { key: key.clone(), r: n });
            self.run_to_quiescence();
        }
        let mut finals = FinalState::new();
        for key in &keys {
            for replica in self.replicas_of(key) {
                let set = self.inspect(replica, key).expect("every node runs after settling");
                finals.add(key.clone(), set);
            }
        }
        let options = CheckOptions {
            presence: Presence::Every,
            reads_see_acknowledged_writes: clean
                && self.options.cluster.r + self.options.cluster.w > self.options.cluster.n,
            // Tombstones are reaped only past their grace; a run that long
            // sets it short.
            tombstones_reaped: self.options.cluster.tombstone_grace < Duration::from_secs(600),
        };
        self.history.check(&finals, &options)
    }
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.options.seed)
            .field("now", &self.now)
            .field("queued", &self.queue.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn gossip_options(options: &SimOptions) -> GossipOptions {
    GossipOptions { interval: options.gossip_interval, replicas: usize::from(options.cluster.n) }
}
