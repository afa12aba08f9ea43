//! The README's server, as a benchmark peer: `WebSocketServer::bind`, a task per
//! connection, and `while let Some(Ok(m)) = ws.next().await { ws.send(m).await }`, with
//! whole messages and the default configuration. Only the public API of `sockeye`; the
//! global allocator is the system's, as in a program that chooses none.
//!
//! ```text
//! cargo run --release -p sockeye --example echo_server -- --port 9001 --runtime current
//! cargo run --release -p sockeye --example echo_server -- --listen 127.0.0.1:9001 --runtime multi
//! ```
//! `--runtime current` runs tokio's current-thread runtime, `multi` (the default) its
//! multi-thread runtime with the default number of workers (the CPUs the process may run
//! on: one under `taskset -c 0`, as the benchmark harness starts servers). `--deflate`
//! accepts permessage-deflate offers (`ws`'s `perMessageDeflate: true`), as the Autobahn
//! run of the library server (`conformance/autobahn.sh`) needs.

use futures_util::StreamExt;
use sockeye::{DeflateConfig, ServerConfig, WebSocketServer};

const USAGE: &str =
    "usage: echo_server [--port N | --listen ADDR] [--runtime current|multi] [--deflate]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = String::from("127.0.0.1:9001");
    let mut multi = true;
    let mut config = ServerConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(USAGE);
        match arg.as_str() {
            "--port" => listen = format!("127.0.0.1:{}", value()?.parse::<u16>()?),
            "--listen" => listen = value()?,
            "--runtime" => {
                multi = match value()?.as_str() {
                    "current" => false,
                    "multi" => true,
                    _ => return Err(USAGE.into()),
                }
            }
            "--deflate" => config.per_message_deflate = Some(DeflateConfig::default()),
            _ => return Err(USAGE.into()),
        }
    }
    let runtime = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()?;
    runtime.block_on(serve(listen, config))
}

async fn serve(listen: String, config: ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let server = WebSocketServer::bind(listen, config).await?;
    println!("echo_server listening on ws://{}", server.local_addr());
    while let Some(accepted) = server.accept().await {
        let Ok((mut ws, _request)) = accepted else {
            continue;
        };
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    let _ = ws.send(message).await;
                }
            }
        });
    }
    Ok(())
}
