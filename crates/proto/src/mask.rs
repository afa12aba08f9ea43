//! Payload masking (RFC 6455 §5.3).
//!
//! Masking XORs the payload with a 4-byte key repeated. It runs on every client frame
//! and every frame a server receives, so [`apply_mask`] picks the widest kernel the CPU
//! has:
//!
//! - payloads under 24 bytes take the word loop below (8 bytes, then 4, then single
//!   bytes), before any dispatch (setting up a wide loop costs more than it saves there);
//! - on x86_64, an AVX2 kernel (32 bytes per step) when the CPU reports AVX2 at run time
//!   (`is_x86_feature_detected!`, checked once and cached), and an SSE2 kernel (16 bytes
//!   per step; SSE2 is part of the x86_64 baseline) otherwise;
//! - on every other target, the portable loop, 8 bytes (a `u64`) at a time, which the
//!   compiler vectorizes where the target has SIMD as its baseline (NEON on aarch64).
//!
//! Every kernel finishes its tail with narrower steps, so all of them give the same bytes
//! as the byte-at-a-time reference for any length, offset and alignment (differential
//! tests below and the `mask` fuzz target). [`mask_kernel`] names the one in use.
//!
//! A client that sends a payload it cannot mask in place (borrowed, or shared with the
//! caller) copies it into its transmit buffer masked: [`extend_masked`] (and
//! [`copy_masked`] under it) does the copy and the XOR in one pass, with the same
//! kernels, instead of a copy and then [`apply_mask`] over the copy.

use std::mem::MaybeUninit;

use bytes::BytesMut;

/// Payloads shorter than this take the word loop, without dispatch.
const SHORT: usize = 24;

/// XORs `buf` in place with `key`, as if the masking started `offset` bytes into the
/// payload (`offset` matters only modulo 4). Masking twice with the same key and
/// offset restores the data.
///
/// Always inlined: a short payload (a small message's) is masked in place at the call,
/// without a call; longer ones call the kernel.
#[inline(always)]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < SHORT {
        // Short payloads: setting up the wide loop costs more than it saves
        // (`cargo bench -p sockeye-proto -- mask`).
        return xor_words(buf, rotate_key(key, offset));
    }
    apply_mask_wide(buf, rotate_key(key, offset));
}

/// [`apply_mask`] from [`SHORT`] bytes on, with the already rotated `key`.
#[inline(never)]
#[allow(unsafe_code)]
fn apply_mask_wide(buf: &mut [u8], key: [u8; 4]) {
    // SAFETY: `Kernel::selected` returns only a kernel that `is_available` on this CPU
    // (it caches the result of the same detection), which is `run`'s contract.
    unsafe { run(Kernel::selected(), buf, key) }
}

/// Writes `src` masked with `key` to `dst`, as if the masking started `offset` bytes into
/// the payload (as [`apply_mask`]), in one pass; returns `dst`, now initialized.
///
/// # Panics
/// If `dst` and `src` differ in length.
#[inline]
#[allow(unsafe_code)]
pub fn copy_masked<'a>(
    dst: &'a mut [MaybeUninit<u8>],
    src: &[u8],
    key: [u8; 4],
    offset: usize,
) -> &'a mut [u8] {
    assert_eq!(dst.len(), src.len(), "copy_masked: lengths differ");
    let key = rotate_key(key, offset);
    if src.len() < SHORT {
        copy_xor_words(dst, src, key);
    } else {
        // SAFETY: as in `apply_mask`: `Kernel::selected` is available here.
        unsafe { run_copy(Kernel::selected(), dst, src, key) }
    }
    // SAFETY: every kernel writes each of `dst`'s bytes (`dst.len() == src.len()`,
    // asserted above; the differential tests check every length), so all of `dst` is
    // initialized, and `MaybeUninit<u8>` has the layout of `u8`.
    unsafe { &mut *(std::ptr::from_mut::<[MaybeUninit<u8>]>(dst) as *mut [u8]) }
}

/// Appends `src` masked with `key` (from `offset`, as [`apply_mask`]) to `out`: one pass
/// over the bytes, straight into `out`'s spare capacity.
#[inline]
#[allow(unsafe_code)]
pub fn extend_masked(out: &mut BytesMut, src: &[u8], key: [u8; 4], offset: usize) {
    let len = out.len();
    if src.len() < SHORT {
        // Short payloads: a copy and the word loop in place cost less than the word loop
        // into uninitialized memory (`cargo bench -p sockeye-proto -- mask_copy`).
        out.extend_from_slice(src);
        return xor_words(&mut out[len..], rotate_key(key, offset));
    }
    out.reserve(src.len());
    copy_masked(&mut out.spare_capacity_mut()[..src.len()], src, key, offset);
    // SAFETY: `copy_masked` initialized the `src.len()` bytes after `len` (the slice of
    // the spare capacity it was given), which `reserve` made room for.
    unsafe { out.set_len(len + src.len()) }
}

/// The name of the kernel [`apply_mask`] uses for payloads of 24 bytes and more on this
/// machine: `"avx2"`, `"sse2"` or `"portable"`.
pub fn mask_kernel() -> &'static str {
    Kernel::selected().name()
}

/// The key as seen from `offset` bytes into the payload.
#[inline]
pub fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    // In little-endian order the key's first byte is the word's lowest, so moving the
    // bytes `offset % 4` places to the front is a right rotation of the word: one
    // instruction, where `<[u8]>::rotate_left` compiles to calls to `memcpy`.
    let shift = 8 * (offset % 4) as u32;
    u32::from_le_bytes(key).rotate_right(shift).to_le_bytes()
}

/// The reference byte-at-a-time masking, for differential tests and fuzzing.
#[doc(hidden)]
pub fn apply_mask_naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(i + offset) % 4];
    }
}

/// The portable kernel (8 bytes at a time) at any length, for differential tests,
/// fuzzing and benchmarks; the fallback of [`apply_mask`] off x86_64.
#[doc(hidden)]
pub fn apply_mask_portable(buf: &mut [u8], key: [u8; 4], offset: usize) {
    xor_words(buf, rotate_key(key, offset));
}

/// A masking kernel, to test, fuzz and benchmark each one explicitly. [`apply_mask`]
/// uses [`Kernel::selected`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// A `u64` at a time; every target.
    Portable,
    /// 16 bytes at a time; x86_64 (baseline there).
    Sse2,
    /// 32 bytes at a time; x86_64 CPUs that report AVX2.
    Avx2,
}

impl Kernel {
    /// Every kernel, available here or not.
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Sse2, Kernel::Avx2];

    /// `"portable"`, `"sse2"` or `"avx2"`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Sse2 => "sse2",
            Kernel::Avx2 => "avx2",
        }
    }

    /// Whether this kernel can run on this target and CPU.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Sse2 => cfg!(target_arch = "x86_64"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 => false,
        }
    }

    /// The kernels that can run here, narrowest first.
    pub fn available() -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available())
    }

    /// The widest available kernel, the one [`apply_mask`] uses. Detected on the first
    /// call, then one relaxed atomic load.
    #[inline]
    pub fn selected() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::atomic::Ordering;
            match SELECTED.load(Ordering::Relaxed) {
                SELECTED_SSE2 => Kernel::Sse2,
                SELECTED_AVX2 => Kernel::Avx2,
                _ => detect(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Portable
    }

    /// Masks `buf` with this kernel at any length (no short-payload shortcut), as
    /// [`apply_mask`] would.
    ///
    /// # Panics
    /// If the kernel is not [available](Kernel::is_available) here.
    #[allow(unsafe_code)]
    pub fn apply(self, buf: &mut [u8], key: [u8; 4], offset: usize) {
        assert!(
            self.is_available(),
            "the {} masking kernel is not available on this CPU",
            self.name()
        );
        // SAFETY: checked just above, which is `run`'s contract.
        unsafe { run(self, buf, rotate_key(key, offset)) }
    }

    /// [`copy_masked`] with this kernel at any length (no short-payload shortcut).
    ///
    /// # Panics
    /// If the kernel is not [available](Kernel::is_available) here, or if `dst` and
    /// `src` differ in length.
    #[allow(unsafe_code)]
    pub fn copy<'a>(
        self,
        dst: &'a mut [MaybeUninit<u8>],
        src: &[u8],
        key: [u8; 4],
        offset: usize,
    ) -> &'a mut [u8] {
        assert!(
            self.is_available(),
            "the {} masking kernel is not available on this CPU",
            self.name()
        );
        assert_eq!(dst.len(), src.len(), "Kernel::copy: lengths differ");
        // SAFETY: checked just above, which is `run_copy`'s contract.
        unsafe { run_copy(self, dst, src, rotate_key(key, offset)) }
        // SAFETY: as in `copy_masked`: the kernel wrote all of `dst`.
        unsafe { &mut *(std::ptr::from_mut::<[MaybeUninit<u8>]>(dst) as *mut [u8]) }
    }
}

/// `Kernel::selected`'s cache: not yet detected, SSE2, or AVX2.
#[cfg(target_arch = "x86_64")]
static SELECTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
#[cfg(target_arch = "x86_64")]
const SELECTED_SSE2: u8 = 1;
#[cfg(target_arch = "x86_64")]
const SELECTED_AVX2: u8 = 2;

/// Detects the widest kernel and caches it. Racing first calls store the same value.
#[cfg(target_arch = "x86_64")]
#[cold]
fn detect() -> Kernel {
    use std::sync::atomic::Ordering;
    let (kernel, code) = if Kernel::Avx2.is_available() {
        (Kernel::Avx2, SELECTED_AVX2)
    } else {
        (Kernel::Sse2, SELECTED_SSE2)
    };
    SELECTED.store(code, Ordering::Relaxed);
    kernel
}

/// Masks `buf` with `kernel` and the already rotated `key`.
///
/// # Safety
/// `kernel.is_available()` must hold: the AVX2 kernel executes AVX2 instructions.
#[inline]
#[allow(unsafe_code)]
unsafe fn run(kernel: Kernel, buf: &mut [u8], key: [u8; 4]) {
    #[cfg(test)]
    tests::LAST_KERNEL.set(Some(kernel));
    match kernel {
        Kernel::Portable => xor_words(buf, key),
        #[cfg(target_arch = "x86_64")]
        Kernel::Sse2 => x86::xor_sse2(buf, key),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees `Kernel::Avx2.is_available()`, i.e. that
        // `is_x86_feature_detected!("avx2")` returned true in this process (CPU and OS
        // support both checked), which is all `xor_avx2`'s `target_feature` requires.
        Kernel::Avx2 => unsafe { x86::xor_avx2(buf, key) },
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Sse2 | Kernel::Avx2 => unreachable!("not available off x86_64"),
    }
}

/// Writes `src` masked with `kernel` and the already rotated `key` to `dst` (of the same
/// length).
///
/// # Safety
/// `kernel.is_available()` must hold: the AVX2 kernel executes AVX2 instructions.
#[inline]
#[allow(unsafe_code)]
unsafe fn run_copy(kernel: Kernel, dst: &mut [MaybeUninit<u8>], src: &[u8], key: [u8; 4]) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(test)]
    tests::LAST_KERNEL.set(Some(kernel));
    match kernel {
        Kernel::Portable => copy_xor_words(dst, src, key),
        #[cfg(target_arch = "x86_64")]
        Kernel::Sse2 => x86::copy_xor_sse2(dst, src, key),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `run`.
        Kernel::Avx2 => unsafe { x86::copy_xor_avx2(dst, src, key) },
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Sse2 | Kernel::Avx2 => unreachable!("not available off x86_64"),
    }
}

/// The byte loop of the copying kernels. `key` is already rotated.
#[inline]
fn copy_xor_bytes(dst: &mut [MaybeUninit<u8>], src: &[u8], key: [u8; 4]) {
    for (i, (out, byte)) in dst.iter_mut().zip(src).enumerate() {
        out.write(byte ^ key[i & 3]);
    }
}

/// The portable copying kernel: a `u64` at a time, then bytes. `key` is already rotated.
#[inline]
fn copy_xor_words(dst: &mut [MaybeUninit<u8>], src: &[u8], key: [u8; 4]) {
    let key32 = u32::from_ne_bytes(key);
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    let mut outs = dst.chunks_exact_mut(8);
    let mut ins = src.chunks_exact(8);
    for (out, chunk) in (&mut outs).zip(&mut ins) {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks_exact gives 8 bytes"));
        for (o, b) in out.iter_mut().zip((word ^ key64).to_ne_bytes()) {
            o.write(b);
        }
    }
    // The words consumed a multiple of 8 bytes, so the key phase is unchanged.
    copy_xor_bytes(outs.into_remainder(), ins.remainder(), key);
}

/// The portable kernel: a `u64` at a time, then a `u32`, then bytes. `key` is already
/// rotated. Also the kernel of short payloads on every target.
#[inline]
fn xor_words(buf: &mut [u8], key: [u8; 4]) {
    let key32 = u32::from_ne_bytes(key);
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("chunks_exact gives 8"));
        chunk.copy_from_slice(&(word ^ key64).to_ne_bytes());
    }
    // The words consumed a multiple of 8 bytes, so the key phase is unchanged; a
    // 4-byte step keeps it too.
    let rest = chunks.into_remainder();
    // Under 8 bytes are left: 4 of them (bit 2 of the length) make a word.
    let (word, tail) = rest.split_at_mut(rest.len() & 4);
    if let Ok(word) = <&mut [u8; 4]>::try_from(word) {
        *word = (u32::from_ne_bytes(*word) ^ key32).to_ne_bytes();
    }
    for (byte, k) in tail.iter_mut().zip(key) {
        *byte ^= k;
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::mem::MaybeUninit;

    use core::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_storeu_si256, _mm256_xor_si256,
        _mm_loadu_si128, _mm_storeu_si128, _mm_xor_si128,
    };

    // The SSE2 kernel runs its intrinsics without run-time detection: x86_64 always has
    // SSE2, and the compiler enables it for every x86_64 target.
    const _: () = assert!(cfg!(target_feature = "sse2"));

    /// 16 bytes at a time, then the portable kernel for the last 0..16. `key` is
    /// already rotated.
    #[inline]
    pub(super) fn xor_sse2(buf: &mut [u8], key: [u8; 4]) {
        let lanes = [u32::from_ne_bytes(key); 4];
        // SAFETY: SSE2 is enabled at compile time (asserted above), so the instruction
        // exists on every CPU this code runs on; `lanes` is 16 readable bytes and
        // `_mm_loadu_si128` has no alignment requirement.
        let key128 = unsafe { _mm_loadu_si128(lanes.as_ptr().cast::<__m128i>()) };
        let mut chunks = buf.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr().cast::<__m128i>();
            // SAFETY: SSE2 as above. `chunk` is exactly 16 bytes of a `&mut [u8]`, so `p`
            // is valid for a 16-byte read and write and nothing else aliases it; the
            // unaligned load and store need no alignment.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), key128)) }
        }
        // 16-byte steps keep the key phase.
        super::xor_words(chunks.into_remainder(), key);
    }

    /// 32 bytes at a time, then the SSE2 kernel for the last 0..32. `key` is already
    /// rotated.
    ///
    /// # Safety
    /// The CPU must support AVX2 (`is_x86_feature_detected!("avx2")`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn xor_avx2(buf: &mut [u8], key: [u8; 4]) {
        let lanes = [u32::from_ne_bytes(key); 8];
        // SAFETY: the caller guarantees AVX2; `lanes` is 32 readable bytes and
        // `_mm256_loadu_si256` has no alignment requirement.
        let key256 = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast::<__m256i>()) };
        let mut chunks = buf.chunks_exact_mut(32);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: AVX2 as above. `chunk` is exactly 32 bytes of a `&mut [u8]`, so `p`
            // is valid for a 32-byte read and write and nothing else aliases it; the
            // unaligned load and store need no alignment.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), key256)) }
        }
        // 32-byte steps keep the key phase.
        xor_sse2(chunks.into_remainder(), key);
    }

    /// `xor_sse2` from `src` into `dst` (of the same length).
    #[inline]
    pub(super) fn copy_xor_sse2(dst: &mut [MaybeUninit<u8>], src: &[u8], key: [u8; 4]) {
        let lanes = [u32::from_ne_bytes(key); 4];
        // SAFETY: as in `xor_sse2`.
        let key128 = unsafe { _mm_loadu_si128(lanes.as_ptr().cast::<__m128i>()) };
        let mut outs = dst.chunks_exact_mut(16);
        let mut ins = src.chunks_exact(16);
        for (out, chunk) in (&mut outs).zip(&mut ins) {
            // SAFETY: SSE2 as in `xor_sse2`. `chunk` is exactly 16 readable bytes and `out`
            // exactly 16 writable ones of a `&mut` slice (`MaybeUninit<u8>` has the layout
            // of `u8`, and writing initializes it); unaligned load and store.
            unsafe {
                let data = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                _mm_storeu_si128(
                    out.as_mut_ptr().cast::<__m128i>(),
                    _mm_xor_si128(data, key128),
                );
            }
        }
        // 16-byte steps keep the key phase; equal lengths leave equal remainders.
        super::copy_xor_words(outs.into_remainder(), ins.remainder(), key);
    }

    /// `xor_avx2` from `src` into `dst` (of the same length).
    ///
    /// # Safety
    /// The CPU must support AVX2 (`is_x86_feature_detected!("avx2")`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_xor_avx2(dst: &mut [MaybeUninit<u8>], src: &[u8], key: [u8; 4]) {
        let lanes = [u32::from_ne_bytes(key); 8];
        // SAFETY: as in `xor_avx2`.
        let key256 = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast::<__m256i>()) };
        let mut outs = dst.chunks_exact_mut(32);
        let mut ins = src.chunks_exact(32);
        for (out, chunk) in (&mut outs).zip(&mut ins) {
            // SAFETY: AVX2 as above. `chunk` is exactly 32 readable bytes and `out` exactly
            // 32 writable ones of a `&mut` slice (`MaybeUninit<u8>` has the layout of
            // `u8`, and writing initializes it); unaligned load and store.
            unsafe {
                let data = _mm256_loadu_si256(chunk.as_ptr().cast::<__m256i>());
                _mm256_storeu_si256(
                    out.as_mut_ptr().cast::<__m256i>(),
                    _mm256_xor_si256(data, key256),
                );
            }
        }
        // 32-byte steps keep the key phase; equal lengths leave equal remainders.
        copy_xor_sse2(outs.into_remainder(), ins.remainder(), key);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// The kernel `run` last executed on this thread (tests run on many threads).
        pub(super) static LAST_KERNEL: Cell<Option<Kernel>> = const { Cell::new(None) };
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
    #[test]
    fn rfc_example() {
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        for kernel in Kernel::available() {
            let mut data = *b"Hello";
            kernel.apply(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
            assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58], "{kernel:?}");
        }
    }

    /// The kernels this machine must have: SSE2 on every x86_64, AVX2 where the CPU says
    /// so (checked independently of `Kernel`, through /proc/cpuinfo on Linux).
    #[test]
    fn selection_matches_the_cpu() {
        let available: Vec<Kernel> = Kernel::available().collect();
        assert_eq!(available[0], Kernel::Portable);
        assert_eq!(available.last(), Some(&Kernel::selected()));
        assert_eq!(mask_kernel(), Kernel::selected().name());
        if cfg!(target_arch = "x86_64") {
            assert!(available.contains(&Kernel::Sse2));
            #[cfg(target_os = "linux")]
            {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                if cpuinfo.split_whitespace().any(|flag| flag == "avx2") {
                    assert_eq!(Kernel::selected(), Kernel::Avx2);
                    assert_eq!(mask_kernel(), "avx2");
                }
            }
        } else {
            assert_eq!(available, [Kernel::Portable]);
        }
    }

    /// `apply_mask` takes the word loop under 24 bytes and the selected kernel from 24 on.
    #[test]
    fn apply_mask_dispatches_by_length() {
        let key = [9, 8, 7, 6];
        for len in [0, 1, 23, 24, 31, 32, 33, 300, 4096] {
            LAST_KERNEL.set(None);
            let mut data = pattern(len);
            apply_mask(&mut data, key, 3);
            let expected = (len >= SHORT).then(Kernel::selected);
            assert_eq!(LAST_KERNEL.get(), expected, "len {len}");
        }
        LAST_KERNEL.set(None);
        Kernel::Portable.apply(&mut pattern(100), key, 0);
        assert_eq!(LAST_KERNEL.get(), Some(Kernel::Portable));
    }

    /// Every available kernel, and `apply_mask`, against the byte-at-a-time reference:
    /// every length 0..=300, offsets 0..8, starts 0..4 bytes into the allocation.
    #[test]
    fn every_kernel_matches_naive() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let kernels: Vec<Kernel> = Kernel::available().collect();
        for start in 0..4 {
            for len in 0..=300 {
                let mut original = vec![0xa5; start + len + 3];
                original[start..start + len].copy_from_slice(&pattern(len));
                for offset in 0..8 {
                    let mut naive = original.clone();
                    apply_mask_naive(&mut naive[start..start + len], key, offset);
                    let at = format!("start {start} len {len} offset {offset}");
                    for &kernel in &kernels {
                        let mut out = original.clone();
                        LAST_KERNEL.set(None);
                        kernel.apply(&mut out[start..start + len], key, offset);
                        assert_eq!(LAST_KERNEL.get(), Some(kernel), "{at}");
                        // The bytes around the slice stay untouched.
                        assert_eq!(out, naive, "{kernel:?} {at}");
                    }
                    let mut portable = original.clone();
                    apply_mask_portable(&mut portable[start..start + len], key, offset);
                    assert_eq!(portable, naive, "apply_mask_portable {at}");
                    let mut out = original.clone();
                    apply_mask(&mut out[start..start + len], key, offset);
                    assert_eq!(out, naive, "apply_mask {at}");
                }
            }
        }
    }

    /// Masking in two pieces, the second at its own offset, equals masking at once, with
    /// every kernel (the pieces land on every alignment and length class).
    #[test]
    fn split_masking_equals_whole() {
        let key = [1, 2, 3, 4];
        let original = pattern(300);
        let mut whole = original.clone();
        apply_mask_naive(&mut whole, key, 0);
        for kernel in Kernel::available() {
            for cut in 0..=original.len() {
                let mut parts = original.clone();
                let (a, b) = parts.split_at_mut(cut);
                kernel.apply(a, key, 0);
                kernel.apply(b, key, cut);
                assert_eq!(parts, whole, "{kernel:?} cut {cut}");
            }
        }
        for cut in 0..=original.len() {
            let mut parts = original.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(parts, whole, "apply_mask cut {cut}");
        }
    }

    /// The copying kernels, `copy_masked` and `extend_masked` against copying and then
    /// masking with the reference: every length 0..=300, offsets 0..8, sources starting
    /// 0..4 bytes into their allocation; the bytes around the destination stay untouched.
    #[test]
    #[allow(unsafe_code)] // reads the guard bytes back
    fn every_copying_kernel_matches_naive() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let kernels: Vec<Kernel> = Kernel::available().collect();
        for start in 0..4 {
            for len in 0..=300 {
                let mut buffer = vec![0u8; start + len];
                buffer[start..].copy_from_slice(&pattern(len));
                let src = &buffer[start..];
                for offset in 0..8 {
                    let mut naive = src.to_vec();
                    apply_mask_naive(&mut naive, key, offset);
                    let at = format!("start {start} len {len} offset {offset}");
                    for &kernel in &kernels {
                        let mut dst = vec![MaybeUninit::new(0x5a_u8); len + 3];
                        LAST_KERNEL.set(None);
                        let out = kernel.copy(&mut dst[1..=len], src, key, offset);
                        assert_eq!(out, &naive[..], "{kernel:?} {at}");
                        assert_eq!(LAST_KERNEL.get(), Some(kernel), "{at}");
                        // SAFETY: `dst` was made of initialized bytes.
                        let guards = [dst[0], dst[len + 1], dst[len + 2]]
                            .map(|b| unsafe { b.assume_init() });
                        assert_eq!(guards, [0x5a; 3], "{kernel:?} {at}");
                    }
                    let mut dst = vec![MaybeUninit::uninit(); len];
                    assert_eq!(copy_masked(&mut dst, src, key, offset), &naive[..], "{at}");
                    let mut out = BytesMut::from(&b"head"[..]);
                    extend_masked(&mut out, src, key, offset);
                    assert_eq!(&out[..4], b"head", "{at}");
                    assert_eq!(&out[4..], &naive[..], "extend_masked {at}");
                }
            }
        }
    }

    /// `copy_masked` takes the word loop under 24 bytes and the selected kernel from 24 on.
    #[test]
    fn copy_masked_dispatches_by_length() {
        for len in [0, 1, 23, 24, 31, 32, 33, 300, 4096] {
            LAST_KERNEL.set(None);
            let src = pattern(len);
            let mut dst = vec![MaybeUninit::uninit(); len];
            copy_masked(&mut dst, &src, [9, 8, 7, 6], 3);
            let expected = (len >= SHORT).then(Kernel::selected);
            assert_eq!(LAST_KERNEL.get(), expected, "len {len}");
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn copy_masked_needs_equal_lengths() {
        copy_masked(&mut [MaybeUninit::uninit(); 40], &[0; 41], [1, 2, 3, 4], 0);
    }

    #[test]
    fn masking_twice_restores() {
        let original = pattern(1000);
        for kernel in Kernel::available() {
            let mut data = original.clone();
            kernel.apply(&mut data, [0xff, 0, 0x80, 1], 5);
            assert_ne!(data, original);
            kernel.apply(&mut data, [0xff, 0, 0x80, 1], 5);
            assert_eq!(data, original, "{kernel:?}");
        }
    }

    #[test]
    #[cfg(not(target_arch = "x86_64"))]
    #[should_panic(expected = "not available")]
    fn unavailable_kernel_panics() {
        Kernel::Avx2.apply(&mut [0; 64], [1, 2, 3, 4], 0);
    }
}
