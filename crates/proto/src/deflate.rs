//! permessage-deflate (RFC 7692): negotiation in both roles and the per-connection codec.
//!
//! Negotiation follows `ws`'s rules: a client offers what its [`DeflateConfig`] asks for
//! (by default `permessage-deflate; client_max_window_bits`); a server accepts the first
//! offer its configuration can honour and declines the rest; a malformed offer or answer
//! (unknown or repeated parameter, bad value) fails the handshake.
//!
//! Memory: a compressor or decompressor exists only while a message is being processed,
//! unless context takeover keeps it for the next message. With `no_context_takeover` in
//! force for a direction, that direction holds no zlib state between messages: the
//! stream goes back, reset, to a small per-thread pool that the next message of any
//! connection on the thread takes it from (`pool` below). See the crate's manual for the
//! figures.
//!
//! # Without the `deflate` feature
//! The types and functions stay, so code that configures compression compiles either
//! way, but nothing is negotiated: a client offers nothing, [`server_accept`] declines
//! every offer, and [`client_accept`] refuses an answer that accepts one (it was not
//! offered). [`DeflateParams`] and [`Deflate`] then have no values, so a connection
//! never compresses and an RSV1 frame is a protocol error (RFC 7692 §6), as on any
//! connection that did not negotiate the extension.

#[cfg(feature = "deflate")]
use std::cell::RefCell;

use bytes::BytesMut;
#[cfg(feature = "deflate")]
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::connection::Role;
use crate::error::{Error, HandshakeError};
#[cfg(feature = "deflate")]
use crate::error::{InflateError, LimitError};
use crate::extension::{self, Extension};

/// The extension's name.
pub const NAME: &str = "permessage-deflate";

/// The proof that the codec is compiled in, held by every [`DeflateParams`]: without the
/// `deflate` feature it has no values, and so neither have `DeflateParams` nor [`Deflate`].
#[cfg(feature = "deflate")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Compiled;

/// Without the `deflate` feature: no values.
#[cfg(not(feature = "deflate"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Compiled {}

/// `Some` when the codec is compiled in: the only way to make [`DeflateParams`].
fn compiled() -> Option<Compiled> {
    #[cfg(feature = "deflate")]
    return Some(Compiled);
    #[cfg(not(feature = "deflate"))]
    return None;
}

/// Whether permessage-deflate is compiled in (the `deflate` feature): without it, a client
/// offers nothing.
pub(crate) fn enabled() -> bool {
    compiled().is_some()
}

/// The 4 bytes a sync flush ends with, removed from each message (RFC 7692 §7.2.1).
#[cfg(feature = "deflate")]
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output grows by this much at a time while inflating, so a small frame cannot make the
/// endpoint allocate more than it checked against `max_payload`.
#[cfg(feature = "deflate")]
const INFLATE_CHUNK: usize = 16 * 1024;

/// The permessage-deflate settings of one endpoint (`ws`'s `perMessageDeflate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Server: never keep compression context between messages (and say so). Client:
    /// ask the server not to.
    pub server_no_context_takeover: bool,
    /// Server: tell the client not to keep context. Client: promise not to.
    pub client_no_context_takeover: bool,
    /// Server: the largest window it compresses with (9-15; 8 is answered as 9, which
    /// zlib can honour). Client: ask the server to use at most this.
    pub server_max_window_bits: Option<u8>,
    /// Server: limit the client's window to this (8-15). Client: offer this as its limit
    /// (`None` offers `client_max_window_bits` with no value: "any value you choose").
    pub client_max_window_bits: Option<u8>,
    /// Messages shorter than this are sent uncompressed (default 1024 bytes, as `ws`).
    /// A fragmented message decides by its first fragment.
    pub threshold: usize,
    /// The zlib level, 0-9 (default 6, zlib's default).
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
            threshold: 1024,
            level: 6,
        }
    }
}

/// What both ends agreed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server does not keep compression context between messages.
    pub server_no_context_takeover: bool,
    /// The client does not keep compression context between messages.
    pub client_no_context_takeover: bool,
    /// The server's compression window, in bits (15 unless agreed lower).
    pub server_max_window_bits: u8,
    /// The client's compression window, in bits.
    pub client_max_window_bits: u8,
    /// Whether the answer named `server_max_window_bits` (for formatting it back).
    server_bits_named: bool,
    /// Whether the answer named `client_max_window_bits`.
    client_bits_named: bool,
    /// Only negotiation makes these, and only with the codec compiled in.
    compiled: Compiled,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value that states these parameters.
    pub fn header_value(&self) -> String {
        let mut params = Vec::new();
        if self.server_no_context_takeover {
            params.push(("server_no_context_takeover".to_owned(), None));
        }
        if self.client_no_context_takeover {
            params.push(("client_no_context_takeover".to_owned(), None));
        }
        if self.server_bits_named {
            params.push((
                "server_max_window_bits".to_owned(),
                Some(self.server_max_window_bits.to_string()),
            ));
        }
        if self.client_bits_named {
            params.push((
                "client_max_window_bits".to_owned(),
                Some(self.client_max_window_bits.to_string()),
            ));
        }
        extension::format(&Extension {
            name: NAME.to_owned(),
            params,
        })
    }
}

/// How a server's codec compresses every message when it keeps no context between
/// messages (`server_no_context_takeover`, RFC 7692 §7.1.1.1): a fresh deflate stream
/// with this window and level. Connections with equal `SharedDeflate` compress a message
/// to the same bytes, and each of their peers inflates those bytes alone, so one
/// compressed frame ([`crate::PreparedFrame::deflated`]) serves them all: a pub/sub hub
/// compresses a message once per such group instead of once per connection.
///
/// Only [`Deflate::shared`] makes one (there are none without the `deflate` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SharedDeflate {
    /// The window, in bits (9-15: what the server's codec uses for the agreed
    /// `server_max_window_bits`).
    window_bits: u8,
    /// The zlib level, 0-9.
    level: u32,
    compiled: Compiled,
}

impl SharedDeflate {
    /// The compression window, in bits.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// The zlib level.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Compresses a whole message as a fresh deflate stream with the sync-flush tail
    /// removed (RFC 7692 §7.2.1): the payload of its frame, RSV1 set.
    pub fn compress(&self, input: &[u8]) -> Vec<u8> {
        #[cfg(feature = "deflate")]
        {
            let mut compressor = pool::take_compressor(self.window_bits, self.level);
            let mut out = Vec::new();
            compress_sync(&mut compressor, input, &mut out);
            finish_message(&mut out);
            pool::give_compressor(self.window_bits, self.level, compressor);
            out
        }
        #[cfg(not(feature = "deflate"))]
        {
            let _ = input;
            match self.compiled {}
        }
    }
}

/// Parameters of one offer or answer, checked for form (RFC 7692 §7.1).
#[derive(Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (only valid in a client's offer).
    client_max_window_bits: Option<Option<u8>>,
}

fn parse_params(ext: &Extension) -> Result<Params, HandshakeError> {
    let invalid = || HandshakeError::InvalidHeader("Sec-WebSocket-Extensions");
    let bits = |v: &Option<String>| -> Result<u8, HandshakeError> {
        let v = v.as_deref().ok_or_else(invalid)?;
        match v.parse::<u8>() {
            Ok(b @ 8..=15) if !v.starts_with('0') => Ok(b),
            _ => Err(invalid()),
        }
    };
    let mut p = Params::default();
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &ext.params {
        if seen.contains(&key.as_str()) {
            return Err(invalid());
        }
        seen.push(key);
        match key.as_str() {
            "server_no_context_takeover" if value.is_none() => p.server_no_context_takeover = true,
            "client_no_context_takeover" if value.is_none() => p.client_no_context_takeover = true,
            "server_max_window_bits" => p.server_max_window_bits = Some(bits(value)?),
            "client_max_window_bits" if value.is_none() => p.client_max_window_bits = Some(None),
            "client_max_window_bits" => p.client_max_window_bits = Some(Some(bits(value)?)),
            _ => return Err(invalid()),
        }
    }
    Ok(p)
}

/// The client's offer for `config` (a `Sec-WebSocket-Extensions` value).
///
/// Without the `deflate` feature this still formats the offer, but
/// [`crate::handshake::client::ClientRequest`] does not send it.
pub fn client_offer(config: &DeflateConfig) -> String {
    let mut params = Vec::new();
    if config.server_no_context_takeover {
        params.push(("server_no_context_takeover".to_owned(), None));
    }
    if config.client_no_context_takeover {
        params.push(("client_no_context_takeover".to_owned(), None));
    }
    if let Some(bits) = config.server_max_window_bits {
        params.push(("server_max_window_bits".to_owned(), Some(bits.to_string())));
    }
    params.push((
        "client_max_window_bits".to_owned(),
        config.client_max_window_bits.map(|b| b.to_string()),
    ));
    extension::format(&Extension {
        name: NAME.to_owned(),
        params,
    })
}

/// A client checks the server's answer (all `Sec-WebSocket-Extensions` values of the 101
/// response): `Ok(None)` when the server declined compression.
///
/// # Errors
/// [`HandshakeError::InvalidExtension`] for an extension that was not offered, more than
/// one answer, or parameters the offer did not allow; `InvalidHeader` for bad syntax.
/// Without the `deflate` feature nothing was offered, so any answer is `InvalidExtension`.
pub fn client_accept<'a>(
    config: &DeflateConfig,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<DeflateParams>, HandshakeError> {
    let answers = extension::parse(values)?;
    let Some(answer) = answers.first() else {
        return Ok(None);
    };
    let Some(compiled) = compiled() else {
        return Err(HandshakeError::InvalidExtension);
    };
    if answers.len() > 1 || answer.name != NAME {
        return Err(HandshakeError::InvalidExtension);
    }
    let p = parse_params(answer)?;
    let bad = Err(HandshakeError::InvalidExtension);
    // The server may only lower the window the client asked for.
    if let (Some(asked), Some(got)) = (config.server_max_window_bits, p.server_max_window_bits) {
        if got > asked {
            return bad;
        }
    }
    let client_bits = match p.client_max_window_bits {
        Some(None) => return bad, // a value is required in an answer
        Some(Some(bits))
            if config
                .client_max_window_bits
                .is_some_and(|limit| bits > limit) =>
        {
            return bad
        }
        // zlib cannot compress with a 256-byte window: fail rather than break the peer.
        Some(Some(8)) => return bad,
        Some(Some(bits)) => bits,
        None => config.client_max_window_bits.unwrap_or(15).max(9),
    };
    Ok(Some(DeflateParams {
        server_no_context_takeover: p.server_no_context_takeover,
        client_no_context_takeover: p.client_no_context_takeover
            || config.client_no_context_takeover,
        server_max_window_bits: p.server_max_window_bits.unwrap_or(15),
        client_max_window_bits: client_bits,
        server_bits_named: p.server_max_window_bits.is_some(),
        client_bits_named: p.client_max_window_bits.is_some(),
        compiled,
    }))
}

/// A server picks the first acceptable offer among the request's
/// `Sec-WebSocket-Extensions` values; `Ok(None)` declines compression (no acceptable
/// offer, or none at all). Without the `deflate` feature it declines every request
/// without reading it.
///
/// # Errors
/// `InvalidHeader` for a malformed list or a permessage-deflate offer with an unknown,
/// repeated or invalid parameter (answered 400, as `ws`).
pub fn server_accept<'a>(
    config: &DeflateConfig,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<DeflateParams>, HandshakeError> {
    let Some(compiled) = compiled() else {
        return Ok(None);
    };
    let offers = extension::parse(values)?;
    let mut parsed = Vec::new();
    for offer in offers.iter().filter(|e| e.name == NAME) {
        parsed.push(parse_params(offer)?);
    }
    let our_bits = config.server_max_window_bits.map(|b| b.clamp(9, 15));
    for offer in parsed {
        // The client limits our window: we need at least 9 bits, and no more than our own
        // limit when one is configured... an offered limit below ours is fine (we go lower).
        let server_bits = match (offer.server_max_window_bits, our_bits) {
            (Some(8), _) => continue,
            (Some(asked), Some(ours)) => Some(asked.min(ours)),
            (Some(asked), None) => Some(asked),
            (None, ours) => ours,
        };
        // Limiting the client's window needs its consent (client_max_window_bits offered).
        let client_bits = match (offer.client_max_window_bits, config.client_max_window_bits) {
            (None, Some(_)) => continue,
            (None, None) => None,
            (Some(offered), Some(ours)) => Some(offered.map_or(ours, |o| o.min(ours))),
            (Some(offered), None) => offered,
        };
        return Ok(Some(DeflateParams {
            server_no_context_takeover: offer.server_no_context_takeover
                || config.server_no_context_takeover,
            client_no_context_takeover: offer.client_no_context_takeover
                || config.client_no_context_takeover,
            server_max_window_bits: server_bits.unwrap_or(15),
            client_max_window_bits: client_bits.unwrap_or(15),
            server_bits_named: server_bits.is_some(),
            client_bits_named: client_bits.is_some(),
            compiled,
        }));
    }
    Ok(None)
}

/// The per-connection codec: compresses what this end sends and inflates what it
/// receives, with the agreed windows and context rules.
#[cfg(feature = "deflate")]
pub struct Deflate {
    role: Role,
    params: DeflateParams,
    threshold: usize,
    level: u32,
    compressor: Option<Compress>,
    decompressor: Option<Decompress>,
    /// The message being inflated already ended its deflate stream (BFINAL).
    stream_ended: bool,
    /// Compressed bytes of the frame being built.
    scratch: Vec<u8>,
}

#[cfg(feature = "deflate")]
impl Deflate {
    /// A codec for `role` with the agreed `params` and the local `config`'s threshold and
    /// level.
    pub fn new(role: Role, params: DeflateParams, config: &DeflateConfig) -> Deflate {
        Deflate {
            role,
            params,
            threshold: config.threshold,
            level: config.level.min(9),
            compressor: None,
            decompressor: None,
            stream_ended: false,
            scratch: Vec::new(),
        }
    }

    /// The agreed parameters.
    pub fn params(&self) -> &DeflateParams {
        &self.params
    }

    /// Whether a message whose first piece is `len` bytes is worth compressing.
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.threshold
    }

    fn own_window_and_reset(&self) -> (u8, bool) {
        match self.role {
            Role::Server => (
                self.params.server_max_window_bits,
                self.params.server_no_context_takeover,
            ),
            Role::Client => (
                self.params.client_max_window_bits,
                self.params.client_no_context_takeover,
            ),
        }
    }

    /// The window the peer compresses with (raw inflate needs at least 9 bits; a larger
    /// window than the peer's always works).
    fn peer_window(&self) -> u8 {
        let bits = match self.role {
            Role::Server => self.params.client_max_window_bits,
            Role::Client => self.params.server_max_window_bits,
        };
        bits.clamp(9, 15)
    }

    fn peer_resets(&self) -> bool {
        match self.role {
            Role::Server => self.params.client_no_context_takeover,
            Role::Client => self.params.server_no_context_takeover,
        }
    }

    /// Compresses one piece of a message; the result is in the returned slice (valid until
    /// the next call or [`Deflate::shrink`]). The last piece (`fin`) has the sync-flush
    /// tail removed (RFC 7692 §7.2.1).
    pub fn compress(&mut self, input: &[u8], fin: bool) -> &[u8] {
        let (bits, reset) = self.own_window_and_reset();
        let bits = bits.clamp(9, 15);
        let level = self.level;
        let compressor = self
            .compressor
            .get_or_insert_with(|| pool::take_compressor(bits, level));
        self.scratch.clear();
        compress_sync(compressor, input, &mut self.scratch);
        if fin {
            finish_message(&mut self.scratch);
            if reset {
                // No context takeover: hold no compressor between messages.
                if let Some(compressor) = self.compressor.take() {
                    pool::give_compressor(bits, level, compressor);
                }
            }
        }
        &self.scratch
    }

    /// The settings this codec compresses every message with, when it is a server's
    /// that keeps no context between messages; `None` otherwise (a client masks each
    /// frame, and context takeover makes each connection's output its own).
    pub fn shared(&self) -> Option<SharedDeflate> {
        let (bits, reset) = self.own_window_and_reset();
        (self.role == Role::Server && reset).then_some(SharedDeflate {
            window_bits: bits.clamp(9, 15),
            level: self.level,
            compiled: Compiled,
        })
    }

    /// Inflates one frame's payload of a compressed message into `out`, then, at the end
    /// of the message (`fin`), the removed tail. Fails with `MessageTooLarge` as soon as
    /// `out` would pass `limit` bytes (0: no limit), before allocating beyond it.
    ///
    /// # Errors
    /// [`LimitError::MessageTooLarge`] and [`InflateError`] for corrupt data.
    pub fn decompress(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        limit: usize,
        fin: bool,
    ) -> Result<(), Error> {
        let bits = self.peer_window();
        let decompressor = self
            .decompressor
            .get_or_insert_with(|| pool::take_decompressor(bits));
        // After a block with BFINAL set, the rest of the message is padding (RFC 7692
        // §7.2.3.4: the sender may end with BFINAL and append 0x00).
        if !self.stream_ended {
            self.stream_ended = inflate_into(decompressor, input, out, limit)?;
        }
        if fin {
            if !self.stream_ended {
                self.stream_ended = inflate_into(decompressor, &TAIL, out, limit)?;
            }
            // A finished deflate stream cannot continue: the next message starts afresh.
            if self.peer_resets() || self.stream_ended {
                if let Some(decompressor) = self.decompressor.take() {
                    pool::give_decompressor(bits, decompressor);
                }
            }
            self.stream_ended = false;
        }
        Ok(())
    }

    /// Frees the compression buffers' memory between messages.
    pub fn shrink(&mut self) {
        self.scratch = Vec::new();
    }

    /// Bytes of zlib state currently held, roughly (for tests and figures).
    pub fn holds_state(&self) -> (bool, bool) {
        (self.compressor.is_some(), self.decompressor.is_some())
    }
}

/// Idle zlib streams of this thread, reset, for the next message of any connection
/// whose direction has no context takeover.
///
/// Such a message starts a fresh stream anyway, so the state need not stay with the
/// connection, nor be allocated anew: a compressor is about 300 KB (zlib's hash tables
/// and window), which costs a fresh allocation, and clearing, per message otherwise, and
/// with glibc's malloc left holes that other allocations split (`sockeye_proto::manual`).
/// At most [`POOL_MAX`] streams of each kind wait here per thread; a stream given back
/// to a full pool is freed. A reset stream keeps nothing of the message it compressed or
/// inflated: its output for the next message is that of a new stream.
#[cfg(feature = "deflate")]
pub(crate) mod pool {
    use super::*;

    /// Idle streams kept per kind and thread.
    pub(crate) const POOL_MAX: usize = 2;

    #[derive(Default)]
    struct Pool {
        /// With their window bits and level.
        compressors: Vec<(u8, u32, Compress)>,
        /// Raw 15-bit decompressors only: flate2 resets other windows by building a new
        /// state, which leaves nothing to save.
        decompressors: Vec<Decompress>,
    }

    thread_local! {
        static POOL: RefCell<Pool> = RefCell::default();
    }

    /// A compressor for a fresh stream with `bits` and `level`, from the pool if one waits.
    pub(crate) fn take_compressor(bits: u8, level: u32) -> Compress {
        let pooled = POOL
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let at = pool
                    .compressors
                    .iter()
                    .position(|(b, l, _)| (*b, *l) == (bits, level))?;
                Some(pool.compressors.swap_remove(at).2)
            })
            .ok()
            .flatten();
        pooled
            .unwrap_or_else(|| Compress::new_with_window_bits(Compression::new(level), false, bits))
    }

    /// Resets `compressor` (made with `bits` and `level`) and keeps it for the next
    /// message, unless the pool is full.
    pub(crate) fn give_compressor(bits: u8, level: u32, mut compressor: Compress) {
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.compressors.len() < POOL_MAX {
                compressor.reset();
                pool.compressors.push((bits, level, compressor));
            }
        });
    }

    /// A decompressor for a fresh raw stream with a `bits` window.
    pub(crate) fn take_decompressor(bits: u8) -> Decompress {
        let pooled = if bits == 15 {
            POOL.try_with(|pool| pool.borrow_mut().decompressors.pop())
                .ok()
                .flatten()
        } else {
            None
        };
        pooled.unwrap_or_else(|| Decompress::new_with_window_bits(false, bits))
    }

    /// Resets `decompressor` (made with a `bits` window) and keeps it for the next
    /// message, unless the pool is full or the window is not 15 bits.
    pub(crate) fn give_decompressor(bits: u8, mut decompressor: Decompress) {
        if bits != 15 {
            return;
        }
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.decompressors.len() < POOL_MAX {
                decompressor.reset(false);
                pool.decompressors.push(decompressor);
            }
        });
    }

    /// Streams waiting in this thread's pool: (compressors, decompressors).
    #[cfg(test)]
    pub(crate) fn idle() -> (usize, usize) {
        POOL.with(|pool| {
            let pool = pool.borrow();
            (pool.compressors.len(), pool.decompressors.len())
        })
    }
}

/// Compresses `input` into `out` (appended) and sync-flushes it.
#[cfg(feature = "deflate")]
fn compress_sync(compressor: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let mut rest = input;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(rest.len() / 2 + 64);
        }
        let before = compressor.total_in();
        compressor
            .compress_vec(rest, out, FlushCompress::Sync)
            .expect("deflate never fails on valid state");
        rest = &rest[(compressor.total_in() - before) as usize..];
        // Done when all input is in and the flush completed (space left over).
        if rest.is_empty() && out.capacity() > out.len() {
            break;
        }
    }
}

/// Ends a message's compressed bytes: the sync-flush tail removed (RFC 7692 §7.2.1), or,
/// when nothing was flushed since the previous piece (an empty last piece), an empty
/// stored block's header, which the receiver's appended tail completes (§7.2.3.6).
#[cfg(feature = "deflate")]
fn finish_message(out: &mut Vec<u8>) {
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    } else if out.is_empty() {
        out.push(0x00);
    }
}

/// Inflates `input` into `out`; `Ok(true)` when the deflate stream ended (a block with
/// BFINAL set), after which the rest of the input is not deflate data.
#[cfg(feature = "deflate")]
fn inflate_into(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut BytesMut,
    limit: usize,
) -> Result<bool, Error> {
    loop {
        let start = out.len();
        let mut room = INFLATE_CHUNK;
        if limit > 0 {
            // One byte past the limit is enough to know it was passed.
            room = room.min((limit + 1).saturating_sub(start)).max(1);
        }
        out.resize(start + room, 0);
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = d.decompress(input, &mut out[start..], FlushDecompress::Sync);
        let consumed = (d.total_in() - in_before) as usize;
        let produced = (d.total_out() - out_before) as usize;
        out.truncate(start + produced);
        let status = status.map_err(|_| InflateError::DataError)?;
        input = &input[consumed..];
        if limit > 0 && out.len() > limit {
            return Err(LimitError::MessageTooLarge.into());
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        if input.is_empty() && produced < room {
            return Ok(false);
        }
        if consumed == 0 && produced == 0 {
            return Err(InflateError::DataError.into());
        }
    }
}

#[cfg(feature = "deflate")]
impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("role", &self.role)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The codec's stand-in without the `deflate` feature.
#[cfg(not(feature = "deflate"))]
mod stand_in {
    use super::*;

    /// permessage-deflate's codec, which this build does not include (the `deflate`
    /// feature is off): the type has no values, since no [`DeflateParams`] can be
    /// negotiated to make one, and a connection never holds one. Its methods are those of
    /// the real codec, so code that uses it compiles either way.
    ///
    /// It is a struct with a private field that has no values rather than an enum without
    /// variants: other crates then cannot see that it is uninhabited, so their code that
    /// makes one (after negotiation, as the real codec) is not linted as unreachable.
    #[derive(Debug)]
    pub struct Deflate {
        never: Compiled,
    }

    impl Deflate {
        /// Cannot be called: `params` has no values without the `deflate` feature.
        pub fn new(role: Role, params: DeflateParams, config: &DeflateConfig) -> Deflate {
            let _ = (role, config);
            match params.compiled {}
        }

        /// The agreed parameters.
        pub fn params(&self) -> &DeflateParams {
            match self.never {}
        }

        /// Whether a message whose first piece is `len` bytes is worth compressing.
        pub fn should_compress(&self, len: usize) -> bool {
            let _ = len;
            match self.never {}
        }

        /// Compresses one piece of a message.
        pub fn compress(&mut self, input: &[u8], fin: bool) -> &[u8] {
            let _ = (input, fin);
            match self.never {}
        }

        /// Inflates one frame's payload of a compressed message into `out`.
        ///
        /// # Errors
        /// None: there is no codec to call this on.
        pub fn decompress(
            &mut self,
            input: &[u8],
            out: &mut BytesMut,
            limit: usize,
            fin: bool,
        ) -> Result<(), Error> {
            let _ = (input, out, limit, fin);
            match self.never {}
        }

        /// The settings this codec compresses every message with, if shared.
        pub fn shared(&self) -> Option<SharedDeflate> {
            match self.never {}
        }

        /// Frees the compression buffers' memory between messages.
        pub fn shrink(&mut self) {
            match self.never {}
        }

        /// Whether zlib state is held: (compressor, decompressor).
        pub fn holds_state(&self) -> (bool, bool) {
            match self.never {}
        }
    }
}

#[cfg(not(feature = "deflate"))]
pub use stand_in::Deflate;

/// Without the `deflate` feature nothing is negotiated in either role.
#[cfg(all(test, not(feature = "deflate")))]
mod without_deflate {
    use super::*;

    #[test]
    fn nothing_is_negotiated() {
        let config = DeflateConfig::default();
        let offer = client_offer(&config);
        assert_eq!(server_accept(&config, [offer.as_str()]), Ok(None));
        // A malformed offer is not read at all: the extension is unknown here.
        assert_eq!(
            server_accept(&config, ["permessage-deflate; bogus=1"]),
            Ok(None)
        );
        assert_eq!(client_accept(&config, []), Ok(None));
        assert_eq!(
            client_accept(&config, ["permessage-deflate"]),
            Err(HandshakeError::InvalidExtension)
        );
    }
}

#[cfg(all(test, feature = "deflate"))]
mod tests {
    use super::*;
    use crate::{Config, Connection, DataKind, Message};
    use std::time::Instant;

    fn server(config: &DeflateConfig, offer: &str) -> Result<Option<String>, HandshakeError> {
        server_accept(config, [offer]).map(|p| p.map(|p| p.header_value()))
    }

    fn client(
        config: &DeflateConfig,
        answer: &str,
    ) -> Result<Option<DeflateParams>, HandshakeError> {
        client_accept(config, [answer].into_iter().filter(|a| !a.is_empty()))
    }

    // RFC 7692 §7.1: the offer a client makes.
    #[test]
    fn client_offers() {
        assert_eq!(
            client_offer(&DeflateConfig::default()),
            "permessage-deflate; client_max_window_bits"
        );
        let config = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(12),
            ..Default::default()
        };
        assert_eq!(
            client_offer(&config),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
        );
    }

    // RFC 7692 §5, §7.1: the server accepts the first offer it can honour.
    #[test]
    fn server_accepts_the_first_acceptable_offer() {
        let default = DeflateConfig::default();
        assert_eq!(
            server(&default, "permessage-deflate").unwrap().unwrap(),
            "permessage-deflate"
        );
        // client_max_window_bits without a value is dropped from the answer (ws).
        assert_eq!(
            server(&default, "permessage-deflate; client_max_window_bits")
                .unwrap()
                .unwrap(),
            "permessage-deflate"
        );
        // The offer's requests are granted and echoed.
        assert_eq!(
            server(
                &default,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9"
            )
            .unwrap()
            .unwrap(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9"
        );
        // Window 8 for our compressor cannot be honoured: that offer is declined, the next
        // one taken.
        assert_eq!(
            server(&default, "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover")
                .unwrap()
                .unwrap(),
            "permessage-deflate; client_no_context_takeover"
        );
        // Other extensions are ignored; nothing acceptable declines compression.
        assert_eq!(server(&default, "x-other").unwrap(), None);
        assert_eq!(
            server(&default, "permessage-deflate; server_max_window_bits=8").unwrap(),
            None
        );
    }

    #[test]
    fn server_configuration_shapes_the_answer() {
        let config = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(11),
            ..Default::default()
        };
        // Limiting the client's window needs client_max_window_bits in the offer.
        assert_eq!(server(&config, "permessage-deflate").unwrap(), None);
        assert_eq!(
            server(&config, "permessage-deflate; client_max_window_bits").unwrap().unwrap(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=11"
        );
        // A lower window offered by the client wins on both sides.
        assert_eq!(
            server(&config, "permessage-deflate; server_max_window_bits=9; client_max_window_bits=10").unwrap().unwrap(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=10"
        );
        // Our own window 8 is answered as 9, which zlib can do.
        let eight = DeflateConfig {
            server_max_window_bits: Some(8),
            ..Default::default()
        };
        assert_eq!(
            server(&eight, "permessage-deflate").unwrap().unwrap(),
            "permessage-deflate; server_max_window_bits=9"
        );
    }

    // RFC 7692 §7.1: malformed parameters fail the handshake (ws answers 400).
    #[test]
    fn malformed_offers_fail() {
        for bad in [
            "permessage-deflate; unknown",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
        ] {
            assert!(server(&DeflateConfig::default(), bad).is_err(), "{bad}");
        }
    }

    // RFC 7692 §7.1: what a client accepts in the answer.
    #[test]
    fn client_checks_the_answer() {
        let default = DeflateConfig::default();
        assert_eq!(
            client(&default, "").unwrap(),
            None,
            "the server declined: no compression"
        );
        let p = client(&default, "permessage-deflate").unwrap().unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (15, 15)
        );
        let p = client(
            &default,
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
        )
        .unwrap()
        .unwrap();
        assert!(p.server_no_context_takeover && !p.client_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 9);
        // The server may impose client_no_context_takeover.
        assert!(
            client(&default, "permessage-deflate; client_no_context_takeover")
                .unwrap()
                .unwrap()
                .client_no_context_takeover
        );
        for bad in [
            "x-other",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; bogus",
        ] {
            assert!(client(&default, bad).is_err(), "{bad}");
        }
        let limited = DeflateConfig {
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(11),
            ..Default::default()
        };
        assert!(client(&limited, "permessage-deflate; server_max_window_bits=11").is_err());
        assert!(client(&limited, "permessage-deflate; client_max_window_bits=12").is_err());
        assert!(client(
            &limited,
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11"
        )
        .is_ok());
    }

    /// A compressed connection's messages are never sent from the stack as they are.
    #[test]
    fn send_now_leaves_a_compressed_connection_to_the_queue() {
        let (_, mut server) = pair("permessage-deflate");
        let never = |_: &[u8]| -> usize { panic!("write_now called") };
        assert!(!server.try_send_now(DataKind::Binary, b"x", never));
    }

    fn pair(params_header: &str) -> (Connection, Connection) {
        let config = DeflateConfig {
            threshold: 0,
            ..Default::default()
        };
        let params = client_accept(&config, [params_header]).unwrap().unwrap();
        let client = Connection::new(Role::Client, Config::default()).with_deflate(Deflate::new(
            Role::Client,
            params,
            &config,
        ));
        let server = Connection::new(Role::Server, Config::default()).with_deflate(Deflate::new(
            Role::Server,
            params,
            &config,
        ));
        (client, server)
    }

    fn deliver(from: &mut Connection, to: &mut Connection) -> Vec<Message> {
        let mut wire = from.transmit().take_all();
        let mut out = Vec::new();
        while let Some(m) = to.read(&mut wire, Instant::now()).unwrap() {
            out.push(m);
        }
        out
    }

    // RFC 7692 §7.2: compressed messages both ways, with and without context takeover;
    // RSV1 only on the first frame; control frames uncompressed.
    #[test]
    fn roundtrip_with_and_without_context_takeover() {
        for header in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ] {
            let (mut client, mut server) = pair(header);
            let text = "hello hello hello hello ".repeat(100);
            for _ in 0..3 {
                client.send_text(&text).unwrap();
                let wire_len = client.transmit_len();
                assert!(wire_len < text.len() / 4, "compressed: {wire_len}");
                assert_eq!(
                    client.transmit().to_vec()[0] & 0x40,
                    0x40,
                    "RSV1 on the first frame"
                );
                assert_eq!(
                    deliver(&mut client, &mut server),
                    [Message::text(text.as_str())]
                );
                server.send_binary(text.as_bytes()).unwrap();
                assert_eq!(
                    deliver(&mut server, &mut client),
                    [Message::binary(text.clone().into_bytes())]
                );
            }
            let takeover = !header.contains("no_context");
            assert_eq!(
                client.deflate().unwrap().holds_state(),
                (takeover, takeover),
                "{header}"
            );
            // Fragmented: RSV1 on the first frame only.
            client.send(DataKind::Text, text.as_bytes(), false).unwrap();
            let first_len = client.transmit_len();
            client.send(DataKind::Text, b"tail", true).unwrap();
            assert_eq!(
                client.transmit().to_vec()[first_len] & 0x40,
                0,
                "no RSV1 on continuation"
            );
            assert_eq!(
                deliver(&mut client, &mut server),
                [Message::text(format!("{text}tail"))]
            );
            client.ping(b"p").unwrap();
            assert_eq!(
                client.transmit().to_vec()[0],
                0x89,
                "pings are never compressed"
            );
        }
    }

    /// What a brand-new codec (on a thread of its own: an empty pool) makes of `message`.
    fn fresh_compress(params: DeflateParams, config: &DeflateConfig, message: &[u8]) -> Vec<u8> {
        let config = config.clone();
        let message = message.to_vec();
        std::thread::spawn(move || {
            assert_eq!(pool::idle(), (0, 0));
            Deflate::new(Role::Server, params, &config)
                .compress(&message, true)
                .to_vec()
        })
        .join()
        .unwrap()
    }

    /// A server's codec settings and the parameters it agrees to a client of the same
    /// configuration, with no context takeover from the server (and from the client when
    /// `client_too`), compressing every message.
    fn no_takeover(client_too: bool) -> (DeflateConfig, DeflateParams) {
        let config = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: client_too,
            threshold: 0,
            ..DeflateConfig::default()
        };
        let params = server_accept(&config, [client_offer(&config).as_str()])
            .unwrap()
            .unwrap();
        (config, params)
    }

    // No context takeover: the streams go back to the thread's pool reset, the next
    // message of another connection takes them, and its output is a new stream's.
    #[test]
    fn no_takeover_streams_are_pooled_reset_and_shared() {
        let (config, params) = no_takeover(true);
        let first = "abcabcabc hello hello hello ".repeat(40);
        let second = "hello abc hello xyz ".repeat(50);
        let mut a = Deflate::new(Role::Server, params, &config);
        let mut b = Deflate::new(Role::Server, params, &config);
        assert_eq!(pool::idle(), (0, 0));
        let from_a = a.compress(first.as_bytes(), true).to_vec();
        assert_eq!(a.holds_state(), (false, false));
        assert_eq!(pool::idle(), (1, 0), "the compressor waits in the pool");
        // Connection b's message reuses a's compressor, and comes out as from a new one.
        let from_b = b.compress(second.as_bytes(), true).to_vec();
        assert_eq!(pool::idle(), (1, 0));
        assert_eq!(from_b, fresh_compress(params, &config, second.as_bytes()));
        assert_ne!(from_a, from_b);
        // Inflating: the decompressor is pooled too, and a pooled one inflates the next
        // message of another connection correctly.
        let mut out = BytesMut::new();
        let mut c = Deflate::new(Role::Client, params, &config);
        c.decompress(&from_a, &mut out, 0, true).unwrap();
        assert_eq!(out, first.as_bytes());
        assert_eq!(pool::idle(), (1, 1));
        let mut d = Deflate::new(Role::Client, params, &config);
        out.clear();
        d.decompress(&from_b, &mut out, 0, true).unwrap();
        assert_eq!(out, second.as_bytes());
        assert_eq!(pool::idle(), (1, 1));
        assert_eq!(
            (c.holds_state(), d.holds_state()),
            ((false, false), (false, false))
        );
    }

    // The pool holds at most POOL_MAX streams of each kind, and a compressor of other
    // window bits or level is not handed out for this one.
    #[test]
    fn pool_is_bounded_and_keyed() {
        let (config, params) = no_takeover(false);
        for _ in 0..pool::POOL_MAX + 2 {
            pool::give_compressor(15, 6, Compress::new(Compression::new(6), false));
            pool::give_decompressor(15, Decompress::new(false));
        }
        assert_eq!(pool::idle(), (pool::POOL_MAX, pool::POOL_MAX));
        pool::give_decompressor(10, Decompress::new_with_window_bits(false, 10));
        assert_eq!(pool::idle().1, pool::POOL_MAX);
        // Another level: a new compressor, the pool untouched.
        let level1 = DeflateConfig {
            level: 1,
            ..config.clone()
        };
        let message = "sockeye sockeye sockeye ".repeat(30);
        let out = Deflate::new(Role::Server, params, &level1)
            .compress(message.as_bytes(), true)
            .to_vec();
        assert_eq!(out, fresh_compress(params, &level1, message.as_bytes()));
        assert_eq!(
            pool::idle().0,
            pool::POOL_MAX,
            "full: the level-1 one is freed"
        );
    }

    // ws's `compress: false` and the threshold.
    #[test]
    fn threshold_and_per_message_opt_out() {
        let config = DeflateConfig::default();
        let params = client_accept(&config, ["permessage-deflate"])
            .unwrap()
            .unwrap();
        let mut client = Connection::new(Role::Client, Config::default())
            .with_deflate(Deflate::new(Role::Client, params, &config));
        client.send_text("short").unwrap();
        assert_eq!(
            client.transmit().to_vec()[0] & 0x40,
            0,
            "under the threshold"
        );
        client.transmit().clear();
        client
            .send_with(DataKind::Binary, &[0u8; 4096], true, false)
            .unwrap();
        assert_eq!(client.transmit().to_vec()[0] & 0x40, 0, "compress: false");
        client.transmit().clear();
        client.send_binary(&[0u8; 4096]).unwrap();
        assert_eq!(client.transmit().to_vec()[0] & 0x40, 0x40);
    }

    // A decompression bomb: a tiny frame that inflates far past max_payload is stopped
    // with 1009 while inflating, without allocating the whole.
    #[test]
    fn inflate_bomb_stops_at_max_payload() {
        let config = DeflateConfig {
            threshold: 0,
            ..Default::default()
        };
        let params = client_accept(&config, ["permessage-deflate"])
            .unwrap()
            .unwrap();
        let mut client = Connection::new(Role::Client, Config::default())
            .with_deflate(Deflate::new(Role::Client, params, &config));
        let limits = Config {
            max_payload: 1 << 20,
            ..Config::default()
        };
        let mut server = Connection::new(Role::Server, limits).with_deflate(Deflate::new(
            Role::Server,
            params,
            &config,
        ));
        let bomb = vec![0u8; 16 << 20];
        client.send_binary(&bomb).unwrap();
        let mut wire = client.transmit().take_all();
        assert!(
            wire.len() < 128 * 1024,
            "16 MiB of zeros compress to {} bytes",
            wire.len()
        );
        let err = server.read(&mut wire, Instant::now()).unwrap_err();
        assert_eq!(err.ws_code(), Some("WS_ERR_UNSUPPORTED_MESSAGE_LENGTH"));
        assert_eq!(err.close_code(), Some(crate::CloseCode::MESSAGE_TOO_BIG));
    }

    // RFC 7692 §6: RSV1 without negotiation, or on a continuation, is a protocol error;
    // corrupt data fails with 1007.
    #[test]
    fn rsv1_rules_and_corrupt_data() {
        let mut plain = Connection::new(Role::Server, Config::default());
        let mut wire = BytesMut::from(&[0xc1u8, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(
            plain.read(&mut wire, Instant::now()).unwrap_err().ws_code(),
            Some("WS_ERR_UNEXPECTED_RSV_1")
        );

        let (_, mut server) = pair("permessage-deflate");
        let mut wire = BytesMut::from(&[0x01u8, 0x80, 0, 0, 0, 0, 0xc0, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(
            server
                .read(&mut wire, Instant::now())
                .unwrap_err()
                .ws_code(),
            Some("WS_ERR_UNEXPECTED_RSV_1")
        );

        let (_, mut server) = pair("permessage-deflate");
        let mut wire = BytesMut::from(&[0xc2u8, 0x82, 0, 0, 0, 0, 0xff, 0xff][..]);
        let err = server.read(&mut wire, Instant::now()).unwrap_err();
        assert_eq!(
            (err.ws_code(), err.close_code()),
            (
                Some("Z_DATA_ERROR"),
                Some(crate::CloseCode::INVALID_PAYLOAD)
            )
        );
    }
}
