//! The connection state machine: frames in, messages out, and the close handshake
//! (RFC 6455 §5, §7).
//!
//! # Calling order
//!
//! 1. Bytes read from the transport are appended to a buffer the caller owns; call
//!    [`Connection::read`] with it until it returns `Ok(None)` (it consumes only whole
//!    frames and leaves a partial one in place; [`Connection::read_hint`] says how many
//!    more bytes the frame in progress needs).
//! 2. Commands ([`Connection::send`], [`Connection::ping`], [`Connection::close`] ...)
//!    and `read` itself (automatic pongs, close replies) append frames to the transmit
//!    queue: write [`Connection::transmit`] to the transport (it is a [`bytes::Buf`];
//!    vectored writes take header and payload at once) and advance it by what was
//!    written.
//! 3. When [`Connection::poll_timeout`] returns a deadline, call
//!    [`Connection::handle_timeout`] once it has passed; call [`Connection::handle_eof`]
//!    when the transport reports end of stream.
//! 4. Once [`Connection::should_close_transport`] is true and the transmit buffer is
//!    empty, shut the transport down for writing (TCP FIN). While
//!    [`Connection::should_drain`] is then true, keep reading and passing the bytes to
//!    `read` (which discards them) until end of stream or the deadline. Once
//!    [`Connection::is_finished`] is true, drop the transport; once
//!    [`Connection::should_abort_transport`] is true, drop it at once, without writing
//!    what is still queued.
//!
//! # Files
//!
//! The [`Connection`] type, its state and accessors are here; its methods are in a file
//! per concept: `read` (frames in: parsing, checks, messages),
//! `send` (frames out: data frames whole or in pieces, control frames, the transmit
//! queue), `closing` (the close handshake, failing the connection, end of stream),
//! `timers` (the close timeout and the heartbeat: `poll_timeout`, `handle_timeout`) and
//! `mask_keys` (a client's masking keys, from [`Config::generate_mask`]).

use std::sync::Arc;
use std::time::Instant;

use crate::deflate::Deflate;
use crate::frame::FrameHeader;
use crate::limits::Config;
use crate::transmit::Transmit;
use crate::utf8::Utf8Validator;

use mask_keys::MaskKeys;
use read::Incoming;
use send::FrameOut;
pub use send::SEND_NOW_MAX;
use timers::HeartbeatClock;

mod closing;
mod mask_keys;
mod read;
mod send;
mod timers;

/// The time for one call, read from the caller's clock the first time it is needed.
struct Now<'a> {
    clock: &'a mut dyn FnMut() -> Instant,
    at: Option<Instant>,
}

impl Now<'_> {
    fn get(&mut self) -> Instant {
        let Now { clock, at } = self;
        *at.get_or_insert_with(clock)
    }
}

/// Which end of the connection this is. Clients mask what they send; servers require
/// masked frames (RFC 6455 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The end that sent the opening handshake.
    Client,
    /// The end that accepted it.
    Server,
}

/// The connection's state, as `ws`'s `readyState` (CONNECTING belongs to the handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// A close frame was sent; waiting for the peer's.
    Closing,
    /// The close handshake is over, or the connection failed.
    Closed,
}

/// The kind of a data message to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// A text message.
    Text,
    /// A binary message.
    Binary,
}

impl DataKind {
    /// The opcode of a message's first frame.
    pub(crate) fn opcode(self) -> crate::frame::OpCode {
        match self {
            DataKind::Text => crate::frame::OpCode::Text,
            DataKind::Binary => crate::frame::OpCode::Binary,
        }
    }
}

/// A sans-I/O WebSocket connection after the opening handshake.
pub struct Connection {
    role: Role,
    /// Shared by every connection of a server (one allocation, not one per connection).
    config: Arc<Config>,
    state: State,
    /// The header of the frame being read and its encoded length.
    header: Option<FrameHeader>,
    /// The encoded length of `header` (at most 14; kept apart so that the pair packs);
    /// 0 for the rest of a frame split by `stream_frames`, whose header is consumed.
    header_len: u8,
    /// The frame being delivered is the rest of a split frame (not counted again
    /// against `max_fragments`).
    delivering_rest: bool,
    /// Payload bytes of the current frame already unmasked (and checked, for text).
    progress: usize,
    /// Whether the current frame's payload goes through the UTF-8 validator.
    check_utf8: bool,
    /// The fragmented message being received. Boxed: only a message in several frames
    /// (or pieces) is kept here between frames, and inline it would make every idle
    /// connection 40 bytes larger.
    incoming: Option<Box<Incoming>>,
    utf8: Utf8Validator,
    /// Stop reading: the close handshake finished or the connection failed.
    read_closed: bool,
    /// Whether the message being received is compressed (RSV1 on its first frame).
    reading_compressed: bool,
    /// The kind of the fragmented message being sent (`fin: false` sends).
    outgoing: Option<DataKind>,
    /// Whether the message being sent is compressed.
    sending_compressed: bool,
    /// The frame being sent in pieces ([`Fragment::rest`]), once its header is out.
    /// Boxed: one allocation per such frame (a large one, as a rule) keeps every idle
    /// connection a word larger instead of 80 bytes.
    frame_out: Option<Box<FrameOut>>,
    /// permessage-deflate, when negotiated.
    /// Boxed: most connections never negotiate it, and inline it would double the size
    /// of every idle connection.
    deflate: Option<Box<Deflate>>,
    transmit: Transmit,
    close_sent: bool,
    close_received: bool,
    /// The peer's close frame came before ours.
    peer_closed_first: bool,
    /// The close timeout: for the peer's close frame (or its end of stream, on a
    /// client), or for what is left to write once the transport is to be closed.
    deadline: Option<Instant>,
    close_transport: bool,
    /// The connection failed before the peer's end of stream: the transport is to be
    /// read to its end (bytes discarded), within the close timeout, before it is
    /// dropped ([`Connection::should_drain`]).
    draining: bool,
    /// The transport is to be closed without writing what is queued (`terminate`, or
    /// the close timeout passed).
    abort_transport: bool,
    /// The heartbeat's clock, only when `Config::heartbeat` is set (boxed: most
    /// connections have no heartbeat, and every idle one would carry it).
    heartbeat: Option<Box<HeartbeatClock>>,
    heartbeat_expired: bool,
    /// Where a client's masking keys come from (`config.generate_mask`).
    mask_keys: MaskKeys,
}

impl Connection {
    /// A connection in the open state. Pass an `Arc<Config>` to share one configuration
    /// between many connections.
    pub fn new(role: Role, config: impl Into<Arc<Config>>) -> Connection {
        let config = config.into();
        Connection {
            role,
            heartbeat: config.heartbeat.map(|_| Box::default()),
            config,
            state: State::Open,
            header: None,
            header_len: 0,
            delivering_rest: false,
            progress: 0,
            check_utf8: false,
            incoming: None,
            utf8: Utf8Validator::new(),
            read_closed: false,
            reading_compressed: false,
            outgoing: None,
            sending_compressed: false,
            frame_out: None,
            deflate: None,
            transmit: Transmit::new(),
            close_sent: false,
            close_received: false,
            peer_closed_first: false,
            deadline: None,
            close_transport: false,
            draining: false,
            abort_transport: false,
            heartbeat_expired: false,
            mask_keys: MaskKeys::default(),
        }
    }

    /// A connection that uses permessage-deflate as negotiated in the handshake
    /// (RFC 7692): RSV1 marks compressed messages both ways.
    pub fn with_deflate(mut self, deflate: Deflate) -> Connection {
        self.deflate = Some(Box::new(deflate));
        self
    }

    /// The permessage-deflate codec, if negotiated.
    pub fn deflate(&self) -> Option<&Deflate> {
        self.deflate.as_deref()
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The connection's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a close frame was received from the peer.
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// Whether a close frame was sent.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Who started the close handshake: `Some(true)` the peer (its close frame came
    /// before ours), `Some(false)` this end, `None` when no close frame went either way.
    pub fn closed_by_peer(&self) -> Option<bool> {
        if self.peer_closed_first {
            Some(true)
        } else if self.close_sent {
            Some(false)
        } else if self.close_received {
            Some(true)
        } else {
            None
        }
    }

    /// The bytes of the fragmented message being received that are buffered so far (0
    /// between messages). For tests and memory accounting.
    #[doc(hidden)]
    pub fn incoming_buffered(&self) -> usize {
        self.incoming.as_ref().map_or(0, |m| m.data.len())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("close_sent", &self.close_sent)
            .field("close_received", &self.close_received)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
