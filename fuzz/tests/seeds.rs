//! Replays the seed corpora of the targets whose oracle lives in this crate's library
//! (`fuzz/seeds/<target>/*`) through that oracle, so that `cargo test` keeps the fuzz
//! harness compiling and its seeds passing without a fuzzer. The fuzzer itself runs with
//! `fuzz/run.sh`.

use std::path::Path;

use sockeye_proto::Role;

/// Runs `oracle` on every file under `fuzz/seeds/<target>`; at least one must exist.
fn replay(target: &str, oracle: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{target}: {}", path.display());
        oracle(&data);
        count += 1;
    }
    assert!(count > 0, "{target}: no seeds in {}", dir.display());
}

#[test]
fn connection_client_seeds() {
    replay("connection_client", |data| {
        sockeye_fuzz::connection(Role::Client, data)
    });
}

#[test]
fn connection_server_seeds() {
    replay("connection_server", |data| {
        sockeye_fuzz::connection(Role::Server, data)
    });
}

#[test]
fn connection_deflate_seeds() {
    replay("connection_deflate", |data| {
        sockeye_fuzz::connection_deflate(Role::Server, data)
    });
}

#[test]
fn relay_seeds() {
    replay("relay", sockeye_fuzz::relay);
}
