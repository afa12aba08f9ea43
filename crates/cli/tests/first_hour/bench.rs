//! `sockeye bench`: a progress bar on a terminal and plain lines otherwise, a summary
//! table, the reason for each error, and `--ca` / `--insecure` for wss://.

use futures_util::StreamExt;
use serde_json::{json, Value};
use sockeye::{ServerConfig, WebSocketServer};

use super::{ca_signed, echo_server, on_a_terminal, run, stderr, tls_echo};

/// The rows of the summary table that every run prints.
const ROWS: [&str; 9] = [
    "messages",
    "rate",
    "throughput",
    "latency p50",
    "latency p99",
    "latency p99.9",
    "latency max",
    "latency mean",
    "errors",
];

#[tokio::test]
async fn piped_it_prints_plain_progress_lines_and_a_summary_table() {
    let server = echo_server(&[]).await;
    let url = format!("ws://{}/", server.addr);
    let output = run(&["bench", &url, "-c", "2", "-d", "1", "--warmup", "0.5"]).await;
    let (out, err) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(output.status.success(), "{err}");
    // A line a second (the run is 1.5 s), no bar, no escape codes.
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sockeye bench: "))
        .collect();
    assert!(!progress.is_empty(), "{err}");
    assert!(progress[0].contains(" s / 1.5 s "), "{err}");
    assert!(progress[0].ends_with(" msgs/s"), "{err}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    let mut lines = out.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .ends_with("2 connections x 1024 B, 1.0 s measured after 0.5 s warm-up"),
        "{out}"
    );
    for row in ROWS {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(row)),
            "no {row} row:\n{out}"
        );
    }
    let errors = out
        .lines()
        .find(|l| l.trim_start().starts_with("errors"))
        .unwrap();
    assert_eq!(errors.split_whitespace().last(), Some("0"), "{out}");
}

#[tokio::test]
async fn on_a_terminal_it_draws_a_bar_of_elapsed_over_total_time() {
    let server = echo_server(&[]).await;
    let command = format!(
        "{} bench ws://{}/ -c 2 -d 1 --warmup 0.5",
        env!("CARGO_BIN_EXE_sockeye"),
        server.addr
    );
    let Some(shown) = on_a_terminal(&command, "", &[]).await else {
        return;
    };
    // Redrawn in place (carriage returns), with a bar and the time over the total.
    assert!(shown.contains('\r'), "{shown:?}");
    assert!(shown.contains("=>"), "{shown:?}");
    assert!(shown.contains(" s / 1.5 s "), "{shown:?}");
    assert!(
        !shown.contains("sockeye bench: "),
        "no plain lines: {shown:?}"
    );
    assert!(shown.contains("latency p99"), "{shown:?}");
}

/// A server in this process that answers every message with text, not its echo.
async fn text_answering_server() -> String {
    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    tokio::spawn(async move {
        while let Some(Ok((mut ws, _))) = server.accept().await {
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_binary() && ws.send_text("no echo here").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// A server in this process that accepts and reads but never echoes.
async fn silent_server() -> String {
    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    tokio::spawn(async move {
        while let Some(Ok((mut ws, _))) = server.accept().await {
            tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
        }
    });
    url
}

#[tokio::test]
async fn each_error_comes_with_its_reason() {
    let args = ["-c", "2", "-d", "0.5", "--warmup", "0"];
    let url = text_answering_server().await;
    let output = run(&[&["bench", url.as_str()][..], &args].concat()).await;
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        out.lines()
            .any(|l| l.trim()
                == "2 x the server answered with text: it did not echo the binary message"),
        "{out}"
    );

    let url = silent_server().await;
    let output = run(&[&["bench", url.as_str(), "--json"][..], &args].concat()).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["errors"], 2, "{summary}");
    assert_eq!(
        summary["error_reasons"],
        json!([{
            "reason": "the server did not echo (nothing within 5 s after the end of the run)",
            "count": 2
        }])
    );
}

#[tokio::test]
async fn wss_takes_ca_or_insecure() {
    let pem = ca_signed();
    let server = tls_echo(&pem).await;
    let url = format!("wss://localhost:{}/", server.addr.port());
    let args = ["-c", "1", "-d", "0.3", "--warmup", "0", "--json"];
    let ca = pem.ca.as_deref().unwrap();

    let output = run(&[&["bench", url.as_str(), "--ca", ca][..], &args].concat()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["messages"].as_u64().unwrap() > 0, "{summary}");

    let output = run(&[&["bench", url.as_str(), "--insecure"][..], &args].concat()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("warning: --insecure"));

    let output = run(&[&["bench", url.as_str()][..], &args].concat()).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("the certificate was refused"),
        "{}",
        stderr(&output)
    );

    let output = run(&["bench", "ws://127.0.0.1:9/", "--ca", ca]).await;
    assert!(stderr(&output).contains("--ca and --insecure are for wss:// URLs"));
}
