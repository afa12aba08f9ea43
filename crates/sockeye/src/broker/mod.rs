//! [`Broker`]: publish to the subscribers of every process, not only this one's.
//!
//! Each process keeps its own [`Hub`] for its own connections; a broker carries what is
//! published to every process connected to it, whose relay then publishes it to its
//! local hub. [`LocalBroker`] is the in-process default (a publish goes straight to the
//! hub). With the `redis` feature, the module `redis` has two backends:
//!
//! - `RedisPubSub`: Redis PUB/SUB. **At most once**: what is published while a process
//!   is disconnected from Redis never reaches that process's subscribers. The loss is
//!   reported ([`BrokerEvent::Disconnected`], then [`BrokerEvent::Resubscribed`] once the
//!   relay is back, which says a gap may have happened), never silent.
//! - `RedisStreams`: one Redis stream per topic. Every message has a
//!   [`StreamPosition`] (the topic's epoch and the message's offset), a publish is one
//!   atomic script, each topic arrives in order, and a client that comes back with its
//!   last position recovers what it missed, or is told that it cannot
//!   ([`RecoverError`]).
//!
//! Publishing to Redis waits for Redis, at most the configured response timeout: an
//! outage gives an error ([`BrokerError::Unavailable`]), never a hang.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use sockeye_proto::Message;

use crate::hub::{Hub, HubError, PublishReport};

#[cfg(feature = "redis")]
pub mod redis;

/// A boxed future, so that brokers can be chosen at run time (`Arc<dyn Broker>`).
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries published messages to the subscribers of every process that shares the
/// broker. See the [module docs](self).
pub trait Broker: Send + Sync {
    /// Publishes `message` on `topic` to every process's subscribers, this one's
    /// included.
    ///
    /// # Errors
    /// [`BrokerError::Hub`] for a topic or message the hub refuses,
    /// [`BrokerError::Unavailable`] when the broker cannot be reached in time.
    ///
    /// # Cancel safety
    /// Not cancel safe: a future dropped before it completes may or may not have
    /// published the message (the command may be on its way already).
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> BrokerFuture<'a, Result<Published, BrokerError>>;

    /// Starts relaying `topic` from the broker to this process's hub (call it when the
    /// first local connection subscribes; again is harmless).
    ///
    /// # Errors
    /// As [`Broker::publish`]. A Redis relay that is reconnecting records the topic
    /// first, and subscribes to it once connected, even when this call timed out.
    ///
    /// # Cancel safety
    /// As the error case: a topic recorded is subscribed to by the relay.
    fn subscribe<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>>;

    /// Stops relaying `topic` to this process (once it has no local subscribers).
    ///
    /// # Errors
    /// As [`Broker::publish`].
    ///
    /// # Cancel safety
    /// The topic is forgotten first; a relay that did not confirm yet stops relaying it
    /// when it can.
    fn unsubscribe<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>>;

    /// The hub this broker delivers to.
    fn hub(&self) -> &Hub;
}

/// What a [`Broker::publish`] knows when it returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The local hub's report, when the publish went straight to it ([`LocalBroker`]);
    /// `None` when the message reaches the hubs through the broker's relays, later.
    pub local: Option<PublishReport>,
    /// The message's position in its topic's stream (`RedisStreams`).
    pub position: Option<StreamPosition>,
    /// How many processes' relays Redis handed the message to (`RedisPubSub`: the
    /// receivers `PUBLISH` counted).
    pub receivers: Option<usize>,
}

/// Where a message is in its topic's stream: the stream's epoch (which changes when the
/// stream is lost and starts over: Redis restarted without its data, or the key was
/// deleted) and the message's offset in it (1, 2, 3 ... within an epoch).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The stream's epoch.
    pub epoch: String,
    /// The message's offset.
    pub offset: u64,
}

/// A message read from a topic's stream, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamMessage {
    /// The topic.
    pub topic: String,
    /// Its position.
    pub position: StreamPosition,
    /// The message (text or binary).
    pub message: Message,
}

/// Why messages since a position cannot be recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoverError {
    /// The stream is not the one the position is in: it was lost and started over
    /// (another epoch). What was published in the old epoch after the position is gone.
    EpochChanged {
        /// The stream's epoch now (`None`: nothing was published since it was lost).
        current: Option<String>,
    },
    /// Messages after the position were trimmed (the retention setting): the oldest
    /// still kept is `oldest`.
    Trimmed {
        /// The offset of the oldest message kept.
        oldest: u64,
    },
    /// The position is past the stream's end (a position from elsewhere).
    Ahead {
        /// The stream's last offset.
        last: u64,
    },
    /// The broker could not be asked.
    Broker(BrokerError),
}

impl fmt::Display for RecoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoverError::EpochChanged { .. } => {
                f.write_str("cannot recover: the stream was lost and started over (new epoch)")
            }
            RecoverError::Trimmed { oldest } => write!(
                f,
                "cannot recover: messages were trimmed (the oldest kept is offset {oldest})"
            ),
            RecoverError::Ahead { last } => {
                write!(
                    f,
                    "cannot recover: the position is past the stream's end ({last})"
                )
            }
            RecoverError::Broker(e) => write!(f, "cannot recover: {e}"),
        }
    }
}

impl std::error::Error for RecoverError {}

/// What a relay reports about the broker: losses are never silent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// The relay lost its connection to the broker; it reconnects by itself. With
    /// PUB/SUB, what is published until [`BrokerEvent::Resubscribed`] is lost for this
    /// process.
    Disconnected {
        /// Why.
        error: String,
    },
    /// PUB/SUB: the relay is connected and subscribed again, to this many topics, after
    /// a disconnection: messages published in between were not delivered here.
    Resubscribed {
        /// The topics subscribed again.
        topics: usize,
    },
    /// Streams: the relay is connected again and went on from where it was in each
    /// topic: nothing was lost.
    Resumed {
        /// The topics resumed.
        topics: usize,
    },
    /// Streams: a topic's stream was lost (its epoch changed): what was published in the
    /// old epoch and not yet relayed is lost. The relay goes on with the new epoch.
    EpochChanged {
        /// The topic.
        topic: String,
    },
    /// Streams: messages of a topic were trimmed before the relay read them.
    Trimmed {
        /// The topic.
        topic: String,
        /// How many were missed.
        missed: u64,
    },
}

/// A broker's error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerError {
    /// The hub refused the topic or the message.
    Hub(HubError),
    /// The broker could not be reached, or did not answer in time.
    Unavailable(String),
    /// The broker answered something this backend did not expect.
    Protocol(String),
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Hub(e) => fmt::Display::fmt(e, f),
            BrokerError::Unavailable(why) => write!(f, "the broker is unavailable: {why}"),
            BrokerError::Protocol(why) => write!(f, "unexpected answer from the broker: {why}"),
        }
    }
}

impl std::error::Error for BrokerError {}

impl From<HubError> for BrokerError {
    fn from(e: HubError) -> Self {
        BrokerError::Hub(e)
    }
}

/// The in-process broker: a publish goes straight to the hub, and its report comes back.
#[derive(Clone, Debug, Default)]
pub struct LocalBroker {
    hub: Hub,
}

impl LocalBroker {
    /// A broker for `hub`.
    pub fn new(hub: Hub) -> LocalBroker {
        LocalBroker { hub }
    }
}

impl Broker for LocalBroker {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> BrokerFuture<'a, Result<Published, BrokerError>> {
        let published = self.hub.publish(topic, message).map(|report| Published {
            local: Some(report),
            ..Published::default()
        });
        Box::pin(std::future::ready(published.map_err(BrokerError::from)))
    }

    fn subscribe<'a>(&'a self, _topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(&'a self, _topic: &'a str) -> BrokerFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }
}
