//! A client fed arbitrary bytes in arbitrary chunks; see `sockeye_fuzz::connection`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye_proto::Role;

fuzz_target!(|data: &[u8]| sockeye_fuzz::connection(Role::Client, data));
