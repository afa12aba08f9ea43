//! `sockeye bench --soak` and `--idle` over real sockets: a soak against `sockeye echo`
//! accounts for every message through clean and abrupt reconnects; a peer that corrupts,
//! reorders, duplicates or loses an echo, or drops the connection, is caught and fails
//! the run; `--idle` holds upgraded connections from several source addresses.

use std::process::{Output, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use sockeye::{Message, ServerConfig, WebSocketServer};
use tokio::process::Command;

mod common;

/// A whole bench run (a few seconds of load) longer than this is a hang.
const RUN: Duration = Duration::from_secs(60);

/// `sockeye <args>`, bounded by [`RUN`].
async fn sockeye(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_sockeye"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(RUN, child)
        .await
        .expect("the bench ends in time")
        .expect("run sockeye")
}

/// The `--json` summary of a run.
fn summary(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn a_soak_with_reconnects_accounts_for_every_message() {
    let (addr, _server) = common::echo_process(&[]).await;
    let url = format!("ws://{addr}/");
    let output = sockeye(&[
        "bench",
        "--soak",
        &url,
        "-c",
        "20",
        "-d",
        "3",
        "--reconnect-rate",
        "10",
        "--size",
        "3000",
        "--seed",
        "7",
        "--json",
    ])
    .await;
    let s = summary(&output);
    assert!(output.status.success(), "{s}");
    assert_eq!(s["passed"], true, "{s}");
    assert_eq!(s["mismatched"], 0, "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    assert_eq!(s["unaccounted"], 0, "{s}");
    assert_eq!(s["unanswered_at_end"], 0, "{s}");
    let n = |key: &str| s[key].as_u64().unwrap_or_else(|| panic!("{key}: {s}"));
    assert!(n("sent") > 100, "{s}");
    assert_eq!(
        n("sent"),
        n("echoed") + n("lost_at_abrupt_disconnect"),
        "{s}"
    );
    // About 30 reconnects in 3 s, half of each kind: both happened. A reconnect counts
    // once connected again.
    assert!(n("clean_reconnects") > 0, "{s}");
    assert!(n("abrupt_reconnects") > 0, "{s}");
    assert_eq!(
        n("connects"),
        20 + n("clean_reconnects") + n("abrupt_reconnects"),
        "{s}"
    );
}

#[tokio::test]
async fn a_paced_soak_sends_at_the_rate() {
    let (addr, _server) = common::echo_process(&[]).await;
    let url = format!("ws://{addr}/");
    let output = sockeye(&[
        "bench", "--soak", &url, "-c", "10", "-d", "2", "--rate", "200", "--json",
    ])
    .await;
    let s = summary(&output);
    assert!(output.status.success(), "{s}");
    let sent = s["sent"].as_u64().unwrap();
    // 200/s for 2 s, each connection's first message at once: never more; fewer only
    // when the machine is too busy to keep the pace.
    assert!((200..=420).contains(&sent), "{s}");
    assert_eq!(s["echoed"], sent, "{s}");
}

/// What a faulty echo peer does to the 6th message of each connection.
#[derive(Clone, Copy)]
enum Fault {
    /// Flips a byte of its body.
    Corrupt,
    /// Sends the 7th before it.
    Reorder,
    /// Sends it twice.
    Duplicate,
    /// Never sends it.
    Lose,
    /// Closes the transport instead of echoing it.
    Hang,
}

/// An echo server in this process with one fault per connection.
async fn faulty_server(fault: Fault) -> String {
    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    tokio::spawn(async move {
        while let Some(Ok((mut ws, _))) = server.accept().await {
            tokio::spawn(async move {
                let mut count = 0;
                let mut held: Option<bytes::Bytes> = None;
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Binary(data) = message else {
                        continue;
                    };
                    count += 1;
                    let mut out = vec![data.clone()];
                    match (fault, count) {
                        (Fault::Corrupt, 6) => {
                            let mut bad = data.to_vec();
                            let last = bad.len() - 1;
                            bad[last] ^= 0x40;
                            out = vec![bad.into()];
                        }
                        (Fault::Reorder, 6) => {
                            held = Some(data);
                            out.clear();
                        }
                        (Fault::Reorder, 7) => out.extend(held.take()),
                        (Fault::Duplicate, 6) => out.push(data),
                        (Fault::Lose, 6) => out.clear(),
                        (Fault::Hang, 6) => {
                            ws.terminate();
                            return;
                        }
                        _ => {}
                    }
                    for data in out {
                        if ws.send_binary(&data).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

/// A soak of 2 connections x 1 s (window 4, so the 7th message is in flight when the
/// 6th is due) against a faulty peer.
async fn soak_against(fault: Fault) -> (Output, Value) {
    let url = faulty_server(fault).await;
    let output = sockeye(&[
        "bench", "--soak", &url, "-c", "2", "-d", "1", "--window", "4", "--json",
    ])
    .await;
    let s = summary(&output);
    (output, s)
}

/// Each connection's 6th message mismatched as `kind`, then it reconnected.
fn caught(output: &Output, s: &Value, kind: &str) {
    assert_eq!(output.status.code(), Some(1), "{s}");
    assert_eq!(s["passed"], false, "{s}");
    let kinds = s["mismatch_kinds"].as_object().unwrap();
    assert_eq!(kinds.keys().collect::<Vec<_>>(), [kind], "{s}");
    // Each session hits the fault once (but the last ones, if the run ends before
    // their 6th message), and reconnects after it.
    let mismatched = s["mismatched"].as_u64().unwrap();
    assert!(mismatched >= 2, "{s}");
    assert!(mismatched <= s["connects"].as_u64().unwrap(), "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    assert_eq!(s["unaccounted"], 0, "{s}");
}

#[tokio::test]
async fn a_corrupting_peer_is_caught() {
    let (output, s) = soak_against(Fault::Corrupt).await;
    caught(&output, &s, "corrupted");
    let example = s["mismatch_examples"][0].as_str().unwrap();
    assert!(example.contains("expected message 5, got "), "{s}");
    assert!(example.contains("first difference at byte"), "{s}");
}

#[tokio::test]
async fn a_reordering_peer_is_caught() {
    let (output, s) = soak_against(Fault::Reorder).await;
    caught(&output, &s, "out_of_order");
    let example = s["mismatch_examples"][0].as_str().unwrap();
    assert!(
        example.ends_with("expected message 5, got message 6 before it"),
        "{s}"
    );
}

#[tokio::test]
async fn a_duplicating_peer_is_caught() {
    let (output, s) = soak_against(Fault::Duplicate).await;
    caught(&output, &s, "duplicated");
    let example = s["mismatch_examples"][0].as_str().unwrap();
    // Message 6 in flight, or nothing (the echoes caught up with the sends).
    assert!(
        example.ends_with(": expected message 6, got message 5 again")
            || example.ends_with(": nothing in flight, got message 5 again"),
        "{s}"
    );
}

#[tokio::test]
async fn a_peer_that_loses_a_message_is_caught() {
    let (output, s) = soak_against(Fault::Lose).await;
    caught(&output, &s, "out_of_order");
    let example = s["mismatch_examples"][0].as_str().unwrap();
    assert!(
        example.ends_with("expected message 5, got message 6 before it"),
        "{s}"
    );
}

#[tokio::test]
async fn a_peer_that_drops_connections_fails_the_run_with_the_messages_counted() {
    let (output, s) = soak_against(Fault::Hang).await;
    assert_eq!(output.status.code(), Some(1), "{s}");
    assert_eq!(s["mismatched"], 0, "{s}");
    assert!(s["failures"].as_u64().unwrap() >= 2, "{s}");
    assert!(s["lost_at_failure"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["unaccounted"], 0, "{s}");
    for reason in s["failure_reasons"].as_array().unwrap() {
        let reason = reason["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("the connection ") || reason.starts_with("sending failed: "),
            "{s}"
        );
    }
}

#[tokio::test]
async fn bad_soak_and_idle_options_are_clear_errors() {
    let url = "ws://127.0.0.1:9/";
    for (args, says) in [
        (
            &["--soak", "--size", "10"][..],
            "--soak needs --size of at least 24 bytes",
        ),
        (&["--soak", "--window", "0"], "--window must be at least 1"),
        (&["--reconnect-rate", "1"], "--soak"),
        (
            &["--soak", "--fanout", "--rate", "1"],
            "cannot be used with",
        ),
        (&["--idle", "0"], "--idle needs at least 1 connection"),
        (
            &["--idle", "5", "--sources", "99999999"],
            "--sources: at most",
        ),
    ] {
        let output = sockeye(&[&["bench", url][..], args].concat()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let output = sockeye(&["bench", "ws://localhost:9/", "--idle", "5"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("IPv4 loopback address"), "{stderr}");
}

#[tokio::test]
async fn idle_holds_upgraded_connections_from_several_source_addresses() {
    let (addr, _server) = common::echo_process(&[]).await;
    let url = format!("ws://{addr}/");
    let output = sockeye(&[
        "bench",
        &url,
        "--idle",
        "300",
        "--sources",
        "3",
        "-d",
        "1",
        "--json",
    ])
    .await;
    let s = summary(&output);
    assert!(output.status.success(), "{s}");
    assert_eq!(s["established"], 300, "{s}");
    assert_eq!(s["sources"], 3, "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    assert!(s["establish_s"].as_f64().unwrap() > 0.0, "{s}");

    // A server that is not there: the first failure stops the run, with its reason.
    let output = sockeye(&["bench", "ws://127.0.0.1:9/", "--idle", "3", "--json"]).await;
    let s = summary(&output);
    assert_eq!(output.status.code(), Some(1), "{s}");
    assert!(s["established"].as_u64().unwrap() == 0, "{s}");
    let reason = s["failure_reasons"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("cannot connect to 127.0.0.1:9"), "{s}");
}

/// Over wss://: the soak speaks TLS as the echo bench does (`--insecure` here, for a
/// self-signed certificate, with its warning).
#[tokio::test]
async fn a_soak_over_wss_accounts_for_every_message() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sockeye-soak-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockeye"));
    command
        .args(["echo", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .kill_on_drop(true);
    let (addr, _server, _) =
        common::spawn_announced(command, "sockeye echo listening on wss://").await;
    let url = format!("wss://localhost:{}/", addr.port());
    let output = sockeye(&[
        "bench",
        "--soak",
        &url,
        "--insecure",
        "-c",
        "4",
        "-d",
        "1",
        "--reconnect-rate",
        "4",
        "--json",
    ])
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let s = summary(&output);
    assert!(output.status.success(), "{s}");
    assert_eq!(s["passed"], true, "{s}");
    assert!(s["echoed"].as_u64().unwrap() > 0, "{s}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--insecure: the server's certificate is not checked"));
}
