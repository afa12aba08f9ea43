//! Interop with Node's `ws` (the exact version pinned in `tests/interop/package.json`),
//! both ways: a Sockeye client against a ws server (`tests/interop/server.js`) and a ws
//! client against a Sockeye server (`tests/interop/client.js`).
//!
//! The Node side is a command-driven peer (`tests/interop/peer.js`): it reports what it
//! receives as event lines on stdout and sends what it is told on stdin, so every check is
//! asserted on both ends. Each test runs its own `node` process on loopback ports, and
//! every step is bounded by [`STEP`].
//!
//! The `deflate_*` scenarios run permessage-deflate (RFC 7692) against ws's
//! `perMessageDeflate` (set per run through `SOCKEYE_INTEROP_DEFLATE`); the others run
//! without it, the Sockeye client's default offer being declined by the ws server.
//!
//! Needs `node` (20+) on `PATH` and `npm ci` run in `crates/sockeye/tests/interop`; the
//! tests fail, never skip, without them.

#[cfg(feature = "deflate")]
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use futures_util::StreamExt;
use sockeye::{
    ClientConfig, CloseFrame, DataKind, DeflateConfig, Message, SendOptions, ServerConfig,
    WebSocket,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

use crate::support::{self, STEP};

// ------------------------------------------------------------------ the Node peer

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The string value of the first `key` in a JSON text (enough for package.json files).
fn json_string<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// Fails loudly unless the pinned `ws` is installed.
fn check_node_modules() {
    let dir = interop_dir();
    let install = format!("run `npm ci` in {}", dir.display());
    let manifest = std::fs::read_to_string(dir.join("package.json"))
        .unwrap_or_else(|e| panic!("{}/package.json: {e}", dir.display()));
    let pinned = json_string(&manifest, "\"ws\"").expect("package.json pins ws");
    let installed = std::fs::read_to_string(dir.join("node_modules/ws/package.json"))
        .unwrap_or_else(|e| panic!("ws is not installed for the interop tests ({e}): {install}"));
    let installed = json_string(&installed, "\"version\"").expect("ws's version");
    assert_eq!(
        installed, pinned,
        "node_modules has ws {installed} but package.json pins {pinned}: {install}"
    );
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The deterministic payload of the binary tests, as `pattern()` in peer.js: not periodic
/// in 256, so shifted or reordered bytes show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31) ^ (i >> 11)) as u8).collect()
}

/// Deterministic bytes that do not compress, as `noise()` in peer.js (xorshift32).
#[cfg(feature = "deflate")]
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    let mut out = Vec::with_capacity(len + 3);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Multi-byte UTF-8 text that compresses well, at most `len` bytes (cut at a character).
fn prose(len: usize) -> String {
    let line = "permessage-deflate ✓ héllo wörld — こんにちは 🦀 ";
    let mut text = line.repeat(len / line.len() + 1);
    let mut end = len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// FNV-1a 32, as `fnv1a32()` in peer.js.
fn fnv1a32(data: &[u8]) -> String {
    let hash = data.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}

/// One line of the peer's stdout: `name key=value ...`.
#[derive(Debug)]
struct Event {
    name: String,
    fields: HashMap<String, String>,
}

impl Event {
    fn parse(line: &str) -> Event {
        let mut parts = line.split(' ');
        let name = parts.next().unwrap_or_default().to_owned();
        let fields = parts
            .map(|part| {
                let (key, value) = part
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad event line {line:?}"));
                (key.to_owned(), value.to_owned())
            })
            .collect();
        Event { name, fields }
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {self:?}"))
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        unhex(self.get(key))
    }

    fn text(&self, key: &str) -> String {
        String::from_utf8(self.bytes(key)).unwrap_or_else(|e| panic!("{key}: {e}"))
    }
}

/// A running `node` peer (killed when dropped).
struct Node {
    script: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Node {
    /// Runs `script` with ws's `perMessageDeflate` option set to `deflate` (JSON).
    fn spawn(script: &'static str, args: &[&str], deflate: &str) -> Node {
        check_node_modules();
        let dir = interop_dir();
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .env("SOCKEYE_INTEROP_DEFLATE", deflate)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `node` ({e}): install Node.js 20+ and run `npm ci` in {}",
                    dir.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Node {
            script,
            child,
            stdin,
            stdout,
        }
    }

    /// The next event; an `error` event fails the test.
    async fn event(&mut self) -> Event {
        let script = self.script;
        let line = timeout(STEP, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no event from node {script} within {STEP:?}"))
            .expect("read node's stdout");
        let Some(line) = line else {
            let status = timeout(STEP, self.child.wait()).await;
            panic!("node {script} exited ({status:?}) while an event was expected");
        };
        let event = Event::parse(&line);
        if event.name == "error" {
            panic!("node {script} reported an error: {}", event.text("message"));
        }
        event
    }

    /// The next event, which must be `name`.
    async fn expect(&mut self, name: &str) -> Event {
        let event = self.event().await;
        assert_eq!(
            event.name, name,
            "expected a {name} event from node, got {event:?}"
        );
        event
    }

    /// Sends a command line.
    async fn command(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        timeout(STEP, self.stdin.write_all(&bytes))
            .await
            .expect("command written in time")
            .expect("write to node's stdin");
    }

    /// The byte counts of ws's socket: (read, written).
    async fn stats(&mut self) -> (u64, u64) {
        self.command("stats").await;
        let stats = self.expect("stats").await;
        (stats.num("read"), stats.num("written"))
    }

    /// After the `close` event: the peer reports nothing more and exits with success.
    async fn exits(mut self) {
        let script = self.script;
        let rest = timeout(STEP, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("node {script} did not exit within {STEP:?}"))
            .expect("read node's stdout");
        assert_eq!(
            rest, None,
            "node {script} reported more after its close event"
        );
        let status = timeout(STEP, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("node {script} did not exit within {STEP:?}"))
            .expect("wait for node");
        assert!(status.success(), "node {script} exited with {status}");
    }
}

// ------------------------------------------------------------------ connections

/// Which end Sockeye plays.
#[derive(Clone, Copy, Debug)]
enum Side {
    /// A Sockeye client talks to a ws server.
    Client,
    /// A ws client talks to a Sockeye server.
    Server,
}

/// The subprotocol both kinds of server choose when it is offered.
const PICKED: &str = "b";

/// A connected pair: Sockeye's end and the Node peer, with what the peer saw of the
/// handshake.
struct Pair {
    ws: WebSocket<TcpStream>,
    node: Node,
    node_protocol: String,
    /// ws's `extensions` (`permessage-deflate` or empty).
    node_extensions: String,
    /// The permessage-deflate parameters ws agreed to, `a; b=1`.
    node_deflate: String,
}

/// Connects Sockeye to a ws peer; the client offers `offer`, the server picks [`PICKED`].
/// Compression as by default: the Sockeye client offers it, the Sockeye server and ws
/// (as the tests configure it) do not take part.
async fn pair(side: Side, offer: &[&str]) -> Pair {
    let sockeye = match side {
        Side::Client => ClientConfig::default().per_message_deflate,
        Side::Server => ServerConfig::default().per_message_deflate,
    };
    pair_with(side, offer, sockeye, "false").await
}

/// [`pair`] with Sockeye's `per_message_deflate` set to `sockeye` and ws's
/// `perMessageDeflate` option to `ws` (JSON).
async fn pair_with(side: Side, offer: &[&str], sockeye: Option<DeflateConfig>, ws: &str) -> Pair {
    let (ws, mut node) = match side {
        Side::Client => {
            let mut node = Node::spawn("server.js", &[PICKED], ws);
            let port = node.expect("listening").await.num("port");
            let config = ClientConfig {
                protocols: offer.iter().map(|p| (*p).to_owned()).collect(),
                handshake_timeout: Some(STEP),
                per_message_deflate: sockeye,
                ..ClientConfig::default()
            };
            let (ws, _response) = sockeye::connect_with(&format!("ws://127.0.0.1:{port}/"), config)
                .await
                .expect("connect to the ws server");
            (ws, node)
        }
        Side::Server => {
            let config = ServerConfig {
                handle_protocols: Some(std::sync::Arc::new(|offered: &[String], _: &_| {
                    offered.iter().find(|p| *p == PICKED).cloned()
                })),
                per_message_deflate: sockeye,
                ..ServerConfig::default()
            };
            let server = support::server(config).await;
            let url = format!("ws://{}/", server.local_addr());
            let node = Node::spawn("client.js", &[&url, &offer.join(",")], ws);
            (support::accept_one(&server).await, node)
        }
    };
    let open = node.expect("open").await;
    Pair {
        ws,
        node,
        node_protocol: open.text("protocol"),
        node_extensions: open.text("extensions"),
        node_deflate: open.text("deflate"),
    }
}

/// The next message from the peer.
async fn recv(ws: &mut WebSocket<TcpStream>) -> Message {
    match timeout(STEP, ws.next()).await {
        Err(_) => panic!("no message from the ws peer within {STEP:?}"),
        Ok(None) => panic!("the stream ended while a message was expected"),
        Ok(Some(Err(e))) => panic!("the stream failed: {e}"),
        Ok(Some(Ok(message))) => message,
    }
}

/// The stream ends cleanly: `None`, not an error.
async fn expect_end(ws: &mut WebSocket<TcpStream>) {
    match timeout(STEP, ws.next()).await {
        Err(_) => panic!("the stream did not end within {STEP:?}"),
        Ok(None) => {}
        Ok(Some(other)) => panic!("expected the end of the stream, got {other:?}"),
    }
}

/// Sockeye starts the close handshake with `code`/`reason`: ws reports them in its
/// `close` event and echoes them, Sockeye's stream yields the echo then ends, and node
/// exits cleanly.
async fn close_from_sockeye(mut pair: Pair, code: u16, reason: &str) {
    let frame = CloseFrame::new(code, reason);
    timeout(STEP, pair.ws.close(Some(frame.clone())))
        .await
        .expect("close in time")
        .expect("close");
    assert_eq!(recv(&mut pair.ws).await, Message::Close(Some(frame)));
    expect_end(&mut pair.ws).await;
    let closed = pair.node.expect("close").await;
    assert_eq!(
        (closed.num("code"), closed.text("reason").as_str()),
        (u64::from(code), reason)
    );
    pair.node.exits().await;
}

async fn send_binary(ws: &WebSocket<TcpStream>, data: &[u8]) {
    timeout(STEP, ws.send_binary(data))
        .await
        .expect("sent in time")
        .expect("send");
}

async fn send_text(ws: &WebSocket<TcpStream>, text: &str) {
    timeout(STEP, ws.send_text(text))
        .await
        .expect("sent in time")
        .expect("send");
}

async fn send_frame(ws: &WebSocket<TcpStream>, kind: DataKind, data: &[u8], fin: bool) {
    timeout(STEP, ws.send_frame(kind, data, fin))
        .await
        .expect("sent in time")
        .expect("send_frame");
}

async fn send_with(
    ws: &WebSocket<TcpStream>,
    kind: DataKind,
    data: &[u8],
    fin: bool,
    compress: bool,
) {
    timeout(
        STEP,
        ws.send_with(kind, data, SendOptions { fin, compress }),
    )
    .await
    .expect("sent in time")
    .expect("send_with");
}

async fn ping(ws: &WebSocket<TcpStream>, data: &[u8]) {
    timeout(STEP, ws.ping(data))
        .await
        .expect("sent in time")
        .expect("ping");
}

/// Node received a text message equal to `text`.
async fn node_got_text(node: &mut Node, text: &str) {
    let got = node.expect("message").await;
    assert_eq!(got.get("type"), "text", "{got:?}");
    assert_eq!(got.num("len"), text.len() as u64);
    assert_eq!(got.text("data"), text);
}

/// Node received a binary message equal to `data`.
async fn node_got_binary(node: &mut Node, data: &[u8]) {
    let got = node.expect("message").await;
    assert_eq!(got.get("type"), "binary", "{got:?}");
    assert_eq!(got.num("len"), data.len() as u64, "{got:?}");
    assert_eq!(got.get("fnv"), fnv1a32(data), "content differs: {got:?}");
    assert_eq!(
        got.get("pattern") == "true",
        *data == pattern(data.len()),
        "{got:?}"
    );
}

fn assert_binary(message: &Message, expected: &[u8]) {
    let Message::Binary(data) = message else {
        panic!(
            "expected a binary message of {} bytes, got {message:?}",
            expected.len()
        );
    };
    assert_eq!(data.len(), expected.len(), "length");
    if let Some(at) = data.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "binary message of {} bytes differs from byte {at} on",
            expected.len()
        );
    }
}

// ------------------------------------------------------------------ the tests

/// Text both ways, multi-byte UTF-8 included (and a 16-bit-length-exceeding one).
async fn text(side: Side) {
    let mut pair = pair(side, &[]).await;
    assert_eq!(
        (pair.ws.protocol(), pair.node_protocol.as_str()),
        (None, "")
    );
    let long = "🦀é".repeat(12_000);
    let texts = [
        "",
        "hello",
        "héllo wörld — こんにちは 🦀 \u{10FFFF}",
        long.as_str(),
    ];
    for text in texts {
        send_text(&pair.ws, text).await;
        node_got_text(&mut pair.node, text).await;
        pair.node
            .command(&format!("text data={}", hex(text.as_bytes())))
            .await;
        match recv(&mut pair.ws).await {
            Message::Text(got) => assert_eq!(got.as_str(), text),
            other => panic!("expected text, got {other:?}"),
        }
    }
    close_from_sockeye(pair, 1000, "done").await;
}

/// Binary of every length encoding's edges, up to 16 MiB, content checked.
async fn binary_sizes(side: Side) {
    let mut pair = pair(side, &[]).await;
    for len in [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20] {
        let data = pattern(len);
        send_binary(&pair.ws, &data).await;
        node_got_binary(&mut pair.node, &data).await;
        pair.node.command(&format!("pattern len={len}")).await;
        assert_binary(&recv(&mut pair.ws).await, &data);
    }
    close_from_sockeye(pair, 1000, "done").await;
}

/// Messages in several frames both ways: Sockeye with `send_frame(.., fin)`, ws with
/// `send(chunk, { fin })`; text split inside a UTF-8 sequence, an empty fragment, a ping
/// between fragments.
async fn fragmented(side: Side) {
    let mut pair = pair(side, &[]).await;
    let text = "fragmented ✓ message";
    let bytes = text.as_bytes();
    let split = text.find('✓').unwrap() + 1; // inside the 3-byte ✓
    let text_chunks: [&[u8]; 4] = [&bytes[..4], &bytes[4..split], b"", &bytes[split..]];
    let data = pattern(70_000);
    let binary_chunks: [&[u8]; 3] = [&data[..1000], &data[1000..66_000], &data[66_000..]];

    // Sockeye -> ws.
    send_frame(&pair.ws, DataKind::Text, text_chunks[0], false).await;
    send_frame(&pair.ws, DataKind::Text, text_chunks[1], false).await;
    ping(&pair.ws, b"between").await;
    send_frame(&pair.ws, DataKind::Text, text_chunks[2], false).await;
    send_frame(&pair.ws, DataKind::Text, text_chunks[3], true).await;
    let got = pair.node.expect("ping").await;
    assert_eq!(got.bytes("data"), b"between");
    node_got_text(&mut pair.node, text).await;
    assert_eq!(recv(&mut pair.ws).await, Message::Pong("between".into()));
    for (i, chunk) in binary_chunks.iter().enumerate() {
        send_frame(
            &pair.ws,
            DataKind::Binary,
            chunk,
            i == binary_chunks.len() - 1,
        )
        .await;
    }
    node_got_binary(&mut pair.node, &data).await;

    // ws -> Sockeye.
    let chunks = |chunks: &[&[u8]]| chunks.iter().map(|c| hex(c)).collect::<Vec<_>>().join(",");
    pair.node
        .command(&format!(
            "fragments type=text chunks={}",
            chunks(&text_chunks)
        ))
        .await;
    match recv(&mut pair.ws).await {
        Message::Text(got) => assert_eq!(got.as_str(), text),
        other => panic!("expected text, got {other:?}"),
    }
    pair.node
        .command(&format!(
            "fragments type=binary chunks={}",
            chunks(&binary_chunks)
        ))
        .await;
    assert_binary(&recv(&mut pair.ws).await, &data);
    close_from_sockeye(pair, 1000, "done").await;
}

/// Pings with payloads both ways come back in the pongs (ws's `autoPong`, Sockeye's
/// `auto_pong`), empty and 125-byte payloads included.
async fn ping_pong(side: Side) {
    let mut pair = pair(side, &[]).await;
    let payloads: [Vec<u8>; 3] = [b"sockeye \x00\xff".to_vec(), Vec::new(), pattern(125)];
    for payload in &payloads {
        // Sockeye pings ws.
        ping(&pair.ws, payload).await;
        assert_eq!(pair.node.expect("ping").await.bytes("data"), *payload);
        assert_eq!(
            recv(&mut pair.ws).await,
            Message::Pong(payload.clone().into())
        );

        // ws pings Sockeye.
        pair.node
            .command(&format!("ping data={}", hex(payload)))
            .await;
        assert_eq!(
            recv(&mut pair.ws).await,
            Message::Ping(payload.clone().into())
        );
        assert_eq!(pair.node.expect("pong").await.bytes("data"), *payload);
    }
    close_from_sockeye(pair, 1000, "done").await;
}

/// Sockeye closes with 4001 "bye": ws sees the code and reason, both ends finish the
/// handshake.
async fn close_by_sockeye(side: Side) {
    let pair = pair(side, &[]).await;
    close_from_sockeye(pair, 4001, "bye").await;
}

/// ws closes with 4002 and a UTF-8 reason: Sockeye yields it, echoes it (ws reports the
/// echo), then its stream ends.
async fn close_by_ws(side: Side) {
    let mut pair = pair(side, &[]).await;
    let reason = "bye from ws ✓";
    pair.node
        .command(&format!(
            "close code=4002 reason={}",
            hex(reason.as_bytes())
        ))
        .await;
    assert_eq!(
        recv(&mut pair.ws).await,
        Message::Close(Some(CloseFrame::new(4002, reason)))
    );
    expect_end(&mut pair.ws).await;
    let closed = pair.node.expect("close").await;
    assert_eq!(
        (closed.num("code"), closed.text("reason")),
        (4002, reason.to_owned())
    );
    pair.node.exits().await;
}

/// The client offers ["a", "b"], the server picks "b", both ends agree.
async fn subprotocol(side: Side) {
    let mut pair = pair(side, &["a", "b"]).await;
    assert_eq!(pair.ws.protocol(), Some(PICKED));
    assert_eq!(pair.node_protocol, PICKED);
    // The connection works after the choice.
    send_text(&pair.ws, "with b").await;
    node_got_text(&mut pair.node, "with b").await;
    close_from_sockeye(pair, 1000, "done").await;
}

// ------------------------------------------------------------------ permessage-deflate
//
// RFC 7692 with ws's `perMessageDeflate`. What travels on the wire is measured on the
// Node side (its socket's bytesRead / bytesWritten around one message), so "compressed"
// and "sent as is" are checked, not assumed.

/// ws's `perMessageDeflate: true` (its defaults: threshold 1024, context takeover).
const WS_DEFLATE: &str = "true";

impl Side {
    /// Whether Sockeye's end masks its frames (a client does).
    fn sockeye_masks(self) -> bool {
        matches!(self, Side::Client)
    }
}

/// The size on the wire of an uncompressed frame with a `len`-byte payload.
fn wire_len(len: usize, masked: bool) -> u64 {
    let extended = match len {
        0..=125 => 0,
        126..=0xffff => 2,
        _ => 8,
    };
    (2 + extended + if masked { 4 } else { 0 } + len) as u64
}

#[cfg(feature = "deflate")]
/// The parameters of a permessage-deflate header value, in any order.
fn deflate_params(value: &str) -> BTreeSet<String> {
    value
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "permessage-deflate")
        .map(str::to_owned)
        .collect()
}

#[cfg(feature = "deflate")]
/// Both ends agreed to permessage-deflate with exactly the parameters `expected`.
fn assert_agreed(pair: &Pair, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|p| (*p).to_owned()).collect();
    let ours = pair.ws.extensions();
    assert!(ours.starts_with("permessage-deflate"), "Sockeye: {ours:?}");
    assert_eq!(deflate_params(ours), expected, "Sockeye: {ours:?}");
    assert_eq!(pair.node_extensions, "permessage-deflate", "ws.extensions");
    assert_eq!(
        deflate_params(&pair.node_deflate),
        expected,
        "ws: {:?}",
        pair.node_deflate
    );
}

/// Sockeye sends `data` as one binary message; ws receives it intact. Returns the bytes
/// it took on the wire.
async fn binary_to_ws(pair: &mut Pair, data: &[u8], compress: bool) -> u64 {
    let (read, _) = pair.node.stats().await;
    send_with(&pair.ws, DataKind::Binary, data, true, compress).await;
    node_got_binary(&mut pair.node, data).await;
    pair.node.stats().await.0 - read
}

/// Sockeye sends `text`; ws receives it intact. Returns the bytes on the wire.
async fn text_to_ws(pair: &mut Pair, text: &str, compress: bool) -> u64 {
    let (read, _) = pair.node.stats().await;
    send_with(&pair.ws, DataKind::Text, text.as_bytes(), true, compress).await;
    node_got_text(&mut pair.node, text).await;
    pair.node.stats().await.0 - read
}

/// ws runs `command`, which sends the binary message `expected`; Sockeye receives it
/// intact. Returns the bytes on the wire.
async fn binary_from_ws(pair: &mut Pair, command: &str, expected: &[u8]) -> u64 {
    let (_, written) = pair.node.stats().await;
    pair.node.command(command).await;
    assert_binary(&recv(&mut pair.ws).await, expected);
    pair.node.stats().await.1 - written
}

/// ws sends `text` (with `compress: false` unless `compress`); Sockeye receives it
/// intact. Returns the bytes on the wire.
async fn text_from_ws(pair: &mut Pair, text: &str, compress: bool) -> u64 {
    let (_, written) = pair.node.stats().await;
    let mut command = format!("text data={}", hex(text.as_bytes()));
    if !compress {
        command.push_str(" compress=false");
    }
    pair.node.command(&command).await;
    match recv(&mut pair.ws).await {
        Message::Text(got) => assert_eq!(got.as_str(), text),
        other => panic!("expected text, got {other:?}"),
    }
    pair.node.stats().await.1 - written
}

/// Pings both ways with their pongs, then Sockeye closes: control frames are never
/// compressed and still work.
async fn ping_pong_and_close(mut pair: Pair) {
    ping(&pair.ws, b"deflate ping").await;
    assert_eq!(
        pair.node.expect("ping").await.bytes("data"),
        b"deflate ping"
    );
    assert_eq!(
        recv(&mut pair.ws).await,
        Message::Pong("deflate ping".into())
    );
    pair.node
        .command(&format!("ping data={}", hex(b"ws ping")))
        .await;
    assert_eq!(recv(&mut pair.ws).await, Message::Ping("ws ping".into()));
    assert_eq!(pair.node.expect("pong").await.bytes("data"), b"ws ping");
    close_from_sockeye(pair, 1000, "done").await;
}

#[cfg(feature = "deflate")]
/// Default permessage-deflate on both ends: messages of every size both ways, several
/// in a row over one compression context, `compress: false` from each side, the
/// threshold, pings and the close.
async fn deflate_messages(side: Side) {
    let mut pair = pair_with(side, &[], Some(DeflateConfig::default()), WS_DEFLATE).await;
    assert_agreed(&pair, &[]);
    assert_eq!(pair.ws.extensions(), "permessage-deflate");
    let masks = side.sockeye_masks();

    // Text: empty and 100 bytes are under the threshold (1024) and go as they are.
    let short = "a".repeat(100);
    let texts = [
        String::new(),
        short,
        "héllo wörld — こんにちは 🦀 \u{10FFFF}".to_owned(),
        prose(64 << 10),
        prose(1 << 20),
    ];
    for text in &texts {
        let wire = text_to_ws(&mut pair, text, true).await;
        if text.len() < 1024 {
            assert_eq!(
                wire,
                wire_len(text.len(), masks),
                "{} B sent as is",
                text.len()
            );
        } else {
            assert!(
                wire < text.len() as u64 / 4,
                "{} B text took {wire} B",
                text.len()
            );
        }
        let wire = text_from_ws(&mut pair, text, true).await;
        if text.len() >= 1024 {
            assert!(
                wire < text.len() as u64 / 4,
                "{} B text from ws took {wire} B",
                text.len()
            );
        }
    }

    // Binary: compressible (pattern) and not (noise), up to 16 MiB.
    for len in [0, 100, 64 << 10, 1 << 20, 16 << 20] {
        let data = pattern(len);
        let wire = binary_to_ws(&mut pair, &data, true).await;
        if len < 1024 {
            assert_eq!(wire, wire_len(len, masks), "{len} B sent as is");
        } else {
            assert!(wire < len as u64 / 4, "{len} B of pattern took {wire} B");
        }
        let wire = binary_from_ws(&mut pair, &format!("pattern len={len}"), &data).await;
        if len >= 1024 {
            assert!(
                wire < len as u64 / 4,
                "{len} B of pattern from ws took {wire} B"
            );
        }
    }
    let data = noise(1 << 20);
    assert!(binary_to_ws(&mut pair, &data, true).await > data.len() as u64);
    binary_from_ws(&mut pair, &format!("noise len={}", data.len()), &data).await;

    // Context takeover: the second copy of 8 KiB of noise is a back-reference.
    let data = noise(8 << 10);
    assert!(binary_to_ws(&mut pair, &data, true).await > data.len() as u64);
    let again = binary_to_ws(&mut pair, &data, true).await;
    assert!(
        again < 1024,
        "the repeat took {again} B: no context takeover?"
    );
    let command = format!("noise len={}", data.len());
    assert!(binary_from_ws(&mut pair, &command, &data).await > data.len() as u64);
    let again = binary_from_ws(&mut pair, &command, &data).await;
    assert!(again < 1024, "the repeat from ws took {again} B");

    // compress: false, from each side, between compressed messages.
    let data = pattern(64 << 10);
    let wire = binary_to_ws(&mut pair, &data, false).await;
    assert_eq!(wire, wire_len(data.len(), masks), "compress: false");
    let text = prose(4096);
    let wire = text_to_ws(&mut pair, &text, false).await;
    assert_eq!(wire, wire_len(text.len(), masks), "compress: false");
    assert!(binary_to_ws(&mut pair, &data, true).await < data.len() as u64 / 4);
    let command = format!("pattern len={} compress=false", data.len());
    let wire = binary_from_ws(&mut pair, &command, &data).await;
    assert_eq!(
        wire,
        wire_len(data.len(), !masks),
        "compress: false from ws"
    );
    let wire = text_from_ws(&mut pair, &text, false).await;
    assert_eq!(
        wire,
        wire_len(text.len(), !masks),
        "compress: false from ws"
    );
    let command = format!("pattern len={}", data.len());
    assert!(binary_from_ws(&mut pair, &command, &data).await < data.len() as u64 / 4);

    ping_pong_and_close(pair).await;
}

#[cfg(feature = "deflate")]
/// Compressed messages in several frames both ways (RSV1 on the first frame only): text
/// split inside a UTF-8 sequence with empty fragments, a ping between fragments; the
/// first fragment decides whether the message is compressed; `compress: false`.
async fn deflate_fragmented(side: Side) {
    let mut pair = pair_with(side, &[], Some(DeflateConfig::default()), WS_DEFLATE).await;
    assert_agreed(&pair, &[]);
    let masks = side.sockeye_masks();
    let text = prose(3000);
    let bytes = text.as_bytes();
    let split = text[1500..].find('✓').unwrap() + 1500 + 1; // inside the 3-byte ✓
    let text_chunks: [&[u8]; 5] = [
        &bytes[..split],
        b"",
        &bytes[split..2500],
        &bytes[2500..],
        b"",
    ];
    let data = pattern(70_000);
    let binary_chunks: [&[u8]; 3] = [&data[..5000], &data[5000..66_000], &data[66_000..]];

    // Sockeye -> ws, compressed (the first fragment is over the threshold).
    let (read, _) = pair.node.stats().await;
    for (i, chunk) in text_chunks.iter().enumerate() {
        if i == 2 {
            ping(&pair.ws, b"between").await;
        }
        send_frame(&pair.ws, DataKind::Text, chunk, i == text_chunks.len() - 1).await;
    }
    assert_eq!(pair.node.expect("ping").await.bytes("data"), b"between");
    node_got_text(&mut pair.node, &text).await;
    assert_eq!(recv(&mut pair.ws).await, Message::Pong("between".into()));
    for (i, chunk) in binary_chunks.iter().enumerate() {
        send_frame(
            &pair.ws,
            DataKind::Binary,
            chunk,
            i == binary_chunks.len() - 1,
        )
        .await;
    }
    node_got_binary(&mut pair.node, &data).await;
    let wire = pair.node.stats().await.0 - read;
    assert!(
        wire < (text.len() + data.len()) as u64 / 4,
        "{} B in fragments took {wire} B",
        text.len() + data.len()
    );

    // A first fragment under the threshold: the whole message goes as it is.
    let (read, _) = pair.node.stats().await;
    send_frame(&pair.ws, DataKind::Binary, &data[..100], false).await;
    send_frame(&pair.ws, DataKind::Binary, &data[100..], true).await;
    node_got_binary(&mut pair.node, &data).await;
    let wire = pair.node.stats().await.0 - read;
    assert_eq!(
        wire,
        wire_len(100, masks) + wire_len(data.len() - 100, masks)
    );

    // compress: false on the first fragment.
    let (read, _) = pair.node.stats().await;
    for (i, chunk) in binary_chunks.iter().enumerate() {
        let fin = i == binary_chunks.len() - 1;
        send_with(&pair.ws, DataKind::Binary, chunk, fin, false).await;
    }
    node_got_binary(&mut pair.node, &data).await;
    let wire = pair.node.stats().await.0 - read;
    let plain: u64 = binary_chunks.iter().map(|c| wire_len(c.len(), masks)).sum();
    assert_eq!(wire, plain, "compress: false");

    // ws -> Sockeye: ws compresses every fragment of a message it compresses.
    let chunks = |chunks: &[&[u8]]| chunks.iter().map(|c| hex(c)).collect::<Vec<_>>().join(",");
    let (_, written) = pair.node.stats().await;
    pair.node
        .command(&format!(
            "fragments type=text chunks={}",
            chunks(&text_chunks)
        ))
        .await;
    match recv(&mut pair.ws).await {
        Message::Text(got) => assert_eq!(got.as_str(), text),
        other => panic!("expected text, got {other:?}"),
    }
    pair.node
        .command(&format!(
            "fragments type=binary chunks={}",
            chunks(&binary_chunks)
        ))
        .await;
    assert_binary(&recv(&mut pair.ws).await, &data);
    let wire = pair.node.stats().await.1 - written;
    assert!(
        wire < (text.len() + data.len()) as u64 / 4,
        "from ws: {wire} B"
    );
    let (_, written) = pair.node.stats().await;
    pair.node
        .command(&format!(
            "fragments type=binary chunks={} compress=false",
            chunks(&binary_chunks)
        ))
        .await;
    assert_binary(&recv(&mut pair.ws).await, &data);
    let wire = pair.node.stats().await.1 - written;
    let plain: u64 = binary_chunks
        .iter()
        .map(|c| wire_len(c.len(), !masks))
        .sum();
    assert_eq!(wire, plain, "compress: false from ws");

    // ws closes; the close frame is not compressed either.
    pair.node
        .command(&format!(
            "close code=4002 reason={}",
            hex("bye ✓".as_bytes())
        ))
        .await;
    assert_eq!(
        recv(&mut pair.ws).await,
        Message::Close(Some(CloseFrame::new(4002, "bye ✓")))
    );
    expect_end(&mut pair.ws).await;
    let closed = pair.node.expect("close").await;
    assert_eq!(
        (closed.num("code"), closed.text("reason")),
        (4002, "bye ✓".to_owned())
    );
    pair.node.exits().await;
}

#[cfg(feature = "deflate")]
/// The same messages in a row with no context takeover: every copy is compressed on its
/// own (the repeat is not a back-reference), both ways.
async fn no_takeover_messages(mut pair: Pair) {
    let data = noise(8 << 10);
    let command = format!("noise len={}", data.len());
    for _ in 0..3 {
        let wire = binary_to_ws(&mut pair, &data, true).await;
        assert!(wire > data.len() as u64, "took {wire} B: context kept?");
        let wire = binary_from_ws(&mut pair, &command, &data).await;
        assert!(
            wire > data.len() as u64,
            "from ws took {wire} B: context kept?"
        );
    }
    let text = prose(64 << 10);
    for _ in 0..3 {
        assert!(text_to_ws(&mut pair, &text, true).await < text.len() as u64 / 4);
        assert!(text_from_ws(&mut pair, &text, true).await < text.len() as u64 / 4);
    }
    ping_pong_and_close(pair).await;
}

#[cfg(feature = "deflate")]
/// server_no_context_takeover and client_no_context_takeover, imposed by the server and
/// requested by the client.
async fn deflate_no_context_takeover(side: Side) {
    let both = DeflateConfig {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..DeflateConfig::default()
    };
    let ws_both = r#"{"serverNoContextTakeover":true,"clientNoContextTakeover":true}"#;
    let agreed = ["server_no_context_takeover", "client_no_context_takeover"];
    let setups = match side {
        // The ws server imposes it; then the Sockeye client asks for it.
        Side::Client => [
            (Some(DeflateConfig::default()), ws_both),
            (Some(both), WS_DEFLATE),
        ],
        // The Sockeye server imposes it; then the ws client asks for it.
        Side::Server => [
            (Some(both), WS_DEFLATE),
            (Some(DeflateConfig::default()), ws_both),
        ],
    };
    for (sockeye, ws) in setups {
        let pair = pair_with(side, &[], sockeye, ws).await;
        assert_agreed(&pair, &agreed);
        no_takeover_messages(pair).await;
    }
}

#[cfg(feature = "deflate")]
/// server_max_window_bits=10 and client_max_window_bits=10, imposed by the server and
/// requested by the client. ws inflates with the agreed 10-bit window, so a Sockeye
/// compressor reaching further back would fail there; the wire shows the 2 KiB repeat
/// was out of reach.
async fn deflate_window_bits(side: Side) {
    let ten = DeflateConfig {
        server_max_window_bits: Some(10),
        client_max_window_bits: Some(10),
        ..DeflateConfig::default()
    };
    let ws_ten = r#"{"serverMaxWindowBits":10,"clientMaxWindowBits":10}"#;
    let setups = match side {
        Side::Client => [
            (Some(DeflateConfig::default()), ws_ten),
            (Some(ten), WS_DEFLATE),
        ],
        Side::Server => [
            (Some(ten), WS_DEFLATE),
            (Some(DeflateConfig::default()), ws_ten),
        ],
    };
    for (sockeye, ws) in setups {
        let mut pair = pair_with(side, &[], sockeye, ws).await;
        assert_agreed(
            &pair,
            &["server_max_window_bits=10", "client_max_window_bits=10"],
        );
        let data = noise(2048).repeat(2);
        for _ in 0..2 {
            let wire = binary_to_ws(&mut pair, &data, true).await;
            assert!(
                wire > data.len() as u64,
                "took {wire} B: a window over 1 KiB?"
            );
            let command = format!("fragments type=binary chunks={}", hex(&data));
            binary_from_ws(&mut pair, &command, &data).await;
        }
        let text = prose(64 << 10);
        assert!(text_to_ws(&mut pair, &text, true).await < text.len() as u64 / 4);
        assert!(text_from_ws(&mut pair, &text, true).await < text.len() as u64 / 4);
        // (pattern repeats every 256 bytes, which zlib reaches only from a 10-bit
        // window up, and poorly there: content only.)
        let data = pattern(1 << 20);
        binary_to_ws(&mut pair, &data, true).await;
        let command = format!("pattern len={}", data.len());
        binary_from_ws(&mut pair, &command, &data).await;
        ping_pong_and_close(pair).await;
    }
}

/// One end does not do compression: the connection works uncompressed, and neither end
/// reports an extension. Sockeye's client offers by default to a ws server without it;
/// a ws client offers to a Sockeye server without it (its default).
async fn deflate_fallback(side: Side) {
    let mut pair = match side {
        Side::Client => pair_with(side, &[], Some(DeflateConfig::default()), "false").await,
        Side::Server => pair_with(side, &[], None, WS_DEFLATE).await,
    };
    assert_eq!(pair.ws.extensions(), "");
    assert_eq!(
        (pair.node_extensions.as_str(), pair.node_deflate.as_str()),
        ("", "")
    );
    let masks = side.sockeye_masks();
    let data = pattern(1 << 20);
    assert_eq!(
        binary_to_ws(&mut pair, &data, true).await,
        wire_len(data.len(), masks)
    );
    let command = format!("pattern len={}", data.len());
    let wire = binary_from_ws(&mut pair, &command, &data).await;
    assert_eq!(wire, wire_len(data.len(), !masks));
    let text = prose(4096);
    assert_eq!(
        text_to_ws(&mut pair, &text, true).await,
        wire_len(text.len(), masks)
    );
    assert_eq!(
        text_from_ws(&mut pair, &text, true).await,
        wire_len(text.len(), !masks)
    );
    ping_pong_and_close(pair).await;
}

/// One `#[tokio::test]` per direction for each scenario (with its attributes, e.g. a
/// `cfg`).
macro_rules! both_ways {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        /// A Sockeye client against a ws server.
        mod sockeye_client {
            $(
                $(#[$attr])*
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Side::Client).await;
                }
            )*
        }

        /// A ws client against a Sockeye server.
        mod sockeye_server {
            $(
                $(#[$attr])*
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Side::Server).await;
                }
            )*
        }
    };
}

both_ways!(
    text,
    binary_sizes,
    fragmented,
    ping_pong,
    close_by_sockeye,
    close_by_ws,
    subprotocol,
    #[cfg(feature = "deflate")]
    deflate_messages,
    #[cfg(feature = "deflate")]
    deflate_fragmented,
    #[cfg(feature = "deflate")]
    deflate_no_context_takeover,
    #[cfg(feature = "deflate")]
    deflate_window_bits,
    // Without the `deflate` feature too: neither end then has compression.
    deflate_fallback,
);
