#!/usr/bin/env bash
# Fork of a logged-in context session into N = 1, 4, 16 (each N once per round, rounds
# alternated): time to the fork's 201 (every fork's cookies, tabs and storage written) and
# to every fork's first CDP reply. Medians of ROUNDS runs; then the memory (PSS) per forked
# session, and where the time goes inside the broker (its log).
# BASELINE=path/to/cdpgate: an older build beside this one, alternated fork by fork.
# GATE_ENV / BASELINE_ENV="VAR=VALUE ...": settings of one broker only (e.g. the same build
# twice, BASELINE=target/release/cdpgate, with other `CDPGATE_CONTEXT_SPARES`).
# WAIT_UNTIL=load,start: each broker's forks with each `wait_until`, alternated too.
# TABS=1: the source keeps its first tab only (a fork then opens no tab: no renderer to start).
# usage: [BASELINE=BIN] scripts/bench-fork.sh [ROUNDS] [COUNTS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
counts=${2:-1,4,16}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" $(cat "$tmp/broker-pids" 2>/dev/null) 2>/dev/null || true
  wait 2>/dev/null || true
  sleep 1
  rm -rf "$tmp"
}
trap cleanup EXIT
. scripts/bench-lib.sh

# The site of tests/fork.rs: /login sets a session cookie, localStorage and sessionStorage.
site_port=$(free_port)
python3 - "$site_port" <<'PY' &
import http.server, sys
class Site(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/login":
            body = b"<script>localStorage.setItem('token','tok-1');sessionStorage.setItem('tab','first')</script>in"
        else:
            body = (b"<html><head><script>document.title=(localStorage.getItem('token')||'-')+'|'+"
                    b"(sessionStorage.getItem('tab')||'-')</script></head><body><div style='height:6000px'></div></body></html>")
        self.send_response(200)
        self.send_header("content-type", "text/html")
        if self.path == "/login":
            self.send_header("set-cookie", "sid=s3cr3t; Path=/; HttpOnly")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Site).serve_forever()
PY
pids+=($!)

key=bench-key-0123456789abcdef
# The brokers log each fork's read, creates and writes (src/broker/fork.rs), one JSON line.
settings=(CDPGATE_DEFAULT_ISOLATION=context CDPGATE_CONTEXT_BROWSERS=1 CDPGATE_MAX_CONTEXTS_PER_BROWSER=40
  CDPGATE_LOG_FORMAT=json RUST_LOG=warn,cdpgate::broker::fork=info)
gates="this=http://$(start_broker target/release/cdpgate fork "${settings[@]}" ${GATE_ENV:-})"
names=(fork)
if [ -n "${BASELINE:-}" ]; then
  gates="$gates,baseline=http://$(start_broker "$BASELINE" baseline "${settings[@]}" ${BASELINE_ENV:-})"
  names+=(baseline)
fi
echo "load before: $(uptime)"
WAIT_UNTIL="${WAIT_UNTIL:-load}" DATA_DIR="$tmp/data-fork" node --experimental-websocket tests/js/bench_fork.mjs "$gates" "$key" \
  "http://127.0.0.1:$site_port" "$rounds" "$counts" | python3 -m json.tool
echo "load after: $(uptime)"
echo "Inside the broker (medians per N, ms from the fork's start: the source read, every fork's"
echo "create; then the writes of every fork's state, from the last of those; the memory fork included):"
for name in "${names[@]}"; do
  python3 - "$tmp/$name.log" "$name" <<'PY'
import json, statistics, sys
by_n = {}
for line in open(sys.argv[1]):
    if "session forked" not in line:
        continue
    f = json.loads(line).get("fields", {})
    if "read_ms" in f:
        key = (f["forks"], f.get("wait_until", "Loaded"))
        by_n.setdefault(key, []).append((f["read_ms"], f["create_ms"], f["write_ms"]))
for (n, mode), rows in sorted(by_n.items()):
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print(f"{sys.argv[2].replace('fork', 'this')} N={n} {mode} ({len(rows)} forks): read {med[0]:.0f}, creates {med[1]:.0f}, writes {med[2]:.0f}")
PY
done
