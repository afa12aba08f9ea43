//! Messages: what a connection delivers and what it sends.

use std::fmt;

use bytes::Bytes;

use crate::close::CloseFrame;
use crate::connection::DataKind;

/// A complete message or a control frame; with `deliver_fragments`, data arrives frame by
/// frame as [`Message::Fragment`] instead of as whole messages.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, checked to be UTF-8.
    Text(Utf8Bytes),
    /// A text message whose UTF-8 was not checked, because the connection was configured
    /// with `skip_utf8_validation`. Sockeye never hands out a `&str` it has not checked.
    UncheckedText(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload (at most 125 bytes). Answered automatically unless
    /// `auto_pong` is off.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame: `None` when the frame carried no status code (reported by `ws` as
    /// 1005).
    Close(Option<CloseFrame>),
    /// One data frame of a message, delivered as it arrives instead of the whole message
    /// (`ws`'s `binaryType: 'fragments'`). Only received when
    /// [`crate::Config::deliver_fragments`] is on; sending one sends a frame (the first
    /// fixes the message type, `fin` ends the message).
    Fragment(Fragment),
}

/// One data frame of a message (`ws`'s `binaryType: 'fragments'`), received in order
/// with `fin` on the last; control frames may come in between (RFC 6455 §5.4).
///
/// With [`crate::Config::stream_frames`] a large frame comes in pieces as its bytes
/// arrive: `rest` then counts the frame's payload bytes still to come, and every piece
/// carries its frame's `fin`, so the message ends with the piece where both say so
/// ([`Fragment::ends_message`]). Sent back as they are, the pieces go out as one frame
/// of the same length: its header first, then each piece as it is sent; control frames
/// queued meanwhile wait for the frame's end, as they may not go inside it.
///
/// The rules of whole messages still hold: text is checked to be UTF-8 across fragments
/// as bytes arrive (an invalid byte fails the connection with 1007 before the fragment
/// carrying it is delivered; a fragment may end inside a character, so `data` is bytes,
/// not a `str`), `max_payload` counts the whole message, and compressed messages are
/// inflated frame by frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The type of the message, from its first frame.
    pub kind: DataKind,
    /// The frame's payload, inflated if the message is compressed.
    pub data: Bytes,
    /// Whether this piece's frame is the message's last (its FIN bit).
    pub fin: bool,
    /// Payload bytes of this frame still to come after this piece: 0 for a whole frame
    /// and for a frame's last piece.
    pub rest: u64,
}

impl Fragment {
    /// A whole frame of a message: the last one with `fin`.
    pub fn new(kind: DataKind, data: impl Into<Bytes>, fin: bool) -> Fragment {
        Fragment {
            kind,
            data: data.into(),
            fin,
            rest: 0,
        }
    }

    /// Whether the message ends with this piece: its frame is the last, and complete.
    pub fn ends_message(&self) -> bool {
        self.fin && self.rest == 0
    }
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Message {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Message {
        Message::Binary(data.into())
    }

    /// Whether this is a text message (checked or not).
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_) | Message::UncheckedText(_))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// The payload bytes (for a close frame, the reason).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::UncheckedText(data)
            | Message::Binary(data)
            | Message::Ping(data)
            | Message::Pong(data) => data,
            Message::Fragment(fragment) => &fragment.data,
            Message::Close(Some(frame)) => frame.reason.as_bytes(),
            Message::Close(None) => &[],
        }
    }

    /// The payload as text, if this is a checked text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(t) => f.debug_tuple("Text").field(&t.as_str()).finish(),
            Message::UncheckedText(b) => f.debug_tuple("UncheckedText").field(b).finish(),
            Message::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
            Message::Ping(b) => f.debug_tuple("Ping").field(b).finish(),
            Message::Pong(b) => f.debug_tuple("Pong").field(b).finish(),
            Message::Close(c) => f.debug_tuple("Close").field(c).finish(),
            Message::Fragment(fragment) => write!(
                f,
                "Fragment({:?}, {} bytes, fin: {}, rest: {})",
                fragment.kind,
                fragment.data.len(),
                fragment.fin,
                fragment.rest
            ),
        }
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text.into())
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.into())
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::Binary(data.into())
    }
}

impl From<Bytes> for Message {
    fn from(data: Bytes) -> Self {
        Message::Binary(data)
    }
}

/// Bytes that are valid UTF-8: a cheaply cloned, zero-copy string.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Checks `bytes` and wraps them.
    ///
    /// # Errors
    /// Returns the bytes back if they are not UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Utf8Bytes, Bytes> {
        match crate::utf8::validate(&bytes) {
            Ok(()) => Ok(Utf8Bytes(bytes)),
            Err(_) => Err(bytes),
        }
    }

    /// Wraps bytes the caller has already validated.
    pub(crate) fn from_validated(bytes: Bytes) -> Utf8Bytes {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    /// A static string, without copying.
    pub const fn from_static(text: &'static str) -> Utf8Bytes {
        Utf8Bytes(Bytes::from_static(text.as_bytes()))
    }

    /// The text.
    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor (`try_from_bytes`, `from_validated`, the `From` impls
        // for `String` and `&str`, `from_static`) admits only valid UTF-8: `from_validated`
        // is crate-private and called only after `Utf8Validator` accepted the whole
        // message (connection.rs), and the bytes are immutable afterwards. Covered by
        // `tests::as_str_roundtrip` and the connection tests that read text messages.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying `Bytes`.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Utf8Bytes(Bytes::from(text))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_roundtrip() {
        assert_eq!(Utf8Bytes::from("κόσμε").as_str(), "κόσμε");
        assert_eq!(Utf8Bytes::from(String::from("abc")).as_str(), "abc");
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xff")).is_err());
        let ok = Utf8Bytes::try_from_bytes(Bytes::from_static(b"ok")).unwrap();
        assert_eq!(&*ok, "ok");
        assert_eq!(Message::from("x").as_text(), Some("x"));
    }
}
