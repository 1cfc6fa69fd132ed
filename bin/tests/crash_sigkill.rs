//! The store loses no acknowledged write when its process is killed at a
//! random moment: in a group commit, in recovery, while writing index files
//! or in the middle of a compaction.
//!
//! The parent (this test) runs `holdfast store torture` again and again in
//! one directory and kills it with SIGKILL after a random delay. From the
//! lines the child printed (`issued n`, `acked n`: see
//! `src/commands/torture.rs`) it keeps, per key slot, what the slot may
//! hold: the value of the newest acknowledged write, or of any write issued
//! after it whose outcome is unknown (or no value, if nothing was
//! acknowledged). Each next child gets that as `--expect` and checks every
//! slot before writing; what it finds (`verified slot n`) then pins the
//! slot, so that a write seen once cannot silently vanish later. After
//! every kill, `holdfast store check` must find no corruption: SIGKILL
//! stops a process, not its disk, so no submitted write is torn.
//!
//! The run is seeded (the seed is printed; set `HOLDFAST_CRASH_SEED` to
//! replay its kill times) and bounded in time.

// The helpers below are test code too: they unwrap what the test itself
// made, and a failure there should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HOLDFAST: &str = env!("CARGO_BIN_EXE_holdfast");
const SLOTS: u64 = 500;
const ROUNDS: usize = 25;
/// The rounds stop early past this, so that the whole test stays under a
/// minute on a slow machine.
const ROUNDS_DEADLINE: Duration = Duration::from_secs(40);
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 30..=400;

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let seed = std::env::var("HOLDFAST_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |since| since.as_nanos() as u64)
        });
    println!("seed {seed} (replay the kill times with HOLDFAST_CRASH_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("store");
    let expect = temp.path().join("expect.txt");
    // Made here, not by the first child, so that `store check` has a
    // directory to check even if that child is killed before it starts.
    std::fs::create_dir_all(&dir).unwrap();
    // The value seed must be the same for every child: values written by
    // one are verified by the next.
    let value_seed = seed % 1_000_000;

    let mut model = Model::default();
    let began = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS && began.elapsed() < ROUNDS_DEADLINE {
        rounds += 1;
        model.write_expectations(&expect);
        let child = Torture::spawn(&dir, value_seed, model.next_start, &expect, false);
        let delay = rng.random_range(KILL_AFTER_MS);
        thread::sleep(Duration::from_millis(delay));
        let (status, lines, stderr) = child.kill();
        assert!(
            status.code().is_none(),
            "round {rounds}: the child ended by itself ({status}) before it was killed:\n{stderr}"
        );
        let acked_before = model.acked;
        model.apply(&lines);
        println!(
            "round {rounds}: killed after {delay} ms, {} lines, {} acked",
            lines.len(),
            model.acked - acked_before
        );
        assert_store_is_clean(&dir, rounds);
    }

    // A last child only verifies, and says so by exiting 0.
    model.write_expectations(&expect);
    let child = Torture::spawn(&dir, value_seed, model.next_start, &expect, true);
    let (status, lines, stderr) = child.wait(Duration::from_secs(10));
    assert!(status.success(), "the final verification failed ({status}):\n{stderr}");
    assert_eq!(lines.last().map(String::as_str), Some("verify ok"), "{stderr}");
    model.apply(&lines);
    println!("{rounds} rounds, {} writes acknowledged, all verified", model.acked);
    assert!(model.acked > 0, "no round got as far as writing: the test proved nothing");
    assert_store_is_clean(&dir, rounds + 1);
}

/// What the parent knows about each slot, from the children's lines.
#[derive(Debug)]
struct Model {
    slots: BTreeMap<u64, Slot>,
    /// The next child's first write number: above every number issued.
    next_start: u64,
    /// Acknowledged writes, for the record.
    acked: u64,
}

impl Default for Model {
    fn default() -> Model {
        // Starting above zero makes a slot's write numbers never collide
        // with its slot number in a message.
        Model { slots: BTreeMap::new(), next_start: 1000, acked: 0 }
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// The newest write known to be on disk (acknowledged, or found there
    /// by a child's verification), if any.
    known: Option<u64>,
    /// Writes issued after it whose outcome is unknown.
    unknown: BTreeSet<u64>,
}

impl Model {
    fn apply(&mut self, lines: &[String]) {
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["issued", n] => {
                    let n: u64 = n.parse().unwrap();
                    self.next_start = self.next_start.max(n + 1);
                    let slot = self.slots.entry(n % SLOTS).or_default();
                    assert!(slot.known.is_none_or(|known| known < n), "{n} issued twice");
                    slot.unknown.insert(n);
                }
                ["acked", n] => {
                    let n: u64 = n.parse().unwrap();
                    self.acked += 1;
                    let slot = self.slots.entry(n % SLOTS).or_default();
                    assert!(slot.unknown.contains(&n) || slot.known > Some(n), "{n} not issued");
                    // Acknowledgements of one batch may print in any order.
                    if slot.known < Some(n) {
                        slot.known = Some(n);
                        slot.unknown.retain(|&later| later > n);
                    }
                }
                ["verified", slot, found] => {
                    // What a child found is on disk: it pins the slot.
                    let slot = self.slots.entry(slot.parse().unwrap()).or_default();
                    slot.known = match *found {
                        "none" => None,
                        n => Some(n.parse().unwrap()),
                    };
                    slot.unknown.clear();
                }
                ["verify", "ok"] => {}
                _ => panic!("the child printed a line outside the protocol: {line:?}"),
            }
        }
    }

    fn write_expectations(&self, path: &Path) {
        let mut text = String::from("# slot, then the writes whose value it may hold\n");
        for (slot, state) in &self.slots {
            if state.known.is_none() && state.unknown.is_empty() {
                continue;
            }
            write!(text, "{slot}").unwrap();
            match state.known {
                Some(n) => write!(text, " {n}").unwrap(),
                None => text.push_str(" none"),
            }
            for n in &state.unknown {
                write!(text, " {n}").unwrap();
            }
            text.push('\n');
        }
        std::fs::write(path, text).unwrap();
    }
}

/// A running torture child, killed when dropped (a failing test leaves no
/// process behind).
struct Torture {
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
}

impl Torture {
    fn spawn(dir: &Path, seed: u64, start: u64, expect: &Path, verify_only: bool) -> Torture {
        let mut command = Command::new(HOLDFAST);
        command
            .args(["store", "torture", "--dir"])
            .arg(dir)
            .args(["--seed", &seed.to_string(), "--start", &start.to_string(), "--expect"])
            .arg(expect)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if verify_only {
            command.arg("--verify-only");
        }
        let mut child = command.spawn().unwrap();
        // Both pipes are drained as the child writes, so that it never
        // blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>()
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Torture { child: Some(child), stdout: Some(stdout), stderr: Some(stderr) }
    }

    /// Kills the child with SIGKILL and returns how it ended, every line it
    /// printed (a line is printed and flushed before what it reports goes
    /// on, so none is lost) and its standard error.
    fn kill(mut self) -> (ExitStatus, Vec<String>, String) {
        let child = self.child.as_mut().unwrap();
        // `Child::kill` sends SIGKILL. It fails only if the child was
        // already reaped, which it was not.
        child.kill().unwrap();
        self.collect()
    }

    /// Waits for the child to exit by itself, killing it after `timeout`.
    fn wait(mut self, timeout: Duration) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the child did not exit within {timeout:?}");
            thread::sleep(Duration::from_millis(10));
        }
        self.collect()
    }

    fn collect(&mut self) -> (ExitStatus, Vec<String>, String) {
        let status = self.child.take().unwrap().wait().unwrap();
        let lines = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, lines, stderr)
    }
}

impl Drop for Torture {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn assert_store_is_clean(dir: &PathBuf, round: usize) {
    let output = Command::new(HOLDFAST)
        .args(["store", "check"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "round {round}: `store check` found damage:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
