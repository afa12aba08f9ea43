//! The pub/sub [`Hub`] over loopback: fan-out to many clients exactly once and in each
//! publisher's order, permessage-deflate groups (one compression shared, per-connection
//! compression with context takeover), the byte budget of a subscriber that never reads,
//! subscriptions that end with their connection, and the limits.

use std::collections::HashMap;
use std::net::SocketAddr;

use sockeye::{
    CloseCode, Hub, HubConfig, HubError, Message, OverBudget, ServerConfig, WebSocket,
    WebSocketServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::support::{read_head, read_wire_frame, server, within};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A server whose accepted connections are subscribed to `topics` and read until they
/// end; each subscription is announced on the returned channel, each end too.
pub(crate) struct HubServer {
    pub(crate) addr: SocketAddr,
    pub(crate) hub: Hub,
    subscribed: mpsc::UnboundedReceiver<u64>,
    ended: mpsc::UnboundedReceiver<u64>,
}

pub(crate) async fn hub_server(
    hub: Hub,
    config: ServerConfig,
    topics: &[&'static str],
) -> HubServer {
    let server: WebSocketServer = server(config).await;
    let addr = server.local_addr();
    let (subscribed_tx, subscribed) = mpsc::unbounded_channel();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let topics = topics.to_vec();
    let serving = hub.clone();
    tokio::spawn(async move {
        while let Some(Ok((mut ws, _))) = server.accept().await {
            for topic in &topics {
                assert_eq!(serving.subscribe(&ws, topic), Ok(true));
            }
            let _ = subscribed_tx.send(ws.id());
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let id = ws.id();
                while ws.recv().await.is_some() {}
                let _ = ended_tx.send(id);
            });
        }
    });
    HubServer {
        addr,
        hub,
        subscribed,
        ended,
    }
}

impl HubServer {
    pub(crate) async fn await_subscribed(&mut self, n: usize) {
        for _ in 0..n {
            within("a subscription", self.subscribed.recv())
                .await
                .expect("server running");
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

pub(crate) async fn recv_text(ws: &mut WebSocket<TcpStream>) -> String {
    match within("a message", ws.recv()).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// 100 clients, two publishers (one a plain thread, one a task) of 200 messages each:
/// every client gets all 400, each exactly once and in its publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_exactly_once_in_publisher_order() {
    const CLIENTS: usize = 100;
    const EACH: usize = 200;
    let mut server = hub_server(Hub::default(), ServerConfig::default(), &["room"]).await;
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let (mut ws, _) = within("connect", sockeye::connect(&server.url()))
            .await
            .unwrap();
        readers.push(tokio::spawn(async move {
            let mut next = [0usize; 2];
            for _ in 0..2 * EACH {
                let text = recv_text(&mut ws).await;
                let (publisher, seq) = text.split_once(':').expect("publisher:seq");
                let publisher: usize = publisher.parse().unwrap();
                let seq: usize = seq.parse().unwrap();
                assert_eq!(
                    seq, next[publisher],
                    "publisher {publisher}: once, in order"
                );
                next[publisher] += 1;
            }
            assert_eq!(next, [EACH, EACH]);
            ws
        }));
    }
    server.await_subscribed(CLIENTS).await;
    assert_eq!(server.hub.subscriber_count("room"), CLIENTS);

    let hub = server.hub.clone();
    let thread = std::thread::spawn(move || {
        for seq in 0..EACH {
            let report = hub.publish("room", format!("0:{seq}")).unwrap();
            assert_eq!(report.delivered, CLIENTS, "{report:?}");
        }
    });
    let hub = server.hub.clone();
    let task = tokio::spawn(async move {
        for seq in 0..EACH {
            let report = hub.publish("room", format!("1:{seq}")).unwrap();
            assert_eq!(report.delivered, CLIENTS, "{report:?}");
            if seq % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    within("the task publisher", task).await.unwrap();
    within(
        "the thread publisher",
        tokio::task::spawn_blocking(move || thread.join()),
    )
    .await
    .unwrap()
    .unwrap();
    for reader in readers {
        let ws = within("a reader", reader).await.unwrap();
        ws.close(None).await.unwrap();
    }
}

/// permessage-deflate groups (with the `deflate` feature).
#[cfg(feature = "deflate")]
mod deflate_groups {
    use std::net::SocketAddr;

    use sockeye::proto::handshake::accept_key;
    use sockeye::{ClientConfig, DeflateConfig, Hub, ServerConfig};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::{hub_server, recv_text, KEY};
    use crate::support::{read_head, read_wire_frame};

    /// A raw client offering `extension`: the stream after the 101, and the agreed value.
    async fn raw_deflate_client(addr: SocketAddr, extension: &str) -> (TcpStream, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {extension}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains(&accept_key(KEY.as_bytes())), "{head}");
        let agreed = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
            .unwrap_or("")
            .to_owned();
        (stream, agreed)
    }

    /// RFC 7692 with a hub: subscribers without context takeover and equal settings get the
    /// very same compressed bytes (compressed once for them), others with other settings
    /// their own; a subscriber with context takeover is compressed per connection (its
    /// second copy of a message is a back-reference, far shorter); every kind of library
    /// client, with and without takeover, with another window or no deflate at all,
    /// inflates each message.
    #[tokio::test]
    async fn deflate_groups_are_compressed_once_and_every_subscriber_inflates() {
        let mut config = ServerConfig::default();
        config.per_message_deflate = Some(DeflateConfig {
            threshold: 64,
            ..DeflateConfig::default()
        });
        let mut server = hub_server(Hub::default(), config, &["news"]).await;
        let no_takeover = "permessage-deflate; server_no_context_takeover";
        let (mut raw_a, agreed) = raw_deflate_client(server.addr, no_takeover).await;
        assert_eq!(agreed, "permessage-deflate; server_no_context_takeover");
        let (mut raw_b, _) = raw_deflate_client(server.addr, no_takeover).await;
        let small_window =
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9";
        let (mut raw_small, agreed) = raw_deflate_client(server.addr, small_window).await;
        assert!(agreed.contains("server_max_window_bits=9"), "{agreed}");
        let (mut raw_takeover, agreed) =
            raw_deflate_client(server.addr, "permessage-deflate").await;
        assert_eq!(agreed, "permessage-deflate");

        let mut clients = Vec::new();
        for deflate in [
            Some(DeflateConfig {
                server_no_context_takeover: true,
                ..DeflateConfig::default()
            }),
            Some(DeflateConfig::default()),
            Some(DeflateConfig {
                server_no_context_takeover: true,
                server_max_window_bits: Some(10),
                ..DeflateConfig::default()
            }),
            None,
        ] {
            let mut config = ClientConfig::default();
            config.per_message_deflate = deflate;
            let (ws, _) = sockeye::connect_with(&server.url(), config).await.unwrap();
            clients.push(ws);
        }
        server.await_subscribed(8).await;

        let text = "a message for every subscriber, compressed once per group. ".repeat(30);
        for _ in 0..2 {
            let report = server.hub.publish("news", text.as_str()).unwrap();
            assert_eq!(report.delivered, 8, "{report:?}");
        }
        let short = server.hub.publish("news", "under the threshold").unwrap();
        assert_eq!(short.delivered, 8);

        let a = [
            read_wire_frame(&mut raw_a).await,
            read_wire_frame(&mut raw_a).await,
        ];
        let b = read_wire_frame(&mut raw_b).await;
        let small = read_wire_frame(&mut raw_small).await;
        let takeover = [
            read_wire_frame(&mut raw_takeover).await,
            read_wire_frame(&mut raw_takeover).await,
        ];
        for frame in a.iter().chain([&b, &small]).chain(&takeover) {
            assert_eq!(
                (frame.fin, frame.rsv, frame.opcode),
                (true, 0b100, 1),
                "{frame:?}"
            );
            assert!(!frame.masked);
            assert!(
                frame.payload.len() < text.len() / 4,
                "compressed: {frame:?}"
            );
        }
        assert_eq!(a[0].payload, b.payload, "one compression for the group");
        assert_eq!(
            a[0].payload, a[1].payload,
            "no context: the same bytes each time"
        );
        assert_ne!(small.payload, b.payload, "another window, another group");
        assert!(
            takeover[1].payload.len() < takeover[0].payload.len() / 2,
            "context takeover: the second copy refers back to the first ({} vs {} bytes)",
            takeover[1].payload.len(),
            takeover[0].payload.len()
        );
        // The rest of each raw peer's frames: the second compressed copy where not read
        // yet, then the short message, uncompressed.
        read_wire_frame(&mut raw_b).await;
        read_wire_frame(&mut raw_small).await;
        for raw in [&mut raw_a, &mut raw_b, &mut raw_small, &mut raw_takeover] {
            let plain = read_wire_frame(raw).await;
            assert_eq!(
                (plain.rsv, &plain.payload[..]),
                (0, &b"under the threshold"[..])
            );
        }
        for ws in &mut clients {
            assert_eq!(recv_text(ws).await, text);
            assert_eq!(recv_text(ws).await, text);
            assert_eq!(recv_text(ws).await, "under the threshold");
        }
    }
}

/// Opens a raw client that completes the handshake and then never reads, with a small
/// receive buffer so that the server's queue for it grows soon.
async fn never_reading_client(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// What happened to the slow subscriber over a bounded run.
struct SlowRun {
    reports: Vec<sockeye::PublishReport>,
    /// The raw peer of the slow subscriber (kept open until the end).
    _slow: TcpStream,
}

/// 100 reading clients and one that never reads, subscribed to one topic; 16 KiB
/// messages published one at a time, each once all 100 readers have it (their pace),
/// until the slow one has missed `rounds_after` + 1 messages, within a bound.
/// Every reader gets every message.
async fn publish_past_a_slow_subscriber(over_budget: OverBudget, rounds_after: usize) -> SlowRun {
    const READERS: usize = 100;
    const MAX_MESSAGES: usize = 2000;
    let mut config = HubConfig::default();
    config.max_buffered = 64 * 1024;
    config.over_budget = over_budget;
    let mut server = hub_server(Hub::new(config), ServerConfig::default(), &["feed"]).await;
    let slow = never_reading_client(server.addr).await;
    server.await_subscribed(1).await;
    let (got_tx, mut got) = mpsc::unbounded_channel::<usize>();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (mut ws, _) = sockeye::connect(&server.url()).await.unwrap();
        let got_tx = got_tx.clone();
        let mut stop = stop_tx.subscribe();
        readers.push(tokio::spawn(async move {
            let mut expected = 0usize;
            loop {
                tokio::select! {
                    message = within("a message", ws.recv()) => {
                        let Some(Ok(Message::Binary(data))) = message else {
                            panic!("a reader lost its feed: {message:?}");
                        };
                        let seq = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
                        assert_eq!(seq, expected, "every message, in order");
                        assert_eq!(data.len(), 16 * 1024);
                        expected += 1;
                        let _ = got_tx.send(seq);
                    }
                    _ = stop.recv() => return expected,
                }
            }
        }));
    }
    server.await_subscribed(READERS).await;
    let mut reports = Vec::new();
    let mut over = 0;
    for seq in 0..MAX_MESSAGES {
        let mut data = vec![0u8; 16 * 1024];
        data[..4].copy_from_slice(&(seq as u32).to_be_bytes());
        let report = server.hub.publish("feed", data).unwrap();
        assert_eq!(report.subscribers(), READERS + 1);
        assert!(
            report.delivered >= READERS,
            "the readers always get it: {report:?}"
        );
        if report.delivered == READERS {
            over += 1;
        }
        reports.push(report);
        for _ in 0..READERS {
            let got = within("every reader has the message", got.recv()).await;
            assert_eq!(got, Some(seq));
        }
        if over > rounds_after {
            break;
        }
    }
    assert!(
        over > rounds_after,
        "the slow subscriber never went over its budget in {MAX_MESSAGES} messages"
    );
    let _ = stop_tx.send(());
    for reader in readers {
        let read = within("a reader", reader).await.unwrap();
        assert_eq!(read, reports.len(), "each reader read every message");
    }
    SlowRun {
        reports,
        _slow: slow,
    }
}

/// Budget policy `Drop`: the slow subscriber misses messages (counted), stays
/// subscribed, and the 100 others get every message in order at their own pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_dropped_while_100_others_keep_up() {
    let run = publish_past_a_slow_subscriber(OverBudget::Drop, 5).await;
    let last = run.reports.last().unwrap();
    assert_eq!(
        (last.dropped, last.cut_off, last.closed),
        (1, 0, 0),
        "{last:?}"
    );
    let dropped: usize = run.reports.iter().map(|r| r.dropped).sum();
    assert!(dropped > 5, "{dropped}");
    assert!(run.reports.iter().all(|r| r.cut_off == 0 && r.closed == 0));
}

/// Budget policy `CloseTryAgainLater`: the slow subscriber is cut off once (1013 queued
/// after its backlog), then counted closed; the 100 others get every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_while_100_others_keep_up() {
    let run = publish_past_a_slow_subscriber(OverBudget::CloseTryAgainLater, 3).await;
    let cut: Vec<_> = run.reports.iter().filter(|r| r.cut_off > 0).collect();
    assert_eq!(cut.len(), 1, "cut off once");
    let after = run.reports.iter().skip_while(|r| r.cut_off == 0).skip(1);
    for report in after {
        assert_eq!((report.closed, report.dropped), (1, 0), "{report:?}");
    }
}

/// The 1013 close frame reaches a slow subscriber once it reads again, after what was
/// queued before it.
#[tokio::test]
async fn a_cut_off_subscriber_gets_1013_after_its_backlog() {
    let mut config = HubConfig::default();
    config.max_buffered = 16 * 1024;
    config.over_budget = OverBudget::CloseTryAgainLater;
    let mut server = hub_server(Hub::new(config), ServerConfig::default(), &["t"]).await;
    let mut slow = never_reading_client(server.addr).await;
    server.await_subscribed(1).await;
    let mut sent = 0usize;
    let mut cut = false;
    for _ in 0..2000 {
        let report = server.hub.publish("t", vec![1u8; 8 * 1024]).unwrap();
        if report.cut_off == 1 {
            cut = true;
            break;
        }
        assert_eq!(report.delivered, 1, "{report:?}");
        sent += 1;
    }
    assert!(cut, "never over the budget");
    for _ in 0..sent {
        let frame = read_wire_frame(&mut slow).await;
        assert_eq!((frame.opcode, frame.payload.len()), (2, 8 * 1024));
    }
    let close = read_wire_frame(&mut slow).await;
    assert_eq!(close.opcode, 8);
    assert_eq!(
        close.payload[..2],
        CloseCode::TRY_AGAIN_LATER.0.to_be_bytes()
    );
}

/// A connection's subscriptions end with it: after a close handshake, after the peer
/// vanishes, and when the server drops every handle without reading (found by the next
/// publish and counted closed).
#[tokio::test]
async fn subscriptions_end_with_the_connection() {
    let mut server = hub_server(Hub::default(), ServerConfig::default(), &["a", "b"]).await;
    let (ws, _) = sockeye::connect(&server.url()).await.unwrap();
    let raw = crate::support::raw_client(server.addr, "/").await;
    server.await_subscribed(2).await;
    assert_eq!(server.hub.subscriber_count("a"), 2);
    assert_eq!(server.hub.topic_count(), 2);

    ws.close(None).await.unwrap();
    within("the server's reader ends", server.ended.recv()).await;
    assert_eq!(server.hub.subscriber_count("a"), 1);
    drop(raw);
    within("the server's reader ends", server.ended.recv()).await;
    assert_eq!(server.hub.subscriber_count("a"), 0);
    assert_eq!(server.hub.subscriber_count("b"), 0);
    assert_eq!(server.hub.topic_count(), 0);
    let report = server.hub.publish("a", "nobody").unwrap();
    assert_eq!(report.subscribers(), 0);

    // Dropped without being read: no reader to notice the end, so the publish does.
    let hub = Hub::default();
    let listener = server_without_readers().await;
    let (_client, _) = sockeye::connect(&format!("ws://{}/", listener.local_addr()))
        .await
        .unwrap();
    let (ws, _) = within("accept", listener.accept()).await.unwrap().unwrap();
    hub.subscribe(&ws, "t").unwrap();
    assert_eq!(hub.subscriber_count("t"), 1);
    drop(ws);
    let report = hub.publish("t", "x").unwrap();
    assert_eq!((report.closed, report.delivered), (1, 0));
    assert_eq!(hub.subscriber_count("t"), 0);
}

async fn server_without_readers() -> WebSocketServer {
    server(ServerConfig::default()).await
}

/// `terminate` ends the subscriptions at once; a closing connection is counted closed;
/// unsubscribe stops delivery (the next message read is from the other topic).
#[tokio::test]
async fn unsubscribe_terminate_and_closing() {
    let hub = Hub::default();
    let listener = server(ServerConfig::default()).await;
    let url = format!("ws://{}/", listener.local_addr());
    let (mut client, _) = sockeye::connect(&url).await.unwrap();
    let (ws, _) = within("accept", listener.accept()).await.unwrap().unwrap();
    let (writer, mut reader) = ws.split();
    let reading = tokio::spawn(async move { while reader.recv().await.is_some() {} });
    assert_eq!(hub.subscribe(&writer, "x"), Ok(true));
    assert_eq!(hub.subscribe(&writer, "x"), Ok(false), "already");
    assert_eq!(hub.subscribe(&writer, "y"), Ok(true));
    assert_eq!(hub.topics_of(&writer).len(), 2);
    assert!(hub.unsubscribe(&writer, "x"));
    assert!(!hub.unsubscribe(&writer, "x"));
    assert_eq!(hub.publish("x", "not for you").unwrap().subscribers(), 0);
    assert_eq!(hub.publish("y", "for you").unwrap().delivered, 1);
    assert_eq!(recv_text(&mut client).await, "for you");

    let (client2, _) = sockeye::connect(&url).await.unwrap();
    let (ws2, _) = within("accept", listener.accept()).await.unwrap().unwrap();
    hub.subscribe(&ws2, "y").unwrap();
    // Closing (close frame sent, no answer read yet): not delivered, counted closed.
    // The close frame is queued by the call; nobody reads ws2, so it stays Closing.
    drop(ws2.close(None));
    let report = hub.publish("y", "again").unwrap();
    assert_eq!((report.delivered, report.closed), (1, 1), "{report:?}");
    assert_eq!(recv_text(&mut client).await, "again");

    writer.terminate();
    assert_eq!(
        hub.subscriber_count("y"),
        1,
        "terminated: forgotten at once"
    );
    assert_eq!(hub.unsubscribe_all(&ws2), 1);
    assert_eq!(hub.topic_count(), 0);
    within("the reader ends", reading).await.unwrap();
    drop(client2);
}

/// Topic names and subscriptions per connection are bounded, with errors that say
/// which limit; only data messages are published; an ended connection is refused.
#[tokio::test]
async fn limits_give_clear_errors() {
    let mut config = HubConfig::default();
    config.max_topic_len = 8;
    config.max_subscriptions = 3;
    let hub = Hub::new(config);
    let listener = server(ServerConfig::default()).await;
    let (_client, _) = sockeye::connect(&format!("ws://{}/", listener.local_addr()))
        .await
        .unwrap();
    let (ws, _) = within("accept", listener.accept()).await.unwrap().unwrap();
    assert_eq!(hub.subscribe(&ws, ""), Err(HubError::EmptyTopic));
    let long = "123456789";
    let too_long = Err(HubError::TopicTooLong { len: 9, max: 8 });
    assert_eq!(hub.subscribe(&ws, long), too_long);
    assert_eq!(
        hub.publish(long, "x").map(|_| ()),
        too_long.map(|_: bool| ())
    );
    assert_eq!(
        HubError::TopicTooLong { len: 9, max: 8 }.to_string(),
        "the topic name is 9 bytes, over the limit of 8"
    );
    for topic in ["1", "2", "3"] {
        assert_eq!(hub.subscribe(&ws, topic), Ok(true));
    }
    assert_eq!(
        hub.subscribe(&ws, "4"),
        Err(HubError::TooManySubscriptions { max: 3 })
    );
    assert_eq!(hub.subscribe(&ws, "3"), Ok(false), "a repeat is no new one");
    assert_eq!(
        hub.publish("1", Message::Ping(Default::default())),
        Err(HubError::NotDataMessage)
    );
    ws.terminate();
    assert_eq!(hub.subscribe(&ws, "5"), Err(HubError::Closed));
    assert_eq!(hub.topic_count(), 0, "terminated: forgotten");
}

/// The hub and many subscriptions: counts stay right through subscribe, unsubscribe
/// and ends in any order (positions in the topic list are kept up to date).
#[tokio::test]
async fn many_subscriptions_come_and_go() {
    let hub = Hub::default();
    let listener = server(ServerConfig::default()).await;
    let url = format!("ws://{}/", listener.local_addr());
    let mut pairs = Vec::new();
    for _ in 0..20 {
        let (client, _) = sockeye::connect(&url).await.unwrap();
        let (ws, _) = within("accept", listener.accept()).await.unwrap().unwrap();
        hub.subscribe(&ws, "t").unwrap();
        pairs.push((client, ws));
    }
    let mut expected: HashMap<u64, bool> = pairs.iter().map(|(_, ws)| (ws.id(), true)).collect();
    for (i, (_, ws)) in pairs.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        if i % 2 == 0 {
            assert!(hub.unsubscribe(ws, "t"));
        } else {
            ws.terminate();
        }
        expected.insert(ws.id(), false);
    }
    let subscribed = expected.values().filter(|s| **s).count();
    assert_eq!(hub.subscriber_count("t"), subscribed);
    let report = hub.publish("t", "hi").unwrap();
    assert_eq!(report.delivered, subscribed, "{report:?}");
    // Small messages on idle connections: the publish wrote them at once, with no task
    // reading the server side.
    for (client, ws) in &mut pairs {
        if expected[&ws.id()] {
            assert_eq!(recv_text(client).await, "hi");
        }
    }
}

/// A subscriber whose server connection is driven but whose peer is slow to read gets
/// its queue written by the reading task (not only by the write at publish time).
#[tokio::test]
async fn what_the_socket_did_not_take_is_written_by_the_reader() {
    let mut server = hub_server(Hub::default(), ServerConfig::default(), &["big"]).await;
    let mut raw = never_reading_client(server.addr).await;
    server.await_subscribed(1).await;
    let payload = vec![9u8; 512 * 1024];
    let report = server.hub.publish("big", payload.clone()).unwrap();
    assert_eq!(report.delivered, 1);
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let frame = read_wire_frame(&mut raw).await;
        let _ = tx.send(frame);
        let mut rest = [0u8; 1];
        let _ = raw.read(&mut rest).await;
    });
    let frame = within("the whole frame", rx).await.unwrap();
    assert_eq!((frame.opcode, frame.payload.len()), (2, payload.len()));
}

/// Publishers on two threads while connections subscribe, unsubscribe, are terminated
/// and end: no deadlock between the hub's locks and the connections' (each connection's
/// end hook runs under its lock), and every publish reports each subscriber once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_while_subscriptions_change_does_not_deadlock() {
    const CONNECTIONS: usize = 40;
    const PUBLISHES: usize = 300;
    let hub = Hub::default();
    let listener = server(ServerConfig::default()).await;
    let url = format!("ws://{}/", listener.local_addr());
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (mut client, _) = sockeye::connect(&url).await.unwrap();
        let (mut ws, _) = within("accept", listener.accept()).await.unwrap().unwrap();
        hub.subscribe(&ws, "t").unwrap();
        let writer = ws.writer();
        tokio::spawn(async move { while ws.recv().await.is_some() {} });
        clients.push(tokio::spawn(async move {
            while let Some(Ok(_)) = client.recv().await {}
        }));
        servers.push(writer);
    }
    let publishers: Vec<_> = (0..2)
        .map(|_| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for _ in 0..PUBLISHES {
                    let report = hub.publish("t", "x").unwrap();
                    assert!(report.subscribers() <= CONNECTIONS, "{report:?}");
                }
            })
        })
        .collect();
    for (i, writer) in servers.iter().enumerate() {
        match i % 4 {
            0 => writer.terminate(),
            1 => {
                hub.unsubscribe(writer, "t");
                hub.subscribe(writer, "t").unwrap();
            }
            2 => {
                let _ = hub.subscribe(writer, "other");
                hub.unsubscribe_all(writer);
            }
            _ => drop(writer.close(None)),
        }
        tokio::task::yield_now().await;
    }
    within(
        "the publishers finish",
        tokio::task::spawn_blocking(move || {
            for publisher in publishers {
                publisher.join().unwrap();
            }
        }),
    )
    .await
    .unwrap();
    // Terminated and unsubscribed ones are gone; the resubscribed ones are there; the
    // closing ones are there until their close handshake ends.
    let count = hub.subscriber_count("t");
    assert!(
        (CONNECTIONS / 4..=CONNECTIONS / 2).contains(&count),
        "{count}"
    );
    assert_eq!(hub.subscriber_count("other"), 0);
    for client in clients {
        client.abort();
    }
}

/// A publish while the application streams a fragmented message on a subscriber is not
/// slipped in between its frames (RFC 6455 §5.4): it is dropped for that subscriber,
/// and the application's message arrives whole.
#[tokio::test]
async fn a_publish_never_interleaves_with_a_fragmented_message() {
    let hub = Hub::default();
    let listener = server(ServerConfig::default()).await;
    let (mut client, _) = sockeye::connect(&format!("ws://{}/", listener.local_addr()))
        .await
        .unwrap();
    let (ws, _) = within("accept", listener.accept()).await.unwrap().unwrap();
    hub.subscribe(&ws, "t").unwrap();
    ws.send_frame(sockeye::DataKind::Binary, b"first ", false)
        .await
        .unwrap();
    let report = hub
        .publish("t", Message::binary(&b"published"[..]))
        .unwrap();
    assert_eq!((report.dropped, report.delivered), (1, 0), "{report:?}");
    ws.send_frame(sockeye::DataKind::Binary, b"last", true)
        .await
        .unwrap();
    assert_eq!(hub.publish("t", "after").unwrap().delivered, 1);
    match within("the message", client.recv()).await {
        Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], b"first last"),
        other => panic!("expected the whole message, got {other:?}"),
    }
    assert_eq!(recv_text(&mut client).await, "after");

    // The same on a client connection, which encodes (masks) a published message itself.
    let hub = Hub::default();
    hub.subscribe(&client, "t").unwrap();
    let mut ws = ws;
    client
        .send_frame(sockeye::DataKind::Text, b"first ", false)
        .await
        .unwrap();
    let report = hub.publish("t", "published").unwrap();
    assert_eq!((report.dropped, report.delivered), (1, 0), "{report:?}");
    client
        .send_frame(sockeye::DataKind::Text, b"last", true)
        .await
        .unwrap();
    assert_eq!(hub.publish("t", "after").unwrap().delivered, 1);
    let reading = tokio::spawn(async move { while client.recv().await.is_some() {} });
    assert_eq!(recv_text(&mut ws).await, "first last");
    assert_eq!(recv_text(&mut ws).await, "after");
    reading.abort();
}
