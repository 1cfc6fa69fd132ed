//! The history checker: judges what a run's client operations did to the
//! data, from a log of those operations and the final state of every key.
//!
//! The cluster simulator and the real-process tests log every client
//! operation twice: when it starts ([`History::start`]) and when its outcome
//! is known ([`History::finish`]): it succeeded, it failed, or its outcome is
//! unknown (a timeout, a broken connection, or it never finished). After the
//! run the caller reads the final state of every key written, from every
//! replica or by a final quorum read, into a [`FinalState`], and
//! [`History::check`] returns a [`Report`] of violations and statistics.
//!
//! # Why not linearizability
//!
//! Jepsen's Knossos searches for a sequential order of the operations that
//! explains every result. holdfast promises less, on purpose: concurrent
//! writes become siblings rather than one winning, and with R + W ≤ N, sloppy
//! quorums or partitions a read may be stale. No sequential model fits that,
//! so nothing here searches. What holdfast does promise can be checked key by
//! key with scans: an acknowledged write stays until a write that had seen it
//! replaces it (durability), and nothing appears that no client wrote (no
//! invention). Checking is O(ops × actors per key) and handles 100k-op
//! histories in well under a second.
//!
//! # Definitions
//!
//! - A *write* is a put (of a value) or a delete (a tombstone). Put values are
//!   unique across the whole history (the test makes them so, e.g. `w17`), so
//!   a value names the put that wrote it; [`History::start`] panics on a
//!   duplicate, which is a bug in the test. A tombstone has no value: a
//!   delete is named by its [`OpId`] in the history and by its dot in the
//!   final state.
//! - A write is *acknowledged* when it finished with [`Outcome::Written`],
//!   which carries the [`Dot`] of the version the coordinator created.
//! - An acknowledged write `w1` is *superseded* when another acknowledged
//!   write `w2` of the same key was started with a context (the
//!   [`VersionVector`] its call carried) that contains `w1`'s dot: `w2`'s
//!   client had seen `w1` and meant to replace it.
//! - A replica's final [`SiblingSet`] *holds* an acknowledged write `w1` when
//!   it has a version with `w1`'s value (a put) or a tombstone with `w1`'s
//!   dot (a delete), or when `w1` was *replaced by an unacknowledged write*
//!   there: the set has a version whose clock contains `w1`'s dot, and some
//!   write of the key that was not acknowledged (failed, unknown or never
//!   finished) was started with a context containing `w1`'s dot. The second
//!   case is there because a write that timed out may still have been
//!   applied: a client that read `w1`, wrote `w2` over it and timed out can
//!   leave `w2` in `w1`'s place everywhere, and nothing was lost.
//!
//! # Rules
//!
//! 1. **Durability** ([`Violation::Lost`]): every acknowledged write of a key
//!    that is not superseded must be held by the key's final state: by at
//!    least one of the given replica sets under [`Presence::Any`], by every
//!    one of them under [`Presence::Every`] (for checks after anti-entropy
//!    has converged). A key written in the history but absent from the
//!    [`FinalState`] counts as empty: the caller must read every key written.
//! 2. **No invention** ([`Violation::Invented`], [`Violation::ReadBeforeWrite`]):
//!    every value in a final set, and every value a successful get returned,
//!    must be the value of a put of the same key that was started, whatever
//!    its outcome (a failed or timed-out write may still have been applied).
//!    A get may not return the value of a put that started only after the get
//!    had finished.
//! 3. **Reads see acknowledged writes** ([`Violation::StaleRead`]; only with
//!    [`CheckOptions::reads_see_acknowledged_writes`], for runs with R + W > N
//!    and no faults): every successful get of a key that started after an
//!    acknowledged write of the key finished must return a context that
//!    contains the write's dot, i.e. it read the write or a successor.
//!    "After" is strict: a get that starts at the very instant a write
//!    finishes may have been served before it.
//! 4. **Unique dots** ([`Violation::DotReused`]): no two acknowledged writes of
//!    a key were given the same dot. A coordinator that reissued a dot (a node
//!    that lost its state and came back under its old incarnation, Riak's
//!    kv679) makes replicas take one write for the other and drop it silently.
//!
//! # What it does not check
//!
//! - Any order among concurrent operations, and stale reads outside rule 3.
//! - Tombstones of deletes that were not acknowledged: their dots are
//!   unknown, so nothing is checked about them.
//! - Whether a replacing version came from the write that meant to replace:
//!   if a non-acknowledged write that had seen `w1` was never applied, yet
//!   some version's clock contains `w1`'s dot (a coordinator that puts entries
//!   into a clock that its client never sent), `w1`'s loss goes unreported.
//!
//! # Time stamps
//!
//! Times are [`Duration`]s since the run began, as in the sans-IO core. An op
//! must be logged with `start` before its request is sent and with `finish`
//! after its reply arrived; rules 2 and 3 rely on that.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use holdfast_engine::cluster::history::{CheckOptions, Call, FinalState, History, Outcome};
//! use holdfast_net::{Actor, SiblingSet, VersionVector};
//!
//! let mut replica = SiblingSet::new(); // Stands in for a cluster.
//! let mut history = History::new();
//! let put = history.start(
//!     1,
//!     Call::Put { key: b"k".to_vec(), value: b"w1".to_vec(), context: VersionVector::new() },
//!     Duration::from_millis(1),
//! );
//! let dot = replica.write(Actor::new(1, 0), &VersionVector::new(), Some(b"w1".to_vec())).unwrap();
//! history.finish(put, Outcome::Written { dot, context: replica.context() }, Duration::from_millis(2));
//!
//! let mut finals = FinalState::new();
//! finals.add(b"k".to_vec(), replica);
//! history.check(&finals, &CheckOptions::default()).assert_ok("example");
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use holdfast_net::{Actor, Dot, SiblingSet, VersionVector};

/// How many violations [`Report::assert_ok`] lists.
const VIOLATIONS_SHOWN_MAX: usize = 20;
/// How many of the keys involved in violations a report describes.
const KEYS_DESCRIBED_MAX: usize = 3;
/// How many lines of one key's description [`Report::assert_ok`] prints; the
/// rest is left to [`History::describe_key`].
const DESCRIPTION_LINES_MAX: usize = 400;

/// Names one operation of a [`History`]: its position in the order ops were
/// started, so ops sort in start order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(u64);

impl OpId {
    fn index(self) -> usize {
        usize::try_from(self.0).expect("op ids are indexes into a Vec")
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Write a value that supersedes what `context` covers.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value, unique across the history.
        value: Vec<u8>,
        /// The causal context the call carried (empty for a blind write).
        context: VersionVector,
    },
    /// Write a tombstone that supersedes what `context` covers.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The causal context the call carried.
        context: VersionVector,
    },
}

impl Call {
    /// The key the call is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Call::Get { key } | Call::Put { key, .. } | Call::Delete { key, .. } => key,
        }
    }

    /// The context a write carried; `None` for a get.
    fn write_context(&self) -> Option<&VersionVector> {
        match self {
            Call::Get { .. } => None,
            Call::Put { context, .. } | Call::Delete { context, .. } => Some(context),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Call::Get { .. } => "get",
            Call::Put { .. } => "put",
            Call::Delete { .. } => "delete",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Get { .. } => write!(f, "get"),
            Call::Put { value, context, .. } => {
                write!(f, "put {} context {}", Bytes(value), Clock(context))
            }
            Call::Delete { context, .. } => write!(f, "delete context {}", Clock(context)),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Gets: the live values returned and the context.
    Read {
        /// The values of the live versions (tombstones are not returned).
        values: Vec<Vec<u8>>,
        /// The context covering every version read, tombstones included.
        context: VersionVector,
    },
    /// Puts and deletes: the new version's dot and the context after the
    /// write. The write is acknowledged.
    Written {
        /// The dot of the version the coordinator created.
        dot: Dot,
        /// The key's context after the write.
        context: VersionVector,
    },
    /// The node said it failed (a definite error that says nothing was
    /// acknowledged; the write may still have been applied somewhere).
    Failed {
        /// What the node said.
        reason: String,
    },
    /// Timed out or the connection broke: unknown.
    Unknown,
}

impl Outcome {
    fn kind(&self) -> &'static str {
        match self {
            Outcome::Read { .. } => "read",
            Outcome::Written { .. } => "written",
            Outcome::Failed { .. } => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Read { values, context } => {
                write!(f, "read [")?;
                for (index, value) in values.iter().enumerate() {
                    let separator = if index == 0 { "" } else { ", " };
                    write!(f, "{separator}{}", Bytes(value))?;
                }
                write!(f, "] context {}", Clock(context))
            }
            Outcome::Written { dot, context } => {
                write!(f, "written {dot}, context {}", Clock(context))
            }
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

/// One logged operation.
#[derive(Clone, Debug)]
struct Op {
    client: u64,
    call: Call,
    started: Duration,
    /// The outcome and when it came; `None` while in flight, and for ops
    /// never finished, which count as [`Outcome::Unknown`].
    finished: Option<(Outcome, Duration)>,
}

impl Op {
    /// The dot of an acknowledged write.
    fn acknowledged_dot(&self) -> Option<Dot> {
        match &self.finished {
            Some((Outcome::Written { dot, .. }, _)) => Some(*dot),
            _ => None,
        }
    }
}

/// The log of every client operation of a run. See the module docs for the
/// rules [`check`](History::check) applies.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Indexed by [`OpId`].
    ops: Vec<Op>,
    /// The ops of each key, in start order.
    by_key: BTreeMap<Vec<u8>, Vec<OpId>>,
    /// The put of each value. Only looked up, never iterated.
    puts_by_value: HashMap<Vec<u8>, OpId>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Logs that `client` is about to send `call`, at `at` since the run
    /// began. Call it before the request is sent.
    ///
    /// # Panics
    ///
    /// If `call` is a put of a value an earlier put already wrote: values
    /// must be unique for the checker to tell writes apart.
    pub fn start(&mut self, client: u64, call: Call, at: Duration) -> OpId {
        let id = OpId(u64::try_from(self.ops.len()).expect("fewer than 2^64 ops"));
        if let Call::Put { value, .. } = &call {
            if let Some(&first) = self.puts_by_value.get(value) {
                panic!(
                    "put value {} was started twice ({first} and {id}): the test must make \
                     every put value unique",
                    Bytes(value)
                );
            }
            self.puts_by_value.insert(value.clone(), id);
        }
        match self.by_key.get_mut(call.key()) {
            Some(ops) => ops.push(id),
            None => {
                self.by_key.insert(call.key().to_vec(), vec![id]);
            }
        }
        self.ops.push(Op { client, call, started: at, finished: None });
        id
    }

    /// Logs how `op` ended, at `at` since the run began. Call it after the
    /// reply arrived (or the client gave up).
    ///
    /// # Panics
    ///
    /// If `op` is not from this history, was already finished, finishes
    /// before it started, or `outcome` does not fit its call (a read for a
    /// write, a written for a get).
    pub fn finish(&mut self, op: OpId, outcome: Outcome, at: Duration) {
        let entry = self
            .ops
            .get_mut(op.index())
            .unwrap_or_else(|| panic!("{op} is not an op of this history"));
        if let Some((first, _)) = &entry.finished {
            panic!("{op} ({}) finished twice: first {first}, then {outcome}", entry.call.kind());
        }
        assert!(
            at >= entry.started,
            "{op} finished at {at:?}, before it started at {:?}",
            entry.started
        );
        let misfit = matches!(
            (&entry.call, &outcome),
            (Call::Get { .. }, Outcome::Written { .. })
                | (Call::Put { .. } | Call::Delete { .. }, Outcome::Read { .. })
        );
        assert!(!misfit, "{op}: a {} cannot finish as {}", entry.call.kind(), outcome.kind());
        entry.finished = Some((outcome, at));
    }

    /// The number of ops started.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no op was started.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks the history against the final state, by the rules in the module
    /// docs. Ops never finished count as [`Outcome::Unknown`].
    pub fn check(&self, finals: &FinalState, options: &CheckOptions) -> Report {
        let mut stats = self.op_stats();
        let mut violations = Vec::new();
        let keys: BTreeSet<&[u8]> =
            self.by_key.keys().map(Vec::as_slice).chain(finals.keys()).collect();
        for &key in &keys {
            let ops = self.by_key.get(key).map_or(&[][..], Vec::as_slice);
            let sets = finals.replica_sets(key);
            self.check_key(key, ops, sets, options, &mut stats, &mut violations);
        }

        let mut described: Vec<&[u8]> = Vec::new();
        for violation in &violations {
            let key = violation.key();
            if described.len() < KEYS_DESCRIBED_MAX && !described.contains(&key) {
                described.push(key);
            }
        }
        let descriptions = described
            .into_iter()
            .map(|key| {
                format!(
                    "{}{}",
                    self.describe_key(key),
                    describe_final(key, finals.replica_sets(key))
                )
            })
            .collect();
        Report { violations, stats, descriptions }
    }

    /// A readable dump of the ops of `key`, one line each, in start order
    /// (for failure messages).
    pub fn describe_key(&self, key: &[u8]) -> String {
        let ops = self.by_key.get(key).map_or(&[][..], Vec::as_slice);
        let mut out = format!("key {}: {} ops\n", Bytes(key), ops.len());
        for &id in ops {
            let op = &self.ops[id.index()];
            let line = match &op.finished {
                Some((outcome, at)) => format!(
                    "  {id} client {} {} at {:?}..{at:?}: {outcome}\n",
                    op.client, op.call, op.started
                ),
                None => format!(
                    "  {id} client {} {} at {:?}: unknown (never finished)\n",
                    op.client, op.call, op.started
                ),
            };
            out.push_str(&line);
        }
        out
    }

    /// The counts that need no final state.
    fn op_stats(&self) -> Stats {
        let mut stats = Stats {
            ops: self.ops.len() as u64,
            keys: self.by_key.len() as u64,
            ..Stats::default()
        };
        for op in &self.ops {
            match &op.finished {
                Some((Outcome::Read { values, .. }, _)) => {
                    stats.reads += 1;
                    stats.reads_with_siblings += u64::from(values.len() > 1);
                }
                Some((Outcome::Written { .. }, _)) => stats.acknowledged_writes += 1,
                Some((Outcome::Failed { .. }, _)) => stats.failed += 1,
                Some((Outcome::Unknown, _)) | None => stats.unknown += 1,
            }
        }
        stats
    }

    /// Applies every rule to one key. `ops` are the key's ops in start order,
    /// `sets` its final replica sets.
    fn check_key(
        &self,
        key: &[u8],
        ops: &[OpId],
        sets: &[SiblingSet],
        options: &CheckOptions,
        stats: &mut Stats,
        violations: &mut Vec<Violation>,
    ) {
        let acknowledged: Vec<Acknowledged<'_>> = ops
            .iter()
            .filter_map(|&id| {
                let op = &self.ops[id.index()];
                let dot = op.acknowledged_dot()?;
                let context = op.call.write_context().expect("only writes are acknowledged");
                let finished = op.finished.as_ref().map_or(op.started, |&(_, at)| at);
                Some(Acknowledged { id, op, dot, context, finished })
            })
            .collect();
        // A dot is in some context of a collection exactly when it is in
        // their join (`contains` compares the dot's actor's counter, and the
        // join keeps each actor's maximum): that keeps the superseding
        // checks linear in the writes rather than quadratic.
        let mut acknowledged_contexts = VersionVector::new();
        let mut unacknowledged_contexts = VersionVector::new();
        // Deletes whose outcome is unknown: applied and then reaped, they
        // leave no trace of the writes they replaced.
        let mut unacknowledged_deletes = VersionVector::new();
        for op in ops.iter().map(|id| &self.ops[id.index()]) {
            if let Some(context) = op.call.write_context() {
                if op.acknowledged_dot().is_some() {
                    acknowledged_contexts.merge(context);
                } else {
                    unacknowledged_contexts.merge(context);
                    if matches!(op.call, Call::Delete { .. }) {
                        unacknowledged_deletes.merge(context);
                    }
                }
            }
        }

        // Rule 4: unique dots.
        let mut by_dot: BTreeMap<Dot, OpId> = BTreeMap::new();
        for write in &acknowledged {
            if let Some(&first) = by_dot.get(&write.dot) {
                violations.push(Violation::DotReused {
                    key: key.to_vec(),
                    dot: write.dot,
                    first,
                    second: write.id,
                });
            } else {
                by_dot.insert(write.dot, write.id);
            }
        }

        // Rule 1: durability.
        for write in &acknowledged {
            let superseded = acknowledged_contexts.contains(write.dot)
                && (!write.context.contains(write.dot)
                    // The write's own context holds its dot (a coordinator
                    // bug that rule 1 alone need not catch); only another
                    // write may supersede it.
                    || acknowledged.iter().any(|other| {
                        other.id != write.id && other.context.contains(write.dot)
                    }));
            if superseded {
                stats.superseded += 1;
                continue;
            }
            let replaceable = unacknowledged_contexts.contains(write.dot);
            if options.tombstones_reaped && unacknowledged_deletes.contains(write.dot) {
                stats.replaced_by_unacknowledged += 1;
                continue;
            }
            let held: Vec<Held> = sets.iter().map(|set| write.held_by(set, replaceable)).collect();
            let ok = match options.presence {
                Presence::Any => held.iter().any(|&h| h != Held::No),
                Presence::Every => !held.is_empty() && held.iter().all(|&h| h != Held::No),
            };
            // A reaped tombstone is held by no set; what must hold is its
            // effect: none of the values it deleted is back.
            let ok = ok
                || (options.tombstones_reaped
                    && matches!(write.op.call, Call::Delete { .. })
                    && !sets.iter().any(|set| {
                        set.values().any(|value| {
                            acknowledged.iter().any(|put| {
                                write.context.contains(put.dot)
                                    && matches!(&put.op.call, Call::Put { value: v, .. } if v.as_slice() == value)
                            })
                        })
                    }));
            if !ok {
                violations.push(Violation::Lost {
                    key: key.to_vec(),
                    op: write.id,
                    value_or_dot: write.describe(),
                });
            } else {
                let needed_replacement = match options.presence {
                    Presence::Any => !held.contains(&Held::Directly),
                    Presence::Every => held.contains(&Held::Replaced),
                };
                stats.replaced_by_unacknowledged += u64::from(needed_replacement);
            }
        }

        // Rule 2: no invention, in reads and then in the final state.
        for &id in ops {
            let op = &self.ops[id.index()];
            let Some((Outcome::Read { values, .. }, finished)) = &op.finished else { continue };
            for value in values {
                match self.put_of(key, value) {
                    None => violations.push(Violation::Invented {
                        key: key.to_vec(),
                        value: value.clone(),
                        op: Some(id),
                    }),
                    Some(put) if self.ops[put.index()].started > *finished => {
                        violations.push(Violation::ReadBeforeWrite {
                            key: key.to_vec(),
                            read: id,
                            write: put,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        let final_values: BTreeSet<&[u8]> = sets.iter().flat_map(SiblingSet::values).collect();
        for value in final_values {
            if self.put_of(key, value).is_none() {
                violations.push(Violation::Invented {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    op: None,
                });
            }
        }

        // Rule 3: reads see acknowledged writes.
        if options.reads_see_acknowledged_writes {
            self.check_reads_see(key, ops, &acknowledged, options.tombstones_reaped, violations);
        }
    }

    /// Rule 3 for one key. Sweeps the key's successful gets in start order
    /// while folding in the acknowledged writes that finished strictly before
    /// each, keeping per actor only the newest dot: a context that contains
    /// it contains every older dot of that actor. So each stale read reports,
    /// per actor, the newest write it missed. With `reaped`, deletes and the
    /// writes they replaced are left out: their versions may be gone.
    fn check_reads_see(
        &self,
        key: &[u8],
        ops: &[OpId],
        acknowledged: &[Acknowledged<'_>],
        reaped: bool,
        violations: &mut Vec<Violation>,
    ) {
        // With reaping, a delete's tombstone and the versions it replaced
        // may be gone from every replica: reads need not see them.
        let deleted: Vec<&VersionVector> = acknowledged
            .iter()
            .filter(|write| matches!(write.op.call, Call::Delete { .. }))
            .map(|write| write.context)
            .collect();
        let mut writes: Vec<(Duration, OpId, Dot)> = acknowledged
            .iter()
            .filter(|write| {
                !reaped
                    || !(matches!(write.op.call, Call::Delete { .. })
                        || deleted.iter().any(|context| context.contains(write.dot)))
            })
            .map(|write| (write.finished, write.id, write.dot))
            .collect();
        writes.sort_unstable();
        let mut reads: Vec<(Duration, OpId, &VersionVector)> = ops
            .iter()
            .filter_map(|&id| {
                let op = &self.ops[id.index()];
                match &op.finished {
                    Some((Outcome::Read { context, .. }, _)) => Some((op.started, id, context)),
                    _ => None,
                }
            })
            .collect();
        reads.sort_unstable_by_key(|&(started, id, _)| (started, id));

        let mut newest: BTreeMap<Actor, (u64, OpId)> = BTreeMap::new();
        let mut next = 0;
        let mut stale: Vec<(OpId, OpId)> = Vec::new();
        for (started, read, context) in reads {
            while let Some(&(finished, write, dot)) = writes.get(next) {
                if finished >= started {
                    break;
                }
                let entry = newest.entry(dot.actor()).or_insert((dot.counter(), write));
                if dot.counter() > entry.0 {
                    *entry = (dot.counter(), write);
                }
                next += 1;
            }
            for (&actor, &(counter, write)) in &newest {
                if context.get(actor) < counter {
                    stale.push((read, write));
                }
            }
        }
        stale.sort_unstable();
        violations.extend(stale.into_iter().map(|(read, write)| Violation::StaleRead {
            key: key.to_vec(),
            read,
            write,
        }));
    }

    /// The put of `key` that wrote `value`, if any.
    fn put_of(&self, key: &[u8], value: &[u8]) -> Option<OpId> {
        let &id = self.puts_by_value.get(value)?;
        (self.ops[id.index()].call.key() == key).then_some(id)
    }
}

/// An acknowledged write of the key being checked.
struct Acknowledged<'h> {
    id: OpId,
    op: &'h Op,
    dot: Dot,
    /// The context the write was started with.
    context: &'h VersionVector,
    finished: Duration,
}

/// Whether a final set holds an acknowledged write, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Its value, or its tombstone, is there.
    Directly,
    /// A version that had seen it is there, and a write that was not
    /// acknowledged meant to replace it.
    Replaced,
    /// Neither.
    No,
}

impl Acknowledged<'_> {
    fn held_by(&self, set: &SiblingSet, replaceable: bool) -> Held {
        let direct = match &self.op.call {
            Call::Put { value, .. } => set.values().any(|held| held == value.as_slice()),
            Call::Delete { .. } => set.iter().any(|v| v.dot == self.dot && v.is_tombstone()),
            Call::Get { .. } => unreachable!("a get is never acknowledged as a write"),
        };
        if direct {
            Held::Directly
        } else if replaceable && set.iter().any(|version| version.clock.contains(self.dot)) {
            Held::Replaced
        } else {
            Held::No
        }
    }

    /// The value (or the tombstone) and dot, for a [`Violation::Lost`].
    fn describe(&self) -> String {
        match &self.op.call {
            Call::Put { value, .. } => format!("value {} (dot {})", Bytes(value), self.dot),
            _ => format!("tombstone {}", self.dot),
        }
    }
}

/// The final state of every key: one [`SiblingSet`] per replica asked (or a
/// single one from a final quorum read).
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    keys: BTreeMap<Vec<u8>, Vec<SiblingSet>>,
}

impl FinalState {
    /// No key read yet.
    pub fn new() -> Self {
        FinalState::default()
    }

    /// Adds one replica's set for `key`. Add an empty set for a replica that
    /// has nothing for the key: under [`Presence::Every`] it counts.
    pub fn add(&mut self, key: Vec<u8>, replica_set: SiblingSet) {
        self.keys.entry(key).or_default().push(replica_set);
    }

    /// The keys read, in ascending order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.keys.keys().map(Vec::as_slice)
    }

    /// The sets given for `key`, in the order added; empty if none.
    pub fn replica_sets(&self, key: &[u8]) -> &[SiblingSet] {
        self.keys.get(key).map_or(&[][..], Vec::as_slice)
    }
}

/// Where an acknowledged write must be found (rule 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Presence {
    /// In at least one of a key's final sets: enough for a quorum read, or
    /// for replicas that have not yet converged.
    #[default]
    Any,
    /// In every one of a key's final sets: for after anti-entropy (or a full
    /// exchange) has converged the replicas.
    Every,
}

/// What [`History::check`] checks beyond rules 1, 2 and 4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Where an acknowledged write must be found.
    pub presence: Presence,
    /// Whether to apply rule 3 (reads see acknowledged writes). Only sound
    /// for runs with R + W > N and no faults.
    pub reads_see_acknowledged_writes: bool,
    /// Whether tombstones may have been reaped. Rule 1 then also accepts an
    /// acknowledged delete that no replica holds if no final set holds a
    /// value it replaced (a deleted value that came back is still lost
    /// data's mirror image: a violation); rule 3 leaves deletes and the
    /// writes they replaced out; and a write that a delete of unknown
    /// outcome replaced need not be held at all (the delete may have been
    /// applied and reaped).
    pub tombstones_reaped: bool,
}

/// A broken rule (see the module docs), with the ops involved.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Rule 1: an acknowledged, unsuperseded write is not held by the final
    /// state.
    Lost {
        /// The key.
        key: Vec<u8>,
        /// The write.
        op: OpId,
        /// The value and dot of a put, or the dot of a delete's tombstone.
        value_or_dot: String,
    },
    /// Rule 2: a value that no put of the key wrote.
    Invented {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The get that returned it, or `None` when it is in the final state.
        op: Option<OpId>,
    },
    /// Rule 2: a get returned the value of a put that started only after the
    /// get had finished.
    ReadBeforeWrite {
        /// The key.
        key: Vec<u8>,
        /// The get.
        read: OpId,
        /// The put.
        write: OpId,
    },
    /// Rule 3: a get that started after a write was acknowledged returned a
    /// context without the write's dot.
    StaleRead {
        /// The key.
        key: Vec<u8>,
        /// The get.
        read: OpId,
        /// The newest write of one actor that the get missed.
        write: OpId,
    },
    /// Rule 4: two acknowledged writes of a key were given the same dot.
    DotReused {
        /// The key.
        key: Vec<u8>,
        /// The dot.
        dot: Dot,
        /// The first write given it.
        first: OpId,
        /// A later one.
        second: OpId,
    },
}

impl Violation {
    /// The key the violation is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Violation::Lost { key, .. }
            | Violation::Invented { key, .. }
            | Violation::ReadBeforeWrite { key, .. }
            | Violation::StaleRead { key, .. }
            | Violation::DotReused { key, .. } => key,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { key, op, value_or_dot } => write!(
                f,
                "lost: key {}: acknowledged write {op} of {value_or_dot} is neither superseded \
                 nor held by the final state",
                Bytes(key)
            ),
            Violation::Invented { key, value, op: Some(op) } => write!(
                f,
                "invented: key {}: get {op} returned {}, which no put of the key wrote",
                Bytes(key),
                Bytes(value)
            ),
            Violation::Invented { key, value, op: None } => write!(
                f,
                "invented: key {}: the final state holds {}, which no put of the key wrote",
                Bytes(key),
                Bytes(value)
            ),
            Violation::ReadBeforeWrite { key, read, write } => write!(
                f,
                "read before write: key {}: get {read} returned the value of put {write}, \
                 which started after the get finished",
                Bytes(key)
            ),
            Violation::StaleRead { key, read, write } => write!(
                f,
                "stale read: key {}: get {read} started after write {write} was acknowledged \
                 but returned a context without its dot",
                Bytes(key)
            ),
            Violation::DotReused { key, dot, first, second } => write!(
                f,
                "dot reused: key {}: writes {first} and {second} were both acknowledged as {dot}",
                Bytes(key)
            ),
        }
    }
}

/// Counts from one check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ops started.
    pub ops: u64,
    /// Puts and deletes that finished [`Outcome::Written`].
    pub acknowledged_writes: u64,
    /// Ops that finished [`Outcome::Failed`].
    pub failed: u64,
    /// Ops that finished [`Outcome::Unknown`] or never finished.
    pub unknown: u64,
    /// Acknowledged writes superseded by another acknowledged write.
    pub superseded: u64,
    /// Acknowledged, unsuperseded writes that passed rule 1 only because a
    /// write that was not acknowledged replaced them (see the module docs).
    pub replaced_by_unacknowledged: u64,
    /// Gets that finished [`Outcome::Read`].
    pub reads: u64,
    /// Of those, the ones that returned more than one value.
    pub reads_with_siblings: u64,
    /// Keys in the history.
    pub keys: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops on {} keys: {} acknowledged writes ({} superseded, {} replaced by \
             unacknowledged writes), {} failed, {} unknown, {} reads ({} with siblings)",
            self.ops,
            self.keys,
            self.acknowledged_writes,
            self.superseded,
            self.replaced_by_unacknowledged,
            self.failed,
            self.unknown,
            self.reads,
            self.reads_with_siblings
        )
    }
}

/// What [`History::check`] found.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every violation, by key, then by rule, then by op.
    pub violations: Vec<Violation>,
    /// Counts of ops and writes.
    pub stats: Stats,
    /// The history and final state of the first few keys involved.
    descriptions: Vec<String>,
}

impl Report {
    /// Whether no rule was broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Returns if no rule was broken.
    ///
    /// # Panics
    ///
    /// Otherwise, with a message that starts with `label` and lists the
    /// violations (up to 20), then the ops and final state of the first few
    /// keys involved.
    pub fn assert_ok(&self, label: &str) {
        if self.is_ok() {
            return;
        }
        let mut message = format!("{label}: {} history violation(s)\n", self.violations.len());
        for violation in self.violations.iter().take(VIOLATIONS_SHOWN_MAX) {
            message.push_str(&format!("  {violation}\n"));
        }
        if self.violations.len() > VIOLATIONS_SHOWN_MAX {
            let more = self.violations.len() - VIOLATIONS_SHOWN_MAX;
            message.push_str(&format!("  ... and {more} more\n"));
        }
        message.push_str(&format!("stats: {}\n", self.stats));
        for description in &self.descriptions {
            let lines = description.lines().count();
            for line in description.lines().take(DESCRIPTION_LINES_MAX) {
                message.push_str(line);
                message.push('\n');
            }
            if lines > DESCRIPTION_LINES_MAX {
                let more = lines - DESCRIPTION_LINES_MAX;
                message.push_str(&format!("  ... {more} more lines (History::describe_key)\n"));
            }
        }
        panic!("{message}");
    }
}

/// The final sets of one key, one line per replica.
fn describe_final(key: &[u8], sets: &[SiblingSet]) -> String {
    let mut out = format!("final state of key {}: {} replica set(s)\n", Bytes(key), sets.len());
    for (replica, set) in sets.iter().enumerate() {
        let versions: Vec<String> = set
            .iter()
            .map(|version| match &version.value {
                Some(value) => {
                    format!("{} {} clock {}", version.dot, Bytes(value), Clock(&version.clock))
                }
                None => format!("{} tombstone clock {}", version.dot, Clock(&version.clock)),
            })
            .collect();
        let versions = if versions.is_empty() { "empty".to_owned() } else { versions.join("; ") };
        out.push_str(&format!("  replica set {replica}: {versions}\n"));
    }
    out
}

/// Shows bytes as a quoted string when they are printable ASCII, else as hex.
struct Bytes<'a>(&'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) if text.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ') => {
                write!(f, "{text:?}")
            }
            _ => {
                write!(f, "0x")?;
                self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }
    }
}

/// Shows a version vector as `{n1.0:3, n2.0:1}`.
struct Clock<'a>(&'a VersionVector);

impl fmt::Display for Clock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (index, (actor, counter)) in self.0.iter().enumerate() {
            let separator = if index == 0 { "" } else { ", " };
            write!(f, "{separator}{actor}:{counter}")?;
        }
        write!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Actor = Actor::new(1, 0);
    const B: Actor = Actor::new(2, 0);
    const KEY: &[u8] = b"cart";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn put(value: &str, context: &VersionVector) -> Call {
        Call::Put { key: KEY.to_vec(), value: value.as_bytes().to_vec(), context: context.clone() }
    }

    fn delete(context: &VersionVector) -> Call {
        Call::Delete { key: KEY.to_vec(), context: context.clone() }
    }

    fn get() -> Call {
        Call::Get { key: KEY.to_vec() }
    }

    /// A one-key run against sibling sets that stand in for replicas. Each
    /// op takes one millisecond of virtual time, and ops do not overlap
    /// unless a test starts and finishes them by hand.
    #[derive(Default)]
    struct Run {
        history: History,
        now_ms: u64,
    }

    impl Run {
        fn tick(&mut self) -> Duration {
            self.now_ms += 1;
            ms(self.now_ms)
        }

        /// Writes `value` (a tombstone for `None`) into `set` at `actor` with
        /// `context`, and logs the write as acknowledged.
        fn write(
            &mut self,
            set: &mut SiblingSet,
            actor: Actor,
            context: &VersionVector,
            value: Option<&str>,
        ) -> OpId {
            let call = match value {
                Some(value) => put(value, context),
                None => delete(context),
            };
            let at = self.tick();
            let op = self.history.start(1, call, at);
            let dot = set.write(actor, context, value.map(|v| v.as_bytes().to_vec())).unwrap();
            let at = self.tick();
            self.history.finish(op, Outcome::Written { dot, context: set.context() }, at);
            op
        }

        /// Writes `value` into `set` (if `applied`) and logs the outcome.
        fn write_unacknowledged(
            &mut self,
            set: &mut SiblingSet,
            context: &VersionVector,
            value: &str,
            applied: bool,
            outcome: Outcome,
        ) -> OpId {
            let at = self.tick();
            let op = self.history.start(2, put(value, context), at);
            if applied {
                set.write(A, context, Some(value.as_bytes().to_vec())).unwrap();
            }
            let at = self.tick();
            self.history.finish(op, outcome, at);
            op
        }

        /// Reads `set` and logs the get.
        fn read(&mut self, set: &SiblingSet) -> (OpId, VersionVector) {
            let at = self.tick();
            let op = self.history.start(3, get(), at);
            let values = set.values().map(<[u8]>::to_vec).collect();
            let at = self.tick();
            self.history.finish(op, Outcome::Read { values, context: set.context() }, at);
            (op, set.context())
        }

        fn check_with(&self, sets: &[&SiblingSet], options: CheckOptions) -> Report {
            let mut finals = FinalState::new();
            for set in sets {
                finals.add(KEY.to_vec(), (*set).clone());
            }
            self.history.check(&finals, &options)
        }

        fn check(&self, sets: &[&SiblingSet]) -> Report {
            self.check_with(sets, CheckOptions::default())
        }
    }

    fn lost(op: OpId, value_or_dot: &str) -> Violation {
        Violation::Lost { key: KEY.to_vec(), op, value_or_dot: value_or_dot.to_owned() }
    }

    #[test]
    fn acknowledged_put_missing_from_the_final_state_is_lost() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        let op = run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let report = run.check(&[&SiblingSet::new()]);
        assert_eq!(report.violations, [lost(op, "value \"w1\" (dot n1.0:1)")]);
        assert!(run.check(&[&set]).is_ok());
    }

    #[test]
    fn key_absent_from_the_final_state_counts_as_empty() {
        let mut run = Run::default();
        let op = run.write(&mut SiblingSet::new(), A, &VersionVector::new(), Some("w1"));
        let report = run.history.check(&FinalState::new(), &CheckOptions::default());
        assert_eq!(report.violations, [lost(op, "value \"w1\" (dot n1.0:1)")]);
    }

    #[test]
    fn put_superseded_by_an_acknowledged_write_with_its_context_is_not_required() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let (_, context) = run.read(&set);
        run.write(&mut set, B, &context, Some("w2"));
        assert_eq!(set.values().collect::<Vec<_>>(), [b"w2"]);
        let report = run.check(&[&set]);
        assert!(report.is_ok(), "{:?}", report.violations);
        assert_eq!(report.stats.superseded, 1);
        assert_eq!(report.stats.acknowledged_writes, 2);
    }

    #[test]
    fn concurrent_blind_puts_must_both_survive_as_siblings() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let second = run.write(&mut set, B, &VersionVector::new(), Some("w2"));
        assert_eq!(set.len(), 2);
        assert!(run.check(&[&set]).is_ok());

        // A replica that let the first overwrite the second lost it.
        let mut overwritten = SiblingSet::new();
        overwritten.write(A, &VersionVector::new(), Some(b"w1".to_vec())).unwrap();
        let report = run.check(&[&overwritten]);
        assert_eq!(report.violations, [lost(second, "value \"w2\" (dot n2.0:1)")]);
        assert_eq!(report.stats.superseded, 0);
    }

    #[test]
    fn value_nobody_wrote_is_invented() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        set.write(B, &VersionVector::new(), Some(b"ghost".to_vec())).unwrap();
        let (read, _) = run.read(&set);
        let report = run.check(&[&set, &set]);
        let invented = |op| Violation::Invented { key: KEY.to_vec(), value: b"ghost".to_vec(), op };
        // Once for the get and once for the final state, not once per replica.
        assert_eq!(report.violations, [invented(Some(read)), invented(None)]);
    }

    #[test]
    fn value_written_to_another_key_is_invented_here() {
        let mut run = Run::default();
        let other = Call::Put {
            key: b"other".to_vec(),
            value: b"w1".to_vec(),
            context: VersionVector::new(),
        };
        run.history.start(1, other, ms(0));
        let mut set = SiblingSet::new();
        set.write(A, &VersionVector::new(), Some(b"w1".to_vec())).unwrap();
        let mut finals = FinalState::new();
        finals.add(KEY.to_vec(), set);
        finals.add(b"other".to_vec(), SiblingSet::new());
        let report = run.history.check(&finals, &CheckOptions::default());
        assert_eq!(
            report.violations,
            [Violation::Invented { key: KEY.to_vec(), value: b"w1".to_vec(), op: None }]
        );
    }

    #[test]
    fn failed_or_unknown_put_that_shows_up_is_fine() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        let failed = Outcome::Failed { reason: "quorum not reached".into() };
        run.write_unacknowledged(&mut set, &VersionVector::new(), "w1", true, failed);
        run.write_unacknowledged(&mut set, &VersionVector::new(), "w2", true, Outcome::Unknown);
        let at = run.tick();
        run.history.start(2, put("w3", &VersionVector::new()), at); // Never finished.
        set.write(B, &VersionVector::new(), Some(b"w3".to_vec())).unwrap();
        run.read(&set);
        let report = run.check(&[&set]);
        assert!(report.is_ok(), "{:?}", report.violations);
        assert_eq!((report.stats.failed, report.stats.unknown), (1, 2));
        assert_eq!(report.stats.acknowledged_writes, 0);
    }

    #[test]
    fn unknown_put_that_does_not_show_up_is_fine() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write_unacknowledged(&mut set, &VersionVector::new(), "w1", false, Outcome::Unknown);
        assert!(run.check(&[&set]).is_ok());
    }

    #[test]
    fn acknowledged_put_replaced_by_an_unknown_write_that_was_applied_is_not_lost() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        let first = run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let (_, context) = run.read(&set);
        let mut not_applied = set.clone();
        run.write_unacknowledged(&mut set, &context, "w2", true, Outcome::Unknown);
        assert_eq!(set.values().collect::<Vec<_>>(), [b"w2"]);
        let report = run.check(&[&set]);
        assert!(report.is_ok(), "{:?}", report.violations);
        assert_eq!(report.stats.replaced_by_unacknowledged, 1);

        // Had it not been applied, w1 must still be there.
        assert!(run.check(&[&not_applied]).is_ok());
        not_applied = SiblingSet::new();
        let report = run.check(&[&not_applied]);
        assert_eq!(report.violations, [lost(first, "value \"w1\" (dot n1.0:1)")]);
    }

    #[test]
    fn acknowledged_delete_requires_its_tombstone_or_a_successor() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let (_, context) = run.read(&set);
        let before_delete = set.clone();
        let deleted = run.write(&mut set, A, &context, None);
        assert!(set.is_tombstone_only());
        assert!(run.check(&[&set]).is_ok());

        // The tombstone is gone (a reaper too eager, say): the delete is lost,
        // and so w1, which only that delete superseded, is not required.
        let report = run.check(&[&SiblingSet::new()]);
        assert_eq!(report.violations, [lost(deleted, "tombstone n1.0:2")]);
        // A replica that never saw the delete still holds w1, but not it.
        let report = run.check(&[&before_delete]);
        assert_eq!(report.violations, [lost(deleted, "tombstone n1.0:2")]);

        // A later acknowledged write with the tombstone's context supersedes it.
        let (_, context) = run.read(&set);
        run.write(&mut set, B, &context, Some("w3"));
        assert!(!set.iter().any(|version| version.is_tombstone()));
        let report = run.check(&[&set]);
        assert!(report.is_ok(), "{:?}", report.violations);
        assert_eq!(report.stats.superseded, 2);
    }

    #[test]
    fn a_reaped_delete_is_held_while_no_value_it_deleted_is_back() {
        let reaped = CheckOptions {
            presence: Presence::Every,
            reads_see_acknowledged_writes: true,
            tombstones_reaped: true,
        };
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let before_delete = set.clone();
        let (_, context) = run.read(&set);
        let deleted = run.write(&mut set, A, &context, None);
        // Reaped everywhere: nothing is held, and nothing is lost.
        let report = run.check_with(&[&SiblingSet::new(), &SiblingSet::new()], reaped);
        assert!(report.is_ok(), "{:?}", report.violations);
        // A read after the reap finds nothing, and is not stale.
        run.read(&SiblingSet::new());
        assert!(run.check_with(&[&SiblingSet::new()], reaped).is_ok());
        // The deleted value back on one replica (a stale copy after the reap)
        // is the delete lost.
        let report = run.check_with(&[&SiblingSet::new(), &before_delete], reaped);
        assert_eq!(report.violations, [lost(deleted, "tombstone n1.0:2")]);
        // A blind write after the reap stands alone; the delete still holds.
        let mut again = SiblingSet::new();
        run.write(&mut again, B, &VersionVector::new(), Some("w2"));
        let report = run.check_with(&[&again, &again], reaped);
        assert!(report.is_ok(), "{:?}", report.violations);
    }

    #[test]
    fn presence_every_requires_every_replica_and_any_one() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        let op = run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let empty = SiblingSet::new();
        let every = CheckOptions { presence: Presence::Every, ..CheckOptions::default() };
        assert!(run.check(&[&empty, &set]).is_ok());
        assert!(run.check_with(&[&set, &set], every).is_ok());
        let report = run.check_with(&[&set, &empty], every);
        assert_eq!(report.violations, [lost(op, "value \"w1\" (dot n1.0:1)")]);
        // Every of no replica is not vacuously true.
        assert_eq!(run.check_with(&[], every).violations.len(), 1);
    }

    #[test]
    fn get_started_after_an_acknowledged_put_must_see_it() {
        let options =
            CheckOptions { reads_see_acknowledged_writes: true, ..CheckOptions::default() };
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        let stale_copy = set.clone();
        let write = run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let (fresh, _) = run.read(&set);
        let (stale, _) = run.read(&stale_copy);
        let report = run.check_with(&[&set], options);
        assert_eq!(
            report.violations,
            [Violation::StaleRead { key: KEY.to_vec(), read: stale, write }]
        );
        assert_ne!(fresh, stale);
        assert!(run.check(&[&set]).is_ok(), "rule 3 is off by default");
    }

    #[test]
    fn get_started_before_the_put_finished_may_miss_it() {
        let options =
            CheckOptions { reads_see_acknowledged_writes: true, ..CheckOptions::default() };
        let mut history = History::new();
        let mut set = SiblingSet::new();
        let write = history.start(1, put("w1", &VersionVector::new()), ms(1));
        let overlapping = history.start(2, get(), ms(2));
        let dot = set.write(A, &VersionVector::new(), Some(b"w1".to_vec())).unwrap();
        history.finish(write, Outcome::Written { dot, context: set.context() }, ms(3));
        // Starts at the instant the put finished: not after it.
        let same_instant = history.start(3, get(), ms(3));
        let empty = Outcome::Read { values: Vec::new(), context: VersionVector::new() };
        history.finish(overlapping, empty.clone(), ms(4));
        history.finish(same_instant, empty, ms(4));
        let mut finals = FinalState::new();
        finals.add(KEY.to_vec(), set);
        let report = history.check(&finals, &options);
        assert!(report.is_ok(), "{:?}", report.violations);
    }

    #[test]
    fn stale_read_reports_the_newest_missed_write_per_actor() {
        let options =
            CheckOptions { reads_see_acknowledged_writes: true, ..CheckOptions::default() };
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        let context = set.context();
        let newest_a = run.write(&mut set, A, &context, Some("w2"));
        let newest_b = run.write(&mut set, B, &VersionVector::new(), Some("w3"));
        let (stale, _) = run.read(&SiblingSet::new());
        let report = run.check_with(&[&set], options);
        let stale_read = |write| Violation::StaleRead { key: KEY.to_vec(), read: stale, write };
        assert_eq!(report.violations, [stale_read(newest_a), stale_read(newest_b)]);
    }

    #[test]
    fn get_returning_a_put_that_started_after_it_finished_is_flagged() {
        let mut history = History::new();
        let read = history.start(1, get(), ms(1));
        let values = vec![b"w1".to_vec()];
        history.finish(read, Outcome::Read { values, context: VersionVector::new() }, ms(2));
        let write = history.start(2, put("w1", &VersionVector::new()), ms(3));
        history.finish(write, Outcome::Unknown, ms(4));
        let report = history.check(&FinalState::new(), &CheckOptions::default());
        assert_eq!(
            report.violations,
            [Violation::ReadBeforeWrite { key: KEY.to_vec(), read, write }]
        );
    }

    #[test]
    fn reissued_dot_is_flagged() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        let first = run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        // A coordinator that lost its state issues (A, 1) again.
        let mut wiped = SiblingSet::new();
        let second = run.write(&mut wiped, A, &VersionVector::new(), Some("w2"));
        let report = run.check(&[&set]);
        assert_eq!(
            report.violations,
            [
                Violation::DotReused { key: KEY.to_vec(), dot: Dot::new(A, 1), first, second },
                lost(second, "value \"w2\" (dot n1.0:1)"),
            ]
        );
    }

    #[test]
    fn reads_with_siblings_are_counted() {
        let mut run = Run::default();
        let mut set = SiblingSet::new();
        run.write(&mut set, A, &VersionVector::new(), Some("w1"));
        run.read(&set);
        run.write(&mut set, B, &VersionVector::new(), Some("w2"));
        run.read(&set);
        run.read(&set);
        let failed = run.history.start(3, get(), ms(100));
        run.history.finish(failed, Outcome::Failed { reason: "timeout".into() }, ms(101));
        let stats = run.check(&[&set]).stats;
        assert_eq!((stats.reads, stats.reads_with_siblings), (3, 2));
        assert_eq!((stats.ops, stats.failed, stats.keys), (6, 1, 1));
    }

    #[test]
    #[should_panic(expected = "put value \"w1\" was started twice (#0 and #1)")]
    fn duplicate_put_value_panics() {
        let mut history = History::new();
        history.start(1, put("w1", &VersionVector::new()), ms(1));
        let elsewhere = Call::Put {
            key: b"other".to_vec(),
            value: b"w1".to_vec(),
            context: VersionVector::new(),
        };
        history.start(2, elsewhere, ms(2));
    }

    #[test]
    #[should_panic(expected = "finished twice")]
    fn finishing_twice_panics() {
        let mut history = History::new();
        let op = history.start(1, get(), ms(1));
        history.finish(op, Outcome::Unknown, ms(2));
        history.finish(op, Outcome::Unknown, ms(3));
    }

    #[test]
    #[should_panic(expected = "a put cannot finish as read")]
    fn outcome_of_the_wrong_kind_panics() {
        let mut history = History::new();
        let op = history.start(1, put("w1", &VersionVector::new()), ms(1));
        history.finish(
            op,
            Outcome::Read { values: Vec::new(), context: VersionVector::new() },
            ms(2),
        );
    }

    #[test]
    fn assert_ok_lists_violations_and_describes_the_key() {
        let mut run = Run::default();
        run.write(&mut SiblingSet::new(), A, &VersionVector::new(), Some("w1"));
        let report = run.check(&[&SiblingSet::new()]);
        let panic = std::panic::catch_unwind(|| report.assert_ok("seed 7")).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("seed 7: 1 history violation(s)\n"), "{message}");
        assert!(message.contains("lost: key \"cart\": acknowledged write #0"), "{message}");
        assert!(
            message.contains("#0 client 1 put \"w1\" context {} at 1ms..2ms: written n1.0:1"),
            "{message}"
        );
        assert!(message.contains("replica set 0: empty"), "{message}");
    }

    /// Many clients doing read-modify-writes, blind writes, deletes and reads
    /// one after another over a few keys, against one set per key: a correct
    /// history, which must pass every rule, and fast.
    #[test]
    fn large_serial_history_passes_every_rule() {
        let mut rng_state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            // xorshift64*: deterministic and good enough to pick ops.
            rng_state ^= rng_state >> 12;
            rng_state ^= rng_state << 25;
            rng_state ^= rng_state >> 27;
            rng_state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let keys: Vec<Vec<u8>> = (0..20).map(|k| format!("k{k}").into_bytes()).collect();
        let mut sets: Vec<SiblingSet> = vec![SiblingSet::new(); keys.len()];
        let mut history = History::new();
        let ops = 20_000;
        for n in 0..ops {
            let k = (next() % keys.len() as u64) as usize;
            let (key, set) = (keys[k].clone(), &mut sets[k]);
            let actor = Actor::new(next() % 3, 0);
            let at = ms(2 * n);
            let context = if next() % 4 == 0 { VersionVector::new() } else { set.context() };
            let (call, value) = match next() % 10 {
                0..=3 => (Call::Get { key }, None),
                4 => (Call::Delete { key, context: context.clone() }, None),
                _ => {
                    let value = format!("w{n}").into_bytes();
                    (Call::Put { key, value: value.clone(), context: context.clone() }, Some(value))
                }
            };
            let is_get = matches!(call, Call::Get { .. });
            let op = history.start(n % 7, call, at);
            let outcome = if is_get {
                let values = set.values().map(<[u8]>::to_vec).collect();
                Outcome::Read { values, context: set.context() }
            } else {
                match set.write(actor, &context, value) {
                    Ok(dot) => Outcome::Written { dot, context: set.context() },
                    Err(error) => Outcome::Failed { reason: error.to_string() },
                }
            };
            history.finish(op, outcome, at + ms(1));
        }
        let mut finals = FinalState::new();
        for (key, set) in keys.into_iter().zip(sets) {
            finals.add(key.clone(), set.clone());
            finals.add(key, set);
        }
        let options = CheckOptions {
            presence: Presence::Every,
            reads_see_acknowledged_writes: true,
            tombstones_reaped: false,
        };
        let report = history.check(&finals, &options);
        report.assert_ok("large serial history");
        assert_eq!(report.stats.ops, ops);
        assert!(report.stats.superseded > 0 && report.stats.reads_with_siblings > 0);
    }
}
