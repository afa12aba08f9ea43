//! Timers: the close timeout and the heartbeat, as deadlines the caller polls
//! ([`Connection::poll_timeout`]) and hands back ([`Connection::handle_timeout`]).

use std::time::Instant;

use super::{Connection, State};
use crate::frame::OpCode;

/// The heartbeat's clock: when the peer last proved alive, and the ping awaiting proof.
#[derive(Default)]
pub(super) struct HeartbeatClock {
    /// When a frame last arrived (or the first read, before any).
    pub(super) last_activity: Option<Instant>,
    /// When the heartbeat's ping went out, while no frame has arrived since.
    pub(super) ping_sent: Option<Instant>,
}

impl Connection {
    /// When [`Connection::handle_timeout`] is next due.
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Most of the time (a server without a heartbeat, no close handshake under way)
        // there is nothing to compute: answered inline, without a call (the tokio layer
        // asks 3-4 times per echo).
        if self.deadline.is_none() && self.heartbeat.is_none() {
            return None;
        }
        self.next_timeout()
    }

    /// [`Connection::poll_timeout`] when there is a deadline or a heartbeat clock.
    #[inline(never)]
    fn next_timeout(&self) -> Option<Instant> {
        // Once the connection is finished with the transport (closed, all written and,
        // after a failure, drained), the close timeout has nothing left to bound.
        let close = self.deadline.filter(|_| !self.is_finished());
        match (close, self.heartbeat_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: a close handshake that outlived `close_timeout` ends, and so does
    /// the writing of what was left to send when the transport was to be closed: the
    /// transport is to be closed at once ([`Connection::should_abort_transport`]), as
    /// `ws` destroys the socket then. The heartbeat sends its ping after `interval` of
    /// silence, and gives the peer up `timeout` after it
    /// ([`Connection::heartbeat_expired`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.cut_frame_out();
            self.read_closed = true;
            self.state = State::Closed;
            self.close_transport = true;
            self.abort_transport = true;
        }
        if self.heartbeat_deadline().is_some_and(|d| now >= d) {
            let clock = self.heartbeat.as_mut().expect("a heartbeat deadline");
            if clock.ping_sent.is_some() {
                // Nothing arrived since the ping: the peer is gone.
                self.heartbeat_expired = true;
                self.terminate();
            } else {
                clock.ping_sent = Some(now);
                self.write_control(OpCode::Ping, b"");
            }
        }
    }

    /// Whether the heartbeat gave the peer up (no frame within `timeout` of a ping).
    pub fn heartbeat_expired(&self) -> bool {
        self.heartbeat_expired
    }

    fn heartbeat_deadline(&self) -> Option<Instant> {
        let heartbeat = self.config.heartbeat?;
        if self.state != State::Open {
            return None;
        }
        let clock = self.heartbeat.as_ref()?;
        match clock.ping_sent {
            Some(sent) => Some(sent + heartbeat.timeout),
            None => Some(clock.last_activity? + heartbeat.interval),
        }
    }
}
