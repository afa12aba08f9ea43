//! Errors of the protocol core, and the one mapping from an error to the `ws` error
//! code and to the close code sent for it.

use std::fmt;

use crate::close::CloseCode;

/// Any error of the protocol core.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke RFC 6455.
    Protocol(ProtocolError),
    /// The peer exceeded a configured limit.
    Limit(LimitError),
    /// The opening handshake failed.
    Handshake(HandshakeError),
    /// A compressed message could not be inflated (RFC 7692 §6.2).
    Inflate(InflateError),
    /// The caller used the API wrongly; never caused by the peer's bytes.
    Misuse(ApiMisuse),
}

/// A permessage-deflate payload that does not inflate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InflateError {
    /// Corrupt or invalid deflate data (zlib's `Z_DATA_ERROR`).
    DataError,
}

/// A violation of RFC 6455 by the peer. Each variant names the section it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1 set with no extension that defines it (§5.2), or on a continuation or
    /// control frame.
    UnexpectedRsv1,
    /// RSV2 or RSV3 set (§5.2).
    UnexpectedRsv23,
    /// A reserved opcode, a continuation with no message to continue, or a new data frame
    /// inside a fragmented message (§5.2, §5.4).
    InvalidOpcode(u8),
    /// A control frame without FIN (§5.5).
    ExpectedFin,
    /// A control frame with a payload over 125 bytes, or a close frame with a 1-byte
    /// payload (§5.5, §5.5.1).
    InvalidControlPayloadLength,
    /// A server received an unmasked frame (§5.1).
    ExpectedMask,
    /// A client received a masked frame (§5.1).
    UnexpectedMask,
    /// A close frame with a code that must not be sent (§7.4).
    InvalidCloseCode(u16),
    /// A text message or close reason that is not UTF-8 (§8.1).
    InvalidUtf8,
}

/// The peer exceeded a limit of this endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// A message longer than `max_payload`.
    MessageTooLarge,
    /// A 64-bit frame length beyond 2^53 - 1 (as `ws`), or with its high bit set.
    FrameLengthUnsupported,
    /// A message made of more fragments than `max_fragments`.
    TooManyParts,
}

/// Why an opening handshake failed. Carries the HTTP status a server answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not an HTTP/1.1 request or response.
    MalformedHttp(String),
    /// The request line or headers exceed the configured limits (431).
    HeadersTooLarge,
    /// The request method is not GET (405).
    MethodNotAllowed,
    /// The request path is not served here (404).
    NotFound,
    /// A required header is missing or wrong (400); the string names it.
    InvalidHeader(&'static str),
    /// `Sec-WebSocket-Version` is not 13 (426 with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// The application declined the request (`should_handle`) (400).
    Rejected,
    /// The server answered with something other than 101.
    UnexpectedStatus(u16),
    /// The server's `Sec-WebSocket-Accept` does not match the key sent.
    AcceptMismatch,
    /// The server chose a subprotocol that was not offered, or none when one was required.
    InvalidSubprotocol,
    /// The server accepted an extension that was not offered.
    InvalidExtension,
    /// The handshake took longer than the handshake timeout (408 on a server).
    Timeout,
}

/// A misuse of the API by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// A control frame payload longer than 125 bytes.
    ControlPayloadTooLong,
    /// A close code that may not be sent (see [`CloseCode::is_sendable`]).
    InvalidCloseCode(u16),
    /// A close reason longer than 123 bytes.
    CloseReasonTooLong,
    /// Sending after the connection started closing.
    SendAfterClose,
    /// A message of another type sent while a fragmented message is in progress.
    FragmentTypeMismatch,
    /// A piece that does not fit the frame being sent in pieces ([`crate::Fragment::rest`]):
    /// its length and `rest` must add up to what the frame still lacks, with the frame's
    /// `fin`; and a first piece may not announce a frame over 2^53 - 1 bytes (the most a
    /// peer accepts, as `ws`).
    FramePieceMismatch,
    /// A [`crate::PreparedFrame`] queued on a client connection: a client masks each
    /// frame with a fresh key (RFC 6455 §5.3), so one encoded frame cannot serve it.
    PreparedFrameOnClient,
    /// A [`crate::PreparedFrame`] that this connection cannot send as it is: compressed
    /// with other permessage-deflate settings than the connection's shared ones (or for
    /// a connection that keeps compression context, or has none), or queued while a
    /// fragmented message is being sent.
    PreparedFrameMismatch,
}

impl Error {
    /// The `ws` error code (`WS_ERR_*`) for a peer's violation; `None` otherwise.
    pub fn ws_code(&self) -> Option<&'static str> {
        match self {
            Error::Protocol(e) => Some(e.ws_code()),
            Error::Limit(e) => Some(e.ws_code()),
            // ws reports zlib's own code for inflate failures.
            Error::Inflate(InflateError::DataError) => Some("Z_DATA_ERROR"),
            Error::Handshake(_) | Error::Misuse(_) => None,
        }
    }

    /// The close code this endpoint sends when it fails the connection for this error;
    /// `None` for errors that do not close an open connection.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(e) => Some(e.close_code()),
            Error::Limit(e) => Some(e.close_code()),
            Error::Inflate(_) => Some(CloseCode::INVALID_PAYLOAD),
            Error::Handshake(_) | Error::Misuse(_) => None,
        }
    }
}

impl ProtocolError {
    /// The `ws` error code.
    pub fn ws_code(self) -> &'static str {
        match self {
            ProtocolError::UnexpectedRsv1 => "WS_ERR_UNEXPECTED_RSV_1",
            ProtocolError::UnexpectedRsv23 => "WS_ERR_UNEXPECTED_RSV_2_3",
            ProtocolError::InvalidOpcode(_) => "WS_ERR_INVALID_OPCODE",
            ProtocolError::ExpectedFin => "WS_ERR_EXPECTED_FIN",
            ProtocolError::InvalidControlPayloadLength => "WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH",
            ProtocolError::ExpectedMask => "WS_ERR_EXPECTED_MASK",
            ProtocolError::UnexpectedMask => "WS_ERR_UNEXPECTED_MASK",
            ProtocolError::InvalidCloseCode(_) => "WS_ERR_INVALID_CLOSE_CODE",
            ProtocolError::InvalidUtf8 => "WS_ERR_INVALID_UTF8",
        }
    }

    /// The close code sent for this violation.
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            ProtocolError::UnexpectedRsv1
            | ProtocolError::UnexpectedRsv23
            | ProtocolError::InvalidOpcode(_)
            | ProtocolError::ExpectedFin
            | ProtocolError::InvalidControlPayloadLength
            | ProtocolError::ExpectedMask
            | ProtocolError::UnexpectedMask
            | ProtocolError::InvalidCloseCode(_) => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl LimitError {
    /// The `ws` error code.
    pub fn ws_code(self) -> &'static str {
        match self {
            LimitError::MessageTooLarge => "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH",
            LimitError::FrameLengthUnsupported => "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH",
            LimitError::TooManyParts => "WS_ERR_TOO_MANY_BUFFERED_PARTS",
        }
    }

    /// The close code sent for this limit.
    pub fn close_code(self) -> CloseCode {
        match self {
            LimitError::MessageTooLarge | LimitError::FrameLengthUnsupported => {
                CloseCode::MESSAGE_TOO_BIG
            }
            LimitError::TooManyParts => CloseCode::POLICY_VIOLATION,
        }
    }
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::MalformedHttp(_)
            | HandshakeError::InvalidHeader(_)
            | HandshakeError::Rejected => 400,
            HandshakeError::HeadersTooLarge => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::NotFound => 404,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::Timeout => 408,
            HandshakeError::UnexpectedStatus(_)
            | HandshakeError::AcceptMismatch
            | HandshakeError::InvalidSubprotocol
            | HandshakeError::InvalidExtension => 400,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => fmt::Display::fmt(e, f),
            Error::Limit(e) => fmt::Display::fmt(e, f),
            Error::Handshake(e) => fmt::Display::fmt(e, f),
            Error::Inflate(InflateError::DataError) => f.write_str("invalid compressed data"),
            Error::Misuse(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl fmt::Display for ProtocolError {
    // The wording follows ws's receiver.js; only the codes are a stable contract.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnexpectedRsv1 => f.write_str("RSV1 must be clear"),
            ProtocolError::UnexpectedRsv23 => f.write_str("RSV2 and RSV3 must be clear"),
            ProtocolError::InvalidOpcode(op) => write!(f, "invalid opcode {op}"),
            ProtocolError::ExpectedFin => f.write_str("FIN must be set"),
            ProtocolError::InvalidControlPayloadLength => {
                f.write_str("invalid payload length for a control frame")
            }
            ProtocolError::ExpectedMask => f.write_str("MASK must be set"),
            ProtocolError::UnexpectedMask => f.write_str("MASK must be clear"),
            ProtocolError::InvalidCloseCode(code) => write!(f, "invalid status code {code}"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 sequence"),
        }
    }
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::MessageTooLarge => f.write_str("max payload size exceeded"),
            LimitError::FrameLengthUnsupported => {
                f.write_str("unsupported WebSocket frame: payload length > 2^53 - 1")
            }
            LimitError::TooManyParts => f.write_str("too many message fragments"),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::MalformedHttp(why) => write!(f, "malformed HTTP: {why}"),
            HandshakeError::HeadersTooLarge => f.write_str("request headers too large"),
            HandshakeError::MethodNotAllowed => f.write_str("invalid HTTP method: expected GET"),
            HandshakeError::NotFound => f.write_str("no WebSocket endpoint at this path"),
            HandshakeError::InvalidHeader(which) => write!(f, "missing or invalid {which} header"),
            HandshakeError::UnsupportedVersion => {
                f.write_str("unsupported Sec-WebSocket-Version: expected 13")
            }
            HandshakeError::Rejected => f.write_str("the server declined the upgrade"),
            HandshakeError::UnexpectedStatus(status) => {
                write!(f, "unexpected server response: {status}")
            }
            HandshakeError::AcceptMismatch => f.write_str("invalid Sec-WebSocket-Accept header"),
            HandshakeError::InvalidSubprotocol => f.write_str("server sent an invalid subprotocol"),
            HandshakeError::InvalidExtension => {
                f.write_str("server indicated an extension that was not requested")
            }
            HandshakeError::Timeout => f.write_str("opening handshake has timed out"),
        }
    }
}

impl fmt::Display for ApiMisuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiMisuse::ControlPayloadTooLong => {
                f.write_str("the data size must not be greater than 125 bytes")
            }
            ApiMisuse::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            ApiMisuse::CloseReasonTooLong => {
                f.write_str("the close reason must not be greater than 123 bytes")
            }
            ApiMisuse::SendAfterClose => f.write_str("the WebSocket is not open"),
            ApiMisuse::FragmentTypeMismatch => {
                f.write_str("a fragmented message of another type is in progress")
            }
            ApiMisuse::PreparedFrameOnClient => {
                f.write_str("a prepared (unmasked) frame cannot be sent by a client")
            }
            ApiMisuse::PreparedFrameMismatch => f.write_str(
                "the prepared frame does not fit this connection's compression or message state",
            ),
            ApiMisuse::FramePieceMismatch => {
                f.write_str("the piece does not fit the frame being sent in pieces")
            }
        }
    }
}

impl std::error::Error for Error {}
impl std::error::Error for ProtocolError {}
impl std::error::Error for LimitError {}
impl std::error::Error for HandshakeError {}
impl std::error::Error for ApiMisuse {}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}
impl From<LimitError> for Error {
    fn from(e: LimitError) -> Self {
        Error::Limit(e)
    }
}
impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::Handshake(e)
    }
}
impl From<InflateError> for Error {
    fn from(e: InflateError) -> Self {
        Error::Inflate(e)
    }
}

impl From<ApiMisuse> for Error {
    fn from(e: ApiMisuse) -> Self {
        Error::Misuse(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ws contract: one (code string, close code) pair per violation.
    #[test]
    fn ws_code_and_close_code_table() {
        let table: &[(Error, &str, u16)] = &[
            (
                ProtocolError::UnexpectedRsv23.into(),
                "WS_ERR_UNEXPECTED_RSV_2_3",
                1002,
            ),
            (
                ProtocolError::UnexpectedRsv1.into(),
                "WS_ERR_UNEXPECTED_RSV_1",
                1002,
            ),
            (
                ProtocolError::InvalidOpcode(3).into(),
                "WS_ERR_INVALID_OPCODE",
                1002,
            ),
            (
                ProtocolError::ExpectedFin.into(),
                "WS_ERR_EXPECTED_FIN",
                1002,
            ),
            (
                ProtocolError::InvalidControlPayloadLength.into(),
                "WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH",
                1002,
            ),
            (
                ProtocolError::ExpectedMask.into(),
                "WS_ERR_EXPECTED_MASK",
                1002,
            ),
            (
                ProtocolError::UnexpectedMask.into(),
                "WS_ERR_UNEXPECTED_MASK",
                1002,
            ),
            (
                ProtocolError::InvalidCloseCode(999).into(),
                "WS_ERR_INVALID_CLOSE_CODE",
                1002,
            ),
            (
                ProtocolError::InvalidUtf8.into(),
                "WS_ERR_INVALID_UTF8",
                1007,
            ),
            (
                LimitError::MessageTooLarge.into(),
                "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH",
                1009,
            ),
            (
                LimitError::FrameLengthUnsupported.into(),
                "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH",
                1009,
            ),
            (
                LimitError::TooManyParts.into(),
                "WS_ERR_TOO_MANY_BUFFERED_PARTS",
                1008,
            ),
        ];
        for (error, code, close) in table {
            assert_eq!(error.ws_code(), Some(*code));
            assert_eq!(error.close_code(), Some(CloseCode(*close)));
        }
        assert_eq!(Error::Misuse(ApiMisuse::SendAfterClose).close_code(), None);
    }

    #[test]
    fn error_stays_small() {
        assert!(
            std::mem::size_of::<Error>() <= 32,
            "{}",
            std::mem::size_of::<Error>()
        );
    }
}
