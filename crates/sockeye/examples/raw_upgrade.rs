//! Taking over an upgrade from your own HTTP handling (`ws`'s `handleUpgrade` with a raw
//! socket and the bytes already read, `head`): this server reads the request head
//! itself, answers plain HTTP requests, and hands upgrades to `sockeye::upgrade`.
//!
//! ```text
//! cargo run --example raw_upgrade            # then: sockeye connect ws://127.0.0.1:9400/ws
//! ```

use futures_util::StreamExt;
use sockeye::proto::bytes::BytesMut;
use sockeye::proto::handshake::server::parse_request;
use sockeye::{HeadLimits, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9400".into());
    let listener = TcpListener::bind(&addr).await?;
    println!(
        "raw_upgrade listening on http://{}/ (WebSocket echo at /ws)",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(handle(stream));
    }
}

async fn handle(mut stream: TcpStream) {
    // Your HTTP server's part: read the head (bounded by HeadLimits).
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
    let head = buf.split_off(len); // bytes after the head: the client's first frames, if any
    if request.uri().path() != "/ws" {
        let body = "hello from plain HTTP\n";
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        return;
    }
    // Hand the upgrade over: sockeye checks it and answers 101 or the error status.
    let Ok((mut ws, _request)) =
        sockeye::upgrade(stream, request, head, &ServerConfig::default()).await
    else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            break;
        }
    }
}
