//! [`Transmit`]: the bytes a connection has queued for the transport.
//!
//! Small frames are encoded into one contiguous buffer. A large payload handed over as
//! [`Bytes`] on the unmasked (server) side is not copied: its frame header is kept inline
//! and the payload is referenced, so the transport writes header and payload with one
//! vectored write (`writev`). [`Transmit`] implements [`bytes::Buf`]; write
//! [`Buf::chunks_vectored`] (or [`Buf::chunk`]) and [`Buf::advance`] by what was written.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::MAX_HEADER_LEN;

/// Payloads from this size on are referenced instead of copied (when they come as
/// [`Bytes`] and need no masking, or a client may mask them in place). Below it a copy
/// and a plain write cost less server CPU than the vectored write, at 1 KiB and still at
/// 16 KiB (BENCHMARKS.md, "Decisions": payloads copied below 64 KiB).
pub const ZERO_COPY_MIN: usize = 64 * 1024;

/// The largest write buffer [`Transmit::shrink`] keeps: an idle connection that has
/// sent small messages holds this much at most.
pub const KEEP_TAIL: usize = 128;

/// Bytes queued for the transport, in order. See the [module](self) docs.
#[derive(Default)]
pub struct Transmit {
    /// Frames with a referenced payload; all of them go before `tail`. Boxed, and
    /// allocated at the first one: an idle connection carries one word for it.
    #[allow(clippy::box_collection)] // deliberately: 8 bytes inline instead of 32
    segments: Option<Box<VecDeque<Segment>>>,
    /// Encoded frames after the last segment.
    tail: BytesMut,
}

/// A frame whose payload is referenced, with whatever was encoded before it.
struct Segment {
    /// Encoded bytes queued before this frame.
    before: Bytes,
    header: [u8; MAX_HEADER_LEN],
    /// The next header byte to write.
    header_pos: u8,
    header_len: u8,
    payload: Bytes,
}

impl Segment {
    fn remaining(&self) -> usize {
        self.before.len() + usize::from(self.header_len - self.header_pos) + self.payload.len()
    }

    fn chunk(&self) -> &[u8] {
        if !self.before.is_empty() {
            &self.before
        } else if self.header_pos < self.header_len {
            &self.header[usize::from(self.header_pos)..usize::from(self.header_len)]
        } else {
            &self.payload
        }
    }

    /// Consumes up to `cnt` bytes; returns how many of `cnt` are left over.
    fn advance(&mut self, mut cnt: usize) -> usize {
        let n = cnt.min(self.before.len());
        self.before.advance(n);
        cnt -= n;
        let header_left = usize::from(self.header_len - self.header_pos);
        let n = cnt.min(header_left);
        // `n` is at most `header_left`, which fits in a u8.
        self.header_pos += n as u8;
        cnt -= n;
        let n = cnt.min(self.payload.len());
        self.payload.advance(n);
        cnt - n
    }
}

impl Transmit {
    /// An empty queue (holds no memory).
    pub fn new() -> Transmit {
        Transmit::default()
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.remaining()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        !self.is_segmented() && self.tail.is_empty()
    }

    /// All segments in order (a VecDeque's two slices).
    fn each_segment(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().flat_map(|segments| segments.iter())
    }

    /// Whether more than one chunk is queued, so that a vectored write pays off.
    pub fn is_segmented(&self) -> bool {
        self.segments.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.segments = None;
        self.tail.clear();
    }

    /// Removes and returns everything queued as one buffer (copying referenced
    /// payloads). For tests and simple transports.
    pub fn take_all(&mut self) -> BytesMut {
        if !self.is_segmented() {
            return self.tail.split();
        }
        let mut all = BytesMut::with_capacity(self.remaining());
        while self.has_remaining() {
            let chunk = self.chunk();
            let n = chunk.len();
            all.put_slice(chunk);
            self.advance(n);
        }
        all
    }

    /// A copy of everything queued, left in place. For tests.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.remaining());
        for segment in self.each_segment() {
            all.extend_from_slice(&segment.before);
            all.extend_from_slice(
                &segment.header[usize::from(segment.header_pos)..usize::from(segment.header_len)],
            );
            all.extend_from_slice(&segment.payload);
        }
        all.extend_from_slice(&self.tail);
        all
    }

    /// Frees the memory held while nothing is queued (for idle connections), but for
    /// a buffer of at most [`KEEP_TAIL`] bytes that is this queue's alone: that one is
    /// kept for the next frame, so that small messages do not cost an allocation each.
    /// A larger buffer is let go, whatever capacity it has left.
    #[inline]
    pub fn shrink(&mut self) {
        // The common case, after every small message: nothing queued, nothing shared,
        // and a buffer small enough to keep. Nothing to do, and no call.
        if self.segments.is_none() && self.tail.is_empty() && self.tail.capacity() <= KEEP_TAIL {
            return;
        }
        self.shrink_slow();
    }

    /// [`Transmit::shrink`] when there may be something to let go.
    #[inline(never)]
    fn shrink_slow(&mut self) {
        if self.is_empty() {
            if !(self.tail.try_reclaim(1) && self.tail.capacity() <= KEEP_TAIL) {
                self.tail = BytesMut::new();
            }
            self.segments = None;
        }
    }

    /// Takes the buffer frames are encoded into, emptied, when nothing is queued and it
    /// is larger than the
    /// [`KEEP_TAIL`] bytes the queue keeps itself: for a transport wrapper to keep
    /// between messages elsewhere (a per-thread spare) rather than free.
    #[inline]
    pub fn take_buffer(&mut self) -> Option<BytesMut> {
        if !self.is_empty() || self.tail.capacity() <= KEEP_TAIL {
            return None;
        }
        self.segments = None;
        Some(std::mem::take(&mut self.tail))
    }

    /// Lends `buffer` (emptied) to encode the next frames into, when nothing is queued
    /// and this queue's own buffer has less room; returns what is not used (`buffer`,
    /// or the smaller buffer it replaced).
    pub fn lend_buffer(&mut self, mut buffer: BytesMut) -> Option<BytesMut> {
        if !self.is_empty() || buffer.capacity() <= self.tail.capacity() {
            return Some(buffer);
        }
        buffer.clear();
        let own = std::mem::replace(&mut self.tail, buffer);
        (own.capacity() > 0).then_some(own)
    }

    /// The buffer that encoded frames are appended to.
    pub(crate) fn tail(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Queues a frame header and a referenced payload after everything queued.
    pub(crate) fn push_shared(&mut self, header: &[u8], payload: Bytes) {
        let before = if self.tail.is_empty() {
            Bytes::new()
        } else {
            self.tail.split().freeze()
        };
        let mut inline = [0u8; MAX_HEADER_LEN];
        inline[..header.len()].copy_from_slice(header);
        self.segments.get_or_insert_default().push_back(Segment {
            before,
            header: inline,
            header_pos: 0,
            // A header is at most MAX_HEADER_LEN (14) bytes.
            header_len: header.len() as u8,
            payload,
        });
    }
}

impl Buf for Transmit {
    fn remaining(&self) -> usize {
        match &self.segments {
            // The common case, asked on every read: no iterator to set up.
            None => self.tail.len(),
            Some(segments) => {
                segments.iter().map(Segment::remaining).sum::<usize>() + self.tail.len()
            }
        }
    }

    fn chunk(&self) -> &[u8] {
        match self.segments.as_ref().and_then(|segments| segments.front()) {
            Some(segment) => segment.chunk(),
            None => &self.tail,
        }
    }

    #[inline]
    fn advance(&mut self, cnt: usize) {
        // The common case: the one buffer written out whole. Emptied in place rather
        // than advanced, so that its start stays where it was and `shrink` keeps it
        // without reclaiming anything.
        if self.segments.is_none() && cnt == self.tail.len() {
            self.tail.clear();
            return;
        }
        self.advance_slow(cnt);
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut push = |slice: &'a [u8]| {
            if slice.is_empty() {
                return true;
            }
            if n == dst.len() {
                return false;
            }
            dst[n] = IoSlice::new(slice);
            n += 1;
            true
        };
        for segment in self.each_segment() {
            let header =
                &segment.header[usize::from(segment.header_pos)..usize::from(segment.header_len)];
            if !(push(&segment.before) && push(header) && push(&segment.payload)) {
                return n;
            }
        }
        push(&self.tail);
        n
    }
}

impl Transmit {
    /// [`Buf::advance`] past segments, or by part of the buffer.
    #[inline(never)]
    fn advance_slow(&mut self, mut cnt: usize) {
        if let Some(segments) = self.segments.as_mut() {
            while let Some(front) = segments.front_mut() {
                cnt = front.advance(cnt);
                if front.remaining() > 0 {
                    assert_eq!(cnt, 0, "advance stopped inside a segment");
                    return;
                }
                segments.pop_front();
                if cnt == 0 {
                    return;
                }
            }
        }
        assert!(cnt <= self.tail.len(), "advance past the end of Transmit");
        self.tail.advance(cnt);
    }
}

impl std::fmt::Debug for Transmit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transmit")
            .field("len", &self.len())
            .field("segments", &self.each_segment().count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Transmit, Vec<u8>) {
        let mut t = Transmit::new();
        let mut expected = Vec::new();
        t.tail().put_slice(b"ab");
        expected.extend_from_slice(b"ab");
        t.push_shared(b"HDR", Bytes::from_static(b"payload-one"));
        expected.extend_from_slice(b"HDRpayload-one");
        t.push_shared(b"H2", Bytes::from_static(b"second"));
        expected.extend_from_slice(b"H2second");
        t.tail().put_slice(b"xyz");
        expected.extend_from_slice(b"xyz");
        (t, expected)
    }

    /// After a small frame the buffer is kept (the next frame goes where it went);
    /// after a large one, or a shared one, it is let go.
    #[test]
    fn shrink_keeps_only_a_small_buffer_of_its_own() {
        let mut t = Transmit::new();
        t.tail().put_slice(&[1; 22]);
        let at = t.chunk().as_ptr();
        t.advance(22);
        t.shrink();
        t.tail().put_slice(&[2; 22]);
        assert_eq!(t.chunk().as_ptr(), at, "the small buffer was reused");
        t.advance(22);
        t.shrink();
        assert!(t.tail.capacity() <= KEEP_TAIL);

        t.tail().put_slice(&[3; KEEP_TAIL + 1]);
        t.advance(KEEP_TAIL + 1);
        t.shrink();
        assert_eq!(t.tail.capacity(), 0, "a larger buffer is let go");
    }

    /// A whole write empties the buffer in place: the next frame goes where the last
    /// one went, at full capacity, with no `shrink` (no reclaim) in between.
    #[test]
    fn a_whole_write_keeps_the_buffer() {
        let mut t = Transmit::new();
        t.tail().put_slice(&[1; 100]);
        let (at, capacity) = (t.chunk().as_ptr(), t.tail.capacity());
        t.advance(100);
        assert!(t.is_empty());
        assert_eq!(
            t.tail.capacity(),
            capacity,
            "emptied in place, not advanced"
        );
        t.tail().put_slice(&[2; 100]);
        assert_eq!(t.chunk().as_ptr(), at, "the next frame reuses it");

        // Written in parts: the same bytes, and the buffer still kept once empty.
        t.advance(40);
        assert_eq!(t.chunk(), &[2; 60]);
        t.advance(60);
        t.shrink();
        assert!(t.tail.capacity() > 0);
    }

    /// A lent buffer is encoded into and can be taken back once written out.
    #[test]
    fn lend_and_take_the_buffer() {
        let mut t = Transmit::new();
        assert!(t.take_buffer().is_none(), "nothing to take");
        let lent = BytesMut::with_capacity(4096);
        let at = lent.as_ptr();
        assert!(t.lend_buffer(lent).is_none());
        t.tail().put_slice(&[1; 1000]);
        assert_eq!(t.chunk().as_ptr(), at);
        assert!(t.take_buffer().is_none(), "not while bytes are queued");
        t.advance(1000);
        let back = t.take_buffer().expect("written out");
        assert_eq!(back.as_ptr(), at);
        assert!(back.is_empty() && back.capacity() >= 4096);
        assert_eq!(t.tail.capacity(), 0);

        let small = BytesMut::with_capacity(16);
        t.tail().reserve(64);
        let returned = t.lend_buffer(small).expect("a smaller buffer is not used");
        assert_eq!(returned.capacity(), 16);
        t.tail().put_slice(&[2; 10]);
        t.advance(10);
        assert!(
            t.take_buffer().is_none(),
            "a buffer of KEEP_TAIL is the queue's"
        );
    }

    #[test]
    fn keeps_order_and_length() {
        let (t, expected) = sample();
        assert_eq!(t.len(), expected.len());
        assert_eq!(t.to_vec(), expected);
        assert!(t.is_segmented());
    }

    #[test]
    fn advancing_by_any_step_yields_the_bytes_in_order() {
        let (_, expected) = sample();
        for step in 1..=expected.len() {
            let (mut t, _) = sample();
            let mut out = Vec::new();
            while t.has_remaining() {
                let chunk = t.chunk();
                let n = chunk.len().min(step);
                out.extend_from_slice(&chunk[..n]);
                t.advance(n);
            }
            assert_eq!(out, expected, "step {step}");
            assert!(t.is_empty());
        }
    }

    #[test]
    fn vectored_writes_of_any_length_yield_the_bytes_in_order() {
        let (_, expected) = sample();
        for max_slices in 1..8 {
            for write_len in [1, 3, 5, 7, 100] {
                let (mut t, _) = sample();
                let mut out = Vec::new();
                while t.has_remaining() {
                    let mut slices = vec![IoSlice::new(&[]); max_slices];
                    let n = t.chunks_vectored(&mut slices);
                    assert!(n > 0);
                    let mut written = 0;
                    for slice in &slices[..n] {
                        let take = slice.len().min(write_len - written);
                        out.extend_from_slice(&slice[..take]);
                        written += take;
                        if written == write_len {
                            break;
                        }
                    }
                    t.advance(written);
                }
                assert_eq!(out, expected, "{max_slices} slices, writes of {write_len}");
            }
        }
    }

    #[test]
    fn take_and_shrink() {
        let (mut t, expected) = sample();
        assert_eq!(&t.take_all()[..], &expected[..]);
        assert!(t.is_empty());
        t.shrink();
        assert!(t.tail.capacity() <= KEEP_TAIL);
        assert!(t.segments.is_none());
    }

    #[test]
    #[should_panic(expected = "advance past the end")]
    fn advance_past_the_end_panics() {
        let (mut t, expected) = sample();
        t.advance(expected.len() + 1);
    }
}
