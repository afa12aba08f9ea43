//! The read-buffer pool: one spare read buffer per thread, lent to whichever connection
//! reads next, so that a busy connection reads without allocating and an idle one holds
//! no read buffer at all (the idle-memory budget, BENCHMARKS.md).

use std::cell::Cell;

use bytes::BytesMut;

/// The smallest reservation of a connection's own read buffer: enough for many small
/// frames per system call. (Larger fresh buffers per read made glibc's heap fragment
/// around zlib's state: 300 KB per idle deflate connection, `bench/deflate_memory.sh`.)
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// The thread's spare read buffer: a 16 KiB message and its header in one read.
const SPARE_SIZE: usize = 64 * 1024;

/// The largest read buffer kept as a thread's spare.
const SPARE_MAX: usize = 256 * 1024;

thread_local! {
    /// One read buffer per thread, lent to whichever connection reads next: a busy
    /// connection reuses it without allocating, an idle one holds none (its buffer comes
    /// back here when a read finds nothing).
    /// (An `Option`, so that the slot is built at compile time: no lazy
    /// initialization to check on every read.)
    static SPARE_READ_BUF: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Makes room in a connection's read buffer `buf` for `want` more bytes. An empty buffer
/// first borrows the thread's spare when that is larger, rather than allocating. `big`
/// records that the buffer grew past [`SPARE_MAX`] (a large frame): it is then freed when
/// idle rather than kept as the thread's spare.
///
/// Always inlined into the read (`Inner::poll_fill`), on the hot path of every read: out
/// of line, this and [`release_idle`] cost some 60 instructions more per echoed small
/// message (`bench/instructions.sh`).
#[inline(always)]
pub(super) fn reserve(buf: &mut BytesMut, big: &mut bool, want: usize) {
    if buf.is_empty() {
        // One access to the slot (`LocalKey::set` takes its lazy-initialization path).
        SPARE_READ_BUF.with(|slot| {
            if let Some(spare) = slot.take() {
                if spare.capacity() > buf.capacity() {
                    *buf = spare;
                    *big = false;
                } else {
                    // Ours is as large: leave the spare for the next connection.
                    slot.set(Some(spare));
                }
            }
        });
    }
    buf.reserve(want);
    if buf.capacity() > SPARE_MAX {
        *big = true;
    }
}

/// Takes the empty read buffer of a connection that found nothing to read: an idle
/// connection holds none. The buffer goes back to the thread's spare slot when it is the
/// connection's alone (no message still refers to it), not `big`, and larger than the
/// spare there.
///
/// Always inlined, as [`reserve`] is.
#[inline(always)]
pub(super) fn release_idle(buf: &mut BytesMut, big: bool) {
    let mut buf = std::mem::take(buf);
    if big || !buf.try_reclaim(READ_CHUNK) {
        return;
    }
    SPARE_READ_BUF.with(|slot| {
        let spare = slot.take();
        if spare
            .as_ref()
            .is_some_and(|s| s.capacity() >= buf.capacity())
        {
            slot.set(spare);
        } else {
            if buf.capacity() < SPARE_SIZE {
                // The thread has no spare of full size: make this one.
                buf.reserve(SPARE_SIZE);
            }
            slot.set(Some(buf));
        }
    });
}
