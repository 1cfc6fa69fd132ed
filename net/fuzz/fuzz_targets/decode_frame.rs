//! Feeds arbitrary bytes to the frame decoder, in pieces of a size the input
//! chooses, and validates every frame it yields as each message; then
//! validates the raw bytes themselves as the body of every message (the
//! checksums keep the fuzzer from reaching rkyv through frames alone).
//!
//! Nothing may panic; every accepted header must re-encode to the bytes it
//! came from; every message rkyv accepts must round-trip through a frame.

#![no_main]

use holdfast_net::frame::{AlignedVec, Frame, FrameDecoder, HEADER_BYTES, PROTOCOL_VERSION};
use holdfast_net::message::{
    self, DeleteReply, DeleteRequest, ErrorReply, GetReply, GetRequest, Message, Ping, Pong,
    PutReply, PutRequest, Reply, Request, RequestLimits, encode_message,
};
use libfuzzer_sys::fuzz_target;

/// A small limit lets the fuzzer reach `TooLarge` cheaply.
const FRAME_BYTES_MAX: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;

    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    'stream: for piece in stream.chunks(chunk) {
        let mut input = piece;
        loop {
            let Ok(decoded) = decoder.decode(input) else {
                // Sticky: the same error again, whatever comes next.
                assert!(decoder.decode(&[0]).is_err());
                break 'stream;
            };
            assert!(decoded.consumed <= input.len());
            input = &input[decoded.consumed..];
            match decoded.frame {
                Some(frame) => check_frame(&frame),
                None => {
                    assert!(input.is_empty(), "a partial frame takes all the input");
                    break;
                }
            }
        }
        assert!(decoder.buffered() <= FRAME_BYTES_MAX as usize);
    }

    let mut body: AlignedVec = AlignedVec::new();
    body.extend_from_slice(stream);
    check_body(&body);
});

fn check_frame(frame: &Frame) {
    let bytes = frame.as_bytes();
    assert_eq!(bytes.len(), HEADER_BYTES + frame.header().body_len as usize);
    if frame.version() == PROTOCOL_VERSION {
        assert_eq!(frame.header().encode()[..], bytes[..HEADER_BYTES]);
    }
    let _ = Request::parse(frame, &RequestLimits::default());
    let _ = Reply::decode(frame);
    check_body(frame.body());
}

fn check_body(body: &[u8]) {
    round_trip::<GetRequest>(body);
    round_trip::<PutRequest>(body);
    round_trip::<DeleteRequest>(body);
    round_trip::<Ping>(body);
    round_trip::<GetReply>(body);
    round_trip::<PutReply>(body);
    round_trip::<DeleteReply>(body);
    round_trip::<Pong>(body);
    round_trip::<ErrorReply>(body);
}

/// What validates must copy out, and what is copied out must survive a trip
/// through a frame unchanged.
fn round_trip<M: Message + PartialEq>(body: &[u8]) {
    let Ok(decoded) = message::decode::<M>(body) else {
        return;
    };
    let frame = Frame::from_bytes(&encode_message(1, &decoded), holdfast_net::limits::FRAME_BYTES_MAX_CEILING)
        .expect("an encoded message frames");
    assert!(frame.decode::<M>().expect("an encoded message validates") == decoded);
}
