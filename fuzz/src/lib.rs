//! Shared oracles of the Sockeye fuzz targets. Each target asserts "accepted, or a
//! documented error", never just "does not panic".

use std::time::{Duration, Instant};

use sockeye_proto::bytes::{Buf, BytesMut};
use sockeye_proto::frame::{FrameHeader, OpCode};
use sockeye_proto::mask::apply_mask;
use sockeye_proto::{
    CloseFrame, Config, Connection, Deflate, DeflateConfig, DeflateParams, Error, MaskSource,
    Message, Role, State,
};

/// The connection targets' size limit: small, so that the fuzzer reaches it.
pub const MAX_PAYLOAD: usize = 4096;

/// The client's masking key, fixed so that runs are reproducible.
pub const CLIENT_KEY: [u8; 4] = [0xa5, 0x5a, 0x0f, 0xf0];

/// What one `read` call returned.
#[derive(Debug, PartialEq)]
enum Event {
    Message(Message),
    Error(Error),
}

/// Feeds `data` to a connection of `role` and checks every rule a peer cannot break.
///
/// Input layout: byte 0 picks the config (bit 0: `max_fragments = 8`, bit 1:
/// `skip_utf8_validation`, bit 2: `auto_pong` off) and bits 3-4 the chunk granularity;
/// byte 1 seeds the chunk sizes; the rest is the byte stream from the peer, fed in
/// chunks. The same stream fed at once must give the same events and the same bytes
/// sent.
pub fn connection(role: Role, data: &[u8]) {
    connection_with(role, data, false);
}

/// [`connection`] with permessage-deflate negotiated (bit 5 of byte 0: no context
/// takeover both ways, bit 6: 9-bit windows): compressed input must inflate within
/// `MAX_PAYLOAD` or fail with a documented error (1009, 1007, 1002).
pub fn connection_deflate(role: Role, data: &[u8]) {
    connection_with(role, data, true);
}

fn connection_with(role: Role, data: &[u8], deflate: bool) {
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    let deflate = deflate.then(|| {
        let answer = match (flags & 0x20 != 0, flags & 0x40 != 0) {
            (false, false) => "permessage-deflate",
            (true, false) => "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            (false, true) => "permessage-deflate; server_max_window_bits=9; client_max_window_bits=9",
            (true, true) => "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9",
        };
        let config = DeflateConfig { threshold: 0, ..DeflateConfig::default() };
        let params = sockeye_proto::deflate::client_accept(&config, [answer]).expect("valid answer");
        (params.expect("accepted"), config)
    });
    let config = Config {
        max_payload: MAX_PAYLOAD,
        max_fragments: if flags & 1 != 0 { 8 } else { 0 },
        skip_utf8_validation: flags & 2 != 0,
        auto_pong: flags & 4 == 0,
        close_timeout: Duration::from_secs(1),
        generate_mask: MaskSource::custom(|| CLIENT_KEY),
        heartbeat: None,
        send_queue: Default::default(),
        deliver_fragments: flags & 0x80 != 0,
        // Split frames into pieces as they arrive (seed bit 0, with deliver_fragments).
        stream_frames: seed & 1 != 0,
    };
    let max_chunk = [1, 7, 64, 1024][usize::from((flags >> 3) & 3)];
    let mut rng = u32::from(*seed) | 0x100;
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let n = (1 + rng as usize % max_chunk).min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
    }

    let chunked = run(role, &config, deflate.as_ref(), &chunks);
    let whole = run(role, &config, deflate.as_ref(), &[stream]);
    assert_eq!(chunked, whole, "chunking changed the outcome");
}

/// Runs one connection over `chunks` and checks it; returns the events and bytes sent.
fn run(
    role: Role,
    config: &Config,
    deflate: Option<&(DeflateParams, DeflateConfig)>,
    chunks: &[&[u8]],
) -> (Vec<Event>, Vec<u8>) {
    let now = Instant::now();
    let mut conn = Connection::new(role, config.clone());
    if let Some((params, deflate_config)) = deflate {
        conn = conn.with_deflate(Deflate::new(role, *params, deflate_config));
    }
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    let mut wire = Vec::new();
    let mut ended = false;
    for chunk in chunks {
        input.extend_from_slice(chunk);
        loop {
            assert!(conn.read_hint(&input) >= 1);
            let result = conn.read(&mut input, now);
            wire.extend_from_slice(&conn.transmit().take_all());
            match result {
                Ok(None) => break,
                Ok(Some(_)) | Err(_) if ended => panic!("read after the end: {result:?}"),
                Ok(Some(message)) => {
                    check_message(config, &message);
                    if let Message::Close(_) = message {
                        assert_eq!(conn.state(), State::Closed);
                        assert!(conn.close_received() && conn.close_sent());
                        assert!(conn.is_read_closed());
                        assert_eq!(
                            conn.should_close_transport(),
                            role == Role::Server,
                            "the server closes TCP first"
                        );
                        assert_eq!(conn.poll_timeout().is_some(), role == Role::Client);
                        ended = true;
                    }
                    events.push(Event::Message(message));
                }
                Err(error) => {
                    assert!(
                        matches!(
                            error,
                            Error::Protocol(_) | Error::Limit(_) | Error::Inflate(_)
                        ),
                        "undocumented error {error:?}"
                    );
                    assert!(error.ws_code().is_some() && error.close_code().is_some());
                    assert_eq!(conn.state(), State::Closed);
                    assert!(conn.should_close_transport() && conn.is_read_closed());
                    // The transport is read to its end before it is let go.
                    assert!(conn.should_drain() && !conn.is_finished());
                    ended = true;
                    events.push(Event::Error(error));
                    break;
                }
            }
        }
    }
    check_wire(role, config, &events, &wire);
    let eof = conn.handle_eof(now);
    assert_eq!(
        eof.is_some(),
        !ended,
        "1006 only when nothing ended the connection"
    );
    (events, wire)
}

fn check_message(config: &Config, message: &Message) {
    match message {
        Message::Text(text) => {
            assert!(!config.skip_utf8_validation);
            assert!(std::str::from_utf8(text.as_bytes()).is_ok());
            assert!(text.len() <= MAX_PAYLOAD);
        }
        Message::UncheckedText(data) => {
            assert!(config.skip_utf8_validation);
            assert!(data.len() <= MAX_PAYLOAD);
        }
        Message::Binary(data) => assert!(data.len() <= MAX_PAYLOAD),
        Message::Ping(data) | Message::Pong(data) => assert!(data.len() <= 125),
        Message::Close(Some(frame)) => {
            assert!(frame.code.is_sendable(), "{frame:?}");
            if !config.skip_utf8_validation {
                assert!(frame.reason.len() <= 123);
            }
        }
        Message::Close(None) => {}
        Message::Fragment(fragment) => {
            assert!(config.deliver_fragments);
            assert!(fragment.data.len() <= MAX_PAYLOAD);
        }
    }
}

/// Decodes what the connection sent and checks it against what it received: well-formed
/// frames masked by the rule of `role`, one pong per ping (with `auto_pong`), and a close
/// frame last: the echo of a received close, or the error's close code.
fn check_wire(role: Role, config: &Config, events: &[Event], wire: &[u8]) {
    let mut frames = Vec::new();
    for (h, payload) in decode_frames(wire) {
        match role {
            Role::Client => assert_eq!(h.mask, Some(CLIENT_KEY)),
            Role::Server => assert_eq!(h.mask, None),
        }
        assert!(h.fin && !h.rsv1);
        assert!(payload.len() <= 125);
        frames.push((h.opcode, payload));
    }
    let pings: Vec<&[u8]> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(Message::Ping(p)) => Some(&p[..]),
            _ => None,
        })
        .collect();
    let pongs: Vec<&[u8]> = frames
        .iter()
        .filter(|(op, _)| *op == OpCode::Pong)
        .map(|(_, p)| &p[..])
        .collect();
    if config.auto_pong {
        assert_eq!(pings, pongs);
    } else {
        assert!(pongs.is_empty());
    }
    let closes: Vec<&[u8]> = frames
        .iter()
        .filter(|(op, _)| *op == OpCode::Close)
        .map(|(_, p)| &p[..])
        .collect();
    assert!(frames
        .iter()
        .all(|(op, _)| matches!(op, OpCode::Pong | OpCode::Close)));
    match events.last() {
        Some(Event::Error(error)) => {
            let code = error.close_code().unwrap().0.to_be_bytes();
            assert_eq!(
                closes,
                [&code[..]],
                "one close frame, with the error's code"
            );
            assert_eq!(frames.last().unwrap().0, OpCode::Close);
        }
        Some(Event::Message(Message::Close(frame))) => {
            assert_eq!(closes.len(), 1);
            assert_eq!(frames.last().unwrap().0, OpCode::Close);
            check_echo(config, frame.as_ref(), closes[0]);
        }
        _ => assert!(closes.is_empty()),
    }
}

/// The frames of what a connection sent, payloads unmasked: whole frames with valid
/// headers, nothing cut short.
fn decode_frames(wire: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut buf = BytesMut::from(wire);
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let (h, n) = FrameHeader::decode(&buf)
            .expect("we send valid headers")
            .expect("we send whole frames");
        buf.advance(n);
        let len = usize::try_from(h.payload_len).expect("fits");
        assert!(len <= buf.len(), "a frame cut short");
        let mut payload = buf.split_to(len).to_vec();
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        frames.push((h, payload));
    }
    frames
}

fn check_echo(config: &Config, received: Option<&CloseFrame>, echo: &[u8]) {
    let Some(frame) = received else {
        assert!(echo.is_empty());
        return;
    };
    let [hi, lo, reason @ ..] = echo else {
        panic!("echo without a code: {echo:?}");
    };
    assert_eq!(u16::from_be_bytes([*hi, *lo]), frame.code.0);
    let reason = std::str::from_utf8(reason).expect("the echoed reason is UTF-8");
    if config.skip_utf8_validation {
        assert!(frame.reason.starts_with(reason));
    } else {
        assert_eq!(reason, frame.reason);
    }
}

/// The relay oracle for frames handed out in pieces (`stream_frames`), as `sockeye echo`
/// relays them: a client's messages, in frames of any length up to 40,000 bytes (past
/// `STREAM_PIECE_MIN`, which the other targets' 4 KiB inputs never reach), with pings
/// between frames and a close at the end, read by a streaming server in reads of any
/// size; every piece is sent straight back (`send_fragment`), with the server's own pings
/// now and then. The echo must parse as whole frames, one data frame out per data frame
/// in, give back the same messages, answer only pings that came, and end with the close.
/// With bit 2 of byte 0 the server's queue is written out after each read, as a server
/// on a transport does; without it, once at the end.
///
/// Input: byte 0 picks the read size granularity (bits 0-1), writing after each read
/// (bit 2), and seeds the read sizes;
/// then 3-byte ops: `op % 4` 0 or 1: a data frame (bit 2: text for a message's first
/// frame, bit 3: fin) of `u16 % 40_001` bytes; 2: a ping of `byte % 126` bytes; 3: the
/// server pings after the next piece it relays.
pub fn relay(data: &[u8]) {
    use sockeye_proto::{DataKind, Fragment};
    let [flags, ops @ ..] = data else {
        return;
    };
    let now = Instant::now();
    let config = Config {
        generate_mask: MaskSource::custom(|| CLIENT_KEY),
        ..Config::default()
    };
    let mut client = Connection::new(Role::Client, config.clone());
    let mut expected: Vec<(DataKind, Vec<u8>)> = Vec::new();
    let mut open: Option<(DataKind, Vec<u8>)> = None;
    let mut frames_in = 0usize;
    let mut own_ping_after = Vec::new();
    let mut wire_len = 0usize;
    for (i, op) in ops.chunks_exact(3).enumerate() {
        if wire_len > 256 * 1024 {
            break;
        }
        match op[0] % 4 {
            0 | 1 => {
                let fin = op[0] & 8 != 0;
                let len = usize::from(u16::from_le_bytes([op[1], op[2]])) % 40_001;
                let kind = match &open {
                    Some((kind, _)) => *kind,
                    None if op[0] & 4 != 0 => DataKind::Text,
                    None => DataKind::Binary,
                };
                let payload: Vec<u8> = (0..len)
                    .map(|j| match kind {
                        DataKind::Text => b'a' + ((i + j) % 26) as u8,
                        DataKind::Binary => (i * 31 + j * 7) as u8,
                    })
                    .collect();
                client.send(kind, &payload, fin).expect("a valid frame");
                frames_in += 1;
                wire_len += len;
                let message = open.get_or_insert_with(|| (kind, Vec::new()));
                message.1.extend_from_slice(&payload);
                if fin {
                    expected.push(open.take().expect("open"));
                }
            }
            2 => {
                let len = usize::from(op[1]) % 126;
                client.ping(&vec![b'p'; len]).expect("a valid ping");
            }
            _ => own_ping_after.push(frames_in),
        }
    }
    if let Some((kind, _)) = &open {
        client.send(*kind, b"", true).expect("the last frame");
        frames_in += 1;
        expected.push(open.take().expect("open"));
    }
    client.close(None, now).expect("close");
    let wire = client.transmit().take_all();

    let server_config = Config {
        deliver_fragments: true,
        stream_frames: true,
        ..config.clone()
    };
    let mut server = Connection::new(Role::Server, server_config);
    let write_each_read = flags & 4 != 0;
    let mut out = Vec::new();
    let max_chunk = [7, 600, 9000, 70_000][usize::from(flags & 3)];
    let mut rng = u32::from(*flags) | 0x100;
    let mut input = BytesMut::new();
    let mut pings_in = Vec::new();
    let mut own_pings = 0;
    let mut pieces = 0usize;
    let mut closed = false;
    let mut at = 0;
    while at < wire.len() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let n = (1 + rng as usize % max_chunk).min(wire.len() - at);
        input.extend_from_slice(&wire[at..at + n]);
        at += n;
        loop {
            match server.read(&mut input, now) {
                Ok(Some(Message::Fragment(piece))) => {
                    assert!(!closed, "data after the close");
                    pieces += 1;
                    let Fragment { data, rest, .. } = &piece;
                    assert!(data.len() as u64 + rest <= 40_000);
                    server.send_fragment(piece, true).expect("relayed");
                    if own_ping_after.first() == Some(&pieces) {
                        own_ping_after.remove(0);
                        server.ping(b"own").expect("own ping");
                        own_pings += 1;
                    }
                }
                Ok(Some(Message::Ping(payload))) => pings_in.push(payload.to_vec()),
                Ok(Some(Message::Close(None))) => closed = true,
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => break,
                Err(e) => panic!("a valid stream failed: {e:?}"),
            }
        }
        if write_each_read {
            out.extend_from_slice(&server.transmit().take_all());
            server.transmit().shrink();
        }
    }
    assert!(closed, "the close came through");
    assert!(!server.is_mid_frame());
    out.extend_from_slice(&server.transmit().take_all());

    // Frame by frame: whole frames, unmasked, one data frame per data frame in.
    let (mut data_frames, mut pongs, mut pings) = (0, Vec::new(), 0);
    let mut last = None;
    for (h, payload) in decode_frames(&out) {
        assert_eq!(h.mask, None);
        match h.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => data_frames += 1,
            OpCode::Pong => pongs.push(payload),
            OpCode::Ping => pings += 1,
            OpCode::Close => {}
        }
        last = Some(h.opcode);
    }
    assert_eq!(data_frames, frames_in, "one frame out per frame in");
    assert_eq!(pings, own_pings);
    assert!(
        pongs.iter().all(|p| pings_in.contains(p)),
        "pongs answer pings"
    );
    if !pings_in.is_empty() {
        assert!(!pongs.is_empty(), "the latest ping is answered");
    }
    assert_eq!(last, Some(OpCode::Close), "the close reply ends it");

    // Message by message: what was sent comes back.
    let mut reader = Connection::new(Role::Client, config);
    let mut echoed = Vec::new();
    let mut input = BytesMut::from(&out[..]);
    while let Some(message) = reader.read(&mut input, now).expect("a valid echo") {
        match message {
            Message::Text(text) => echoed.push((DataKind::Text, text.as_bytes().to_vec())),
            Message::Binary(data) => echoed.push((DataKind::Binary, data.to_vec())),
            _ => {}
        }
    }
    assert!(echoed == expected, "the echo equals what was sent");
}
