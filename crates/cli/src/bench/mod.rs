//! `sockeye bench`: a closed-loop WebSocket load generator (the client side of an echo
//! benchmark): each connection sends a binary message, waits for its echo, and repeats,
//! optionally paced to a total rate. With `--fanout`, a fan-out benchmark of `sockeye
//! serve`'s chat room instead ([`fanout`]).
//!
//! The connections are the library's async client, a task each on one current-thread
//! tokio runtime.

mod fanout;
mod idle;
mod soak;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use sockeye::{ClientConfig, DataKind, Message, Target};

/// `sockeye bench` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The echo server's URL (ws:// or wss://).
    url: String,
    /// Connections, each with one message in flight (with --http2: each with --streams
    /// WebSockets).
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: usize,
    /// WebSockets over HTTP/2 (RFC 8441): each of --connections is an HTTP/2 connection
    /// (h2 in ALPN for wss://, prior knowledge for ws://) carrying --streams WebSockets.
    #[arg(long)]
    http2: bool,
    /// With --http2: WebSockets per connection, each with one message in flight.
    #[arg(long, value_name = "N", default_value_t = 1)]
    streams: usize,
    /// Message size in bytes.
    #[arg(long, short = 's', default_value_t = 1024)]
    size: usize,
    /// Measured time, in seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Pace all connections together to this many messages per second (0: as fast as
    /// the echoes come back).
    #[arg(long, short = 'r', default_value_t = 0.0)]
    rate: f64,
    /// Offer permessage-deflate (off: benchmark the framing, not zlib).
    #[arg(long)]
    deflate: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// For wss://: trust the CA certificates in FILE (PEM) instead of the built-in roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// For wss://: accept any server certificate without checking it (DANGEROUS: the
    /// connection is not authenticated).
    #[arg(long, short = 'k')]
    insecure: bool,
    /// Fan-out instead of echo: URL is a `sockeye serve` chat room (`/chat`); one
    /// publisher says --rate lines per second there for --duration, and --connections
    /// subscribers (on the --subscribe URLs in turn) measure each line's delay.
    #[arg(long)]
    fanout: bool,
    /// With --fanout: a chat room URL for subscribers (repeat it to spread them over
    /// several `sockeye serve --redis` processes); default: URL.
    #[arg(long, value_name = "URL", requires = "fanout")]
    subscribe: Vec<String>,
    /// Soak instead of throughput: each connection sends sequence-numbered messages of
    /// random length up to --size and checks every echo is the next one expected,
    /// reconnecting at random (--reconnect-rate); exits 1 unless every message is
    /// accounted for and none mismatched.
    #[arg(long, conflicts_with_all = ["fanout", "idle"])]
    soak: bool,
    /// With --soak: reconnects per second across all connections, half clean (close
    /// handshake), half abrupt (the socket closed with messages in flight).
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0, requires = "soak")]
    reconnect_rate: f64,
    /// With --soak: the seed of the message lengths and bodies and of the reconnects.
    #[arg(long, default_value_t = 1, requires = "soak")]
    seed: u64,
    /// With --soak: messages in flight per connection at most.
    #[arg(long, default_value_t = 4, requires = "soak")]
    window: usize,
    /// Idle connections instead of traffic: open N connections (handshake done),
    /// report how long that took, and hold them for --duration seconds.
    #[arg(long, value_name = "N", conflicts_with = "fanout")]
    idle: Option<usize>,
    /// With --idle: bind the connections to this many loopback source addresses
    /// (127.0.0.2, 127.0.0.3 ...), each with its own range of ephemeral ports
    /// (0: one per 5,000 connections).
    #[arg(long, value_name = "K", default_value_t = 0, requires = "idle")]
    sources: usize,
}

impl Args {
    /// The closed loops: one per WebSocket.
    fn loops(&self) -> usize {
        if self.http2 {
            self.connections * self.streams
        } else {
            self.connections
        }
    }
}

/// What one connection measured, or all together.
struct Outcome {
    messages: u64,
    /// Connections that failed (each ends at its first error).
    errors: u64,
    /// Why: the reason's words and how many connections failed so.
    reasons: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            messages: 0,
            errors: 0,
            reasons: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    /// Counts a failed connection and why.
    fn failed(&mut self, reason: impl Into<String>) {
        self.errors += 1;
        *self.reasons.entry(reason.into()).or_default() += 1;
    }

    /// Adds what another connection measured.
    fn add(&mut self, other: Outcome) {
        self.messages += other.messages;
        self.errors += other.errors;
        for (reason, count) in other.reasons {
            *self.reasons.entry(reason).or_default() += count;
        }
        self.latency_us.add(&other.latency_us).expect("same bounds");
    }

    /// Each reason with its count.
    fn reasons(&self) -> Vec<(String, u64)> {
        self.reasons.iter().map(|(r, n)| (r.clone(), *n)).collect()
    }

    /// Counts an echo that arrived whole, if its message went out in the measured window.
    fn echoed(&mut self, plan: &Plan, sent: Instant, arrived: Instant) {
        if sent >= plan.measure_from {
            self.messages += 1;
            let micros = (arrived - sent).as_micros().max(1) as u64;
            let _ = self.latency_us.record(micros.min(60_000_000));
        }
    }
}

/// What a received message is to the closed loop.
enum Received {
    /// Echo bytes; `fin` on the last of the echo.
    Echo { len: usize, fin: bool },
    /// A ping or pong (the protocol core answers pings).
    Control,
    /// Anything else: a close, text, or no echo of ours.
    Other,
}

impl Received {
    fn of(message: &Message) -> Received {
        match message {
            // Echoes are taken piece by piece as they arrive: never assembled in memory.
            Message::Fragment(piece) if piece.kind == DataKind::Binary => Received::Echo {
                len: piece.data.len(),
                fin: piece.ends_message(),
            },
            Message::Binary(data) => Received::Echo {
                len: data.len(),
                fin: true,
            },
            Message::Ping(_) | Message::Pong(_) => Received::Control,
            _ => Received::Other,
        }
    }
}

/// The protocol settings: echoes counted as they arrive, not kept.
fn echo_config(size: usize) -> sockeye::proto::Config {
    let mut config = sockeye::proto::Config::default();
    config.max_payload = size.max(1024) * 2;
    config.deliver_fragments = true;
    config.stream_frames = true;
    config
}

/// The load and its clock.
#[derive(Clone)]
struct Plan {
    payload: Arc<[u8]>,
    /// Paced: the time between two messages of one connection.
    interval: Option<Duration>,
    warmup: Duration,
    duration: Duration,
    /// Set by [`Plan::start_clock`] once the connections are up.
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// This process's CPU seconds at `start` (connecting is not counted).
    cpu_start: Option<f64>,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let now = Instant::now();
        Plan {
            payload: (0..args.size)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into(),
            interval: (args.rate > 0.0)
                .then(|| Duration::from_secs_f64(args.loops() as f64 / args.rate)),
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            start: now,
            measure_from: now,
            end: now,
            cpu_start: None,
        }
    }

    /// Starts the warm-up now (after connecting): messages sent from `measure_from` on
    /// are counted, none is sent from `end` on.
    fn start_clock(&mut self) {
        self.cpu_start = cpu_seconds();
        self.start = Instant::now();
        self.measure_from = self.start + self.warmup;
        self.end = self.measure_from + self.duration;
    }
}

/// What the run shows while it goes: on a terminal (stderr), a bar of the elapsed time
/// over the total (warm-up and measured) with the live rate, redrawn every 250 ms;
/// otherwise a plain line every second.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
    total: Duration,
    measure_from: Instant,
    every: Duration,
    next: Instant,
    last: (Instant, u64),
}

impl Progress {
    fn new(plan: &Plan) -> Progress {
        use std::io::IsTerminal;
        let total = plan.end.saturating_duration_since(plan.start);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("[{bar:30.cyan/blue}] {msg}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            bar
        });
        let every = if bar.is_some() {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        let now = Instant::now();
        Progress {
            bar,
            start: plan.start,
            total,
            measure_from: plan.measure_from,
            every,
            next: now + every,
            last: (now, 0),
        }
    }

    fn next_tick(&self) -> Instant {
        self.next
    }

    /// Shows the time and the rate since the last refresh, if one is due; `count`:
    /// echoes so far.
    fn tick(&mut self, now: Instant, count: u64) {
        if now < self.next {
            return;
        }
        let rate = (count - self.last.1) as f64 / now.duration_since(self.last.0).as_secs_f64();
        let phase = if now < self.measure_from {
            "warming up"
        } else {
            "measuring"
        };
        let elapsed = now.saturating_duration_since(self.start).min(self.total);
        let line = format!(
            "{:.1} s / {:.1} s  {phase}  {rate:.0} msgs/s",
            elapsed.as_secs_f64(),
            self.total.as_secs_f64()
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(line);
            }
            None => eprintln!("sockeye bench: {line}"),
        }
        self.last = (now, count);
        self.next = now + self.every;
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    anyhow::ensure!(
        args.http2 || args.streams == 1,
        "--streams is for --http2 (WebSockets per HTTP/2 connection)"
    );
    anyhow::ensure!(
        !(args.http2 && args.fanout),
        "--http2 is for the echo benchmark"
    );
    anyhow::ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be positive"
    );
    let target = Target::parse(&args.url)?;
    if (args.ca.is_some() || args.insecure) && !target.tls {
        anyhow::bail!("--ca and --insecure are for wss:// URLs");
    }
    if args.insecure {
        eprintln!(
            "sockeye: warning: --insecure: the server's certificate is not checked \
             (dangerous_accept_any_certificate)"
        );
    }
    // Every mode takes the URL and TLS checks above.
    if args.fanout || args.soak || args.idle.is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let complete = if args.soak {
            runtime.block_on(soak::run(&args))?
        } else if let Some(n) = args.idle {
            runtime.block_on(idle::run(&args, n))?
        } else {
            runtime.block_on(fanout::run(&args))?
        };
        return Ok(if complete {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut plan = Plan::new(&args);
    let total = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(bench(&args, &mut plan))?;
    let cpu = cpu_seconds()
        .zip(plan.cpu_start)
        .map(|(end, start)| end - start);
    report(
        &args,
        &total,
        cpu.map(|c| c / (args.duration + args.warmup)),
    );
    Ok(if total.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A task per connection over the library's client.
async fn bench(args: &Args, plan: &mut Plan) -> anyhow::Result<Outcome> {
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(Duration::from_secs(10));
    config.websocket = echo_config(args.size);
    if !args.deflate {
        config.per_message_deflate = None;
    }
    if let Some(ca) = &args.ca {
        config.tls.ca_pem = Some(crate::read(ca, "--ca")?);
    }
    config.tls.dangerous_accept_any_certificate = args.insecure;
    let mut sockets = Vec::with_capacity(args.loops());
    for _ in 0..args.connections {
        if !args.http2 {
            let (ws, _) = sockeye::connect_maybe_tls_with(&args.url, config.clone())
                .await
                .with_context(|| format!("cannot connect to {}", args.url))?;
            sockets.push(ws);
            continue;
        }
        let connection = sockeye::http2::Http2Connection::connect(&args.url, &config)
            .await
            .with_context(|| format!("cannot connect to {} over HTTP/2", args.url))?;
        for _ in 0..args.streams {
            let (ws, _) = connection
                .websocket(&args.url, &config)
                .await
                .with_context(|| format!("cannot open a WebSocket stream to {}", args.url))?;
            sockets.push(ws);
        }
    }
    plan.start_clock();
    let live = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|ws| tokio::spawn(connection(ws, plan.clone(), live.clone())))
        .collect();

    let mut progress = Progress::new(plan);
    while Instant::now() < plan.end {
        tokio::time::sleep_until(progress.next_tick().into()).await;
        progress.tick(Instant::now(), live.load(Ordering::Relaxed));
    }
    progress.finish();

    let mut total = Outcome::new();
    for task in tasks {
        total.add(task.await?);
    }
    Ok(total)
}

/// One connection's closed loop: send, wait for the echo, record the round trip.
async fn connection(
    mut ws: sockeye::WebSocket<sockeye::MaybeTlsStream>,
    plan: Plan,
    live: Arc<AtomicU64>,
) -> Outcome {
    let mut outcome = Outcome::new();
    let mut pace = plan.interval.map(|i| {
        let mut timer = tokio::time::interval(i);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    // One deadline for the whole loop (a server that stops echoing ends it), rather than
    // a timer per message: registering and cancelling one per round trip cost more
    // client CPU than the WebSocket work.
    let give_up = tokio::time::Instant::from_std(plan.end + Duration::from_secs(5));
    let run = async {
        // Unpaced, the next message goes out right after an echo arrives: the clock read
        // that ends one round trip starts the next (one read per message, as `wsload`).
        let mut now = Instant::now();
        loop {
            if let Some(pace) = pace.as_mut() {
                pace.tick().await;
                now = Instant::now();
            }
            let sent = now;
            if sent >= plan.end {
                return;
            }
            if let Err(e) = ws.send_binary(&plan.payload).await {
                outcome.failed(format!("sending failed: {e}"));
                return;
            }
            let mut received = 0;
            let echo = loop {
                let message = match ws.next().await {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => break Err(format!("the connection failed: {e}")),
                    None => break Err("the server closed the connection".to_owned()),
                };
                match Received::of(&message) {
                    Received::Echo { len, fin } => {
                        received += len;
                        if fin {
                            break Ok(received);
                        }
                    }
                    Received::Control => {}
                    Received::Other => break Err(not_an_echo(&message)),
                }
            };
            match echo {
                Ok(len) if len == plan.payload.len() => {
                    live.fetch_add(1, Ordering::Relaxed);
                    now = Instant::now();
                    outcome.echoed(&plan, sent, now);
                }
                Ok(len) => {
                    outcome.failed(format!(
                        "the echo had {len} bytes, not the {} sent",
                        plan.payload.len()
                    ));
                    return;
                }
                Err(reason) => {
                    outcome.failed(reason);
                    return;
                }
            }
        }
    };
    if tokio::time::timeout_at(give_up, run).await.is_err() {
        outcome.failed("the server did not echo (nothing within 5 s after the end of the run)");
    }
    let _ = ws.close(None).await;
    outcome
}

/// Why a message that is not the echo ends the closed loop.
fn not_an_echo(message: &Message) -> String {
    match message {
        Message::Close(Some(frame)) => format!(
            "the server closed the connection ({} {})",
            frame.code.0,
            frame.code.description()
        ),
        Message::Close(None) => "the server closed the connection".to_owned(),
        Message::Fragment(piece) if piece.kind == DataKind::Text => {
            "the server answered with text: it did not echo the binary message".to_owned()
        }
        Message::Text(_) | Message::UncheckedText(_) => {
            "the server answered with text: it did not echo the binary message".to_owned()
        }
        _ => "the server did not echo: another message came instead".to_owned(),
    }
}

fn report(args: &Args, total: &Outcome, cpu_share: Option<f64>) {
    let per_s = total.messages as f64 / args.duration;
    let mb_per_s = per_s * args.size as f64 / 1e6;
    let h = &total.latency_us;
    if args.json {
        let json = serde_json::json!({
            "url": args.url,
            "connections": args.connections,
            "http2": args.http2,
            "streams_per_connection": args.streams,
            "size": args.size,
            "duration_s": args.duration,
            "messages": total.messages,
            "msgs_per_s": per_s.round(),
            "mb_per_s": (mb_per_s * 100.0).round() / 100.0,
            "latency_us": {
                "p50": h.value_at_quantile(0.5),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
                "mean": (h.mean() * 10.0).round() / 10.0,
            },
            "errors": total.errors,
            "error_reasons": total
                .reasons()
                .into_iter()
                .map(|(reason, count)| serde_json::json!({"reason": reason, "count": count}))
                .collect::<Vec<_>>(),
            "client_cpu_percent": cpu_share.map(|c| (c * 1000.0).round() / 10.0),
        });
        println!("{json}");
        return;
    }
    let mut rows = vec![
        ("messages", total.messages.to_string(), ""),
        ("rate", format!("{per_s:.0}"), "msgs/s"),
        ("throughput", format!("{mb_per_s:.2}"), "MB/s"),
        ("latency p50", h.value_at_quantile(0.5).to_string(), "µs"),
        ("latency p99", h.value_at_quantile(0.99).to_string(), "µs"),
        (
            "latency p99.9",
            h.value_at_quantile(0.999).to_string(),
            "µs",
        ),
        ("latency max", h.max().to_string(), "µs"),
        ("latency mean", format!("{:.1}", h.mean()), "µs"),
    ];
    if let Some(cpu) = cpu_share {
        let per_message = if total.messages > 0 {
            cpu * (args.duration + args.warmup) / total.messages as f64 * 1e6
        } else {
            0.0
        };
        rows.push(("client CPU", format!("{:.0}", cpu * 100.0), "% of one core"));
        rows.push(("CPU per message", format!("{per_message:.2}"), "µs"));
    }
    rows.push(("errors", total.errors.to_string(), ""));
    let connections = if args.http2 {
        format!(
            "{} HTTP/2 connections x {} streams",
            args.connections, args.streams
        )
    } else {
        format!("{} connections", args.connections)
    };
    println!(
        "sockeye bench {}: {connections} x {} B, {:.1} s measured after {:.1} s warm-up",
        args.url, args.size, args.duration, args.warmup
    );
    print!("{}", table(&rows));
    for (reason, count) in total.reasons() {
        println!("  {count} x {reason}");
    }
}

/// The summary table: names left-aligned, figures right-aligned, then their units, each
/// column as wide as its widest cell.
fn table(rows: &[(&str, String, &str)]) -> String {
    let width = |cell: &dyn Fn(&(&str, String, &str)) -> usize| rows.iter().map(cell).max();
    let names = width(&|r| r.0.chars().count()).unwrap_or(0);
    let figures = width(&|r| r.1.chars().count()).unwrap_or(0);
    let mut out = String::new();
    for (name, figure, unit) in rows {
        let line = format!("  {name:<names$}  {figure:>figures$} {unit}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// User + system CPU seconds of this process (Linux /proc; `None` elsewhere).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux.
}
