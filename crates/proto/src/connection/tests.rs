//! Unit tests of the connection state machine, grouped by RFC 6455 section.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use super::*;
use crate::close::{CloseCode, CloseFrame};
use crate::error::{ApiMisuse, Error, LimitError, ProtocolError};
use crate::frame::{OpCode, MAX_FRAME_LEN};
use crate::limits::{MaskSource, DEFAULT_CLOSE_TIMEOUT, DEFAULT_MAX_PAYLOAD};
use crate::mask::apply_mask;
use crate::message::{Fragment, Message};
use crate::transmit::ZERO_COPY_MIN;

// ------------------------------------------------------------------ harness

/// A fake clock: an `Instant` that moves only when told to.
struct Clock(Instant);

impl Clock {
    fn new() -> Clock {
        Clock(Instant::now())
    }

    fn now(&self) -> Instant {
        self.0
    }

    fn advance(&mut self, by: Duration) {
        self.0 += by;
    }
}

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The masking key of the RFC 6455 §5.7 examples.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A raw frame as a mock peer writes it, bit by bit: any FIN, RSV bits, opcode, mask,
/// length form or (lying) declared length.
#[derive(Clone, Debug)]
struct Raw {
    fin: bool,
    /// RSV1 RSV2 RSV3 as 3 bits: 0b100 is RSV1.
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Force the 7-bit length field (126: 16-bit form, 127: 64-bit form).
    form: Option<u8>,
    /// The length written in the header, if not the payload's.
    declared: Option<u64>,
    payload: Vec<u8>,
}

fn raw(opcode: u8, payload: &[u8]) -> Raw {
    Raw {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        form: None,
        declared: None,
        payload: payload.to_vec(),
    }
}

impl Raw {
    fn fin(mut self, fin: bool) -> Raw {
        self.fin = fin;
        self
    }

    fn rsv(mut self, bits: u8) -> Raw {
        self.rsv = bits;
        self
    }

    fn mask(mut self, key: [u8; 4]) -> Raw {
        self.mask = Some(key);
        self
    }

    /// As a well-behaved peer of a connection of role `to` sends it: masked towards a
    /// server (RFC 6455 §5.1).
    fn to(self, to: Role) -> Raw {
        match to {
            Role::Server => self.mask(KEY),
            Role::Client => self,
        }
    }

    fn form(mut self, len7: u8) -> Raw {
        self.form = Some(len7);
        self
    }

    fn declare(mut self, len: u64) -> Raw {
        self.declared = Some(len);
        self
    }

    fn header(&self) -> Vec<u8> {
        let len = self.declared.unwrap_or(self.payload.len() as u64);
        let len7 = self.form.unwrap_or(match len {
            0..=125 => len as u8,
            126..=0xffff => 126,
            _ => 127,
        });
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut out = vec![
            (u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode,
            mask_bit | len7,
        ];
        match len7 {
            126 => out.extend_from_slice(&(len as u16).to_be_bytes()),
            127 => out.extend_from_slice(&len.to_be_bytes()),
            _ => {}
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
        out
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        let start = out.len();
        out.extend_from_slice(&self.payload);
        if let Some(key) = self.mask {
            for (i, b) in out[start..].iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        out
    }
}

/// A fixed-seed xorshift32: `next(n)` is the next number below `n`.
fn xorshift(seed: u32) -> impl FnMut(u32) -> u32 {
    let mut rng = seed;
    move |n| {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng % n
    }
}

fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

fn conn(role: Role) -> Connection {
    Connection::new(role, Config::default())
}

fn conn_with(role: Role, configure: impl FnOnce(&mut Config)) -> Connection {
    let mut config = Config::default();
    configure(&mut config);
    Connection::new(role, config)
}

/// Appends `bytes` to `input`, then reads until `Ok(None)` or an error.
fn feed(
    c: &mut Connection,
    input: &mut BytesMut,
    bytes: &[u8],
    now: Instant,
) -> (Vec<Message>, Option<Error>) {
    input.extend_from_slice(bytes);
    let mut messages = Vec::new();
    loop {
        match c.read(input, now) {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (messages, None),
            Err(e) => return (messages, Some(e)),
        }
    }
}

/// Reads all of `bytes` at once: the messages, or the first error.
fn read_all(c: &mut Connection, bytes: &[u8]) -> Result<Vec<Message>, Error> {
    match feed(c, &mut BytesMut::new(), bytes, Instant::now()) {
        (messages, None) => Ok(messages),
        (_, Some(e)) => Err(e),
    }
}

/// Empties `c`'s transmit buffer and decodes it: opcode, FIN and unmasked payload of
/// each frame. Checks that `c` masks exactly when it is a client (RFC 6455 §5.1).
fn sent(c: &mut Connection) -> Vec<(OpCode, bool, Vec<u8>)> {
    let role = c.role();
    let mut buf = c.transmit().take_all();
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let (h, n) = FrameHeader::decode(&buf)
            .expect("valid header")
            .expect("whole frames only");
        assert_eq!(h.mask.is_some(), role == Role::Client, "masking rule");
        assert!(!h.rsv1);
        buf.advance(n);
        let mut payload = buf.split_to(h.payload_len as usize).to_vec();
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        frames.push((h.opcode, h.fin, payload));
    }
    frames
}

/// Moves what `from` sent into `to` and reads it.
fn deliver(from: &mut Connection, to: &mut Connection, now: Instant) -> Vec<Message> {
    let bytes = from.transmit().take_all();
    let (messages, error) = feed(to, &mut BytesMut::new(), &bytes, now);
    assert_eq!(error, None);
    messages
}

/// `c` reads `bytes`, fails with `expected`, and is left closed with a close frame
/// carrying the error's close code as the last frame it sent.
#[track_caller]
fn assert_fails(mut c: Connection, bytes: &[u8], expected: impl Into<Error>) {
    let expected = expected.into();
    let now = Instant::now();
    let (_, error) = feed(&mut c, &mut BytesMut::new(), bytes, now);
    assert_eq!(error.as_ref(), Some(&expected));
    assert_eq!(c.state(), State::Closed);
    assert!(c.should_close_transport() && c.is_read_closed());
    let code = expected
        .close_code()
        .expect("a peer's error has a close code");
    let frames = sent(&mut c);
    assert_eq!(
        frames.last(),
        Some(&(OpCode::Close, true, code.0.to_be_bytes().to_vec()))
    );
    // The error is reported once; the connection reads nothing more: what still arrives
    // is discarded while the transport drains to the peer's end of stream.
    assert!(
        c.should_drain() && !c.is_finished(),
        "drains after a failure"
    );
    let mut more = BytesMut::from(&raw(TEXT, b"x").to(c.role()).bytes()[..]);
    assert_eq!(c.read(&mut more, now), Ok(None));
    assert!(more.is_empty(), "bytes read while draining are discarded");
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(now + c.config().close_timeout));
    assert_eq!(
        c.handle_eof(now),
        None,
        "a failed connection's end is not abnormal"
    );
    assert!(!c.should_drain() && c.is_finished());
}

/// A failed connection whose peer neither stops sending nor closes is given up at the
/// close timeout: the transport is then dropped at once.
#[test]
fn draining_ends_at_the_close_timeout() {
    for role in [Role::Server, Role::Client] {
        let mut clock = Clock::new();
        let mut c = conn(role);
        let mut input = BytesMut::new();
        let (_, error) = feed(
            &mut c,
            &mut input,
            &raw(0x3, b"").to(role).bytes(),
            clock.now(),
        );
        assert_eq!(error, Some(ProtocolError::InvalidOpcode(3).into()));
        assert_eq!(sent(&mut c).len(), 1, "the close frame");
        let deadline = c.poll_timeout().expect("the drain is bounded");
        assert_eq!(deadline, clock.now() + DEFAULT_CLOSE_TIMEOUT);
        // The peer goes on sending: nothing is kept, nothing is answered.
        for _ in 0..100 {
            let (messages, error) = feed(
                &mut c,
                &mut input,
                &raw(BINARY, &[7; 1000]).to(role).bytes(),
                clock.now(),
            );
            assert!(messages.is_empty() && error.is_none() && input.is_empty());
        }
        assert!(c.should_drain() && !c.is_finished());
        clock.advance(DEFAULT_CLOSE_TIMEOUT - Duration::from_millis(1));
        c.handle_timeout(clock.now());
        assert!(c.should_drain(), "not before the deadline");
        clock.advance(Duration::from_millis(1));
        c.handle_timeout(clock.now());
        assert!(!c.should_drain() && c.is_finished() && c.should_abort_transport());
    }
}

/// A close handshake that ends normally leaves nothing to drain: the peer said it sends
/// no more.
#[test]
fn a_clean_close_does_not_drain() {
    let now = Instant::now();
    let mut server = conn(Role::Server);
    let close = raw(CLOSE, &close_body(1000, b"")).to(Role::Server).bytes();
    let (messages, error) = feed(&mut server, &mut BytesMut::new(), &close, now);
    assert!(error.is_none() && messages.len() == 1);
    assert!(
        !server.should_drain() && !server.is_finished(),
        "the reply is queued"
    );
    sent(&mut server);
    assert!(server.is_finished());
}

fn text(s: &str) -> Message {
    Message::text(s)
}

fn binary(b: &[u8]) -> Message {
    Message::Binary(Bytes::copy_from_slice(b))
}

// ------------------------------------------------- RFC 6455 §5.1: masking

#[test]
fn server_rejects_unmasked_frame() {
    assert_fails(
        conn(Role::Server),
        &raw(TEXT, b"hi").bytes(),
        ProtocolError::ExpectedMask,
    );
}

#[test]
fn client_rejects_masked_frame() {
    assert_fails(
        conn(Role::Client),
        &raw(TEXT, b"hi").mask(KEY).bytes(),
        ProtocolError::UnexpectedMask,
    );
}

/// With the default `MaskSource::Random`, every frame gets its own key from the
/// connection's CSPRNG (RFC 6455 §5.3), across its refills (64 keys per ChaCha block).
#[test]
fn a_client_masks_each_frame_with_a_fresh_random_key() {
    let mut client = conn(Role::Client);
    let mut keys = std::collections::HashSet::new();
    for _ in 0..1000 {
        client.send_binary(b"x").unwrap();
        let wire = client.transmit().take_all();
        let (header, _) = FrameHeader::decode(&wire).unwrap().unwrap();
        keys.insert(header.mask.expect("a client masks"));
    }
    // 1,000 draws from 2^32 keys: a repeat has a chance of about 1 in 10,000.
    assert!(keys.len() >= 998, "{} distinct keys of 1000", keys.len());
}

/// Two connections of one configuration draw from generators of their own, seeded
/// apart: their keys differ from the first frame on.
#[test]
fn each_connection_draws_from_its_own_generator() {
    let config = Arc::new(Config::default());
    let keys = |client: &mut Connection| -> Vec<[u8; 4]> {
        (0..8)
            .map(|_| {
                client.send_binary(b"x").unwrap();
                let wire = client.transmit().take_all();
                FrameHeader::decode(&wire).unwrap().unwrap().0.mask.unwrap()
            })
            .collect()
    };
    let mut a = Connection::new(Role::Client, config.clone());
    let mut b = Connection::new(Role::Client, config);
    assert_ne!(keys(&mut a), keys(&mut b));
}

/// A custom source gives the key of every frame a client sends: data frames whole and
/// in pieces, compressed ones, control frames queued at once and those held for the end
/// of a frame sent in pieces.
#[test]
fn a_custom_mask_source_masks_every_kind_of_frame() {
    let calls = Arc::new(AtomicU8::new(0));
    let counted = calls.clone();
    let mut client = conn_with(Role::Client, |c| {
        c.generate_mask = MaskSource::custom(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            [n; 4]
        })
    });
    client.send_text("whole").unwrap();
    client.ping(b"ping").unwrap();
    client
        .send_fragment(
            Fragment {
                kind: DataKind::Binary,
                data: Bytes::from_static(b"ab"),
                fin: true,
                rest: 2,
            },
            true,
        )
        .unwrap();
    client.pong(b"held").unwrap();
    client
        .send_fragment(
            Fragment {
                kind: DataKind::Binary,
                data: Bytes::from_static(b"cd"),
                fin: true,
                rest: 0,
            },
            true,
        )
        .unwrap();
    let mut wire = client.transmit().take_all();
    let mut keys = Vec::new();
    while let Some((header, hlen)) = FrameHeader::decode(&wire).unwrap() {
        keys.push((header.opcode, header.mask));
        wire.advance(hlen + header.payload_len as usize);
    }
    assert_eq!(
        keys,
        [
            (OpCode::Text, Some([1; 4])),
            (OpCode::Ping, Some([2; 4])),
            (OpCode::Binary, Some([3; 4])),
            (OpCode::Pong, Some([4; 4])),
        ]
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "one key per frame, none per piece"
    );

    // A compressed message takes its key from the source too.
    #[cfg(feature = "deflate")]
    compressed_message_takes_a_key(&calls);
}

#[cfg(feature = "deflate")]
fn compressed_message_takes_a_key(calls: &Arc<AtomicU8>) {
    let counted = calls.clone();
    let mut config = Config::default();
    config.generate_mask = MaskSource::custom(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        [7; 4]
    });
    let deflate = crate::deflate::DeflateConfig {
        threshold: 0,
        ..Default::default()
    };
    let params = crate::deflate::client_accept(&deflate, ["permessage-deflate"])
        .unwrap()
        .unwrap();
    let mut client = Connection::new(Role::Client, config).with_deflate(Deflate::new(
        Role::Client,
        params,
        &deflate,
    ));
    client.send_text("compressed").unwrap();
    let wire = client.transmit().take_all();
    let (header, _) = FrameHeader::decode(&wire).unwrap().unwrap();
    assert!(header.rsv1, "compressed");
    assert_eq!(header.mask, Some([7; 4]));
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[test]
fn client_masks_with_generate_mask_server_does_not() {
    let counter = Arc::new(AtomicU8::new(0));
    let calls = counter.clone();
    let mut client = conn_with(Role::Client, |c| {
        c.generate_mask = MaskSource::custom(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            [n, n + 1, n + 2, n + 3]
        })
    });
    client.send_text("Hi").unwrap();
    client.ping(b"p").unwrap();
    let wire = client.transmit().to_vec();
    assert_eq!(
        &wire[..],
        [
            [0x81, 0x82, 0, 1, 2, 3, b'H', b'i' ^ 1].as_slice(),
            &[0x89, 0x81, 1, 2, 3, 4, b'p' ^ 1],
        ]
        .concat()
    );
    assert_eq!(counter.load(Ordering::SeqCst), 2, "one fresh key per frame");
    let mut server = conn(Role::Server);
    assert_eq!(
        deliver(&mut client, &mut server, Instant::now()),
        [text("Hi"), Message::Ping(Bytes::from_static(b"p"))]
    );
    // The server answered the ping, unmasked.
    server.send_text("Hi").unwrap();
    let wire = server.transmit().to_vec();
    assert_eq!(&wire[..], b"\x8a\x01p\x81\x02Hi");
}

/// A long client payload of a length that is not a multiple of 4 (nor of any kernel's
/// step): the wire is the payload masked with one key from the start.
#[test]
fn long_client_payload_is_masked_with_one_key_throughout() {
    let key = [0x9a, 0x3c, 0x51, 0xe7];
    let mut client = conn_with(Role::Client, |c| {
        c.generate_mask = MaskSource::custom(move || key)
    });
    let payload: Vec<u8> = (0..3 * 4096 + 4097 + 3)
        .map(|i| (i * 31 + 7) as u8)
        .collect();
    client.send_binary(&payload).unwrap();
    let wire = client.transmit().to_vec();
    let mut expected = payload.clone();
    crate::mask::apply_mask_naive(&mut expected, key, 0);
    assert_eq!(
        wire[..4],
        [0x82, 0xfe, (payload.len() >> 8) as u8, payload.len() as u8]
    );
    assert_eq!(wire[4..8], key);
    assert!(
        wire[8..] == expected[..],
        "masked with the key's phase kept throughout"
    );
    let mut server = conn(Role::Server);
    assert_eq!(
        deliver(&mut client, &mut server, Instant::now()),
        [Message::binary(payload)]
    );
}

// ---------------------------------------------- RFC 6455 §5.2: base framing

#[test]
fn reserved_bits_fail() {
    for role in [Role::Server, Role::Client] {
        assert_fails(
            conn(role),
            &raw(TEXT, b"x").rsv(0b100).to(role).bytes(),
            ProtocolError::UnexpectedRsv1,
        );
        assert_fails(
            conn(role),
            &raw(PING, b"").rsv(0b100).to(role).bytes(),
            ProtocolError::UnexpectedRsv1,
        );
        for rsv in [0b010, 0b001, 0b111] {
            assert_fails(
                conn(role),
                &raw(BINARY, b"x").rsv(rsv).to(role).bytes(),
                ProtocolError::UnexpectedRsv23,
            );
        }
    }
}

#[test]
fn reserved_opcodes_fail() {
    for op in (3..=7).chain(0xb..=0xf) {
        assert_fails(
            conn(Role::Server),
            &raw(op, b"").to(Role::Server).bytes(),
            ProtocolError::InvalidOpcode(op),
        );
    }
}

#[test]
fn every_length_form_reads_the_same() {
    for role in [Role::Server, Role::Client] {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536] {
            let payload = payload_of(len);
            // Minimal form, then the 16 and 64-bit forms where they can hold it.
            let mut frames = vec![raw(BINARY, &payload)];
            if len <= 0xffff {
                frames.push(raw(BINARY, &payload).form(126));
            }
            frames.push(raw(BINARY, &payload).form(127));
            for frame in frames {
                let frame = frame.to(role);
                let mut c = conn(role);
                let mut input = BytesMut::new();
                let (mut got, e) = feed(&mut c, &mut input, &frame.header(), Instant::now());
                assert_eq!(e, None);
                if len > 0 {
                    assert!(got.is_empty());
                    assert_eq!(c.read_hint(&input), len, "{:?}", frame.header());
                }
                let payload = &frame.bytes()[frame.header().len()..];
                let (more, e) = feed(&mut c, &mut input, payload, Instant::now());
                assert_eq!(e, None);
                got.extend(more);
                assert_eq!(got, [binary(&payload_of(len))], "len {len}");
                assert!(input.is_empty());
            }
        }
    }
}

fn payload_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

#[test]
fn length_beyond_2_pow_53_fails_on_the_header() {
    for len in [MAX_FRAME_LEN + 1, 1 << 63, u64::MAX] {
        let header = raw(BINARY, b"")
            .declare(len)
            .form(127)
            .to(Role::Server)
            .header();
        assert_fails(
            conn_with(Role::Server, |c| c.max_payload = 0),
            &header,
            LimitError::FrameLengthUnsupported,
        );
    }
    // 2^53 - 1 itself passes the header check when there is no size limit.
    let mut c = conn_with(Role::Server, |c| c.max_payload = 0);
    let header = raw(BINARY, b"")
        .declare(MAX_FRAME_LEN)
        .to(Role::Server)
        .header();
    let mut input = BytesMut::new();
    assert_eq!(
        feed(&mut c, &mut input, &header, Instant::now()),
        (vec![], None)
    );
    assert_eq!(c.read_hint(&input) as u64, MAX_FRAME_LEN);
}

// ---------------------------------------------- RFC 6455 §5.4: fragmentation

#[test]
fn fragmented_message_with_control_frames_interleaved() {
    for role in [Role::Server, Role::Client] {
        let stream = [
            raw(TEXT, b"Hel").fin(false),
            raw(PING, b"p1"),
            raw(CONT, b"lo ").fin(false),
            raw(PONG, b"p2"),
            raw(CONT, b"w\xc3").fin(false), // "ö" cut between fragments
            raw(PING, b""),
            raw(CONT, b"\xb6rld").fin(true),
            raw(BINARY, b"\x00").fin(false),
            raw(CONT, b"\x01").fin(true),
        ]
        .iter()
        .flat_map(|f| f.clone().to(role).bytes())
        .collect::<Vec<u8>>();
        let mut c = conn(role);
        assert_eq!(
            read_all(&mut c, &stream).unwrap(),
            [
                Message::Ping(Bytes::from_static(b"p1")),
                Message::Pong(Bytes::from_static(b"p2")),
                Message::Ping(Bytes::new()),
                text("Hello wörld"),
                binary(&[0, 1]),
            ]
        );
        assert_eq!(
            sent(&mut c),
            [
                (OpCode::Pong, true, b"p1".to_vec()),
                (OpCode::Pong, true, vec![])
            ]
        );
        assert_eq!(c.state(), State::Open);
    }
}

#[test]
fn continuation_without_start_fails() {
    for fin in [true, false] {
        assert_fails(
            conn(Role::Server),
            &raw(CONT, b"x").fin(fin).to(Role::Server).bytes(),
            ProtocolError::InvalidOpcode(0),
        );
    }
    // Also right after a complete message.
    let stream = [raw(TEXT, b"a"), raw(CONT, b"b")]
        .iter()
        .flat_map(|f| f.clone().to(Role::Client).bytes())
        .collect::<Vec<u8>>();
    assert_fails(conn(Role::Client), &stream, ProtocolError::InvalidOpcode(0));
}

#[test]
fn new_data_frame_mid_message_fails() {
    for (first, second) in [(TEXT, TEXT), (TEXT, BINARY), (BINARY, TEXT)] {
        let stream = [
            raw(first, b"a").fin(false),
            raw(CONT, b"b").fin(false),
            raw(second, b"c"),
        ]
        .iter()
        .flat_map(|f| f.clone().to(Role::Server).bytes())
        .collect::<Vec<u8>>();
        assert_fails(
            conn(Role::Server),
            &stream,
            ProtocolError::InvalidOpcode(second),
        );
    }
}

// ---------------------------------------------- RFC 6455 §5.5: control frames

#[test]
fn control_frames_must_be_final_and_short() {
    for op in [CLOSE, PING, PONG] {
        assert_fails(
            conn(Role::Server),
            &raw(op, b"").fin(false).to(Role::Server).bytes(),
            ProtocolError::ExpectedFin,
        );
        assert_fails(
            conn(Role::Server),
            &raw(op, &[b'a'; 126]).to(Role::Server).bytes(),
            ProtocolError::InvalidControlPayloadLength,
        );
    }
    // 125 bytes is the most.
    let mut c = conn(Role::Server);
    let ping = raw(PING, &[b'a'; 125]).to(Role::Server).bytes();
    assert_eq!(
        read_all(&mut c, &ping).unwrap(),
        [Message::Ping(Bytes::from(vec![b'a'; 125]))]
    );
}

// §5.5.2, §5.5.3: a ping is answered with a pong carrying the same payload.
#[test]
fn ping_is_answered_with_pong() {
    for role in [Role::Server, Role::Client] {
        let mut c = conn(role);
        let ping = raw(PING, b"are you there").to(role).bytes();
        assert_eq!(
            read_all(&mut c, &ping).unwrap(),
            [Message::Ping(Bytes::from_static(b"are you there"))]
        );
        assert_eq!(
            sent(&mut c),
            [(OpCode::Pong, true, b"are you there".to_vec())]
        );
    }
}

#[test]
fn no_pong_when_auto_pong_is_off() {
    let mut c = conn_with(Role::Server, |c| c.auto_pong = false);
    let ping = raw(PING, b"x").to(Role::Server).bytes();
    assert_eq!(
        read_all(&mut c, &ping).unwrap(),
        [Message::Ping(Bytes::from_static(b"x"))]
    );
    assert!(sent(&mut c).is_empty());
    // The application answers itself.
    c.pong(b"x").unwrap();
    assert_eq!(sent(&mut c), [(OpCode::Pong, true, b"x".to_vec())]);
}

// ---------------------------------------------- RFC 6455 §5.5.1, §7: closing

#[test]
fn close_handshake_started_by_the_client() {
    let mut clock = Clock::new();
    let mut client = conn(Role::Client);
    let mut server = conn(Role::Server);
    client
        .close(Some(&CloseFrame::new(1000u16, "bye")), clock.now())
        .unwrap();
    assert_eq!(client.state(), State::Closing);
    assert!(client.close_sent() && !client.close_received());
    assert_eq!(
        client.poll_timeout(),
        Some(clock.now() + DEFAULT_CLOSE_TIMEOUT)
    );
    clock.advance(Duration::from_secs(1));

    let got = deliver(&mut client, &mut server, clock.now());
    assert_eq!(got, [Message::Close(Some(CloseFrame::new(1000u16, "bye")))]);
    // The server echoes code and reason, and closes TCP first (§7.1.1).
    assert_eq!(server.state(), State::Closed);
    assert!(server.close_received() && server.close_sent());
    assert!(server.should_close_transport());
    let echo = server.transmit().to_vec();
    assert_eq!(
        sent(&mut server),
        [(OpCode::Close, true, close_body(1000, b"bye"))]
    );
    assert!(server.send_text("late").is_err());

    let (got, error) = feed(&mut client, &mut BytesMut::new(), &echo, clock.now());
    assert_eq!(error, None);
    assert_eq!(got, [Message::Close(Some(CloseFrame::new(1000u16, "bye")))]);
    assert_eq!(client.state(), State::Closed);
    assert!(client.close_received());
    assert!(sent(&mut client).is_empty(), "no second close frame");
    // The client waits for the server to close TCP, for close_timeout.
    assert!(!client.should_close_transport());
    let deadline = client.poll_timeout().expect("a deadline");
    assert_eq!(deadline, clock.now() + DEFAULT_CLOSE_TIMEOUT);
    clock.advance(DEFAULT_CLOSE_TIMEOUT - Duration::from_millis(1));
    client.handle_timeout(clock.now());
    assert!(!client.should_close_transport());
    clock.advance(Duration::from_millis(1));
    client.handle_timeout(clock.now());
    assert!(client.should_close_transport());
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn close_handshake_started_by_the_server() {
    let mut clock = Clock::new();
    let mut client = conn(Role::Client);
    let mut server = conn(Role::Server);
    server
        .close(
            Some(&CloseFrame::new(4000u16, "shutting down")),
            clock.now(),
        )
        .unwrap();
    assert_eq!(server.state(), State::Closing);
    assert!(!server.should_close_transport());

    let got = deliver(&mut server, &mut client, clock.now());
    let frame = CloseFrame::new(4000u16, "shutting down");
    assert_eq!(got, [Message::Close(Some(frame.clone()))]);
    assert_eq!(client.state(), State::Closed);
    assert!(!client.should_close_transport());
    let deadline = client
        .poll_timeout()
        .expect("the client waits for TCP close");

    clock.advance(Duration::from_secs(2));
    let got = deliver(&mut client, &mut server, clock.now());
    assert_eq!(got, [Message::Close(Some(frame))]);
    assert_eq!(server.state(), State::Closed);
    assert!(server.should_close_transport());
    assert!(sent(&mut server).is_empty(), "no second close frame");

    // The server never closes TCP: the client gives up at its deadline.
    client.handle_timeout(deadline);
    assert!(client.should_close_transport());
    assert_eq!(client.state(), State::Closed);
}

#[test]
fn unanswered_close_times_out() {
    let mut clock = Clock::new();
    let mut server = conn_with(Role::Server, |c| c.close_timeout = Duration::from_secs(5));
    server.close(None, clock.now()).unwrap();
    assert_eq!(sent(&mut server), [(OpCode::Close, true, vec![])]);
    clock.advance(Duration::from_secs(4));
    server.handle_timeout(clock.now());
    assert_eq!(server.state(), State::Closing);
    clock.advance(Duration::from_secs(1));
    server.handle_timeout(clock.now());
    assert_eq!(server.state(), State::Closed);
    assert!(server.should_close_transport());
}

#[test]
fn empty_close_is_echoed_empty() {
    let mut c = conn(Role::Server);
    let close = raw(CLOSE, b"").to(Role::Server).bytes();
    assert_eq!(read_all(&mut c, &close).unwrap(), [Message::Close(None)]);
    assert_eq!(sent(&mut c), [(OpCode::Close, true, vec![])]);
}

#[test]
fn close_with_one_byte_payload_fails() {
    assert_fails(
        conn(Role::Server),
        &raw(CLOSE, &[0x03]).to(Role::Server).bytes(),
        ProtocolError::InvalidControlPayloadLength,
    );
}

// §7.4.1: codes that must not appear on the wire.
#[test]
fn invalid_close_codes_fail() {
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        assert_fails(
            conn(Role::Server),
            &raw(CLOSE, &close_body(code, b"")).to(Role::Server).bytes(),
            ProtocolError::InvalidCloseCode(code),
        );
    }
    for code in [1000, 1003, 1007, 1014, 3000, 4999] {
        let mut c = conn(Role::Client);
        let close = raw(CLOSE, &close_body(code, b"")).bytes();
        assert_eq!(
            read_all(&mut c, &close).unwrap(),
            [Message::Close(Some(CloseFrame::new(code, "")))]
        );
    }
}

#[test]
fn close_reason_must_be_utf8() {
    assert_fails(
        conn(Role::Server),
        &raw(CLOSE, &close_body(1000, b"ok \xff"))
            .to(Role::Server)
            .bytes(),
        ProtocolError::InvalidUtf8,
    );
}

// Regression: with skip_utf8_validation a received reason is decoded lossily, which
// can make it longer than 123 bytes; the echo was then cut inside a code point and
// sent invalid UTF-8 (§5.5.1).
#[test]
fn echoed_unchecked_close_reason_stays_utf8() {
    let mut c = conn_with(Role::Server, |c| c.skip_utf8_validation = true);
    let reason = [&b"a"[..], &[0xff; 122]].concat();
    let close = raw(CLOSE, &close_body(1000, &reason))
        .to(Role::Server)
        .bytes();
    read_all(&mut c, &close).unwrap();
    let frames = sent(&mut c);
    let (opcode, _, payload) = &frames[0];
    assert_eq!(*opcode, OpCode::Close);
    assert!(payload.len() <= 125);
    assert!(std::str::from_utf8(&payload[2..]).is_ok(), "{payload:?}");
}

#[test]
fn sending_after_close_is_misuse() {
    let misuse = Err(Error::Misuse(ApiMisuse::SendAfterClose));
    // After sending a close frame.
    let mut c = conn(Role::Client);
    c.close(None, Instant::now()).unwrap();
    assert_eq!(c.send_text("x"), misuse);
    assert_eq!(c.send_binary(b"x"), misuse);
    assert_eq!(c.send(DataKind::Text, b"x", false), misuse);
    assert_eq!(c.ping(b""), misuse);
    assert_eq!(c.pong(b""), misuse);
    // Closing again does nothing.
    c.close(Some(&CloseFrame::new(1000u16, "")), Instant::now())
        .unwrap();
    assert_eq!(sent(&mut c), [(OpCode::Close, true, vec![])]);
    // After receiving one.
    let mut c = conn(Role::Server);
    read_all(&mut c, &raw(CLOSE, b"").to(Role::Server).bytes()).unwrap();
    assert_eq!(c.send_text("x"), misuse);
    // After a failure.
    let mut c = conn(Role::Server);
    assert!(read_all(&mut c, &raw(TEXT, b"").bytes()).is_err());
    assert_eq!(c.send_binary(b"x"), misuse);
}

/// A server's whole message under `ZERO_COPY_MIN` is encoded inline (`send_piece`):
/// the same frame as the general path at every length form and its edges (RFC 6455
/// §5.2), and not while a message or a frame is in progress, or after a close.
#[test]
fn a_server_whole_message_is_one_unmasked_frame_at_every_length() {
    for len in [
        0,
        1,
        125,
        126,
        127,
        65_535,
        65_536,
        ZERO_COPY_MIN - 1,
        ZERO_COPY_MIN,
    ] {
        let payload = payload_of(len);
        let mut header = vec![0x82];
        match len {
            0..=125 => header.push(len as u8),
            126..=65_535 => header.extend([&[126][..], &(len as u16).to_be_bytes()].concat()),
            _ => header.extend([&[127][..], &(len as u64).to_be_bytes()].concat()),
        }
        let expected = [&header[..], &payload].concat();
        let mut c = conn(Role::Server);
        c.send_binary(&payload).unwrap();
        assert_eq!(c.transmit().take_all(), expected, "{len} bytes, copied");
        c.send_bytes(DataKind::Binary, Bytes::from(payload.clone()), true, true)
            .unwrap();
        assert_eq!(c.transmit().to_vec(), expected, "{len} bytes, handed over");
    }
    let mut c = conn(Role::Server);
    c.send_text("hi").unwrap();
    assert_eq!(sent(&mut c), [(OpCode::Text, true, b"hi".to_vec())]);

    // Inside a message: a continuation, or misuse for a message of the other kind.
    c.send(DataKind::Binary, b"a", false).unwrap();
    let mismatch = Err(Error::Misuse(ApiMisuse::FragmentTypeMismatch));
    assert_eq!(c.send_text("x"), mismatch);
    c.send_binary(b"b").unwrap();
    assert_eq!(
        sent(&mut c),
        [
            (OpCode::Binary, false, b"a".to_vec()),
            (OpCode::Continuation, true, b"b".to_vec()),
        ]
    );
    // Inside a frame sent in pieces: the next piece, or misuse.
    let piece = |data: &'static [u8], rest| Fragment {
        kind: DataKind::Binary,
        data: Bytes::from_static(data),
        fin: true,
        rest,
    };
    c.send_fragment(piece(b"ab", 1), true).unwrap();
    let misfit = Err(Error::Misuse(ApiMisuse::FramePieceMismatch));
    assert_eq!(c.send_binary(b"xy"), misfit);
    c.send_binary(b"c").unwrap();
    assert_eq!(sent(&mut c), [(OpCode::Binary, true, b"abc".to_vec())]);
    // After its own close frame.
    c.close(None, Instant::now()).unwrap();
    let closed = Err(Error::Misuse(ApiMisuse::SendAfterClose));
    assert_eq!(c.send_binary(b"x"), closed);
    assert_eq!(sent(&mut c), [(OpCode::Close, true, vec![])]);
}

/// Reading pauses while what is queued for the peer is at or over the high-water mark,
/// and not once reading is over (a failed connection drains its transport).
#[test]
fn reading_pauses_at_the_high_water_mark() {
    let mut c = conn_with(Role::Server, |c| c.send_queue.high_water = 100);
    c.send_binary(&[0; 97]).unwrap();
    assert_eq!(c.transmit_len(), 99);
    assert!(!c.should_pause_reading(), "under the mark");
    // A ping's automatic pong takes the queue to the mark.
    read_all(&mut c, &raw(PING, b"").to(Role::Server).bytes()).unwrap();
    assert_eq!(c.transmit_len(), 101);
    assert!(c.should_pause_reading(), "at the mark");
    c.transmit().advance(99);
    assert!(!c.should_pause_reading(), "drained below it");

    c.send_binary(&[0; 120]).unwrap();
    assert!(c.should_pause_reading());
    assert!(
        read_all(&mut c, &raw(TEXT, b"").bytes()).is_err(),
        "unmasked: fails"
    );
    assert!(c.is_read_closed() && c.should_drain());
    assert!(!c.should_pause_reading(), "draining is not paused");
}

#[test]
fn close_arguments_are_checked() {
    let mut c = conn(Role::Server);
    for code in [1005u16, 1006, 1015, 999] {
        assert_eq!(
            c.close(Some(&CloseFrame::new(code, "")), Instant::now()),
            Err(ApiMisuse::InvalidCloseCode(code).into())
        );
    }
    assert_eq!(
        c.close(
            Some(&CloseFrame::new(1000u16, "x".repeat(124))),
            Instant::now()
        ),
        Err(ApiMisuse::CloseReasonTooLong.into())
    );
    assert_eq!(
        c.ping(&[0; 126]),
        Err(ApiMisuse::ControlPayloadTooLong.into())
    );
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.state(), State::Open);
}

// §7.1.5: a connection that ends without a close frame is reported as 1006.
#[test]
fn eof_without_close_is_abnormal() {
    let mut c = conn(Role::Client);
    assert_eq!(
        c.handle_eof(Instant::now()),
        Some(CloseFrame::new(CloseCode::ABNORMAL_CLOSURE, ""))
    );
    assert_eq!(c.state(), State::Closed);
    assert!(c.should_close_transport());
    let mut c = conn(Role::Client);
    read_all(&mut c, &raw(CLOSE, b"").bytes()).unwrap();
    assert_eq!(c.handle_eof(Instant::now()), None);
    assert!(
        c.poll_timeout().is_some(),
        "close_timeout to write the close reply"
    );
    assert_eq!(sent(&mut c), [(OpCode::Close, true, Vec::new())]);
    assert_eq!(c.poll_timeout(), None, "written: nothing left to wait for");
    assert!(!c.should_abort_transport());
}

// ---------------------------------------------- RFC 6455 §5.6: data frames

#[test]
fn single_frame_messages_both_roles() {
    for role in [Role::Server, Role::Client] {
        let stream = [
            raw(TEXT, "héllo".as_bytes()),
            raw(TEXT, b""),
            raw(BINARY, &[0, 255, 7]),
            raw(BINARY, b""),
        ]
        .iter()
        .flat_map(|f| f.clone().to(role).bytes())
        .collect::<Vec<u8>>();
        let mut c = conn(role);
        assert_eq!(
            read_all(&mut c, &stream).unwrap(),
            [text("héllo"), text(""), binary(&[0, 255, 7]), binary(b"")]
        );
        assert!(sent(&mut c).is_empty());
    }
}

#[test]
fn streamed_send_uses_text_then_continuation() {
    let mut client = conn(Role::Client);
    client.send(DataKind::Text, b"ab", false).unwrap();
    client.send(DataKind::Text, b"cd", false).unwrap();
    assert_eq!(
        client.send(DataKind::Binary, b"x", true),
        Err(ApiMisuse::FragmentTypeMismatch.into())
    );
    client.ping(b"mid").unwrap();
    client.send(DataKind::Text, "é".as_bytes(), true).unwrap();
    client.send(DataKind::Binary, b"z", true).unwrap();
    let wire = client.transmit().to_vec();
    assert_eq!(
        sent(&mut client),
        [
            (OpCode::Text, false, b"ab".to_vec()),
            (OpCode::Continuation, false, b"cd".to_vec()),
            (OpCode::Ping, true, b"mid".to_vec()),
            (OpCode::Continuation, true, "é".as_bytes().to_vec()),
            (OpCode::Binary, true, b"z".to_vec()),
        ]
    );
    let mut server = conn(Role::Server);
    assert_eq!(
        read_all(&mut server, &wire).unwrap(),
        [
            Message::Ping(Bytes::from_static(b"mid")),
            text("abcdé"),
            binary(b"z")
        ]
    );
}

// ---------------------------------------------- RFC 6455 §8.1: UTF-8

#[test]
fn invalid_utf8_text_fails() {
    for payload in [&b"\xff"[..], b"abc\xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
        assert_fails(
            conn(Role::Server),
            &raw(TEXT, payload).to(Role::Server).bytes(),
            ProtocolError::InvalidUtf8,
        );
    }
    // A code point left open at the end of a fragmented message.
    let stream = [raw(TEXT, b"a").fin(false), raw(CONT, b"\xe2\x82")]
        .iter()
        .flat_map(|f| f.clone().to(Role::Client).bytes())
        .collect::<Vec<u8>>();
    assert_fails(conn(Role::Client), &stream, ProtocolError::InvalidUtf8);
}

/// Feeds `chunks` one by one; every chunk but the last must be taken without error
/// or message, the last must fail with InvalidUtf8.
#[track_caller]
fn assert_fails_on_last_chunk(role: Role, chunks: &[&[u8]]) {
    let mut c = conn(role);
    let mut input = BytesMut::new();
    let (last, init) = chunks.split_last().unwrap();
    for chunk in init {
        assert_eq!(
            feed(&mut c, &mut input, chunk, Instant::now()),
            (vec![], None)
        );
    }
    let (messages, error) = feed(&mut c, &mut input, last, Instant::now());
    assert!(messages.is_empty());
    assert_eq!(error, Some(ProtocolError::InvalidUtf8.into()));
    assert_eq!(
        sent(&mut c).last(),
        Some(&(OpCode::Close, true, 1007u16.to_be_bytes().to_vec()))
    );
}

// Autobahn 6.4.x: invalid UTF-8 fails the connection when the bad byte arrives, not
// when the frame ends.
#[test]
fn invalid_utf8_fails_fast_inside_a_partial_frame() {
    for role in [Role::Server, Role::Client] {
        let frame = raw(TEXT, b"hello \xff world, and much more after it").to(role);
        let bytes = frame.bytes();
        let hlen = frame.header().len();
        // Header and "hel", then "lo ", then the chunk holding 0xff; 30 bytes never sent.
        assert_fails_on_last_chunk(
            role,
            &[
                &bytes[..hlen + 3],
                &bytes[hlen + 3..hlen + 6],
                &bytes[hlen + 6..hlen + 9],
            ],
        );
        // A surrogate is known bad at its second byte.
        let frame = raw(TEXT, b"ab\xed\xa0\x80 and the rest").to(role);
        let bytes = frame.bytes();
        let hlen = frame.header().len();
        assert_fails_on_last_chunk(role, &[&bytes[..hlen + 3], &bytes[hlen + 3..hlen + 4]]);
        // A code point cut between fragments, completed wrongly by the continuation.
        let first = raw(TEXT, b"ab\xe2").fin(false).to(role).bytes();
        let cont = raw(CONT, b"\x28 and more").to(role);
        let cont_bytes = cont.bytes();
        let hlen = cont.header().len();
        assert_fails_on_last_chunk(
            role,
            &[&first, &cont_bytes[..hlen], &cont_bytes[hlen..hlen + 1]],
        );
    }
}

#[test]
fn skip_utf8_validation_delivers_unchecked_text() {
    let mut c = conn_with(Role::Client, |c| c.skip_utf8_validation = true);
    assert_eq!(
        read_all(&mut c, &raw(TEXT, b"\xff").bytes()).unwrap(),
        [Message::UncheckedText(Bytes::from_static(b"\xff"))]
    );
}

// ---------------------------------------------- RFC 6455 §10.4: limits

#[test]
fn max_payload_fails_on_the_header_of_a_single_frame() {
    let config = |c: &mut Config| c.max_payload = 10;
    for role in [Role::Server, Role::Client] {
        let mut c = conn_with(role, config);
        let ok = raw(BINARY, &[1; 10]).to(role).bytes();
        assert_eq!(read_all(&mut c, &ok).unwrap(), [binary(&[1; 10])]);
        // Only the header of an 11-byte frame, final or not.
        for fin in [true, false] {
            let header = raw(BINARY, b"").fin(fin).declare(11).to(role).header();
            assert_fails(
                conn_with(role, config),
                &header,
                LimitError::MessageTooLarge,
            );
        }
        let header = raw(TEXT, b"").declare(1 << 40).to(role).header();
        assert_fails(
            conn_with(role, config),
            &header,
            LimitError::MessageTooLarge,
        );
    }
}

#[test]
fn max_payload_counts_all_fragments() {
    let config = |c: &mut Config| c.max_payload = 10;
    let first = raw(TEXT, b"123456").fin(false).to(Role::Server).bytes();
    let ping = raw(PING, &[0; 100]).to(Role::Server).bytes();
    let exact = raw(CONT, b"7890").to(Role::Server).bytes();
    let mut c = conn_with(Role::Server, config);
    let stream = [&first[..], &ping, &exact].concat();
    assert_eq!(
        read_all(&mut c, &stream).unwrap(),
        [Message::Ping(Bytes::from(vec![0; 100])), text("1234567890")],
        "control frames do not count"
    );
    for fin in [true, false] {
        let over = raw(CONT, b"").fin(fin).declare(5).to(Role::Server).header();
        assert_fails(
            conn_with(Role::Server, config),
            &[&first[..], &over].concat(),
            LimitError::MessageTooLarge,
        );
    }
}

#[test]
fn max_fragments() {
    let config = |c: &mut Config| c.max_fragments = 3;
    let frames = |n: usize, last_fin: bool| {
        (0..n)
            .map(|i| {
                raw(if i == 0 { BINARY } else { CONT }, &[i as u8])
                    .fin(last_fin && i == n - 1)
                    .to(Role::Server)
                    .bytes()
            })
            .collect::<Vec<_>>()
            .concat()
    };
    let mut c = conn_with(Role::Server, config);
    assert_eq!(
        read_all(&mut c, &frames(3, true)).unwrap(),
        [binary(&[0, 1, 2])]
    );
    // A new message starts the count again.
    assert_eq!(
        read_all(&mut c, &frames(3, true)).unwrap(),
        [binary(&[0, 1, 2])]
    );
    assert_fails(
        conn_with(Role::Server, config),
        &frames(4, true),
        LimitError::TooManyParts,
    );
}

// Autobahn 9.x: a large message in many small fragments.
#[test]
fn four_mib_in_65536_fragments_of_64_bytes() {
    const N: usize = 65_536;
    let content: Vec<u8> = (0..N * 64).map(|i| b'a' + (i % 26) as u8).collect();
    let mut stream = Vec::with_capacity(N * 70);
    for (i, chunk) in content.chunks(64).enumerate() {
        let opcode = if i == 0 { TEXT } else { CONT };
        let frame = raw(opcode, chunk).fin(i == N - 1).mask([i as u8, 1, 2, 3]);
        stream.extend_from_slice(&frame.bytes());
    }
    let last_len = 70;
    let mut c = conn(Role::Server);
    let mut input = BytesMut::new();
    let (m, e) = feed(
        &mut c,
        &mut input,
        &stream[..stream.len() - last_len],
        Instant::now(),
    );
    assert_eq!((m, e), (vec![], None));
    assert_eq!(c.incoming_buffered(), N * 64 - 64);
    let (m, e) = feed(
        &mut c,
        &mut input,
        &stream[stream.len() - last_len..],
        Instant::now(),
    );
    assert_eq!(e, None);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].as_text().map(str::as_bytes), Some(&content[..]));
    assert_eq!(c.incoming_buffered(), 0);
}

// Empty fragments cost nothing: no memory grows and the default has no count limit.
#[test]
fn four_hundred_thousand_empty_fragments_do_not_grow_the_buffer() {
    const N: usize = 400_000;
    let mut c = conn(Role::Server);
    let first = raw(TEXT, b"").fin(false).to(Role::Server).bytes();
    let empty = raw(CONT, b"").fin(false).to(Role::Server).bytes();
    let mut stream = first.clone();
    for _ in 1..N {
        stream.extend_from_slice(&empty);
    }
    let mut input = BytesMut::new();
    for chunk in stream.chunks(4096) {
        assert_eq!(
            feed(&mut c, &mut input, chunk, Instant::now()),
            (vec![], None)
        );
        assert_eq!(c.incoming_buffered(), 0);
        assert!(input.len() < empty.len(), "whole frames are consumed");
    }
    assert!(input.is_empty());
    let last = raw(CONT, b"end").to(Role::Server).bytes();
    assert_eq!(
        feed(&mut c, &mut input, &last, Instant::now()),
        (vec![text("end")], None)
    );
}

// ---------------------------------------------- reads split anywhere

#[test]
fn split_reads_at_every_byte_boundary_give_the_same_messages() {
    for role in [Role::Server, Role::Client] {
        let stream = [
            raw(TEXT, "héllo".as_bytes()),
            raw(BINARY, &[1, 2, 3]).fin(false),
            raw(PING, b"p"),
            raw(CONT, &[4; 130]).form(126).fin(true),
            raw(TEXT, b"a\xe2").fin(false),
            raw(CONT, b"\x82\xac").form(127),
            raw(PONG, b""),
            raw(CLOSE, &close_body(1000, b"done")),
        ]
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            let f = f.clone().to(role);
            match f.mask {
                Some(_) => f.mask([i as u8, 0x55, 0xaa, 0xff]).bytes(),
                None => f.bytes(),
            }
        })
        .collect::<Vec<u8>>();
        let expected = vec![
            text("héllo"),
            Message::Ping(Bytes::from_static(b"p")),
            binary(&[[1, 2, 3].as_slice(), &[4; 130]].concat()),
            text("a€"),
            Message::Pong(Bytes::new()),
            Message::Close(Some(CloseFrame::new(1000u16, "done"))),
        ];
        let mut whole = conn(role);
        assert_eq!(read_all(&mut whole, &stream).unwrap(), expected);
        let expected_sent = sent(&mut whole);
        assert_eq!(expected_sent.len(), 2, "a pong and the close echo");

        for cut in 0..=stream.len() {
            let mut c = conn(role);
            let mut input = BytesMut::new();
            let (mut got, e1) = feed(&mut c, &mut input, &stream[..cut], Instant::now());
            let (more, e2) = feed(&mut c, &mut input, &stream[cut..], Instant::now());
            got.extend(more);
            assert_eq!((e1, e2), (None, None), "cut {cut}");
            assert_eq!(got, expected, "cut {cut}");
            assert_eq!(sent(&mut c), expected_sent, "cut {cut}");
        }

        let mut c = conn(role);
        let mut input = BytesMut::new();
        let mut got = Vec::new();
        for byte in &stream {
            let (m, e) = feed(&mut c, &mut input, &[*byte], Instant::now());
            assert_eq!(e, None);
            got.extend(m);
        }
        assert_eq!(got, expected, "byte by byte");
    }
}

// ---------------------------------------------- ws parity

// One malformed frame per WS_ERR_* code (ws 8 lib/receiver.js), with the close code
// sent for it.
#[test]
fn one_malformed_frame_per_ws_error_code() {
    let server = || conn(Role::Server);
    let s = Role::Server;
    let cases: Vec<(Connection, Vec<u8>, &str, u16)> = vec![
        (
            server(),
            raw(TEXT, b"x").rsv(0b010).to(s).bytes(),
            "WS_ERR_UNEXPECTED_RSV_2_3",
            1002,
        ),
        (
            server(),
            raw(TEXT, b"x").rsv(0b100).to(s).bytes(),
            "WS_ERR_UNEXPECTED_RSV_1",
            1002,
        ),
        (
            server(),
            raw(0x3, b"").to(s).bytes(),
            "WS_ERR_INVALID_OPCODE",
            1002,
        ),
        (
            server(),
            raw(PING, b"").fin(false).to(s).bytes(),
            "WS_ERR_EXPECTED_FIN",
            1002,
        ),
        (
            server(),
            raw(PONG, &[0; 126]).to(s).bytes(),
            "WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH",
            1002,
        ),
        (
            server(),
            raw(TEXT, b"x").bytes(),
            "WS_ERR_EXPECTED_MASK",
            1002,
        ),
        (
            conn(Role::Client),
            raw(TEXT, b"x").mask(KEY).bytes(),
            "WS_ERR_UNEXPECTED_MASK",
            1002,
        ),
        (
            server(),
            raw(CLOSE, &close_body(1005, b"")).to(s).bytes(),
            "WS_ERR_INVALID_CLOSE_CODE",
            1002,
        ),
        (
            server(),
            raw(TEXT, b"\xff").to(s).bytes(),
            "WS_ERR_INVALID_UTF8",
            1007,
        ),
        (
            server(),
            raw(BINARY, b"")
                .declare(DEFAULT_MAX_PAYLOAD as u64 + 1)
                .to(s)
                .header(),
            "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH",
            1009,
        ),
        (
            server(),
            raw(BINARY, b"").declare(MAX_FRAME_LEN + 1).to(s).header(),
            "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH",
            1009,
        ),
        (
            conn_with(Role::Server, |c| c.max_fragments = 1),
            [
                raw(BINARY, b"a").fin(false).to(s).bytes(),
                raw(CONT, b"b").to(s).bytes(),
            ]
            .concat(),
            "WS_ERR_TOO_MANY_BUFFERED_PARTS",
            1008,
        ),
    ];
    for (mut c, bytes, ws_code, close_code) in cases {
        let error = read_all(&mut c, &bytes).unwrap_err();
        assert_eq!(error.ws_code(), Some(ws_code));
        assert_eq!(
            sent(&mut c).last(),
            Some(&(OpCode::Close, true, close_code.to_be_bytes().to_vec())),
            "{ws_code}"
        );
    }
}

// The heartbeat, with time passed in.
mod heartbeat {
    use std::time::{Duration, Instant};

    use bytes::BytesMut;

    use crate::{Config, Connection, Heartbeat, Role, State};

    fn server() -> Connection {
        let config = Config {
            heartbeat: Some(Heartbeat::new(
                Duration::from_secs(10),
                Duration::from_secs(5),
            )),
            ..Config::default()
        };
        Connection::new(Role::Server, config)
    }

    #[test]
    fn pings_after_silence_and_gives_up_after_the_timeout() {
        let t0 = Instant::now();
        let mut conn = server();
        assert_eq!(conn.read(&mut BytesMut::new(), t0).unwrap(), None);
        assert_eq!(conn.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        conn.handle_timeout(t0 + Duration::from_secs(9));
        assert!(conn.transmit().is_empty(), "no ping before the interval");
        conn.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            &conn.transmit().to_vec()[..],
            &[0x89, 0x00],
            "an empty ping"
        );
        conn.transmit().clear();
        assert_eq!(conn.poll_timeout(), Some(t0 + Duration::from_secs(15)));
        conn.handle_timeout(t0 + Duration::from_secs(15));
        assert!(conn.heartbeat_expired());
        assert_eq!(conn.state(), State::Closed);
        assert!(conn.should_close_transport() && conn.is_read_closed());
        assert!(conn.transmit().is_empty(), "no close frame to a dead peer");
    }

    #[test]
    fn an_empty_read_is_wanted_only_to_start_the_clock() {
        let t0 = Instant::now();
        let mut conn = server();
        let mut empty = BytesMut::new();
        assert!(
            conn.wants_read(&empty),
            "the first read starts the heartbeat"
        );
        conn.read(&mut empty, t0).unwrap();
        assert!(!conn.wants_read(&empty), "nothing more to do without bytes");
        assert!(conn.wants_read(&BytesMut::from(&[0x8a][..])));
        let plain = Connection::new(Role::Server, Config::default());
        assert!(!plain.wants_read(&empty), "no heartbeat, no clock to start");
    }

    #[test]
    fn any_frame_keeps_the_peer_alive() {
        let t0 = Instant::now();
        let mut conn = server();
        conn.read(&mut BytesMut::new(), t0).unwrap();
        conn.handle_timeout(t0 + Duration::from_secs(10));
        assert!(!conn.transmit().is_empty(), "pinged");
        // A pong (masked, empty) arrives before the timeout.
        let mut pong = BytesMut::from(&[0x8a, 0x80, 1, 2, 3, 4][..]);
        let t1 = t0 + Duration::from_secs(12);
        assert!(conn.read(&mut pong, t1).unwrap().is_some());
        assert_eq!(conn.poll_timeout(), Some(t1 + Duration::from_secs(10)));
        conn.handle_timeout(t0 + Duration::from_secs(15));
        assert!(!conn.heartbeat_expired() && conn.state() == State::Open);
        // Without a heartbeat there is no deadline at all.
        let mut plain = Connection::new(Role::Server, Config::default());
        plain.read(&mut BytesMut::new(), t0).unwrap();
        assert_eq!(plain.poll_timeout(), None);
    }
}

// ------------------------------------------------ RFC 6455 §5.4: fragment mode

mod fragments {
    use super::*;
    #[cfg(feature = "deflate")]
    use crate::deflate::{client_accept, DeflateConfig};
    use crate::message::Fragment;

    fn fragment(kind: DataKind, data: &[u8], fin: bool) -> Message {
        Message::Fragment(Fragment::new(kind, Bytes::copy_from_slice(data), fin))
    }

    fn streaming(role: Role) -> Connection {
        conn_with(role, |c| c.deliver_fragments = true)
    }

    #[test]
    fn frames_are_delivered_as_they_arrive_with_control_frames_between() {
        for role in [Role::Server, Role::Client] {
            let mut c = streaming(role);
            let mut input = BytesMut::new();
            let now = Instant::now();
            let first = raw(TEXT, b"Hel").fin(false).to(role).bytes();
            let (got, error) = feed(&mut c, &mut input, &first, now);
            assert_eq!(error, None);
            assert_eq!(
                got,
                [fragment(DataKind::Text, b"Hel", false)],
                "not buffered"
            );
            assert_eq!(c.incoming_buffered(), 0);
            let rest = [
                raw(PING, b"p").to(role),
                raw(CONT, b"lo w\xc3").fin(false).to(role), // "ö" cut between fragments
                raw(CONT, b"\xb6rld").to(role),
                raw(BINARY, b"\x00").to(role),
                raw(BINARY, b"").fin(false).to(role),
                raw(CONT, b"").to(role),
            ]
            .iter()
            .flat_map(Raw::bytes)
            .collect::<Vec<u8>>();
            let (got, error) = feed(&mut c, &mut input, &rest, now);
            assert_eq!(error, None);
            assert_eq!(
                got,
                [
                    Message::Ping(Bytes::from_static(b"p")),
                    fragment(DataKind::Text, b"lo w\xc3", false),
                    fragment(DataKind::Text, b"\xb6rld", true),
                    fragment(DataKind::Binary, b"\x00", true),
                    fragment(DataKind::Binary, b"", false),
                    fragment(DataKind::Binary, b"", true),
                ]
            );
            assert_eq!(sent(&mut c), [(OpCode::Pong, true, b"p".to_vec())]);
        }
    }

    #[test]
    fn invalid_utf8_across_fragments_fails_with_1007() {
        // The second fragment does not continue the character the first one began.
        let mut c = streaming(Role::Server);
        let stream = [
            raw(TEXT, b"ok\xc3").fin(false).to(Role::Server).bytes(),
            raw(CONT, b"(").to(Role::Server).bytes(),
        ]
        .concat();
        let (got, error) = feed(&mut c, &mut BytesMut::new(), &stream, Instant::now());
        assert_eq!(got, [fragment(DataKind::Text, b"ok\xc3", false)]);
        assert_eq!(error, Some(ProtocolError::InvalidUtf8.into()));
        // A message that ends inside a character fails on its last frame.
        let stream = [
            raw(TEXT, b"ok").fin(false).to(Role::Server).bytes(),
            raw(CONT, b"\xe2\x82").to(Role::Server).bytes(),
        ]
        .concat();
        assert_fails(streaming(Role::Server), &stream, ProtocolError::InvalidUtf8);
        // skip_utf8_validation delivers the bytes as they are.
        let mut c = conn_with(Role::Server, |c| {
            c.deliver_fragments = true;
            c.skip_utf8_validation = true;
        });
        assert_eq!(
            read_all(&mut c, &stream).unwrap(),
            [
                fragment(DataKind::Text, b"ok", false),
                fragment(DataKind::Text, b"\xe2\x82", true)
            ]
        );
    }

    #[test]
    fn max_payload_counts_the_whole_message() {
        let config = |c: &mut Config| {
            c.deliver_fragments = true;
            c.max_payload = 10;
        };
        let first = raw(BINARY, b"123456").fin(false).to(Role::Server).bytes();
        let exact = raw(CONT, b"7890").to(Role::Server).bytes();
        let mut c = conn_with(Role::Server, config);
        assert_eq!(
            read_all(&mut c, &[&first[..], &exact].concat())
                .unwrap()
                .len(),
            2
        );
        let over = raw(CONT, b"78901").to(Role::Server).bytes();
        assert_fails(
            conn_with(Role::Server, config),
            &[&first[..], &over].concat(),
            LimitError::MessageTooLarge,
        );
        // The count starts again with the next message.
        let mut c = conn_with(Role::Server, config);
        let two = [&first[..], &exact, &first, &exact].concat();
        assert_eq!(read_all(&mut c, &two).unwrap().len(), 4);
    }

    #[cfg(feature = "deflate")]
    pub(super) fn deflate_pair(max_payload: usize) -> (Connection, Connection) {
        let config = DeflateConfig {
            threshold: 0,
            ..Default::default()
        };
        let params = client_accept(&config, ["permessage-deflate"])
            .unwrap()
            .unwrap();
        let client = Connection::new(Role::Client, Config::default()).with_deflate(Deflate::new(
            Role::Client,
            params,
            &config,
        ));
        let server = conn_with(Role::Server, |c| {
            c.deliver_fragments = true;
            c.max_payload = max_payload;
        })
        .with_deflate(Deflate::new(Role::Server, params, &config));
        (client, server)
    }

    #[test]
    #[cfg(feature = "deflate")]
    fn compressed_frames_are_inflated_one_by_one() {
        let (mut client, mut server) = deflate_pair(0);
        let now = Instant::now();
        for _ in 0..2 {
            client
                .send(DataKind::Text, "héllo ".as_bytes(), false)
                .unwrap();
            assert_ne!(client.transmit().to_vec()[0] & 0x40, 0, "compressed");
            client
                .send(DataKind::Text, "wörld".as_bytes(), true)
                .unwrap();
            let got = deliver(&mut client, &mut server, now);
            let texts: Vec<_> = got
                .iter()
                .map(|m| match m {
                    Message::Fragment(f) => (f.kind, f.fin),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(texts, [(DataKind::Text, false), (DataKind::Text, true)]);
            let joined: Vec<u8> = got.iter().flat_map(|m| m.as_bytes().to_vec()).collect();
            assert_eq!(joined, "héllo wörld".as_bytes());
        }
    }

    #[test]
    #[cfg(feature = "deflate")]
    fn compressed_message_over_max_payload_fails_across_frames() {
        let (mut client, mut server) = deflate_pair(1000);
        client
            .send_with(DataKind::Binary, &[0; 600], false, true)
            .unwrap();
        client.send(DataKind::Binary, &[0; 600], true).unwrap();
        let mut wire = client.transmit().take_all();
        let (got, error) = feed(
            &mut server,
            &mut BytesMut::new(),
            &wire.split(),
            Instant::now(),
        );
        assert_eq!(got.len(), 1, "the first frame fits");
        assert_eq!(error, Some(LimitError::MessageTooLarge.into()));
    }

    #[test]
    fn a_fragment_can_be_sent_back() {
        // An echo in fragment mode forwards each piece as it comes.
        let mut server = streaming(Role::Server);
        let mut client = conn(Role::Client);
        client.send(DataKind::Binary, b"ab", false).unwrap();
        client.send(DataKind::Binary, b"cd", true).unwrap();
        for message in deliver(&mut client, &mut server, Instant::now()) {
            let Message::Fragment(f) = message else {
                panic!("{message:?}")
            };
            server.send(f.kind, &f.data, f.fin).unwrap();
        }
        assert_eq!(
            deliver(&mut server, &mut client, Instant::now()),
            [binary(b"abcd")]
        );
    }
}

// ---------------------------------------------------------------- handed-over payloads

#[test]
fn server_references_large_payloads_and_keeps_frame_order() {
    let mut server = Connection::new(Role::Server, Config::default());
    let big = Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    server.ping(b"before").unwrap();
    server
        .send_bytes(DataKind::Binary, big.clone(), true, true)
        .unwrap();
    server.pong(b"after").unwrap();
    assert!(
        server.transmit().is_segmented(),
        "the payload is referenced"
    );
    assert_eq!(server.transmit_len(), 2 + 6 + 10 + big.len() + 2 + 5);
    assert_eq!(
        sent(&mut server),
        vec![
            (OpCode::Ping, true, b"before".to_vec()),
            (OpCode::Binary, true, big.to_vec()),
            (OpCode::Pong, true, b"after".to_vec()),
        ]
    );
}

#[test]
fn small_or_masked_payloads_are_copied() {
    let payload = Bytes::from(vec![7u8; ZERO_COPY_MIN - 1]);
    let mut server = Connection::new(Role::Server, Config::default());
    server
        .send_bytes(DataKind::Binary, payload.clone(), true, true)
        .unwrap();
    assert!(!server.transmit().is_segmented(), "under ZERO_COPY_MIN");

    let mut client = Connection::new(Role::Client, Config::default());
    let big = Bytes::from(vec![9u8; 4 * ZERO_COPY_MIN]);
    client
        .send_bytes(DataKind::Binary, big.clone(), true, true)
        .unwrap();
    assert!(
        !client.transmit().is_segmented(),
        "a client masks a copy of a payload also held elsewhere"
    );
    assert_eq!(
        sent(&mut client),
        vec![(OpCode::Binary, true, big.to_vec())]
    );
    assert!(
        big.iter().all(|&b| b == 9),
        "the caller's bytes are untouched"
    );
}

/// A client masks a payload nothing else refers to in place and references it: one
/// pass over the bytes, no copy. Also for a frame sent in pieces (the key runs on).
#[test]
fn client_masks_an_unshared_payload_in_place() {
    let original: Vec<u8> = (0..3 * ZERO_COPY_MIN).map(|i| (i % 251) as u8).collect();
    let mut client = Connection::new(Role::Client, Config::default());
    let unique = Bytes::from(original.clone());
    let address = unique.as_ptr();
    client
        .send_bytes(DataKind::Binary, unique, true, true)
        .unwrap();
    assert!(client.transmit().is_segmented(), "referenced, not copied");
    let transmit = client.transmit();
    let mut slices = [std::io::IoSlice::new(&[]); 4];
    let n = transmit.chunks_vectored(&mut slices);
    assert!(
        slices[..n].iter().any(|s| s.as_ptr() == address),
        "the caller's buffer itself goes out"
    );
    assert_eq!(
        sent(&mut client),
        vec![(OpCode::Binary, true, original.clone())]
    );

    let (a, b) = original.split_at(ZERO_COPY_MIN + 1);
    client
        .send_fragment(
            Fragment {
                rest: b.len() as u64,
                ..Fragment::new(DataKind::Binary, a.to_vec(), true)
            },
            true,
        )
        .unwrap();
    client
        .send_fragment(Fragment::new(DataKind::Binary, b.to_vec(), true), true)
        .unwrap();
    assert!(client.transmit().is_segmented());
    assert_eq!(sent(&mut client), vec![(OpCode::Binary, true, original)]);
}

#[test]
fn handed_over_fragments_arrive_as_one_message() {
    let mut server = Connection::new(Role::Server, Config::default());
    let mut client = Connection::new(Role::Client, Config::default());
    let part = Bytes::from(vec![b'x'; 3000]);
    server
        .send_bytes(DataKind::Text, part.clone(), false, true)
        .unwrap();
    server.send(DataKind::Text, b"-", false).unwrap();
    server.send_bytes(DataKind::Text, part, true, true).unwrap();
    let messages = deliver(&mut server, &mut client, Instant::now());
    let expected = format!("{}-{}", "x".repeat(3000), "x".repeat(3000));
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].as_text(), Some(expected.as_str()));
}
/// Every idle connection carries a `Connection`: keep it small (see the idle-memory
/// budget in the tokio crate).
#[test]
fn connection_stays_small() {
    let size = std::mem::size_of::<Connection>();
    // 136 bytes (the fragmented message being received boxed), one word for a frame
    // being sent in pieces, one for a client's masking-key generator and one for the
    // transmit queue's `tail_shared`.
    assert!(size <= 160, "Connection is {size} bytes");
}

/// Reads `wire` with `read_with`, the clock at `at`; returns the messages and how many
/// times the clock was read.
fn read_counting(
    c: &mut Connection,
    input: &mut BytesMut,
    wire: &[u8],
    at: Instant,
) -> (Vec<Message>, usize) {
    input.extend_from_slice(wire);
    let mut reads = 0;
    let mut messages = Vec::new();
    while let Some(message) = c
        .read_with(input, || {
            reads += 1;
            at
        })
        .unwrap()
    {
        messages.push(message);
    }
    (messages, reads)
}

/// `read_with` reads the clock only when the call needs the time: never for a server's
/// data and pings without a heartbeat, once for a close frame whose reply is queued
/// (close_timeout bounds writing it), and with a heartbeat once per call that holds
/// frames (and at the first call, which starts it).
#[test]
fn read_with_reads_the_clock_only_when_it_needs_the_time() {
    let now = Instant::now();
    let close_timeout = Config::default().close_timeout;
    let mut server = Connection::new(Role::Server, Config::default());
    let mut client = Connection::new(Role::Client, Config::default());
    client.send_text("hi").unwrap();
    client.ping(b"p").unwrap();
    client.send_binary(b"data").unwrap();
    let mut input = BytesMut::new();
    let wire = client.transmit().take_all();
    let (messages, reads) = read_counting(&mut server, &mut input, &wire, now);
    assert_eq!(messages.len(), 3);
    assert_eq!(reads, 0, "no clock for data and pings");
    let (_, reads) = read_counting(&mut server, &mut input, b"", now);
    assert_eq!(reads, 0);
    sent(&mut server);
    client.close(None, now).unwrap();
    let wire = client.transmit().take_all();
    let (messages, reads) = read_counting(&mut server, &mut input, &wire, now);
    assert_eq!(messages, [Message::Close(None)]);
    assert_eq!(reads, 1, "the close reply's writing is bounded");
    assert_eq!(server.poll_timeout(), Some(now + close_timeout));
    assert_eq!(sent(&mut server), [(OpCode::Close, true, Vec::new())]);
    assert_eq!(server.poll_timeout(), None, "written: nothing to wait for");

    let with_heartbeat = Config {
        heartbeat: Some(crate::Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }),
        ..Config::default()
    };
    let mut server = Connection::new(Role::Server, with_heartbeat);
    let mut input = BytesMut::new();
    let (_, reads) = read_counting(&mut server, &mut input, b"", now);
    assert_eq!(reads, 1, "the first read starts the heartbeat");
    let deadline = server.poll_timeout();
    assert_eq!(deadline, Some(now + Duration::from_secs(1)));
    let (_, reads) = read_counting(&mut server, &mut input, b"", now + Duration::from_secs(9));
    assert_eq!(reads, 0, "an empty read does not move the heartbeat");
    assert_eq!(server.poll_timeout(), deadline);
    let mut client = Connection::new(Role::Client, Config::default());
    client.send_text("a").unwrap();
    client.send_text("b").unwrap();
    let wire = client.transmit().take_all();
    let later = now + Duration::from_millis(500);
    let (messages, reads) = read_counting(&mut server, &mut BytesMut::new(), &wire, later);
    assert_eq!(messages.len(), 2);
    assert_eq!(reads, 2, "once per call that reads a frame");
    assert_eq!(server.poll_timeout(), Some(later + Duration::from_secs(1)));
}

/// A client's empty reads ignore the time: the close timeout starts from the time of
/// the read that holds the server's close frame.
#[test]
fn client_close_timeout_starts_at_the_read_with_the_close_frame() {
    let mut client = Connection::new(Role::Client, Config::default());
    let mut server = Connection::new(Role::Server, Config::default());
    let now = Instant::now();
    server.close(None, now).unwrap();
    let wire = server.transmit().take_all();
    let mut input = BytesMut::new();
    let (_, reads) = read_counting(&mut client, &mut input, b"", now - Duration::from_secs(600));
    assert_eq!(reads, 0);
    assert_eq!(client.poll_timeout(), None);
    let (messages, reads) = read_counting(&mut client, &mut input, &wire, now);
    assert!(matches!(messages[..], [Message::Close(_)]));
    assert_eq!(reads, 1);
    assert_eq!(
        client.poll_timeout(),
        Some(now + Config::default().close_timeout)
    );
}

// ---------------------------------------------------------------- stream_frames

fn streaming_server(max_fragments: usize) -> Connection {
    let config = Config {
        deliver_fragments: true,
        stream_frames: true,
        max_fragments,
        ..Config::default()
    };
    Connection::new(Role::Server, config)
}

/// Feeds `wire` in `chunk`-byte reads; returns the fragments and any error.
fn feed_in_chunks(c: &mut Connection, wire: &[u8], chunk: usize) -> (Vec<Fragment>, Option<Error>) {
    let mut input = BytesMut::new();
    let mut fragments = Vec::new();
    for piece in wire.chunks(chunk) {
        let (messages, error) = feed(c, &mut input, piece, Instant::now());
        for message in messages {
            match message {
                Message::Fragment(f) => fragments.push(f),
                other => panic!("unexpected {other:?}"),
            }
        }
        if error.is_some() {
            return (fragments, error);
        }
    }
    (fragments, None)
}

#[test]
fn stream_frames_hands_out_a_large_frame_in_pieces_as_it_arrives() {
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut client = Connection::new(Role::Client, Config::default());
    client.send_binary(&payload).unwrap();
    client.send_binary(b"after").unwrap();
    let wire = client.transmit().take_all();
    // max_fragments 2: the pieces of one frame are not counted as fragments.
    let mut server = streaming_server(2);
    let mut input = BytesMut::new();
    let (first, error) = feed(&mut server, &mut input, &wire[..30_000], Instant::now());
    assert_eq!(error, None);
    assert_eq!(
        first.len(),
        1,
        "what arrived is handed out before the frame ends"
    );
    assert!(server.read_hint(&input) <= 256 * 1024, "reads are windowed");
    let (fragments, error) = feed_in_chunks(&mut server, &wire[30_000..], 7_000);
    assert_eq!(error, None);
    let mut all: Vec<Fragment> = first
        .into_iter()
        .map(|m| match m {
            Message::Fragment(f) => f,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    all.extend(fragments);
    let (last, pieces) = all.split_last().unwrap();
    assert_eq!(last.data, &b"after"[..]);
    assert!(last.fin);
    assert!(pieces.len() > 5, "{} pieces", pieces.len());
    assert!(pieces[..pieces.len() - 1]
        .iter()
        .all(|f| !f.ends_message() && f.data.len() >= 4096));
    // Each piece carries its frame's FIN and what is left of the frame after it.
    let mut left = payload.len() as u64;
    for piece in pieces {
        left -= piece.data.len() as u64;
        assert_eq!((piece.fin, piece.rest), (true, left));
    }
    assert!(pieces.last().unwrap().ends_message());
    let joined: Vec<u8> = pieces.iter().flat_map(|f| f.data.to_vec()).collect();
    assert_eq!(joined, payload, "unmasked across the splits");
}

#[test]
fn stream_frames_checks_utf8_across_pieces() {
    let text = "é".repeat(20_000); // 40,000 bytes of 2-byte characters
    let mut client = Connection::new(Role::Client, Config::default());
    client.send_text(&text).unwrap();
    let wire = client.transmit().take_all();
    let mut server = streaming_server(0);
    // Odd read sizes split characters between pieces.
    let (fragments, error) = feed_in_chunks(&mut server, &wire, 4_999);
    assert_eq!(error, None);
    assert!(fragments.len() > 1);
    assert!(fragments.iter().all(|f| f.kind == DataKind::Text));
    let joined: Vec<u8> = fragments.iter().flat_map(|f| f.data.to_vec()).collect();
    assert_eq!(joined, text.as_bytes());

    // An invalid byte late in the frame fails it once it arrives (1007).
    let mut bad = text.into_bytes();
    bad[30_001] = 0xff;
    let mut client = Connection::new(Role::Client, Config::default());
    client.send(DataKind::Text, &bad, true).unwrap();
    let wire = client.transmit().take_all();
    let mut server = streaming_server(0);
    let (fragments, error) = feed_in_chunks(&mut server, &wire, 5_000);
    assert!(!fragments.is_empty(), "the valid start was handed out");
    assert_eq!(
        error.and_then(|e| e.close_code()),
        Some(CloseCode::INVALID_PAYLOAD)
    );
}

#[test]
fn without_stream_frames_a_frame_is_one_fragment() {
    let payload = vec![3u8; 50_000];
    let mut client = Connection::new(Role::Client, Config::default());
    client.send_binary(&payload).unwrap();
    let wire = client.transmit().take_all();
    let mut server = Connection::new(
        Role::Server,
        Config {
            deliver_fragments: true,
            ..Config::default()
        },
    );
    let (fragments, error) = feed_in_chunks(&mut server, &wire, 5_000);
    assert_eq!(error, None);
    assert_eq!(fragments.len(), 1);
    assert_eq!(fragments[0].data.len(), 50_000);
}

// ------------------------------------------------ sending a frame in pieces (Fragment::rest)

mod frames_in_pieces {
    use super::*;
    use crate::message::Fragment;

    fn piece(kind: DataKind, data: &[u8], fin: bool, rest: u64) -> Fragment {
        Fragment {
            rest,
            ..Fragment::new(kind, Bytes::copy_from_slice(data), fin)
        }
    }

    /// A server that has sent "abc" of a final binary frame with `rest` bytes to come.
    fn server_mid_frame(rest: u64) -> Connection {
        let mut server = conn(Role::Server);
        server
            .send_fragment(piece(DataKind::Binary, b"abc", true, rest), true)
            .unwrap();
        server
    }

    /// A streamed frame read in pieces goes back out as one frame of the same length, in
    /// both roles (a client's mask runs on across the pieces).
    #[test]
    fn pieces_read_from_a_frame_go_back_as_one_frame() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for role in [Role::Server, Role::Client] {
            let peer_role = match role {
                Role::Server => Role::Client,
                Role::Client => Role::Server,
            };
            let mut peer = conn(peer_role);
            peer.send(DataKind::Binary, &payload[..60_000], false)
                .unwrap();
            peer.send(DataKind::Binary, &payload[60_000..], true)
                .unwrap();
            let wire = peer.transmit().take_all();
            let mut echo = conn_with(role, |c| {
                c.deliver_fragments = true;
                c.stream_frames = true;
            });
            let (fragments, error) = feed_in_chunks(&mut echo, &wire, 9_000);
            assert_eq!(error, None);
            assert!(fragments.len() > 4, "{} pieces", fragments.len());
            for fragment in fragments {
                let rest = fragment.rest;
                echo.send_fragment(fragment, true).unwrap();
                assert_eq!(echo.is_mid_frame(), rest > 0);
            }
            let frames = sent(&mut echo);
            let shapes: Vec<_> = frames
                .iter()
                .map(|(op, fin, p)| (*op, *fin, p.len()))
                .collect();
            assert_eq!(
                shapes,
                [
                    (OpCode::Binary, false, 60_000),
                    (OpCode::Continuation, true, 40_000)
                ],
                "{role:?}: one frame out per frame in"
            );
            let joined: Vec<u8> = frames.into_iter().flat_map(|(_, _, p)| p).collect();
            assert_eq!(joined, payload, "{role:?}");
        }
    }

    /// Control frames may not go inside a frame (RFC 6455 §5.4): queued mid-frame, they
    /// follow its last piece; of the pings that arrive meanwhile only the latest is
    /// answered (§5.5.3), so a ping flood queues one pong.
    #[test]
    fn control_frames_wait_for_the_frame_to_end() {
        let mut server = server_mid_frame(5);
        let mut client = conn(Role::Client);
        for i in 0..1000u32 {
            client.ping(format!("ping {i}").as_bytes()).unwrap();
        }
        let pings = deliver(&mut client, &mut server, Instant::now());
        assert_eq!(pings.len(), 1000);
        server.ping(b"mine").unwrap();
        server
            .close(
                Some(&CloseFrame::new(CloseCode::NORMAL_CLOSURE, "bye")),
                Instant::now(),
            )
            .unwrap();
        let queued = server.transmit().len();
        assert_eq!(queued, 2 + 3, "only the header and the first piece");
        assert_eq!(
            server.transmit_len(),
            queued + (2 + 8) + (2 + 4) + (2 + 5),
            "held frames count as buffered"
        );
        // After close(), the frame's pieces may still go, new frames may not.
        assert_eq!(
            server.send(DataKind::Binary, b"new", true),
            Err(ApiMisuse::FramePieceMismatch.into())
        );
        server
            .send_fragment(piece(DataKind::Binary, b"de", true, 3), true)
            .unwrap();
        server
            .send_fragment(piece(DataKind::Binary, b"fgh", true, 0), true)
            .unwrap();
        assert!(!server.is_mid_frame());
        assert_eq!(
            server.send(DataKind::Binary, b"new", true),
            Err(ApiMisuse::SendAfterClose.into())
        );
        assert_eq!(
            sent(&mut server),
            [
                (OpCode::Binary, true, b"abcdefgh".to_vec()),
                (OpCode::Pong, true, b"ping 999".to_vec()),
                (OpCode::Ping, true, b"mine".to_vec()),
                (OpCode::Close, true, close_body(1000, b"bye")),
            ]
        );
    }

    #[test]
    fn a_piece_must_fit_the_frame_in_progress() {
        let mut client = conn(Role::Client);
        client
            .send_fragment(piece(DataKind::Text, b"ab", false, 4), true)
            .unwrap();
        let misfits = [
            (
                piece(DataKind::Text, b"cd", false, 1),
                ApiMisuse::FramePieceMismatch,
            ),
            (
                piece(DataKind::Text, b"cdefg", false, 0),
                ApiMisuse::FramePieceMismatch,
            ),
            (
                piece(DataKind::Text, b"cd", true, 2),
                ApiMisuse::FramePieceMismatch,
            ),
            (
                piece(DataKind::Text, b"cd", false, u64::MAX),
                ApiMisuse::FramePieceMismatch,
            ),
            (
                piece(DataKind::Binary, b"cd", false, 2),
                ApiMisuse::FragmentTypeMismatch,
            ),
        ];
        let mut other = conn(Role::Server);
        for rest in [u64::MAX, MAX_FRAME_LEN] {
            assert_eq!(
                other.send_fragment(piece(DataKind::Binary, b"a", true, rest), true),
                Err(ApiMisuse::FramePieceMismatch.into()),
                "a frame longer than a peer accepts"
            );
            assert!(!other.is_mid_frame() && other.transmit().is_empty());
        }
        for (misfit, expected) in misfits {
            assert_eq!(client.send_fragment(misfit, true), Err(expected.into()));
            assert!(
                client.is_mid_frame(),
                "a refused piece leaves the frame as it was"
            );
        }
        client
            .send_fragment(piece(DataKind::Text, b"cd", false, 2), true)
            .unwrap();
        // A plain send mid-frame is its last piece.
        client.send(DataKind::Text, b"ef", false).unwrap();
        assert!(!client.is_mid_frame());
        client.send(DataKind::Text, b"!", true).unwrap();
        let mut server = conn(Role::Server);
        assert_eq!(
            deliver(&mut client, &mut server, Instant::now()),
            [text("abcdef!")]
        );
    }

    /// A connection that fails mid-frame cannot send a close frame after half a frame:
    /// it drops what was held and closes the transport.
    #[test]
    fn failing_mid_frame_cuts_the_frame_without_a_close_frame() {
        let mut server = server_mid_frame(5);
        server.ping(b"held").unwrap();
        let error = read_all(&mut server, &raw(0x3, b"").to(Role::Server).bytes());
        assert_eq!(error, Err(ProtocolError::InvalidOpcode(3).into()));
        assert!(!server.is_mid_frame());
        assert!(server.should_close_transport());
        assert_eq!(server.transmit().to_vec(), [0x82, 8, b'a', b'b', b'c']);
        assert_eq!(
            server.send_fragment(piece(DataKind::Binary, b"defgh", true, 0), true),
            Err(ApiMisuse::SendAfterClose.into())
        );
    }

    /// The peer's close frame arrives mid-frame: the frame may finish (RFC 6455 §5.5.1),
    /// then the close reply follows and the server closes the transport; a frame that
    /// does not finish within close_timeout is cut off.
    #[test]
    fn a_close_received_mid_frame_waits_for_the_frame_within_close_timeout() {
        for finish in [true, false] {
            let mut clock = Clock::new();
            let mut server = server_mid_frame(2);
            let mut client = conn(Role::Client);
            client.close(None, clock.now()).unwrap();
            let got = deliver(&mut client, &mut server, clock.now());
            assert_eq!(got, [Message::Close(None)]);
            assert!(!server.should_close_transport(), "the frame comes first");
            assert!(server.poll_timeout().is_some(), "for close_timeout at most");
            if finish {
                server
                    .send_fragment(piece(DataKind::Binary, b"de", true, 0), true)
                    .unwrap();
                assert!(server.should_close_transport());
                assert!(server.poll_timeout().is_some(), "until it is written");
                assert_eq!(
                    sent(&mut server),
                    [
                        (OpCode::Binary, true, b"abcde".to_vec()),
                        (OpCode::Close, true, Vec::new()),
                    ]
                );
                assert_eq!(server.poll_timeout(), None);
                assert!(!server.should_abort_transport());
            } else {
                clock.advance(Config::default().close_timeout);
                server.handle_timeout(clock.now());
                assert!(server.should_close_transport());
                assert!(server.should_abort_transport(), "not written: dropped");
                assert!(!server.is_mid_frame());
                assert_eq!(server.transmit().to_vec(), [0x82, 5, b'a', b'b', b'c']);
            }
        }
    }

    /// The peer's end of stream mid-frame (or terminate()) ends the frame at once: the
    /// transport is to be closed, not kept open for pieces nobody will read. After end
    /// of stream what was queued may still be written, within close_timeout; after
    /// terminate() nothing is.
    #[test]
    fn end_of_stream_or_terminate_mid_frame_closes_at_once() {
        for terminate in [false, true] {
            let mut clock = Clock::new();
            let mut server = server_mid_frame(5);
            if terminate {
                server.terminate();
            } else {
                assert!(server.handle_eof(clock.now()).is_some(), "1006");
            }
            assert!(!server.is_mid_frame());
            assert!(server.should_close_transport());
            assert_eq!(server.should_abort_transport(), terminate);
            if terminate {
                assert_eq!(server.poll_timeout(), None);
                continue;
            }
            let close_timeout = Config::default().close_timeout;
            assert_eq!(server.poll_timeout(), Some(clock.now() + close_timeout));
            // The peer does not read it: dropped after close_timeout.
            clock.advance(close_timeout);
            server.handle_timeout(clock.now());
            assert!(server.should_abort_transport());
            assert_eq!(server.poll_timeout(), None);
        }
    }

    /// A protocol error queues the close frame with its code; a peer that does not
    /// read it holds the connection for close_timeout at most.
    #[test]
    fn a_failed_connection_writes_its_close_frame_within_close_timeout() {
        let mut clock = Clock::new();
        let mut server = conn(Role::Server);
        let error = feed(
            &mut server,
            &mut BytesMut::new(),
            &raw(0x3, b"").to(Role::Server).bytes(),
            clock.now(),
        )
        .1;
        assert_eq!(error, Some(ProtocolError::InvalidOpcode(3).into()));
        assert!(server.should_close_transport() && !server.should_abort_transport());
        let close_timeout = Config::default().close_timeout;
        assert_eq!(server.poll_timeout(), Some(clock.now() + close_timeout));
        clock.advance(close_timeout);
        server.handle_timeout(clock.now());
        assert!(server.should_abort_transport());
    }

    /// A compressed message cannot announce a frame's length ahead: its pieces go out
    /// as frames of their own, and the message arrives whole.
    #[test]
    #[cfg(feature = "deflate")]
    fn compressed_pieces_go_as_frames_of_their_own() {
        let (mut client, mut server) = fragments::deflate_pair(0);
        let text = "wörld ".repeat(2_000);
        let (a, b) = text.as_bytes().split_at(5_000);
        client
            .send_fragment(piece(DataKind::Text, a, true, b.len() as u64), true)
            .unwrap();
        assert!(!client.is_mid_frame());
        client
            .send_fragment(piece(DataKind::Text, b, true, 0), true)
            .unwrap();
        let got = deliver(&mut client, &mut server, Instant::now());
        let joined: Vec<u8> = got.iter().flat_map(|m| m.as_bytes().to_vec()).collect();
        assert_eq!(got.len(), 2, "two frames");
        assert_eq!(joined, text.as_bytes());
    }
}

/// Randomized relays (fixed seeds): a client's message of 1-3 frames with pings between,
/// read by a streaming server in reads of random sizes, every piece sent back at once,
/// with the server's own pings now and then. The echo must decode cleanly (no control
/// frame inside a data frame), come back as many frames as went in, equal the original,
/// and each pong must answer a ping that was sent.
#[test]
fn randomized_relays_send_one_frame_per_frame_and_hold_control_frames() {
    let mut next = xorshift(0x9e37_79b9_u32);
    let mut split_pieces = 0;
    for _ in 0..60 {
        let frames = 1 + next(3) as usize;
        let mut client = conn(Role::Client);
        let mut original = Vec::new();
        let mut pings = Vec::new();
        for i in 0..frames {
            let len = 1 + next(60_000) as usize;
            let part: Vec<u8> = (0..len).map(|_| next(256) as u8).collect();
            client
                .send(DataKind::Binary, &part, i == frames - 1)
                .unwrap();
            original.extend_from_slice(&part);
            if next(2) == 0 {
                let ping = format!("p{i}");
                client.ping(ping.as_bytes()).unwrap();
                pings.push(ping.into_bytes());
            }
        }
        let wire = client.transmit().take_all();
        let mut server = conn_with(Role::Server, |c| {
            c.deliver_fragments = true;
            c.stream_frames = true;
        });
        let mut input = BytesMut::new();
        let mut at = 0;
        let mut own_pings = 0;
        while at < wire.len() {
            let n = (1 + next(20_000) as usize).min(wire.len() - at);
            let (messages, error) =
                feed(&mut server, &mut input, &wire[at..at + n], Instant::now());
            assert_eq!(error, None);
            at += n;
            for message in messages {
                if let Message::Fragment(piece) = message {
                    split_pieces += usize::from(piece.rest > 0);
                    server.send_fragment(piece, true).unwrap();
                    if next(4) == 0 {
                        server.ping(b"own").unwrap();
                        own_pings += 1;
                    }
                }
            }
        }
        assert!(!server.is_mid_frame());
        let echoed = sent(&mut server);
        let data: Vec<_> = echoed
            .iter()
            .filter(|(op, _, _)| matches!(op, OpCode::Binary | OpCode::Continuation))
            .collect();
        assert_eq!(data.len(), frames, "one frame out per frame in");
        assert!(data.last().unwrap().1, "the last frame ends the message");
        let joined: Vec<u8> = data.iter().flat_map(|(_, _, p)| p.clone()).collect();
        assert!(joined == original, "the echo equals the original");
        let pongs: Vec<_> = echoed
            .iter()
            .filter(|(op, _, _)| *op == OpCode::Pong)
            .collect();
        assert!(pongs.len() <= pings.len());
        assert!(pongs.iter().all(|(_, _, p)| pings.contains(p)));
        if !pings.is_empty() {
            assert!(!pongs.is_empty(), "the latest ping is answered");
        }
        let own = echoed
            .iter()
            .filter(|(op, _, _)| *op == OpCode::Ping)
            .count();
        assert_eq!(own, own_pings);
    }
    assert!(
        split_pieces > 50,
        "frames were split: {split_pieces} pieces"
    );
}

// ---------------------------------------------------------------- sending from the stack
mod send_now {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use bytes::Buf;

    use crate::connection::SEND_NOW_MAX;
    use crate::{Config, Connection, DataKind, MaskSource, Role};

    /// A connection of `role` whose masking keys (a client's) are 1, 2, 3 ... in turn, so
    /// that two such connections mask their n-th frames alike.
    fn connection(role: Role) -> Connection {
        let next = Arc::new(AtomicU32::new(1));
        let config = Config {
            generate_mask: MaskSource::Custom(Arc::new(move || {
                next.fetch_add(1, Ordering::Relaxed).to_be_bytes()
            })),
            ..Config::default()
        };
        Connection::new(role, config)
    }

    /// The bytes `send` would queue for `payload`, as the first frame of a fresh
    /// connection of `role`.
    fn queued_frame(role: Role, kind: DataKind, payload: &[u8]) -> Vec<u8> {
        let mut conn = connection(role);
        conn.send(kind, payload, true).unwrap();
        conn.transmit().to_vec()
    }

    #[test]
    fn a_message_up_to_the_limit_is_offered_whole_and_the_queue_stays_empty() {
        for role in [Role::Server, Role::Client] {
            for (kind, len) in [
                (DataKind::Binary, 0),
                (DataKind::Text, 20),
                (DataKind::Binary, 125),
                (DataKind::Text, 126),
                (DataKind::Binary, 1024),
                (DataKind::Binary, SEND_NOW_MAX),
            ] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut conn = connection(role);
                let mut offered = Vec::new();
                let sent = conn.try_send_now(kind, &payload, |frame| {
                    offered.extend_from_slice(frame);
                    frame.len()
                });
                assert!(sent);
                let expected = queued_frame(role, kind, &payload);
                assert_eq!(offered, expected, "{role:?} {kind:?} x {len}");
                assert!(conn.transmit().is_empty());
            }
        }
    }

    #[test]
    fn what_the_transport_does_not_take_is_queued_in_order() {
        let payload = [7u8; 40];
        for role in [Role::Server, Role::Client] {
            let whole = queued_frame(role, DataKind::Binary, &payload);
            for took in [0, 1, 2, 41] {
                let mut conn = connection(role);
                assert!(conn.try_send_now(DataKind::Binary, &payload, |_| took));
                assert_eq!(conn.transmit().to_vec(), &whole[took..], "took {took}");
                // A later message follows the rest (a client's with the next key).
                conn.send_binary(b"next").unwrap();
                let mut twice = connection(role);
                twice.send_binary(&payload).unwrap();
                twice.send_binary(b"next").unwrap();
                assert_eq!(conn.transmit().to_vec(), &twice.transmit().to_vec()[took..]);
            }
        }
        // A transport claiming more than it was given counts as all of it.
        let mut conn = connection(Role::Server);
        assert!(conn.try_send_now(DataKind::Binary, &payload, |_| 1000));
        assert!(conn.transmit().is_empty());
    }

    /// Each case: not taken, `write_now` never called, nothing queued by it.
    #[test]
    fn other_sends_are_left_to_the_queue() {
        let never = |_: &[u8]| -> usize { panic!("write_now called") };
        for role in [Role::Server, Role::Client] {
            // Over the limit.
            let mut conn = connection(role);
            assert!(!conn.try_send_now(DataKind::Binary, &[0; SEND_NOW_MAX + 1], never));
            // Something queued before it.
            conn.ping(b"p").unwrap();
            let before = conn.transmit().to_vec();
            assert!(!conn.try_send_now(DataKind::Binary, b"x", never));
            assert_eq!(conn.transmit().to_vec(), before);
            // A fragmented message in progress.
            let mut conn = connection(role);
            conn.send(DataKind::Text, b"first", false).unwrap();
            let queued = conn.transmit().remaining();
            conn.transmit().advance(queued);
            assert!(!conn.try_send_now(DataKind::Binary, b"x", never));
            // Closing.
            let mut conn = connection(role);
            conn.close(None, std::time::Instant::now()).unwrap();
            let queued = conn.transmit().remaining();
            conn.transmit().advance(queued);
            assert!(!conn.try_send_now(DataKind::Binary, b"x", never));
        }
        // (permessage-deflate: in deflate.rs.)
    }
}
