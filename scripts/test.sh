#!/usr/bin/env bash
# The whole test suite, installs included: lint, unit and loopback integration tests
# (with Node `ws` interop), then the Autobahn|Testsuite in both roles.
#
# The Autobahn step needs a Python 2.7 (for wstest; see the README). SOCKEYE_SKIP_AUTOBAHN=1
# skips that step alone, and says so at the start and at the end: conformance is then not
# checked. SOAK_SCRIPT runs another script in place of bench/soak.sh (the README's test of
# this script gives a stand-in).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

skip_autobahn=0
if [ "${SOCKEYE_SKIP_AUTOBAHN:-0}" = 1 ]; then skip_autobahn=1; fi

# Loud, on stderr, so that a skipped Autobahn step is not mistaken for a pass.
autobahn_skipped() {
  {
    printf '\n!!! %s\n' "SKIPPED: the Autobahn|Testsuite (SOCKEYE_SKIP_AUTOBAHN=1)."
    printf '!!! %s\n' "RFC 6455 conformance was NOT checked; unset it to run the whole suite."
  } >&2
}

# Whether a Python 2.7 for wstest can be found, where conformance/harness.sh looks.
python27_found() {
  local c root
  for c in "${AUTOBAHN_PYTHON:-}" "$(command -v python2.7 || true)" "$(command -v python2 || true)"; do
    [ -n "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null && return 0
  done
  for root in "$(pyenv root 2>/dev/null || true)" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
    [ -n "$root" ] || continue
    for c in "$root"/versions/2.7*/bin/python; do
      [ -x "$c" ] && return 0
    done
  done
  # A wstest virtualenv already built.
  [ -f "${AUTOBAHN_VENV:-target/autobahn-venv}/.autobahn-ok" ]
}

# Before the long steps: the Autobahn step would fail at the end without a Python 2.7.
if [ $skip_autobahn = 1 ]; then
  autobahn_skipped
elif ! python27_found; then
  echo "test: error: the Autobahn step needs a Python 2.7 (wstest), and none was found:" >&2
  echo "test:   pyenv install 2.7.18 (or apt-get install python2.7 where the distribution has it," >&2
  echo "test:   or AUTOBAHN_PYTHON=/path/to/python2.7); or run the rest of the suite without" >&2
  echo "test:   conformance: SOCKEYE_SKIP_AUTOBAHN=1 $0" >&2
  exit 1
fi

step "Node ws peer for the interop tests (npm ci)"
command -v node >/dev/null || { echo "test: error: node is required for the interop tests (apt-get install nodejs npm)"; exit 1; }
(cd crates/sockeye/tests/interop && npm ci --no-audit --no-fund --loglevel=error)

# The WebSocket-over-HTTP/2 tests run nghttp2's proxy, nghttpx (and headless Chromium,
# checked below). Debian installs it in /usr/sbin, which a user's PATH may not have.
command -v nghttpx >/dev/null || [ -x /usr/sbin/nghttpx ] || { echo "test: error: nghttpx is required for the HTTP/2 proxy test (apt-get install nghttp2-proxy)"; exit 1; }

# The Redis broker tests (the library's, and `sockeye serve --redis`) start their own.
command -v redis-server >/dev/null || { echo "test: error: redis-server is required for the Redis broker tests (apt-get install redis-server)"; exit 1; }
# The demo page's test and the HTTP/2 browser test drive a headless Chromium.
command -v chromium >/dev/null || { echo "test: error: chromium is required for the browser tests (the demo page, WebSocket over HTTP/2; apt-get install chromium)"; exit 1; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

step "unit, integration, interop and doc tests"
cargo test --locked --workspace --all-targets
cargo test --locked --workspace --doc

step "fuzz harness: the oracles build, clippy-clean, and pass on their seed corpora"
(cd fuzz && cargo fmt -- --check && cargo clippy --locked --all-targets -- -D warnings \
  && cargo test --locked --test seeds)

step "the Redis brokers (feature redis) against a real redis-server"
cargo clippy --locked -p sockeye --features redis --all-targets -- -D warnings
cargo test --locked -p sockeye --features redis --test it redis
cargo test --locked -p sockeye --features redis --lib

step "WebSocket over HTTP/2 (feature http2): bind_tls, the client; Node's http2 module, nghttpx and headless Chromium as peers"
cargo clippy --locked -p sockeye --features http2 --all-targets -- -D warnings
cargo clippy --locked -p sockeye --no-default-features --features http2 --all-targets -- -D warnings
cargo test --locked -p sockeye --features http2 --test http2
cargo test --locked -p sockeye --features http2 --lib
cargo test --locked -p sockeye-hyper --test http2

step "the library crates with default features off (each feature alone, then none)"
cargo clippy --locked -p sockeye -p sockeye-proto --no-default-features --all-targets -- -D warnings
cargo test --locked -p sockeye-proto --no-default-features
cargo test --locked -p sockeye --no-default-features
cargo test --locked -p sockeye --no-default-features --features deflate
cargo test --locked -p sockeye --no-default-features --features rustls
cargo test --locked -p sockeye --features metrics --test metrics

step "soak, small: 200 connections x 20 s of sockeye bench --soak against sockeye echo"
# Every message accounted for through random reconnects, the server's descriptors back to
# their count before, its memory flat (bench/soak.sh; BENCHMARKS.md has the full size).
cargo build --locked -p sockeye-cli --bin sockeye
SOCKEYE=target/debug/sockeye "${SOAK_SCRIPT:-bench/soak.sh}" 200 20

if [ $skip_autobahn = 1 ]; then
  step "Autobahn|Testsuite: skipped"
  autobahn_skipped
  exit 0
fi
step "Autobahn|Testsuite, server and client role (strict)"
conformance/autobahn.sh both
