//! The `sockeye` command end to end: each subcommand runs as a child process on an
//! ephemeral loopback port and is driven over real sockets. Every wait is bounded.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sockeye::{CloseCode, DataKind, Message, WebSocket};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

mod common;
use common::STEP;

fn sockeye() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockeye"));
    command.kill_on_drop(true);
    command
}

/// A running server process; killed when dropped.
struct Server {
    addr: SocketAddr,
    _child: Child,
    _stdout: Lines<BufReader<ChildStdout>>,
}

/// Starts `sockeye <args> --listen 127.0.0.1:0` and reads the address from the first
/// stdout line, which must start with `prefix` followed by the address.
async fn start(args: &[&str], prefix: &str) -> Server {
    let mut command = sockeye();
    command.args(args).args(["--listen", "127.0.0.1:0"]);
    start_command(command, prefix).await
}

/// Runs `command` (a server listening on an ephemeral port) and reads the address from
/// the first stdout line, which must start with `prefix` followed by the address.
async fn start_command(command: Command, prefix: &str) -> Server {
    let (addr, child, stdout) = common::spawn_announced(command, prefix).await;
    assert_ne!(addr.port(), 0, "the real port is printed");
    Server {
        addr,
        _child: child,
        _stdout: stdout,
    }
}

async fn echo_server(extra: &[&str]) -> Server {
    let args: Vec<&str> = ["echo"].iter().chain(extra).copied().collect();
    start(&args, "sockeye echo listening on ws://").await
}

async fn serve_server(extra: &[&str]) -> Server {
    let args: Vec<&str> = ["serve"].iter().chain(extra).copied().collect();
    start(&args, "sockeye serve: open http://").await
}

async fn connect(url: &str) -> WebSocket<TcpStream> {
    tokio::time::timeout(STEP, sockeye::connect(url))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

async fn next(ws: &mut WebSocket<TcpStream>) -> Message {
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("a message in time")
        .expect("the connection is open")
        .expect("no error")
}

/// The next text message as JSON (pings and pongs skipped).
async fn next_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match next(ws).await {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a JSON text message, got {other:?}"),
        }
    }
}

/// Closes with 1000 and waits for the end of the stream.
async fn close(mut ws: WebSocket<TcpStream>) {
    ws.close(Some(sockeye::CloseFrame::new(
        CloseCode::NORMAL_CLOSURE,
        "bye",
    )))
    .await
    .unwrap();
    tokio::time::timeout(STEP, async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL_CLOSURE));
            }
        }
    })
    .await
    .expect("the close handshake completes in time");
}

async fn echo_round_trips(url: &str) {
    let mut ws = connect(url).await;
    ws.send_text("hello, sockeye ✓").await.unwrap();
    assert_eq!(next(&mut ws).await.as_text(), Some("hello, sockeye ✓"));
    ws.send_binary(&[0, 1, 2, 0xff]).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 0xff]));
    let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    ws.send_binary(&big).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(big));
    close(ws).await;
}

/// Sends a message one byte over `limit` and expects the server to fail the connection
/// with 1009, after a message at the limit went through.
async fn over_max_payload_is_1009(url: &str, limit: usize) {
    let mut ws = connect(url).await;
    let at_limit = "a".repeat(limit);
    ws.send_text(&at_limit).await.unwrap();
    assert_eq!(next(&mut ws).await.as_text(), Some(at_limit.as_str()));
    ws.send_binary(&vec![7u8; limit + 1]).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    tokio::time::timeout(STEP, async { while ws.next().await.is_some() {} })
        .await
        .expect("the connection ends after the close");
}

/// A raw HTTP GET, read to the server's close: (status, lower-cased head, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut data = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut data))
        .await
        .expect("the server answers and closes in time")
        .unwrap();
    let text = String::from_utf8(data).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head[9..12].parse().unwrap();
    let head = head.to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    assert_eq!(length, Some(body.len()), "Content-Length matches the body");
    (status, head, body.to_owned())
}

async fn wait(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(STEP, child.wait())
        .await
        .expect("the process exits in time")
        .unwrap()
}

// ---- --help ----------------------------------------------------------------------------------

#[tokio::test]
async fn every_subcommand_has_help_naming_its_options() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &["serve", "echo", "connect", "--help", "--version"],
        ),
        (
            &["serve", "--help"],
            &["--listen", "--max-payload", "/echo", "/chat"],
        ),
        (
            &["echo", "--help"],
            &["--listen", "--max-payload", "--threads"],
        ),
        (
            &["connect", "--help"],
            &[
                "<URL>",
                "--protocol",
                "--header",
                "--origin",
                "--handshake-timeout",
                "--max-payload",
            ],
        ),
        (&["help", "connect"], &["--protocol"]),
    ];
    for (args, needles) in cases {
        let output = tokio::time::timeout(STEP, sockeye().args(*args).output())
            .await
            .expect("help in time")
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {:?}", output.status);
        for needle in *needles {
            assert!(
                stdout.contains(needle),
                "{args:?} should mention {needle}:\n{stdout}"
            );
        }
    }
    let output = tokio::time::timeout(STEP, sockeye().arg("--version").output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("sockeye "));
}

#[tokio::test]
async fn bad_arguments_fail_with_an_error() {
    for args in [
        &["echo", "--listen", "not-an-address"][..],
        &["echo", "--max-payload", "-3"],
        &["connect"],
        &["frobnicate"],
    ] {
        let output = tokio::time::timeout(STEP, sockeye().args(args).output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("error:"),
            "{args:?}"
        );
    }
}

// ---- sockeye echo ----------------------------------------------------------------------------

#[tokio::test]
async fn echo_echoes_text_and_binary_on_any_path() {
    let server = echo_server(&[]).await;
    echo_round_trips(&format!("ws://{}/", server.addr)).await;
    echo_round_trips(&format!("ws://{}/any/path?x=1", server.addr)).await;
}

/// `sockeye echo` forwards binary messages piece by piece as they arrive, each frame as
/// one frame, and text once whole: a 4 MiB message and a fragmented text message come
/// back equal, and the 4 MiB frame as one frame.
#[tokio::test]
async fn echo_streams_large_and_fragmented_messages() {
    let server = echo_server(&[]).await;
    let mut ws = connect(&format!("ws://{}/", server.addr)).await;
    let large: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ws.send_binary(&large).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(large.clone()));
    ws.send_frame(DataKind::Text, "frag".as_bytes(), false)
        .await
        .unwrap();
    ws.send_frame(DataKind::Text, "mented ✓".as_bytes(), true)
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await.as_text(), Some("fragmented ✓"));
    ws.send_frame(DataKind::Binary, &[1, 2], false)
        .await
        .unwrap();
    ws.send_frame(DataKind::Binary, &[3], true).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    close(ws).await;

    // Frame by frame: the 4 MiB frame, relayed in pieces, comes back as one frame, and
    // the two-frame message as two.
    let mut config = sockeye::ClientConfig::default();
    config.websocket.deliver_fragments = true;
    let url = format!("ws://{}/", server.addr);
    let (mut ws, _) = tokio::time::timeout(STEP, sockeye::connect_with(&url, config))
        .await
        .expect("connect in time")
        .unwrap();
    ws.send_binary(&large).await.unwrap();
    let Message::Fragment(frame) = next(&mut ws).await else {
        panic!("a fragment");
    };
    assert_eq!(
        (frame.fin, frame.rest, frame.data.len()),
        (true, 0, large.len())
    );
    assert!(frame.data == large, "the relayed frame equals the original");
    ws.send_frame(DataKind::Binary, &[1, 2], false)
        .await
        .unwrap();
    ws.send_frame(DataKind::Binary, &[3], true).await.unwrap();
    for expected in [&[1u8, 2][..], &[3]] {
        let Message::Fragment(frame) = next(&mut ws).await else {
            panic!("a fragment");
        };
        assert_eq!(frame.data, expected);
    }
    close(ws).await;
}

/// A burst written at once, so that the server reads several frames per read: whole
/// binary frames of every length form, a fragmented binary message with a ping inside,
/// text in one frame and in two, and a 100 KiB frame. The server must send back every data frame as it came (same boundaries, unmasked), answer the ping, and
/// the text whole.
#[tokio::test]
async fn echo_answers_a_pipelined_burst_frame_for_frame() {
    use sockeye::proto::bytes::{Buf, BytesMut};
    use sockeye::proto::handshake::client::ClientRequest;
    use sockeye::proto::{Config, Connection, Role};

    let server = echo_server(&[]).await;
    let mut tcp = tokio::time::timeout(STEP, TcpStream::connect(server.addr))
        .await
        .expect("connect in time")
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let request = ClientRequest {
        host: server.addr.to_string(),
        path: "/".into(),
        ..ClientRequest::default()
    };
    let (bytes, expect) = request.encode();
    tcp.write_all(&bytes).await.unwrap();
    let mut input = BytesMut::new();
    let head_end = loop {
        if let Some((response, len)) = expect.parse(&input, &Default::default()).unwrap() {
            expect
                .validate(response)
                .expect("a 101 that accepts the key");
            break len;
        }
        let n = tokio::time::timeout(STEP, tcp.read_buf(&mut input))
            .await
            .expect("the 101 in time")
            .unwrap();
        assert!(n > 0, "the server closed during the handshake");
    };
    input.advance(head_end);

    let config = Config {
        deliver_fragments: true,
        ..Config::default()
    };
    let mut client = Connection::new(Role::Client, config);
    let mut expected: Vec<(bool, bool, Vec<u8>)> = Vec::new(); // (text, fin, payload)
    for len in [0usize, 20, 125, 126, 1000, 16 * 1024, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        client.send(DataKind::Binary, &payload, true).unwrap();
        expected.push((false, true, payload));
    }
    client.send(DataKind::Binary, b"first", false).unwrap();
    client.ping(b"inside").unwrap();
    client.send(DataKind::Binary, b"second", false).unwrap();
    client.send(DataKind::Binary, b"last", true).unwrap();
    for part in ["first", "second", "last"] {
        expected.push((false, part == "last", part.as_bytes().to_vec()));
    }
    client.send_text("one frame ✓").unwrap();
    expected.push((true, true, "one frame ✓".as_bytes().to_vec()));
    client
        .send(DataKind::Text, "two ".as_bytes(), false)
        .unwrap();
    client
        .send(DataKind::Text, "frames ✓".as_bytes(), true)
        .unwrap();
    expected.push((true, true, "two frames ✓".as_bytes().to_vec()));
    let large: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 241) as u8).collect();
    client.send(DataKind::Binary, &large, true).unwrap();
    expected.push((false, true, large));
    let burst = client.transmit().take_all();
    tcp.write_all(&burst).await.unwrap();

    // Frame for frame: without stream_frames the client reads each frame whole.
    let mut got: Vec<(bool, bool, Vec<u8>)> = Vec::new();
    let mut pong = false;
    while got.len() < expected.len() {
        let message = match client.read(&mut input, std::time::Instant::now()).unwrap() {
            Some(message) => message,
            None => {
                let n = tokio::time::timeout(STEP, tcp.read_buf(&mut input))
                    .await
                    .unwrap_or_else(|_| panic!("stalled after {got:?}"))
                    .unwrap();
                assert!(n > 0, "closed after {} frames", got.len());
                continue;
            }
        };
        match message {
            Message::Pong(data) => {
                assert_eq!(&data[..], b"inside");
                pong = true;
            }
            Message::Fragment(fragment) => got.push((
                fragment.kind == DataKind::Text,
                fragment.fin,
                fragment.data.to_vec(),
            )),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pong, "the ping inside the message was answered");
    assert_eq!(got.len(), expected.len(), "one frame out per frame in");
    for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
        assert!(got == want, "frame {i} differs ({} bytes)", want.2.len());
    }
}

#[tokio::test]
async fn echo_multi_threaded() {
    let server = echo_server(&["--threads", "2"]).await;
    let url = format!("ws://{}/", server.addr);
    let clients = (0..4).map(|_| echo_round_trips(&url));
    futures_util::future::join_all(clients).await;
}

#[tokio::test]
async fn echo_max_payload_closes_with_1009() {
    let server = echo_server(&["--max-payload", "100"]).await;
    over_max_payload_is_1009(&format!("ws://{}/", server.addr), 100).await;
    // The server itself is still up.
    let mut ws = connect(&format!("ws://{}/", server.addr)).await;
    ws.send_text("still here").await.unwrap();
    assert_eq!(next(&mut ws).await.as_text(), Some("still here"));
    close(ws).await;
}

/// A request that is not an upgrade gets an error status and a close, and a request
/// close, and a request head that does not arrive within --handshake-timeout with 408.
#[tokio::test]
async fn echo_refuses_bad_requests_and_slow_handshakes() {
    let server = echo_server(&["--handshake-timeout", "0.5"]).await;
    let (status, head, _body) = http_get(server.addr, "/").await;
    assert!(head.contains("connection: close"), "{head}");
    assert!((400..500).contains(&status), "{status}");

    // Half a request head, then nothing: 408 after the timeout, then the close.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut data = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut data))
        .await
        .expect("the server answers and closes in time")
        .unwrap();
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&data);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(waited >= Duration::from_millis(400), "{waited:?}");

    // The server is still up.
    echo_round_trips(&format!("ws://{}/", server.addr)).await;
}

/// The server keeps accepting after it ran out of descriptors: a connection that
/// waited in the listen backlog meanwhile (and so raises no new event) is served once
/// descriptors are free again.
#[cfg(unix)]
#[tokio::test]
async fn echo_accepts_again_after_running_out_of_descriptors() {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n 32 && exec \"$0\" echo --listen 127.0.0.1:0")
        .arg(env!("CARGO_BIN_EXE_sockeye"))
        .kill_on_drop(true);
    let server = start_command(command, "sockeye echo listening on ws://").await;
    let addr = server.addr;
    // More connections than descriptors: the first ones are accepted, the rest wait.
    let mut held = Vec::new();
    for _ in 0..48 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = held.pop().unwrap();
    // The accepted ones leave; the server closes them and has descriptors again.
    drop(held);
    let url = format!("ws://{addr}/");
    let target = sockeye::Target::parse(&url).unwrap();
    let (mut ws, _) = tokio::time::timeout(
        STEP,
        sockeye::client_handshake(waiting, &target, &url, &sockeye::ClientConfig::default()),
    )
    .await
    .expect("the waiting connection is accepted and upgraded in time")
    .unwrap();
    ws.send_text("after the backlog").await.unwrap();
    assert_eq!(next(&mut ws).await.as_text(), Some("after the backlog"));
}

/// The resident set of process `pid`, in bytes (Linux).
#[cfg(target_os = "linux")]
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// A client that sends without reading: the server stops reading once its send queue
/// reaches the high-water mark (so its memory stays bounded instead of buffering 64 MiB
/// of echoes), and reads on once the client drains its echoes: every message comes back.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn echo_pauses_reading_for_a_client_that_does_not_read() {
    const MESSAGES: usize = 64;
    const SIZE: usize = 1024 * 1024;
    let server = echo_server(&[]).await;
    let pid = server._child.id().expect("running");
    let before = rss(pid);
    let ws = connect(&format!("ws://{}/", server.addr)).await;
    let (writer, mut reader) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..MESSAGES {
            writer.send_binary(&vec![i as u8; SIZE]).await.unwrap();
        }
        writer
    });
    // Long enough for the sender to fill every buffer on the way and stall.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!sender.is_finished(), "64 MiB went through unread");
    let grown = rss(pid).saturating_sub(before);
    assert!(
        grown < 32 * 1024 * 1024,
        "the server grew by {grown} bytes for a client that does not read"
    );
    for i in 0..MESSAGES {
        let message = tokio::time::timeout(STEP, reader.next())
            .await
            .unwrap_or_else(|_| panic!("echo #{i} in time"))
            .expect("open")
            .expect("no error");
        assert_eq!(message, Message::binary(vec![i as u8; SIZE]), "#{i}");
    }
    let writer = tokio::time::timeout(STEP, sender)
        .await
        .expect("the sender finishes once echoes are read")
        .unwrap();
    close(WebSocket::reunite(writer, reader)).await;
}

// ---- sockeye serve ---------------------------------------------------------------------------

#[tokio::test]
async fn serve_page_at_root_and_404_elsewhere() {
    let server = serve_server(&[]).await;
    let (status, head, body) = http_get(server.addr, "/").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(body.contains("<html"));
    assert!(body.contains(r#"data-testid="echo-input""#));
    for path in ["/nope", "/echo", "/chat", "/index.htm"] {
        let (status, head, body) = http_get(server.addr, path).await;
        assert_eq!(status, 404, "{path}: {head}");
        assert_eq!(body, "not found\n");
    }
}

#[tokio::test]
async fn serve_echo_at_slash_echo() {
    let server = serve_server(&[]).await;
    echo_round_trips(&format!("ws://{}/echo", server.addr)).await;
}

#[tokio::test]
async fn serve_rejects_upgrades_to_other_paths() {
    let server = serve_server(&[]).await;
    let err = tokio::time::timeout(STEP, sockeye::connect(&format!("ws://{}/", server.addr)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.http_status(), Some(404), "{err}");
}

#[tokio::test]
async fn serve_chat_room() {
    let server = serve_server(&[]).await;
    let url = format!("ws://{}/chat", server.addr);

    let mut bob = connect(&url).await;
    bob.send_text(&json!({"type": "hello", "name": "bob"}).to_string())
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "joined", "name": "bob", "count": 1})
    );

    let mut alice = connect(&url).await;
    alice
        .send_text(&json!({"type": "hello", "name": "alice"}).to_string())
        .await
        .unwrap();
    alice
        .send_text(&json!({"type": "say", "text": "hi"}).to_string())
        .await
        .unwrap();

    // Broadcasts go out from separate tasks; do not depend on their order.
    let mut joined = false;
    let mut said = false;
    while !(joined && said) {
        let message = next_json(&mut bob).await;
        match message["type"].as_str() {
            Some("joined") => {
                assert_eq!(
                    message,
                    json!({"type": "joined", "name": "alice", "count": 2})
                );
                joined = true;
            }
            Some("said") => {
                assert_eq!(message["name"], "alice");
                assert_eq!(message["text"], "hi");
                assert!(message["at"].as_u64().is_some_and(|at| at > 0), "{message}");
                said = true;
            }
            _ => panic!("unexpected {message}"),
        }
    }
    // The speaker hears itself too.
    let mut alice_saw = Vec::new();
    while alice_saw.len() < 2 {
        alice_saw.push(
            next_json(&mut alice).await["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    alice_saw.sort();
    assert_eq!(alice_saw, ["joined", "said"]);

    close(alice).await;
    assert_eq!(
        next_json(&mut bob).await,
        json!({"type": "left", "name": "alice", "count": 1})
    );
    close(bob).await;
}

#[tokio::test]
async fn serve_max_payload_closes_with_1009() {
    let server = serve_server(&["--max-payload", "100"]).await;
    over_max_payload_is_1009(&format!("ws://{}/echo", server.addr), 100).await;
    // The chat room has the same limit.
    let mut ws = connect(&format!("ws://{}/chat", server.addr)).await;
    let long = json!({"type": "say", "text": "x".repeat(200)}).to_string();
    ws.send_text(&long).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
}

// ---- sockeye connect -------------------------------------------------------------------------

#[tokio::test]
async fn connect_sends_lines_and_prints_replies() {
    let server = echo_server(&[]).await;
    let mut child = sockeye()
        .args(["connect", &format!("ws://{}/", server.addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in ["hello", "two words", "ünïcödé ✓", "{\"json\": true}"] {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let printed = tokio::time::timeout(STEP, stdout.next_line())
            .await
            .expect("the echo is printed in time")
            .unwrap()
            .expect("a line");
        assert_eq!(printed, format!("< {line}"));
    }
    drop(stdin); // EOF: close cleanly.
    let status = wait(&mut child).await;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("connected to"), "{stderr}");
    assert!(stderr.lines().any(|l| l == "closed 1000"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert_eq!(
        tokio::time::timeout(STEP, stdout.next_line())
            .await
            .unwrap()
            .unwrap(),
        None,
        "nothing more on stdout"
    );
}

#[tokio::test]
async fn connect_with_empty_stdin_exits_zero() {
    let server = echo_server(&[]).await;
    let mut child = sockeye()
        .args(["connect", &format!("ws://{}/", server.addr)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait(&mut child).await.success());
}

#[tokio::test]
async fn connect_to_a_404_path_fails_with_the_status() {
    let server = serve_server(&[]).await;
    let output = tokio::time::timeout(
        STEP,
        sockeye()
            .args(["connect", &format!("ws://{}/nope", server.addr)])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("connect gives up in time")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(stderr.contains("Not Found"), "{stderr}");
    assert!(stderr.contains("no WebSocket endpoint"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn connect_to_nothing_fails() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = tokio::time::timeout(
        STEP,
        sockeye()
            .args(["connect", &format!("ws://127.0.0.1:{port}/")])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

/// Each chat member has one queue, drained in order, so one sender's lines reach every
/// member in the order they were sent (a task per message per member would reorder them).
/// Bob reads only after the burst, so his queue must absorb it.
#[tokio::test]
async fn serve_chat_keeps_each_senders_order() {
    let server = serve_server(&[]).await;
    let url = format!("ws://{}/chat", server.addr);
    let mut bob = connect(&url).await;
    bob.send_text(&json!({"type": "hello", "name": "bob"}).to_string())
        .await
        .unwrap();
    next_json(&mut bob).await;
    let alice = connect(&url).await;
    for i in 0..300 {
        alice
            .send_text(&json!({"type": "say", "text": i.to_string()}).to_string())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 300 {
        let message = next_json(&mut bob).await;
        got.push(message["text"].as_str().unwrap().parse::<u32>().unwrap());
    }
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    assert_eq!(inversions, 0, "{got:?}");
}

/// `sockeye echo --deflate` accepts permessage-deflate and echoes compressed messages;
/// without the flag it declines; `sockeye serve` accepts it.
#[tokio::test]
async fn echo_deflate_flag_negotiates_compression() {
    let big = "compress me ".repeat(1000);
    for (extra, expect_deflate) in [
        (&["--deflate"][..], true),
        (&[][..], false),
        (&["--threads", "2"][..], false),
    ] {
        let server = echo_server(extra).await;
        let mut ws = connect(&format!("ws://{}/", server.addr)).await;
        assert_eq!(
            ws.extensions().contains("permessage-deflate"),
            expect_deflate,
            "{extra:?}"
        );
        ws.send_text(&big).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(big.as_str()));
        close(ws).await;
    }
    let server = serve_server(&[]).await;
    let ws = connect(&format!("ws://{}/echo", server.addr)).await;
    assert!(
        ws.extensions().contains("permessage-deflate"),
        "serve negotiates"
    );
    close(ws).await;
}

/// `sockeye connect` offers permessage-deflate unless told not to, and says what was
/// agreed.
#[tokio::test]
async fn connect_no_deflate_flag() {
    let server = echo_server(&["--deflate"]).await;
    for (flag, expect) in [(None, true), (Some("--no-deflate"), false)] {
        let mut command = sockeye();
        command.args(["connect", &format!("ws://{}/", server.addr)]);
        if let Some(flag) = flag {
            command.arg(flag);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let long = "z".repeat(3000);
        stdin
            .write_all(format!("{long}\n").as_bytes())
            .await
            .unwrap();
        let printed = tokio::time::timeout(STEP, stdout.next_line())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(printed, Some(format!("< {long}")));
        drop(stdin);
        assert!(wait(&mut child).await.success());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert_eq!(
            stderr.contains("permessage-deflate"),
            expect,
            "{flag:?}: {stderr}"
        );
    }
}

/// Runs `sockeye bench URL ARGS --json`: whether it succeeded, and its summary.
async fn bench_run(url: &str, args: &[&str]) -> (bool, Value, String) {
    let output = sockeye()
        .args(["bench", url])
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let summary = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("one JSON object ({e}): {stderr}"));
    (output.status.success(), summary, stderr)
}

/// Runs `sockeye bench URL ARGS --json`, which must succeed; its summary.
async fn bench_json(url: &str, args: &[&str]) -> Value {
    let (ok, summary, stderr) = bench_run(url, args).await;
    assert!(ok, "{stderr}");
    summary
}

/// `sockeye bench` loads `sockeye echo` and reports rate and latency as JSON.
#[tokio::test]
async fn bench_reports_rate_and_latency() {
    let server = echo_server(&[]).await;
    let url = format!("ws://{}/", server.addr);
    let summary = bench_json(
        &url,
        &[
            "--connections",
            "4",
            "--size",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    )
    .await;
    assert_eq!(summary["errors"], 0);
    assert_eq!(summary["connections"], 4);
    assert!(summary["messages"].as_u64().unwrap() > 100, "{summary}");
    assert!(summary["msgs_per_s"].as_f64().unwrap() > 100.0);
    let p50 = summary["latency_us"]["p50"].as_u64().unwrap();
    let p99 = summary["latency_us"]["p99"].as_u64().unwrap();
    assert!(p50 > 0 && p50 <= p99, "{summary}");
    // Large echoes are counted piece by piece as they arrive, whole messages all the same.
    let summary = bench_json(
        &url,
        &["-c", "2", "-s", "700000", "-d", "1", "--warmup", "0"],
    )
    .await;
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["messages"].as_u64().unwrap() >= 10, "{summary}");
    // A server that is not there: a clear error, non-zero exit.
    let failed = sockeye()
        .args(["bench", "ws://127.0.0.1:1/", "--duration", "1"])
        .output()
        .await
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("cannot connect"));
}

/// `sockeye bench` paces to `--rate` (messages per second over all connections).
#[tokio::test]
async fn bench_paces_to_the_rate() {
    let server = echo_server(&[]).await;
    let url = format!("ws://{}/", server.addr);
    let summary = bench_json(
        &url,
        &[
            "-c", "2", "-s", "2000", "-r", "1500", "-d", "2", "--warmup", "0",
        ],
    )
    .await;
    assert_eq!(summary["errors"], 0, "{summary}");
    let rate = summary["msgs_per_s"].as_f64().unwrap();
    // A message every 1.33 ms per connection: timer lateness must not add up (a sleep of
    // the interval after each send, rounded up to the timer's 1 ms, would give 1,000/s).
    // A missed tick is not made up for (no burst after a stall), so the margin below is
    // for a loaded machine, where stalls of 50-100 ms were seen.
    assert!((1200.0..=1505.0).contains(&rate), "{summary}");
}

/// An echo server for the bench tests, in this process: pings before every echo, counts
/// the pongs, and after `echoes` echoes drops the connection without a close frame.
async fn pinging_server_that_quits(
    echoes: usize,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (pongs_tx, pongs_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let pongs_tx = pongs_tx.clone();
            tokio::spawn(async move {
                let config = sockeye::ServerConfig::default();
                let Ok((mut ws, _)) = sockeye::accept(stream, &config).await else {
                    return;
                };
                let (mut echoed, mut pongs) = (0, 0);
                let deadline = tokio::time::Instant::now() + STEP;
                while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await
                {
                    match message {
                        Message::Binary(data) if echoed < echoes => {
                            ws.ping(b"are you there").await.unwrap();
                            ws.send(Message::Binary(data)).await.unwrap();
                            echoed += 1;
                        }
                        Message::Pong(_) => pongs += 1,
                        _ => {}
                    }
                    if echoed == echoes && pongs == echoes {
                        break;
                    }
                }
                let _ = pongs_tx.send(pongs);
                // Dropped here: end of stream, no close frame.
            });
        }
    });
    (addr, pongs_rx)
}

/// `sockeye bench` answers pings, and a server that stops echoing shows as errors and a
/// failed run.
#[tokio::test]
async fn bench_answers_pings_and_reports_a_server_that_quits() {
    let (addr, mut pongs) = pinging_server_that_quits(5).await;
    let (ok, summary, _) = bench_run(
        &format!("ws://{addr}/"),
        &["-c", "2", "-s", "64", "-d", "2", "--warmup", "0"],
    )
    .await;
    assert!(!ok);
    assert_eq!(summary["errors"], 2, "{summary}");
    assert!(summary["messages"].as_u64().unwrap() <= 10, "{summary}");
    for _ in 0..2 {
        let answered = tokio::time::timeout(STEP, pongs.recv()).await.unwrap();
        assert_eq!(answered, Some(5), "every ping answered");
    }
}

// ---- TLS, ws+unix, proxy ---------------------------------------------------------------------

/// A directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "sockeye-cli-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// Writes `contents` to `name` in the directory and returns its path as a string.
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM files for a test PKI made by rcgen: a CA and a server certificate it signed for
/// `localhost` and 127.0.0.1.
struct Pem {
    _dir: TempDir,
    ca: String,
    cert: String,
    key: String,
}

fn pem_files() -> Pem {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Sockeye CLI test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server.signed_by(&server_key, &ca).unwrap();
    let dir = TempDir::new("tls");
    Pem {
        ca: dir.write("ca.pem", &ca.pem()),
        cert: dir.write("cert.pem", &server.pem()),
        key: dir.write("key.pem", &server_key.serialize_pem()),
        _dir: dir,
    }
}

/// Runs `sockeye connect <args>`, types one line, expects it back as "< line", closes
/// stdin and expects exit 0; returns stderr.
async fn connect_echoes_a_line(args: &[&str]) -> String {
    let mut child = sockeye()
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    stdin
        .write_all(b"over the wire \xe2\x9c\x93\n")
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let printed = tokio::time::timeout(STEP, stdout.next_line())
        .await
        .expect("the echo is printed in time")
        .unwrap();
    drop(stdin); // EOF: close cleanly.
    let status = wait(&mut child).await;
    let stderr = tokio::time::timeout(STEP, stderr)
        .await
        .expect("stderr ends in time")
        .unwrap();
    assert_eq!(
        printed.as_deref(),
        Some("< over the wire ✓"),
        "{args:?}: {stderr}"
    );
    assert!(status.success(), "{args:?}: {status:?}\n{stderr}");
    assert!(stderr.contains("connected to"), "{stderr}");
    stderr
}

/// Runs `sockeye connect <args>` with empty stdin, bounded: (exit status, stderr).
async fn connect_output(args: &[&str]) -> (ExitStatus, String) {
    let output = tokio::time::timeout(
        STEP,
        sockeye()
            .arg("connect")
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("connect ends in time")
    .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `sockeye echo --tls-cert/--tls-key` serves wss://; `sockeye connect --ca` trusts it,
/// without --ca the certificate is refused, and --insecure connects with a warning.
#[tokio::test]
async fn echo_over_tls_and_connect_with_ca_or_insecure() {
    let pem = pem_files();
    let server = start(
        &["echo", "--tls-cert", &pem.cert, "--tls-key", &pem.key],
        "sockeye echo listening on wss://",
    )
    .await;
    let url = format!("wss://localhost:{}/", server.addr.port());

    let stderr = connect_echoes_a_line(&[&url, "--ca", &pem.ca]).await;
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stderr.lines().any(|l| l == "closed 1000"), "{stderr}");

    let (status, stderr) = connect_output(&[&url]).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(
        stderr.to_ascii_lowercase().contains("certificate"),
        "{stderr}"
    );

    let stderr = connect_echoes_a_line(&[&url, "--insecure"]).await;
    assert!(stderr.contains("warning: --insecure"), "{stderr}");

    // Plain ws:// to the TLS port does not get a WebSocket.
    let (status, _) = connect_output(&[&format!("ws://{}/", server.addr)]).await;
    assert!(!status.success());
}

/// `sockeye serve --tls-cert/--tls-key` serves wss:// at /echo.
#[tokio::test]
async fn serve_over_tls_echoes_at_slash_echo() {
    let pem = pem_files();
    let server = start(
        &["serve", "--tls-cert", &pem.cert, "--tls-key", &pem.key],
        "sockeye serve: open https://",
    )
    .await;
    let url = format!("wss://localhost:{}/echo", server.addr.port());
    connect_echoes_a_line(&[&url, "--ca", &pem.ca]).await;
    let (status, stderr) = connect_output(&[&url]).await;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.to_ascii_lowercase().contains("certificate"),
        "{stderr}"
    );
}

/// Headless Chromium loads the demo page from `sockeye serve` over https (TLS offering h2
/// and http/1.1 on one port): the page's WebSocket goes over HTTP/2 (RFC 8441), as the
/// server's own log says (`RUST_LOG`: the connection's span has `http=HTTP/2.0`), and
/// echoes what is typed in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_opens_the_pages_websocket_over_http2_from_serve() {
    let pem = pem_files();
    let mut child = sockeye()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--tls-cert", &pem.cert, "--tls-key", &pem.key])
        .env("RUST_LOG", "sockeye=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(STEP, stdout.next_line())
        .await
        .expect("serve announces itself in time")
        .unwrap()
        .expect("a first line");
    let port: u16 = line
        .strip_prefix("sockeye serve: open https://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    // The server's log, line by line.
    let (log_tx, mut log) = tokio::sync::mpsc::unbounded_channel();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = log_tx.send(line);
        }
    });

    let url = format!("https://localhost:{port}/");
    let mut page =
        common::chromium::Chromium::open_with(&url, &["--ignore-certificate-errors"]).await;
    const ECHO_LOG: &str = "document.querySelector('[data-testid=echo-log]').innerText";
    page.wait_for(
        "document.querySelector('[data-testid=echo-state]').textContent === 'open'",
        STEP,
        "the page's echo WebSocket opens",
        ECHO_LOG,
    )
    .await;
    page.eval(
        "(() => { const i = document.querySelector('[data-testid=echo-input]'); \
         i.value = 'over h2'; \
         document.querySelector('[data-testid=echo-send]').click(); return true; })()",
    )
    .await;
    page.wait_for(
        &format!("{ECHO_LOG}.includes('← over h2')"),
        STEP,
        "the echo in the page",
        ECHO_LOG,
    )
    .await;

    // The server saw the page's echo WebSocket arrive as an HTTP/2 stream.
    let mut seen = Vec::new();
    let opened = tokio::time::timeout(STEP, async {
        while let Some(line) = log.recv().await {
            let found = line.contains("connection open")
                && line.contains("path=/echo")
                && line.contains("http=HTTP/2.0");
            seen.push(line);
            if found {
                return;
            }
        }
    })
    .await;
    assert!(
        opened.is_ok(),
        "no HTTP/2 WebSocket at /echo in the server's log: {seen:#?}"
    );
}

/// `sockeye echo` and `sockeye serve` with TLS serve HTTP/1.1 and HTTP/2 on one port:
/// `connect --http2` opens its WebSocket as an HTTP/2 stream (RFC 8441), `connect`
/// without it upgrades HTTP/1.1. `serve` also gives its page over HTTP/2.
#[tokio::test]
async fn tls_servers_take_connect_http2_and_http11() {
    let pem = pem_files();
    let echo = start(
        &["echo", "--tls-cert", &pem.cert, "--tls-key", &pem.key],
        "sockeye echo listening on wss://",
    )
    .await;
    let serve = start(
        &["serve", "--tls-cert", &pem.cert, "--tls-key", &pem.key],
        "sockeye serve: open https://",
    )
    .await;
    for url in [
        format!("wss://localhost:{}/", echo.addr.port()),
        format!("wss://localhost:{}/echo", serve.addr.port()),
    ] {
        let stderr = connect_echoes_a_line(&[&url, "--ca", &pem.ca, "--http2"]).await;
        assert!(stderr.contains("[200] over HTTP/2"), "{url}: {stderr}");
        let stderr = connect_echoes_a_line(&[&url, "--ca", &pem.ca]).await;
        assert!(stderr.contains("[101]"), "{url}: {stderr}");
        assert!(!stderr.contains("HTTP/2"), "{url}: {stderr}");
    }
    // The page, over HTTP/2 on the same port.
    let (status, page) = get_over_h2(serve.addr.port(), &pem.ca, "/").await;
    assert_eq!(status, 200);
    assert_eq!(page, include_str!("../src/page.html"));
    let (status, _) = get_over_h2(serve.addr.port(), &pem.ca, "/missing").await;
    assert_eq!(status, 404);
    // A path `serve` has no WebSocket on: refused over HTTP/2 as well.
    let url = format!("wss://localhost:{}/nowhere", serve.addr.port());
    let (status, stderr) = connect_output(&[&url, "--ca", &pem.ca, "--http2"]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("400"), "{stderr}");
}

/// GET `path` from `https://localhost:port` over HTTP/2 (h2 alone in ALPN), trusting the
/// CA in the PEM file `ca`: the status and the body.
async fn get_over_h2(port: u16, ca: &str, path: &str) -> (u16, String) {
    let mut tls = sockeye::ClientTlsConfig::default();
    tls.ca_pem = Some(std::fs::read(ca).unwrap());
    let mut config = (*tls.to_rustls().unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = sockeye::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    let (send, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let request = sockeye::proto::http::Request::get(format!("https://localhost:{port}{path}"))
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = tokio::time::timeout(STEP, response).await.unwrap().unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(data) = tokio::time::timeout(STEP, body.data()).await.unwrap() {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        bytes.extend_from_slice(&data);
    }
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// `sockeye bench --http2`: --streams WebSockets on each of --connections HTTP/2
/// connections (h2c with prior knowledge to `sockeye echo`).
#[tokio::test]
async fn bench_over_http2_streams() {
    let server = echo_server(&[]).await;
    let url = format!("ws://{}/", server.addr);
    let summary = bench_json(
        &url,
        &[
            "--http2",
            "-c",
            "2",
            "--streams",
            "3",
            "-s",
            "512",
            "-d",
            "0.5",
            "--warmup",
            "0",
        ],
    )
    .await;
    assert_eq!(summary["http2"], true, "{summary}");
    assert_eq!(summary["streams_per_connection"], 3, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["messages"].as_u64().unwrap() >= 6, "{summary}");
    // --streams without --http2 is a usage error.
    let failed = sockeye()
        .args(["bench", &url, "--streams", "2", "-d", "0.2"])
        .output()
        .await
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("--streams is for --http2"));
}

/// A bad --tls-cert is an error at startup.
#[tokio::test]
async fn echo_with_an_unreadable_certificate_fails() {
    let dir = TempDir::new("badtls");
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let junk = dir.write("junk.pem", "not a certificate\n");
    for cert in [missing, junk.as_str()] {
        let output = tokio::time::timeout(
            STEP,
            sockeye()
                .args(["echo", "--listen", "127.0.0.1:0"])
                .args(["--tls-cert", cert, "--tls-key", &junk])
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("echo gives up in time")
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{cert}: {stderr}");
        assert!(stderr.contains("--tls-"), "{cert}: {stderr}");
    }
}

/// The CLI has no Unix-socket listener (`sockeye echo --listen` takes an IP address), so
/// ws+unix: is checked only for a socket that does not exist: a clear error naming it.
#[tokio::test]
async fn connect_ws_unix_to_a_missing_socket_fails() {
    let dir = TempDir::new("unix");
    let socket = dir.0.join("nonexistent.sock");
    let url = format!("ws+unix:{}:/", socket.display());
    let (status, stderr) = connect_output(&[&url]).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains("nonexistent.sock"), "{stderr}");
}

/// A one-connection HTTP CONNECT proxy on loopback: returns its address and the request
/// line it received.
async fn connect_proxy() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, request_line) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        // Read the head a byte at a time so nothing after it is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            if client.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
            assert!(head.len() < 8192, "head too long");
        }
        let head = String::from_utf8(head).unwrap();
        let line = head.lines().next().unwrap().to_owned();
        let target = line.split(' ').nth(1).unwrap().to_owned();
        let _ = seen.send(line);
        let mut upstream = TcpStream::connect(&target).await.unwrap();
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    (addr, request_line)
}

/// `sockeye connect --proxy` tunnels through an HTTP CONNECT proxy.
#[tokio::test]
async fn connect_through_an_http_connect_proxy() {
    let server = echo_server(&[]).await;
    let (proxy, request_line) = connect_proxy().await;
    connect_echoes_a_line(&[
        &format!("ws://{}/", server.addr),
        "--proxy",
        &format!("http://{proxy}"),
    ])
    .await;
    let line = tokio::time::timeout(STEP, request_line)
        .await
        .expect("the proxy saw a request")
        .expect("a request line");
    assert_eq!(line, format!("CONNECT {} HTTP/1.1", server.addr));
}
