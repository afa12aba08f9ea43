//! `sockeye echo`'s default engine for plain `ws://` on one thread: every connection on
//! one `mio` poll, driven straight over the sans-I/O protocol core
//! ([`sockeye::proto::Connection`]) and its handshake functions, the way an epoll server
//! in C is written. The per-message cost is then the WebSocket work and the system calls,
//! without an async runtime's task polls and wakers or the tokio layer's locking
//! (`--engine tokio` serves with the library's [`sockeye::WebSocketServer`] instead;
//! BENCHMARKS.md compares the two).
//!
//! It keeps what the tokio server does for `sockeye echo`, through the same sans-I/O
//! handshake: the request head read within `handshake_timeout` and `head_limits`
//! ([`ServerHandshake`], answered 408 or the error's status otherwise) and decided on by
//! the server policy (`ServerPolicy::decide`, with the subset of the configuration the
//! CLI has: the first offered subprotocol, permessage-deflate when enabled, no hooks),
//! frames relayed piece
//! by piece, reading paused while the peer does not take what is queued for it (the
//! send queue's high-water mark), the close handshake and its timeout, and no read
//! buffer held by an idle connection (one spare buffer for the loop). Beyond it: each
//! read's echo is written before the next read, a frame that arrives whole goes back
//! from the read buffer without a copy (`Connection::read_echo`; the buffer returns to
//! the spare once that is written), and accepting resumes shortly after an error such
//! as running out of descriptors (the listener raises no new event for connections
//! already waiting).

use std::collections::BTreeSet;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use sockeye::proto::bytes::{Buf, BytesMut};
use sockeye::proto::handshake::policy::{Accept, Decision, Refusal, ServerPolicy};
use sockeye::proto::handshake::server::ServerHandshake;
use sockeye::proto::{Config, Connection, DataKind, Deflate, Message, Role};
use sockeye::{DeflateConfig, HeadLimits};

use super::Echo;
use crate::socket::{recv, want_writable};

/// The smallest room offered to a read, and the largest.
const READ_MIN: usize = 64 * 1024;
const READ_MAX: usize = 4 * 1024 * 1024;
/// A read buffer grown past this (a large frame) is freed when idle, not kept as spare.
const SPARE_MAX: usize = 256 * 1024;
/// Time a refusal gets to be written before the connection is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait before accepting again after an error such as EMFILE.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// The listener's token; connections use their slot index.
const LISTENER: Token = Token(usize::MAX);

/// What the loop serves with.
pub struct Settings {
    pub websocket: Arc<Config>,
    pub deflate: Option<DeflateConfig>,
    pub handshake_timeout: Duration,
    pub head_limits: HeadLimits,
    /// The kernel's send buffer per connection (`SO_SNDBUF`); `None`: its own sizing.
    pub send_buffer: Option<usize>,
}

impl Settings {
    /// The server policy of the loop: the subset of `ServerConfig` the CLI has
    /// (permessage-deflate; no path, no hooks).
    fn policy(&self) -> ServerPolicy<'_> {
        ServerPolicy {
            per_message_deflate: self.deflate.as_ref(),
            ..ServerPolicy::default()
        }
    }
}

/// Binds `addr`; the listener, to [`serve`] after announcing its address.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Echoes on every connection `listener` accepts, until an I/O error of the poll itself.
pub fn serve(listener: std::net::TcpListener, settings: Settings) -> io::Result<()> {
    let mut listener = mio::net::TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut server = Server {
        poll,
        settings,
        clients: Vec::new(),
        free: Vec::new(),
        timers: BTreeSet::new(),
        spare: BytesMut::new(),
        accept_retry: None,
    };
    let mut events = Events::with_capacity(1024);
    loop {
        let next = server.timers.first().map(|&(at, _)| at);
        let next = match (next, server.accept_retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = server.poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => server.accept(&listener),
                Token(slot) => server.drive(slot, event.is_writable()),
            }
        }
        server.fire_timers();
        if server.accept_retry.is_some_and(|at| at <= Instant::now()) {
            server.accept_retry = None;
            server.accept(&listener);
        }
    }
}

/// One connection.
struct Client {
    io: mio::net::TcpStream,
    phase: Phase,
    /// Bytes read and not yet consumed; empty (and freed) between reads when idle.
    input: BytesMut,
    /// Bytes to write before anything the protocol queues: the 101 or a refusal.
    out: BytesMut,
    /// Registered for writable events too (a write is waiting for room).
    write_wait: bool,
    /// Reading stopped at the send queue's high-water mark; resumes once it drains.
    backpressured: bool,
    /// Shut down for writing: the connection failed, its close frame is written, and
    /// what the peer still sends is read and discarded (`Connection::should_drain`).
    write_shut: bool,
    /// The deadline this connection has in the timer heap, if any.
    scheduled: Option<Instant>,
}

enum Phase {
    /// Reading the request head, until its deadline.
    Handshake(ServerHandshake),
    /// Writing a refusal, then closing (dropped at the deadline if the peer does not read).
    Refusing { deadline: Instant },
    /// Upgraded.
    Open { conn: Connection, echo: Echo },
}

struct Server {
    poll: Poll,
    settings: Settings,
    /// Boxed: growing the table copies a pointer per connection, and an idle
    /// connection costs one allocation of its size class.
    clients: Vec<Option<Box<Client>>>,
    /// Free slots in `clients`.
    free: Vec<usize>,
    /// Deadlines: (when, slot), one per connection that has one (`Client::scheduled`),
    /// taken out when it moves or the connection ends: no stale entries pile up.
    timers: BTreeSet<(Instant, usize)>,
    /// The read buffer lent to whichever connection reads.
    spare: BytesMut,
    /// When to try accepting again after an error (out of descriptors, say): the
    /// listener raises no new edge for connections already waiting.
    accept_retry: Option<Instant>,
}

/// What to do with a connection after driving it.
enum Verdict {
    Keep,
    Close,
}

impl Server {
    fn accept(&mut self, listener: &mio::net::TcpListener) {
        loop {
            let (mut io, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection reset before it was accepted: the next one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                // Out of descriptors or memory: try again shortly.
                Err(_) => {
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            let _ = io.set_nodelay(true);
            if let Some(size) = self.settings.send_buffer {
                let _ = socket2::SockRef::from(&io).set_send_buffer_size(size);
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.clients.push(None);
                self.clients.len() - 1
            });
            if self
                .poll
                .registry()
                .register(&mut io, Token(slot), Interest::READABLE)
                .is_err()
            {
                self.free.push(slot);
                continue;
            }
            let settings = &self.settings;
            let reading = ServerHandshake::new(
                Instant::now(),
                settings.handshake_timeout,
                settings.head_limits,
            );
            self.clients[slot] = Some(Box::new(Client {
                io,
                phase: Phase::Handshake(reading),
                input: BytesMut::new(),
                out: BytesMut::new(),
                write_wait: false,
                backpressured: false,
                write_shut: false,
                scheduled: None,
            }));
            // The request may already be there.
            self.drive(slot, false);
        }
    }

    /// Reads, echoes and writes what the connection in `slot` has ready.
    fn drive(&mut self, slot: usize, writable: bool) {
        let Some(mut client) = self.clients.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let verdict = self.step(&mut client, writable);
        self.settle(slot, client, verdict);
    }

    fn step(&mut self, client: &mut Client, writable: bool) -> Verdict {
        if writable || client.write_wait {
            if let Err(()) = flush(client) {
                return Verdict::Close;
            }
        }
        loop {
            let verdict = match client.phase {
                Phase::Handshake(_) => self.read_request(client),
                Phase::Refusing { .. } => Verdict::Keep,
                Phase::Open { .. } => self.read_frames(client),
            };
            if let Verdict::Close = verdict {
                return verdict;
            }
            if let Err(()) = flush(client) {
                return Verdict::Close;
            }
            // After the flush: a frame echoed in place holds on to the read buffer until
            // it is written.
            self.idle_input(client);
            // Reading stopped at the send queue's high-water mark and the queue drained at
            // once: no event will come for the bytes still unread (edge-triggered), so
            // read on now. A queue that did not drain waits for the writable event.
            if !client.backpressured || should_pause_reading(client) {
                break;
            }
        }
        shut_write_to_drain(client);
        if done(client) {
            Verdict::Close
        } else {
            Verdict::Keep
        }
    }

    /// Puts the connection back (registering its interest and deadline) or closes it.
    fn settle(&mut self, slot: usize, mut client: Box<Client>, verdict: Verdict) {
        let wants_write = !client.out.is_empty()
            || match &mut client.phase {
                Phase::Open { conn, .. } => !conn.transmit().is_empty(),
                _ => false,
            };
        let registry = self.poll.registry();
        let kept = matches!(verdict, Verdict::Keep)
            && want_writable(
                registry,
                &mut client.io,
                Token(slot),
                wants_write,
                &mut client.write_wait,
            )
            .is_ok();
        if !kept {
            if let Some(at) = client.scheduled {
                self.timers.remove(&(at, slot));
            }
            let _ = client.io.shutdown(std::net::Shutdown::Write);
            let _ = registry.deregister(&mut client.io);
            self.free.push(slot);
            return;
        }
        let deadline = match &client.phase {
            Phase::Handshake(reading) => reading.poll_timeout(),
            Phase::Refusing { deadline } => Some(*deadline),
            Phase::Open { conn, .. } => conn.poll_timeout(),
        };
        if deadline != client.scheduled {
            if let Some(old) = client.scheduled {
                self.timers.remove(&(old, slot));
            }
            client.scheduled = deadline;
            if let Some(at) = deadline {
                self.timers.insert((at, slot));
            }
        }
        self.clients[slot] = Some(client);
    }

    /// Acts on the deadlines that have passed.
    fn fire_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let now = Instant::now();
        // The deadlines due now; any that acting on them sets come up in the next round.
        let mut due = Vec::new();
        while let Some(&(at, slot)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            due.push((at, slot));
        }
        for (at, slot) in due {
            let Some(mut client) = self.clients.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            if client.scheduled != Some(at) {
                // Not this connection's deadline (it would have been taken out): leave it.
                self.clients[slot] = Some(client);
                continue;
            }
            client.scheduled = None;
            let verdict = match &mut client.phase {
                Phase::Handshake(reading) => {
                    let reading = *reading;
                    // The deadline came from the handshake itself: due now.
                    let policy = self.settings.policy();
                    if let Some(refusal) = reading.handle_timeout(now, &policy) {
                        refuse(&mut client, &refusal);
                    }
                    self.step(&mut client, false)
                }
                Phase::Refusing { .. } => Verdict::Close,
                Phase::Open { conn, .. } => {
                    conn.handle_timeout(now);
                    self.step(&mut client, false)
                }
            };
            self.settle(slot, client, verdict);
        }
    }

    /// Reads the request head; answers 101 (and goes on to frames) or refuses.
    fn read_request(&mut self, client: &mut Client) -> Verdict {
        let Phase::Handshake(reading) = client.phase else {
            return Verdict::Keep;
        };
        loop {
            if let Some(decision) = reading.handle_read(&mut client.input, self.settings.policy()) {
                let outcome = match decision {
                    Decision::Accept(accept) => Ok(accept),
                    Decision::Refuse(refusal) => Err(refusal),
                    // The loop's policy has no verify_client, so this is not reached; an
                    // absent verifier approves.
                    Decision::Verify(verify) => verify.verdict(Ok(())),
                };
                return match outcome {
                    Ok(accept) => {
                        self.open(client, &accept);
                        self.read_frames(client)
                    }
                    Err(refusal) => {
                        refuse(client, &refusal);
                        Verdict::Keep
                    }
                };
            }
            // Read into the loop's spare buffer: a connection whose request has not come
            // yet holds none.
            lend_spare(&mut client.input, &mut self.spare);
            client.input.reserve(1024);
            match recv(&client.io, &mut client.input) {
                Ok(0) => return Verdict::Close,
                Ok(_) => {}
                // `step` gives an emptied buffer back to the spare after the flush.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Verdict::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Close,
            }
        }
    }

    /// Queues the 101 of an accepted upgrade and opens the connection.
    fn open(&self, client: &mut Client, accept: &Accept) {
        accept.write_response(&mut client.out);
        let mut conn = Connection::new(Role::Server, self.settings.websocket.clone());
        if let (Some(params), Some(config)) = (accept.deflate(), &self.settings.deflate) {
            let deflate = Deflate::new(Role::Server, *params, config);
            conn = conn.with_deflate(deflate);
        }
        client.phase = Phase::Open {
            conn,
            echo: Echo::default(),
        };
    }

    /// Reads and echoes frames until the socket has no more, the send queue is full, or
    /// the connection is done reading.
    fn read_frames(&mut self, client: &mut Client) -> Verdict {
        client.backpressured = false;
        let Client {
            io,
            phase,
            input,
            out,
            ..
        } = client;
        let Phase::Open { conn, echo } = phase else {
            return Verdict::Keep;
        };
        let mut verdict = Verdict::Keep;
        loop {
            // What is buffered first (leftovers after the head, or after backpressure);
            // usually nothing, which the connection need not be asked to read.
            // A failure queues the close frame and ends reading (but for draining).
            if conn.wants_read(input) {
                let _ = echo_buffered(conn, echo, input);
            }
            // Each read's echo goes out before the next read, as a stream: a large frame
            // relayed in pieces is not held back, and its pieces' buffers free up.
            if out.is_empty() && write_transmit(io, conn).is_err() {
                verdict = Verdict::Close;
                break;
            }
            // A failed connection reads on to the peer's end of stream (the bytes are
            // discarded), so that closing does not reset it and lose the close frame.
            if conn.is_read_closed() && !conn.should_drain() {
                break;
            }
            if conn.should_pause_reading() {
                client.backpressured = true;
                break;
            }
            lend_spare(input, &mut self.spare);
            let want = conn.read_hint(input).clamp(READ_MIN, READ_MAX);
            input.reserve(want);
            let room = input.capacity() - input.len();
            match recv(io, input) {
                Ok(0) => {
                    conn.handle_eof(Instant::now());
                    break;
                }
                // A short read took all there was: the next arrival raises a new edge.
                Ok(n) if n < room => {
                    let _ = echo_buffered(conn, echo, input);
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    verdict = Verdict::Close;
                    break;
                }
            }
        }
        verdict
    }

    /// An emptied read buffer goes back to the loop's spare (when nothing refers to it
    /// and it was not grown for a large frame), so an idle connection holds none.
    fn idle_input(&mut self, client: &mut Client) {
        if !client.input.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut client.input);
        if buf.capacity() <= SPARE_MAX
            && buf.capacity() > self.spare.capacity()
            && buf.try_reclaim(READ_MIN)
        {
            self.spare = buf;
        }
    }
}

/// Decodes the frames in `input` and queues their echo; `Err` once the connection has
/// failed (its close frame is queued).
fn echo_buffered(conn: &mut Connection, echo: &mut Echo, input: &mut BytesMut) -> Result<(), ()> {
    loop {
        // The clock is read only when the read needs the time (a close frame, a failure).
        // A whole binary frame (or text message in one frame) goes back from where it
        // was read, without a copy; the rest comes here to be answered.
        let message = match conn.read_echo(input, Instant::now) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(_) => return Err(()),
        };
        // Pings, pongs and the close handshake are answered by the connection.
        let Message::Fragment(piece) = message else {
            continue;
        };
        // Sends fail only once the connection is closing; the echo then just stops.
        let _ = match echo.reply(piece) {
            Some(Message::Fragment(piece)) => conn.send_fragment(piece, true),
            Some(Message::UncheckedText(data)) => conn.send_bytes(DataKind::Text, data, true, true),
            _ => Ok(()),
        };
    }
}

/// Whether the connection's reading is paused at the send queue's high-water mark
/// ([`Connection::should_pause_reading`]).
fn should_pause_reading(client: &Client) -> bool {
    match &client.phase {
        Phase::Open { conn, .. } => conn.should_pause_reading(),
        _ => false,
    }
}

/// Reads into the loop's spare buffer when the connection has none of its own (or a
/// smaller one, such as what is left of its request head).
fn lend_spare(input: &mut BytesMut, spare: &mut BytesMut) {
    if input.is_empty() && spare.capacity() > input.capacity() {
        std::mem::swap(input, spare);
    }
}

/// Whether the connection is finished: a refusal written, or the protocol done with
/// the transport and everything written.
fn done(client: &mut Client) -> bool {
    if !client.out.is_empty() {
        return false;
    }
    match &mut client.phase {
        Phase::Handshake(_) => false,
        Phase::Refusing { .. } => true,
        Phase::Open { conn, .. } => conn.is_finished(),
    }
}

/// Once a failed connection's close frame is written: the write side is shut down
/// (FIN), and reading goes on until the peer's end of stream or the close timeout.
fn shut_write_to_drain(client: &mut Client) {
    if client.write_shut || !client.out.is_empty() {
        return;
    }
    if let Phase::Open { conn, .. } = &mut client.phase {
        if conn.should_drain() && conn.transmit().is_empty() {
            let _ = client.io.shutdown(std::net::Shutdown::Write);
            client.write_shut = true;
        }
    }
}

/// Queues the refusal of a bad request and switches to writing it.
fn refuse(client: &mut Client, refusal: &Refusal) {
    refusal.write_response(&mut client.out);
    client.input = BytesMut::new();
    client.phase = Phase::Refusing {
        deadline: Instant::now() + REFUSAL_TIMEOUT,
    };
}

/// Writes what is queued, the 101 or refusal first; `Err` when the socket failed.
fn flush(client: &mut Client) -> Result<(), ()> {
    while !client.out.is_empty() {
        match client.io.write(&client.out) {
            Ok(0) => return Err(()),
            Ok(n) => client.out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    if client.out.capacity() > 0 {
        client.out = BytesMut::new();
    }
    match &mut client.phase {
        Phase::Open { conn, .. } => write_transmit(&mut client.io, conn),
        _ => Ok(()),
    }
}

/// Writes what the connection has queued (until the socket is full); `Err` when the
/// socket failed.
fn write_transmit(io: &mut mio::net::TcpStream, conn: &mut Connection) -> Result<(), ()> {
    let transmit = conn.transmit();
    if transmit.is_empty() {
        return Ok(());
    }
    while !transmit.is_empty() {
        let written = if transmit.is_segmented() {
            let mut slices = [IoSlice::new(&[]); 32];
            let n = transmit.chunks_vectored(&mut slices);
            io.write_vectored(&slices[..n])
        } else {
            io.write(transmit.chunk())
        };
        match written {
            Ok(0) => return Err(()),
            Ok(n) => transmit.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    // Written out: an idle connection holds no write buffer (beyond a small one).
    transmit.shrink();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Over loopback: a client sends a message and then a frame that fails the
    /// connection, and does not read. The loop may write its close frame and the echo
    /// still queued within close_timeout; after that it drops them and the connection
    /// (the kernel's send buffer is made small so that the echo stays queued in the
    /// loop; with the kernel's own sizing it takes megabytes).
    #[test]
    fn a_failed_client_that_does_not_read_is_dropped_after_close_timeout() {
        const SIZE: usize = 512 * 1024;
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let websocket = Config {
            close_timeout: Duration::from_millis(300),
            deliver_fragments: true,
            stream_frames: true,
            ..Config::default()
        };
        let settings = Settings {
            websocket: Arc::new(websocket),
            deflate: None,
            handshake_timeout: Duration::from_secs(5),
            head_limits: HeadLimits::default(),
            send_buffer: Some(16 * 1024),
        };
        // The loop runs until the test process ends.
        std::thread::spawn(move || serve(listener, settings));

        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        let target = sockeye::Target::parse(&format!("ws://{addr}/")).unwrap();
        let leftover = crate::bench::upgrade(&mut stream, &target).unwrap();
        assert!(leftover.is_empty());
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A binary message (mask 0: the payload as is), then a reserved opcode (1002).
        let mut frames = vec![0x82, 0xFF];
        frames.extend_from_slice(&(SIZE as u64).to_be_bytes());
        frames.extend_from_slice(&[0; 4]);
        frames.extend_from_slice(&vec![b'x'; SIZE]);
        frames.extend_from_slice(&[0x83, 0x80, 0, 0, 0, 0]);
        stream.write_all(&frames).unwrap();
        std::thread::sleep(Duration::from_millis(1200));

        // What the kernel held, then the end: not the whole echo, nor the close frame.
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the loop kept the connection open: {e}"),
            }
        }
        assert!(got < SIZE, "{got} bytes: the queued echo was written");
    }

    /// An idle connection costs its `Client` (one allocation, with the protocol state
    /// inline) and a pointer in the table: keep it in mimalloc's 320-byte class
    /// (`bench/side_by_side.sh --mem`: 504 bytes per idle connection in all).
    #[test]
    fn an_idle_connection_stays_small() {
        assert!(
            std::mem::size_of::<Client>() <= 320,
            "{}",
            std::mem::size_of::<Client>()
        );
    }
}
