#!/usr/bin/env bash
# The whole test suite, installs included: lint, unit and loopback integration tests
# (with Node `ws` interop), then the Autobahn|Testsuite in both roles.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Node ws peer for the interop tests (npm ci)"
command -v node >/dev/null || { echo "test: error: node is required for the interop tests (apt-get install nodejs npm)"; exit 1; }
(cd crates/sockeye/tests/interop && npm ci --no-audit --no-fund --loglevel=error)

# The Redis broker tests (the library's, and `sockeye serve --redis`) start their own.
command -v redis-server >/dev/null || { echo "test: error: redis-server is required for the Redis broker tests (apt-get install redis-server)"; exit 1; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

step "unit, integration, interop and doc tests"
cargo test --locked --workspace --all-targets
cargo test --locked --workspace --doc

step "the Redis brokers (feature redis) against a real redis-server"
cargo clippy --locked -p sockeye --features redis --all-targets -- -D warnings
cargo test --locked -p sockeye --features redis --test it redis
cargo test --locked -p sockeye --features redis --lib

step "the library crates with default features off (each feature alone, then none)"
cargo clippy --locked -p sockeye -p sockeye-proto --no-default-features --all-targets -- -D warnings
cargo test --locked -p sockeye-proto --no-default-features
cargo test --locked -p sockeye --no-default-features
cargo test --locked -p sockeye --no-default-features --features deflate
cargo test --locked -p sockeye --no-default-features --features rustls

step "Autobahn|Testsuite, server and client role (strict)"
conformance/autobahn.sh both
