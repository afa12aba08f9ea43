//! `sockeye`: serve a demo page with echo and chat, run a bare echo server, or connect
//! to a WebSocket server interactively.

#![forbid(unsafe_code)]

/// mimalloc: size classes with no per-block header and naturally aligned blocks, so
/// tokio's 128-byte-aligned task and I/O allocations leave no holes (glibc's memalign
/// leaves about 400 bytes of free fragments per idle connection; BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod connect;
mod echo;
mod line_editor;
mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use clap::{Parser, Subcommand};

/// Sockeye: a WebSocket server and client.
#[derive(Debug, Parser)]
#[command(
    name = "sockeye",
    version,
    about,
    after_help = "With no command, `sockeye` runs `sockeye serve`: the demo page, echo and \
                  chat at http://127.0.0.1:8080/ (Ctrl-C to stop).\n\
                  Try: sockeye connect ws://127.0.0.1:8080/echo\n\
                  RUST_LOG=sockeye=debug logs each connection (path, HTTP version, close) on stderr."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the demo page at / with a WebSocket echo (/echo) and chat room (/chat); the
    /// default command.
    Serve(serve::Args),
    /// A bare echo server: every text or binary message goes back as it came, on any path.
    Echo(echo::Args),
    /// Connect to a WebSocket server: typed lines are sent as text, messages are printed.
    #[command(after_help = connect::HELP)]
    Connect(connect::Args),
    /// Load an echo server: connections in a closed loop; prints rate and latency.
    Bench(bench::Args),
}

/// Options shared by the servers.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The address to listen on: IP:PORT or HOST:PORT (a name such as localhost is
    /// resolved; its first IPv4 address is used, if any).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    listen: SocketAddr,
    /// The largest message accepted, in bytes (0: no limit).
    #[arg(long, default_value_t = sockeye::proto::limits::DEFAULT_MAX_PAYLOAD)]
    max_payload: usize,
    /// Serve TLS (wss://, https://) with this certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Time a client gets to send its upgrade request, in seconds (answered 408 after).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    handshake_timeout: Duration,
    /// Serve the library's counters (connections, messages, bytes, close codes,
    /// handshake failures ...) in Prometheus' text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// `--listen`: an address, or a host name and port resolved to the name's first IPv4
/// address (else its first address): `localhost` is then 127.0.0.1, as clients that
/// try 127.0.0.1 expect, rather than whichever family the resolver lists first.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("{text}: expected IP:PORT or HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text}: the name has no address"))
}

/// A positive number of seconds.
fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|e| format!("{text}: {e}"))
        }
        _ => Err(format!("{text}: a positive number of seconds expected")),
    }
}

impl ServerArgs {
    /// Starts the Prometheus endpoint of --metrics, if given, before any connection
    /// registers its counters.
    fn serve_metrics(&self) -> anyhow::Result<()> {
        let Some(addr) = self.metrics else {
            return Ok(());
        };
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("--metrics {addr}: cannot serve metrics"))?;
        eprintln!("sockeye: metrics at http://{addr}/metrics");
        Ok(())
    }

    /// The TLS configuration from --tls-cert and --tls-key, if given.
    fn tls(&self) -> anyhow::Result<Option<Arc<sockeye::rustls::ServerConfig>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let cert_pem = read(cert, "--tls-cert")?;
        let key_pem = read(key, "--tls-key")?;
        let config = sockeye::tls::server_config_from_pem(&cert_pem, &key_pem)
            .context("--tls-cert/--tls-key")?;
        Ok(Some(config))
    }
}

/// Reads a file named by `flag`.
fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

/// With `RUST_LOG` set (targets and levels, as `sockeye=debug` or `info,sockeye=trace`), the
/// library's `tracing` output on stderr: a `websocket` span per connection (path, HTTP
/// version, subprotocol, extensions, close code and who closed) with its events, refused
/// upgrades and protocol errors.
fn log_to_stderr() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let Ok(spec) = std::env::var("RUST_LOG") else {
        return;
    };
    match spec.parse::<tracing_subscriber::filter::Targets>() {
        Ok(filter) => {
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false);
            tracing_subscriber::registry()
                .with(layer)
                .with(filter)
                .init();
        }
        Err(e) => eprintln!("sockeye: RUST_LOG={spec:?} ignored: {e}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log_to_stderr();
    let result = match cli
        .command
        .unwrap_or(Command::Serve(serve::Args::default()))
    {
        Command::Serve(args) => serve::run(args),
        Command::Echo(args) => echo::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("sockeye: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
