//! A replica: what a node does with the keys it holds.
//!
//! It keeps each key's sibling set in the shard's store, as the set's
//! canonical encoding, and applies writes to it: a coordinated write
//! (`write`: a new version from a client's value and context, with this
//! node's actor) or, in the cluster issues, a replicated set (merged).
//!
//! Read-modify-write of one key is serialised by a per-key latch, so two
//! writes to the same key on the same shard never read the same old set
//! and lose one another's version. The latch is held only until the new
//! set is queued in the store, not until it is durable: the store applies
//! writes in the order they are queued, and the next writer of the key
//! builds on the newest queued set (kept in `pending` until durable). So a
//! hot key's writes share group commits instead of taking one each.
//! Different keys never wait for each other, and reads take no latch: they
//! see the last durable set.
//!
//! A queued write that then fails (a full disk) may still reach the disk
//! inside a later write of the same key built on it. Its client was told
//! the outcome is unknown, which allows exactly that.
//!
//! # Hints
//!
//! A node that takes a write in place of a key's owner (sloppy quorum)
//! merges the set into its own store like any replica write, so it can
//! serve reads of it and, coordinating, never reissue a dot; and it records
//! a hint: in the store's hint space (partition `p | HINT_PARTITION_BIT`,
//! the same key), the owners it holds the key for, each with a token (the
//! hash of the set it last recorded for them). Both are durable before the
//! write is acknowledged. Delivery sends the key's current set to the owner
//! and then drops the hint only if its token is unchanged, so a hinted
//! write that lands meanwhile is delivered by the next pass, never lost.
//! Hints survive restarts because they are ordinary store records.
//!
//! # Merkle trees
//!
//! Every data partition's keys are summarised in a Merkle tree
//! (`trees`), updated as each write is queued; anti-entropy compares them
//! between replicas ([`Replica::tree_hashes`], [`Replica::leaf_entries`]).
//! After open the trees are built in the background
//! ([`Replica::build_trees`]) and a partition is not comparable until its
//! tree is.
//!
//! # Corrupt records
//!
//! A key whose record fails its checksum is never served (reads report the
//! corruption). A write or merge of it treats it as lost: it starts from an
//! empty set, after moving the partition's actor epoch on (the lost set may
//! hold dots this node issued, which must never be issued again), so
//! anti-entropy and read repair can put the replicas' versions back.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use ahash::AHashMap;
use futures::lock::{Mutex, OwnedMutexGuard};
use holdfast_net::message::ErrorCode;
use holdfast_net::siblings::{DecodeError, DecodeLimits, VERSIONS_MAX};
use holdfast_net::{Actor, Dot, SiblingSet, VersionVector};
use xxhash_rust::xxh3::xxh3_64;

use crate::cluster::coordinator::{Hint, LocalOp, LocalResult, Progress, set_token};
use crate::cluster::merkle::{self, DEPTH, LEAVES};
use crate::disk::Disk;
use crate::store::{ReadError, Store, WriteError};
use holdfast_net::ring::NodeId;

mod trees;

/// The most entries one [`Replica::leaf_entries`] answer lists: a bound on
/// its frame. Keys beyond it are compared in a later exchange.
pub const LEAF_ENTRIES_MAX: usize = 4096;

/// Why a replica operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The stored set does not decode: the record verified, so this is a
    /// bug or a format mismatch, never served as data.
    #[error("stored sibling set does not decode: {0}")]
    Stored(DecodeError),
    /// A record the replica keeps for itself (an actor epoch) is damaged; the
    /// operation that needed it is refused rather than guessed at.
    #[error("{0}")]
    Metadata(String),
    /// The write could not be made a version (its context is unusable).
    #[error("write refused: {0}")]
    Clock(#[from] holdfast_net::siblings::WriteError),
}

impl ReplicaError {
    /// The wire code that tells a client (or a coordinator) about it.
    pub fn code(&self) -> ErrorCode {
        use crate::store::WriteError as Store;
        use holdfast_net::siblings::WriteError as Clock;
        match self {
            ReplicaError::Write(Store::KeyTooLarge { .. }) => ErrorCode::KeyTooLarge,
            ReplicaError::Write(Store::ValueTooLarge { .. }) => ErrorCode::ValueTooLarge,
            ReplicaError::Write(Store::DiskFull) => ErrorCode::DiskFull,
            ReplicaError::Write(Store::Closed) => ErrorCode::ShuttingDown,
            ReplicaError::Clock(Clock::TooManySiblings { .. }) => ErrorCode::TooManySiblings,
            ReplicaError::Clock(_) => ErrorCode::BadContext,
            _ => ErrorCode::Internal,
        }
    }
}

/// The write latches of the keys being written, by `(partition, key)`.
type Latches = RefCell<AHashMap<(u32, Box<[u8]>), Arc<Mutex<()>>>>;

/// Per key being written: its newest queued set, how many of its writes
/// are in flight, and the set's Merkle entry hash.
type QueuedSets = AHashMap<(u32, Box<[u8]>), (SiblingSet, u32, u64)>;

/// One partition's keys whose sets are only tombstones, with their tokens.
type Tombstones = BTreeMap<Box<[u8]>, u64>;

/// The keys of one shard's store, as sibling sets.
#[derive(Debug)]
pub struct Replica<D: Disk> {
    store: Store<D>,
    actor: Actor,
    limits: DecodeLimits,
    latches: Latches,
    /// The newest queued, not yet durable set of each key being written,
    /// and how many writes of it are in flight.
    pending: RefCell<QueuedSets>,
    /// Actor epochs by partition, as read from the store (see `remove`).
    epochs: RefCell<AHashMap<u32, u32>>,
    /// The Merkle tree of every data partition.
    trees: RefCell<trees::Trees>,
    /// Per data partition, the keys whose sets are only tombstones, with
    /// their tokens: what anti-entropy may reap.
    tombstones: RefCell<AHashMap<u32, Tombstones>>,
    /// Counter floors by partition, as read from the store: the actor
    /// (incarnation) they are for, and the floor (see `reap`).
    floors: RefCell<AHashMap<u32, (u32, u64)>>,
}

impl<D: Disk> Replica<D> {
    /// A replica over `store`, writing as `actor`.
    pub fn new(store: Store<D>, actor: Actor) -> Replica<D> {
        let value_bytes_max = u32::try_from(store.options().value_bytes_max).unwrap_or(u32::MAX);
        let special = HINT_PARTITION_BIT | META_PARTITION_BIT;
        let held = store.live_partitions().into_iter().filter(|p| p & special == 0);
        let trees = RefCell::new(trees::Trees::new(held));
        Replica {
            store,
            actor,
            // A stored set holds at most as many values as the format allows;
            // each value is within the store's limit.
            limits: DecodeLimits { value_bytes_max },
            latches: RefCell::new(AHashMap::new()),
            pending: RefCell::new(AHashMap::new()),
            epochs: RefCell::new(AHashMap::new()),
            trees,
            tombstones: RefCell::new(AHashMap::new()),
            floors: RefCell::new(AHashMap::new()),
        }
    }

    pub fn store(&self) -> &Store<D> {
        &self.store
    }

    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// The limits sets are decoded with (from the store's value limit).
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// The sibling set of `key` (empty if the key was never written).
    pub async fn read(&self, partition: u32, key: &[u8]) -> Result<SiblingSet, ReplicaError> {
        match self.store.get(partition, key).await? {
            Some(bytes) => SiblingSet::decode(&bytes, self.limits).map_err(ReplicaError::Stored),
            None => Ok(SiblingSet::new()),
        }
    }

    /// Coordinates a write: `value` (or a tombstone, for `None`) supersedes
    /// exactly the versions `context` covers. Returns the set after the
    /// write, durable under the store's sync policy, and the new version's
    /// dot.
    pub async fn write(
        &self,
        partition: u32,
        key: &[u8],
        context: &VersionVector,
        value: Option<Vec<u8>>,
    ) -> Result<(SiblingSet, Dot), ReplicaError> {
        let epoch = self.epoch(partition).await?;
        self.floor(partition).await?;
        let (set, dot) = self
            .update(partition, key, |set| {
                // Read again under the key's latch: a removal or a reap of
                // this key may have moved the epoch or the floor on while
                // the write waited.
                let epoch = self.epochs.borrow().get(&partition).copied().unwrap_or(epoch);
                let actor = self.actor_in(epoch)?;
                let floor = match self.floors.borrow().get(&partition) {
                    Some(&(incarnation, floor)) if incarnation == actor.incarnation => floor,
                    _ => 0,
                };
                Ok(Some(set.write_above(actor, context, value, floor)?))
            })
            .await?;
        Ok((set, dot.expect("a write always changes the set")))
    }

    /// [`write`](Self::write), and with a `hint` also records that this
    /// node holds the key for that owner, durably.
    pub async fn write_hinted(
        &self,
        partition: u32,
        key: &[u8],
        context: &VersionVector,
        value: Option<Vec<u8>>,
        hint: Option<NodeId>,
    ) -> Result<(SiblingSet, Dot), ReplicaError> {
        let (set, dot) = self.write(partition, key, context, value).await?;
        if let Some(owner) = hint {
            self.record_hint(partition, key, owner, token(&set)).await?;
        }
        Ok((set, dot))
    }

    /// [`merge`](Self::merge), and with a `hint` also records that this node
    /// holds the key for that owner, durably.
    pub async fn merge_hinted(
        &self,
        partition: u32,
        key: &[u8],
        incoming: &SiblingSet,
        hint: Option<NodeId>,
    ) -> Result<SiblingSet, ReplicaError> {
        let set = self.merge(partition, key, incoming).await?;
        if let Some(owner) = hint {
            self.record_hint(partition, key, owner, token(&set)).await?;
        }
        Ok(set)
    }

    async fn record_hint(
        &self,
        partition: u32,
        key: &[u8],
        owner: NodeId,
        token: u64,
    ) -> Result<(), ReplicaError> {
        let space = partition | HINT_PARTITION_BIT;
        let _latch = self.latch(space, key).await;
        let mut owners = self.hint_owners(space, key).await?;
        match owners.iter_mut().find(|(id, _)| *id == owner) {
            Some(entry) if entry.1 == token => return Ok(()),
            Some(entry) => entry.1 = token,
            None => owners.push((owner, token)),
        }
        owners.sort_unstable();
        self.store.put(space, key, &encode_hint_owners(&owners)).await?;
        Ok(())
    }

    /// The owners (and tokens) a hint record names; a record that does not
    /// decode is reported and treated as none (anti-entropy repairs what
    /// its delivery would have).
    async fn hint_owners(
        &self,
        space: u32,
        key: &[u8],
    ) -> Result<Vec<(NodeId, u64)>, ReplicaError> {
        let Some(bytes) = self.store.get(space, key).await? else { return Ok(Vec::new()) };
        Ok(decode_hint_owners(&bytes).unwrap_or_else(|| {
            tracing::error!(
                partition = space & !HINT_PARTITION_BIT,
                "a hint record does not decode"
            );
            Vec::new()
        }))
    }

    /// Up to about `limit` keys' hints, ordered by (partition, key, owner),
    /// starting after the key `after`.
    pub async fn hints(
        &self,
        after: Option<(u32, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<Hint>, ReplicaError> {
        let mut hints = Vec::new();
        let mut keys = 0;
        for space in self.hint_spaces() {
            let partition = space & !HINT_PARTITION_BIT;
            let start = match &after {
                Some((after, _)) if partition < *after => continue,
                Some((after, key)) if partition == *after => Some(key.as_slice()),
                _ => None,
            };
            for key in self.store.keys(space, start, limit - keys) {
                for (owner, token) in self.hint_owners(space, &key).await? {
                    hints.push(Hint { partition, key: key.to_vec(), owner, token });
                }
                keys += 1;
            }
            if keys >= limit {
                break;
            }
        }
        Ok(hints)
    }

    /// Drops `hint` after its delivery, unless a newer hinted write changed
    /// its token since it was listed.
    pub async fn drop_hint(&self, hint: &Hint) -> Result<(), ReplicaError> {
        let space = hint.partition | HINT_PARTITION_BIT;
        let _latch = self.latch(space, &hint.key).await;
        let mut owners = self.hint_owners(space, &hint.key).await?;
        let before = owners.len();
        owners.retain(|&(owner, token)| (owner, token) != (hint.owner, hint.token));
        if owners.len() == before {
            return Ok(());
        }
        if owners.is_empty() {
            self.store.remove(space, &hint.key).await?;
        } else {
            self.store.put(space, &hint.key, &encode_hint_owners(&owners)).await?;
        }
        Ok(())
    }

    /// Keys this replica holds hints for (for operators).
    pub fn hinted_keys(&self) -> usize {
        self.hint_spaces().map(|space| self.store.key_count(space)).sum()
    }

    /// The store partitions holding hint records, ascending.
    fn hint_spaces(&self) -> impl Iterator<Item = u32> + use<D> {
        self.store.partitions().into_iter().filter(|p| p & HINT_PARTITION_BIT != 0)
    }

    /// Merges `incoming` (a whole set from a coordinator, a read repair, a
    /// handoff or anti-entropy) into the key's set. Returns the set after
    /// the merge, durable under the store's sync policy: a replica
    /// acknowledges only what it would still have after a crash.
    pub async fn merge(
        &self,
        partition: u32,
        key: &[u8],
        incoming: &SiblingSet,
    ) -> Result<SiblingSet, ReplicaError> {
        let merged = self
            .update(partition, key, |set| {
                let before = set.clone();
                set.merge(incoming);
                if set.len() > VERSIONS_MAX {
                    // Stored, the set could never be decoded again.
                    return Err(ReplicaError::Clock(
                        holdfast_net::siblings::WriteError::TooManySiblings {
                            siblings: set.len(),
                            max: VERSIONS_MAX,
                        },
                    ));
                }
                // Re-delivered state changes nothing and needs no write.
                Ok((*set != before).then_some(()))
            })
            .await?;
        Ok(merged.0)
    }

    /// Read-modify-write of one key under its latch: `change` edits the
    /// newest set (queued or durable) and returns `Some` if it changed it,
    /// which is then queued in the store and waited for. Returns the set
    /// and what `change` returned.
    async fn update<T>(
        &self,
        partition: u32,
        key: &[u8],
        change: impl FnOnce(&mut SiblingSet) -> Result<Option<T>, ReplicaError>,
    ) -> Result<(SiblingSet, Option<T>), ReplicaError> {
        let (set, outcome, commit) = {
            let _latch = self.latch(partition, key).await;
            let queued = self
                .pending
                .borrow()
                .get(&(partition, key.into()))
                .map(|(set, _, entry)| (set.clone(), Some(*entry)));
            let in_flight = queued.is_some();
            let (mut set, old) = match queued {
                Some(queued) => queued,
                // No write of the key is in flight: the store has the newest.
                None => self.read_for_update(partition, key).await?,
            };
            match change(&mut set)? {
                Some(outcome) => {
                    let bytes = set.encode();
                    let commit = self.store.enqueue_put(partition, key, &bytes)?;
                    let new = merkle::entry_hash(key, &bytes);
                    if is_data(partition) {
                        self.trees.borrow_mut().written(partition, key, old, Some(new));
                        let token = set.is_tombstone_only().then(|| xxh3_64(&bytes));
                        self.track_tombstone(partition, key, token);
                    }
                    let mut pending = self.pending.borrow_mut();
                    let entry = pending
                        .entry((partition, key.into()))
                        .or_insert_with(|| (set.clone(), 0, new));
                    entry.0.clone_from(&set);
                    entry.1 += 1;
                    entry.2 = new;
                    (set, Some(outcome), Some(commit))
                }
                // Unchanged and durable: nothing to wait for.
                None if !in_flight => return Ok((set, None)),
                // Unchanged, but what it equals is still on its way to the
                // disk: wait for that by queueing the same set again.
                None => {
                    let commit = self.store.enqueue_put(partition, key, &set.encode())?;
                    let mut pending = self.pending.borrow_mut();
                    if let Some(entry) = pending.get_mut(&(partition, key.into())) {
                        entry.1 += 1;
                    }
                    (set, None, Some(commit))
                }
            }
        };
        let Some(commit) = commit else { return Ok((set, outcome)) };
        let result = commit.wait().await;
        if let Entry::Occupied(mut entry) = self.pending.borrow_mut().entry((partition, key.into()))
        {
            entry.get_mut().1 -= 1;
            if entry.get().1 == 0 {
                entry.remove();
            }
        }
        if result.is_err() && is_data(partition) {
            // The tree counted a write the store may not have made.
            self.trees.borrow_mut().invalidate(partition);
        }
        result?;
        Ok((set, outcome))
    }

    /// The key's stored set and its Merkle entry, for a read-modify-write
    /// under its latch. A corrupt record is taken as lost (see the module
    /// docs): the partition's actor epoch moves on and the key starts
    /// from an empty set.
    async fn read_for_update(
        &self,
        partition: u32,
        key: &[u8],
    ) -> Result<(SiblingSet, Option<u64>), ReplicaError> {
        match self.store.get(partition, key).await {
            Ok(Some(bytes)) => {
                let set = SiblingSet::decode(&bytes, self.limits).map_err(ReplicaError::Stored)?;
                Ok((set, Some(merkle::entry_hash(key, &bytes))))
            }
            Ok(None) => Ok((SiblingSet::new(), None)),
            Err(ReadError::Corrupt { segment, offset, .. }) => {
                tracing::warn!(
                    partition,
                    segment = format_args!("{segment:016x}"),
                    offset,
                    "a corrupt record is rewritten: its key is taken as lost"
                );
                self.next_epoch(partition).await?;
                if is_data(partition) {
                    // The tree held the entry the record had before it rotted.
                    self.trees.borrow_mut().invalidate(partition);
                }
                Ok((SiblingSet::new(), None))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Moves `partition`'s actor epoch on, durably: later writes there are
    /// made by a fresh actor.
    async fn next_epoch(&self, partition: u32) -> Result<(), ReplicaError> {
        let epoch = self.epoch(partition).await?;
        let next = epoch.checked_add(1).ok_or_else(|| {
            ReplicaError::Metadata(format!("partition {partition}'s epochs are exhausted"))
        })?;
        let bytes = next.to_be_bytes();
        self.store.put(EPOCH_SPACE, &partition.to_be_bytes(), &bytes).await?;
        self.epochs.borrow_mut().insert(partition, next);
        Ok(())
    }

    /// The actor this replica writes keys of a partition at `epoch` as:
    /// its incarnation moved on by the epoch.
    fn actor_in(&self, epoch: u32) -> Result<Actor, ReplicaError> {
        let incarnation =
            self.actor.incarnation.checked_add(epoch).ok_or_else(|| {
                ReplicaError::Metadata("the actor's incarnation is exhausted".into())
            })?;
        Ok(Actor::new(self.actor.node, incarnation))
    }

    /// The actor epoch of `partition` (see `remove`).
    async fn epoch(&self, partition: u32) -> Result<u32, ReplicaError> {
        if let Some(&epoch) = self.epochs.borrow().get(&partition) {
            return Ok(epoch);
        }
        let stored = self.store.get(EPOCH_SPACE, &partition.to_be_bytes()).await?;
        let epoch = match stored.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(bytes)) => u32::from_be_bytes(bytes),
            Some(Err(_)) => {
                // Unreadable: an old epoch could reissue dots, so refuse.
                return Err(ReplicaError::Metadata(format!(
                    "partition {partition}'s actor epoch record does not decode"
                )));
            }
            None => 0,
        };
        self.epochs.borrow_mut().insert(partition, epoch);
        Ok(epoch)
    }

    /// Up to `keys` keys of `partition` after `after`, with their sets,
    /// stopping early once keys and sets reach `bytes`; whether more
    /// follow; and the bytes of the sets as stored.
    pub async fn scan(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        keys: usize,
        bytes: usize,
    ) -> Result<(Vec<(Vec<u8>, SiblingSet)>, bool, u64), ReplicaError> {
        let listed = self.store.keys(partition, after, keys.max(1));
        let mut more = listed.len() >= keys.max(1);
        let mut entries = Vec::with_capacity(listed.len());
        let mut total = 0;
        let mut set_bytes = 0;
        for (index, key) in listed.iter().enumerate() {
            let Some(stored) = self.store.get(partition, key).await? else { continue };
            // Keys count too: an offer of the page carries them.
            total += key.len() + stored.len();
            set_bytes += stored.len() as u64;
            let set = SiblingSet::decode(&stored, self.limits).map_err(ReplicaError::Stored)?;
            entries.push((key.to_vec(), set));
            if total >= bytes && index + 1 < listed.len() {
                more = true;
                break;
            }
        }
        Ok((entries, more, set_bytes))
    }

    /// Merges a pulled page (all keys at once, so they share group
    /// commits), then records `progress`, durably.
    pub async fn pulled(
        &self,
        partition: u32,
        entries: &[(Vec<u8>, SiblingSet)],
        progress: &Progress,
    ) -> Result<(), ReplicaError> {
        let merges = entries.iter().map(|(key, set)| self.merge(partition, key, set));
        for merged in futures::future::join_all(merges).await {
            merged?;
        }
        let key = progress.partition.to_be_bytes();
        self.store.put(PROGRESS_SPACE, &key, &encode_progress(progress)).await?;
        Ok(())
    }

    /// Every pull progress record. A record that does not decode is
    /// skipped (its partition is pulled again from the start).
    pub async fn progress(&self) -> Result<Vec<Progress>, ReplicaError> {
        let mut records = Vec::new();
        for key in self.store.keys(PROGRESS_SPACE, None, usize::MAX) {
            let Some(bytes) = self.store.get(PROGRESS_SPACE, &key).await? else { continue };
            match decode_progress(&key, &bytes) {
                Some(progress) => records.push(progress),
                None => tracing::warn!("a pull progress record does not decode"),
            }
        }
        Ok(records)
    }

    /// Per key, whether this replica holds exactly the set of `token`.
    pub async fn compare(
        &self,
        partition: u32,
        keys: &[(Vec<u8>, u64)],
    ) -> Result<Vec<bool>, ReplicaError> {
        let mut have = Vec::with_capacity(keys.len());
        for (key, wanted) in keys {
            let set = self.read(partition, key).await?;
            have.push(!set.is_empty() && token(&set) == *wanted);
        }
        Ok(have)
    }

    /// Removes each key whose set still has its token (the rest changed
    /// since they were handed off, and wait for the next sweep).
    ///
    /// A replica that forgets a key it wrote must never write it again as
    /// the same actor: its next dot would repeat one it issued, and its new
    /// version would lack the old ones, so a context covering the new dot
    /// would claim versions its reader never saw (a per-actor maximum
    /// stands for "saw them all"). So before a key that mentions the
    /// partition's current actor goes, the partition's actor epoch moves
    /// on, durably: later writes there are made by a fresh actor (the
    /// incarnation plus the epoch). Clocks grow by one entry per such
    /// epoch, for keys this node writes afterwards.
    pub async fn remove(
        &self,
        partition: u32,
        keys: &[(Vec<u8>, u64)],
    ) -> Result<(), ReplicaError> {
        for (key, wanted) in keys {
            let _latch = self.latch(partition, key).await;
            let Some((bytes, set)) = self.unchanged(partition, key, *wanted).await? else {
                continue;
            };
            let epoch = self.epoch(partition).await?;
            if set.highest_counter(self.actor_in(epoch)?) > 0 {
                self.next_epoch(partition).await?;
            }
            self.remove_stored(partition, key, &bytes).await?;
        }
        Ok(())
    }

    /// The stored bytes and set of `key`, if no write of it is in flight
    /// and its set still has token `wanted`. Called under the key's latch.
    async fn unchanged(
        &self,
        partition: u32,
        key: &[u8],
        wanted: u64,
    ) -> Result<Option<(Vec<u8>, SiblingSet)>, ReplicaError> {
        if self.pending.borrow().contains_key(&(partition, key.into())) {
            return Ok(None);
        }
        let Some(bytes) = self.store.get(partition, key).await? else { return Ok(None) };
        if xxh3_64(&bytes) != wanted {
            return Ok(None);
        }
        let set = SiblingSet::decode(&bytes, self.limits).map_err(ReplicaError::Stored)?;
        Ok(Some((bytes, set)))
    }

    /// Removes `key`, whose stored bytes are `bytes`, from the store and
    /// from its partition's tree and tombstones. Called under its latch.
    async fn remove_stored(
        &self,
        partition: u32,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<(), ReplicaError> {
        let removed = self.store.remove(partition, key).await;
        if is_data(partition) {
            let mut trees = self.trees.borrow_mut();
            match removed {
                Ok(_) => trees.written(partition, key, Some(merkle::entry_hash(key, bytes)), None),
                // The tree may now count a key the store still holds.
                Err(_) => trees.invalidate(partition),
            }
            drop(trees);
            self.track_tombstone(partition, key, None);
        }
        removed?;
        Ok(())
    }

    /// Records whether `key` of data partition `partition` is now only
    /// tombstones (with its set's token) or not (`None`).
    fn track_tombstone(&self, partition: u32, key: &[u8], token: Option<u64>) {
        let mut tombstones = self.tombstones.borrow_mut();
        match token {
            Some(token) => {
                tombstones.entry(partition).or_default().insert(key.into(), token);
            }
            None => {
                if let Some(keys) = tombstones.get_mut(&partition) {
                    keys.remove(key);
                    if keys.is_empty() {
                        tombstones.remove(&partition);
                    }
                }
            }
        }
    }

    /// Up to `limit` keys of `partition` whose sets are only tombstones,
    /// with their tokens, ascending by key. Keys not read since open (their
    /// tree is still being built) are not listed yet.
    pub fn tombstones(&self, partition: u32, limit: usize) -> Vec<(Vec<u8>, u64)> {
        let tombstones = self.tombstones.borrow();
        let Some(keys) = tombstones.get(&partition) else { return Vec::new() };
        keys.iter().take(limit).map(|(key, &token)| (key.to_vec(), token)).collect()
    }

    /// Reaps tombstones every replica holds: removes each key whose set
    /// still has its token and is only tombstones.
    ///
    /// Forgetting a key forgets the counters this node's actor issued for
    /// it, and the next write of the key would issue them again. So before
    /// a key goes, the partition's counter floor (for the current actor)
    /// is raised durably to the highest counter of the actor the set
    /// mentions, and writes in the partition issue dots above it (see
    /// `SiblingSet::write_above`). Unlike the actor epoch a removal after
    /// handoff moves on, a floor does not add an actor to later clocks, so
    /// reaping may run forever.
    pub async fn reap(&self, partition: u32, keys: &[(Vec<u8>, u64)]) -> Result<u64, ReplicaError> {
        let mut reaped = 0;
        for (key, wanted) in keys {
            let _latch = self.latch(partition, key).await;
            let Some((bytes, set)) = self.unchanged(partition, key, *wanted).await? else {
                continue;
            };
            if !set.is_tombstone_only() {
                continue;
            }
            let actor = self.actor_in(self.epoch(partition).await?)?;
            let (incarnation, floor) = self.floor(partition).await?;
            let counter = set.highest_counter(actor);
            let floor = if incarnation == actor.incarnation { floor } else { 0 };
            if counter > floor {
                let mut record = actor.incarnation.to_be_bytes().to_vec();
                record.extend_from_slice(&counter.to_be_bytes());
                self.store.put(FLOOR_SPACE, &partition.to_be_bytes(), &record).await?;
                self.floors.borrow_mut().insert(partition, (actor.incarnation, counter));
            }
            self.remove_stored(partition, key, &bytes).await?;
            reaped += 1;
        }
        Ok(reaped)
    }

    /// The counter floor of `partition`: the actor incarnation it is for and
    /// the floor (see `reap`).
    async fn floor(&self, partition: u32) -> Result<(u32, u64), ReplicaError> {
        if let Some(&floor) = self.floors.borrow().get(&partition) {
            return Ok(floor);
        }
        let stored = self.store.get(FLOOR_SPACE, &partition.to_be_bytes()).await?;
        let floor = match stored.as_deref() {
            None => (0, 0),
            Some(bytes) => match (bytes.get(..4), bytes.get(4..12), bytes.len()) {
                (Some(incarnation), Some(floor), 12) => (
                    u32::from_be_bytes(incarnation.try_into().unwrap_or_default()),
                    u64::from_be_bytes(floor.try_into().unwrap_or_default()),
                ),
                // Unreadable: a lower floor could reissue dots, so refuse.
                _ => {
                    return Err(ReplicaError::Metadata(format!(
                        "partition {partition}'s counter floor record does not decode"
                    )));
                }
            },
        };
        self.floors.borrow_mut().insert(partition, floor);
        Ok(floor)
    }

    /// Builds the Merkle trees not built yet (after open, or after a failed
    /// write made one unreliable), reading about `keys` keys, each under
    /// its latch. Returns whether more remains to build. The node calls it
    /// in the background until it returns `false` (and again later: a tree
    /// can need building again).
    pub async fn build_trees(&self, keys: usize) -> bool {
        let Some((partition, after)) = self.trees.borrow().next_build() else { return false };
        let page = self.store.keys(partition, after.as_deref(), keys.max(1));
        if page.is_empty() {
            self.trees.borrow_mut().build_done(partition, &after);
            return self.trees.borrow().building() > 0;
        }
        let mut cursor = after;
        for key in page {
            let entry = {
                let _latch = self.latch(partition, &key).await;
                self.build_entry(partition, &key).await
            };
            if !self.trees.borrow_mut().build_read(partition, &cursor, &key, entry) {
                break; // The build restarted meanwhile.
            }
            cursor = Some(key);
        }
        true
    }

    /// Partitions whose tree is not comparable yet (being built).
    pub fn trees_building(&self) -> usize {
        self.trees.borrow().building()
    }

    /// [`current_entry`](Self::current_entry) for a tree build, which
    /// also notes whether the key is only tombstones.
    async fn build_entry(&self, partition: u32, key: &[u8]) -> Option<u64> {
        if let Some((_, _, entry)) = self.pending.borrow().get(&(partition, key.into())) {
            return Some(*entry); // Its write noted whether it is a tombstone.
        }
        match self.store.get(partition, key).await {
            Ok(Some(bytes)) => {
                if let Ok(set) = SiblingSet::decode(&bytes, self.limits) {
                    let token = set.is_tombstone_only().then(|| xxh3_64(&bytes));
                    self.track_tombstone(partition, key, token);
                }
                Some(merkle::entry_hash(key, &bytes))
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(partition, %error, "a key anti-entropy compares cannot be read");
                None
            }
        }
    }

    /// The Merkle entry of `key` as of its newest queued write; `None` if
    /// it is absent or cannot be read (a corrupt record holds nothing
    /// anti-entropy should compare against).
    async fn current_entry(&self, partition: u32, key: &[u8]) -> Option<u64> {
        if let Some((_, _, entry)) = self.pending.borrow().get(&(partition, key.into())) {
            return Some(*entry);
        }
        match self.store.get(partition, key).await {
            Ok(bytes) => bytes.map(|bytes| merkle::entry_hash(key, &bytes)),
            Err(error) => {
                tracing::warn!(partition, %error, "a key anti-entropy compares cannot be read");
                None
            }
        }
    }

    /// The hashes of nodes `indices` of `level` of `partition`'s tree, or
    /// `None` while it is being built.
    pub fn tree_hashes(
        &self,
        partition: u32,
        level: u8,
        indices: &[u16],
    ) -> Result<Option<Vec<u64>>, String> {
        let level = usize::from(level);
        if level > DEPTH {
            return Err(format!("the trees have {DEPTH} levels below the root, not {level}"));
        }
        let width = LEAVES >> (4 * (DEPTH - level));
        if let Some(index) = indices.iter().find(|&&index| usize::from(index) >= width) {
            return Err(format!("level {level} has {width} nodes, not {index}"));
        }
        let trees = self.trees.borrow();
        let Some(tree) = trees.tree(partition) else { return Ok(None) };
        Ok(Some(indices.iter().map(|&index| tree.node(level, usize::from(index))).collect()))
    }

    /// The keys of `partition` in `leaves` of its tree with their entry
    /// hashes, ascending by key (at most [`LEAF_ENTRIES_MAX`]); `None`
    /// while the tree is being built.
    pub async fn leaf_entries(
        &self,
        partition: u32,
        leaves: &[u16],
    ) -> Result<Option<Vec<(Vec<u8>, u64)>>, String> {
        if self.trees.borrow().tree(partition).is_none() {
            return Ok(None);
        }
        let mut wanted = vec![false; LEAVES];
        for &leaf in leaves {
            let slot = wanted.get_mut(usize::from(leaf)).ok_or(format!("no leaf {leaf}"))?;
            *slot = true;
        }
        let in_leaves = |key: &[u8]| wanted[merkle::leaf_of(key)];
        let mut keys: Vec<Box<[u8]>> = self.store.keys_where(partition, in_leaves);
        // Keys queued but not yet durable are in the tree too.
        keys.extend(
            self.pending
                .borrow()
                .keys()
                .filter(|(p, key)| *p == partition && in_leaves(key))
                .map(|(_, key)| key.clone()),
        );
        keys.sort_unstable();
        keys.dedup();
        let mut entries = Vec::new();
        for key in keys.into_iter().take(LEAF_ENTRIES_MAX) {
            if let Some(entry) = self.current_entry(partition, &key).await {
                entries.push((key.into_vec(), entry));
            }
        }
        Ok(Some(entries))
    }

    /// The sets of those of `keys` this replica holds (readable), stopping
    /// once their bytes reach `bytes`; and those bytes.
    pub async fn fetch(
        &self,
        partition: u32,
        keys: &[Vec<u8>],
        bytes: usize,
    ) -> Result<(Vec<(Vec<u8>, SiblingSet)>, u64), ReplicaError> {
        let mut entries = Vec::new();
        let mut total = 0;
        for key in keys {
            if total >= bytes {
                break;
            }
            let stored = match self.store.get(partition, key).await {
                Ok(Some(stored)) => stored,
                // Lost here: nothing to send.
                Ok(None) | Err(ReadError::Corrupt { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            total += stored.len();
            let set = SiblingSet::decode(&stored, self.limits).map_err(ReplicaError::Stored)?;
            entries.push((key.clone(), set));
        }
        Ok((entries, total as u64))
    }

    /// Merges every set, durably (sharing group commits); each key's set
    /// after its merge.
    pub async fn merge_all(
        &self,
        partition: u32,
        entries: &[(Vec<u8>, SiblingSet)],
    ) -> Result<Vec<(Vec<u8>, SiblingSet)>, ReplicaError> {
        let merges = entries.iter().map(|(key, set)| self.merge(partition, key, set));
        let mut merged = Vec::with_capacity(entries.len());
        for ((key, _), result) in entries.iter().zip(futures::future::join_all(merges).await) {
            merged.push((key.clone(), result?));
        }
        Ok(merged)
    }

    /// The data partitions this replica holds keys of (not hints, not
    /// metadata), ascending.
    pub fn data_partitions(&self) -> Vec<u32> {
        let special = HINT_PARTITION_BIT | META_PARTITION_BIT;
        self.store.live_partitions().into_iter().filter(|p| p & special == 0).collect()
    }

    /// Carries out a coordinator's local operation (what both the node and
    /// the simulator do with `Action::Local`) and reports how it ended.
    pub async fn apply(&self, local: LocalOp) -> LocalResult {
        let failed = |error: ReplicaError| LocalResult::Failed {
            code: error.code(),
            message: error.to_string(),
        };
        match local {
            LocalOp::Read { partition, key } => {
                self.read(partition, &key).await.map_or_else(failed, LocalResult::Read)
            }
            LocalOp::Write { partition, key, context, value, hint } => self
                .write_hinted(partition, &key, &context, value, hint)
                .await
                .map_or_else(failed, |(set, dot)| LocalResult::Written { set, dot }),
            LocalOp::Merge { partition, key, set, hint } => self
                .merge_hinted(partition, &key, &set, hint)
                .await
                .map_or_else(failed, |_| LocalResult::Merged),
            LocalOp::Hints { after, limit } => {
                self.hints(after, limit).await.map_or_else(failed, LocalResult::Hints)
            }
            LocalOp::DropHint(hint) => {
                self.drop_hint(&hint).await.map_or_else(failed, |()| LocalResult::Merged)
            }
            LocalOp::Scan { partition, after, keys, bytes } => {
                self.scan(partition, after.as_deref(), keys, bytes).await.map_or_else(
                    failed,
                    |(entries, more, bytes)| LocalResult::Scanned { entries, more, bytes },
                )
            }
            LocalOp::Pulled { partition, entries, progress } => self
                .pulled(partition, &entries, &progress)
                .await
                .map_or_else(failed, |()| LocalResult::Merged),
            LocalOp::Compare { partition, keys } => {
                self.compare(partition, &keys).await.map_or_else(failed, LocalResult::Have)
            }
            LocalOp::Remove { partition, keys } => {
                self.remove(partition, &keys).await.map_or_else(failed, |()| LocalResult::Merged)
            }
            LocalOp::Progress => self.progress().await.map_or_else(failed, LocalResult::Progress),
            LocalOp::Partitions => LocalResult::Partitions(self.data_partitions()),
            LocalOp::TreeHashes { partition, level, indices } => {
                match self.tree_hashes(partition, level, &indices) {
                    Ok(hashes) => LocalResult::Hashes(hashes),
                    Err(message) => LocalResult::Failed { code: ErrorCode::BadRequest, message },
                }
            }
            LocalOp::LeafEntries { partition, leaves } => {
                match self.leaf_entries(partition, &leaves).await {
                    Ok(entries) => LocalResult::Entries(entries),
                    Err(message) => LocalResult::Failed { code: ErrorCode::BadRequest, message },
                }
            }
            LocalOp::Fetch { partition, keys, bytes } => {
                self.fetch(partition, &keys, bytes).await.map_or_else(failed, |(entries, bytes)| {
                    LocalResult::Scanned { entries, more: false, bytes }
                })
            }
            LocalOp::Tombstones { partition, limit } => {
                LocalResult::Entries(Some(self.tombstones(partition, limit)))
            }
            LocalOp::Reap { partition, keys } => {
                self.reap(partition, &keys).await.map_or_else(failed, |_| LocalResult::Merged)
            }
            LocalOp::MergeAll { partition, entries } => {
                self.merge_all(partition, &entries).await.map_or_else(failed, |entries| {
                    LocalResult::Scanned { entries, more: false, bytes: 0 }
                })
            }
        }
    }

    /// Waits until no other write of `key` is in progress on this shard.
    async fn latch(&self, partition: u32, key: &[u8]) -> Latch<'_> {
        let mutex = self
            .latches
            .borrow_mut()
            .entry((partition, key.into()))
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let guard = mutex.lock_owned().await;
        Latch { latches: &self.latches, key: (partition, key.into()), guard: Some(guard) }
    }
}

/// Held while a key is being written; forgets the key's latch when the last
/// writer waiting for it is done, so the map holds only keys in use.
/// The bit that moves a partition into the store's hint space.
pub const HINT_PARTITION_BIT: u32 = 1 << 31;

/// Whether `partition` is a data partition (not hints, not metadata).
fn is_data(partition: u32) -> bool {
    partition & (HINT_PARTITION_BIT | META_PARTITION_BIT) == 0
}

/// A set's hint token: a stable hash of its canonical bytes.
fn token(set: &SiblingSet) -> u64 {
    set_token(set)
}

/// The bit that moves a record into the store's metadata space (never a
/// data partition, never a hint).
pub const META_PARTITION_BIT: u32 = 1 << 30;
/// Pull progress records: key the partition (big-endian), value the base
/// ring version (big-endian), a done byte and the cursor key.
const PROGRESS_SPACE: u32 = META_PARTITION_BIT;
/// Actor epochs: key the partition (big-endian), value the epoch
/// (big-endian u32) added to the incarnation for writes in it.
const EPOCH_SPACE: u32 = META_PARTITION_BIT | 1;
/// Counter floors: key the partition (big-endian), value the actor
/// incarnation it is for (big-endian u32) and the floor (big-endian u64).
const FLOOR_SPACE: u32 = META_PARTITION_BIT | 2;

fn encode_progress(progress: &Progress) -> Vec<u8> {
    let mut bytes = progress.base.to_be_bytes().to_vec();
    bytes.push(u8::from(progress.done));
    bytes.extend_from_slice(progress.cursor.as_deref().unwrap_or_default());
    bytes
}

fn decode_progress(key: &[u8], bytes: &[u8]) -> Option<Progress> {
    let partition = u32::from_be_bytes(key.try_into().ok()?);
    let base = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let done = match bytes.get(8)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let cursor = bytes.get(9..).filter(|cursor| !cursor.is_empty()).map(<[u8]>::to_vec);
    Some(Progress { partition, base, cursor, done })
}

/// A hint record: (owner, token) pairs, 16 bytes each, big-endian.
fn encode_hint_owners(owners: &[(NodeId, u64)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(owners.len() * 16);
    for (owner, token) in owners {
        bytes.extend_from_slice(&owner.to_be_bytes());
        bytes.extend_from_slice(&token.to_be_bytes());
    }
    bytes
}

fn decode_hint_owners(bytes: &[u8]) -> Option<Vec<(NodeId, u64)>> {
    if !bytes.len().is_multiple_of(16) {
        return None;
    }
    let word = |chunk: &[u8]| chunk.try_into().ok().map(u64::from_be_bytes);
    bytes.chunks_exact(16).map(|entry| Some((word(&entry[..8])?, word(&entry[8..])?))).collect()
}

struct Latch<'a> {
    latches: &'a Latches,
    key: (u32, Box<[u8]>),
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Latch<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut latches = self.latches.borrow_mut();
        if let Entry::Occupied(entry) = latches.entry(std::mem::take(&mut self.key)) {
            // Only the map holds it: nobody is writing or waiting.
            if Arc::strong_count(entry.get()) == 1 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use futures::executor::{LocalPool, block_on};
    use futures::task::LocalSpawnExt;

    use super::*;
    use crate::cluster::merkle::MerkleTree;
    use crate::disk::sim::{SimDisk, SimDiskOptions, SimFaults};
    use crate::store::StoreOptions;

    fn replica(seed: u64) -> Rc<Replica<SimDisk>> {
        let disk = SimDisk::new(SimDiskOptions::new(seed));
        disk.set_faults(SimFaults { yield_probability: 0.5, ..SimFaults::default() });
        let options = StoreOptions {
            segment_bytes_max: 1 << 20,
            value_bytes_max: 64 << 10,
            ..StoreOptions::default()
        };
        let (store, _) = block_on(Store::open(disk, options)).unwrap();
        Rc::new(Replica::new(store, Actor::new(1, 0)))
    }

    #[test]
    fn concurrent_blind_writes_to_one_key_all_survive_as_siblings() {
        for seed in 0..50 {
            let replica = replica(seed);
            let mut pool = LocalPool::new();
            for n in 0..8u8 {
                let replica = replica.clone();
                pool.spawner()
                    .spawn_local(async move {
                        let context = VersionVector::new();
                        replica.write(0, b"cart", &context, Some(vec![n])).await.unwrap();
                    })
                    .unwrap();
            }
            pool.run();
            let set = block_on(replica.read(0, b"cart")).unwrap();
            assert_eq!(set.values().count(), 8, "seed {seed}: a write was lost");
            assert!(replica.latches.borrow().is_empty(), "latches are forgotten when done");
            assert!(replica.pending.borrow().is_empty(), "pending sets are forgotten when durable");
            // Writes of one hot key share group commits rather than taking
            // one each (they used to hold the key's latch until durable).
            let batches = replica.store().stats().batches;
            assert!(batches < 8, "seed {seed}: 8 writes of one key took {batches} batches");
        }
    }

    #[test]
    fn a_write_with_the_read_context_replaces_what_was_read() {
        let replica = replica(1);
        block_on(async {
            let empty = VersionVector::new();
            replica.write(0, b"k", &empty, Some(b"a".to_vec())).await.unwrap();
            replica.write(0, b"k", &empty, Some(b"b".to_vec())).await.unwrap();
            let read = replica.read(0, b"k").await.unwrap();
            assert_eq!(read.values().count(), 2);
            let (after, _) =
                replica.write(0, b"k", &read.context(), Some(b"ab".to_vec())).await.unwrap();
            assert_eq!(after.values().collect::<Vec<_>>(), [b"ab".as_slice()]);
            let (deleted, _) = replica.write(0, b"k", &after.context(), None).await.unwrap();
            assert!(deleted.is_tombstone_only());
            assert_eq!(replica.read(0, b"k").await.unwrap().values().count(), 0);
        });
    }

    /// A replica of actor (1, 0) on `disk`, opened again from it each call.
    fn open_on(disk: &SimDisk) -> Replica<SimDisk> {
        let options = StoreOptions { value_bytes_max: 64 << 10, ..StoreOptions::default() };
        let (store, _) = block_on(Store::open(disk.clone(), options)).unwrap();
        Replica::new(store, Actor::new(1, 0))
    }

    #[test]
    fn a_reaped_tombstone_is_written_again_above_the_counter_floor() {
        for seed in 0..10 {
            let disk = SimDisk::new(SimDiskOptions::new(seed));
            let open = || open_on(&disk);
            let replica = open();
            let empty = VersionVector::new();
            block_on(async {
                for value in ["a", "b", "c"] {
                    replica.write(7, b"k", &empty, Some(value.into())).await.unwrap();
                }
                let set = replica.read(7, b"k").await.unwrap();
                // A live key is never reaped, whatever its token.
                replica.reap(7, &[(b"k".to_vec(), token(&set))]).await.unwrap();
                assert_eq!(replica.tombstones(7, 10), vec![]);
                let (deleted, dot) = replica.write(7, b"k", &set.context(), None).await.unwrap();
                assert_eq!(dot.counter(), 4);
                assert_eq!(replica.tombstones(7, 10), vec![(b"k".to_vec(), token(&deleted))]);
                // A changed token keeps it.
                assert_eq!(
                    replica.reap(7, &[(b"k".to_vec(), token(&deleted) ^ 1)]).await.unwrap(),
                    0
                );
                assert_eq!(replica.reap(7, &[(b"k".to_vec(), token(&deleted))]).await.unwrap(), 1);
                assert!(replica.read(7, b"k").await.unwrap().is_empty());
                assert_eq!(replica.tombstones(7, 10), vec![]);
                // Written again, blind: the dot is above every counter issued
                // before, and the actor is the same (clocks do not grow).
                let (_, dot) = replica.write(7, b"k", &empty, Some("d".into())).await.unwrap();
                assert_eq!(dot, Dot::new(Actor::new(1, 0), 5), "seed {seed}");
                replica.store().close().await.unwrap();
            });
            drop(replica);
            // The floor is durable, and the tombstones are found again by a
            // tree build.
            let replica = open();
            block_on(async {
                let (set, dot) = replica.write(7, b"k2", &empty, Some("e".into())).await.unwrap();
                assert_eq!(dot, Dot::new(Actor::new(1, 0), 5), "seed {seed}");
                let (_, _) = replica.write(7, b"k2", &set.context(), None).await.unwrap();
                while replica.build_trees(16).await {}
                assert_eq!(replica.tombstones(7, 10).len(), 1, "seed {seed}");
            });
        }
    }

    #[test]
    fn trees_follow_writes_and_a_rebuild_after_open_agrees() {
        let disk = SimDisk::new(SimDiskOptions::new(3));
        let open = || open_on(&disk);
        let replica = open();
        let empty = VersionVector::new();
        let root = block_on(async {
            assert_eq!(
                replica.tree_hashes(2, 0, &[0]).unwrap(),
                Some(vec![MerkleTree::new().root()])
            );
            for i in 0..200u32 {
                let key = format!("k{i}").into_bytes();
                replica.write(2, &key, &empty, Some(vec![1; 10])).await.unwrap();
            }
            let set = replica.read(2, b"k7").await.unwrap();
            replica.remove(2, &[(b"k7".to_vec(), token(&set))]).await.unwrap();
            let root = replica.tree_hashes(2, 0, &[0]).unwrap().unwrap();
            assert_ne!(root, vec![MerkleTree::new().root()]);
            assert_eq!(
                replica.leaf_entries(2, &[0]).await.unwrap().map(|e| e.len() < 200),
                Some(true)
            );
            replica.store().close().await.unwrap();
            root
        });
        drop(replica);
        let replica = open();
        assert_eq!(replica.trees_building(), 1);
        assert_eq!(replica.tree_hashes(2, 0, &[0]).unwrap(), None, "not comparable while built");
        block_on(async {
            // A write while the tree is built lands in it too.
            while replica.build_trees(50).await {
                replica.write(2, b"late", &empty, Some(vec![2])).await.unwrap();
            }
        });
        assert_eq!(replica.trees_building(), 0);
        let rebuilt = replica.tree_hashes(2, 0, &[0]).unwrap().unwrap();
        let set = block_on(replica.read(2, b"late")).unwrap();
        block_on(replica.remove(2, &[(b"late".to_vec(), token(&set))])).unwrap();
        assert_eq!(replica.tree_hashes(2, 0, &[0]).unwrap().unwrap(), root, "rebuilt {rebuilt:?}");
    }

    #[test]
    fn a_key_removed_after_handoff_is_written_again_by_a_fresh_actor() {
        for seed in 0..10 {
            let disk = SimDisk::new(SimDiskOptions::new(seed));
            let open = || open_on(&disk);
            let replica = open();
            let empty = VersionVector::new();
            block_on(async {
                let mut issued = Vec::new();
                for value in ["a", "b", "c"] {
                    let (_, dot) =
                        replica.write(7, b"k", &empty, Some(value.into())).await.unwrap();
                    issued.push(dot);
                }
                let set = replica.read(7, b"k").await.unwrap();
                // A changed token keeps the key.
                replica.remove(7, &[(b"k".to_vec(), token(&set) ^ 1)]).await.unwrap();
                assert_eq!(replica.read(7, b"k").await.unwrap(), set);
                replica.remove(7, &[(b"k".to_vec(), token(&set))]).await.unwrap();
                assert!(replica.read(7, b"k").await.unwrap().is_empty());
                assert_eq!(replica.data_partitions(), Vec::<u32>::new());
                // A blind write after the removal is made by a fresh actor,
                // so no dot repeats and no old version is implied seen.
                let (_, dot) = replica.write(7, b"k", &empty, Some("d".into())).await.unwrap();
                assert_eq!(dot, Dot::new(Actor::new(1, 1), 1), "seed {seed}");
                // Other partitions keep their actor.
                let (_, other) = replica.write(8, b"k", &empty, Some("x".into())).await.unwrap();
                assert_eq!(other, Dot::new(Actor::new(1, 0), 1), "seed {seed}");
                // A key that does not mention the partition's actor (held
                // for another node) is removed without a new epoch.
                let mut foreign = SiblingSet::new();
                foreign.write(Actor::new(9, 0), &empty, Some("f".into())).unwrap();
                replica.merge(7, b"f", &foreign).await.unwrap();
                replica.remove(7, &[(b"f".to_vec(), token(&foreign))]).await.unwrap();
                let (_, next) = replica.write(7, b"k", &empty, Some("e".into())).await.unwrap();
                assert_eq!(next.actor(), Actor::new(1, 1), "seed {seed}");
                replica.store().close().await.unwrap();
            });
            drop(replica);
            // The epoch is durable.
            let replica = open();
            block_on(async {
                let (_, dot) = replica.write(7, b"k2", &empty, Some("g".into())).await.unwrap();
                assert_eq!(dot.actor(), Actor::new(1, 1), "seed {seed}");
            });
        }
    }
}
