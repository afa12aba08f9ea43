//! Payload masking (RFC 6455 §5.3).
//!
//! Masking XORs the payload with a 4-byte key repeated. It runs on every client frame
//! and every frame a server receives, so it is done a machine word at a time; the
//! compiler turns the 8-byte loop into SIMD where the target has it.

/// XORs `buf` in place with `key`, as if the masking started `offset` bytes into the
/// payload (`offset` matters only modulo 4). Masking twice with the same key and
/// offset restores the data.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < 24 {
        // Short payloads: setting up the word loop costs more than it saves
        // (`cargo bench -p sockeye-proto -- mask`).
        return apply_mask_naive(buf, key, offset);
    }
    let key = rotate_key(key, offset);
    let key32 = u32::from_ne_bytes(key);
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks_exact gives 8 bytes"));
        chunk.copy_from_slice(&(word ^ key64).to_ne_bytes());
    }
    // The words consumed a multiple of 8 bytes, so the key phase is unchanged.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// The key as seen from `offset` bytes into the payload.
#[inline]
pub fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = key;
    rotated.rotate_left(offset % 4);
    rotated
}

/// The reference byte-at-a-time masking, for differential tests and fuzzing.
#[doc(hidden)]
pub fn apply_mask_naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(i + offset) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
    #[test]
    fn rfc_example() {
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn matches_naive_for_all_lengths_and_offsets() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for len in 0..70 {
            for offset in 0..8 {
                let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = original.clone();
                let mut naive = original.clone();
                apply_mask(&mut fast, key, offset);
                apply_mask_naive(&mut naive, key, offset);
                assert_eq!(fast, naive, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn split_masking_equals_whole() {
        let key = [1, 2, 3, 4];
        let original: Vec<u8> = (0..100u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        for cut in 0..100 {
            let mut parts = original.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(parts, whole, "cut {cut}");
        }
    }
}
