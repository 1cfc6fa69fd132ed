//! The client's sans-IO core against a node played in memory: the test
//! moves bytes between them and decides what time it is.

mod support;

use std::time::{Duration, Instant};

use holdfast_net::client::{
    ClientCore, ClientError, Completion, Context, CoreOptions, ReadOptions, RequestId, Response,
    WriteOptions, Written,
};
use holdfast_net::frame::{Frame, FrameError, Kind, encode_frame};
use holdfast_net::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use holdfast_net::message::{
    ErrorCode, ErrorReply, InspectReply, MessageError, Pong, RingReply, encode_message,
    encode_message_into,
};
use holdfast_net::ring::{Member, Ring};
use support::FakeNode;

const TIMEOUT: Duration = Duration::from_millis(500);

fn core(in_flight_max: usize) -> ClientCore {
    ClientCore::new(CoreOptions { timeout: TIMEOUT, in_flight_max, ..CoreOptions::default() })
}

/// The frames the core wants sent, as the node decodes them.
fn sent(core: &mut ClientCore) -> Vec<Frame> {
    let bytes = core.poll_transmit().unwrap_or_default();
    FakeNode::frames(&mut FakeNode::decoder(), &bytes)
}

/// Runs every frame the core sent through `node` (in order) and feeds the
/// replies back in one piece.
fn exchange(core: &mut ClientCore, node: &mut FakeNode) {
    let mut replies = Vec::new();
    for frame in sent(core) {
        node.handle(&frame, &mut replies);
    }
    core.handle_input(&replies).expect("the node's replies are valid");
}

fn completions(core: &mut ClientCore) -> Vec<Completion> {
    std::iter::from_fn(|| core.poll_completion()).collect()
}

fn only(core: &mut ClientCore, id: RequestId) -> Result<Response, ClientError> {
    let mut done = completions(core);
    assert_eq!(done.len(), 1, "{done:?}");
    let completion = done.remove(0);
    assert_eq!(completion.id, id);
    completion.result
}

#[test]
fn put_get_delete_round_trip_with_contexts() {
    let now = Instant::now();
    let (mut core, mut node) = (core(8), FakeNode::default());

    let id = core.start_get(now, b"k", ReadOptions::default()).expect("started");
    exchange(&mut core, &mut node);
    let Ok(Response::Get(read)) = only(&mut core, id) else { panic!("a get reply") };
    assert!(!read.is_found(), "not found is an empty read, not an error");

    let id = core.start_put(now, b"k", b"v1", None, WriteOptions { w: 2 }).expect("started");
    exchange(&mut core, &mut node);
    let Ok(Response::Put(Written { context, .. })) = only(&mut core, id) else {
        panic!("a put reply")
    };

    // The put's context lets the client overwrite its own write.
    let id = core.start_put(now, b"k", b"v2", Some(&context), WriteOptions::default()).unwrap();
    exchange(&mut core, &mut node);
    assert!(matches!(only(&mut core, id), Ok(Response::Put(_))));
    let id = core.start_get(now, b"k", ReadOptions { r: 1 }).expect("started");
    exchange(&mut core, &mut node);
    let Ok(Response::Get(read)) = only(&mut core, id) else { panic!("a get reply") };
    assert_eq!(read.values, [b"v2".to_vec()]);

    let id = core.start_delete(now, b"k", &read.context, WriteOptions::default()).unwrap();
    exchange(&mut core, &mut node);
    assert!(matches!(only(&mut core, id), Ok(Response::Delete(_))));
    let id = core.start_get(now, b"k", ReadOptions::default()).expect("started");
    exchange(&mut core, &mut node);
    let Ok(Response::Get(read)) = only(&mut core, id) else { panic!("a get reply") };
    assert!(read.values.is_empty());

    let id = core.start_ping(now).expect("started");
    exchange(&mut core, &mut node);
    assert!(matches!(only(&mut core, id), Ok(Response::Pong)));
    assert_eq!(core.in_flight(), 0);
    assert_eq!(core.stray_replies(), 0);
}

#[test]
fn writes_without_a_context_become_siblings() {
    let now = Instant::now();
    let (mut core, mut node) = (core(8), FakeNode::default());
    core.start_put(now, b"cart", b"apples", None, WriteOptions::default()).unwrap();
    core.start_put(now, b"cart", b"pears", None, WriteOptions::default()).unwrap();
    let get = core.start_get(now, b"cart", ReadOptions::default()).unwrap();
    exchange(&mut core, &mut node);
    let done = completions(&mut core);
    let read = done.into_iter().find(|c| c.id == get).expect("the get completed").result;
    let Ok(Response::Get(read)) = read else { panic!("a get reply") };
    assert_eq!(read.values, [b"apples".to_vec(), b"pears".to_vec()]);

    // Writing back with the read's context resolves them.
    let id = core.start_put(now, b"cart", b"apples,pears", Some(&read.context), Default::default());
    exchange(&mut core, &mut node);
    assert!(matches!(only(&mut core, id.unwrap()), Ok(Response::Put(_))));
    assert_eq!(node.keys[&b"cart"[..]].len(), 1);
}

#[test]
fn replies_out_of_order_are_matched_by_request_id() {
    let now = Instant::now();
    let (mut core, mut node) = (core(8), FakeNode::default());
    for (key, value) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] {
        core.start_put(now, key, value, None, WriteOptions::default()).unwrap();
    }
    exchange(&mut core, &mut node);
    completions(&mut core);

    let ids: Vec<RequestId> = [b"a", b"b", b"c"]
        .iter()
        .map(|key| core.start_get(now, *key, ReadOptions::default()).unwrap())
        .collect();
    // All three requests leave in one buffer (one write).
    let frames = sent(&mut core);
    assert_eq!(frames.len(), 3);
    let mut replies = Vec::new();
    for frame in frames.iter().rev() {
        node.handle(frame, &mut replies);
    }
    // Fed one byte at a time, for good measure.
    for byte in &replies {
        core.handle_input(std::slice::from_ref(byte)).expect("valid");
    }
    let done = completions(&mut core);
    let order: Vec<RequestId> = done.iter().map(|c| c.id).collect();
    assert_eq!(order, [ids[2], ids[1], ids[0]]);
    for (completion, expected) in done.into_iter().zip([b"3", b"2", b"1"]) {
        let Ok(Response::Get(read)) = completion.result else { panic!("a get reply") };
        assert_eq!(read.values, [expected.to_vec()]);
    }
}

#[test]
fn timeouts_fire_from_the_time_given_and_late_replies_are_dropped() {
    let start = Instant::now();
    let (mut core, mut node) = (core(8), FakeNode::default());
    let first = core.start_get(start, b"k", ReadOptions::default()).unwrap();
    let second =
        core.start_get(start + Duration::from_millis(100), b"k", ReadOptions::default()).unwrap();
    let frames = sent(&mut core);
    assert_eq!(core.poll_timeout(), Some(start + TIMEOUT));

    core.handle_timeout(start + TIMEOUT - Duration::from_millis(1));
    assert!(core.poll_completion().is_none(), "no deadline has passed");
    core.handle_timeout(start + TIMEOUT);
    let done = completions(&mut core);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, first);
    assert!(matches!(done[0].result, Err(ClientError::Timeout { timeout: TIMEOUT })));
    assert_eq!(core.poll_timeout(), Some(start + Duration::from_millis(100) + TIMEOUT));

    // The node answers both after all: the first reply is late and dropped,
    // the second completes its request.
    let mut replies = Vec::new();
    for frame in &frames {
        node.handle(frame, &mut replies);
    }
    core.handle_input(&replies).expect("valid");
    assert_eq!(core.stray_replies(), 1);
    assert!(matches!(only(&mut core, second), Ok(Response::Get(_))));
    assert_eq!(core.poll_timeout(), None);
}

#[test]
fn in_flight_requests_are_bounded_until_collected() {
    let now = Instant::now();
    let (mut core, mut node) = (core(2), FakeNode::default());
    core.start_ping(now).unwrap();
    core.start_ping(now).unwrap();
    assert!(matches!(core.start_ping(now), Err(ClientError::InFlightFull { max: 2 })));
    exchange(&mut core, &mut node);
    // Completed but not collected still counts: a driver that never polls
    // cannot make the core buffer without bound.
    assert_eq!(core.awaiting_reply(), 0);
    assert!(matches!(core.start_ping(now), Err(ClientError::InFlightFull { max: 2 })));
    assert!(core.poll_completion().is_some());
    core.start_ping(now).expect("room again");
}

#[test]
fn oversized_keys_and_values_are_refused_before_sending() {
    let now = Instant::now();
    let mut core = core(8);
    let key = vec![0; KEY_BYTES_MAX + 1];
    let value = vec![0; VALUE_BYTES_MAX + 1];
    assert!(matches!(
        core.start_get(now, &key, ReadOptions::default()),
        Err(ClientError::KeyTooLarge { .. })
    ));
    assert!(matches!(
        core.start_put(now, b"k", &value, None, WriteOptions::default()),
        Err(ClientError::ValueTooLarge { .. })
    ));
    assert!(core.poll_transmit().is_none());
    assert_eq!(core.in_flight(), 0);
}

#[test]
fn a_node_error_completes_its_request_with_the_code() {
    let now = Instant::now();
    let mut core = core(8);
    let id = core.start_put(now, b"k", b"v", None, WriteOptions::default()).unwrap();
    let frames = sent(&mut core);
    let reply = ErrorReply::new(ErrorCode::DiskFull, "no space left");
    core.handle_input(&encode_message(frames[0].request_id(), &reply)).expect("valid");
    match only(&mut core, id) {
        Err(ClientError::Server { code: ErrorCode::DiskFull, message }) => {
            assert_eq!(message, "no space left");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reply_of_the_wrong_kind_fails_only_its_request() {
    let now = Instant::now();
    let mut core = core(8);
    let get = core.start_get(now, b"k", ReadOptions::default()).unwrap();
    let ping = core.start_ping(now).unwrap();
    let mut replies = encode_message(get.get(), &Pong {});
    encode_message_into(&mut replies, ping.get(), &Pong {});
    core.handle_input(&replies).expect("the framing is sound");
    let done = completions(&mut core);
    assert!(matches!(
        done[0].result,
        Err(ClientError::UnexpectedReply { request: Kind::GET, reply: Kind::PONG })
    ));
    assert!(matches!(done[1].result, Ok(Response::Pong)));
    assert!(!core.is_closed());
}

#[test]
fn broken_framing_closes_the_core_and_loses_what_was_in_flight() {
    let now = Instant::now();
    let mut core = core(8);
    let id = core.start_get(now, b"k", ReadOptions::default()).unwrap();
    let mut damaged = encode_frame(Kind::PONG, id.get(), &[]);
    damaged[8] ^= 1; // the request id, which the header checksum covers
    let error = core.handle_input(&damaged).expect_err("damaged");
    assert!(matches!(error, ClientError::Frame(FrameError::HeaderChecksum { .. })), "{error:?}");
    assert!(core.is_closed());
    assert!(matches!(only(&mut core, id), Err(ClientError::ConnectionLost)));
    assert!(matches!(core.start_ping(now), Err(ClientError::Closed)));
    assert!(matches!(core.handle_input(b"x"), Err(ClientError::Closed)));
}

#[test]
fn closing_completes_everything_in_flight_once() {
    let now = Instant::now();
    let mut core = core(8);
    let ids: Vec<RequestId> = (0..3).map(|_| core.start_ping(now).unwrap()).collect();
    core.close();
    core.close();
    let done = completions(&mut core);
    assert_eq!(done.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    assert!(done.iter().all(|c| matches!(c.result, Err(ClientError::ConnectionLost))));
    assert_eq!(core.poll_timeout(), None);
    assert!(core.poll_transmit().is_none());
}

#[test]
fn partial_writes_are_resumed_where_they_stopped() {
    let now = Instant::now();
    let mut core = core(8);
    core.start_get(now, b"first", ReadOptions::default()).unwrap();
    core.start_get(now, b"second", ReadOptions::default()).unwrap();
    let all = core.pending_transmit().to_vec();
    let mut written = Vec::new();
    while !core.pending_transmit().is_empty() {
        let chunk = core.pending_transmit().len().min(7);
        written.extend_from_slice(&core.pending_transmit()[..chunk]);
        core.advance_transmit(chunk);
    }
    assert_eq!(written, all);
}

#[test]
fn contexts_survive_a_trip_through_bytes() {
    let now = Instant::now();
    let (mut core, mut node) = (core(8), FakeNode::default());
    let id = core.start_put(now, b"k", b"v", None, WriteOptions::default()).unwrap();
    exchange(&mut core, &mut node);
    let Ok(Response::Put(Written { context, .. })) = only(&mut core, id) else {
        panic!("a put reply")
    };
    let stored = context.as_bytes().to_vec();
    let restored = Context::from_bytes(&stored).expect("valid");
    assert_eq!(restored, context);
    assert_eq!(format!("{restored:?}"), "Context[n1.0:1]");
    assert!(Context::from_bytes(b"not a context").is_err());
}

fn ring_of(ids: &[u64], version: u64) -> Ring {
    let members = ids
        .iter()
        .map(|&id| Member { id, addr: format!("10.0.0.{id}:7070"), weight: 1, zone: String::new() })
        .collect();
    Ring::new(64, members, version).expect("a valid ring")
}

#[test]
fn a_ring_reply_arrives_as_a_validated_ring() {
    let now = Instant::now();
    let (mut core, mut node) = (core(8), FakeNode::default());
    let id = core.start_ring(now).expect("started");
    exchange(&mut core, &mut node);
    let Ok(Response::Ring(info)) = only(&mut core, id) else { panic!("a ring reply") };
    assert_eq!(info.ring, None, "version 0 is a node that has not formed its ring");
    assert_eq!((info.node, info.n), (1, 3));

    let ring = ring_of(&[1, 2, 3], 4);
    node.ring = ring.state();
    let id = core.start_ring(now).expect("started");
    exchange(&mut core, &mut node);
    let Ok(Response::Ring(info)) = only(&mut core, id) else { panic!("a ring reply") };
    assert_eq!(info.ring, Some(ring));
}

#[test]
fn a_malformed_ring_is_an_invalid_reply_and_the_connection_goes_on() {
    let now = Instant::now();
    let mut core = core(8);
    let mut out_of_range = ring_of(&[1, 2], 3).state();
    out_of_range.owners[5] = 9;
    let mut unformed_with_members = ring_of(&[1], 1).state();
    unformed_with_members.version = 0;
    for state in [out_of_range, unformed_with_members] {
        let id = core.start_ring(now).expect("started");
        let reply = RingReply { node: 1, ring: state, n: 3, r: 2, w: 2 };
        core.handle_input(&encode_message(id.get(), &reply)).expect("the framing is sound");
        match only(&mut core, id) {
            Err(ClientError::Reply(MessageError::Invalid { kind: Kind::RING_REPLY, .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(!core.is_closed());
}

#[test]
fn inspect_returns_the_nodes_own_sibling_set() {
    let now = Instant::now();
    let (mut core, mut node) = (core(8), FakeNode::default());
    let id = core.start_inspect(now, b"k").expect("started");
    exchange(&mut core, &mut node);
    let Ok(Response::Inspect(inspected)) = only(&mut core, id) else { panic!("an inspect") };
    assert!(inspected.set.is_empty(), "empty bytes: the node holds nothing");
    assert_eq!(inspected.node, 1);

    core.start_put(now, b"k", b"a", None, WriteOptions::default()).unwrap();
    core.start_put(now, b"k", b"b", None, WriteOptions::default()).unwrap();
    let id = core.start_inspect(now, b"k").expect("started");
    exchange(&mut core, &mut node);
    let done = completions(&mut core);
    let inspected = done.into_iter().find(|c| c.id == id).expect("inspected").result;
    let Ok(Response::Inspect(inspected)) = inspected else { panic!("an inspect") };
    assert_eq!(inspected.set, node.keys[&b"k"[..]]);
    assert_eq!(inspected.set.values().collect::<Vec<_>>(), [b"a".as_slice(), b"b"]);

    // Bytes that are no canonical set are refused; the connection goes on.
    let id = core.start_inspect(now, b"k").expect("started");
    let reply = InspectReply { node: 1, partition: 0, replica: true, set: vec![0xff; 9] };
    core.handle_input(&encode_message(id.get(), &reply)).expect("the framing is sound");
    match only(&mut core, id) {
        Err(ClientError::Reply(MessageError::Invalid { kind: Kind::INSPECT_REPLY, .. })) => {}
        other => panic!("{other:?}"),
    }
    assert!(!core.is_closed());
}

#[test]
fn ring_and_inspect_answered_with_the_wrong_kind_fail_only_themselves() {
    let now = Instant::now();
    let mut core = core(8);
    let ring = core.start_ring(now).unwrap();
    let inspect = core.start_inspect(now, b"k").unwrap();
    let mut replies = encode_message(ring.get(), &Pong {});
    let wrong = InspectReply { node: 1, partition: 0, replica: true, set: Vec::new() };
    encode_message_into(&mut replies, inspect.get(), &RingReply::default());
    encode_message_into(&mut replies, ring.get(), &wrong);
    core.handle_input(&replies).expect("the framing is sound");
    let done = completions(&mut core);
    assert!(matches!(
        done[0].result,
        Err(ClientError::UnexpectedReply { request: Kind::RING, reply: Kind::PONG })
    ));
    assert!(matches!(
        done[1].result,
        Err(ClientError::UnexpectedReply { request: Kind::INSPECT, reply: Kind::RING_REPLY })
    ));
    assert_eq!(core.stray_replies(), 1, "the second reply to the ring request");
}

#[test]
fn oversized_inspect_keys_are_refused_before_sending() {
    let mut core = core(8);
    let key = vec![0; KEY_BYTES_MAX + 1];
    assert!(matches!(
        core.start_inspect(Instant::now(), &key),
        Err(ClientError::KeyTooLarge { .. })
    ));
    assert!(core.poll_transmit().is_none());
}
