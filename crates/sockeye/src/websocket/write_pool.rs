//! The write-buffer pool: one spare write buffer per thread, lent to whichever
//! connection encodes a message too large for the small buffer a connection keeps
//! ([`KEEP_TAIL`]), and taken back once that message is written: a connection that
//! sends 1 KiB or 16 KiB messages does not allocate and free a buffer for each, and an
//! idle one still holds none (the idle-memory budget, BENCHMARKS.md).

use std::cell::Cell;

use bytes::BytesMut;
use sockeye_proto::transmit::{KEEP_TAIL, ZERO_COPY_MIN};
use sockeye_proto::Transmit;

/// The largest write buffer kept as a thread's spare.
const SPARE_MAX: usize = 256 * 1024;

/// The most a frame header adds to a payload (RFC 6455 §5.2).
const MAX_HEADER: usize = 14;

thread_local! {
    /// The thread's spare write buffer. (An `Option`, so that the slot is built at
    /// compile time: no lazy initialization to check on every use.)
    static SPARE_WRITE_BUF: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Lends the thread's spare write buffer to `transmit` for a message of `len` payload
/// bytes, when its own buffer is smaller and nothing is queued. Not for small messages
/// (the connection's own buffer) nor large ones (referenced, not copied).
#[inline]
pub(super) fn lend(transmit: &mut Transmit, len: usize) {
    if len + MAX_HEADER <= KEEP_TAIL || len >= ZERO_COPY_MIN {
        return;
    }
    // One access to the slot (`LocalKey::set` takes its lazy-initialization path).
    SPARE_WRITE_BUF.with(|slot| {
        if let Some(spare) = slot.take() {
            if let Some(unused) = transmit.lend_buffer(spare) {
                keep(slot, unused);
            }
        }
    });
}

/// Written out (or over): the write buffer goes back to the thread's spare when it is
/// larger than a connection keeps, then the queue lets go of what it should not hold
/// while idle.
#[inline]
pub(super) fn release(transmit: &mut Transmit) {
    if let Some(buffer) = transmit.take_buffer() {
        SPARE_WRITE_BUF.with(|slot| keep(slot, buffer));
    }
    transmit.shrink();
}

/// Keeps `buffer` as the thread's spare (in `slot`) if it is larger than the spare there
/// (and not too large); frees it otherwise.
fn keep(slot: &Cell<Option<BytesMut>>, buffer: BytesMut) {
    if buffer.capacity() > SPARE_MAX || buffer.capacity() <= KEEP_TAIL {
        return;
    }
    let spare = slot.take();
    if spare
        .as_ref()
        .is_some_and(|s| s.capacity() >= buffer.capacity())
    {
        slot.set(spare);
    } else {
        slot.set(Some(buffer));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Buf;
    use sockeye_proto::{Config, Connection, Role};

    use super::*;

    /// Where the thread's spare write buffer starts, if there is one.
    fn spare_at() -> Option<*const u8> {
        let spare = SPARE_WRITE_BUF.take();
        let at = spare.as_ref().map(|s| s.as_ptr());
        SPARE_WRITE_BUF.set(spare);
        at
    }

    /// The spare is encoded into message after message and comes back once written:
    /// no allocation per message, and the connection, idle, holds it no longer.
    #[test]
    fn the_spare_is_reused_and_an_idle_connection_holds_none() {
        SPARE_WRITE_BUF.set(Some(BytesMut::with_capacity(4096)));
        let at = spare_at().unwrap();
        let mut conn = Connection::new(Role::Server, Config::default());
        for _ in 0..3 {
            lend(conn.transmit(), 1024);
            assert_eq!(spare_at(), None, "lent");
            conn.send_binary(&[7; 1024]).unwrap();
            let transmit = conn.transmit();
            assert_eq!(transmit.chunk().as_ptr(), at, "encoded into the spare");
            transmit.advance(transmit.remaining());
            release(transmit);
            assert_eq!(spare_at(), Some(at), "back once written");
            assert!(conn.transmit().take_buffer().is_none());
        }
        // A small message: the connection's own small buffer, the spare untouched.
        lend(conn.transmit(), 20);
        conn.send_binary(&[7; 20]).unwrap();
        assert_ne!(conn.transmit().chunk().as_ptr(), at);
        assert_eq!(spare_at(), Some(at));
    }
}
