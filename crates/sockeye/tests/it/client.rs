//! Client options over real loopback sockets: redirects, a local address and an HTTP
//! CONNECT proxy, `finish_request` and `ws+unix:` URLs. Redirectors and
//! proxies are raw TCP servers written here; every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use futures_util::StreamExt;
use sockeye::proto::http::{self, HeaderMap, HeaderValue};
#[cfg(feature = "rustls")]
use sockeye::ServerStream;
use sockeye::{
    ClientConfig, Error, MaybeTlsStream, Message, ServerConfig, WebSocket, WebSocketServer,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::{read_head, server, within, STEP};

fn config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(STEP);
    config
}

fn following() -> ClientConfig {
    let mut config = config();
    config.follow_redirects = true;
    config
}

fn redirect(status: &str, location: &str) -> String {
    format!("HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
}

/// A raw HTTP server: answers its n-th connection with `responses[n]` (the last one
/// again after the end) and reports each request head.
async fn raw_server(responses: Vec<String>) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let head = read_head(&mut stream).await;
            let _ = heads.send(head);
            let response = &responses[n.min(responses.len() - 1)];
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (addr, rx)
}

async fn next_head(heads: &mut mpsc::UnboundedReceiver<String>) -> String {
    within("a request head", heads.recv())
        .await
        .expect("a request")
}

/// The header lines of a raw head, lowercased names.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn accept(server: &WebSocketServer) -> (WebSocket<TcpStream>, http::Request<()>) {
    within("accept", server.accept())
        .await
        .expect("server open")
        .expect("handshake")
}

async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> String {
    match within("a message", ws.next()).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

type Connected<S> = Result<(WebSocket<S>, http::Response<()>), Error>;

fn spawn_connect(url: &str, config: ClientConfig) -> JoinHandle<Connected<TcpStream>> {
    let url = url.to_owned();
    tokio::spawn(async move { sockeye::connect_with(&url, config).await })
}

fn spawn_connect_tls(url: &str, config: ClientConfig) -> JoinHandle<Connected<MaybeTlsStream>> {
    let url = url.to_owned();
    tokio::spawn(async move { sockeye::connect_maybe_tls_with(&url, config).await })
}

/// One message each way.
async fn exchange<C, S>(client: &mut WebSocket<C>, server: &mut WebSocket<S>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    client.send_text("ping from client").await.unwrap();
    assert_eq!(next_text(server).await, "ping from client");
    server.send_text("pong from server").await.unwrap();
    assert_eq!(next_text(client).await, "pong from server");
}

#[tokio::test]
async fn redirects_relative_then_absolute_http_mapped_to_ws() {
    let target = server(ServerConfig::default()).await;
    let port = target.local_addr().port();
    let (addr, mut heads) = raw_server(vec![
        redirect("302 Found", "hop2?a=b"),
        redirect(
            "301 Moved Permanently",
            &format!("http://127.0.0.1:{port}/final?x=1"),
        ),
    ])
    .await;
    let url = format!("ws://{addr}/dir/start");
    let connecting = spawn_connect_tls(&url, following());
    let (mut server_ws, request) = accept(&target).await;
    let (mut ws, response) = within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(response.status(), 101);
    assert!(next_head(&mut heads)
        .await
        .starts_with("GET /dir/start HTTP/1.1\r\n"));
    assert!(next_head(&mut heads)
        .await
        .starts_with("GET /dir/hop2?a=b HTTP/1.1\r\n"));
    assert_eq!(request.uri(), "/final?x=1");
    let final_url = format!("ws://127.0.0.1:{port}/final?x=1");
    assert_eq!(ws.url(), Some(final_url.as_str()));
    exchange(&mut ws, &mut server_ws).await;
}

#[tokio::test]
async fn credentials_survive_same_host_and_are_dropped_for_another_host() {
    let target = server(ServerConfig::default()).await;
    let port = target.local_addr().port();
    let (addr, mut heads) = raw_server(vec![
        redirect("307 Temporary Redirect", "/same"),
        redirect(
            "308 Permanent Redirect",
            &format!("ws://127.0.0.1:{port}/other"),
        ),
    ])
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut config = following();
    config
        .headers
        .insert(http::header::COOKIE, HeaderValue::from_static("c=1"));
    config
        .headers
        .insert("x-keep", HeaderValue::from_static("kept"));
    let log = seen.clone();
    config.redirect = Some(Arc::new(move |url: &str, headers: &mut HeaderMap| {
        log.lock().unwrap().push((
            url.to_owned(),
            headers.contains_key(http::header::AUTHORIZATION),
        ));
    }));
    let url = format!("ws://user:pw@{addr}/first");
    let connecting = spawn_connect(&url, config);
    let (mut server_ws, request) = accept(&target).await;
    let (mut ws, _) = within("connect", connecting).await.unwrap().unwrap();

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pw")
    );
    for expected in ["GET /first ", "GET /same "] {
        let head = next_head(&mut heads).await;
        assert!(head.starts_with(expected), "{head}");
        assert_eq!(
            header(&head, "authorization"),
            Some(basic.as_str()),
            "{head}"
        );
        assert_eq!(header(&head, "cookie"), Some("c=1"), "{head}");
        assert_eq!(header(&head, "x-keep"), Some("kept"), "{head}");
    }
    let headers = request.headers();
    assert!(
        !headers.contains_key(http::header::AUTHORIZATION),
        "{headers:?}"
    );
    assert!(!headers.contains_key(http::header::COOKIE), "{headers:?}");
    assert_eq!(headers["x-keep"], "kept");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (format!("ws://user:pw@{addr}/same"), true),
            (format!("ws://127.0.0.1:{port}/other"), false),
        ]
    );
    exchange(&mut ws, &mut server_ws).await;
}

#[tokio::test]
async fn the_redirect_hook_can_put_headers_back_and_drop_others() {
    let target = server(ServerConfig::default()).await;
    let port = target.local_addr().port();
    let (addr, _heads) = raw_server(vec![redirect(
        "302 Found",
        &format!("ws://localhost:{port}/elsewhere"),
    )])
    .await;
    let mut config = following();
    config
        .headers
        .insert(http::header::COOKIE, HeaderValue::from_static("session=42"));
    config
        .headers
        .insert("x-secret", HeaderValue::from_static("do not forward"));
    config.redirect = Some(Arc::new(|url: &str, headers: &mut HeaderMap| {
        assert!(url.starts_with("ws://localhost:"), "{url}");
        assert!(!headers.contains_key(http::header::COOKIE));
        headers.insert(http::header::COOKIE, HeaderValue::from_static("session=42"));
        headers.remove("x-secret");
    }));
    let url = format!("ws://{addr}/");
    let connecting = spawn_connect(&url, config);
    let (_server_ws, request) = accept(&target).await;
    within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(request.headers()[http::header::COOKIE], "session=42");
    assert!(!request.headers().contains_key("x-secret"));
}

#[tokio::test]
async fn too_many_redirects_is_an_error_and_not_following_is_unexpected_response() {
    let (addr, mut heads) = raw_server(vec![redirect("302 Found", "/loop")]).await;
    let url = format!("ws://{addr}/");
    let mut config = following();
    config.max_redirects = 3;
    let err = within("the error", sockeye::connect_with(&url, config))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Redirect(_)), "{err:?}");
    assert!(
        err.to_string().contains("Maximum redirects exceeded"),
        "{err}"
    );
    for _ in 0..4 {
        next_head(&mut heads).await;
    }
    assert!(heads.try_recv().is_err(), "no fifth request");

    // Default: not followed.
    let err = within("the error", sockeye::connect_with(&url, config_default()))
        .await
        .unwrap_err();
    match err {
        Error::UnexpectedResponse(response) => {
            assert_eq!(response.status(), 302);
            assert_eq!(response.headers()[http::header::LOCATION], "/loop");
        }
        other => panic!("{other:?}"),
    }

    // A 3xx without Location is not a redirect.
    let (addr, _heads) = raw_server(vec![
        "HTTP/1.1 303 See Other\r\nContent-Length: 2\r\n\r\nno".into(),
    ])
    .await;
    let err = within(
        "the error",
        sockeye::connect_with(&format!("ws://{addr}/"), following()),
    )
    .await
    .unwrap_err();
    match err {
        Error::UnexpectedResponse(response) => {
            assert_eq!(response.status(), 303);
            assert_eq!(response.body().as_ref(), b"no");
        }
        other => panic!("{other:?}"),
    }
}

fn config_default() -> ClientConfig {
    let config = config();
    assert!(!config.follow_redirects);
    assert_eq!(config.max_redirects, 10);
    config
}

#[tokio::test]
async fn finish_request_adds_headers_the_server_sees() {
    let target = server(ServerConfig::default()).await;
    let url = format!("ws://{}/n3", target.local_addr());
    let mut config = config();
    config
        .headers
        .insert("x-before", HeaderValue::from_static("1"));
    config.finish_request = Some(Arc::new(|url: &str, headers: &mut HeaderMap| {
        assert!(headers.contains_key("x-before"));
        headers.insert("x-finished", HeaderValue::from_str(url).unwrap());
        headers.remove("x-before");
    }));
    let connecting = spawn_connect(&url, config);
    let (_server_ws, request) = accept(&target).await;
    within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(request.headers()["x-finished"], url.as_str());
    assert!(!request.headers().contains_key("x-before"));
}

/// A one-shot HTTP CONNECT proxy: reports the CONNECT head, answers `answer`, and if it
/// is a 200 tunnels both ways to the requested address.
async fn connect_proxy(answer: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let head = read_head(&mut client).await;
        let authority = head.split(' ').nth(1).unwrap_or("").to_owned();
        let _ = heads.send(head);
        if !answer.starts_with("HTTP/1.1 200") {
            let _ = client.write_all(answer.as_bytes()).await;
            return;
        }
        let mut upstream = TcpStream::connect(authority).await.unwrap();
        client.write_all(answer.as_bytes()).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    (addr, rx)
}

#[tokio::test]
async fn ws_through_an_http_connect_proxy_with_basic_auth() {
    let target = server(ServerConfig::default()).await;
    let (proxy, mut heads) = connect_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
    let mut config = config();
    config.proxy = Some(format!("http://al%40ice:s3cret@{proxy}"));
    let url = format!("ws://{}/via-proxy", target.local_addr());
    let connecting = spawn_connect(&url, config);
    let (mut server_ws, request) = accept(&target).await;
    let (mut ws, _) = within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(request.uri(), "/via-proxy");
    let head = next_head(&mut heads).await;
    let authority = target.local_addr().to_string();
    assert!(
        head.starts_with(&format!("CONNECT {authority} HTTP/1.1\r\n")),
        "{head}"
    );
    assert_eq!(header(&head, "host"), Some(authority.as_str()));
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("al@ice:s3cret")
    );
    assert_eq!(header(&head, "proxy-authorization"), Some(basic.as_str()));
    exchange(&mut ws, &mut server_ws).await;
}

#[tokio::test]
#[cfg(feature = "rustls")]
async fn wss_through_an_http_connect_proxy() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = sockeye::tls::server_config_from_pem(
        cert.cert.pem().as_bytes(),
        cert.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let target: WebSocketServer<ServerStream> =
        WebSocketServer::bind_tls("127.0.0.1:0", ServerConfig::default(), Some(tls))
            .await
            .unwrap();
    let (proxy, mut heads) = connect_proxy("HTTP/1.1 200 OK\r\n\r\n").await;
    let mut config = config();
    config.proxy = Some(format!("http://{proxy}/"));
    config.tls.dangerous_accept_any_certificate = true;
    let url = format!("wss://localhost:{}/secure", target.local_addr().port());
    let connecting = spawn_connect_tls(&url, config);
    let (mut server_ws, request) = within("accept", target.accept()).await.unwrap().unwrap();
    let (mut ws, _) = within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(request.uri(), "/secure");
    let head = next_head(&mut heads).await;
    assert!(head.starts_with("CONNECT localhost:"), "{head}");
    assert_eq!(header(&head, "proxy-authorization"), None);
    exchange(&mut ws, &mut server_ws).await;
}

#[tokio::test]
async fn a_proxy_refusal_is_a_proxy_error() {
    let (proxy, _heads) = connect_proxy("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
    let mut config = config();
    config.proxy = Some(format!("http://{proxy}"));
    let err = within(
        "the error",
        sockeye::connect_with("ws://127.0.0.1:9/", config),
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, Error::Proxy(_)), "{err:?}");
    assert!(err.to_string().contains("407"), "{err}");
}

#[tokio::test]
async fn an_unreachable_proxy_is_a_proxy_error_naming_it() {
    // A port nothing listens on: bound, then closed.
    let unused = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = config();
    config.proxy = Some(format!("http://{unused}"));
    let err = within(
        "the error",
        sockeye::connect_with("ws://127.0.0.1:9/", config),
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, Error::Proxy(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot reach the proxy {unused}")),
        "{text}"
    );
}

#[tokio::test]
async fn local_address_is_the_peer_address_the_server_sees() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/local", listener.local_addr().unwrap());
    let local: IpAddr = "127.0.0.2".parse().unwrap();
    let mut config = config();
    config.local_address = Some(local);
    let connecting = spawn_connect(&url, config);
    let (stream, peer) = within("accept", listener.accept()).await.unwrap();
    assert_eq!(peer.ip(), local);
    let (mut server_ws, request) =
        within("upgrade", sockeye::accept(stream, &ServerConfig::default()))
            .await
            .unwrap();
    let (mut ws, _) = within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(request.uri(), "/local");
    exchange(&mut ws, &mut server_ws).await;

    // An IPv6 local address cannot reach an IPv4-only target.
    let mut config = self::config();
    config.local_address = Some("::1".parse().unwrap());
    let err = within("the error", sockeye::connect_with(&url, config))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn ws_unix_urls_connect_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("sockeye-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-c1.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let url = format!("ws+unix:{}:/chat?room=1", path.display());
    let connecting = spawn_connect_tls(&url, config());
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let (mut server_ws, request) =
        within("upgrade", sockeye::accept(stream, &ServerConfig::default()))
            .await
            .unwrap();
    let (mut ws, response) = within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(request.uri(), "/chat?room=1");
    assert_eq!(request.headers()[http::header::HOST], "localhost");
    assert_eq!(ws.url(), Some(url.as_str()));
    exchange(&mut ws, &mut server_ws).await;

    // The default request path is `/`.
    let url = format!("ws+unix:{}", path.display());
    let connecting = spawn_connect_tls(&url, ClientConfig::default());
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let (_server_ws, request) =
        within("upgrade", sockeye::accept(stream, &ServerConfig::default()))
            .await
            .unwrap();
    within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(request.uri(), "/");

    // connect() (TCP only) refuses it.
    let err = sockeye::connect(&url).await.unwrap_err();
    assert!(matches!(err, Error::Url(_)), "{err:?}");
    drop(listener);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}
