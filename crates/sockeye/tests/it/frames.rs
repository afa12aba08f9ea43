//! Fragment mode (`ws`'s `binaryType: 'fragments'`) and the `on_client_error` hook (`ws`'s
//! `wsClientError`), over loopback sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use sockeye::proto::HandshakeError;
use sockeye::{Config, DataKind, Fragment, Message, ServerConfig, WebSocket, WebSocketServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{accept_one, client_frame, raw_client, read_frame, server, STEP};

const TEXT: u8 = 0x1;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn fragments_config() -> ServerConfig {
    ServerConfig {
        websocket: Config {
            deliver_fragments: true,
            ..Config::default()
        },
        ..ServerConfig::default()
    }
}

async fn next(ws: &mut WebSocket<TcpStream>) -> Message {
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("an item in time")
        .expect("an item")
        .expect("no error")
}

fn fragment(kind: DataKind, data: &[u8], fin: bool) -> Message {
    Message::Fragment(Fragment::new(kind, data.to_vec(), fin))
}

/// The frames of "Hello wörld" in 3 pieces (the "ö" cut in two) with a ping between.
fn three_fragments() -> Vec<u8> {
    [
        client_frame(false, TEXT, b"Hel"),
        client_frame(true, PING, b"p"),
        client_frame(false, CONT, b"lo w\xc3"),
        client_frame(true, CONT, b"\xb6rld"),
    ]
    .concat()
}

#[tokio::test]
async fn a_message_in_three_fragments_arrives_as_three_items() {
    let server = server(fragments_config()).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut ws = accept_one(&server).await;
    raw.write_all(&three_fragments()).await.unwrap();
    assert_eq!(next(&mut ws).await, fragment(DataKind::Text, b"Hel", false));
    assert_eq!(next(&mut ws).await, Message::Ping(b"p".to_vec().into()));
    assert_eq!(
        next(&mut ws).await,
        fragment(DataKind::Text, b"lo w\xc3", false)
    );
    assert_eq!(
        next(&mut ws).await,
        fragment(DataKind::Text, b"\xb6rld", true)
    );
    // Control frames keep working in between: the ping was answered.
    assert_eq!(read_frame(&mut raw).await, (true, PONG, b"p".to_vec()));
    // Fragments can be sent back as they come: the peer gets one message again.
    ws.send(fragment(DataKind::Binary, b"ab", false))
        .await
        .unwrap();
    ws.send(fragment(DataKind::Binary, b"cd", true))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut raw).await, (false, 0x2, b"ab".to_vec()));
    assert_eq!(read_frame(&mut raw).await, (true, CONT, b"cd".to_vec()));
}

#[tokio::test]
async fn whole_messages_by_default() {
    let server = server(ServerConfig::default()).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut ws = accept_one(&server).await;
    raw.write_all(&three_fragments()).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Ping(b"p".to_vec().into()));
    assert_eq!(next(&mut ws).await, Message::text("Hello wörld"));
}

#[tokio::test]
#[cfg(feature = "deflate")]
async fn compressed_fragments_are_inflated_one_by_one() {
    let deflate = sockeye::DeflateConfig {
        threshold: 0,
        ..sockeye::DeflateConfig::default()
    };
    let server = server(ServerConfig {
        per_message_deflate: Some(deflate.clone()),
        ..fragments_config()
    })
    .await;
    let url = format!("ws://{}/", server.local_addr());
    let client_config = sockeye::ClientConfig {
        per_message_deflate: Some(deflate),
        ..sockeye::ClientConfig::default()
    };
    let (client, _) = tokio::time::timeout(STEP, sockeye::connect_with(&url, client_config))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut ws = accept_one(&server).await;
    assert!(ws.extensions().starts_with("permessage-deflate"));
    let pieces = ["héllo ".repeat(50), "wörld ".repeat(50), "!".repeat(10)];
    for _ in 0..2 {
        for (i, piece) in pieces.iter().enumerate() {
            client
                .send_frame(DataKind::Text, piece.as_bytes(), i == 2)
                .await
                .unwrap();
        }
        for (i, piece) in pieces.iter().enumerate() {
            assert_eq!(
                next(&mut ws).await,
                fragment(DataKind::Text, piece.as_bytes(), i == 2)
            );
        }
    }
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_fails_with_1007() {
    let server = server(fragments_config()).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut ws = accept_one(&server).await;
    let wire = [
        client_frame(false, TEXT, b"ok\xc3"),
        client_frame(true, CONT, b"("),
    ]
    .concat();
    raw.write_all(&wire).await.unwrap();
    assert_eq!(
        next(&mut ws).await,
        fragment(DataKind::Text, b"ok\xc3", false)
    );
    // The peer reads the close frame and closes its side; the failure is reported once
    // the connection has ended.
    let (frame, error) = tokio::join!(
        async {
            let frame = read_frame(&mut raw).await;
            raw.shutdown().await.unwrap();
            frame
        },
        tokio::time::timeout(STEP, ws.next())
    );
    assert_eq!(frame, (true, CLOSE, 1007u16.to_be_bytes().to_vec()));
    let error = error.expect("in time").expect("an item").unwrap_err();
    let sockeye::Error::Protocol(error) = error else {
        panic!("{error:?}")
    };
    assert_eq!(error.ws_code(), Some("WS_ERR_INVALID_UTF8"));
}

// ----------------------------------------------------------- on_client_error

/// Sends `request` on a fresh connection and reads the whole response (the server
/// closes after a refusal).
async fn exchange(server: &WebSocketServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8(response).unwrap()
}

const BAD_VERSION: &[u8] = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n";

async fn wait_failed(server: &WebSocketServer, n: u64) {
    let deadline = tokio::time::Instant::now() + STEP;
    while server.failed_handshakes() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failed handshakes counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn on_client_error_writes_the_custom_response() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let config = ServerConfig {
        on_client_error: Some(Arc::new(move |error: &HandshakeError, request| {
            let path = request.map(|r| r.uri().path().to_owned());
            log.lock().unwrap().push((error.status(), path));
            let mut headers = HeaderMap::new();
            headers.insert("x-why", HeaderValue::from_static("custom"));
            Some((
                StatusCode::IM_A_TEAPOT,
                headers,
                "no tea for you".to_owned(),
            ))
        })),
        ..ServerConfig::default()
    };
    let server = server(config).await;
    let response = exchange(&server, BAD_VERSION).await;
    assert!(response.starts_with("HTTP/1.1 418 "), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-why: custom\r\n"),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\nno tea for you\n"), "{response}");
    // Not even HTTP: the hook runs without a request.
    let response = exchange(&server, b"\x16\x03\x01 hello\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 418 "), "{response}");
    assert_eq!(
        *seen.lock().unwrap(),
        [(426, Some("/chat".to_owned())), (400, None)]
    );
    wait_failed(&server, 2).await;
}

#[tokio::test]
async fn on_client_error_none_keeps_the_default() {
    let config = ServerConfig {
        on_client_error: Some(Arc::new(|_: &HandshakeError, _| None)),
        ..ServerConfig::default()
    };
    for config in [config, ServerConfig::default()] {
        let server = server(config).await;
        let response = exchange(&server, BAD_VERSION).await;
        assert!(
            response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{response}"
        );
        assert!(
            response.contains("sec-websocket-version: 13\r\n"),
            "{response}"
        );
        assert!(
            response.ends_with("unsupported Sec-WebSocket-Version: expected 13\n"),
            "{response}"
        );
        wait_failed(&server, 1).await;
        // A good client still gets in.
        let _raw = raw_client(server.local_addr(), "/").await;
        let _ws = accept_one(&server).await;
        assert_eq!(server.failed_handshakes(), 1);
    }
}

/// `stream_frames`: one 1 MiB frame, written slowly in pieces by a raw client, arrives as
/// pieces before it ends; echoing each piece back as it comes gives the peer the message
/// whole, as one frame of the same length, and the server never held the whole frame.
#[tokio::test]
async fn stream_frames_relays_a_large_frame_while_it_arrives() {
    let mut config = fragments_config();
    config.websocket.stream_frames = true;
    let server = server(config).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut ws = accept_one(&server).await;
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let wire = client_frame(true, 0x2, &payload);
    // The first 100 KiB only: pieces must come out before the frame is complete.
    raw.write_all(&wire[..100 * 1024]).await.unwrap();
    let mut received = Vec::new();
    let mut pieces = 0;
    while received.len() < 90 * 1024 {
        let Message::Fragment(piece) = next(&mut ws).await else {
            panic!("fragments only");
        };
        assert!(piece.rest > 0, "the frame is not complete yet");
        assert!(piece.fin, "each piece carries its frame's FIN");
        assert!(piece.data.len() <= 256 * 1024, "{} bytes", piece.data.len());
        received.extend_from_slice(&piece.data);
        pieces += 1;
        ws.send(Message::Fragment(piece)).await.unwrap();
    }
    let (writer, mut reader) = ws.split();
    let relay = tokio::spawn(async move {
        loop {
            let item = tokio::time::timeout(STEP, reader.next())
                .await
                .expect("in time");
            let Some(Ok(Message::Fragment(piece))) = item else {
                panic!("fragments only, got {item:?}");
            };
            let end = piece.ends_message();
            let len = piece.data.len();
            writer.send(Message::Fragment(piece)).await.unwrap();
            if end {
                return len;
            }
        }
    });
    // Write the rest while reading the echo (the relay forwards as it reads).
    let (mut raw_read, mut raw_write) = raw.into_split();
    let rest = wire[100 * 1024..].to_vec();
    let writer_task = tokio::spawn(async move { raw_write.write_all(&rest).await.unwrap() });
    let (fin, opcode, echoed) = read_frame(&mut raw_read).await;
    assert!(fin && opcode == 0x2, "one binary frame, as it came");
    writer_task.await.unwrap();
    relay.await.unwrap();
    assert!(pieces >= 1);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the relayed message equals the original");
}

/// A frame sent in pieces (`Fragment::rest`) over a real socket: the peer's ping and
/// close arrive mid-frame; the pong and the close reply wait for the frame's last piece,
/// and the server then closes TCP at once (not after close_timeout, 30 s).
#[tokio::test]
async fn control_frames_and_the_close_wait_for_a_frame_sent_in_pieces() {
    let server = server(fragments_config()).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let ws = accept_one(&server).await;
    let first = Fragment {
        rest: 3,
        ..Fragment::new(DataKind::Binary, &b"abc"[..], true)
    };
    ws.send(Message::Fragment(first)).await.unwrap();
    // The header announces the whole frame: 6 bytes, FIN set.
    let mut head = [0u8; 5];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head, [0x82, 6, b'a', b'b', b'c']);
    raw.write_all(
        &[
            client_frame(true, PING, b"p1"),
            client_frame(true, CLOSE, b""),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let (writer, mut reader) = ws.split();
    let drain = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(item) = reader.next().await {
            seen.push(item.expect("no error"));
        }
        seen
    });
    // Nothing may come while the frame is incomplete.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), raw.read(&mut byte)).await;
    assert!(early.is_err(), "nothing inside the frame, got {early:?}");
    let started = std::time::Instant::now();
    let last = Fragment::new(DataKind::Binary, &b"def"[..], true);
    writer.send(Message::Fragment(last)).await.unwrap();
    let mut rest = [0u8; 3];
    raw.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"def");
    assert_eq!(read_frame(&mut raw).await, (true, PONG, b"p1".to_vec()));
    assert_eq!(read_frame(&mut raw).await, (true, CLOSE, Vec::new()));
    let mut after = Vec::new();
    let eof = tokio::time::timeout(STEP, raw.read_to_end(&mut after)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "TCP closed, nothing more: {eof:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let seen = tokio::time::timeout(STEP, drain).await.unwrap().unwrap();
    assert_eq!(
        seen,
        [Message::Ping(b"p1".to_vec().into()), Message::Close(None)]
    );
}

/// The peer goes away while a frame is sent in pieces: the connection ends (1006) at
/// once, and the rest of the frame is refused.
#[tokio::test]
async fn the_peer_leaving_mid_frame_ends_the_connection() {
    let server = server(fragments_config()).await;
    let raw = raw_client(server.local_addr(), "/").await;
    let mut ws = accept_one(&server).await;
    let first = Fragment {
        rest: 1000,
        ..Fragment::new(DataKind::Binary, &b"abc"[..], true)
    };
    ws.send(Message::Fragment(first)).await.unwrap();
    drop(raw);
    let items = tokio::time::timeout(STEP, async {
        let mut items = Vec::new();
        while let Some(item) = ws.next().await {
            items.push(item);
        }
        items
    })
    .await
    .expect("the end in time");
    assert!(
        items.iter().all(Result::is_err),
        "no message after the peer left: {items:?}"
    );
    let rest = Fragment::new(DataKind::Binary, vec![0u8; 1000], true);
    assert!(ws.send(Message::Fragment(rest)).await.is_err());
}
