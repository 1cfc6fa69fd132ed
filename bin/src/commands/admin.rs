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
//! There is no `admin join`: a node joins by starting with
//! `holdfast serve --join --seeds ADDR` (any node of the cluster).
//!
//! A node id is the 16 hex digits `holdfast status` prints (a `0x` prefix
//! is accepted).

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand};
use holdfast_net::client::AdminOutcome;
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
    }
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
    fn node_ids_parse_as_status_prints_them() {
        assert_eq!(parse_node("00000000000000ab"), Ok(0xab));
        assert_eq!(parse_node("0x00000000000000ab"), Ok(0xab));
        assert_eq!(parse_node("ffffffffffffffff"), Ok(u64::MAX));
        assert!(parse_node("0").is_err());
        assert!(parse_node("xyz").is_err());
        assert!(parse_node("1ffffffffffffffff").is_err());
    }
}
