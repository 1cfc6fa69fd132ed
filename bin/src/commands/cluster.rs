//! `holdfast status` and `holdfast inspect`: what the cluster looks like
//! from one node, for operators and tests.
//!
//! - `status` asks one node for its ring (`RingRequest`) and prints it: the
//!   answering node, the ring's version and partition count, N, R and W,
//!   then every member with its address, zone, weight, the partitions it
//!   owns, and whether it answers a ping now. Each member is pinged from
//!   here, on its own thread with a short timeout, so a dead member costs
//!   [`PING_TIMEOUT`] once, not once per member. Each member that answers
//!   is asked for its counters (`StatsRequest`): its hints, its membership
//!   status, the ring it routes by and the pending one, and how far its
//!   ownership transfers got (partitions still to pull, keys and bytes
//!   pulled, handed off, removed). Members the answering node's gossip
//!   knows outside the ring (joining, leaving, left) follow. With `--key`,
//!   the key's partition and preference list as that ring places them.
//! - `inspect` asks one node for its own replica of a key
//!   (`InspectRequest`): no coordination, no quorum, no read repair, so two
//!   nodes may show different sets, which is the point: it shows whether
//!   the replicas have converged.
//!
//! Both only read. What they print is built as a plain value first
//! ([`StatusReport`], [`InspectReport`]) and then rendered as lines or as
//! one JSON object, so the two forms always say the same thing.
//!
//! # Formats
//!
//! A node id is 16 hex digits. A dot is `NODE.INCARNATION:COUNTER` (the
//! actor's node id in hex), a clock is its entries in the same form,
//! comma-separated in brackets. Values are shown as UTF-8, invalid bytes
//! replaced (`U+FFFD`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use holdfast_net::client::{Client, ClientOptions, Inspected, RingInfo};
use holdfast_net::membership::MemberStatus as Membership;
use holdfast_net::message::{MemberSummary, NEVER, STATUS_UNKNOWN, StatsReply};
use holdfast_net::ring::{NodeId, Ring};
use holdfast_net::{Actor, Dot, SiblingSet, VersionVector};
use serde_json::{Value, json};

use super::Outcome;

/// How long a member may take to accept a connection and answer a ping
/// before `status` calls it down.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// How long `status` and `inspect` wait for the node they ask.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node to ask.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: String,
    /// Also print this key's partition and preference list.
    #[arg(long)]
    pub key: Option<String>,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub key: String,
    /// The node whose replica to read (`--addr` is accepted too, as for
    /// every other command).
    #[arg(long, visible_alias = "addr")]
    pub node: String,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Whether a member answered a ping when `status` asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Up,
    Down,
}

impl Liveness {
    fn as_str(self) -> &'static str {
        match self {
            Liveness::Up => "up",
            Liveness::Down => "down",
        }
    }
}

/// What `status` learned of a member: whether it answered, and its
/// counters if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub liveness: Liveness,
    pub stats: Option<StatsReply>,
}

impl From<Liveness> for Probe {
    fn from(liveness: Liveness) -> Probe {
        Probe { liveness, stats: None }
    }
}

/// One member as `status` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    /// Empty: a zone of its own.
    pub zone: String,
    pub weight: u32,
    pub partitions_owned: u32,
    pub liveness: Liveness,
    /// Its hints and the peers it believes down, if it answered.
    pub stats: Option<StatsReply>,
}

/// A key's placement in the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlacement {
    pub key: String,
    pub partition: u32,
    /// The preference list, in order: id and address.
    pub replicas: Vec<(NodeId, String)>,
}

/// What `status` found: the ring as one node sees it, or that it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The node that answered.
    pub node: NodeId,
    pub n: u8,
    pub r: u8,
    pub w: u8,
    /// `None` while the node has not formed its ring (it waits for seeds).
    pub ring: Option<RingStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStatus {
    pub version: u64,
    pub partitions: u32,
    /// Sorted by id, as the ring keeps them.
    pub members: Vec<MemberStatus>,
    pub key: Option<KeyPlacement>,
    /// Members the answering node's gossip knows that are not in the ring
    /// (joining, leaving or left), sorted by id.
    pub outside: Vec<OutsideMember>,
}

/// A member gossip knows that the ring does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideMember {
    pub id: NodeId,
    pub addr: String,
    /// Its status as the answering node's gossip holds it (a wire value).
    pub status: u8,
    pub liveness: Liveness,
    pub stats: Option<StatsReply>,
}

/// A membership status wire value as words.
pub fn status_name(status: u8) -> String {
    match Membership::from_u8(status) {
        Some(status) => format!("{status:?}"),
        None if status == STATUS_UNKNOWN => "none (no gossip yet)".into(),
        None => format!("unknown ({status})"),
    }
}

impl StatusReport {
    /// The report for a node's answer, with each member's liveness from
    /// `liveness` (called once per member address) and, if given, `key`'s
    /// placement.
    pub fn new(
        info: &RingInfo,
        key: Option<&str>,
        gossip: &[MemberSummary],
        liveness: impl Fn(&[&str]) -> Vec<Probe>,
    ) -> StatusReport {
        let ring = info.ring.as_ref().map(|ring| {
            let outside: Vec<&MemberSummary> =
                gossip.iter().filter(|member| !ring.contains(member.id)).collect();
            let addrs: Vec<&str> = ring
                .members()
                .iter()
                .map(|m| m.addr.as_str())
                .chain(outside.iter().map(|m| m.addr.as_str()))
                .collect();
            let mut alive = liveness(&addrs);
            assert_eq!(alive.len(), addrs.len(), "one liveness per member");
            let outside_alive = alive.split_off(ring.members().len());
            let outside = outside
                .into_iter()
                .zip(outside_alive)
                .map(|(member, probe)| OutsideMember {
                    id: member.id,
                    addr: member.addr.clone(),
                    status: member.status,
                    liveness: probe.liveness,
                    stats: probe.stats,
                })
                .collect();
            let members = ring
                .members()
                .iter()
                .zip(alive)
                .map(|(member, probe)| MemberStatus {
                    id: member.id,
                    addr: member.addr.clone(),
                    zone: member.zone.clone(),
                    weight: member.weight,
                    partitions_owned: u32::try_from(ring.partitions_of(member.id).len())
                        .expect("a ring has at most 2^16 partitions"),
                    liveness: probe.liveness,
                    stats: probe.stats,
                })
                .collect();
            RingStatus {
                version: ring.version(),
                partitions: ring.partitions(),
                members,
                key: key.map(|key| placement(ring, key, info.n)),
                outside,
            }
        });
        StatusReport { node: info.node, n: info.n, r: info.r, w: info.w, ring }
    }

    /// The report as lines, each ending in a newline.
    pub fn to_text(&self) -> String {
        let mut out = format!("node {}\n", node_hex(self.node));
        let Some(ring) = &self.ring else {
            out.push_str(
                "no ring yet: the node has not formed its ring (it is waiting for its seeds)\n",
            );
            return out;
        };
        out.push_str(&format!(
            "ring version {}  partitions {}  n {}  r {}  w {}\n",
            ring.version, ring.partitions, self.n, self.r, self.w
        ));
        let addr_width = ring.members.iter().map(|m| m.addr.len()).max().unwrap_or(0);
        let zone_width = ring.members.iter().map(|m| zone_text(&m.zone).len()).max().unwrap_or(0);
        for member in &ring.members {
            let this = if member.id == self.node { "  (this node)" } else { "" };
            out.push_str(&format!(
                "member {}  {:addr_width$}  zone {:zone_width$}  weight {}  partitions {} ({})  \
                 {}{this}\n",
                node_hex(member.id),
                member.addr,
                zone_text(&member.zone),
                member.weight,
                member.partitions_owned,
                percent(member.partitions_owned, ring.partitions),
                member.liveness.as_str(),
            ));
            if let Some(stats) = &member.stats {
                out.push_str(&stats_text(stats));
            }
        }
        for member in &ring.outside {
            out.push_str(&format!(
                "outside the ring {}  {}  {}  {}\n",
                node_hex(member.id),
                member.addr,
                status_name(member.status),
                member.liveness.as_str(),
            ));
            if let Some(stats) = &member.stats {
                out.push_str(&stats_text(stats));
            }
        }
        if let Some(key) = &ring.key {
            out.push_str(&format!("key {}  partition {}\n", key.key, key.partition));
            for (rank, (id, addr)) in key.replicas.iter().enumerate() {
                out.push_str(&format!("replica {}  {}  {addr}\n", rank + 1, node_hex(*id)));
            }
        }
        out
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let ring = self.ring.as_ref().map(|ring| {
            let members: Vec<Value> = ring
                .members
                .iter()
                .map(|member| {
                    json!({
                        "id": node_hex(member.id),
                        "addr": member.addr,
                        "zone": member.zone,
                        "weight": member.weight,
                        "partitions": member.partitions_owned,
                        "share": f64::from(member.partitions_owned) / f64::from(ring.partitions),
                        "state": member.liveness.as_str(),
                        "hinted_keys": member.stats.as_ref().map(|s| s.hinted_keys),
                        "hints_waiting": member.stats.as_ref().map(|s| s.hints_waiting),
                        "hints_delivered": member.stats.as_ref().map(|s| s.hints_delivered),
                        "believes_down": member.stats.as_ref().map(|s| {
                            s.down.iter().map(|id| node_hex(*id)).collect::<Vec<_>>()
                        }),
                        "membership": member.stats.as_ref().map(stats_json),
                    })
                })
                .collect();
            let outside: Vec<Value> = ring
                .outside
                .iter()
                .map(|member| {
                    json!({
                        "id": node_hex(member.id),
                        "addr": member.addr,
                        "status": status_name(member.status),
                        "state": member.liveness.as_str(),
                        "membership": member.stats.as_ref().map(stats_json),
                    })
                })
                .collect();
            let key = ring.key.as_ref().map(|key| {
                let replicas: Vec<Value> = key
                    .replicas
                    .iter()
                    .map(|(id, addr)| json!({ "id": node_hex(*id), "addr": addr }))
                    .collect();
                json!({ "key": key.key, "partition": key.partition, "replicas": replicas })
            });
            json!({
                "version": ring.version,
                "partitions": ring.partitions,
                "members": members,
                "outside": outside,
                "key": key,
            })
        });
        json!({
            "node": node_hex(self.node),
            "formed": self.ring.is_some(),
            "n": self.n,
            "r": self.r,
            "w": self.w,
            "ring": ring,
        })
    }
}

/// A member's counters as lines, each ending in a newline: hints, then
/// membership and transfers.
fn stats_text(stats: &StatsReply) -> String {
    let down: Vec<String> = stats.down.iter().map(|id| node_hex(*id)).collect();
    let mut out = format!(
        "  hints {} keys held ({} waiting for a down owner), {} delivered  believes down: {}\n",
        stats.hinted_keys,
        stats.hints_waiting,
        stats.hints_delivered,
        if down.is_empty() { "none".to_string() } else { down.join(", ") },
    );
    let pending = match stats.next_version {
        0 => "none".to_string(),
        version => version.to_string(),
    };
    out.push_str(&format!(
        "  membership {}  ring {}  pending {pending}  data partitions {}\n",
        status_name(stats.status),
        stats.ring_version,
        stats.data_partitions,
    ));
    out.push_str(&format!(
        "  transfers: {} partitions to pull; pulled {} partitions, {} keys ({}); handed off {} \
         keys ({}); removed {} keys; {} partitions waiting to hand off\n",
        stats.transfers_waiting,
        stats.partitions_pulled,
        stats.keys_pulled,
        super::human_bytes(stats.bytes_pulled),
        stats.keys_handed_off,
        super::human_bytes(stats.bytes_handed_off),
        stats.keys_removed,
        stats.partitions_waiting,
    ));
    out.push_str(&format!(
        "  anti-entropy: last full round {}; {} rounds; {} keys repaired; {} trees building; {} \
         exchanges ({} skipped), received {}, sent {}; {} tombstones reaped\n",
        last_round(stats.anti_entropy_last_round_ms),
        stats.anti_entropy_rounds,
        stats.anti_entropy_keys_repaired,
        stats.trees_building,
        stats.anti_entropy_exchanges,
        stats.anti_entropy_skipped,
        super::human_bytes(stats.anti_entropy_bytes_received),
        super::human_bytes(stats.anti_entropy_bytes_sent),
        stats.tombstones_reaped,
    ));
    out
}

/// When a node's last full anti-entropy round ended, as `status` says it.
fn last_round(ms_ago: u64) -> String {
    match ms_ago {
        NEVER => "never".to_string(),
        ms if ms < 1000 => format!("{ms} ms ago"),
        ms if ms < 120_000 => format!("{:.1} s ago", ms as f64 / 1000.0),
        ms => format!("{} min ago", ms / 60_000),
    }
}

/// A member's membership and transfer counters as JSON.
fn stats_json(stats: &StatsReply) -> Value {
    json!({
        "status": status_name(stats.status),
        "ring_version": stats.ring_version,
        "next_version": (stats.next_version != 0).then_some(stats.next_version),
        "transfers_waiting": stats.transfers_waiting,
        "partitions_pulled": stats.partitions_pulled,
        "keys_pulled": stats.keys_pulled,
        "bytes_pulled": stats.bytes_pulled,
        "keys_handed_off": stats.keys_handed_off,
        "bytes_handed_off": stats.bytes_handed_off,
        "keys_removed": stats.keys_removed,
        "partitions_waiting": stats.partitions_waiting,
        "data_partitions": stats.data_partitions,
        "anti_entropy": {
            "last_round_ms_ago": (stats.anti_entropy_last_round_ms != NEVER)
                .then_some(stats.anti_entropy_last_round_ms),
            "rounds": stats.anti_entropy_rounds,
            "keys_repaired": stats.anti_entropy_keys_repaired,
            "trees_building": stats.trees_building,
            "exchanges": stats.anti_entropy_exchanges,
            "skipped": stats.anti_entropy_skipped,
            "bytes_received": stats.anti_entropy_bytes_received,
            "bytes_sent": stats.anti_entropy_bytes_sent,
            "tombstones_reaped": stats.tombstones_reaped,
        },
    })
}

/// `key`'s partition and its first `n` replicas in `ring`.
fn placement(ring: &Ring, key: &str, n: u8) -> KeyPlacement {
    let partition = ring.partition_of(key.as_bytes());
    let replicas = ring
        .preference_list(partition, usize::from(n))
        .into_iter()
        .map(|id| {
            let addr = ring.member(id).map(|member| member.addr.clone()).unwrap_or_default();
            (id, addr)
        })
        .collect();
    KeyPlacement { key: key.to_owned(), partition, replicas }
}

/// What `inspect` found: one node's replica of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    pub key: String,
    pub node: NodeId,
    pub partition: u32,
    /// Whether the node is in the key's preference list.
    pub replica: bool,
    pub set: SiblingSet,
}

impl InspectReport {
    pub fn new(key: &str, inspected: Inspected) -> InspectReport {
        InspectReport {
            key: key.to_owned(),
            node: inspected.node,
            partition: inspected.partition,
            replica: inspected.replica,
            set: inspected.set,
        }
    }

    /// The report as lines, each ending in a newline.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "node {}  key {}  partition {}  replica {}\n",
            node_hex(self.node),
            self.key,
            self.partition,
            if self.replica { "yes" } else { "no" }
        );
        if self.set.is_empty() {
            out.push_str("(nothing)\n");
        }
        for version in self.set.iter() {
            let value = match &version.value {
                Some(value) => format!("value {}", String::from_utf8_lossy(value)),
                None => "tombstone".to_owned(),
            };
            out.push_str(&format!(
                "version {}  clock {}  {value}\n",
                dot_text(version.dot),
                clock_text(&version.clock)
            ));
        }
        out
    }

    /// The report as one JSON object; `versions` in the set's canonical
    /// (dot) order, a tombstone's `value` null.
    pub fn to_json(&self) -> Value {
        let versions: Vec<Value> = self
            .set
            .iter()
            .map(|version| {
                let clock: Vec<String> =
                    version.clock.iter().map(|(actor, counter)| entry(actor, counter)).collect();
                json!({
                    "dot": dot_text(version.dot),
                    "clock": clock,
                    "value": version.value.as_ref().map(|v| String::from_utf8_lossy(v)),
                    "tombstone": version.is_tombstone(),
                })
            })
            .collect();
        json!({
            "node": node_hex(self.node),
            "key": self.key,
            "partition": self.partition,
            "replica": self.replica,
            "versions": versions,
        })
    }
}

pub fn node_hex(id: NodeId) -> String {
    format!("{id:016x}")
}

fn entry(actor: Actor, counter: u64) -> String {
    format!("{}.{}:{counter}", node_hex(actor.node), actor.incarnation)
}

fn dot_text(dot: Dot) -> String {
    entry(dot.actor(), dot.counter())
}

fn clock_text(clock: &VersionVector) -> String {
    let entries: Vec<String> = clock.iter().map(|(actor, counter)| entry(actor, counter)).collect();
    format!("[{}]", entries.join(", "))
}

fn zone_text(zone: &str) -> &str {
    if zone.is_empty() { "-" } else { zone }
}

/// `part` of `whole` as a percentage with one decimal: `342` of `1024` is
/// `33.4%`.
fn percent(part: u32, whole: u32) -> String {
    // Tenths of a percent, rounded half up, in integers: exact for every
    // partition count.
    let tenths = (u64::from(part) * 2000 + u64::from(whole)) / (2 * u64::from(whole.max(1)));
    format!("{}.{}%", tenths / 10, tenths % 10)
}

/// A client of the one node at `addr`, which waits at most `timeout`.
/// It does not route by the ring: every request here is about that node.
pub(crate) fn client(addr: &str, timeout: Duration) -> Result<Client> {
    let options = ClientOptions {
        timeout,
        connect_timeout: timeout,
        pool_size: 1,
        route_by_ring: false,
        ..ClientOptions::default()
    };
    Client::connect(&[addr], options).with_context(|| format!("connecting to {addr}"))
}

/// Whether something at `addr` accepts a connection and answers a ping
/// within [`PING_TIMEOUT`] each, and its counters.
fn ping(addr: &str) -> Probe {
    let resolved: Option<SocketAddr> = addr.to_socket_addrs().ok().and_then(|mut all| all.next());
    let Some(resolved) = resolved else { return Liveness::Down.into() };
    match client(&resolved.to_string(), PING_TIMEOUT) {
        Ok(client) if client.ping().is_ok() => {
            Probe { liveness: Liveness::Up, stats: client.stats().ok() }
        }
        _ => Liveness::Down.into(),
    }
}

/// Pings every address at once, one thread each (a ring has few members;
/// the threads only wait).
fn ping_all(addrs: &[&str]) -> Vec<Probe> {
    std::thread::scope(|scope| {
        let pings: Vec<_> = addrs.iter().map(|addr| scope.spawn(move || ping(addr))).collect();
        pings.into_iter().map(|ping| ping.join().unwrap_or(Liveness::Down.into())).collect()
    })
}

pub fn status(args: StatusArgs) -> Result<Outcome> {
    let client = client(&args.addr, REQUEST_TIMEOUT)?;
    let info = client.ring().with_context(|| format!("asking {} for its ring", args.addr))?;
    // The members its gossip knows (an older node answers without them).
    let gossip = client.stats().map(|stats| stats.members).unwrap_or_default();
    let report = StatusReport::new(&info, args.key.as_deref(), &gossip, ping_all);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.ring.is_none() {
        return Ok(Outcome::NoRing);
    }
    Ok(Outcome::Done)
}

pub fn inspect(args: InspectArgs) -> Result<Outcome> {
    if args.key.is_empty() {
        bail!("the key is empty");
    }
    let client = client(&args.node, REQUEST_TIMEOUT)?;
    let inspected = client
        .inspect(args.key.as_bytes())
        .with_context(|| format!("asking {} for its replica of {:?}", args.node, args.key))?;
    let report = InspectReport::new(&args.key, inspected);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use holdfast_net::ring::Member;
    use holdfast_net::siblings::Version;

    use super::*;

    fn member(id: u64, zone: &str) -> Member {
        Member { id, addr: format!("127.0.0.1:{}", 7070 + id), weight: 1, zone: zone.into() }
    }

    fn info(ring: Option<Ring>) -> RingInfo {
        RingInfo { node: 2, ring, n: 3, r: 2, w: 2 }
    }

    fn three_nodes() -> Ring {
        Ring::new(1024, vec![member(1, ""), member(2, "rack-b"), member(3, "")], 1).unwrap()
    }

    /// Member 3 is down; the others up.
    fn liveness(addrs: &[&str]) -> Vec<Probe> {
        addrs
            .iter()
            .map(|addr| if addr.ends_with(":7073") { Liveness::Down } else { Liveness::Up })
            .map(Probe::from)
            .collect()
    }

    #[test]
    fn percentages_keep_one_decimal_and_round_half_up() {
        assert_eq!(percent(342, 1024), "33.4%");
        assert_eq!(percent(341, 1024), "33.3%");
        assert_eq!(percent(1024, 1024), "100.0%");
        assert_eq!(percent(0, 1024), "0.0%");
        assert_eq!(percent(1, 2000), "0.1%");
    }

    #[test]
    fn status_lists_every_member_with_its_share_and_liveness() {
        let report = StatusReport::new(&info(Some(three_nodes())), None, &[], liveness);
        let text = report.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "node 0000000000000002");
        assert_eq!(lines[1], "ring version 1  partitions 1024  n 3  r 2  w 2");
        assert_eq!(
            lines[2],
            "member 0000000000000001  127.0.0.1:7071  zone -       weight 1  partitions 342 \
             (33.4%)  up"
        );
        assert!(
            lines[3].ends_with("zone rack-b  weight 1  partitions 341 (33.3%)  up  (this node)")
        );
        assert!(lines[4].ends_with("(33.3%)  down"), "{}", lines[4]);
        assert_eq!(lines.len(), 5);
        let owned: u32 = report.ring.unwrap().members.iter().map(|m| m.partitions_owned).sum();
        assert_eq!(owned, 1024);
    }

    #[test]
    fn status_with_a_key_prints_its_preference_list_in_order() {
        let ring = three_nodes();
        let partition = ring.partition_of(b"cart:alice");
        let expected = ring.preference_list(partition, 3);
        let report = StatusReport::new(&info(Some(ring)), Some("cart:alice"), &[], liveness);
        let text = report.to_text();
        assert!(text.contains(&format!("key cart:alice  partition {partition}\n")), "{text}");
        for (rank, id) in expected.iter().enumerate() {
            let line =
                format!("replica {}  {}  127.0.0.1:{}\n", rank + 1, node_hex(*id), 7070 + id);
            assert!(text.contains(&line), "no {line:?} in {text}");
        }
        let json = report.to_json();
        let replicas = json["ring"]["key"]["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 3);
        assert_eq!(replicas[0]["id"], node_hex(expected[0]));
        assert_eq!(json["ring"]["key"]["partition"], partition);
    }

    #[test]
    fn status_json_says_the_same_as_the_lines() {
        let json = StatusReport::new(&info(Some(three_nodes())), None, &[], liveness).to_json();
        assert_eq!(json["node"], "0000000000000002");
        assert_eq!(json["formed"], true);
        assert_eq!((json["n"].as_u64(), json["r"].as_u64()), (Some(3), Some(2)));
        assert_eq!(json["ring"]["partitions"], 1024);
        let members = json["ring"]["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0]["partitions"], 342);
        assert_eq!(members[1]["zone"], "rack-b");
        assert_eq!(members[2]["state"], "down");
        assert!(json["ring"]["key"].is_null());
    }

    #[test]
    fn status_shows_membership_transfers_and_members_outside_the_ring() {
        let leaving = MemberSummary {
            id: 9,
            addr: "127.0.0.1:7079".into(),
            status: Membership::Leaving.as_u8(),
            version: 4,
        };
        let stats = StatsReply {
            node: 9,
            status: Membership::Leaving.as_u8(),
            ring_version: 3,
            next_version: 4,
            transfers_waiting: 2,
            partitions_pulled: 5,
            keys_pulled: 700,
            bytes_pulled: 1536,
            keys_handed_off: 3,
            data_partitions: 6,
            anti_entropy_rounds: 2,
            anti_entropy_last_round_ms: 2500,
            anti_entropy_keys_repaired: 7,
            trees_building: 1,
            ..StatsReply::default()
        };
        let probes = |addrs: &[&str]| -> Vec<Probe> {
            addrs
                .iter()
                .map(|addr| match addr.ends_with(":7079") {
                    true => Probe { liveness: Liveness::Up, stats: Some(stats.clone()) },
                    false => Liveness::Up.into(),
                })
                .collect()
        };
        let ring = three_nodes();
        let in_ring =
            MemberSummary { id: 1, addr: ring.members()[0].addr.clone(), ..leaving.clone() };
        let report = StatusReport::new(&info(Some(ring)), None, &[in_ring, leaving], probes);
        let text = report.to_text();
        assert!(text.contains("outside the ring 0000000000000009  127.0.0.1:7079  Leaving  up\n"));
        assert!(text.contains("  membership Leaving  ring 3  pending 4  data partitions 6\n"));
        assert!(text.contains(
            "  transfers: 2 partitions to pull; pulled 5 partitions, 700 keys (1.5 KiB)"
        ));
        assert!(text.contains(
            "  anti-entropy: last full round 2.5 s ago; 2 rounds; 7 keys repaired; 1 trees building"
        ));
        assert_eq!(last_round(NEVER), "never");
        let json = report.to_json();
        let outside = &json["ring"]["outside"][0];
        assert_eq!(outside["membership"]["anti_entropy"]["keys_repaired"], 7);
        assert_eq!(outside["status"], "Leaving");
        assert_eq!(outside["membership"]["keys_pulled"], 700);
        assert_eq!(outside["membership"]["next_version"], 4);
        assert!(json["ring"]["members"][0]["membership"].is_null());
        assert_eq!(status_name(STATUS_UNKNOWN), "none (no gossip yet)");
    }

    #[test]
    fn a_node_without_a_ring_says_so() {
        let report = StatusReport::new(&info(None), Some("k"), &[], |_| panic!("nothing to ping"));
        assert!(report.ring.is_none());
        assert!(report.to_text().contains("has not formed its ring"), "{}", report.to_text());
        let json = report.to_json();
        assert_eq!(json["formed"], false);
        assert!(json["ring"].is_null());
    }

    #[test]
    fn inspect_prints_dots_clocks_values_and_tombstones() {
        let a = Actor::new(0xab, 0);
        let b = Actor::new(0xcd, 2);
        let mut set = SiblingSet::new();
        set.add(Version { dot: Dot::new(a, 1), clock: VersionVector::new(), value: None });
        let seen: VersionVector = [Dot::new(a, 1)].into_iter().collect();
        set.add(Version { dot: Dot::new(b, 3), clock: seen, value: Some(b"apples".to_vec()) });
        set.add(Version {
            dot: Dot::new(a, 2),
            clock: VersionVector::new(),
            value: Some(vec![0xff]),
        });
        let report =
            InspectReport { key: "k".into(), node: 0xab, partition: 7, replica: true, set };
        assert_eq!(
            report.to_text(),
            "node 00000000000000ab  key k  partition 7  replica yes\n\
             version 00000000000000ab.0:2  clock []  value \u{fffd}\n\
             version 00000000000000cd.2:3  clock [00000000000000ab.0:1]  value apples\n"
        );
        let json = report.to_json();
        let versions = json["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[1]["clock"][0], "00000000000000ab.0:1");
        assert_eq!(versions[1]["value"], "apples");
        assert_eq!(versions[1]["tombstone"], false);
    }

    #[test]
    fn inspect_of_nothing_says_nothing() {
        let report = InspectReport {
            key: "k".into(),
            node: 1,
            partition: 0,
            replica: false,
            set: SiblingSet::new(),
        };
        assert!(report.to_text().ends_with("replica no\n(nothing)\n"), "{}", report.to_text());
        assert_eq!(report.to_json()["versions"], json!([]));
        let mut set = SiblingSet::new();
        let dot = Dot::new(Actor::new(1, 0), 1);
        set.add(Version { dot, clock: VersionVector::new(), value: None });
        let report = InspectReport { set, ..report };
        assert!(report.to_text().ends_with("clock []  tombstone\n"), "{}", report.to_text());
        assert_eq!(report.to_json()["versions"][0]["value"], Value::Null);
    }
}
