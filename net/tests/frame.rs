//! Frames and messages on the wire: round trips, and every way damaged or
//! hostile bytes must be refused (bit flips, truncation, oversized frames,
//! unknown versions and kinds, garbage bodies).

use holdfast_net::clock::CLOCK_ENTRIES_MAX;
use holdfast_net::frame::{
    BODY_ALIGNMENT, Frame, FrameDecoder, FrameError, HEADER_BYTES, Header, Kind, PROTOCOL_VERSION,
    encode_frame,
};
use holdfast_net::limits::{
    CONTEXT_BYTES_MAX, FRAME_BYTES_MAX_DEFAULT, KEY_BYTES_MAX, READ_REPLY_BYTES_MAX,
    REPLY_FRAME_BYTES_MAX_DEFAULT, REQUEST_BYTES_MAX, VALUE_BYTES_MAX,
};
use holdfast_net::message::{
    self, DeleteReply, DeleteRequest, ErrorCode, ErrorReply, GetReply, GetRequest, Message,
    MessageError, Ping, Pong, PutReply, PutRequest, Reply, Request, RequestError, RequestLimits,
    encode_message,
};
use holdfast_net::siblings::VERSIONS_MAX;
use holdfast_net::{Actor, Dot, VersionVector};
use proptest::prelude::*;
use rkyv::util::AlignedVec;

const MAX: u32 = FRAME_BYTES_MAX_DEFAULT;

fn sample_put() -> Vec<u8> {
    let context = VersionVector::from_iter([Dot::new(Actor::new(1, 0), 3)]).encode();
    encode_message(
        0x1234,
        &PutRequest { key: b"user:42".to_vec(), value: b"hello".to_vec(), context, w: 2 },
    )
}

/// Feeds `bytes` to a fresh decoder in one piece and returns every result
/// until the input is used up or an error stops it.
fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut decoder = FrameDecoder::new(MAX);
    let mut frames = Vec::new();
    let mut input = bytes;
    while !input.is_empty() {
        let decoded = decoder.decode(input)?;
        input = &input[decoded.consumed..];
        frames.extend(decoded.frame);
    }
    Ok(frames)
}

#[test]
fn a_frame_round_trips_with_its_header_fields() {
    let bytes = sample_put();
    let frames = decode_all(&bytes).expect("valid");
    assert_eq!(frames.len(), 1);
    let frame = &frames[0];
    assert_eq!(frame.kind(), Kind::PUT);
    assert_eq!(frame.request_id(), 0x1234);
    assert_eq!(frame.version(), PROTOCOL_VERSION);
    assert_eq!(frame.as_bytes(), &bytes[..]);
    assert_eq!(frame.header().body_len as usize, bytes.len() - HEADER_BYTES);
    assert!(frame.body().as_ptr().addr().is_multiple_of(BODY_ALIGNMENT));
    let put = frame.decode::<PutRequest>().expect("valid body");
    assert_eq!(put.key, b"user:42");
    assert_eq!(put.w, 2);
}

#[test]
fn the_archived_layout_is_pinned() {
    // The exact body of a small request. If this changes, rkyv's format
    // features or the message's fields changed, and every deployed peer
    // would misread the new bytes: bump PROTOCOL_VERSION instead.
    let bytes = encode_message(1, &GetRequest { key: b"k".to_vec(), r: 3 });
    let body = &bytes[HEADER_BYTES..];
    assert_eq!(
        body,
        [
            b'k', 0, 0, 0, // the key's byte, padded to the root's alignment
            0xfc, 0xff, 0xff, 0xff, // key: relative pointer -4 (little-endian i32)
            1, 0, 0, 0, // key: length 1 (u32)
            3, 0, 0, 0, // r, padded to the root's size
        ]
    );
}

#[test]
fn every_single_bit_flip_is_caught() {
    let bytes = sample_put();
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let error = decode_all(&damaged).expect_err("a flipped bit must not pass");
        let byte = bit / 8;
        match error {
            FrameError::BadMagic { .. } => assert!(byte < 4, "bit {bit}"),
            FrameError::HeaderChecksum { .. } => assert!(byte < HEADER_BYTES, "bit {bit}"),
            FrameError::BodyChecksum { .. } => assert!(byte >= HEADER_BYTES, "bit {bit}"),
            other => panic!("bit {bit}: unexpected {other:?}"),
        }
    }
}

#[test]
fn truncation_at_every_byte_needs_more_and_then_completes() {
    let bytes = sample_put();
    for cut in 0..bytes.len() {
        let mut decoder = FrameDecoder::new(MAX);
        let first = decoder.decode(&bytes[..cut]).expect("a prefix is not an error");
        assert_eq!(first.consumed, cut);
        assert!(first.frame.is_none(), "cut {cut} produced a frame");
        assert_eq!(decoder.buffered(), cut);
        let rest = decoder.decode(&bytes[cut..]).expect("the rest completes it");
        assert_eq!(rest.consumed, bytes.len() - cut);
        assert_eq!(rest.frame.expect("whole").as_bytes(), &bytes[..]);
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn a_truncated_frame_followed_by_another_never_yields_a_frame() {
    // A frame that lost its tail, then a whole frame: the decoder takes the
    // second frame's bytes for the first one's, and must notice.
    let bytes = sample_put();
    let next = encode_message(99, &GetRequest { key: b"other".to_vec(), r: 0 });
    for cut in 1..bytes.len() {
        let stream = [&bytes[..cut], &next[..]].concat();
        match decode_all(&stream) {
            Err(_) => {}
            Ok(frames) => assert!(frames.is_empty(), "cut {cut} produced {frames:?}"),
        }
    }
}

#[test]
fn a_stream_split_anywhere_decodes_to_the_same_frames() {
    let mut stream = sample_put();
    stream.extend(encode_message(2, &Ping {}));
    stream.extend(encode_message(3, &GetRequest { key: vec![9; 100], r: 1 }));
    let expected: Vec<Vec<u8>> =
        decode_all(&stream).expect("valid").iter().map(|f| f.as_bytes().to_vec()).collect();
    assert_eq!(expected.len(), 3);
    for chunk in [1, 2, 3, 7, 31, 32, 33, 64, 1000] {
        let mut decoder = FrameDecoder::new(MAX);
        let mut frames = Vec::new();
        for piece in stream.chunks(chunk) {
            let mut input = piece;
            loop {
                let decoded = decoder.decode(input).expect("valid");
                input = &input[decoded.consumed..];
                match decoded.frame {
                    Some(frame) => frames.push(frame.as_bytes().to_vec()),
                    None => break,
                }
            }
            assert!(input.is_empty());
        }
        assert_eq!(frames, expected, "chunk size {chunk}");
    }
}

#[test]
fn an_oversized_frame_is_refused_from_its_header_before_any_body_byte() {
    let header = Header {
        version: PROTOCOL_VERSION,
        kind: Kind::PUT,
        request_id: 77,
        body_len: 4096,
        body_checksum: 0,
    };
    let mut decoder = FrameDecoder::new(1024);
    // Only the header has arrived; the refusal must not wait for the body.
    let error = decoder.decode(&header.encode()).expect_err("too large");
    assert_eq!(error, FrameError::TooLarge { len: 4096 + 32, max: 1024, request_id: 77 });
    assert_eq!(decoder.buffered(), 0);
    // The decoder stays refused: the stream has no boundary left to trust.
    assert_eq!(decoder.decode(&[0; 10]).map(|_| ()), Err(error));

    // A header claiming 4 GiB is refused the same way.
    let huge = Header { body_len: u32::MAX, ..header };
    let mut decoder = FrameDecoder::new(MAX);
    assert!(matches!(decoder.decode(&huge.encode()), Err(FrameError::TooLarge { .. })));

    // Exactly at the limit is fine.
    let body = vec![0; 1024 - HEADER_BYTES];
    let at_limit = encode_frame(Kind::PUT, 1, &body);
    assert!(FrameDecoder::new(1024).decode(&at_limit).expect("fits").frame.is_some());
}

#[test]
fn a_stranger_gets_bad_magic() {
    let error = decode_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").expect_err("not ours");
    assert_eq!(error, FrameError::BadMagic { found: *b"GET " });
}

#[test]
fn whole_frame_constructors_refuse_partial_and_extra_bytes() {
    let bytes = sample_put();
    assert_eq!(
        Frame::from_bytes(&bytes[..10], MAX).map(|_| ()),
        Err(FrameError::Incomplete { needed: 32, available: 10 })
    );
    assert_eq!(
        Frame::from_bytes(&bytes[..40], MAX).map(|_| ()),
        Err(FrameError::Incomplete { needed: bytes.len() as u64, available: 40 })
    );
    let extra = [&bytes[..], &[0]].concat();
    assert_eq!(
        Frame::from_bytes(&extra, MAX).map(|_| ()),
        Err(FrameError::TrailingBytes { count: 1 })
    );
    // Forwarding: a frame's own buffer is accepted again without a copy.
    let frame = Frame::from_bytes(&bytes, MAX).expect("valid");
    let forwarded = Frame::from_aligned_bytes(frame.into_bytes(), MAX).expect("still valid");
    assert_eq!(forwarded.as_bytes(), &bytes[..]);
}

#[test]
fn a_newer_version_or_unknown_kind_is_answered_and_the_stream_goes_on() {
    let body = [1, 2, 3];
    let newer = Header {
        version: PROTOCOL_VERSION + 1,
        kind: Kind::GET,
        request_id: 5,
        body_len: body.len() as u32,
        body_checksum: crc32c::crc32c(&body),
    };
    let mut stream = newer.encode().to_vec();
    stream.extend_from_slice(&body);
    stream.extend(encode_frame(Kind::new(50), 6, &[]));
    stream.extend(encode_frame(Kind::new(200), 7, &[]));
    stream.extend(encode_message(8, &GetRequest { key: b"k".to_vec(), r: 0 }));
    let frames = decode_all(&stream).expect("the framing is sound");
    assert_eq!(frames.len(), 4);
    let limits = RequestLimits::default();
    let codes: Vec<Option<ErrorCode>> = frames
        .iter()
        .map(|frame| Request::parse(frame, &limits).err().map(|error| error.code()))
        .collect();
    assert_eq!(
        codes,
        [
            Some(ErrorCode::UnsupportedVersion),
            Some(ErrorCode::UnknownKind),
            Some(ErrorCode::UnknownKind),
            None
        ]
    );
}

#[test]
fn requests_are_checked_against_the_nodes_limits() {
    let limits = RequestLimits { key_bytes_max: 4, value_bytes_max: 8 };
    let parse = |bytes: Vec<u8>| {
        let frame = Frame::from_bytes(&bytes, MAX).expect("valid frame");
        Request::parse(&frame, &limits).map(|request| format!("{request:?}"))
    };
    assert_eq!(
        parse(encode_message(1, &GetRequest { key: vec![0; 5], r: 0 })),
        Err(RequestError::KeyTooLarge { len: 5, max: 4 })
    );
    let put = PutRequest { key: vec![1], value: vec![0; 9], context: vec![], w: 0 };
    assert_eq!(parse(encode_message(1, &put)), Err(RequestError::ValueTooLarge { len: 9, max: 8 }));
    let bad_context = DeleteRequest { key: vec![1], context: vec![1, 2, 3], w: 0 };
    let error = parse(encode_message(1, &bad_context)).expect_err("bad context");
    assert_eq!(error.code(), ErrorCode::BadContext);
    assert_eq!(error.to_reply().error_code(), ErrorCode::BadContext);

    // A reply kind sent to a node is not a request.
    let error = parse(encode_message(1, &Pong {})).expect_err("not a request");
    assert_eq!(error.code(), ErrorCode::UnknownKind);

    // A body of the wrong shape for its kind fails validation.
    let error = parse(encode_frame(Kind::PUT, 1, &[0xff; 3])).expect_err("garbage");
    assert!(matches!(error, RequestError::Message(MessageError::Invalid { .. })), "{error:?}");
    assert_eq!(error.code(), ErrorCode::BadRequest);

    // An empty context is "none".
    let put = PutRequest { key: vec![1], value: vec![2], context: vec![], w: 3 };
    let frame = Frame::from_bytes(&encode_message(1, &put), MAX).expect("valid");
    assert_eq!(
        Request::parse(&frame, &limits),
        Ok(Request::Put { key: &[1], value: &[2], context: VersionVector::new(), w: 3 })
    );
}

#[test]
fn the_largest_messages_fit_their_frame_limits() {
    let context: VersionVector =
        (0..CLOCK_ENTRIES_MAX as u64).map(|node| Dot::new(Actor::new(node, 0), u64::MAX)).collect();
    let context = context.encode();
    assert_eq!(context.len(), CONTEXT_BYTES_MAX);

    let put = PutRequest {
        key: vec![7; KEY_BYTES_MAX],
        value: vec![8; VALUE_BYTES_MAX],
        context: context.clone(),
        w: 255,
    };
    let bytes = encode_message(u64::MAX, &put);
    assert!(bytes.len() <= REQUEST_BYTES_MAX, "{} > {REQUEST_BYTES_MAX}", bytes.len());
    let frame = Frame::from_bytes(&bytes, FRAME_BYTES_MAX_DEFAULT).expect("fits the default");
    assert_eq!(frame.decode::<PutRequest>(), Ok(put));

    let reply = GetReply { values: vec![vec![9; VALUE_BYTES_MAX]; VERSIONS_MAX], context };
    let bytes = encode_message(u64::MAX, &reply);
    assert!(bytes.len() <= READ_REPLY_BYTES_MAX, "{} > {READ_REPLY_BYTES_MAX}", bytes.len());
    let frame = Frame::from_bytes(&bytes, REPLY_FRAME_BYTES_MAX_DEFAULT).expect("fits");
    assert_eq!(frame.access::<GetReply>().expect("valid").values.len(), VERSIONS_MAX);
}

/// Round-trips `message` through a frame, a decoder fed in `chunk`-byte
/// pieces, and the validating access.
fn round_trip<M: Message + PartialEq>(message: &M, request_id: u64, chunk: usize) -> M {
    let bytes = encode_message(request_id, message);
    let mut decoder = FrameDecoder::new(REPLY_FRAME_BYTES_MAX_DEFAULT);
    let mut frame = None;
    for piece in bytes.chunks(chunk) {
        let decoded = decoder.decode(piece).expect("valid");
        assert_eq!(decoded.consumed, piece.len());
        assert!(frame.is_none() || decoded.frame.is_none());
        frame = frame.or(decoded.frame);
    }
    let frame = frame.expect("a whole frame");
    assert_eq!(frame.kind(), M::KIND);
    assert_eq!(frame.request_id(), request_id);
    frame.decode::<M>().expect("valid body")
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut aligned = AlignedVec::new();
    aligned.extend_from_slice(bytes);
    aligned
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(
        key in bytes(64), value in bytes(300), context in bytes(40),
        r in any::<u8>(), w in any::<u8>(), id in any::<u64>(), chunk in 1..64usize,
    ) {
        let get = GetRequest { key: key.clone(), r };
        prop_assert_eq!(round_trip(&get, id, chunk), get);
        let put = PutRequest { key: key.clone(), value, context: context.clone(), w };
        prop_assert_eq!(round_trip(&put, id, chunk), put);
        let delete = DeleteRequest { key, context, w };
        prop_assert_eq!(round_trip(&delete, id, chunk), delete);
        prop_assert_eq!(round_trip(&Ping {}, id, chunk), Ping {});
    }

    #[test]
    fn replies_round_trip(
        values in prop::collection::vec(bytes(50), 0..8), context in bytes(40),
        code in any::<u16>(), message in ".{0,40}", id in any::<u64>(), chunk in 1..64usize,
    ) {
        let get = GetReply { values, context: context.clone() };
        prop_assert_eq!(round_trip(&get, id, chunk), get.clone());
        let put = PutReply { context: context.clone(), dot: context.clone() };
        prop_assert_eq!(round_trip(&put, id, chunk), put.clone());
        let delete = DeleteReply { context: context.clone(), dot: context };
        prop_assert_eq!(round_trip(&delete, id, chunk), delete.clone());
        prop_assert_eq!(round_trip(&Pong {}, id, chunk), Pong {});
        let error = ErrorReply { code, message };
        prop_assert_eq!(round_trip(&error, id, chunk), error.clone());
        // The same replies through the client's any-reply decoder.
        let frame = Frame::from_bytes(&encode_message(id, &get), MAX).expect("valid");
        prop_assert_eq!(Reply::decode(&frame), Ok(Reply::Get(get)));
        let frame = Frame::from_bytes(&encode_message(id, &error), MAX).expect("valid");
        prop_assert_eq!(Reply::decode(&frame), Ok(Reply::Error(error)));
    }

    #[test]
    fn arbitrary_bodies_never_panic_the_validating_access(body in bytes(128)) {
        let body = aligned(&body);
        // Whatever validates must also copy out; nothing may panic.
        let _ = message::decode::<GetRequest>(&body);
        let _ = message::decode::<PutRequest>(&body);
        let _ = message::decode::<DeleteRequest>(&body);
        let _ = message::decode::<Ping>(&body);
        let _ = message::decode::<GetReply>(&body);
        let _ = message::decode::<PutReply>(&body);
        let _ = message::decode::<DeleteReply>(&body);
        let _ = message::decode::<Pong>(&body);
        let _ = message::decode::<ErrorReply>(&body);
    }

    #[test]
    fn corrupted_bodies_with_fixed_checksums_are_refused_or_valid(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Damage that the checksum would catch, slipped past it: what is
        // left is rkyv's validation, which must refuse or return something
        // well formed, never panic or misread.
        let reply = GetReply { values: vec![b"abc".to_vec(), vec![]], context: vec![1; 9] };
        let mut body = encode_message(1, &reply)[HEADER_BYTES..].to_vec();
        for (at, byte) in flips {
            let at = at.index(body.len());
            body[at] = byte;
        }
        let frame = Frame::from_bytes(&encode_frame(Kind::GET_REPLY, 1, &body), MAX).expect("framed");
        if let Ok(decoded) = frame.decode::<GetReply>() {
            prop_assert!(decoded.values.iter().map(Vec::len).sum::<usize>() <= body.len());
        }
    }

    #[test]
    fn arbitrary_streams_never_panic_the_decoder(
        stream in bytes(512), chunk in 1..64usize,
    ) {
        let mut decoder = FrameDecoder::new(256);
        for piece in stream.chunks(chunk) {
            let mut input = piece;
            while let Ok(decoded) = decoder.decode(input) {
                prop_assert!(decoded.consumed <= input.len());
                input = &input[decoded.consumed..];
                if decoded.frame.is_none() {
                    break;
                }
            }
            prop_assert!(decoder.buffered() <= 256);
        }
    }
}
