//! One table of upgrade requests, good and bad, sent over loopback to every server front
//! end: `sockeye::accept` on a `TcpStream`, `WebSocketServer`, `sockeye::upgrade`,
//! `sockeye-hyper`, `sockeye-axum`, and `sockeye echo` as a process. They
//! all decide through the same server policy (`sockeye_proto::handshake::policy`), so
//! each row must get the same status line, body and handshake-relevant headers from
//! every front end. The library front ends share one `ServerConfig` with every hook
//! (each triggered by a marker header); the CLI has no path or hooks (only
//! `--deflate`), which the rows that need them say.
//!
//! It lives in the CLI crate because only an integration test of that crate can start
//! the `sockeye` binary; the adapter crates are dev-dependencies here.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response as AxumResponse;
use axum::Router;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sockeye::proto::handshake::server::parse_request;
use sockeye::{DeflateConfig, HeadLimits, Rejection, ServerConfig, VerifyInfo, WebSocketServer};
use sockeye_axum::WebSocketUpgrade;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;

mod common;
use common::STEP;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The headers a row's answers must agree on (names compared in lower case). Others,
/// such as hyper's `date`, are the HTTP server's own.
const RELEVANT: [&str; 11] = [
    "connection",
    "content-length",
    "content-type",
    "upgrade",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "retry-after",
    "x-why",
    "x-hook",
];

/// The library front ends' configuration: path `/ws`, permessage-deflate, and every hook,
/// each acting only on requests that carry its marker header.
fn hooked_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.path = Some("/ws".into());
    config.per_message_deflate = Some(DeflateConfig::default());
    config.should_handle = Some(Arc::new(|request: &Request<()>| {
        !request.headers().contains_key("x-decline")
    }));
    // Asynchronous, as a lookup would be.
    config.verify_client = Some(sockeye::verify_client_async(
        |info: VerifyInfo| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match info.origin.as_deref() {
                Some("https://evil.example") => Err(Rejection::status(403)
                    .reason("Origin Not Allowed")
                    .header("retry-after", "120")),
                _ => Ok(()),
            }
        },
    ));
    config.handle_protocols = Some(Arc::new(|offered: &[String], request: &Request<()>| {
        if request.headers().contains_key("x-hook") {
            offered.last().cloned()
        } else {
            offered.first().cloned()
        }
    }));
    config.headers_hook = Some(Arc::new(
        |headers: &mut HeaderMap, request: &Request<()>| {
            if request.headers().contains_key("x-hook") {
                headers.insert("x-hook", request.uri().path().parse().unwrap());
            }
        },
    ));
    config.on_client_error = Some(Arc::new(|error, request| {
        let custom = request.is_some_and(|r| r.headers().contains_key("x-custom"));
        custom.then(|| {
            let mut headers = HeaderMap::new();
            headers.insert("x-why", error.status().to_string().parse().unwrap());
            (
                StatusCode::IM_A_TEAPOT,
                headers,
                "no tea for you".to_owned(),
            )
        })
    }));
    config
}

/// Whether a row applies to `sockeye echo`.
#[derive(Clone, Copy, Debug)]
enum Cli {
    /// The same answer as every other front end.
    Same,
    /// The CLI cannot do this; why.
    NotApplicable(&'static str),
}

struct Row {
    name: &'static str,
    request: String,
    /// The status every front end answers with.
    status: u16,
    /// Text the body (or, for a 101, the headers) must contain.
    contains: &'static str,
    cli: Cli,
}

/// A valid request to `/ws` with `extra` header lines (each ending in CRLF), changed by
/// `replace`.
fn request(extra: &str, replace: (&str, &str)) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .replacen(replace.0, replace.1, 1)
}

fn rows() -> Vec<Row> {
    const NO_HOOKS: Cli = Cli::NotApplicable("sockeye echo has no hooks");
    let offer = "Sec-WebSocket-Protocol: chat, superchat\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let same = ("", "");
    vec![
        Row {
            name: "wrong path",
            request: request("", ("GET /ws", "GET /other")),
            status: 404,
            contains: "no WebSocket endpoint at this path",
            cli: Cli::NotApplicable("sockeye echo serves every path"),
        },
        Row {
            name: "bad method",
            request: request("", ("GET", "POST")),
            status: 405,
            contains: "expected GET",
            cli: Cli::Same,
        },
        Row {
            name: "missing Upgrade",
            request: request("", ("Upgrade: websocket\r\n", "")),
            status: 400,
            contains: "Upgrade",
            cli: Cli::Same,
        },
        Row {
            name: "bad Connection",
            request: request("", ("Connection: Upgrade", "Connection: keep-alive")),
            status: 400,
            contains: "Connection",
            cli: Cli::Same,
        },
        Row {
            name: "missing Host",
            request: request("", ("Host: localhost\r\n", "")),
            status: 400,
            contains: "Host",
            cli: Cli::Same,
        },
        Row {
            name: "bad version",
            request: request("", ("Version: 13", "Version: 12")),
            status: 426,
            contains: "expected 13",
            cli: Cli::Same,
        },
        Row {
            name: "bad key",
            request: request("", (KEY, "c2hvcnQ=")),
            status: 400,
            contains: "Sec-WebSocket-Key",
            cli: Cli::Same,
        },
        Row {
            name: "duplicate protocol",
            request: request("Sec-WebSocket-Protocol: chat, chat\r\n", same),
            status: 400,
            contains: "Sec-WebSocket-Protocol",
            cli: Cli::Same,
        },
        Row {
            name: "malformed deflate offer",
            request: request(
                "Sec-WebSocket-Extensions: permessage-deflate; x=1\r\n",
                same,
            ),
            status: 400,
            contains: "Sec-WebSocket-Extensions",
            cli: Cli::Same,
        },
        Row {
            name: "should_handle false",
            request: request("X-Decline: 1\r\n", same),
            status: 400,
            contains: "declined",
            cli: NO_HOOKS,
        },
        Row {
            name: "verify_client refuses with status, reason and header",
            request: request("Origin: https://evil.example\r\n", same),
            status: 403,
            contains: "Origin Not Allowed",
            cli: NO_HOOKS,
        },
        Row {
            name: "on_client_error custom response",
            request: request("X-Custom: 1\r\n", ("Version: 13", "Version: 12")),
            status: 418,
            contains: "no tea for you",
            cli: NO_HOOKS,
        },
        Row {
            name: "good request, default choices",
            request: request(offer, same),
            status: 101,
            contains: "permessage-deflate",
            cli: Cli::Same,
        },
        Row {
            name: "good request with handle_protocols and headers_hook",
            request: request(&format!("{offer}X-Hook: 1\r\n"), same),
            status: 101,
            contains: "x-hook",
            cli: NO_HOOKS,
        },
    ]
}

/// An answer, reduced to what the front ends must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status_line: String,
    /// The [`RELEVANT`] headers, lower-case names, values in order.
    headers: BTreeMap<String, Vec<String>>,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.status_line[9..12].parse().unwrap()
    }
}

/// Sends `request` on a new connection and reads the answer's head and (by its
/// Content-Length) body.
async fn exchange(addr: SocketAddr, request: &str) -> Answer {
    tokio::time::timeout(STEP, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut data = Vec::new();
        let head_end = loop {
            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF in head: {:?}", String::from_utf8_lossy(&data));
            data.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap().to_owned();
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in lines {
            let (name, value) = line.split_once(':').unwrap();
            let name = name.trim().to_ascii_lowercase();
            if RELEVANT.contains(&name.as_str()) {
                headers
                    .entry(name)
                    .or_default()
                    .push(value.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .map_or(0, |v| v[0].parse().unwrap());
        let mut body = data[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF in body");
            body.extend_from_slice(&chunk[..n]);
        }
        Answer {
            status_line,
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    })
    .await
    .expect("an answer in time")
}

/// Runs `serve` on each connection a new loopback listener accepts.
async fn listen<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// `sockeye::accept` on each accepted `TcpStream`.
async fn accept_front_end() -> SocketAddr {
    let config = Arc::new(hooked_config());
    listen(move |stream| {
        let config = config.clone();
        async move {
            // Keep the connection until the client goes away.
            if let Ok((mut ws, _)) = sockeye::accept(stream, &config).await {
                let _ = tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await;
            }
        }
    })
    .await
}

/// `WebSocketServer`, its connections taken and held.
async fn server_front_end() -> SocketAddr {
    let server = WebSocketServer::bind("127.0.0.1:0", hooked_config())
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Some(accepted) = server.accept().await {
            if let Ok((ws, _)) = accepted {
                open.push(ws);
            }
        }
    });
    addr
}

/// `sockeye::upgrade` after reading the head as another HTTP server would.
async fn upgrade_front_end() -> SocketAddr {
    let config = Arc::new(hooked_config());
    listen(move |mut stream| {
        let config = config.clone();
        async move {
            let mut buf = BytesMut::with_capacity(1024);
            let (request, len) = loop {
                match parse_request(&buf, &HeadLimits::default()) {
                    Ok(Some(parsed)) => break parsed,
                    Ok(None) => {}
                    Err(_) => return,
                }
                if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            };
            let rest = buf.split_off(len);
            if let Ok((mut ws, _)) = sockeye::upgrade(stream, request, rest, &config).await {
                let _ = tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await;
            }
        }
    })
    .await
}

/// A hyper server whose service hands every request to `sockeye_hyper::upgrade`.
async fn hyper_front_end() -> SocketAddr {
    let config = Arc::new(hooked_config());
    listen(move |stream| {
        let config = config.clone();
        async move {
            let service = service_fn(move |mut request: Request<hyper::body::Incoming>| {
                let config = config.clone();
                async move {
                    let response = match sockeye_hyper::upgrade(&mut request, &config).await {
                        Ok((response, upgrade)) => {
                            tokio::spawn(async move {
                                if let Ok(mut ws) = upgrade.await {
                                    let next = futures_util::StreamExt::next(&mut ws);
                                    let _ = tokio::time::timeout(STEP, next).await;
                                }
                            });
                            response.map(|_| Full::<Bytes>::default())
                        }
                        Err(error) => error.response(),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    })
    .await
}

/// An axum router whose fallback (so every path) takes `WebSocketUpgrade`.
async fn axum_front_end() -> SocketAddr {
    async fn handler(upgrade: WebSocketUpgrade) -> AxumResponse {
        upgrade
            .config(hooked_config())
            .on_upgrade(|mut ws| async move {
                let _ = tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await;
            })
            .await
    }
    let app = Router::new().fallback(handler);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `sockeye echo --deflate` as a child process (killed when dropped).
async fn cli_front_end() -> (SocketAddr, Child) {
    common::echo_process(&["--deflate"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_end_answers_every_request_alike() {
    let (cli_addr, _cli) = cli_front_end().await;
    let library = [
        ("accept", accept_front_end().await),
        ("WebSocketServer", server_front_end().await),
        ("upgrade", upgrade_front_end().await),
        ("sockeye-hyper", hyper_front_end().await),
        ("sockeye-axum", axum_front_end().await),
    ];
    for row in rows() {
        let (reference_name, reference_addr) = library[0];
        let reference = exchange(reference_addr, &row.request).await;
        let name = row.name;
        assert_eq!(reference.status(), row.status, "{name}: {reference:?}");
        let text = format!("{:?}{}", reference.headers, reference.body);
        assert!(text.contains(row.contains), "{name}: {reference:?}");
        if row.status != 101 {
            assert!(reference.body.ends_with('\n'), "{name}: {reference:?}");
        }
        let mut front_ends: Vec<(&str, SocketAddr)> = library[1..].to_vec();
        match row.cli {
            Cli::Same => front_ends.push(("sockeye echo", cli_addr)),
            Cli::NotApplicable(why) => eprintln!("{name}: not run on the CLI: {why}"),
        }
        for (front_end, addr) in front_ends {
            let answer = exchange(addr, &row.request).await;
            assert_eq!(
                answer, reference,
                "{name}: {front_end} differs from {reference_name}"
            );
        }
    }
}
