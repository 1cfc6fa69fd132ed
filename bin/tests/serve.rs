//! A real node (`holdfast serve`, two shards) driven through the CLI and
//! the client library: reads and writes with siblings and contexts,
//! requests crossing shards, hostile bytes, and a graceful restart.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use holdfast_net::client::{Client, ClientOptions};
use holdfast_net::frame::{Frame, Header, Kind, encode_frame};
use holdfast_net::message::{ErrorCode, ErrorReply};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HOLDFAST: &str = env!("CARGO_BIN_EXE_holdfast");

/// A node process, killed when the test ends however it ends.
struct Node {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Node {
    fn start(data_dir: &Path, shards: u32) -> Node {
        // A port nobody holds: bound without SO_REUSEPORT and released just
        // before the node binds it. The node is then checked to be the one
        // answering (a leftover process sharing the port through
        // SO_REUSEPORT would split connections with it).
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(HOLDFAST)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &addr.to_string(), "--shards", &shards.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let node = Node { child: Some(child), addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let client = Client::connect(&[addr], ClientOptions::default());
            if client.is_ok_and(|client| client.ping().is_ok()) {
                return node;
            }
            assert!(Instant::now() < deadline, "the node did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self) -> Client {
        Client::connect(&[self.addr], ClientOptions::default()).unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let output = Command::new(HOLDFAST)
            .args(args)
            .args(["--addr", &self.addr.to_string()])
            .output()
            .unwrap();
        assert!(output.status.success(), "holdfast {args:?}: {output:?}");
        output
    }

    /// SIGTERM, and the node's exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: `kill` with a valid pid and signal has no memory effects.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
                assert!(status.success(), "node exited with {status}:\n{stderr}");
                return status;
            }
            assert!(Instant::now() < deadline, "the node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn cli_round_trip_with_siblings_and_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 2);

    node.cli(&["put", "cart:alice", "apples"]);
    // A second blind write is concurrent with the first: two siblings.
    node.cli(&["put", "cart:alice", "pears"]);
    let read = node.cli(&["get", "cart:alice", "--json"]);
    let json: serde_json::Value = serde_json::from_str(stdout(&read).trim()).unwrap();
    let mut siblings: Vec<&str> =
        json["siblings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    siblings.sort_unstable();
    assert_eq!(siblings, ["apples", "pears"]);
    let context = json["context"].as_str().unwrap().to_owned();

    // A write carrying the read's context replaces both.
    node.cli(&["put", "cart:alice", "apples+pears", "--context", &context]);
    let read = stdout(&node.cli(&["get", "cart:alice"]));
    assert!(read.contains("value apples+pears"), "{read}");
    assert_eq!(read.matches("value ").count(), 1, "{read}");

    // A delete with the latest context leaves nothing.
    let context = read.lines().find_map(|line| line.strip_prefix("context ")).unwrap().to_owned();
    node.cli(&["delete", "cart:alice", "--context", &context]);
    assert!(stdout(&node.cli(&["get", "cart:alice"])).contains("(not found)"));
    node.stop();
}

#[test]
fn writes_survive_a_graceful_restart_and_cross_shards() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 2);
    let client = node.client();
    // Enough keys that both shards own some and each connection's requests
    // cross to the other shard.
    for n in 0..200u32 {
        client.put(format!("key{n}").as_bytes(), &n.to_le_bytes(), None).unwrap();
    }
    drop(client);
    node.stop();

    let node = Node::start(dir.path(), 2);
    let client = node.client();
    for n in 0..200u32 {
        let read = client.get(format!("key{n}").as_bytes()).unwrap();
        assert_eq!(read.values, [n.to_le_bytes().to_vec()], "key{n}");
    }
    node.stop();
}

#[test]
fn hostile_bytes_close_only_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 2);
    let client = node.client();
    client.put(b"steady", b"state", None).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let valid = encode_frame(Kind::PING, 5, &[]);
    for round in 0..60 {
        let garbage: Vec<u8> = match round % 4 {
            // Random bytes.
            0 => (0..rng.random_range(1..4096)).map(|_| rng.random()).collect(),
            // A valid frame cut short.
            1 => valid[..rng.random_range(1..valid.len())].to_vec(),
            // A valid frame with one bit flipped.
            2 => {
                let mut flipped = valid.clone();
                let bit = rng.random_range(0..flipped.len() * 8);
                flipped[bit / 8] ^= 1 << (bit % 8);
                flipped
            }
            // A header announcing a body far over the limit.
            _ => Header {
                version: 1,
                kind: Kind::PUT,
                request_id: 9,
                body_len: 1 << 30,
                body_checksum: 0,
            }
            .encode()
            .to_vec(),
        };
        let mut stream = TcpStream::connect(node.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = stream.write_all(&garbage);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Whatever comes back (an error reply, a pong for a frame that was
        // still valid, or nothing) ends with the connection closing, and
        // never hangs.
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if round % 4 == 3 {
            // Refused from its header alone, and told why.
            let frame = Frame::from_bytes(&answer, 1 << 20).unwrap();
            let error = frame.decode::<ErrorReply>().unwrap();
            assert_eq!((frame.request_id(), error.error_code()), (9, ErrorCode::FrameTooLarge));
        }
        // Meanwhile the well-behaved client is unaffected.
        assert_eq!(client.get(b"steady").unwrap().values, [b"state".to_vec()], "round {round}");
    }
    node.stop();
}

/// Regression: blind writes to one key used to pile up siblings past what a
/// node can decode, and every request for the key then failed.
#[test]
fn blind_writes_past_the_sibling_limit_are_refused_and_the_key_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let client = node.client();
    let limit = holdfast_net::siblings::VERSIONS_MAX;
    for n in 0..limit {
        client.put(b"hot", format!("{n}").as_bytes(), None).unwrap();
    }
    let refused = client.put(b"hot", b"one too many", None).unwrap_err();
    assert!(
        matches!(
            refused,
            holdfast_net::client::ClientError::Server { code: ErrorCode::TooManySiblings, .. }
        ),
        "{refused:?}"
    );
    let read = client.get(b"hot").unwrap();
    assert_eq!(read.values.len(), limit);
    client.put(b"hot", b"merged", Some(&read.context)).unwrap();
    assert_eq!(client.get(b"hot").unwrap().values, [b"merged".to_vec()]);
    node.stop();
}

/// A second node on a data directory or an address already in use refuses
/// to start, instead of sharing them (glommio binds with SO_REUSEPORT, so
/// the kernel would otherwise split connections between the two).
#[test]
fn a_second_node_refuses_a_taken_data_directory_or_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let other = tempfile::tempdir().unwrap();
    let attempts = [
        (
            dir.path().to_path_buf(),
            TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(),
            "in use by another holdfast process",
        ),
        (other.path().to_path_buf(), node.addr, "is taken by another process"),
    ];
    for (data_dir, addr, complaint) in attempts {
        let output = Command::new(HOLDFAST)
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", &addr.to_string()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(complaint), "{stderr}");
    }
    // The first node is unaffected.
    assert!(node.client().ping().is_ok());
    node.stop();
}

/// A long-lived connection keeps being served: the reader used to leave one
/// waker clone behind per read, and glommio's 16-bit task reference count
/// overflowed after about 32,000 reads on one connection, panicking the
/// shard (found by the cluster benchmark, whose connections live long).
#[test]
fn one_connection_is_served_past_forty_thousand_reads() {
    use std::io::Write;

    use holdfast_net::message::{Ping, encode_message};

    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), 1);
    let mut stream = std::net::TcpStream::connect(node.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = [0u8; 32];
    for id in 1..=40_000u64 {
        // One request, one reply: every ping is a read of its own.
        stream.write_all(&encode_message(id, &Ping {})).unwrap();
        stream
            .read_exact(&mut reply)
            .unwrap_or_else(|error| panic!("no pong for ping {id}: {error}"));
        assert_eq!(u64::from_le_bytes(reply[8..16].try_into().unwrap()), id);
    }
    node.stop();
}
