//! `max_payload` at its boundary, over real loopback sockets, on every server engine and
//! in the client role: a message of `max_payload - 1` and of exactly `max_payload` bytes
//! is delivered whole; one of `max_payload + 1` fails the connection with 1009
//! (`WS_ERR_UNSUPPORTED_MESSAGE_LENGTH`), after which the peer gets the close frame and
//! then the end of the stream, never a reset. Each size is sent in one frame and in
//! 64 KiB fragments, as text and as binary, compressed (permessage-deflate) and not.
//!
//! The limit is 1 MiB, large enough that the message does not arrive in one read, that
//! the echo engines relay it in pieces while it is still arriving, and that the sender
//! is still writing when the receiver fails it (so a receiver that dropped the connection
//! with bytes unread would reset it, and the close frame would be lost).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use flate2::{Compress, Compression, FlushCompress};
use futures_util::StreamExt;
use sockeye::{
    ClientConfig, CloseCode, CloseFrame, DataKind, DeflateConfig, Message, SendOptions,
    ServerConfig, WebSocketServer,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// The limit under test.
const MAX: usize = 1 << 20;
/// The size of each fragment of a fragmented message (the last may be shorter).
const PIECE: usize = 64 * 1024;
/// Any single step longer than this is a hang.
const STEP: Duration = Duration::from_secs(10);

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

/// Every combination: 3 sizes x single/fragmented x text/binary x compressed or not.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for compressed in [false, true] {
        for kind in [DataKind::Binary, DataKind::Text] {
            for fragmented in [false, true] {
                for len in [MAX - 1, MAX, MAX + 1] {
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
        return vec![0..data.len()];
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

// ---- servers: sockeye echo on both engines, and the library's server ---------------------------

/// A `sockeye echo` process; killed when dropped.
struct EchoProcess {
    addr: SocketAddr,
    _child: Child,
}

async fn echo_process(engine: &str, deflate: bool) -> EchoProcess {
    let max = MAX.to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockeye"));
    command
        .args(["echo", "--listen", "127.0.0.1:0", "--engine", engine])
        .args(["--max-payload", &max]);
    if deflate {
        command.arg("--deflate");
    }
    let mut child = command
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sockeye echo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(STEP, lines.next_line())
        .await
        .expect("the server announces itself in time")
        .unwrap()
        .expect("a first line");
    let addr = line
        .strip_prefix("sockeye echo listening on ws://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    EchoProcess {
        addr,
        _child: child,
    }
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

/// Sends `case` to the echo server at `addr` with the library's client, reading
/// concurrently, and returns what came back.
async fn client_exchange(addr: SocketAddr, case: Case) -> Vec<Seen> {
    let mut config = ClientConfig::default();
    // The echo of a message up to the limit must come back whole.
    config.websocket.max_payload = 4 * MAX;
    config.per_message_deflate = case.compressed.then(|| DeflateConfig {
        threshold: 0,
        ..DeflateConfig::default()
    });
    let (ws, response) = tokio::time::timeout(
        STEP,
        sockeye::connect_with(&format!("ws://{addr}/"), config),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let negotiated = response
        .headers()
        .get("sec-websocket-extensions")
        .is_some_and(|v| v.as_bytes().starts_with(b"permessage-deflate"));
    assert_eq!(negotiated, case.compressed, "{case:?}: permessage-deflate");
    let (writer, mut reader) = ws.split();
    let data = payload(case.len);
    let expected = data.clone();
    let read = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let next = match tokio::time::timeout(STEP, reader.next()).await {
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
                    // Delivered: end the connection normally.
                    return (seen, Some(reader));
                }
                Some(Err(e)) => {
                    seen.push(Seen::Error(e.to_string()));
                    break;
                }
            }
        }
        (seen, None)
    });
    for (i, range) in pieces(&case, &data).iter().enumerate() {
        let options = SendOptions {
            fin: range.end == data.len(),
            compress: true,
        };
        let sent = tokio::time::timeout(
            STEP,
            writer.send_with(case.kind, &data[range.clone()], options),
        )
        .await
        .expect("a send in time");
        // Over the limit the server fails the message on its way: later sends may find
        // the connection closed. Up to the limit every send goes through.
        if let Err(e) = sent {
            assert!(!case.fits(), "{case:?}: send of piece {i} failed: {e}");
            break;
        }
    }
    let (mut seen, reader) = read.await.unwrap();
    if let Some(mut reader) = reader {
        writer.close(None).await.unwrap();
        let end = tokio::time::timeout(STEP, async {
            while let Some(Ok(_)) = reader.next().await {}
        })
        .await;
        seen.push(if end.is_ok() { Seen::End } else { Seen::Hang });
    }
    seen
}

fn expected_from_server(case: &Case) -> Vec<Seen> {
    if case.fits() {
        vec![Seen::Data(case.kind, case.len, true), Seen::End]
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

async fn every_case_against_echo(engine: &str) {
    let plain = echo_process(engine, false).await;
    let deflate = echo_process(engine, true).await;
    let (plain, deflate) = (plain.addr, deflate.addr);
    every_case_against(
        async |compressed| if compressed { deflate } else { plain },
        &format!("sockeye echo --engine {engine}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_event_loop_at_the_limit() {
    every_case_against_echo("loop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_tokio_engine_at_the_limit() {
    every_case_against_echo("tokio").await;
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

/// The frames of `case` as a server sends them: unmasked, RSV1 on the first frame of a
/// compressed message, whose payload is the raw DEFLATE stream without its final
/// `00 00 ff ff` (RFC 7692 §7.2.1), cut into pieces as the message would be.
fn server_frames(case: &Case, data: &[u8]) -> Vec<u8> {
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
        wire.push((u8::from(fin) << 7) | (u8::from(rsv1) << 6) | op);
        let n = range.len();
        match n {
            0..=125 => wire.push(n as u8),
            126..=0xffff => {
                wire.push(126);
                wire.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                wire.push(127);
                wire.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(&body[range.clone()]);
    }
    wire
}

/// Reads one frame a client sent: (opcode, unmasked payload).
async fn read_client_frame(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h).await?;
    let len = match h[1] & 0x7f {
        126 => usize::from(stream.read_u16().await?),
        127 => usize::try_from(stream.read_u64().await?).unwrap(),
        n => usize::from(n),
    };
    assert!(h[1] & 0x80 != 0, "a client masks its frames");
    let mut key = [0u8; 4];
    stream.read_exact(&mut key).await?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    Ok((h[0] & 0x0f, payload))
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
    let wire = server_frames(&case, &payload(case.len));
    let (mut read_half, mut write_half) = stream.into_split();
    let writing = tokio::spawn(async move {
        let written = write_half.write_all(&wire).await.is_ok();
        (written, write_half)
    });
    let close = loop {
        match read_client_frame(&mut read_half).await {
            Ok((8, body)) => {
                break (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]))
            }
            Ok(_) => {}
            Err(_) => break None,
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
