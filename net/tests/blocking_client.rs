//! The blocking client against tiny nodes on 127.0.0.1 (a thread per
//! connection over std::net, answering through the in-memory `FakeNode`).
//! A node answers every batch of frames it reads in reverse order, so a
//! pipelining client sees its replies out of order. Nodes never forward:
//! given a ring, the tests see exactly which node each request reached.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use holdfast_net::client::{Batch, Client, ClientError, ClientOptions, Response};
use holdfast_net::frame::Kind;
use holdfast_net::message::{ErrorCode, RequestLimits};
use holdfast_net::ring::{Member, Ring};
use support::FakeNode;

/// A node serving the protocol on an ephemeral loopback port.
struct TestNode {
    addr: SocketAddr,
    node: Arc<Mutex<FakeNode>>,
    /// While set, the node reads requests and never answers.
    silent: Arc<AtomicBool>,
    /// While set, the node closes a connection, unanswered, as soon as a
    /// read, write or delete arrives on it: a node that died mid-request.
    cut: Arc<AtomicBool>,
    /// Every connection accepted, so a test can cut them all.
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    /// The most frames the node found in one read: above 1 means the client
    /// pipelined.
    frames_per_read_max: Arc<AtomicUsize>,
}

impl TestNode {
    fn start() -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let node = TestNode {
            addr: listener.local_addr().expect("bound"),
            node: Arc::default(),
            silent: Arc::default(),
            cut: Arc::default(),
            streams: Arc::default(),
            accepted: Arc::default(),
            frames_per_read_max: Arc::default(),
        };
        let (shared, silent, cut, streams, accepted, frames_per_read_max) = (
            node.node.clone(),
            node.silent.clone(),
            node.cut.clone(),
            node.streams.clone(),
            node.accepted.clone(),
            node.frames_per_read_max.clone(),
        );
        // The accept loop ends with the test process.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                streams
                    .lock()
                    .expect("not poisoned")
                    .push(stream.try_clone().expect("clone a socket"));
                let behaviour = Behaviour {
                    silent: silent.clone(),
                    cut: cut.clone(),
                    frames_per_read_max: frames_per_read_max.clone(),
                };
                let shared = shared.clone();
                thread::spawn(move || serve(stream, &shared, &behaviour));
            }
        });
        node
    }

    /// Closes every connection from the node's side, as a restart would.
    fn drop_connections(&self) {
        for stream in self.streams.lock().expect("not poisoned").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Let the FINs arrive before the client looks.
        thread::sleep(Duration::from_millis(50));
    }

    /// Sets the ring the node answers with, and the replicas per key.
    fn set_ring(&self, ring: &Ring, n: u8) {
        let mut node = self.node.lock().expect("not poisoned");
        node.ring = ring.state();
        node.n = n;
    }

    /// How many requests of `kind` the node answered.
    fn count(&self, kind: Kind) -> u64 {
        self.node.lock().expect("not poisoned").count(kind)
    }

    /// Whether the node holds a value for `key`.
    fn holds(&self, key: &[u8]) -> bool {
        self.node.lock().expect("not poisoned").keys.get(key).is_some_and(|set| !set.is_empty())
    }
}

/// What a connection's thread shares with the test.
struct Behaviour {
    silent: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    frames_per_read_max: Arc<AtomicUsize>,
}

fn serve(mut stream: TcpStream, node: &Mutex<FakeNode>, behaviour: &Behaviour) {
    let mut decoder = FakeNode::decoder();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let len = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(len) => len,
        };
        let frames = FakeNode::frames(&mut decoder, &buffer[..len]);
        behaviour.frames_per_read_max.fetch_max(frames.len(), Ordering::SeqCst);
        if behaviour.silent.load(Ordering::SeqCst) {
            continue;
        }
        let keyed = [Kind::GET, Kind::PUT, Kind::DELETE];
        if behaviour.cut.load(Ordering::SeqCst) && frames.iter().any(|f| keyed.contains(&f.kind()))
        {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let mut replies = Vec::new();
        let mut node = node.lock().expect("not poisoned");
        for frame in frames.iter().rev() {
            node.handle(frame, &mut replies);
        }
        drop(node);
        if stream.write_all(&replies).is_err() {
            return;
        }
    }
}

fn options() -> ClientOptions {
    ClientOptions { timeout: Duration::from_secs(5), ..ClientOptions::default() }
}

#[test]
fn put_get_delete_over_tcp() {
    let node = TestNode::start();
    let client = Client::connect(&[node.addr], options()).expect("connect");
    assert!(client.ping().expect("pong") < Duration::from_secs(5));

    let context = client.put(b"greeting", b"hello", None).expect("put").context;
    let read = client.get(b"greeting").expect("get");
    assert_eq!(read.values, [b"hello".to_vec()]);
    assert_eq!(read.context, context, "the put's context covers what a read sees");

    client.put(b"greeting", b"hi", Some(&context)).expect("overwrite");
    let read = client.get(b"greeting").expect("get");
    assert_eq!(read.values, [b"hi".to_vec()]);

    client.delete(b"greeting", &read.context).expect("delete");
    assert!(!client.get(b"greeting").expect("get").is_found());
    // Sequential calls share one pooled connection.
    assert_eq!(node.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_batch_is_pipelined_on_one_connection_and_answered_in_order() {
    let node = TestNode::start();
    let client = Client::connect(&[node.addr], options()).expect("connect");
    let count = 1000;
    let mut puts = Batch::new();
    for i in 0..count {
        puts.put(format!("key:{i}").as_bytes(), format!("value:{i}").as_bytes(), None);
    }
    for result in client.execute(&puts).expect("a connection") {
        assert!(matches!(result, Ok(Response::Put(_))), "{result:?}");
    }
    let mut gets = Batch::new();
    for i in 0..count {
        gets.get(format!("key:{i}").as_bytes());
    }
    let results = client.execute(&gets).expect("a connection");
    assert_eq!(results.len(), count);
    for (i, result) in results.into_iter().enumerate() {
        let Ok(Response::Get(read)) = result else { panic!("get {i}: {result:?}") };
        assert_eq!(read.values, [format!("value:{i}").into_bytes()], "get {i}");
    }
    assert_eq!(node.accepted.load(Ordering::SeqCst), 1);
    assert!(node.frames_per_read_max.load(Ordering::SeqCst) > 1, "the batch was not pipelined");
}

#[test]
fn concurrent_writers_see_their_siblings() {
    let node = TestNode::start();
    let client = Arc::new(Client::connect(&[node.addr], options()).expect("connect"));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let client = client.clone();
            thread::spawn(move || {
                client.put(b"shared", format!("writer {writer}").as_bytes(), None).expect("put");
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let read = client.get(b"shared").expect("get");
    assert_eq!(read.values.len(), 4, "no write was lost: {:?}", read.values);
    let context = client.put(b"shared", b"merged", Some(&read.context)).expect("resolve").context;
    assert_eq!(client.get(b"shared").expect("get").values, [b"merged".to_vec()]);
    assert_eq!(client.get(b"shared").expect("get").context, context);
}

#[test]
fn reads_are_retried_on_a_fresh_connection_after_the_node_dropped_it() {
    let node = TestNode::start();
    // Never probe idle connections: the retry alone must cover the read.
    let options = ClientOptions { idle_check_after: Duration::from_secs(3600), ..options() };
    let client = Client::connect(&[node.addr], options).expect("connect");
    client.put(b"k", b"v", None).expect("put");
    node.drop_connections();
    assert_eq!(client.get(b"k").expect("retried").values, [b"v".to_vec()]);
    assert_eq!(node.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn an_idle_connection_found_dead_is_replaced_before_a_write() {
    let node = TestNode::start();
    let options = ClientOptions { idle_check_after: Duration::ZERO, ..options() };
    let client = Client::connect(&[node.addr], options).expect("connect");
    client.put(b"k", b"v1", None).expect("put");
    node.drop_connections();
    client.put(b"k", b"v2", None).expect("a write on a fresh connection");
    assert_eq!(node.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_write_on_a_connection_that_died_unnoticed_is_not_retried() {
    let node = TestNode::start();
    // Without routing: a ring fetch due before the write (the node has no
    // ring, so one is tried again every second) would find the dead
    // connection first and replace it.
    let options = ClientOptions {
        idle_check_after: Duration::from_secs(3600),
        route_by_ring: false,
        ..options()
    };
    let client = Client::connect(&[node.addr], options).expect("connect");
    client.put(b"k", b"v1", None).expect("put");
    node.drop_connections();
    // The client cannot know whether the node applied it, so it says so.
    let error = client.put(b"k", b"v2", None).expect_err("lost");
    assert!(matches!(error, ClientError::ConnectionLost), "{error:?}");
    // The broken connection was dropped; the next call reconnects.
    client.put(b"k", b"v3", None).expect("reconnected");
}

#[test]
fn a_silent_node_times_out() {
    let node = TestNode::start();
    let timeout = Duration::from_millis(200);
    let client =
        Client::connect(&[node.addr], ClientOptions { timeout, ..options() }).expect("connect");
    node.silent.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let error = client.get(b"k").expect_err("no answer");
    let elapsed = started.elapsed();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    assert!(elapsed >= timeout && elapsed < timeout * 5, "timed out after {elapsed:?}");

    // The node recovers; the connection (its late replies dropped) or a new
    // one serves the next request.
    node.silent.store(false, Ordering::SeqCst);
    client.put(b"k", b"v", None).expect("put");
}

#[test]
fn node_errors_arrive_as_typed_codes() {
    let node = TestNode::start();
    node.node.lock().expect("not poisoned").limits =
        RequestLimits { key_bytes_max: 4, value_bytes_max: 16 };
    let client = Client::connect(&[node.addr], options()).expect("connect");
    match client.put(b"too long", b"v", None) {
        Err(ClientError::Server { code: ErrorCode::KeyTooLarge, message }) => {
            assert!(message.contains("key of 8 bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The connection survives a refusal.
    client.put(b"ok", b"v", None).expect("put");
    assert_eq!(node.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn connecting_skips_dead_addresses_and_fails_cleanly_when_all_are_dead() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("bound")
    };
    match Client::connect(&[dead], options()) {
        Err(ClientError::Connect { addrs, .. }) => assert_eq!(addrs, [dead]),
        other => panic!("{other:?}"),
    }
    let node = TestNode::start();
    let client = Client::connect(&[dead, node.addr], options()).expect("the live one");
    for _ in 0..4 {
        client.ping().expect("pong");
    }
    let names = ["127.0.0.1:1".to_string(), node.addr.to_string()];
    let client = Client::connect(&names, options()).expect("addresses as strings");
    client.ping().expect("pong");
}

/// Options for a test that should see only routing's own behaviour.
fn routing_options() -> ClientOptions {
    ClientOptions { ring_refresh_interval: Duration::from_secs(3600), ..options() }
}

/// A ring of 64 partitions over `(id, addr)`, at `version`.
fn ring_of(members: &[(u64, SocketAddr)], version: u64) -> Ring {
    let members = members
        .iter()
        .map(|&(id, addr)| Member { id, addr: addr.to_string(), weight: 1, zone: String::new() })
        .collect();
    Ring::new(64, members, version).expect("a valid ring")
}

/// A key whose preference list of `n` starts with `first`.
fn key_led_by(ring: &Ring, n: usize, first: &[u64]) -> Vec<u8> {
    (0..)
        .map(|i: u32| format!("key:{i}").into_bytes())
        .find(|key| ring.preference_list(ring.partition_of(key), n).starts_with(first))
        .expect("some key")
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("bound")
}

#[test]
fn requests_go_straight_to_the_replica_the_ring_names() {
    let (a, b) = (TestNode::start(), TestNode::start());
    let ring = ring_of(&[(1, a.addr), (2, b.addr)], 1);
    a.set_ring(&ring, 1);
    b.set_ring(&ring, 1);
    let (on_a, on_b) = (key_led_by(&ring, 1, &[1]), key_led_by(&ring, 1, &[2]));
    // Only a is given: b is learned from the ring.
    let client = Client::connect(&[a.addr], routing_options()).expect("connect");

    let written = client.put(&on_b, b"v", None).expect("put");
    assert!(b.holds(&on_b) && !a.holds(&on_b), "the write reached b, the replica");
    assert_eq!(client.get(&on_b).expect("get").values, [b"v".to_vec()]);
    client.delete(&on_b, &written.context).expect("delete");
    assert_eq!((a.count(Kind::GET), a.count(Kind::PUT), a.count(Kind::DELETE)), (0, 0, 0));
    assert_eq!((b.count(Kind::GET), b.count(Kind::PUT), b.count(Kind::DELETE)), (1, 1, 1));

    client.put(&on_a, b"v", None).expect("put");
    assert!(a.holds(&on_a) && !b.holds(&on_a));
    // One ring fetch, from the seed; pings still go to the seed.
    assert_eq!((a.count(Kind::RING), b.count(Kind::RING)), (1, 0));
    client.ping().expect("pong");
    assert_eq!((a.count(Kind::PING), b.count(Kind::PING)), (1, 0));
    // Connections are pooled per node: one each.
    assert_eq!(a.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn without_routing_every_request_goes_to_the_seeds() {
    let (a, b) = (TestNode::start(), TestNode::start());
    let ring = ring_of(&[(1, a.addr), (2, b.addr)], 1);
    a.set_ring(&ring, 1);
    let on_b = key_led_by(&ring, 1, &[2]);
    let options = ClientOptions { route_by_ring: false, ..routing_options() };
    let client = Client::connect(&[a.addr], options).expect("connect");
    client.put(&on_b, b"v", None).expect("put");
    assert!(a.holds(&on_b), "the seed takes it (a real node would forward it)");
    assert_eq!(a.count(Kind::RING), 0, "no ring is fetched");
    assert_eq!(b.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn an_unreachable_replica_is_skipped_and_the_ring_fetched_again() {
    let a = TestNode::start();
    let dead = dead_addr();
    let ring = ring_of(&[(1, a.addr), (2, dead)], 1);
    a.set_ring(&ring, 2);
    let key = key_led_by(&ring, 2, &[2, 1]);
    let client = Client::connect(&[a.addr], routing_options()).expect("connect");

    // The connection was refused, so the write was not sent: the next
    // replica takes it.
    client.put(&key, b"v", None).expect("the second replica takes the write");
    assert!(a.holds(&key));
    assert_eq!(a.count(Kind::RING), 1);

    // The refusal made the ring suspect: the next request, a little later,
    // fetches it again (and still lands on the live replica).
    thread::sleep(Duration::from_millis(150));
    assert_eq!(client.get(&key).expect("get").values, [b"v".to_vec()]);
    assert_eq!(a.count(Kind::RING), 2);
}

#[test]
fn when_no_replica_is_reachable_requests_go_to_the_seeds() {
    let seed = TestNode::start();
    // The ring names only nodes that are gone; the seed is not among them.
    let ring = ring_of(&[(1, dead_addr()), (2, dead_addr())], 1);
    seed.set_ring(&ring, 2);
    let client = Client::connect(&[seed.addr], routing_options()).expect("connect");
    client.put(b"k", b"v", None).expect("the seed takes it");
    assert!(seed.holds(b"k"));
    let mut batch = Batch::new();
    batch.put(b"k2", b"v", None).get(b"k");
    let results = client.execute(&batch).expect("a connection");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(seed.holds(b"k2"));
}

#[test]
fn a_write_whose_connection_broke_is_not_sent_to_another_replica() {
    let (a, b) = (TestNode::start(), TestNode::start());
    let ring = ring_of(&[(1, a.addr), (2, b.addr)], 1);
    a.set_ring(&ring, 2);
    let key = key_led_by(&ring, 2, &[2, 1]);
    let client = Client::connect(&[a.addr], routing_options()).expect("connect");
    client.put(&key, b"v1", None).expect("put");
    assert!(b.holds(&key));

    // b dies with the request in flight: it may have applied the write, so
    // the client says so instead of sending it to a.
    b.cut.store(true, Ordering::SeqCst);
    let error = client.put(&key, b"v2", None).expect_err("lost");
    assert!(matches!(error, ClientError::ConnectionLost), "{error:?}");
    assert_eq!(a.count(Kind::PUT), 0, "the write was not sent again");

    // A read is harmless to send twice: it goes on to a.
    let read = client.get(&key).expect("the next replica answers");
    assert!(read.values.is_empty(), "a holds nothing for the key (nodes here do not replicate)");
    assert_eq!(a.count(Kind::GET), 1);
}

#[test]
fn a_node_that_is_not_a_replica_makes_the_client_fetch_the_ring_again() {
    let (a, b) = (TestNode::start(), TestNode::start());
    let old = ring_of(&[(1, a.addr), (2, b.addr)], 1);
    a.set_ring(&old, 1);
    let key = key_led_by(&old, 1, &[2]);
    let client = Client::connect(&[a.addr], routing_options()).expect("connect");
    client.ping().expect("pong");
    client.get(&key).expect("the old ring routes to b");
    assert_eq!(b.count(Kind::GET), 1);

    // The cluster moved on without telling the client; b says so.
    let new = ring_of(&[(1, a.addr)], 2);
    a.set_ring(&new, 1);
    b.node.lock().expect("not poisoned").not_a_replica = true;
    match client.put(&key, b"v", None) {
        Err(ClientError::Server { code: ErrorCode::Unavailable, message }) => {
            assert!(message.contains("not a replica"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    thread::sleep(Duration::from_millis(150));
    client.put(&key, b"v", None).expect("the new ring routes to a");
    assert!(a.holds(&key));
    assert_eq!(a.count(Kind::RING), 2);
}

#[test]
fn the_ring_is_fetched_again_after_the_refresh_interval() {
    let (a, b) = (TestNode::start(), TestNode::start());
    let old = ring_of(&[(1, a.addr), (2, b.addr)], 1);
    a.set_ring(&old, 1);
    let key = key_led_by(&old, 1, &[2]);
    let options = ClientOptions { ring_refresh_interval: Duration::from_millis(100), ..options() };
    let client = Client::connect(&[a.addr], options).expect("connect");
    client.put(&key, b"v1", None).expect("put");
    assert!(b.holds(&key));

    a.set_ring(&ring_of(&[(1, a.addr)], 2), 1);
    thread::sleep(Duration::from_millis(150));
    client.put(&key, b"v2", None).expect("put");
    assert!(a.holds(&key), "the refreshed ring routes to a");
    assert_eq!(b.count(Kind::PUT), 1);
}

#[test]
fn a_batch_is_split_by_replica_and_every_reply_matched() {
    let (a, b) = (TestNode::start(), TestNode::start());
    let ring = ring_of(&[(1, a.addr), (2, b.addr)], 1);
    a.set_ring(&ring, 1);
    let client = Client::connect(&[a.addr], routing_options()).expect("connect");
    let count = 400;
    let key = |i: usize| format!("key:{i}").into_bytes();
    let mut puts = Batch::new();
    for i in 0..count {
        puts.put(&key(i), format!("value:{i}").as_bytes(), None);
    }
    puts.push(holdfast_net::client::Operation::Ping);
    let results = client.execute(&puts).expect("connections");
    assert_eq!(results.len(), count + 1);
    for result in &results[..count] {
        assert!(matches!(result, Ok(Response::Put(_))), "{result:?}");
    }
    assert!(matches!(results[count], Ok(Response::Pong)));
    for i in 0..count {
        let owner = ring.owner(ring.partition_of(&key(i)));
        let (replica, other) = if owner == 1 { (&a, &b) } else { (&b, &a) };
        assert!(replica.holds(&key(i)) && !other.holds(&key(i)), "key {i} on node {owner}");
    }
    assert!(a.count(Kind::PUT) > 0 && b.count(Kind::PUT) > 0, "both nodes own keys");

    let mut gets = Batch::new();
    for i in 0..count {
        gets.get(&key(i));
    }
    let results = client.execute(&gets).expect("connections");
    for (i, result) in results.into_iter().enumerate() {
        let Ok(Response::Get(read)) = result else { panic!("get {i}: {result:?}") };
        assert_eq!(read.values, [format!("value:{i}").into_bytes()], "get {i}");
    }
    for node in [&a, &b] {
        assert_eq!(node.accepted.load(Ordering::SeqCst), 1, "one connection per node");
        assert!(node.frames_per_read_max.load(Ordering::SeqCst) > 1, "pipelined");
    }
}

#[test]
fn ring_and_inspect_ask_the_node_connected_to() {
    let (a, b) = (TestNode::start(), TestNode::start());
    let ring = ring_of(&[(1, a.addr), (2, b.addr)], 1);
    a.set_ring(&ring, 1);
    b.set_ring(&ring, 1);
    b.node.lock().expect("not poisoned").actor = holdfast_net::Actor::new(2, 0);
    let on_b = key_led_by(&ring, 1, &[2]);
    let client = Client::connect(&[a.addr], routing_options()).expect("connect");
    let info = client.ring().expect("ring");
    assert_eq!((info.node, info.n, info.ring.as_ref()), (1, 1, Some(&ring)));
    client.put(&on_b, b"v", None).expect("put");

    // Inspect is never routed: each client asks the node it was given.
    let from_a = client.inspect(&on_b).expect("inspect a");
    assert_eq!((from_a.node, from_a.replica), (1, false));
    assert!(from_a.set.is_empty());
    let only_b = Client::connect(&[b.addr], routing_options()).expect("connect");
    let from_b = only_b.inspect(&on_b).expect("inspect b");
    assert_eq!((from_b.node, from_b.replica), (2, true));
    assert_eq!(from_b.partition, ring.partition_of(&on_b));
    assert_eq!(from_b.set.values().collect::<Vec<_>>(), [b"v".as_slice()]);
}
