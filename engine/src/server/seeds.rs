//! Forming a cluster's first ring from its seeds.
//!
//! A node of a new cluster is started with the addresses of the others
//! (`seeds`). It says hello to each (its id,
//! address, weight and zone) and learns theirs; once it knows every seed,
//! it computes the ring from the member set. The computation is a pure
//! function of that set ([`Ring::new`] at version 1), so every node that
//! knows the same members computes the same ring without further
//! agreement. A node that answers a hello with a ring that already
//! includes this node is taken at its word (that is how a node that lost
//! its membership file rejoins).
//!
//! This forms only a cluster's first ring. The ring is then gossip's
//! (`membership.rs`): it is persisted with the rest of the membership in
//! `membership`, so a restarted node serves at once without waiting for
//! its seeds, and it changes when nodes join or leave.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use holdfast_net::frame::FrameDecoder;
use holdfast_net::limits::REPLY_FRAME_BYTES_MAX_DEFAULT;
use holdfast_net::message::{Hello, HelloReply, encode_message};
use holdfast_net::ring::{Member, Ring, RingState};

/// How long to wait between rounds of hellos to seeds that did not answer.
const RETRY: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What forming found.
#[derive(Debug)]
pub(crate) enum Formed {
    /// The first ring: one a seed already had with this node in it, or the
    /// one computed from every member.
    Ring(Ring),
    /// A seed already routes by a ring without this node: the cluster is
    /// running, and this node must join it (`join`) rather than make a
    /// ring of its own.
    Join,
}

/// Says hello to every seed until each has answered (or `shutdown` is
/// set: `None`), and returns what it found.
pub(crate) fn form(
    me: &Member,
    seeds: &[SocketAddr],
    partitions: u32,
    shutdown: &Arc<AtomicBool>,
) -> Option<Formed> {
    let mut members: Vec<Member> = vec![me.clone()];
    let mut pending: Vec<SocketAddr> = seeds.to_vec();
    let mut attempts = 0u64;
    while !pending.is_empty() {
        if shutdown.load(Ordering::Relaxed) {
            return None;
        }
        let mut still = Vec::new();
        for &seed in &pending {
            match hello(seed, me) {
                Ok(reply) => {
                    if reply.ring.version > 0
                        && let Ok(ring) = Ring::from_state(reply.ring)
                    {
                        if ring.contains(me.id) {
                            tracing::info!(%seed, version = ring.version(), "adopted a seed's ring");
                            return Some(Formed::Ring(ring));
                        }
                        tracing::info!(
                            %seed,
                            version = ring.version(),
                            "a seed already runs a cluster without this node"
                        );
                        return Some(Formed::Join);
                    }
                    if reply.member.id == me.id {
                        tracing::warn!(%seed, "a seed has this node's id: it is this node");
                    } else if !members.iter().any(|member| member.id == reply.member.id) {
                        tracing::info!(%seed, node = format_args!("{:016x}", reply.member.id), "met a seed");
                        members.push(reply.member);
                    }
                }
                Err(error) => {
                    if attempts.is_multiple_of(25) {
                        tracing::info!(%seed, %error, "waiting for a seed");
                    }
                    still.push(seed);
                }
            }
        }
        pending = still;
        attempts += 1;
        if !pending.is_empty() {
            std::thread::sleep(RETRY);
        }
    }
    match Ring::new(partitions, members, 1) {
        Ok(ring) => Some(Formed::Ring(ring)),
        Err(error) => {
            tracing::error!(%error, "the members do not make a ring");
            None
        }
    }
}

/// One hello exchange over a fresh connection.
fn hello(seed: SocketAddr, me: &Member) -> Result<HelloReply, String> {
    let mut stream =
        TcpStream::connect_timeout(&seed, IO_TIMEOUT).map_err(|error| error.to_string())?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|error| error.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|error| error.to_string())?;
    let request = Hello { member: me.clone(), ring: RingState::default() };
    stream.write_all(&encode_message(1, &request)).map_err(|error| error.to_string())?;
    let mut decoder = FrameDecoder::new(REPLY_FRAME_BYTES_MAX_DEFAULT);
    let mut buffer = vec![0; 64 << 10];
    loop {
        let count = stream.read(&mut buffer).map_err(|error| error.to_string())?;
        if count == 0 {
            return Err("the seed closed the connection".into());
        }
        let mut input = &buffer[..count];
        while !input.is_empty() {
            let decoded = decoder.decode(input).map_err(|error| error.to_string())?;
            input = &input[decoded.consumed..];
            if let Some(frame) = decoded.frame {
                return frame.decode::<HelloReply>().map_err(|error| error.to_string());
            }
        }
    }
}
