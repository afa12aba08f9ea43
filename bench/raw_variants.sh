#!/usr/bin/env bash
# What the kernel charges for how an echo hands its bytes back: the raw-epoll limit server
# as it is, sending from 4 bytes past where it read (as an echo relayed in place does),
# copying first (as an echo that copies into a send buffer does), and with writev in two
# pieces (as a referenced payload behind its header goes out). Alternating rounds; prints
# each round, then the median per-round ratio of each variant to the plain server
# (BENCHMARKS.md, "Where a 16 KiB echo's bytes go").
#
# usage: bench/raw_variants.sh [ROUNDS] [SECS] [CONNSxBYTES]   (defaults: 12 2 10x16384)
# Needs gcc and the harness's wsload (bench/side_by_side.sh --build-only). Server on core 0,
# wsload on core 1, as the harness runs them.
set -euo pipefail

ROUNDS=${1:-12}
SECS=${2:-2}
SCENARIO=${3:-10x16384}
CONNS=${SCENARIO%x*}
SIZE=${SCENARIO#*x}
for v in ROUNDS SECS CONNS SIZE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "raw_variants: bad $v: ${!v}" >&2; exit 2; }
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/sockeye-bench/harness}
WSLOAD=$WORK/bin/wsload
[ -x "$WSLOAD" ] || { echo "raw_variants: no $WSLOAD: run bench/side_by_side.sh --build-only" >&2; exit 2; }
OUT=$(mktemp -d "${TMPDIR:-/tmp}/raw-variants.XXXXXX")
gcc -O2 -o "$OUT/raw_variants" "$REPO/bench/raw_variants.c"

# name and the arguments after the port
variants=("plain:0 0 0" "shifted-send:0 4 0" "copy:0 0 1" "writev-2:0 0 4")

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

for round in $(seq 1 "$ROUNDS"); do
  for variant in "${variants[@]}"; do
    name=${variant%%:*}
    port=$(free_port)
    # shellcheck disable=SC2086 # the arguments are split on purpose
    setsid taskset -c 0 "$OUT/raw_variants" "$port" ${variant#*:} >/dev/null 2>&1 &
    spid=$!
    for _ in $(seq 1 50); do
      ss -ltn "sport = :$port" | grep -q LISTEN && break
      sleep 0.05
    done
    line=$(SERVER_PID=$spid timeout $((SECS + 30)) taskset -c 1 "$WSLOAD" -p "$port" -c "$CONNS" \
      -s "$SIZE" -d "$SECS" -w 1 -r -q | tail -1 || true)
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    echo "round=$round variant=$name $line"
  done
done | tee "$OUT/rounds.txt"

python3 - "$OUT/rounds.txt" <<'PY'
import re, statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    f = dict(re.findall(r"(\w+)=(\S+)", line))
    if "msgs_per_s" in f and "server_cpu" in f:
        cpu = float(f["server_cpu"].rstrip("%")) / 100
        if cpu > 0:
            rounds.setdefault(f["round"], {})[f["variant"]] = float(f["msgs_per_s"]) / cpu
names = ["plain", "shifted-send", "copy", "writev-2"]
for name in names:
    ratios = sorted(r[name] / r["plain"] for r in rounds.values() if name in r and "plain" in r)
    per_cpu = [r[name] for r in rounds.values() if name in r]
    if ratios:
        print(f"{name:13} msgs per server-CPU-second {statistics.median(per_cpu):9.0f}  "
              f"against plain: median {statistics.median(ratios):.3f} "
              f"({ratios[0]:.2f}-{ratios[-1]:.2f}, {len(ratios)} rounds)")
PY
echo "raw lines: $OUT/rounds.txt"
