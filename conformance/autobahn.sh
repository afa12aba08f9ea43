#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against Sockeye in both roles, strict.
#   conformance/autobahn.sh [server|client|both] [extra autobahn.sh options, e.g. --cases '1.*']
# Default: both roles, sections 1-11 (12.* and 13.* are permessage-deflate, not yet negotiated).
# Needs ../shared/autobahn/autobahn.sh beside the repository (it sets up wstest on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS="${AUTOBAHN_HARNESS:-../shared/autobahn/autobahn.sh}"
[ -f "$HARNESS" ] || { echo "conformance: error: $HARNESS not found (set AUTOBAHN_HARNESS)"; exit 2; }
MODE="${1:-both}"; [ $# -gt 0 ] && shift
EXCLUDE="${AUTOBAHN_EXCLUDE-12.*,13.*}"

cargo build --release --locked -p sockeye-cli --bin sockeye -p sockeye --example autobahn_client
status=0
if [ "$MODE" = server ] || [ "$MODE" = both ]; then
  bash "$HARNESS" server ws://127.0.0.1:9002 --agent sockeye --exclude "$EXCLUDE" --strict --timeout 900 "$@" \
    -- target/release/sockeye echo --listen 127.0.0.1:{port} || status=1
fi
if [ "$MODE" = client ] || [ "$MODE" = both ]; then
  bash "$HARNESS" client --agent sockeye --exclude "$EXCLUDE" --strict --timeout 900 "$@" \
    -- target/release/examples/autobahn_client {url} {agent} || status=1
fi
exit $status
