#!/usr/bin/env bash
# Side-by-side echo benchmark: Sockeye against the peers of the external echo-benchmark harness
# (wsload, raw_epoll_echo, run_all.sh, summarize.py; BENCHMARKS.md, "Method"), with one command
# from this repository.
#
# usage: bench/side_by_side.sh [--rounds N] [--secs S] [--scenarios "LIST"] [--mem]
#                              [--only NAME,NAME,...] [--out DIR] [--build-only] [--cc NAME]
#   --rounds N     alternating rounds (default 3)
#   --secs S       measured window per throughput scenario, seconds (default 10)
#   --scenarios L  throughput scenarios, CONNSxBYTES (default "100x20 10x1024 10x16384 1x1048576";
#                  "" with --mem: memory only)
#   --mem          also run the idle-memory scenario mem10000
#   --only LIST    only these servers (names from bench/servers.conf), e.g. sockeye,fastwebsockets,raw-epoll
#   --out DIR      results directory (default ${TMPDIR:-/tmp}/sockeye-bench/results-DATE); it gets
#                  tput.txt, mem.txt (--mem), servers.conf, build.txt and summary.md
#   --build-only   build (harness and Sockeye) and stop
#   --cc NAME      run under TCP congestion control NAME (e.g. cubic): sets the machine-wide
#                  net.ipv4.tcp_congestion_control for the runs and restores it on exit (root).
#                  Loopback with bbr paces large messages: see BENCHMARKS.md, "1 MiB and bbr's pacing"
# env: HARNESS_SRC  the harness directory (default ../shared/bench from the repository root, where
#                   the benchmark machine keeps it; read-only is fine)
#      BENCH_WORK   writable copy of it (default ${TMPDIR:-/tmp}/sockeye-bench/harness); refreshed
#                   on every run except its bin/, so the harness build is cached
#      REBUILD=1    rebuild the harness (build.sh) even if bin/ is complete
#      plus the harness's own: CARGO_TARGET_DIR, SERVER_CORE, CLIENT_CORE, LOGDIR, ... (README.md there)
#
# What it does: copies the harness into BENCH_WORK; if the harness lacks src/rust/src/bin/ (the
# Rust peers' sources), puts bench/peers/*.rs there; runs the harness's build.sh once when bin/ is
# incomplete (gcc, cargo with fat LTO: a few minutes; npm ci for node-ws), again for `rust` when a
# peer source in bench/peers is newer than its binary; builds `cargo build --release -p sockeye-cli`
# and `cargo build --release -p sockeye --example echo_server` here (the working tree as it is);
# writes a servers file = bench/servers.conf with Sockeye's absolute paths; runs run_all.sh for throughput (and mem10000 with --mem); prints summarize.py's
# tables, then bench/paired.py's (each Sockeye engine against raw-epoll and fastwebsockets,
# round by round). The machine should have 2+ cores and be otherwise idle (server on core 0,
# load on core 1).
set -euo pipefail

ROUNDS=3 SECS=10 SCEN="100x20 10x1024 10x16384 1x1048576" MEM=0 ONLY="" OUT="" CC=""
usage() { sed -n '2,35p' "$0"; exit "${1:-2}"; }
BUILD_ONLY=0
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --secs) SECS=${2:?}; shift 2 ;;
    --scenarios) SCEN=${2?}; shift 2 ;;
    --mem) MEM=1; shift ;;
    --only) ONLY=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --cc) CC=${2:?}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds: positive integer expected" >&2; exit 2; }
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { echo "--secs: positive integer expected" >&2; exit 2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
HARNESS_SRC=${HARNESS_SRC:-$REPO/../shared/bench}
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/sockeye-bench/harness}
OUT=${OUT:-${TMPDIR:-/tmp}/sockeye-bench/results-$(date +%Y-%m-%d-%H%M%S)}
[ -f "$HARNESS_SRC/run_all.sh" ] || { echo "no harness at $HARNESS_SRC (set HARNESS_SRC)" >&2; exit 2; }
HARNESS_SRC=$(cd "$HARNESS_SRC" && pwd)
if [ -s "$OUT/tput.txt" ] || [ -s "$OUT/mem.txt" ]; then
  echo "$OUT already has results; choose another --out" >&2; exit 2
fi

# 1. Writable copy of the harness; bin/ (build outputs) is kept.
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
[ "$WORK" != "$HARNESS_SRC" ] || { echo "BENCH_WORK must not be the harness itself" >&2; exit 2; }
find "$WORK" -mindepth 1 -maxdepth 1 ! -name bin -exec rm -rf {} +
for f in "$HARNESS_SRC"/* "$HARNESS_SRC"/.[!.]*; do
  if [ -e "$f" ] && [ "$(basename "$f")" != bin ]; then cp -r "$f" "$WORK/"; fi
done
chmod -R u+w "$WORK"
PEERS=(tt_echo fw_echo raw_tokio_echo)
OURS=0
if [ ! -d "$WORK/src/rust/src/bin" ]; then
  mkdir -p "$WORK/src/rust/src/bin"
  cp "$REPO"/bench/peers/*.rs "$WORK/src/rust/src/bin/"
  OURS=1
  echo "side_by_side: Rust peer sources from bench/peers (the harness has none)"
fi

# 2. Harness build (cached in $WORK/bin).
missing=""
for b in wsload raw_epoll_echo "${PEERS[@]}"; do [ -x "$WORK/bin/$b" ] || missing+=" $b"; done
[ -d "$WORK/bin/node/node_modules" ] || missing+=" node/node_modules"
stale=""
if [ "$OURS" = 1 ]; then
  for p in "${PEERS[@]}"; do
    [ ! -e "$WORK/bin/$p" ] || [ ! "$REPO/bench/peers/$p.rs" -nt "$WORK/bin/$p" ] || stale+=" $p"
  done
fi
if [ "${REBUILD:-0}" = 1 ] || [ -n "$missing" ]; then
  echo "side_by_side: building the harness (REBUILD=${REBUILD:-0}, missing:${missing:- none})"
  t0=$SECONDS; "$WORK/build.sh" all; echo "side_by_side: harness build took $((SECONDS - t0)) s"
elif [ -n "$stale" ]; then
  echo "side_by_side: rebuilding the Rust peers (newer source:$stale)"
  t0=$SECONDS; "$WORK/build.sh" rust; echo "side_by_side: peer build took $((SECONDS - t0)) s"
fi

# 3. Sockeye.
t0=$SECONDS
(cd "$REPO" && cargo build --release -p sockeye-cli && cargo build --release -p sockeye --example echo_server)
echo "side_by_side: sockeye build took $((SECONDS - t0)) s"
[ "$BUILD_ONLY" = 0 ] || exit 0
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
{
  echo "date: $(date -Is)"
  echo "sockeye: $REPO/target/release/{sockeye,examples/echo_server} built from $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "+ $(git -C "$REPO" status --porcelain 2>/dev/null | wc -l) changed/untracked paths in the working tree"
  echo "harness: $HARNESS_SRC (copy: $WORK)"
  echo "rust peers: $([ "$OURS" = 1 ] && echo "$REPO/bench/peers" || echo "the harness's own sources")"
  rustc --version; echo "node $(node --version 2>/dev/null || echo '-')"
  echo "cores: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/build.txt"

# 4. Servers file: bench/servers.conf (paths relative to the harness), Sockeye's binaries (both
# echo engines of `sockeye echo`, the echo_server example) by absolute path: this checkout's
# target/release/ in place of RELEASE/.
SERVERS=$OUT/servers.conf
{
  echo "# written by bench/side_by_side.sh; paths relative to $WORK"
  grep -v -e '^\s*#' -e '^\s*$' "$REPO/bench/servers.conf" |
    sed "s#RELEASE/#$REPO/target/release/#"
} >"$SERVERS.all"
if [ -n "$ONLY" ]; then
  { echo "# --only $ONLY"; grep '^#' "$SERVERS.all"; } >"$SERVERS"
  IFS=, read -ra names <<<"$ONLY"
  for n in "${names[@]}"; do
    line=$(awk -F'|' -v n="$n" '$1 == n { print; exit }' "$SERVERS.all")
    [ -n "$line" ] || { echo "--only: no server '$n' (have: $(grep -v '^#' "$SERVERS.all" | cut -d'|' -f1 | paste -sd,))" >&2; exit 2; }
    echo "$line" >>"$SERVERS"
  done
else
  cp "$SERVERS.all" "$SERVERS"
fi
rm -f "$SERVERS.all"
echo "side_by_side: servers:"; grep -v '^#' "$SERVERS" | sed 's/^/  /'

# 5. Runs (from the work dir: the peers' paths are relative to it).
CC_KNOB=/proc/sys/net/ipv4/tcp_congestion_control
CC_WAS=$(cat "$CC_KNOB")
if [ -n "$CC" ] && [ "$CC" != "$CC_WAS" ]; then
  grep -qw "$CC" /proc/sys/net/ipv4/tcp_available_congestion_control || modprobe "tcp_$CC" 2>/dev/null || true
  grep -qw "$CC" /proc/sys/net/ipv4/tcp_available_congestion_control ||
    { echo "--cc: '$CC' not available (have: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control))" >&2; exit 2; }
  echo "$CC" >"$CC_KNOB" || { echo "--cc: cannot set $CC_KNOB (root needed)" >&2; exit 2; }
  trap 'echo "$CC_WAS" >"$CC_KNOB"; echo "side_by_side: congestion control back to $CC_WAS"' EXIT
fi
echo "congestion control: $(cat "$CC_KNOB")" >>"$OUT/build.txt"
echo "side_by_side: TCP congestion control $(cat "$CC_KNOB")"
cd "$WORK"
files=()
if [ -n "$SCEN" ]; then
  echo "side_by_side: throughput: $ROUNDS round(s) x [$SCEN] x ${SECS} s"
  ./run_all.sh "$SERVERS" "$ROUNDS" "$OUT/tput.txt" "$SCEN" "$SECS" | { grep --line-buffered '^bench:' || true; }
  files+=("$OUT/tput.txt")
fi
if [ "$MEM" = 1 ]; then
  echo "side_by_side: memory: $ROUNDS round(s) x mem10000"
  ./run_all.sh "$SERVERS" "$ROUNDS" "$OUT/mem.txt" mem10000 | { grep --line-buffered '^bench:' || true; }
  files+=("$OUT/mem.txt")
fi
[ ${#files[@]} -gt 0 ] || { echo "nothing to run (empty --scenarios and no --mem)" >&2; exit 2; }
echo
python3 ./summarize.py "${files[@]}" | tee "$OUT/summary.md"
if [ -n "$SCEN" ]; then
  echo; python3 "$REPO/bench/paired.py" "$OUT/tput.txt" | tee -a "$OUT/summary.md"
fi
echo "side_by_side: results in $OUT"
bad=$(grep -h '^bench:' "${files[@]}" | grep -cE ' error=| errors=[1-9]' || true)
[ "$bad" = 0 ] || { echo "side_by_side: $bad run(s) with errors, see the bench: lines in $OUT" >&2; exit 1; }
