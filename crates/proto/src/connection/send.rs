//! Sending: data frames whole or in pieces, control frames, and their place in the
//! transmit queue (control frames wait for the end of a frame sent in pieces, RFC 6455
//! §5.4).

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Connection, DataKind, Role, State};
use crate::error::{ApiMisuse, Error};
use crate::frame::{FrameHeader, OpCode, MAX_FRAME_LEN, MAX_HEADER_LEN};
use crate::mask::{apply_mask, copy_masked, extend_masked, rotate_key};
use crate::message::Fragment;
use crate::prepared::PreparedFrame;
use crate::transmit::{Transmit, ZERO_COPY_MIN};

/// A frame being sent in pieces: its header, with the whole length, is queued.
pub(super) struct FrameOut {
    /// Payload bytes still to come.
    remaining: u64,
    /// A client's masking key, rotated to where the next piece starts.
    mask: Option<[u8; 4]>,
    /// The frame's FIN bit (every piece must carry it).
    fin: bool,
    /// Control frames queued meanwhile, sent after its last piece.
    pub(super) held: Held,
}

/// Control frames queued while a frame goes out in pieces: they may not go inside it
/// (RFC 6455 §5.4), so they follow its last piece.
#[derive(Default)]
pub(super) struct Held {
    /// The payload of the latest ping to answer: a pong answers only the most recent
    /// of the pings that arrived meanwhile (RFC 6455 §5.5.3), which bounds what a ping
    /// flood can queue.
    pub(super) pong: Option<Bytes>,
    /// Other control frames, encoded, in order (the close frame last).
    frames: BytesMut,
}

impl Held {
    fn len(&self) -> usize {
        self.frames.len() + self.pong.as_ref().map_or(0, |p| 2 + p.len())
    }
}

impl Connection {
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

    /// Queues a [`PreparedFrame`]: a whole message encoded once, for any number of server
    /// connections (a pub/sub fan-out). Nothing is encoded or copied here: the queue
    /// references the frame's header and payload.
    ///
    /// When nothing is queued, `write_now` is first offered the frame to write straight to
    /// the transport (a vectored write of [`PreparedFrame::header`] and
    /// [`PreparedFrame::payload`], which must not wait); it returns how many of the
    /// frame's bytes it wrote, and only the rest is queued. An idle connection thus takes
    /// the frame with no allocation at all. Return 0 to queue it all.
    ///
    /// # Errors
    /// [`ApiMisuse::PreparedFrameOnClient`] on a client connection (a client masks every
    /// frame with its own key, RFC 6455 §5.3); [`ApiMisuse::PreparedFrameMismatch`] for a
    /// compressed frame whose settings are not this connection's
    /// [`Deflate::shared`](crate::Deflate::shared) ones (its peer might not inflate
    /// it, or its compression context would no longer match the peer's), or while a
    /// fragmented message is being sent; as [`Connection::send`] once closing. An
    /// uncompressed frame is valid on any server connection, with or without
    /// permessage-deflate (RSV1 clear: an uncompressed message, RFC 7692 §6).
    pub fn send_prepared(
        &mut self,
        frame: &PreparedFrame,
        write_now: impl FnOnce(&PreparedFrame) -> usize,
    ) -> Result<(), Error> {
        if self.role != Role::Server {
            return Err(ApiMisuse::PreparedFrameOnClient.into());
        }
        self.check_open()?;
        if self.is_mid_message() {
            return Err(ApiMisuse::PreparedFrameMismatch.into());
        }
        if let Some(with) = frame.deflate() {
            if self.deflate.as_ref().and_then(|d| d.shared()) != Some(with) {
                return Err(ApiMisuse::PreparedFrameMismatch.into());
            }
        }
        let written = if self.transmit.is_empty() {
            write_now(frame).min(frame.len())
        } else {
            0
        };
        let header = frame.header();
        if written < header.len() {
            self.transmit
                .push_shared(&header[written..], frame.payload().clone());
        } else if written < frame.len() {
            let rest = frame.payload().slice(written - header.len()..);
            self.transmit.push_shared(&[], rest);
        }
        Ok(())
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

    /// Whether a message is being sent in several frames (`fin: false` sent, its last
    /// frame not yet) or a frame in pieces: another whole message cannot be sent now
    /// (RFC 6455 §5.4: the frames of a message are not interleaved with another's).
    pub fn is_mid_message(&self) -> bool {
        self.outgoing.is_some() || self.frame_out.is_some()
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

    /// Sends a whole, small data message with nothing queued before it by offering its
    /// frame to `write_now` first, from the stack: `write_now` writes what the transport
    /// takes without waiting and returns how many bytes that was; only the rest is
    /// queued. A send that writes out at once thus leaves the transmit queue untouched
    /// (no buffer is reserved, filled and emptied for it). A client's frame is masked
    /// with a fresh key as it is copied.
    ///
    /// Taken for an uncompressed message of at most [`SEND_NOW_MAX`] payload bytes, with
    /// nothing queued, nothing in progress either way (a fragmented message, a frame in
    /// pieces) and the connection open; returns `false` without calling `write_now`
    /// otherwise: send it with [`Connection::send_bytes`] then.
    #[inline]
    pub fn try_send_now(
        &mut self,
        kind: DataKind,
        payload: &[u8],
        write_now: impl FnOnce(&[u8]) -> usize,
    ) -> bool {
        if !(payload.len() <= SEND_NOW_MAX
            && self.transmit.is_empty()
            && self.sends_whole_uncompressed())
        {
            return false;
        }
        let mask = self.new_mask();
        let header = FrameHeader {
            fin: true,
            rsv1: false,
            opcode: kind.opcode(),
            mask,
            payload_len: payload.len() as u64,
        };
        let mut encoded = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut encoded);
        // Left uninitialized: zeroing the whole buffer would cost more than the copy
        // into it for most messages.
        let mut buffer = [MaybeUninit::<u8>::uninit(); MAX_HEADER_LEN + SEND_NOW_MAX];
        let frame = frame_in(&mut buffer, &encoded, hlen, payload, mask);
        let written = write_now(frame).min(frame.len());
        if written < frame.len() {
            self.transmit.tail().extend_from_slice(&frame[written..]);
        }
        true
    }

    /// Whether a whole message would go out now as it is: the connection open, nothing
    /// in progress either way (a fragmented message, a frame in pieces), no compression.
    #[inline]
    fn sends_whole_uncompressed(&self) -> bool {
        self.deflate.is_none()
            && !self.is_mid_message()
            && !self.close_sent
            && self.state == State::Open
    }

    /// Whether a data frame of `len` payload bytes goes out as the frame of a whole
    /// message, encoded in one piece: a server's uncompressed message that is copied
    /// (under [`ZERO_COPY_MIN`]), with nothing in progress either way, the connection open.
    #[inline]
    fn sends_plain_frame(&self, fin: bool, rest: u64, len: usize) -> bool {
        self.role == Role::Server
            && fin
            && rest == 0
            && len < ZERO_COPY_MIN
            && self.sends_whole_uncompressed()
    }

    /// Queues a data frame. A frame that [`Connection::sends_plain_frame`] is encoded
    /// here: header, then the payload, the same bytes [`Connection::send_piece_general`]
    /// would queue, without its calls (the common case of an echo, some 90 instructions
    /// each).
    #[inline]
    fn send_piece(
        &mut self,
        kind: DataKind,
        payload: Payload<'_>,
        fin: bool,
        rest: u64,
        compress: bool,
    ) -> Result<(), Error> {
        if self.sends_plain_frame(fin, rest, payload.as_slice().len()) {
            write_frame(
                self.transmit.tail(),
                None,
                kind.opcode(),
                true,
                false,
                payload.as_slice(),
            );
            return Ok(());
        }
        self.send_piece_general(kind, payload, fin, rest, compress)
    }

    /// [`Connection::send_piece`] in general: a frame in progress, a client's masked
    /// frame, compression, a piece of a message, a payload referenced, or an error.
    #[inline(never)]
    fn send_piece_general(
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
                    self.mask_keys.next(self.role, &self.config.generate_mask),
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

    /// The opcode of the next data frame of `kind` this side sends: a continuation
    /// inside a message, else the kind's own; `None` inside a message of the other kind.
    pub(super) fn next_opcode(&self, kind: DataKind) -> Option<OpCode> {
        match self.outgoing {
            Some(current) if current != kind => None,
            Some(_) => Some(OpCode::Continuation),
            None => Some(kind.opcode()),
        }
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
    pub(super) fn cut_frame_out(&mut self) -> bool {
        self.frame_out.take().is_some()
    }

    fn control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > 125 {
            return Err(ApiMisuse::ControlPayloadTooLong.into());
        }
        self.check_open()?;
        self.write_control(opcode, payload);
        Ok(())
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.close_sent || self.state != State::Open {
            return Err(ApiMisuse::SendAfterClose.into());
        }
        Ok(())
    }

    /// Queues a control frame, or holds it while a frame goes out in pieces.
    pub(super) fn write_control(&mut self, opcode: OpCode, payload: &[u8]) {
        let Some(frame) = self.frame_out.as_mut() else {
            return self.write_frame(opcode, true, payload);
        };
        write_frame(
            &mut frame.held.frames,
            self.mask_keys.next(self.role, &self.config.generate_mask),
            opcode,
            true,
            false,
            payload,
        );
    }

    pub(super) fn write_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        write_frame(
            self.transmit.tail(),
            self.mask_keys.next(self.role, &self.config.generate_mask),
            opcode,
            fin,
            false,
            payload,
        );
    }
}

/// Appends a frame to `out`, masked with `mask` if any (a client's fresh key, RFC 6455
/// §5.3).
#[inline]
fn write_frame(
    out: &mut BytesMut,
    mask: Option<[u8; 4]>,
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    payload: &[u8],
) {
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
#[inline]
fn put_masked(out: &mut BytesMut, header: &[u8], payload: &[u8], mask: Option<[u8; 4]>) {
    out.reserve(header.len() + payload.len());
    out.put_slice(header);
    match mask {
        Some(key) => extend_masked(out, payload, key, 0),
        None => out.put_slice(payload),
    }
}

/// The largest payload [`Connection::try_send_now`] sends from the stack (its frame
/// and that payload copied into a buffer on the stack): a 1 KiB message and more, while
/// staying small next to a thread's stack.
pub const SEND_NOW_MAX: usize = 4096;

/// Writes a frame to the start of `buffer`: its header, the first `hlen` bytes of
/// `header` (as [`FrameHeader::encode`] gives them), then `payload`, masked with `mask`
/// if any; returns the frame.
///
/// # Panics
/// If `hlen` is over [`MAX_HEADER_LEN`] or `payload` does not fit in `buffer` after
/// [`MAX_HEADER_LEN`] bytes.
#[allow(unsafe_code)]
#[inline(always)]
fn frame_in<'a>(
    buffer: &'a mut [MaybeUninit<u8>],
    header: &[u8; MAX_HEADER_LEN],
    hlen: usize,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> &'a [u8] {
    let len = hlen + payload.len();
    assert!(hlen <= MAX_HEADER_LEN && MAX_HEADER_LEN + payload.len() <= buffer.len());
    // All of `header`, a fixed size (no call to `memcpy`); the payload then goes over
    // its unused end.
    for (byte, value) in buffer[..MAX_HEADER_LEN].iter_mut().zip(header) {
        byte.write(*value);
    }
    match mask {
        Some(key) => {
            copy_masked(&mut buffer[hlen..len], payload, key, 0);
        }
        // SAFETY: `buffer[hlen..len]` is in bounds (asserted: len <= MAX_HEADER_LEN +
        // payload.len() <= buffer.len()) and `payload.len()` bytes long, so the copy
        // writes inside it; `payload`, a shared borrow, cannot overlap `buffer`,
        // borrowed mutably; `MaybeUninit<u8>` has the size and alignment of `u8`.
        None => unsafe {
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                buffer[hlen..len].as_mut_ptr().cast::<u8>(),
                payload.len(),
            );
        },
    }
    // SAFETY: bytes [0, MAX_HEADER_LEN) were written by the loop, and [hlen, len) by
    // `copy_masked` (which writes every byte of its destination) or the copy; as hlen <=
    // MAX_HEADER_LEN, all of [0, len) is initialized, and `MaybeUninit<u8>` has the
    // layout of `u8`. The slice borrows `buffer` for 'a, with no other borrow of it
    // left. The unit tests of `try_send_now` compare the frame with the queued one for
    // both roles at payload lengths 0, 20, 125, 126, 1024 and SEND_NOW_MAX (headers of
    // 2, 4, 6 and 8 bytes).
    unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), len) }
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
