//! `sockeye bench`: a closed-loop WebSocket load generator (the client side of an echo
//! benchmark): each connection sends a binary message, waits for its echo, and repeats,
//! optionally paced to a total rate. With `--fanout`, a fan-out benchmark of `sockeye
//! serve`'s chat room instead ([`fanout`]).
//!
//! Two engines drive the connections: the event loop ([`event_loop`], the default for
//! plain `ws://`), `mio` straight over the protocol core, and the library's async client
//! on tokio (`--engine tokio`, and for `wss://`, `ws+unix:` and `--deflate`).

mod event_loop;
mod fanout;

/// The blocking opening handshake on a connected stream, for the echo loop's tests.
#[cfg(test)]
pub(crate) use event_loop::upgrade;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use sockeye::{ClientConfig, DataKind, Message, Target};

use crate::Engine;

/// `sockeye bench` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The echo server's URL (ws:// or wss://).
    url: String,
    /// Connections, each with one message in flight.
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: usize,
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
    /// What drives the connections: `loop` (one thread, mio over the protocol core; plain
    /// ws:// without --deflate), `tokio` (the library's async client), or `auto` (loop
    /// where it can).
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    engine: Engine,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Fan-out instead of echo: URL is a `sockeye serve` chat room (`/chat`); one
    /// publisher says --rate lines per second there for --duration, and --connections
    /// subscribers (on the --subscribe URLs in turn) measure each line's delay.
    #[arg(long)]
    fanout: bool,
    /// With --fanout: a chat room URL for subscribers (repeat it to spread them over
    /// several `sockeye serve --redis` processes); default: URL.
    #[arg(long, value_name = "URL", requires = "fanout")]
    subscribe: Vec<String>,
}

/// What one connection measured, or all together.
struct Outcome {
    messages: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            messages: 0,
            errors: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
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

/// The protocol settings of both engines: echoes counted as they arrive, not kept.
fn echo_config(size: usize) -> sockeye::proto::Config {
    let mut config = sockeye::proto::Config::default();
    config.max_payload = size.max(1024) * 2;
    config.deliver_fragments = true;
    config.stream_frames = true;
    config
}

/// What every engine runs: the load and its clock.
#[derive(Clone)]
struct Plan {
    url: String,
    connections: usize,
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
            url: args.url.clone(),
            connections: args.connections,
            payload: (0..args.size)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into(),
            interval: (args.rate > 0.0)
                .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate)),
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

/// The spinner with the live rate, refreshed every 250 ms.
struct Progress {
    bar: indicatif::ProgressBar,
    measure_from: Instant,
    next: Instant,
    last: (Instant, u64),
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(250);

    fn new(plan: &Plan) -> Progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("template"),
        );
        let now = Instant::now();
        Progress {
            bar,
            measure_from: plan.measure_from,
            next: now + Self::EVERY,
            last: (now, 0),
        }
    }

    fn next_tick(&self) -> Instant {
        self.next
    }

    /// Shows the rate since the last refresh, if one is due; `count`: echoes so far.
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
        self.bar
            .set_message(format!("{phase}: {rate:>10.0} msgs/s"));
        self.bar.tick();
        self.last = (now, count);
        self.next = now + Self::EVERY;
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be positive"
    );
    if args.fanout {
        let complete = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(fanout::run(&args))?;
        return Ok(if complete {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let target = Target::parse(&args.url)?;
    let looped = event_loop::supports(&target, args.deflate);
    let use_loop = args
        .engine
        .use_loop(looped, "--engine loop drives plain ws:// without --deflate")?;
    let mut plan = Plan::new(&args);
    let total = if use_loop {
        event_loop::run(&mut plan, &target)?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(bench(&args, &mut plan))?
    };
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

/// The tokio engine: a task per connection over the library's client.
async fn bench(args: &Args, plan: &mut Plan) -> anyhow::Result<Outcome> {
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(Duration::from_secs(10));
    config.websocket = echo_config(args.size);
    if !args.deflate {
        config.per_message_deflate = None;
    }
    let mut sockets = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (ws, _) = sockeye::connect_maybe_tls_with(&args.url, config.clone())
            .await
            .with_context(|| format!("cannot connect to {}", args.url))?;
        sockets.push(ws);
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
        let outcome = task.await?;
        total.messages += outcome.messages;
        total.errors += outcome.errors;
        total
            .latency_us
            .add(&outcome.latency_us)
            .expect("same bounds");
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
            if ws.send_binary(&plan.payload).await.is_err() {
                outcome.errors += 1;
                return;
            }
            let mut received = 0;
            let echo = loop {
                let Some(Ok(message)) = ws.next().await else {
                    break None;
                };
                match Received::of(&message) {
                    Received::Echo { len, fin } => {
                        received += len;
                        if fin {
                            break Some(received);
                        }
                    }
                    Received::Control => {}
                    Received::Other => break None,
                }
            };
            match echo {
                Some(len) if len == plan.payload.len() => {
                    live.fetch_add(1, Ordering::Relaxed);
                    now = Instant::now();
                    outcome.echoed(&plan, sent, now);
                }
                _ => {
                    outcome.errors += 1;
                    return;
                }
            }
        }
    };
    if tokio::time::timeout_at(give_up, run).await.is_err() {
        outcome.errors += 1;
    }
    let _ = ws.close(None).await;
    outcome
}

fn report(args: &Args, total: &Outcome, cpu_share: Option<f64>) {
    let per_s = total.messages as f64 / args.duration;
    let mb_per_s = per_s * args.size as f64 / 1e6;
    let h = &total.latency_us;
    if args.json {
        let json = serde_json::json!({
            "url": args.url,
            "connections": args.connections,
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
            "client_cpu_percent": cpu_share.map(|c| (c * 1000.0).round() / 10.0),
        });
        println!("{json}");
        return;
    }
    println!(
        "sockeye bench {}: {} connections x {} B, {:.1} s",
        args.url, args.connections, args.size, args.duration
    );
    println!(
        "  messages  {:>12}   {:>10.0} msgs/s   {:.2} MB/s",
        total.messages, per_s, mb_per_s
    );
    println!(
        "  latency   p50 {} µs   p99 {} µs   p999 {} µs   max {} µs",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    if let Some(cpu) = cpu_share {
        let per_message = if total.messages > 0 {
            cpu * (args.duration + args.warmup) / total.messages as f64 * 1e6
        } else {
            0.0
        };
        println!(
            "  client    {:.0}% of one core, {per_message:.2} µs CPU per message",
            cpu * 100.0
        );
    }
    println!("  errors    {}", total.errors);
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
