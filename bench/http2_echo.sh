#!/usr/bin/env bash
# Echo over HTTP/2 (RFC 8441) beside HTTP/1.1: `sockeye bench` against `sockeye echo`,
# which serves both on one port (HTTP/2 with prior knowledge, h2c, on plain TCP).
#
# usage: bench/http2_echo.sh [ROUNDS] [SECS] [SIZE]
#   ROUNDS  alternating rounds over the scenarios (default 3), SECS measured seconds per
#   run (default 3), SIZE message bytes (default 1024)
#
# Scenarios, each a closed loop with one message in flight per WebSocket:
#   h1-1      1 WebSocket on 1 HTTP/1.1 connection
#   h2-1x1    1 WebSocket on 1 HTTP/2 connection
#   h1-100    100 WebSockets, 100 HTTP/1.1 connections
#   h2-1x100  100 WebSockets as streams of 1 HTTP/2 connection
#   h2-10x10  100 WebSockets, 10 streams on each of 10 HTTP/2 connections
#
# The server runs on core 0, the client on core 1 (taskset). Prints one line per run:
# scenario, messages per second, p50 and p99 latency (µs), server CPU seconds per
# million messages (from /proc), client CPU percent. Every run is bounded by SECS plus a
# 1 s warm-up; the server is stopped by its PID at the end.
set -euo pipefail

ROUNDS=${1:-3}
SECS=${2:-3}
SIZE=${3:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SOCKEYE=$ROOT/target/release/sockeye
(cd "$ROOT" && cargo build --release -q -p sockeye-cli)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The server's user+system CPU ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

PORT=$(free_port)
taskset -c 0 "$SOCKEYE" echo --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
sleep 0.5
TICK=$(getconf CLK_TCK)

run() {
    local name=$1
    shift
    local before after json
    before=$(cpu_ticks "$SERVER")
    json=$(timeout $((SECS + 30)) taskset -c 1 "$SOCKEYE" bench "ws://127.0.0.1:$PORT/" \
        -s "$SIZE" -d "$SECS" --warmup 1 --json "$@")
    after=$(cpu_ticks "$SERVER")
    python3 - "$name" "$json" "$before" "$after" "$TICK" "$SECS" <<'PY'
import json, sys
name, raw, before, after, tick, secs = sys.argv[1:]
s = json.loads(raw)
cpu = (int(after) - int(before)) / int(tick)
msgs = s["messages"]
# The server's CPU includes the 1 s warm-up: scale it to the measured share.
per_million = cpu * float(secs) / (float(secs) + 1) / msgs * 1e6 if msgs else 0
print(f'{name:9} {s["msgs_per_s"]:>9.0f} msgs/s  p50 {s["latency_us"]["p50"]:>6} µs  '
      f'p99 {s["latency_us"]["p99"]:>6} µs  server {per_million:6.2f} CPU-s/M msgs  '
      f'client {s["client_cpu_percent"]}%  errors {s["errors"]}')
PY
}

for round in $(seq "$ROUNDS"); do
    echo "# round $round, $SIZE B messages, $SECS s"
    run h1-1 -c 1
    run h2-1x1 -c 1 --http2 --streams 1
    run h1-100 -c 100
    run h2-1x100 -c 1 --http2 --streams 100
    run h2-10x10 -c 10 --http2 --streams 10
done
