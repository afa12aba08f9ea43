//! [`RedisStreams`]: a Redis stream per topic; positions, order and recovery.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use sockeye_proto::Message;
use tokio::sync::{broadcast, Notify};

use super::{backoff, decode, encode, open, Commands, RedisConfig, Relay};
use crate::broker::{
    Broker, BrokerError, BrokerEvent, BrokerFuture, Published, RecoverError, StreamMessage,
    StreamPosition,
};
use crate::hub::{Hub, Publication};

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
    if topics.is_empty() {
        return Ok(0);
    }
    // One round trip for all topics.
    let mut pipe = redis::pipe();
    for topic in &topics {
        pipe.cmd("HGET").arg(shared.meta_key(topic)).arg("epoch");
    }
    let epochs: Vec<Option<String>> = shared
        .commands
        .run(|mut c| async move { pipe.query_async(&mut c).await })
        .await?;
    let mut cursors = shared.cursors.lock();
    for (topic, epoch) in topics.iter().zip(epochs) {
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
    use redis::Value;

    use super::{parse_entries, parse_read};

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
