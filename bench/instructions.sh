#!/usr/bin/env bash
# Instructions per echoed message, counted by callgrind: the work a server does per message,
# a measure the machine's throughput swings do not blur (BENCHMARKS.md, "The machine's two
# states"; a change of a few percent of user space is invisible in messages per second).
#
# usage: bench/instructions.sh [--size BYTES] [--conns N] [--secs S] [--out DIR] [SERVER ...]
#   SERVER      names from bench/servers.conf (default: sockeye sockeye-example-ct fastwebsockets)
#   --size N    message size in bytes (default 20)
#   --conns N   connections (default 100)
#   --secs S    seconds of load per server (default 10); under callgrind a server runs some
#               50 times slower, so 10 s at 100 x 20 B is about half a million messages
#   --out DIR   callgrind files and logs (default ${TMPDIR:-/tmp}/sockeye-bench/instructions-DATE)
# Needs valgrind, and the harness built by `bench/side_by_side.sh --build-only` (wsload and
# the peers in ${BENCH_WORK:-${TMPDIR:-/tmp}/sockeye-bench/harness}/bin). Builds Sockeye
# (release: the CLI and the echo_server example) from the working tree, into
# $CARGO_TARGET_DIR when set: for a profile by source line, run with
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=target/lt.
#
# Each server runs under `valgrind --tool=callgrind` on core 0 and wsload loads it from core 1.
# wsload's measured window opens 2 s after its last handshake; `callgrind_control -d` dumps the
# server's counts then, so the handshakes and the warm-up are left out (with them, the figure
# would depend on how many messages a loaded machine lets through). Prints per server: the
# instructions of all its processes in the window (the end of the run and the exit included,
# a few per message), the messages wsload counted, and their ratio. Annotate with
# `callgrind_annotate --inclusive=yes FILE` (the file without a numeric suffix: the window).
set -euo pipefail

SIZE=20 CONNS=100 SECS=10 WARM=2 OUT=""
usage() { sed -n '2,20p' "$0"; exit "${1:-2}"; }
names=()
while [ $# -gt 0 ]; do
  case $1 in
    --size) SIZE=${2:?}; shift 2 ;;
    --conns) CONNS=${2:?}; shift 2 ;;
    --secs) SECS=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "unknown argument: $1" >&2; usage ;;
    *) names+=("$1"); shift ;;
  esac
done
for v in SIZE CONNS SECS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,}: positive integer expected" >&2; exit 2; }
done
[ ${#names[@]} -gt 0 ] || names=(sockeye sockeye-example-ct fastwebsockets)

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/sockeye-bench/harness}
OUT=${OUT:-${TMPDIR:-/tmp}/sockeye-bench/instructions-$(date +%Y-%m-%d-%H%M%S)}
command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
[ -x "$WORK/bin/wsload" ] || { echo "instructions: no harness build in $WORK; run bench/side_by_side.sh --build-only first" >&2; exit 2; }
WORK=$(cd "$WORK" && pwd)
TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET = /* ]] || TARGET=$REPO/$TARGET
(cd "$REPO" && cargo build --release -q -p sockeye-cli && cargo build --release -q -p sockeye --example echo_server)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The servers' commands: bench/servers.conf, Sockeye's binaries by absolute path (this
# checkout's target/release/, or $CARGO_TARGET_DIR/release/, in place of RELEASE/).
server_line() {
  awk -F'|' -v n="$1" '$1 == n { print; exit }' "$REPO/bench/servers.conf" |
    sed "s#RELEASE/#$TARGET/release/#"
}

echo "instructions: ${CONNS} x ${SIZE} B for ${SECS} s per server; files in $OUT"
for name in "${names[@]}"; do
  line=$(server_line "$name")
  [ -n "$line" ] || { echo "instructions: no server '$name' in bench/servers.conf" >&2; exit 2; }
  kind=$(cut -d'|' -f2 <<<"$line")
  port=$((20000 + RANDOM % 10000))
  cmd=$(cut -d'|' -f3- <<<"$line")
  cmd=${cmd//\{port\}/$port}
  rm -f "$OUT/$name".*
  # shellcheck disable=SC2086 # the command line is split into words on purpose
  (cd "$WORK" && exec setsid taskset -c 0 valgrind --tool=callgrind --trace-children=yes \
     --callgrind-out-file="$OUT/$name.%p.callgrind" --log-file="$OUT/$name.%p.log" $cmd) \
     >/dev/null 2>&1 </dev/null &
  vpid=$!
  for _ in $(seq 1 300); do
    ss -ltn "sport = :$port" | grep -q LISTEN && break
    kill -0 "$vpid" 2>/dev/null || break
    sleep 0.1
  done
  if ! ss -ltn "sport = :$port" | grep -q LISTEN; then
    kill -TERM -- "-$vpid" 2>/dev/null || true
    echo "instructions: $name did not listen on port $port within 30 s (see $OUT/$name.*.log)" >&2
    exit 1
  fi
  flag=(); [ "$kind" = raw ] && flag=(-r)
  # wsload's window opens WARM s after its last upgrade (which it reports on stderr);
  # the server's counts are dumped then, so that only the window's work is counted.
  progress="$OUT/$name.wsload"
  taskset -c 1 "$WORK/bin/wsload" -p "$port" -c "$CONNS" -s "$SIZE" -d "$SECS" -w "$WARM" "${flag[@]}" \
    >"$progress.out" 2>"$progress.err" &
  lpid=$!
  for _ in $(seq 1 600); do
    grep -q 'connections \(upgraded\|connected\)' "$progress.err" 2>/dev/null && break
    kill -0 "$lpid" 2>/dev/null || break
    sleep 0.05
  done
  sleep "$WARM"
  callgrind_control -d >/dev/null 2>&1 || true
  wait "$lpid" || true
  result=$(tail -1 "$progress.out")
  kill -TERM -- "-$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  msgs=$(grep -o ' msgs=[0-9]*' <<<"$result" | cut -d= -f2 || true)
  total=$(cat "$OUT/$name".*.log | grep -o 'Collected : [0-9]*' | awk '{s += $3} END {print s + 0}')
  # The dumps at the window's start (one per server process): what came before it.
  before=$(cat "$OUT/$name".*.callgrind.[0-9]* 2>/dev/null | awk '/^totals:/ {s += $2} END {print s + 0}')
  instr=$((total - before))
  if [ -z "$msgs" ] || [ "$msgs" = 0 ] || [ "$before" = 0 ] || [ "$instr" -le 0 ]; then
    echo "instructions: $name: no count (wsload: ${result:-nothing}; before the window: $before; see $OUT/$name.*)" >&2
    exit 1
  fi
  echo "$name instructions=$instr messages=$msgs per_message=$((instr / msgs)) (window only; $before before it)"
done
