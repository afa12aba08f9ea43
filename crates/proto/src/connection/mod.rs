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

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame, MAX_REASON_LEN};
use crate::deflate::Deflate;
use crate::error::{ApiMisuse, Error, LimitError, ProtocolError};
use crate::frame::{FrameHeader, OpCode, MAX_FRAME_LEN, MAX_HEADER_LEN};
use crate::limits::Config;
use crate::mask::{apply_mask, extend_masked, rotate_key};
use crate::message::{Fragment, Message, Utf8Bytes};
use crate::transmit::{Transmit, ZERO_COPY_MIN};
use crate::utf8::{self, Utf8Validator};

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

/// With `stream_frames`: the smallest piece of a frame handed out before the frame ends.
const STREAM_PIECE_MIN: usize = 4096;
/// With `stream_frames`: the most bytes of a frame in progress worth reading at once.
const STREAM_WINDOW: usize = 256 * 1024;

/// The kind of a data message to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// A text message.
    Text,
    /// A binary message.
    Binary,
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
    /// The fragmented message being received.
    incoming: Option<Incoming>,
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
}

/// The heartbeat's clock (B1).
#[derive(Default)]
struct HeartbeatClock {
    /// When a frame last arrived (or the first read, before any).
    last_activity: Option<Instant>,
    /// When the heartbeat's ping went out, while no frame has arrived since.
    ping_sent: Option<Instant>,
}

/// A frame being sent in pieces: its header, with the whole length, is queued.
struct FrameOut {
    /// Payload bytes still to come.
    remaining: u64,
    /// A client's masking key, rotated to where the next piece starts.
    mask: Option<[u8; 4]>,
    /// The frame's FIN bit (every piece must carry it).
    fin: bool,
    /// Control frames queued meanwhile, sent after its last piece.
    held: Held,
}

/// Control frames queued while a frame goes out in pieces: they may not go inside it
/// (RFC 6455 §5.4), so they follow its last piece.
#[derive(Default)]
struct Held {
    /// The payload of the latest ping to answer: a pong answers only the most recent
    /// of the pings that arrived meanwhile (RFC 6455 §5.5.3), which bounds what a ping
    /// flood can queue.
    pong: Option<Bytes>,
    /// Other control frames, encoded, in order (the close frame last).
    frames: BytesMut,
}

impl Held {
    fn len(&self) -> usize {
        self.frames.len() + self.pong.as_ref().map_or(0, |p| 2 + p.len())
    }
}

struct Incoming {
    kind: DataKind,
    /// The message so far; in fragment mode only the frame being delivered.
    data: BytesMut,
    /// Payload bytes of the message received so far (inflated), for `max_payload`.
    received: usize,
    /// Frames of the message so far (saturating; u32 keeps `Incoming` small).
    fragments: u32,
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
            deadline: None,
            close_transport: false,
            draining: false,
            abort_transport: false,
            heartbeat_expired: false,
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

    /// The bytes of the fragmented message being received that are buffered so far (0
    /// between messages). For tests and memory accounting.
    #[doc(hidden)]
    pub fn incoming_buffered(&self) -> usize {
        self.incoming.as_ref().map_or(0, |m| m.data.len())
    }

    // ----------------------------------------------------------------- reading

    /// Decodes frames from `input` and returns the next message or control frame, or
    /// `Ok(None)` when `input` holds no complete one. Consumed frames are removed from
    /// `input`; payloads are handed over without copying where the message is a single
    /// frame, and unmasked in place.
    ///
    /// Incoming bytes are processed as they arrive: a text frame's UTF-8 is checked on
    /// partial payloads, so an invalid byte fails the connection before the frame ends.
    ///
    /// # Errors
    /// A [`ProtocolError`] or [`LimitError`] of the peer: the connection has then queued
    /// a close frame with [`Error::close_code`] and is [`State::Closed`]; the caller
    /// flushes the transmit buffer and closes the transport. The error is returned once;
    /// later calls return `Ok(None)`.
    pub fn read(&mut self, input: &mut BytesMut, now: Instant) -> Result<Option<Message>, Error> {
        self.read_with(input, || now)
    }

    /// [`Connection::read`] that reads the time from `clock` only when it needs it, at
    /// most once per call: to keep the heartbeat's clock (started by the first call, and
    /// then at each frame) and to start the close timeout (a close frame, a failure).
    /// A server without a heartbeat reads no clock for data frames, which spares a clock
    /// read per call on the hot path: pass `Instant::now`.
    ///
    /// # Errors
    /// As [`Connection::read`].
    pub fn read_with(
        &mut self,
        input: &mut BytesMut,
        mut clock: impl FnMut() -> Instant,
    ) -> Result<Option<Message>, Error> {
        self.read_at(
            input,
            &mut Now {
                clock: &mut clock,
                at: None,
            },
            false,
        )
    }

    /// [`Connection::read_with`] for a server that sends every data frame back as it
    /// came: an echo. A frame that arrives whole in `input`, uncompressed, of a binary
    /// message or of a text message in one frame, is checked as `read_with` checks it
    /// and then queued back in place, when nothing else is queued: its payload stays
    /// where it was read, the reply's header is written over the end of the peer's
    /// header (4 bytes longer: the masking key), and those bytes become the transmit
    /// queue. No copy and no allocation.
    ///
    /// Everything else is returned as `read_with` returns it, for the caller to answer
    /// as it would have: the pieces of a frame that arrives in parts
    /// ([`Config::stream_frames`]), text messages in several frames, compressed
    /// messages, frames that come while something else is queued, and control frames
    /// (pings are answered here as always). Replies sent either way keep the peer's
    /// frame boundaries, so the two mix within a message. A client, or a connection
    /// without [`Config::deliver_fragments`], echoes nothing itself: every message is
    /// returned.
    ///
    /// Keep the queue written out before the next read, as an echo does anyway: a frame
    /// echoed in place holds on to the read buffer it came in until it is written.
    ///
    /// # Errors
    /// As [`Connection::read`].
    pub fn read_echo(
        &mut self,
        input: &mut BytesMut,
        mut clock: impl FnMut() -> Instant,
    ) -> Result<Option<Message>, Error> {
        let echo = self.role == Role::Server && self.config.deliver_fragments;
        self.read_at(
            input,
            &mut Now {
                clock: &mut clock,
                at: None,
            },
            echo,
        )
    }

    fn read_at(
        &mut self,
        input: &mut BytesMut,
        now: &mut Now<'_>,
        echo: bool,
    ) -> Result<Option<Message>, Error> {
        if let Some(heartbeat) = self.heartbeat.as_mut() {
            if heartbeat.last_activity.is_none() {
                heartbeat.last_activity = Some(now.get());
            }
        }
        loop {
            if self.read_closed {
                input.clear();
                return Ok(None);
            }
            let result = match self.read_frame(input) {
                Ok(Some((header, mut frame, room))) => {
                    // Any frame proves the peer alive (B1).
                    if let Some(heartbeat) = self.heartbeat.as_mut() {
                        heartbeat.last_activity = Some(now.get());
                        heartbeat.ping_sent = None;
                    }
                    if echo && room > 0 && self.echoes_in_place(&header) {
                        self.echo_in_place(&header, frame, room).map(|()| None)
                    } else {
                        frame.advance(room);
                        self.on_frame(header, frame, now)
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => Err(e),
            };
            match result {
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => continue,
                Err(e) => {
                    input.clear();
                    self.fail(&e, now);
                    return Err(e);
                }
            }
        }
    }

    /// Whether [`Connection::read_with`] could do anything with `input`: false when
    /// `input` is empty and nothing waits for a first read (the heartbeat's clock
    /// starts at the first read), so that a transport wrapper can skip the call
    /// before it reads the transport.
    pub fn wants_read(&self, input: &BytesMut) -> bool {
        !input.is_empty()
            || self
                .heartbeat
                .as_ref()
                .is_some_and(|heartbeat| heartbeat.last_activity.is_none())
    }

    /// How many more bytes the frame in progress needs, at least 1, given `input`
    /// (a header not yet complete asks for the rest of the largest header).
    pub fn read_hint(&self, input: &BytesMut) -> usize {
        match self.header {
            Some(h) => {
                let need = (usize::from(self.header_len) + h.payload_len as usize)
                    .saturating_sub(input.len())
                    .max(1);
                if self.streams(&h) {
                    // A piece is delivered as soon as it arrives: no need to wait
                    // for, or to hold room for, the whole frame.
                    need.min(STREAM_WINDOW)
                } else {
                    need
                }
            }
            None => MAX_HEADER_LEN.saturating_sub(input.len()).max(1),
        }
    }

    /// The next frame, or the next piece of one, once `input` has it: its header, and
    /// its bytes split off `input`. A whole frame comes with its header in front of the
    /// payload, that many bytes of room (the third value); a piece comes without.
    fn read_frame(
        &mut self,
        input: &mut BytesMut,
    ) -> Result<Option<(FrameHeader, BytesMut, usize)>, Error> {
        let (header, hlen) = match self.header {
            Some(h) => (h, usize::from(self.header_len)),
            None => {
                let Some((header, hlen)) = FrameHeader::decode(input)? else {
                    return Ok(None);
                };
                self.check_header(&header)?;
                self.header = Some(header);
                // A header is at most MAX_HEADER_LEN (14) bytes.
                self.header_len = hlen as u8;
                self.progress = 0;
                (header, hlen)
            }
        };
        let len = header.payload_len as usize;
        let available = (input.len() - hlen).min(len);
        if available > self.progress {
            let chunk = &mut input[hlen + self.progress..hlen + available];
            if let Some(key) = header.mask {
                apply_mask(chunk, key, self.progress);
            }
            if self.check_utf8 {
                self.utf8
                    .feed(chunk)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            self.progress = available;
        }
        if available < len {
            if available >= STREAM_PIECE_MIN && self.streams(&header) {
                let (piece, payload) = self.split_frame(input, header, hlen, available);
                return Ok(Some((piece, payload, 0)));
            }
            return Ok(None);
        }
        self.delivering_rest = hlen == 0;
        let frame = input.split_to(hlen + len);
        self.header = None;
        Ok(Some((header, frame, hlen)))
    }

    /// Whether [`Connection::read_echo`] sends the whole data frame `header` back in
    /// place: see there. The reply must go out as the same frame (opcode, FIN) that
    /// [`Connection::send_fragment`] would make of it, so that replies in place and
    /// replies the caller sends keep one message consistent.
    fn echoes_in_place(&self, header: &FrameHeader) -> bool {
        if self.reading_compressed
            || self.deflate.is_some()
            || self.frame_out.is_some()
            || !self.transmit.is_empty()
            || self.state != State::Open
            || self.close_sent
        {
            return false;
        }
        let kind = match header.opcode {
            OpCode::Binary => DataKind::Binary,
            // A text message in one frame: its UTF-8 is checked whole before it goes
            // back. One in several frames is returned, to be answered whole.
            OpCode::Text if header.fin => DataKind::Text,
            OpCode::Continuation => match &self.incoming {
                Some(incoming) if incoming.kind == DataKind::Binary => DataKind::Binary,
                _ => return false,
            },
            _ => return false,
        };
        self.next_opcode(kind) == Some(header.opcode)
    }

    /// The opcode of the next data frame of `kind` this side sends: a continuation
    /// inside a message, else the kind's own; `None` inside a message of the other kind.
    fn next_opcode(&self, kind: DataKind) -> Option<OpCode> {
        match self.outgoing {
            Some(current) if current != kind => None,
            Some(_) => Some(OpCode::Continuation),
            None if kind == DataKind::Text => Some(OpCode::Text),
            None => Some(OpCode::Binary),
        }
    }

    /// Sends the whole, unmasked data frame `frame` (`room` header bytes, then the
    /// payload) back from where it lies, after the bookkeeping [`Connection::on_data`]
    /// does for a frame it delivers as a fragment.
    fn echo_in_place(
        &mut self,
        header: &FrameHeader,
        mut frame: BytesMut,
        room: usize,
    ) -> Result<(), Error> {
        let len = frame.len() - room;
        let mut incoming = self.start_data(header);
        incoming.received += len;
        let kind = incoming.kind;
        // A whole frame: the message ends with it if it is the last.
        self.end_fragment(incoming, header.fin)?;
        let reply = FrameHeader {
            fin: header.fin,
            rsv1: false,
            opcode: header.opcode,
            mask: None,
            payload_len: len as u64,
        };
        let mut encoded = [0u8; MAX_HEADER_LEN];
        let hlen = reply.encode(&mut encoded);
        // The peer's header had the same length field and a masking key more.
        debug_assert_eq!(hlen + 4, room);
        let start = room - hlen;
        frame[start..room].copy_from_slice(&encoded[..hlen]);
        frame.advance(start);
        if header.opcode != OpCode::Continuation {
            self.sending_compressed = false;
        }
        self.outgoing = (!header.fin).then_some(kind);
        self.transmit.set_tail(frame);
        Ok(())
    }

    /// Whether the frame in progress is handed out in pieces (`stream_frames`).
    fn streams(&self, header: &FrameHeader) -> bool {
        self.config.stream_frames
            && self.config.deliver_fragments
            && !self.reading_compressed
            && matches!(
                header.opcode,
                OpCode::Text | OpCode::Binary | OpCode::Continuation
            )
    }

    /// Hands out the `available` unmasked payload bytes of a frame as a piece and keeps
    /// the rest as a continuation frame, as if the peer had sent the frame in two: the
    /// rest's masking key is rotated to where the piece ended. The piece keeps the
    /// frame's FIN bit; [`Connection::frame_rest`] tells that more of it follows.
    fn split_frame(
        &mut self,
        input: &mut BytesMut,
        header: FrameHeader,
        hlen: usize,
        available: usize,
    ) -> (FrameHeader, BytesMut) {
        self.delivering_rest = hlen == 0;
        input.advance(hlen);
        let payload = input.split_to(available);
        let piece = FrameHeader {
            payload_len: available as u64,
            ..header
        };
        self.header = Some(FrameHeader {
            fin: header.fin,
            rsv1: false,
            opcode: OpCode::Continuation,
            mask: header.mask.map(|key| rotate_key(key, available)),
            payload_len: header.payload_len - available as u64,
        });
        self.header_len = 0;
        self.progress = 0;
        (piece, payload)
    }

    /// Payload bytes still to come of the frame whose piece was just read: the rest of a
    /// frame split by `stream_frames`, 0 once a frame is read to its end.
    fn frame_rest(&self) -> u64 {
        match self.header {
            Some(rest) if self.header_len == 0 => rest.payload_len,
            _ => 0,
        }
    }

    /// The checks that need the connection's state (RFC 6455 §5.1, §5.2, §5.4).
    fn check_header(&mut self, h: &FrameHeader) -> Result<(), Error> {
        // RSV1 marks a compressed message: only on its first frame, only when
        // permessage-deflate was negotiated (RFC 7692 §6).
        let starts_message = matches!(h.opcode, OpCode::Text | OpCode::Binary);
        if h.rsv1 && !(starts_message && self.deflate.is_some()) {
            return Err(ProtocolError::UnexpectedRsv1.into());
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::ExpectedMask.into()),
            (Role::Client, true) => return Err(ProtocolError::UnexpectedMask.into()),
            _ => {}
        }
        let kind = match h.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                self.check_utf8 = false;
                return Ok(());
            }
            OpCode::Continuation => match &self.incoming {
                Some(incoming) => incoming.kind,
                None => return Err(ProtocolError::InvalidOpcode(0).into()),
            },
            OpCode::Text | OpCode::Binary if self.incoming.is_some() => {
                return Err(ProtocolError::InvalidOpcode(h.opcode.as_u8()).into());
            }
            OpCode::Text => DataKind::Text,
            OpCode::Binary => DataKind::Binary,
        };
        let (buffered, fragments) = self
            .incoming
            .as_ref()
            .map_or((0, 0), |m| (m.received, m.fragments));
        let max = self.config.max_payload as u64;
        if max > 0 && buffered as u64 + h.payload_len > max {
            return Err(LimitError::MessageTooLarge.into());
        }
        if h.payload_len > usize::MAX as u64 {
            return Err(LimitError::FrameLengthUnsupported.into());
        }
        if self.config.max_fragments > 0 && fragments as usize + 1 > self.config.max_fragments {
            return Err(LimitError::TooManyParts.into());
        }
        if h.opcode != OpCode::Continuation {
            self.utf8 = Utf8Validator::new();
            self.reading_compressed = h.rsv1;
        }
        // Compressed text is checked after inflating, in `on_frame`.
        self.check_utf8 =
            kind == DataKind::Text && !self.config.skip_utf8_validation && !self.reading_compressed;
        Ok(())
    }

    fn on_frame(
        &mut self,
        header: FrameHeader,
        payload: BytesMut,
        now: &mut Now<'_>,
    ) -> Result<Option<Message>, Error> {
        match header.opcode {
            OpCode::Ping => {
                let payload = payload.freeze();
                if self.config.auto_pong && self.state == State::Open {
                    match self.frame_out.as_mut() {
                        None => self.write_frame(OpCode::Pong, true, &payload),
                        // Mid-frame: the latest ping gets the pong after the frame.
                        Some(frame) => frame.held.pong = Some(payload.clone()),
                    }
                }
                Ok(Some(Message::Ping(payload)))
            }
            OpCode::Pong => Ok(Some(Message::Pong(payload.freeze()))),
            OpCode::Close => self
                .on_close(&payload, now)
                .map(|frame| Some(Message::Close(frame))),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => self.on_data(header, payload),
        }
    }

    /// A data frame: appended to the message, or with `deliver_fragments` handed out
    /// as it is (RFC 6455 §5.4). Either way UTF-8 is checked across frames, the whole
    /// message counts against `max_payload`, and compressed frames are inflated one by
    /// one (RFC 7692 §6.2).
    fn on_data(
        &mut self,
        header: FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<Message>, Error> {
        let mut incoming = self.start_data(&header);
        let max = self.config.max_payload;
        if self.reading_compressed {
            let deflate = self
                .deflate
                .as_mut()
                .expect("RSV1 accepted only with deflate");
            let before = incoming.data.len();
            // Bytes of the message not held in `data` (handed out as fragments).
            let delivered = incoming.received - before;
            let limit = if max == 0 {
                0
            } else {
                max.saturating_sub(delivered).max(1)
            };
            deflate.decompress(&payload, &mut incoming.data, limit, header.fin)?;
            let produced = incoming.data.len() - before;
            incoming.received += produced;
            if max > 0 && incoming.received > max {
                return Err(LimitError::MessageTooLarge.into());
            }
            if incoming.kind == DataKind::Text && !self.config.skip_utf8_validation {
                self.utf8
                    .feed(&incoming.data[before..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        } else {
            incoming.received += payload.len();
            if incoming.data.is_empty() {
                // Hand the frame's buffer over: no copy for single-frame messages.
                incoming.data = payload;
            } else {
                incoming.data.extend_from_slice(&payload);
            }
        }
        let text_checked = self.checks_text(incoming.kind);
        if self.config.deliver_fragments {
            // Inflated data is split off, leaving the buffer's spare room for the next
            // frame; an uncompressed frame's own buffer is taken whole (splitting a
            // shared buffer costs a reference count up and down per frame).
            let data = if self.reading_compressed {
                incoming.data.split()
            } else {
                std::mem::take(&mut incoming.data)
            };
            let fragment = Fragment {
                kind: incoming.kind,
                data: data.freeze(),
                fin: header.fin,
                rest: self.frame_rest(),
            };
            self.end_fragment(incoming, fragment.ends_message())?;
            return Ok(Some(Message::Fragment(fragment)));
        }
        if !header.fin {
            self.incoming = Some(incoming);
            return Ok(None);
        }
        let data = incoming.data.freeze();
        Ok(Some(match incoming.kind {
            DataKind::Binary => Message::Binary(data),
            DataKind::Text if !text_checked => Message::UncheckedText(data),
            DataKind::Text => {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                Message::Text(Utf8Bytes::from_validated(data))
            }
        }))
    }

    /// The message a data frame belongs to, its frames counted.
    fn start_data(&mut self, header: &FrameHeader) -> Incoming {
        let mut incoming = self.incoming.take().unwrap_or_else(|| Incoming {
            kind: if header.opcode == OpCode::Text {
                DataKind::Text
            } else {
                DataKind::Binary
            },
            data: BytesMut::new(),
            received: 0,
            fragments: 0,
        });
        if !self.delivering_rest {
            incoming.fragments = incoming.fragments.saturating_add(1);
        }
        incoming
    }

    /// Whether a message of `kind` has its UTF-8 checked as it arrives.
    fn checks_text(&self, kind: DataKind) -> bool {
        kind == DataKind::Text && !self.config.skip_utf8_validation
    }

    /// After a fragment: the message is done when it `ends`, its text checked to the
    /// end; otherwise it is kept for the next frame.
    fn end_fragment(&mut self, incoming: Incoming, ends: bool) -> Result<(), Error> {
        if !ends {
            self.incoming = Some(incoming);
        } else if self.checks_text(incoming.kind) {
            // The last frame must not end inside a character.
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    /// A close frame arrived (RFC 6455 §5.5.1, §7.1.5).
    fn on_close(&mut self, payload: &[u8], now: &mut Now<'_>) -> Result<Option<CloseFrame>, Error> {
        let frame = match payload {
            [] => None,
            [_] => return Err(ProtocolError::InvalidControlPayloadLength.into()),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !CloseCode(code).is_sendable() {
                    return Err(ProtocolError::InvalidCloseCode(code).into());
                }
                let reason = if self.config.skip_utf8_validation {
                    String::from_utf8_lossy(reason).into_owned()
                } else {
                    utf8::validate(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
                    String::from_utf8_lossy(reason).into_owned()
                };
                Some(CloseFrame {
                    code: CloseCode(code),
                    reason,
                })
            }
        };
        self.close_received = true;
        self.read_closed = true;
        if !self.close_sent {
            // Echo the code and reason, as ws does (RFC 6455 §5.5.1).
            self.write_close(frame.as_ref());
        }
        self.state = State::Closed;
        match self.role {
            // The server closes TCP first (RFC 6455 §7.1.1); once a frame being sent in
            // pieces is done (RFC 6455 §5.5.1 lets the message finish), which it must be
            // within close_timeout.
            Role::Server => {
                self.close_transport = true;
                self.bound_closing(|| now.get());
            }
            // The client waits for the server to close TCP, for a bounded time.
            Role::Client => self.deadline = Some(now.get() + self.config.close_timeout),
        }
        Ok(frame)
    }

    /// Fails the connection (RFC 6455 §7.1.7): a close frame with the error's code, then
    /// the transport is to be closed.
    ///
    /// A frame being sent in pieces is cut off: a close frame cannot follow half a frame,
    /// so the transport is closed without one (the peer sees 1006).
    ///
    /// The peer may still be sending (the rest of a message over `max_payload`, say):
    /// a transport closed with received bytes unread answers them with a reset (TCP
    /// RST), on which the peer's system discards what it has received and not yet read,
    /// the close frame included. So the transport is drained as `ws` does after an
    /// error: its write side is shut down once the close frame is written, and what
    /// arrives is read and discarded until the peer's end of stream or `close_timeout`
    /// ([`Connection::should_drain`]).
    fn fail(&mut self, error: &Error, now: &mut Now<'_>) {
        let cut = self.cut_frame_out();
        if !self.close_sent && !cut {
            let code = error.close_code().unwrap_or(CloseCode::INTERNAL_ERROR);
            self.write_close(Some(&CloseFrame {
                code,
                reason: String::new(),
            }));
        }
        let draining = !self.read_closed;
        self.read_closed = true;
        self.incoming = None;
        self.state = State::Closed;
        self.close_transport = true;
        self.bound_closing(|| now.get());
        if draining && !self.abort_transport {
            self.draining = true;
            self.deadline
                .get_or_insert_with(|| now.get() + self.config.close_timeout);
        }
    }

    /// The transport is to be closed once what is queued is written: within
    /// `close_timeout` (kept if one runs already), as a peer that does not read would
    /// otherwise hold the connection open for ever. Nothing queued, nothing to wait for.
    fn bound_closing(&mut self, now: impl FnOnce() -> Instant) {
        if self.deadline.is_none() && (self.frame_out.is_some() || !self.transmit.is_empty()) {
            self.deadline = Some(now() + self.config.close_timeout);
        }
    }

    /// The transport reported end of stream at `now`.
    ///
    /// Returns the close frame to report if this ends the connection abnormally (no close
    /// frame was received: 1006). A frame being sent in pieces is cut off: the peer is
    /// gone, and the transport is to be closed once what is queued is written, within
    /// `close_timeout` (a peer that half-closed may still read it; one that does not
    /// read holds the connection no longer).
    pub fn handle_eof(&mut self, now: Instant) -> Option<CloseFrame> {
        let abnormal = !self.close_received && !self.read_closed;
        self.draining = false;
        self.cut_frame_out();
        self.read_closed = true;
        self.state = State::Closed;
        self.close_transport = true;
        self.deadline = None;
        self.bound_closing(|| now);
        abnormal.then(|| CloseFrame::new(CloseCode::ABNORMAL_CLOSURE, ""))
    }

    /// When [`Connection::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Once the transport is to be closed and all is written, the close timeout has
        // nothing left to bound, but the draining of a failed connection.
        let close = self.deadline.filter(|_| {
            !(self.should_close_transport() && self.transmit.is_empty() && !self.draining)
        });
        match (close, self.heartbeat_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn heartbeat_deadline(&self) -> Option<Instant> {
        let heartbeat = self.config.heartbeat?;
        if self.state != State::Open {
            return None;
        }
        let clock = self.heartbeat.as_ref()?;
        match clock.ping_sent {
            Some(sent) => Some(sent + heartbeat.timeout),
            None => Some(clock.last_activity? + heartbeat.interval),
        }
    }

    /// Time passed: a close handshake that outlived `close_timeout` ends, and so does
    /// the writing of what was left to send when the transport was to be closed: the
    /// transport is to be closed at once ([`Connection::should_abort_transport`]), as
    /// `ws` destroys the socket then. The heartbeat sends its ping after `interval` of
    /// silence, and gives the peer up `timeout` after it
    /// ([`Connection::heartbeat_expired`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.cut_frame_out();
            self.read_closed = true;
            self.state = State::Closed;
            self.close_transport = true;
            self.abort_transport = true;
        }
        if self.heartbeat_deadline().is_some_and(|d| now >= d) {
            let clock = self.heartbeat.as_mut().expect("a heartbeat deadline");
            if clock.ping_sent.is_some() {
                // Nothing arrived since the ping: the peer is gone.
                self.heartbeat_expired = true;
                self.terminate();
            } else {
                clock.ping_sent = Some(now);
                self.write_control(OpCode::Ping, b"");
            }
        }
    }

    /// Whether the heartbeat gave the peer up (no frame within `timeout` of a ping).
    pub fn heartbeat_expired(&self) -> bool {
        self.heartbeat_expired
    }

    /// Whether the caller should close the transport once the transmit buffer is written.
    /// A frame being sent in pieces is finished first (or cut off by `close_timeout`).
    pub fn should_close_transport(&self) -> bool {
        self.close_transport && self.frame_out.is_none()
    }

    /// Whether the caller should close the transport now, without writing what is still
    /// queued: after [`Connection::terminate`], after the heartbeat gave the peer up, or
    /// when the close handshake, or the writing of what was left to send, outlived
    /// `close_timeout` (a peer that does not read).
    pub fn should_abort_transport(&self) -> bool {
        self.abort_transport
    }

    /// Whether the transport, its write side shut down, is still to be read to its end:
    /// after a failure (a protocol error, a message over `max_payload` ...) while the
    /// peer may still be sending. Read on, passing the bytes to [`Connection::read`]
    /// (which discards them), until end of stream ([`Connection::handle_eof`]) or the
    /// deadline of [`Connection::poll_timeout`] (`close_timeout`) passes. Closing with
    /// unread bytes would reset the connection, and the peer would lose the close frame.
    pub fn should_drain(&self) -> bool {
        self.draining && !self.abort_transport
    }

    /// Whether the caller is done with the transport and should drop it: aborted
    /// ([`Connection::should_abort_transport`]), or closed with everything written and,
    /// after a failure, drained ([`Connection::should_drain`]).
    pub fn is_finished(&self) -> bool {
        self.abort_transport
            || (self.should_close_transport() && self.transmit.is_empty() && !self.draining)
    }

    /// Whether reading is over (close handshake finished, failure, or end of stream).
    pub fn is_read_closed(&self) -> bool {
        self.read_closed
    }

    // ----------------------------------------------------------------- writing

    /// Sends a data frame: a whole message with `fin`, or one piece of a message streamed
    /// as several frames (`ws`'s `fin: false`); the first piece fixes the message type.
    ///
    /// # Errors
    /// [`ApiMisuse::SendAfterClose`] once a close frame was sent or received, and
    /// [`ApiMisuse::FragmentTypeMismatch`] for a piece of another type than the message in
    /// progress.
    pub fn send(&mut self, kind: DataKind, payload: &[u8], fin: bool) -> Result<(), Error> {
        self.send_with(kind, payload, fin, true)
    }

    /// [`Connection::send`] with `ws`'s `compress` option: `false` sends this message
    /// uncompressed even when permessage-deflate is negotiated and the message is over
    /// the threshold. The first piece of a fragmented message decides for all of it.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_with(
        &mut self,
        kind: DataKind,
        payload: &[u8],
        fin: bool,
        compress: bool,
    ) -> Result<(), Error> {
        self.send_payload(kind, Payload::Slice(payload), fin, compress)
    }

    /// [`Connection::send_with`] for a payload the caller hands over: a payload of
    /// [`ZERO_COPY_MIN`] bytes or more is not copied but referenced from the transmit
    /// queue. A client masks it in place when nothing else refers to it (a `Bytes` made
    /// from a `Vec` or `BytesMut` and not cloned), and copies it otherwise.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_bytes(
        &mut self,
        kind: DataKind,
        payload: Bytes,
        fin: bool,
        compress: bool,
    ) -> Result<(), Error> {
        self.send_payload(kind, Payload::Shared(payload), fin, compress)
    }

    /// Sends a [`Fragment`] as it was read: a whole frame, or with `rest > 0` a piece of
    /// a frame whose length is `data.len() + rest` (the header goes out with the first
    /// piece, and the next pieces must add up to it, with the same `fin`). A message
    /// that is compressed (permessage-deflate, `compress`) sends each piece as a frame
    /// of its own instead, as a compressed frame's length is not known ahead.
    ///
    /// Control frames queued while a frame is incomplete (pongs, pings, the close frame)
    /// follow its last piece. Its pieces may still be sent after a close frame was queued
    /// or received; if it is not finished within `close_timeout`, or the connection
    /// fails, it is cut off and the transport closed.
    ///
    /// # Errors
    /// As [`Connection::send`], and [`ApiMisuse::FramePieceMismatch`] for a piece that
    /// does not fit the frame in progress.
    pub fn send_fragment(&mut self, fragment: Fragment, compress: bool) -> Result<(), Error> {
        self.send_piece(
            fragment.kind,
            Payload::Shared(fragment.data),
            fragment.fin,
            fragment.rest,
            compress,
        )
    }

    fn send_payload(
        &mut self,
        kind: DataKind,
        payload: Payload<'_>,
        fin: bool,
        compress: bool,
    ) -> Result<(), Error> {
        self.send_piece(kind, payload, fin, 0, compress)
    }

    fn send_piece(
        &mut self,
        kind: DataKind,
        payload: Payload<'_>,
        fin: bool,
        rest: u64,
        compress: bool,
    ) -> Result<(), Error> {
        if let Some(frame) = self.frame_out.take() {
            return self.continue_frame(frame, kind, payload, fin, rest);
        }
        self.check_open()?;
        let frame_len = (payload.as_slice().len() as u64).checked_add(rest);
        if frame_len.is_none_or(|len| len > MAX_FRAME_LEN) {
            // Longer than a peer accepts (2^53 - 1, as ws).
            return Err(ApiMisuse::FramePieceMismatch.into());
        }
        let opcode = self
            .next_opcode(kind)
            .ok_or(ApiMisuse::FragmentTypeMismatch)?;
        if opcode != OpCode::Continuation {
            self.sending_compressed = compress
                && self
                    .deflate
                    .as_ref()
                    .is_some_and(|d| d.should_compress(payload.as_slice().len()));
        }
        let ends_message = fin && rest == 0;
        self.outgoing = if ends_message { None } else { Some(kind) };
        match (self.sending_compressed, self.deflate.as_deref_mut()) {
            (true, Some(deflate)) => {
                let compressed = deflate.compress(payload.as_slice(), ends_message);
                let rsv1 = opcode != OpCode::Continuation;
                write_frame(
                    self.transmit.tail(),
                    self.role,
                    &self.config,
                    opcode,
                    ends_message,
                    rsv1,
                    compressed,
                );
                if ends_message {
                    // Between messages hold no compression buffer.
                    deflate.shrink();
                }
            }
            _ => {
                let mask = self.queue_data_frame(opcode, fin, payload, rest);
                if rest > 0 {
                    self.frame_out = Some(Box::new(FrameOut {
                        remaining: rest,
                        mask,
                        fin,
                        held: Held::default(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Queues the header of an uncompressed data frame of `payload` and `rest` more
    /// bytes, then `payload`; returns a client's masking key rotated to where the next
    /// piece starts.
    fn queue_data_frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: Payload<'_>,
        rest: u64,
    ) -> Option<[u8; 4]> {
        let mask = self.new_mask();
        let len = payload.as_slice().len();
        let header = FrameHeader {
            fin,
            rsv1: false,
            opcode,
            mask,
            payload_len: len as u64 + rest,
        };
        let mut encoded = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut encoded);
        self.queue_payload(&encoded[..hlen], payload, mask);
        mask.map(|key| rotate_key(key, len))
    }

    /// The next piece of the frame in progress.
    fn continue_frame(
        &mut self,
        mut frame: Box<FrameOut>,
        kind: DataKind,
        payload: Payload<'_>,
        fin: bool,
        rest: u64,
    ) -> Result<(), Error> {
        let misfit = if self.outgoing != Some(kind) {
            Some(ApiMisuse::FragmentTypeMismatch)
        } else if fin != frame.fin
            || (payload.as_slice().len() as u64).checked_add(rest) != Some(frame.remaining)
        {
            Some(ApiMisuse::FramePieceMismatch)
        } else {
            None
        };
        if let Some(misuse) = misfit {
            self.frame_out = Some(frame);
            return Err(misuse.into());
        }
        self.write_piece(&mut frame, payload);
        if frame.remaining > 0 {
            self.frame_out = Some(frame);
            return Ok(());
        }
        if fin {
            self.outgoing = None;
        }
        if let Some(ping) = frame.held.pong {
            self.write_frame(OpCode::Pong, true, &ping);
        }
        self.transmit.tail().extend_from_slice(&frame.held.frames);
        Ok(())
    }

    /// Queues a piece of the frame in progress and counts it off.
    fn write_piece(&mut self, frame: &mut FrameOut, payload: Payload<'_>) {
        let len = payload.as_slice().len();
        self.queue_payload(&[], payload, frame.mask);
        frame.mask = frame.mask.map(|key| rotate_key(key, len));
        frame.remaining -= len as u64;
    }

    /// Queues `header` (empty for a later piece) and `payload` masked with `mask`:
    /// referenced where [`Payload::into_referenced`] allows, copied otherwise.
    fn queue_payload(&mut self, header: &[u8], payload: Payload<'_>, mask: Option<[u8; 4]>) {
        match payload.into_referenced(mask) {
            Ok(bytes) => self.transmit.push_shared(header, bytes),
            Err(payload) => put_masked(self.transmit.tail(), header, payload.as_slice(), mask),
        }
    }

    /// Drops the frame being sent in pieces and the control frames held for its end;
    /// returns whether there was one (the transmit queue then ends inside a frame).
    fn cut_frame_out(&mut self) -> bool {
        self.frame_out.take().is_some()
    }

    /// Sends a whole text message.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send(DataKind::Text, text.as_bytes(), true)
    }

    /// Sends a whole binary message.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send(DataKind::Binary, data, true)
    }

    /// Sends a ping.
    ///
    /// # Errors
    /// [`ApiMisuse::ControlPayloadTooLong`] over 125 bytes; [`ApiMisuse::SendAfterClose`].
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.control(OpCode::Ping, payload)
    }

    /// Sends a pong (unsolicited, or to answer a ping when `auto_pong` is off).
    ///
    /// # Errors
    /// As [`Connection::ping`].
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.control(OpCode::Pong, payload)
    }

    fn control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > 125 {
            return Err(ApiMisuse::ControlPayloadTooLong.into());
        }
        self.check_open()?;
        self.write_control(opcode, payload);
        Ok(())
    }

    /// Starts the close handshake (RFC 6455 §7.1.2): sends a close frame with `frame`'s
    /// code and reason, or an empty one for `None`. Does nothing if a close frame was
    /// already sent. The peer's close frame is then awaited for `close_timeout`.
    ///
    /// # Errors
    /// [`ApiMisuse::InvalidCloseCode`] for a code that may not be sent and
    /// [`ApiMisuse::CloseReasonTooLong`] for a reason over 123 bytes.
    pub fn close(&mut self, frame: Option<&CloseFrame>, now: Instant) -> Result<(), Error> {
        if let Some(frame) = frame {
            if !frame.code.is_sendable() {
                return Err(ApiMisuse::InvalidCloseCode(frame.code.0).into());
            }
            if frame.reason.len() > MAX_REASON_LEN {
                return Err(ApiMisuse::CloseReasonTooLong.into());
            }
        }
        if self.close_sent || self.state == State::Closed {
            return Ok(());
        }
        self.write_close(frame);
        self.state = State::Closing;
        self.deadline = Some(now + self.config.close_timeout);
        Ok(())
    }

    /// Ends the connection at once without a close handshake (`ws`'s `terminate()`):
    /// nothing more is written ([`Connection::should_abort_transport`]).
    pub fn terminate(&mut self) {
        self.cut_frame_out();
        self.read_closed = true;
        self.state = State::Closed;
        self.close_transport = true;
        self.abort_transport = true;
        self.deadline = None;
    }

    /// The bytes waiting to be written to the transport, a [`bytes::Buf`]: write its
    /// chunks (vectored where the transport can), then `advance` it by the number of
    /// bytes written. [`Transmit::shrink`] frees its memory once it is empty.
    pub fn transmit(&mut self) -> &mut Transmit {
        &mut self.transmit
    }

    /// Bytes waiting to be written to the transport (`ws`'s `bufferedAmount`), control
    /// frames held for the end of a frame sent in pieces included.
    #[inline]
    pub fn transmit_len(&self) -> usize {
        let held = self.frame_out.as_ref().map_or(0, |frame| frame.held.len());
        self.transmit.len() + held
    }

    /// Whether a frame is being sent in pieces (its header is out, pieces are to come).
    pub fn is_mid_frame(&self) -> bool {
        self.frame_out.is_some()
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.close_sent || self.state != State::Open {
            return Err(ApiMisuse::SendAfterClose.into());
        }
        Ok(())
    }

    fn write_close(&mut self, frame: Option<&CloseFrame>) {
        let mut payload = [0u8; 125];
        let len = match frame {
            Some(frame) => {
                payload[..2].copy_from_slice(&frame.code.0.to_be_bytes());
                // Cut at a char boundary: a lossily decoded reason (skip_utf8_validation)
                // can be longer than a control frame holds (RFC 6455 §5.5.1).
                let mut end = frame.reason.len().min(MAX_REASON_LEN);
                while !frame.reason.is_char_boundary(end) {
                    end -= 1;
                }
                let reason = &frame.reason.as_bytes()[..end];
                payload[2..2 + reason.len()].copy_from_slice(reason);
                2 + reason.len()
            }
            None => 0,
        };
        self.write_control(OpCode::Close, &payload[..len]);
        self.close_sent = true;
    }

    /// Queues a control frame, or holds it while a frame goes out in pieces.
    fn write_control(&mut self, opcode: OpCode, payload: &[u8]) {
        let Some(frame) = self.frame_out.as_mut() else {
            return self.write_frame(opcode, true, payload);
        };
        write_frame(
            &mut frame.held.frames,
            self.role,
            &self.config,
            opcode,
            true,
            false,
            payload,
        );
    }

    /// A fresh masking key on a client (RFC 6455 §5.3), none on a server.
    fn new_mask(&self) -> Option<[u8; 4]> {
        new_mask(self.role, &self.config)
    }

    fn write_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        write_frame(
            self.transmit.tail(),
            self.role,
            &self.config,
            opcode,
            fin,
            false,
            payload,
        );
    }
}

/// Appends a frame to `out`: masked with a fresh key on a client (RFC 6455 §5.3).
fn write_frame(
    out: &mut BytesMut,
    role: Role,
    config: &Config,
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    payload: &[u8],
) {
    let mask = new_mask(role, config);
    let header = FrameHeader {
        fin,
        rsv1,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut encoded = [0u8; MAX_HEADER_LEN];
    let hlen = header.encode(&mut encoded);
    put_masked(out, &encoded[..hlen], payload, mask);
}

/// Appends `header` and a copy of `payload`, masked with `mask` if any.
fn put_masked(out: &mut BytesMut, header: &[u8], payload: &[u8], mask: Option<[u8; 4]>) {
    out.reserve(header.len() + payload.len());
    out.put_slice(header);
    match mask {
        Some(key) => extend_masked(out, payload, key, 0),
        None => out.put_slice(payload),
    }
}

/// A fresh masking key on a client (RFC 6455 §5.3), none on a server.
#[inline]
fn new_mask(role: Role, config: &Config) -> Option<[u8; 4]> {
    match role {
        Role::Client => Some(match &config.generate_mask {
            Some(generate) => generate(),
            None => random_key(),
        }),
        Role::Server => None,
    }
}

/// A masking key from the thread's CSPRNG (`rand`'s `ThreadRng`), drawn 64 keys at a
/// time into a per-thread pool, as `ws` fills its pool with `randomFillSync`. Setting up
/// a draw costs more than the bytes it yields, so one draw serves 64 frames.
fn random_key() -> [u8; 4] {
    use std::cell::RefCell;

    const KEYS: usize = 64;
    thread_local! {
        /// The keys not yet used, from `next` on; empty (`next == KEYS`) at first.
        static POOL: RefCell<([[u8; 4]; KEYS], usize)> = const { RefCell::new(([[0; 4]; KEYS], KEYS)) };
    }
    POOL.with_borrow_mut(|(keys, next)| {
        if *next == KEYS {
            rand::RngCore::fill_bytes(&mut rand::rng(), keys.as_flattened_mut());
            *next = 0;
        }
        let key = keys[*next];
        *next += 1;
        key
    })
}

/// A payload to send: borrowed (copied into the transmit queue) or handed over.
enum Payload<'a> {
    Slice(&'a [u8]),
    Shared(Bytes),
}

impl<'a> Payload<'a> {
    /// The payload to queue by reference instead of copying, masked in place with `mask`
    /// (from its first byte): a handed-over payload of [`ZERO_COPY_MIN`] bytes or more
    /// that needs no mask, or that nothing else refers to. Otherwise the payload back,
    /// to be copied (and masked in the copy).
    fn into_referenced(self, mask: Option<[u8; 4]>) -> Result<Bytes, Payload<'a>> {
        let bytes = match self {
            Payload::Shared(bytes) if bytes.len() >= ZERO_COPY_MIN => bytes,
            payload => return Err(payload),
        };
        let Some(key) = mask else {
            return Ok(bytes);
        };
        match bytes.try_into_mut() {
            Ok(mut owned) => {
                apply_mask(&mut owned, key, 0);
                Ok(owned.freeze())
            }
            Err(bytes) => Err(Payload::Shared(bytes)),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Slice(slice) => slice,
            Payload::Shared(bytes) => bytes,
        }
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
