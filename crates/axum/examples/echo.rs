//! An axum router with a WebSocket echo on `/ws` and a plain page on `/`.
//!
//! `cargo run -p sockeye-axum --example axum_echo`, then
//! `sockeye connect ws://127.0.0.1:3000/ws`.

use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use sockeye::{DeflateConfig, ServerConfig};
use sockeye_axum::WebSocketUpgrade;

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    let mut config = ServerConfig::default();
    config.per_message_deflate = Some(DeflateConfig::default());
    upgrade
        .config(config)
        .on_upgrade(|mut ws| async move {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    let _ = ws.send(message).await;
                }
            }
        })
        .await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(|| async { "hello from axum\n" }))
        .route("/ws", get(ws));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
