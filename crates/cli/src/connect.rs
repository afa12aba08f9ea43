//! `sockeye connect`: an interactive client, like wscat.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use sockeye::{ClientConfig, CloseCode, CloseFrame, Error, Message};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::read;

/// `sockeye connect` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server URL, e.g. ws://127.0.0.1:8080/echo, wss://example.com/ or
    /// ws+unix:/path/to.sock:/request/path (a Unix socket).
    url: String,
    /// A subprotocol to offer (repeat for several).
    #[arg(long = "protocol", short = 'p')]
    protocols: Vec<String>,
    /// An extra request header, "Name: value" (repeat for several).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The Origin header.
    #[arg(long, short = 'o')]
    origin: Option<String>,
    /// Give up if the connection and handshake take longer, in seconds.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// The largest message accepted, in bytes (0: no limit).
    #[arg(long, default_value_t = sockeye::proto::limits::DEFAULT_MAX_PAYLOAD)]
    max_payload: usize,
    /// Do not offer permessage-deflate compression.
    #[arg(long)]
    no_deflate: bool,
    /// For wss://: trust the CA certificates in FILE (PEM) instead of the built-in roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// For wss://: present this client certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// For wss://: accept any server certificate without checking it (DANGEROUS: the
    /// connection is not authenticated).
    #[arg(long, short = 'k')]
    insecure: bool,
    /// Tunnel through this HTTP proxy with CONNECT: http://[user:pass@]host:port.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Connect from this local IP address.
    #[arg(long, value_name = "IP")]
    local_address: Option<std::net::IpAddr>,
    /// Follow 3xx redirects (Authorization and Cookie are dropped for another host).
    #[arg(long)]
    follow_redirects: bool,
    /// The most redirects followed with --follow-redirects.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_redirects: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(session(args))
}

fn config(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::default();
    config.protocols = args.protocols.clone();
    config.origin = args.origin.clone();
    config.handshake_timeout = Some(Duration::from_secs(args.handshake_timeout));
    config.websocket.max_payload = args.max_payload;
    if args.no_deflate {
        config.per_message_deflate = None;
    }
    if let Some(ca) = &args.ca {
        config.tls.ca_pem = Some(read(ca, "--ca")?);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config.tls.cert_pem = Some(read(cert, "--cert")?);
        config.tls.key_pem = Some(read(key, "--key")?);
    }
    if args.insecure {
        eprintln!(
            "sockeye: warning: --insecure: the server's certificate is not checked \
             (dangerous_accept_any_certificate); anyone on the path can read and change \
             this connection"
        );
        config.tls.dangerous_accept_any_certificate = true;
    }
    config.proxy = args.proxy.clone();
    config.local_address = args.local_address;
    config.follow_redirects = args.follow_redirects;
    config.max_redirects = args.max_redirects;
    if args.follow_redirects {
        config.redirect = Some(std::sync::Arc::new(|url: &str, _: &mut _| {
            eprintln!("redirected to {url}");
        }));
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?}: expected \"Name: value\""))?;
        let name: sockeye::proto::http::HeaderName = name
            .trim()
            .parse()
            .with_context(|| format!("invalid header name in {header:?}"))?;
        let value = value
            .trim()
            .parse()
            .with_context(|| format!("invalid header value in {header:?}"))?;
        config.headers.append(name, value);
    }
    Ok(config)
}

async fn session(args: Args) -> anyhow::Result<ExitCode> {
    let config = config(&args)?;
    let (ws, response) = match sockeye::connect_maybe_tls_with(&args.url, config).await {
        Ok(ok) => ok,
        Err(Error::UnexpectedResponse(response)) => {
            let status = response.status();
            let body = String::from_utf8_lossy(response.body());
            eprintln!(
                "sockeye: error: unexpected server response: {} {}{}{}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                if body.trim().is_empty() { "" } else { ": " },
                body.trim()
            );
            return Ok(ExitCode::from(2));
        }
        // The URL error names the URL already.
        Err(e @ Error::Url(_)) => return Err(e.into()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot connect to {}", args.url)))
        }
    };
    let mut stdout = tokio::io::stdout();
    let protocol = ws
        .protocol()
        .map(|p| format!(" (subprotocol {p})"))
        .unwrap_or_default();
    let extensions = match ws.extensions() {
        "" => String::new(),
        e => format!(" ({e})"),
    };
    let status = response.status().as_u16();
    eprintln!("connected to {} [{status}]{protocol}{extensions}", args.url);
    let (writer, mut reader) = ws.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut code = ExitCode::SUCCESS;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                Some(line) => writer.send_text(&line).await?,
                None => {
                    stdin_open = false;
                    writer.close(Some(CloseFrame::new(CloseCode::NORMAL_CLOSURE, ""))).await?;
                }
            },
            message = reader.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    stdout.write_all(format!("< {text}\n").as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::UncheckedText(data) | Message::Binary(data))) => {
                    stdout.write_all(format!("< [binary, {} bytes]\n", data.len()).as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Fragment(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(f) => eprintln!("disconnected ({} {})", f.code.0, f.reason),
                        None => eprintln!("disconnected (1005)"),
                    }
                }
                Some(Err(e)) => {
                    eprintln!("sockeye: error: {e}");
                    code = ExitCode::FAILURE;
                }
                None => break,
            },
        }
    }
    Ok(code)
}
