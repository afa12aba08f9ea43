//! The opening handshake over loopback: the server's hardening (timeouts, head limits),
//! its validation and error answers, subprotocol selection, the client's handling of
//! servers that misbehave, and bytes sent right after the request head.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sockeye::proto::handshake::accept_key;
use sockeye::proto::HandshakeError;
use sockeye::{ClientConfig, Error, HeadLimits, Message, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{accept_one, client_frame, read_head, server, STEP};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A valid upgrade request for `path`; tests break it with `str::replace`.
fn request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// An HTTP response read to the end of the connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines as (lower-case name, value).
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads until the peer closes (EOF or a reset after its data), bounded by `STEP`.
async fn read_to_close(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut data = Vec::new();
    tokio::time::timeout(STEP, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&chunk[..n]),
                // A close with unread request bytes resets; what came before still counts.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    })
    .await
    .expect("the server closes the connection after its answer");
    data
}

fn parse_answer(data: &[u8]) -> Answer {
    let text = String::from_utf8(data.to_vec()).expect("UTF-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Awaits `f`, bounded by `STEP`.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f).await.expect("in time")
}

/// Sends `bytes` on a fresh connection and reads the answer up to the server's close.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    within(stream.write_all(bytes)).await.unwrap();
    parse_answer(&read_to_close(&mut stream).await)
}

/// An error answer: the status, a one-line plain-text body containing `names`, a
/// matching Content-Length and `Connection: close`.
fn assert_error_answer(answer: &Answer, status: u16, names: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(answer.body.contains(names), "{answer:?}");
    assert!(
        answer.body.ends_with('\n') && answer.body.matches('\n').count() == 1,
        "{answer:?}"
    );
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str())
    );
    assert!(
        answer
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{answer:?}"
    );
    assert_eq!(answer.header("connection"), Some("close"));
}

/// After a bad request a good client still gets through, and no bad one was handed out.
async fn assert_still_serving(server: &sockeye::WebSocketServer, path: &str) {
    let url = format!("ws://{}{path}", server.local_addr());
    let (client, _) = tokio::time::timeout(STEP, sockeye::connect(&url))
        .await
        .unwrap()
        .unwrap();
    let (_, request) = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(request.uri().path(), path);
    drop(client);
}

// ---- (a) handshake timeout and slowloris -------------------------------------------------

#[tokio::test]
async fn silent_and_slow_clients_get_408_while_others_upgrade() {
    let mut config = ServerConfig::default();
    config.handshake_timeout = Duration::from_millis(500);
    let server = server(config).await;
    let addr = server.local_addr();
    let start = Instant::now();

    // Silent: connects and sends nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let silent_task = tokio::spawn(async move {
        let data = read_to_close(&mut silent).await;
        (parse_answer(&data), Instant::now())
    });

    // Slowloris: one byte of a long head every 200 ms; would take ~20 s to finish.
    let slow = TcpStream::connect(addr).await.unwrap();
    let (mut slow_read, mut slow_write) = slow.into_split();
    let slow_head = request("/").replace("\r\n\r\n", "\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n");
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for byte in slow_head.bytes() {
            if slow_write.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sent
    });
    let slow_task = tokio::spawn(async move {
        let data = read_to_close(&mut slow_read).await;
        (parse_answer(&data), Instant::now())
    });

    // Meanwhile, well-behaved clients upgrade at once, while the stalled ones still wait.
    for i in 0..3 {
        let url = format!("ws://{addr}/ok{i}");
        let (client, _) = tokio::time::timeout(Duration::from_millis(400), sockeye::connect(&url))
            .await
            .expect("a good client is not held up by the stalled ones")
            .unwrap();
        let mut ws = accept_one(&server).await;
        client.send_text("ping").await.unwrap();
        let got = tokio::time::timeout(STEP, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.as_text(), Some("ping"));
    }
    assert!(
        !silent_task.is_finished() || start.elapsed() >= Duration::from_millis(450),
        "the silent client was answered before its timeout"
    );

    for (name, task) in [("silent", silent_task), ("slow", slow_task)] {
        let (answer, at) = task.await.unwrap();
        assert_error_answer(&answer, 408, "timed out");
        let waited = at - start;
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_millis(3000),
            "{name}: answered after {waited:?}"
        );
    }
    // The slow writer was cut off long before it finished its head.
    let sent = tokio::time::timeout(STEP, writer).await.unwrap().unwrap();
    assert!(sent < 30, "the slow client sent {sent} bytes");
}

#[tokio::test]
async fn client_that_sends_then_stalls_is_dropped() {
    let mut config = ServerConfig::default();
    config.handshake_timeout = Duration::from_millis(500);
    let server = server(config).await;
    let start = Instant::now();
    let partial = request("/");
    let partial = &partial.as_bytes()[..partial.len() - 2]; // no final CRLF
    let answer = exchange(server.local_addr(), partial).await;
    assert_error_answer(&answer, 408, "timed out");
    assert!(start.elapsed() >= Duration::from_millis(450));
    assert_still_serving(&server, "/").await;
}

// ---- (b) head limits -----------------------------------------------------------------------

#[tokio::test]
async fn too_many_headers_is_431() {
    let server = server(ServerConfig::default()).await;
    let extra: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = request("/").replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
    let answer = exchange(server.local_addr(), req.as_bytes()).await;
    assert_error_answer(&answer, 431, "too large");
    assert_still_serving(&server, "/").await;
}

#[tokio::test]
async fn configured_header_count_limit_is_431() {
    let mut config = ServerConfig::default();
    config.head_limits = HeadLimits {
        max_headers: 6,
        ..HeadLimits::default()
    };
    let server = server(config).await;
    // The base request has 5 headers: at the limit + 1 it is refused, at the limit fine.
    let ok = request("/").replace("\r\n\r\n", "\r\nX-A: 1\r\n\r\n");
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(ok.as_bytes()).await.unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    let too_many = request("/").replace("\r\n\r\n", "\r\nX-A: 1\r\nX-B: 2\r\n\r\n");
    let answer = exchange(server.local_addr(), too_many.as_bytes()).await;
    assert_error_answer(&answer, 431, "too large");
}

#[tokio::test]
async fn too_many_head_bytes_is_431() {
    let server = server(ServerConfig::default()).await;
    // A complete head over the default 16 KiB.
    let big = request("/").replace(
        "\r\n\r\n",
        &format!("\r\nX-Big: {}\r\n\r\n", "a".repeat(17 * 1024)),
    );
    let answer = exchange(server.local_addr(), big.as_bytes()).await;
    assert_error_answer(&answer, 431, "too large");
    assert_still_serving(&server, "/").await;
}

#[tokio::test]
async fn endless_head_is_cut_off_with_431() {
    let mut config = ServerConfig::default();
    config.head_limits = HeadLimits {
        max_head_bytes: 1024,
        ..HeadLimits::default()
    };
    let server = server(config).await;
    // Never ends its head: refused as soon as it passes the limit, not at the timeout.
    let endless = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Endless: {}",
        "a".repeat(2000)
    );
    let start = Instant::now();
    let answer = exchange(server.local_addr(), endless.as_bytes()).await;
    assert_error_answer(&answer, 431, "too large");
    assert!(start.elapsed() < Duration::from_secs(5));
}

// ---- (c) validation and error answers ------------------------------------------------------

#[tokio::test]
async fn invalid_requests_get_their_status_and_a_named_problem() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    let good = request("/");
    let cases: Vec<(String, u16, &str)> = vec![
        (good.replace("GET", "POST"), 405, "GET"),
        (good.replace("Upgrade: websocket\r\n", ""), 400, "Upgrade"),
        (
            good.replace("Upgrade: websocket", "Upgrade: h2c"),
            400,
            "Upgrade",
        ),
        (
            good.replace("Connection: Upgrade\r\n", ""),
            400,
            "Connection",
        ),
        (
            good.replace("Connection: Upgrade", "Connection: keep-alive"),
            400,
            "Connection",
        ),
        (
            good.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            400,
            "Sec-WebSocket-Key",
        ),
        (good.replace(KEY, "c2hvcnQ="), 400, "Sec-WebSocket-Key"),
        (
            good.replace(KEY, "not a valid key at all!!"),
            400,
            "Sec-WebSocket-Key",
        ),
        (good.replace("Host: localhost\r\n", ""), 400, "Host"),
        (
            good.replace("Sec-WebSocket-Version: 13\r\n", ""),
            400,
            "Sec-WebSocket-Version",
        ),
        (
            good.replace("Version: 13", "Version: 12"),
            426,
            "Sec-WebSocket-Version",
        ),
        (
            good.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat, chat\r\n\r\n"),
            400,
            "Sec-WebSocket-Protocol",
        ),
    ];
    for (req, status, names) in cases {
        let answer = exchange(addr, req.as_bytes()).await;
        assert_error_answer(&answer, status, names);
        if status == 426 {
            assert_eq!(
                answer.header("sec-websocket-version"),
                Some("13"),
                "{answer:?}"
            );
        } else {
            assert_eq!(answer.header("sec-websocket-version"), None, "{answer:?}");
        }
    }
    assert_still_serving(&server, "/").await;
}

#[tokio::test]
async fn lenient_but_valid_requests_upgrade() {
    let server = server(ServerConfig::default()).await;
    let good = request("/");
    let variants = [
        good.replace("Upgrade: websocket", "Upgrade: WebSocket"),
        good.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"),
        good.replace("Connection: Upgrade", "connection: upgrade"),
        good.replace("Host: localhost", "Host: [::1]:9"),
        good.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b, c\r\n\r\n",
        ),
    ];
    for req in variants {
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        stream.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{req}\n{head}");
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{head}"
        );
        accept_one(&server).await;
    }
}

#[tokio::test]
async fn malformed_http_is_400() {
    let server = server(ServerConfig::default()).await;
    let answer = exchange(server.local_addr(), b"GARBAGE\x01 nonsense\r\n\r\n").await;
    assert_error_answer(&answer, 400, "malformed");
    let answer = exchange(
        server.local_addr(),
        request("/").replace("HTTP/1.1", "HTTP/1.0").as_bytes(),
    )
    .await;
    assert_error_answer(&answer, 400, "HTTP/1.1");
}

#[tokio::test]
async fn path_mismatch_is_404() {
    let mut config = ServerConfig::default();
    config.path = Some("/ws".into());
    let server = server(config).await;
    let answer = exchange(server.local_addr(), request("/other").as_bytes()).await;
    assert_error_answer(&answer, 404, "path");
    let answer = exchange(server.local_addr(), request("/ws/deeper").as_bytes()).await;
    assert_eq!(answer.status, 404);
    // The configured path, with a query string, is served.
    assert_still_serving(&server, "/ws").await;
    let url = format!("ws://{}/ws?room=1", server.local_addr());
    let (_client, _) = within(sockeye::connect(&url)).await.unwrap();
    let (_, request) = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(request.uri().query(), Some("room=1"));
}

#[tokio::test]
async fn should_handle_false_is_400() {
    let mut config = ServerConfig::default();
    config.should_handle = Some(Arc::new(|req: &sockeye::proto::http::Request<()>| {
        req.headers()
            .get("x-token")
            .is_some_and(|v| v == "let-me-in")
    }));
    let server = server(config).await;
    let answer = exchange(server.local_addr(), request("/").as_bytes()).await;
    assert_error_answer(&answer, 400, "declined");

    let mut client = ClientConfig::default();
    client
        .headers
        .insert("x-token", "let-me-in".parse().unwrap());
    let url = format!("ws://{}/", server.local_addr());
    let (_ws, _) = within(sockeye::connect_with(&url, client)).await.unwrap();
    accept_one(&server).await;
}

#[tokio::test]
async fn library_client_sees_the_rejection_as_unexpected_response() {
    let mut config = ServerConfig::default();
    config.path = Some("/ws".into());
    let server = server(config).await;
    let url = format!("ws://{}/elsewhere", server.local_addr());
    let err = within(sockeye::connect(&url)).await.unwrap_err();
    let Error::UnexpectedResponse(response) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(response.status(), 404);
    assert_eq!(err.http_status(), Some(404));
    assert_eq!(
        &response.body()[..],
        b"no WebSocket endpoint at this path\n"
    );
}

// ---- (d) subprotocols ----------------------------------------------------------------------

fn offering(protocols: &[&str]) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.protocols = protocols.iter().map(|p| p.to_string()).collect();
    config
}

#[tokio::test]
async fn default_subprotocol_is_the_clients_first() {
    let server = server(ServerConfig::default()).await;
    let url = format!("ws://{}/", server.local_addr());
    let (client, response) = within(sockeye::connect_with(
        &url,
        offering(&["chat", "superchat"]),
    ))
    .await
    .unwrap();
    let ws = accept_one(&server).await;
    assert_eq!(client.protocol(), Some("chat"));
    assert_eq!(ws.protocol(), Some("chat"));
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");

    // No offer: no protocol, and no header.
    let (client, response) = within(sockeye::connect(&url)).await.unwrap();
    let ws = accept_one(&server).await;
    assert_eq!((client.protocol(), ws.protocol()), (None, None));
    assert!(!response.headers().contains_key("sec-websocket-protocol"));
}

#[tokio::test]
async fn handle_protocols_picks_another() {
    let mut config = ServerConfig::default();
    config.handle_protocols = Some(Arc::new(
        |offered: &[String], _req: &sockeye::proto::http::Request<()>| {
            assert_eq!(offered, ["chat", "superchat", "v3"]);
            Some("superchat".to_owned())
        },
    ));
    let server = server(config).await;
    let url = format!("ws://{}/", server.local_addr());
    let (client, _) = within(sockeye::connect_with(
        &url,
        offering(&["chat", "superchat", "v3"]),
    ))
    .await
    .unwrap();
    let ws = accept_one(&server).await;
    assert_eq!(client.protocol(), Some("superchat"));
    assert_eq!(ws.protocol(), Some("superchat"));
}

#[tokio::test]
async fn handle_protocols_can_pick_none() {
    let mut config = ServerConfig::default();
    config.handle_protocols = Some(Arc::new(
        |_: &[String], _: &sockeye::proto::http::Request<()>| None,
    ));
    let server = server(config).await;
    let addr = server.local_addr();
    // Raw: the 101 carries no Sec-WebSocket-Protocol and the server side has none.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = request("/").replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n",
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    assert_eq!(accept_one(&server).await.protocol(), None);
    // The library client, having offered some, refuses an answer without one (as ws).
    let err = within(sockeye::connect_with(
        &format!("ws://{addr}/"),
        offering(&["chat"]),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Handshake(HandshakeError::InvalidSubprotocol)),
        "{err:?}"
    );
}

// ---- (e) the client against raw servers ----------------------------------------------------

/// A raw server for one connection: sends the request head it read through the returned
/// channel and answers with `respond(head)` (`None`: never answer, hold the socket).
async fn raw_server(
    respond: impl FnOnce(&str) -> Option<Vec<u8>> + Send + 'static,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok(Ok((mut stream, _))) = tokio::time::timeout(STEP, listener.accept()).await else {
            return;
        };
        let head = read_head(&mut stream).await;
        let answer = respond(&head);
        let _ = tx.send(head);
        match answer {
            Some(bytes) => {
                let _ = stream.write_all(&bytes).await;
                // Keep the socket until the client is done with it.
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut sink)).await;
            }
            None => tokio::time::sleep(STEP).await,
        }
    });
    (addr, rx)
}

/// The value of header `name` in a raw head (case-insensitive name).
fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A valid 101 for the key in `head`, with `extra` header lines.
fn switching(head: &str, extra: &str) -> Vec<u8> {
    let key = head_header(head, "sec-websocket-key").expect("a key");
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
        accept_key(key.as_bytes())
    )
    .into_bytes()
}

#[tokio::test]
async fn non_101_answer_is_unexpected_response_with_headers_and_body() {
    let (addr, _) = raw_server(|_| {
        Some(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nX-Why: no-such-room\r\nContent-Length: 13\r\n\r\nnothing here\n".to_vec())
    })
    .await;
    let start = Instant::now();
    let err = within(sockeye::connect(&format!("ws://{addr}/room")))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the body is read by its length"
    );
    assert_eq!(err.http_status(), Some(404));
    let Error::UnexpectedResponse(response) = err else {
        panic!("{err:?}")
    };
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-why"], "no-such-room");
    assert_eq!(&response.body()[..], b"nothing here\n");
}

#[tokio::test]
async fn non_101_answer_body_until_close() {
    // No Content-Length: the body runs to the end of the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\ngo away")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
    });
    let err = within(sockeye::connect(&format!("ws://{addr}/")))
        .await
        .unwrap_err();
    let Error::UnexpectedResponse(response) = err else {
        panic!("{err:?}")
    };
    assert_eq!(response.status(), 403);
    assert_eq!(&response.body()[..], b"go away");
}

#[tokio::test]
async fn wrong_accept_is_accept_mismatch() {
    let (addr, _) = raw_server(|_| {
        Some(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec())
    })
    .await;
    let err = within(sockeye::connect(&format!("ws://{addr}/")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Handshake(HandshakeError::AcceptMismatch)),
        "{err:?}"
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    let (addr, head) = raw_server(|_| None).await;
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(Duration::from_millis(300));
    let start = Instant::now();
    let result = tokio::time::timeout(
        STEP,
        sockeye::connect_with(&format!("ws://{addr}/"), config),
    )
    .await
    .expect("bounded by handshake_timeout");
    let elapsed = start.elapsed();
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::Handshake(HandshakeError::Timeout)),
        "{err:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    // The request did reach the server; it just never answered.
    assert!(head.await.unwrap().starts_with("GET / HTTP/1.1\r\n"));
}

#[tokio::test]
async fn request_carries_origin_headers_version_and_basic_auth() {
    let (addr, head) = raw_server(|head| Some(switching(head, ""))).await;
    let mut config = ClientConfig::default();
    config.origin = Some("http://example.test".into());
    config.headers.insert("x-extra", "one".parse().unwrap());
    config.headers.append("cookie", "a=1".parse().unwrap());
    let url = format!("ws://user:pa%40ss@127.0.0.1:{}/path?q=1", addr.port());
    let (ws, _) = within(sockeye::connect_with(&url, config)).await.unwrap();
    assert_eq!(ws.url(), Some(url.as_str()));
    let head = head.await.unwrap();
    assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        head_header(&head, "host"),
        Some(format!("127.0.0.1:{}", addr.port()).as_str())
    );
    assert_eq!(head_header(&head, "upgrade"), Some("websocket"));
    assert_eq!(head_header(&head, "connection"), Some("Upgrade"));
    assert_eq!(head_header(&head, "sec-websocket-version"), Some("13"));
    assert_eq!(head_header(&head, "origin"), Some("http://example.test"));
    assert_eq!(head_header(&head, "sec-websocket-origin"), None);
    assert_eq!(head_header(&head, "x-extra"), Some("one"));
    assert_eq!(head_header(&head, "cookie"), Some("a=1"));
    // "user:pa@ss", percent-decoded, in base64.
    assert_eq!(
        head_header(&head, "authorization"),
        Some("Basic dXNlcjpwYUBzcw==")
    );
    let key = head_header(&head, "sec-websocket-key").unwrap();
    assert_eq!(key.len(), 24);
}

#[tokio::test]
async fn protocol_version_8_uses_sec_websocket_origin() {
    let (addr, head) = raw_server(|head| Some(switching(head, ""))).await;
    let mut config = ClientConfig::default();
    config.protocol_version = 8;
    config.origin = Some("http://example.test".into());
    let url = format!("ws://user:pass@127.0.0.1:{}/", addr.port());
    within(sockeye::connect_with(&url, config)).await.unwrap();
    let head = head.await.unwrap();
    assert_eq!(head_header(&head, "sec-websocket-version"), Some("8"));
    assert_eq!(
        head_header(&head, "sec-websocket-origin"),
        Some("http://example.test")
    );
    assert_eq!(head_header(&head, "origin"), None);
    assert_eq!(
        head_header(&head, "authorization"),
        Some("Basic dXNlcjpwYXNz")
    );
}

#[tokio::test]
async fn explicit_authorization_header_wins_over_url_userinfo() {
    let (addr, head) = raw_server(|head| Some(switching(head, ""))).await;
    let mut config = ClientConfig::default();
    config
        .headers
        .insert("authorization", "Bearer t0k3n".parse().unwrap());
    let url = format!("ws://user:pass@127.0.0.1:{}/", addr.port());
    within(sockeye::connect_with(&url, config)).await.unwrap();
    let head = head.await.unwrap();
    assert_eq!(head_header(&head, "authorization"), Some("Bearer t0k3n"));
    assert_eq!(
        head.to_ascii_lowercase().matches("authorization").count(),
        1,
        "{head}"
    );
}

#[tokio::test]
async fn response_headers_are_readable_and_early_server_frames_kept() {
    // The 101 and a first server frame in one write: the frame must not be lost.
    let (addr, _) = raw_server(|head| {
        let mut bytes = switching(
            head,
            "Set-Cookie: session=abc; HttpOnly\r\nX-Server: raw\r\n",
        );
        bytes.extend_from_slice(&crate::support::frame(true, 0, 1, None, b"welcome"));
        Some(bytes)
    })
    .await;
    let (mut ws, response) = within(sockeye::connect(&format!("ws://{addr}/")))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["set-cookie"], "session=abc; HttpOnly");
    assert_eq!(response.headers()["x-server"], "raw");
    let message = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(message.as_text(), Some("welcome"));
}

// ---- (f) bytes right after the request head ------------------------------------------------

#[tokio::test]
async fn frame_in_the_same_write_as_the_head_is_received() {
    let server = server(ServerConfig::default()).await;
    let mut bytes = request("/").into_bytes();
    bytes.extend_from_slice(&client_frame(true, 1, b"early bird"));
    bytes.extend_from_slice(&client_frame(true, 2, &[1, 2, 3]));
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut ws = accept_one(&server).await;
    let first = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.as_text(), Some("early bird"));
    let second = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second, Message::binary(vec![1u8, 2, 3]));
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}
