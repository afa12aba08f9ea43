//! sockeye clients upgrading through a hyper server over loopback TCP.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sockeye::{ClientConfig, DeflateConfig, Message, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

/// Runs `test` within [`LIMIT`].
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("test timed out");
}

/// Echoes text and binary; answers the text `info` with the agreed protocol and
/// extensions as the server sees them.
async fn echo(mut ws: sockeye_hyper::HyperWebSocket) {
    while let Some(Ok(message)) = ws.next().await {
        if message.as_text() == Some("info") {
            let info = format!("{:?} {}", ws.protocol(), ws.extensions());
            let _ = ws.send_text(&info).await;
        } else if message.is_text() || message.is_binary() {
            let _ = ws.send(message).await;
        }
    }
}

async fn handle(
    mut request: Request<Incoming>,
    config: Arc<ServerConfig>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/" {
        return Ok(Response::new(Full::from("plain page")));
    }
    match sockeye_hyper::upgrade(&mut request, &config).await {
        Ok((response, upgrade)) => {
            tokio::spawn(async move {
                if let Ok(ws) = upgrade.await {
                    echo(ws).await;
                }
            });
            Ok(response.map(|_| Full::default()))
        }
        Err(error) => Ok(error.response()),
    }
}

/// A hyper server on an ephemeral loopback port.
async fn server(config: ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Arc::new(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let config = config.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(request, config.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn client_config(protocols: &[&str], deflate: bool) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.protocols = protocols.iter().map(|p| p.to_string()).collect();
    config.handshake_timeout = Some(LIMIT);
    if !deflate {
        config.per_message_deflate = None;
    }
    config
}

async fn next(ws: &mut sockeye::WebSocket<TcpStream>) -> Message {
    ws.next().await.expect("a message").expect("no error")
}

/// Sends a raw request and reads the whole answer (the server closes after it).
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8(answer).unwrap()
}

fn upgrade_request(replace: (&str, &str)) -> String {
    "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .replace(replace.0, replace.1)
}

#[tokio::test]
async fn echoes_text_and_binary() {
    bounded(async {
        let addr = server(ServerConfig::default()).await;
        let url = format!("ws://{addr}/ws");
        // The client offers deflate; this server does not enable it.
        let (mut ws, response) = sockeye::connect_with(&url, client_config(&["a", "b"], true))
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        assert_eq!(ws.protocol(), Some("a"), "default: the client's first");
        assert_eq!(ws.extensions(), "");

        ws.send_text("hello").await.unwrap();
        assert_eq!(next(&mut ws).await.as_text(), Some("hello"));
        ws.send_binary(&[0, 1, 2, 255]).await.unwrap();
        let message = next(&mut ws).await;
        assert!(message.is_binary());
        assert_eq!(message.as_bytes(), [0, 1, 2, 255]);
        ws.send_text("info").await.unwrap();
        assert_eq!(next(&mut ws).await.as_text(), Some("Some(\"a\") "));
        ws.close(None).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn negotiates_subprotocol_and_deflate() {
    bounded(async {
        let mut config = ServerConfig::default();
        config.per_message_deflate = Some(DeflateConfig::default());
        config.handle_protocols = Some(Arc::new(|offered: &[String], _: &Request<()>| {
            offered.iter().find(|p| *p == "superchat").cloned()
        }));
        let addr = server(config).await;
        let url = format!("ws://{addr}/ws");
        let client = client_config(&["chat", "superchat"], true);
        let (mut ws, _) = sockeye::connect_with(&url, client).await.unwrap();
        assert_eq!(ws.protocol(), Some("superchat"));
        // Without the `deflate` feature compression is declined, and all else works.
        assert_eq!(
            ws.extensions().starts_with("permessage-deflate"),
            cfg!(feature = "deflate"),
            "{}",
            ws.extensions()
        );

        ws.send_text("info").await.unwrap();
        let info = next(&mut ws).await;
        let info = info.as_text().unwrap();
        let expected = if cfg!(feature = "deflate") {
            "Some(\"superchat\") permessage-deflate"
        } else {
            "Some(\"superchat\") "
        };
        assert!(info.starts_with(expected), "{info}");
        // Above the 1024-byte threshold, so compressed both ways.
        let big = "compress me ".repeat(10_000);
        ws.send_text(&big).await.unwrap();
        assert_eq!(next(&mut ws).await.as_text(), Some(big.as_str()));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        ws.send_binary(&data).await.unwrap();
        assert_eq!(next(&mut ws).await.as_bytes(), data);
        ws.close(None).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn bad_upgrades_get_their_status() {
    bounded(async {
        let addr = server(ServerConfig::default()).await;

        let answer = raw(
            addr,
            &upgrade_request(("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Sec-WebSocket-Key"), "{answer}");

        let answer = raw(addr, &upgrade_request(("Version: 13", "Version: 12"))).await;
        assert!(
            answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{answer}"
        );
        assert!(answer.contains("sec-websocket-version: 13\r\n"), "{answer}");
        assert!(
            answer.ends_with("unsupported Sec-WebSocket-Version: expected 13\n"),
            "{answer}"
        );

        let answer = raw(addr, &upgrade_request(("GET", "POST"))).await;
        assert!(
            answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{answer}"
        );
    })
    .await;
}

#[tokio::test]
async fn config_path_is_404_elsewhere() {
    bounded(async {
        let mut config = ServerConfig::default();
        config.path = Some("/ws".into());
        let addr = server(config).await;
        let answer = raw(addr, &upgrade_request(("GET /ws", "GET /other"))).await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let url = format!("ws://{addr}/ws");
        let (ws, _) = sockeye::connect_with(&url, client_config(&[], false))
            .await
            .unwrap();
        ws.close(None).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn plain_http_still_served() {
    bounded(async {
        let addr = server(ServerConfig::default()).await;
        let answer = raw(
            addr,
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("plain page"), "{answer}");
    })
    .await;
}

/// Every hook of the `ServerConfig` runs through hyper as through `sockeye::accept`:
/// `should_handle`, `verify_client` (asynchronous, seeing the origin), `headers_hook`,
/// `on_client_error`, `handle_protocols` and permessage-deflate.
#[tokio::test]
async fn every_hook_is_honoured() {
    bounded(async {
        let mut config = ServerConfig::default();
        config.path = Some("/ws".into());
        config.per_message_deflate = Some(DeflateConfig::default());
        config.should_handle = Some(Arc::new(|request: &Request<()>| {
            !request.headers().contains_key("x-decline")
        }));
        config.verify_client = Some(sockeye::verify_client_async(
            |info: sockeye::VerifyInfo| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!info.secure);
                match info.origin.as_deref() {
                    Some("https://evil.example") => Err(sockeye::Rejection::status(403)
                        .reason("Origin Not Allowed")
                        .header("retry-after", "120")),
                    _ => Ok(()),
                }
            },
        ));
        config.handle_protocols = Some(Arc::new(|offered: &[String], _: &Request<()>| {
            offered.last().cloned()
        }));
        config.headers_hook = Some(Arc::new(|headers, request| {
            let path = request.uri().path().parse().unwrap();
            headers.insert("x-hook", path);
        }));
        config.on_client_error = Some(Arc::new(|error, request| {
            let custom = request.is_some_and(|r| r.headers().contains_key("x-custom"));
            custom.then(|| {
                let mut headers = http::HeaderMap::new();
                headers.insert("x-why", error.status().to_string().parse().unwrap());
                (http::StatusCode::IM_A_TEAPOT, headers, "no tea".to_owned())
            })
        }));
        let addr = server(config).await;

        // headers_hook, handle_protocols and deflate on the 101.
        let client = client_config(&["chat", "superchat"], true);
        let url = format!("ws://{addr}/ws");
        let (mut ws, response) = sockeye::connect_with(&url, client).await.unwrap();
        assert_eq!(response.headers()["x-hook"], "/ws");
        assert_eq!(ws.protocol(), Some("superchat"));
        assert_eq!(
            ws.extensions().starts_with("permessage-deflate"),
            cfg!(feature = "deflate")
        );
        ws.send_text("hello").await.unwrap();
        assert_eq!(next(&mut ws).await.as_text(), Some("hello"));
        ws.close(None).await.unwrap();

        // should_handle: 400.
        let answer = raw(
            addr,
            &upgrade_request(("\r\n\r\n", "\r\nX-Decline: 1\r\n\r\n")),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with("the server declined the upgrade\n"),
            "{answer}"
        );

        // verify_client: its status, reason phrase, headers and body.
        let evil = "\r\nOrigin: https://evil.example\r\n\r\n";
        let answer = raw(addr, &upgrade_request(("\r\n\r\n", evil))).await;
        assert!(
            answer.starts_with("HTTP/1.1 403 Origin Not Allowed\r\n"),
            "{answer}"
        );
        assert!(answer.contains("retry-after: 120\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nOrigin Not Allowed\n"), "{answer}");

        // on_client_error: a custom answer to a failed check, or the default.
        let custom = upgrade_request(("Version: 13\r\n", "Version: 12\r\nX-Custom: 1\r\n"));
        let answer = raw(addr, &custom).await;
        assert!(
            answer.starts_with("HTTP/1.1 418 I'm a teapot\r\n"),
            "{answer}"
        );
        assert!(answer.contains("x-why: 426\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nno tea\n"), "{answer}");
        let answer = raw(addr, &upgrade_request(("Version: 13", "Version: 12"))).await;
        assert!(
            answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{answer}"
        );

        // The path comes first: a bad request elsewhere is a 404, not a 405.
        let answer = raw(addr, &upgrade_request(("GET /ws", "POST /other"))).await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    })
    .await;
}

/// The fields of every `websocket` span a subscriber saw, as recorded.
#[derive(Clone, Default)]
struct Spans(Arc<std::sync::Mutex<Vec<std::collections::BTreeMap<String, String>>>>);

struct Fields<'a>(&'a mut std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "websocket" {
            let mut fields = std::collections::BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            fields.insert("span id".into(), id.into_u64().to_string());
            self.0.lock().unwrap().push(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let id = id.into_u64().to_string();
        for fields in self.0.lock().unwrap().iter_mut() {
            if fields.get("span id") == Some(&id) {
                values.record(&mut Fields(fields));
            }
        }
    }
}

/// A connection upgraded through sockeye-hyper gets the same `websocket` span as one of
/// sockeye's own servers: with the request's path and HTTP version, what was agreed, and
/// at the end the close code and who closed.
#[tokio::test]
async fn the_connection_span_has_the_path_and_version() {
    use tracing_subscriber::layer::SubscriberExt;
    // Run alone, in a process of its own (this binary again): `tracing` caches per call
    // site whether any subscriber is interested, and a subscriber set for this thread only
    // can miss a span whose call site another test's thread reached at the same moment.
    const ALONE: &str = "SOCKEYE_HYPER_SPAN_ALONE";
    if std::env::var_os(ALONE).is_none() {
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "the_connection_span_has_the_path_and_version",
                "--exact",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(LIMIT, child).await.unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("test result: ok. 1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    // This test's runtime has one thread: the server's tasks run under the subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    bounded(async {
        let addr = server(ServerConfig::default()).await;
        let url = format!("ws://{addr}/traced?x=1");
        let config = client_config(&["chat"], false);
        let (mut ws, _) = sockeye::connect_with(&url, config).await.unwrap();
        ws.send_text("hi").await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("hi"));
        ws.close(Some(sockeye::CloseFrame::new(1000, "done")))
            .await
            .unwrap();
        while ws.next().await.is_some() {}
        // The server's side records how it ended once its reader sees the close.
        for _ in 0..200 {
            let done = spans.0.lock().unwrap().iter().any(|f| {
                f.get("role").map(String::as_str) == Some("server") && f.contains_key("closed_by")
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let spans = spans.0.lock().unwrap();
    let server = spans
        .iter()
        .find(|f| f.get("role").map(String::as_str) == Some("server"))
        .unwrap_or_else(|| panic!("no server span: {spans:?}"));
    assert_eq!(server["path"], "/traced", "{server:?}");
    assert_eq!(server["http"], "HTTP/1.1", "{server:?}");
    assert_eq!(server["protocol"], "chat", "{server:?}");
    assert_eq!(server["close_code"], "1000", "{server:?}");
    assert_eq!(server["closed_by"], "peer", "{server:?}");
}
