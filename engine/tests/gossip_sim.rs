//! Gossip over a simulated network, round by round, from one seed.
//!
//! A round is one gossip interval: every live node ticks once (in a random
//! order), then the messages those ticks start are delivered, and the
//! replies they cause, until the network is quiet, so an exchange (digest,
//! reply, push) completes within its round. The network loses each message
//! with a given probability, drops everything to or from a crashed node,
//! and delivers only within a partition group. Where a scenario changes
//! membership, each node that gains partitions in a pending ring "pulls"
//! them (a random number of rounds) and reports ready, and the simulator
//! checks that no ring is ever installed with a replica that has not pulled
//! what it replicates. Everything random comes from one seeded ChaCha
//! generator; `HOLDFAST_SEED=n` replays a failure.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use holdfast_engine::cluster::gossip::{Gossip, GossipAction, GossipMessage, GossipOptions, Peer};
use holdfast_net::membership::{GossipState, MemberRecord, MemberStatus, RingKey, ring_precedence};
use holdfast_net::ring::{Member, NodeId, Ring, RingState};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::for_seeds;

const INTERVAL: Duration = Duration::from_secs(1);
const SIZES: [usize; 7] = [3, 5, 10, 25, 50, 100, 200];

fn member(id: NodeId) -> Member {
    Member { id, addr: format!("node-{id}:7070"), weight: 1, zone: format!("z{}", id % 3) }
}

/// The replicas per key the membership scenarios use.
const REPLICAS: usize = 3;

fn options() -> GossipOptions {
    GossipOptions { interval: INTERVAL, replicas: REPLICAS }
}

/// The state every node of a fresh `n`-node cluster starts from: nodes
/// `1..=n` up at version 1, and a ring over them at version 1.
fn cluster_state(n: usize) -> GossipState {
    cluster_state_of(n, 1024)
}

/// [`cluster_state`] with a ring of `partitions` partitions.
fn cluster_state_of(n: usize, partitions: u32) -> GossipState {
    let members: Vec<Member> = (1..=n as NodeId).map(member).collect();
    let ring = Ring::new(partitions, members.clone(), 1).expect("a valid ring").state();
    let records = members.into_iter().map(|m| MemberRecord::new(m, MemberStatus::Up, 1)).collect();
    GossipState::new(records, ring).expect("a valid state")
}

/// `ceil(log2 n)`.
fn log2_ceil(n: usize) -> u64 {
    u64::from(n.next_power_of_two().trailing_zeros())
}

/// The bound the convergence tests hold every run to.
fn rounds_bound(n: usize) -> u64 {
    3 * log2_ceil(n) + 6
}

struct Sim {
    rng: ChaCha8Rng,
    nodes: Vec<Gossip>,
    /// Crashed nodes neither tick nor receive.
    live: Vec<bool>,
    /// Messages are delivered only between nodes of the same group.
    group: Vec<u32>,
    by_addr: BTreeMap<String, usize>,
    loss: f64,
    round: u64,
    /// Messages sent and lost, over the whole run.
    sent: u64,
    lost: u64,
    /// The simulated data plane, in scenarios that change membership.
    pulls: Option<Pulls>,
}

/// What each node pulls for a pending ring, and what it holds.
struct Pulls {
    /// A pull takes `0..=delay_max` rounds.
    delay_max: u64,
    /// Per node, its pull under way, if any.
    pulling: Vec<Option<Pull>>,
    /// Per node id, the partitions it holds data for.
    held: BTreeMap<NodeId, BTreeSet<u32>>,
    /// Rings made current, at any node, checked against `held`.
    installs: u64,
}

/// One node's pull for the pending change it last heard of.
struct Pull {
    /// The current ring's key when the pull began.
    ring: RingKey,
    next: Arc<Ring>,
    /// The round at whose start it completes.
    due: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            live: Vec::new(),
            group: Vec::new(),
            by_addr: BTreeMap::new(),
            loss: 0.0,
            round: 0,
            sent: 0,
            lost: 0,
            pulls: None,
        }
    }

    /// An `n`-node cluster whose nodes all start from the same state.
    fn cluster(seed: u64, n: usize) -> Sim {
        Sim::cluster_from(seed, n, cluster_state(n))
    }

    /// An `n`-node cluster whose nodes all start from `state`.
    fn cluster_from(seed: u64, n: usize, state: GossipState) -> Sim {
        let mut sim = Sim::new(seed);
        for id in 1..=n as NodeId {
            let node = Gossip::from_state(member(id), state.clone(), Vec::new(), options())
                .expect("a valid state");
            sim.add(node);
        }
        sim
    }

    fn add(&mut self, node: Gossip) -> usize {
        let index = self.nodes.len();
        assert!(self.by_addr.insert(node.me().addr.clone(), index).is_none());
        if let Some(pulls) = &mut self.pulls {
            pulls.pulling.push(None);
            pulls.held.entry(node.id()).or_default();
        }
        self.nodes.push(node);
        self.live.push(true);
        self.group.push(0);
        index
    }

    /// Switches the data plane on: every node holds what it replicates in
    /// its current ring, and pulls take `0..=delay_max` rounds.
    fn simulate_pulls(&mut self, delay_max: u64) {
        let mut held: BTreeMap<NodeId, BTreeSet<u32>> = BTreeMap::new();
        for node in &self.nodes {
            let entry = held.entry(node.id()).or_default();
            if let Some(ring) = node.ring() {
                entry.extend(
                    (0..ring.partitions())
                        .filter(|&p| ring.preference_list(p, REPLICAS).contains(&node.id())),
                );
            }
        }
        let pulling = self.nodes.iter().map(|_| None).collect();
        self.pulls = Some(Pulls { delay_max, pulling, held, installs: 0 });
    }

    /// Carries out node `index`'s actions: queues its sends and, with the
    /// data plane on, starts or cancels its pull and checks every ring it
    /// makes current.
    fn absorb(
        &mut self,
        index: usize,
        out: Vec<GossipAction>,
        queue: &mut VecDeque<(usize, Peer, GossipMessage)>,
    ) {
        for action in out {
            match action {
                GossipAction::Send { to, message } => queue.push_back((index, to, message)),
                GossipAction::MembersChanged { .. } => {}
                GossipAction::RingChanged(ring) => {
                    let Some(pulls) = &mut self.pulls else { continue };
                    pulls.installs += 1;
                    for partition in 0..ring.partitions() {
                        for id in ring.preference_list(partition, REPLICAS) {
                            assert!(
                                pulls.held.get(&id).is_some_and(|held| held.contains(&partition)),
                                "ring {} made current at node {} routes partition {partition} \
                                 to node {id}, which has not pulled it",
                                ring.version(),
                                self.nodes[index].id(),
                            );
                        }
                    }
                }
                GossipAction::NextChanged(next) => {
                    let Some(pulls) = &mut self.pulls else { continue };
                    let node = &self.nodes[index];
                    // A new change voids the pull under way.
                    pulls.pulling[index] = match next {
                        Some(next) if node.gainers().contains(&node.id()) => {
                            let delay = self.rng.random_range(0..=pulls.delay_max);
                            let ring = node.state().ring_key();
                            Some(Pull { ring, next, due: self.round + delay })
                        }
                        _ => None,
                    };
                }
            }
        }
    }

    /// Completes the pulls due this round: each node takes what it gains
    /// and reports ready.
    fn finish_pulls(&mut self, queue: &mut VecDeque<(usize, Peer, GossipMessage)>) {
        let Some(pulls) = &mut self.pulls else { return };
        let mut done = Vec::new();
        for index in 0..self.nodes.len() {
            if !self.live[index] {
                continue;
            }
            let Some(pull) = pulls.pulling[index].take_if(|pull| pull.due <= self.round) else {
                continue;
            };
            let node = &self.nodes[index];
            // Every change of the current or pending ring announced itself
            // (and so replaced this pull).
            assert_eq!(node.state().ring_key(), pull.ring, "node {}", node.id());
            assert_eq!(node.next_ring().as_ref(), Some(&pull.next), "node {}", node.id());
            let ring = node.ring().expect("a pull has a ring to pull from");
            let gained = ring.gained_by(&pull.next, node.id(), REPLICAS);
            pulls.held.entry(node.id()).or_default().extend(gained);
            done.push((index, pull.next.version()));
        }
        for (index, version) in done {
            let mut out = Vec::new();
            self.nodes[index].set_ready(version, &mut out);
            self.absorb(index, out, queue);
        }
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|node| node.id() == id).expect("a node of the simulation")
    }

    fn now(&self) -> Duration {
        INTERVAL * u32::try_from(self.round).expect("few rounds")
    }

    /// One round: pulls due complete, every live node ticks, then messages
    /// flow until quiet.
    fn step(&mut self) {
        let now = self.now();
        let mut queue = VecDeque::new();
        self.finish_pulls(&mut queue);
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.live[i]).collect();
        order.shuffle(&mut self.rng);
        for index in order {
            let mut out = Vec::new();
            self.nodes[index].tick(now, &mut self.rng, &mut out);
            self.absorb(index, out, &mut queue);
        }
        while let Some((from, to, message)) = queue.pop_front() {
            self.sent += 1;
            let addr = match &to {
                Peer::Node { addr, .. } | Peer::Seed { addr } => addr,
            };
            let Some(&to) = self.by_addr.get(addr) else { continue };
            if self.rng.random_bool(self.loss) {
                self.lost += 1;
                continue;
            }
            if !self.live[to] || !self.live[from] || self.group[to] != self.group[from] {
                continue;
            }
            let mut out = Vec::new();
            self.nodes[to].handle(message, &mut out);
            self.absorb(to, out, &mut queue);
        }
        self.round += 1;
    }

    /// Whether every live node holds the same state.
    fn converged(&self) -> bool {
        let mut fingerprints =
            (0..self.nodes.len()).filter(|&i| self.live[i]).map(|i| self.nodes[i].fingerprint());
        let first = fingerprints.next();
        fingerprints.all(|fingerprint| Some(fingerprint) == first)
    }

    /// Steps until converged, returning the rounds it took; panics after
    /// `limit` rounds.
    fn rounds_to_converge(&mut self, limit: u64) -> u64 {
        let start = self.round;
        while !self.converged() {
            assert!(
                self.round - start < limit,
                "not converged after {limit} rounds ({} nodes, {} live)",
                self.nodes.len(),
                self.live.iter().filter(|&&live| live).count()
            );
            self.step();
        }
        self.round - start
    }

    /// Crashes `count` distinct nodes other than `spare`, at random.
    fn crash(&mut self, count: usize, spare: usize) {
        let mut victims: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != spare).collect();
        victims.shuffle(&mut self.rng);
        for &victim in &victims[..count] {
            self.live[victim] = false;
        }
    }
}

fn sends(from: usize, out: Vec<GossipAction>) -> Vec<(usize, Peer, GossipMessage)> {
    out.into_iter()
        .filter_map(|action| match action {
            GossipAction::Send { to, message } => Some((from, to, message)),
            GossipAction::RingChanged(_)
            | GossipAction::NextChanged(_)
            | GossipAction::MembersChanged { .. } => None,
        })
        .collect()
}

/// Node `origin` adopts a new ring version (same members).
fn propose_new_ring(sim: &mut Sim, origin: usize) -> u64 {
    let node = &mut sim.nodes[origin];
    let ring = node.ring().expect("a ring");
    let next = ring.rebalance(ring.members().to_vec()).expect("a rebalance");
    node.propose_ring(next.state(), &mut Vec::new()).expect("a newer ring");
    next.version()
}

/// A new node joins knowing only the address of node `seed`.
fn join_via(sim: &mut Sim, seed: usize) -> usize {
    let id = sim.nodes.iter().map(Gossip::id).max().expect("nodes") + 1;
    let seeds = vec![sim.nodes[seed].me().addr.clone()];
    sim.add(Gossip::new(member(id), seeds, options()))
}

/// A tighter bound on the median run, to catch a change that slows gossip
/// down without breaking [`rounds_bound`] (push alone, say, would add
/// `ln n` rounds).
fn median_bound(n: usize) -> u64 {
    log2_ceil(n) + 3
}

fn median(mut rounds: Vec<u64>) -> u64 {
    rounds.sort_unstable();
    rounds[rounds.len() / 2]
}

/// The rounds taken by one scenario over `seeds` seeds, failing on any run
/// beyond [`rounds_bound`].
fn convergence(
    n: usize,
    seeds: u64,
    scenario: impl Fn(&mut Sim),
    check: impl Fn(&Sim),
) -> Vec<u64> {
    let rounds = std::cell::RefCell::new(Vec::new());
    for_seeds(seeds, |seed| {
        let mut sim = Sim::cluster(seed ^ ((n as u64) << 32), n);
        scenario(&mut sim);
        let taken = sim.rounds_to_converge(rounds_bound(n));
        check(&sim);
        rounds.borrow_mut().push(taken);
    });
    rounds.into_inner()
}

/// Seeds per size: fewer for the larger clusters, which are slower to
/// simulate in debug builds and vary less.
fn seeds_for(n: usize) -> u64 {
    if n >= 100 { 4 } else { 8 }
}

fn assert_ring_everywhere(sim: &Sim, version: u64) {
    for (index, node) in sim.nodes.iter().enumerate().filter(|&(i, _)| sim.live[i]) {
        assert_eq!(node.ring().map(|ring| ring.version()), Some(version), "node {index}");
    }
}

#[test]
fn a_new_ring_reaches_every_node_in_logarithmic_rounds() {
    for n in SIZES {
        let rounds = convergence(
            n,
            seeds_for(n),
            |sim| {
                let origin = sim.rng.random_range(0..n);
                propose_new_ring(sim, origin);
            },
            |sim| assert_ring_everywhere(sim, 2),
        );
        eprintln!("n={n}: rounds {rounds:?}, bound {}", rounds_bound(n));
        assert!(median(rounds) <= median_bound(n), "n={n}: median over {}", median_bound(n));
    }
}

#[test]
fn a_joining_node_spreads_in_logarithmic_rounds() {
    for n in SIZES {
        let rounds = convergence(
            n,
            seeds_for(n),
            |sim| {
                let seed = sim.rng.random_range(0..n);
                join_via(sim, seed);
            },
            |sim| {
                let id = sim.nodes[n].id();
                assert!(
                    sim.nodes.iter().all(|node| node.status_of(id) == Some(MemberStatus::Joining))
                );
            },
        );
        eprintln!("n={n}: rounds {rounds:?}, bound {}", rounds_bound(n));
        assert!(median(rounds) <= median_bound(n), "n={n}: median over {}", median_bound(n));
    }
}

#[test]
fn gossip_converges_despite_loss_and_crashed_nodes() {
    for n in SIZES {
        for_seeds(seeds_for(n), |seed| {
            let mut sim = Sim::cluster(seed ^ ((n as u64) << 32), n);
            sim.loss = 0.1;
            let origin = sim.rng.random_range(0..n);
            // A tenth of the nodes crashed (at least one, and never all but
            // the origin): they are still picked, and those exchanges fail.
            let crashed = (n / 10).max(1).min(n - 2);
            sim.crash(crashed, origin);
            propose_new_ring(&mut sim, origin);
            let rounds = sim.rounds_to_converge(rounds_bound(n));
            assert_ring_everywhere(&sim, 2);
            assert!(n < 25 || sim.lost > 0, "the network lost messages");
            if seed == 0 {
                eprintln!("n={n}, {crashed} crashed, 10% loss: {rounds} rounds");
            }
        });
    }
}

#[test]
fn a_node_that_knows_one_seed_learns_every_member_and_every_member_learns_it() {
    for_seeds(8, |seed| {
        let n = 25;
        let mut sim = Sim::cluster(seed, n);
        // Three newcomers, each knowing a different seed, at once.
        let seeds: Vec<usize> = (0..3).map(|_| sim.rng.random_range(0..n)).collect();
        let newcomers: Vec<usize> = seeds.iter().map(|&seed| join_via(&mut sim, seed)).collect();
        sim.rounds_to_converge(rounds_bound(n + 3));
        let ids: Vec<NodeId> = sim.nodes.iter().map(Gossip::id).collect();
        for node in &sim.nodes {
            let known: Vec<NodeId> = node.members().iter().map(MemberRecord::id).collect();
            assert_eq!(known, ids, "node {} knows everyone", node.id());
        }
        for &newcomer in &newcomers {
            let node = &sim.nodes[newcomer];
            assert_eq!(node.ring().map(|ring| ring.version()), Some(1), "it has the ring");
            assert!(node.stats().exchanges > 0);
        }
        // And once it is marked up (by an operator, anywhere), that spreads.
        let id = sim.nodes[newcomers[0]].id();
        let operator = sim.rng.random_range(0..n);
        sim.nodes[operator].set_status(id, MemberStatus::Up, &mut Vec::new()).expect("known");
        sim.rounds_to_converge(rounds_bound(n + 3));
        assert!(sim.nodes.iter().all(|node| node.status_of(id) == Some(MemberStatus::Up)));
    });
}

#[test]
fn a_left_record_is_never_undone_by_stale_gossip() {
    for_seeds(16, |seed| {
        let n = 10;
        let mut sim = Sim::cluster(seed, n);
        let removed = sim.index_of(9);
        let (stale, restored) = (sim.index_of(10), sim.index_of(8));
        let removed_id = sim.nodes[removed].id();
        // Node 8's persisted state from before anything happened.
        let snapshot = sim.nodes[restored].state().clone();

        // Nodes 9 and 10 are cut off; on their side node 9 restarts twice
        // (its record reaching version 3, Up), while on the other side an
        // operator removes it (version 2, Left).
        sim.group[removed] = 1;
        sim.group[stale] = 1;
        for _ in 0..2 {
            sim.nodes[removed].restart(&mut Vec::new());
        }
        let operator = sim.rng.random_range(0..n - 2);
        sim.nodes[operator]
            .set_status(removed_id, MemberStatus::Left, &mut Vec::new())
            .expect("known");
        // Until both sides have settled: the cut-off pair finds each other
        // only when one picks the other (1 in 9 per tick).
        let settled = |sim: &Sim| {
            sim.nodes[stale].version_of(removed_id) == Some(3)
                && sim.nodes[..n - 2]
                    .iter()
                    .all(|node| node.status_of(removed_id) == Some(MemberStatus::Left))
        };
        while !settled(&sim) {
            assert!(sim.round < 500, "the partitioned sides settle");
            sim.step();
        }
        assert_eq!(sim.nodes[stale].record(removed_id).map(|r| r.version), Some(3));
        assert_eq!(sim.nodes[stale].status_of(removed_id), Some(MemberStatus::Up));

        // Node 8 crashes and comes back from its stale snapshot; the
        // partition heals.
        let mut node = Gossip::from_state(member(8), snapshot, Vec::new(), options())
            .expect("a valid snapshot");
        node.restart(&mut Vec::new());
        sim.nodes[restored] = node;
        sim.group.iter_mut().for_each(|group| *group = 0);

        let mut left: Vec<bool> = vec![false; sim.nodes.len()];
        let check = |sim: &Sim, left: &mut Vec<bool>| {
            for (index, node) in sim.nodes.iter().enumerate() {
                let is_left = node.status_of(removed_id) == Some(MemberStatus::Left);
                assert!(is_left || !left[index], "node {index} undid the Left record");
                left[index] |= is_left;
            }
        };
        for _ in 0..rounds_bound(n) + 10 {
            check(&sim, &mut left);
            sim.step();
        }
        check(&sim, &mut left);
        assert!(sim.converged());
        assert!(left.iter().all(|&left| left), "everyone, node 9 included, knows it left");
        assert_eq!(sim.nodes[removed].record(removed_id).map(|r| r.version), Some(2));
        // Nobody gossips with it any more, and it cannot come back.
        let mut out = Vec::new();
        assert!(sim.nodes[removed].set_status(removed_id, MemberStatus::Up, &mut out).is_err());
    });
}

/// A membership change in the scenario below.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// A new node joins, knowing only the address of the node at this index.
    Join { seed: usize },
    /// An operator at the node at index `at` marks node `id` `Leaving`.
    Leave { id: NodeId, at: usize },
}

#[test]
fn joins_and_a_leave_install_a_ring_only_once_every_gainer_has_pulled() {
    for_seeds(200, |seed| {
        let n = 8;
        let mut sim = Sim::cluster_from(seed, n, cluster_state_of(n, 256));
        sim.simulate_pulls(4);
        sim.loss = 0.1;
        // Two joins via one seed each and one leave, each in one of the
        // first few rounds.
        let leaving = sim.rng.random_range(1..=n as NodeId);
        let mut changes: Vec<(u64, Change)> = Vec::new();
        for _ in 0..2 {
            let seed = sim.rng.random_range(0..n);
            changes.push((sim.rng.random_range(0..4), Change::Join { seed }));
        }
        let at = sim.rng.random_range(0..n);
        changes.push((sim.rng.random_range(0..4), Change::Leave { id: leaving, at }));
        changes.sort_by_key(|&(round, _)| round);

        let mut joiners = Vec::new();
        let mut changes = changes.into_iter().peekable();
        let quiet = |sim: &Sim| {
            sim.converged()
                && (0..sim.nodes.len())
                    .filter(|&i| sim.live[i])
                    .all(|i| sim.nodes[i].next_ring().is_none())
        };
        loop {
            while let Some((_, change)) = changes.next_if(|&(round, _)| round <= sim.round) {
                match change {
                    Change::Join { seed } => joiners.push(join_via(&mut sim, seed)),
                    Change::Leave { id, at } => {
                        let mut out = Vec::new();
                        sim.nodes[at]
                            .set_status(id, MemberStatus::Leaving, &mut out)
                            .expect("known");
                        let mut queue = VecDeque::new();
                        sim.absorb(at, out, &mut queue);
                        assert!(queue.is_empty(), "a status change sends nothing by itself");
                    }
                }
            }
            if changes.peek().is_none() && quiet(&sim) {
                break;
            }
            assert!(sim.round < 200, "not quiet after 200 rounds");
            sim.step();
        }

        let expected: Vec<NodeId> = (1..=n as NodeId + 2).filter(|&id| id != leaving).collect();
        let first = &sim.nodes[0];
        let ring = first.ring().expect("a ring");
        let ids: Vec<NodeId> = ring.members().iter().map(|member| member.id).collect();
        assert_eq!(ids, expected);
        assert!(ring.version() >= 2);
        for node in &sim.nodes {
            assert_eq!(node.fingerprint(), first.fingerprint(), "node {}", node.id());
            assert_eq!(node.ring().as_deref(), Some(&*ring));
            assert!(node.next_ring().is_none());
            for &joiner in &joiners {
                let id = sim.nodes[joiner].id();
                assert_eq!(node.status_of(id), Some(MemberStatus::Up), "{id} at {}", node.id());
            }
            // Whether it has handed everything away is the driver's call.
            assert_eq!(node.status_of(leaving), Some(MemberStatus::Leaving));
        }
        let pulls = sim.pulls.as_ref().expect("pulls simulated");
        assert!(pulls.installs >= sim.nodes.len() as u64, "every node made the ring current");
        if seed == 0 {
            eprintln!(
                "quiet after {} rounds; {} installs; {} proposals at node 1",
                sim.round,
                pulls.installs,
                first.stats().rings_proposed
            );
        }
    });
}

/// A random state over a few ids, with few versions, statuses and field
/// values (readiness included), so that ties of every kind are common, and
/// a random pending ring.
fn random_state(rng: &mut ChaCha8Rng, rings: &[RingState]) -> GossipState {
    let mut records = Vec::new();
    for id in 1..=6 {
        if rng.random_bool(0.4) {
            continue;
        }
        let member = Member {
            id,
            addr: ["a:1", "b:1"][rng.random_range(0..2)].to_string(),
            weight: rng.random_range(1..=2),
            zone: ["", "z"][rng.random_range(0..2)].to_string(),
        };
        let status = MemberStatus::ALL[rng.random_range(0..4)];
        let record = MemberRecord::new(member, status, rng.random_range(0..3));
        records.push(MemberRecord { ready: rng.random_range(0..2), ..record });
    }
    let ring = rings[rng.random_range(0..rings.len())].clone();
    let mut state = GossipState::new(records, ring).expect("a valid random state");
    state.merge_next(&rings[rng.random_range(0..rings.len())]);
    state
}

/// The empty ring and a few rings, some of equal versions.
fn ring_pool() -> Vec<RingState> {
    let members = |ids: &[NodeId]| ids.iter().map(|&id| member(id)).collect::<Vec<_>>();
    let mut pool = vec![RingState::default()];
    for version in 1..=3 {
        for ids in [&[1, 2][..], &[1, 2, 3], &[2, 4]] {
            pool.push(Ring::new(8, members(ids), version).expect("valid").state());
        }
    }
    pool
}

/// Every record, the ring and the pending ring of `state` are at least as
/// new as `other`'s.
fn assert_dominates(state: &GossipState, other: &GossipState) {
    for record in &other.members {
        let ours = state.record(record.id()).expect("no record is lost");
        assert!(ours.precedence(record).is_ge(), "record {}", record.id());
    }
    assert!(ring_precedence(&state.ring, &other.ring).is_ge());
    assert!(ring_precedence(&state.next, &other.next).is_ge());
}

fn merged(a: &GossipState, b: &GossipState) -> GossipState {
    let mut a = a.clone();
    a.merge(b);
    a
}

#[test]
fn merge_is_commutative_associative_and_idempotent() {
    let rings = ring_pool();
    for_seeds(500, |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = random_state(&mut rng, &rings);
        let b = random_state(&mut rng, &rings);
        let c = random_state(&mut rng, &rings);
        assert_eq!(merged(&a, &b), merged(&b, &a), "commutative");
        assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)), "associative");
        assert_eq!(merged(&a, &a), a, "idempotent");
        assert_eq!(merged(&merged(&a, &b), &b), merged(&a, &b), "absorbs what it merged");
        let ab = merged(&a, &b);
        assert_eq!(ab.validate(), Ok(()));
        // Each record is the winner of the two (or the only one).
        for record in &ab.members {
            for side in [&a, &b] {
                if let Some(other) = side.record(record.id()) {
                    assert!(record.precedence(other).is_ge());
                }
            }
        }
        assert_eq!(
            ab.members.len(),
            (1..=6).filter(|&id| a.record(id).is_some() || b.record(id).is_some()).count()
        );
        // Equal states, equal fingerprints; and the other way round here.
        assert_eq!(merged(&a, &b).fingerprint(), merged(&b, &a).fingerprint());
        if a != b {
            assert_ne!(a.fingerprint(), b.fingerprint());
        }
    });
}

#[test]
fn one_exchange_leaves_both_nodes_with_the_merge() {
    let rings = ring_pool();
    for_seeds(300, |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (a, b) = (random_state(&mut rng, &rings), random_state(&mut rng, &rings));
        let (me_a, me_b) = (member(100), member(101));
        let mut node_a =
            Gossip::from_state(me_a, a, vec![me_b.addr.clone()], options()).expect("valid");
        let mut node_b = Gossip::from_state(me_b, b, Vec::new(), options()).expect("valid");
        let expected = merged(node_a.state(), node_b.state());

        // Whatever peer `a` picks, its exchange is delivered to `b`.
        let mut out = Vec::new();
        node_a.tick(Duration::ZERO, &mut rng, &mut out);
        let mut to_b: Vec<GossipMessage> = sends(0, out).into_iter().map(|(_, _, m)| m).collect();
        assert_eq!(to_b.len(), 1, "a digest");
        let mut steps = 0;
        while !to_b.is_empty() {
            steps += 1;
            let mut out = Vec::new();
            to_b.drain(..).for_each(|message| node_b.handle(message, &mut out));
            let mut back = Vec::new();
            for (_, _, message) in sends(1, out) {
                node_a.handle(message, &mut back);
            }
            to_b = sends(0, back).into_iter().map(|(_, _, m)| m).collect();
        }
        assert!(steps <= 2, "digest, reply, push at most");
        // Both hold the same state, at least as new as everything either
        // held. Not always exactly the merge: each node reconciles what it
        // learns as it learns it (proposing rings, installing them), so the
        // state can move past the merge, the same way at both.
        assert_eq!(node_a.state(), node_b.state());
        assert_dominates(node_a.state(), &expected);
        // The records are exactly the merge's: reconciling changes a
        // record only to mark its own node `Up` once a ring with it is
        // installed, and here nobody reports ready for one (100 and 101
        // are in no ring of the pool, so any proposal makes them gainers).
        assert_eq!(node_a.state().members, expected.members);
    });
}
