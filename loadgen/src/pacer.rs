//! When to send: the closed-loop and open-loop schedules of one connection,
//! free of I/O and of clocks (time comes in as `now_ns`).
//!
//! Closed loop: keep `depth` operations in flight, each timed from when it
//! is sent. Open loop: operation `k` of connection `i` of `C` is *intended*
//! at `start + (k * C + i) / rate` seconds, so the connections together
//! send at `rate` with evenly spaced starts, whatever the latency. Each
//! operation is timed from its intended time, not from when it was sent:
//! an operation that waits because the connection already has `depth` in
//! flight, or because the target stalled, has its wait counted. That is
//! what avoids coordinated omission (a closed loop stops sending while the
//! target stalls, so it records one slow operation where users would have
//! seen hundreds).
//!
//! Invariants: `in_flight <= depth`; intended times never decrease; an
//! open-loop schedule issues exactly the operations intended before the end
//! of the run (or counts the rest as [`Pacer::behind`] when the drain time
//! runs out); nothing is issued at or after the stop time.

/// Nanoseconds per second.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// How a connection paces its operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as replies allow, `depth` in flight.
    Closed,
    /// A fixed schedule: `rate` operations per second over all
    /// `connections`, of which this is number `index`.
    Open {
        /// Operations per second over all connections (at least 1).
        rate: u64,
        /// How many connections share the rate.
        connections: u64,
        /// This connection's position among them.
        index: u64,
    },
}

/// What a connection should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send one operation now, timed from `intended_ns`.
    Issue {
        /// When the operation's clock started.
        intended_ns: u64,
    },
    /// Nothing is due before this time.
    WaitUntil(u64),
    /// An operation is due but `depth` are in flight: wait for a reply.
    WaitForReply,
    /// Nothing more will be issued (the run ended, the operation budget is
    /// spent, or the stop time passed).
    Finished,
}

/// Limits of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacerLimits {
    /// The phase began here (all connections share it).
    pub start_ns: u64,
    /// No operation intended at or after this time is issued.
    pub end_ns: u64,
    /// Nothing at all is issued at or after this time, and operations
    /// still in flight then are given up on; at least `end_ns`.
    pub stop_ns: u64,
    /// At most this many operations are issued.
    pub ops_max: u64,
    /// At most this many in flight (at least 1).
    pub depth: u32,
}

/// The schedule of one connection in one phase.
#[derive(Debug)]
pub struct Pacer {
    pace: Pace,
    limits: PacerLimits,
    in_flight: u32,
    issued: u64,
    /// Open loop: the next slot (`k`) of this connection's schedule.
    slot: u64,
}

impl Pacer {
    /// A schedule with the given pace and limits.
    pub fn new(pace: Pace, limits: PacerLimits) -> Self {
        assert!(limits.depth >= 1, "at least one operation in flight");
        assert!(limits.start_ns <= limits.end_ns && limits.end_ns <= limits.stop_ns);
        if let Pace::Open { rate, connections, index } = pace {
            assert!(
                rate >= 1 && index < connections,
                "open loop: rate {rate}, {index}/{connections}"
            );
        }
        Self { pace, limits, in_flight: 0, issued: 0, slot: 0 }
    }

    /// Operations issued and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Operations issued so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// The phase's limits.
    pub fn limits(&self) -> PacerLimits {
        self.limits
    }

    /// What to do at `now_ns`. An [`Decision::Issue`] counts the operation
    /// as in flight; call [`Pacer::complete`] when it finishes.
    pub fn poll(&mut self, now_ns: u64) -> Decision {
        if now_ns >= self.limits.stop_ns || self.issued >= self.limits.ops_max {
            return Decision::Finished;
        }
        let intended_ns = match self.pace {
            Pace::Closed => {
                if now_ns >= self.limits.end_ns {
                    return Decision::Finished;
                }
                now_ns
            }
            Pace::Open { .. } => {
                let intended_ns = self.intended_ns(self.slot);
                if intended_ns >= self.limits.end_ns {
                    return Decision::Finished;
                }
                if intended_ns > now_ns {
                    return Decision::WaitUntil(intended_ns);
                }
                intended_ns
            }
        };
        if self.in_flight >= self.limits.depth {
            return Decision::WaitForReply;
        }
        self.in_flight += 1;
        self.issued += 1;
        self.slot += 1;
        Decision::Issue { intended_ns }
    }

    /// One operation finished (answered, failed or given up on).
    pub fn complete(&mut self) {
        assert!(self.in_flight > 0, "a completion without an operation in flight");
        self.in_flight -= 1;
    }

    /// Open loop: operations intended before `min(now_ns, end)` that were
    /// never issued (the connection was at its in-flight limit until the
    /// stop time). Always 0 for a closed loop, which has no intentions.
    pub fn behind(&self, now_ns: u64) -> u64 {
        let Pace::Open { rate, connections, index } = self.pace else {
            return 0;
        };
        if self.issued >= self.limits.ops_max {
            return 0;
        }
        let horizon =
            u128::from(now_ns.min(self.limits.end_ns).saturating_sub(self.limits.start_ns));
        // Global slots g with g / rate < horizon, i.e. g < horizon * rate
        // (in nanoseconds): there are ceil(horizon * rate / 1e9) of them.
        let global = (horizon * u128::from(rate)).div_ceil(NANOS_PER_SEC);
        // Of those, ours are g = k * connections + index.
        let (connections, index) = (u128::from(connections), u128::from(index));
        let ours = if global > index { (global - index).div_ceil(connections) } else { 0 };
        let ours = ours.min(u128::from(self.limits.ops_max));
        u64::try_from(ours.saturating_sub(u128::from(self.slot))).unwrap_or(u64::MAX)
    }

    /// Open loop: when slot `k` of this connection is intended.
    fn intended_ns(&self, k: u64) -> u64 {
        let Pace::Open { rate, connections, index } = self.pace else {
            unreachable!("only an open loop has intended times");
        };
        let global = u128::from(k) * u128::from(connections) + u128::from(index);
        let offset = global * NANOS_PER_SEC / u128::from(rate);
        self.limits.start_ns.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limits(depth: u32) -> PacerLimits {
        PacerLimits {
            start_ns: 1000,
            end_ns: 1000 + 10 * MS,
            stop_ns: 1000 + 20 * MS,
            ops_max: u64::MAX,
            depth,
        }
    }

    #[test]
    fn closed_loop_keeps_depth_in_flight_and_times_from_now() {
        let mut pacer = Pacer::new(Pace::Closed, limits(2));
        assert_eq!(pacer.poll(5000), Decision::Issue { intended_ns: 5000 });
        assert_eq!(pacer.poll(5001), Decision::Issue { intended_ns: 5001 });
        assert_eq!(pacer.poll(5002), Decision::WaitForReply);
        pacer.complete();
        assert_eq!(pacer.poll(9000), Decision::Issue { intended_ns: 9000 });
        assert_eq!(pacer.poll(1000 + 10 * MS), Decision::Finished);
        assert_eq!(pacer.behind(1000 + 10 * MS), 0);
    }

    #[test]
    fn open_loop_interleaves_connections_evenly() {
        // 1000/s over 4 connections: one send per millisecond overall,
        // connection i at i ms, i + 4 ms, ...
        let mut intended = Vec::new();
        for index in 0..4 {
            let pace = Pace::Open { rate: 1000, connections: 4, index };
            let mut pacer = Pacer::new(pace, limits(100));
            loop {
                match pacer.poll(1000 + 10 * MS - 1) {
                    Decision::Issue { intended_ns } => intended.push(intended_ns),
                    Decision::Finished => break,
                    other => panic!("{other:?}"),
                }
            }
        }
        intended.sort_unstable();
        let expected: Vec<u64> = (0..10).map(|k| 1000 + k * MS).collect();
        assert_eq!(intended, expected);
    }

    #[test]
    fn open_loop_waits_for_its_time_then_counts_from_it() {
        let pace = Pace::Open { rate: 1000, connections: 1, index: 0 };
        let mut pacer = Pacer::new(pace, limits(1));
        assert_eq!(pacer.poll(0), Decision::WaitUntil(1000));
        assert_eq!(pacer.poll(1000), Decision::Issue { intended_ns: 1000 });
        // The reply takes 3.5 ms: two more operations fall due meanwhile.
        assert_eq!(pacer.poll(1000 + 2 * MS), Decision::WaitForReply);
        pacer.complete();
        // Sent late, but their clocks started on schedule.
        let now = 1000 + 3 * MS + MS / 2;
        assert_eq!(pacer.poll(now), Decision::Issue { intended_ns: 1000 + MS });
        assert_eq!(pacer.poll(now), Decision::WaitForReply);
        pacer.complete();
        assert_eq!(pacer.poll(now), Decision::Issue { intended_ns: 1000 + 2 * MS });
        pacer.complete();
        assert_eq!(pacer.poll(now), Decision::Issue { intended_ns: 1000 + 3 * MS });
        pacer.complete();
        assert_eq!(pacer.poll(now), Decision::WaitUntil(1000 + 4 * MS));
    }

    #[test]
    fn behind_counts_what_a_stuck_connection_never_sent() {
        let pace = Pace::Open { rate: 1000, connections: 1, index: 0 };
        let mut pacer = Pacer::new(pace, limits(1));
        assert_eq!(pacer.poll(1000), Decision::Issue { intended_ns: 1000 });
        // No reply ever comes: by the stop time the 9 later operations of
        // the 10 ms run were due and never sent.
        let stop = 1000 + 20 * MS;
        assert_eq!(pacer.poll(stop), Decision::Finished);
        assert_eq!(pacer.behind(stop), 9);
        // Halfway through, 5 were due (0..=4 ms), 1 sent.
        assert_eq!(pacer.behind(1000 + 4 * MS + 1), 4);
    }

    #[test]
    fn ops_max_ends_the_phase() {
        let mut pacer = Pacer::new(Pace::Closed, PacerLimits { ops_max: 2, ..limits(8) });
        assert!(matches!(pacer.poll(5000), Decision::Issue { .. }));
        assert!(matches!(pacer.poll(5000), Decision::Issue { .. }));
        assert_eq!(pacer.poll(5000), Decision::Finished);
        assert_eq!(pacer.in_flight(), 2);
    }
}
