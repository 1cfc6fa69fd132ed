//! RESP2, Redis's protocol: `GET` and `SET` as arrays of bulk strings, and
//! a parser for every RESP2 reply type.
//!
//! ```text
//! request   *3\r\n $3\r\nSET\r\n $<n>\r\n<key>\r\n $<n>\r\n<value>\r\n
//! replies   +OK\r\n                  simple string
//!           -ERR message\r\n         error
//!           :42\r\n                  integer
//!           $5\r\nhello\r\n          bulk string     $-1\r\n  nil
//!           *2\r\n<reply><reply>     array           *-1\r\n  nil array
//! ```
//!
//! Redis answers a connection's requests in order, so the codec keeps the
//! tags of its unanswered requests in a queue. The parser never panics on
//! any input and never reads past what it was given: incomplete input is
//! `Ok(None)`, anything else malformed is an error. Lengths are capped
//! ([`BULK_BYTES_MAX`], [`ARRAY_LEN_MAX`], [`NESTING_MAX`]).

use std::collections::VecDeque;
use std::io::Write as _;

use super::{Outcome, Protocol, ProtocolError, Reply, Request};

/// The longest bulk string accepted: Redis's own `proto-max-bulk-len`.
pub const BULK_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// The most elements accepted in one array.
pub const ARRAY_LEN_MAX: u64 = 1 << 20;
/// The deepest nesting of arrays accepted.
pub const NESTING_MAX: usize = 8;
/// The longest simple string, error or number line accepted.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// One RESP2 reply, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// `+...`: a status such as `OK`.
    Simple(&'a [u8]),
    /// `-...`: an error message.
    Error(&'a [u8]),
    /// `:...`: a signed integer.
    Integer(i64),
    /// `$...`: bytes, or `None` for the nil bulk string (`$-1`).
    Bulk(Option<&'a [u8]>),
    /// `*...`: replies, or `None` for the nil array (`*-1`).
    Array(Option<Vec<Value<'a>>>),
}

/// Parses the first complete reply at the start of `input`: `Ok(None)` if
/// it is incomplete, else the reply and the number of bytes it spans.
pub fn parse(input: &[u8]) -> Result<Option<(usize, Value<'_>)>, ProtocolError> {
    parse_at(input, 0, 0)
}

fn parse_at(
    input: &[u8],
    at: usize,
    depth: usize,
) -> Result<Option<(usize, Value<'_>)>, ProtocolError> {
    let Some(&marker) = input.get(at) else {
        return Ok(None);
    };
    let Some((line, after_line)) = line(input, at + 1)? else {
        return Ok(None);
    };
    match marker {
        b'+' => Ok(Some((after_line, Value::Simple(line)))),
        b'-' => Ok(Some((after_line, Value::Error(line)))),
        b':' => Ok(Some((after_line, Value::Integer(integer(line)?)))),
        b'$' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some((after_line, Value::Bulk(None))));
            }
            let len = length(len, BULK_BYTES_MAX)?;
            let end = after_line + len;
            if input.len() < end + 2 {
                return Ok(None);
            }
            if &input[end..end + 2] != b"\r\n" {
                return Err(malformed("bulk string not followed by CRLF"));
            }
            Ok(Some((end + 2, Value::Bulk(Some(&input[after_line..end])))))
        }
        b'*' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some((after_line, Value::Array(None))));
            }
            let len = length(len, ARRAY_LEN_MAX)?;
            if depth + 1 > NESTING_MAX {
                return Err(malformed("arrays nested too deeply"));
            }
            // Grow as elements arrive rather than trusting the count.
            let mut items = Vec::new();
            let mut next = after_line;
            for _ in 0..len {
                let Some((after_item, item)) = parse_at(input, next, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                next = after_item;
            }
            Ok(Some((next, Value::Array(Some(items)))))
        }
        other => Err(malformed(&format!("unknown reply type byte 0x{other:02x}"))),
    }
}

/// The line starting at `from` (without its CRLF) and the offset after the
/// CRLF, or `None` if the CRLF has not arrived.
fn line(input: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = input.get(from..).unwrap_or_default();
    let window = &rest[..rest.len().min(LINE_BYTES_MAX + 2)];
    match window.iter().position(|&b| b == b'\r') {
        Some(cr) if cr > LINE_BYTES_MAX => {
            Err(ProtocolError::TooLong { len: cr as u64, limit: LINE_BYTES_MAX as u64 })
        }
        Some(cr) if cr + 1 < window.len() => {
            if window[cr + 1] != b'\n' {
                return Err(malformed("CR not followed by LF"));
            }
            Ok(Some((&rest[..cr], from + cr + 2)))
        }
        // The CR is the last byte so far: its LF has not arrived.
        Some(_) => Ok(None),
        None if rest.len() > LINE_BYTES_MAX => {
            Err(ProtocolError::TooLong { len: rest.len() as u64, limit: LINE_BYTES_MAX as u64 })
        }
        None => Ok(None),
    }
}

fn integer(digits: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .filter(|text| !text.starts_with('+'))
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| malformed(&format!("not an integer: {:?}", String::from_utf8_lossy(digits))))
}

fn length(len: i64, limit: u64) -> Result<usize, ProtocolError> {
    let len = u64::try_from(len).map_err(|_| malformed(&format!("negative length {len}")))?;
    if len > limit {
        return Err(ProtocolError::TooLong { len, limit });
    }
    usize::try_from(len).map_err(|_| ProtocolError::TooLong { len, limit })
}

fn malformed(detail: &str) -> ProtocolError {
    ProtocolError::Malformed { detail: detail.to_owned() }
}

/// What a queued request was, to interpret its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Get,
    Set,
}

/// The RESP2 codec for GET and SET.
#[derive(Debug, Default)]
pub struct Resp {
    /// Tags of requests sent and not yet answered, oldest first.
    unanswered: VecDeque<(u32, Sent)>,
    /// Replies decoded and not yet polled.
    replies: VecDeque<Reply>,
}

impl Resp {
    /// A codec with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }
}

fn bulk(tx: &mut Vec<u8>, bytes: &[u8]) {
    // Writing to a Vec cannot fail.
    let _ = write!(tx, "${}\r\n", bytes.len());
    tx.extend_from_slice(bytes);
    tx.extend_from_slice(b"\r\n");
}

impl Protocol for Resp {
    fn encode(
        &mut self,
        request: Request<'_>,
        tag: u32,
        tx: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        match request {
            Request::Read { key } => {
                tx.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                bulk(tx, key);
                self.unanswered.push_back((tag, Sent::Get));
            }
            // Redis has no causal context: a read-modify-write is GET, SET.
            Request::Write { key, value, context: _ } => {
                tx.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                bulk(tx, key);
                bulk(tx, value);
                self.unanswered.push_back((tag, Sent::Set));
            }
        }
        Ok(())
    }

    fn receive(&mut self, rx: &[u8]) -> Result<usize, ProtocolError> {
        let mut consumed = 0;
        while let Some((used, reply)) = self.decode(&rx[consumed..])? {
            consumed += used;
            self.replies.push_back(reply);
        }
        Ok(consumed)
    }

    fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }
}

impl Resp {
    /// Decodes the first complete reply at the start of `rx`: `Ok(None)`
    /// if more bytes are needed, else the reply and how many bytes it took.
    fn decode(&mut self, rx: &[u8]) -> Result<Option<(usize, Reply)>, ProtocolError> {
        let Some((used, value)) = parse(rx)? else {
            return Ok(None);
        };
        let Some((tag, sent)) = self.unanswered.pop_front() else {
            return Err(ProtocolError::Unexpected {
                detail: format!("{value:?} with nothing sent"),
            });
        };
        let outcome = match (sent, value) {
            (_, Value::Error(message)) => {
                Outcome::Failed { message: String::from_utf8_lossy(message).into_owned() }
            }
            (Sent::Get, Value::Bulk(Some(_))) => Outcome::Found { context: Vec::new() },
            (Sent::Get, Value::Bulk(None)) => Outcome::NotFound { context: Vec::new() },
            (Sent::Set, Value::Simple(b"OK")) => Outcome::Written { context: Vec::new() },
            (sent, value) => {
                return Err(ProtocolError::Unexpected {
                    detail: format!("{value:?} answering {sent:?}"),
                });
            }
        };
        Ok(Some((used, Reply { tag, outcome })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_get_and_set() {
        let mut codec = Resp::new();
        let mut tx = Vec::new();
        codec.encode(Request::Read { key: b"k1" }, 0, &mut tx).unwrap();
        codec
            .encode(Request::Write { key: b"k1", value: b"hello", context: b"" }, 1, &mut tx)
            .unwrap();
        assert_eq!(
            tx,
            b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$5\r\nhello\r\n"
        );
    }

    #[test]
    fn parses_every_reply_type() {
        let cases: [(&[u8], Value<'_>); 8] = [
            (b"+OK\r\n", Value::Simple(b"OK")),
            (b"-ERR wrong\r\n", Value::Error(b"ERR wrong")),
            (b":-42\r\n", Value::Integer(-42)),
            (b"$5\r\nhe\r\no\r\n", Value::Bulk(Some(b"he\r\no"))),
            (b"$0\r\n\r\n", Value::Bulk(Some(b""))),
            (b"$-1\r\n", Value::Bulk(None)),
            (b"*-1\r\n", Value::Array(None)),
            (
                b"*3\r\n:1\r\n$-1\r\n*1\r\n+x\r\n",
                Value::Array(Some(vec![
                    Value::Integer(1),
                    Value::Bulk(None),
                    Value::Array(Some(vec![Value::Simple(b"x")])),
                ])),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse(bytes).unwrap(), Some((bytes.len(), expected.clone())));
            // Every strict prefix is incomplete, never an error.
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]).unwrap(), None, "{:?}", &bytes[..cut]);
            }
        }
    }

    #[test]
    fn rejects_malformed_replies() {
        for bytes in [
            &b"?what\r\n"[..],
            b":12a\r\n",
            b":+1\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"+OK\rX",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bytes).is_err(), "{:?}", String::from_utf8_lossy(bytes));
        }
        assert!(matches!(parse(b"$999999999999\r\n"), Err(ProtocolError::TooLong { .. })));
    }

    #[test]
    fn answers_tags_in_order() {
        let mut codec = Resp::new();
        let mut tx = Vec::new();
        codec.encode(Request::Read { key: b"a" }, 7, &mut tx).unwrap();
        codec.encode(Request::Read { key: b"b" }, 3, &mut tx).unwrap();
        codec.encode(Request::Write { key: b"c", value: b"v", context: b"" }, 9, &mut tx).unwrap();
        codec.encode(Request::Read { key: b"d" }, 4, &mut tx).unwrap();
        let rx = b"$1\r\nx\r\n$-1\r\n+OK\r\n-ERR oops\r\n";
        // All but the last byte: the error reply is incomplete and stays.
        assert_eq!(codec.receive(&rx[..rx.len() - 1]).unwrap(), rx.len() - 11);
        assert_eq!(codec.receive(&rx[rx.len() - 11..]).unwrap(), 11);
        let replies: Vec<Reply> = std::iter::from_fn(|| codec.poll_reply()).collect();
        assert_eq!(
            replies,
            [
                Reply { tag: 7, outcome: Outcome::Found { context: vec![] } },
                Reply { tag: 3, outcome: Outcome::NotFound { context: vec![] } },
                Reply { tag: 9, outcome: Outcome::Written { context: vec![] } },
                Reply { tag: 4, outcome: Outcome::Failed { message: "ERR oops".into() } },
            ]
        );
        assert!(matches!(codec.receive(b"+OK\r\n"), Err(ProtocolError::Unexpected { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some((used, _))) = parse(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn bulk_strings_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = Vec::new();
            bulk(&mut bytes, &payload);
            prop_assert_eq!(parse(&bytes).unwrap(), Some((bytes.len(), Value::Bulk(Some(&payload[..])))));
        }
    }
}
