//! `sockeye serve --redis`: two serve processes on one real `redis-server` (started on a
//! free loopback port by the test) share the chat room; a member that reconnects to the
//! other process with its last position gets the lines it missed, and one with a
//! position of a lost stream is told that they cannot be recovered. Every wait is bounded.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sockeye::{Message, WebSocket};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

#[allow(dead_code)] // this file uses its browser only
mod common;

const STEP: Duration = Duration::from_secs(10);

/// A `redis-server` of this test's own, killed on drop; `persist`: an append-only file
/// synced at every write, in a directory of its own, so that a restart (even after
/// SIGKILL) keeps every acknowledged write.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
    persist: bool,
}

impl Redis {
    async fn start(persist: bool) -> Redis {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("sockeye-serve-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            port,
            dir,
            persist,
        };
        redis.launch().await;
        redis
    }

    async fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(if self.persist {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("redis-server could not be started ({e}): apt-get install redis-server")
        });
        self.child = Some(child);
        // Up when it answers PING; bounded: 200 tries, 25 ms apart.
        for _ in 0..200 {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut answer = [0u8; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && tokio::time::timeout(STEP, stream.read_exact(&mut answer))
                        .await
                        .is_ok_and(|r| r.is_ok())
                    && &answer == b"+PONG\r\n"
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not come up within 5 s");
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `sockeye serve --redis URL` on an ephemeral port; killed on drop.
struct Serve {
    addr: SocketAddr,
    child: Child,
    _stdout: Lines<BufReader<ChildStdout>>,
}

async fn serve(redis: &Redis) -> Serve {
    serve_at(redis, "127.0.0.1:0").await
}

/// `sockeye serve --redis URL --listen LISTEN`.
async fn serve_at(redis: &Redis, listen: &str) -> Serve {
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockeye"))
        .args(["serve", "--listen", listen, "--redis", &url])
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
        child,
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
    let redis = Redis::start(false).await;
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

/// A chat member as the page is: it remembers the position of the last line it saw, and
/// shows each position once (a line may come live and recovered).
struct Member {
    ws: WebSocket<TcpStream>,
    name: String,
    last: Option<Value>,
    /// The texts of the `said` lines shown, in the order shown, with their offsets.
    said: Vec<(String, u64)>,
    positions: HashSet<(String, u64)>,
    /// Whether this member reconnected (its arrival order may mix recovered and live).
    reconnected: bool,
}

impl Member {
    /// A member on `ws`, which has seen nothing yet.
    fn new(ws: WebSocket<TcpStream>, name: String) -> Member {
        Member {
            ws,
            name,
            last: None,
            said: Vec::new(),
            positions: HashSet::new(),
            reconnected: false,
        }
    }

    async fn join(server: &Serve, name: String, since: Option<Value>) -> WebSocket<TcpStream> {
        let mut hello = json!({"type": "hello", "name": name});
        if let Some(since) = since {
            hello["since"] = since;
        }
        member(server, hello).await
    }

    /// The next line (`None` at the end of the connection), recorded as the page does.
    async fn next(&mut self) -> Option<Value> {
        let line = loop {
            match tokio::time::timeout(STEP, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    break serde_json::from_str::<Value>(&text).unwrap()
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return None,
                Ok(Some(Ok(other))) => panic!("{}: unexpected {other:?}", self.name),
                Err(_) => panic!("{}: no line within {STEP:?}", self.name),
            }
        };
        let pos = &line["pos"];
        if let (Some(epoch), Some(offset)) = (pos["epoch"].as_str(), pos["offset"].as_u64()) {
            if !self.positions.insert((epoch.to_owned(), offset)) {
                // Seen already (live and recovered): shown once.
                return Some(json!({"type": "seen"}));
            }
            self.last = Some(pos.clone());
            if line["type"] == "said" {
                self.said
                    .push((line["text"].as_str().unwrap().to_owned(), offset));
            }
        }
        Some(line)
    }

    /// Reads until a line that `done` accepts (bounded: 5,000 lines).
    async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..5000 {
            match self.next().await {
                Some(line) if done(&line) => return line,
                Some(_) => {}
                None => panic!("{}: the connection ended", self.name),
            }
        }
        panic!("{}: not within 5,000 lines", self.name);
    }

    /// Says `text`; `true` once it came back (it went out), `false` when the server
    /// said it was not sent.
    async fn say(&mut self, text: &str) -> bool {
        self.ws
            .send_text(&json!({"type": "say", "text": text}).to_string())
            .await
            .unwrap();
        let name = self.name.clone();
        let reply = self
            .until(|l| {
                (l["type"] == "said" && l["name"] == name.as_str() && l["text"] == text)
                    || (l["type"] == "unsent" && l["text"] == text)
            })
            .await;
        reply["type"] == "said"
    }
}

/// Each speaker says its line `{speaker}:{round}{seq}` and waits for it to come back;
/// every one must go out (Redis is up). Returns the lines.
async fn say_all(speakers: &mut [Member], round: &str, seq: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (speaker, member) in speakers.iter_mut().enumerate() {
        let text = format!("{speaker}:{round}{seq:03}");
        assert!(member.say(&text).await, "{text}: Redis is up");
        out.push(text);
    }
    out
}

/// Every member says `each` lines `{member}:{round}{seq}` at once, without waiting for
/// them to come back; then each member reads until it has every line of the round (all
/// members' lines, its own included). Returns the lines.
async fn everyone_says(members: &mut [Member], round: &str, each: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (speaker, member) in members.iter_mut().enumerate() {
        for seq in 0..each {
            let text = format!("{speaker}:{round}{seq:03}");
            member
                .ws
                .send_text(&json!({"type": "say", "text": text}).to_string())
                .await
                .unwrap();
            out.push(text);
        }
    }
    let total = out.len();
    let tag = format!(":{round}");
    futures_util::future::join_all(members.iter_mut().map(|member| {
        let tag = &tag;
        async move {
            let mut got = 0;
            while got < total {
                let line = member.next().await;
                let line = line.unwrap_or_else(|| panic!("{}: the connection ended", member.name));
                if line["type"] == "unsent" {
                    panic!("{}: {line}: Redis is up", member.name);
                }
                if line["type"] == "said" && line["text"].as_str().unwrap().contains(tag.as_str()) {
                    got += 1;
                }
            }
        }
    }))
    .await;
    out
}

/// Issue 18 end to end: 3 `serve` processes on one Redis (Streams, with its data kept on
/// disk), 300 members spread over them, all of them speakers at once for one round (three
/// lines each, 270,000 deliveries), two speakers for the rest. One process is killed (SIGKILL)
/// mid-run: its members reconnect to the others with their last position and recover
/// what was said while they were away. Redis is killed and restarted mid-run: what was said meanwhile is
/// refused to its speaker ("unsent"), never silently lost. In the end every member has
/// every line that went out, once, and each speaker's lines in the order said (by
/// offset; for members that never reconnected, also in the order they arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_300_members_a_process_and_redis_killed() {
    const MEMBERS: usize = 300;
    const LINES: usize = 15;
    let mut redis = Redis::start(true).await;
    let mut servers = [
        serve(&redis).await,
        serve(&redis).await,
        serve(&redis).await,
    ];
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let name = format!("m{i}");
        let ws = Member::join(&servers[i % 3], name.clone(), None).await;
        let mut member = Member::new(ws, name);
        // Subscribed once its own hello comes back.
        let name = member.name.clone();
        member
            .until(|l| l["type"] == "joined" && l["name"] == name.as_str())
            .await;
        members.push(member);
    }
    // The speakers: m0 on the first process, m1 on the second.
    let mut went_out = Vec::new();
    let mut unsent = Vec::new();
    for seq in 0..LINES {
        went_out.extend(say_all(&mut members[..2], "a", seq).await);
    }
    went_out.extend(everyone_says(&mut members, "all", 3).await);

    // The third process dies; lines are said while its members are away; they come
    // back to the other two processes and recover those lines by position.
    servers[2].child.kill().await.unwrap();
    for seq in 0..5 {
        went_out.extend(say_all(&mut members[..2], "away", seq).await);
    }
    for i in (2..MEMBERS).step_by(3) {
        let member = &mut members[i];
        // Read to the end of the dead connection, as the page does.
        for _ in 0..5000 {
            if member.next().await.is_none() {
                break;
            }
        }
        let since = member.last.clone();
        assert!(since.is_some(), "{} saw lines", member.name);
        member.ws = Member::join(&servers[i % 2], member.name.clone(), since).await;
        member.reconnected = true;
        let recovered = member
            .until(|l| l["type"] == "recovered" || l["type"] == "unrecoverable")
            .await;
        assert_eq!(
            recovered["type"], "recovered",
            "{}: {recovered}",
            member.name
        );
        let away: Vec<_> = member
            .said
            .iter()
            .filter(|(t, _)| t.contains(":away"))
            .collect();
        assert_eq!(
            away.len(),
            10,
            "{}: what was said while away, recovered",
            member.name
        );
    }
    for seq in 0..LINES {
        went_out.extend(say_all(&mut members[..2], "b", seq).await);
    }

    // Redis dies: lines said meanwhile are refused to their speaker; then it is back.
    redis.kill().await;
    for seq in 0..3 {
        for (speaker, member) in members[..2].iter_mut().enumerate() {
            let text = format!("{speaker}:c{seq:03}");
            if member.say(&text).await {
                went_out.push(text);
            } else {
                unsent.push(text);
            }
        }
    }
    assert!(
        !unsent.is_empty(),
        "Redis was down: lines are refused, not lost silently"
    );
    redis.restart().await;
    for seq in 0..LINES {
        for (speaker, member) in members[..2].iter_mut().enumerate() {
            let text = format!("{speaker}:d{seq:03}");
            // The first lines after the restart may be refused while the process
            // reconnects: refused lines are said again (bounded).
            let mut sent = false;
            for _ in 0..20 {
                if member.say(&text).await {
                    sent = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(sent, "{text}: Redis is back");
            went_out.push(text);
        }
    }

    let expected: HashSet<&str> = went_out.iter().map(String::as_str).collect();
    for member in &mut members {
        let last = went_out.last().unwrap().clone();
        if !member.said.iter().any(|(text, _)| *text == last) {
            member
                .until(|l| l["type"] == "said" && l["text"] == last.as_str())
                .await;
        }
        // Once each (by position and by text).
        let mut texts = HashSet::new();
        for (text, _) in &member.said {
            assert!(texts.insert(text.as_str()), "{}: {text} twice", member.name);
        }
        let missing: Vec<_> = expected.difference(&texts).collect();
        assert!(missing.is_empty(), "{}: missing {missing:?}", member.name);
        // In each speaker's order: by offset; and as they arrived, unless reconnected.
        let mut by_offset = member.said.clone();
        by_offset.sort_by_key(|(_, offset)| *offset);
        for order in [
            Some(&by_offset),
            (!member.reconnected).then_some(&member.said),
        ]
        .into_iter()
        .flatten()
        {
            // Each speaker's lines, as they come in `order`.
            let mut by_speaker: HashMap<&str, Vec<&str>> = HashMap::new();
            for (text, _) in order.iter() {
                if expected.contains(text.as_str()) {
                    let speaker = text.split(':').next().unwrap();
                    by_speaker.entry(speaker).or_default().push(text);
                }
            }
            for theirs in by_speaker.values() {
                // Rounds a < all < away < b < c < d, lines numbered within: sorted as said.
                let mut sorted = theirs.clone();
                sorted.sort();
                assert_eq!(*theirs, sorted, "{}: in the order said", member.name);
            }
        }
    }
}

/// `sockeye bench --fanout` drives the chat of two `serve --redis` processes: its
/// subscribers, spread over both, get every line the publisher said on one.
#[tokio::test]
async fn bench_fanout_across_two_serve_processes() {
    let redis = Redis::start(false).await;
    let a = serve(&redis).await;
    let b = serve(&redis).await;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_sockeye"))
            .args([
                "bench", "--fanout", "--json", "-c", "20", "-r", "50", "-d", "1",
            ])
            .arg(format!("ws://{}/chat", a.addr))
            .arg("--subscribe")
            .arg(format!("ws://{}/chat", a.addr))
            .arg("--subscribe")
            .arg(format!("ws://{}/chat", b.addr))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the bench ends in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["lines"], 50, "{summary}");
    assert_eq!(summary["delivered"], 1000, "{summary}");
    assert_eq!(summary["missing"], 0, "{summary}");
    assert!(
        summary["delay_us"]["p50"].as_u64().is_some_and(|p| p > 0),
        "{summary}"
    );
}

/// The demo page in a real browser (headless Chromium over the DevTools protocol), on one
/// of two `serve --redis` processes: a line typed in the page reaches a member of the
/// other process; that member's lines show in the page; the page's process is killed
/// while lines are said, and restarted on the same address; the page reconnects by
/// itself, asks for what it missed (its last position) and shows the missed lines, each
/// once, with a "recovered" notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_recovers_missed_lines_after_its_server_restarts() {
    const LOG: &str = "document.querySelector('[data-testid=chat-log]').innerText";
    let redis = Redis::start(false).await;
    let mut a = serve(&redis).await;
    let b = serve(&redis).await;
    let mut page = common::chromium::Chromium::open(&format!("http://{}/", a.addr)).await;
    let open = "document.querySelector('[data-testid=chat-state]').textContent === 'open'";
    page.wait_for(open, STEP, "the chat opens", LOG).await;

    let mut bot = Member::new(Member::join(&b, "bot".into(), None).await, "bot".into());
    bot.until(|l| l["type"] == "joined" && l["name"] == "bot")
        .await;

    // The page speaks: typed and sent with its button.
    page.eval(
        "(() => { const i = document.querySelector('[data-testid=chat-input]'); \
         i.value = 'hello from the page'; \
         document.querySelector('[data-testid=chat-send]').click(); return true; })()",
    )
    .await;
    bot.until(|l| l["type"] == "said" && l["text"] == "hello from the page")
        .await;
    assert!(bot.say("hello from the bot").await);
    page.wait_for(
        &format!("{LOG}.includes('bot: hello from the bot')"),
        STEP,
        "the bot's line in the page",
        LOG,
    )
    .await;

    // The page's process dies; lines are said while the page is away.
    let listen = a.addr.to_string();
    a.child.kill().await.unwrap();
    page.wait_for(
        "document.querySelector('[data-testid=chat-state]').textContent.startsWith('closed')",
        STEP,
        "the page sees its connection closed",
        LOG,
    )
    .await;
    for n in 1..=3 {
        assert!(bot.say(&format!("missed line {n}")).await);
    }
    a = serve_at(&redis, &listen).await;

    // The page reconnects on its own (backoff 1 s, 2 s, 4 s ...) and recovers them.
    page.wait_for(
        &format!("{LOG}.includes('bot: missed line 3')"),
        Duration::from_secs(30),
        "the missed lines recovered in the page",
        LOG,
    )
    .await;
    let log = page.eval(LOG).await;
    let log = log.as_str().unwrap();
    // The missed lines come after the page saw its connection close, then the notice.
    let closed = log
        .find("closed (")
        .unwrap_or_else(|| panic!("no close in the page: {log}"));
    let recovered = log
        .find("recovered 3 missed line(s)")
        .unwrap_or_else(|| panic!("no recovery notice in the page: {log}"));
    for n in 1..=3 {
        let line = format!("bot: missed line {n}");
        assert_eq!(log.matches(&line).count(), 1, "{line} once: {log}");
        let at = log.find(&line).unwrap();
        assert!(closed < at && at < recovered, "{line} recovered: {log}");
    }
    assert_eq!(log.matches("bot: hello from the bot").count(), 1, "{log}");
    drop(a);
}
