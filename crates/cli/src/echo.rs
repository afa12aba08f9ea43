//! `sockeye echo`: a bare echo server for conformance runs and benchmarks.

use std::process::ExitCode;

use futures_util::StreamExt;
use sockeye::{ServerConfig, WebSocketServer};

use crate::ServerArgs;

/// `sockeye echo` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Worker threads (1: a single-threaded runtime, as the benchmark harness expects).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Accept permessage-deflate (RFC 7692) offers; off by default, as in ws.
    #[arg(long)]
    deflate: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig::default();
    config.websocket.max_payload = args.server.max_payload;
    config.client_tracking = false;
    if args.deflate {
        config.per_message_deflate = Some(sockeye::DeflateConfig::default());
    }
    let tls = args.server.tls()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let server = WebSocketServer::bind_tls(args.server.listen, config, tls).await?;
    println!(
        "sockeye echo listening on {scheme}://{}",
        server.local_addr()
    );
    while let Some(accepted) = server.accept().await {
        let Ok((mut ws, _request)) = accepted else {
            continue;
        };
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                let data = message.is_text() || message.is_binary();
                if data && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}
