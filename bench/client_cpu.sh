#!/usr/bin/env bash
# Client CPU per message: `sockeye bench` against the harness's C load generator `wsload`,
# both driving the same echo server, alternately, in the same run.
#
# usage: bench/client_cpu.sh [ROUNDS] [SECS] [SCENARIOS]
#   ROUNDS     alternating rounds (default 3), SECS measured seconds per run (default 3),
#   SCENARIOS  CONNSxBYTES list (default "100x20 10x1024 10x16384 1x1048576")
# env: BENCH_WORK  the harness work copy that bench/side_by_side.sh builds
#                  (default ${TMPDIR:-/tmp}/sockeye-bench/harness; run side_by_side.sh
#                  --build-only first)
#      SERVER      the echo server command with {port} (default: the harness's fastwebsockets
#                  echo, the cheapest WebSocket server, so the client is the bottleneck)
#
# The server runs on core 0, the load generator on core 1. Both generators make the same
# system calls per message (one send, one receive); the figure is client CPU seconds per
# message (wsload: its rusage; sockeye bench: its rusage, printed as client_cpu_percent).
set -euo pipefail

ROUNDS=${1:-3}
SECS=${2:-3}
SCENARIOS=${3:-"100x20 10x1024 10x16384 1x1048576"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/sockeye-bench/harness}
SERVER=${SERVER:-"$WORK/bin/fw_echo {port}"}
SOCKEYE=$ROOT/target/release/sockeye
WSLOAD=$WORK/bin/wsload
[ -x "$WSLOAD" ] || { echo "no $WSLOAD: run bench/side_by_side.sh --build-only first" >&2; exit 1; }
(cd "$ROOT" && cargo build --release -q -p sockeye-cli)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# run GEN CONNS SIZE -> "msgs_per_s client_cpu_percent"
run() {
    local gen=$1 conns=$2 size=$3 port cmd spid out
    port=$(free_port)
    cmd=${SERVER//\{port\}/$port}
    # shellcheck disable=SC2086 # the command line is split on purpose
    setsid taskset -c 0 $cmd >/dev/null 2>&1 &
    spid=$!
    for _ in $(seq 50); do
        ss -ltn "sport = :$port" | grep -q LISTEN && break
        sleep 0.1
    done
    if [ "$gen" = wsload ]; then
        out=$(timeout $((SECS + 30)) taskset -c 1 "$WSLOAD" -p "$port" -c "$conns" -s "$size" \
            -d "$SECS" -w 1 -q 2>/dev/null | tail -1)
        echo "$(sed -n 's/.*msgs_per_s=\([0-9.]*\).*/\1/p' <<<"$out")" \
            "$(sed -n 's/.*client_cpu=\([0-9.]*\)%.*/\1/p' <<<"$out")"
    else
        out=$(timeout $((SECS + 30)) taskset -c 1 "$SOCKEYE" bench "ws://127.0.0.1:$port/" \
            -c "$conns" -s "$size" -d "$SECS" --warmup 1 --json 2>/dev/null | tail -1)
        python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["msgs_per_s"], j["client_cpu_percent"])' "$out"
    fi
    kill -- "-$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        conns=${scenario%x*}
        size=${scenario#*x}
        for gen in wsload sockeye; do
            read -r rate cpu < <(run "$gen" "$conns" "$size")
            echo "round=$round gen=$gen scenario=$scenario msgs_per_s=$rate client_cpu=$cpu%" | tee -a "$results"
        done
    done
done

python3 - "$results" <<'EOF'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.search(r"gen=(\S+) scenario=(\S+) msgs_per_s=([\d.]+) client_cpu=([\d.]+)%", line)
    if m and float(m.group(3)) > 0:
        ns = float(m.group(4)) / 100 / float(m.group(3)) * 1e9
        runs.setdefault(m.group(2), {}).setdefault(m.group(1), []).append(ns)
print()
print("| scenario | wsload ns of client CPU per message | sockeye bench | sockeye / wsload |")
print("|---|---|---|---|")
for scenario, gens in runs.items():
    w = statistics.median(gens.get("wsload", [float("nan")]))
    s = statistics.median(gens.get("sockeye", [float("nan")]))
    print(f"| {scenario} | {w:,.0f} | {s:,.0f} | {s / w:.2f} |")
EOF
