//! The Redis brokers against a real `redis-server` on a free loopback port, started (and
//! killed, and restarted) by each test: PUB/SUB across two "processes" (two hubs, two
//! brokers, two servers), its resubscription and reported loss across a Redis restart;
//! Streams' positions, order, recovery and its refusals, nothing lost across a restart
//! that keeps the data, and a lost stream reported.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockeye::broker::redis::{RedisConfig, RedisPubSub, RedisStreams};
use sockeye::broker::{RecoverError, StreamMessage};
use sockeye::{Broker, BrokerError, BrokerEvent, Hub, Message, ServerConfig, StreamPosition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::hub::{hub_server, recv_text, HubServer};
use crate::support::within;

/// A `redis-server` of this test's own: a free loopback port, a data directory of its
/// own, killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persist: bool,
}

impl RedisServer {
    /// Starts one; `persist`: an append-only file synced at every write, so that a
    /// restart (even after SIGKILL) keeps every acknowledged write.
    async fn start(persist: bool) -> RedisServer {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("sockeye-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            persist,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persist {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "redis-server could not be started ({e}): the Redis broker tests need it \
                 (apt-get install redis-server; .ci/run installs it)"
            )
        });
        self.child = Some(child);
        // Up when it answers PING; bounded: 200 tries, 25 ms apart.
        for _ in 0..200 {
            if self.answers_ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "redis-server on port {} did not come up within 5 s",
            self.port
        );
    }

    async fn answers_ping(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut answer = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut answer)).await,
            Ok(Ok(_)) if &answer == b"+PONG\r\n"
        )
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same directory.
    async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn quick_config() -> RedisConfig {
    let mut config = RedisConfig::default();
    config.response_timeout = Duration::from_millis(500);
    config.connection_timeout = Duration::from_millis(500);
    config.reconnect_max_delay = Duration::from_millis(100);
    config.poll_interval = Duration::from_millis(50);
    config
}

/// Waits for `wanted` among the events (others are skipped), within the test step.
async fn expect_event(
    events: &mut broadcast::Receiver<BrokerEvent>,
    wanted: impl Fn(&BrokerEvent) -> bool,
) -> BrokerEvent {
    within("a broker event", async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return event,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
}

/// A "process": a hub, its server with `clients` connected library clients, and the
/// clients.
async fn process(clients: usize) -> (HubServer, Vec<sockeye::WebSocket<tokio::net::TcpStream>>) {
    let mut server = hub_server(Hub::default(), ServerConfig::default(), &["room"]).await;
    let mut connected = Vec::new();
    for _ in 0..clients {
        let (ws, _) = sockeye::connect(&server.url()).await.unwrap();
        connected.push(ws);
    }
    server.await_subscribed(clients).await;
    (server, connected)
}

/// Reads `n` messages "publisher:seq" and checks each publisher's are all there, once
/// each, in order.
async fn expect_in_order(ws: &mut sockeye::WebSocket<tokio::net::TcpStream>, each: &[usize]) {
    let mut next = vec![0usize; each.len()];
    for _ in 0..each.iter().sum::<usize>() {
        let text = recv_text(ws).await;
        let (publisher, seq) = text.split_once(':').unwrap();
        let (publisher, seq): (usize, usize) = (publisher.parse().unwrap(), seq.parse().unwrap());
        assert_eq!(
            seq, next[publisher],
            "publisher {publisher}: once, in order"
        );
        next[publisher] += 1;
    }
    assert_eq!(next, each);
}

/// Two processes' hubs joined by Redis PUB/SUB: what either publishes reaches every
/// client of both, once each and in each publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_spans_processes_in_publisher_order() {
    const EACH: usize = 100;
    let redis = RedisServer::start(false).await;
    let (a, mut clients_a) = process(3).await;
    let (b, mut clients_b) = process(3).await;
    let broker_a = RedisPubSub::connect(&redis.url(), a.hub.clone(), quick_config())
        .await
        .unwrap();
    let broker_b = RedisPubSub::connect(&redis.url(), b.hub.clone(), quick_config())
        .await
        .unwrap();
    broker_a.subscribe("room").await.unwrap();
    broker_b.subscribe("room").await.unwrap();
    let brokers = [Arc::new(broker_a), Arc::new(broker_b)];
    let mut publishers = Vec::new();
    for (id, broker) in brokers.iter().enumerate() {
        let broker = broker.clone();
        publishers.push(tokio::spawn(async move {
            for seq in 0..EACH {
                let published = broker
                    .publish("room", Message::text(format!("{id}:{seq}")))
                    .await
                    .unwrap();
                assert_eq!(published.receivers, Some(2), "both relays");
            }
        }));
    }
    for publisher in publishers {
        within("publishing", publisher).await.unwrap();
    }
    for ws in clients_a.iter_mut().chain(&mut clients_b) {
        expect_in_order(ws, &[EACH, EACH]).await;
    }
    assert_eq!(
        brokers[0].publish("", Message::text("x")).await,
        Err(BrokerError::Hub(sockeye::HubError::EmptyTopic))
    );
}

/// Redis killed: a publish fails at once (no hang) and the relay reports the
/// disconnection; Redis back: the relay subscribes again and says so (the gap is
/// reported, not silent), and messages flow again.
#[tokio::test]
async fn pubsub_resubscribes_after_a_redis_restart_and_reports_the_gap() {
    let mut redis = RedisServer::start(false).await;
    let (server, mut clients) = process(1).await;
    let broker = RedisPubSub::connect(&redis.url(), server.hub.clone(), quick_config())
        .await
        .unwrap();
    let mut events = broker.events();
    broker.subscribe("room").await.unwrap();
    broker.publish("room", Message::text("0:0")).await.unwrap();
    assert_eq!(recv_text(&mut clients[0]).await, "0:0");

    redis.kill();
    expect_event(&mut events, |e| {
        matches!(e, BrokerEvent::Disconnected { .. })
    })
    .await;
    let started = Instant::now();
    let refused = broker.publish("room", Message::text("lost")).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no hang: {:?}",
        started.elapsed()
    );

    redis.restart().await;
    let back = expect_event(&mut events, |e| {
        matches!(e, BrokerEvent::Resubscribed { .. })
    })
    .await;
    assert_eq!(back, BrokerEvent::Resubscribed { topics: 1 });
    // The publish connection reconnects on its own too (bounded: the first try may
    // still see the old connection's failure).
    let mut published = None;
    for _ in 0..3 {
        if let Ok(p) = broker.publish("room", Message::text("0:1")).await {
            published = Some(p);
            break;
        }
    }
    assert_eq!(published.and_then(|p| p.receivers), Some(1));
    assert_eq!(recv_text(&mut clients[0]).await, "0:1", "flowing again");
}

/// The relay's format: the position, then the text.
fn with_position() -> sockeye::broker::redis::Format {
    Arc::new(|m: &StreamMessage| {
        let text = m.message.as_text().unwrap_or("");
        Message::text(format!("{}@{}", m.position.offset, text))
    })
}

async fn streams(redis: &RedisServer, hub: Hub, config: RedisConfig) -> RedisStreams {
    RedisStreams::connect_with_format(&redis.url(), hub, config, with_position())
        .await
        .unwrap()
}

/// Streams: offsets 1, 2, 3 ... within one epoch, each process's clients get every
/// message in order once, and recovery gives what came after a position, or says why
/// it cannot (another epoch, trimmed, ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_give_positions_order_and_recovery() {
    let redis = RedisServer::start(false).await;
    let mut config = quick_config();
    config.retention = 20;
    let (a, mut clients_a) = process(2).await;
    let (b, mut clients_b) = process(2).await;
    let broker_a = streams(&redis, a.hub.clone(), config.clone()).await;
    let broker_b = streams(&redis, b.hub.clone(), config).await;
    broker_a.subscribe("room").await.unwrap();
    broker_b.subscribe("room").await.unwrap();
    assert_eq!(broker_a.position("room").await.unwrap(), None);

    let mut epoch = None;
    for n in 1..=15u64 {
        let published = broker_a
            .publish("room", Message::text(format!("m{n}")))
            .await
            .unwrap();
        let position = published.position.unwrap();
        assert_eq!(position.offset, n);
        assert_eq!(epoch.get_or_insert(position.epoch.clone()), &position.epoch);
    }
    let epoch = epoch.unwrap();
    for ws in clients_a.iter_mut().chain(&mut clients_b) {
        for n in 1..=15 {
            assert_eq!(recv_text(ws).await, format!("{n}@m{n}"));
        }
    }
    let at = |offset| StreamPosition {
        epoch: epoch.clone(),
        offset,
    };
    let missed = broker_b.recover("room", &at(10)).await.unwrap();
    let offsets: Vec<u64> = missed.iter().map(|m| m.position.offset).collect();
    assert_eq!(offsets, [11, 12, 13, 14, 15]);
    assert_eq!(missed[0].message, Message::text("m11"));
    assert!(broker_b.recover("room", &at(15)).await.unwrap().is_empty());
    assert_eq!(
        broker_b.recover("room", &at(16)).await,
        Err(RecoverError::Ahead { last: 15 })
    );
    let other_epoch = StreamPosition {
        epoch: "another".into(),
        offset: 3,
    };
    assert_eq!(
        broker_b.recover("room", &other_epoch).await,
        Err(RecoverError::EpochChanged {
            current: Some(epoch.clone())
        })
    );
    for n in 16..=25 {
        broker_b
            .publish("room", Message::text(format!("m{n}")))
            .await
            .unwrap();
    }
    assert_eq!(
        broker_a.recover("room", &at(3)).await,
        Err(RecoverError::Trimmed { oldest: 6 }),
        "retention 20: offsets 6 to 25 kept"
    );
    assert_eq!(broker_a.recover("room", &at(5)).await.unwrap().len(), 20);
    for ws in clients_a.iter_mut().chain(&mut clients_b) {
        for n in 16..=25 {
            assert_eq!(recv_text(ws).await, format!("{n}@m{n}"));
        }
    }
}

/// Streams across a Redis restart that keeps its data (append-only file, SIGKILL):
/// publishing fails while it is down; afterwards the relay resumes where it was, the
/// offsets go on in the same epoch, and every client has every message once, in order.
#[tokio::test]
async fn streams_lose_nothing_across_a_redis_restart() {
    let mut redis = RedisServer::start(true).await;
    let (server, mut clients) = process(2).await;
    let relay = streams(&redis, server.hub.clone(), quick_config()).await;
    let mut events = relay.events();
    relay.subscribe("room").await.unwrap();
    let publisher = streams(&redis, Hub::default(), quick_config()).await;
    for n in 1..=10 {
        publisher
            .publish("room", Message::text(format!("m{n}")))
            .await
            .unwrap();
    }
    redis.kill();
    let refused = publisher.publish("room", Message::text("down")).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    expect_event(&mut events, |e| {
        matches!(e, BrokerEvent::Disconnected { .. })
    })
    .await;
    redis.restart().await;
    let resumed = expect_event(&mut events, |e| {
        matches!(
            e,
            BrokerEvent::Resumed { .. } | BrokerEvent::EpochChanged { .. }
        )
    })
    .await;
    assert_eq!(
        resumed,
        BrokerEvent::Resumed { topics: 1 },
        "the stream survived"
    );
    let mut next = 11;
    for _ in 0..20 {
        if next > 20 {
            break;
        }
        if let Ok(published) = publisher
            .publish("room", Message::text(format!("m{next}")))
            .await
        {
            assert_eq!(published.position.unwrap().offset, next);
            next += 1;
        }
    }
    assert_eq!(next, 21, "publishing works again");
    for ws in &mut clients {
        for n in 1..=20 {
            assert_eq!(recv_text(ws).await, format!("{n}@m{n}"));
        }
    }
}

/// A stream lost with Redis (restarted without its data): the relay reports the epoch
/// change and goes on with the new stream; a client's old position cannot be
/// recovered, and is told so.
#[tokio::test]
async fn streams_report_a_lost_stream() {
    let mut redis = RedisServer::start(false).await;
    let (server, mut clients) = process(1).await;
    let relay = streams(&redis, server.hub.clone(), quick_config()).await;
    let mut events = relay.events();
    relay.subscribe("room").await.unwrap();
    let mut last = None;
    for n in 1..=5 {
        let published = relay
            .publish("room", Message::text(format!("m{n}")))
            .await
            .unwrap();
        last = published.position;
    }
    for n in 1..=5 {
        assert_eq!(recv_text(&mut clients[0]).await, format!("{n}@m{n}"));
    }
    redis.restart().await;
    expect_event(&mut events, |e| {
        matches!(e, BrokerEvent::EpochChanged { .. })
    })
    .await;
    let mut published = None;
    for _ in 0..3 {
        if let Ok(p) = relay.publish("room", Message::text("new")).await {
            published = Some(p);
            break;
        }
    }
    let position = published.and_then(|p| p.position).unwrap();
    assert_eq!(position.offset, 1, "a new stream");
    let last = last.unwrap();
    assert_ne!(position.epoch, last.epoch);
    assert_eq!(recv_text(&mut clients[0]).await, "1@new");
    assert_eq!(
        relay.recover("room", &last).await,
        Err(RecoverError::EpochChanged {
            current: Some(position.epoch)
        })
    );
}

/// A topic whose metadata was lost (deleted here; evicted, in life) starts a new epoch
/// and a new stream: publishing goes on, offsets start over, and the old position is
/// refused as another epoch's.
#[tokio::test]
async fn streams_start_over_when_their_metadata_is_lost() {
    let redis = RedisServer::start(false).await;
    let broker = streams(&redis, Hub::default(), quick_config()).await;
    let first = broker.publish("t", Message::text("one")).await.unwrap();
    broker.publish("t", Message::text("two")).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("DEL")
        .arg("sockeye:m:t")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let again = broker.publish("t", Message::text("three")).await.unwrap();
    let position = again.position.unwrap();
    assert_eq!(position.offset, 1);
    let first = first.position.unwrap();
    assert_ne!(position.epoch, first.epoch);
    assert!(matches!(
        broker.recover("t", &first).await,
        Err(RecoverError::EpochChanged { .. })
    ));
    let since_start = StreamPosition {
        epoch: position.epoch,
        offset: 0,
    };
    let all = broker.recover("t", &since_start).await.unwrap();
    assert_eq!(all.len(), 1, "only the new epoch's entries");
    assert_eq!(all[0].message, Message::text("three"));
}
