#!/usr/bin/env bash
# harness.sh - run the Autobahn|Testsuite (wstest, Python 2.7) against a WebSocket
# server or client and summarize the results; conformance/autobahn.sh runs it for
# Sockeye in both roles.  See `harness.sh --help`.
#
# Exit status: 0 = pass, 1 = cases failed (or non-strict/unimplemented with --strict),
#              2 = harness error (setup, timeout, unreachable server, no report).
set -euo pipefail

PROG=harness.sh
TESTSUITE_SPEC="${AUTOBAHN_TESTSUITE_SPEC:-autobahntestsuite==25.10.1}"

usage() {
  cat <<'EOF'
Usage:
  harness.sh server URL [options] [-- CMD ARGS...]
      Run wstest -m fuzzingclient against the WebSocket server at URL
      (e.g. ws://127.0.0.1:9002).  With "-- CMD ...", CMD is started first (in
      its own process group, output to server.log), the harness waits for URL's
      port to accept connections, and CMD is killed afterwards.  In CMD's args
      {url}, {host} and {port} are substituted; AUTOBAHN_URL is exported.
  harness.sh client [options] -- CMD ARGS...
      Start wstest -m fuzzingserver on a free 127.0.0.1 port, run CMD, which must
      fetch /getCaseCount, run every /runCase?case=N&agent=A and (ideally) call
      /updateReports?agent=A.  CMD gets AUTOBAHN_URL=ws://127.0.0.1:PORT and
      AUTOBAHN_AGENT; {url} and {agent} in its args are substituted.  The harness
      calls /updateReports itself after CMD exits, so partial runs still report.
  harness.sh report INDEX_JSON [options]
      Only summarize an existing wstest index.json.

Options:
  --agent NAME       agent name (server: name in reports, default "testee";
                     client: passed to CMD, and only this agent is summarized
                     if given - otherwise every agent in the report is)
  --cases LIST       comma-separated case patterns (default '*')
  --exclude LIST     comma-separated patterns to exclude, e.g. '12.*,13.*'
  --strict           also fail on NON-STRICT, UNIMPLEMENTED and non-OK/INFORMATIONAL
                     behaviorClose
  --timeout SECS     hard limit for the whole run (default 3600, $AUTOBAHN_TIMEOUT)
  --wait SECS        server mode: how long to wait for URL's port (default 30)
  --out DIR          where runs are kept (default ./target/autobahn, $AUTOBAHN_OUT);
                     a run uses DIR/<mode>-<agent>/ (wiped first)
  -v, --verbose      stream the wstest log instead of writing it only to a file
  -h, --help

Environment: AUTOBAHN_VENV (py2.7 virtualenv with wstest; default
./target/autobahn-venv, created on first use), AUTOBAHN_PYTHON (python2.7 to
build it with), AUTOBAHN_TESTSUITE_SPEC (pip spec, default autobahntestsuite==25.10.1).
The last line printed is always either
  autobahn: N cases, N ok, N non-strict, N failed, N unimplemented, N informational, N missing, N close-not-ok => PASS|FAIL
or a line starting with "autobahn: error:".
EOF
}

die() { echo "autobahn: error: $*"; exit 2; }
info() { echo "autobahn: $*"; }
now() { date +%s; }

# ---------------------------------------------------------------- arguments
[ $# -ge 1 ] || { usage >&2; exit 2; }
MODE="$1"; shift
case "$MODE" in
  server|client|report) ;;
  -h|--help|help) usage; exit 0 ;;
  *) echo "$PROG: unknown mode '$MODE' (want server|client|report)" >&2; exit 2 ;;
esac

URL=""; INDEX=""; AGENT=""; CASES="*"; EXCLUDE=""; STRICT=0; VERBOSE=0
TIMEOUT="${AUTOBAHN_TIMEOUT:-3600}"; WAIT=30
OUT_BASE="${AUTOBAHN_OUT:-./target/autobahn}"
CMD=()
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) AGENT="${2:?--agent needs a value}"; shift 2 ;;
    --agent=*) AGENT="${1#*=}"; shift ;;
    --cases) CASES="${2:?--cases needs a value}"; shift 2 ;;
    --cases=*) CASES="${1#*=}"; shift ;;
    --exclude) EXCLUDE="${2-}"; shift 2 ;;
    --exclude=*) EXCLUDE="${1#*=}"; shift ;;
    --strict) STRICT=1; shift ;;
    --timeout) TIMEOUT="${2:?}"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; shift ;;
    --wait) WAIT="${2:?}"; shift 2 ;;
    --wait=*) WAIT="${1#*=}"; shift ;;
    --out) OUT_BASE="${2:?}"; shift 2 ;;
    --out=*) OUT_BASE="${1#*=}"; shift ;;
    -v|--verbose) VERBOSE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; CMD=("$@"); break ;;
    -*) echo "$PROG: unknown option '$1'" >&2; exit 2 ;;
    *)
      if [ "$MODE" = server ] && [ -z "$URL" ]; then URL="$1"
      elif [ "$MODE" = report ] && [ -z "$INDEX" ]; then INDEX="$1"
      else echo "$PROG: unexpected argument '$1'" >&2; exit 2; fi
      shift ;;
  esac
done
case "$TIMEOUT$WAIT" in *[!0-9]*) die "--timeout/--wait must be whole seconds" ;; esac
[ "$MODE" != server ] || [ -n "$URL" ] || die "server mode needs a URL (e.g. ws://127.0.0.1:9002)"
[ "$MODE" != client ] || [ ${#CMD[@]} -gt 0 ] || die "client mode needs '-- CMD ...'"
[ "$MODE" != report ] || [ -f "$INDEX" ] || die "report mode needs an existing index.json (got '$INDEX')"
for tool in timeout setsid; do command -v "$tool" >/dev/null || die "'$tool' not found (coreutils/util-linux)"; done

START=$(now); DEADLINE=$((START + TIMEOUT))
remaining() { local r=$((DEADLINE - $(now))); [ $r -gt 0 ] || r=1; echo $r; }

# ---------------------------------------------------------------- process cleanup
PGIDS=()
cleanup() {
  local pg
  for pg in "${PGIDS[@]:-}"; do
    [ -n "$pg" ] || continue
    kill -TERM -- "-$pg" 2>/dev/null || true
  done
  if [ ${#PGIDS[@]} -gt 0 ]; then
    sleep 0.5
    for pg in "${PGIDS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
  fi
}
trap cleanup EXIT
trap 'echo "autobahn: error: interrupted"; exit 2' INT TERM

# ---------------------------------------------------------------- python 2.7 + wstest venv
is_py27() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1; }

find_python27() {
  local c root
  if [ -n "${AUTOBAHN_PYTHON:-}" ]; then
    is_py27 "$AUTOBAHN_PYTHON" && { echo "$AUTOBAHN_PYTHON"; return 0; }
    return 1
  fi
  # NB: a pyenv *shim* named python2.7 may be on PATH but fail unless 2.7 is
  # the active pyenv version, hence every candidate is actually executed.
  for c in "$(command -v python2.7 || true)" "$(command -v python2 || true)"; do
    is_py27 "$c" && { echo "$c"; return 0; }
  done
  for root in "$(pyenv root 2>/dev/null || true)" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
    [ -n "$root" ] && [ -d "$root/versions" ] || continue
    for c in $(ls -d "$root"/versions/2.7* 2>/dev/null | sort -rV); do
      is_py27 "$c/bin/python" && { echo "$c/bin/python"; return 0; }
    done
  done
  for c in /usr/bin/python2.7 /usr/local/bin/python2.7; do
    is_py27 "$c" && { echo "$c"; return 0; }
  done
  return 1
}

VENV="${AUTOBAHN_VENV:-./target/autobahn-venv}"
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
VPY="$VENV/bin/python"

venv_ok() { [ -f "$VENV/.autobahn-ok" ] && "$VPY" -c 'import autobahntestsuite.wstest' >/dev/null 2>&1; }

setup_venv() {
  venv_ok && return 0
  local lock="$VENV.lock" log="$VENV.setup.log" py
  if command -v flock >/dev/null; then exec 9>"$lock"; flock -w "$(remaining)" 9 || die "timed out waiting for $lock"; fi
  venv_ok && return 0                      # someone else built it meanwhile
  py="$(find_python27)" || die "Python 2.7 not found (tried \$AUTOBAHN_PYTHON, python2.7/python2 on PATH, \$(pyenv root)/versions/2.7*); install one, e.g. 'pyenv install 2.7.18', or set AUTOBAHN_PYTHON=/path/to/python2.7"
  info "setting up wstest virtualenv at $VENV (python: $py; log: $log)"
  rm -rf "$VENV"; : >"$log"
  export PYTHONWARNINGS=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  if "$py" -c 'import virtualenv' >/dev/null 2>&1; then
    timeout "$(remaining)" "$py" -m virtualenv -q "$VENV" >>"$log" 2>&1 || { tail -n 20 "$log"; die "virtualenv creation failed (see $log)"; }
  else
    "$py" -m pip --version >/dev/null 2>&1 || die "$py has neither the 'virtualenv' module nor pip; run '$py -m ensurepip' or install virtualenv<20.22 for it"
    # virtualenv >= 20.22 cannot create Python 2 environments.
    local boot="$VENV.bootstrap"; rm -rf "$boot"
    timeout "$(remaining)" "$py" -m pip install -q --target "$boot" "virtualenv<20.22" >>"$log" 2>&1 || { tail -n 20 "$log"; die "pip install virtualenv<20.22 failed (see $log)"; }
    PYTHONPATH="$boot" timeout "$(remaining)" "$py" -m virtualenv -q "$VENV" >>"$log" 2>&1 || { tail -n 20 "$log"; die "virtualenv creation failed (see $log)"; }
    rm -rf "$boot"
  fi
  # (pip install --target of autobahntestsuite does not work: zope.* namespace packages break)
  timeout "$(remaining)" "$VENV/bin/pip" install -q "$TESTSUITE_SPEC" >>"$log" 2>&1 || { tail -n 20 "$log"; die "pip install $TESTSUITE_SPEC failed (see $log)"; }
  "$VPY" -c 'import autobahntestsuite.wstest' >>"$log" 2>&1 || { tail -n 20 "$log"; die "wstest does not import after install (see $log)"; }
  touch "$VENV/.autobahn-ok"
  info "wstest ready ($("$VPY" -c 'import autobahntestsuite, autobahn; print("autobahntestsuite %s, autobahn %s" % (autobahntestsuite.version, autobahn.version))' 2>/dev/null))"
}
setup_venv
export PYTHONWARNINGS=ignore   # silence python2/cryptography deprecation noise

# ---------------------------------------------------------------- summary (python, runs in the venv)
summarize() {  # summarize INDEX SPEC_OR_EMPTY ; prints summary, returns exit code
  "$VPY" - "$1" "${2:-}" "$AGENT" "$STRICT" "$MODE" <<'PYEOF'
import json, sys
index_path, spec_path, agent, strict, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5]
def key(cid):
    return tuple(int(x) if x.isdigit() else x for x in cid.split("."))
try:
    with open(index_path) as f:
        index = json.load(f)
except Exception as e:
    print("autobahn: error: cannot read %s: %s" % (index_path, e)); sys.exit(2)
expected = None
if spec_path:
    from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories, CaseSetname, CaseBasename
    from autobahntestsuite.caseset import CaseSet
    with open(spec_path) as f:
        spec = json.load(f)
    expected = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories).parseSpecCases(spec)
agents = sorted(index)
if agent and mode != "server":
    if agent not in index:
        print("autobahn: error: agent %r not in report (agents: %s)" % (agent, ", ".join(agents) or "none")); sys.exit(2)
    agents = [agent]
if not agents:
    print("autobahn: error: report %s has no agents (did the client/server run any case?)" % index_path); sys.exit(2)
def compress(ids):
    # "12.1.1 12.1.2 ... 12.1.18" -> "12.1.1-18"
    out, run = [], []
    def flush():
        if run:
            out.append(run[0] if len(run) == 1 else "%s-%s" % (run[0], run[-1].split(".")[-1]))
    for c in ids:
        if run:
            p, q = run[-1].rsplit(".", 1), c.rsplit(".", 1)
            if p[0] == q[0] and p[1].isdigit() and q[1].isdigit() and int(q[1]) == int(p[1]) + 1:
                run.append(c); continue
        flush(); run = [c]
    flush()
    return " ".join(out)
BEH = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
tot = dict(cases=0, ok=0, ns=0, failed=0, unimpl=0, info=0, missing=0, closebad=0)
for a in agents:
    res = index[a]
    ids = sorted(res, key=key)
    beh, cl = {}, {}
    for c in ids:
        b, bc = res[c].get("behavior"), res[c].get("behaviorClose")
        beh[b] = beh.get(b, 0) + 1
        cl[bc] = cl.get(bc, 0) + 1
    missing = sorted(set(expected) - set(ids), key=key) if expected is not None else []
    print("agent %s: %d cases" % (a, len(ids)))
    print("  behavior:      " + ", ".join("%s=%d" % (b, beh.get(b, 0)) for b in BEH + sorted(set(beh) - set(BEH))))
    print("  behaviorClose: " + ", ".join("%s=%d" % (b, n) for b, n in sorted(cl.items(), key=lambda kv: (kv[0] != "OK", kv[0]))))
    # every non-OK case, grouped by behavior and by section (first two id parts)
    groups = {}
    for c in ids:
        r = res[c]
        b, bc = r.get("behavior"), r.get("behaviorClose")
        if b == "OK" and bc in ("OK", "INFORMATIONAL"):
            continue
        label = b if b != "OK" else "OK but close=%s" % bc
        if b != "OK" and bc not in ("OK", "INFORMATIONAL", None):
            label = "%s (close=%s)" % (b, bc)
        # UNIMPLEMENTED (e.g. no permessage-deflate: 12.*/13.*) is grouped per top-level section
        sec = ".".join(c.split(".")[:1 if b == "UNIMPLEMENTED" else 2]) + ".x"
        groups.setdefault(label, {}).setdefault(sec, []).append(c)
    if groups or missing:
        print("  non-OK cases:")
        for label in sorted(groups, key=lambda l: (9 if l.startswith("OK but") else BEH.index(l.split()[0]) if l.split()[0] in BEH else 8, l)):
            for sec in sorted(groups[label], key=lambda s: key(s[:-2])):
                cs = groups[label][sec]
                print("    %-28s %-7s %3d: %s" % (label, sec, len(cs), compress(cs)))
        if missing:
            print("    %-28s %-7s %3d: %s" % ("MISSING (never reported)", "", len(missing), compress(missing)))
    tot["cases"] += len(ids)
    tot["ok"] += beh.get("OK", 0)
    tot["ns"] += beh.get("NON-STRICT", 0)
    tot["unimpl"] += beh.get("UNIMPLEMENTED", 0)
    tot["info"] += beh.get("INFORMATIONAL", 0)
    tot["failed"] += sum(n for b, n in beh.items() if b not in ("OK", "NON-STRICT", "UNIMPLEMENTED", "INFORMATIONAL"))
    tot["missing"] += len(missing)
    tot["closebad"] += sum(n for b, n in cl.items() if b not in ("OK", "INFORMATIONAL"))
bad = tot["failed"] > 0 or tot["missing"] > 0
if strict and (tot["ns"] or tot["unimpl"] or tot["closebad"]):
    bad = True
print("autobahn: %(cases)d cases, %(ok)d ok, %(ns)d non-strict, %(failed)d failed, %(unimpl)d unimplemented, "
      "%(info)d informational, %(missing)d missing, %(closebad)d close-not-ok" % tot + (" => FAIL" if bad else " => PASS"))
sys.exit(1 if bad else 0)
PYEOF
}

if [ "$MODE" = report ]; then
  src=0; summarize "$INDEX" "" || src=$?; exit $src
fi

# ---------------------------------------------------------------- run directory, spec, launcher
[ -n "$AGENT" ] || AGENT=testee
SAFE_AGENT="$(printf '%s' "$AGENT" | tr -c 'A-Za-z0-9._-' '_')"
mkdir -p "$OUT_BASE"
RUN_DIR="$(cd "$OUT_BASE" && pwd)/$MODE-$SAFE_AGENT"
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
LOG="$RUN_DIR/wstest.log"
SPEC="$RUN_DIR/spec.json"
if [ "$MODE" = server ]; then REPORTS="$RUN_DIR/reports/servers"; else REPORTS="$RUN_DIR/reports/clients"; fi

# wstest launcher: quiet python warnings, and make the fuzzingserver listen on
# 127.0.0.1 only (stock wstest binds 0.0.0.0).
LAUNCHER="$RUN_DIR/wstest_launcher.py"
cat >"$LAUNCHER" <<'PYEOF'
import sys, warnings
warnings.simplefilter("ignore")
import autobahntestsuite.wstest as wstest   # must come first: picks the reactor
fz = sys.modules["autobahntestsuite.fuzzing"]
_listen = fz.listenWS
def listen_loopback(factory, contextFactory=None, backlog=50, interface="127.0.0.1"):
    return _listen(factory, contextFactory, backlog, interface)
fz.listenWS = listen_loopback
sys.argv[0] = "wstest"
sys.exit(wstest.run())
PYEOF

# minimal WebSocket client used for the fuzzingserver's control URLs
WSCALL="$RUN_DIR/ws_call.py"
cat >"$WSCALL" <<'PYEOF'
import base64, os, socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=280)
key = base64.b64encode(os.urandom(16)).decode("ascii")
s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, port, key)).encode("ascii"))
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(65536)
    if not d: sys.exit("connection closed during handshake")
    buf += d
head, rest = buf.split(b"\r\n\r\n", 1)
if b" 101 " not in head.split(b"\r\n")[0]: sys.exit("handshake refused: %r" % head[:200])
try:
    while not (len(rest) >= 1 and bytearray(rest)[0] & 0x0f == 8):   # wait for the server's close frame
        d = s.recv(65536)
        if not d: break
        rest += d
    s.sendall(b"\x88\x80" + os.urandom(4))  # masked, empty close frame
    while s.recv(65536): pass
except socket.error:
    pass
PYEOF

make_spec() {  # make_spec URL_OR_PORT
  "$VPY" - "$MODE" "$1" "$AGENT" "$CASES" "$EXCLUDE" "$REPORTS" >"$SPEC" <<'PYEOF'
import json, sys
mode, url, agent, cases, exclude, outdir = sys.argv[1:7]
split = lambda s: [p.strip() for p in s.split(",") if p.strip()]
spec = {"outdir": outdir, "cases": split(cases) or ["*"], "exclude-cases": split(exclude), "exclude-agent-cases": {}}
if mode == "server":
    spec["servers"] = [{"agent": agent, "url": url}]
else:
    spec["url"] = url
print(json.dumps(spec, indent=2))
PYEOF
}

port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# start_bg LOGFILE CMD... : run CMD in its own process group (so it can be
# killed as a whole) under the global deadline (+ $BG_GRACE s); sets BG_PID.
start_bg() {
  local logf="$1"; shift
  if [ "$VERBOSE" = 1 ] && [ "$logf" = "$LOG" ]; then
    setsid -w timeout -k 10 "$(( $(remaining) + ${BG_GRACE:-0} ))" "$@" > >(tee "$logf") 2>&1 &
  else
    setsid -w timeout -k 10 "$(( $(remaining) + ${BG_GRACE:-0} ))" "$@" >"$logf" 2>&1 &
  fi
  BG_PID=$!
  PGIDS+=("$BG_PID")
}

# wait_wstest PID TOTAL : wait, printing progress every 60 s; returns wstest's rc
wait_wstest() {
  local pid="$1" total="$2" t0 last n rc
  t0=$(now); last=$t0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ "$VERBOSE" = 0 ] && [ $(( $(now) - last )) -ge 60 ]; then
      last=$(now)
      n=$(grep -c 'Running test case ID' "$LOG" 2>/dev/null || true)
      info "... $((last - t0))s, $n/$total cases started ($(grep -o 'Running test case ID [0-9.]*' "$LOG" 2>/dev/null | tail -n 1 | awk '{print $NF}'))"
    fi
  done
  rc=0; wait "$pid" || rc=$?
  return $rc
}

parse_url() {  # sets U_HOST U_PORT
  if [[ "$1" =~ ^(wss?)://(\[[^]]+\]|[^/:?#]+)(:([0-9]+))?([/?#].*)?$ ]]; then
    U_HOST="${BASH_REMATCH[2]}"; U_HOST="${U_HOST#[}"; U_HOST="${U_HOST%]}"
    U_PORT="${BASH_REMATCH[4]}"
    [ -n "$U_PORT" ] || { [ "${BASH_REMATCH[1]}" = wss ] && U_PORT=443 || U_PORT=80; }
  else
    die "cannot parse URL '$1' (want ws://host:port[/path])"
  fi
}

expected_count() {
  "$VPY" - "$SPEC" <<'PYEOF'
import json, sys
from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories, CaseSetname, CaseBasename
from autobahntestsuite.caseset import CaseSet
print(len(CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories).parseSpecCases(json.load(open(sys.argv[1])))))
PYEOF
}

# ---------------------------------------------------------------- server mode
if [ "$MODE" = server ]; then
  parse_url "$URL"
  make_spec "$URL"
  TOTAL=$(expected_count)
  export AUTOBAHN_URL="$URL" AUTOBAHN_AGENT="$AGENT"
  if [ ${#CMD[@]} -gt 0 ]; then
    args=(); for a in "${CMD[@]}"; do a="${a//\{url\}/$URL}"; a="${a//\{host\}/$U_HOST}"; a="${a//\{port\}/$U_PORT}"; args+=("$a"); done
    port_open "$U_HOST" "$U_PORT" && die "something already listens on $U_HOST:$U_PORT; not starting '${args[0]}'"
    start_bg "$RUN_DIR/server.log" "${args[@]}"; SERVER_PID=$BG_PID
    info "started server under test: ${args[*]} (pid $SERVER_PID, log $RUN_DIR/server.log)"
  fi
  waited=0
  until port_open "$U_HOST" "$U_PORT"; do
    if [ -n "${SERVER_PID:-}" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -n 20 "$RUN_DIR/server.log"; die "server command exited before listening on $U_HOST:$U_PORT"
    fi
    [ $waited -lt "$WAIT" ] || die "nothing accepts connections on $U_HOST:$U_PORT after ${WAIT}s"
    sleep 1; waited=$((waited + 1))
  done
  info "fuzzingclient: $TOTAL cases against $URL as agent '$AGENT' (limit $(remaining)s; log $LOG)"
  T0=$(now)
  start_bg "$LOG" bash -c 'cd "$0" && exec "$@"' "$RUN_DIR" "$VPY" "$LAUNCHER" -m fuzzingclient -s "$SPEC"
  rc=0; wait_wstest "$BG_PID" "$TOTAL" || rc=$?
  ELAPSED=$(( $(now) - T0 ))
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then info "wstest hit the time limit after ${ELAPSED}s"; fi
  if [ -n "${SERVER_PID:-}" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then info "warning: server under test exited during the run (see $RUN_DIR/server.log)"; fi
  if grep -q 'Connection to .* failed' "$LOG"; then info "warning: $(grep -m1 'Connection to .* failed' "$LOG")"; fi
fi

# ---------------------------------------------------------------- client mode
if [ "$MODE" = client ]; then
  PORT=$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  FURL="ws://127.0.0.1:$PORT"
  make_spec "$FURL"
  TOTAL=$(expected_count)
  # the fuzzingserver outlives the deadline a bit, so reports can still be written after a client timeout
  BG_GRACE=360 start_bg "$LOG" bash -c 'cd "$0" && exec "$@"' "$RUN_DIR" "$VPY" "$LAUNCHER" -m fuzzingserver -s "$SPEC" --webport=0
  WSTEST_PID=$BG_PID
  waited=0
  until port_open 127.0.0.1 "$PORT"; do
    kill -0 "$WSTEST_PID" 2>/dev/null || { tail -n 20 "$LOG"; die "wstest fuzzingserver exited during startup (see $LOG)"; }
    [ $waited -lt 30 ] || die "wstest fuzzingserver did not listen on 127.0.0.1:$PORT within 30s (see $LOG)"
    sleep 1; waited=$((waited + 1))
  done
  export AUTOBAHN_URL="$FURL" AUTOBAHN_AGENT="$AGENT"
  args=(); for a in "${CMD[@]}"; do a="${a//\{url\}/$FURL}"; a="${a//\{agent\}/$AGENT}"; args+=("$a"); done
  info "fuzzingserver at $FURL ($TOTAL cases); running client: ${args[*]} (limit $(remaining)s; log $RUN_DIR/client.log)"
  T0=$(now)
  start_bg "$RUN_DIR/client.log" "${args[@]}"
  CLIENT_PID=$BG_PID
  crc=0; wait_wstest "$CLIENT_PID" "$TOTAL" || crc=$?
  ELAPSED=$(( $(now) - T0 ))
  if [ $crc -eq 124 ] || [ $crc -eq 137 ]; then info "client hit the time limit after ${ELAPSED}s"; CLIENT_TIMEOUT=1
  elif [ $crc -ne 0 ]; then info "warning: client exited with status $crc (see $RUN_DIR/client.log)"; fi
  # (re)generate reports ourselves, so partial runs and clients that skip
  # /updateReports still report; then stop the fuzzingserver cleanly.
  if kill -0 "$WSTEST_PID" 2>/dev/null; then
    timeout 300 "$VPY" "$WSCALL" 127.0.0.1 "$PORT" "/updateReports?agent=autobahn.sh" || info "warning: /updateReports by harness failed"
    timeout 20 "$VPY" "$WSCALL" 127.0.0.1 "$PORT" "/stopServer" >/dev/null 2>&1 || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$WSTEST_PID" 2>/dev/null || break; sleep 1; done
  fi
fi

# ---------------------------------------------------------------- summary
INDEX="$REPORTS/index.json"
info "wall time ${ELAPSED}s; wstest log $LOG"
info "reports: $REPORTS (index.json, index.html)"
if [ ! -f "$INDEX" ]; then
  tail -n 15 "$LOG"
  die "no $INDEX (wstest rc=${rc:-?}; see $LOG)"
fi
TIMED_OUT=0
if [ "${CLIENT_TIMEOUT:-0}" = 1 ] || [ "${rc:-0}" = 124 ] || [ "${rc:-0}" = 137 ]; then
  TIMED_OUT=1; info "warning: time limit (${TIMEOUT}s) reached; the summary below is partial"
fi
src=0; summarize "$INDEX" "$SPEC" || src=$?
[ $TIMED_OUT = 0 ] || exit 2
exit $src
