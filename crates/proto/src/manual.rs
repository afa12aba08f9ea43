//! The manual: defaults, the reasoning behind them, and how to drive the core.
//!
//! # Defaults and limits
//!
//! | setting | default | why |
//! |---|---|---|
//! | `max_payload` | 100 MiB | `ws`'s default. Counted over all fragments of a message, checked when a frame *header* arrives, so an oversized message fails (1009) before its payload is buffered. |
//! | `max_fragments` | 0 (no limit) | Memory is bounded by bytes: an empty fragment costs nothing, so counting fragments adds no safety. `ws` >= 8.21 caps them at 16,384 and so fails Autobahn 9.3.x/9.4.x (4 MiB in 64-byte fragments); Sockeye accepts those and still lets you set a cap (1008). |
//! | 64-bit frame length | at most 2^53 - 1 | As `ws`: beyond it the frame fails with 1009 from the header alone. |
//! | `close_timeout` | 30 s | `ws`'s `closeTimeout`: how long to wait for the peer's close frame, and on a client for the server to close TCP; also the most a closing connection waits for a peer that does not read what is left to write. |
//! | `auto_pong` | on | As `ws`. Pongs are queued only while the connection is open. |
//! | handshake head | 64 headers, 16 KiB | [`crate::handshake::HeadLimits`]; beyond either the server answers 431, also while the head is still incomplete, so an endless head is cut off without waiting for the timeout. |
//!
//! # Memory per idle connection
//!
//! What the library's tokio server (`sockeye::WebSocketServer`, and so `sockeye echo`)
//! holds for each idle upgraded connection: tokio's I/O registration (256 bytes) and task
//! (256 bytes, the handler's state included) and one allocation of Sockeye's shared
//! connection state (`Arc` counts, the [`crate::Connection`] of at most 184 bytes, the
//! transport and wakers: at most 384 bytes). A test holds that budget.
//!
//! Nothing else stays allocated while a connection idles:
//!
//! - the configuration is one `Arc<Config>` per server, not a copy per connection;
//! - what the handshake agreed, the heartbeat clock, the segment queue of
//!   [`crate::Transmit`] and the state of a failing or closing connection are boxed and
//!   allocated only when used;
//! - the read buffer: a connection that finds no bytes to read gives its buffer back to
//!   a per-thread spare (64 KiB), which the next connection to read borrows, so a busy
//!   thread reads without allocating and an idle connection holds none;
//! - the transmit buffer is freed once written out, but for one of at most
//!   [`crate::transmit::KEEP_TAIL`] (128) bytes, kept so that small messages do not
//!   allocate each.
//!
//! The allocator matters: the `sockeye` binary uses mimalloc. With glibc's malloc,
//! tokio's 128-byte-aligned allocations go through `memalign`, which leaves free
//! fragments around each. The binary builds mimalloc without transparent huge pages
//! (`no_thp`): with them its heap becomes resident in 2 MB steps, so RSS per connection
//! would measure what the last huge page happens to hold rather than what connections use.
//! BENCHMARKS.md ("Memory per idle connection") has the measured bytes per connection,
//! with mimalloc and with glibc's malloc; the harness scenario `mem10000` measures them.
//!
//! # Memory per connection with permessage-deflate
//!
//! With no context takeover in a direction, no zlib state stays with a connection
//! between messages: each message starts a fresh deflate stream, so when it ends the
//! compressor (about 300 KB, mostly zlib's hash tables) or decompressor goes back,
//! reset, to a pool of its thread (at most two of each kind), and the next message of
//! any connection on that thread takes it from there. An idle connection then costs
//! about what an uncompressed one does, and a message does not allocate and free a
//! compressor. Freeing each compressor instead would, with glibc's malloc, leave a hole
//! that the next connection's long-lived allocations split, so that every connection
//! pinned a mostly free hole of that size. A reset stream keeps nothing of the message
//! it processed; the `deflate` socket tests check that a back-reference into another
//! connection's message is corrupt data (1007) and that a message compresses to the
//! same bytes on every connection.
//!
//! With context takeover the zlib state must survive between messages; most of it is the
//! compressor's hash tables (zlib's `memLevel` 8, which flate2 does not expose), the rest
//! its window: smaller windows ([`crate::DeflateConfig::server_max_window_bits`]) save
//! about a third. A server with many mostly idle connections should set
//! `server_no_context_takeover` (and usually `client_no_context_takeover`).
//!
//! `bench/deflate_memory.sh` measures RSS per idle connection for each of these
//! negotiations; BENCHMARKS.md ("Memory per idle connection") has the figures.
//!
//! # Security notes
//!
//! - **Masking** (RFC 6455 §10.3): a client masks every frame with a fresh key from a
//!   cryptographically secure generator of the connection's own (ChaCha12 seeded from the
//!   operating system, [`crate::MaskSource::Random`]) unless `generate_mask` names
//!   another source. Servers never mask and reject unmasked client frames (1002).
//! - **Huge lengths**: a header announcing more than `max_payload` fails before any
//!   payload is read; the read buffer grows only as bytes arrive.
//! - **Invalid UTF-8** fails on the first impossible byte, even in the middle of a frame
//!   still arriving (Autobahn 6.4.x strict), so a peer cannot make the endpoint buffer a
//!   long invalid text message.
//! - **Large messages**: a message is buffered whole up to `max_payload`; with
//!   `deliver_fragments` and `stream_frames` an uncompressed frame is handed out in
//!   pieces as it arrives (reads windowed at 256 KiB), so a relay or an upload handler
//!   holds no whole frame (`sockeye echo` relays binary messages this way, each frame
//!   as one frame: `Connection::send_fragment` writes the header with the whole length,
//!   then the pieces, and holds control frames back until the frame ends).
//! - **Decompression bombs**: inflation writes at most 16 KiB at a time and stops with
//!   1009 as soon as the message passes `max_payload`, counted in inflated bytes; a
//!   tiny frame that would inflate to gigabytes costs at most `max_payload` plus one chunk.
//! - **Fragment floods**: reassembly appends into one buffer; neither memory nor per-frame
//!   work grows with the count beyond the bytes themselves.
//! - **Errors never echo peer data**: the close frame sent for a violation carries only the
//!   code (the reason is empty).
//!
//! # The server's opening handshake
//!
//! Before the loop below, a server reads the request head with
//! [`crate::handshake::server::ServerHandshake`] and lets
//! [`crate::handshake::policy::ServerPolicy`] decide on it: every check and hook of the
//! server runs there, in one order, so every front end (the tokio crate's `accept` and
//! `upgrade`, the hyper and axum adapters) answers a request the
//! same way. `verify_client` may be asynchronous: the decision stops at
//! [`crate::handshake::policy::Decision::Verify`] for its verdict.
//!
//! ```no_run
//! # use std::io::{Read, Write};
//! # use std::time::{Duration, Instant};
//! # use sockeye_proto::bytes::BytesMut;
//! # use sockeye_proto::handshake::policy::{Decision, ServerPolicy};
//! # use sockeye_proto::handshake::server::ServerHandshake;
//! # use sockeye_proto::handshake::HeadLimits;
//! # fn run(mut socket: std::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! let policy = ServerPolicy::default();
//! let timeout = Duration::from_secs(10);
//! let reading = ServerHandshake::new(Instant::now(), timeout, HeadLimits::default());
//! let mut input = BytesMut::with_capacity(8192);
//! let decision = loop {
//!     if let Some(decision) = reading.handle_read(&mut input, policy) {
//!         break decision;
//!     }
//!     // A real loop waits at most until `reading.poll_timeout()`, then answers
//!     // `reading.handle_timeout(now, &policy)` (408).
//!     let mut chunk = [0u8; 4096];
//!     let n = socket.read(&mut chunk)?;
//!     if n == 0 {
//!         return Ok(());
//!     }
//!     input.extend_from_slice(&chunk[..n]);
//! };
//! let mut out = Vec::new();
//! match decision {
//!     Decision::Accept(accept) => accept.write_response(&mut out), // then the loop below
//!     Decision::Refuse(refusal) => refusal.write_response(&mut out), // then close
//!     // Run verify_client on `verify.info(..)`, then `verify.verdict(..)`.
//!     Decision::Verify(_verify) => {}
//! }
//! socket.write_all(&out)?;
//! # Ok(()) }
//! ```
//!
//! # Driving the sans-I/O core
//!
//! A loop around a blocking socket is the whole I/O layer (the tokio crate does the same
//! with polls):
//!
//! ```no_run
//! # use std::io::{Read, Write};
//! # use std::time::Instant;
//! # use sockeye_proto::bytes::{Buf, BytesMut};
//! # use sockeye_proto::{Config, Connection, Message, Role};
//! # fn run(mut socket: std::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! let mut conn = Connection::new(Role::Server, Config::default());
//! let mut input = BytesMut::with_capacity(8192);
//! loop {
//!     // 1. Hand over every complete frame in the buffer. An error has queued the close
//!     //    frame with its code; it is written below like any other frame.
//!     loop {
//!         match conn.read(&mut input, Instant::now()) {
//!             Ok(Some(Message::Text(text))) => conn.send_text(&text)?, // echo
//!             Ok(Some(_)) => {}
//!             Ok(None) => break,
//!             Err(e) => {
//!                 eprintln!("connection failed: {e}");
//!                 break;
//!             }
//!         }
//!     }
//!     // 2. Write what the connection queued (replies, pongs, close frames); a
//!     //    vectored write (`chunks_vectored`) takes several frames at once.
//!     let out = conn.transmit();
//!     while out.has_remaining() {
//!         let n = socket.write(out.chunk())?;
//!         out.advance(n);
//!     }
//!     // 3. Shut the write side down once nothing more will be written, and let the
//!     //    transport go once the connection is finished with it.
//!     if conn.should_close_transport() {
//!         let _ = socket.shutdown(std::net::Shutdown::Write);
//!     }
//!     if conn.is_finished() {
//!         return Ok(());
//!     }
//!     // 4. Read more (a real loop also waits for `conn.poll_timeout()`). After a
//!     //    failure this drains what the peer still sends: `read` discards it.
//!     let mut chunk = [0u8; 8192];
//!     let n = socket.read(&mut chunk)?;
//!     if n == 0 {
//!         conn.handle_eof(Instant::now());
//!         continue;
//!     }
//!     input.extend_from_slice(&chunk[..n]);
//! }
//! # }
//! ```
//!
//! A protocol error from `read` has already queued the close frame with the right code:
//! write the transmit buffer, shut the write side down, and read on until the peer's end
//! of stream or `close_timeout` ([`crate::Connection::should_drain`]). A transport
//! dropped with the peer's bytes unread is reset (TCP RST), and the peer's system then
//! discards what it has not read yet: the close frame with it.
