//! The client socket path on a ring of the shard's own.
//!
//! # Why
//!
//! glommio serves a socket by arming a poll on its ring and then calling
//! `recv`/`send` itself. Its rings are set up without
//! `IORING_SETUP_COOP_TASKRUN`, so every socket event the kernel completes
//! while the shard is running interrupts the shard's core with an IPI to
//! run io_uring's task work. Profiled on the 2-core machine, a one-shard
//! node serving 50 unpipelined clients took about 0.6 reschedule IPIs per
//! request (Redis, on epoll, none), and 40% of its samples were in that
//! interrupt's exit path: the node reached 0.54x of Redis's reads per
//! second.
//!
//! # What
//!
//! Each shard drives its client sockets through its own io_uring ring,
//! set up `SINGLE_ISSUER | DEFER_TASKRUN`: completions are run only when
//! the shard asks for them, so the kernel never interrupts it.
//!
//! - The listener takes one multishot accept; each connection one
//!   multishot receive into a ring of provided buffers (the shard's, shared
//!   by its connections). A buffer is copied into its connection's inbound
//!   bytes and handed back at once, so the ring is never short for long.
//! - Sends are queued per connection and go out once per loop turn, one
//!   `send` per connection for everything queued since the last one.
//! - One `io_uring_enter` per turn submits everything and collects every
//!   completion.
//!
//! # How it fits in the shard's executor
//!
//! The [`Driver`] is a glommio task. While there is work it runs one turn
//! and yields, so the shard's other tasks (requests, the store's I/O on
//! glommio's rings, timers) interleave. When a turn finds nothing to do it
//! sleeps on two things: an eventfd registered with the ring (the kernel
//! signals it when completions start to queue), read through glommio so
//! the executor parks as usual, and a waker that a connection's task wakes
//! when it queues a reply or closes.
//!
//! The rest of the node sees [`Socket`] (read bytes, queue bytes, close)
//! behind the connection's transport seam (`connection::Transport`);
//! glommio's own sockets remain behind the same seam as the fallback for
//! kernels without `DEFER_TASKRUN` (6.1) or provided-buffer rings (5.19).
//!
//! # Safety
//!
//! The kernel writes into the provided buffers and reads from each
//! connection's send buffer while an operation is in flight. So a send
//! buffer is never touched until its completion arrives, a connection's
//! slot (and its file descriptor) is freed only once neither its receive
//! nor a send is in flight, and the provided buffers are leaked, never
//! freed, if the ring goes away with operations still in flight.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// Submission queue entries; a turn that needs more submits early.
const SUBMISSION_ENTRIES: u32 = 1024;
/// Completion queue entries (the kernel keeps overflow, and the next turn
/// collects it).
const COMPLETION_ENTRIES: u32 = 8192;
/// Bytes per provided buffer.
const BUFFER_BYTES: usize = 16 << 10;
/// Provided buffers per shard (a power of two).
const BUFFERS: u16 = 256;
const BUFFER_GROUP: u16 = 0;
/// Receiving pauses once this many bytes wait unread on a connection, and
/// resumes below half of it.
const INBOUND_MAX: usize = 1 << 20;
/// `IORING_ENTER_GETEVENTS`: run deferred completions and post them.
const ENTER_GETEVENTS: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Receive = 2,
    Send = 3,
    Cancel = 4,
}

impl Op {
    fn of(user_data: u64) -> Option<Op> {
        match user_data >> 56 {
            1 => Some(Op::Accept),
            2 => Some(Op::Receive),
            3 => Some(Op::Send),
            4 => Some(Op::Cancel),
            _ => None,
        }
    }
}

/// An operation's tag: its kind, and the slot and generation of the
/// connection it belongs to (so a completion can never be taken for a later
/// connection in the same slot).
fn user_data(op: Op, slot: u32, generation: u32) -> u64 {
    (op as u64) << 56 | (u64::from(generation) & 0xff_ffff) << 32 | u64::from(slot)
}

fn slot_of(user_data: u64) -> (u32, u32) {
    (user_data as u32, ((user_data >> 32) & 0xff_ffff) as u32)
}

/// A shard's ring and everything in flight on it.
pub(crate) struct Uring {
    state: RefCell<State>,
    /// The driver's waker while it sleeps.
    driver: Cell<Option<Waker>>,
    eventfd: OwnedFd,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").finish_non_exhaustive()
    }
}

struct State {
    ring: IoUring,
    buffers: ProvidedBuffers,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Connections with something for the next turn to do.
    dirty: Vec<u32>,
    listener: Option<Listener>,
    /// Wakers to wake once the state is no longer borrowed.
    wake: Vec<Waker>,
}

struct Slot {
    generation: u32,
    connection: Option<Connection>,
}

struct Listener {
    fd: OwnedFd,
    accepted: VecDeque<io::Result<OwnedFd>>,
    waker: Option<Waker>,
    armed: bool,
    closed: bool,
}

impl Listener {
    /// The accept is re-armed once everything it accepted was taken (so a
    /// failing accept, say out of descriptors, waits for the acceptor).
    fn wants_arming(&self) -> bool {
        !self.closed && !self.armed && self.accepted.is_empty()
    }
}

#[derive(Default)]
enum Reading {
    #[default]
    Open,
    Ended,
    Failed(i32),
}

struct Connection {
    fd: OwnedFd,
    inbound: Vec<u8>,
    /// Bytes of `inbound` already read.
    read: usize,
    reader: Option<Waker>,
    reading: Reading,
    receive_armed: bool,
    /// A cancel is out for the receive (too much unread): not re-armed
    /// until the reader catches up.
    paused: bool,
    /// Queued by the node, not yet handed to the kernel.
    outbound: Vec<u8>,
    /// Handed to the kernel; untouched until the send completes.
    sending: Vec<u8>,
    sent: usize,
    send_in_flight: bool,
    /// A send failed: the peer is gone, later bytes are dropped.
    broken: bool,
    /// The node is done with it: flush, shut down, free.
    closing: bool,
    shut: bool,
    queued: bool,
}

impl Connection {
    fn new(fd: OwnedFd) -> Connection {
        Connection {
            fd,
            inbound: Vec::new(),
            read: 0,
            reader: None,
            reading: Reading::Open,
            receive_armed: false,
            paused: false,
            outbound: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            send_in_flight: false,
            broken: false,
            closing: false,
            shut: false,
            queued: false,
        }
    }

    fn unread(&self) -> usize {
        self.inbound.len() - self.read
    }
}

/// The shard's provided buffers: a buffer ring registered with the kernel
/// (`IORING_REGISTER_PBUF_RING`) and the memory it points into.
struct ProvidedBuffers {
    entries: *mut types::BufRingEntry,
    entries_layout: std::alloc::Layout,
    memory: *mut u8,
    memory_layout: std::alloc::Layout,
    tail: u16,
    /// Set when the ring is dropped with operations in flight: the kernel
    /// may still write into the memory, so it is never freed.
    leak: bool,
}

impl ProvidedBuffers {
    fn new(ring: &IoUring) -> io::Result<ProvidedBuffers> {
        let entries_layout = std::alloc::Layout::from_size_align(
            usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let memory_layout =
            std::alloc::Layout::from_size_align(usize::from(BUFFERS) * BUFFER_BYTES, 4096)
                .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let entries =
            unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast::<types::BufRingEntry>();
        let memory = unsafe { std::alloc::alloc(memory_layout) };
        if entries.is_null() || memory.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "provided buffers"));
        }
        let mut buffers = ProvidedBuffers {
            entries,
            entries_layout,
            memory,
            memory_layout,
            tail: 0,
            leak: false,
        };
        // SAFETY: `entries` is page-aligned, zeroed, BUFFERS entries long,
        // and lives until the ring is gone (see Drop).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        for id in 0..BUFFERS {
            buffers.push(id);
        }
        buffers.publish();
        Ok(buffers)
    }

    fn buffer(&self, id: u16) -> &[u8] {
        // SAFETY: `id < BUFFERS` (checked by the caller), and the kernel
        // has finished with a buffer it reported in a completion.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.add(usize::from(id) * BUFFER_BYTES),
                BUFFER_BYTES,
            )
        }
    }

    /// Puts buffer `id` back in the ring (seen by the kernel at `publish`).
    fn push(&mut self, id: u16) {
        let index = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: `index < BUFFERS`; the kernel reads entries only up to
        // the published tail, and this one is past it.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(self.memory.add(usize::from(id) * BUFFER_BYTES) as u64);
            entry.set_len(BUFFER_BYTES as u32);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry, which is valid;
        // the kernel reads it with acquire ordering.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with these layouts; the ring is gone
        // and nothing was in flight.
        unsafe {
            std::alloc::dealloc(self.entries.cast(), self.entries_layout);
            std::alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let in_flight = self.listener.as_ref().is_some_and(|listener| listener.armed)
            || self.slots.iter().any(|slot| {
                slot.connection
                    .as_ref()
                    .is_some_and(|connection| connection.receive_armed || connection.send_in_flight)
            });
        if in_flight {
            self.buffers.leak = true;
            for slot in &mut self.slots {
                if let Some(connection) = slot.connection.take() {
                    std::mem::forget(connection.sending);
                }
            }
        }
        // `ring` is dropped before `buffers` (field order), which closes it.
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

fn set_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A listening socket on `addr` that shares the port with the node's other
/// shards (`SO_REUSEPORT`: the kernel spreads connections over them).
fn listen(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall; the result is checked and owned at once.
    let fd = check(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let (storage, length) = socket_address(addr);
    // SAFETY: `storage` holds a valid address of `length` bytes.
    check(unsafe {
        libc::bind(fd.as_raw_fd(), (&storage as *const libc::sockaddr_storage).cast(), length)
    })?;
    // SAFETY: plain syscall on a socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    Ok(fd)
}

fn socket_address(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}

impl State {
    /// Queues `entry`, submitting what is queued first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry's buffers stay valid until its completion
            // (see the module's safety notes).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                // The completion queue is full: make room, then go on.
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                    ) =>
                {
                    self.reap();
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn connection(&mut self, slot: u32, generation: u32) -> Option<&mut Connection> {
        let slot = self.slots.get_mut(slot as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.connection.as_mut()
    }

    fn mark(&mut self, slot: u32) {
        if let Some(connection) =
            self.slots.get_mut(slot as usize).and_then(|s| s.connection.as_mut())
            && !connection.queued
        {
            connection.queued = true;
            self.dirty.push(slot);
        }
    }

    /// Everything the connections and the listener asked for since the
    /// last turn, as submissions.
    fn prepare(&mut self) -> io::Result<()> {
        if let Some(listener) = &mut self.listener {
            if listener.closed {
                if !listener.armed {
                    self.listener = None;
                }
            } else if listener.wants_arming() {
                listener.armed = true;
                let entry = opcode::AcceptMulti::new(types::Fd(listener.fd.as_raw_fd()))
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(user_data(Op::Accept, 0, 0));
                self.push(entry)?;
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            let slot = &mut self.slots[index as usize];
            let generation = slot.generation;
            let Some(connection) = slot.connection.as_mut() else { continue };
            connection.queued = false;
            let fd = connection.fd.as_raw_fd();
            let mut entries: [Option<squeue::Entry>; 2] = [None, None];
            if !connection.send_in_flight && !connection.outbound.is_empty() && !connection.broken {
                std::mem::swap(&mut connection.outbound, &mut connection.sending);
                connection.outbound.clear();
                connection.sent = 0;
                connection.send_in_flight = true;
                entries[0] = Some(send_entry(fd, &connection.sending, index, generation));
            }
            if connection.closing
                && !connection.shut
                && !connection.send_in_flight
                && (connection.outbound.is_empty() || connection.broken)
            {
                connection.shut = true;
                // SAFETY: plain syscall on a socket the slot owns. It ends
                // the receive (which then completes with 0).
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            if connection.paused
                && !connection.receive_armed
                && connection.unread() < INBOUND_MAX / 2
            {
                connection.paused = false;
            }
            let receive_wanted = matches!(connection.reading, Reading::Open)
                && !connection.paused
                && !connection.shut;
            if receive_wanted && !connection.receive_armed {
                connection.receive_armed = true;
                entries[1] = Some(
                    opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
                        .build()
                        .user_data(user_data(Op::Receive, index, generation)),
                );
            }
            let free = connection.closing
                && connection.shut
                && !connection.receive_armed
                && !connection.send_in_flight;
            if free {
                slot.connection = None;
                slot.generation = slot.generation.wrapping_add(1) & 0xff_ffff;
                self.free.push(index);
            }
            for entry in entries.into_iter().flatten() {
                self.push(entry)?;
            }
        }
        Ok(())
    }

    /// Handles every completion waiting; returns how many there were.
    fn reap(&mut self) -> usize {
        let mut count = 0;
        let mut returned = false;
        loop {
            let Some(entry) = self.ring.completion().next() else { break };
            count += 1;
            let (result, flags, tag) = (entry.result(), entry.flags(), entry.user_data());
            match Op::of(tag) {
                Some(Op::Accept) => self.on_accept(result, flags),
                Some(Op::Receive) => {
                    returned |= self.on_receive(tag, result, flags);
                }
                Some(Op::Send) => self.on_send(tag, result),
                Some(Op::Cancel) | None => {}
            }
        }
        if returned {
            self.buffers.publish();
        }
        count
    }

    fn on_accept(&mut self, result: i32, flags: u32) {
        let Some(listener) = &mut self.listener else {
            if result >= 0 {
                // SAFETY: the kernel made this descriptor for us.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            return;
        };
        if !cqueue::more(flags) {
            listener.armed = false;
        }
        if result >= 0 {
            // SAFETY: the kernel made this descriptor for us.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            if listener.closed {
                return;
            }
            listener.accepted.push_back(Ok(fd));
        } else if result != -libc::ECANCELED && !listener.closed {
            listener.accepted.push_back(Err(errno(-result)));
        }
        if let Some(waker) = listener.waker.take() {
            self.wake.push(waker);
        }
    }

    /// Returns whether a provided buffer went back to the ring.
    fn on_receive(&mut self, tag: u64, result: i32, flags: u32) -> bool {
        let (index, generation) = slot_of(tag);
        let buffer = cqueue::buffer_select(flags).filter(|&id| id < BUFFERS);
        let more = cqueue::more(flags);
        let State { slots, buffers, ring, wake, .. } = self;
        let connection = slots
            .get_mut(index as usize)
            .filter(|slot| slot.generation == generation)
            .and_then(|slot| slot.connection.as_mut());
        let mut mark = false;
        if let Some(connection) = connection {
            match buffer {
                Some(id) if result > 0 => {
                    let length = (result as usize).min(BUFFER_BYTES);
                    connection.inbound.extend_from_slice(&buffers.buffer(id)[..length]);
                    if more && !connection.paused && connection.unread() > INBOUND_MAX {
                        connection.paused = true;
                        let cancel = opcode::AsyncCancel::new(tag).build().user_data(user_data(
                            Op::Cancel,
                            index,
                            generation,
                        ));
                        // A full queue only delays the pause to a later
                        // completion. SAFETY: a cancel carries no buffers.
                        let _ = unsafe { ring.submission().push(&cancel) };
                    }
                }
                _ if result == 0 => connection.reading = Reading::Ended,
                _ if result < 0 && result != -libc::ENOBUFS && result != -libc::ECANCELED => {
                    connection.reading = Reading::Failed(-result);
                }
                _ => {}
            }
            if !more {
                connection.receive_armed = false;
                mark = true;
            }
            if let Some(waker) = connection.reader.take() {
                wake.push(waker);
            }
        }
        if mark {
            self.mark(index);
        }
        if let Some(id) = buffer {
            self.buffers.push(id);
            return true;
        }
        false
    }

    fn on_send(&mut self, tag: u64, result: i32) {
        let (index, generation) = slot_of(tag);
        let Some(connection) = self.connection(index, generation) else { return };
        let mut resend = None;
        if result < 0 {
            connection.broken = true;
            connection.send_in_flight = false;
            connection.sending.clear();
            connection.sent = 0;
            connection.outbound.clear();
        } else {
            connection.sent += result as usize;
            if connection.sent < connection.sending.len() {
                resend = Some(send_entry(
                    connection.fd.as_raw_fd(),
                    &connection.sending[connection.sent..],
                    index,
                    generation,
                ));
            } else {
                connection.send_in_flight = false;
                connection.sending.clear();
                connection.sent = 0;
            }
        }
        match resend {
            // A resend that cannot be queued now is lost with the
            // connection's stream alignment, so the connection is closed.
            Some(entry) => {
                if self.push(entry).is_err()
                    && let Some(connection) = self.connection(index, generation)
                {
                    connection.send_in_flight = false;
                    connection.broken = true;
                    self.mark(index);
                }
            }
            None => self.mark(index),
        }
    }

    fn has_work(&mut self) -> bool {
        // A submission queued outside a turn (a cancel) is work too.
        !self.dirty.is_empty()
            || !self.ring.submission().is_empty()
            || self.listener.as_ref().is_some_and(|listener| {
                listener.wants_arming() || (listener.closed && !listener.armed)
            })
    }
}

fn send_entry(fd: RawFd, bytes: &[u8], slot: u32, generation: u32) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len().min(u32::MAX as usize) as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(Op::Send, slot, generation))
}

impl Uring {
    /// A ring for one shard, or an error on a kernel without what it needs
    /// (the caller falls back to glommio's sockets).
    pub(crate) fn new() -> io::Result<Rc<Uring>> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(COMPLETION_ENTRIES)
            .setup_submit_all()
            .build(SUBMISSION_ENTRIES)?;
        // SAFETY: plain syscall; the result is checked and owned at once.
        let eventfd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
        // SAFETY: just created, owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(eventfd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let buffers = ProvidedBuffers::new(&ring)?;
        Ok(Rc::new(Uring {
            state: RefCell::new(State {
                ring,
                buffers,
                slots: Vec::new(),
                free: Vec::new(),
                dirty: Vec::new(),
                listener: None,
                wake: Vec::new(),
            }),
            driver: Cell::new(None),
            eventfd,
        }))
    }

    fn wake_driver(&self) {
        if let Some(waker) = self.driver.take() {
            waker.wake();
        }
    }

    /// Starts accepting connections on `addr`.
    pub(crate) fn listen(&self, addr: SocketAddr) -> io::Result<()> {
        let fd = listen(addr)?;
        self.state.borrow_mut().listener = Some(Listener {
            fd,
            accepted: VecDeque::new(),
            waker: None,
            armed: false,
            closed: false,
        });
        self.wake_driver();
        Ok(())
    }

    /// Stops accepting: the port is free for others once the accept's
    /// cancellation completes (at the next turn).
    pub(crate) fn stop_listening(&self) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let Some(listener) = &mut state.listener else { return Ok(()) };
        listener.closed = true;
        listener.accepted.clear();
        if listener.armed {
            let cancel = opcode::AsyncCancel::new(user_data(Op::Accept, 0, 0))
                .build()
                .user_data(user_data(Op::Cancel, 0, 0));
            state.push(cancel)?;
        } else {
            state.listener = None;
        }
        drop(state);
        self.wake_driver();
        Ok(())
    }

    /// The next connection accepted.
    pub(crate) async fn accept(self: &Rc<Self>) -> io::Result<Socket> {
        let fd = poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            let Some(listener) = &mut state.listener else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "not listening",
                )));
            };
            match listener.accepted.pop_front() {
                Some(accepted) => {
                    if listener.wants_arming() {
                        drop(state);
                        self.wake_driver();
                    }
                    Poll::Ready(accepted)
                }
                None => {
                    listener.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        let _ = set_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        let mut state = self.state.borrow_mut();
        let index = match state.free.pop() {
            Some(index) => index,
            None => {
                state.slots.push(Slot { generation: 0, connection: None });
                (state.slots.len() - 1) as u32
            }
        };
        let slot = &mut state.slots[index as usize];
        slot.connection = Some(Connection::new(fd));
        let generation = slot.generation;
        state.mark(index);
        drop(state);
        self.wake_driver();
        Ok(Socket { uring: self.clone(), slot: index, generation })
    }

    /// Connections open or still closing.
    pub(crate) fn connections(&self) -> usize {
        self.state.borrow().slots.iter().filter(|slot| slot.connection.is_some()).count()
    }

    /// Runs the ring until `done` says so and nothing is left open.
    pub(crate) async fn drive(self: Rc<Self>, done: impl Fn() -> bool) -> io::Result<()> {
        let eventfd = Rc::new(eventfd_file(&self.eventfd)?);
        let mut woken = Box::pin(read_eventfd(eventfd.clone()));
        loop {
            let worked = match self.turn() {
                Ok(worked) => worked,
                Err(error) => {
                    // Never seen; a ring that keeps failing must not spin.
                    tracing::error!(%error, "client socket ring turn failed");
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    true
                }
            };
            if done() && self.connections() == 0 && self.state.borrow().listener.is_none() {
                // Complete the read glommio has in flight on the eventfd, so
                // nothing of this ring outlives it.
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live buffer.
                unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
                woken.await;
                return Ok(());
            }
            if worked {
                glommio::executor().yield_now().await;
                continue;
            }
            let eventfd_fired = poll_fn(|cx| {
                if let Poll::Ready(()) = woken.as_mut().poll(cx) {
                    return Poll::Ready(true);
                }
                if self.state.borrow_mut().has_work() {
                    return Poll::Ready(false);
                }
                self.driver.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            if eventfd_fired {
                woken = Box::pin(read_eventfd(eventfd.clone()));
            }
        }
    }

    /// One turn: submit what is asked for, run the kernel's deferred
    /// completions, handle them. Returns whether anything happened.
    fn turn(&self) -> io::Result<bool> {
        let mut state = self.state.borrow_mut();
        state.prepare()?;
        let submitting = state.ring.submission().len();
        let taskrun = state.ring.submission().taskrun() || state.ring.submission().cq_overflow();
        if submitting > 0 || taskrun {
            // SAFETY: no signal mask or extra arguments are passed.
            let entered = unsafe {
                state.ring.submitter().enter::<libc::sigset_t>(
                    submitting as u32,
                    0,
                    ENTER_GETEVENTS,
                    None,
                )
            };
            match entered {
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(error) => return Err(error),
            }
        }
        let completed = state.reap();
        let wake = std::mem::take(&mut state.wake);
        drop(state);
        for waker in wake {
            waker.wake();
        }
        Ok(submitting > 0 || completed > 0)
    }
}

/// The eventfd, as a file glommio reads through its own ring (so the
/// executor parks on it as on anything else). glommio closes the duplicate.
fn eventfd_file(eventfd: &OwnedFd) -> io::Result<glommio::io::BufferedFile> {
    // SAFETY: plain syscall; the duplicate is owned by the BufferedFile.
    let duplicate = check(unsafe { libc::dup(eventfd.as_raw_fd()) })?;
    // SAFETY: `duplicate` is a fresh descriptor nothing else owns.
    Ok(unsafe { glommio::io::BufferedFile::from_raw_fd(duplicate) })
}

async fn read_eventfd(eventfd: Rc<glommio::io::BufferedFile>) {
    if eventfd.read_at(0, 8).await.is_err() {
        // Should never happen; do not spin if it does.
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// One client connection on a shard's ring. Dropping it flushes what is
/// queued, shuts the socket down and frees it.
#[derive(Debug)]
pub(crate) struct Socket {
    uring: Rc<Uring>,
    slot: u32,
    generation: u32,
}

impl Socket {
    /// Reads what has arrived into `buffer`, waiting for something if
    /// nothing has; 0 at the end of the stream.
    pub(crate) async fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut state = self.uring.state.borrow_mut();
            let Some(connection) = state.connection(self.slot, self.generation) else {
                return Poll::Ready(Ok(0));
            };
            if connection.unread() > 0 {
                let count = connection.unread().min(buffer.len());
                buffer[..count]
                    .copy_from_slice(&connection.inbound[connection.read..connection.read + count]);
                connection.read += count;
                if connection.read == connection.inbound.len() {
                    connection.inbound.clear();
                    connection.read = 0;
                }
                if connection.paused && connection.unread() < INBOUND_MAX / 2 {
                    // Receiving resumes once the cancelled receive has ended.
                    state.mark(self.slot);
                    drop(state);
                    self.uring.wake_driver();
                }
                return Poll::Ready(Ok(count));
            }
            match connection.reading {
                Reading::Ended => Poll::Ready(Ok(0)),
                Reading::Failed(code) => Poll::Ready(Err(errno(code))),
                Reading::Open => {
                    connection.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// A handle that queues bytes on this connection.
    pub(crate) fn sender(&self) -> Sender {
        Sender { uring: self.uring.clone(), slot: self.slot, generation: self.generation }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let mut state = self.uring.state.borrow_mut();
        if let Some(connection) = state.connection(self.slot, self.generation) {
            connection.closing = true;
            connection.reader = None;
            state.mark(self.slot);
        }
        drop(state);
        self.uring.wake_driver();
    }
}

/// Queues bytes on a connection; they go out at the ring's next turn,
/// together with everything else queued on it by then.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    uring: Rc<Uring>,
    slot: u32,
    generation: u32,
}

impl Sender {
    pub(crate) fn send(&self, bytes: &[u8]) {
        let mut state = self.uring.state.borrow_mut();
        let Some(connection) = state.connection(self.slot, self.generation) else { return };
        if connection.broken || connection.shut {
            return;
        }
        connection.outbound.extend_from_slice(bytes);
        state.mark(self.slot);
        drop(state);
        self.uring.wake_driver();
    }

    /// Bytes queued or being sent.
    pub(crate) fn backlog(&self) -> usize {
        let mut state = self.uring.state.borrow_mut();
        state.connection(self.slot, self.generation).map_or(0, |connection| {
            connection.outbound.len() + connection.sending.len().saturating_sub(connection.sent)
        })
    }
}
