//! The blocking client against a tiny node on 127.0.0.1 (a thread per
//! connection over std::net, answering through the in-memory `FakeNode`).
//! The node answers every batch of frames it reads in reverse order, so a
//! pipelining client sees its replies out of order.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use holdfast_net::client::{Batch, Client, ClientError, ClientOptions, Response};
use holdfast_net::message::{ErrorCode, RequestLimits};
use support::FakeNode;

/// A node serving the protocol on an ephemeral loopback port.
struct TestNode {
    addr: SocketAddr,
    node: Arc<Mutex<FakeNode>>,
    /// While set, the node reads requests and never answers.
    silent: Arc<AtomicBool>,
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
            streams: Arc::default(),
            accepted: Arc::default(),
            frames_per_read_max: Arc::default(),
        };
        let (shared, silent, streams, accepted, frames_per_read_max) = (
            node.node.clone(),
            node.silent.clone(),
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
                let (shared, silent, most) =
                    (shared.clone(), silent.clone(), frames_per_read_max.clone());
                thread::spawn(move || serve(stream, &shared, &silent, &most));
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
}

fn serve(mut stream: TcpStream, node: &Mutex<FakeNode>, silent: &AtomicBool, most: &AtomicUsize) {
    let mut decoder = FakeNode::decoder();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let len = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(len) => len,
        };
        let frames = FakeNode::frames(&mut decoder, &buffer[..len]);
        most.fetch_max(frames.len(), Ordering::SeqCst);
        if silent.load(Ordering::SeqCst) {
            continue;
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
    let options = ClientOptions { idle_check_after: Duration::from_secs(3600), ..options() };
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
