//! Reading: frames decoded from the caller's buffer, checked (RFC 6455 §5.1–§5.5, RFC
//! 7692 §6), and turned into messages, fragments or control frames.

use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::{Connection, DataKind, Now, Role, State};
use crate::error::{Error, LimitError, ProtocolError};
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::{apply_mask, rotate_key};
use crate::message::{Fragment, Message, Utf8Bytes};
use crate::utf8::Utf8Validator;

/// With `stream_frames`: the smallest piece of a frame handed out before the frame ends.
const STREAM_PIECE_MIN: usize = 4096;

/// With `stream_frames`: the most bytes of a frame in progress worth reading at once.
const STREAM_WINDOW: usize = 256 * 1024;

pub(super) struct Incoming {
    kind: DataKind,
    /// The message so far; in fragment mode only the frame being delivered.
    pub(super) data: BytesMut,
    /// Payload bytes of the message received so far (inflated), for `max_payload`.
    received: usize,
    /// Frames of the message so far (saturating; u32 keeps `Incoming` small).
    fragments: u32,
}

impl Connection {
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
        )
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

    /// Whether reading is over (close handshake finished, failure, or end of stream).
    pub fn is_read_closed(&self) -> bool {
        self.read_closed
    }

    /// Whether to stop reading the transport for now: what is queued for the peer
    /// ([`Connection::transmit_len`]) is at or over the send queue's high-water mark
    /// ([`SendQueue::high_water`](crate::SendQueue::high_water)) while reading is not
    /// over. A peer that sends (pings, or messages an echo answers) but does not read
    /// could otherwise make the queue grow without bound. Read again once it is below
    /// the mark. Reading that is over (draining a failed connection's transport, which
    /// queues nothing) is not paused.
    #[inline]
    pub fn should_pause_reading(&self) -> bool {
        !self.read_closed && self.transmit_len() >= self.config.send_queue.high_water
    }

    fn read_at(
        &mut self,
        input: &mut BytesMut,
        now: &mut Now<'_>,
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
                    // Any frame proves the peer alive (the heartbeat).
                    if let Some(heartbeat) = self.heartbeat.as_mut() {
                        heartbeat.last_activity = Some(now.get());
                        heartbeat.ping_sent = None;
                    }
                    frame.advance(room);
                    self.on_frame(header, frame, now)
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
            self.incoming = Some(Box::new(incoming));
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
        let mut incoming = self
            .incoming
            .take()
            .map(|kept| *kept)
            .unwrap_or_else(|| Incoming {
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
            self.incoming = Some(Box::new(incoming));
        } else if self.checks_text(incoming.kind) {
            // The last frame must not end inside a character.
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }
}
