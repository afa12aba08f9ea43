//! [`Hub`]: topics, and a message published once to every connection subscribed to one.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sockeye::{Hub, Message, ServerConfig, WebSocketServer};
//!
//! let hub = Hub::default();
//! let server = WebSocketServer::bind("127.0.0.1:9001", ServerConfig::default()).await?;
//! while let Some(Ok((mut ws, _request))) = server.accept().await {
//!     hub.subscribe(&ws, "news")?;
//!     // Someone must read each connection: reading writes what the hub queued and
//!     // ends the subscription when the connection ends.
//!     tokio::spawn(async move { while ws.recv().await.is_some() {} });
//!     let report = hub.publish("news", Message::text("one more reader"))?;
//!     println!("{} delivered, {} dropped", report.delivered, report.dropped);
//! }
//! # Ok(()) }
//! ```
//!
//! # What a publish costs
//! A message is encoded once: one [`PreparedFrame`] (header, and the payload as shared
//! [`Bytes`]) for the subscribers that take it uncompressed, and one per group of
//! subscribers whose permessage-deflate compresses every message the same way (a server
//! without context takeover, same window and level: [`SharedDeflate`]). Each such
//! subscriber is handed a reference to the frame; when nothing is queued on its
//! connection, the frame is written to its socket at once with one vectored write, and
//! nothing is allocated or copied for it. Subscribers whose compressor keeps context
//! between messages, and client connections (which mask every frame), encode the message
//! themselves.
//!
//! `publish` never waits: it is a plain function, callable from any task or thread. A
//! subscriber that does not keep up gets the message queued, up to its byte budget
//! ([`HubConfig::max_buffered`]); past it, [`HubConfig::over_budget`] drops the message
//! for that subscriber or closes its connection (1008 or 1013). The budget counts every
//! byte queued on the connection, but applies only to published messages: control frames
//! (pongs, the close frame) are never dropped. The [`PublishReport`] counts what happened.
//!
//! # Subscriptions end with the connection
//! A connection's subscriptions are forgotten when it ends: when its stream returns its
//! last item, its transport fails, or it is terminated; and when every handle of it has
//! been dropped (found at the next publish, and counted `closed` there).
//!
//! # Needs a reader
//! What the transport did not take at once is written by the task that reads the
//! connection (as for [`WebSocketWriter::try_send`]), which the hub wakes. A connection
//! that nobody reads keeps it queued, up to the budget.
//!
//! # Limits
//! Topic names are 1 to [`HubConfig::max_topic_len`] bytes, and one connection holds at
//! most [`HubConfig::max_subscriptions`]; past either, [`HubError`] says which.
//!
//! # Order
//! Messages one task (or thread) publishes reach each subscriber in the order published,
//! each exactly once. Publishers in parallel are not ordered with each other.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use sockeye_proto::{CloseCode, DataKind, Message, PreparedFrame, SharedDeflate};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::websocket::{EndHook, WebSocketWriter};

/// The hub's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubConfig {
    /// A subscriber's byte budget: a published message that would bring the bytes queued
    /// on its connection (framing included, everything counted) past this is not queued;
    /// [`HubConfig::over_budget`] says what happens instead. A connection with nothing
    /// queued takes a message of any size. Default 1 MiB.
    pub max_buffered: usize,
    /// What happens to a subscriber over its budget. Default [`OverBudget::Drop`].
    pub over_budget: OverBudget,
    /// The longest topic name, in bytes. Default 256.
    pub max_topic_len: usize,
    /// The most topics one connection may be subscribed to. Default 256.
    pub max_subscriptions: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_buffered: 1024 * 1024,
            over_budget: OverBudget::Drop,
            max_topic_len: 256,
            max_subscriptions: 256,
        }
    }
}

/// What happens to a subscriber that a published message would take over its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// This message is not sent to it (counted in [`PublishReport::dropped`]); later
    /// ones are, once its queue has drained.
    Drop,
    /// Its connection is closed with 1008 (policy violation), after what is queued
    /// (counted in [`PublishReport::cut_off`]).
    ClosePolicyViolation,
    /// Its connection is closed with 1013 (try again later), after what is queued.
    CloseTryAgainLater,
}

impl OverBudget {
    pub(crate) fn close_code(self) -> Option<CloseCode> {
        match self {
            OverBudget::Drop => None,
            OverBudget::ClosePolicyViolation => Some(CloseCode::POLICY_VIOLATION),
            OverBudget::CloseTryAgainLater => Some(CloseCode::TRY_AGAIN_LATER),
        }
    }
}

/// What one [`Hub::publish`] did, one count per subscriber of the topic at the time:
/// the four add up to the subscribers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Queued on the connection (and, where the transport took it at once, written).
    pub delivered: usize,
    /// Not sent: over the budget under [`OverBudget::Drop`], or the connection was in the
    /// middle of a fragmented message of its own (RFC 6455 §5.4: messages do not
    /// interleave).
    pub dropped: usize,
    /// Not sent, and the connection closed for being over its budget.
    pub cut_off: usize,
    /// Not sent: the connection was closing or closed already (its subscriptions are
    /// forgotten once it has ended).
    pub closed: usize,
}

impl PublishReport {
    /// The subscribers the message was published to.
    pub fn subscribers(&self) -> usize {
        self.delivered + self.dropped + self.cut_off + self.closed
    }
}

/// Why the hub refused a call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubError {
    /// An empty topic name.
    EmptyTopic,
    /// A topic name longer than [`HubConfig::max_topic_len`].
    TopicTooLong {
        /// The name's length, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection holds [`HubConfig::max_subscriptions`] already.
    TooManySubscriptions {
        /// The limit.
        max: usize,
    },
    /// A message that is not text or binary (only data messages are published).
    NotDataMessage,
    /// The connection has ended.
    Closed,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::EmptyTopic => f.write_str("the topic name is empty"),
            HubError::TopicTooLong { len, max } => {
                write!(f, "the topic name is {len} bytes, over the limit of {max}")
            }
            HubError::TooManySubscriptions { max } => {
                write!(f, "the connection is subscribed to {max} topics, the limit")
            }
            HubError::NotDataMessage => f.write_str("only text and binary messages are published"),
            HubError::Closed => f.write_str("the connection has ended"),
        }
    }
}

impl std::error::Error for HubError {}

/// Topics and their subscribers: publish a message once to every connection subscribed
/// to a topic. Cloning gives another handle to the same hub; it is `Send + Sync`, for
/// use from any task or thread. See the [module docs](self).
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    config: HubConfig,
    state: Mutex<State>,
    /// Ids of connections that ended, to forget at the next call. A connection's end
    /// hook pushes here while it holds that connection's lock, so the hub takes this
    /// lock only alone, never while it holds `state` or a connection's lock: no lock
    /// order between them can deadlock.
    ended: Mutex<Vec<u64>>,
}

#[derive(Default)]
struct State {
    topics: HashMap<Arc<str>, Topic>,
    conns: HashMap<u64, Conn>,
}

/// A topic's subscribers. The list is shared with the publishes under way (a snapshot
/// costs one reference count); a change while one is under way copies it.
#[derive(Default)]
struct Topic {
    subscribers: Arc<Vec<Entry>>,
    /// Where each connection is in `subscribers`.
    positions: HashMap<u64, usize>,
}

#[derive(Clone)]
struct Entry {
    id: u64,
    target: Arc<dyn Subscriber>,
}

/// A subscribed connection.
struct Conn {
    target: Arc<dyn Subscriber>,
    topics: Vec<Arc<str>>,
}

/// A connection as the hub sees it, whatever its transport.
pub(crate) trait Subscriber: Send + Sync {
    /// Queues (and writes what it can of) a published message.
    fn deliver(
        &self,
        publication: &Publication,
        frames: &mut Frames,
        config: &HubConfig,
    ) -> Outcome;
    /// See `Shared::on_end`; `false` if the connection has ended (or is gone).
    fn on_end(&self, hook: EndHook) -> bool;
}

/// What a subscriber did with a published message.
pub(crate) enum Outcome {
    Delivered,
    Dropped,
    CutOff,
    Closed,
    /// Every handle of the connection was dropped.
    Gone,
}

/// A message being published.
pub(crate) struct Publication {
    pub(crate) kind: DataKind,
    pub(crate) payload: Bytes,
}

impl Publication {
    /// A text or binary message's kind and payload.
    pub(crate) fn from_message(message: Message) -> Result<Publication, HubError> {
        match message {
            Message::Text(text) => Ok(Publication {
                kind: DataKind::Text,
                payload: text.into_bytes(),
            }),
            Message::Binary(payload) => Ok(Publication {
                kind: DataKind::Binary,
                payload,
            }),
            _ => Err(HubError::NotDataMessage),
        }
    }
}

/// The frames of one publication, each encoded the first time a subscriber needs it.
#[derive(Default)]
pub(crate) struct Frames {
    plain: Option<PreparedFrame>,
    /// One per group of subscribers with the same [`SharedDeflate`]; few in practice.
    deflated: Vec<PreparedFrame>,
}

impl Frames {
    /// The uncompressed frame (the payload referenced, not copied).
    pub(crate) fn plain(&mut self, publication: &Publication) -> &PreparedFrame {
        self.plain.get_or_insert_with(|| {
            PreparedFrame::new(publication.kind, publication.payload.clone())
        })
    }

    /// The frame compressed with `shared`, compressed once.
    pub(crate) fn deflated(
        &mut self,
        publication: &Publication,
        shared: SharedDeflate,
    ) -> &PreparedFrame {
        let at = match self
            .deflated
            .iter()
            .position(|f| f.deflate() == Some(shared))
        {
            Some(at) => at,
            None => {
                let frame = PreparedFrame::deflated(publication.kind, &publication.payload, shared);
                self.deflated.push(frame);
                self.deflated.len() - 1
            }
        };
        &self.deflated[at]
    }
}

impl Hub {
    /// A hub with these settings.
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                config,
                ..HubInner::default()
            }),
        }
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Subscribes a connection (a [`WebSocket`](crate::WebSocket) or its writer) to
    /// `topic`. Returns `false` if it was subscribed already.
    ///
    /// # Errors
    /// [`HubError::EmptyTopic`], [`HubError::TopicTooLong`],
    /// [`HubError::TooManySubscriptions`], and [`HubError::Closed`] for a connection that
    /// has ended.
    pub fn subscribe<S>(&self, ws: &WebSocketWriter<S>, topic: &str) -> Result<bool, HubError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.check_topic(topic)?;
        if !ws.is_open_or_closing() {
            return Err(HubError::Closed);
        }
        self.forget_ended();
        let id = ws.id();
        let new_conn = {
            let mut state = self.inner.state.lock();
            let max = self.inner.config.max_subscriptions;
            let new_conn = !state.conns.contains_key(&id);
            let conn = state.conns.entry(id).or_insert_with(|| Conn {
                target: Arc::new(ws.downgrade()),
                topics: Vec::new(),
            });
            if conn.topics.iter().any(|t| &**t == topic) {
                return Ok(false);
            }
            if conn.topics.len() >= max {
                return Err(HubError::TooManySubscriptions { max });
            }
            let target = conn.target.clone();
            let name = match state.topics.get_key_value(topic) {
                Some((name, _)) => name.clone(),
                None => Arc::from(topic),
            };
            if let Some(conn) = state.conns.get_mut(&id) {
                conn.topics.push(name.clone());
            }
            let hook_target = new_conn.then(|| target.clone());
            let topic = state.topics.entry(name).or_default();
            topic.positions.insert(id, topic.subscribers.len());
            Arc::make_mut(&mut topic.subscribers).push(Entry { id, target });
            hook_target
        };
        if let Some(target) = new_conn {
            // Outside the state lock: the hook registration locks the connection.
            let hub = Arc::downgrade(&self.inner);
            if !target.on_end(end_hook(hub, id)) {
                self.forget(&[id]);
                return Err(HubError::Closed);
            }
        }
        Ok(true)
    }

    /// Unsubscribes a connection from `topic`; returns whether it was subscribed.
    pub fn unsubscribe<S>(&self, ws: &WebSocketWriter<S>, topic: &str) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let id = ws.id();
        let mut state = self.inner.state.lock();
        let Some(conn) = state.conns.get_mut(&id) else {
            return false;
        };
        let Some(at) = conn.topics.iter().position(|t| &**t == topic) else {
            return false;
        };
        conn.topics.swap_remove(at);
        if conn.topics.is_empty() {
            // The end hook stays registered; it finds nothing to forget.
            state.conns.remove(&id);
        }
        state.remove_from_topic(topic, id);
        true
    }

    /// Unsubscribes a connection from every topic; returns from how many.
    pub fn unsubscribe_all<S>(&self, ws: &WebSocketWriter<S>) -> usize
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.inner.state.lock().forget(ws.id())
    }

    /// Publishes a text or binary message to every subscriber of `topic`, now: it is
    /// queued on each subscriber's connection under its budget, and written at once
    /// where the transport takes it without waiting. Never waits.
    ///
    /// # Errors
    /// [`HubError::EmptyTopic`], [`HubError::TopicTooLong`], and
    /// [`HubError::NotDataMessage`] for a ping, pong, close or fragment.
    pub fn publish(
        &self,
        topic: &str,
        message: impl Into<Message>,
    ) -> Result<PublishReport, HubError> {
        self.check_topic(topic)?;
        let publication = Publication::from_message(message.into())?;
        self.forget_ended();
        let subscribers = match self.inner.state.lock().topics.get(topic) {
            Some(topic) => topic.subscribers.clone(),
            None => return Ok(PublishReport::default()),
        };
        let mut report = PublishReport::default();
        let mut gone = Vec::new();
        let config = &self.inner.config;
        // Writing to many sockets from one task would run out of tokio's cooperative
        // budget after a few dozen, and leave the rest to their readers; this is one
        // bounded pass, not a loop that could starve other tasks.
        without_coop_budget(|| {
            let mut frames = Frames::default();
            for entry in subscribers.iter() {
                match entry.target.deliver(&publication, &mut frames, config) {
                    Outcome::Delivered => report.delivered += 1,
                    Outcome::Dropped => report.dropped += 1,
                    Outcome::CutOff => report.cut_off += 1,
                    Outcome::Closed => report.closed += 1,
                    Outcome::Gone => {
                        report.closed += 1;
                        gone.push(entry.id);
                    }
                }
            }
        });
        if !gone.is_empty() {
            self.forget(&gone);
        }
        Ok(report)
    }

    /// The number of connections subscribed to `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.forget_ended();
        self.inner
            .state
            .lock()
            .topics
            .get(topic)
            .map_or(0, |t| t.subscribers.len())
    }

    /// The number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.forget_ended();
        self.inner.state.lock().topics.len()
    }

    /// The topics a connection is subscribed to.
    pub fn topics_of<S>(&self, ws: &WebSocketWriter<S>) -> Vec<String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.forget_ended();
        let state = self.inner.state.lock();
        state.conns.get(&ws.id()).map_or_else(Vec::new, |conn| {
            conn.topics.iter().map(|t| t.to_string()).collect()
        })
    }

    /// Whether `topic` is a valid name under the hub's limits.
    pub(crate) fn check_topic(&self, topic: &str) -> Result<(), HubError> {
        let max = self.inner.config.max_topic_len;
        if topic.is_empty() {
            Err(HubError::EmptyTopic)
        } else if topic.len() > max {
            Err(HubError::TopicTooLong {
                len: topic.len(),
                max,
            })
        } else {
            Ok(())
        }
    }

    /// Forgets the connections whose end hooks ran since the last call.
    fn forget_ended(&self) {
        let ended = {
            let mut ended = self.inner.ended.lock();
            if ended.is_empty() {
                return;
            }
            std::mem::take(&mut *ended)
        };
        self.forget(&ended);
    }

    fn forget(&self, ids: &[u64]) {
        let mut state = self.inner.state.lock();
        for &id in ids {
            state.forget(id);
        }
    }
}

impl State {
    /// Removes a connection from all its topics; returns from how many.
    fn forget(&mut self, id: u64) -> usize {
        let Some(conn) = self.conns.remove(&id) else {
            return 0;
        };
        for topic in &conn.topics {
            self.remove_from_topic(topic, id);
        }
        conn.topics.len()
    }

    fn remove_from_topic(&mut self, name: &str, id: u64) {
        let Some(topic) = self.topics.get_mut(name) else {
            return;
        };
        let Some(at) = topic.positions.remove(&id) else {
            return;
        };
        let subscribers = Arc::make_mut(&mut topic.subscribers);
        subscribers.swap_remove(at);
        if let Some(moved) = subscribers.get(at) {
            topic.positions.insert(moved.id, at);
        }
        if subscribers.is_empty() {
            self.topics.remove(name);
        }
    }
}

/// The hook a connection runs when it ends: it records the id for the hub to forget.
fn end_hook(hub: Weak<HubInner>, id: u64) -> EndHook {
    Box::new(move || {
        if let Some(hub) = hub.upgrade() {
            hub.ended.lock().push(id);
        }
    })
}

/// Runs `f` outside tokio's cooperative budget (where there is one: in a task), so that
/// its non-waiting writes are not refused for the budget's sake.
fn without_coop_budget<T>(f: impl FnOnce() -> T) -> T {
    let mut f = Some(f);
    let once = std::future::poll_fn(move |_| Poll::Ready(f.take().map(|f| f())));
    let mut future = pin!(tokio::task::coop::unconstrained(once));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Some(value)) => value,
        // `poll_fn` above is ready at its first poll, which is this one.
        Poll::Ready(None) | Poll::Pending => unreachable!("polled once, ready at once"),
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Hub")
            .field("topics", &state.topics.len())
            .field("connections", &state.conns.len())
            .finish_non_exhaustive()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Hub>();
}

#[cfg(all(test, feature = "deflate"))]
mod tests {
    use bytes::Bytes;
    use sockeye_proto::{DataKind, Deflate, DeflateConfig, Role};

    use super::{Frames, Publication};

    /// The uncompressed frame references the published payload, and each group of
    /// shared deflate settings is compressed once, whatever its number of subscribers.
    #[test]
    fn one_encoding_per_group() {
        let config = DeflateConfig::default();
        let shared = |answer: &str| {
            let params = sockeye_proto::deflate::client_accept(&config, [answer])
                .unwrap()
                .unwrap();
            Deflate::new(Role::Server, params, &config)
                .shared()
                .unwrap()
        };
        let wide = shared("permessage-deflate; server_no_context_takeover");
        let narrow =
            shared("permessage-deflate; server_no_context_takeover; server_max_window_bits=9");
        let publication = Publication {
            kind: DataKind::Text,
            payload: Bytes::from("compress me once, please. ".repeat(100)),
        };
        let mut frames = Frames::default();
        let plain = frames.plain(&publication).payload().as_ptr();
        assert_eq!(
            plain,
            publication.payload.as_ptr(),
            "referenced, not copied"
        );
        assert_eq!(frames.plain(&publication).payload().as_ptr(), plain);
        let first = frames.deflated(&publication, wide).payload().as_ptr();
        for _ in 0..10 {
            let again = frames.deflated(&publication, wide).payload().as_ptr();
            assert_eq!(again, first);
        }
        let other = frames.deflated(&publication, narrow).payload().as_ptr();
        assert_ne!(other, first);
        assert_eq!(frames.deflated.len(), 2, "two groups, two compressions");
    }
}
