//! Redis brokers (the `redis` feature): [`RedisPubSub`] (at most once) and
//! [`RedisStreams`] (ordered, positioned, recoverable). See the [broker docs](super).
//!
//! # Keys and channels
//! With the default prefix `sockeye:`, topic `room` is the PUB/SUB channel
//! `sockeye:room`, or the stream `sockeye:s:room` with its metadata hash
//! `sockeye:m:room` (`epoch`, and `offset`: the last offset given). A message is its kind
//! (`t` text, `b` binary) and its bytes, one Redis string.
//!
//! # Relays
//! Each broker runs one task, its relay, that reads from Redis and publishes to the local
//! hub; it reconnects by itself (waiting at most [`RedisConfig::reconnect_max_delay`]
//! between tries) and stops when the broker is dropped. It reports what happened to the
//! connection on [`RedisPubSub::events`] / [`RedisStreams::events`].

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use sockeye_proto::{DataKind, Message};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::{
    Broker, BrokerError, BrokerEvent, BrokerFuture, Published, RecoverError, StreamMessage,
    StreamPosition,
};
use crate::hub::{Hub, Publication};

/// Settings of the Redis brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Prepended to every channel and key. Default `sockeye:`.
    pub prefix: String,
    /// The longest wait for an answer from Redis (a publish, a recovery, a
    /// subscription); past it the call fails with [`BrokerError::Unavailable`]. Default
    /// 2 s.
    pub response_timeout: Duration,
    /// The longest wait to connect. Default 2 s.
    pub connection_timeout: Duration,
    /// The longest pause between two reconnection tries of a relay (they start at 20 ms
    /// and double). Default 1 s.
    pub reconnect_max_delay: Duration,
    /// Streams: the messages kept per topic (exactly; older ones are trimmed, and can no
    /// longer be recovered). Default 10,000.
    pub retention: usize,
    /// Streams: how long one read of the relay waits for new messages. It also bounds
    /// how long the relay takes to notice that a stream was lost while idle. Default
    /// 250 ms.
    pub poll_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "sockeye:".to_owned(),
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(2),
            reconnect_max_delay: Duration::from_secs(1),
            retention: 10_000,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// A connection for commands, opened on first use and again after a failure.
struct Commands {
    client: Client,
    config: AsyncConnectionConfig,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl Commands {
    fn new(client: Client, config: &RedisConfig, extra_wait: Duration) -> Commands {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(config.response_timeout + extra_wait)
            .set_connection_timeout(config.connection_timeout);
        Commands {
            client,
            config,
            connection: Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<MultiplexedConnection, BrokerError> {
        if let Some(connection) = self.connection.lock().clone() {
            return Ok(connection);
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(unavailable)?;
        *self.connection.lock() = Some(connection.clone());
        Ok(connection)
    }

    /// Runs a command (or script) with `run`; a connection that failed is dropped, for
    /// the next call to open another.
    async fn run<T, F>(
        &self,
        run: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Result<T, BrokerError>
    where
        F: std::future::Future<Output = Result<T, RedisError>>,
    {
        let connection = self.get().await?;
        run(connection).await.map_err(|e| {
            if is_outage(&e) {
                *self.connection.lock() = None;
                unavailable(e)
            } else {
                BrokerError::Protocol(e.to_string())
            }
        })
    }
}

fn is_outage(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn unavailable(e: RedisError) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn open(url: &str) -> Result<Client, BrokerError> {
    Client::open(url).map_err(|e| BrokerError::Unavailable(format!("{url}: {e}")))
}

/// A message as stored in Redis: its kind, then its bytes.
fn encode(publication: &Publication) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + publication.payload.len());
    out.push(match publication.kind {
        DataKind::Text => b't',
        DataKind::Binary => b'b',
    });
    out.extend_from_slice(&publication.payload);
    out
}

/// The message stored as `data`; `None` for bytes no broker of this module wrote.
fn decode(data: &[u8]) -> Option<Message> {
    let (&kind, rest) = data.split_first()?;
    match kind {
        b't' => Some(Message::text(std::str::from_utf8(rest).ok()?)),
        b'b' => Some(Message::Binary(Bytes::copy_from_slice(rest))),
        _ => None,
    }
}

/// Aborts the relay when the broker is dropped.
struct Relay(JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits before the next reconnection try: 20 ms, doubling up to `max`.
async fn backoff(attempt: &mut u32, max: Duration) {
    let delay = Duration::from_millis(20)
        .saturating_mul(1 << (*attempt).min(10))
        .min(max);
    *attempt += 1;
    tokio::time::sleep(delay).await;
}

/// Redis PUB/SUB: every process's relay subscribes to the topics its connections want,
/// and Redis hands each published message to the relays connected at that moment.
///
/// **At most once.** A process that is disconnected from Redis (a network failure, Redis
/// restarting) misses what is published meanwhile, and nothing can recover it. The relay
/// reconnects and subscribes again by itself, and reports the gap on [`Self::events`]:
/// [`BrokerEvent::Disconnected`] when it happens, [`BrokerEvent::Resubscribed`] when it is
/// over. A publish while this process cannot reach Redis fails with
/// [`BrokerError::Unavailable`] within [`RedisConfig::response_timeout`].
pub struct RedisPubSub {
    shared: Arc<PubSubShared>,
    _relay: Relay,
}

struct PubSubShared {
    hub: Hub,
    config: RedisConfig,
    commands: Commands,
    /// The topics to be subscribed (again, after a reconnection).
    topics: Mutex<HashSet<String>>,
    requests: mpsc::UnboundedSender<Request>,
    events: broadcast::Sender<BrokerEvent>,
}

/// A change of subscription for the relay, answered once Redis confirmed it.
enum Request {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String, oneshot::Sender<Result<(), BrokerError>>),
}

impl RedisPubSub {
    /// Connects to Redis at `url` (`redis://host:port/db`) and starts the relay into
    /// `hub`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] if Redis cannot be reached within the timeouts.
    ///
    /// # Cancel safety
    /// Cancel safe: a broker not returned is dropped, and its relay stopped.
    pub async fn connect(url: &str, hub: Hub, config: RedisConfig) -> Result<Self, BrokerError> {
        let client = open(url)?;
        let commands = Commands::new(client.clone(), &config, Duration::ZERO);
        commands
            .run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await?;
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(256);
        let shared = Arc::new(PubSubShared {
            hub,
            config,
            commands,
            topics: Mutex::default(),
            requests,
            events,
        });
        let (ready, connected) = oneshot::channel();
        let relay = tokio::spawn(pubsub_relay(
            client,
            Arc::downgrade(&shared),
            requests_rx,
            ready,
        ));
        let relay = Relay(relay);
        match tokio::time::timeout(shared.config.connection_timeout * 2, connected).await {
            Ok(Ok(())) => Ok(RedisPubSub {
                shared,
                _relay: relay,
            }),
            _ => Err(BrokerError::Unavailable(
                "the PUB/SUB connection did not open in time".into(),
            )),
        }
    }

    /// What the relay reports: disconnections, and the gaps they leave.
    pub fn events(&self) -> broadcast::Receiver<BrokerEvent> {
        self.shared.events.subscribe()
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.shared.config.prefix)
    }

    async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), BrokerError>>) -> Request,
    ) -> Result<(), BrokerError> {
        let (done, answer) = oneshot::channel();
        if self.shared.requests.send(make(done)).is_err() {
            return Err(BrokerError::Unavailable("the relay stopped".into()));
        }
        let timeout = self.shared.config.response_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Unavailable("the relay stopped".into())),
            // Still to be done: the relay subscribes to it once it is connected again.
            Err(_) => Err(BrokerError::Unavailable(
                "Redis did not confirm the subscription in time".into(),
            )),
        }
    }
}

impl Broker for RedisPubSub {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> BrokerFuture<'a, Result<Published, BrokerError>> {
        Box::pin(async move {
            self.shared.hub.check_topic(topic)?;
            let data = encode(&Publication::from_message(message)?);
            let channel = self.channel(topic);
            let receivers: usize = self
                .shared
                .commands
                .run(|mut c| async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(data)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(Published {
                receivers: Some(receivers),
                ..Published::default()
            })
        })
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.shared.hub.check_topic(topic)?;
            self.shared.topics.lock().insert(topic.to_owned());
            self.request(|done| Request::Subscribe(self.channel(topic), done))
                .await
        })
    }

    fn unsubscribe<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if !self.shared.topics.lock().remove(topic) {
                return Ok(());
            }
            self.request(|done| Request::Unsubscribe(self.channel(topic), done))
                .await
        })
    }

    fn hub(&self) -> &Hub {
        &self.shared.hub
    }
}

/// The PUB/SUB relay: (re)connects, subscribes to every wanted topic, and publishes what
/// arrives to the hub, until the broker is dropped.
async fn pubsub_relay(
    client: Client,
    shared: std::sync::Weak<PubSubShared>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut attempt = 0;
    let mut disconnected = false;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let config = strong.config.clone();
        let opened = tokio::time::timeout(config.connection_timeout, client.get_async_pubsub());
        let pubsub = match opened.await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                report_disconnect(&strong, &mut disconnected, e.to_string());
                drop(strong);
                backoff(&mut attempt, config.reconnect_max_delay).await;
                continue;
            }
            Err(_) => {
                report_disconnect(&strong, &mut disconnected, "connect timed out".into());
                drop(strong);
                backoff(&mut attempt, config.reconnect_max_delay).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = strong
            .topics
            .lock()
            .iter()
            .map(|topic| format!("{}{topic}", config.prefix))
            .collect();
        if !channels.is_empty() {
            if let Err(e) = sink.subscribe(&channels).await {
                report_disconnect(&strong, &mut disconnected, e.to_string());
                drop(strong);
                backoff(&mut attempt, config.reconnect_max_delay).await;
                continue;
            }
        }
        attempt = 0;
        if std::mem::take(&mut disconnected) {
            let _ = strong.events.send(BrokerEvent::Resubscribed {
                topics: channels.len(),
            });
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let hub = strong.hub.clone();
        let prefix_len = config.prefix.len();
        drop(strong);
        let why = loop {
            tokio::select! {
                request = requests.recv() => {
                    let (result, done) = match request {
                        None => return,
                        Some(Request::Subscribe(channel, done)) => {
                            (sink.subscribe(&channel).await, done)
                        }
                        Some(Request::Unsubscribe(channel, done)) => {
                            (sink.unsubscribe(&channel).await, done)
                        }
                    };
                    match result {
                        Ok(()) => {
                            let _ = done.send(Ok(()));
                        }
                        Err(e) => {
                            let why = e.to_string();
                            let _ = done.send(Err(unavailable(e)));
                            break why;
                        }
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        break "the connection to Redis ended".to_owned();
                    };
                    let topic = message.get_channel_name().get(prefix_len..).unwrap_or("");
                    if let Some(message) = decode(message.get_payload_bytes()) {
                        // The topic was checked by the publisher's hub; another
                        // process's limits may differ: then the hub refuses it here.
                        let _ = hub.publish(topic, message);
                    }
                }
            }
        };
        let Some(strong) = shared.upgrade() else {
            return;
        };
        report_disconnect(&strong, &mut disconnected, why);
    }
}

fn report_disconnect(shared: &PubSubShared, disconnected: &mut bool, error: String) {
    if !std::mem::replace(disconnected, true) {
        let _ = shared.events.send(BrokerEvent::Disconnected { error });
    }
}

/// Turns a relayed stream message into what the hub publishes: by default the message
/// itself; an application that lets its clients recover by position puts the position in
/// the message here.
pub type Format = Arc<dyn Fn(&StreamMessage) -> Message + Send + Sync>;

/// Redis Streams: one stream per topic, each message with a [`StreamPosition`].
///
/// - A publish is one script, atomic in Redis: it gives the topic an epoch if it has none
///   (a random one), the message the next offset, and appends it, trimming the stream to
///   [`RedisConfig::retention`] messages.
/// - Each process's relay reads every subscribed topic's stream from where it was, in
///   order: each message reaches each process once and in order, also across a
///   reconnection (a Redis restart that kept its data loses nothing:
///   [`BrokerEvent::Resumed`]).
/// - [`RedisStreams::recover`]: what a topic got after a position, for a client that
///   comes back (to this process or another), or why that is impossible
///   ([`RecoverError::EpochChanged`]: the stream was lost, e.g. Redis restarted without
///   its data; [`RecoverError::Trimmed`]: past the retention).
/// - A stream lost under the relay is reported ([`BrokerEvent::EpochChanged`]), never
///   silent; so are messages trimmed before the relay read them
///   ([`BrokerEvent::Trimmed`]).
pub struct RedisStreams {
    shared: Arc<StreamsShared>,
    _relay: Relay,
}

struct StreamsShared {
    hub: Hub,
    config: RedisConfig,
    commands: Commands,
    /// Where the relay is in each subscribed topic.
    cursors: Mutex<HashMap<String, Cursor>>,
    /// Wakes an idle relay (no topics) when one is subscribed.
    wake: Notify,
    events: broadcast::Sender<BrokerEvent>,
    format: Format,
    script: redis::Script,
}

#[derive(Clone, Debug)]
struct Cursor {
    /// `None`: nothing published yet.
    epoch: Option<String>,
    /// The last offset relayed.
    last: u64,
}

/// The atomic publish: KEYS stream, meta; ARGV new epoch, retention, message. A topic
/// without an epoch starts a new stream (any old entries, whose metadata was lost, go:
/// their offsets would clash with the new epoch's).
const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '0-' .. offset, 'e', epoch, 'm', ARGV[3])
return {epoch, offset}
";

impl RedisStreams {
    /// Connects to Redis at `url` and starts the relay into `hub`, which publishes each
    /// message as it was published.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] if Redis cannot be reached within the timeouts.
    ///
    /// # Cancel safety
    /// Cancel safe: a broker not returned is dropped, and its relay stopped.
    pub async fn connect(url: &str, hub: Hub, config: RedisConfig) -> Result<Self, BrokerError> {
        Self::connect_with_format(url, hub, config, Arc::new(|m| m.message.clone())).await
    }

    /// As [`RedisStreams::connect`], with the relay publishing `format(message)`: for
    /// instance the message wrapped with its position, for clients that recover.
    ///
    /// # Errors
    /// As [`RedisStreams::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe: a broker not returned is dropped, and its relay stopped.
    pub async fn connect_with_format(
        url: &str,
        hub: Hub,
        config: RedisConfig,
        format: Format,
    ) -> Result<Self, BrokerError> {
        let client = open(url)?;
        let commands = Commands::new(client.clone(), &config, Duration::ZERO);
        commands
            .run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await?;
        let reader = Commands::new(client, &config, config.poll_interval);
        let (events, _) = broadcast::channel(256);
        let shared = Arc::new(StreamsShared {
            hub,
            config,
            commands,
            cursors: Mutex::default(),
            wake: Notify::new(),
            events,
            format,
            script: redis::Script::new(PUBLISH_SCRIPT),
        });
        let relay = Relay(tokio::spawn(streams_relay(reader, Arc::downgrade(&shared))));
        Ok(RedisStreams {
            shared,
            _relay: relay,
        })
    }

    /// What the relay reports: disconnections, resumptions, lost or trimmed streams.
    pub fn events(&self) -> broadcast::Receiver<BrokerEvent> {
        self.shared.events.subscribe()
    }

    /// The messages of `topic` after `since`, in order (at most
    /// [`RedisConfig::retention`]), for a client that comes back with the last position
    /// it saw; empty when it missed nothing.
    ///
    /// # Errors
    /// [`RecoverError::EpochChanged`] when the stream is no longer the one of `since`,
    /// [`RecoverError::Trimmed`] when messages after it were trimmed,
    /// [`RecoverError::Ahead`] for a position past the end, and
    /// [`RecoverError::Broker`] when Redis cannot be asked.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn recover(
        &self,
        topic: &str,
        since: &StreamPosition,
    ) -> Result<Vec<StreamMessage>, RecoverError> {
        let shared = &self.shared;
        shared
            .hub
            .check_topic(topic)
            .map_err(|e| RecoverError::Broker(e.into()))?;
        let (epoch, last) = shared.meta(topic).await.map_err(RecoverError::Broker)?;
        if epoch.as_deref() != Some(since.epoch.as_str()) {
            return Err(RecoverError::EpochChanged { current: epoch });
        }
        if since.offset > last {
            return Err(RecoverError::Ahead { last });
        }
        if since.offset == last {
            return Ok(Vec::new());
        }
        let key = shared.stream_key(topic);
        let from = format!("0-{}", since.offset + 1);
        let count = shared.config.retention.max(1);
        let reply: Value = shared
            .commands
            .run(|mut c| async move {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(RecoverError::Broker)?;
        let entries = parse_entries(&reply).map_err(RecoverError::Broker)?;
        match entries.first() {
            Some(first) if first.offset != since.offset + 1 => {
                return Err(RecoverError::Trimmed {
                    oldest: first.offset,
                })
            }
            None => return Err(RecoverError::Trimmed { oldest: last + 1 }),
            Some(_) => {}
        }
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.epoch != since.epoch {
                // Lost and started over since `meta` was read.
                return Err(RecoverError::EpochChanged {
                    current: Some(entry.epoch),
                });
            }
            if let Some(message) = decode(&entry.data) {
                out.push(StreamMessage {
                    topic: topic.to_owned(),
                    position: StreamPosition {
                        epoch: entry.epoch,
                        offset: entry.offset,
                    },
                    message,
                });
            }
        }
        Ok(out)
    }

    /// The position of the last message published on `topic` (`None` before the
    /// first).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when Redis cannot be asked.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn position(&self, topic: &str) -> Result<Option<StreamPosition>, BrokerError> {
        let (epoch, offset) = self.shared.meta(topic).await?;
        Ok(epoch.map(|epoch| StreamPosition { epoch, offset }))
    }
}

impl StreamsShared {
    fn stream_key(&self, topic: &str) -> String {
        format!("{}s:{topic}", self.config.prefix)
    }

    fn meta_key(&self, topic: &str) -> String {
        format!("{}m:{topic}", self.config.prefix)
    }

    /// A topic's epoch (if it has one) and last offset.
    async fn meta(&self, topic: &str) -> Result<(Option<String>, u64), BrokerError> {
        let key = self.meta_key(topic);
        let (epoch, offset): (Option<String>, Option<u64>) = self
            .commands
            .run(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("epoch")
                    .arg("offset")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok((epoch, offset.unwrap_or(0)))
    }
}

impl Broker for RedisStreams {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> BrokerFuture<'a, Result<Published, BrokerError>> {
        Box::pin(async move {
            let shared = &self.shared;
            shared.hub.check_topic(topic)?;
            let data = encode(&Publication::from_message(message)?);
            let mut invocation = shared.script.prepare_invoke();
            invocation
                .key(shared.stream_key(topic))
                .key(shared.meta_key(topic))
                .arg(new_epoch())
                .arg(shared.config.retention.max(1))
                .arg(data);
            let (epoch, offset): (String, u64) = shared
                .commands
                .run(|mut c| async move { invocation.invoke_async(&mut c).await })
                .await?;
            Ok(Published {
                position: Some(StreamPosition { epoch, offset }),
                ..Published::default()
            })
        })
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let shared = &self.shared;
            shared.hub.check_topic(topic)?;
            if shared.cursors.lock().contains_key(topic) {
                return Ok(());
            }
            // From the stream's end now: what is published from here on.
            let (epoch, last) = shared.meta(topic).await?;
            shared
                .cursors
                .lock()
                .entry(topic.to_owned())
                .or_insert(Cursor { epoch, last });
            shared.wake.notify_one();
            Ok(())
        })
    }

    fn unsubscribe<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.shared.cursors.lock().remove(topic);
            Ok(())
        })
    }

    fn hub(&self) -> &Hub {
        &self.shared.hub
    }
}

/// A fresh epoch: 64 random bits, in hex.
fn new_epoch() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{random:016x}")
}

/// One stream entry as this module writes them.
struct Entry {
    offset: u64,
    epoch: String,
    data: Vec<u8>,
}

/// The entries of an `XRANGE` reply (or of one stream in an `XREAD` reply).
fn parse_entries(reply: &Value) -> Result<Vec<Entry>, BrokerError> {
    let bad = |what: &str| BrokerError::Protocol(format!("stream entry: {what}"));
    let Value::Array(entries) = reply else {
        return Err(bad("not an array"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(pair) = entry else {
            return Err(bad("not an [id, fields] pair"));
        };
        let [Value::BulkString(id), Value::Array(fields)] = pair.as_slice() else {
            return Err(bad("not an [id, fields] pair"));
        };
        let offset = std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.strip_prefix("0-"))
            .and_then(|seq| seq.parse().ok())
            .ok_or_else(|| bad("an id not written by this broker"))?;
        let (mut epoch, mut data) = (None, None);
        for pair in fields.chunks(2) {
            if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                match name.as_slice() {
                    b"e" => epoch = String::from_utf8(value.clone()).ok(),
                    b"m" => data = Some(value.clone()),
                    _ => {}
                }
            }
        }
        let (Some(epoch), Some(data)) = (epoch, data) else {
            return Err(bad("missing fields"));
        };
        out.push(Entry {
            offset,
            epoch,
            data,
        });
    }
    Ok(out)
}

/// The streams of an `XREAD` reply: (key, entries).
fn parse_read(reply: &Value) -> Result<Vec<(String, Vec<Entry>)>, BrokerError> {
    let streams: Vec<&Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams.iter().collect(),
        // RESP3 answers with a map of key to entries.
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (key, entries) in streams {
                let Value::BulkString(key) = key else {
                    return Err(BrokerError::Protocol("XREAD: a key".into()));
                };
                out.push((
                    String::from_utf8_lossy(key).into_owned(),
                    parse_entries(entries)?,
                ));
            }
            return Ok(out);
        }
        _ => return Err(BrokerError::Protocol("XREAD: not an array".into())),
    };
    let mut out = Vec::with_capacity(streams.len());
    for stream in streams {
        let Value::Array(pair) = stream else {
            return Err(BrokerError::Protocol(
                "XREAD: not a [key, entries] pair".into(),
            ));
        };
        let [Value::BulkString(key), entries] = pair.as_slice() else {
            return Err(BrokerError::Protocol(
                "XREAD: not a [key, entries] pair".into(),
            ));
        };
        out.push((
            String::from_utf8_lossy(key).into_owned(),
            parse_entries(entries)?,
        ));
    }
    Ok(out)
}

/// The Streams relay: reads every subscribed topic from its cursor and publishes what
/// it reads to the hub, in order, until the broker is dropped.
async fn streams_relay(reader: Commands, shared: std::sync::Weak<StreamsShared>) {
    let mut attempt = 0;
    let mut disconnected = false;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if disconnected {
            // Back after an outage: whether each stream survived it.
            match check_epochs(&strong).await {
                Ok(topics) => {
                    disconnected = false;
                    attempt = 0;
                    let _ = strong.events.send(BrokerEvent::Resumed { topics });
                }
                Err(_) => {
                    let max = strong.config.reconnect_max_delay;
                    drop(strong);
                    backoff(&mut attempt, max).await;
                    continue;
                }
            }
        }
        let cursors: Vec<(String, u64)> = strong
            .cursors
            .lock()
            .iter()
            .map(|(topic, cursor)| (topic.clone(), cursor.last))
            .collect();
        if cursors.is_empty() {
            let wait = strong.config.poll_interval;
            let woken = async { strong.wake.notified().await };
            let _ = tokio::time::timeout(wait, woken).await;
            continue;
        }
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(512)
            .arg("BLOCK")
            .arg(strong.config.poll_interval.as_millis() as u64)
            .arg("STREAMS");
        for (topic, _) in &cursors {
            command.arg(strong.stream_key(topic));
        }
        for (_, last) in &cursors {
            command.arg(format!("0-{last}"));
        }
        let read: Result<Value, BrokerError> = reader
            .run(|mut c| async move { command.query_async(&mut c).await })
            .await;
        let streams = match read.and_then(|reply| parse_read(&reply)) {
            Ok(streams) => streams,
            Err(e) => {
                if !disconnected {
                    let error = e.to_string();
                    let _ = strong.events.send(BrokerEvent::Disconnected { error });
                    disconnected = true;
                }
                let max = strong.config.reconnect_max_delay;
                drop(strong);
                backoff(&mut attempt, max).await;
                continue;
            }
        };
        if streams.is_empty() {
            // Idle: a stream lost meanwhile shows as a changed epoch.
            if check_epochs(&strong).await.is_err() {
                continue;
            }
        }
        let prefix = format!("{}s:", strong.config.prefix);
        for (key, entries) in streams {
            let Some(topic) = key.strip_prefix(&prefix) else {
                continue;
            };
            relay_entries(&strong, topic, entries);
        }
    }
}

/// Publishes a topic's entries to the hub in order, moving its cursor; reports gaps.
fn relay_entries(shared: &StreamsShared, topic: &str, entries: Vec<Entry>) {
    for entry in entries {
        let expected = {
            let mut cursors = shared.cursors.lock();
            let Some(cursor) = cursors.get_mut(topic) else {
                return;
            };
            if cursor.epoch.as_deref().is_some_and(|e| e != entry.epoch) {
                // The stream was lost and started over: read the new one from its
                // start (this batch began at the old cursor, past its first entries).
                let _ = shared.events.send(BrokerEvent::EpochChanged {
                    topic: topic.to_owned(),
                });
                *cursor = Cursor {
                    epoch: Some(entry.epoch),
                    last: 0,
                };
                return;
            }
            let expected = cursor.last + 1;
            if entry.offset < expected {
                continue;
            }
            cursor.epoch = Some(entry.epoch.clone());
            cursor.last = entry.offset;
            expected
        };
        if entry.offset > expected {
            let _ = shared.events.send(BrokerEvent::Trimmed {
                topic: topic.to_owned(),
                missed: entry.offset - expected,
            });
        }
        let Some(message) = decode(&entry.data) else {
            continue;
        };
        let message = (shared.format)(&StreamMessage {
            topic: topic.to_owned(),
            position: StreamPosition {
                epoch: entry.epoch,
                offset: entry.offset,
            },
            message,
        });
        let _ = shared.hub.publish(topic, message);
    }
}

/// Compares each subscribed topic's epoch in Redis with the relay's; a stream that was
/// lost (another epoch, or none while the relay had one) is reported and read from its
/// start. Returns the number of topics.
async fn check_epochs(shared: &StreamsShared) -> Result<usize, BrokerError> {
    let topics: Vec<String> = shared.cursors.lock().keys().cloned().collect();
    for topic in &topics {
        let (epoch, _) = shared.meta(topic).await?;
        let mut cursors = shared.cursors.lock();
        let Some(cursor) = cursors.get_mut(topic) else {
            continue;
        };
        let lost = match (&cursor.epoch, &epoch) {
            (Some(had), Some(now)) => had != now,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if lost {
            let _ = shared.events.send(BrokerEvent::EpochChanged {
                topic: topic.clone(),
            });
            *cursor = Cursor { epoch, last: 0 };
        }
    }
    Ok(topics.len())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use redis::Value;
    use sockeye_proto::{DataKind, Message};

    use super::{decode, encode, parse_entries, parse_read};
    use crate::hub::Publication;

    #[test]
    fn messages_round_trip_and_foreign_bytes_are_skipped() {
        for (kind, payload) in [(DataKind::Text, "héllo"), (DataKind::Binary, "\u{0}\u{1}")] {
            let publication = Publication {
                kind,
                payload: Bytes::from(payload),
            };
            let expected = match kind {
                DataKind::Text => Message::text(payload),
                DataKind::Binary => Message::Binary(Bytes::from(payload)),
            };
            assert_eq!(decode(&encode(&publication)), Some(expected));
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"xdata"), None, "unknown kind");
        assert_eq!(decode(b"t\xff\xfe"), None, "text that is not UTF-8");
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry =
            |id: &str, fields: Vec<Value>| Value::Array(vec![bulk(id), Value::Array(fields)]);
        let good = Value::Array(vec![entry(
            "0-7",
            vec![bulk("e"), bulk("ep"), bulk("m"), bulk("tx")],
        )]);
        let parsed = parse_entries(&good).unwrap();
        assert_eq!((parsed[0].offset, parsed[0].epoch.as_str()), (7, "ep"));
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Nil]),
            Value::Array(vec![entry(
                "1700000000000-0",
                vec![bulk("e"), bulk("x"), bulk("m"), bulk("t")],
            )]),
            Value::Array(vec![entry("0-1", vec![bulk("m")])]),
            Value::Array(vec![entry("0-x", vec![])]),
        ] {
            assert!(parse_entries(&bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_read(&Value::Nil).unwrap().is_empty(),
            "XREAD timed out"
        );
        assert!(parse_read(&Value::Int(3)).is_err());
        let read = Value::Array(vec![Value::Array(vec![bulk("sockeye:s:t"), good])]);
        assert_eq!(parse_read(&read).unwrap()[0].0, "sockeye:s:t");
    }
}
