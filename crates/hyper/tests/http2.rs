//! WebSockets over HTTP/2 (RFC 8441) through a hyper server, over loopback TCP: sockeye's
//! HTTP/2 client (h2c with prior knowledge, and TLS with ALPN choosing h2 or http/1.1 on
//! one port), several WebSockets on one connection, refusals, bad requests from a raw
//! h2 client, and flow control as per-stream backpressure.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sockeye::http2::{Http2Connection, Http2Mode};
use sockeye::{ClientConfig, DeflateConfig, Error, Message, ServerConfig};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `test` within [`LIMIT`].
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("test timed out");
}

/// One message of `FLOOD_SIZE` bytes, `FLOOD_COUNT` times, on `/flood`.
const FLOOD_SIZE: usize = 64 * 1024;
const FLOOD_COUNT: usize = 100;

/// What the server counts.
#[derive(Default)]
struct Counters {
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Messages sent by each `/flood` WebSocket, by the `n` of its query.
    flooded: [AtomicUsize; 2],
    /// WebSockets whose reading ended cleanly (the peer's close, then end of stream).
    ended: AtomicUsize,
    /// WebSockets whose reading ended with an error.
    failed: AtomicUsize,
}

/// Echoes text and binary; answers the text `info` with the request's HTTP version,
/// the agreed protocol and extensions, as the server sees them.
async fn echo(mut ws: sockeye_hyper::HyperWebSocket, version: http::Version, counters: &Counters) {
    loop {
        match ws.next().await {
            Some(Ok(message)) if message.as_text() == Some("info") => {
                let info = format!("{version:?} {:?} {}", ws.protocol(), ws.extensions());
                let _ = ws.send_text(&info).await;
            }
            Some(Ok(message)) if message.is_text() || message.is_binary() => {
                let _ = ws.send(message).await;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                counters.failed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            None => {
                counters.ended.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Sends [`FLOOD_COUNT`] messages, counting each one the WebSocket took.
async fn flood(ws: sockeye_hyper::HyperWebSocket, sent: &AtomicUsize) {
    let payload = vec![b'x'; FLOOD_SIZE];
    for _ in 0..FLOOD_COUNT {
        if ws.send_binary(&payload).await.is_err() {
            return;
        }
        sent.fetch_add(1, Ordering::SeqCst);
    }
    let _ = ws.close(None).await;
}

async fn handle(
    mut request: Request<Incoming>,
    config: Arc<ServerConfig>,
    counters: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = request.version();
    let flood_slot = match request.uri().query() {
        Some("n=1") => Some(1),
        _ if request.uri().path() == "/flood" => Some(0),
        _ => None,
    };
    match sockeye_hyper::upgrade(&mut request, &config).await {
        Ok((response, upgrade)) => {
            tokio::spawn(async move {
                let Ok(ws) = upgrade.await else { return };
                match flood_slot {
                    Some(slot) => flood(ws, &counters.flooded[slot]).await,
                    None => echo(ws, version, &counters).await,
                }
            });
            Ok(response.map(|_| Full::default()))
        }
        Err(error) => Ok(error.response()),
    }
}

/// The server's policy: deflate on, `/secret` refused by `verify_client`, `/chat` and
/// `superchat` as subprotocols.
fn server_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.per_message_deflate = Some(DeflateConfig::default());
    config.verify_client = Some(sockeye::verify_client(|info| {
        if info.request.uri().path() == "/secret" {
            return Err(sockeye::Rejection::status(403).header("x-why", "secret"));
        }
        Ok(())
    }));
    config.headers_hook = Some(Arc::new(|headers, request| {
        let version = format!("{:?}", request.version());
        headers.insert("x-version", version.parse().unwrap());
    }));
    config
}

/// A hyper server on an ephemeral loopback port speaking HTTP/1.1 and HTTP/2 (by ALPN
/// behind TLS, by the preface without), with the extended CONNECT enabled.
async fn server(tls: Option<Arc<sockeye::rustls::ServerConfig>>) -> (SocketAddr, Arc<Counters>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Arc::new(server_config());
    let counters = Arc::new(Counters::default());
    let state = counters.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let config = config.clone();
            let counters = state.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| handle(request, config.clone(), counters.clone()));
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http2().enable_connect_protocol();
                match tls {
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let io = TokioIo::new(stream);
                        let _ = builder.serve_connection_with_upgrades(io, service).await;
                    }
                    None => {
                        let io = TokioIo::new(stream);
                        let _ = builder.serve_connection_with_upgrades(io, service).await;
                    }
                }
            });
        }
    });
    (addr, counters)
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(LIMIT);
    config
}

type ClientWebSocket = sockeye::WebSocket<sockeye::MaybeTlsStream>;

async fn next_text(ws: &mut ClientWebSocket) -> String {
    match ws.next().await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// One echo of text and binary, and the server's view of the connection.
async fn echo_and_info(ws: &mut ClientWebSocket) -> String {
    ws.send_text("hello").await.unwrap();
    assert_eq!(next_text(ws).await, "hello");
    let big = vec![7u8; 300_000];
    ws.send_binary(&big).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(data))) => assert_eq!(data.as_ref(), big.as_slice()),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    ws.send_text("info").await.unwrap();
    next_text(ws).await
}

/// Waits (bounded) until `counter` reaches `value`.
async fn wait_for(counter: &AtomicUsize, value: usize) {
    for _ in 0..200 {
        if counter.load(Ordering::SeqCst) >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "counter stayed at {} (wanted {value})",
        counter.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn h2c_websocket_goes_through_the_same_decision() {
    bounded(async {
        let (addr, counters) = server(None).await;
        let mut config = client_config();
        config.protocols = vec!["superchat".into()];
        config.http2.mode = Http2Mode::Required;
        let url = format!("ws://{addr}/chat");
        let (mut ws, response) = sockeye::connect_maybe_tls_with(&url, config).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-version"], "HTTP/2.0");
        assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");
        assert_eq!(ws.protocol(), Some("superchat"));
        assert!(ws.extensions().starts_with("permessage-deflate"));
        let info = echo_and_info(&mut ws).await;
        assert!(
            info.starts_with("HTTP/2.0 Some(\"superchat\") permessage-deflate"),
            "{info}"
        );
        ws.close(None).await.unwrap();
        drain(&mut ws).await;
        // The server read the close, then the end of the stream.
        wait_for(&counters.ended, 1).await;
        assert_eq!(counters.failed.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn websockets_share_one_connection_and_close_independently() {
    bounded(async {
        let (addr, counters) = server(None).await;
        let mut config = client_config();
        config.per_message_deflate = None;
        let connection = Http2Connection::connect(&format!("ws://{addr}/"), &config)
            .await
            .unwrap();
        let mut sockets = Vec::new();
        for i in 0..5 {
            let url = format!("ws://{addr}/ws/{i}");
            let (ws, _) = connection.websocket(&url, &config).await.unwrap();
            sockets.push(ws);
        }
        assert_eq!(counters.connections.load(Ordering::SeqCst), 1);
        // Close the even ones; the odd ones go on.
        for ws in sockets.iter_mut().step_by(2) {
            ws.close(None).await.unwrap();
            drain(ws).await;
        }
        wait_for(&counters.ended, 3).await;
        for ws in sockets.iter_mut().skip(1).step_by(2) {
            let info = echo_and_info(ws).await;
            assert!(info.starts_with("HTTP/2.0 None"), "{info}");
        }
        // Another origin is not this connection's.
        let elsewhere = format!("ws://localhost:{}/ws", addr.port());
        assert!(matches!(
            connection.websocket(&elsewhere, &config).await,
            Err(Error::Url(_))
        ));
        assert_eq!(counters.connections.load(Ordering::SeqCst), 1);
        assert_eq!(counters.failed.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn refusals_keep_their_status_and_the_connection() {
    bounded(async {
        let (addr, counters) = server(None).await;
        let config = client_config();
        let connection = Http2Connection::connect(&format!("ws://{addr}/"), &config)
            .await
            .unwrap();
        let secret = format!("ws://{addr}/secret");
        match connection.websocket(&secret, &config).await {
            Err(Error::UnexpectedResponse(response)) => {
                assert_eq!(response.status(), 403);
                assert_eq!(response.headers()["x-why"], "secret");
                assert_eq!(response.body().as_ref(), b"Forbidden\n");
            }
            other => panic!("expected a 403, got {:?}", other.map(|(_, r)| r)),
        }
        let mut old = client_config();
        old.protocol_version = 8;
        match connection.websocket(&format!("ws://{addr}/ws"), &old).await {
            Err(Error::UnexpectedResponse(response)) => {
                assert_eq!(response.status(), 426);
                assert_eq!(response.headers()["sec-websocket-version"], "13");
            }
            other => panic!("expected a 426, got {:?}", other.map(|(_, r)| r)),
        }
        // The connection still opens WebSockets.
        let (mut ws, _) = connection
            .websocket(&format!("ws://{addr}/ws"), &config)
            .await
            .unwrap();
        assert!(echo_and_info(&mut ws).await.starts_with("HTTP/2.0"));
        assert_eq!(counters.connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// A raw h2 client: the requests sockeye's client never sends.
async fn raw_h2(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping = connection.ping_pong().unwrap();
    tokio::spawn(connection);
    // The answer to a PING comes after the server's settings.
    ping.ping(h2::Ping::opaque()).await.unwrap();
    assert!(send.is_extended_connect_protocol_enabled());
    send
}

fn raw_connect(addr: SocketAddr, protocol: Option<&str>, version: Option<&str>) -> Request<()> {
    let mut request = Request::connect(format!("http://{addr}/ws"))
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap();
    if let Some(protocol) = protocol {
        let protocol = h2::ext::Protocol::from(protocol);
        request.extensions_mut().insert(protocol);
    }
    if let Some(version) = version {
        let value = version.parse().unwrap();
        request.headers_mut().insert("sec-websocket-version", value);
    }
    request
}

async fn status_of(send: &h2::client::SendRequest<Bytes>, request: Request<()>) -> u16 {
    let mut send = send.clone().ready().await.unwrap();
    let (response, _stream) = send.send_request(request, false).unwrap();
    response.await.unwrap().status().as_u16()
}

#[tokio::test]
async fn bad_extended_connects_get_their_status_and_resets_touch_one_stream() {
    bounded(async {
        let (addr, counters) = server(None).await;
        let send = raw_h2(addr).await;
        // A plain CONNECT (authority form, no :protocol).
        let plain = Request::connect(format!("{addr}"))
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(status_of(&send, plain).await, 400);
        let wrong = raw_connect(addr, Some("webtransport"), Some("13"));
        assert_eq!(status_of(&send, wrong).await, 400);
        let no_version = raw_connect(addr, Some("websocket"), None);
        assert_eq!(status_of(&send, no_version).await, 400);
        let old_version = raw_connect(addr, Some("websocket"), Some("8"));
        assert_eq!(status_of(&send, old_version).await, 426);

        // A WebSocket stream reset in the middle of a frame: that stream fails, the
        // connection and the other stream go on.
        let mut ready = send.clone().ready().await.unwrap();
        let request = raw_connect(addr, Some("websocket"), Some("13"));
        let (response, mut stream) = ready.send_request(request, false).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        // A masked text frame announcing 10 bytes, with only 3 of them.
        stream
            .send_data(Bytes::from_static(b"\x81\x8a\0\0\0\0abc"), false)
            .unwrap();
        let mut config = client_config();
        config.per_message_deflate = None;
        let connection = Http2Connection::connect(&format!("ws://{addr}/"), &config)
            .await
            .unwrap();
        let (mut other, _) = connection
            .websocket(&format!("ws://{addr}/other"), &config)
            .await
            .unwrap();
        stream.send_reset(h2::Reason::CANCEL);
        // The server's WebSocket on the reset stream ends (an unfinished frame: an error).
        for _ in 0..200 {
            if counters.failed.load(Ordering::SeqCst) + counters.ended.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(counters.failed.load(Ordering::SeqCst), 1);
        assert_eq!(counters.ended.load(Ordering::SeqCst), 0);
        assert!(echo_and_info(&mut other).await.starts_with("HTTP/2.0"));
        let still = raw_connect(addr, Some("websocket"), Some("13"));
        assert_eq!(status_of(&send, still).await, 200);
    })
    .await;
}

#[tokio::test]
async fn a_stalled_reader_stops_only_its_own_stream() {
    bounded(async {
        let (addr, counters) = server(None).await;
        let mut config = client_config();
        config.per_message_deflate = None;
        let connection = Http2Connection::connect(&format!("ws://{addr}/"), &config)
            .await
            .unwrap();
        let (mut stalled, _) = connection
            .websocket(&format!("ws://{addr}/flood"), &config)
            .await
            .unwrap();
        let (mut reading, _) = connection
            .websocket(&format!("ws://{addr}/flood?n=1"), &config)
            .await
            .unwrap();
        let mut received = 0;
        while let Some(message) = reading.next().await {
            match message.unwrap() {
                Message::Binary(data) => {
                    assert_eq!(data.len(), FLOOD_SIZE);
                    received += 1;
                }
                Message::Close(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(received, FLOOD_COUNT);
        assert_eq!(counters.flooded[1].load(Ordering::SeqCst), FLOOD_COUNT);
        // The stalled stream's sender is held by flow control: at most its window, h2's
        // send buffer and the WebSocket's send queue (1 MiB) ahead of the reader.
        let stalled_sent = counters.flooded[0].load(Ordering::SeqCst);
        assert!(
            stalled_sent * FLOOD_SIZE < 3 * 1024 * 1024,
            "{stalled_sent} messages sent to a reader that reads nothing"
        );
        // Reading again lets it finish.
        let mut received = 0;
        while let Some(message) = stalled.next().await {
            if let Message::Binary(_) = message.unwrap() {
                received += 1;
            }
        }
        assert_eq!(received, FLOOD_COUNT);
    })
    .await;
}

/// A self-signed certificate for `localhost` and 127.0.0.1, as the server's and the
/// client's trust anchor, and the server's TLS offering `alpn`.
fn tls_pair(alpn: &[&[u8]]) -> (Arc<sockeye::rustls::ServerConfig>, sockeye::ClientTlsConfig) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let server =
        sockeye::tls::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let mut server = (*server).clone();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut client = sockeye::ClientTlsConfig::default();
    client.ca_pem = Some(cert_pem.into_bytes());
    (Arc::new(server), client)
}

#[tokio::test]
async fn tls_alpn_serves_h2_and_http11_on_one_port() {
    bounded(async {
        let (server_tls, client_tls) = tls_pair(&[b"h2", b"http/1.1"]);
        let (addr, counters) = server(Some(server_tls)).await;
        let url = format!("wss://localhost:{}/ws", addr.port());
        let cases = [
            (Http2Mode::Never, "HTTP/1.1", 101),
            (Http2Mode::IfOffered, "HTTP/2.0", 200),
            (Http2Mode::Required, "HTTP/2.0", 200),
        ];
        for (mode, version, status) in cases {
            let mut config = client_config();
            config.tls = client_tls.clone();
            config.http2.mode = mode;
            let (mut ws, response) = sockeye::connect_maybe_tls_with(&url, config)
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            assert_eq!(response.status(), status, "{mode:?}");
            let info = echo_and_info(&mut ws).await;
            assert!(info.starts_with(version), "{mode:?}: {info}");
            ws.close(None).await.unwrap();
        }
        assert_eq!(counters.connections.load(Ordering::SeqCst), 3);
    })
    .await;
}

#[tokio::test]
async fn if_offered_falls_back_to_http11_and_required_fails() {
    bounded(async {
        // A server that takes no part in ALPN.
        let (server_tls, client_tls) = tls_pair(&[]);
        let (addr, _counters) = server(Some(server_tls)).await;
        let url = format!("wss://localhost:{}/ws", addr.port());
        let mut config = client_config();
        config.tls = client_tls;
        config.http2.mode = Http2Mode::IfOffered;
        let (mut ws, response) = sockeye::connect_maybe_tls_with(&url, config.clone())
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        assert!(echo_and_info(&mut ws).await.starts_with("HTTP/1.1"));
        config.http2.mode = Http2Mode::Required;
        match sockeye::connect_maybe_tls_with(&url, config).await {
            Err(Error::Http2(why)) => assert!(why.contains("h2"), "{why}"),
            other => panic!("expected Error::Http2, got {:?}", other.map(|(_, r)| r)),
        }
    })
    .await;
}

/// Reads to the end after a close: the server's close frame, then nothing.
async fn drain(ws: &mut ClientWebSocket) {
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Close(_)) => {}
            other => panic!("expected the end after a close, got {other:?}"),
        }
    }
}
