//! `sockeye bench --idle N`: open N WebSocket connections (the opening handshake done
//! on each), report how long establishing them took, and hold them, idle, for
//! `--duration` seconds, so that the server's memory per idle connection can be read
//! (`bench/idle.sh` does).
//!
//! One address pair has one ephemeral port range (28,232 ports by Linux's default
//! `net.ipv4.ip_local_port_range`), so the connections are spread over `--sources`
//! loopback source addresses, 127.0.0.2 on: each address has a range of its own.
//!
//! The connections end with a reset (SO_LINGER 0) when the run ends: closed normally, the
//! client's side of each would wait a minute in TIME_WAIT holding its port, and a second
//! run on the same addresses would find them taken.
//!
//! As soon as all N are open (or one could not be), one line goes to stdout: with
//! `--json`, `{"mode":"idle","established":N,...}`; then the connections are held. The
//! exit code is 1 unless all N were established and none ended while held.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use sockeye::{ClientConfig, Target};
use tokio::net::{TcpSocket, TcpStream};

use super::Args;

/// Connections per source address when `--sources` is 0: a fifth of the default
/// ephemeral range (28,232 ports). bind() looks for a free port longer as an address's
/// range fills: 19,900 connections from one address took 51 s to open (a handshake
/// timing out now and then), from four 1.6 s.
const PER_SOURCE: usize = 5_000;

/// Connection attempts under way at once: enough to keep both processes busy, few
/// enough not to overflow the server's accept queue.
const CONNECTING_AT_ONCE: usize = 256;

/// The highest loopback source address (127.255.255.254).
const LAST_SOURCE: u32 = (127 << 24) | 0x00FF_FFFE;

pub(super) async fn run(args: &Args, n: usize) -> anyhow::Result<bool> {
    anyhow::ensure!(n > 0, "--idle needs at least 1 connection");
    let target = Target::parse(&args.url)?;
    anyhow::ensure!(
        !target.tls && target.unix_socket.is_none(),
        "--idle takes a ws:// URL on a loopback address"
    );
    let server: Ipv4Addr = target
        .host
        .parse()
        .ok()
        .filter(Ipv4Addr::is_loopback)
        .with_context(|| {
            format!(
                "--idle binds loopback source addresses: the URL's host must be an IPv4 \
                 loopback address such as 127.0.0.1, not {:?}",
                target.host
            )
        })?;
    let server = SocketAddr::V4(SocketAddrV4::new(server, target.port));
    let sources = if args.sources == 0 {
        n.div_ceil(PER_SOURCE)
    } else {
        args.sources
    };
    let first = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    anyhow::ensure!(
        sources as u64 <= u64::from(LAST_SOURCE - first + 1),
        "--sources: at most {} loopback addresses",
        LAST_SOURCE - first + 1
    );
    let source = |i: usize| Ipv4Addr::from(first + (i % sources) as u32);

    let mut config = ClientConfig::default();
    config.per_message_deflate = None;

    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failures: std::collections::BTreeMap<String, u64> = Default::default();
    let mut attempts = FuturesUnordered::new();
    let mut next = 0;
    let mut shown = Instant::now();
    while next < n || !attempts.is_empty() {
        while next < n && attempts.len() < CONNECTING_AT_ONCE && failures.is_empty() {
            attempts.push(open(server, source(next), &target, &args.url, &config));
            next += 1;
        }
        let Some(result) = attempts.next().await else {
            break;
        };
        match result {
            Ok(ws) => held.push(ws),
            Err(e) => *failures.entry(format!("{e:#}")).or_default() += 1,
        }
        if shown.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "sockeye bench: {} connections established in {:.1} s",
                held.len(),
                start.elapsed().as_secs_f64()
            );
            shown = Instant::now();
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let established = held.len();
    let per_s = established as f64 / seconds;
    if args.json {
        let summary = json!({
            "mode": "idle",
            "url": args.url,
            "requested": n,
            "established": established,
            "sources": sources,
            "establish_s": (seconds * 1000.0).round() / 1000.0,
            "per_s": per_s.round(),
            "failures": failures.values().sum::<u64>(),
            "failure_reasons": failures
                .iter()
                .map(|(reason, count)| json!({"reason": reason, "count": count}))
                .collect::<Vec<_>>(),
        });
        println!("{summary}");
    } else {
        println!(
            "sockeye bench --idle {n}: {established} connections established in {seconds:.2} s \
             ({per_s:.0}/s) from {sources} source addresses"
        );
        for (reason, count) in &failures {
            println!("  {count} x {reason}");
        }
    }
    if !failures.is_empty() {
        // Stopped at the first failure: the connections are not worth holding.
        return Ok(false);
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;

    // Held: an idle connection ends only if the server ends it, which is a failure.
    let hold = Duration::from_secs_f64(args.duration);
    let mut ended = 0usize;
    let mut readers: FuturesUnordered<_> = held
        .iter_mut()
        .map(|ws| async move { ws.recv().await.is_none() })
        .collect();
    let until = tokio::time::sleep(hold);
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => break,
            next = readers.next() => match next {
                Some(_) => ended += 1,
                None => break,
            },
        }
    }
    drop(readers);
    if ended > 0 {
        eprintln!("sockeye bench: {ended} of {established} idle connections ended while held");
    }
    Ok(ended == 0)
}

/// One connection from `source` (any port) to `server`, upgraded.
async fn open(
    server: SocketAddr,
    source: Ipv4Addr,
    target: &Target,
    url: &str,
    config: &ClientConfig,
) -> anyhow::Result<sockeye::WebSocket<TcpStream>> {
    let socket = TcpSocket::new_v4().context("socket")?;
    // Reset, not closed, when the run ends: no TIME_WAIT is left to hold the source
    // addresses' ports for a minute, so the next run can bind them at once.
    socket.set_zero_linger().context("SO_LINGER")?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .with_context(|| format!("cannot bind to {source} (ports used up?)"))?;
    let stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(server))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {server} took over 30 s"))?
        .with_context(|| format!("cannot connect to {server} from {source}"))?;
    let handshake = sockeye::client_handshake(stream, target, url, config);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(30), handshake)
        .await
        .map_err(|_| anyhow::anyhow!("the opening handshake took over 30 s"))?
        .context("the opening handshake failed")?;
    Ok(ws)
}
