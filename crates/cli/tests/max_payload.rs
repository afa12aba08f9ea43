//! `max_payload` at its boundary, over real loopback sockets, on `sockeye echo`, on the
//! library's server as a user writes it, and in the client role: a message of `max_payload - 1` and of exactly `max_payload` bytes
//! is delivered whole; one of `max_payload + 1` fails the connection with 1009
//! (`WS_ERR_UNSUPPORTED_MESSAGE_LENGTH`), after which the peer gets the close frame and
//! then the end of the stream, never a reset. Each size is sent in one frame and in
//! 64 KiB fragments, as text and as binary, compressed (permessage-deflate) and not.
//!
//! The limit is 1 MiB, large enough that the message does not arrive in one read, that
//! `sockeye echo` relays it in pieces while it is still arriving, and that the sender
//! is still writing when the receiver fails it (so a receiver that dropped the connection
//! with bytes unread would reset it, and the close frame would be lost).

use std::net::SocketAddr;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::StreamExt;
use sockeye::{
    ClientConfig, CloseCode, CloseFrame, DataKind, DeflateConfig, Message, ServerConfig,
    WebSocketServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::STEP;
use tokio::process::Child;

/// The limit under test.
const MAX: usize = 1 << 20;
/// The size of each fragment of a fragmented message (the last may be shorter).
const PIECE: usize = 64 * 1024;
/// The masking key of the RFC 6455 §5.7 examples.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[derive(Clone, Copy, Debug)]
struct Case {
    len: usize,
    fragmented: bool,
    kind: DataKind,
    compressed: bool,
}

impl Case {
    fn fits(&self) -> bool {
        self.len <= MAX
    }
}

/// Every combination: 3 sizes x single/fragmented x text/binary x compressed or not, and
/// the message of 18 fragments of 64 KiB that goes past the limit two fragments before
/// its end (the fragment that passes the limit fails it at once; the rest is still on
/// its way).
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for compressed in [false, true] {
        for kind in [DataKind::Binary, DataKind::Text] {
            for fragmented in [false, true] {
                for len in [MAX - 1, MAX, MAX + 1, MAX + 2 * PIECE] {
                    if len > MAX + 1 && !fragmented {
                        continue;
                    }
                    cases.push(Case {
                        len,
                        fragmented,
                        kind,
                        compressed,
                    });
                }
            }
        }
    }
    cases
}

/// ASCII letters from a xorshift generator: valid text, compressible to about 60%, and
/// different at every offset (an echo out of place does not compare equal).
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b'a' + (x % 26) as u8
        })
        .collect()
}

/// The message's bytes in the pieces it is sent in.
fn pieces(case: &Case, data: &[u8]) -> Vec<std::ops::Range<usize>> {
    if !case.fragmented {
        return std::iter::once(0..data.len()).collect();
    }
    (0..data.len())
        .step_by(PIECE)
        .map(|start| start..(start + PIECE).min(data.len()))
        .collect()
}

/// What a client saw on its connection.
#[derive(Debug, PartialEq)]
enum Seen {
    Data(DataKind, usize, bool),
    Close(Option<u16>),
    Error(String),
    End,
    Hang,
}

// ---- servers: sockeye echo, and the library's server ------------------------------------------

/// `sockeye echo --max-payload MAX [--deflate]`; killed when dropped.
async fn echo_process(deflate: bool) -> (SocketAddr, Child) {
    let max = MAX.to_string();
    let mut args = vec!["--max-payload", &max];
    if deflate {
        args.push("--deflate");
    }
    common::echo_process(&args).await
}

/// The library's server as the README writes one: a task per connection, `next()` then
/// `send()` of each whole message.
async fn library_server(deflate: bool) -> SocketAddr {
    let mut config = ServerConfig::default();
    config.websocket.max_payload = MAX;
    if deflate {
        config.per_message_deflate = Some(DeflateConfig::default());
    }
    let server = WebSocketServer::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(async move {
        while let Some(Ok((mut ws, _))) = server.accept().await {
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `case` to the echo server at `addr` as a plain client does: it writes the whole
/// message (and, past the limit, a further message, as a client that pipelines its
/// messages) before it reads anything, then reads what came back until the end of the
/// stream.
async fn client_exchange(addr: SocketAddr, case: Case) -> Vec<Seen> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let offer = if case.compressed {
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let negotiated = head.to_ascii_lowercase().contains("permessage-deflate");
    assert_eq!(negotiated, case.compressed, "{case:?}: {head}");
    let data = payload(case.len);
    let wire = wire(&case, Some(KEY));
    let mut seen = Vec::new();
    if let Err(e) = tokio::time::timeout(STEP, paced_write(&mut stream, &wire))
        .await
        .expect("the message is taken in time")
    {
        seen.push(Seen::Error(format!("write: {e}")));
    }
    let mut message: Option<(DataKind, bool, Vec<u8>)> = None;
    loop {
        let frame = match tokio::time::timeout(STEP, read_frame(&mut stream, false)).await {
            Err(_) => {
                seen.push(Seen::Hang);
                break;
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                seen.push(Seen::End);
                break;
            }
            Ok(Err(e)) => {
                seen.push(Seen::Error(format!("read: {e}")));
                break;
            }
        };
        match frame.opcode {
            8 => {
                let code = (frame.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                seen.push(Seen::Close(code));
                // The reply, as RFC 6455 §5.5.1 asks; the server then closes TCP.
                let _ = stream
                    .write_all(&frame_bytes(true, false, 8, &[], Some(KEY)))
                    .await;
            }
            9 | 10 => {}
            op => {
                let (_, _, bytes) = message.get_or_insert_with(|| {
                    let kind = if op == 1 {
                        DataKind::Text
                    } else {
                        DataKind::Binary
                    };
                    (kind, frame.rsv1, Vec::new())
                });
                bytes.extend_from_slice(&frame.payload);
                if frame.fin {
                    let (kind, compressed, mut bytes) = message.take().unwrap();
                    if compressed {
                        bytes = inflate(&bytes);
                    }
                    seen.push(Seen::Data(kind, bytes.len(), bytes == data));
                    if case.fits() {
                        // Delivered: end the connection normally.
                        let close = frame_bytes(true, false, 8, &1000u16.to_be_bytes(), Some(KEY));
                        stream.write_all(&close).await.unwrap();
                    }
                }
            }
        }
    }
    seen
}

fn expected_from_server(case: &Case) -> Vec<Seen> {
    if case.fits() {
        vec![
            Seen::Data(case.kind, case.len, true),
            Seen::Close(Some(CloseCode::NORMAL_CLOSURE.0)),
            Seen::End,
        ]
    } else {
        vec![Seen::Close(Some(CloseCode::MESSAGE_TOO_BIG.0)), Seen::End]
    }
}

async fn every_case_against(addr_of: impl AsyncFn(bool) -> SocketAddr, what: &str) {
    let mut failures = Vec::new();
    for case in cases() {
        let addr = addr_of(case.compressed).await;
        let seen = client_exchange(addr, case).await;
        let expected = expected_from_server(&case);
        if seen != expected {
            failures.push(format!("{case:?}: expected {expected:?}, saw {seen:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases wrong:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_at_the_limit() {
    let (plain, _plain_child) = echo_process(false).await;
    let (deflate, _deflate_child) = echo_process(true).await;
    every_case_against(
        async |compressed| if compressed { deflate } else { plain },
        "sockeye echo",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_server_at_the_limit() {
    let plain = library_server(false).await;
    let deflate = library_server(true).await;
    every_case_against(
        async |compressed| if compressed { deflate } else { plain },
        "WebSocketServer",
    )
    .await;
}

// ---- the client role: a raw server sends, the library's client receives ----------------------

/// The frames of `case` as a peer sends them (masked with `mask` by a client): RSV1 on
/// the first frame of a compressed message, whose payload is the raw DEFLATE stream
/// without its final `00 00 ff ff` (RFC 7692 §7.2.1), cut into pieces as the message
/// would be.
fn frames(case: &Case, data: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let body = if case.compressed {
        let mut compress = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        compress
            .compress_vec(data, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush");
        out.truncate(out.len() - 4);
        out
    } else {
        data.to_vec()
    };
    let opcode = match case.kind {
        DataKind::Text => 1,
        DataKind::Binary => 2,
    };
    let mut wire = Vec::with_capacity(body.len() + 1024);
    let ranges = pieces(case, &body);
    for (i, range) in ranges.iter().enumerate() {
        let fin = i + 1 == ranges.len();
        let rsv1 = i == 0 && case.compressed;
        let op = if i == 0 { opcode } else { 0 };
        wire.extend(frame_bytes(fin, rsv1, op, &body[range.clone()], mask));
    }
    wire
}

/// What a peer sends for `case`: its message and, past the limit, a further message, as a
/// peer that goes on sending after the message the other side fails (whose writes must
/// not be reset).
fn wire(case: &Case, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut wire = frames(case, &payload(case.len), mask);
    if !case.fits() {
        let trailer = Case {
            len: MAX,
            fragmented: false,
            kind: DataKind::Binary,
            compressed: false,
        };
        wire.extend(frames(&trailer, &payload(MAX), mask));
    }
    wire
}

/// Writes `wire` in 64 KiB pieces a millisecond apart, as a sender on a network does: the
/// receiver fails a message over the limit while more of it is still to arrive.
async fn paced_write(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    wire: &[u8],
) -> std::io::Result<()> {
    for piece in wire.chunks(PIECE) {
        stream.write_all(piece).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// One frame on the wire.
fn frame_bytes(
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    match n {
        0..=125 => out.push(mask_bit | n as u8),
        126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len() + if mask.is_some() { 4 } else { 0 };
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    out
}

/// Inflates a message compressed without context takeover (RFC 7692 §7.2.2).
fn inflate(compressed: &[u8]) -> Vec<u8> {
    let mut input = compressed.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut decompress = Decompress::new(false);
    let mut out = Vec::with_capacity(4 * MAX);
    decompress
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid DEFLATE");
    assert_eq!(decompress.total_in() as usize, input.len(), "all inflated");
    out
}

/// An HTTP head, read byte by byte so that nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tokio::time::timeout(STEP, stream.read_exact(&mut byte))
            .await
            .expect("a head in time")
            .expect("a head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// One frame as read off the wire, unmasked.
struct WireFrame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Reads one frame (masked when `masked`, as a client's are); `None` at a clean end of
/// the stream before a frame.
async fn read_frame(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    masked: bool,
) -> std::io::Result<Option<WireFrame>> {
    let mut h = [0u8; 2];
    if stream.read(&mut h[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut h[1..]).await?;
    let len = match h[1] & 0x7f {
        126 => usize::from(stream.read_u16().await?),
        127 => usize::try_from(stream.read_u64().await?).unwrap(),
        n => usize::from(n),
    };
    assert_eq!(h[1] & 0x80 != 0, masked, "only a client masks its frames");
    let mut key = [0u8; 4];
    if masked {
        stream.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(Some(WireFrame {
        fin: h[0] & 0x80 != 0,
        rsv1: h[0] & 0x40 != 0,
        opcode: h[0] & 0x0f,
        payload,
    }))
}

/// What the raw server saw of the client.
#[derive(Debug, PartialEq)]
struct ServerSaw {
    /// The whole message could be written (the client did not reset the connection).
    written: bool,
    /// The code of the client's close frame (`None`: the stream ended or failed first).
    close: Option<u16>,
}

/// The raw server's side of one case: answers the upgrade, writes the message while
/// reading what the client sends until its close frame, then replies and closes.
async fn raw_server(listener: TcpListener, case: Case) -> ServerSaw {
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("a key");
    let extensions = if case.compressed {
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extensions}\r\n",
        sockeye::proto::handshake::accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await.unwrap();
    let wire = wire(&case, None);
    let (mut read_half, mut write_half) = stream.into_split();
    let writing = tokio::spawn(async move {
        let written = paced_write(&mut write_half, &wire).await.is_ok();
        (written, write_half)
    });
    let close = loop {
        match read_frame(&mut read_half, true).await {
            Ok(Some(frame)) if frame.opcode == 8 => {
                let body = frame.payload;
                break (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break None,
        }
    };
    let (written, mut write_half) = tokio::time::timeout(STEP, writing)
        .await
        .expect("the message is written in time")
        .unwrap();
    // The close reply (RFC 6455 §5.5.1), then the server closes TCP first (§7.1.1).
    let _ = write_half.write_all(&[0x88, 0x00]).await;
    let _ = write_half.shutdown().await;
    ServerSaw { written, close }
}

/// One case in the client role: what the client's stream gave, and what the server saw.
async fn client_role(case: Case) -> (Vec<Seen>, ServerSaw) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(raw_server(listener, case));
    let mut config = ClientConfig::default();
    config.websocket.max_payload = MAX;
    config.per_message_deflate = case.compressed.then(DeflateConfig::default);
    let (mut ws, _) = tokio::time::timeout(
        STEP,
        sockeye::connect_with(&format!("ws://{addr}/"), config),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let expected = payload(case.len);
    let mut seen = Vec::new();
    loop {
        let next = match tokio::time::timeout(STEP, ws.next()).await {
            Err(_) => {
                seen.push(Seen::Hang);
                break;
            }
            Ok(next) => next,
        };
        match next {
            None => {
                seen.push(Seen::End);
                break;
            }
            Some(Ok(Message::Close(frame))) => seen.push(Seen::Close(frame.map(|f| f.code.0))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(message)) => {
                let kind = if message.is_text() {
                    DataKind::Text
                } else {
                    DataKind::Binary
                };
                let bytes = message.as_bytes();
                seen.push(Seen::Data(kind, bytes.len(), bytes[..] == expected[..]));
                let normal = CloseFrame::new(CloseCode::NORMAL_CLOSURE, "");
                let _ = ws.close(Some(normal)).await;
            }
            Some(Err(e)) => {
                let code = (e.ws_code(), e.close_code().map(|c| c.0));
                seen.push(Seen::Error(format!("{code:?}")));
            }
        }
    }
    let saw = tokio::time::timeout(STEP, server)
        .await
        .expect("the raw server is done in time")
        .unwrap();
    (seen, saw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_at_the_limit() {
    let mut failures = Vec::new();
    for case in cases() {
        let (seen, saw) = client_role(case).await;
        let (expected_seen, expected_saw) = if case.fits() {
            (
                vec![
                    Seen::Data(case.kind, case.len, true),
                    Seen::Close(None),
                    Seen::End,
                ],
                ServerSaw {
                    written: true,
                    close: Some(CloseCode::NORMAL_CLOSURE.0),
                },
            )
        } else {
            let error = (
                Some("WS_ERR_UNSUPPORTED_MESSAGE_LENGTH"),
                Some(CloseCode::MESSAGE_TOO_BIG.0),
            );
            (
                vec![Seen::Error(format!("{error:?}")), Seen::End],
                ServerSaw {
                    written: true,
                    close: Some(CloseCode::MESSAGE_TOO_BIG.0),
                },
            )
        };
        if (&seen, &saw) != (&expected_seen, &expected_saw) {
            failures.push(format!(
                "{case:?}: expected {expected_seen:?} / {expected_saw:?}, saw {seen:?} / {saw:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "client: {} of {} cases wrong:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
}
