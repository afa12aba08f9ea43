//! [`PreparedFrame`]: a whole data message encoded once as a server's frame, to queue on
//! any number of server connections without encoding, compressing or copying it again.
//!
//! A server's frames are not masked (RFC 6455 §5.1), so the same header and payload bytes
//! are a valid frame on every server connection: a pub/sub fan-out encodes a message
//! once and hands each connection a reference to it
//! ([`Connection::send_prepared`](crate::Connection::send_prepared)). A compressed
//! frame is valid only on connections whose codec compresses every message the same way
//! ([`SharedDeflate`]); the connection checks that.

use bytes::Bytes;

use crate::connection::DataKind;
use crate::deflate::SharedDeflate;
use crate::frame::{FrameHeader, MAX_HEADER_LEN};

/// A whole (FIN) text or binary message encoded as one unmasked frame: its header, and
/// its payload as shared [`Bytes`] (cloning a `PreparedFrame` or queueing it copies no
/// payload).
#[derive(Clone)]
pub struct PreparedFrame {
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    payload: Bytes,
    /// The settings the payload was compressed with (RSV1 set), if it was.
    deflate: Option<SharedDeflate>,
}

impl PreparedFrame {
    /// An uncompressed frame of `payload`, which is referenced, not copied. Text is not
    /// checked here: a `Text` frame must carry UTF-8 (RFC 6455 §8.1), which a `&str` or a
    /// [`crate::Utf8Bytes`] guarantees.
    pub fn new(kind: DataKind, payload: Bytes) -> PreparedFrame {
        Self::encode(kind, payload, None)
    }

    /// A frame of `payload` compressed with `with` (RSV1 set, RFC 7692 §6): sendable on
    /// every connection whose [`Deflate::shared`](crate::Deflate::shared) equals `with`.
    pub fn deflated(kind: DataKind, payload: &[u8], with: SharedDeflate) -> PreparedFrame {
        let compressed = Bytes::from(with.compress(payload));
        Self::encode(kind, compressed, Some(with))
    }

    fn encode(kind: DataKind, payload: Bytes, deflate: Option<SharedDeflate>) -> PreparedFrame {
        let opcode = kind.opcode();
        let header = FrameHeader {
            fin: true,
            rsv1: deflate.is_some(),
            opcode,
            mask: None,
            payload_len: payload.len() as u64,
        };
        let mut encoded = [0u8; MAX_HEADER_LEN];
        let len = header.encode(&mut encoded);
        PreparedFrame {
            header: encoded,
            // A header is at most MAX_HEADER_LEN (14) bytes.
            header_len: len as u8,
            payload,
            deflate,
        }
    }

    /// The encoded frame header.
    pub fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    /// The frame's payload (compressed, for a compressed frame).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The frame's length on the wire: header and payload.
    pub fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }

    /// Whether the frame is empty: never (a header is at least 2 bytes).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The settings the payload was compressed with; `None` when it is not compressed.
    pub fn deflate(&self) -> Option<SharedDeflate> {
        self.deflate
    }
}

impl std::fmt::Debug for PreparedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedFrame")
            .field("header", &self.header())
            .field("payload_len", &self.payload.len())
            .field("deflate", &self.deflate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::{Buf, Bytes};

    use super::PreparedFrame;
    use crate::error::{ApiMisuse, Error};
    use crate::{Config, Connection, DataKind, Message, Role};

    fn read_all(to: &mut Connection, wire: Vec<u8>) -> Vec<Message> {
        let mut wire = bytes::BytesMut::from(&wire[..]);
        let mut out = Vec::new();
        while let Some(m) = to.read(&mut wire, Instant::now()).unwrap() {
            out.push(m);
        }
        assert!(wire.is_empty(), "whole frames only");
        out
    }

    /// RFC 6455 §5.1: an unmasked frame, the same bytes for every server connection,
    /// queued by reference (the queue's payload is the frame's own memory).
    #[test]
    fn one_frame_serves_every_server_connection() {
        let payload = Bytes::from(vec![7u8; 300]);
        let frame = PreparedFrame::new(DataKind::Binary, payload.clone());
        assert_eq!(frame.header(), [0x82, 126, 1, 44]);
        assert_eq!(frame.len(), 304);
        for _ in 0..3 {
            let mut server = Connection::new(Role::Server, Config::default());
            server.send_prepared(&frame, |_| 0).unwrap();
            let queued = server.transmit();
            assert!(queued.is_segmented());
            let mut slices = [std::io::IoSlice::new(&[]); 4];
            let n = queued.chunks_vectored(&mut slices);
            assert_eq!(n, 2, "header and payload");
            assert_eq!(slices[1].as_ptr(), payload.as_ptr(), "not copied");
            let wire = queued.to_vec();
            let mut client = Connection::new(Role::Client, Config::default());
            assert_eq!(
                read_all(&mut client, wire),
                [Message::binary(vec![7u8; 300])]
            );
        }
    }

    /// What `write_now` wrote is not queued; the rest is, header or payload, in order,
    /// and it is offered only while nothing is queued.
    #[test]
    fn write_now_takes_the_front_and_the_rest_is_queued() {
        let frame = PreparedFrame::new(DataKind::Text, Bytes::from_static(b"hello world"));
        let whole = [frame.header(), &frame.payload()[..]].concat();
        for taken in 0..=whole.len() + 3 {
            let mut server = Connection::new(Role::Server, Config::default());
            server.send_prepared(&frame, |_| taken).unwrap();
            let mut wire = whole[..taken.min(whole.len())].to_vec();
            wire.extend(server.transmit().take_all());
            assert_eq!(wire, whole, "{taken} written at once");
        }
        let mut server = Connection::new(Role::Server, Config::default());
        server.send_text("first").unwrap();
        server
            .send_prepared(&frame, |_| panic!("not offered behind queued bytes"))
            .unwrap();
        let mut client = Connection::new(Role::Client, Config::default());
        let wire = server.transmit().take_all().to_vec();
        assert_eq!(
            read_all(&mut client, wire),
            [Message::text("first"), Message::text("hello world")]
        );
        assert!(!server.transmit().has_remaining());
    }

    #[test]
    fn refused_on_a_client_mid_message_and_after_close() {
        let frame = PreparedFrame::new(DataKind::Text, Bytes::from_static(b"x"));
        let mut client = Connection::new(Role::Client, Config::default());
        assert_eq!(
            client.send_prepared(&frame, |_| 0),
            Err(Error::Misuse(ApiMisuse::PreparedFrameOnClient))
        );
        let mut server = Connection::new(Role::Server, Config::default());
        server.send(DataKind::Text, b"part", false).unwrap();
        assert_eq!(
            server.send_prepared(&frame, |_| 0),
            Err(Error::Misuse(ApiMisuse::PreparedFrameMismatch))
        );
        let mut server = Connection::new(Role::Server, Config::default());
        server.close(None, Instant::now()).unwrap();
        assert_eq!(
            server.send_prepared(&frame, |_| 0),
            Err(Error::Misuse(ApiMisuse::SendAfterClose))
        );
    }

    /// RFC 7692 §7.1.1.1: a server without context takeover compresses each message as
    /// a fresh stream, so one compressed frame inflates on each of its peers, before and
    /// after messages the connection compressed itself; a connection that keeps context
    /// (or has no deflate, or other settings) refuses it.
    #[cfg(feature = "deflate")]
    #[test]
    fn a_shared_compressed_frame_needs_equal_settings() {
        use crate::deflate::{client_accept, Deflate, DeflateConfig};

        let config = DeflateConfig {
            threshold: 0,
            ..Default::default()
        };
        let pair = |answer: &str| {
            let params = client_accept(&config, [answer]).unwrap().unwrap();
            let server = Connection::new(Role::Server, Config::default())
                .with_deflate(Deflate::new(Role::Server, params, &config));
            let client = Connection::new(Role::Client, Config::default())
                .with_deflate(Deflate::new(Role::Client, params, &config));
            (server, client)
        };
        let text = "pub/sub fan-out, compressed once. ".repeat(40);
        let (probe, _) = pair("permessage-deflate; server_no_context_takeover");
        let shared = probe
            .deflate()
            .unwrap()
            .shared()
            .expect("no takeover: shared");
        assert_eq!((shared.window_bits(), shared.level()), (15, 6));
        let frame = PreparedFrame::deflated(DataKind::Text, text.as_bytes(), shared);
        assert!(frame.payload().len() < text.len() / 4, "compressed");
        assert_eq!(frame.header()[0], 0xc1, "FIN, RSV1, text");
        for _ in 0..3 {
            let (mut server, mut client) = pair("permessage-deflate; server_no_context_takeover");
            server.send_text(&text).unwrap();
            server.send_prepared(&frame, |_| 0).unwrap();
            server.send_text(&text).unwrap();
            let wire = server.transmit().take_all().to_vec();
            let expected = Message::text(text.clone());
            assert_eq!(
                read_all(&mut client, wire),
                [expected.clone(), expected.clone(), expected]
            );
        }
        for other in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        ] {
            let (mut server, _) = pair(other);
            assert_eq!(
                server.send_prepared(&frame, |_| 0),
                Err(Error::Misuse(ApiMisuse::PreparedFrameMismatch)),
                "{other}"
            );
        }
        let mut plain = Connection::new(Role::Server, Config::default());
        assert_eq!(
            plain.send_prepared(&frame, |_| 0),
            Err(Error::Misuse(ApiMisuse::PreparedFrameMismatch))
        );
        let (mut takeover, _) = pair("permessage-deflate");
        assert!(takeover.deflate().unwrap().shared().is_none());
        let uncompressed = PreparedFrame::new(DataKind::Text, Bytes::from(text.clone()));
        takeover.send_prepared(&uncompressed, |_| 0).unwrap();
    }
}
