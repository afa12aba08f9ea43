//! Every masking kernel available on this CPU (portable, SSE2, AVX2), `apply_mask` and the
//! one-pass copy and mask (`Kernel::copy`, `copy_masked`) against the byte-at-a-time
//! reference, at any offset, alignment and split.
//!
//! Input: key (4 bytes), offset (u16 LE; only its value modulo 4 matters to the mask, so
//! bits 2..7 also choose the slice's start, 0..32 bytes into its buffer), split point,
//! payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye_proto::mask::{
    apply_mask, apply_mask_naive, apply_mask_portable, copy_masked, mask_kernel, Kernel,
};

/// Fills the buffer around the payload, to catch writes outside the slice.
const GUARD: u8 = 0xa5;

fuzz_target!(
    init: {
        let kernels: Vec<&str> = Kernel::available().map(Kernel::name).collect();
        eprintln!("mask kernels: {kernels:?}, apply_mask uses {}", mask_kernel());
    },
    |data: &[u8]| {
        let [k0, k1, k2, k3, o0, o1, s, payload @ ..] = data else {
            return;
        };
        let key = [*k0, *k1, *k2, *k3];
        let offset = usize::from(u16::from_le_bytes([*o0, *o1]));
        let start = (offset >> 2) % 32;
        let range = start..start + payload.len();
        let mut original = vec![GUARD; start + payload.len() + 32];
        original[range.clone()].copy_from_slice(payload);

        let mut naive = original.clone();
        apply_mask_naive(&mut naive[range.clone()], key, offset);

        let mut fast = original.clone();
        apply_mask(&mut fast[range.clone()], key, offset);
        assert_eq!(fast, naive, "apply_mask ({})", mask_kernel());

        let mut portable = original.clone();
        apply_mask_portable(&mut portable[range.clone()], key, offset);
        assert_eq!(portable, naive, "apply_mask_portable");

        let cut = usize::from(*s).min(payload.len());
        for kernel in Kernel::available() {
            let mut out = original.clone();
            kernel.apply(&mut out[range.clone()], key, offset);
            assert_eq!(out, naive, "{kernel:?}");

            // Masking in two pieces, the second at its own offset, equals masking at once.
            let mut parts = original.clone();
            let (a, b) = parts[range.clone()].split_at_mut(cut);
            kernel.apply(a, key, offset);
            kernel.apply(b, key, offset + cut);
            assert_eq!(parts, naive, "{kernel:?} split at {cut}");
        }

        let mut parts = original.clone();
        let (a, b) = parts[range.clone()].split_at_mut(cut);
        apply_mask(a, key, offset);
        apply_mask(b, key, offset + cut);
        assert_eq!(parts, naive, "apply_mask split at {cut}");

        // The one-pass copy and mask, with each kernel and through `copy_masked`.
        for kernel in Kernel::available() {
            let mut dst = vec![std::mem::MaybeUninit::new(GUARD); payload.len() + 2];
            let out = kernel.copy(&mut dst[1..=payload.len()], payload, key, offset);
            assert_eq!(out, &naive[range.clone()], "{kernel:?} copy");
        }
        let mut dst = vec![std::mem::MaybeUninit::uninit(); payload.len()];
        assert_eq!(copy_masked(&mut dst, payload, key, offset), &naive[range.clone()], "copy_masked");

        // Masking is its own inverse.
        apply_mask(&mut fast[range], key, offset);
        assert_eq!(fast, original);
    }
);
