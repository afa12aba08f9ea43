//! `sockeye serve --redis`: two serve processes on one real `redis-server` (started on a
//! free loopback port by the test) share the chat room; a member that reconnects to the
//! other process with its last position gets the lines it missed, and one with a
//! position of a lost stream is told that they cannot be recovered. Every wait is bounded.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sockeye::{Message, WebSocket};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

const STEP: Duration = Duration::from_secs(10);

/// A `redis-server` of this test's own, killed on drop.
struct Redis {
    _child: Child,
    port: u16,
}

async fn redis_server() -> Redis {
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-server could not be started ({e}): apt-get install redis-server")
        });
    // Up when it answers PING; bounded: 200 tries, 25 ms apart.
    for _ in 0..200 {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
            let mut answer = [0u8; 7];
            if stream.write_all(b"PING\r\n").await.is_ok()
                && tokio::time::timeout(STEP, stream.read_exact(&mut answer))
                    .await
                    .is_ok_and(|r| r.is_ok())
                && &answer == b"+PONG\r\n"
            {
                return Redis {
                    _child: child,
                    port,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server did not come up within 5 s");
}

/// `sockeye serve --redis URL` on an ephemeral port; killed on drop.
struct Serve {
    addr: SocketAddr,
    _child: Child,
    _stdout: Lines<BufReader<ChildStdout>>,
}

async fn serve(redis: &Redis) -> Serve {
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockeye"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", &url])
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sockeye serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(STEP, stdout.next_line())
        .await
        .expect("the server announces itself in time")
        .unwrap()
        .expect("a first line");
    let addr = line
        .strip_prefix("sockeye serve: open http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Serve {
        addr,
        _child: child,
        _stdout: stdout,
    }
}

async fn member(server: &Serve, hello: Value) -> WebSocket<TcpStream> {
    let url = format!("ws://{}/chat", server.addr);
    let (ws, _) = tokio::time::timeout(STEP, sockeye::connect(&url))
        .await
        .expect("connect in time")
        .unwrap();
    ws.send_text(&hello.to_string()).await.unwrap();
    ws
}

async fn next_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected a JSON line, got {other:?}"),
        }
    }
}

/// The next line of `kind`, skipping others (joins and leaves of other members).
async fn next_of(ws: &mut WebSocket<TcpStream>, kind: &str) -> Value {
    for _ in 0..20 {
        let line = next_json(ws).await;
        if line["type"] == kind {
            return line;
        }
    }
    panic!("no {kind} line among 20");
}

#[tokio::test]
async fn serve_with_redis_spans_processes_and_recovers_missed_lines() {
    let redis = redis_server().await;
    let a = serve(&redis).await;
    let b = serve(&redis).await;

    let mut alice = member(&a, json!({"type": "hello", "name": "alice"})).await;
    let mut bob = member(&b, json!({"type": "hello", "name": "bob"})).await;
    next_of(&mut bob, "joined").await;
    alice
        .send_text(&json!({"type": "say", "text": "across"}).to_string())
        .await
        .unwrap();
    let line = next_of(&mut bob, "said").await;
    assert_eq!(
        (&line["name"], &line["text"]),
        (&json!("alice"), &json!("across"))
    );
    let pos = line["pos"].clone();
    assert!(pos["epoch"].is_string() && pos["offset"].is_u64(), "{line}");

    // Bob leaves; alice says two more lines; bob comes back to the other process with
    // the position of the last line he saw.
    drop(bob);
    for text in ["missed one", "missed two"] {
        alice
            .send_text(&json!({"type": "say", "text": text}).to_string())
            .await
            .unwrap();
    }
    // Alice hears her own lines, in order, once each, and bob leaving (so that his
    // leaving is in the stream before he comes back).
    let (mut said, mut left) = (Vec::new(), 0);
    for _ in 0..20 {
        if said.len() == 3 && left == 1 {
            break;
        }
        let line = next_json(&mut alice).await;
        match line["type"].as_str() {
            Some("said") => said.push(line["text"].clone()),
            Some("left") => left += 1,
            _ => {}
        }
    }
    assert_eq!(said, ["across", "missed one", "missed two"]);
    assert_eq!(left, 1);
    let mut bob = member(&a, json!({"type": "hello", "name": "bob", "since": pos})).await;
    // What he missed: his own leaving and alice's two lines, before `recovered` (his
    // new hello is handled after the recovery, so its `joined` comes after).
    let mut missed = Vec::new();
    let mut left = 0;
    for _ in 0..10 {
        let line = next_json(&mut bob).await;
        match line["type"].as_str() {
            Some("said") => missed.push(line["text"].clone()),
            Some("left") => left += 1,
            Some("recovered") => {
                assert_eq!(line["count"], 3, "{line}");
                break;
            }
            _ => panic!("unexpected {line}"),
        }
    }
    assert_eq!(missed, ["missed one", "missed two"]);
    assert_eq!(left, 1);
    assert_eq!(next_of(&mut bob, "joined").await["name"], "bob");

    // A position from a stream that no longer exists.
    let lost = json!({"epoch": "gone", "offset": 1});
    let mut carol = member(&b, json!({"type": "hello", "name": "carol", "since": lost})).await;
    let line = next_of(&mut carol, "unrecoverable").await;
    assert!(
        line["reason"].as_str().unwrap().contains("cannot recover"),
        "{line}"
    );
}
