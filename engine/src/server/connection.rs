//! One client connection: a reader, a task per request, and a writer.
//!
//! The reader decodes frames as bytes arrive (a frame over the limit is
//! refused from its header, before its body is read) and handles each
//! request at once; a request that completes without waiting (a read of a
//! cached value) is answered into a buffer shared by everything that read
//! brought in, and one that must wait gets a task of its own, up to
//! `connection_in_flight_max` at once; past that the reader stops reading,
//! which pushes back on the client through TCP. Replies are queued as they
//! complete, in whatever order that is (they carry their request id). The
//! writer takes everything queued and sends it in one `write`, so a
//! pipelining client gets its replies coalesced.
//!
//! A frame that fails its checks gets an error reply (when its header was
//! sound enough to name a request id) and the connection is closed: after
//! a bad frame, nothing later on the stream can be trusted to be aligned.

use std::rc::Rc;
use std::task::Poll;

use futures::channel::mpsc;
use futures::future::{Either, select};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::net::TcpStream;

use holdfast_net::frame::{FrameDecoder, FrameError};
use holdfast_net::message::{ErrorCode, ErrorReply, encode_message};

use super::shard::Shard;

const READ_BUFFER_BYTES: usize = 64 << 10;

/// Puts `first` and every frame already queued behind it into `batch`, so
/// that they go out in one write.
pub(crate) fn gather(
    batch: &mut Vec<u8>,
    first: &[u8],
    queued: &mut mpsc::UnboundedReceiver<Vec<u8>>,
) {
    batch.clear();
    batch.extend_from_slice(first);
    while let Ok(more) = queued.try_recv() {
        batch.extend_from_slice(&more);
    }
}

/// Serves one connection until the client closes it, it misbehaves, or
/// the shard shuts down.
pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let (mut reader, mut writer) = stream.split();
    let (replies, mut queued) = mpsc::unbounded::<Vec<u8>>();

    let writing = glommio::spawn_local(async move {
        let mut batch = Vec::new();
        while let Some(first) = queued.next().await {
            gather(&mut batch, &first, &mut queued);
            if writer.write_all(&batch).await.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    });

    let mut decoder = FrameDecoder::new(shard.options.frame_bytes_max);
    let mut buffer = vec![0; READ_BUFFER_BYTES];
    let in_flight = Rc::new(std::cell::Cell::new(0usize));
    let limit = shard.options.connection_in_flight_max;
    let mut ready = Vec::new();
    'reading: loop {
        // Back-pressure: past the limit, stop reading until replies drain.
        while in_flight.get() >= limit {
            glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
        }
        let reading = std::pin::pin!(reader.read(&mut buffer));
        let stopping = std::pin::pin!(shard.stopping.wait());
        let count = match select(reading, stopping).await {
            Either::Left((Ok(0), _)) | Either::Left((Err(_), _)) | Either::Right(_) => break,
            Either::Left((Ok(count), _)) => count,
        };
        let mut input = &buffer[..count];
        while !input.is_empty() {
            let decoded = match decoder.decode(input) {
                Ok(decoded) => decoded,
                Err(refusal) => {
                    tracing::debug!(?peer, %refusal, "closing a connection after a bad frame");
                    if let FrameError::TooLarge { request_id, .. } = refusal {
                        let reply = ErrorReply::new(ErrorCode::FrameTooLarge, refusal.to_string());
                        let _ = replies.unbounded_send(encode_message(request_id, &reply));
                    }
                    break 'reading;
                }
            };
            input = &input[decoded.consumed..];
            let Some(frame) = decoded.frame else { continue };
            shard.requests.set(shard.requests.get() + 1);
            // Most reads complete without waiting (their value is cached):
            // answer those here, into one buffer for the whole read, and
            // give a task only to requests that must wait (for the disk,
            // a group commit, another shard).
            let mut handling = Box::pin(shard.clone().handle_owned(frame));
            if let Poll::Ready(reply) = futures::poll!(handling.as_mut()) {
                ready.extend_from_slice(&reply);
                continue;
            }
            in_flight.set(in_flight.get() + 1);
            shard.in_flight.set(shard.in_flight.get() + 1);
            let (shard, replies, in_flight) = (shard.clone(), replies.clone(), in_flight.clone());
            glommio::spawn_local(async move {
                let reply = handling.await;
                let _ = replies.unbounded_send(reply);
                in_flight.set(in_flight.get() - 1);
                shard.in_flight.set(shard.in_flight.get() - 1);
            })
            .detach();
        }
        if !ready.is_empty() {
            let _ = replies.unbounded_send(std::mem::take(&mut ready));
        }
    }
    // Let the requests still running answer before the writer stops.
    while in_flight.get() > 0 {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    drop(replies);
    writing.await;
}
