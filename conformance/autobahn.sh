#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against Sockeye in both roles, strict.
#   conformance/autobahn.sh [server|client|both] [extra autobahn.sh options]
#   AUTOBAHN_CASES='*' conformance/autobahn.sh both      # everything (about 30 min a role)
# The server is `sockeye echo --deflate` (agent `sockeye`: the library's server relaying
# frames piece by piece as they arrive), and the README's server as a user writes it, the
# echo_server example (whole messages, next() then send(), tokio's multi-thread runtime;
# agent `sockeye-library`); the client is the autobahn_client example, which offers
# permessage-deflate like ws. By default: every case of sections 1-10, plus a fixed
# subset of the compression sections that covers every parameter combination (see CASES).
# The harness is conformance/harness.sh (AUTOBAHN_HARNESS names another): it sets up wstest
# (autobahntestsuite, which needs a Python 2.7: see the README) in a virtualenv under target/
# on first use, runs the cases against the command after `--`, and exits non-zero when a case
# is not OK (with --strict, also when one is NON-STRICT or UNIMPLEMENTED).
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS="${AUTOBAHN_HARNESS:-conformance/harness.sh}"
[ -f "$HARNESS" ] || { echo "conformance: error: $HARNESS not found (set AUTOBAHN_HARNESS)"; exit 2; }
MODE="${1:-both}"; [ $# -gt 0 ] && shift

# 12.N.M: message type/size N (text, binary, ...) with M growing sizes; the default offer.
# 13.N.M: the same traffic under each (offer, answer) combination N: 13.1 defaults,
# 13.2 no context takeover, 13.3/13.4 max window bits 9/15, 13.5/13.6 both, 13.7 several
# offers. The harness reads patterns as prefixes: 13.*.1 selects 13.N.1 and 13.N.10-18,
# so every combination runs with a small size and sizes 9-18 (83 compression cases).
SUBSET='12.1.1,12.1.9,12.2.9,12.3.9,12.4.9,12.5.9,13.*.1,13.*.9'
CASES="${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,$SUBSET}"

cargo build --release --locked -p sockeye-cli --bin sockeye -p sockeye --example autobahn_client --example echo_server
status=0
if [ "$MODE" = server ] || [ "$MODE" = both ]; then
  bash "$HARNESS" server ws://127.0.0.1:9002 --agent sockeye --cases "$CASES" --strict --timeout 2400 "$@" \
    -- target/release/sockeye echo --deflate --listen 127.0.0.1:{port} || status=1
  bash "$HARNESS" server ws://127.0.0.1:9002 --agent sockeye-library --cases "$CASES" --strict --timeout 2400 "$@" \
    -- target/release/examples/echo_server --deflate --listen 127.0.0.1:{port} || status=1
fi
if [ "$MODE" = client ] || [ "$MODE" = both ]; then
  bash "$HARNESS" client --agent sockeye --cases "$CASES" --strict --timeout 2400 "$@" \
    -- target/release/examples/autobahn_client {url} {agent} || status=1
fi
exit $status
