#!/usr/bin/env bash
# Fan-out throughput side by side (issue "Pub/sub"): one publisher, SUBSCRIBERS subscribers on
# loopback, deliveries per second of server CPU for the Hub, for the raw-TCP limit (one framed
# buffer written to every socket) and for Node `ws`'s README broadcast loop, round after round in
# one run (crates/sockeye/examples/fanout.rs; the Node peer is bench/peers/node_broadcast.js).
#
# usage: bench/fanout.sh [SUBSCRIBERS] [SIZE] [MESSAGES]   (default 1000 64 2000)
#   e.g. bench/fanout.sh 1000 16384 300
# Needs node and npm (the `ws` package comes from crates/sockeye/tests/interop, `npm ci`).
# Builds the example (release) from the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBSCRIBERS=${1:-1000} SIZE=${2:-64} MESSAGES=${3:-2000}
command -v node >/dev/null || { echo "fanout: error: node is required (apt-get install nodejs npm)" >&2; exit 1; }
interop=crates/sockeye/tests/interop
[ -d "$interop/node_modules/ws" ] || (cd "$interop" && npm ci --no-audit --no-fund --loglevel=error)

# 1,000 subscribers and the server's ends: twice as many descriptors, and the Node peer's.
ulimit -n "$(( SUBSCRIBERS * 2 + 256 > $(ulimit -n) ? SUBSCRIBERS * 2 + 256 : $(ulimit -n) ))" 2>/dev/null || true

cargo build --release --quiet -p sockeye --no-default-features --example fanout
echo "node $(node --version), ws $(node -p "require('./$interop/node_modules/ws/package.json').version"), $(git rev-parse --short HEAD 2>/dev/null || echo '-')"
NODE_PATH="$PWD/$interop/node_modules" \
  target/release/examples/fanout "$SUBSCRIBERS" "$SIZE" "$MESSAGES" --node bench/peers/node_broadcast.js
