//! Faults over real sockets: a peer that resets mid-message, one that dies mid-frame, a
//! half-open connection (the peer vanishes without a FIN), and a flood of handshakes
//! that never finish. Each ends in its documented error, the server's tasks go back to
//! what they were before, and its memory does too ([`memory_checked`]).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use sockeye::{Error, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Tasks alive on this runtime.
fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the runtime is back to `baseline` tasks (finished tasks are reaped as
/// the runtime gets to them), failing after [`STEP`].
async fn back_to(baseline: usize) {
    let deadline = tokio::time::Instant::now() + STEP;
    while tasks() > baseline {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} tasks alive, {baseline} before",
            tasks()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Set in the process [`memory_checked`] starts for one scenario.
const ISOLATED: &str = "SOCKEYE_FAULTS_MEMORY";

/// How a scenario's memory is checked: `warmup` rounds fill the allocator's and the
/// runtime's caches; over the `rounds` after them resident memory may grow by at most
/// `tolerance_kib`, the noise seen when nothing is kept. What grows past it is kept
/// per round: the rounds are chosen so that keeping one connection's state (about 1 KiB;
/// much more with its buffers) per connection the rounds make exceeds the tolerance.
struct Rounds {
    warmup: usize,
    rounds: usize,
    tolerance_kib: u64,
}

/// This process's resident memory (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Runs a fault scenario, then checks that repeating it does not grow memory.
///
/// Here the scenario runs once, with its own checks. Then the memory check runs in a
/// process of its own, this test binary started again for this test alone: resident
/// memory is the whole process's, and the other tests of this binary, running beside
/// it, would move it by megabytes. There, with [`ISOLATED`] set, the scenario runs
/// [`Rounds::warmup`] times, then [`Rounds::rounds`] times between two readings of
/// VmRSS, which may differ by at most [`Rounds::tolerance_kib`].
async fn memory_checked<F, Fut>(test: &str, check: Rounds, scenario: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let name = format!("faults::{test}");
    if std::env::var_os(ISOLATED).is_some() {
        let Rounds {
            warmup,
            rounds,
            tolerance_kib,
        } = check;
        for _ in 0..warmup {
            scenario().await;
        }
        let before = rss_kib();
        for _ in 0..rounds {
            scenario().await;
        }
        let after = rss_kib();
        println!("{name}: RSS {before} KiB -> {after} KiB over {rounds} rounds");
        assert!(
            after <= before + tolerance_kib,
            "{name}: RSS grew from {before} KiB to {after} KiB over {rounds} rounds \
             (tolerance {tolerance_kib} KiB)"
        );
        return;
    }
    scenario().await;
    rerun_alone(&name, ISOLATED, Duration::from_secs(120)).await;
}

/// Half of a 64 KiB masked binary frame: the header says 64 KiB, 32 KiB follow.
fn half_a_frame() -> Vec<u8> {
    let mut frame = client_frame(true, 0x2, &vec![9u8; 64 * 1024]);
    frame.truncate(frame.len() / 2);
    frame
}

/// A peer that resets the connection (SO_LINGER 0, then close) in the middle of a
/// message: the server's stream ends with the I/O error, once.
#[tokio::test]
async fn a_reset_mid_message_ends_the_stream_with_the_io_error() {
    memory_checked(
        "a_reset_mid_message_ends_the_stream_with_the_io_error",
        // 1,000 connections: 512 KiB is 0.5 KiB each.
        Rounds {
            warmup: 100,
            rounds: 1000,
            tolerance_kib: 512,
        },
        reset_mid_message,
    )
    .await;
}

async fn reset_mid_message() {
    let server = server(ServerConfig::default()).await;
    let baseline = tasks();
    let raw = raw_client(server.local_addr(), "/").await;
    let mut ws = accept_one(&server).await;
    let mut raw = raw;
    raw.write_all(&half_a_frame()).await.unwrap();
    // Deprecated because a positive linger blocks the thread on drop; zero does not
    // block: the close sends an RST at once.
    #[allow(deprecated)]
    raw.set_linger(Some(Duration::ZERO)).unwrap();
    drop(raw);
    match within("the error", ws.next()).await {
        Some(Err(Error::Io(e))) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(within("the end", ws.next()).await.is_none());
    drop(ws);
    back_to(baseline).await;
}

/// A peer whose stream ends in the middle of a frame: the connection ends abnormally
/// (1006), reported as `Closed` with nothing received.
#[tokio::test]
async fn an_end_of_stream_mid_frame_is_an_abnormal_close() {
    memory_checked(
        "an_end_of_stream_mid_frame_is_an_abnormal_close",
        Rounds {
            warmup: 100,
            rounds: 1000,
            tolerance_kib: 512,
        },
        end_of_stream_mid_frame,
    )
    .await;
}

async fn end_of_stream_mid_frame() {
    let server = server(ServerConfig::default()).await;
    let baseline = tasks();
    let mut raw = raw_client(server.local_addr(), "/").await;
    let mut ws = accept_one(&server).await;
    raw.write_all(&half_a_frame()).await.unwrap();
    raw.shutdown().await.unwrap();
    match within("the error", ws.next()).await {
        Some(Err(Error::Closed(info))) => {
            assert_eq!(info.received.map(|f| f.code.0), Some(1006), "abnormal");
        }
        other => panic!("{other:?}"),
    }
    assert!(within("the end", ws.next()).await.is_none());
    drop((ws, raw));
    back_to(baseline).await;
}

/// A relay between a client and the server that can stop forwarding and go silent
/// without closing anything: a peer that vanished (a cable pulled, a host gone),
/// which sends no FIN and no RST.
async fn blackhole_proxy(upstream: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (vanish, vanished) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let relay = |mut from: tokio::net::tcp::OwnedReadHalf,
                     mut to: tokio::net::tcp::OwnedWriteHalf,
                     mut vanished: tokio::sync::watch::Receiver<bool>| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    read = from.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return (from, to),
                        Ok(n) => {
                            if *vanished.borrow() {
                                continue; // swallowed
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return (from, to);
                            }
                        }
                    },
                    _ = vanished.changed() => {}
                }
            }
        };
        // Each relay holds its halves until its source ends: no FIN reaches either side
        // while the peer has "vanished".
        tokio::spawn(relay(client_read, server_write, vanished.clone()));
        tokio::spawn(relay(server_read, client_write, vanished));
    });
    (addr, vanish)
}

/// A half-open connection: the peer vanishes without a FIN. Only the heartbeat can
/// find it; it does, within its interval and timeout, with `HeartbeatTimeout`.
#[tokio::test]
async fn a_half_open_connection_is_found_by_the_heartbeat() {
    memory_checked(
        "a_half_open_connection_is_found_by_the_heartbeat",
        // 40 connections: 512 KiB is 12.8 KiB each, less than a connection kept with
        // its relay (two 16 KiB buffers).
        Rounds {
            warmup: 3,
            rounds: 40,
            tolerance_kib: 512,
        },
        || async {
            let baseline = tasks();
            half_open_found_by_the_heartbeat().await;
            back_to(baseline).await;
        },
    )
    .await;
}

async fn half_open_found_by_the_heartbeat() {
    let mut config = ServerConfig::default();
    config.websocket.heartbeat = Some(sockeye::Heartbeat::new(
        Duration::from_millis(150),
        Duration::from_millis(150),
    ));
    let server = server(config).await;
    let (proxy, vanish) = blackhole_proxy(server.local_addr()).await;
    let (mut client, _) = sockeye::connect(&format!("ws://{proxy}/")).await.unwrap();
    let mut ws = accept_one(&server).await;
    // Alive: messages go through and the heartbeat's pings are answered.
    client.send_text("hello").await.unwrap();
    let client_reads = tokio::spawn(async move { while client.next().await.is_some() {} });
    assert_eq!(
        within("hello", ws.next()).await.unwrap().unwrap().as_text(),
        Some("hello")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(ws.ready_state() == sockeye::ReadyState::Open);
    // The peer vanishes.
    vanish.send(true).unwrap();
    let started = std::time::Instant::now();
    match within("the heartbeat's verdict", ws.next()).await {
        Some(Err(Error::HeartbeatTimeout)) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    client_reads.abort();
}

/// A flood of connections that send half a request head and stop: each gets 408 at the
/// handshake timeout and is closed; meanwhile a real client is served, and afterwards
/// the server holds no task for any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_timed_out_and_leaves_nothing_behind() {
    memory_checked(
        "a_handshake_flood_is_timed_out_and_leaves_nothing_behind",
        // With two worker threads RSS moves by up to about 1 MiB from round to round
        // after ten rounds, with no trend (over 80 rounds); 10 rounds of 500
        // handshakes: 2 MiB is 0.4 KiB each.
        Rounds {
            warmup: 10,
            rounds: 10,
            tolerance_kib: 2048,
        },
        handshake_flood,
    )
    .await;
}

async fn handshake_flood() {
    const FLOOD: usize = 500;
    let mut config = ServerConfig::default();
    config.handshake_timeout = Duration::from_millis(500);
    let server = server(config).await;
    let addr = server.local_addr();
    let baseline = tasks();
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: webs")
            .await
            .unwrap();
        flood.push(stream);
    }
    // Served meanwhile.
    let (client, _) = within("a real client", sockeye::connect(&format!("ws://{addr}/")))
        .await
        .unwrap();
    let mut ws = accept_one(&server).await;
    client.send_text("through the flood").await.unwrap();
    assert_eq!(
        within("its message", ws.next())
            .await
            .unwrap()
            .unwrap()
            .as_text(),
        Some("through the flood")
    );
    // Every flooding connection is answered 408 and closed.
    for mut stream in flood {
        let mut answer = Vec::new();
        within("408 and the close", stream.read_to_end(&mut answer))
            .await
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Each is counted after its 408 is written: wait (bounded) for the last counts.
    let deadline = tokio::time::Instant::now() + STEP;
    while server.failed_handshakes() < FLOOD as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} failed handshakes counted",
            server.failed_handshakes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((client, ws));
    back_to(baseline).await;
}
