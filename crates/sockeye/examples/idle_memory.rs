//! Measures a server's memory per idle connection, with or without permessage-deflate.
//!
//! Opens N connections to a server process, sends one compressible message on each (so
//! any compressor and decompressor state exists) and waits for its echo, lets them idle,
//! then reports the server's RSS growth per connection from /proc/PID/status.
//!
//! ```text
//! sockeye echo --deflate --listen 127.0.0.1:9100 &
//! cargo run --release --example idle_memory -- PID ws://127.0.0.1:9100/ 1000 takeover
//! ```
//! Modes: `off` (no compression offered), `takeover` (the default offer: context kept
//! between messages), `takeover-w10` (the same with 1 KiB windows both ways),
//! `no-takeover` (server_ and client_no_context_takeover).

use std::time::Duration;

use futures_util::StreamExt;
use sockeye::{ClientConfig, DeflateConfig, Message};

fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server pid");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pid, url, count, mode] = &args[..] else {
        return Err(
            "usage: idle_memory SERVER_PID URL CONNECTIONS off|takeover|takeover-w10|no-takeover"
                .into(),
        );
    };
    let count: usize = count.parse()?;
    let mut config = ClientConfig::default();
    config.per_message_deflate = match mode.as_str() {
        "off" => None,
        "takeover" => Some(DeflateConfig::default()),
        "takeover-w10" => Some(DeflateConfig {
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(10),
            ..DeflateConfig::default()
        }),
        "no-takeover" => Some(DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        }),
        other => return Err(format!("unknown mode {other}").into()),
    };
    let message = "sockeye idle memory probe; ".repeat(80); // 2 KiB, over the threshold
    let before = rss_kib(pid);
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let (mut ws, _) = sockeye::connect_with(url, config.clone()).await?;
        ws.send_text(&message).await?;
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(echo))) if echo.as_str() == message => {}
            other => return Err(format!("unexpected echo: {other:?}").into()),
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / count as f64;
    println!(
        "idle_memory: mode={mode} extensions={:?} conns={count} rss_before_kib={before} rss_after_kib={after} bytes_per_conn={per_conn:.0}",
        sockets[0].extensions()
    );
    Ok(())
}
