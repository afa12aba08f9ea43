//! `tracing`: a `websocket` span per connection with what the handshake agreed and how the
//! connection ended, and debug events for refused upgrades and protocol errors, seen by a
//! subscriber over real connections.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sockeye::{CloseFrame, Message, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::support::*;

/// What the subscriber saw: every span's fields by id, and every event with its fields
/// and the fields of the span it belongs to.
#[derive(Default)]
struct Seen {
    spans: BTreeMap<u64, (String, BTreeMap<String, String>)>,
    events: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        );
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let name = attrs.metadata().name().to_owned();
        self.0
            .lock()
            .unwrap()
            .spans
            .insert(id.into_u64(), (name, fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some((_, fields)) = seen.spans.get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut seen = self.0.lock().unwrap();
        let span = ctx
            .event_span(event)
            .and_then(|span| seen.spans.get(&span.id().into_u64()))
            .map(|(_, fields)| fields.clone())
            .unwrap_or_default();
        seen.events.push((fields, span));
    }
}

impl Capture {
    /// The events whose message is `message`, with their span's fields.
    fn events(&self, message: &str) -> Vec<(BTreeMap<String, String>, BTreeMap<String, String>)> {
        let seen = self.0.lock().unwrap();
        seen.events
            .iter()
            .filter(|(fields, _)| fields.get("message").map(String::as_str) == Some(message))
            .cloned()
            .collect()
    }
}

/// Set in the process that runs the span test alone.
const ALONE: &str = "SOCKEYE_OBSERVABILITY_ALONE";

#[tokio::test]
async fn a_span_per_connection_and_events_for_refusals_and_errors() {
    // `tracing` caches per call site whether any subscriber is interested: a subscriber
    // set for this thread only (`set_default`) can miss a span whose call site another
    // test's thread, with no subscriber, reached at the same moment. Alone, none does.
    if std::env::var_os(ALONE).is_none() {
        let test = "observability::a_span_per_connection_and_events_for_refusals_and_errors";
        rerun_alone(test, ALONE, Duration::from_secs(60)).await;
        return;
    }
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut config = ServerConfig::default();
    config.handle_protocols = None;
    let server = server(config).await;
    let addr = server.local_addr();

    // A good connection with a subprotocol, closed by the client with 1000.
    let mut request = sockeye::ClientConfig::default();
    request.protocols = vec!["chat".into()];
    let url = format!("ws://{addr}/room?x=1");
    let (client, _) = sockeye::connect_with(&url, request).await.unwrap();
    let mut peer = accept_one(&server).await;
    client
        .close(Some(CloseFrame::new(1000, "done")))
        .await
        .unwrap();
    assert!(matches!(
        within("the close", peer.next()).await,
        Some(Ok(Message::Close(_)))
    ));
    assert!(within("the end", peer.next()).await.is_none());
    // Dropped before its stream was read to the end: it ends (and is logged) then.
    drop(client);

    // A refused upgrade: no Sec-WebSocket-Key.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    within("the refusal", raw.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400"));

    // A protocol error: a reserved opcode.
    let mut raw = raw_client(addr, "/bad").await;
    let mut failing = accept_one(&server).await;
    raw.write_all(&client_frame(true, 0x3, b"")).await.unwrap();
    // The peer does as a peer does: reads the close frame, then ends its stream.
    let peer_side = async {
        let (_, opcode, _) = read_frame(&mut raw).await;
        assert_eq!(opcode, 0x8);
        raw.shutdown().await.unwrap();
    };
    let (failure, ()) = within("the failure", async {
        tokio::join!(failing.next(), peer_side)
    })
    .await;
    assert!(matches!(failure, Some(Err(_))), "{failure:?}");

    let open = capture.events("connection open");
    let server_span = open
        .iter()
        .map(|(_, span)| span)
        .find(|span| span.get("role").map(String::as_str) == Some("server"))
        .expect("the server connection's span");
    assert_eq!(server_span.get("path").map(String::as_str), Some("/room"));
    assert_eq!(
        server_span.get("http").map(String::as_str),
        Some("HTTP/1.1")
    );
    assert_eq!(
        server_span.get("protocol").map(String::as_str),
        Some("chat")
    );
    let client_span = open
        .iter()
        .map(|(_, span)| span)
        .find(|span| span.get("role").map(String::as_str) == Some("client"))
        .expect("the client connection's span");
    assert_eq!(
        client_span.get("url").map(String::as_str),
        Some(url.as_str())
    );

    let ended = capture.events("connection ended");
    let server_end = ended
        .iter()
        .find(|(_, span)| span.get("path").map(String::as_str) == Some("/room"))
        .expect("the server connection's end");
    assert_eq!(
        server_end.0.get("close_code").map(String::as_str),
        Some("1000")
    );
    assert_eq!(
        server_end.0.get("closed_by").map(String::as_str),
        Some("peer")
    );
    assert_eq!(
        server_end.1.get("closed_by").map(String::as_str),
        Some("peer")
    );
    let client_end = ended
        .iter()
        .find(|(_, span)| span.get("role").map(String::as_str) == Some("client"))
        .expect("the client connection's end");
    assert_eq!(
        client_end.0.get("closed_by").map(String::as_str),
        Some("local")
    );

    let refused = capture.events("upgrade refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0.get("status").map(String::as_str), Some("400"));
    assert!(refused[0].1.contains_key("peer"), "{refused:?}");

    let failed = capture.events("failing the connection");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].1.get("path").map(String::as_str), Some("/bad"));
}
