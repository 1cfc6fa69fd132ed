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

use std::io;
use std::rc::Rc;
use std::task::Poll;

use futures::channel::mpsc;
use futures::future::{Either, select};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::net::TcpStream;

use holdfast_net::frame::{FrameDecoder, FrameError};
use holdfast_net::message::{ErrorCode, ErrorReply, encode_message};

use super::shard::Shard;
use super::uring;

const READ_BUFFER_BYTES: usize = 64 << 10;
/// Reply bytes queued on a connection before its reader stops reading (a
/// client that pipelines requests but does not read its replies).
const REPLY_BACKLOG_MAX: usize = 8 << 20;

/// What a connection's bytes travel over: the shard's own ring
/// ([`uring::Socket`]) or, as the fallback, glommio's sockets.
pub(crate) trait Transport {
    type Replies: Replies;
    /// Reads what has arrived, waiting if nothing has; 0 at the end.
    async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize>;
    /// A handle request tasks queue their replies on.
    fn replies(&self) -> Self::Replies;
    /// Sends what is queued, then closes.
    async fn close(self);
}

/// Queues replies on a connection; queued replies go out together.
pub(crate) trait Replies: Clone + 'static {
    fn send(&self, reply: Vec<u8>);
    /// Bytes queued and not yet sent (0 where unknown).
    fn backlog(&self) -> usize;
}

impl Transport for uring::Socket {
    type Replies = uring::Sender;

    async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        uring::Socket::read(self, buffer).await
    }

    fn replies(&self) -> uring::Sender {
        self.sender()
    }

    async fn close(self) {
        // The ring flushes what is queued, then shuts the socket down.
        drop(self);
    }
}

impl Replies for uring::Sender {
    fn send(&self, reply: Vec<u8>) {
        uring::Sender::send(self, &reply);
    }

    fn backlog(&self) -> usize {
        uring::Sender::backlog(self)
    }
}

/// glommio's socket, read by the connection's task and written by a
/// writer task that gathers every reply queued into one `write`.
pub(crate) struct GlommioStream {
    reader: futures::io::ReadHalf<TcpStream>,
    replies: mpsc::UnboundedSender<Vec<u8>>,
    writing: glommio::task::JoinHandle<()>,
}

impl std::fmt::Debug for GlommioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlommioStream").finish_non_exhaustive()
    }
}

impl GlommioStream {
    pub(crate) fn new(stream: TcpStream) -> GlommioStream {
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = stream.split();
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
        })
        .detach();
        GlommioStream { reader, replies, writing }
    }
}

impl Transport for GlommioStream {
    type Replies = mpsc::UnboundedSender<Vec<u8>>;

    async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buffer).await
    }

    fn replies(&self) -> Self::Replies {
        self.replies.clone()
    }

    async fn close(self) {
        drop(self.replies);
        self.writing.await;
    }
}

impl Replies for mpsc::UnboundedSender<Vec<u8>> {
    fn send(&self, reply: Vec<u8>) {
        let _ = self.unbounded_send(reply);
    }

    fn backlog(&self) -> usize {
        0
    }
}

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
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: impl Transport) {
    let replies = stream.replies();
    let mut decoder = FrameDecoder::new(shard.options.frame_bytes_max);
    let mut buffer = vec![0; READ_BUFFER_BYTES];
    let in_flight = Rc::new(std::cell::Cell::new(0usize));
    let limit = shard.options.connection_in_flight_max;
    let mut ready = Vec::new();
    'reading: loop {
        // Back-pressure: past the limit, stop reading until replies drain.
        while in_flight.get() >= limit || replies.backlog() > REPLY_BACKLOG_MAX {
            glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
        }
        let count = {
            let reading = std::pin::pin!(stream.read(&mut buffer));
            let stopping = std::pin::pin!(shard.stopping.wait());
            match select(reading, stopping).await {
                Either::Left((Ok(0), _)) | Either::Left((Err(_), _)) | Either::Right(_) => break,
                Either::Left((Ok(count), _)) => count,
            }
        };
        let mut input = &buffer[..count];
        while !input.is_empty() {
            let decoded = match decoder.decode(input) {
                Ok(decoded) => decoded,
                Err(refusal) => {
                    tracing::debug!(%refusal, "closing a connection after a bad frame");
                    if let FrameError::TooLarge { request_id, .. } = refusal {
                        let reply = ErrorReply::new(ErrorCode::FrameTooLarge, refusal.to_string());
                        replies.send(encode_message(request_id, &reply));
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
                replies.send(reply);
                in_flight.set(in_flight.get() - 1);
                shard.in_flight.set(shard.in_flight.get() - 1);
            })
            .detach();
        }
        if !ready.is_empty() {
            replies.send(std::mem::take(&mut ready));
        }
    }
    // Let the requests still running answer before the connection closes.
    while in_flight.get() > 0 {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    drop(replies);
    stream.close().await;
}
