//! WebSocket over HTTP/2 (RFC 8441) through `WebSocketServer::bind_tls`, over loopback:
//! HTTP/1.1 and HTTP/2 on one port (ALPN behind TLS, the preface without), several
//! WebSockets on one connection, and the server's HTTP/2 mode.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sockeye::http2::{Http2Connection, Http2Mode};
use sockeye::{ClientConfig, Error, Message, ServerConfig, ServerStream, WebSocketServer};

const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// How many of the server's WebSockets received a close frame with code 1000 (only the
/// Node client closes with 1000).
static CLEAN_CLOSES: AtomicUsize = AtomicUsize::new(0);

/// A server whose WebSockets first say the HTTP version of their request, then echo.
async fn echo_server(
    tls: Option<Arc<sockeye::rustls::ServerConfig>>,
    mode: Http2Mode,
) -> Arc<WebSocketServer<ServerStream>> {
    let mut config = ServerConfig::default();
    config.handshake_timeout = Duration::from_secs(5);
    config.http2.mode = mode;
    let server = Arc::new(
        WebSocketServer::bind_tls("127.0.0.1:0", config, tls)
            .await
            .unwrap(),
    );
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(accepted) = accepting.accept().await {
            let Ok((mut ws, request)) = accepted else {
                continue;
            };
            tokio::spawn(async move {
                let version = format!("{:?}", request.version());
                if ws.send_text(&version).await.is_err() {
                    return;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => {
                            if frame.is_some_and(|f| f.code.0 == 1000) {
                                CLEAN_CLOSES.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Some(Ok(message)) if message.is_text() || message.is_binary() => {
                            if ws.send(message).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) => return,
                        None => break,
                    }
                }
            });
        }
    });
    server
}

type ClientWebSocket = sockeye::WebSocket<sockeye::MaybeTlsStream>;

async fn next_text(ws: &mut ClientWebSocket) -> String {
    match within("a message", ws.next()).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The version the server saw, then one echo of 300 kB.
async fn version_and_echo(ws: &mut ClientWebSocket) -> String {
    let version = next_text(ws).await;
    let big = vec![3u8; 300_000];
    ws.send_binary(&big).await.unwrap();
    match within("the echo", ws.next()).await {
        Some(Ok(Message::Binary(data))) => assert_eq!(data.as_ref(), big.as_slice()),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    version
}

fn tls_pair() -> (Arc<sockeye::rustls::ServerConfig>, sockeye::ClientTlsConfig) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let server =
        sockeye::tls::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let mut client = sockeye::ClientTlsConfig::default();
    client.ca_pem = Some(cert_pem.into_bytes());
    (server, client)
}

fn client_config(mode: Http2Mode) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(LIMIT);
    config.http2.mode = mode;
    config
}

#[tokio::test]
async fn bind_tls_serves_http11_and_h2_on_one_port() {
    let (server_tls, client_tls) = tls_pair();
    let server = echo_server(Some(server_tls), Http2Mode::IfOffered).await;
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    for (mode, version) in [
        (Http2Mode::Never, "HTTP/1.1"),
        (Http2Mode::IfOffered, "HTTP/2.0"),
        (Http2Mode::Required, "HTTP/2.0"),
    ] {
        let mut config = client_config(mode);
        config.tls = client_tls.clone();
        let (mut ws, _) = within("connect", sockeye::connect_maybe_tls_with(&url, config))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(version_and_echo(&mut ws).await, version, "{mode:?}");
        within("close", ws.close(None)).await.unwrap();
    }
}

#[tokio::test]
async fn plain_bind_tls_takes_h2c_with_prior_knowledge_and_multiplexes() {
    let server = echo_server(None, Http2Mode::IfOffered).await;
    let url = format!("ws://127.0.0.1:{}/", server.local_addr().port());
    let (mut ws, _) = within(
        "HTTP/1.1",
        sockeye::connect_maybe_tls_with(&url, client_config(Http2Mode::Never)),
    )
    .await
    .unwrap();
    assert_eq!(version_and_echo(&mut ws).await, "HTTP/1.1");

    let config = client_config(Http2Mode::Required);
    let connection = within("h2c", Http2Connection::connect(&url, &config))
        .await
        .unwrap();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (ws, response) = within("a stream", connection.websocket(&url, &config))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        sockets.push(ws);
    }
    assert_eq!(server.clients().len(), 4);
    for ws in &mut sockets {
        assert_eq!(version_and_echo(ws).await, "HTTP/2.0");
    }
    // Closing one leaves the others open.
    within("close", sockets[0].close(None)).await.unwrap();
    while let Some(message) = within("the end", sockets[0].next()).await {
        assert!(matches!(message, Ok(Message::Close(_))), "{message:?}");
    }
    sockets[1].send_text("still here").await.unwrap();
    assert_eq!(next_text(&mut sockets[1]).await, "still here");
    for _ in 0..100 {
        if server.clients().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.clients().len(), 3);
}

#[tokio::test]
async fn a_server_without_http2_is_refused_when_required() {
    let (server_tls, client_tls) = tls_pair();
    let server = echo_server(Some(server_tls), Http2Mode::Never).await;
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let mut config = client_config(Http2Mode::IfOffered);
    config.tls = client_tls.clone();
    let (mut ws, _) = within("connect", sockeye::connect_maybe_tls_with(&url, config))
        .await
        .unwrap();
    assert_eq!(version_and_echo(&mut ws).await, "HTTP/1.1");
    // server_config_from_pem offers http/1.1 in ALPN: a client that wants h2 alone is
    // refused in the TLS handshake or by the client's own check.
    let mut config = client_config(Http2Mode::Required);
    config.tls = client_tls;
    match within("connect", sockeye::connect_maybe_tls_with(&url, config)).await {
        Err(Error::Http2(_) | Error::Tls(_)) => {}
        other => panic!("expected a refusal, got {:?}", other.map(|(_, r)| r)),
    }
}

// ---- Node's http2 module as the peer (crates/sockeye/tests/interop/h2.js) ---------------

/// `crates/sockeye/tests/interop`, where `npm ci` installs ws.
fn interop_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// `node h2.js <args>` with its stdout piped; fails loudly without node or ws.
fn node(args: &[&str]) -> tokio::process::Child {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "ws is not installed: run `npm ci` in {}",
        dir.display()
    );
    tokio::process::Command::new("node")
        .arg("h2.js")
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js 20+"))
}

#[tokio::test]
async fn node_http2_client_against_bind_tls_h2c() {
    use tokio::io::AsyncReadExt;
    let server = echo_server(None, Http2Mode::IfOffered).await;
    let port = server.local_addr().port().to_string();
    let mut child = node(&["client", &port, "4"]);
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    within("node's output", stdout.read_to_string(&mut out))
        .await
        .unwrap();
    let status = within("node's exit", child.wait()).await.unwrap();
    assert!(status.success(), "node failed: {out}");
    // Node checked both echoes on each stream before closing it. (ws's own close code
    // on a stream it runs as a client is 1000 or, when Node's stream closes before ws
    // has read the close frame, 1006: seen with Node at both ends too.)
    for i in 0..4 {
        assert!(
            out.contains(&format!("first i={i} text=HTTP/2.0\n")),
            "{out}"
        );
        assert!(out.contains(&format!("done i={i} code=")), "{out}");
    }
    assert!(out.contains("ok sessions=1\n"), "{out}");
    // The server got each close frame (1000).
    for _ in 0..100 {
        if CLEAN_CLOSES.load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(CLEAN_CLOSES.load(Ordering::SeqCst) >= 4);
}

/// The next line node prints.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    within("a line from node", lines.next_line())
        .await
        .unwrap()
        .expect("node exited")
}

#[tokio::test]
async fn sockeye_client_against_node_http2_server() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = node(&["server"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = next_line(&mut lines).await;
    let port = listening
        .strip_prefix("listening port=")
        .unwrap_or_else(|| panic!("{listening}"));
    let url = format!("ws://127.0.0.1:{port}/");
    let mut config = client_config(Http2Mode::Required);
    config.protocols = vec!["chat".into(), "superchat".into()];
    let connection = within("h2c", Http2Connection::connect(&url, &config))
        .await
        .unwrap();
    let mut sockets = Vec::new();
    for i in 0..3 {
        let url = format!("ws://127.0.0.1:{port}/ws/{i}");
        let (mut ws, response) = within("a stream", connection.websocket(&url, &config))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(ws.protocol(), Some("chat"));
        assert_eq!(next_line(&mut lines).await, format!("open path=/ws/{i}"));
        assert_eq!(next_text(&mut ws).await, format!("node-h2 /ws/{i}"));
        sockets.push(ws);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send_text(&format!("hi {i}")).await.unwrap();
        assert_eq!(next_text(ws).await, format!("hi {i}"));
        let big = vec![i as u8; 200_000];
        ws.send_binary(&big).await.unwrap();
        match within("the echo", ws.next()).await {
            Some(Ok(Message::Binary(data))) => assert_eq!(data.as_ref(), big.as_slice()),
            other => panic!("expected the binary echo, got {other:?}"),
        }
    }
    // Each closes on its own; Node sees each close code.
    for (i, ws) in sockets.iter_mut().enumerate() {
        within("close", ws.close(None)).await.unwrap();
        while let Some(message) = within("the end", ws.next()).await {
            assert!(matches!(message, Ok(Message::Close(_))), "{message:?}");
        }
        assert_eq!(
            next_line(&mut lines).await,
            format!("closed path=/ws/{i} code=1005")
        );
    }
    // A version Node refuses: its 400 and body.
    let mut old = client_config(Http2Mode::Required);
    old.protocol_version = 8;
    match within("refused", connection.websocket(&url, &old)).await {
        Err(Error::UnexpectedResponse(response)) => {
            assert_eq!(response.status(), 400);
            assert_eq!(response.body().as_ref(), b"not a WebSocket\n");
        }
        other => panic!("expected a 400, got {:?}", other.map(|(_, r)| r)),
    }
}

// ---- a browser: headless Chromium (Debian's `chromium`, installed by .ci/run) ----------

/// The page Chromium loads: a WebSocket to /echo on the page's own origin, which sends a
/// line, sends back what it receives prefixed with `echoed:`, and closes with 1000.
const BROWSER_PAGE: &str = r#"<!doctype html><title>h2</title><script>
const ws = new WebSocket(`wss://${location.host}/echo`);
ws.onopen = () => ws.send('hello from chromium');
ws.onmessage = (e) => { ws.send('echoed:' + e.data); ws.close(1000, 'bye'); };
</script>"#;

/// What the server saw of one WebSocket: the request's HTTP version, the texts, the close
/// code.
type Seen = tokio::sync::mpsc::UnboundedSender<String>;

async fn browser_echo(mut ws: sockeye::WebSocket<ServerStream>, version: String, seen: Seen) {
    let _ = seen.send(format!("version {version}"));
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) => {
                let _ = seen.send(format!("text {}", text.as_str()));
                let _ = ws.send_text(text.as_str()).await;
            }
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| f.code.0);
                let _ = seen.send(format!("close {code}"));
            }
            _ => {}
        }
    }
    let _ = seen.send("end".into());
}

/// A TLS server for the browser: the page and /echo, over HTTP/2 when ALPN chose h2,
/// else HTTP/1.1 (then the WebSocket reports its version as HTTP/1.1).
async fn browser_server(seen: Seen) -> u16 {
    let (tls, _) = tls_pair();
    let tls = sockeye::http2::offer_in_alpn(tls, Http2Mode::IfOffered);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Arc::new(ServerConfig::default());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tls, config, seen) = (tls.clone(), config.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(stream) = sockeye::tls::server_handshake(tcp, tls).await else {
                    return;
                };
                if stream.alpn_protocol() == Some(b"h2") {
                    let on_websocket: sockeye::http2::OnWebSocket<ServerStream> =
                        Arc::new(move |ws, request| {
                            let version = format!("{:?}", request.version());
                            Box::pin(browser_echo(ws, version, seen.clone()))
                        });
                    let on_request: sockeye::http2::OnRequest = Arc::new(|request| {
                        (request.uri().path() == "/").then(|| {
                            let mut response = http::Response::new(bytes::Bytes::from_static(
                                BROWSER_PAGE.as_bytes(),
                            ));
                            response
                                .headers_mut()
                                .insert("content-type", "text/html".parse().unwrap());
                            response
                        })
                    });
                    let service = sockeye::http2::Http2Service {
                        on_websocket,
                        on_request: Some(on_request),
                    };
                    let _ = sockeye::http2::serve_connection(stream, config, true, service).await;
                } else if let Ok((ws, request)) = sockeye::accept_tls(stream, &config).await {
                    let version = format!("{:?}", request.version());
                    browser_echo(ws, version, seen).await;
                }
            });
        }
    });
    port
}

/// Chromium loads the page from the server over https and opens its WebSocket: the
/// server sees it as an HTTP/2 stream (RFC 8441), the echo round trip and the close.
#[tokio::test]
async fn chromium_opens_its_websocket_over_http2() {
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let port = browser_server(tx).await;
    let profile = std::env::temp_dir().join(format!("sockeye-chromium-{}", std::process::id()));
    let mut chromium = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("https://localhost:{port}/"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `chromium` ({e}): apt-get install chromium (see .ci/run)")
        });
    let mut events = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = seen.recv().await {
            let end = event == "end";
            events.push(event);
            if end {
                return;
            }
        }
    })
    .await;
    let _ = chromium.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        done.is_ok(),
        "no WebSocket from chromium ended in time: {events:?}"
    );
    assert_eq!(
        events,
        [
            "version HTTP/2.0",
            "text hello from chromium",
            "text echoed:hello from chromium",
            "close 1000",
            "end"
        ]
    );
}

// ---- bad requests from a raw h2 client -------------------------------------------------

/// A raw HTTP/2 connection (prior knowledge) to `port`, once the server's settings are in.
async fn raw_h2(port: u16) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping = connection.ping_pong().unwrap();
    tokio::spawn(connection);
    // The answer to a PING comes after the server's settings.
    within("PONG", ping.ping(h2::Ping::opaque())).await.unwrap();
    assert!(send.is_extended_connect_protocol_enabled());
    send
}

fn connect_request(
    port: u16,
    method: http::Method,
    protocol: Option<&str>,
    version: Option<&str>,
) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}/"))
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap();
    if let Some(protocol) = protocol {
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from(protocol));
    }
    if let Some(version) = version {
        let value = version.parse().unwrap();
        request.headers_mut().insert("sec-websocket-version", value);
    }
    request
}

/// The status and body of the answer to `request` (of a 200, which opens a WebSocket:
/// no body).
async fn answer(
    send: &h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
) -> (u16, String) {
    let mut send = within("ready", send.clone().ready()).await.unwrap();
    let (response, _stream) = send.send_request(request, false).unwrap();
    let response = within("the answer", response).await.unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        return (status, String::new());
    }
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(data) = within("the body", body.data()).await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        text.extend_from_slice(&data);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn bind_tls_refuses_bad_extended_connects_and_survives_a_reset() {
    use http::Method;
    let server = echo_server(None, Http2Mode::IfOffered).await;
    let port = server.local_addr().port();
    let send = raw_h2(port).await;
    let plain_connect = http::Request::builder()
        .method(Method::CONNECT)
        .uri(format!("127.0.0.1:{port}"))
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap();
    let cases = [
        (plain_connect, 400),
        (
            connect_request(port, Method::CONNECT, Some("webtransport"), Some("13")),
            400,
        ),
        (
            connect_request(port, Method::CONNECT, Some("websocket"), None),
            400,
        ),
        (
            connect_request(port, Method::CONNECT, Some("websocket"), Some("8")),
            426,
        ),
        (connect_request(port, Method::GET, None, Some("13")), 405),
    ];
    for (request, status) in cases {
        let what = format!("{request:?}");
        let (got, body) = answer(&send, request).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(body.ends_with('\n') && body.len() > 1, "{what}: {body:?}");
    }

    // A WebSocket stream reset in the middle of a frame; another stream on the same
    // connection goes on, and so does the connection.
    let mut ready = within("ready", send.clone().ready()).await.unwrap();
    let request = connect_request(port, Method::CONNECT, Some("websocket"), Some("13"));
    let (response, mut doomed) = ready.send_request(request, false).unwrap();
    let response = within("200", response).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut ready = within("ready", send.clone().ready()).await.unwrap();
    let request = connect_request(port, Method::CONNECT, Some("websocket"), Some("13"));
    let (response, mut other) = ready.send_request(request, false).unwrap();
    let mut other_body = within("200", response).await.unwrap().into_body();
    // A masked text frame announcing 10 bytes, with 3 of them.
    doomed
        .send_data(bytes::Bytes::from_static(b"\x81\x8a\0\0\0\0abc"), false)
        .unwrap();
    doomed.send_reset(h2::Reason::CANCEL);
    // The other stream: the server's first message (the version), then an echo of a
    // masked "hi" (mask 0).
    other
        .send_data(bytes::Bytes::from_static(b"\x81\x82\0\0\0\0hi"), false)
        .unwrap();
    let mut received = Vec::new();
    while !received.ends_with(b"\x81\x02hi") {
        let data = within("the echo", other_body.data())
            .await
            .unwrap()
            .unwrap();
        let _ = other_body.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    assert!(received.starts_with(b"\x81\x08HTTP/2.0"), "{received:?}");
    let (status, _) = answer(
        &send,
        connect_request(port, Method::CONNECT, Some("websocket"), Some("13")),
    )
    .await;
    assert_eq!(status, 200);
}

// ---- nghttp2's proxy, nghttpx (Debian's `nghttp2-proxy`, installed by .ci/run) ---------

/// `nghttpx` on a free loopback port in front of `backend_port` (HTTP/1.1, or HTTP/2 with
/// `;;proto=h2`), once it accepts connections; killed when dropped.
async fn nghttpx(backend_port: u16, backend_proto: &str) -> (tokio::process::Child, u16) {
    let front = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Debian installs it in /usr/sbin, which a user's PATH may not have.
    let program = if std::path::Path::new("/usr/sbin/nghttpx").exists() {
        "/usr/sbin/nghttpx"
    } else {
        "nghttpx"
    };
    let child = tokio::process::Command::new(program)
        .arg("--conf=/dev/null")
        .arg(format!("--frontend=127.0.0.1,{front};no-tls"))
        .arg(format!("--backend=127.0.0.1,{backend_port}{backend_proto}"))
        .args([
            "--workers=1",
            "--errorlog-file=/dev/null",
            "--accesslog-file=/dev/null",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `nghttpx` ({e}): apt-get install nghttp2-proxy (see .ci/run)")
        });
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", front))
            .await
            .is_ok()
        {
            return (child, front);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nghttpx did not listen on {front}");
}

/// nghttpx as the HTTP/2 server of sockeye's client (its extended CONNECT, RFC 8441),
/// relaying each stream to `bind_tls` over HTTP/1.1, or over HTTP/2 as a client of
/// `bind_tls`'s extended CONNECT.
#[tokio::test]
async fn through_nghttpx_in_both_roles() {
    let backend = echo_server(None, Http2Mode::IfOffered).await;
    let backend_port = backend.local_addr().port();
    for (proto, version) in [("", "HTTP/1.1"), (";;proto=h2", "HTTP/2.0")] {
        let (mut proxy, front) = nghttpx(backend_port, proto).await;
        let url = format!("ws://127.0.0.1:{front}/");
        let config = client_config(Http2Mode::Required);
        let connection = within("h2c to nghttpx", Http2Connection::connect(&url, &config))
            .await
            .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let (ws, response) = within("a stream", connection.websocket(&url, &config))
                .await
                .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
            assert_eq!(response.status(), 200);
            sockets.push(ws);
        }
        for ws in &mut sockets {
            assert_eq!(version_and_echo(ws).await, version, "backend {proto:?}");
            within("close", ws.close(None)).await.unwrap();
            while let Some(message) = within("the end", ws.next()).await {
                assert!(matches!(message, Ok(Message::Close(_))), "{message:?}");
            }
        }
        let _ = proxy.kill().await;
    }
}

/// Reads `body` to its end (END_STREAM), within the step limit.
async fn read_to_end(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut received = Vec::new();
    while let Some(data) = within("the stream's end", body.data()).await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    received
}

/// The close handshake ends the server's side of the stream (END_STREAM), and the
/// WebSocket limits hold over HTTP/2 as over HTTP/1.1: a frame announcing more than
/// `max_payload` is answered with 1009 and the end of the stream.
#[tokio::test]
async fn close_ends_the_stream_and_limits_hold() {
    use http::Method;
    let server = echo_server(None, Http2Mode::IfOffered).await;
    let port = server.local_addr().port();
    let send = raw_h2(port).await;
    let open = || async {
        let mut ready = within("ready", send.clone().ready()).await.unwrap();
        let request = connect_request(port, Method::CONNECT, Some("websocket"), Some("13"));
        let (response, stream) = ready.send_request(request, false).unwrap();
        let response = within("200", response).await.unwrap();
        assert_eq!(response.status(), 200);
        (stream, response.into_body())
    };

    // A close frame (1000, masked with 0): the server's close frame, then END_STREAM.
    let (mut stream, mut body) = open().await;
    stream
        .send_data(
            bytes::Bytes::from_static(b"\x88\x82\0\0\0\0\x03\xe8"),
            false,
        )
        .unwrap();
    let received = read_to_end(&mut body).await;
    assert!(received.starts_with(b"\x81\x08HTTP/2.0"), "{received:?}");
    assert!(received.ends_with(b"\x88\x02\x03\xe8"), "{received:?}");
    stream.send_data(bytes::Bytes::new(), true).unwrap();

    // A binary frame announcing 2 GiB (over the default max_payload of 100 MiB).
    let (mut stream, mut body) = open().await;
    stream
        .send_data(
            bytes::Bytes::from_static(b"\x82\xff\0\0\0\0\x80\0\0\0\0\0\0\0"),
            false,
        )
        .unwrap();
    let received = read_to_end(&mut body).await;
    assert!(
        received.ends_with(b"\x88\x02\x03\xf1"),
        "1009: {received:?}"
    );
}

/// On a plain port that takes both protocols, a client that sends nothing gets the 408
/// an HTTP/1.1 request that does not come gets, after `handshake_timeout` (5 s here); a
/// request line that trickles in is still HTTP/1.1.
#[tokio::test]
async fn a_silent_client_gets_408_and_a_slow_http11_request_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = echo_server(None, Http2Mode::IfOffered).await;
    let addr = server.local_addr();
    let silent = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        within("the 408", tcp.read_to_string(&mut answer))
            .await
            .unwrap();
        answer
    };
    let slow = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // "P", as in "PRI * HTTP/2.0" (the preface) or "PUT": not yet either.
        tcp.write_all(b"P").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        tcp.write_all(b"OST / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        within("the 405", tcp.read_to_string(&mut answer))
            .await
            .unwrap();
        answer
    };
    let (silent, slow) = tokio::join!(silent, slow);
    assert!(silent.starts_with("HTTP/1.1 408 "), "{silent}");
    assert!(slow.starts_with("HTTP/1.1 405 "), "{slow}");
}

/// Backpressure through HTTP/2 flow control on `bind_tls`'s own HTTP/2 server: a server
/// WebSocket that does not read holds its client's sends back (the stream's window, then
/// the client's bounded send queue) while another stream on the same connection echoes
/// at full speed; once the server reads again, everything held arrives.
#[tokio::test]
async fn a_server_reader_that_stalls_holds_back_its_stream_only() {
    const SIZE: usize = 64 * 1024;
    let mut config = ServerConfig::default();
    config.http2.mode = Http2Mode::IfOffered;
    let server = WebSocketServer::bind_tls("127.0.0.1:0", config, None)
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{}/", server.local_addr().port());
    // The stalled WebSocket's reading starts when told; it counts what it then gets.
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        let mut resumed = Some(resumed);
        while let Some(accepted) = server.accept().await {
            let Ok((mut ws, request)) = accepted else {
                continue;
            };
            if request.uri().path() == "/stall" {
                let resumed = resumed.take().expect("one stalled stream");
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let _ = resumed.await;
                    let mut bytes = 0;
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Binary(data) = message {
                            bytes += data.len();
                            let _ = got_tx.send(bytes);
                        }
                    }
                });
            } else {
                tokio::spawn(async move {
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_binary() && ws.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });

    let config = client_config(Http2Mode::Required);
    let connection = within("h2c", Http2Connection::connect(&url, &config))
        .await
        .unwrap();
    let stall_url = format!("{url}stall");
    let (stalled, _) = within(
        "the stalled stream",
        connection.websocket(&stall_url, &config),
    )
    .await
    .unwrap();
    let (mut echoing, _) = within("the echoing stream", connection.websocket(&url, &config))
        .await
        .unwrap();

    // Send to the stalled stream until a send is held (bounded: 1,000 messages, 64 MB).
    let payload = vec![7u8; SIZE];
    let mut sent = 0;
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_millis(500), stalled.send_binary(&payload)).await
        {
            Ok(result) => {
                result.unwrap();
                sent += 1;
            }
            Err(_) => break,
        }
    }
    // Held within its window, h2's send buffer and the send queue (1 MiB by default).
    assert!(
        sent * SIZE < 4 * 1024 * 1024,
        "{sent} messages of {SIZE} B went to a reader that reads nothing"
    );

    // The other stream on the same connection is not held.
    for i in 0..50u8 {
        let data = vec![i; 16 * 1024];
        within("an echo", echoing.send_binary(&data)).await.unwrap();
        match within("the echo", echoing.next()).await {
            Some(Ok(Message::Binary(echo))) => assert_eq!(echo.as_ref(), data.as_slice()),
            other => panic!("expected the echo, got {other:?}"),
        }
    }

    // Reading again lets the held message and everything queued through.
    resume.send(()).unwrap();
    let held = tokio::spawn(async move {
        stalled.send_binary(&payload).await.unwrap();
        stalled
    });
    let stalled = within("the held send", held).await.unwrap();
    let expected = (sent + 1) * SIZE;
    let mut bytes = 0;
    while bytes < expected {
        bytes = within("what was held", got.recv()).await.unwrap();
    }
    assert_eq!(bytes, expected);
    drop(stalled);
}
