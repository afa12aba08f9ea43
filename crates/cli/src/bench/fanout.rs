//! `sockeye bench --fanout`: one publisher and many subscribers in the chat room of
//! `sockeye serve` (`/chat`), which fans each line out to every member (through Redis,
//! to the members of every process, with `--redis`).
//!
//! The subscribers join (a `hello`, then their own `joined` line: subscribed) on the
//! URLs given with `--subscribe` in turn (the publisher's URL by default); the publisher
//! says a line per `1/--rate` seconds, its text the time it was said (nanoseconds since
//! the start, this process's clock); each subscriber records the delay of each line it
//! gets. The summary: lines delivered per second across all subscribers, lines that did
//! not arrive within the end of the run plus 5 s, and the delay's percentiles.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sockeye::{ClientConfig, MaybeTlsStream, Message, WebSocket};

use super::Args;

/// What the subscribers measured, together.
struct Delivered {
    lines: u64,
    delay_us: Histogram<u64>,
}

pub(super) async fn run(args: &Args) -> anyhow::Result<bool> {
    anyhow::ensure!(args.rate > 0.0, "--fanout needs --rate (lines per second)");
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(Duration::from_secs(10));
    if !args.deflate {
        config.per_message_deflate = None;
    }
    let urls: Vec<&str> = if args.subscribe.is_empty() {
        vec![args.url.as_str()]
    } else {
        args.subscribe.iter().map(String::as_str).collect()
    };
    let start = Instant::now();
    let mut subscribers = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let url = urls[i % urls.len()];
        let ws = join(url, &config, &format!("bench-{i}")).await?;
        subscribers.push(ws);
    }
    let publisher = join(&args.url, &config, "bench-publisher").await?;
    let duration = Duration::from_secs_f64(args.duration);
    let lines = (args.rate * args.duration).ceil() as u64;
    let give_up = start.elapsed() + duration + Duration::from_secs(5);
    let tasks: Vec<_> = subscribers
        .into_iter()
        .map(|ws| tokio::spawn(subscriber(ws, start, lines, give_up)))
        .collect();

    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = tokio::time::Instant::now();
    let (mut publisher_writer, mut publisher_reader) = publisher.split();
    // The publisher hears the room too: its own lines, read and dropped.
    let draining = tokio::spawn(async move { while publisher_reader.next().await.is_some() {} });
    for _ in 0..lines {
        tokio::time::sleep_until(next).await;
        next += period;
        let said = start.elapsed().as_nanos().to_string();
        let line = json!({"type": "say", "text": said}).to_string();
        publisher_writer
            .send_text(&line)
            .await
            .context("the publisher's connection failed")?;
    }
    let mut total = Delivered {
        lines: 0,
        delay_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    };
    for task in tasks {
        let one = task.await?;
        total.lines += one.lines;
        total.delay_us.add(&one.delay_us).expect("same bounds");
    }
    let _ = futures_util::SinkExt::close(&mut publisher_writer).await;
    draining.abort();

    let expected = lines * args.connections as u64;
    let missing = expected - total.lines.min(expected);
    let per_second = total.lines as f64 / args.duration;
    let delay = |q: f64| total.delay_us.value_at_quantile(q);
    if args.json {
        let summary = json!({
            "mode": "fanout",
            "subscribers": args.connections,
            "lines": lines,
            "delivered": total.lines,
            "missing": missing,
            "deliveries_per_sec": per_second,
            "delay_us": {"p50": delay(0.5), "p99": delay(0.99), "max": total.delay_us.max()},
        });
        println!("{summary}");
    } else {
        println!(
            "fan-out: {} subscribers x {lines} lines over {:.1} s",
            args.connections, args.duration
        );
        println!(
            "  delivered {} ({per_second:.0}/s), missing {missing}",
            total.lines
        );
        println!(
            "  delay     p50 {} us, p99 {} us, max {} us",
            delay(0.5),
            delay(0.99),
            total.delay_us.max()
        );
    }
    Ok(missing == 0)
}

/// Connects to a chat room and joins it: subscribed once its own `joined` line is back.
async fn join(
    url: &str,
    config: &ClientConfig,
    name: &str,
) -> anyhow::Result<WebSocket<MaybeTlsStream>> {
    let (mut ws, _) = sockeye::connect_maybe_tls_with(url, config.clone())
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    ws.send_text(&json!({"type": "hello", "name": name}).to_string())
        .await?;
    let joined = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let line: Value = serde_json::from_str(&text).unwrap_or_default();
            if line["type"] == "joined" && line["name"] == name {
                return Ok(());
            }
        }
        anyhow::bail!("{url} closed before {name} joined")
    });
    joined.await.with_context(|| {
        format!("{url}: {name} did not join within 10 s (is it `sockeye serve`'s /chat?)")
    })??;
    Ok(ws)
}

/// Reads the room until `lines` of the publisher's lines arrived or `give_up` (since
/// `start`) passed; records each one's delay.
async fn subscriber(
    mut ws: WebSocket<MaybeTlsStream>,
    start: Instant,
    lines: u64,
    give_up: Duration,
) -> Delivered {
    let mut delivered = Delivered {
        lines: 0,
        delay_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    };
    let deadline = tokio::time::Instant::from_std(start + give_up);
    while delivered.lines < lines {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout_at(deadline, ws.next()).await
        else {
            break;
        };
        let Ok(line) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if line["type"] != "said" || line["name"] != "bench-publisher" {
            continue;
        }
        let Some(said) = line["text"].as_str().and_then(|t| t.parse::<u128>().ok()) else {
            continue;
        };
        let now = start.elapsed().as_nanos();
        let micros = (now.saturating_sub(said) / 1000).max(1) as u64;
        let _ = delivered.delay_us.record(micros.min(60_000_000));
        delivered.lines += 1;
    }
    let _ = ws.close(None).await;
    delivered
}
