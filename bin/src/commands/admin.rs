//! `holdfast admin leave | remove`: an operator's membership changes.
//!
//! Both send one `ADMIN` request to one node (`--addr`), which makes the
//! change in its gossip on the target's behalf; gossip spreads it to every
//! node, and the nodes move the ring (see the engine's `cluster::gossip`).
//!
//! - `leave [--node ID]`: the node (by default the one asked) becomes
//!   `Leaving`. A ring without it is proposed, the nodes that gain its
//!   partitions pull them, the ring is installed once they are ready, and
//!   the leaving node hands off what it still holds and marks itself
//!   `Left`. It keeps running, idle, until it is stopped.
//! - `remove ID`: a node that is dead (or must never come back) becomes
//!   `Left` at once; its partitions are re-replicated from the surviving
//!   replicas. A node that answers pings is warned about (it should leave
//!   instead), but removed all the same: the operator asked.
//!
//! - `repair [--partition P] [--addr ADDR]`: the node runs anti-entropy
//!   now, for one partition it replicates or for every one, and the
//!   command prints what it compared and repaired (`--node` is accepted
//!   for `--addr` here: the node that runs it).
//!
//! There is no `admin join`: a node joins by starting with
//! `holdfast serve --join --seeds ADDR` (any node of the cluster).
//!
//! A node id is the 16 hex digits `holdfast status` prints (a `0x` prefix
//! is accepted).

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand};
use holdfast_net::client::{AdminOutcome, Client, ClientOptions};
use holdfast_net::message::RepairReply;
use holdfast_net::ring::NodeId;

use super::Outcome;
use super::cluster::{PING_TIMEOUT, client, node_hex};

/// How long `admin` waits for the node it asks.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Makes a node leave the cluster: it hands its partitions to their new
    /// owners, then marks itself Left (and idles until stopped).
    Leave(LeaveArgs),
    /// Removes a dead node at once: its partitions are re-replicated from
    /// the surviving replicas. A node that can still leave should leave.
    Remove(RemoveArgs),
    /// Runs anti-entropy on a node now: compares the Merkle trees of one
    /// partition it replicates (or of every one) with the other replicas,
    /// repairs the keys that differ, and prints what it did.
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The partition to repair (as `holdfast status --key` prints a key's).
    /// Default: every partition the node replicates.
    #[arg(long)]
    pub partition: Option<u32>,
    /// The node that runs the repair.
    #[arg(long, alias = "node", default_value = "127.0.0.1:7070")]
    pub addr: String,
    /// How long to wait for the node to finish, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The node that leaves (16 hex digits, as `holdfast status` prints
    /// them). Default: the node asked.
    #[arg(long, value_parser = parse_node)]
    pub node: Option<NodeId>,
    /// The node to ask.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: String,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The node to remove (16 hex digits, as `holdfast status` prints them).
    #[arg(value_parser = parse_node)]
    pub node: NodeId,
    /// The node to ask (any other member).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: String,
}

/// A node id as `status` prints it: hex, with or without `0x`.
fn parse_node(text: &str) -> Result<NodeId, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    match NodeId::from_str_radix(digits, 16) {
        Ok(0) => Err("node 0 is not a node id".into()),
        Ok(id) => Ok(id),
        Err(error) => Err(format!("{text:?} is not a node id (16 hex digits): {error}")),
    }
}

pub fn run(command: AdminCommand) -> Result<Outcome> {
    match command {
        AdminCommand::Leave(args) => leave(args),
        AdminCommand::Remove(args) => remove(args),
        AdminCommand::Repair(args) => repair(args),
    }
}

fn repair(args: RepairArgs) -> Result<Outcome> {
    // The node answers once its exchanges are done: wait long for that,
    // but not for a node that does not even accept the connection.
    let options = ClientOptions {
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        connect_timeout: REQUEST_TIMEOUT,
        pool_size: 1,
        route_by_ring: false,
        ..ClientOptions::default()
    };
    let client = Client::connect(&[args.addr.as_str()], options)
        .with_context(|| format!("connecting to {}", args.addr))?;
    let what = match args.partition {
        Some(partition) => format!("partition {partition}"),
        None => "every partition it replicates".to_string(),
    };
    let reply = client
        .repair(args.partition)
        .with_context(|| format!("asking {} to repair {what}", args.addr))?;
    print!("{}", repair_text(&reply, &what));
    Ok(Outcome::Done)
}

/// What `admin repair` prints: one `name value` pair per line after the
/// first, so that scripts (and tests) can read it.
fn repair_text(reply: &RepairReply, what: &str) -> String {
    let mut out = format!("node {} repaired {what}\n", node_hex(reply.node));
    let lines: [(&str, String); 13] = [
        ("exchanges", reply.exchanges.to_string()),
        ("skipped", reply.skipped.to_string()),
        ("partitions_differing", reply.partitions_differing.to_string()),
        ("leaves_differing", reply.leaves_differing.to_string()),
        ("hashes_received", reply.hashes.to_string()),
        ("entries_received", reply.entries.to_string()),
        ("keys_repaired", reply.keys_repaired.to_string()),
        ("keys_received", reply.keys_received.to_string()),
        ("bytes_received", reply.bytes_received.to_string()),
        ("keys_sent", reply.keys_sent.to_string()),
        ("bytes_sent", reply.bytes_sent.to_string()),
        ("elapsed_ms", reply.elapsed_ms.to_string()),
        (
            "summary",
            format!(
                "{} exchanges ({} skipped); {} partitions and {} leaves differed; {} keys \
                 repaired: received {} keys ({}), sent {} keys ({}); {} ms",
                reply.exchanges,
                reply.skipped,
                reply.partitions_differing,
                reply.leaves_differing,
                reply.keys_repaired,
                reply.keys_received,
                super::human_bytes(reply.bytes_received),
                reply.keys_sent,
                super::human_bytes(reply.bytes_sent),
                reply.elapsed_ms,
            ),
        ),
    ];
    for (name, value) in lines {
        out.push_str(&format!("{name} {value}\n"));
    }
    if reply.skipped > 0 {
        out.push_str(
            "note: skipped exchanges had a replica down, a tree still being built (after a \
             restart), or a request that failed; run it again later\n",
        );
    }
    out
}

fn leave(args: LeaveArgs) -> Result<Outcome> {
    let client = client(&args.addr, REQUEST_TIMEOUT)?;
    let outcome = client
        .admin_leave(args.node.unwrap_or(0))
        .with_context(|| format!("asking {} to make the node leave", args.addr))?;
    print_outcome(&outcome);
    println!(
        "watch it with: holdfast status --addr {} (the node shows Leaving, then Left once it \
         holds nothing; then stop it)",
        args.addr
    );
    Ok(Outcome::Done)
}

fn remove(args: RemoveArgs) -> Result<Outcome> {
    let client = client(&args.addr, REQUEST_TIMEOUT)?;
    let stats = client.stats().with_context(|| format!("asking {} for its members", args.addr))?;
    if stats.node == args.node {
        bail!(
            "{} is node {} itself: a node cannot remove itself; ask it to leave \
             (holdfast admin leave --addr {}), or ask another node to remove it",
            args.addr,
            node_hex(args.node),
            args.addr
        );
    }
    let member = stats.members.iter().find(|member| member.id == args.node);
    let Some(member) = member else {
        return Err(anyhow!("node {} asked knows no member {}", args.addr, node_hex(args.node)));
    };
    if let Ok(target) = super::cluster::client(&member.addr, PING_TIMEOUT)
        && target.ping().is_ok()
    {
        eprintln!(
            "holdfast: warning: node {} at {} answers pings: it is alive. Removing a live node \
             skips its orderly hand-off (its partitions are re-replicated from the other \
             replicas); `holdfast admin leave --node {}` would have it hand them over first.",
            node_hex(args.node),
            member.addr,
            node_hex(args.node)
        );
    }
    let outcome = client
        .admin_remove(args.node)
        .with_context(|| format!("asking {} to remove the node", args.addr))?;
    print_outcome(&outcome);
    Ok(Outcome::Done)
}

fn print_outcome(outcome: &AdminOutcome) {
    let status = outcome.status.map_or_else(|| "unknown".to_string(), |s| format!("{s:?}"));
    println!("node {}  status {status}", node_hex(outcome.node));
    println!("{}", outcome.message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_prints_one_counter_per_line() {
        let reply = RepairReply {
            node: 0xab,
            exchanges: 6,
            keys_repaired: 3,
            bytes_sent: 2048,
            elapsed_ms: 12,
            ..RepairReply::default()
        };
        let text = repair_text(&reply, "partition 5");
        assert!(text.starts_with("node 00000000000000ab repaired partition 5\n"), "{text}");
        assert!(text.contains("\nexchanges 6\n"), "{text}");
        assert!(text.contains("\nskipped 0\n"), "{text}");
        assert!(text.contains("\nkeys_repaired 3\n"), "{text}");
        assert!(text.contains("sent 0 keys (2.0 KiB); 12 ms\n"), "{text}");
        assert!(!text.contains("note:"));
    }

    #[test]
    fn node_ids_parse_as_status_prints_them() {
        assert_eq!(parse_node("00000000000000ab"), Ok(0xab));
        assert_eq!(parse_node("0x00000000000000ab"), Ok(0xab));
        assert_eq!(parse_node("ffffffffffffffff"), Ok(u64::MAX));
        assert!(parse_node("0").is_err());
        assert!(parse_node("xyz").is_err());
        assert!(parse_node("1ffffffffffffffff").is_err());
    }
}
