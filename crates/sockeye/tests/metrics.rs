//! The `metrics` feature: counters and gauges move as traffic flows over real loopback
//! connections. Its own test binary, so that the recorder is installed before any
//! connection registers its handles; its tests take turns ([`recorder`]), as the
//! metrics are global.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sockeye::{CloseFrame, Message, ServerConfig, WebSocketServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

/// Every metric as `name{label=value,...}` -> how much it moved since the last snapshot.
fn values(snapshotter: &Snapshotter) -> BTreeMap<String, f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let _ = kind;
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            (name, value)
        })
        .collect()
}

/// The recorder, installed at the first call, and this test's turn: the metrics are the
/// whole process's. What moved before the turn is taken out of the snapshotter.
async fn recorder() -> (&'static Snapshotter, tokio::sync::MutexGuard<'static, ()>) {
    static RECORDER: OnceLock<Snapshotter> = OnceLock::new();
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    let snapshotter = RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only recorder");
        snapshotter
    });
    let _ = snapshotter.snapshot();
    (snapshotter, turn)
}

#[tokio::test]
async fn counters_move_as_traffic_flows() {
    let (snapshotter, _turn) = recorder().await;

    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    let echo = tokio::spawn(async move {
        let (mut ws, _) = server.accept().await.unwrap().unwrap();
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() || message.is_binary() {
                ws.send(message).await.unwrap();
            }
        }
        server
    });
    let (mut client, _) = sockeye::connect(&format!("ws://{addr}/")).await.unwrap();
    for i in 0..3 {
        client.send_text(&format!("message {i}")).await.unwrap();
        let echoed = tokio::time::timeout(STEP, client.next()).await.unwrap();
        assert!(matches!(echoed, Some(Ok(Message::Text(_)))));
    }
    let during = values(snapshotter);
    assert_eq!(
        during["sockeye_connections_open{role=server}"], 1.0,
        "{during:#?}"
    );
    assert_eq!(during["sockeye_connections_open{role=client}"], 1.0);
    // Both ends count: 3 messages each way, 9 bytes each.
    assert_eq!(
        during["sockeye_messages_received_total{}"], 6.0,
        "{during:#?}"
    );
    assert_eq!(during["sockeye_messages_sent_total{}"], 6.0);
    assert_eq!(during["sockeye_message_bytes_sent_total{}"], 54.0);
    // Framing on the wire: 2 bytes of header each, 4 of masking key from the client,
    // the handshakes excluded.
    assert_eq!(
        during["sockeye_wire_bytes_written_total{}"],
        54.0 + 6.0 * 2.0 + 3.0 * 4.0
    );

    client
        .close(Some(CloseFrame::new(1000, "bye")))
        .await
        .unwrap();
    while client.next().await.is_some() {}
    let server = tokio::time::timeout(STEP, echo).await.unwrap().unwrap();

    // A refused upgrade.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, raw.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    drop(server);

    // A snapshot takes what moved since the last one: add them up.
    let mut after = during.clone();
    for (name, value) in values(snapshotter) {
        *after.entry(name).or_default() += value;
    }
    assert_eq!(
        after["sockeye_connections_opened_total{role=server}"], 1.0,
        "{after:#?}"
    );
    assert_eq!(after["sockeye_connections_open{role=server}"], 0.0);
    assert_eq!(after["sockeye_connections_open{role=client}"], 0.0);
    assert_eq!(
        after["sockeye_connections_closed_total{role=server,code=1000,by=peer}"],
        1.0
    );
    assert_eq!(
        after["sockeye_connections_closed_total{role=client,code=1000,by=local}"],
        1.0
    );
    let refused: f64 = after
        .iter()
        .filter(|(name, _)| name.starts_with("sockeye_handshake_failures_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(refused, 1.0, "{after:#?}");
}

/// The send queue gauge follows a connection's `buffered_amount` as a peer that does not
/// read lets it fill, and as it drains, and leaves nothing behind once the connection
/// ends.
#[tokio::test]
async fn the_send_queue_gauge_follows_what_is_queued() {
    let (snapshotter, _turn) = recorder().await;
    let mut gauge = 0.0;
    let mut queued = || {
        for (name, value) in values(snapshotter) {
            if name == "sockeye_send_queue_bytes{role=server}" {
                gauge += value;
            }
        }
        gauge
    };

    let server = WebSocketServer::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (mut client, _) = sockeye::connect(&format!("ws://{addr}/")).await.unwrap();
    let (ws, _) = server.accept().await.unwrap().unwrap();
    assert_eq!(queued(), 0.0);

    // The client does not read: once the sockets' buffers are full, sends queue.
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    while ws.buffered_amount() < 256 * 1024 {
        assert!(sent < 4096, "256 KiB never queued");
        match ws.try_send(Message::Binary(chunk.clone().into())) {
            Ok(_) => sent += 1,
            Err(sockeye::Error::QueueFull) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let buffered = ws.buffered_amount();
    assert!(buffered > 0);
    assert_eq!(queued(), buffered as f64);

    // The client reads everything: the queue drains, and the gauge with it.
    let reading = tokio::spawn(async move {
        let mut got = 0;
        while got < sent {
            match client.next().await {
                Some(Ok(Message::Binary(_))) => got += 1,
                other => panic!("{other:?}"),
            }
        }
        client
    });
    tokio::time::timeout(STEP, ws.drained())
        .await
        .unwrap()
        .unwrap();
    let mut client = tokio::time::timeout(STEP, reading).await.unwrap().unwrap();
    assert_eq!(ws.buffered_amount(), 0);
    assert_eq!(queued(), 0.0);

    // Queued again, then the connection ends with it unsent: its part leaves the gauge.
    let mut more = 0;
    while ws.buffered_amount() == 0 && more < 4096 {
        ws.try_send(Message::Binary(chunk.clone().into())).unwrap();
        more += 1;
    }
    assert!(queued() > 0.0);
    ws.terminate();
    drop(ws);
    while tokio::time::timeout(STEP, client.next())
        .await
        .unwrap()
        .is_some()
    {}
    assert_eq!(queued(), 0.0);
}
