//! Per-connection settings and limits, with `ws`'s defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// `ws`'s default `maxPayload`: 100 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 100 * 1024 * 1024;

/// `ws`'s default `closeTimeout`: 30 s.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Automatic pings that detect a dead peer (the heartbeat `ws` users copy from its README,
/// built in): after `interval` with nothing received, a ping is sent; if nothing at all
/// arrives within `timeout` after it, the connection is dropped without a close
/// handshake (a dead peer cannot answer one) and reported as timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Quiet time before a ping is sent.
    pub interval: Duration,
    /// How long to wait for any frame after the ping.
    pub timeout: Duration,
}

impl Heartbeat {
    /// Pings after `interval` of silence; gives up `timeout` after the ping.
    pub fn new(interval: Duration, timeout: Duration) -> Heartbeat {
        Heartbeat { interval, timeout }
    }
}

/// What a data send does when the send queue is at or over its high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for room: `try_send` refuses with `QueueFull`; the async sends hold the
    /// message in their future and queue it once the queue is below the mark.
    Wait,
    /// Drop the message and count it.
    Drop,
    /// Fail the slow peer: send close 1008 and stop sending.
    Close,
}

/// The bounded send queue: bytes queued for the transport, framing included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendQueue {
    /// Above this, sends wait (or drop, or close: `when_full`) and the connection stops
    /// reading, so a peer that does not read cannot make it buffer more. Default 1 MiB.
    pub high_water: usize,
    /// `drained()` resolves once the queue is at or below this. Default 64 KiB.
    pub low_water: usize,
    /// What data sends do at or over the high-water mark. Default `Wait`.
    pub when_full: WhenFull,
}

impl Default for SendQueue {
    fn default() -> Self {
        SendQueue {
            high_water: 1024 * 1024,
            low_water: 64 * 1024,
            when_full: WhenFull::Wait,
        }
    }
}

/// A function that returns a masking key per call (`ws`'s `generateMask`), for
/// [`MaskSource::Custom`].
pub type MaskGenerator = Arc<dyn Fn() -> [u8; 4] + Send + Sync>;

/// Where a client's masking keys come from: RFC 6455 §5.3 asks for a fresh key per frame
/// that the peer, and anyone on the path, cannot predict (§10.3: masking keeps a hostile
/// page's bytes from reaching a proxy as it chose them). Servers send no masked frames
/// and draw no keys.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum MaskSource {
    /// A cryptographically secure generator of each connection's own: `rand`'s `StdRng`
    /// (ChaCha12), seeded from the operating system (`OsRng`) when the connection masks
    /// its first frame. The generator makes 64 keys per ChaCha block, so a key costs an
    /// index into that block, and the seeding one system call per client connection.
    #[default]
    Random,
    /// The caller's function, called once per frame (`ws`'s `generateMask`): known keys
    /// for tests and benchmarks, or a generator of the caller's choice. Keys an
    /// attacker can predict defeat what masking protects against (§10.3).
    Custom(MaskGenerator),
}

impl MaskSource {
    /// A [`MaskSource::Custom`] source from a function.
    pub fn custom(generate: impl Fn() -> [u8; 4] + Send + Sync + 'static) -> MaskSource {
        MaskSource::Custom(Arc::new(generate))
    }
}

impl fmt::Debug for MaskSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskSource::Random => f.write_str("Random"),
            MaskSource::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Settings of one connection.
#[derive(Clone)]
pub struct Config {
    /// The largest message accepted, in bytes, counted over all its fragments (`ws`'s
    /// `maxPayload`). 0 means no limit. Default 100 MiB. A bigger message fails the
    /// connection with 1009 as soon as a frame header announces it, before its payload is
    /// buffered.
    pub max_payload: usize,
    /// The most fragments one message may have; 0 (the default) means no limit. Memory is
    /// bounded by `max_payload` whatever the count (empty fragments cost nothing), so the
    /// default accepts Autobahn 9.3/9.4; a limit fails the connection with 1008 and
    /// `WS_ERR_TOO_MANY_BUFFERED_PARTS` (`ws`'s `maxFragments`).
    pub max_fragments: usize,
    /// Do not check that text messages and close reasons are UTF-8 (`ws`'s
    /// `skipUTF8Validation`). Text then arrives as [`crate::Message::UncheckedText`].
    pub skip_utf8_validation: bool,
    /// Answer pings with pongs automatically (`ws`'s `autoPong`, default on).
    pub auto_pong: bool,
    /// How long to wait for the peer's close frame (or, on a client, for the server to
    /// close TCP) after sending a close frame (`ws`'s `closeTimeout`, default 30 s); and
    /// how long a connection that is to be closed (close handshake done, protocol error,
    /// end of stream) may take to write what is left, so that a peer that does not read
    /// cannot hold it open. When it passes the transport is closed at once, without what
    /// is still queued, as `ws` destroys the socket.
    pub close_timeout: Duration,
    /// Where a client's masking keys come from (`ws`'s `generateMask`). The default,
    /// [`MaskSource::Random`], draws a fresh key for every frame from a cryptographically
    /// secure generator of the connection's own.
    pub generate_mask: MaskSource,
    /// Automatic pings and a dead-peer timeout; `None` (the default) sends none.
    /// `config.heartbeat = Some(Heartbeat::new(Duration::from_secs(30), Duration::from_secs(10)))`.
    pub heartbeat: Option<Heartbeat>,
    /// The bounded send queue and its policy.
    pub send_queue: SendQueue,
    /// Deliver data frame by frame as [`crate::Message::Fragment`] instead of whole
    /// messages (`ws`'s `binaryType: 'fragments'`; default off). UTF-8, `max_payload`
    /// and inflation still apply to the whole message.
    pub deliver_fragments: bool,
    /// With `deliver_fragments`, also hand out an uncompressed data frame in pieces as
    /// its bytes arrive (each at least 4 KiB, the reads at most 256 KiB), as if the peer
    /// had fragmented it: a relay or an upload handler then holds no whole frame, and
    /// forwards a large message while it is still arriving (default off). Each piece
    /// carries its frame's FIN and the bytes still to come ([`crate::Fragment::rest`]);
    /// sent back as they are, the pieces go out as one frame.
    pub stream_frames: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_fragments: 0,
            skip_utf8_validation: false,
            auto_pong: true,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            generate_mask: MaskSource::Random,
            heartbeat: None,
            send_queue: SendQueue::default(),
            deliver_fragments: false,
            stream_frames: false,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_payload", &self.max_payload)
            .field("max_fragments", &self.max_fragments)
            .field("skip_utf8_validation", &self.skip_utf8_validation)
            .field("auto_pong", &self.auto_pong)
            .field("deliver_fragments", &self.deliver_fragments)
            .field("stream_frames", &self.stream_frames)
            .field("close_timeout", &self.close_timeout)
            .field("generate_mask", &self.generate_mask)
            .finish()
    }
}
