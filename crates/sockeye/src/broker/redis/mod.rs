//! Redis brokers (the `redis` feature): [`RedisPubSub`] (at most once) and
//! [`RedisStreams`] (ordered, positioned, recoverable). See the [broker docs](super).
//!
//! Files: this one has the settings and what both share (the command connection, the
//! message encoding, the relay's reconnection pacing); `pubsub` and `streams` have a
//! backend each.
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

use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use sockeye_proto::{DataKind, Message};
use tokio::task::JoinHandle;

use super::BrokerError;
use crate::hub::Publication;

mod pubsub;
mod streams;

pub use pubsub::RedisPubSub;
pub use streams::{Format, RedisStreams};

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
pub(super) struct Commands {
    client: Client,
    config: AsyncConnectionConfig,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl Commands {
    pub(super) fn new(client: Client, config: &RedisConfig, extra_wait: Duration) -> Commands {
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
    pub(super) async fn run<T, F>(
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

pub(super) fn unavailable(e: RedisError) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

pub(super) fn open(url: &str) -> Result<Client, BrokerError> {
    Client::open(url).map_err(|e| BrokerError::Unavailable(format!("{url}: {e}")))
}

/// A message as stored in Redis: its kind, then its bytes.
pub(super) fn encode(publication: &Publication) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + publication.payload.len());
    out.push(match publication.kind {
        DataKind::Text => b't',
        DataKind::Binary => b'b',
    });
    out.extend_from_slice(&publication.payload);
    out
}

/// The message stored as `data`; `None` for bytes no broker of this module wrote.
pub(super) fn decode(data: &[u8]) -> Option<Message> {
    let (&kind, rest) = data.split_first()?;
    match kind {
        b't' => Some(Message::text(std::str::from_utf8(rest).ok()?)),
        b'b' => Some(Message::Binary(Bytes::copy_from_slice(rest))),
        _ => None,
    }
}

/// Aborts the relay when the broker is dropped.
pub(super) struct Relay(pub(super) JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits before the next reconnection try: 20 ms, doubling up to `max`.
pub(super) async fn backoff(attempt: &mut u32, max: Duration) {
    let delay = Duration::from_millis(20)
        .saturating_mul(1 << (*attempt).min(10))
        .min(max);
    *attempt += 1;
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sockeye_proto::{DataKind, Message};

    use super::{decode, encode};
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
}
