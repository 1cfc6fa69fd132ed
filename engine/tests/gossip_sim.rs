//! Gossip over a simulated network, round by round, from one seed.
//!
//! A round is one gossip interval: every live node ticks once (in a random
//! order), then the messages those ticks start are delivered, and the
//! replies they cause, until the network is quiet, so an exchange (digest,
//! reply, push) completes within its round. The network loses each message
//! with a given probability, drops everything to or from a crashed node,
//! and delivers only within a partition group. Everything random comes
//! from one seeded ChaCha generator; `HOLDFAST_SEED=n` replays a failure.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use holdfast_engine::cluster::gossip::{Gossip, GossipAction, GossipMessage, GossipOptions, Peer};
use holdfast_net::membership::{GossipState, MemberRecord, MemberStatus};
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

fn options() -> GossipOptions {
    GossipOptions { interval: INTERVAL }
}

/// The state every node of a fresh `n`-node cluster starts from: nodes
/// `1..=n` up at version 1, and a ring over them at version 1.
fn cluster_state(n: usize) -> GossipState {
    let members: Vec<Member> = (1..=n as NodeId).map(member).collect();
    let ring = Ring::new(1024, members.clone(), 1).expect("a valid ring").state();
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
        }
    }

    /// An `n`-node cluster whose nodes all start from the same state.
    fn cluster(seed: u64, n: usize) -> Sim {
        let mut sim = Sim::new(seed);
        let state = cluster_state(n);
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
        self.nodes.push(node);
        self.live.push(true);
        self.group.push(0);
        index
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|node| node.id() == id).expect("a node of the simulation")
    }

    fn now(&self) -> Duration {
        INTERVAL * u32::try_from(self.round).expect("few rounds")
    }

    /// One round: every live node ticks, then messages flow until quiet.
    fn step(&mut self) {
        let now = self.now();
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.live[i]).collect();
        order.shuffle(&mut self.rng);
        let mut queue = VecDeque::new();
        for index in order {
            let mut out = Vec::new();
            self.nodes[index].tick(now, &mut self.rng, &mut out);
            queue.extend(sends(index, out));
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
            queue.extend(sends(to, out));
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
            GossipAction::RingChanged(_) | GossipAction::MembersChanged { .. } => None,
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

/// A random state over a few ids, with few versions, statuses and field
/// values, so that ties of every kind are common.
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
        records.push(MemberRecord::new(member, status, rng.random_range(0..3)));
    }
    let ring = rings[rng.random_range(0..rings.len())].clone();
    GossipState::new(records, ring).expect("a valid random state")
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
        assert_eq!(node_a.state(), &expected);
        assert_eq!(node_b.state(), &expected);
    });
}
