//! How many gossip rounds a change takes to reach every node, by cluster
//! size: a table of the mean, median and largest count over 20 seeds, next
//! to log2(n).
//!
//! ```text
//! cargo run --release -p holdfast-engine --example gossip_convergence
//! ```
//!
//! A round is one gossip interval: every live node ticks once, in a random
//! order, then messages flow until the network is quiet (so each exchange
//! completes within its round, as when the interval is much longer than a
//! round trip). The same round model as `engine/tests/gossip_sim.rs`,
//! which asserts bounds on these numbers; this only measures. Three
//! scenarios, each from a cluster where every node starts with the same
//! state:
//!
//! - ring: one node adopts a new ring version;
//! - join: a new node arrives knowing only one seed's address (converged
//!   when it knows everyone, everyone knows it, and all hold the pending
//!   ring that adds it: nobody pulls here, so it is never installed);
//! - ring, lossy: as ring, with 10% of messages lost and a tenth of the
//!   nodes crashed (still picked as peers; excluded from the check).

#![allow(clippy::print_stdout)] // An example's output is its report.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use holdfast_engine::cluster::gossip::{Gossip, GossipAction, GossipMessage, GossipOptions, Peer};
use holdfast_net::membership::{GossipState, MemberRecord, MemberStatus};
use holdfast_net::ring::{Member, NodeId, Ring};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZES: [usize; 7] = [3, 5, 10, 25, 50, 100, 200];
const SEEDS: u64 = 20;
const INTERVAL: Duration = Duration::from_secs(1);
const ROUNDS_MAX: u64 = 1000;

#[derive(Clone, Copy)]
enum Scenario {
    Ring,
    Join,
    RingLossy,
}

fn member(id: NodeId) -> Member {
    Member { id, addr: format!("node-{id}:7070"), weight: 1, zone: String::new() }
}

struct Sim {
    rng: ChaCha8Rng,
    nodes: Vec<Gossip>,
    live: Vec<bool>,
    by_addr: BTreeMap<String, usize>,
    loss: f64,
}

impl Sim {
    fn cluster(seed: u64, n: usize) -> Sim {
        let members: Vec<Member> = (1..=n as NodeId).map(member).collect();
        let ring = Ring::new(1024, members.clone(), 1).expect("a valid ring").state();
        let records =
            members.iter().map(|m| MemberRecord::new(m.clone(), MemberStatus::Up, 1)).collect();
        let state = GossipState::new(records, ring).expect("a valid state");
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            live: Vec::new(),
            by_addr: BTreeMap::new(),
            loss: 0.0,
        };
        for m in members {
            let options = GossipOptions { interval: INTERVAL, ..GossipOptions::default() };
            sim.add(Gossip::from_state(m, state.clone(), Vec::new(), options).expect("valid"));
        }
        sim
    }

    fn add(&mut self, node: Gossip) {
        self.by_addr.insert(node.me().addr.clone(), self.nodes.len());
        self.nodes.push(node);
        self.live.push(true);
    }

    fn step(&mut self, round: u64) {
        let now = INTERVAL * u32::try_from(round).expect("few rounds");
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.live[i]).collect();
        order.shuffle(&mut self.rng);
        let mut queue = VecDeque::new();
        for index in order {
            let mut out = Vec::new();
            self.nodes[index].tick(now, &mut self.rng, &mut out);
            queue.extend(sends(out));
        }
        while let Some((to, message)) = queue.pop_front() {
            let (Peer::Node { addr, .. } | Peer::Seed { addr }) = &to;
            let Some(&to) = self.by_addr.get(addr) else { continue };
            if self.rng.random_bool(self.loss) || !self.live[to] {
                continue;
            }
            let mut out = Vec::new();
            self.nodes[to].handle(message, &mut out);
            queue.extend(sends(out));
        }
    }

    fn converged(&self) -> bool {
        let mut fingerprints =
            (0..self.nodes.len()).filter(|&i| self.live[i]).map(|i| self.nodes[i].fingerprint());
        let first = fingerprints.next();
        fingerprints.all(|fingerprint| Some(fingerprint) == first)
    }
}

fn sends(out: Vec<GossipAction>) -> impl Iterator<Item = (Peer, GossipMessage)> {
    out.into_iter().filter_map(|action| match action {
        GossipAction::Send { to, message } => Some((to, message)),
        GossipAction::RingChanged(_)
        | GossipAction::NextChanged(_)
        | GossipAction::MembersChanged { .. } => None,
    })
}

/// Rounds until every live node holds the same state again.
fn rounds(scenario: Scenario, n: usize, seed: u64) -> u64 {
    let mut sim = Sim::cluster(seed ^ ((n as u64) << 32), n);
    let origin = sim.rng.random_range(0..n);
    match scenario {
        Scenario::Ring | Scenario::RingLossy => {
            if let Scenario::RingLossy = scenario {
                sim.loss = 0.1;
                let mut others: Vec<usize> = (0..n).filter(|&i| i != origin).collect();
                others.shuffle(&mut sim.rng);
                for &crashed in &others[..(n / 10).max(1).min(n - 2)] {
                    sim.live[crashed] = false;
                }
            }
            let node = &mut sim.nodes[origin];
            let ring = node.ring().expect("a ring");
            let next = ring.rebalance(ring.members().to_vec()).expect("a rebalance");
            node.propose_ring(next.state(), &mut Vec::new()).expect("a newer ring");
        }
        Scenario::Join => {
            let seeds = vec![sim.nodes[origin].me().addr.clone()];
            let options = GossipOptions { interval: INTERVAL, ..GossipOptions::default() };
            sim.add(Gossip::new(member(n as NodeId + 1), seeds, options));
        }
    }
    let mut round = 0;
    while !sim.converged() {
        assert!(round < ROUNDS_MAX, "no convergence in {ROUNDS_MAX} rounds");
        sim.step(round);
        round += 1;
    }
    round
}

/// (mean, median, max) of the rounds over every seed.
fn summary(scenario: Scenario, n: usize) -> (f64, u64, u64) {
    let mut all: Vec<u64> = (0..SEEDS).map(|seed| rounds(scenario, n, seed)).collect();
    all.sort_unstable();
    let mean = all.iter().sum::<u64>() as f64 / all.len() as f64;
    (mean, all[all.len() / 2], all[all.len() - 1])
}

fn main() {
    println!("rounds to converge over {SEEDS} seeds (mean / p50 / max)");
    println!();
    println!(
        "{:>5} {:>7} | {:^17} | {:^17} | {:^17}",
        "n", "log2 n", "ring", "join", "ring, lossy"
    );
    println!("{:-<5} {:-<7} | {:-<17} | {:-<17} | {:-<17}", "", "", "", "", "");
    for n in SIZES {
        let cells: Vec<String> = [Scenario::Ring, Scenario::Join, Scenario::RingLossy]
            .into_iter()
            .map(|scenario| {
                let (mean, p50, max) = summary(scenario, n);
                format!("{mean:>5.2} / {p50:>3} / {max:>3}")
            })
            .collect();
        println!("{n:>5} {:>7.2} | {} | {} | {}", (n as f64).log2(), cells[0], cells[1], cells[2]);
    }
    println!();
    println!("lossy: 10% of messages lost and a tenth of the nodes (at least one) crashed");
}
