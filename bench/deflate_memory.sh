#!/usr/bin/env bash
# Server RSS per idle connection with permessage-deflate off, with context takeover, and
# without: `sockeye echo --deflate` (one thread) and the idle_memory example.
#   bench/deflate_memory.sh [CONNECTIONS]    (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"
cargo build --release --locked -p sockeye-cli --bin sockeye -p sockeye --example idle_memory
for mode in off takeover takeover-w10 no-takeover; do
  port=$((9200 + RANDOM % 500))
  target/release/sockeye echo --deflate --listen "127.0.0.1:$port" > /dev/null &
  pid=$!
  sleep 0.5
  target/release/examples/idle_memory "$pid" "ws://127.0.0.1:$port/" "$N" "$mode" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
