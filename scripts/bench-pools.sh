#!/usr/bin/env bash
# Named pools: create -> first CDP reply of a session taken from a pool with a logged-in
# profile (at rest: every ready browser there) and from a pool of contexts on it, beside a
# cold profile session, rounds alternated, medians; then the memory (PSS) of each ready
# browser the pool keeps.
# usage: scripts/bench-pools.sh [ROUNDS] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
size=${2:-2}
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

# /login sets a session cookie and a persistent one; every page says "in".
site_port=$(free_port)
python3 - "$site_port" <<'PY' &
import http.server, sys
class Site(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<script>localStorage.setItem('user','alice')</script>in"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        if self.path == "/login":
            self.send_header("set-cookie", "sid=s3cr3t; Path=/")
            self.send_header("set-cookie", "remember=yes; Path=/; Max-Age=86400")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Site).serve_forever()
PY
pids+=($!)

key=bench-key-0123456789abcdef
gate=$(start_broker target/release/cdpgate pools CDPGATE_MAX_SESSIONS=8 CDPGATE_POOL_SIZE=1)
node --experimental-websocket tests/js/bench_pools.mjs "http://$gate" "$key" "http://127.0.0.1:$site_port" \
  "$rounds" "$size" 2>/dev/null | python3 -m json.tool

# PSS of the pool's ready browsers (every process in the groups of browsers on a profile
# copy: the pool's, all sessions having ended), and of the warm default browser beside.
python3 - "$tmp/data-pools/browsers/" "$size" <<'PY'
import os, sys
root, size = sys.argv[1], int(sys.argv[2])
procs = [p for p in os.listdir('/proc') if p.isdigit()]
def stat(p):
    with open(f'/proc/{p}/stat') as f:
        return f.read().rsplit(')', 1)[1].split()
def pss(profile_copy):
    groups, total = set(), 0
    for p in procs:
        try:
            args = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\0')
        except OSError:
            continue
        for a in args:
            if a.startswith(b'--user-data-dir=' + root.encode()) and a.endswith(b'-profile') == profile_copy:
                groups.add(int(stat(p)[2]))
    for p in procs:
        try:
            if int(stat(p)[2]) in groups:
                total += sum(int(l.split()[1]) for l in open(f'/proc/{p}/smaps_rollup') if l.startswith('Pss:'))
        except OSError:
            pass
    return len(groups), total / 1024
n, mib = pss(True)
w, warm = pss(False)
print(f"pool: {n} ready browsers, PSS {mib:.0f} MiB, {mib / max(n, 1):.0f} MiB each; warm default browsers: {w}, {warm / max(w, 1):.0f} MiB each")
PY
