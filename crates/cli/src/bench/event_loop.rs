//! `sockeye bench`'s default engine: every connection on one thread, driven with `mio`
//! straight over the sans-I/O protocol core ([`sockeye::proto::Connection`]), the way
//! the harness's C load generator drives its sockets with epoll. The load generator's CPU
//! then goes to the WebSocket work and the system calls, not to an async runtime's
//! scheduler and wakers (`--engine tokio` measures the library's async client instead).
//!
//! Plain `ws://` without compression; `wss://`, `ws+unix:` and `--deflate` use the tokio
//! engine.

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mio::{Events, Interest, Poll, Token};
use sockeye::proto::bytes::{Buf, BytesMut};
use sockeye::proto::handshake::client::ClientRequest;
use sockeye::proto::{Connection, Message, Role};
use sockeye::{HeadLimits, Target};

use super::{echo_config, Outcome, Plan, Progress, Received};
use crate::socket::{recv, want_writable};

/// Time allowed for connecting, and for each read and write of the opening handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Least room offered to one read, and most.
const READ_MIN: usize = 64 * 1024;
const READ_MAX: usize = 256 * 1024;

/// Whether this engine can drive `url` with these options.
pub fn supports(target: &Target, deflate: bool) -> bool {
    !target.tls && target.unix_socket.is_none() && !deflate
}

/// One connection's state in the loop.
struct Conn {
    io: mio::net::TcpStream,
    token: Token,
    proto: Connection,
    input: BytesMut,
    /// When the message in flight went out (`None`: none in flight).
    sent: Option<Instant>,
    /// Echo bytes received for the message in flight.
    received: usize,
    /// Paced: when the next message is due.
    due: Option<Instant>,
    /// Paced: when the message in flight was due (the schedule the next one follows,
    /// so that timer lateness does not add up).
    slot: Instant,
    /// The close frame is queued: waiting for the server's.
    closing: bool,
    /// Registered for writable events (a write is waiting for room).
    write_wait: bool,
    done: bool,
    /// Still registered with the poll (until the loop retires it, once done).
    registered: bool,
}

/// Connects every connection, then runs the closed loop until `plan.end` (and the
/// echoes in flight then) or until `plan.end` + 5 s.
pub fn run(plan: &mut Plan, target: &Target) -> anyhow::Result<Outcome> {
    let config = std::sync::Arc::new(echo_config(plan.payload.len()));

    let poll = Poll::new()?;
    let mut conns = Vec::with_capacity(plan.connections);
    for i in 0..plan.connections {
        let (stream, leftover) =
            handshake(target).with_context(|| format!("cannot connect to {}", plan.url))?;
        stream.set_nonblocking(true)?;
        let mut io = mio::net::TcpStream::from_std(stream);
        // Writable events only while a write waits (`flush`): registered for them always,
        // the loop woke about five times as often (0.19 `epoll_wait` per message at
        // 100 x 20 B, against 0.04).
        poll.registry()
            .register(&mut io, Token(i), Interest::READABLE)?;
        conns.push(Conn {
            io,
            token: Token(i),
            proto: Connection::new(Role::Client, config.clone()),
            input: leftover,
            sent: None,
            received: 0,
            due: None,
            slot: Instant::now(),
            closing: false,
            write_wait: false,
            done: false,
            registered: true,
        });
    }
    plan.start_clock();
    let plan: &Plan = plan;
    let mut run = Loop {
        plan,
        poll,
        outcome: Outcome::new(),
        progress: Progress::new(plan),
        sent_total: 0,
        open: conns.len(),
    };
    let start = plan.start;
    for conn in &mut conns {
        conn.due = plan.interval.map(|_| start);
        if conn.due.is_none() {
            run.send(conn, start);
        }
        run.after_io(conn);
    }
    run.run(&mut conns)?;
    run.progress.finish();
    Ok(run.outcome)
}

struct Loop<'a> {
    plan: &'a Plan,
    poll: Poll,
    outcome: Outcome,
    progress: Progress,
    sent_total: u64,
    /// Connections not done yet.
    open: usize,
}

impl Loop<'_> {
    fn run(&mut self, conns: &mut [Conn]) -> anyhow::Result<()> {
        let give_up = self.plan.end + Duration::from_secs(5);
        let mut events = Events::with_capacity(1024);
        while self.open > 0 {
            let now = Instant::now();
            if now >= give_up {
                // A server that stopped echoing: count what is still in flight as failed.
                self.outcome.errors +=
                    conns.iter().filter(|c| !c.done && !c.closing).count() as u64;
                break;
            }
            let mut wake = self.progress.next_tick().min(give_up);
            if self.plan.interval.is_some() {
                for conn in conns.iter_mut() {
                    match conn.due {
                        Some(due) if due <= now && !conn.done => {
                            conn.slot = due;
                            self.send(conn, now);
                            self.after_io(conn);
                        }
                        Some(due) => wake = wake.min(due),
                        None => {}
                    }
                }
            }
            self.progress.tick(now, self.sent_total);
            let timeout = wake.saturating_duration_since(now);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for event in &events {
                let conn = &mut conns[event.token().0];
                if conn.done {
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(conn);
                }
                self.after_io(conn);
            }
        }
        Ok(())
    }

    /// Queues the next message (or, at the end, the close frame) and writes.
    fn send(&mut self, conn: &mut Conn, now: Instant) {
        conn.due = None;
        if now >= self.plan.end {
            self.start_close(conn, now);
            return;
        }
        if conn.proto.send_binary(&self.plan.payload).is_err() {
            self.fail(conn);
            return;
        }
        conn.sent = Some(now);
        conn.received = 0;
        self.flush(conn);
    }

    fn start_close(&mut self, conn: &mut Conn, now: Instant) {
        conn.closing = true;
        if conn.proto.close(None, now).is_err() {
            conn.done = true;
            return;
        }
        self.flush(conn);
    }

    /// Reads what is there and handles every message in it.
    fn on_readable(&mut self, conn: &mut Conn) {
        loop {
            let want = conn.proto.read_hint(&conn.input).clamp(READ_MIN, READ_MAX);
            conn.input.reserve(want);
            let room = conn.input.capacity() - conn.input.len();
            let drained = match recv(&conn.io, &mut conn.input) {
                Ok(0) => {
                    self.end(conn);
                    return;
                }
                // Less than there was room for: the socket is empty for now, and the
                // next arrival raises a new event, so no second read that would only
                // say so (one `recv` per echo, as `wsload`).
                Ok(n) => n < room,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.end(conn);
                    return;
                }
            };
            self.on_input(conn);
            if conn.done || drained {
                return;
            }
        }
    }

    fn on_input(&mut self, conn: &mut Conn) {
        let mut now = None;
        loop {
            let clock = || *now.get_or_insert_with(Instant::now);
            let message = match conn.proto.read_with(&mut conn.input, clock) {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(_) => {
                    self.end(conn);
                    return;
                }
            };
            let (len, fin) = match Received::of(&message) {
                Received::Echo { len, fin } => (len, fin),
                // A ping's pong is queued by the protocol core (`after_io` writes it).
                Received::Control => continue,
                Received::Other if conn.closing && matches!(message, Message::Close(_)) => {
                    conn.done = true;
                    return;
                }
                Received::Other => {
                    self.fail(conn);
                    return;
                }
            };
            let Some(sent) = conn.sent else {
                // Data with no message in flight: after our close frame, the tail of an
                // echo; before it, a server that sends what it was not sent.
                if conn.closing {
                    continue;
                }
                self.fail(conn);
                return;
            };
            conn.received += len;
            if !fin {
                continue;
            }
            if conn.received != self.plan.payload.len() {
                self.fail(conn);
                return;
            }
            // One clock read per message, shared with the protocol core (which reads it
            // only for a close frame): it ends this round trip and starts the next.
            let arrived = *now.get_or_insert_with(Instant::now);
            conn.sent = None;
            self.sent_total += 1;
            self.outcome.echoed(self.plan, sent, arrived);
            match self.plan.interval {
                // Paced: a late echo delays the messages after it (no bursts).
                Some(interval) => conn.due = Some((conn.slot + interval).max(arrived)),
                None => self.send(conn, arrived),
            }
        }
    }

    /// Writes what the connection has queued, until done or the socket is full (then
    /// the connection waits for a writable event).
    fn flush(&mut self, conn: &mut Conn) {
        let full = loop {
            let transmit = conn.proto.transmit();
            if !transmit.has_remaining() {
                break false;
            }
            let mut slices = [IoSlice::new(&[]); 8];
            let n = transmit.chunks_vectored(&mut slices);
            let written = if n == 1 {
                conn.io.write(&slices[0])
            } else {
                conn.io.write_vectored(&slices[..n])
            };
            match written {
                Ok(0) => break true,
                Ok(k) => transmit.advance(k),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.end(conn);
                    return;
                }
            }
        };
        let registry = self.poll.registry();
        if want_writable(
            registry,
            &mut conn.io,
            conn.token,
            full,
            &mut conn.write_wait,
        )
        .is_err()
        {
            self.fail(conn);
        }
    }

    /// After an event: write what is queued (pongs, a message, the rest of one).
    fn after_io(&mut self, conn: &mut Conn) {
        if !conn.done && !conn.proto.transmit().is_empty() {
            self.flush(conn);
        }
        if conn.done && conn.registered {
            let _ = self.poll.registry().deregister(&mut conn.io);
            conn.registered = false;
            self.open -= 1;
        }
    }

    /// Ends a connection whose stream ended or failed: after our close frame that is
    /// the end of the close handshake, before it a failure.
    fn end(&mut self, conn: &mut Conn) {
        if !conn.closing {
            self.outcome.errors += 1;
        }
        conn.done = true;
    }

    fn fail(&mut self, conn: &mut Conn) {
        self.outcome.errors += 1;
        conn.done = true;
    }
}

/// Connects and does the opening handshake, blocking, with [`HANDSHAKE_TIMEOUT`] on the
/// connect and on each read and write; the stream and the bytes that came after the
/// response head.
fn handshake(target: &Target) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut last = None;
    let mut stream = None;
    for addr in (target.host.as_str(), target.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => anyhow::bail!("{}: no address", target.host),
    };
    stream.set_nodelay(true)?;
    let leftover = upgrade(&mut stream, target)?;
    Ok((stream, leftover))
}

/// The opening handshake on a connected `stream`, blocking, with [`HANDSHAKE_TIMEOUT`] on
/// each read and write; the bytes that came after the response head.
pub(crate) fn upgrade(stream: &mut TcpStream, target: &Target) -> anyhow::Result<BytesMut> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut request = ClientRequest {
        host: target.host_header.clone(),
        path: target.path.clone(),
        ..ClientRequest::default()
    };
    if let Some(auth) = &target.authorization {
        request
            .headers
            .insert(http::header::AUTHORIZATION, auth.parse()?);
    }
    let (bytes, expect) = request.encode();
    stream.write_all(&bytes)?;
    let limits = HeadLimits::default();
    let mut head = BytesMut::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let len = loop {
        if let Some((response, len)) = expect.parse(&head, &limits)? {
            expect.validate(response)?;
            break len;
        }
        let n = stream.read(&mut chunk)?;
        anyhow::ensure!(
            n > 0,
            "the server closed the connection during the handshake"
        );
        head.extend_from_slice(&chunk[..n]);
    };
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    let _ = head.split_to(len);
    Ok(head)
}
