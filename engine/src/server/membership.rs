//! The node's side of membership: the glommio driver of the pure
//! [`Gossip`], on shard 0.
//!
//! One [`Gossip`] per node, owned by shard 0 (a [`Membership`]). A task
//! there ticks it every [`TICK`] (an exchange starts every
//! `gossip_interval`), and carries out what it asks:
//!
//! - **Exchanges.** A digest is a request frame (`GOSSIP_DIGEST`) on a
//!   short-lived connection from shard 0 to the peer; the peer's shard 0
//!   answers it with its `GOSSIP_REPLY` under the same request id, and if
//!   that asks for something, a `GOSSIP_PUSH` follows on a connection of
//!   its own (answered by an empty `GOSSIP_PUSH_REPLY`). Gossip frames that
//!   reach another shard cross the mesh to shard 0 like any request for
//!   another shard. At most [`EXCHANGES_IN_FLIGHT_MAX`] run at once; a send
//!   beyond that is dropped, as gossip allows (the next round makes up
//!   for it).
//! - **Rings.** The current and the pending ring go into the node's
//!   [`View`], which every shard adopts on its next tick (`set_ring`,
//!   `set_next_ring`): a shard pulls what it gains in the pending ring.
//! - **Readiness.** Each shard publishes, with its counters, the rings it
//!   routes by and [`Coordinator::ready_for`](crate::cluster::coordinator::Coordinator::ready_for).
//!   When every shard holds the node's current and pending rings and is
//!   ready for the pending one, the node reports itself ready
//!   ([`Gossip::set_ready`]).
//! - **Leaving.** A node whose record says `Leaving`, that is in neither
//!   ring and whose shards hold no data partitions and no hints, marks
//!   itself `Left`. It keeps running, idle: an operator stops it.
//! - **Persistence.** After every change of the records or the rings, the
//!   whole [`GossipState`] is written to `membership` in the data
//!   directory (a temporary file, fsync, rename, fsync of the directory),
//!   on a thread of its own so that shard 0 never waits for a disk. A
//!   restart loads it and calls [`Gossip::restart`].
//!
//! # Start-up
//!
//! A node with a `membership` file starts from it. Otherwise a node started
//! with `join` knows only itself and its seeds ([`Gossip::new`]) and serves
//! no request until gossip gives it a ring; a node started without `join`
//! forms the first ring from its seeds as before (`seeds.rs`), then starts
//! gossip from a state holding that ring and every member `Up`. Either way
//! the gossip starts on shard 0 through a [`StartCell`], the one hand-over
//! from another thread.
//!
//! # The `membership` file
//!
//! ```text
//!  0        4    5          8          12         16
//!  +--------+----+----------+----------+----------+--------------------------------+
//!  | "hfms" | 1  | 0 (3 B)  | body len | crc32c   | body: GossipState (rkyv)   ... |
//!  +--------+----+----------+----------+----------+--------------------------------+
//! ```
//!
//! The body is read only through `GossipState::decode` (rkyv's checked
//! access, then its `validate`) after the checksum matched. A damaged file
//! stops the node at start: silently forming a new ring or joining afresh
//! could hand the node's partitions to the wrong owners.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{Either, select};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use holdfast_net::frame::{Frame, FrameDecoder, Kind};
use holdfast_net::limits::REPLY_FRAME_BYTES_MAX_DEFAULT;
use holdfast_net::membership::{
    GossipDigest, GossipPush, GossipReply, GossipState, MemberRecord, MemberStatus,
};
use holdfast_net::message::{ErrorCode, MemberSummary};
use holdfast_net::ring::{Member, NodeId, Ring};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::cluster::{ShardStats, StatsCell};
use crate::cluster::gossip::{Gossip, GossipAction, GossipMessage, Peer, StatusError};

/// How often shard 0 ticks gossip and looks at readiness and leaving.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Gossip exchanges (and pushes) in flight at once.
const EXCHANGES_IN_FLIGHT_MAX: usize = 4;
/// How long connecting to a peer for an exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a whole exchange step (connect, send, read the reply) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// The file the gossip state is kept in, in the data directory.
pub(crate) const MEMBERSHIP_FILE: &str = "membership";
const FILE_MAGIC: [u8; 4] = *b"hfms";
const FILE_FORMAT: u8 = 1;
const FILE_HEADER_BYTES: usize = 16;

/// What the node's shards route by and `Stats` reports: written by shard 0
/// (or the ring-formation thread, before gossip starts) when it changes,
/// read by each shard's tick and by `Stats` requests. Never touched on the
/// data path.
pub(crate) type ViewCell = Arc<Mutex<View>>;

/// The node's membership as last published.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    /// The ring to route by.
    pub ring: Option<Arc<Ring>>,
    /// The pending ring, while a membership change is under way.
    pub next: Option<Arc<Ring>>,
    /// This node's own status; `None` while it runs no gossip yet.
    pub status: Option<MemberStatus>,
    /// Every record gossip holds, ascending by id.
    pub members: Vec<MemberSummary>,
}

/// The gossip shard 0 is to run, handed over once from the thread that
/// made it (the node's start, or the ring formation).
pub(crate) type StartCell = Arc<Mutex<Option<Gossip>>>;

/// Shard 0's gossip and what drives it. All on shard 0's thread.
pub(crate) struct Membership {
    gossip: RefCell<Gossip>,
    rng: RefCell<ChaCha8Rng>,
    started: Instant,
    view: ViewCell,
    stats: StatsCell,
    shards: usize,
    persist: std::sync::mpsc::Sender<GossipState>,
    exchanges: Cell<usize>,
    /// Whether this node already logged that it left.
    left_logged: Cell<bool>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("me", &self.gossip.borrow().id()).finish()
    }
}

impl Membership {
    /// Starts driving `gossip`: publishes its rings and persists its state
    /// (on a thread of its own, writing to `dir`).
    pub fn new(
        gossip: Gossip,
        dir: PathBuf,
        view: ViewCell,
        stats: StatsCell,
        shards: usize,
    ) -> Rc<Membership> {
        let (persist, states) = std::sync::mpsc::channel::<GossipState>();
        let spawned =
            std::thread::Builder::new().name("membership-persist".into()).spawn(move || {
                while let Ok(mut state) = states.recv() {
                    // Only the newest state matters.
                    while let Ok(newer) = states.try_recv() {
                        state = newer;
                    }
                    if let Err(error) = persist_state(&dir, &state) {
                        tracing::error!(%error, "the membership could not be persisted");
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "the membership persister could not start");
        }
        let seed = rand::random::<u64>() ^ gossip.id();
        let membership = Rc::new(Membership {
            gossip: RefCell::new(gossip),
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(seed)),
            started: Instant::now(),
            view,
            stats,
            shards,
            persist,
            exchanges: Cell::new(0),
            left_logged: Cell::new(false),
        });
        membership.changed();
        membership
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.gossip.borrow().id()
    }

    /// One tick: maybe an exchange, then readiness and leaving.
    pub fn tick(self: &Rc<Self>) {
        let mut out = Vec::new();
        {
            let now = self.now();
            let mut gossip = self.gossip.borrow_mut();
            gossip.tick(now, &mut *self.rng.borrow_mut(), &mut out);
        }
        self.carry_out(out);
        self.report_ready();
        self.leave_when_empty();
    }

    /// Answers a peer's digest with this node's reply (and carries out what
    /// else the digest caused).
    pub fn on_digest(self: &Rc<Self>, digest: GossipDigest) -> Result<GossipReply, String> {
        let mut out = Vec::new();
        self.gossip.borrow_mut().handle(GossipMessage::Digest(digest), &mut out);
        let mut reply = None;
        out.retain(|action| match action {
            GossipAction::Send { message: GossipMessage::Reply(answer), .. } => {
                reply = Some(answer.clone());
                false
            }
            _ => true,
        });
        self.carry_out(out);
        reply.ok_or_else(|| "the digest was refused (invalid, or from this node)".to_string())
    }

    /// Takes a peer's push.
    pub fn on_push(self: &Rc<Self>, push: GossipPush) {
        let mut out = Vec::new();
        self.gossip.borrow_mut().handle(GossipMessage::Push(push), &mut out);
        self.carry_out(out);
    }

    /// An operator's leave (`Leaving`) or remove (`Left`) of `node` (0:
    /// this node). Returns the node, its status now and what happens next.
    pub fn admin(
        self: &Rc<Self>,
        leave: bool,
        node: NodeId,
    ) -> Result<(NodeId, MemberStatus, String), (ErrorCode, String)> {
        let me = self.id();
        let node = if node == 0 { me } else { node };
        let current = self.gossip.borrow().status_of(node);
        let Some(current) = current else {
            return Err((ErrorCode::BadRequest, format!("node {node:016x} is not a known member")));
        };
        let wanted = if leave { MemberStatus::Leaving } else { MemberStatus::Left };
        if !leave && node == me {
            let message = "a node cannot remove itself: ask it to leave (it hands its partitions \
                           away first), or remove it from another node once it is gone";
            return Err((ErrorCode::BadRequest, message.into()));
        }
        if current == wanted || current == MemberStatus::Left {
            let message = match current {
                MemberStatus::Left => format!("node {node:016x} has already left the cluster"),
                _ => format!("node {node:016x} is already leaving; nothing changed"),
            };
            return Ok((node, current, message));
        }
        let mut out = Vec::new();
        let set = self.gossip.borrow_mut().set_status(node, wanted, &mut out);
        if let Err(error) = set {
            let code = match error {
                StatusError::UnknownMember { .. } | StatusError::Left { .. } => {
                    ErrorCode::BadRequest
                }
                _ => ErrorCode::Internal,
            };
            return Err((code, error.to_string()));
        }
        self.carry_out(out);
        tracing::info!(node = format_args!("{node:016x}"), status = ?wanted, "operator changed a member's status");
        let stuck = {
            let gossip = self.gossip.borrow();
            let holds = |ring: &Arc<Ring>| ring.contains(node);
            gossip.ring().as_ref().is_some_and(holds)
                && gossip.next_ring().as_ref().is_none_or(holds)
        };
        if stuck {
            let message = format!(
                "node {node:016x} is now {wanted:?}, but no ring without it can be made (is it \
                 the last member?): it stays in the ring until one can"
            );
            return Ok((node, wanted, message));
        }
        let message = if leave {
            format!(
                "node {node:016x} is now Leaving: a ring without it is proposed; the nodes that \
                 gain its partitions pull them, the new ring is installed once they are ready, \
                 then it hands off what it still holds and marks itself Left (it keeps running, \
                 idle, until it is stopped). `holdfast status` shows the progress."
            )
        } else {
            format!(
                "node {node:016x} is now Left (final): a ring without it is proposed, and its \
                 partitions are re-replicated from the surviving replicas. A node that left \
                 never rejoins under its id."
            )
        };
        Ok((node, wanted, message))
    }

    /// Carries out gossip's actions: sends, and publishing and persisting
    /// what changed.
    fn carry_out(self: &Rc<Self>, out: Vec<GossipAction>) {
        let mut changed = false;
        for action in out {
            match action {
                GossipAction::Send { to, message } => self.send(to, message),
                GossipAction::RingChanged(ring) => {
                    tracing::info!(
                        version = ring.version(),
                        members = ring.members().len(),
                        "routing by a new ring"
                    );
                    changed = true;
                }
                GossipAction::NextChanged(next) => {
                    match &next {
                        Some(next) => tracing::info!(
                            version = next.version(),
                            members = next.members().len(),
                            gainers = self.gossip.borrow().gainers().len(),
                            "pending ring: the nodes that gain partitions pull them"
                        ),
                        None => tracing::info!("no ring change pending"),
                    }
                    changed = true;
                }
                GossipAction::MembersChanged { .. } => changed = true,
            }
        }
        if changed {
            self.changed();
        }
    }

    /// Publishes the rings and records to the shards and persists the state.
    fn changed(&self) {
        let gossip = self.gossip.borrow();
        let view = View {
            ring: gossip.ring(),
            next: gossip.next_ring(),
            status: gossip.status_of(gossip.id()),
            members: gossip
                .members()
                .iter()
                .map(|record| MemberSummary {
                    id: record.id(),
                    addr: record.member.addr.clone(),
                    status: record.status,
                    version: record.version,
                })
                .collect(),
        };
        if let Ok(mut slot) = self.view.lock() {
            *slot = view;
        }
        let _ = self.persist.send(gossip.state().clone());
    }

    /// Reports this node ready for the pending ring once every shard has
    /// pulled what it gains in it.
    fn report_ready(self: &Rc<Self>) {
        let (version, id) = {
            let gossip = self.gossip.borrow();
            let (Some(ring), Some(next)) = (gossip.ring(), gossip.next_ring()) else { return };
            if !gossip.gainers().contains(&gossip.id()) {
                return;
            }
            let shards = self.shard_stats();
            let ready = shards.len() == self.shards
                && shards.iter().all(|shard| {
                    same(shard.ring.as_ref(), Some(&ring))
                        && same(shard.next.as_ref(), Some(&next))
                        && shard.ready_for == Some(next.version())
                });
            if !ready {
                return;
            }
            (next.version(), gossip.id())
        };
        let mut out = Vec::new();
        self.gossip.borrow_mut().set_ready(version, &mut out);
        if !out.is_empty() {
            tracing::info!(
                node = format_args!("{id:016x}"),
                version,
                "pulled every partition this node gains: ready for the pending ring"
            );
        }
        self.carry_out(out);
    }

    /// A leaving node that is in neither ring and holds nothing marks
    /// itself `Left`.
    fn leave_when_empty(self: &Rc<Self>) {
        let me = self.id();
        {
            let gossip = self.gossip.borrow();
            let status = gossip.status_of(me);
            if status == Some(MemberStatus::Left) && !self.left_logged.get() {
                self.left_logged.set(true);
                tracing::warn!(
                    node = format_args!("{me:016x}"),
                    "this node has LEFT the cluster: it holds no partitions and serves as a \
                     member no more; it keeps running idle until it is stopped"
                );
            }
            if status != Some(MemberStatus::Leaving) {
                return;
            }
            let Some(ring) = gossip.ring() else { return };
            let next = gossip.next_ring();
            if ring.contains(me) || next.as_ref().is_some_and(|next| next.contains(me)) {
                return;
            }
            let shards = self.shard_stats();
            let empty = shards.len() == self.shards
                && shards.iter().all(|shard| {
                    same(shard.ring.as_ref(), Some(&ring))
                        && shard.data_partitions == 0
                        && shard.hinted_keys == 0
                });
            if !empty {
                return;
            }
        }
        let mut out = Vec::new();
        if self.gossip.borrow_mut().set_status(me, MemberStatus::Left, &mut out).is_ok() {
            tracing::info!(
                node = format_args!("{me:016x}"),
                "handed off every partition and hint: marking this node Left"
            );
        }
        self.carry_out(out);
    }

    fn shard_stats(&self) -> Vec<ShardStats> {
        self.stats.lock().map(|stats| stats.clone()).unwrap_or_default()
    }

    /// Sends a gossip message, as its own exchange step, in the background.
    fn send(self: &Rc<Self>, to: Peer, message: GossipMessage) {
        let addr = match &to {
            Peer::Node { addr, .. } | Peer::Seed { addr } => addr.clone(),
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            tracing::debug!(%addr, "a gossip peer's address is not an IP address and port");
            return;
        };
        let (frame, reply_kind) = match &message {
            GossipMessage::Digest(digest) => {
                (digest.to_frame(Kind::GOSSIP_DIGEST, 1), Kind::GOSSIP_REPLY)
            }
            GossipMessage::Push(push) => {
                (push.to_frame(Kind::GOSSIP_PUSH, 1), Kind::GOSSIP_PUSH_REPLY)
            }
            // Replies answer a digest request: `on_digest` takes them.
            GossipMessage::Reply(_) => return,
        };
        if self.exchanges.get() >= EXCHANGES_IN_FLIGHT_MAX {
            return;
        }
        self.exchanges.set(self.exchanges.get() + 1);
        let membership = self.clone();
        glommio::spawn_local(async move {
            let timeout = std::pin::pin!(glommio::timer::sleep(EXCHANGE_TIMEOUT));
            let exchanged = std::pin::pin!(exchange(addr, &frame));
            let reply = match select(exchanged, timeout).await {
                Either::Left((Ok(reply), _)) => Some(reply),
                Either::Left((Err(error), _)) => {
                    tracing::debug!(peer = %addr, %error, "a gossip exchange failed");
                    None
                }
                Either::Right(_) => {
                    tracing::debug!(peer = %addr, "a gossip exchange timed out");
                    None
                }
            };
            membership.exchanges.set(membership.exchanges.get() - 1);
            let Some(reply) = reply else { return };
            if reply.kind() != reply_kind {
                if reply.kind() == Kind::ERROR
                    && let Ok(error) = reply.decode::<holdfast_net::message::ErrorReply>()
                {
                    tracing::debug!(peer = %addr, message = %error.message, "a peer refused gossip");
                }
                return;
            }
            if reply_kind == Kind::GOSSIP_REPLY {
                match GossipReply::from_frame(&reply, Kind::GOSSIP_REPLY) {
                    Ok(answer) => {
                        let mut out = Vec::new();
                        membership
                            .gossip
                            .borrow_mut()
                            .handle(GossipMessage::Reply(answer), &mut out);
                        membership.carry_out(out);
                    }
                    Err(error) => tracing::warn!(peer = %addr, %error, "a bad gossip reply"),
                }
            }
        })
        .detach();
    }
}

/// Whether two rings are the same ring: the same allocation (what a shard
/// adopted from the view), or equal.
fn same(a: Option<&Arc<Ring>>, b: Option<&Arc<Ring>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            Arc::ptr_eq(a, b) || (a.version() == b.version() && a.state() == b.state())
        }
        _ => false,
    }
}

/// One request and its reply over a fresh connection.
async fn exchange(addr: SocketAddr, frame: &[u8]) -> Result<Frame, String> {
    let connecting = std::pin::pin!(TcpStream::connect(addr));
    let timeout = std::pin::pin!(glommio::timer::sleep(CONNECT_TIMEOUT));
    let mut stream = match select(connecting, timeout).await {
        Either::Left((Ok(stream), _)) => stream,
        Either::Left((Err(error), _)) => return Err(error.to_string()),
        Either::Right(_) => return Err("connecting timed out".into()),
    };
    let _ = stream.set_nodelay(true);
    stream.write_all(frame).await.map_err(|error| error.to_string())?;
    let mut decoder = FrameDecoder::new(REPLY_FRAME_BYTES_MAX_DEFAULT);
    let mut buffer = vec![0; 64 << 10];
    loop {
        let count = stream.read(&mut buffer).await.map_err(|error| error.to_string())?;
        if count == 0 {
            return Err("the peer closed the connection".into());
        }
        let mut input = &buffer[..count];
        while !input.is_empty() {
            let decoded = decoder.decode(input).map_err(|error| error.to_string())?;
            input = &input[decoded.consumed..];
            if let Some(frame) = decoded.frame {
                let _ = stream.close().await;
                return Ok(frame);
            }
        }
    }
}

/// The state a node that formed (or kept) `ring` without gossip starts
/// from: every member of the ring `Up` at version 1, and the ring.
pub(crate) fn formed_state(ring: &Ring) -> Result<GossipState, String> {
    let records = ring
        .members()
        .iter()
        .map(|member| MemberRecord::new(member.clone(), MemberStatus::Up, 1))
        .collect();
    GossipState::new(records, ring.state()).map_err(|error| error.to_string())
}

/// This node as its ring record describes it.
pub(crate) fn me(id: NodeId, options: &super::ServerOptions) -> Member {
    Member {
        id,
        addr: options.listen.to_string(),
        weight: options.weight,
        zone: options.zone.clone(),
    }
}

/// The state persisted in `dir`: `Ok(None)` if there is none, an error if
/// the file is damaged.
pub(crate) fn load(dir: &Path) -> Result<Option<GossipState>, String> {
    let path = dir.join(MEMBERSHIP_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("reading {}: {error}", path.display())),
    };
    let damaged = |why: &str| {
        format!(
            "{} is damaged ({why}); the node will not guess its membership: restore it, or \
             remove it to start this node afresh",
            path.display()
        )
    };
    if bytes.len() < FILE_HEADER_BYTES || bytes[0..4] != FILE_MAGIC {
        return Err(damaged("no membership header"));
    }
    if bytes[4] != FILE_FORMAT {
        return Err(damaged(&format!("format {} is not one this build reads", bytes[4])));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let checksum = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let body = &bytes[FILE_HEADER_BYTES..];
    if body.len() != len {
        return Err(damaged(&format!("{} body bytes, the header says {len}", body.len())));
    }
    if crc32c::crc32c(body) != checksum {
        return Err(damaged("checksum mismatch"));
    }
    GossipState::decode(body).map(Some).map_err(|error| damaged(&error.to_string()))
}

/// Writes `state` to `dir` durably: a temporary file, fsync, rename, fsync
/// of the directory.
pub(crate) fn persist_state(dir: &Path, state: &GossipState) -> std::io::Result<()> {
    let body = state.encode();
    let mut bytes = Vec::with_capacity(FILE_HEADER_BYTES + body.len());
    bytes.extend_from_slice(&FILE_MAGIC);
    bytes.extend_from_slice(&[FILE_FORMAT, 0, 0, 0]);
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    let temporary = dir.join(format!("{MEMBERSHIP_FILE}.new"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(MEMBERSHIP_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> Member {
        Member { id, addr: format!("127.0.0.1:{}", 7000 + id), weight: 1, zone: String::new() }
    }

    #[test]
    fn the_membership_file_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert_eq!(load(dir.path()), Ok(None));
        let ring = Ring::new(64, vec![member(1), member(2)], 1).expect("a ring");
        let state = formed_state(&ring).expect("a valid state");
        persist_state(dir.path(), &state).expect("persisted");
        assert_eq!(load(dir.path()), Ok(Some(state)));
        let path = dir.path().join(MEMBERSHIP_FILE);
        let mut bytes = std::fs::read(&path).expect("written");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("rewritten");
        assert!(load(dir.path()).expect_err("damaged").contains("checksum mismatch"));
        std::fs::write(&path, b"hfms").expect("rewritten");
        assert!(load(dir.path()).is_err());
    }
}
