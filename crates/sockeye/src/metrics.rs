//! Counters through the [`metrics`](https://docs.rs/metrics) facade, with the `metrics`
//! cargo feature; without it every function here is empty and inlined away, so the
//! hot path carries nothing.
//!
//! The names, all under `sockeye_`, with the labels they carry:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `sockeye_connections_opened_total` | counter | `role` | WebSockets opened (handshake done) |
//! | `sockeye_connections_open` | gauge | `role` | WebSockets open now |
//! | `sockeye_send_queue_bytes` | gauge | `role` | bytes queued to send and not yet written to the transports, framing included, over the open connections (each connection's `buffered_amount`, brought up to date as it queues and writes; a connection's part leaves the sum when it ends): memory held for slow readers |
//! | `sockeye_connections_closed_total` | counter | `role`, `code`, `by` | connections ended: the close code received (`none`: no close frame, `abnormal`: the transport ended first) and who closed first (`local`, `peer`, `none`) |
//! | `sockeye_handshake_failures_total` | counter | `status` | upgrade requests refused, by HTTP status |
//! | `sockeye_messages_received_total`, `sockeye_messages_sent_total` | counter | | data messages (text and binary; a message in fragments counts once) |
//! | `sockeye_message_bytes_received_total`, `sockeye_message_bytes_sent_total` | counter | | their payload bytes, before compression |
//! | `sockeye_wire_bytes_read_total`, `sockeye_wire_bytes_written_total` | counter | | bytes read from and written to the transports: framing, compression and control frames included, so with the two above they give the compression ratio |
//! | `sockeye_reads_paused_total` | counter | | times a connection stopped reading because its send queue was over the high-water mark |
//! | `sockeye_sends_dropped_total` | counter | | messages dropped under `WhenFull::Drop` |
//! | `sockeye_send_queue_full_closes_total` | counter | | connections closed with 1008 under `WhenFull::Close` |
//! | `sockeye_protocol_errors_total` | counter | `code` | connections failed for a peer's protocol or limit error, by the close code sent |
//! | `sockeye_heartbeat_timeouts_total` | counter | | connections given up by the heartbeat |
//!
//! Handles are registered with the global recorder at the first use: install the
//! recorder (e.g. `metrics-exporter-prometheus`) before the first connection.

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::OnceLock;

    use ::metrics::{counter, gauge, Counter, Gauge};
    use sockeye_proto::Role;

    /// The label-free handles, registered once.
    struct Handles {
        messages_in: Counter,
        messages_out: Counter,
        message_bytes_in: Counter,
        message_bytes_out: Counter,
        wire_in: Counter,
        wire_out: Counter,
        paused: Counter,
        dropped: Counter,
        full_closes: Counter,
        heartbeat_timeouts: Counter,
        opened: [Counter; 2],
        open: [Gauge; 2],
        send_queue: [Gauge; 2],
    }

    fn role_label(role: Role) -> &'static str {
        match role {
            Role::Server => "server",
            Role::Client => "client",
        }
    }

    fn role_index(role: Role) -> usize {
        match role {
            Role::Server => 0,
            Role::Client => 1,
        }
    }

    fn handles() -> &'static Handles {
        static HANDLES: OnceLock<Handles> = OnceLock::new();
        HANDLES.get_or_init(|| Handles {
            messages_in: counter!("sockeye_messages_received_total"),
            messages_out: counter!("sockeye_messages_sent_total"),
            message_bytes_in: counter!("sockeye_message_bytes_received_total"),
            message_bytes_out: counter!("sockeye_message_bytes_sent_total"),
            wire_in: counter!("sockeye_wire_bytes_read_total"),
            wire_out: counter!("sockeye_wire_bytes_written_total"),
            paused: counter!("sockeye_reads_paused_total"),
            dropped: counter!("sockeye_sends_dropped_total"),
            full_closes: counter!("sockeye_send_queue_full_closes_total"),
            heartbeat_timeouts: counter!("sockeye_heartbeat_timeouts_total"),
            opened: [Role::Server, Role::Client]
                .map(|r| counter!("sockeye_connections_opened_total", "role" => role_label(r))),
            open: [Role::Server, Role::Client]
                .map(|r| gauge!("sockeye_connections_open", "role" => role_label(r))),
            send_queue: [Role::Server, Role::Client]
                .map(|r| gauge!("sockeye_send_queue_bytes", "role" => role_label(r))),
        })
    }

    pub(crate) fn opened(role: Role) {
        let h = handles();
        h.opened[role_index(role)].increment(1);
        h.open[role_index(role)].increment(1.0);
    }

    pub(crate) fn closed(role: Role, code: Option<u16>, abnormal: bool, by: &'static str) {
        handles().open[role_index(role)].decrement(1.0);
        let code = match code {
            Some(code) => code.to_string(),
            None if abnormal => "abnormal".to_owned(),
            None => "none".to_owned(),
        };
        counter!("sockeye_connections_closed_total", "role" => role_label(role), "code" => code, "by" => by)
            .increment(1);
    }

    pub(crate) fn handshake_failed(status: u16) {
        counter!("sockeye_handshake_failures_total", "status" => status.to_string()).increment(1);
    }

    #[inline]
    pub(crate) fn message_received(len: usize, ends_message: bool) {
        let h = handles();
        h.message_bytes_in.increment(len as u64);
        if ends_message {
            h.messages_in.increment(1);
        }
    }

    #[inline]
    pub(crate) fn message_sent(len: usize, ends_message: bool) {
        let h = handles();
        h.message_bytes_out.increment(len as u64);
        if ends_message {
            h.messages_out.increment(1);
        }
    }

    #[inline]
    pub(crate) fn read(n: usize) {
        handles().wire_in.increment(n as u64);
    }

    #[inline]
    pub(crate) fn written(n: usize) {
        handles().wire_out.increment(n as u64);
    }

    pub(crate) fn reads_paused() {
        handles().paused.increment(1);
    }

    pub(crate) fn send_dropped() {
        handles().dropped.increment(1);
    }

    pub(crate) fn send_queue_full_close() {
        handles().full_closes.increment(1);
    }

    pub(crate) fn protocol_error(code: u16) {
        counter!("sockeye_protocol_errors_total", "code" => code.to_string()).increment(1);
    }

    pub(crate) fn heartbeat_timeout() {
        handles().heartbeat_timeouts.increment(1);
    }

    /// A connection's send queue went from `before` to `now` bytes.
    pub(crate) fn send_queue(role: Role, before: usize, now: usize) {
        let gauge = &handles().send_queue[role_index(role)];
        if now >= before {
            gauge.increment((now - before) as f64);
        } else {
            gauge.decrement((before - now) as f64);
        }
    }
}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::missing_const_for_fn)]
mod enabled {
    use sockeye_proto::Role;

    #[inline(always)]
    pub(crate) fn opened(_: Role) {}
    #[inline(always)]
    pub(crate) fn closed(_: Role, _: Option<u16>, _: bool, _: &'static str) {}
    #[inline(always)]
    pub(crate) fn handshake_failed(_: u16) {}
    #[inline(always)]
    pub(crate) fn message_received(_: usize, _: bool) {}
    #[inline(always)]
    pub(crate) fn message_sent(_: usize, _: bool) {}
    #[inline(always)]
    pub(crate) fn read(_: usize) {}
    #[inline(always)]
    pub(crate) fn written(_: usize) {}
    #[inline(always)]
    pub(crate) fn reads_paused() {}
    #[inline(always)]
    pub(crate) fn send_dropped() {}
    #[inline(always)]
    pub(crate) fn send_queue_full_close() {}
    #[inline(always)]
    pub(crate) fn protocol_error(_: u16) {}
    #[inline(always)]
    pub(crate) fn heartbeat_timeout() {}
}

pub(crate) use enabled::*;
