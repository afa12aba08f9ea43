//! Closing: the close handshake both ways (RFC 6455 §5.5.1, §7), failing the connection
//! (§7.1.7), the end of the transport's stream, and when to close the transport.

use std::time::Instant;

use super::{Connection, Now, Role, State};
use crate::close::{CloseCode, CloseFrame, MAX_REASON_LEN};
use crate::error::{ApiMisuse, Error, ProtocolError};
use crate::frame::OpCode;
use crate::utf8;

impl Connection {
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

    /// A close frame arrived (RFC 6455 §5.5.1, §7.1.5).
    pub(super) fn on_close(
        &mut self,
        payload: &[u8],
        now: &mut Now<'_>,
    ) -> Result<Option<CloseFrame>, Error> {
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
        self.peer_closed_first = !self.close_sent;
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
    pub(super) fn fail(&mut self, error: &Error, now: &mut Now<'_>) {
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
}
