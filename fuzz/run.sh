#!/usr/bin/env bash
# Builds every fuzz target, then runs each for N seconds (default 60) and prints one
# summary line per target. Corpora grow in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>), crashes land in fuzz/artifacts/<target>, full logs in
# fuzz/target/logs/<target>.log. Exits non-zero if any target failed.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail

secs=${1:-60}
shift || true
cd "$(dirname "$0")"

# cargo fuzz needs nightly (sanitizers, -Z flags); fall back to RUSTC_BOOTSTRAP on stable.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("${fuzz[@]}" list)
fi

mkdir -p target/logs
"${fuzz[@]}" build >target/logs/build.log 2>&1 || { cat target/logs/build.log; exit 1; }

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    args=("-max_total_time=$secs" -print_final_stats=1)
    case $t in handshake_*) args+=("-dict=dicts/http.dict") ;; esac
    log="target/logs/$t.log"
    if "${fuzz[@]}" run "$t" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see $log and artifacts/$t)"
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1 || true)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)
    printf '%-20s %10s execs in %ss, cov %s, corpus %s files: %s%s\n' \
        "$t" "${runs:-?}" "$secs" "${cov:-?}" "$(ls "corpus/$t" | wc -l)" "$result" \
        "${done_line:+ ($done_line)}"
done
exit $status
