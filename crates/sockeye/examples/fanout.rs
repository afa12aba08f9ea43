//! Fan-out throughput: one publisher, N subscribers on loopback, messages delivered per
//! second of the server's CPU, for the [`Hub`], for the raw-TCP limit (one already framed
//! buffer written to N sockets, nothing else) and, with `--node`, for a Node `ws` server's
//! broadcast loop, round after round in one run.
//!
//! ```sh
//! cargo run --release -p sockeye --example fanout -- [SUBSCRIBERS] [SIZE] [MESSAGES] [--node SCRIPT]
//! ```
//!
//! `bench/fanout.sh` runs it with `--node bench/peers/node_broadcast.js` (ws's README
//! broadcast: `client.send(data, { binary: true })` for every open client), whose CPU is
//! the Node process's (every thread's, `/proc/PID/task/*/schedstat`).
//!
//! The server (publisher, hub, connections) runs on one thread with a current-thread
//! runtime; the subscribers' ends are plain TCP sockets drained by another thread, which
//! only counts bytes. The server thread's CPU time comes from
//! `/proc/thread-self/schedstat`. Each round publishes `MESSAGES` messages, one at a
//! time, letting the runtime run between them (the connections' reader tasks write what
//! a socket did not take at once); the subscribers' budget is large enough that nothing
//! is dropped at these rates, and the report's counts are checked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockeye::{Hub, HubConfig, Message, ServerConfig, WebSocketServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The CPU time in a task's `schedstat` (its first field, in nanoseconds).
fn schedstat(path: impl AsRef<std::path::Path>) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// CPU time of the calling thread, from the kernel's scheduler statistics.
fn thread_cpu() -> Duration {
    schedstat("/proc/thread-self/schedstat")
}

/// Connects `n` raw clients (WebSocket handshake by hand when `websocket`) and drains
/// them on a thread of their own; returns the byte counter.
fn start_subscribers(addr: SocketAddr, n: usize, websocket: bool) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for _ in 0..n {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                if websocket {
                    let request = format!(
                        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    );
                    stream.write_all(request.as_bytes()).await.unwrap();
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        head.push(stream.read_u8().await.unwrap());
                    }
                }
                let counter = counter.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
    });
    received
}

/// Waits until `counter` reaches `target` bytes (bounded: 60 s).
async fn drained(counter: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "subscribers did not receive it all"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn frame_len(size: usize) -> usize {
    size + match size {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

async fn hub_round(subscribers: usize, size: usize, messages: usize) -> (f64, f64) {
    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let mut config = HubConfig::default();
    config.max_buffered = 64 * 1024 * 1024;
    let hub = Hub::new(config);
    let received = start_subscribers(server.local_addr(), subscribers, true);
    for _ in 0..subscribers {
        let (mut ws, _) = server.accept().await.unwrap().unwrap();
        hub.subscribe(&ws, "bench").unwrap();
        tokio::spawn(async move { while ws.recv().await.is_some() {} });
    }
    let payload = sockeye::proto::bytes::Bytes::from(vec![b'x'; size]);
    let target = (frame_len(size) * subscribers * messages) as u64;
    let (cpu, wall) = (thread_cpu(), Instant::now());
    for _ in 0..messages {
        let report = hub
            .publish("bench", Message::Binary(payload.clone()))
            .unwrap();
        assert_eq!(report.delivered, subscribers, "{report:?}");
        tokio::task::yield_now().await;
    }
    drained(&received, target).await;
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    let deliveries = (subscribers * messages) as f64;
    (
        deliveries / cpu.as_secs_f64(),
        deliveries / wall.as_secs_f64(),
    )
}

async fn raw_round(subscribers: usize, size: usize, messages: usize) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let received = start_subscribers(listener.local_addr().unwrap(), subscribers, false);
    let mut sockets = Vec::new();
    for _ in 0..subscribers {
        let (socket, _) = listener.accept().await.unwrap();
        socket.set_nodelay(true).unwrap();
        sockets.push(socket);
    }
    // The frame, framed once; each socket gets the same bytes.
    let mut frame = vec![0x82u8];
    match size {
        0..=125 => frame.push(size as u8),
        126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(size as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
    frame.extend(std::iter::repeat_n(b'x', size));
    let target = (frame.len() * subscribers * messages) as u64;
    let (cpu, wall) = (thread_cpu(), Instant::now());
    // What a socket did not take, per socket: written before that socket's next frame.
    let mut pending = vec![0usize; subscribers];
    for _ in 0..messages {
        for (socket, left) in sockets.iter_mut().zip(&mut pending) {
            while *left > 0 {
                let at = frame.len() - *left;
                socket.writable().await.unwrap();
                if let Ok(n) = socket.try_write(&frame[at..]) {
                    *left -= n;
                }
            }
            match socket.try_write(&frame) {
                Ok(n) => *left = frame.len() - n,
                Err(_) => *left = frame.len(),
            }
        }
        tokio::task::yield_now().await;
    }
    for (socket, left) in sockets.iter_mut().zip(&mut pending) {
        while *left > 0 {
            let at = frame.len() - *left;
            socket.writable().await.unwrap();
            if let Ok(n) = socket.try_write(&frame[at..]) {
                *left -= n;
            }
        }
    }
    drained(&received, target).await;
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    let deliveries = (subscribers * messages) as f64;
    (
        deliveries / cpu.as_secs_f64(),
        deliveries / wall.as_secs_f64(),
    )
}

/// CPU time of every thread of process `pid`, from the kernel's scheduler statistics.
fn process_cpu(pid: u32) -> Duration {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|task| schedstat(task.path().join("schedstat")))
        .sum()
}

/// The Node `ws` broadcast peer (`bench/peers/node_broadcast.js`), driven over its stdin.
struct NodePeer {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    addr: SocketAddr,
}

impl NodePeer {
    async fn start(script: &str) -> NodePeer {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (with NODE_PATH naming a node_modules that has ws)");
        let stdin = child.stdin.take().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("node_broadcast.js: no port");
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .expect("node_broadcast.js: `port N`");
        NodePeer {
            child,
            stdin,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    async fn command(&mut self, command: &str) -> String {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.lines
            .next_line()
            .await
            .unwrap()
            .expect("node_broadcast.js ended")
    }
}

async fn node_round(script: &str, subscribers: usize, size: usize, messages: usize) -> (f64, f64) {
    let mut node = NodePeer::start(script).await;
    let received = start_subscribers(node.addr, subscribers, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.command("count").await != format!("clients {subscribers}") {
        assert!(
            Instant::now() < deadline,
            "subscribers did not all connect to node"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = node.child.id().unwrap();
    let target = (frame_len(size) * subscribers * messages) as u64;
    let (cpu, wall) = (process_cpu(pid), Instant::now());
    assert_eq!(node.command(&format!("go {size} {messages}")).await, "sent");
    drained(&received, target).await;
    let (cpu, wall) = (process_cpu(pid) - cpu, wall.elapsed());
    let _ = node.child.kill().await;
    let deliveries = (subscribers * messages) as f64;
    (
        deliveries / cpu.as_secs_f64(),
        deliveries / wall.as_secs_f64(),
    )
}

fn main() {
    let mut node: Option<String> = None;
    let mut numbers = Vec::new();
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        if arg == "--node" {
            node = Some(argv.next().expect("--node SCRIPT"));
        } else {
            numbers.push(arg);
        }
    }
    let args: Vec<usize> = numbers
        .iter()
        .map(|a| a.parse().expect("numbers: SUBSCRIBERS SIZE MESSAGES"))
        .collect();
    let subscribers = args.first().copied().unwrap_or(1000);
    let size = args.get(1).copied().unwrap_or(64);
    let messages = args.get(2).copied().unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for round in 1..=3 {
            let (hub_cpu, hub_wall) = hub_round(subscribers, size, messages).await;
            let (raw_cpu, raw_wall) = raw_round(subscribers, size, messages).await;
            print!(
                "round {round}: {subscribers} subscribers, {size} B x {messages}: hub {:.0} deliveries/CPU-s ({:.0}/s wall), raw TCP {:.0}/CPU-s ({:.0}/s wall), hub/raw {:.2}",
                hub_cpu,
                hub_wall,
                raw_cpu,
                raw_wall,
                hub_cpu / raw_cpu
            );
            if let Some(script) = &node {
                let (node_cpu, node_wall) = node_round(script, subscribers, size, messages).await;
                print!(
                    ", node ws {:.0}/CPU-s ({:.0}/s wall), hub/node {:.2}",
                    node_cpu,
                    node_wall,
                    hub_cpu / node_cpu
                );
            }
            println!();
        }
    });
}
