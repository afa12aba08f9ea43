//! `sockeye serve` stops gracefully on SIGINT and SIGTERM, and its chat shows renames.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sockeye::{CloseCode, Message, WebSocket};
use tokio::net::TcpStream;

use super::{start, Server, STEP};

/// The grace `sockeye serve` gives its connections to answer the 1001.
const GRACE: Duration = Duration::from_secs(5);

async fn serve_server() -> Server {
    start(
        &["serve", "--listen", "127.0.0.1:0"],
        "sockeye serve: open http://",
    )
    .await
}

async fn connect(url: &str) -> WebSocket<TcpStream> {
    tokio::time::timeout(STEP, sockeye::connect(url))
        .await
        .expect("connect in time")
        .expect("connect")
        .0
}

/// The next text or close message, bounded (pings and pongs skipped).
async fn next(ws: &mut WebSocket<TcpStream>) -> Message {
    loop {
        let message = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a message in time")
            .expect("the stream goes on")
            .expect("no error");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn next_json(ws: &mut WebSocket<TcpStream>) -> Value {
    match next(ws).await {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected JSON text, got {other:?}"),
    }
}

/// Sends `signal` (a `kill` signal name) to the child `pid`: a process this test started.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Waits for the server to exit; returns its status and how long that took.
async fn exit_of(server: &mut Server, bound: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    let status = tokio::time::timeout(bound, server.child.wait())
        .await
        .unwrap_or_else(|_| panic!("serve exits within {bound:?}"))
        .unwrap();
    (status, start.elapsed())
}

/// The rest of the server's stdout after the first line.
async fn rest_of_stdout(server: &mut Server) -> String {
    let mut text = String::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(STEP, server.stdout.next_line()).await {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[tokio::test]
async fn sigint_closes_every_client_with_1001_and_exits_zero() {
    let mut server = serve_server().await;
    let mut echo = connect(&format!("ws://{}/echo", server.addr)).await;
    let mut chat = connect(&format!("ws://{}/chat", server.addr)).await;
    chat.send_text(&json!({"type": "hello", "name": "ann"}).to_string())
        .await
        .unwrap();
    assert_eq!(next_json(&mut chat).await["type"], "joined");
    echo.send_text("still here").await.unwrap();
    assert_eq!(next(&mut echo).await, Message::text("still here"));

    signal(server.child.id().expect("running"), "INT");
    for ws in [&mut echo, &mut chat] {
        match next(ws).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::GOING_AWAY),
            other => panic!("expected a 1001 close, got {other:?}"),
        }
        // Reading on answers the close; the server then ends the connection.
        tokio::time::timeout(STEP, async { while ws.next().await.is_some() {} })
            .await
            .expect("the connection ends after the close");
    }
    let (status, took) = exit_of(&mut server, STEP).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        took < GRACE,
        "clients that answer at once do not wait out the grace: {took:?}"
    );
    let stdout = rest_of_stdout(&mut server).await;
    assert!(
        stdout.contains("interrupted: closing 2 connection(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stopped (2 closed, 0 terminated)"),
        "{stdout}"
    );
}

/// A client that never answers the 1001 is terminated when the grace runs out, so the
/// process still exits in bounded time.
#[tokio::test]
async fn sigterm_waits_a_bounded_time_for_a_client_that_does_not_answer() {
    let mut server = serve_server().await;
    // Never polled: the close is not answered.
    let _silent = connect(&format!("ws://{}/echo", server.addr)).await;
    signal(server.child.id().expect("running"), "TERM");
    let (status, took) = exit_of(&mut server, GRACE + STEP).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(took >= GRACE - Duration::from_millis(500), "{took:?}");
    let stdout = rest_of_stdout(&mut server).await;
    assert!(
        stdout.contains("terminated: closing 1 connection(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stopped (0 closed, 1 terminated)"),
        "{stdout}"
    );
}

/// A second Ctrl-C during the grace stops at once (exit 130) instead of waiting it out.
#[tokio::test]
async fn a_second_sigint_stops_without_waiting() {
    let mut server = serve_server().await;
    let _silent = connect(&format!("ws://{}/echo", server.addr)).await;
    let pid = server.child.id().expect("running");
    signal(pid, "INT");
    let line = tokio::time::timeout(STEP, server.stdout.next_line())
        .await
        .expect("the closing line in time")
        .unwrap()
        .unwrap();
    assert!(
        line.contains("interrupted: closing 1 connection(s)"),
        "{line}"
    );
    signal(pid, "INT");
    let (status, took) = exit_of(&mut server, STEP).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(took < GRACE, "{took:?}");
    let stdout = rest_of_stdout(&mut server).await;
    assert!(
        stdout.contains("interrupted again: stopped without waiting"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_rename_in_the_chat_is_shown_as_a_rename() {
    let server = serve_server().await;
    let url = format!("ws://{}/chat", server.addr);
    let mut ann = connect(&url).await;
    ann.send_text(&json!({"type": "hello", "name": "ann"}).to_string())
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ann).await,
        json!({"type": "joined", "name": "ann", "count": 1})
    );
    let mut bob = connect(&url).await;
    bob.send_text(&json!({"type": "hello", "name": "bob"}).to_string())
        .await
        .unwrap();
    let bob_joined = json!({"type": "joined", "name": "bob", "count": 2});
    assert_eq!(next_json(&mut ann).await, bob_joined);
    assert_eq!(next_json(&mut bob).await, bob_joined);

    ann.send_text(&json!({"type": "hello", "name": "anna"}).to_string())
        .await
        .unwrap();
    let renamed = json!({"type": "renamed", "from": "ann", "to": "anna", "count": 2});
    assert_eq!(next_json(&mut bob).await, renamed);
    assert_eq!(next_json(&mut ann).await, renamed);

    // The same name again changes nothing; what follows is the next line said.
    ann.send_text(&json!({"type": "hello", "name": "anna"}).to_string())
        .await
        .unwrap();
    ann.send_text(&json!({"type": "say", "text": "hi"}).to_string())
        .await
        .unwrap();
    let said = next_json(&mut bob).await;
    assert_eq!(
        (said["type"].as_str(), said["name"].as_str()),
        (Some("said"), Some("anna"))
    );
}
