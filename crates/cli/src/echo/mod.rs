//! `sockeye echo`: a bare echo server for conformance runs and benchmarks.
//!
//! It is the library's [`WebSocketServer`], on a current-thread tokio runtime by default
//! (`--threads N` for a multi-thread one), with a task per connection.
//!
//! Binary messages are forwarded piece by piece as they arrive (`deliver_fragments` +
//! `stream_frames`): a large message goes back out while it is still coming in, and is
//! never held whole. Each frame goes back as one frame of the same length: the pieces
//! carry what is left of their frame (`Fragment::rest`), so the header with the whole
//! length goes first. Text is echoed once the whole message has proven to be UTF-8.

use std::process::ExitCode;

use anyhow::Context as _;
use futures_util::StreamExt;
use sockeye::proto::bytes::BytesMut;
use sockeye::proto::Fragment;
use sockeye::{DataKind, Message, ServerConfig, WebSocket, WebSocketServer};

use crate::ServerArgs;

/// `sockeye echo` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Worker threads (1: a single-threaded runtime, as the benchmark harness expects).
    #[arg(long, default_value_t = 1, value_parser = parse_threads)]
    threads: usize,
    /// Accept permessage-deflate (RFC 7692) offers; off by default, as in ws.
    #[arg(long)]
    deflate: bool,
}

/// `--threads`: a whole number, at least 1.
fn parse_threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text}: a number of threads, at least 1, expected")),
    }
}

/// The server configuration.
fn config(args: &Args) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.websocket.max_payload = args.server.max_payload;
    config.handshake_timeout = args.server.handshake_timeout;
    config.client_tracking = false;
    config.websocket.deliver_fragments = true;
    config.websocket.stream_frames = true;
    if args.deflate {
        config.per_message_deflate = Some(sockeye::DeflateConfig::default());
    }
    config
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.server.serve_metrics()?;
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
    let config = config(&args);
    let tls = args.server.tls()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let server = WebSocketServer::bind_tls(args.server.listen, config, tls)
        .await
        .with_context(|| format!("cannot listen on {}", args.server.listen))?;
    println!(
        "sockeye echo listening on {scheme}://{}",
        server.local_addr()
    );
    while let Some(accepted) = server.accept().await {
        let Ok((ws, _request)) = accepted else {
            continue;
        };
        tokio::spawn(echo(ws));
    }
    Ok(ExitCode::SUCCESS)
}

async fn echo<S>(mut ws: WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut echo = Echo::default();
    while let Some(Ok(message)) = ws.next().await {
        // Data always comes as fragments here; pings and pongs are answered already.
        let Message::Fragment(piece) = message else {
            continue;
        };
        let Some(reply) = echo.reply(piece) else {
            continue;
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// What goes back for each piece of a data frame.
#[derive(Default)]
struct Echo {
    /// A text message arriving in several pieces, until it is complete. Boxed and made
    /// on first use: this is part of every idle connection.
    text: Option<Box<BytesMut>>,
}

impl Echo {
    /// The reply to `piece`: binary goes straight back (its buffer handed over, no copy)
    /// into the frame it came in; text once the whole message has arrived (and so was
    /// checked).
    fn reply(&mut self, piece: Fragment) -> Option<Message> {
        if piece.kind == DataKind::Binary {
            return Some(Message::Fragment(piece));
        }
        if piece.ends_message() && self.text.is_none() {
            return Some(Message::UncheckedText(piece.data));
        }
        let buffer = self.text.get_or_insert_default();
        buffer.extend_from_slice(&piece.data);
        if !piece.ends_message() {
            return None;
        }
        let whole = buffer.split().freeze();
        self.text = None;
        Some(Message::UncheckedText(whole))
    }
}
