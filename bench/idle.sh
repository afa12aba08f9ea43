#!/usr/bin/env bash
# Idle connections: N upgraded WebSocket connections opened by `sockeye bench --idle N` and
# held; the server's user space memory per connection (its VmRSS growth / N) and the time
# to establish them.
#
# usage: bench/idle.sh [N] [SERVER]
#   N       connections (default 10000)
#   SERVER  echo         `sockeye echo` (the library's server, mimalloc; the default)
#           example-ct   the README's server (crates/sockeye/examples/echo_server.rs, glibc
#                        malloc), tokio's current-thread runtime
#           example-mt   the same on the multi-thread runtime
# env: SOCKEYE, EXAMPLE  the binaries (default target/release/..., built first)
#      IDLE_SOURCES      loopback source addresses (default: one per 5,000 connections)
#      IDLE_HOLD         seconds the connections are held after the last one is open (10)
#
# Each process needs N descriptors and a few: the script raises `ulimit -n` to N + 64 and
# stops with the limit to raise if it cannot (RLIMIT_NOFILE's hard limit; above 1,048,576
# also fs.nr_open). Past about 28,000 connections an address pair runs out of ephemeral
# ports (net.ipv4.ip_local_port_range), and bind() slows down well before, hence the
# several source addresses of --idle.
# RSS is user space only: the kernel's socket memory (both ends' buffers and structures,
# on loopback) is not in it.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-10000}
SERVER=${2:-echo}
case "$N" in ''|*[!0-9]*) echo "usage: bench/idle.sh [N] [echo|example-ct|example-mt]" >&2; exit 2 ;; esac
HOLD=${IDLE_HOLD:-10}
case "$HOLD" in ''|*[!0-9]*) echo "idle: IDLE_HOLD is whole seconds" >&2; exit 2 ;; esac
[ "$HOLD" -ge 5 ] || { echo "idle: IDLE_HOLD must be at least 5 (the readings take 2 s and more)" >&2; exit 2; }

if [ -z "${SOCKEYE:-}" ]; then
  cargo build --release --locked -q -p sockeye-cli --bin sockeye
  SOCKEYE=target/release/sockeye
fi
case "$SERVER" in
  echo) server_cmd=("$SOCKEYE" echo --listen 127.0.0.1:0) ;;
  example-ct|example-mt)
    if [ -z "${EXAMPLE:-}" ]; then
      cargo build --release --locked -q -p sockeye --example echo_server
      EXAMPLE=target/release/examples/echo_server
    fi
    runtime=current; [ "$SERVER" = example-mt ] && runtime=multi
    server_cmd=("$EXAMPLE" --listen 127.0.0.1:0 --runtime "$runtime") ;;
  *) echo "usage: bench/idle.sh [N] [echo|example-ct|example-mt]" >&2; exit 2 ;;
esac

need=$((N + 64))
if [ "$(ulimit -n)" -lt "$need" ]; then
  ulimit -n "$need" 2>/dev/null || {
    echo "idle: $N connections need 'ulimit -n $need'; the hard limit here is $(ulimit -Hn)" >&2
    exit 2
  }
fi

OUT=$(mktemp -d "${TMPDIR:-/tmp}/sockeye-idle.XXXXXX")
server=""; bench=""
cleanup() {
  [ -n "$bench" ] && kill "$bench" 2>/dev/null || true
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

"${server_cmd[@]}" > "$OUT/server.out" 2> "$OUT/server.err" &
server=$!
addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's|.*listening on ws://\([0-9.:]*\).*|\1|p' "$OUT/server.out")
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[ -n "$addr" ] || { echo "idle: the server did not start:" >&2; cat "$OUT/server.err" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
sleep 0.5
rss_before=$(rss_kib "$server")

sources=()
[ -n "${IDLE_SOURCES:-}" ] && sources=(--sources "$IDLE_SOURCES")
"$SOCKEYE" bench "ws://$addr/" --idle "$N" "${sources[@]}" -d "$HOLD" --json \
  > "$OUT/bench.json" 2> "$OUT/bench.err" &
bench=$!
# Bounded: 1 ms a connection and a minute more.
for _ in $(seq $(((N / 1000 + 60) * 10))); do
  [ -s "$OUT/bench.json" ] && break
  kill -0 "$bench" 2>/dev/null || break
  sleep 0.1
done
[ -s "$OUT/bench.json" ] || { echo "idle: no summary from sockeye bench:" >&2; cat "$OUT/bench.err" >&2; exit 1; }
summary=$(cat "$OUT/bench.json")
# The last accepted connections' tasks settle; then the server is read.
sleep 2
client_rss=$(rss_kib "$bench")
rss_held=$(rss_kib "$server")
fds_held=$(fds "$server")
bench_ok=1
wait "$bench" || bench_ok=0
bench=""

field() { printf '%s' "$summary" | sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
established=$(field established)
awk -v n="$N" -v est="$established" -v secs="$(field establish_s)" -v rate="$(field per_s)" \
  -v sources="$(field sources)" -v before="$rss_before" -v held="$rss_held" -v fds="$fds_held" \
  -v client="$client_rss" -v server="$SERVER" -v ok="$bench_ok" 'BEGIN {
    printf "idle: %s, %d of %d connections established in %.2f s (%d/s) from %d source addresses\n", \
      server, est, n, secs, rate, sources
    if (est > 0) printf "  server RSS %d KiB -> %d KiB: %.0f bytes per connection; %d descriptors\n", \
      before, held, (held - before) * 1024 / est, fds
    printf "  client (sockeye bench) RSS %d KiB: %.0f bytes per connection\n", client, client * 1024 / (est > 0 ? est : 1)
    if (!ok) print "  FAILED: not all connections were established and held"
    exit !ok
  }' || { echo "  sockeye bench: $summary"; exit 1; }
