//! Failure detection: a local, adaptive opinion of which peers are down.
//!
//! The phi-accrual detector of Hayashibara et al., as Cassandra and Akka
//! use it. Each peer answers heartbeats ([`PeerRequest::Ping`], sent by the
//! coordinator every `heartbeat_interval`); the detector keeps a window of
//! the intervals between answers and, at any moment, computes
//!
//! ```text
//! phi(t) = -log10( P(next answer comes later than t since the last) )
//! ```
//!
//! under a normal distribution fitted to the window (mean plus an
//! acceptable pause, standard deviation at least `min_std_dev`). A peer is
//! down while phi exceeds `threshold`: phi 8 means the silence so far would
//! happen once in 10^8 heartbeats of a healthy peer. Because the
//! distribution is learned, a peer on a jittery link needs a longer silence
//! before it is suspected than one on a quiet link, and a pause shorter
//! than `acceptable_pause` (a GC, a stalled disk, a busy core) is absorbed
//! rather than flapping the peer down and up. With the defaults (500 ms
//! heartbeats, 1 s acceptable pause, 200 ms minimum deviation) a peer that
//! stops answering is down about 2.6 s after its last answer:
//! [`DetectorOptions::detection_time`] computes the bound.
//!
//! A refused or broken connection is stronger evidence than silence: the
//! kernel said so. [`Detector::unreachable`] marks the peer down at once,
//! until its next answer.
//!
//! Down is an opinion of this node, used to route around a peer (sloppy
//! quorum, hint delivery); it is never a membership change.
//!
//! [`PeerRequest::Ping`]: super::coordinator::PeerRequest::Ping

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use holdfast_net::ring::NodeId;

/// How the detector judges silence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorOptions {
    /// How often peers are sent a heartbeat.
    pub heartbeat_interval: Duration,
    /// Phi above which a peer is down.
    pub threshold: f64,
    /// A silence this much longer than usual is still normal.
    pub acceptable_pause: Duration,
    /// The least standard deviation assumed of heartbeat intervals, so a
    /// perfectly regular history does not make the detector trigger-happy.
    pub min_std_dev: Duration,
    /// Heartbeat intervals remembered per peer.
    pub window: usize,
}

impl Default for DetectorOptions {
    fn default() -> DetectorOptions {
        DetectorOptions {
            heartbeat_interval: Duration::from_millis(500),
            threshold: 8.0,
            acceptable_pause: Duration::from_secs(1),
            min_std_dev: Duration::from_millis(200),
            window: 100,
        }
    }
}

impl DetectorOptions {
    /// How long after its last answer a peer with perfectly regular
    /// heartbeats is judged down: the bound on detection time (plus one
    /// heartbeat interval, since the last answer came at most that long
    /// after the peer stopped).
    pub fn detection_time(&self) -> Duration {
        let mean = self.heartbeat_interval.as_secs_f64() + self.acceptable_pause.as_secs_f64();
        let std = self.min_std_dev.as_secs_f64().max(f64::EPSILON);
        // Solve phi(t) = threshold by bisection over the same formula.
        let (mut low, mut high) = (mean, mean + 100.0 * std);
        for _ in 0..100 {
            let mid = (low + high) / 2.0;
            if phi(mid, mean, std) < self.threshold {
                low = mid;
            } else {
                high = mid;
            }
        }
        Duration::from_secs_f64(high)
    }
}

#[derive(Clone, Debug, Default)]
struct Peer {
    /// When it last answered.
    last: Option<Duration>,
    /// Seconds between consecutive answers, newest last.
    intervals: VecDeque<f64>,
    sum: f64,
    sum_squares: f64,
    /// Its connection was refused or broke, and it has not answered since.
    unreachable: bool,
}

/// One node's opinion of its peers.
#[derive(Clone, Debug)]
pub struct Detector {
    options: DetectorOptions,
    peers: BTreeMap<NodeId, Peer>,
}

impl Detector {
    pub fn new(options: DetectorOptions) -> Detector {
        assert!(options.window >= 1 && options.threshold > 0.0, "bad detector options");
        Detector { options, peers: BTreeMap::new() }
    }

    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// `peer` answered a heartbeat at `now`.
    pub fn heartbeat(&mut self, peer: NodeId, now: Duration) {
        let window = self.options.window;
        let state = self.peers.entry(peer).or_default();
        state.unreachable = false;
        if let Some(last) = state.last {
            let interval = now.saturating_sub(last).as_secs_f64();
            state.intervals.push_back(interval);
            state.sum += interval;
            state.sum_squares += interval * interval;
            if state.intervals.len() > window
                && let Some(old) = state.intervals.pop_front()
            {
                state.sum -= old;
                state.sum_squares -= old * old;
            }
        }
        state.last = Some(now);
    }

    /// `peer` answered something other than a heartbeat: it is reachable,
    /// but the interval is not a heartbeat interval, so only the
    /// unreachable mark is cleared.
    pub fn answered(&mut self, peer: NodeId) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.unreachable = false;
        }
    }

    /// Connecting to `peer` was refused or its connection broke.
    pub fn unreachable(&mut self, peer: NodeId) {
        self.peers.entry(peer).or_default().unreachable = true;
    }

    /// Forgets `peer` (it left the cluster).
    pub fn forget(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// The suspicion level of `peer` at `now`; 0 for a peer never heard
    /// from (it is given the benefit of the doubt until it answers or its
    /// connection fails).
    pub fn phi(&self, peer: NodeId, now: Duration) -> f64 {
        let Some(state) = self.peers.get(&peer) else { return 0.0 };
        let Some(last) = state.last else { return 0.0 };
        let elapsed = now.saturating_sub(last).as_secs_f64();
        let count = state.intervals.len();
        let (mean, variance) = if count == 0 {
            (self.options.heartbeat_interval.as_secs_f64(), 0.0)
        } else {
            let mean = state.sum / count as f64;
            (mean, (state.sum_squares / count as f64 - mean * mean).max(0.0))
        };
        let std = variance.sqrt().max(self.options.min_std_dev.as_secs_f64()).max(f64::EPSILON);
        phi(elapsed, mean + self.options.acceptable_pause.as_secs_f64(), std)
    }

    /// Whether this node believes `peer` is down at `now`.
    pub fn is_down(&self, peer: NodeId, now: Duration) -> bool {
        match self.peers.get(&peer) {
            Some(state) if state.unreachable => true,
            Some(_) => self.phi(peer, now) > self.options.threshold,
            None => false,
        }
    }
}

/// Phi of a silence of `elapsed` seconds under a normal distribution of
/// mean `mean` and deviation `std`, with Akka's logistic approximation of
/// the normal tail (accurate to about 1e-4 and never NaN or infinite).
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let value =
        if elapsed > mean { -(e / (1.0 + e)).log10() } else { -(1.0 - 1.0 / (1.0 + e)).log10() };
    if value.is_finite() { value.max(0.0) } else { f64::MAX }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// A detector that heard `peer` every 500 ms up to `until`.
    fn regular(until: u64) -> Detector {
        let mut detector = Detector::new(DetectorOptions::default());
        let mut at = 0;
        while at <= until {
            detector.heartbeat(1, ms(at));
            at += 500;
        }
        detector
    }

    #[test]
    fn a_peer_never_heard_from_is_not_down() {
        let detector = Detector::new(DetectorOptions::default());
        assert!(!detector.is_down(7, ms(100_000)));
    }

    #[test]
    fn a_silent_peer_goes_down_within_the_detection_time() {
        let detector = regular(10_000);
        let bound = DetectorOptions::default().detection_time();
        assert!(bound > ms(2_000) && bound < ms(3_500), "{bound:?}");
        assert!(!detector.is_down(1, ms(10_000) + ms(1_000)));
        assert!(detector.is_down(1, ms(10_000) + bound + ms(10)));
    }

    #[test]
    fn a_pause_shorter_than_the_acceptable_pause_does_not_flap() {
        let mut detector = regular(10_000);
        // A 1.2 s stall (a GC, a stalled disk), then regular again.
        for at in [11_200, 11_700, 12_200, 12_700] {
            assert!(!detector.is_down(1, ms(at - 1)), "down at {at}");
            detector.heartbeat(1, ms(at));
        }
    }

    #[test]
    fn a_jittery_peer_is_given_longer() {
        let mut jittery = Detector::new(DetectorOptions::default());
        let mut at = 0;
        for i in 0..100 {
            at += if i % 2 == 0 { 100 } else { 1_500 };
            jittery.heartbeat(1, ms(at));
        }
        let steady = regular(at);
        let silence = at + 2_800;
        assert!(steady.is_down(1, ms(silence)));
        assert!(!jittery.is_down(1, ms(silence)));
    }

    #[test]
    fn a_refused_connection_is_down_until_the_peer_answers() {
        let mut detector = regular(1_000);
        detector.unreachable(1);
        assert!(detector.is_down(1, ms(1_001)));
        detector.answered(1);
        assert!(!detector.is_down(1, ms(1_002)));
        detector.unreachable(1);
        detector.heartbeat(1, ms(1_500));
        assert!(!detector.is_down(1, ms(1_501)));
    }

    #[test]
    fn phi_is_finite_and_monotonic() {
        let mut previous = 0.0;
        for step in 0..10_000 {
            let value = phi(step as f64 * 0.01, 1.5, 0.2);
            assert!(value.is_finite() && value >= previous - 1e-9, "{step}: {value}");
            previous = value;
        }
    }
}
