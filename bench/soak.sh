#!/usr/bin/env bash
# Soak: CONNS connections of `sockeye bench --soak` against `sockeye echo` for SECS seconds,
# sequence-numbered messages checked echo by echo, with random clean and abrupt reconnects;
# the server's open descriptors and resident memory sampled before, during and after.
#
# usage: bench/soak.sh [CONNS] [SECS]        (default 10000 600: the full size)
# env:   SOCKEYE         the sockeye binary (default target/release/sockeye, built first)
#        SOAK_RATE       messages per second over all connections (default 2 x CONNS)
#        SOAK_RECONNECT  reconnects per second over all connections (default CONNS / 30:
#                        each connection every 30 s on average, half of them abrupt)
#        SOAK_SIZE       the largest message; lengths are drawn from 24 to it (default 1024)
#        SOAK_SEED       the seed of lengths, bodies and reconnects (default 1)
#        SOAK_OUT        keep the raw files here (samples.tsv, summary.json, verdict.txt);
#                        default: a temporary directory, removed at the end
#        RSS_GROWTH_PERCENT, RSS_SLACK_KIB   the memory check's allowance (10, 2048; below)
#
# It passes (exit 0) when all three hold:
# - every message is accounted for: `sockeye bench --soak` exits 0 (sent = echoed + lost at
#   abrupt disconnects, none mismatched, unanswered or lost to a failure);
# - no descriptor leaks: within 30 s of the end, the server's open descriptors
#   (/proc/PID/fd) are back to their count before the first connection;
# - resident memory is flat: the mean of VmRSS (/proc/PID/status, sampled each second) over
#   the last quarter of the run is at most RSS_GROWTH_PERCENT (10) percent plus
#   RSS_SLACK_KIB (2048) above its mean over the second quarter. The first quarter is
#   warm-up: the connections are being opened, the allocator's pools and the kernel's
#   socket buffers fill, and reconnects reach their steady rate, so memory rises there for
#   reasons that are not leaks. From the second quarter on the load is steady (the same
#   connections, rate and reconnect rate), so memory that keeps growing is memory kept per
#   message or per reconnect: a leak of L bytes per reconnect adds L x (reconnects in half
#   the run) between the two windows, and the verdict prints the smallest leak per
#   reconnect and per message the run would have caught. The slack absorbs the allocator
#   returning or taking a few pages at small sizes, where 10% is a few hundred KiB.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${1:-10000}
SECS=${2:-600}
case "$CONNS$SECS" in
  *[!0-9]*) echo "usage: bench/soak.sh [CONNS] [SECS] (whole numbers)" >&2; exit 2 ;;
esac
[ "$CONNS" -ge 1 ] && [ "$SECS" -ge 4 ] || { echo "soak: CONNS >= 1 and SECS >= 4" >&2; exit 2; }
RATE=${SOAK_RATE:-$((CONNS * 2))}
RECONNECT=${SOAK_RECONNECT:-$(awk -v c="$CONNS" 'BEGIN { printf "%.3f", c / 30 }')}
SIZE=${SOAK_SIZE:-1024}
SEED=${SOAK_SEED:-1}
RSS_GROWTH_PERCENT=${RSS_GROWTH_PERCENT:-10}
RSS_SLACK_KIB=${RSS_SLACK_KIB:-2048}

if [ -z "${SOCKEYE:-}" ]; then
  cargo build --release --locked -q -p sockeye-cli --bin sockeye
  SOCKEYE=target/release/sockeye
fi
[ -x "$SOCKEYE" ] || { echo "soak: $SOCKEYE is not an executable" >&2; exit 2; }

# Both processes hold CONNS sockets (and a few more while reconnecting).
need=$((CONNS + 256))
if [ "$(ulimit -n)" -lt "$need" ]; then
  ulimit -n "$need" 2>/dev/null || {
    echo "soak: $CONNS connections need 'ulimit -n $need' (the hard limit is $(ulimit -Hn))" >&2
    exit 2
  }
fi

if [ -n "${SOAK_OUT:-}" ]; then
  OUT=$SOAK_OUT; mkdir -p "$OUT"
else
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/sockeye-soak.XXXXXX")
fi
server=""; bench=""
cleanup() {
  [ -n "$bench" ] && kill "$bench" 2>/dev/null || true
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${SOAK_OUT:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT

"$SOCKEYE" echo --listen 127.0.0.1:0 > "$OUT/server.out" 2> "$OUT/server.err" &
server=$!
addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's|^sockeye echo listening on ws://\([0-9.:]*\).*|\1|p' "$OUT/server.out")
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[ -n "$addr" ] || { echo "soak: sockeye echo did not start:" >&2; cat "$OUT/server.err" >&2; exit 1; }

fds() { find "/proc/$server/fd" -mindepth 1 -maxdepth 1 | wc -l; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$server/status"; }
sleep 0.5
fds_before=$(fds)
rss_before=$(rss_kib)

"$SOCKEYE" bench --soak "ws://$addr/" -c "$CONNS" -d "$SECS" --rate "$RATE" \
  --reconnect-rate "$RECONNECT" --size "$SIZE" --seed "$SEED" --json \
  > "$OUT/summary.json" 2> "$OUT/bench.err" &
bench=$!
start=$(date +%s.%N)
printf 't_s\trss_kib\tfds\n' > "$OUT/samples.tsv"
# Bounded: the run, plus its closing (10 s grace per connection at most, in parallel).
deadline=$((SECS + 120))
for _ in $(seq "$deadline"); do
  kill -0 "$bench" 2>/dev/null || break
  t=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
  printf '%s\t%s\t%s\n' "$t" "$(rss_kib)" "$(fds)" >> "$OUT/samples.tsv"
  sleep 1
done
if kill -0 "$bench" 2>/dev/null; then
  echo "soak: sockeye bench did not end within $deadline s" >&2
  exit 1
fi
bench_ok=1
wait "$bench" || bench_ok=0
bench=""

# Descriptors: closed connections are let go as their tasks end.
fds_after=$(fds)
for _ in $(seq 300); do
  [ "$fds_after" -le "$fds_before" ] && break
  sleep 0.1
  fds_after=$(fds)
done
rss_after=$(rss_kib)

summary=$(cat "$OUT/summary.json")
# A figure of the bench's JSON summary (0 if it printed none).
field() {
  local v
  v=$(printf '%s' "$summary" | sed -n "s/.*\"$1\":\([0-9.-]*\).*/\1/p")
  printf '%s' "${v:-0}"
}
[ -n "$summary" ] || { echo "soak: sockeye bench printed no summary:" >&2; cat "$OUT/bench.err" >&2; }
awk -F'\t' -v secs="$SECS" -v growth="$RSS_GROWTH_PERCENT" -v slack="$RSS_SLACK_KIB" \
  -v conns="$CONNS" -v before="$rss_before" -v after="$rss_after" \
  -v fb="$fds_before" -v fa="$fds_after" -v bench_ok="$bench_ok" \
  -v sent="$(field sent)" -v echoed="$(field echoed)" -v lost="$(field lost_at_abrupt_disconnect)" \
  -v mismatched="$(field mismatched)" -v failures="$(field failures)" \
  -v reconnects="$(($(field clean_reconnects) + $(field abrupt_reconnects)))" '
  NR > 1 {
    if ($3 > peak_fds) peak_fds = $3
    if ($2 > peak_rss) peak_rss = $2
    if ($1 >= secs / 4 && $1 < secs / 2) { early += $2; ne++ }
    if ($1 >= secs * 3 / 4 && $1 <= secs) { late += $2; nl++ }
  }
  END {
    if (ne == 0 || nl == 0) { print "soak: too few samples to judge memory"; exit 1 }
    early /= ne; late /= nl
    limit = early * (1 + growth / 100) + slack
    rss_ok = late <= limit
    fds_ok = fa <= fb
    printf "soak: %d connections x %d s, %d reconnects\n", conns, secs, reconnects
    printf "  messages   sent %d, echoed %d, lost at abrupt disconnects %d (by design), mismatched %d, failures %d: %s\n", \
      sent, echoed, lost, mismatched, failures, bench_ok ? "all accounted for" : "FAILED"
    printf "  fds        before %d, peak %d, after %d: %s\n", fb, peak_fds, fa, fds_ok ? "back to baseline" : "LEAKED"
    printf "  RSS (KiB)  before %d, 2nd quarter %.0f, last quarter %.0f (limit %.0f), peak %d, after %d: %s\n", \
      before, early, late, limit, peak_rss, after, rss_ok ? "flat" : "GREW"
    # What the comparison would have caught: growth over the limit across half the run.
    margin = (limit - early) * 1024
    if (reconnects > 0) printf "  sensitivity: a leak of %.0f B per reconnect or %.2f B per message\n", \
      margin / (reconnects / 2), margin / (sent / 2)
    exit !(bench_ok && fds_ok && rss_ok)
  }' "$OUT/samples.tsv" | tee "$OUT/verdict.txt"
