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
    Action, ClientRef, ClientReply, ClientRequest, Coordinator, Input, LocalOp, LocalResult, OpId,
    PeerReply, PeerRequest,
};
use super::history::{self, Call, CheckOptions, FinalState, History, Outcome, Presence, Report};
use super::{ClusterOptions, DetectorOptions};
use crate::disk::sim::{SimDisk, SimDiskOptions};
use crate::replica::Replica;
use crate::store::{Store, StoreOptions, SyncPolicy};

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

#[derive(Clone, Debug)]
enum Message {
    Request { op: OpId, request: PeerRequest },
    Reply { op: OpId, reply: PeerReply },
}

#[derive(Debug)]
enum Work {
    /// A coordinator's own local operation.
    Coordinator { op: OpId, local: LocalOp },
    /// A peer's request served by this node's replica.
    Serve { from: usize, op: OpId, request: PeerRequest },
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
                | Event::ClientGiveUp { .. }
                | Event::Timer { .. }
                | Event::Deliver {
                    message: Message::Request { request: PeerRequest::Ping, .. },
                    ..
                }
                | Event::Deliver { message: Message::Reply { reply: PeerReply::Pong, .. }, .. }
        )
    }
}

/// How often a simulated node ticks.
const TICK: Duration = Duration::from_millis(25);

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
    disk: SimDisk,
    incarnation: u32,
    /// Bumped on every crash: events of an earlier life are dropped.
    epoch: u64,
    running: Option<Running>,
}

struct Running {
    coordinator: Coordinator,
    replica: Replica<SimDisk>,
    /// Requests other nodes asked this one to coordinate: client ref to
    /// (node, op) to answer.
    coordinating: BTreeMap<u64, (usize, OpId)>,
    next_coordinating: u64,
}

/// The bit that marks a client ref as a peer's forwarded request.
const PEER_CLIENT: u64 = 1 << 63;

#[derive(Default)]
struct SimClient {
    /// The operation waiting for its reply: history op, the node, the key.
    waiting: Option<(history::OpId, usize, Vec<u8>)>,
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
        let ring = Arc::new(Ring::new(options.partitions, members, 1).expect("a valid sim ring"));
        let mut nodes = Vec::new();
        for index in 0..options.nodes {
            let disk = SimDisk::new(SimDiskOptions::new(rng.random()));
            nodes.push(SimNode {
                id: index as NodeId + 1,
                disk,
                incarnation: 0,
                epoch: 0,
                running: None,
            });
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
        coordinator.set_ring(self.ring.clone());
        node.running = Some(Running {
            coordinator,
            replica,
            coordinating: BTreeMap::new(),
            next_coordinating: 0,
        });
        let epoch = node.epoch;
        self.schedule(TICK, Event::Tick { node: index, epoch });
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

    /// Starts a crashed node again from its disk.
    pub fn restart(&mut self, node: usize) {
        if self.nodes[node].running.is_none() {
            self.start_node(node);
        }
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].running.is_some()
    }

    /// Cuts the network: nodes talk only to nodes on the same side
    /// (`sides[i]` is node i's side).
    pub fn partition(&mut self, sides: Vec<usize>) {
        assert_eq!(sides.len(), self.nodes.len());
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
        self.clients[client].waiting = Some((op, node, request.key().to_vec()));
        // A client gives up long after any coordinator would have answered.
        let give_up = self.options.cluster.request_timeout * 4;
        self.schedule(give_up, Event::ClientGiveUp { client, op });
        if self.nodes[node].running.is_none() {
            // Connection refused.
            self.finish_client(client, Outcome::Failed { reason: "node down".into() });
            return op;
        }
        let input = Input::Client { client: ClientRef(client as u64), request, forwarded: false };
        self.step(node, input);
        op
    }

    fn finish_client(&mut self, client: usize, outcome: Outcome) {
        let Some((op, _, _)) = self.clients[client].waiting.take() else { return };
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
                    self.send(node, to, Message::Request { op, request });
                }
                Action::Timer { op, at } => {
                    let delay = at.saturating_sub(self.now);
                    self.schedule(delay, Event::Timer { node, epoch, op });
                }
            }
        }
        self.actions = actions;
    }

    fn reply(&mut self, node: usize, client: ClientRef, reply: ClientReply) {
        if client.0 & PEER_CLIENT != 0 {
            let Some(running) = self.nodes[node].running.as_mut() else { return };
            let Some((from, op)) = running.coordinating.remove(&client.0) else { return };
            self.send(node, from, Message::Reply { op, reply: PeerReply::Coordinated(reply) });
            return;
        }
        let client = client.0 as usize;
        let Some((_, at, key)) = &self.clients[client].waiting else { return };
        if *at != node {
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
                if self.nodes[node].epoch == epoch && self.nodes[node].running.is_some() {
                    self.step(node, Input::Tick);
                    self.schedule(TICK, Event::Tick { node, epoch });
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
            if let Message::Request { op, .. } = message {
                let reply =
                    PeerReply::Failed { code: ErrorCode::Unavailable, message: "refused".into() };
                self.send(to, from, Message::Reply { op, reply });
            }
            return;
        }
        match message {
            Message::Request { op, request: PeerRequest::Coordinate(request) } => {
                let Some(running) = self.nodes[to].running.as_mut() else { return };
                running.next_coordinating += 1;
                let token = PEER_CLIENT | running.next_coordinating;
                running.coordinating.insert(token, (from, op));
                self.step(to, Input::Client { client: ClientRef(token), request, forwarded: true });
            }
            Message::Request { op, request: PeerRequest::Ping } => {
                self.send(to, from, Message::Reply { op, reply: PeerReply::Pong });
            }
            Message::Request { op, request } => {
                let delay =
                    self.random_delay(Duration::from_micros(20), Duration::from_micros(400));
                let epoch = self.nodes[to].epoch;
                let work = Work::Serve { from, op, request };
                self.schedule(delay, Event::Disk { node: to, epoch, work });
            }
            Message::Reply { op, reply } => {
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
            Work::Serve { from, op, request } => {
                let local = match request {
                    PeerRequest::Read { partition, key } => LocalOp::Read { partition, key },
                    PeerRequest::Write { partition, key, set, hint } => {
                        LocalOp::Merge { partition, key, set, hint }
                    }
                    PeerRequest::Coordinate(_) | PeerRequest::Ping => {
                        unreachable!("answered on delivery")
                    }
                };
                let reply = match block_on(replica.apply(local)) {
                    LocalResult::Read(set) => PeerReply::Read(set),
                    LocalResult::Merged => PeerReply::Written,
                    LocalResult::Failed { code, message } => PeerReply::Failed { code, message },
                    LocalResult::Written { .. } | LocalResult::Hints(_) => {
                        unreachable!("peers never coordinate writes or list hints")
                    }
                };
                self.send(node, from, Message::Reply { op, reply });
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
        self.run_to_quiescence();
        self.settle_and_check()
    }

    /// Heals everything, reads every key at R=N through a rotating node, and
    /// checks the history against every replica's final state.
    pub fn settle_and_check(&mut self) -> Report {
        // Whether the workload's network was clean decides what is checked.
        let clean = self.options.network.loss == 0.0
            && !self.options.crashes
            && !self.options.partitions_during_run;
        self.heal();
        // The network is healed for good: no more loss or duplicates, so the
        // final reads and their repairs all arrive.
        self.options.network = NetworkFaults::none();
        for node in 0..self.nodes.len() {
            self.restart(node);
        }
        self.run_to_quiescence();
        // Every owner is back: the fallbacks hand over what they hold.
        let delivered = self.deliver_hints(Duration::from_secs(60));
        assert!(delivered, "hints still undelivered a minute after healing: {self:?}");
        let n = self.options.cluster.n.min(self.nodes.len() as u8);
        let keys: Vec<Vec<u8>> = self.keys.iter().cloned().collect();
        for (index, key) in keys.iter().enumerate() {
            let node = index % self.nodes.len();
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
