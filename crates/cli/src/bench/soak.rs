//! `sockeye bench --soak`: every message accounted for, over many connections that come
//! and go, for a long time.
//!
//! Each of `--connections` connections (a logical connection: it reconnects, keeping its
//! id) sends binary messages numbered in sequence and checks that each echo is exactly
//! the next one it expects. A message is [`HEADER`] bytes (the connection id, the
//! generation: how many times it reconnected, the sequence number, the length) followed
//! by a body derived from the connection id and the sequence number, its length drawn
//! between the header and `--size`. So an echo with a flipped byte is *corrupted*, one
//! that comes before the expected one is *out of order* (reordered, or the expected one
//! was lost), an earlier one again is *duplicated*, and one when nothing is in flight or
//! of another connection is *unexpected*. At most `--window` messages are in flight per
//! connection; `--rate` paces all connections together (0: each keeps its window full).
//!
//! At `--reconnect-rate` reconnects per second across all connections, a connection
//! ends its session and connects again: half of the time cleanly (no new message, the
//! messages in flight are waited for, then the close handshake), half abruptly (the
//! transport closed at once, no close handshake). Messages in flight at an abrupt
//! disconnect cannot be echoed: they are counted as lost by design, never silently.
//! The times between reconnects (exponential, mean `connections / reconnect-rate`),
//! the clean or abrupt choices, the lengths and the bodies come from `--seed` and the
//! connection id, so two runs with one seed make the same choices (the interleaving of
//! the connections depends on the scheduler).
//!
//! At the end each connection stops sending, waits for what is in flight and closes
//! cleanly. The account: every message sent was echoed, lost at an abrupt disconnect,
//! lost at a failure, unanswered at the end, or abandoned after a mismatch. The run
//! fails (exit 1) on any mismatch, any failure (a connection that could not connect, or
//! ended without being asked to), any message unanswered at the end, or an account
//! that does not add up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sockeye::{ClientConfig, MaybeTlsStream, Message, WebSocket};

use super::{Args, Plan, Progress};

/// The header of each message: connection id (u32), generation (u32), sequence number
/// (u64), length of the whole message (u32), little-endian, then 4 bytes of `SOAK`.
pub(super) const HEADER: usize = 24;

/// Connection attempts under way at once (a burst of 10,000 SYNs overflows the
/// server's accept queue and costs a retransmission of a second or more).
const CONNECTING_AT_ONCE: usize = 64;

/// How long the messages in flight and the close handshake may take at a clean
/// disconnect, and a failed connection waits before it tries again.
const GRACE: Duration = Duration::from_secs(10);

/// Examples of mismatches kept for the report.
const EXAMPLES: usize = 5;

/// A small seeded generator (xorshift64*): reproducible, and enough for lengths,
/// bodies and reconnect times.
pub(super) struct XorShift(u64);

impl XorShift {
    /// A generator for one stream, from the run's seed and the stream's keys
    /// (splitmix64 of both, so nearby keys give unrelated streams).
    pub(super) fn new(seed: u64, a: u64, b: u64) -> XorShift {
        let mut z = seed
            .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(b.wrapping_mul(0xD1B5_4A32_D192_ED03));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(z | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high].
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }
}

/// The message `seq` of connection `id` in its generation `generation`, `len` bytes.
pub(super) fn message(seed: u64, id: u32, generation: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(b"SOAK");
    let mut body = XorShift::new(seed, u64::from(id), seq);
    while out.len() < len {
        let word = body.next().to_le_bytes();
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

/// The header fields of a received message, if it has one.
fn header(data: &[u8]) -> Option<(u32, u32, u64)> {
    if data.len() < HEADER || &data[20..24] != b"SOAK" {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    Some((u32_at(0), u32_at(4), seq))
}

/// Kinds of mismatch.
const CORRUPTED: &str = "corrupted";
const OUT_OF_ORDER: &str = "out_of_order";
const DUPLICATED: &str = "duplicated";
const UNEXPECTED: &str = "unexpected";

/// What all connections counted, or one.
#[derive(Default)]
struct Account {
    sent: u64,
    echoed: u64,
    /// In flight when a connection was closed abruptly on purpose.
    lost_at_abrupt: u64,
    /// In flight when a connection failed.
    lost_at_failure: u64,
    /// In flight at a clean disconnect or at the end, not echoed within [`GRACE`].
    unanswered: u64,
    /// In flight after a mismatch (the connection is dropped: what follows a mismatch
    /// cannot be checked).
    abandoned_at_mismatch: u64,
    mismatched: BTreeMap<&'static str, u64>,
    examples: Vec<String>,
    connects: u64,
    clean_reconnects: u64,
    abrupt_reconnects: u64,
    failures: BTreeMap<String, u64>,
}

impl Account {
    fn failed(&mut self, reason: impl Into<String>) {
        *self.failures.entry(reason.into()).or_default() += 1;
    }

    fn mismatch(&mut self, kind: &'static str, example: String) {
        *self.mismatched.entry(kind).or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }

    fn add(&mut self, other: Account) {
        self.sent += other.sent;
        self.echoed += other.echoed;
        self.lost_at_abrupt += other.lost_at_abrupt;
        self.lost_at_failure += other.lost_at_failure;
        self.unanswered += other.unanswered;
        self.abandoned_at_mismatch += other.abandoned_at_mismatch;
        for (kind, n) in other.mismatched {
            *self.mismatched.entry(kind).or_default() += n;
        }
        for example in other.examples {
            if self.examples.len() < EXAMPLES {
                self.examples.push(example);
            }
        }
        self.connects += other.connects;
        self.clean_reconnects += other.clean_reconnects;
        self.abrupt_reconnects += other.abrupt_reconnects;
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
    }

    fn mismatches(&self) -> u64 {
        self.mismatched.values().sum()
    }

    fn failures(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Sent messages that no count accounts for (0 unless the bookkeeping is wrong).
    fn unaccounted(&self) -> i128 {
        i128::from(self.sent)
            - i128::from(
                self.echoed
                    + self.lost_at_abrupt
                    + self.lost_at_failure
                    + self.unanswered
                    + self.abandoned_at_mismatch,
            )
    }

    fn passed(&self) -> bool {
        self.mismatches() == 0
            && self.failures() == 0
            && self.unanswered == 0
            && self.lost_at_failure == 0
            && self.unaccounted() == 0
    }
}

/// The run's settings, shared by the connections.
struct Soak {
    url: String,
    config: ClientConfig,
    seed: u64,
    size: usize,
    window: usize,
    /// Paced: the time between two messages of one connection.
    interval: Option<Duration>,
    /// The mean time between two reconnects of one connection, if any.
    mean_session: Option<f64>,
    end: Instant,
    connecting: tokio::sync::Semaphore,
    /// Echoes so far, for the progress line.
    echoed: AtomicU64,
}

pub(super) async fn run(args: &Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.size >= HEADER,
        "--soak needs --size of at least {HEADER} bytes (each message's header)"
    );
    anyhow::ensure!(
        args.size <= 16 << 20,
        "--soak takes --size up to 16 MiB (each message is built and checked whole)"
    );
    anyhow::ensure!(
        args.connections <= u32::MAX as usize,
        "--connections is too large"
    );
    anyhow::ensure!(args.window >= 1, "--window must be at least 1");
    anyhow::ensure!(
        args.reconnect_rate >= 0.0 && args.reconnect_rate.is_finite(),
        "--reconnect-rate must be 0 or more reconnects per second"
    );
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be 0 or more"
    );
    let mut config = ClientConfig::default();
    config.handshake_timeout = Some(Duration::from_secs(10));
    // Whole messages, each checked against what was sent.
    config.websocket.max_payload = args.size.max(1024) * 2;
    if !args.deflate {
        config.per_message_deflate = None;
    }
    if let Some(ca) = &args.ca {
        config.tls.ca_pem = Some(crate::read(ca, "--ca")?);
    }
    config.tls.dangerous_accept_any_certificate = args.insecure;

    let mut plan = Plan::new(args);
    plan.warmup = Duration::ZERO;
    plan.start_clock();
    let soak = Arc::new(Soak {
        url: args.url.clone(),
        config,
        seed: args.seed,
        size: args.size,
        window: args.window,
        interval: (args.rate > 0.0)
            .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate)),
        mean_session: (args.reconnect_rate > 0.0)
            .then(|| args.connections as f64 / args.reconnect_rate),
        end: plan.end,
        connecting: tokio::sync::Semaphore::new(CONNECTING_AT_ONCE),
        echoed: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..args.connections as u32)
        .map(|id| tokio::spawn(connection(soak.clone(), id)))
        .collect();

    let mut progress = Progress::new(&plan);
    while Instant::now() < plan.end {
        tokio::time::sleep_until(progress.next_tick().into()).await;
        progress.tick(Instant::now(), soak.echoed.load(Ordering::Relaxed));
    }
    progress.finish();

    let mut total = Account::default();
    for task in tasks {
        total.add(task.await?);
    }
    report(args, &total);
    Ok(total.passed())
}

/// How a session ends.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// A clean reconnect, or the end of the run: the messages in flight are waited
    /// for, then the close handshake.
    Clean,
    /// An abrupt reconnect: the transport closed at once.
    Abrupt,
}

/// One logical connection: sessions until the end of the run.
async fn connection(soak: Arc<Soak>, id: u32) -> Account {
    let mut account = Account::default();
    let mut choices = XorShift::new(soak.seed, u64::from(id), u64::MAX);
    let mut seq = 0u64;
    let mut generation = 0u32;
    let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
    // How the last session ended, counted once the next one is connected.
    let mut reconnecting: Option<Ending> = None;
    while Instant::now() < soak.end {
        let ws = {
            let _turn = soak.connecting.acquire().await;
            sockeye::connect_maybe_tls_with(&soak.url, soak.config.clone()).await
        };
        let mut ws = match ws {
            Ok((ws, _)) => ws,
            Err(e) => {
                account.failed(format!("cannot connect: {e}"));
                let retry = Instant::now() + GRACE.min(Duration::from_secs(1));
                tokio::time::sleep_until(retry.min(soak.end).into()).await;
                continue;
            }
        };
        account.connects += 1;
        match reconnecting.take() {
            Some(Ending::Clean) => account.clean_reconnects += 1,
            Some(Ending::Abrupt) => account.abrupt_reconnects += 1,
            None => {}
        }
        let (until, ending) = match soak.mean_session {
            Some(mean) => {
                // Exponential: 1 - unit() is in (0, 1].
                let after = -(1.0 - choices.unit()).ln() * mean;
                let at = Instant::now() + Duration::from_secs_f64(after.min(1e6));
                let ending = if choices.next() & 1 == 0 {
                    Ending::Clean
                } else {
                    Ending::Abrupt
                };
                if at < soak.end {
                    (at, ending)
                } else {
                    (soak.end, Ending::Clean)
                }
            }
            None => (soak.end, Ending::Clean),
        };
        let mut session = Session {
            soak: &soak,
            id,
            generation,
            seq: &mut seq,
            in_flight: &mut in_flight,
            lengths: &mut choices,
            account: &mut account,
        };
        match session.run(&mut ws, until).await {
            Err(Stop::Failed(reason)) => {
                account.failed(reason);
                account.lost_at_failure += in_flight.len() as u64;
                in_flight.clear();
                ws.terminate();
            }
            Err(Stop::Mismatch) => {
                account.abandoned_at_mismatch += in_flight.len() as u64;
                in_flight.clear();
                ws.terminate();
            }
            Ok(()) if ending == Ending::Abrupt => {
                account.lost_at_abrupt += in_flight.len() as u64;
                reconnecting = Some(Ending::Abrupt);
                in_flight.clear();
                ws.terminate();
            }
            Ok(()) => {
                let closed = session.close(&mut ws).await;
                if let Err(stop) = closed {
                    let left = in_flight.len() as u64;
                    in_flight.clear();
                    match stop {
                        Stop::Failed(reason) => {
                            account.failed(reason);
                            account.unanswered += left;
                        }
                        Stop::Mismatch => account.abandoned_at_mismatch += left,
                    }
                    ws.terminate();
                } else if until < soak.end {
                    reconnecting = Some(Ending::Clean);
                }
            }
        }
        drop(ws);
        generation = generation.wrapping_add(1);
    }
    account
}

/// Why a session stopped early.
enum Stop {
    /// The connection failed or the server ended it.
    Failed(String),
    /// An echo was not the expected one.
    Mismatch,
}

/// One connection's session: its counters and what it has in flight.
struct Session<'a> {
    soak: &'a Soak,
    id: u32,
    generation: u32,
    seq: &'a mut u64,
    in_flight: &'a mut VecDeque<(u64, usize)>,
    lengths: &'a mut XorShift,
    account: &'a mut Account,
}

impl Session<'_> {
    /// Sends and checks until `until`.
    async fn run(
        &mut self,
        ws: &mut WebSocket<MaybeTlsStream>,
        until: Instant,
    ) -> Result<(), Stop> {
        let until = tokio::time::Instant::from_std(until);
        let mut pace = self.soak.interval.map(|i| {
            let mut timer = tokio::time::interval(i);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        loop {
            let room = self.in_flight.len() < self.soak.window;
            let ready = async {
                match pace.as_mut() {
                    Some(pace) => {
                        pace.tick().await;
                    }
                    None => std::future::ready(()).await,
                }
            };
            tokio::select! {
                biased;
                received = ws.recv() => self.check(received)?,
                () = tokio::time::sleep_until(until) => return Ok(()),
                () = ready, if room => self.send(ws).await?,
            }
        }
    }

    async fn send(&mut self, ws: &WebSocket<MaybeTlsStream>) -> Result<(), Stop> {
        let len = self.lengths.between(HEADER, self.soak.size);
        let seq = *self.seq;
        let data = message(self.soak.seed, self.id, self.generation, seq, len);
        *self.seq += 1;
        self.in_flight.push_back((seq, len));
        self.account.sent += 1;
        ws.send_binary(&data)
            .await
            .map_err(|e| Stop::Failed(format!("sending failed: {e}")))
    }

    /// Checks a received message against the next echo expected.
    fn check(&mut self, received: Option<Result<Message, sockeye::Error>>) -> Result<(), Stop> {
        let data = match received {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
            Some(Ok(Message::Close(frame))) => {
                return Err(Stop::Failed(match frame {
                    Some(frame) => format!(
                        "the server closed the connection ({} {})",
                        frame.code.0,
                        frame.code.description()
                    ),
                    None => "the server closed the connection".to_owned(),
                }))
            }
            Some(Ok(_)) => {
                return Err(Stop::Failed(
                    "the server answered with text: it did not echo the binary message".to_owned(),
                ))
            }
            Some(Err(e)) => return Err(Stop::Failed(format!("the connection failed: {e}"))),
            None => return Err(Stop::Failed("the connection ended".to_owned())),
        };
        let who = format!("connection {} generation {}", self.id, self.generation);
        let front = self.in_flight.front().copied();
        let expected =
            front.map(|(seq, len)| message(self.soak.seed, self.id, self.generation, seq, len));
        if let (Some(expected), Some(_)) = (&expected, front) {
            if data[..] == expected[..] {
                self.in_flight.pop_front();
                self.account.echoed += 1;
                self.soak.echoed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let wanted = match front {
            Some((seq, _)) => format!("expected message {seq}"),
            None => "nothing in flight".to_owned(),
        };
        let next = front.map_or(*self.seq, |(seq, _)| seq);
        let (kind, what) = match header(&data) {
            Some((id, generation, got))
                if id == self.id && generation == self.generation && got != next =>
            {
                if got < next {
                    (DUPLICATED, format!("message {got} again"))
                } else if self.in_flight.iter().any(|&(s, _)| s == got) {
                    (OUT_OF_ORDER, format!("message {got} before it"))
                } else {
                    (UNEXPECTED, format!("message {got}, never sent"))
                }
            }
            Some((id, generation, _)) if id != self.id || generation != self.generation => (
                UNEXPECTED,
                format!("a message of connection {id} generation {generation}"),
            ),
            _ => match (&expected, front) {
                (Some(expected), Some((_, len))) => {
                    let at = data
                        .iter()
                        .zip(expected.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(data.len().min(expected.len()));
                    (
                        CORRUPTED,
                        format!(
                            "{} bytes (sent {len}), first difference at byte {at}",
                            data.len()
                        ),
                    )
                }
                _ => (
                    UNEXPECTED,
                    format!("{} bytes of no message sent", data.len()),
                ),
            },
        };
        self.account
            .mismatch(kind, format!("{who}: {wanted}, got {what}"));
        Err(Stop::Mismatch)
    }

    /// A clean end: waits (within [`GRACE`]) for the messages in flight, then the close
    /// handshake.
    async fn close(&mut self, ws: &mut WebSocket<MaybeTlsStream>) -> Result<(), Stop> {
        let drained = tokio::time::timeout(GRACE, async {
            while !self.in_flight.is_empty() {
                self.check(ws.recv().await)?;
            }
            Ok(())
        });
        match drained.await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Stop::Failed(format!(
                    "{} echoes did not come back within {} s",
                    self.in_flight.len(),
                    GRACE.as_secs()
                )))
            }
        }
        if let Err(e) = ws.close(None).await {
            return Err(Stop::Failed(format!("closing failed: {e}")));
        }
        let answered = tokio::time::timeout(GRACE, async {
            loop {
                match ws.recv().await {
                    None => return Ok(()),
                    Some(Ok(Message::Close(_) | Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(_)) => {
                        return Err("a message after the close handshake began".to_owned())
                    }
                    Some(Err(e)) => return Err(format!("the close handshake failed: {e}")),
                }
            }
        });
        match answered.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Stop::Failed(reason)),
            Err(_) => Err(Stop::Failed(format!(
                "the server did not answer the close within {} s",
                GRACE.as_secs()
            ))),
        }
    }
}

fn report(args: &Args, total: &Account) {
    let passed = total.passed();
    if args.json {
        let summary = json!({
            "mode": "soak",
            "url": args.url,
            "connections": args.connections,
            "duration_s": args.duration,
            "seed": args.seed,
            "size": args.size,
            "window": args.window,
            "rate": args.rate,
            "reconnect_rate": args.reconnect_rate,
            "sent": total.sent,
            "echoed": total.echoed,
            "lost_at_abrupt_disconnect": total.lost_at_abrupt,
            "lost_at_failure": total.lost_at_failure,
            "unanswered_at_end": total.unanswered,
            "abandoned_at_mismatch": total.abandoned_at_mismatch,
            "unaccounted": total.unaccounted() as i64,
            "mismatched": total.mismatches(),
            "mismatch_kinds": total.mismatched,
            "mismatch_examples": total.examples,
            "connects": total.connects,
            "clean_reconnects": total.clean_reconnects,
            "abrupt_reconnects": total.abrupt_reconnects,
            "failures": total.failures(),
            "failure_reasons": total
                .failures
                .iter()
                .map(|(reason, count)| json!({"reason": reason, "count": count}))
                .collect::<Vec<_>>(),
            "passed": passed,
        });
        println!("{summary}");
        return;
    }
    println!(
        "sockeye bench --soak {}: {} connections, {:.1} s, seed {}, {} reconnects/s",
        args.url, args.connections, args.duration, args.seed, args.reconnect_rate
    );
    let rows = vec![
        ("sent", total.sent.to_string(), ""),
        ("echoed", total.echoed.to_string(), ""),
        (
            "lost at abrupt disconnects",
            total.lost_at_abrupt.to_string(),
            "(by design)",
        ),
        ("lost at failures", total.lost_at_failure.to_string(), ""),
        ("unanswered at the end", total.unanswered.to_string(), ""),
        (
            "abandoned at mismatches",
            total.abandoned_at_mismatch.to_string(),
            "",
        ),
        ("unaccounted", total.unaccounted().to_string(), ""),
        ("mismatched", total.mismatches().to_string(), ""),
        ("connects", total.connects.to_string(), ""),
        ("clean reconnects", total.clean_reconnects.to_string(), ""),
        ("abrupt reconnects", total.abrupt_reconnects.to_string(), ""),
        ("failures", total.failures().to_string(), ""),
    ];
    print!("{}", super::table(&rows));
    for (kind, count) in &total.mismatched {
        println!("  {count} x {kind}");
    }
    for example in &total.examples {
        println!("  e.g. {example}");
    }
    for (reason, count) in &total.failures {
        println!("  {count} x {reason}");
    }
    println!("{}", if passed { "passed" } else { "FAILED" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_header_and_a_body_of_its_own() {
        let a = message(7, 3, 1, 42, 100);
        assert_eq!(a.len(), 100);
        assert_eq!(header(&a), Some((3, 1, 42)));
        assert_eq!(a, message(7, 3, 1, 42, 100), "deterministic");
        assert_ne!(a[HEADER..], message(7, 3, 1, 43, 100)[HEADER..]);
        assert_ne!(a[HEADER..], message(7, 4, 1, 42, 100)[HEADER..]);
        assert_ne!(a[HEADER..], message(8, 3, 1, 42, 100)[HEADER..]);
        assert_eq!(message(7, 3, 1, 42, HEADER).len(), HEADER);
        assert_eq!(header(&a[..HEADER - 1]), None);
    }

    #[test]
    fn the_generator_is_reproducible_and_spread() {
        let mut a = XorShift::new(1, 2, 3);
        let mut b = XorShift::new(1, 2, 3);
        let draws: Vec<u64> = (0..100).map(|_| a.next()).collect();
        assert!(draws.iter().all(|&d| d == b.next()));
        let mut lengths = XorShift::new(1, 2, 3);
        let mut seen = [false; 11];
        for _ in 0..1000 {
            let n = lengths.between(10, 20);
            assert!((10..=20).contains(&n));
            seen[n - 10] = true;
        }
        assert!(seen.iter().all(|&s| s), "every length drawn");
        let mean = (0..10_000).map(|_| lengths.unit()).sum::<f64>() / 10_000.0;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }

    #[test]
    fn the_account_adds_up_or_fails() {
        let mut account = Account {
            sent: 10,
            echoed: 7,
            lost_at_abrupt: 3,
            ..Account::default()
        };
        assert!(account.passed());
        account.sent += 1;
        assert_eq!(account.unaccounted(), 1);
        assert!(!account.passed());
        account.unanswered = 1;
        assert!(!account.passed(), "unanswered at a clean end is a failure");
        account.unanswered = 0;
        account.abandoned_at_mismatch = 1;
        account.mismatch(CORRUPTED, "x".into());
        assert!(!account.passed());
    }
}
