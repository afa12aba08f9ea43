//! [`RedisPubSub`]: Redis PUB/SUB, at most once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::Client;
use sockeye_proto::Message;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{backoff, decode, encode, open, unavailable, Commands, RedisConfig, Relay};
use crate::broker::{Broker, BrokerError, BrokerEvent, BrokerFuture, Published};
use crate::hub::{Hub, Publication};

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
