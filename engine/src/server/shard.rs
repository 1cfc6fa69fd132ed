//! One shard: an executor's partitions, store, replica and connections.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ahash::AHashMap;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::TcpListener;
use glommio::{Latency, Shares, TaskQueueHandle};
use holdfast_net::Actor;

use holdfast_net::frame::{Frame, Kind};
use holdfast_net::message::{
    AdminOp, ErrorCode, GossipPushReply, RepairReply, Request, RequestLimits,
};
use holdfast_net::ring::Member;

use super::cluster::{ClusterDriver, StatsCell};
use super::membership::{Membership, StartCell, ViewCell};
use super::uring::Uring;
use super::wire;
use super::{ServerOptions, Transport};
use crate::cluster::coordinator::{
    ClientRequest, Coordinator, PeerReply, PeerRequest, RepairReport,
};
use crate::disk::dma::DmaDisk;
use crate::partition::Partitioner;
use crate::replica::{Replica, ReplicaError};
use crate::store::{RecoveryReport, Store, SyncPolicy};

/// The shard that runs the node's gossip.
const GOSSIP_SHARD: u32 = 0;

/// How long, beyond the request timeout, a request forwarded to another
/// shard may still wait for its reply once this shard is shutting down
/// (the other shard may have stopped). A coordinated request ends within
/// the request timeout, so only a reply that will never come is given up
/// on.
const FORWARD_GRACE_AFTER_STOP: Duration = Duration::from_secs(1);

/// Why a gossip or admin request is refused before gossip runs.
const NO_GOSSIP: &str =
    "this node runs no gossip yet (it is still forming its first ring from its seeds)";

/// What crosses between shards: a request frame for the shard that owns
/// its key, and the reply frame coming back. Both exactly as they travel on
/// the wire.
#[derive(Debug)]
pub(crate) enum Forward {
    Request {
        origin: u32,
        token: u64,
        frame: holdfast_net::frame::AlignedVec,
    },
    Reply {
        token: u64,
        frame: Vec<u8>,
    },
    /// An operator's repair of every partition: the receiving shard runs
    /// it on its own coordinator (never fanning out again) and answers
    /// [`Forward::Repaired`].
    Repair {
        origin: u32,
        token: u64,
    },
    /// What a shard's repair did (`None`: it could not run).
    Repaired {
        token: u64,
        report: Option<RepairReport>,
    },
}

/// Keys of its trees a shard's background builder reads per call, and how
/// long it rests between calls while there is more, and between checks
/// once every tree is built (a failed write can make a tree need building
/// again).
const TREE_BUILD_KEYS: usize = 256;
const TREE_BUILD_PAUSE: Duration = Duration::from_millis(1);
const TREE_BUILD_IDLE: Duration = Duration::from_millis(100);

/// What a shard's executor is started with.
pub(crate) struct ShardContext {
    pub id: u32,
    pub partitioner: Partitioner,
    pub options: ServerOptions,
    pub mesh: Option<MeshBuilder<Forward, Full>>,
    pub recovered: mpsc::Sender<(u32, Result<RecoveryReport, String>)>,
    pub actor: mpsc::Receiver<Actor>,
    pub shutdown: Arc<AtomicBool>,
    /// The node's rings (once it has one) and membership.
    pub view: ViewCell,
    /// Every shard's counters.
    pub stats: StatsCell,
    /// The gossip shard 0 runs, once the node has one.
    pub start: StartCell,
}

/// A shard's state, shared by its tasks (all on one thread).
pub(crate) struct Shard {
    pub id: u32,
    pub partitioner: Partitioner,
    pub options: ServerOptions,
    pub replica: Replica<DmaDisk>,
    /// This node's coordinator on this shard, and its links to peers.
    pub cluster: ClusterDriver,
    peers: Option<Senders<Forward>>,
    /// Requests forwarded to other shards, by token, awaiting replies.
    forwarded: RefCell<AHashMap<u64, oneshot::Sender<Vec<u8>>>>,
    /// Repairs asked of other shards, by token, awaiting their reports.
    repairs: RefCell<AHashMap<u64, oneshot::Sender<Option<RepairReport>>>>,
    /// The low-share task queue background work runs in (store upkeep,
    /// tree builds, anti-entropy), so that clients' requests go first.
    background: TaskQueueHandle,
    next_token: Cell<u64>,
    /// Requests received from clients on this shard's connections.
    pub requests: Cell<u64>,
    /// Requests being handled (for a graceful shutdown).
    pub in_flight: Cell<u64>,
    pub stopping: Watch,
    /// The node's gossip: on shard 0 only, once it started.
    membership: RefCell<Option<Rc<Membership>>>,
}

/// Runs a shard until shutdown. Returns the number of requests it served.
pub(crate) async fn run(context: ShardContext) -> Result<u64, String> {
    let ShardContext {
        id,
        partitioner,
        options,
        mesh,
        recovered,
        actor,
        shutdown,
        view,
        stats,
        start,
    } = context;
    // Join the mesh before anything can fail, so that no peer waits forever
    // for a shard that gave up.
    let mesh = match mesh {
        Some(mesh) => Some(
            mesh.join().await.map_err(|error| format!("joining the shard mesh failed: {error}"))?,
        ),
        None => None,
    };
    let opened = async {
        let disk = DmaDisk::open(options.data_dir.join(format!("shard-{id}")))
            .map_err(|error| format!("data directory: {error}"))?;
        Store::open(disk, options.store.clone()).await.map_err(|error| error.to_string())
    }
    .await;
    let store = match opened {
        Ok((store, report)) => {
            let _ = recovered.send((id, Ok(report)));
            store
        }
        Err(message) => {
            let _ = recovered.send((id, Err(message.clone())));
            return Err(message);
        }
    };
    // The node's identity is settled once every shard has recovered. A
    // blocking wait is fine here: nothing else runs on this shard yet.
    let Ok(actor) = actor.recv() else {
        store.close().await.map_err(|error| error.to_string())?;
        return Ok(0);
    };
    let (peers, receivers) = match mesh {
        Some((senders, receivers)) => (Some(senders), Some(receivers)),
        None => (None, None),
    };
    let mut coordinator = Coordinator::new(actor.node, options.cluster);
    coordinator.set_shard(id, options.shards);
    // Background work runs in its own task queue with few shares, so
    // foreground requests win whenever both are ready.
    let background = glommio::executor().create_task_queue(
        Shares::Static(50),
        Latency::NotImportant,
        "maintenance",
    );
    let shard = Rc::new(Shard {
        id,
        partitioner,
        options: options.clone(),
        replica: Replica::new(store, actor),
        cluster: ClusterDriver::new(coordinator, view.clone(), stats.clone()),
        peers,
        forwarded: RefCell::new(AHashMap::new()),
        repairs: RefCell::new(AHashMap::new()),
        background,
        next_token: Cell::new(1),
        requests: Cell::new(0),
        in_flight: Cell::new(0),
        stopping: Watch::default(),
        membership: RefCell::new(None),
    });

    // The shutdown flag is set from a signal handler's thread; shards look
    // at it a few times a second, which is all a shutdown needs.
    let watcher = shard.clone();
    glommio::spawn_local(async move {
        while !shutdown.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        watcher.stopping.set();
    })
    .detach();

    glommio::spawn_local(shard.clone().tick()).detach();
    if id == GOSSIP_SHARD {
        glommio::spawn_local(shard.clone().run_membership(start, view, stats)).detach();
    }

    if let Some(mut receivers) = receivers {
        for (_, stream) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(message) = stream.recv().await {
                    shard.clone().on_forward(message);
                }
            })
            .detach();
        }
    }

    let upkeep = shard.clone();
    glommio::spawn_local_into(
        async move {
            let interval = upkeep.options.maintenance_interval;
            let mut pace = Paced::new(upkeep.options.compaction_bytes_per_second);
            while !upkeep.stopping.is_set() {
                glommio::timer::sleep(interval).await;
                if let Err(error) = upkeep.replica.store().maintain_paced(&mut pace).await {
                    tracing::warn!(shard = upkeep.id, %error, "store maintenance failed");
                }
            }
        },
        background,
    )
    .map_err(|error| error.to_string())?
    .detach();

    // The Merkle trees anti-entropy compares are built from the store after
    // open, a page at a time, and again whenever one needs it.
    let builder = shard.clone();
    glommio::spawn_local_into(
        async move {
            while !builder.stopping.is_set() {
                let more = builder.replica.build_trees(TREE_BUILD_KEYS).await;
                let pause = if more { TREE_BUILD_PAUSE } else { TREE_BUILD_IDLE };
                glommio::timer::sleep(pause).await;
            }
        },
        background,
    )
    .map_err(|error| error.to_string())?
    .detach();

    if let SyncPolicy::Interval { interval_ms } = options.store.sync {
        let syncer = shard.clone();
        glommio::spawn_local(async move {
            while !syncer.stopping.is_set() {
                glommio::timer::sleep(Duration::from_millis(interval_ms)).await;
                if let Err(error) = syncer.replica.store().sync().await {
                    tracing::error!(shard = syncer.id, %error, "periodic sync failed");
                }
            }
        })
        .detach();
    }

    let ring = match options.transport {
        Transport::Uring => match Uring::new() {
            Ok(ring) => Some(ring),
            Err(error) => {
                tracing::warn!(shard = id, %error, "no io_uring socket path here; using glommio's sockets");
                None
            }
        },
        Transport::Glommio => None,
    };
    match ring {
        Some(ring) => accept_on_ring(&shard, ring).await?,
        None => accept_on_glommio(&shard).await?,
    }
    // Finish what is in flight, then make the store durable and close it.
    while shard.in_flight.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let requests = shard.requests.get();
    tracing::info!(shard = id, requests, "shard stopping");
    shard.replica.store().close().await.map_err(|error| error.to_string())?;
    Ok(requests)
}

/// Serves the clients' connections on the shard's own ring until the
/// shard stops; then waits (a while) for their last replies to go out.
async fn accept_on_ring(shard: &Rc<Shard>, ring: Rc<Uring>) -> Result<(), String> {
    let listen = shard.options.listen;
    ring.listen(listen).map_err(|error| format!("listening on {listen}: {error}"))?;
    tracing::info!(shard = shard.id, "clients served on the shard's own io_uring ring");
    let stopped = Rc::new(Cell::new(false));
    let driving = {
        let (ring, stopped) = (ring.clone(), stopped.clone());
        let id = shard.id;
        glommio::spawn_local(async move {
            if let Err(error) = ring.drive(move || stopped.get()).await {
                tracing::error!(shard = id, %error, "the client socket ring failed");
            }
        })
        .detach()
    };
    loop {
        let accepting = std::pin::pin!(ring.accept());
        let stopping = std::pin::pin!(shard.stopping.wait());
        match futures::future::select(accepting, stopping).await {
            futures::future::Either::Left((Ok(socket), _)) => {
                glommio::spawn_local(super::connection::serve(shard.clone(), socket)).detach();
            }
            futures::future::Either::Left((Err(error), _)) => {
                tracing::warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            futures::future::Either::Right(_) => break,
        }
    }
    ring.stop_listening().map_err(|error| error.to_string())?;
    stopped.set(true);
    // Connections close once their requests are answered; their replies
    // are flushed by the ring. A client that stopped reading does not
    // hold the shutdown up for long.
    let flushed = std::pin::pin!(driving);
    let waited = std::pin::pin!(glommio::timer::sleep(Duration::from_secs(2)));
    futures::future::select(flushed, waited).await;
    Ok(())
}

async fn accept_on_glommio(shard: &Rc<Shard>) -> Result<(), String> {
    let listen = shard.options.listen;
    let listener =
        TcpListener::bind(listen).map_err(|error| format!("listening on {listen}: {error}"))?;
    loop {
        let accepting = std::pin::pin!(listener.accept());
        let stopping = std::pin::pin!(shard.stopping.wait());
        match futures::future::select(accepting, stopping).await {
            futures::future::Either::Left((Ok(stream), _)) => {
                let stream = super::connection::GlommioStream::new(stream);
                glommio::spawn_local(super::connection::serve(shard.clone(), stream)).detach();
            }
            futures::future::Either::Left((Err(error), _)) => {
                tracing::warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            futures::future::Either::Right(_) => break,
        }
    }
    Ok(())
}

impl Shard {
    /// [`Shard::handle`], owning its shard, for a future that outlives the
    /// caller's borrow (it may move into a task of its own).
    pub async fn handle_owned(self: Rc<Self>, frame: Frame) -> Vec<u8> {
        self.handle(frame).await
    }

    /// Handles one request frame and returns its reply frame.
    pub async fn handle(self: &Rc<Self>, frame: Frame) -> Vec<u8> {
        let request_id = frame.request_id();
        let store = self.replica.store().options();
        let limits = RequestLimits {
            key_bytes_max: store.key_bytes_max,
            value_bytes_max: store.value_bytes_max,
        };
        let request = match Request::parse(&frame, &limits) {
            Ok(request) => request,
            Err(refusal) => {
                return holdfast_net::message::encode_message(request_id, &refusal.to_reply());
            }
        };
        // A request about a key is served by the shard that owns the key's
        // partition; the frame goes there as it came.
        // A wrapped client request is parsed here, for its key.
        let mut coordinated = None;
        if let Request::Coordinate { frame: wrapped } = &request {
            match self.unwrap_coordinate(request_id, wrapped, &limits) {
                Ok(unwrapped) => coordinated = Some(unwrapped),
                Err(reply) => return reply,
            }
        }
        // Gossip and operators' membership changes are shard 0's, which
        // runs the node's gossip.
        if matches!(
            request,
            Request::GossipDigest(_) | Request::GossipPush(_) | Request::Admin { .. }
        ) && self.id != GOSSIP_SHARD
        {
            if self.stopping.is_set() {
                let message = "the node is shutting down";
                return wire::error(request_id, ErrorCode::ShuttingDown, message);
            }
            drop(request);
            return self.forward(GOSSIP_SHARD, frame.into_bytes(), request_id).await;
        }
        let key = match &request {
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::Delete { key, .. }
            | Request::Inspect { key }
            | Request::ReplicaRead { key, .. }
            | Request::ReplicaWrite { key, .. } => Some(*key),
            Request::Coordinate { .. } => coordinated.as_ref().map(|(_, request)| request.key()),
            Request::Ping
            | Request::Ring
            | Request::Hello(_)
            | Request::Stats
            | Request::Admin { .. }
            | Request::Scan { .. }
            | Request::Offer { .. }
            | Request::GossipDigest(_)
            | Request::GossipPush(_)
            | Request::Repair { .. }
            | Request::TreeHashes { .. }
            | Request::LeafEntries { .. }
            | Request::Fetch { .. }
            | Request::RepairWrite { .. }
            | Request::Reap { .. } => None,
        };
        // Transfer and anti-entropy requests (and an operator's repair of
        // one partition) name their partition rather than a key.
        let partition = match &request {
            Request::Scan { partition, .. }
            | Request::Offer { partition, .. }
            | Request::TreeHashes { partition, .. }
            | Request::LeafEntries { partition, .. }
            | Request::Fetch { partition, .. }
            | Request::RepairWrite { partition, .. }
            | Request::Reap { partition, .. }
            | Request::Repair { partition: Some(partition) } => {
                if *partition >= self.partitioner.partitions() {
                    let message = format!(
                        "partition {partition} is beyond this node's {}: the nodes disagree on \
                         the number of partitions",
                        self.partitioner.partitions()
                    );
                    return wire::error(request_id, ErrorCode::BadRequest, &message);
                }
                Some(*partition)
            }
            _ => key.map(|key| self.partitioner.partition_of(key)),
        };
        if let Some(partition) = partition {
            let owner = self.partitioner.shard_of(partition);
            if owner != self.id {
                drop(request);
                return self.forward(owner, frame.into_bytes(), request_id).await;
            }
        }
        let partition = partition.unwrap_or(0);
        match request {
            Request::Get { key, r } => {
                let request = ClientRequest::Get { key: key.to_vec(), r };
                wire::client_reply(request_id, Kind::GET, self.coordinate(request, false).await)
            }
            Request::Put { key, value, context, w } => {
                let value = Some(value.to_vec());
                let request = ClientRequest::Put { key: key.to_vec(), value, context, w };
                wire::client_reply(request_id, Kind::PUT, self.coordinate(request, false).await)
            }
            Request::Delete { key, context, w } => {
                let request = ClientRequest::Put { key: key.to_vec(), value: None, context, w };
                wire::client_reply(request_id, Kind::DELETE, self.coordinate(request, false).await)
            }
            Request::Coordinate { .. } => {
                let Some((kind, request)) = coordinated else { unreachable!("unwrapped above") };
                wire::client_reply(request_id, kind, self.coordinate(request, true).await)
            }
            Request::ReplicaRead { partition: theirs, key } => {
                if theirs != partition {
                    return wire::partition_mismatch(request_id, theirs, partition);
                }
                match self.replica.read(partition, key).await {
                    Ok(set) => wire::replica_read_reply(request_id, &set),
                    Err(error) => error_reply(request_id, &error),
                }
            }
            Request::ReplicaWrite { partition: theirs, key, set, hint } => {
                if theirs != partition {
                    return wire::partition_mismatch(request_id, theirs, partition);
                }
                let set = match super::cluster::decode_set(set, self.replica.limits()) {
                    Ok(set) if !set.is_empty() => set,
                    Ok(_) => return wire::error(request_id, ErrorCode::BadRequest, "an empty set"),
                    Err(why) => return wire::error(request_id, ErrorCode::BadRequest, &why),
                };
                match self.replica.merge_hinted(partition, key, &set, hint).await {
                    Ok(_) => wire::replica_write_reply(request_id),
                    Err(error) => error_reply(request_id, &error),
                }
            }
            Request::Inspect { key } => match self.replica.read(partition, key).await {
                Ok(set) => {
                    let node = self.replica.actor().node;
                    let replica = self.cluster.replicas(partition).contains(&node);
                    wire::inspect_reply(request_id, node, partition, replica, &set)
                }
                Err(error) => error_reply(request_id, &error),
            },
            Request::Ring => {
                let ring = self.cluster.ring();
                wire::ring_reply(
                    request_id,
                    self.replica.actor().node,
                    ring.as_deref(),
                    &self.options.cluster,
                )
            }
            Request::Hello(_) => {
                let ring = self.cluster.ring();
                wire::hello_reply(request_id, self.member(), ring.as_deref())
            }
            Request::Ping => wire::pong(request_id),
            Request::Stats => wire::stats_reply(
                request_id,
                self.replica.actor().node,
                self.cluster.node_stats(),
                self.cluster.view(),
            ),
            Request::Scan { partition, after, keys, bytes } => {
                let after = after.map(<[u8]>::to_vec);
                let scan = PeerRequest::Scan { partition, after, keys, bytes };
                self.serve_peer(request_id, scan).await
            }
            Request::Offer { partition, keys } => {
                self.serve_peer(request_id, PeerRequest::Offer { partition, keys }).await
            }
            Request::TreeHashes { partition, level, indices } => {
                let request = PeerRequest::TreeHashes { partition, level, indices };
                self.serve_peer(request_id, request).await
            }
            Request::LeafEntries { partition, leaves } => {
                let request = PeerRequest::LeafEntries { partition, leaves };
                self.serve_peer(request_id, request).await
            }
            Request::Fetch { partition, keys, bytes } => {
                self.serve_peer(request_id, PeerRequest::Fetch { partition, keys, bytes }).await
            }
            Request::RepairWrite { partition, entries } => {
                let mut decoded = Vec::with_capacity(entries.len());
                for (key, set) in entries {
                    match super::cluster::decode_set(set, self.replica.limits()) {
                        Ok(set) if !set.is_empty() => decoded.push((key.to_vec(), set)),
                        Ok(_) => {
                            return wire::error(request_id, ErrorCode::BadRequest, "an empty set");
                        }
                        Err(message) => {
                            return wire::error(request_id, ErrorCode::BadRequest, &message);
                        }
                    }
                }
                let request = PeerRequest::Repair { partition, entries: decoded };
                self.serve_peer(request_id, request).await
            }
            Request::Reap { partition, keys } => {
                self.serve_peer(request_id, PeerRequest::Reap { partition, keys }).await
            }
            Request::Repair { partition } => self.serve_repair(request_id, partition).await,
            Request::Admin { op, node } => {
                let Some(membership) = self.membership() else {
                    return wire::error(request_id, ErrorCode::Unavailable, NO_GOSSIP);
                };
                match membership.admin(op == AdminOp::Leave, node) {
                    Ok((node, status, message)) => {
                        wire::admin_reply(request_id, node, status, &message)
                    }
                    Err((code, message)) => wire::error(request_id, code, &message),
                }
            }
            Request::GossipDigest(digest) => {
                let Some(membership) = self.membership() else {
                    return wire::error(request_id, ErrorCode::Unavailable, NO_GOSSIP);
                };
                match membership.on_digest(digest) {
                    Ok(reply) => reply.to_frame(Kind::GOSSIP_REPLY, request_id),
                    Err(message) => wire::error(request_id, ErrorCode::BadRequest, &message),
                }
            }
            Request::GossipPush(push) => {
                let Some(membership) = self.membership() else {
                    return wire::error(request_id, ErrorCode::Unavailable, NO_GOSSIP);
                };
                membership.on_push(push);
                holdfast_net::message::encode_message(request_id, &GossipPushReply {})
            }
        }
    }

    /// Serves a peer's transfer or anti-entropy request on this shard's
    /// replica (anti-entropy's in the low-share task queue, behind
    /// clients' requests).
    async fn serve_peer(self: &Rc<Self>, request_id: u64, request: PeerRequest) -> Vec<u8> {
        // Only a node that keeps the partition may take it over or compare
        // it: two nodes whose rings differ must never hand a key to each
        // other and both drop it.
        if let Some(partition) = request.partition_checked()
            && !self.cluster.replicates(partition)
        {
            let message = format!(
                "node {:016x} does not replicate partition {partition} in its rings",
                self.replica.actor().node
            );
            return wire::error(request_id, ErrorCode::NotReplica, &message);
        }
        let kind = match &request {
            PeerRequest::TreeHashes { .. } => Some(Kind::TREE),
            PeerRequest::LeafEntries { .. } => Some(Kind::LEAF),
            PeerRequest::Fetch { .. } => Some(Kind::FETCH),
            PeerRequest::Repair { .. } => Some(Kind::REPAIR_WRITE),
            PeerRequest::Reap { .. } => Some(Kind::REAP),
            _ => None,
        };
        let background = request.is_anti_entropy();
        let Some(local) = request.into_local() else {
            return wire::error(request_id, ErrorCode::Internal, "not a replica operation");
        };
        let result = if background {
            let shard = self.clone();
            let running = glommio::spawn_local_into(
                async move { shard.replica.apply(local).await },
                self.background,
            );
            match running {
                Ok(running) => running.await,
                Err(error) => {
                    return wire::error(request_id, ErrorCode::Internal, &error.to_string());
                }
            }
        } else {
            self.replica.apply(local).await
        };
        match (kind, PeerReply::from_local(result)) {
            (_, PeerReply::Failed { code, message }) => wire::error(request_id, code, &message),
            (None, PeerReply::Scanned { entries, more, .. }) => {
                wire::scan_reply(request_id, entries, more)
            }
            (None, PeerReply::Have(have)) => wire::offer_reply(request_id, have),
            (Some(Kind::TREE), PeerReply::Hashes(hashes)) => wire::tree_reply(request_id, hashes),
            (Some(Kind::LEAF), PeerReply::Entries(entries)) => {
                wire::leaf_reply(request_id, entries)
            }
            (Some(Kind::FETCH), PeerReply::Scanned { entries, .. }) => {
                wire::fetch_reply(request_id, entries)
            }
            (Some(Kind::REPAIR_WRITE), PeerReply::Scanned { .. } | PeerReply::Written) => {
                wire::repair_write_reply(request_id)
            }
            (Some(Kind::REAP), PeerReply::Written) => wire::reap_reply(request_id),
            (_, other) => wire::error(request_id, ErrorCode::Internal, &format!("{other:?}")),
        }
    }

    /// Spawns background work (anti-entropy's replica operations) in the
    /// shard's low-share task queue.
    pub(crate) fn spawn_background(&self, work: impl Future<Output = ()> + 'static) {
        match glommio::spawn_local_into(work, self.background) {
            Ok(task) => {
                task.detach();
            }
            Err(error) => {
                tracing::error!(shard = self.id, %error, "the background task queue is gone");
            }
        }
    }

    /// An operator's repair: of one partition (this shard owns it: the
    /// request was routed here), or of every partition the node
    /// replicates, on every shard at once.
    async fn serve_repair(self: &Rc<Self>, request_id: u64, partition: Option<u32>) -> Vec<u8> {
        let started = std::time::Instant::now();
        let node = self.replica.actor().node;
        if let Some(partition) = partition
            && !self.cluster.replicates(partition)
        {
            let message = format!(
                "node {node:016x} does not replicate partition {partition}: ask one of its \
                 replicas (holdfast status --key shows a key's)"
            );
            return wire::error(request_id, ErrorCode::NotReplica, &message);
        }
        let repairing = async {
            let Some(partition) = partition else { return self.repair_everywhere().await };
            self.repair(Some(vec![partition])).await.ok_or("the coordinator dropped the repair")
        };
        let repairing = std::pin::pin!(repairing);
        let stopping = std::pin::pin!(self.stopping.wait());
        let report = match futures::future::select(repairing, stopping).await {
            futures::future::Either::Left((Ok(report), _)) => report,
            futures::future::Either::Left((Err(message), _)) => {
                return wire::error(request_id, ErrorCode::Internal, message);
            }
            futures::future::Either::Right(_) => {
                let message = "the node is shutting down; the repair stopped";
                return wire::error(request_id, ErrorCode::ShuttingDown, message);
            }
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let reply = RepairReply {
            node,
            exchanges: report.exchanges,
            skipped: report.skipped,
            partitions_differing: report.partitions_differing,
            leaves_differing: report.leaves_differing,
            hashes: report.hashes,
            entries: report.entries,
            keys_repaired: report.keys_repaired,
            keys_received: report.keys_received,
            bytes_received: report.bytes_received,
            keys_sent: report.keys_sent,
            bytes_sent: report.bytes_sent,
            elapsed_ms,
        };
        holdfast_net::message::encode_message(request_id, &reply)
    }

    /// Runs a repair of every partition on every shard (each on its own
    /// coordinator) and sums their reports.
    async fn repair_everywhere(self: &Rc<Self>) -> Result<RepairReport, &'static str> {
        let mut waiting = Vec::new();
        if let Some(peers) = &self.peers {
            for shard in 0..self.options.shards {
                if shard == self.id {
                    continue;
                }
                let token = self.next_token.get();
                self.next_token.set(token + 1);
                let (done, report) = oneshot::channel();
                self.repairs.borrow_mut().insert(token, done);
                let message = Forward::Repair { origin: self.id, token };
                if peers.send_to(shard as usize, message).await.is_err() {
                    self.repairs.borrow_mut().remove(&token);
                    return Err("a shard is gone");
                }
                waiting.push(report);
            }
        }
        let mut total = self.repair(None).await.ok_or("the coordinator dropped the repair")?;
        for report in waiting {
            match report.await {
                Ok(Some(report)) => total += report,
                Ok(None) | Err(_) => return Err("a shard could not run the repair"),
            }
        }
        Ok(total)
    }

    /// Shard 0's gossip, once it started.
    fn membership(&self) -> Option<Rc<Membership>> {
        self.membership.borrow().clone()
    }

    /// Shard 0: waits for the node's gossip, then ticks it until the shard
    /// stops.
    async fn run_membership(self: Rc<Self>, start: StartCell, view: ViewCell, stats: StatsCell) {
        while !self.stopping.is_set() {
            glommio::timer::sleep(super::membership::TICK).await;
            if self.membership.borrow().is_none() {
                let Some(gossip) = start.lock().ok().and_then(|mut slot| slot.take()) else {
                    continue;
                };
                tracing::info!(
                    status = ?gossip.status_of(gossip.id()),
                    ring = gossip.ring().map(|ring| ring.version()),
                    members = gossip.members().len(),
                    "gossip started"
                );
                let membership = Membership::new(
                    gossip,
                    self.options.data_dir.clone(),
                    view.clone(),
                    stats.clone(),
                    self.options.shards as usize,
                );
                *self.membership.borrow_mut() = Some(membership);
            }
            if let Some(membership) = self.membership() {
                membership.tick();
            }
        }
    }

    /// The client request a `Coordinate` wraps, and its kind; or the reply
    /// that refuses it.
    fn unwrap_coordinate(
        &self,
        request_id: u64,
        wrapped: &[u8],
        limits: &RequestLimits,
    ) -> Result<(Kind, ClientRequest), Vec<u8>> {
        let inner = Frame::from_bytes(wrapped, self.options.frame_bytes_max)
            .map_err(|error| wire::error(request_id, ErrorCode::BadRequest, &error.to_string()))?;
        let parsed = Request::parse(&inner, limits).map_err(|refusal| {
            holdfast_net::message::encode_message(request_id, &refusal.to_reply())
        })?;
        Ok(match parsed {
            Request::Get { key, r } => (Kind::GET, ClientRequest::Get { key: key.to_vec(), r }),
            Request::Put { key, value, context, w } => {
                let value = Some(value.to_vec());
                (Kind::PUT, ClientRequest::Put { key: key.to_vec(), value, context, w })
            }
            Request::Delete { key, context, w } => {
                (Kind::DELETE, ClientRequest::Put { key: key.to_vec(), value: None, context, w })
            }
            other => {
                let message = format!("a {} cannot be coordinated", other.kind());
                return Err(wire::error(request_id, ErrorCode::BadRequest, &message));
            }
        })
    }

    /// This node as the ring knows it.
    pub fn member(&self) -> Member {
        Member {
            id: self.replica.actor().node,
            addr: self.options.listen.to_string(),
            weight: self.options.weight,
            zone: self.options.zone.clone(),
        }
    }

    /// Sends a request frame to the shard that owns its key and waits for
    /// the reply frame.
    async fn forward(
        &self,
        owner: u32,
        frame: holdfast_net::frame::AlignedVec,
        request_id: u64,
    ) -> Vec<u8> {
        let Some(peers) = &self.peers else {
            unreachable!("a single shard owns every partition");
        };
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let (done, reply) = oneshot::channel();
        self.forwarded.borrow_mut().insert(token, done);
        let message = Forward::Request { origin: self.id, token, frame };
        if peers.send_to(owner as usize, message).await.is_err() {
            self.forwarded.borrow_mut().remove(&token);
            return wire::error(request_id, ErrorCode::Internal, "owning shard is gone");
        }
        // The owning shard may have stopped already when this shard is
        // still finishing a request it read just before it saw the
        // shutdown: then no reply comes, and waiting for one would keep
        // this shard from ever stopping.
        let replied = std::pin::pin!(reply);
        let stopped = std::pin::pin!(async {
            self.stopping.wait().await;
            let grace = self.options.cluster.request_timeout + FORWARD_GRACE_AFTER_STOP;
            glommio::timer::sleep(grace).await;
        });
        match futures::future::select(replied, stopped).await {
            futures::future::Either::Left((Ok(frame), _)) => frame,
            futures::future::Either::Left((Err(_), _)) => {
                wire::error(request_id, ErrorCode::Internal, "owning shard dropped the request")
            }
            futures::future::Either::Right(_) => {
                self.forwarded.borrow_mut().remove(&token);
                let message = "the node is shutting down and the owning shard has stopped";
                wire::error(request_id, ErrorCode::ShuttingDown, message)
            }
        }
    }

    /// Handles a message from another shard.
    fn on_forward(self: Rc<Self>, message: Forward) {
        match message {
            Forward::Request { origin, token, frame } => {
                self.in_flight.set(self.in_flight.get() + 1);
                glommio::spawn_local(async move {
                    // The frame was checked where it arrived; it is checked
                    // again here (cheaply, without a copy) because this shard
                    // trusts nothing it did not check itself.
                    let reply = match Frame::from_aligned_bytes(frame, self.options.frame_bytes_max)
                    {
                        Ok(frame) => self.handle(frame).await,
                        Err(error) => wire::error(0, ErrorCode::Internal, &error.to_string()),
                    };
                    if let Some(peers) = &self.peers {
                        let _ = peers
                            .send_to(origin as usize, Forward::Reply { token, frame: reply })
                            .await;
                    }
                    self.in_flight.set(self.in_flight.get() - 1);
                })
                .detach();
            }
            Forward::Reply { token, frame } => {
                if let Some(done) = self.forwarded.borrow_mut().remove(&token) {
                    let _ = done.send(frame);
                }
            }
            Forward::Repair { origin, token } => {
                glommio::spawn_local(async move {
                    let repairing = std::pin::pin!(self.repair(None));
                    let stopping = std::pin::pin!(self.stopping.wait());
                    let report = match futures::future::select(repairing, stopping).await {
                        futures::future::Either::Left((report, _)) => report,
                        futures::future::Either::Right(_) => None,
                    };
                    if let Some(peers) = &self.peers {
                        let _ = peers
                            .send_to(origin as usize, Forward::Repaired { token, report })
                            .await;
                    }
                })
                .detach();
            }
            Forward::Repaired { token, report } => {
                if let Some(done) = self.repairs.borrow_mut().remove(&token) {
                    let _ = done.send(report);
                }
            }
        }
    }
}

/// The reply for a failed operation.
fn error_reply(request_id: u64, error: &ReplicaError) -> Vec<u8> {
    wire::error(request_id, error.code(), &error.to_string())
}

/// A flag tasks can wait on: set once, never cleared.
///
/// Each waiting future keeps one slot for its waker, replaced on every
/// poll and removed when the future is dropped. (It used to push a waker
/// clone on every poll: a connection's reader, which waits on the shard's
/// `stopping` beside every read, piled up one clone per read until
/// glommio's 16-bit task reference count overflowed and the shard
/// panicked after about 32,000 reads on one connection.)
#[derive(Default)]
pub(crate) struct Watch {
    set: Cell<bool>,
    waiters: RefCell<AHashMap<u64, Waker>>,
    next_slot: Cell<u64>,
}

impl Watch {
    pub fn set(&self) {
        self.set.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Completes once the flag is set.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        WatchWait { watch: self, slot: None }
    }

    /// Futures waiting now (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

struct WatchWait<'a> {
    watch: &'a Watch,
    slot: Option<u64>,
}

impl Future for WatchWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.watch.set.get() {
            return Poll::Ready(());
        }
        let slot = match self.slot {
            Some(slot) => slot,
            None => {
                let slot = self.watch.next_slot.get();
                self.watch.next_slot.set(slot + 1);
                self.slot = Some(slot);
                slot
            }
        };
        self.watch.waiters.borrow_mut().insert(slot, context.waker().clone());
        Poll::Pending
    }
}

impl Drop for WatchWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.watch.waiters.borrow_mut().remove(&slot);
        }
    }
}

/// Paces compaction to a byte rate on the shard's timers: after every
/// chunk it sleeps as long as the chunk was worth at that rate, so a burst
/// of background I/O never queues in front of foreground writes for long.
struct Paced {
    bytes_per_second: u64,
}

impl Paced {
    fn new(bytes_per_second: u64) -> Paced {
        assert!(bytes_per_second > 0);
        Paced { bytes_per_second }
    }
}

impl crate::store::Pace for Paced {
    fn after(&mut self, bytes: u64) -> impl Future<Output = ()> {
        let pause = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        glommio::timer::sleep(pause)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Context;

    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_watch_keeps_one_waker_per_waiting_future_however_often_it_is_polled() {
        let watch = Watch::default();
        let mut context = Context::from_waker(futures::task::noop_waker_ref());
        // What a connection's reader does: a fresh wait beside every read.
        for _ in 0..100_000 {
            let mut waiting = std::pin::pin!(watch.wait());
            assert!(waiting.as_mut().poll_unpin(&mut context).is_pending());
            assert!(waiting.as_mut().poll_unpin(&mut context).is_pending());
            assert_eq!(watch.waiting(), 1, "one slot while it waits");
        }
        assert_eq!(watch.waiting(), 0, "a dropped wait leaves nothing behind");
        let mut waiting = std::pin::pin!(watch.wait());
        assert!(waiting.as_mut().poll_unpin(&mut context).is_pending());
        watch.set();
        assert!(waiting.as_mut().poll_unpin(&mut context).is_ready());
        assert!(watch.is_set());
    }
}
