//! The node's server: one glommio executor per shard, each owning a fixed
//! subset of the partitions, their store and their replica state.
//!
//! # Shape
//!
//! ```text
//!            clients (pipelined frames)
//!   SO_REUSEPORT: the kernel spreads connections over the shards
//!        |                 |
//!   +---------+       +---------+
//!   | shard 0 | <---> | shard 1 |   channel mesh: a request for a key the
//!   | store 0 |  raw  | store 1 |   other shard owns crosses as the frame it
//!   +---------+ frames+---------+   arrived in, its reply comes back the same
//! ```
//!
//! Each shard listens on the same address (`SO_REUSEPORT`), accepts its
//! own connections, and serves each as a reader task and a task per
//! request (so requests on one connection are answered as they complete,
//! possibly out of order); replies queue on the connection and go out
//! together, one `send` per connection per loop turn. The sockets are
//! driven by the shard's own io_uring ring (`uring`), or by glommio's
//! (`Transport::Glommio`, the fallback). A request whose key
//! belongs to another shard travels there over the mesh as the frame it
//! arrived in and its reply frame travels back, neither re-encoded; there
//! are no locks on the data path.
//!
//! # Start-up and shutdown
//!
//! Shards open their stores first and report their recovery; the node's
//! identity (and whether its incarnation is bumped: see `identity`) is
//! settled from those reports before any shard coordinates a write.
//! Then the node's membership starts (`membership`): from its `membership`
//! file if it has one, else by joining through its seeds (`join`), else
//! by forming the first ring with its seeds (`seeds`). Shard 0 runs the
//! node's gossip from then on; every shard routes by the ring gossip
//! installs and pulls what it gains in the pending ring, and gossip and
//! operators' membership requests (`ADMIN`) are served by shard 0.
//!
//! Shutdown (the `shutdown` flag, set by the binary on SIGTERM/SIGINT):
//! every shard stops accepting and reading, finishes the requests in
//! flight, answers them, closes its store (which syncs and seals it) and
//! exits.

mod cluster;
mod connection;
mod membership;
mod seeds;
mod shard;
mod uring;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::store::{RecoveryReport, StoreOptions, SyncPolicy};

/// How long a shard's task queue runs before the executor polls its rings
/// and may switch queues (see where the executors are built).
const PREEMPT_TIMER: Duration = Duration::from_millis(100);

/// How a node is configured.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Executors, one per core; each owns `partitions / shards` partitions.
    pub shards: u32,
    /// The number of partitions (a power of two; fixed for a cluster's life).
    pub partitions: u32,
    pub store: StoreOptions,
    /// The largest frame accepted from a peer, header included.
    pub frame_bytes_max: u32,
    /// Requests in flight on one connection before it stops reading.
    pub connection_in_flight_max: usize,
    /// Pin shard `i` to CPU `i` (when there are that many CPUs).
    pub pin: bool,
    /// How often background upkeep (sealing, index files, compaction) runs.
    pub maintenance_interval: Duration,
    /// The most bytes per second compaction reads, and again writes.
    pub compaction_bytes_per_second: u64,
    /// The other nodes of the cluster, by address: the node exchanges its
    /// identity with each at start and forms the ring once it knows them
    /// all. Empty for a one-node cluster.
    pub seeds: Vec<SocketAddr>,
    /// This node's share of the partitions relative to the others'.
    pub weight: u32,
    /// The failure zone (rack, availability zone) this node is in; a key's
    /// replicas are spread over zones when there are enough. Empty: none.
    pub zone: String,
    /// N, R, W and the coordinator's timeouts.
    pub cluster: crate::cluster::ClusterOptions,
    /// How often the node starts a gossip exchange.
    pub gossip_interval: Duration,
    /// Join a running cluster through `seeds` (gossip) instead of forming
    /// the first ring with them. Ignored once the node has a `membership`
    /// file: a restarted node rejoins as what it was.
    pub join: bool,
    /// The id a node without `node.id` takes instead of a random one: a
    /// node that lost its data directory comes back as itself (at an
    /// incarnation its earlier life cannot have used: see `identity`). If
    /// `node.id` names another node, the node refuses to start.
    pub node_id: Option<u64>,
    /// What drives the clients' sockets.
    pub transport: Transport,
}

/// What drives a shard's client sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The shard's own io_uring ring (multishot accept and receive into
    /// provided buffers, sends batched per loop turn, completions run only
    /// when the shard asks): see `server/uring.rs`. Falls back to
    /// [`Transport::Glommio`] on a kernel without it (before 6.1).
    #[default]
    Uring,
    /// glommio's sockets (a poll on glommio's ring, then `recv`/`send`).
    Glommio,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(text: &str) -> Result<Transport, String> {
        match text {
            "uring" => Ok(Transport::Uring),
            "glommio" => Ok(Transport::Glommio),
            other => Err(format!("unknown transport {other:?} (uring or glommio)")),
        }
    }
}

impl ServerOptions {
    /// Defaults for a node listening on `listen` with data in `data_dir`.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ServerOptions {
        ServerOptions {
            data_dir,
            listen,
            shards: 1,
            partitions: crate::partition::PARTITIONS_DEFAULT,
            store: StoreOptions::default(),
            frame_bytes_max: holdfast_net::limits::FRAME_BYTES_MAX_DEFAULT,
            connection_in_flight_max: 1024,
            pin: true,
            maintenance_interval: Duration::from_millis(100),
            compaction_bytes_per_second: 32 << 20,
            seeds: Vec::new(),
            weight: 1,
            zone: String::new(),
            cluster: crate::cluster::ClusterOptions::default(),
            gossip_interval: Duration::from_secs(1),
            join: false,
            node_id: None,
            transport: Transport::Uring,
        }
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("shard {shard}: {message}")]
    Shard { shard: u32, message: String },
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("the data directory {0} is in use by another holdfast process")]
    DataDirInUse(PathBuf),
    #[error("the address {0} is taken by another process")]
    AddressInUse(SocketAddr),
    #[error("membership: {0}")]
    Membership(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Takes an exclusive advisory lock on `dir/LOCK`, held while the returned
/// file is open (and released by the kernel if the process dies).
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    // SAFETY: `flock` on a valid, open descriptor has no memory effects.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EWOULDBLOCK) => ServerError::DataDirInUse(dir.to_path_buf()),
            _ => ServerError::Io(error),
        });
    }
    Ok(file)
}

/// Fails if another process listens on `addr`: the shards bind with
/// `SO_REUSEPORT`, which would silently share the port (and split the
/// connections) with a leftover process.
fn refuse_a_taken_address(addr: SocketAddr) -> Result<(), ServerError> {
    if someone_listens_on(addr)? {
        return Err(ServerError::AddressInUse(addr));
    }
    Ok(())
}

/// Whether a process listens on `addr` now: a plain bind (without
/// `SO_REUSEPORT`) fails. A bind also fails while connections that were
/// accepted on the port linger in TIME_WAIT (they inherit the shards'
/// `SO_REUSEPORT`, which the probe lacks), though nothing listens and the
/// shards' own bind would succeed; so a refused bind is confirmed by
/// connecting: only a listener accepts. `holdfast up` checks its ports
/// with this too.
pub fn someone_listens_on(addr: SocketAddr) -> std::io::Result<bool> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            let probe = if addr.ip().is_unspecified() {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
            } else {
                addr
            };
            match std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(500)) {
                Err(refused) if refused.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(%addr, "the port has lingering connections but no listener");
                    Ok(false)
                }
                _ => Ok(true),
            }
        }
        Err(error) => Err(error),
    }
}

/// Starts the node's gossip (handed to shard 0 through `start`) and gives
/// the shards their ring:
///
/// - a node with a `membership` file starts from it (and announces its
///   restart);
/// - a joining node starts from itself and its seeds, and gets its ring
///   from gossip;
/// - otherwise the node forms the first ring as before: at once for a node
///   alone or one that kept its `ring` file from an earlier version,
///   otherwise once every seed has answered (on a thread of its own, while
///   the shards already serve, so that seeds starting together can answer
///   each other); gossip then starts from that ring with every member up.
fn start_membership(
    options: &ServerOptions,
    node: u64,
    view: membership::ViewCell,
    start: membership::StartCell,
    shutdown: &Arc<AtomicBool>,
) -> Result<(), ServerError> {
    use crate::cluster::gossip::{Gossip, GossipOptions};

    let me = membership::me(node, options);
    let gossip_options = GossipOptions {
        interval: options.gossip_interval,
        replicas: usize::from(options.cluster.n),
    };
    let seeds: Vec<SocketAddr> =
        options.seeds.iter().copied().filter(|seed| *seed != options.listen).collect();
    let seed_addrs: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
    let hand_over = move |gossip: Gossip, start: &membership::StartCell| {
        if let Ok(mut view) = view.lock() {
            view.ring = gossip.ring();
            view.next = gossip.next_ring();
        }
        if let Ok(mut slot) = start.lock() {
            *slot = Some(gossip);
        }
    };
    if let Some(state) = membership::load(&options.data_dir).map_err(ServerError::Membership)? {
        if options.join {
            tracing::info!(
                "this node has a membership file: it rejoins as what it was (join is ignored)"
            );
        }
        let mut gossip = Gossip::from_state(me, state, seed_addrs, gossip_options)
            .map_err(|error| ServerError::Membership(error.to_string()))?;
        gossip.restart(&mut Vec::new());
        tracing::info!(
            status = ?gossip.status_of(node),
            ring = gossip.ring().map(|ring| ring.version()),
            members = gossip.members().len(),
            "membership restored"
        );
        hand_over(gossip, &start);
        return Ok(());
    }
    if options.join {
        if seeds.is_empty() {
            return Err(ServerError::Options("join needs at least one seed".into()));
        }
        tracing::info!(seeds = ?seed_addrs, "joining a running cluster through its seeds");
        hand_over(Gossip::new(me, seed_addrs, gossip_options), &start);
        return Ok(());
    }
    let formed = move |ring: holdfast_net::ring::Ring| -> Result<Gossip, String> {
        tracing::info!(
            version = ring.version(),
            members = ring.members().len(),
            partitions = ring.partitions(),
            "ring ready"
        );
        let state = membership::formed_state(&ring)?;
        Gossip::from_state(me, state, seed_addrs, gossip_options).map_err(|e| e.to_string())
    };
    if seeds.is_empty() {
        // A node on its own is a cluster of one: its ring needs nobody.
        let ring = holdfast_net::ring::Ring::new(
            options.partitions,
            vec![membership::me(node, options)],
            1,
        )
        .map_err(|error| ServerError::Options(error.to_string()))?;
        let gossip = formed(ring).map_err(ServerError::Membership)?;
        membership::persist_state(&options.data_dir, gossip.state())?;
        hand_over(gossip, &start);
        return Ok(());
    }
    let (dir, partitions, shutdown) =
        (options.data_dir.clone(), options.partitions, shutdown.clone());
    let forming_me = membership::me(node, options);
    let spawned = std::thread::Builder::new().name("ring-formation".into()).spawn(move || {
        let ring = match seeds::form(&forming_me, &seeds, partitions, &shutdown) {
            None => return,
            Some(seeds::Formed::Ring(ring)) => ring,
            Some(seeds::Formed::Join) => {
                // Joining needs the cluster's N, R and W, which this node
                // was not started to learn: it stays without a ring (and
                // says so to every request) rather than guess.
                tracing::error!(
                    "the seeds already run a cluster without this node, so it forms no ring \
                     of its own and serves nothing: restart it with --join to join that \
                     cluster (its data directory holds no membership yet)"
                );
                return;
            }
        };
        match formed(ring) {
            Ok(gossip) => {
                if let Err(error) = membership::persist_state(&dir, gossip.state()) {
                    tracing::error!(%error, "the membership could not be persisted");
                }
                hand_over(gossip, &start);
            }
            Err(error) => tracing::error!(%error, "the formed ring does not make a membership"),
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "the ring-formation thread could not start");
    }
    Ok(())
}

/// What a node reports once it stopped.
#[derive(Debug, Clone, Default)]
pub struct ServerReport {
    pub recovery: Vec<RecoveryReport>,
    pub requests: u64,
}

/// Runs a node until `shutdown` is set, then stops it gracefully.
pub fn run(options: ServerOptions, shutdown: Arc<AtomicBool>) -> Result<ServerReport, ServerError> {
    let partitioner = crate::partition::Partitioner::new(options.partitions, options.shards)
        .map_err(ServerError::Options)?;
    options.store.validate(4096).map_err(ServerError::Options)?;
    crate::disk::dma::raise_memlock_limit()?;
    std::fs::create_dir_all(&options.data_dir)?;
    // Held until this function returns: a second node on the same data
    // directory would write the same segments.
    let _lock = lock_data_dir(&options.data_dir)?;
    refuse_a_taken_address(options.listen)?;
    let fresh = !options.data_dir.join("node.id").exists();
    options.cluster.validate().map_err(ServerError::Options)?;
    if options.weight == 0 {
        return Err(ServerError::Options("weight must be at least 1".into()));
    }
    if options.gossip_interval.is_zero() {
        return Err(ServerError::Options("the gossip interval must be above 0".into()));
    }
    let view: membership::ViewCell = Arc::default();
    let start: membership::StartCell = Arc::default();
    let stats: cluster::StatsCell = Arc::new(std::sync::Mutex::new(Vec::new()));

    let shards = options.shards as usize;
    let mesh = glommio::channels::channel_mesh::MeshBuilder::full(shards, 1024);
    let (recovered_tx, recovered_rx) = std::sync::mpsc::channel();
    let mut actor_txs = Vec::new();
    let mut handles = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for shard in 0..options.shards {
        let (actor_tx, actor_rx) = std::sync::mpsc::channel();
        actor_txs.push(actor_tx);
        let placement = if options.pin && shards <= cpus {
            Placement::Fixed(shard as usize)
        } else {
            Placement::Unbound
        };
        let context = shard::ShardContext {
            id: shard,
            partitioner,
            options: options.clone(),
            mesh: (shards > 1).then(|| mesh.clone()),
            recovered: recovered_tx.clone(),
            actor: actor_rx,
            shutdown: shutdown.clone(),
            view: view.clone(),
            stats: stats.clone(),
            start: start.clone(),
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{shard}"))
            // How long a task queue may run before glommio polls its own
            // rings (the store's I/O, timers) and switches queues. glommio
            // also cuts a queue short when a socket of its own has input;
            // client sockets live on the shard's own ring (`uring`), so
            // this timer bounds how long background work can hold the
            // shard. 1 ms cut half-rate write tails, but 14 of 120 nodes
            // started three at a time then hung before opening their
            // stores (parked in glommio with a timer due), so it stays at
            // 100 ms until that is understood; background work yields
            // every few thousand records instead.
            .preempt_timer(PREEMPT_TIMER)
            .spawn(move || shard::run(context))
            .map_err(|error| ServerError::Shard { shard, message: error.to_string() })?;
        handles.push(handle);
    }
    drop(recovered_tx);

    // Settle the node's identity from every shard's recovery before any
    // shard writes with it.
    let mut recovery = vec![RecoveryReport::default(); shards];
    for _ in 0..shards {
        match recovered_rx.recv() {
            Ok((shard, Ok(report))) => recovery[shard as usize] = report,
            Ok((shard, Err(message))) => {
                shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
                drop(actor_txs);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(ServerError::Shard { shard, message });
            }
            Err(_) => break,
        }
    }
    let lost_something = recovery
        .iter()
        .any(|report| report.torn_tails_truncated > 0 || report.corrupt_records_skipped > 0);
    let bump = !fresh && (lost_something || options.store.sync != SyncPolicy::Always);
    let fresh_as = crate::identity::Fresh::choose(options.node_id, &mut rand::rng());
    let identity = crate::identity::load_or_create(&options.data_dir, fresh_as, bump)?;
    tracing::info!(
        node = format_args!("{:016x}", identity.node),
        incarnation = identity.incarnation,
        listen = %options.listen,
        shards,
        "node ready"
    );
    let actor = holdfast_net::Actor::new(identity.node, identity.incarnation);
    for tx in actor_txs {
        let _ = tx.send(actor);
    }
    if let Err(error) = start_membership(&options, identity.node, view, start, &shutdown) {
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        for handle in handles {
            let _ = handle.join();
        }
        return Err(error);
    }
    let mut report = ServerReport { recovery, requests: 0 };
    let mut failure = None;
    for (shard, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(requests)) => report.requests += requests,
            Ok(Err(message)) => failure = Some(ServerError::Shard { shard: shard as u32, message }),
            Err(error) => {
                failure =
                    Some(ServerError::Shard { shard: shard as u32, message: error.to_string() })
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(report),
    }
}
