//! The client socket path, through the real binary, on both transports:
//! the shard's own io_uring ring (the default) and glommio's sockets (the
//! fallback). Values spanning many provided buffers, more connections than
//! there are provided buffers, deep pipelines answered in order of
//! arrival, a client that stops reading its replies, and a graceful stop
//! with idle and half-read connections open.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use holdfast_net::frame::{Frame, FrameDecoder, Kind, encode_frame};
use holdfast_net::message::{GetRequest, encode_message};
use support::Cluster;

const TRANSPORTS: [&str; 2] = ["uring", "glommio"];

fn node(transport: &str) -> Cluster {
    let cluster = Cluster::serve(1, &["--transport", transport, "--shards", "2"]);
    let logs = cluster.logs();
    match transport {
        "uring" => assert!(logs.contains("io_uring ring"), "not on the ring:\n{logs}"),
        _ => assert!(!logs.contains("io_uring ring"), "on the ring:\n{logs}"),
    }
    cluster
}

/// Reads frames off `stream` until `count` have arrived.
fn read_frames(stream: &mut TcpStream, count: usize) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(64 << 20);
    let mut frames = Vec::new();
    let mut buffer = vec![0; 1 << 16];
    while frames.len() < count {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "closed after {} of {count} frames", frames.len());
        let mut input = &buffer[..read];
        while !input.is_empty() {
            let decoded = decoder.decode(input).unwrap();
            input = &input[decoded.consumed..];
            frames.extend(decoded.frame);
        }
    }
    frames
}

#[test]
fn large_values_many_connections_and_deep_pipelines_on_both_transports() {
    for transport in TRANSPORTS {
        let mut cluster = node(transport);
        let client = cluster.client(0);

        // Values of up to 1 MB: a frame spans 62 provided buffers of 16 KiB.
        for size in [1, 16 << 10, (16 << 10) + 1, 300_000, 1_000_000] {
            let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let key = format!("big-{size}");
            client.put(key.as_bytes(), &value, None).unwrap();
            assert_eq!(client.get(key.as_bytes()).unwrap().values, [value], "{transport} {size}");
        }

        // More connections at once than the ring has provided buffers (256),
        // each with a request in flight.
        let mut streams: Vec<TcpStream> =
            (0..300).map(|_| TcpStream::connect(cluster.addr(0)).unwrap()).collect();
        for (i, stream) in streams.iter_mut().enumerate() {
            stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            stream.write_all(&encode_frame(Kind::PING, i as u64, &[])).unwrap();
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            let frames = read_frames(stream, 1);
            assert_eq!(frames[0].request_id(), i as u64, "{transport}");
        }
        drop(streams);

        // 2,000 requests written at once on one connection: every one is
        // answered, by request id.
        let mut stream = TcpStream::connect(cluster.addr(0)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut batch = Vec::new();
        for id in 0..2000u64 {
            let key = format!("big-{}", [1, 300_000][(id % 2) as usize]);
            batch.extend(encode_message(id, &GetRequest { key: key.into_bytes(), r: 0 }));
        }
        stream.write_all(&batch).unwrap();
        let mut ids: Vec<u64> =
            read_frames(&mut stream, 2000).iter().map(Frame::request_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..2000).collect::<Vec<_>>(), "{transport}");
        drop(stream);

        cluster.stop();
    }
}

#[test]
fn a_client_that_stops_reading_holds_up_neither_others_nor_the_shutdown() {
    for transport in TRANSPORTS {
        let mut cluster = node(transport);
        let client = cluster.client(0);
        let value = vec![7u8; 256 << 10];
        client.put(b"large", &value, None).unwrap();

        // Asks for 200 copies of a 256 KiB value (50 MiB of replies) and
        // never reads them.
        let mut greedy = TcpStream::connect(cluster.addr(0)).unwrap();
        greedy.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut batch = Vec::new();
        for id in 0..200u64 {
            batch.extend(encode_message(id, &GetRequest { key: b"large".to_vec(), r: 0 }));
        }
        let _ = greedy.write_all(&batch);

        // An idle connection, and one that sent half a frame.
        let idle = TcpStream::connect(cluster.addr(0)).unwrap();
        let mut half = TcpStream::connect(cluster.addr(0)).unwrap();
        let frame = encode_message(1, &GetRequest { key: b"large".to_vec(), r: 0 });
        half.write_all(&frame[..frame.len() / 2]).unwrap();

        // Everyone else is served meanwhile.
        for i in 0..200 {
            let key = format!("other-{i}");
            client.put(key.as_bytes(), b"v", None).unwrap();
            assert_eq!(client.get(key.as_bytes()).unwrap().values, [b"v".to_vec()], "{transport}");
        }

        // And the node stops on SIGTERM (exit 0, port released) with all
        // three still open.
        cluster.stop();
        drop((greedy, idle, half));
    }
}

/// Regression: on the ring, the listener's cancellation sat unsubmitted
/// while the ring's task slept, so every shard waited out its 2 s grace
/// before stopping. An idle node stops in tens of milliseconds.
#[test]
fn an_idle_node_stops_promptly_on_both_transports() {
    for transport in TRANSPORTS {
        let mut cluster = node(transport);
        let began = std::time::Instant::now();
        cluster.stop();
        let took = began.elapsed();
        assert!(took < Duration::from_millis(1500), "{transport}: stopping took {took:?}");
    }
}
