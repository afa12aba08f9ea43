//! A server with permessage-deflate negotiated, fed arbitrary (compressed) frames in
//! arbitrary chunks; see `sockeye_fuzz::connection_deflate`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye_proto::Role;

fuzz_target!(|data: &[u8]| sockeye_fuzz::connection_deflate(Role::Server, data));
