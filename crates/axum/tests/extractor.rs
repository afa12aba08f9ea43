//! sockeye clients upgrading through an axum router over loopback TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use futures_util::StreamExt;
use sockeye::proto::HandshakeError;
use sockeye::{ClientConfig, DeflateConfig, Error, Message, ServerConfig};
use sockeye_axum::{WebSocket, WebSocketUpgrade};
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
async fn echo(mut ws: WebSocket) {
    while let Some(Ok(message)) = ws.next().await {
        if message.as_text() == Some("info") {
            let info = format!("{:?} {}", ws.protocol(), ws.extensions());
            let _ = ws.send_text(&info).await;
        } else if message.is_text() || message.is_binary() {
            let _ = ws.send(message).await;
        }
    }
}

/// `/ws`: defaults. `/chat`: subprotocols and deflate. `/`: plain text.
async fn server() -> SocketAddr {
    async fn plain_ws(upgrade: WebSocketUpgrade) -> Response {
        upgrade.on_upgrade(echo).await
    }
    async fn chat(upgrade: WebSocketUpgrade) -> Response {
        assert_eq!(upgrade.request().uri().path(), "/chat");
        let mut config = ServerConfig::default();
        config.per_message_deflate = Some(DeflateConfig::default());
        upgrade
            .config(config)
            .protocols(["superchat", "chat"])
            .on_upgrade(echo)
            .await
    }
    async fn elsewhere(upgrade: WebSocketUpgrade) -> Response {
        let mut config = ServerConfig::default();
        config.path = Some("/somewhere-else".into());
        upgrade.config(config).on_upgrade(echo).await
    }
    /// Over HTTP/1.1 (GET) or HTTP/2 (CONNECT): says the request's version first.
    async fn versioned(upgrade: WebSocketUpgrade) -> Response {
        let version = format!("{:?}", upgrade.request().version());
        upgrade
            .on_upgrade(|ws| async move {
                if ws.send_text(&version).await.is_ok() {
                    echo(ws).await;
                }
            })
            .await
    }
    let app = Router::new()
        .route("/", get(|| async { "plain page" }))
        .route("/any", any(versioned))
        .route("/ws", get(plain_ws))
        .route("/chat", get(chat))
        .route("/elsewhere", get(elsewhere));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
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
        let addr = server().await;
        let url = format!("ws://{addr}/ws");
        // The client offers deflate; the default config does not enable it.
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
        ws.close(None).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn negotiates_subprotocol_and_deflate() {
    bounded(async {
        let addr = server().await;
        let url = format!("ws://{addr}/chat");
        // The server prefers superchat, but picks the first of the client's offers it
        // speaks.
        let client = client_config(&["other", "chat", "superchat"], true);
        let (mut ws, _) = sockeye::connect_with(&url, client).await.unwrap();
        assert_eq!(ws.protocol(), Some("chat"));
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
            "Some(\"chat\") permessage-deflate"
        } else {
            "Some(\"chat\") "
        };
        assert!(info.starts_with(expected), "{info}");
        let big = "compress me ".repeat(10_000);
        ws.send_text(&big).await.unwrap();
        assert_eq!(next(&mut ws).await.as_text(), Some(big.as_str()));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        ws.send_binary(&data).await.unwrap();
        assert_eq!(next(&mut ws).await.as_bytes(), data);
        ws.close(None).await.unwrap();

        // No offer in the server's list: the 101 names no subprotocol, which a client
        // that offered some refuses (as `ws` does).
        let client = client_config(&["other"], false);
        let error = sockeye::connect_with(&url, client).await.unwrap_err();
        assert!(
            matches!(error, Error::Handshake(HandshakeError::InvalidSubprotocol)),
            "{error:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn bad_upgrades_are_rejected() {
    bounded(async {
        let addr = server().await;

        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let answer = raw(addr, &upgrade_request((key, ""))).await;
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
        let body = "unsupported Sec-WebSocket-Version: expected 13\n";
        assert!(answer.ends_with(body), "{answer}");

        let answer = raw(addr, &upgrade_request(("GET /ws", "GET /elsewhere"))).await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn plain_http_still_served() {
    bounded(async {
        let addr = server().await;
        let request = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let answer = raw(addr, request).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("plain page"), "{answer}");
    })
    .await;
}

/// A config with every hook, each triggered by a marker in the request.
fn hooked_config() -> ServerConfig {
    use std::sync::Arc;

    use axum::http::Request;

    let mut config = ServerConfig::default();
    config.path = Some("/hooked".into());
    config.per_message_deflate = Some(DeflateConfig::default());
    config.should_handle = Some(Arc::new(|request: &Request<()>| {
        !request.headers().contains_key("x-decline")
    }));
    config.verify_client = Some(sockeye::verify_client_async(
        |info: sockeye::VerifyInfo| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
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
        headers.insert("x-hook", request.uri().path().parse().unwrap());
    }));
    config.on_client_error = Some(Arc::new(|error, request| {
        let custom = request.is_some_and(|r| r.headers().contains_key("x-custom"));
        custom.then(|| {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-why", error.status().to_string().parse().unwrap());
            (http::StatusCode::IM_A_TEAPOT, headers, "no tea".to_owned())
        })
    }));
    config
}

/// Every hook of the `ServerConfig` runs through the extractor as through
/// `sockeye::accept`; the handler is the router's fallback, so every path reaches it.
#[tokio::test]
async fn every_hook_is_honoured() {
    bounded(async {
        async fn hooked(upgrade: WebSocketUpgrade) -> Response {
            upgrade.config(hooked_config()).on_upgrade(echo).await
        }
        let app = Router::new().fallback(hooked);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let request = |replace: (&str, &str)| {
            upgrade_request(("GET /ws", "GET /hooked")).replace(replace.0, replace.1)
        };

        // headers_hook, handle_protocols and deflate on the 101.
        let client = client_config(&["chat", "superchat"], true);
        let url = format!("ws://{addr}/hooked");
        let (mut ws, response) = sockeye::connect_with(&url, client).await.unwrap();
        assert_eq!(response.headers()["x-hook"], "/hooked");
        assert_eq!(ws.protocol(), Some("superchat"));
        assert_eq!(
            ws.extensions().starts_with("permessage-deflate"),
            cfg!(feature = "deflate")
        );
        ws.send_text("hello").await.unwrap();
        assert_eq!(next(&mut ws).await.as_text(), Some("hello"));
        ws.close(None).await.unwrap();

        // should_handle: 400.
        let answer = raw(addr, &request(("\r\n\r\n", "\r\nX-Decline: 1\r\n\r\n"))).await;
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
        let answer = raw(addr, &request(("\r\n\r\n", evil))).await;
        assert!(
            answer.starts_with("HTTP/1.1 403 Origin Not Allowed\r\n"),
            "{answer}"
        );
        assert!(answer.contains("retry-after: 120\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nOrigin Not Allowed\n"), "{answer}");

        // on_client_error: a custom answer to a failed check, or the default.
        let answer = raw(
            addr,
            &request(("Version: 13\r\n", "Version: 12\r\nX-Custom: 1\r\n")),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 418 I'm a teapot\r\n"),
            "{answer}"
        );
        assert!(answer.contains("x-why: 426\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nno tea\n"), "{answer}");
        let answer = raw(addr, &request(("Version: 13", "Version: 12"))).await;
        assert!(
            answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{answer}"
        );

        // The path comes first: a bad request elsewhere is a 404, not a 405.
        let answer = raw(addr, &request(("GET /hooked", "POST /other"))).await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn http2_extended_connect_through_axum_serve() {
    use sockeye::http2::{Http2Connection, Http2Mode};
    bounded(async {
        let addr = server().await;
        let mut config = client_config(&["chat"], false);
        config.http2.mode = Http2Mode::Required;
        // axum::serve with its http2 feature takes h2c with prior knowledge and enables
        // the extended CONNECT.
        let url = format!("ws://{addr}/any");
        let connection = Http2Connection::connect(&url, &config).await.unwrap();
        let (mut first, response) = connection.websocket(&url, &config).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(first.protocol(), Some("chat"));
        let (mut second, _) = connection.websocket(&url, &config).await.unwrap();
        for ws in [&mut first, &mut second] {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "HTTP/2.0"),
                other => panic!("expected the version, got {other:?}"),
            }
            ws.send_text("over h2").await.unwrap();
            match ws.next().await {
                Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "over h2"),
                other => panic!("expected the echo, got {other:?}"),
            }
        }
        first.close(None).await.unwrap();
        second.send_text("still open").await.unwrap();
        match second.next().await {
            Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "still open"),
            other => panic!("expected the echo, got {other:?}"),
        }
        // HTTP/1.1 on the same route and port.
        let (mut ws, response) = sockeye::connect_with(&url, client_config(&[], false))
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        assert_eq!(next(&mut ws).await.as_text(), Some("HTTP/1.1"));
    })
    .await;
}
