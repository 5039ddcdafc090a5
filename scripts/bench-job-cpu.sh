#!/usr/bin/env bash
# Where a process session's job CPU goes, independent of whatever else the machine runs:
# the broker (release build, its default browser) and every Chrome it starts run in one
# cgroup (cgroup v1 `cpuacct`, as root), the Puppeteer client in another, and each
# measure is the cgroups' CPU time over N jobs back to back plus 4 s for the pool's
# replacement launches. Measures, ROUNDS times each: a job on the shell, a job on the full
# Chromium ("browser": "full"), a create and terminate alone, then Puppeteer launching
# the shell itself (no broker; the client counted with it).
# GATE_ENV="CDPGATE_X=…" sets more of the broker's settings.
# usage: [GATE_ENV=…] scripts/bench-job-cpu.sh [N] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
rounds=${2:-2}
[ "$(id -u)" = 0 ] || { echo "needs root (cgroups)" >&2; exit 1; }
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
root=/sys/fs/cgroup/cpuacct
[ -f "$root/cpuacct.usage" ] || { echo "no cgroup v1 cpuacct at $root" >&2; exit 1; }
gate_cg=$root/cdpgate-bench-gate.$$
client_cg=$root/cdpgate-bench-client.$$
mkdir "$gate_cg" "$client_cg"
tmp=$(mktemp -d)
cleanup() {
  kill $(cat "$tmp/broker-pids" 2>/dev/null) ${site:-} 2>/dev/null || true
  wait 2>/dev/null || true
  sleep 1
  rmdir "$gate_cg" "$client_cg" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
. scripts/bench-lib.sh
key=bench-key-0123456789abcdef
mkdir -p "$tmp/site"
echo '<html><head><title>job</title></head><body><h1>A page for the job</h1><p>Some text.</p></body></html>' >"$tmp/site/index.html"
port=$(free_port)
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
site=$!
url=http://127.0.0.1:$port/index.html

# run_in CGROUP COMMAND…: runs the command inside the cgroup.
run_in() { local cg=$1; shift; sh -c 'echo $$ >"$0/cgroup.procs"; exec "$@"' "$cg" "$@"; }
usage() { cat "$1/cpuacct.usage"; }

# shellcheck disable=SC2086 # GATE_ENV: more settings, split on spaces
gate=$(run_in "$gate_cg" env ${GATE_ENV:-} bash -c ". scripts/bench-lib.sh; tmp=$tmp key=$key; start_broker target/release/cdpgate gate")
broker=$(head -1 "$tmp/broker-pids")
sleep 5
own() { awk '{print $14 + $15}' "/proc/$broker/stat"; }
measure() { # name mode body
  local g0 o0 c0 g1 o1 c1
  g0=$(usage "$gate_cg") o0=$(own) c0=$(usage "$client_cg")
  run_in "$client_cg" node tests/js/bench_job_cpu.mjs "$2|$gate|$key|$3" "$n" "$url"
  c1=$(usage "$client_cg")
  sleep 4
  g1=$(usage "$gate_cg") o1=$(own)
  python3 -c "print('$1: broker and its Chromes', round(($g1 - $g0) / 1e9 / $n, 3), 'CPU-s per job; the broker alone', round(($o1 - $o0) / 100 / $n, 3), '; the client', round(($c1 - $c0) / 1e9 / $n, 3))"
}
echo "load: $(uptime)"
for _ in $(seq "$rounds"); do
  measure "process session, default browser" gate '{}'
  measure "process session, full Chromium" gate '{"browser":"full"}'
  measure "create and terminate alone" create '{}'
done
for _ in $(seq "$rounds"); do
  c0=$(usage "$client_cg")
  run_in "$client_cg" node tests/js/bench_job_cpu.mjs "launch|/usr/lib/chromium/chromium-headless-shell" "$n" "$url"
  c1=$(usage "$client_cg")
  python3 -c "print('Puppeteer launching the shell, its client included:', round(($c1 - $c0) / 1e9 / $n, 3), 'CPU-s per job')"
done
echo "load: $(uptime)"
