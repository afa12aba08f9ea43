//! permessage-deflate (RFC 7692) over loopback, against hand-written peers: a
//! decompression bomb (refused with 1009 without being inflated), the server's
//! negotiation rules as answered on the wire, the client's checks of the server's answer,
//! and the frame rules (RSV1, corrupt data). Interop with ws is in `interop.rs`.
//!
//! Compressed payloads are the examples of RFC 7692 §7.2.3, so the raw peers need no
//! zlib of their own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sockeye::proto::handshake::accept_key;
use sockeye::proto::HandshakeError;
use sockeye::{
    ClientConfig, CloseCode, Config, DataKind, DeflateConfig, Error, Message, ReadyState,
    SendOptions, ServerConfig, WebSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{accept_one, frame, read_head, read_wire_frame, server, within, STEP};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// RSV1 in a frame's RSV bits (`support::frame`'s `rsv`).
const RSV1: u8 = 0b100;

/// "Hello" compressed (RFC 7692 §7.2.3.1).
const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
/// "Hello" again, as a back-reference to the previous message: valid only with context
/// takeover (RFC 7692 §7.2.3.2).
const HELLO_AGAIN: [u8; 5] = [0xf2, 0x00, 0x11, 0x00, 0x00];
/// Not deflate data: block type 11 is reserved.
const CORRUPT: [u8; 3] = [0xff, 0xff, 0xff];

fn deflate_server_config() -> ServerConfig {
    ServerConfig {
        per_message_deflate: Some(DeflateConfig::default()),
        ..ServerConfig::default()
    }
}

/// Multi-byte UTF-8 text that compresses well, `repeat` lines long.
fn prose(repeat: usize) -> String {
    "permessage-deflate ✓ héllo wörld — こんにちは 🦀 ".repeat(repeat)
}

/// The raw peer receives a close frame with `code`.
async fn expect_close(raw: &mut TcpStream, code: u16) {
    let f = read_wire_frame(raw).await;
    assert_eq!((f.opcode, f.rsv), (8, 0), "a plain close frame: {f:?}");
    assert_eq!(f.payload.get(..2), Some(&code.to_be_bytes()[..]), "{f:?}");
    // The end of the stream follows, and the peer closes its side too: the failing side
    // reads on to that end before it reports the failure.
    let mut rest = Vec::new();
    within("the end after the close frame", raw.read_to_end(&mut rest))
        .await
        .expect("a clean end");
    let _ = raw.shutdown().await;
}

/// The stream yields one error with `ws_code` and `close`, then ends.
async fn expect_failure(ws: &mut WebSocket<TcpStream>, ws_code: &str, close: u16) {
    let err = match within("the error", ws.next()).await {
        Some(Err(err)) => err,
        other => panic!("expected an error with {ws_code}, got {other:?}"),
    };
    assert_eq!(err.ws_code(), Some(ws_code), "{err:?}");
    assert_eq!(err.close_code(), Some(CloseCode(close)), "{err:?}");
    assert!(within("the end", ws.next()).await.is_none());
    assert_eq!(ws.ready_state(), ReadyState::Closed);
}

async fn expect_text(ws: &mut WebSocket<TcpStream>, text: &str) {
    match within("a message", ws.next()).await {
        Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text),
        other => panic!("expected the text {text:?}, got {other:?}"),
    }
}

// ------------------------------------------------------------------ the bomb

/// VmRSS and VmHWM of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A 64 MiB message of zeros, about 64 KiB compressed, to a server with `max_payload`
/// 1 MiB: the server fails it with 1009 while inflating, and its peak memory grows by
/// far less than the message. Runs in its own process (see
/// [`bomb_is_refused_without_being_inflated`]) so no other test's memory counts.
#[tokio::test]
#[ignore = "run in a process of its own by bomb_is_refused_without_being_inflated"]
async fn bomb_in_this_process() {
    let server = server(ServerConfig {
        websocket: Config {
            max_payload: 1 << 20,
            ..Config::default()
        },
        ..deflate_server_config()
    })
    .await;
    let config = ClientConfig {
        websocket: Config {
            max_payload: 128 << 20,
            ..Config::default()
        },
        handshake_timeout: Some(STEP),
        ..ClientConfig::default()
    };
    let url = format!("ws://{}/", server.local_addr());
    let (mut client, _) = within("connect", sockeye::connect_with(&url, config))
        .await
        .expect("connect");
    let mut ws = accept_one(&server).await;
    assert_eq!(
        (client.extensions(), ws.extensions()),
        ("permessage-deflate", "permessage-deflate")
    );

    // The client side's memory (the source and the compressor) is in before the baseline:
    // the bomb is sent while the server does not read yet.
    let mut bomb = vec![0u8; 64 << 20];
    std::hint::black_box(&mut bomb[..]).fill(0);
    within("the bomb sent", client.send_binary(&bomb))
        .await
        .expect("send");
    let (rss_before, _) = memory();
    // Reset the peak (VmHWM) to the current RSS.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    // The client reads what comes back (the close frame, then the end of the stream),
    // as a peer does; the server reports its failure once the client has closed too.
    let client_reads = async {
        let mut seen = Vec::new();
        while let Some(item) = within("the client's stream", client.next()).await {
            seen.push(item);
        }
        seen
    };
    let ((), seen) = tokio::join!(
        expect_failure(&mut ws, "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH", 1009),
        client_reads
    );
    let (rss_after, peak) = memory();
    let grown_kib = if peak_reset { peak } else { rss_after }.saturating_sub(rss_before);
    println!(
        "bomb: RSS {rss_before} KiB before, {rss_after} KiB after, peak {peak} KiB (reset: {peak_reset})"
    );
    assert!(
        grown_kib < 16 << 10,
        "the server grew by {grown_kib} KiB refusing a 64 MiB bomb"
    );

    match seen.first() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG)
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
    drop(bomb);
}

#[test]
fn bomb_is_refused_without_being_inflated() {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "deflate::bomb_in_this_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the test binary again");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the bomb test did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{stderr}"
    );
}

// ------------------------------------------------------------------ server negotiation

/// A raw client's upgrade request with each of `offers` as a Sec-WebSocket-Extensions
/// header line; returns the stream after the response head, and the head.
async fn raw_upgrade(addr: SocketAddr, offers: &[&str]) -> (TcpStream, String) {
    let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for offer in offers {
        request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
    }
    request.push_str("\r\n");
    within("request", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// The values of a header in an HTTP head.
fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// The server with `config` answers `offers` with 101 and the extension `answer` (`None`:
/// no Sec-WebSocket-Extensions header), and its WebSocket reports the same. With an
/// answer, a compressed message from the client arrives.
async fn assert_answer(config: Option<DeflateConfig>, offers: &[&str], answer: Option<&str>) {
    let server = server(ServerConfig {
        per_message_deflate: config.clone(),
        ..ServerConfig::default()
    })
    .await;
    let (mut raw, head) = raw_upgrade(server.local_addr(), offers).await;
    let case = format!("{config:?} offered {offers:?}");
    assert!(head.starts_with("HTTP/1.1 101 "), "{case}: {head}");
    let values = header_values(&head, "sec-websocket-extensions");
    assert_eq!(
        values,
        answer.into_iter().collect::<Vec<_>>(),
        "{case}: {head}"
    );
    let mut ws = accept_one(&server).await;
    assert_eq!(ws.extensions(), answer.unwrap_or(""), "{case}");
    if answer.is_some() {
        let hello = frame(true, RSV1, 1, Some(MASK), &HELLO);
        within("write", raw.write_all(&hello)).await.unwrap();
        expect_text(&mut ws, "Hello").await;
    }
}

/// The server with `config` answers `offer` with 400 and a body naming the header.
async fn assert_rejected(config: DeflateConfig, offer: &str) {
    let server = server(ServerConfig {
        per_message_deflate: Some(config),
        ..ServerConfig::default()
    })
    .await;
    let (mut raw, head) = raw_upgrade(server.local_addr(), &[offer]).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{offer}: {head}");
    let len: usize = header_values(&head, "content-length")[0].parse().unwrap();
    let mut body = vec![0u8; len];
    within("body", raw.read_exact(&mut body)).await.unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains("Sec-WebSocket-Extensions"),
        "{offer}: {body:?}"
    );
}

// RFC 7692 §5, §7.1 with ws's rules: the first acceptable offer wins; other extensions
// and unacceptable offers are skipped; client_max_window_bits without a value is not
// echoed.
#[tokio::test]
async fn server_accepts_the_first_acceptable_offer() {
    let d = || Some(DeflateConfig::default());
    let pmd = Some("permessage-deflate");
    assert_answer(d(), &[], None).await;
    assert_answer(d(), &["permessage-deflate; client_max_window_bits"], pmd).await;
    assert_answer(d(), &["permessage-deflate"], pmd).await;
    assert_answer(d(), &["x-webkit-deflate-frame, permessage-deflate"], pmd).await;
    assert_answer(d(), &["x-webkit-deflate-frame"], None).await;
    // Window 8 for the server's compressor cannot be honoured (zlib): the next offer.
    let second = Some("permessage-deflate; client_no_context_takeover");
    assert_answer(
        d(),
        &["permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover"],
        second,
    )
    .await;
    // The same offers on two header lines.
    assert_answer(
        d(),
        &[
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_no_context_takeover",
        ],
        second,
    )
    .await;
    assert_answer(d(), &["permessage-deflate; server_max_window_bits=8"], None).await;
    // What the client asks for is granted and echoed; a quoted value is a value.
    assert_answer(
        d(),
        &["permessage-deflate; server_no_context_takeover; server_max_window_bits=\"12\"; client_max_window_bits=11"],
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=11"),
    )
    .await;
    // Compression off: offers are not even parsed (as ws).
    assert_answer(None, &["permessage-deflate; client_max_window_bits"], None).await;
    assert_answer(None, &["permessage-deflate; bogus"], None).await;
}

// RFC 7692 §7.1: an offer with an unknown or repeated parameter or a bad value fails the
// handshake (400, as ws), also after an acceptable offer.
#[tokio::test]
async fn server_rejects_malformed_offers() {
    for offer in [
        "permessage-deflate; unknown",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate, permessage-deflate; bogus",
        "permessage-deflate;",
        "permessage-deflate; client_max_window_bits=\"10",
    ] {
        assert_rejected(DeflateConfig::default(), offer).await;
    }
}

// The server's own settings shape the answer: limiting the client's window needs
// client_max_window_bits in the offer; server_no_context_takeover and
// client_no_context_takeover are added; the server's window is the lower of both.
#[tokio::test]
async fn server_configuration_shapes_the_answer() {
    let limit_client = Some(DeflateConfig {
        client_max_window_bits: Some(10),
        ..DeflateConfig::default()
    });
    assert_answer(limit_client.clone(), &["permessage-deflate"], None).await;
    let limited = Some("permessage-deflate; client_max_window_bits=10");
    for offer in [
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=12",
        "permessage-deflate, permessage-deflate; client_max_window_bits",
    ] {
        assert_answer(limit_client.clone(), &[offer], limited).await;
    }
    assert_answer(
        limit_client,
        &["permessage-deflate; client_max_window_bits=9"],
        Some("permessage-deflate; client_max_window_bits=9"),
    )
    .await;

    let no_takeover = Some(DeflateConfig {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..DeflateConfig::default()
    });
    assert_answer(
        no_takeover,
        &["permessage-deflate; client_max_window_bits"],
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    )
    .await;

    let limit_server = || {
        Some(DeflateConfig {
            server_max_window_bits: Some(10),
            ..DeflateConfig::default()
        })
    };
    assert_answer(
        limit_server(),
        &["permessage-deflate"],
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert_answer(
        limit_server(),
        &["permessage-deflate; server_max_window_bits=9"],
        Some("permessage-deflate; server_max_window_bits=9"),
    )
    .await;
}

// Context takeover as agreed (RFC 7692 §7.2.3.2): the second "Hello" refers back to the
// first. Kept, it inflates; with client_no_context_takeover agreed, the server starts
// each message afresh and the reference is corrupt data (1007).
#[tokio::test]
async fn server_keeps_or_drops_the_context_as_agreed() {
    let server = server(deflate_server_config()).await;
    let (mut raw, head) = raw_upgrade(server.local_addr(), &["permessage-deflate"]).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut ws = accept_one(&server).await;
    let wire = [
        frame(true, RSV1, 1, Some(MASK), &HELLO),
        frame(true, RSV1, 1, Some(MASK), &HELLO_AGAIN),
        // Fragmented: RSV1 on the first frame only (RFC 7692 §7.2.3.1).
        frame(false, RSV1, 1, Some(MASK), &HELLO[..3]),
        frame(true, 0, 0, Some(MASK), &HELLO[3..]),
        // An uncompressed message between compressed ones.
        frame(true, 0, 1, Some(MASK), b"plain"),
    ]
    .concat();
    within("write", raw.write_all(&wire)).await.unwrap();
    for text in ["Hello", "Hello", "Hello", "plain"] {
        expect_text(&mut ws, text).await;
    }

    let (mut raw, head) = raw_upgrade(
        server.local_addr(),
        &["permessage-deflate; client_no_context_takeover"],
    )
    .await;
    assert!(head.contains("client_no_context_takeover"), "{head}");
    let mut ws = accept_one(&server).await;
    let wire = [
        frame(true, RSV1, 1, Some(MASK), &HELLO),
        frame(true, RSV1, 1, Some(MASK), &HELLO),
        frame(true, RSV1, 1, Some(MASK), &HELLO_AGAIN),
    ]
    .concat();
    within("write", raw.write_all(&wire)).await.unwrap();
    expect_text(&mut ws, "Hello").await;
    expect_text(&mut ws, "Hello").await;
    tokio::join!(
        expect_close(&mut raw, 1007),
        expect_failure(&mut ws, "Z_DATA_ERROR", 1007)
    );
}

// No context takeover on a server with several connections on one thread: between
// messages the zlib streams wait, reset, in the thread's pool, and the next message of
// any connection takes them. Nothing of one connection's message may reach another's:
// the same message compresses to the same bytes on every connection and every time, and
// a back-reference to another connection's message is corrupt data (1007).
#[tokio::test]
async fn no_takeover_connections_share_no_context() {
    let server = server(ServerConfig {
        per_message_deflate: Some(DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        }),
        ..ServerConfig::default()
    });
    let server = server.await;
    let offer = ["permessage-deflate"];
    let (mut raw1, head1) = raw_upgrade(server.local_addr(), &offer).await;
    let ws1 = accept_one(&server).await;
    let (mut raw2, head2) = raw_upgrade(server.local_addr(), &offer).await;
    let mut ws2 = accept_one(&server).await;
    for head in [&head1, &head2] {
        assert!(head.contains("server_no_context_takeover"), "{head}");
    }

    // Server to client, interleaved: a, a, b, a.
    let (a, b) = (prose(40), "sockeye ".repeat(300));
    let mut sent = Vec::new();
    for (first, text) in [(true, &a), (false, &a), (true, &b), (false, &a)] {
        let (ws, raw) = if first {
            (&ws1, &mut raw1)
        } else {
            (&ws2, &mut raw2)
        };
        within("send", ws.send_text(text)).await.unwrap();
        let f = read_wire_frame(raw).await;
        assert_eq!((f.fin, f.rsv, f.opcode), (true, RSV1, 1), "compressed");
        assert!(f.payload.len() < text.len() / 4, "{} B", f.payload.len());
        sent.push(f.payload);
    }
    assert_eq!(sent[0], sent[1], "the same bytes on both connections");
    assert_eq!(
        sent[0], sent[3],
        "and after the stream served another message"
    );
    assert_ne!(sent[0], sent[2]);

    // Client to server: "Hello" on connection 1, then a back-reference to it on
    // connection 2, whose stream may be the one that inflated connection 1's message.
    within(
        "write",
        raw1.write_all(&frame(true, RSV1, 1, Some(MASK), &HELLO)),
    )
    .await
    .unwrap();
    let mut ws1 = ws1;
    expect_text(&mut ws1, "Hello").await;
    within(
        "write",
        raw2.write_all(&frame(true, RSV1, 1, Some(MASK), &HELLO_AGAIN)),
    )
    .await
    .unwrap();
    tokio::join!(
        expect_close(&mut raw2, 1007),
        expect_failure(&mut ws2, "Z_DATA_ERROR", 1007)
    );
    // Connection 1 is unaffected: a fresh "Hello" still inflates.
    within(
        "write",
        raw1.write_all(&frame(true, RSV1, 1, Some(MASK), &HELLO)),
    )
    .await
    .unwrap();
    expect_text(&mut ws1, "Hello").await;
}

// ------------------------------------------------------------------ client negotiation

/// A Sockeye client (default settings: it offers compression) against a raw server that
/// answers with `answer` as Sec-WebSocket-Extensions (`None`: no such header). Returns
/// the client's result and the raw server's stream.
async fn client_against(answer: Option<&str>) -> (Result<WebSocket<TcpStream>, Error>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let client = tokio::spawn(async move {
        let config = ClientConfig {
            handshake_timeout: Some(STEP),
            ..ClientConfig::default()
        };
        sockeye::connect_with(&url, config).await.map(|(ws, _)| ws)
    });
    let (mut raw, _) = within("accept", listener.accept()).await.unwrap();
    let head = read_head(&mut raw).await;
    assert_eq!(
        header_values(&head, "sec-websocket-extensions"),
        ["permessage-deflate; client_max_window_bits"],
        "the default offer: {head}"
    );
    let key = header_values(&head, "sec-websocket-key")[0];
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key.as_bytes())
    );
    if let Some(answer) = answer {
        response.push_str(&format!("Sec-WebSocket-Extensions: {answer}\r\n"));
    }
    response.push_str("\r\n");
    within("101", raw.write_all(response.as_bytes()))
        .await
        .unwrap();
    let result = within("client handshake", client).await.unwrap();
    (result, raw)
}

// RFC 7692 §7.1: the client fails the handshake on an answer it did not offer or cannot
// honour.
#[tokio::test]
async fn client_rejects_bad_answers() {
    for (answer, expected) in [
        ("x-other", HandshakeError::InvalidExtension),
        (
            "permessage-deflate, permessage-deflate",
            HandshakeError::InvalidExtension,
        ),
        // zlib cannot compress with a 256-byte window.
        (
            "permessage-deflate; client_max_window_bits=8",
            HandshakeError::InvalidExtension,
        ),
        // A value is required in an answer.
        (
            "permessage-deflate; client_max_window_bits",
            HandshakeError::InvalidExtension,
        ),
        (
            "permessage-deflate; bogus",
            HandshakeError::InvalidHeader("Sec-WebSocket-Extensions"),
        ),
        (
            "permessage-deflate; server_max_window_bits=16",
            HandshakeError::InvalidHeader("Sec-WebSocket-Extensions"),
        ),
    ] {
        match client_against(Some(answer)).await.0 {
            Err(Error::Handshake(e)) => assert_eq!(e, expected, "{answer}"),
            other => panic!("{answer}: expected {expected:?}, got {other:?}"),
        }
    }
}

// The server declines (no header): the connection works uncompressed.
#[tokio::test]
async fn client_works_uncompressed_when_declined() {
    let (client, mut raw) = client_against(None).await;
    let mut client = client.expect("handshake");
    assert_eq!(client.extensions(), "");
    let text = prose(100);
    within("send", client.send_text(&text)).await.unwrap();
    let f = read_wire_frame(&mut raw).await;
    assert_eq!((f.fin, f.rsv, f.opcode), (true, 0, 1));
    assert_eq!(f.payload, text.as_bytes());
    within("write", raw.write_all(&frame(true, 0, 1, None, b"plain")))
        .await
        .unwrap();
    expect_text(&mut client, "plain").await;
}

// An accepted answer: messages from the threshold up go compressed (RSV1 on the first
// frame only), shorter ones and `compress: false` as they are; compressed messages from
// the server inflate, with the context kept between them.
#[tokio::test]
async fn client_compresses_when_accepted() {
    let (client, mut raw) = client_against(Some("permessage-deflate")).await;
    let mut client = client.expect("handshake");
    assert_eq!(client.extensions(), "permessage-deflate");

    let text = prose(100);
    within("send", client.send_text(&text)).await.unwrap();
    let f = read_wire_frame(&mut raw).await;
    assert_eq!((f.fin, f.rsv, f.opcode), (true, RSV1, 1), "compressed");
    assert!(f.payload.len() < text.len() / 4, "{} B", f.payload.len());

    within("send", client.send_text("short")).await.unwrap();
    let f = read_wire_frame(&mut raw).await;
    assert_eq!(
        (f.rsv, f.payload.as_slice()),
        (0, &b"short"[..]),
        "under the threshold"
    );

    let options = SendOptions {
        fin: true,
        compress: false,
    };
    within(
        "send",
        client.send_with(DataKind::Binary, text.as_bytes(), options),
    )
    .await
    .unwrap();
    let f = read_wire_frame(&mut raw).await;
    assert_eq!((f.rsv, f.opcode), (0, 2), "compress: false");
    assert_eq!(f.payload, text.as_bytes());

    within(
        "send",
        client.send_frame(DataKind::Binary, text.as_bytes(), false),
    )
    .await
    .unwrap();
    within(
        "send",
        client.send_frame(DataKind::Binary, text.as_bytes(), true),
    )
    .await
    .unwrap();
    let first = read_wire_frame(&mut raw).await;
    let last = read_wire_frame(&mut raw).await;
    assert_eq!((first.fin, first.rsv, first.opcode), (false, RSV1, 2));
    assert_eq!(
        (last.fin, last.rsv, last.opcode),
        (true, 0, 0),
        "RSV1 on the first only"
    );

    let wire = [
        frame(true, RSV1, 1, None, &HELLO),
        frame(true, RSV1, 1, None, &HELLO_AGAIN),
    ]
    .concat();
    within("write", raw.write_all(&wire)).await.unwrap();
    expect_text(&mut client, "Hello").await;
    expect_text(&mut client, "Hello").await;
}

// The answer's parameters are in force: with server_no_context_takeover the client
// starts each message from the server afresh, so a back-reference is corrupt (1007).
#[tokio::test]
async fn client_honours_the_answer_parameters() {
    let answer = "permessage-deflate; server_no_context_takeover; client_max_window_bits=10";
    let (client, mut raw) = client_against(Some(answer)).await;
    let mut client = client.expect("handshake");
    assert_eq!(client.extensions(), answer);
    let wire = [
        frame(true, RSV1, 1, None, &HELLO),
        frame(true, RSV1, 1, None, &HELLO_AGAIN),
    ]
    .concat();
    within("write", raw.write_all(&wire)).await.unwrap();
    expect_text(&mut client, "Hello").await;
    tokio::join!(
        expect_close(&mut raw, 1007),
        expect_failure(&mut client, "Z_DATA_ERROR", 1007)
    );
}

// ------------------------------------------------------------------ frame rules

/// A raw client that offered `offers` to a server with `config`, and the server's end.
async fn raw_pair(
    config: ServerConfig,
    offers: &[&str],
) -> (TcpStream, WebSocket<TcpStream>, sockeye::WebSocketServer) {
    let server = server(config).await;
    let (raw, head) = raw_upgrade(server.local_addr(), offers).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let ws = accept_one(&server).await;
    (raw, ws, server)
}

/// `wire` from a raw client fails the server's stream with `ws_code` and `close`, which
/// the raw client receives.
async fn server_fails(
    config: ServerConfig,
    offers: &[&str],
    wire: &[u8],
    ws_code: &str,
    close: u16,
) {
    let (mut raw, mut ws, _server) = raw_pair(config, offers).await;
    within("write", raw.write_all(wire)).await.unwrap();
    tokio::join!(
        expect_close(&mut raw, close),
        expect_failure(&mut ws, ws_code, close)
    );
}

// RFC 7692 §6: RSV1 without permessage-deflate agreed is a protocol error: the server
// does not do it, or the client did not offer it.
#[tokio::test]
async fn rsv1_without_deflate_is_a_protocol_error() {
    let hello = frame(true, RSV1, 1, Some(MASK), &HELLO);
    let rsv1 = "WS_ERR_UNEXPECTED_RSV_1";
    server_fails(
        ServerConfig::default(),
        &["permessage-deflate"],
        &hello,
        rsv1,
        1002,
    )
    .await;
    server_fails(deflate_server_config(), &[], &hello, rsv1, 1002).await;
}

// RFC 7692 §6.1: RSV1 only on the first frame of a message, never on a continuation or a
// control frame.
#[tokio::test]
async fn rsv1_on_a_continuation_or_control_frame_is_a_protocol_error() {
    let offers = ["permessage-deflate"];
    let continuation = [
        frame(false, RSV1, 1, Some(MASK), &HELLO[..3]),
        frame(true, RSV1, 0, Some(MASK), &HELLO[3..]),
    ]
    .concat();
    let rsv1 = "WS_ERR_UNEXPECTED_RSV_1";
    server_fails(deflate_server_config(), &offers, &continuation, rsv1, 1002).await;
    let ping = frame(true, RSV1, 9, Some(MASK), b"ping");
    server_fails(deflate_server_config(), &offers, &ping, rsv1, 1002).await;
}

// Corrupt compressed data fails with zlib's Z_DATA_ERROR and 1007, on a server and on a
// client.
#[tokio::test]
async fn corrupt_data_fails_with_1007() {
    let corrupt = frame(true, RSV1, 2, Some(MASK), &CORRUPT);
    let offers = ["permessage-deflate"];
    server_fails(
        deflate_server_config(),
        &offers,
        &corrupt,
        "Z_DATA_ERROR",
        1007,
    )
    .await;

    let (client, mut raw) = client_against(Some("permessage-deflate")).await;
    let mut client = client.expect("handshake");
    within(
        "write",
        raw.write_all(&frame(true, RSV1, 2, None, &CORRUPT)),
    )
    .await
    .unwrap();
    tokio::join!(
        expect_close(&mut raw, 1007),
        expect_failure(&mut client, "Z_DATA_ERROR", 1007)
    );
}

// A compressed message whose last frame is empty: nothing is left to flush, so the last
// frame carries an empty stored block's header, 0x00 (RFC 7692 §7.2.3.6), which the
// receiver completes with the tail it appends; the context stays usable for the next
// message. (Sending an empty payload instead broke the peer's inflater: ws failed with
// "invalid stored block lengths", Sockeye with Z_DATA_ERROR on the next message.)
#[tokio::test]
async fn empty_last_frame_of_a_compressed_message() {
    let text = prose(100);
    let (client, mut raw) = client_against(Some("permessage-deflate")).await;
    let client = client.expect("handshake");
    within(
        "send",
        client.send_frame(DataKind::Text, text.as_bytes(), false),
    )
    .await
    .unwrap();
    within("send", client.send_frame(DataKind::Text, b"", true))
        .await
        .unwrap();
    let first = read_wire_frame(&mut raw).await;
    let last = read_wire_frame(&mut raw).await;
    assert_eq!((first.fin, first.rsv, first.opcode), (false, RSV1, 1));
    assert_eq!((last.fin, last.rsv, last.opcode), (true, 0, 0));
    assert_eq!(
        last.payload,
        [0x00],
        "an empty stored block without its tail"
    );

    // Sockeye to Sockeye, with a message after it over the same context.
    let server = server(deflate_server_config()).await;
    let config = ClientConfig {
        handshake_timeout: Some(STEP),
        ..ClientConfig::default()
    };
    let url = format!("ws://{}/", server.local_addr());
    let (client, _) = within("connect", sockeye::connect_with(&url, config))
        .await
        .expect("connect");
    let mut ws = accept_one(&server).await;
    for piece in [text.as_bytes(), b"", text.as_bytes(), b""] {
        within(
            "send",
            client.send_frame(DataKind::Text, piece, piece.is_empty()),
        )
        .await
        .unwrap();
    }
    within("send", client.send_text(&text)).await.unwrap();
    expect_text(&mut ws, &text).await;
    expect_text(&mut ws, &text).await;
    expect_text(&mut ws, &text).await;
}

// RFC 7692 §7.2.3.4: a sender may end a message with a deflate block with BFINAL set,
// followed by 0x00 so that the appended tail still parses; the receiver inflates it, as
// ws does, and ignores what follows the end of the deflate stream.
#[tokio::test]
async fn final_deflate_block_is_accepted() {
    let (mut raw, mut ws, _server) =
        raw_pair(deflate_server_config(), &["permessage-deflate"]).await;
    let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    let wire = [
        frame(true, RSV1, 1, Some(MASK), &bfinal),
        frame(true, RSV1, 1, Some(MASK), &HELLO),
    ]
    .concat();
    within("write", raw.write_all(&wire)).await.unwrap();
    expect_text(&mut ws, "Hello").await;
    expect_text(&mut ws, "Hello").await;
}
