//! tokio-tungstenite echo server for the side-by-side harness (BENCHMARKS.md, "Method").
//!
//! Restores the harness's missing `src/rust/src/bin/tt_echo.rs` (see its README.md);
//! bench/side_by_side.sh copies it there before building. Crate versions: the harness's
//! src/rust/Cargo.toml and Cargo.lock (tokio-tungstenite 0.30).
//!
//! usage: tt_echo PORT    (listens on 127.0.0.1:PORT)
//!
//! Current-thread tokio runtime, one task per connection, `accept_async` with the default
//! configuration, then `next()` / `send()`: every text or binary message is sent back as one
//! message. Pings and closes are answered by tungstenite itself.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: tt_echo PORT");
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(echo(stream));
    }
}

async fn echo(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(msg @ (Message::Binary(_) | Message::Text(_))) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            // Ping/Pong/Close: tungstenite queues the reply itself and flushes it on the next
            // read; after a close handshake `next()` returns None.
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
