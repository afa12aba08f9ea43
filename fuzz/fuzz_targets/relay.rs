//! Frames relayed piece by piece, as `sockeye echo` does; see `sockeye_fuzz::relay`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockeye_fuzz::relay(data));
