//! What to send: the YCSB core workloads' operation mixes, and the stream of
//! operations one connection issues in the load phase or the run.
//!
//! Invariant: an [`OpSource`] is deterministic given its seed, and the load
//! phase's sources of `C` connections together insert every record in
//! `0..records` exactly once.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::distribution::KeyChooser;

/// YCSB's core workloads (the ones without scans or inserts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Update heavy: 50% reads, 50% updates (a session store).
    A,
    /// Read mostly: 95% reads, 5% updates (photo tagging).
    B,
    /// Read only: 100% reads (a profile cache).
    C,
    /// Read-modify-write: 50% reads, 50% read-modify-writes (a user
    /// database whose records are read, changed and written back).
    F,
}

impl Workload {
    /// The share of operations that are plain reads; the rest are updates
    /// (A, B) or read-modify-writes (F).
    pub fn read_proportion(self) -> f64 {
        match self {
            Self::A | Self::F => 0.5,
            Self::B => 0.95,
            Self::C => 1.0,
        }
    }

    /// The kind of the operations that are not reads.
    pub fn write_kind(self) -> OpKind {
        match self {
            Self::F => OpKind::ReadModifyWrite,
            Self::A | Self::B | Self::C => OpKind::Update,
        }
    }

    /// The lower-case letter used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::C => "c",
            Self::F => "f",
        }
    }
}

/// The operation kinds measured separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// A write of a new record, in the load phase.
    Insert,
    /// A read of one record.
    Read,
    /// A blind write of one record (no read before it).
    Update,
    /// A read, then a write of the same record carrying what the read
    /// returned (holdfast's causal context); timed as one operation.
    ReadModifyWrite,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 4] = [Self::Insert, Self::Read, Self::Update, Self::ReadModifyWrite];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Read => "read",
            Self::Update => "update",
            Self::ReadModifyWrite => "rmw",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One operation: what to do, and to which record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// What to do.
    pub kind: OpKind,
    /// The record number (see [`crate::keys`] for its key).
    pub record: u64,
}

/// The operations one connection issues, in order.
#[derive(Debug)]
pub enum OpSource {
    /// The load phase: inserts records `next`, `next + stride`, ... below
    /// `records`, so connection `i` of `C` inserts the records congruent to
    /// `i` modulo `C`.
    Load {
        /// The next record to insert.
        next: u64,
        /// The number of connections sharing the load.
        stride: u64,
        /// Records `0..records` are loaded.
        records: u64,
    },
    /// The run: an endless stream drawn from a workload's mix and a record
    /// chooser.
    Run {
        /// The mix.
        workload: Workload,
        /// Which records.
        chooser: KeyChooser,
        /// Seeded randomness for both.
        rng: SmallRng,
    },
}

impl OpSource {
    /// The load-phase share of connection `index` out of `connections`.
    pub fn load(records: u64, index: u64, connections: u64) -> Self {
        assert!(index < connections, "connection {index} of {connections}");
        Self::Load { next: index, stride: connections, records }
    }

    /// A run stream, reproducible from `seed`.
    pub fn run(workload: Workload, chooser: KeyChooser, seed: u64) -> Self {
        Self::Run { workload, chooser, rng: SmallRng::seed_from_u64(seed) }
    }

    /// How many operations are left, or `None` for an endless run.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Load { next, stride, records } => {
                Some(records.saturating_sub(*next).div_ceil(*stride))
            }
            Self::Run { .. } => None,
        }
    }

    /// The next operation, or `None` when the load phase's share is done
    /// (a run never ends by itself).
    pub fn next_op(&mut self) -> Option<Operation> {
        match self {
            Self::Load { next, stride, records } => {
                if *next >= *records {
                    return None;
                }
                let record = *next;
                *next += *stride;
                Some(Operation { kind: OpKind::Insert, record })
            }
            Self::Run { workload, chooser, rng } => {
                let read = rng.random::<f64>() < workload.read_proportion();
                let kind = if read { OpKind::Read } else { workload.write_kind() };
                Some(Operation { kind, record: chooser.next(rng) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribution::DistributionKind;

    #[test]
    fn load_shares_cover_every_record_once() {
        let (records, connections) = (1003, 7);
        let mut seen = vec![0u8; records as usize];
        for index in 0..connections {
            let mut source = OpSource::load(records, index, connections);
            let mut remaining = source.remaining().unwrap();
            while let Some(op) = source.next_op() {
                remaining -= 1;
                assert_eq!(source.remaining(), Some(remaining));
                assert_eq!(op.kind, OpKind::Insert);
                seen[op.record as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn mixes_have_their_proportions() {
        for (workload, reads, other) in [
            (Workload::A, 0.5, OpKind::Update),
            (Workload::B, 0.95, OpKind::Update),
            (Workload::C, 1.0, OpKind::Update),
            (Workload::F, 0.5, OpKind::ReadModifyWrite),
        ] {
            let chooser = KeyChooser::new(DistributionKind::Uniform, 100);
            let mut source = OpSource::run(workload, chooser, 11);
            let draws = 100_000;
            let mut read_count = 0;
            for _ in 0..draws {
                let op = source.next_op().expect("a run never ends");
                assert!(op.record < 100);
                match op.kind {
                    OpKind::Read => read_count += 1,
                    kind => assert_eq!(kind, other),
                }
            }
            let share = f64::from(read_count) / f64::from(draws);
            assert!((share - reads).abs() < 0.01, "{workload:?}: {share}");
        }
    }

    #[test]
    fn a_seed_replays() {
        let chooser = KeyChooser::new(DistributionKind::Zipfian, 1000);
        let mut first = OpSource::run(Workload::A, chooser.clone(), 5);
        let mut second = OpSource::run(Workload::A, chooser, 5);
        for _ in 0..1000 {
            assert_eq!(first.next_op(), second.next_op());
        }
    }
}
