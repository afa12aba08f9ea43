//! `sockeye serve`: the demo. One port serves the page at `/`, a WebSocket echo at
//! `/echo` and a chat room at `/chat` shared by everyone connected (with `--redis`, by
//! everyone connected to any `sockeye serve` on that Redis).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sockeye::broker::redis::{RedisConfig, RedisStreams};
use sockeye::broker::StreamMessage;
use sockeye::proto::handshake::server::{parse_request, reject};
use sockeye::proto::http::{HeaderMap, StatusCode};
use sockeye::{
    Broker, Clients, HeadLimits, Hub, HubConfig, LocalBroker, Message, OverBudget, ServerConfig,
    ServerStream, StreamPosition,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::ServerArgs;

const PAGE: &str = include_str!("page.html");
/// The longest chat name and line kept.
const MAX_NAME: usize = 32;
const MAX_TEXT: usize = 2000;

/// `sockeye serve` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Share the chat room with every `sockeye serve` on this Redis (Redis Streams: a
    /// page that reconnects, to any of them, gets the lines it missed).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            server: ServerArgs {
                listen: "127.0.0.1:8080".parse().expect("valid address"),
                max_payload: sockeye::proto::limits::DEFAULT_MAX_PAYLOAD,
                tls_cert: None,
                tls_key: None,
                handshake_timeout: sockeye::ServerConfig::default().handshake_timeout,
                metrics: None,
            },
            redis: None,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.server.serve_metrics()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<ExitCode> {
    // Behind TLS, HTTP/2 too (h2 and http/1.1 in ALPN): browsers then load the page and
    // open the WebSockets (RFC 8441) on one HTTP/2 connection.
    let tls = args
        .server
        .tls()?
        .map(|tls| sockeye::http2::offer_in_alpn(tls, sockeye::http2::Http2Mode::IfOffered));
    let listener = TcpListener::bind(args.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.server.listen))?;
    let mut stop = StopSignals::new()?;
    println!(
        "sockeye serve: open {}://{}/ (Ctrl-C to stop)",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    let mut config = ServerConfig::default();
    config.websocket.max_payload = args.server.max_payload;
    config.handshake_timeout = args.server.handshake_timeout;
    // Browsers offer permessage-deflate; the demo accepts it, without context takeover,
    // so that a chat line is compressed once for all members (the hub's groups).
    config.per_message_deflate = Some(sockeye::DeflateConfig {
        server_no_context_takeover: true,
        ..sockeye::DeflateConfig::default()
    });
    // Over HTTP/1.1 `handle` answers other paths 404 before any upgrade; over HTTP/2 the
    // decision refuses them (400).
    config.should_handle = Some(Arc::new(|request| {
        matches!(request.uri().path(), "/echo" | "/chat")
    }));
    let config = Arc::new(config);
    let room = Room::new(args.redis.as_deref()).await?;
    let tracked = Tracked::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let (config, room, tls) = (config.clone(), room.clone(), tls.clone());
                let tracked = tracked.clone();
                tokio::spawn(async move {
                    let stream = match tls {
                        Some(tls) => {
                            let handshake = sockeye::tls::server_handshake(stream, tls);
                            match tokio::time::timeout(config.handshake_timeout, handshake).await {
                                Ok(Ok(stream)) => stream,
                                _ => return,
                            }
                        }
                        None => ServerStream::Plain(stream),
                    };
                    if stream.alpn_protocol() == Some(b"h2") {
                        return serve_http2(stream, config, room, tracked).await;
                    }
                    handle(stream, config, room, tracked).await;
                });
            }
            signal = stop.next() => {
                // Stop accepting, let the upgrades under way finish, then close every
                // WebSocket with 1001 (going away), all within the grace.
                drop(listener);
                let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                tracked.settle(deadline).await;
                println!(
                    "sockeye serve: {signal}: closing {} connection(s) (1001 going away), \
                     waiting up to {} s (Ctrl-C again to stop at once)",
                    tracked.clients.len(),
                    SHUTDOWN_GRACE.as_secs()
                );
                let grace = deadline.saturating_duration_since(tokio::time::Instant::now());
                let report = tokio::select! {
                    report = tracked.clients.shutdown(grace) => report,
                    signal = stop.next() => {
                        println!("sockeye serve: {signal} again: stopped without waiting");
                        return Ok(ExitCode::from(130));
                    }
                };
                println!(
                    "sockeye serve: stopped ({} closed, {} terminated)",
                    report.closed, report.terminated
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// How long the WebSockets get to answer the 1001 close on Ctrl-C before they are
/// terminated.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The WebSockets to close at shutdown: those upgraded, tracked in the library's
/// [`Clients`], and a count of upgrades under way, whose 101 may already be on its way
/// to a client that will count on the close handshake.
#[derive(Clone, Default)]
struct Tracked {
    clients: Clients<ServerStream>,
    upgrading: Arc<AtomicUsize>,
}

/// An upgrade under way, counted in [`Tracked::upgrading`] until dropped.
struct Upgrading(Arc<AtomicUsize>);

impl Drop for Upgrading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tracked {
    fn upgrading(&self) -> Upgrading {
        self.upgrading.fetch_add(1, Ordering::AcqRel);
        Upgrading(self.upgrading.clone())
    }

    /// Waits until no upgrade is under way (each is bounded by the write of its 101), or
    /// until `deadline`.
    async fn settle(&self, deadline: tokio::time::Instant) {
        while self.upgrading.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM: the signals that stop the server. On Unix both
/// handlers are installed when this is made, before the banner invites a Ctrl-C.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// The next stop signal's name ("interrupted", "terminated").
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => "interrupted",
            _ = self.terminate.recv() => "terminated",
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}

/// Reads one request: an upgrade goes to the WebSocket routes, anything else gets the
/// page or a 404.
async fn handle(mut stream: ServerStream, config: Arc<ServerConfig>, room: Room, tracked: Tracked) {
    let limits = HeadLimits::default();
    let mut buf = sockeye::proto::bytes::BytesMut::with_capacity(1024);
    let head = tokio::time::timeout(config.handshake_timeout, async {
        loop {
            match parse_request(&buf, &limits) {
                Ok(Some(parsed)) => return Ok(parsed),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return Err(sockeye::proto::HandshakeError::MalformedHttp(
                    "connection closed".into(),
                ));
            }
        }
    })
    .await;
    let (request, len) = match head {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => return respond_error(stream, &e).await,
        Err(_) => return respond_error(stream, &sockeye::proto::HandshakeError::Timeout).await,
    };
    let _ = buf.split_to(len);
    let path = request.uri().path().to_owned();
    if request.headers().contains_key("upgrade") {
        if path != "/echo" && path != "/chat" {
            return respond_error(stream, &sockeye::proto::HandshakeError::NotFound).await;
        }
        let upgrading = tracked.upgrading();
        let Ok((ws, _request)) = sockeye::upgrade(stream, request, buf, &config).await else {
            return;
        };
        tracked.clients.insert(&ws);
        drop(upgrading);
        if path == "/echo" {
            echo(ws).await;
        } else {
            room.join(ws).await;
        }
        return;
    }
    let response = match path.as_str() {
        "/" | "/index.html" => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                PAGE.len()
            )
            .into_bytes();
            out.extend_from_slice(PAGE.as_bytes());
            out
        }
        _ => reject(StatusCode::NOT_FOUND, None, &HeaderMap::new(), "not found"),
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// An HTTP/2 connection: the page, and WebSockets on /echo and /chat as streams.
async fn serve_http2(
    stream: ServerStream,
    config: Arc<ServerConfig>,
    room: Room,
    tracked: Tracked,
) {
    let on_websocket: sockeye::http2::OnWebSocket<ServerStream> = Arc::new(move |ws, request| {
        tracked.clients.insert(&ws);
        let room = room.clone();
        Box::pin(async move {
            if request.uri().path() == "/echo" {
                echo(ws).await;
            } else {
                room.join(ws).await;
            }
        })
    });
    let on_request: sockeye::http2::OnRequest = Arc::new(|request| {
        if request.method() != sockeye::proto::http::Method::GET {
            return None;
        }
        let (status, content_type, body) = match request.uri().path() {
            "/" | "/index.html" => (StatusCode::OK, "text/html; charset=utf-8", PAGE),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n",
            ),
        };
        let body = sockeye::proto::bytes::Bytes::from_static(body.as_bytes());
        let mut response = sockeye::proto::http::Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            content_type.parse().expect("a header value"),
        );
        headers.insert("cache-control", "no-store".parse().expect("a header value"));
        Some(response)
    });
    let service = sockeye::http2::Http2Service {
        on_websocket,
        on_request: Some(on_request),
    };
    let _ = sockeye::http2::serve_connection(stream, config, true, service).await;
}

async fn respond_error(mut stream: ServerStream, error: &sockeye::proto::HandshakeError) {
    let response = sockeye::proto::handshake::server::reject_error(error);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&response)).await;
}

async fn echo(mut ws: sockeye::WebSocket<ServerStream>) {
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            break;
        }
    }
}

/// The chat's topic.
const TOPIC: &str = "chat";

/// The chat room: everyone connected to /chat, subscribed to one topic of a [`Hub`].
/// Lines go out through the broker: straight to the hub, or with `--redis` through Redis
/// Streams to the hub of every `sockeye serve` process on that Redis, with a position
/// ("pos": epoch and offset) that a page that reconnects sends back to recover what it
/// missed.
#[derive(Clone)]
struct Room {
    hub: Hub,
    broker: Arc<dyn Broker>,
    /// With `--redis`: the broker that can recover missed lines.
    streams: Option<Arc<RedisStreams>>,
    /// This process's members, by connection id.
    names: Arc<Mutex<HashMap<u64, Member>>>,
}

/// A chat member of this process.
struct Member {
    /// `guest-ID` until the member says hello with a name.
    name: String,
    /// Whether the member has said hello: the first hello joins, a later one with
    /// another name renames.
    named: bool,
}

impl Room {
    /// An in-process room, or one shared through Redis at `redis`.
    async fn new(redis: Option<&str>) -> anyhow::Result<Room> {
        let mut config = HubConfig::default();
        // A member that stops reading is disconnected rather than buffered for.
        config.over_budget = OverBudget::ClosePolicyViolation;
        let hub = Hub::new(config);
        let Some(url) = redis else {
            return Ok(Room {
                broker: Arc::new(LocalBroker::new(hub.clone())),
                hub,
                streams: None,
                names: Arc::default(),
            });
        };
        let streams = RedisStreams::connect_with_format(
            url,
            hub.clone(),
            RedisConfig::default(),
            Arc::new(with_position),
        )
        .await
        .with_context(|| format!("--redis {url}"))?;
        streams
            .subscribe(TOPIC)
            .await
            .context("--redis: subscribing")?;
        let streams = Arc::new(streams);
        Ok(Room {
            hub,
            broker: streams.clone(),
            streams: Some(streams),
            names: Arc::default(),
        })
    }

    async fn join(&self, ws: sockeye::WebSocket<ServerStream>) {
        let id = ws.id();
        self.names.lock().expect("room lock").insert(
            id,
            Member {
                name: format!("guest-{id}"),
                named: false,
            },
        );
        let (writer, mut reader) = ws.split();
        let mut subscribed = false;
        while let Some(Ok(message)) = reader.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if !subscribed {
                // The first line: a page that comes back says where it was. Subscribed
                // first, then recovered: a line is either live or in the recovery (or
                // both: the page drops a position it has seen), never in neither.
                subscribed = true;
                if self.hub.subscribe(&writer, TOPIC).is_err()
                    || self.recover(&writer, &value["since"]).await.is_err()
                {
                    break;
                }
            }
            match value["type"].as_str() {
                Some("hello") => {
                    let name = clip(value["name"].as_str().unwrap_or("guest"), MAX_NAME);
                    let (before, count) = {
                        let mut names = self.names.lock().expect("room lock");
                        let before = names.get_mut(&id).map(|member| {
                            let before = member.named.then(|| member.name.clone());
                            member.name = name.clone();
                            member.named = true;
                            before
                        });
                        (before, names.len())
                    };
                    let line = match before {
                        None => None,
                        Some(None) => Some(json!({"type": "joined", "name": name, "count": count})),
                        Some(Some(old)) if old != name => Some(
                            json!({"type": "renamed", "from": old, "to": name, "count": count}),
                        ),
                        Some(Some(_)) => None,
                    };
                    if let Some(line) = line {
                        let _ = self.broadcast(line).await;
                    }
                }
                Some("say") => {
                    let text = clip(value["text"].as_str().unwrap_or(""), MAX_TEXT);
                    let name = self
                        .names
                        .lock()
                        .expect("room lock")
                        .get(&id)
                        .map(|member| member.name.clone());
                    let at = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let line = json!({"type": "said", "name": name, "text": text, "at": at});
                    if let Err(e) = self.broadcast(line).await {
                        // The speaker learns that the line did not go out.
                        let unsent =
                            json!({"type": "unsent", "text": text, "reason": e.to_string()});
                        if writer.send_text(&unsent.to_string()).await.is_err() {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        let (left, count) = {
            let mut names = self.names.lock().expect("room lock");
            (names.remove(&id).map(|member| member.name), names.len())
        };
        if let Some(name) = left {
            let _ = self
                .broadcast(json!({"type": "left", "name": name, "count": count}))
                .await;
        }
    }

    /// Sends a member that came back with `since` (`{"epoch", "offset"}`, from the
    /// "pos" of the last line it saw) what it missed, then `recovered`; or
    /// `unrecoverable` with the reason. Nothing without `--redis` or `since`.
    async fn recover(
        &self,
        writer: &sockeye::WebSocketWriter<ServerStream>,
        since: &Value,
    ) -> Result<(), sockeye::Error> {
        let (Some(streams), Some(epoch), Some(offset)) = (
            &self.streams,
            since["epoch"].as_str(),
            since["offset"].as_u64(),
        ) else {
            return Ok(());
        };
        let since = StreamPosition {
            epoch: epoch.to_owned(),
            offset,
        };
        match streams.recover(TOPIC, &since).await {
            Ok(missed) => {
                for message in &missed {
                    writer.send(with_position(message)).await?;
                }
                let done = json!({"type": "recovered", "count": missed.len()});
                writer.send_text(&done.to_string()).await
            }
            Err(e) => {
                let why = json!({"type": "unrecoverable", "reason": e.to_string()});
                writer.send_text(&why.to_string()).await
            }
        }
    }

    /// Publishes a line to the room (every process's, with `--redis`). A Redis outage
    /// loses the line: the error says so (and stderr), and a speaker is told.
    async fn broadcast(&self, value: Value) -> Result<(), sockeye::BrokerError> {
        let line = Message::text(value.to_string());
        let published = self.broker.publish(TOPIC, line).await;
        if let Err(e) = &published {
            eprintln!("sockeye serve: chat line not sent: {e}");
        }
        published.map(|_| ())
    }
}

/// A chat line read from the room's stream, with its position added as "pos", for the
/// page to send back when it reconnects.
fn with_position(message: &StreamMessage) -> Message {
    let Some(Ok(mut value)) = message.message.as_text().map(serde_json::from_str::<Value>) else {
        return message.message.clone();
    };
    value["pos"] = json!({
        "epoch": message.position.epoch,
        "offset": message.position.offset,
    });
    Message::text(value.to_string())
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
