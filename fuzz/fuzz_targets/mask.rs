//! The word-at-a-time mask against the byte-at-a-time reference, at any offset and split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye_proto::mask::{apply_mask, apply_mask_naive};

fuzz_target!(|data: &[u8]| {
    let [k0, k1, k2, k3, o0, o1, s, payload @ ..] = data else {
        return;
    };
    let key = [*k0, *k1, *k2, *k3];
    let offset = usize::from(u16::from_le_bytes([*o0, *o1]));
    let mut fast = payload.to_vec();
    let mut naive = payload.to_vec();
    apply_mask(&mut fast, key, offset);
    apply_mask_naive(&mut naive, key, offset);
    assert_eq!(fast, naive);

    // Masking in two pieces, the second at its own offset, equals masking at once.
    let cut = usize::from(*s).min(payload.len());
    let mut parts = payload.to_vec();
    let (a, b) = parts.split_at_mut(cut);
    apply_mask(a, key, offset);
    apply_mask(b, key, offset + cut);
    assert_eq!(parts, fast);

    // Masking is its own inverse.
    apply_mask(&mut fast, key, offset);
    assert_eq!(fast, payload);
});
