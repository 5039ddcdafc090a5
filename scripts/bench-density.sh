#!/usr/bin/env bash
# Sessions per machine, process isolation against context isolation, side by side in one
# run: memory per session (PSS of every Chrome process / sessions, each session with one
# simple page open), create -> first CDP reply at rest and back to back, and how many
# context sessions this machine holds with a page each while GET /health stays quick.
# Also a page command's round trip in a process session and in a context session (whose
# connections go through the filter's pipe), alternated on one broker.
# BINARY=path/to/cdpgate: measure that build (an older one, say) instead of this checkout's.
# SPARES="2 8": only context creates, one broker per number of spare contexts.
# usage: [CREATES_ONLY=1] [SPARES="N ..."] [BINARY=BIN] scripts/bench-density.sh [SESSIONS=20] [BURST=50] [MAX_CONTEXTS=400] [STEP=50]
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-20}
burst=${2:-50}
max_contexts=${3:-400}
step=${4:-50}
scripts/setup.sh --test
binary=${BINARY:-target/release/cdpgate}
[ -n "${BINARY:-}" ] || cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
cleanup() {
  stop_brokers 2>/dev/null || true
  [ -n "${site_pid:-}" ] && kill "$site_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
. scripts/bench-lib.sh
key=bench-key-0123456789abcdef
client() { node --experimental-websocket tests/js/bench_density.mjs "$@" 2>/dev/null; }

# A simple page: a heading, a paragraph, a little script.
mkdir -p "$tmp/site"
cat >"$tmp/site/index.html" <<'HTML'
<html><head><title>density</title></head><body><h1>A simple page</h1>
<p>Some text to lay out.</p><script>document.title = 'density ' + (6 * 7);</script></body></html>
HTML
site_port=$(free_port)
python3 -m http.server "$site_port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
site_pid=$!
site="http://127.0.0.1:$site_port/"

# PSS (MiB) of every process in the process groups of the browsers under data dir NAME.
pss() {
  python3 - "$tmp/data-$1" <<'PY'
import os, sys
root = sys.argv[1]
groups, total = set(), 0
procs = [p for p in os.listdir('/proc') if p.isdigit()]
def stat(p):
    with open(f'/proc/{p}/stat') as f:
        return f.read().rsplit(')', 1)[1].split()
for p in procs:
    try:
        if root.encode() in open(f'/proc/{p}/cmdline', 'rb').read():
            groups.add(int(stat(p)[2]))
    except OSError:
        pass
for p in procs:
    try:
        if int(stat(p)[2]) in groups:
            for line in open(f'/proc/{p}/smaps_rollup'):
                if line.startswith('Pss:'):
                    total += int(line.split()[1])
    except OSError:
        pass
print(round(total / 1024))
PY
}
# Stops the brokers started so far (and their browsers with them).
stop_brokers() {
  local pids
  pids=$(cat "$tmp/broker-pids" 2>/dev/null || true)
  kill $pids 2>/dev/null || true
  for pid in $pids; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  done
  : >"$tmp/broker-pids"
  sleep 2
}
avail_mib() { awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo; }
per_session() { python3 -c "print(round($1 / $2, 1))"; }

common=(CDPGATE_MAX_SESSIONS=$((sessions + 5)) CDPGATE_QUEUE_TIMEOUT_MS=60000 CDPGATE_DEFAULT_TTL=3600)

# CREATES_ONLY=1: only the creates at rest and back to back (no memory, round trip or capacity).
if [ -z "${CREATES_ONLY:-}" ]; then
echo "== memory: $sessions sessions, one simple page each"
proc=$(start_broker "$binary" process "${common[@]}" CDPGATE_POOL_SIZE=0)
ctx=$(start_broker "$binary" context "${common[@]}" CDPGATE_POOL_SIZE=0 CDPGATE_MAX_CONTEXTS_PER_BROWSER=100)
opened_p=$(client open "http://$proc" "$key" "$sessions" process "$site")
opened_c=$(client open "http://$ctx" "$key" "$sessions" context "$site")
sleep 3
pss_p=$(pss process)
pss_c=$(pss context)
echo "process: $opened_p, PSS ${pss_p} MiB, $(per_session "$pss_p" "$sessions") MiB per session"
echo "context: $opened_c, PSS ${pss_c} MiB, $(per_session "$pss_c" "$sessions") MiB per session"
stop_brokers
fi

# SPARES="2 8": context creates only, one broker per number of spare contexts, alternated.
if [ -n "${SPARES:-}" ]; then
  echo "== context create -> first CDP reply, by spare contexts per shared browser (1 warm browser)"
  declare -A by_spares
  for n in $SPARES; do
    by_spares[$n]=$(start_broker "$binary" "spares-$n-ctx" "${common[@]}" CDPGATE_POOL_SIZE=0 \
      CDPGATE_CONTEXT_WARM_BROWSERS=1 CDPGATE_CONTEXT_SPARES="$n")
  done
  sleep 5
  for n in $SPARES; do echo "$n spares: Chrome's PSS at rest $(pss "spares-$n-ctx") MiB"; done
  for how in rest burst; do
    count=10
    [ "$how" = burst ] && count=$burst
    for n in $SPARES; do
      echo "$how, context, $n spares: $(client latency "http://${by_spares[$n]}" "$key" context "$how" "$count")"
      sleep 3
    done
  done
  stop_brokers
  exit 0
fi

echo "== create -> first CDP reply (process: warm pool of 2; context: 2 spare contexts, 1 warm browser)"
proc=$(start_broker "$binary" process2 "${common[@]}")
ctx=$(start_broker "$binary" context2 "${common[@]}" CDPGATE_CONTEXT_WARM_BROWSERS=1)
sleep 5
for how in rest burst; do
  n=10
  [ "$how" = burst ] && n=$burst
  # Alternated: one broker, then the other.
  echo "$how, process: $(client latency "http://$proc" "$key" process "$how" "$n")"
  sleep 3
  echo "$how, context: $(client latency "http://$ctx" "$key" context "$how" "$n")"
  sleep 3
done
if [ -n "${CREATES_ONLY:-}" ]; then
  stop_brokers
  exit 0
fi
echo "== a page command's round trip through cdpgate: process session vs context session (the pipe)"
echo "$(client roundtrip "http://$ctx" "$key" 4000 process context)"
stop_brokers

# MAX_CONTEXTS=0 stops here.
[ "$max_contexts" -gt 0 ] || exit 0
echo "== capacity: context sessions with a page each, $step at a time, up to $max_contexts"
ctx=$(start_broker "$binary" capacity CDPGATE_POOL_SIZE=0 CDPGATE_DEFAULT_TTL=3600 \
  CDPGATE_CONTEXT_BROWSERS=$(((max_contexts + 49) / 50)) CDPGATE_MAX_CONTEXTS_PER_BROWSER=50 CDPGATE_QUEUE_TIMEOUT_MS=60000)
total=0
while [ "$total" -lt "$max_contexts" ]; do
  if [ "$(avail_mib)" -lt 2048 ]; then
    echo "stopped: less than 2 GiB of memory left"
    break
  fi
  opened=$(client open "http://$ctx" "$key" "$step" context "$site")
  n=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['opened'])" "$opened")
  total=$((total + n))
  health=$(client health "http://$ctx" 200)
  mem=$(pss capacity)
  echo "$total sessions: PSS ${mem} MiB ($(per_session "$mem" "$total") MiB each), available $(avail_mib) MiB, /health $health, opening: $opened"
  if [ "$n" -lt "$step" ]; then
    echo "stopped: a session could not be opened"
    break
  fi
done
