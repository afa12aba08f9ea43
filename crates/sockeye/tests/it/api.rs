//! The public API over loopback: the server (binding, the client set, shutdown), client
//! options, the connection (messages, pings, closing, terminate, several tasks), and the
//! newer ws options (auto_pong, close_timeout, max_fragments).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use sockeye::proto::ApiMisuse;
use sockeye::{
    ClientConfig, CloseCode, CloseFrame, DataKind, Error, Message, ReadyState, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

async fn next(
    ws: &mut (impl futures_util::Stream<Item = Result<Message, Error>> + Unpin),
) -> Message {
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("message in time")
        .expect("stream open")
        .expect("no error")
}

fn url(server: &sockeye::WebSocketServer, path: &str) -> String {
    format!("ws://{}{path}", server.local_addr())
}

// Bind to an ephemeral port, report the address, hand out connections with
// their request.
#[tokio::test]
async fn server_reports_address_and_request() {
    let server = server(ServerConfig::default()).await;
    assert_ne!(server.local_addr().port(), 0);
    let client = tokio::spawn({
        let url = url(&server, "/room/7?x=1");
        async move { sockeye::connect(&url).await.unwrap() }
    });
    let (ws, request) = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(request.uri().path(), "/room/7");
    assert_eq!(request.uri().query(), Some("x=1"));
    assert_eq!(ws.ready_state(), ReadyState::Open);
    assert_eq!(ws.role(), sockeye::Role::Server);
    let (client_ws, response) = client.await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(client_ws.url(), Some(url(&server, "/room/7?x=1").as_str()));
    assert_eq!(client_ws.extensions(), "");
}

// Text, binary, empty and large messages both ways; the echo is exact.
#[tokio::test]
async fn messages_both_ways() {
    let server = server(ServerConfig::default()).await;
    let (mut client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let mut peer = accept_one(&server).await;
    client.send_text("κόσμε").await.unwrap();
    assert_eq!(next(&mut peer).await, Message::text("κόσμε"));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for data in [vec![], vec![7u8], big] {
        peer.send_binary(&data).await.unwrap();
        assert_eq!(next(&mut client).await, Message::binary(data.clone()));
        client.send(Message::binary(data.clone())).await.unwrap();
        assert_eq!(next(&mut peer).await.as_bytes(), &data[..]);
    }
    // The Sink interface.
    client.feed(Message::text("a")).await.unwrap();
    client.feed(Message::text("b")).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(next(&mut peer).await, Message::text("a"));
    assert_eq!(next(&mut peer).await, Message::text("b"));
}

// `fin = false` streams one message as several frames; the receiver sees one message,
// and the frames are on the wire as Text + Continuation.
#[tokio::test]
async fn streaming_a_message_in_frames() {
    let server = server(ServerConfig::default()).await;
    let (client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let mut peer = accept_one(&server).await;
    client
        .send_frame(DataKind::Text, b"hel", false)
        .await
        .unwrap();
    client.ping(b"between").await.unwrap();
    client
        .send_frame(DataKind::Text, b"lo ", false)
        .await
        .unwrap();
    client
        .send_frame(DataKind::Text, "wörld".as_bytes(), true)
        .await
        .unwrap();
    assert_eq!(next(&mut peer).await, Message::Ping("between".into()));
    assert_eq!(next(&mut peer).await, Message::text("hello wörld"));
    // A piece of another type while a message is in progress is a caller error.
    client
        .send_frame(DataKind::Binary, b"x", false)
        .await
        .unwrap();
    let err = client
        .send_frame(DataKind::Text, b"y", true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Misuse(ApiMisuse::FragmentTypeMismatch)),
        "{err:?}"
    );
    assert_eq!(err.close_code(), None);

    // On the wire: a raw client sees the server's frames.
    let mut raw = raw_client(server.local_addr(), "/").await;
    let peer = accept_one(&server).await;
    peer.send_frame(DataKind::Binary, b"ab", false)
        .await
        .unwrap();
    peer.send_frame(DataKind::Binary, b"cd", true)
        .await
        .unwrap();
    assert_eq!(read_frame(&mut raw).await, (false, 2, b"ab".to_vec()));
    assert_eq!(read_frame(&mut raw).await, (true, 0, b"cd".to_vec()));
}

// Pings are answered with their payload (auto_pong); with auto_pong off the
// application answers; control payloads over 125 bytes are refused.
#[tokio::test]
async fn ping_pong() {
    let server = server(ServerConfig::default()).await;
    let (mut client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let mut peer = accept_one(&server).await;
    client.ping(b"are you there").await.unwrap();
    assert_eq!(next(&mut peer).await, Message::Ping("are you there".into()));
    assert_eq!(
        next(&mut client).await,
        Message::Pong("are you there".into())
    );
    peer.pong(b"unsolicited").await.unwrap();
    assert_eq!(next(&mut client).await, Message::Pong("unsolicited".into()));
    let err = client.ping(&[0u8; 126]).await.unwrap_err();
    assert!(err.to_string().contains("125"), "{err}");

    let mut config = ServerConfig::default();
    config.websocket.auto_pong = false;
    let server = crate::support::server(config).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut peer = accept_one(&server).await;
    raw.write_all(&client_frame(true, 0x9, b"p1"))
        .await
        .unwrap();
    raw.write_all(&client_frame(true, 0x1, b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut peer).await, Message::Ping("p1".into()));
    assert_eq!(next(&mut peer).await, Message::text("after"));
    peer.send_text("no pong before me").await.unwrap();
    assert_eq!(
        read_frame(&mut raw).await,
        (true, 1, b"no pong before me".to_vec())
    );
}

// The close handshake from either side, with ready states; close arguments
// are validated; a send after close is refused.
#[tokio::test]
async fn close_handshake_both_ways() {
    let server = server(ServerConfig::default()).await;
    for client_closes in [true, false] {
        let (mut client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
        let mut peer = accept_one(&server).await;
        let (closer, other) = if client_closes {
            (&mut client, &mut peer)
        } else {
            (&mut peer, &mut client)
        };
        let bad = (*closer)
            .close(Some(CloseFrame::new(1005, "")))
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("1005"), "{bad}");
        let long = (*closer)
            .close(Some(CloseFrame::new(1000, "x".repeat(124))))
            .await
            .unwrap_err();
        assert!(long.to_string().contains("123"), "{long}");
        (*closer)
            .close(Some(CloseFrame::new(4001, "bye")))
            .await
            .unwrap();
        assert_eq!(closer.ready_state(), ReadyState::Closing);
        assert!(closer.send_text("late").await.is_err());
        // Reading drives each end's side of the handshake: poll both at once.
        let other_side = async {
            let first = next(other).await;
            assert!(tokio::time::timeout(STEP, other.next())
                .await
                .unwrap()
                .is_none());
            first
        };
        let closer_side = async {
            let first = next(closer).await;
            assert!(tokio::time::timeout(STEP, closer.next())
                .await
                .unwrap()
                .is_none());
            first
        };
        let (got, echoed) = tokio::join!(other_side, closer_side);
        assert_eq!(got, Message::Close(Some(CloseFrame::new(4001, "bye"))));
        assert_eq!(echoed, Message::Close(Some(CloseFrame::new(4001, "bye"))));
        assert_eq!(client.ready_state(), ReadyState::Closed);
        assert_eq!(peer.ready_state(), ReadyState::Closed);
        let err = client.send_text("after").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Closed(_) | Error::Misuse(ApiMisuse::SendAfterClose)
            ),
            "{err:?}"
        );
    }
}

// The server closes TCP first; a close without status is reported as None (1005).
#[tokio::test]
async fn server_closes_tcp_after_the_handshake() {
    let server = server(ServerConfig::default()).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut peer = accept_one(&server).await;
    raw.write_all(&client_frame(true, 0x8, b"")).await.unwrap();
    assert_eq!(next(&mut peer).await, Message::Close(None));
    assert_eq!(read_frame(&mut raw).await, (true, 8, vec![]));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(STEP, raw.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "EOF from the server right after its close reply");
}

// `close_timeout`: a peer that never answers our close frame is dropped in time.
#[tokio::test]
async fn close_timeout_drops_a_silent_peer() {
    let mut config = ServerConfig::default();
    config.websocket.close_timeout = Duration::from_millis(300);
    let server = server(config).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut peer = accept_one(&server).await;
    let started = Instant::now();
    peer.close(Some(CloseFrame::new(1000, "done")))
        .await
        .unwrap();
    assert!(tokio::time::timeout(STEP, peer.next())
        .await
        .unwrap()
        .is_none());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(read_frame(&mut raw).await.1, 8);
    let mut rest = Vec::new();
    assert_eq!(
        tokio::time::timeout(STEP, raw.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap(),
        0
    );
}

// `terminate()` drops the transport at once; the peer sees an abnormal end (1006).
#[tokio::test]
async fn terminate_is_abnormal_for_the_peer() {
    let server = server(ServerConfig::default()).await;
    let (mut client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let peer = accept_one(&server).await;
    peer.terminate();
    assert_eq!(peer.ready_state(), ReadyState::Closed);
    let end = tokio::time::timeout(STEP, client.next()).await.unwrap();
    match end {
        Some(Err(Error::Closed(info))) => {
            assert_eq!(
                info.received.map(|f| f.code),
                Some(CloseCode::ABNORMAL_CLOSURE)
            );
        }
        other => panic!("expected an abnormal close, got {other:?}"),
    }
    assert!(client.next().await.is_none());
}

// The reader in one task, several writers in others, at the same time.
#[tokio::test]
async fn split_halves_from_different_tasks() {
    let server = server(ServerConfig::default()).await;
    let (client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let peer = accept_one(&server).await;
    let echo = tokio::spawn(async move {
        let (writer, mut reader) = peer.split();
        while let Some(Ok(message)) = reader.next().await {
            if message.is_binary() {
                writer.send(message).await.unwrap();
            }
        }
    });
    let (writer, mut reader) = client.split();
    const PER_TASK: u32 = 500;
    let senders: Vec<_> = (0..4u8)
        .map(|task| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let mut payload = vec![task; 1000];
                    payload[..4].copy_from_slice(&i.to_be_bytes());
                    writer.send_binary(&payload).await.unwrap();
                }
            })
        })
        .collect();
    let mut seen = [0u32; 4];
    for _ in 0..4 * PER_TASK {
        let message = next(&mut reader).await;
        let data = message.as_bytes();
        let task = data[999] as usize;
        assert_eq!(
            u32::from_be_bytes(data[..4].try_into().unwrap()),
            seen[task],
            "in order per task"
        );
        seen[task] += 1;
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let ws = sockeye::WebSocket::reunite(writer, reader);
    ws.close(None).await.unwrap();
    tokio::time::timeout(STEP, echo).await.unwrap().unwrap();
}

// The server's client set, for broadcast; closed connections leave it.
#[tokio::test]
async fn client_tracking_and_broadcast() {
    let server = server(ServerConfig::default()).await;
    let mut clients = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..3 {
        clients.push(sockeye::connect(&url(&server, "/")).await.unwrap().0);
        peers.push(accept_one(&server).await);
    }
    assert_eq!(server.clients().len(), 3);
    for writer in server.clients() {
        writer.send_text("to all").await.unwrap();
    }
    for client in &mut clients {
        assert_eq!(next(client).await, Message::text("to all"));
    }
    clients[0].close(None).await.unwrap();
    assert_eq!(next(&mut peers[0]).await, Message::Close(None));
    assert!(tokio::time::timeout(STEP, peers[0].next())
        .await
        .unwrap()
        .is_none());
    assert_eq!(server.clients().len(), 2);

    let mut config = ServerConfig::default();
    config.client_tracking = false;
    let untracked = crate::support::server(config).await;
    let _c = sockeye::connect(&url(&untracked, "/")).await.unwrap();
    let _p = accept_one(&untracked).await;
    assert!(untracked.clients().is_empty());
}

// Shutdown stops accepting, sends 1001 to open connections, waits a bounded time,
// then terminates the rest and reports.
#[tokio::test]
async fn graceful_shutdown() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    let (mut polite, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let mut polite_peer = accept_one(&server).await;
    let (_silent, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let _silent_peer = accept_one(&server).await;
    // The server side of the polite connection is read by its task, as an app does.
    tokio::spawn(async move { while polite_peer.next().await.is_some() {} });
    let polite_task = tokio::spawn(async move {
        let first = next(&mut polite).await;
        while polite.next().await.is_some() {}
        first
    });
    let started = Instant::now();
    let report = server.shutdown(Duration::from_millis(500)).await;
    assert_eq!(
        report,
        sockeye::ShutdownReport {
            closed: 1,
            terminated: 1
        }
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let first = polite_task.await.unwrap();
    assert_eq!(
        first,
        Message::Close(Some(CloseFrame::new(1001, "server shutting down")))
    );
    // No longer accepting.
    let refused = tokio::time::timeout(STEP, sockeye::connect(&format!("ws://{addr}/")))
        .await
        .unwrap();
    assert!(refused.is_err());
}

/// Shutdown closes connections side by side: of 1,000 connections, 500 answer the close and
/// 500 neither read nor answer (their close frame stuck behind a full send queue, so its
/// write never completes). All of it ends within the grace period and a small constant,
/// not 500 grace periods one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_in_parallel() {
    const EACH: usize = 500;
    const GRACE: Duration = Duration::from_millis(500);
    let server = Arc::new(server(ServerConfig::default()).await);
    let addr = server.local_addr();
    let (blocked_tx, mut blocked_rx) = tokio::sync::mpsc::unbounded_channel();
    // The server's handlers: read until the end; on /stuck, first send until the
    // transport stops taking it (the peer does not read).
    let handlers = tokio::spawn({
        let server = server.clone();
        async move {
            for _ in 0..2 * EACH {
                let (ws, request) = server.accept().await.unwrap().unwrap();
                let stuck = request.uri().path() == "/stuck";
                let blocked_tx = blocked_tx.clone();
                tokio::spawn(async move {
                    let (writer, mut reader) = ws.split();
                    if stuck {
                        let chunk = vec![7u8; 64 * 1024];
                        loop {
                            let send = writer.send_binary(&chunk);
                            if tokio::time::timeout(Duration::from_millis(100), send)
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        blocked_tx.send(()).unwrap();
                    }
                    while reader.next().await.is_some() {}
                });
            }
        }
    });
    let mut polite = Vec::new();
    for _ in 0..EACH {
        let (mut ws, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
        polite.push(tokio::spawn(async move {
            let first = ws.next().await;
            while ws.next().await.is_some() {}
            first
        }));
    }
    let mut stuck = Vec::new();
    for _ in 0..EACH {
        // A small receive window, so that a little data fills the path to it.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let request = format!(
            "GET /stuck HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stuck.push(stream);
    }
    within("every handler", handlers).await.unwrap();
    for _ in 0..EACH {
        within("a stuck connection's send blocks", blocked_rx.recv()).await;
    }
    assert_eq!(server.clients().len(), 2 * EACH);

    let started = Instant::now();
    let report = server.shutdown(GRACE).await;
    let took = started.elapsed();
    assert_eq!(
        report,
        sockeye::ShutdownReport {
            closed: EACH,
            terminated: EACH
        }
    );
    assert!(took >= GRACE, "waited for the silent ones: {took:?}");
    assert!(
        took < GRACE + Duration::from_millis(1500),
        "closed side by side: {took:?}"
    );
    for client in polite {
        let first = within("the close", client).await.unwrap();
        assert_eq!(
            first.unwrap().unwrap(),
            Message::Close(Some(CloseFrame::new(1001, "server shutting down")))
        );
    }
    drop(stuck);
}

// `max_payload` on a client, and `generate_mask`: the frames carry the custom key.
#[tokio::test]
async fn client_max_payload_and_custom_mask() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw_server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await;
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim()
            .to_owned();
        let accept = sockeye::proto::handshake::accept_key(key.as_bytes());
        let response = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        stream.write_all(response.as_bytes()).await.unwrap();
        // The client's first frame: check the key.
        let mut header = [0u8; 6];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[1] & 0x80, 0x80, "client frames are masked");
        assert_eq!(&header[2..6], &[9, 8, 7, 6]);
        let mut payload = [0u8; 2];
        stream.read_exact(&mut payload).await.unwrap();
        // Now a frame one byte over the client's limit.
        stream
            .write_all(&frame(true, 0, 2, None, &[0u8; 101]))
            .await
            .unwrap();
        let (_, opcode, payload) = read_frame(&mut stream).await;
        (opcode, payload)
    });
    let calls = Arc::new(AtomicU32::new(0));
    let mut config = ClientConfig::default();
    config.websocket.max_payload = 100;
    config.websocket.generate_mask = {
        let calls = calls.clone();
        sockeye::proto::MaskSource::custom(move || {
            calls.fetch_add(1, Ordering::Relaxed);
            [9, 8, 7, 6]
        })
    };
    let (mut ws, _) = sockeye::connect_with(&format!("ws://{addr}/"), config)
        .await
        .unwrap();
    ws.send_text("hi").await.unwrap();
    let err = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.ws_code(), Some("WS_ERR_UNSUPPORTED_MESSAGE_LENGTH"));
    let (opcode, payload) = tokio::time::timeout(STEP, raw_server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((opcode, &payload[..2]), (8, &1009u16.to_be_bytes()[..]));
    assert!(calls.load(Ordering::Relaxed) >= 2);
}

// `skip_utf8_validation` delivers unchecked text instead of failing.
#[tokio::test]
async fn skip_utf8_validation() {
    let mut config = ServerConfig::default();
    config.websocket.skip_utf8_validation = true;
    let server = server(config).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut peer = accept_one(&server).await;
    raw.write_all(&client_frame(true, 1, b"\xff\xfe"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut peer).await,
        Message::UncheckedText(vec![0xff, 0xfe].into())
    );
}

// Autobahn 9.3.1: 4 MiB in 65,536 fragments of 64 bytes is one message; 400,000
// empty fragments cost no memory and still complete.
#[tokio::test]
async fn many_fragments_are_bounded_by_bytes_not_count() {
    let server = server(ServerConfig::default()).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut peer = accept_one(&server).await;
    let mut wire = Vec::with_capacity(65_536 * 70);
    for i in 0..65_536u32 {
        let opcode = if i == 0 { 2 } else { 0 };
        wire.extend_from_slice(&client_frame(i == 65_535, opcode, &[(i % 256) as u8; 64]));
    }
    let writer = tokio::spawn(async move {
        raw.write_all(&wire).await.unwrap();
        raw
    });
    let message = next(&mut peer).await;
    assert_eq!(message.len(), 4 * 1024 * 1024);
    assert!(message
        .as_bytes()
        .chunks(64)
        .enumerate()
        .all(|(i, c)| c.iter().all(|b| *b == (i % 256) as u8)));
    let mut raw = writer.await.unwrap();

    let mut wire = client_frame(false, 2, b"");
    for _ in 0..400_000 {
        wire.extend_from_slice(&client_frame(false, 0, b""));
    }
    wire.extend_from_slice(&client_frame(true, 0, b"end"));
    let writer = tokio::spawn(async move { raw.write_all(&wire).await.unwrap() });
    assert_eq!(next(&mut peer).await, Message::binary(&b"end"[..]));
    writer.await.unwrap();

    // max_fragments caps the count with its own error.
    let mut config = ServerConfig::default();
    config.websocket.max_fragments = 1000;
    let limited = crate::support::server(config).await;
    let mut raw = raw_client(limited.local_addr(), "/").await;
    let mut peer = accept_one(&limited).await;
    let mut wire = Vec::new();
    for i in 0..1001 {
        wire.extend_from_slice(&client_frame(false, if i == 0 { 2 } else { 0 }, b"x"));
    }
    raw.write_all(&wire).await.unwrap();
    // The peer reads the close frame and closes its side; the failure is reported once
    // the connection has ended.
    let (frame, err) = tokio::join!(
        async {
            let frame = read_frame(&mut raw).await;
            raw.shutdown().await.unwrap();
            frame
        },
        tokio::time::timeout(STEP, peer.next())
    );
    assert_eq!(frame, (true, 8, 1008u16.to_be_bytes().to_vec()));
    let err = err.unwrap().unwrap().unwrap_err();
    assert_eq!(err.ws_code(), Some("WS_ERR_TOO_MANY_BUFFERED_PARTS"));
}

// `buffered_amount` counts queued bytes, framing included, and drains to zero.
#[tokio::test]
async fn buffered_amount_drains() {
    let server = server(ServerConfig::default()).await;
    let (client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let _peer = accept_one(&server).await;
    assert_eq!(client.buffered_amount(), 0);
    client.send_text("x").await.unwrap();
    assert_eq!(client.buffered_amount(), 0);
}

// Safety: a ping flood from a peer that never reads our pongs. Reading stops while the
// queued pongs are over the high-water mark, so the server's buffer stays bounded.
#[tokio::test]
async fn ping_flood_from_a_peer_that_does_not_read_stays_bounded() {
    let server = server(ServerConfig::default()).await;
    let raw = raw_client(server.local_addr(), "/").await;
    let mut peer = accept_one(&server).await;
    let watcher = peer.writer();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = peer.next().await {} });
    let (_read_half, mut write_half) = raw.into_split();
    let ping = client_frame(true, 0x9, &[7u8; 125]);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 100_000)
        .collect();
    // 13 MB of pings; the writer stalls once the server stops reading.
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(3), write_half.write_all(&flood)).await;
        write_half
    });
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(watcher.buffered_amount());
    }
    let high_water = sockeye::proto::SendQueue::default().high_water;
    assert!(
        peak <= high_water + 256,
        "queued pongs bounded: peak {peak} bytes"
    );
    let _write_half = writer.await.unwrap();
    reader.abort();
}

/// A server whose heartbeat pings after 150 ms of silence and gives up 150 ms later.
fn heartbeat_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.websocket.heartbeat = Some(sockeye::Heartbeat::new(
        Duration::from_millis(150),
        Duration::from_millis(150),
    ));
    config
}

// One line enables the heartbeat; a peer that never answers is dropped in time, a
// live one (auto-pong) stays.
#[tokio::test]
async fn heartbeat_drops_dead_peers_and_keeps_live_ones() {
    let config = heartbeat_config();
    let server = server(config).await;

    // Dead: a raw client that reads but never answers.
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut peer = accept_one(&server).await;
    let started = Instant::now();
    let end = tokio::time::timeout(STEP, peer.next()).await.unwrap();
    assert!(matches!(end, Some(Err(Error::HeartbeatTimeout))), "{end:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(
        read_frame(&mut raw).await,
        (true, 9, vec![]),
        "it was pinged first"
    );
    let mut rest = Vec::new();
    assert_eq!(
        tokio::time::timeout(STEP, raw.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap(),
        0
    );

    // Alive: a Sockeye client answers pings while it reads; the server keeps it.
    let (mut client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let mut peer = accept_one(&server).await;
    let server_side = tokio::spawn(async move {
        let mut pongs = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, peer.next()).await {
            match message.unwrap() {
                Message::Pong(_) => pongs += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        (pongs, peer.ready_state())
    });
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1000);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, client.next()).await {
        if let Message::Ping(_) = message.unwrap() {
            pings += 1;
        }
    }
    let (pongs, state) = server_side.await.unwrap();
    assert!(pings >= 3 && pongs >= 3, "pings {pings}, pongs {pongs}");
    assert_eq!(state, ReadyState::Open);
}

// `pause()` stops reading, so TCP pushes back on the sender and nothing is delivered;
// resume() delivers everything.
#[tokio::test]
async fn pause_pushes_back_and_resume_delivers() {
    let server = server(ServerConfig::default()).await;
    let (client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let mut peer = accept_one(&server).await;
    let control = peer.writer();
    control.pause();
    assert!(control.is_paused());
    let big: Vec<u8> = (0..32 << 20).map(|i: u32| (i % 253) as u8).collect();
    let expected = big.clone();
    let reader = tokio::spawn(async move { next(&mut peer).await });
    let sender = tokio::spawn(async move {
        client.send_binary(&big).await.unwrap();
        client
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !sender.is_finished(),
        "32 MiB cannot be sent while the peer is paused"
    );
    assert!(!reader.is_finished(), "nothing is delivered while paused");
    control.resume();
    assert!(!control.is_paused());
    let message = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
    assert!(message.as_bytes() == &expected[..]);
    let _client = tokio::time::timeout(STEP, sender).await.unwrap().unwrap();
}

// A WebSocket as AsyncRead + AsyncWrite: bytes through tokio::io::copy-style
// reads and writes, end of stream on close.
#[tokio::test]
async fn byte_stream_adapter() {
    use tokio::io::AsyncReadExt as _;
    let server = server(ServerConfig::default()).await;
    let (client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let peer = accept_one(&server).await;
    // The server side echoes bytes through its own byte stream.
    let echo = tokio::spawn(async move {
        let mut stream = peer.into_byte_stream();
        let (mut r, mut w) = tokio::io::split(&mut stream);
        tokio::io::copy(&mut r, &mut w).await.unwrap()
    });
    let mut stream = client.into_byte_stream();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let writer = async {
        for chunk in data.chunks(7_000) {
            w.write_all(chunk).await.unwrap();
        }
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(STEP, async { tokio::join!(writer, reader) })
        .await
        .unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes come back in order");
    let copied = tokio::time::timeout(STEP, echo).await.unwrap().unwrap();
    assert_eq!(copied, data.len() as u64);
}

// `verify_client`, sync and async, sees origin and request; a refusal carries its
// status, reason phrase and headers. The headers hook adds to the 101.
#[tokio::test]
async fn verify_client_and_headers_hook() {
    let mut config = ServerConfig::default();
    config.verify_client = Some(sockeye::verify_client(|info| {
        assert!(!info.secure);
        match info.origin.as_deref() {
            Some("https://good.example") => Ok(()),
            _ => Err(sockeye::Rejection::status(403)
                .reason("Origin Not Allowed")
                .header("retry-after", "120")),
        }
    }));
    config.headers_hook = Some(Arc::new(|headers, request| {
        let who = request.uri().path().trim_start_matches('/').to_owned();
        headers.insert("set-cookie", format!("user={who}").parse().unwrap());
    }));
    let server = server(config).await;
    let mut good = ClientConfig::default();
    good.origin = Some("https://good.example".into());
    let (_ws, response) = sockeye::connect_with(&url(&server, "/alice"), good)
        .await
        .unwrap();
    assert_eq!(response.headers()["set-cookie"], "user=alice");
    let _peer = accept_one(&server).await;

    let mut bad = ClientConfig::default();
    bad.origin = Some("https://evil.example".into());
    match sockeye::connect_with(&url(&server, "/mallory"), bad).await {
        Err(Error::UnexpectedResponse(response)) => {
            assert_eq!(response.status(), 403);
            assert_eq!(response.headers()["retry-after"], "120");
            assert_eq!(&response.body()[..], b"Origin Not Allowed\n");
        }
        other => panic!("expected a 403, got {other:?}"),
    }

    // Asynchronous: a lookup that takes time; default refusal is 401.
    let mut config = ServerConfig::default();
    config.verify_client = Some(sockeye::verify_client_async(
        |info: sockeye::VerifyInfo| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match info.request.headers().get("authorization") {
                Some(token) if token == "Bearer ok" => Ok(()),
                _ => Err(sockeye::Rejection::default()),
            }
        },
    ));
    let server = crate::support::server(config).await;
    let mut authorized = ClientConfig::default();
    authorized
        .headers
        .insert("authorization", "Bearer ok".parse().unwrap());
    assert!(sockeye::connect_with(&url(&server, "/"), authorized)
        .await
        .is_ok());
    let refused = sockeye::connect_with(&url(&server, "/"), ClientConfig::default()).await;
    assert_eq!(refused.unwrap_err().http_status(), Some(401));
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// A client that never reads while the server tries to send 256 MiB. Under every
// policy the queue stays under its bound; Drop drops, Close closes with 1008, Wait
// refuses until drained.
#[tokio::test]
async fn bounded_send_queue_policies() {
    use sockeye::proto::WhenFull;
    use sockeye::TrySend;
    let chunk = vec![0x5au8; 64 * 1024];
    for policy in [WhenFull::Drop, WhenFull::Close, WhenFull::Wait] {
        let mut config = ServerConfig::default();
        config.websocket.send_queue.when_full = policy;
        let high_water = config.websocket.send_queue.high_water;
        let server = server(config).await;
        let (client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
        let peer = accept_one(&server).await;
        let (writer, mut reader) = peer.split();
        let reading = tokio::spawn(async move { while let Some(Ok(_)) = reader.next().await {} });
        let rss_before = rss_kib();
        let (mut queued, mut dropped, mut refused) = (0u32, 0u32, 0u32);
        let mut peak = 0;
        for _ in 0..4096 {
            // 4096 x 64 KiB = 256 MiB offered.
            match writer.try_send(Message::binary(chunk.clone())) {
                Ok(TrySend::Queued) => queued += 1,
                Ok(TrySend::Dropped) => dropped += 1,
                Err(Error::QueueFull) => refused += 1,
                Err(e) => panic!("{policy:?}: {e}"),
            }
            peak = peak.max(writer.buffered_amount());
            tokio::task::yield_now().await;
        }
        let growth_kib = rss_kib().saturating_sub(rss_before);
        assert!(
            peak <= high_water + chunk.len() + 256,
            "{policy:?}: peak queue {peak}"
        );
        assert!(
            growth_kib < 64 * 1024,
            "{policy:?}: RSS grew {growth_kib} KiB for 256 MiB offered"
        );
        match policy {
            WhenFull::Drop => {
                assert!(
                    dropped > 3000 && refused == 0,
                    "queued {queued} dropped {dropped}"
                );
                assert_eq!(writer.dropped_messages(), u64::from(dropped));
            }
            WhenFull::Close => {
                assert!(refused > 0 && dropped == 0);
                assert_ne!(
                    writer.ready_state(),
                    ReadyState::Open,
                    "closing the slow peer"
                );
                // The client, reading at last, gets what was queued, then 1008.
                let mut client = client;
                let close = tokio::time::timeout(STEP, async {
                    loop {
                        match client.next().await {
                            Some(Ok(Message::Close(frame))) => break frame,
                            Some(Ok(_)) => {}
                            other => panic!("{other:?}"),
                        }
                    }
                })
                .await
                .unwrap();
                assert_eq!(close.map(|f| f.code), Some(CloseCode::POLICY_VIOLATION));
                reading.abort();
                continue;
            }
            WhenFull::Wait => {
                assert!(
                    refused > 3000 && dropped == 0,
                    "queued {queued} refused {refused}"
                );
                // Once the client reads, the queue drains and sends succeed again.
                let mut client = client;
                let draining =
                    tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });
                tokio::time::timeout(STEP, writer.drained())
                    .await
                    .unwrap()
                    .unwrap();
                assert!(writer.buffered_amount() <= 64 * 1024);
                assert_eq!(
                    writer.try_send(Message::binary(chunk.clone())).unwrap(),
                    TrySend::Queued
                );
                draining.abort();
            }
        }
        reading.abort();
    }
}

/// A server whose client does not read yet, with a 64 KiB high-water mark and `policy`:
/// the server's writer, and the client to read with later.
async fn full_queue_pair(
    policy: sockeye::proto::WhenFull,
) -> (
    sockeye::WebSocketWriter<tokio::net::TcpStream>,
    sockeye::WebSocket<tokio::net::TcpStream>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = ServerConfig::default();
    config.websocket.send_queue.high_water = 64 * 1024;
    config.websocket.send_queue.low_water = 16 * 1024;
    config.websocket.send_queue.when_full = policy;
    let server = server(config).await;
    let (client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let peer = accept_one(&server).await;
    let (writer, mut reader) = peer.split();
    let reading = tokio::spawn(async move { while let Some(Ok(_)) = reader.next().await {} });
    (writer, client, reading)
}

/// Reads `count` binary messages of `len` bytes from `client` and returns their first bytes.
async fn read_binary(
    client: &mut sockeye::WebSocket<tokio::net::TcpStream>,
    count: usize,
    len: usize,
) -> Vec<u8> {
    let mut firsts = Vec::with_capacity(count);
    while firsts.len() < count {
        match next(client).await {
            Message::Binary(data) => {
                assert_eq!(data.len(), len);
                firsts.push(data[0]);
            }
            other => panic!("{other:?}"),
        }
    }
    firsts
}

/// Every send is bounded, not only `try_send`: 1,000 sends that are not awaited, through
/// each sending method, against a peer that does not read, leave at most the high-water
/// mark and one message queued (the rest wait in their futures), and all arrive in order
/// once the peer reads and the futures are awaited.
#[tokio::test]
async fn unawaited_sends_stay_within_the_high_water_mark() {
    use sockeye::proto::WhenFull;
    use sockeye::{DataKind, SendOptions};
    const CHUNK: usize = 16 * 1024;
    let (writer, mut client, reading) = full_queue_pair(WhenFull::Wait).await;
    let chunks: Vec<Vec<u8>> = (0..1000).map(|i| vec![(i % 251) as u8; CHUNK]).collect();
    let mut sends = Vec::new();
    let mut peak = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let send = match i % 4 {
            0 => writer.send(Message::binary(chunk.clone())),
            1 => writer.send_binary(chunk),
            2 => writer.send_frame(DataKind::Binary, chunk, true),
            _ => writer.send_with(DataKind::Binary, chunk, SendOptions::default()),
        };
        sends.push(send);
        peak = peak.max(writer.buffered_amount());
    }
    assert!(
        peak <= 64 * 1024 + CHUNK + 16,
        "peak queue {peak} bytes for 16 MB offered"
    );
    let reader = async {
        let firsts = read_binary(&mut client, 1000, CHUNK).await;
        let expected: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        assert_eq!(firsts, expected, "in order");
    };
    let writer_side = async {
        for send in sends {
            send.await.unwrap();
        }
    };
    within(
        "all sent and read",
        futures_util::future::join(reader, writer_side),
    )
    .await;
    reading.abort();
}

/// 50 tasks sending at once to a peer that does not read: the queue stays within the
/// high-water mark and one message, and every message arrives once the peer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_stay_within_the_high_water_mark() {
    use sockeye::proto::WhenFull;
    const CHUNK: usize = 16 * 1024;
    const WRITERS: usize = 50;
    const EACH: usize = 20;
    let (writer, mut client, reading) = full_queue_pair(WhenFull::Wait).await;
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (writer, peak) = (writer.clone(), peak.clone());
            tokio::spawn(async move {
                let chunk = vec![w as u8; CHUNK];
                for _ in 0..EACH {
                    writer.send_binary(&chunk).await.unwrap();
                    peak.fetch_max(writer.buffered_amount(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Let the writers fill everything while nobody reads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    peak.fetch_max(writer.buffered_amount(), Ordering::Relaxed);
    let firsts = within(
        "every message",
        read_binary(&mut client, WRITERS * EACH, CHUNK),
    )
    .await;
    for task in tasks {
        within("writer", task).await.unwrap();
    }
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= 64 * 1024 + CHUNK + 16, "peak queue {peak}");
    for w in 0..WRITERS {
        let n = firsts.iter().filter(|&&b| usize::from(b) == w).count();
        assert_eq!(n, EACH, "writer {w}");
    }
    reading.abort();
}

/// Over the high-water mark, `send` follows the policy as `try_send` does: `Drop`
/// discards and counts, `Close` refuses with `QueueFull` and closes with 1008.
#[tokio::test]
async fn sends_over_the_mark_follow_drop_and_close() {
    use sockeye::proto::WhenFull;
    let chunk = vec![1u8; 16 * 1024];

    let (writer, _client, reading) = full_queue_pair(WhenFull::Drop).await;
    let mut sends = Vec::new();
    for _ in 0..1000 {
        sends.push(writer.send_binary(&chunk));
    }
    assert!(writer.buffered_amount() <= 64 * 1024 + chunk.len() + 16);
    assert!(
        writer.dropped_messages() > 500,
        "{}",
        writer.dropped_messages()
    );
    drop(sends);
    reading.abort();

    let (writer, mut client, reading) = full_queue_pair(WhenFull::Close).await;
    let mut refused = None;
    for _ in 0..1000 {
        // Polled once: queued (and maybe written), or refused at once.
        if let Some(Err(e)) = writer.send_binary(&chunk).now_or_never() {
            refused = Some(e);
            break;
        }
    }
    assert!(matches!(refused, Some(Error::QueueFull)), "{refused:?}");
    assert!(writer.buffered_amount() <= 64 * 1024 + chunk.len() + 16);
    let close = within("the close", async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(close.map(|f| f.code), Some(CloseCode::POLICY_VIOLATION));
    reading.abort();
}

// Per-connection user data, seen from every handle, e.g. to broadcast to a room.
#[tokio::test]
async fn per_connection_user_data() {
    #[derive(Clone, Debug, PartialEq)]
    struct Room(&'static str);
    let server = server(ServerConfig::default()).await;
    let mut clients = Vec::new();
    let mut peers = Vec::new(); // kept open, unread
    for room in ["red", "blue", "red"] {
        clients.push(sockeye::connect(&url(&server, "/")).await.unwrap().0);
        let peer = accept_one(&server).await;
        assert_eq!(peer.insert_data(Room(room)), None);
        assert_eq!(
            peer.insert_data(Room(room)),
            Some(Room(room)),
            "replaced, old returned"
        );
        peers.push(peer);
    }
    for writer in server.clients() {
        if writer.data::<Room>() == Some(Room("red")) {
            writer.send_text("to red").await.unwrap();
        }
    }
    assert_eq!(next(&mut clients[0]).await, Message::text("to red"));
    assert_eq!(next(&mut clients[2]).await, Message::text("to red"));
    let nothing = tokio::time::timeout(Duration::from_millis(200), clients[1].next()).await;
    assert!(nothing.is_err(), "blue got nothing");
    assert_eq!(server.clients()[0].data::<u32>(), None, "absent type");
}

// `family` picks IPv4 or IPv6 addresses of the host.
#[tokio::test]
async fn address_family() {
    let server = server(ServerConfig::default()).await;
    let port = server.local_addr().port();
    let mut v4 = ClientConfig::default();
    v4.family = Some(sockeye::AddressFamily::V4);
    assert!(
        sockeye::connect_with(&format!("ws://localhost:{port}/"), v4)
            .await
            .is_ok()
    );
    let _peer = accept_one(&server).await;
    let mut v6 = ClientConfig::default();
    v6.family = Some(sockeye::AddressFamily::V6);
    let err = sockeye::connect_with(&format!("ws://127.0.0.1:{port}/"), v6)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("family"), "{err}");
}

// A send future dropped while it waits for the transport (a timeout around a send to a
// slow peer) must not strand the other writers. The transport remembers only the task
// that polled it last, so a writer that gives up passes the wakeup on.
#[tokio::test]
async fn dropped_send_does_not_strand_other_writers() {
    // A send queue that takes both frames: both are queued when sent (a send held for
    // room, dropped, would not be sent at all).
    let mut config = ServerConfig::default();
    config.websocket.send_queue.high_water = 64 << 20;
    let server = server(config).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let peer = accept_one(&server).await;
    // More than loopback's socket buffers hold: both sends wait for the peer to read.
    const SIZE: usize = 24 << 20;
    let first = peer.writer();
    let done = tokio::spawn(async move {
        first.send_binary(&vec![1u8; SIZE]).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!done.is_finished(), "the peer reads nothing yet");
    let second = peer.writer();
    let (give_up, gave_up) = tokio::sync::oneshot::channel::<()>();
    let (dropped, was_dropped) = tokio::sync::oneshot::channel::<()>();
    let quitter = tokio::spawn(async move {
        tokio::select! {
            _ = second.send_binary(&vec![2u8; SIZE]) => panic!("sent to a peer that reads nothing"),
            _ = gave_up => {}
        }
        // The send future is gone; this task now waits on something else entirely.
        dropped.send(()).unwrap();
        std::future::pending::<()>().await;
    });
    // The second writer polled the transport last.
    tokio::time::sleep(Duration::from_millis(200)).await;
    give_up.send(()).unwrap();
    within("the drop", was_dropped).await.unwrap();
    // The peer reads both frames (a dropped send's frame is still written whole); the
    // first writer must learn that its frame went out.
    let reader = tokio::spawn(async move {
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        while total < 2 * (SIZE + 10) {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    within("the first writer", done).await.unwrap();
    assert_eq!(
        within("the peer's reads", reader).await.unwrap(),
        2 * (SIZE + 10)
    );
    quitter.abort();
}

// A send to a transport with room goes out when `send` is called, before its future is
// polled (the future then has nothing left to do); a send that cannot go out at once
// (a 24 MiB frame) still completes, by its future, once the peer reads.
#[tokio::test]
async fn a_send_with_room_is_written_when_called() {
    let server = server(ServerConfig::default()).await;
    let mut raw = raw_client(server.local_addr(), "/").await;
    let peer = accept_one(&server).await;
    let sending = peer.send_text("at once");
    assert_eq!(
        within("the frame", read_frame(&mut raw)).await,
        (true, 1, b"at once".to_vec()),
        "written before the future was polled"
    );
    within("the send", sending).await.unwrap();
    // Too large for the socket buffers: the rest waits for the future and the reader.
    const SIZE: usize = 24 << 20;
    let large = peer.send_binary(&vec![3u8; SIZE]);
    let reader = tokio::spawn(async move {
        let frame = read_frame(&mut raw).await;
        (frame, raw)
    });
    within("the large send", large).await.unwrap();
    let ((fin, opcode, payload), mut raw) = within("the peer's read", reader).await.unwrap();
    assert!(fin && opcode == 2 && payload.len() == SIZE && payload.iter().all(|&b| b == 3));
    // And the next small send goes out at once again.
    let sending = peer.send_text("again");
    assert_eq!(
        within("the frame", read_frame(&mut raw)).await,
        (true, 1, b"again".to_vec())
    );
    within("the send", sending).await.unwrap();
}

/// Sends 1 MiB messages to a peer that does not read until a send has waited 200 ms:
/// the socket buffers are full and the send queue holds what is left.
async fn fill_towards(peer: &sockeye::WebSocket<tokio::net::TcpStream>) -> usize {
    let chunk = sockeye::proto::bytes::Bytes::from(vec![7u8; 1 << 20]);
    for sent in 1..=64 {
        let send = peer.send(Message::Binary(chunk.clone()));
        if tokio::time::timeout(Duration::from_millis(200), send)
            .await
            .is_err()
        {
            return sent;
        }
    }
    panic!("64 MiB went out to a peer that does not read");
}

/// A server connection whose peer, a raw client, stopped reading: the socket buffers
/// are full and the send queue holds the rest of the `sent` MiB.
struct Stalled {
    _server: sockeye::WebSocketServer,
    raw: tokio::net::TcpStream,
    peer: sockeye::WebSocket<tokio::net::TcpStream>,
    sent: usize,
}

impl Stalled {
    async fn new(config: ServerConfig) -> Stalled {
        let server = server(config).await;
        let raw = raw_client(server.local_addr(), "/").await;
        let peer = accept_one(&server).await;
        let sent = fill_towards(&peer).await;
        Stalled {
            _server: server,
            raw,
            peer,
            sent,
        }
    }

    /// Reads again what the server kept for the raw client, then end of stream or a
    /// reset: fewer bytes than were sent means the server dropped what it had queued.
    async fn assert_queue_dropped(mut self) {
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tokio::time::timeout(STEP, self.raw.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => total += n,
                Err(_) => panic!("the server kept the connection open"),
            }
        }
        assert!(total < self.sent << 20, "the queue was dropped");
    }
}

/// A server configuration with a short close_timeout (300 ms).
fn short_close_timeout() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.websocket.close_timeout = Duration::from_millis(300);
    config
}

/// The wait since `started` was close_timeout (300 ms), not for ever.
fn assert_waited_close_timeout(started: Instant) {
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

// A peer that does not read cannot hold a closing connection: close().await
// and the stream end within close_timeout, and what was left queued is dropped.
#[tokio::test]
async fn close_timeout_bounds_a_close_the_peer_does_not_read() {
    let mut stalled = Stalled::new(short_close_timeout()).await;
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.peer.close(None))
        .await
        .expect("close() waited beyond close_timeout");
    assert!(closed.is_err(), "the close frame was not written");
    let end = tokio::time::timeout(Duration::from_secs(5), stalled.peer.next())
        .await
        .expect("the stream did not end");
    assert!(end.is_none(), "{end:?}");
    assert_waited_close_timeout(started);
    assert_eq!(stalled.peer.ready_state(), ReadyState::Closed);
    stalled.assert_queue_dropped().await;
}

// One heartbeat expiry, one error. A reader task and a writer task of the same
// connection both see `Error::HeartbeatTimeout`: the writer waiting to write to a peer
// that stopped reading and answering, and a send after the end.
#[tokio::test]
async fn a_heartbeat_expiry_is_the_same_error_for_readers_and_writers() {
    let server = server(heartbeat_config()).await;
    // Answers nothing and reads nothing; kept open until the end.
    let _raw = raw_client(server.local_addr(), "/").await;
    let (writer, mut reader) = accept_one(&server).await.split();
    let writing = tokio::spawn({
        let writer = writer.clone();
        async move {
            // The socket buffers fill, and then a send waits.
            let chunk = sockeye::proto::bytes::Bytes::from(vec![7u8; 1 << 20]);
            for _ in 0..256 {
                if let Err(e) = writer.send(Message::Binary(chunk.clone())).await {
                    return e;
                }
            }
            panic!("256 MiB went out to a peer that does not read");
        }
    });
    let reading = tokio::spawn(async move { reader.next().await });
    let read_end = within("the reader's end", reading).await.unwrap();
    let write_end = within("the writer's end", writing).await.unwrap();
    assert!(
        matches!(read_end, Some(Err(Error::HeartbeatTimeout))),
        "{read_end:?}"
    );
    assert!(
        matches!(write_end, Error::HeartbeatTimeout),
        "{write_end:?}"
    );
    let after = writer.send_text("after").await.unwrap_err();
    assert!(matches!(after, Error::HeartbeatTimeout), "{after:?}");
    assert_eq!(after.close_code(), None);
}

// The heartbeat drops a peer that does not read, although its ping cannot be
// written: the connection does not wait for ever to write it.
#[tokio::test]
async fn heartbeat_drops_a_peer_that_does_not_read() {
    let config = heartbeat_config();
    let mut stalled = Stalled::new(config).await;
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), stalled.peer.next())
        .await
        .expect("the stream did not end");
    assert!(matches!(end, Some(Err(Error::HeartbeatTimeout))), "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    stalled.assert_queue_dropped().await;
}

// A peer that half-closes (end of stream) and does not read gets close_timeout to
// take what is queued for it, not for ever.
#[tokio::test]
async fn end_of_stream_bounds_the_last_writes_by_close_timeout() {
    let mut stalled = Stalled::new(short_close_timeout()).await;
    stalled.raw.shutdown().await.unwrap();
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), stalled.peer.next())
        .await
        .expect("the stream did not end");
    match end {
        Some(Err(Error::Closed(info))) => assert_eq!(
            info.received.map(|f| f.code),
            Some(CloseCode::ABNORMAL_CLOSURE)
        ),
        other => panic!("expected an abnormal close, got {other:?}"),
    }
    assert_waited_close_timeout(started);
    stalled.assert_queue_dropped().await;
}

// The reader parked in its own task, a close() given up before close_timeout: the
// timer the close armed still wakes the reader, whose stream ends at close_timeout.
#[tokio::test]
async fn close_timeout_ends_the_reader_when_the_close_is_given_up() {
    let Stalled {
        _server, raw, peer, ..
    } = Stalled::new(short_close_timeout()).await;
    let _raw = raw;
    let (writer, mut reader) = peer.split();
    let reading =
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(5), reader.next()).await },
        );
    // Let the reader park first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), writer.close(None))
            .await
            .is_err(),
        "the close frame cannot be written yet"
    );
    let end = reading.await.unwrap().expect("the reader was not woken");
    assert!(end.is_none(), "{end:?}");
    assert_waited_close_timeout(started);
}

// Caller errors are `Error::Misuse`, not a protocol error of the peer: no close code is
// sent for them, and the connection goes on as it was.
#[tokio::test]
async fn api_misuse_is_reported_as_misuse_and_closes_nothing() {
    let server = server(ServerConfig::default()).await;
    let (mut client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let mut peer = accept_one(&server).await;

    let misuses = [
        client.ping(&[0; 126]).await.unwrap_err(),
        client.pong(&[0; 126]).await.unwrap_err(),
        client
            .close(Some(CloseFrame::new(1005, "")))
            .await
            .unwrap_err(),
        client
            .close(Some(CloseFrame::new(4000, "x".repeat(124))))
            .await
            .unwrap_err(),
    ];
    let expected = [
        ApiMisuse::ControlPayloadTooLong,
        ApiMisuse::ControlPayloadTooLong,
        ApiMisuse::InvalidCloseCode(1005),
        ApiMisuse::CloseReasonTooLong,
    ];
    for (err, misuse) in misuses.iter().zip(expected) {
        assert!(matches!(err, Error::Misuse(m) if *m == misuse), "{err:?}");
        assert_eq!(err.close_code(), None, "{err:?}");
        assert_eq!(err.ws_code(), None, "{err:?}");
    }
    assert_eq!(client.ready_state(), ReadyState::Open);
    client.send_text("still open").await.unwrap();
    assert_eq!(next(&mut peer).await, Message::text("still open"));

    // A send after close is misuse too.
    client.close(None).await.unwrap();
    let err = client.send_text("after close").await.unwrap_err();
    assert!(
        matches!(err, Error::Misuse(ApiMisuse::SendAfterClose)),
        "{err:?}"
    );
    assert_eq!(err.close_code(), None);
    assert_eq!(next(&mut peer).await, Message::Close(None));
    let _ = next(&mut client).await;
}

/// The message `i` of the ordered-sends tests, text and binary: small ones, up to and
/// over `SEND_NOW_MAX` (written from the stack when nothing is queued, or else through
/// the queue).
fn numbered(i: u32) -> Message {
    let len = match i % 7 {
        0 => sockeye::proto::connection::SEND_NOW_MAX - 600 + (i % 3) as usize * 600,
        1 | 2 => 126 + (i % 1500) as usize,
        _ => (i % 126) as usize,
    };
    let mut data = format!("{i:08}").into_bytes();
    data.resize(len.max(8), b'a' + (i % 26) as u8);
    if i % 2 == 0 {
        Message::text(String::from_utf8(data).unwrap())
    } else {
        Message::binary(data)
    }
}

/// A server and a client WebSocket on the two ends of an in-memory pipe that takes at
/// most 3 bytes per write.
fn over_a_3_byte_pipe() -> (
    sockeye::WebSocket<tokio::io::DuplexStream>,
    sockeye::WebSocket<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(3);
    let open = |io, role| {
        sockeye::WebSocket::from_upgraded(
            io,
            role,
            sockeye::Config::default(),
            bytes::BytesMut::new(),
        )
    };
    (
        open(a, sockeye::Role::Server),
        open(b, sockeye::Role::Client),
    )
}

/// A transport that takes a few bytes per write (an in-memory pipe of 3 bytes): every
/// small send is written in part and the rest queued, and the messages still arrive
/// whole and in order.
#[tokio::test]
async fn sends_written_a_few_bytes_at_a_time_arrive_whole_and_in_order() {
    let (server, mut client) = over_a_3_byte_pipe();
    const N: u32 = 500;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            server.send(numbered(i)).await.unwrap();
        }
        server
    });
    for i in 0..N {
        assert_eq!(next(&mut client).await, numbered(i), "message {i}");
    }
    within("the sender", sender).await.unwrap();
}

/// A peer that does not read until the socket is full: the sends that find the socket
/// full queue (all or part of their frame), the later ones queue behind them, and once
/// the peer reads, everything arrives in order over loopback TCP.
#[tokio::test]
async fn sends_to_a_peer_that_reads_late_arrive_whole_and_in_order() {
    let server = server(ServerConfig::default()).await;
    let (mut client, _) = sockeye::connect(&url(&server, "/")).await.unwrap();
    let ws = accept_one(&server).await;
    const N: u32 = 20_000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            ws.send(numbered(i)).await.unwrap();
        }
        ws
    });
    // Let the sender fill the socket buffers and queue past them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !sender.is_finished(),
        "the sender waits for the peer to read"
    );
    for i in 0..N {
        assert_eq!(next(&mut client).await, numbered(i), "message {i}");
    }
    within("the sender", sender).await.unwrap();
}

/// Messages sent as frames (`Message::Fragment`), through a transport that takes a few
/// bytes per write: a whole frame that is a whole message goes from the stack, the frames
/// of a message in several go through the queue, and all arrive whole and in order.
#[tokio::test]
async fn frames_sent_a_few_bytes_at_a_time_arrive_as_their_messages() {
    let (server, mut client) = over_a_3_byte_pipe();
    const N: u32 = 300;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let Message::Binary(data) = numbered(i * 2 + 1) else {
                unreachable!("odd numbers are binary")
            };
            if i % 3 == 0 {
                // In three frames.
                let cut = [data.len() / 3, 2 * data.len() / 3];
                for (piece, fin) in [
                    (data.slice(..cut[0]), false),
                    (data.slice(cut[0]..cut[1]), false),
                    (data.slice(cut[1]..), true),
                ] {
                    let frame = sockeye::Fragment::new(DataKind::Binary, piece, fin);
                    server.send(Message::Fragment(frame)).await.unwrap();
                }
            } else {
                let frame = sockeye::Fragment::new(DataKind::Binary, data, true);
                server.send(Message::Fragment(frame)).await.unwrap();
            }
        }
        server
    });
    for i in 0..N {
        assert_eq!(next(&mut client).await, numbered(i * 2 + 1), "message {i}");
    }
    within("the sender", sender).await.unwrap();
}
