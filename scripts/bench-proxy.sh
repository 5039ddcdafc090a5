#!/usr/bin/env bash
# Proxy load, side by side in one run: direct to a WebSocket echo server, through cdpgate
# (a bring-your-own session fronting the echo server), and through nginx when installed.
# Then: broker memory per idle proxied connection, and how soon after expires_at the TTL
# close frames arrive.
# usage: [BASELINE=old/cdpgate] [MAIN_RUNTIME=1] [VARIANT_ENV="CDPGATE_X=1 …"] scripts/bench-proxy.sh [ROUNDS] [SECONDS] [IDLE_CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
idle=${3:-10000}
# Each idle connection costs the broker two descriptors, and the echo server and the load
# tool one each.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
scripts/setup.sh
cargo build --release --quiet --bin cdpgate --bin wsload
tmp=$(mktemp -d)
. scripts/bench-lib.sh
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$tmp/extra-pids" ] && xargs -r kill <"$tmp/extra-pids" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Waits for "<prefix> ADDR" in a log and prints ADDR.
address_in() {
  for _ in $(seq 100); do
    addr=$(grep -o "$2 [0-9.:]*" "$1" 2>/dev/null | head -1 | awk '{print $NF}')
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.1
  done
  echo "no address in $1" >&2; cat "$1" >&2; exit 1
}

target/release/wsload echo --listen 127.0.0.1:0 >"$tmp/echo.log" 2>&1 &
pids+=($!)
echo_addr=$(address_in "$tmp/echo.log" "listening on")

key=bench-key-0123456789abcdef
CDPGATE_LISTEN=127.0.0.1:0 CDPGATE_DATA_DIR="$tmp/data" CDPGATE_API_KEYS=$key \
  CDPGATE_BYO_ALLOW=127.0.0.0/8 CDPGATE_POOL_SIZE=0 RUST_LOG=warn CDPGATE_MAX_BYO_SESSIONS_PER_KEY=0 \
  CDPGATE_MAX_CONNECTIONS_PER_SESSION=1000000 CDPGATE_WRITE_STALL_TIMEOUT_MS=600000 \
  target/release/cdpgate "$tmp/no-config.toml" >"$tmp/cdpgate.log" 2>&1 &
pids+=($!)
gate_addr=$(address_in "$tmp/cdpgate.log" "listening on")
cdp_url=$(curl -sf -X POST "http://$gate_addr/public/sessions" -H "X-API-Key: $key" \
  -d "{\"ttl\": 86400, \"cdp_url\": \"ws://$echo_addr/devtools/browser/echo\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["cdp_url"])')

targets=("direct=ws://$echo_addr/devtools/browser/echo" "cdpgate=$cdp_url")
# Another broker fronting the same echo server, as a further target: its name, binary and
# extra environment; prints its cdp_url.
extra_gate() {
  local name=$1 binary=$2
  shift 2
  env CDPGATE_LISTEN=127.0.0.1:0 CDPGATE_DATA_DIR="$tmp/data-$name" CDPGATE_API_KEYS=$key \
    CDPGATE_BYO_ALLOW=127.0.0.0/8 CDPGATE_POOL_SIZE=0 RUST_LOG=warn CDPGATE_MAX_BYO_SESSIONS_PER_KEY=0 \
    CDPGATE_MAX_CONNECTIONS_PER_SESSION=1000000 CDPGATE_WRITE_STALL_TIMEOUT_MS=600000 "$@" \
    "$binary" "$tmp/no-config.toml" >"$tmp/$name.log" 2>&1 &
  echo $! >>"$tmp/extra-pids"
  echo "$name=$!" >>"$tmp/cpu-pids"
  local addr
  addr=$(address_in "$tmp/$name.log" "listening on")
  curl -sf -X POST "http://$addr/public/sessions" -H "X-API-Key: $key" \
    -d "{\"ttl\": 86400, \"cdp_url\": \"ws://$echo_addr/devtools/browser/echo\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["cdp_url"])'
}
# MAIN_RUNTIME=1: also this build with its relays on the main runtime (relay_on_cores =
# false). BASELINE=path/to/cdpgate: also an older build. Same run, alternated.
if [ "${MAIN_RUNTIME:-0}" = 1 ]; then
  targets+=("main-runtime=$(extra_gate main-runtime target/release/cdpgate CDPGATE_RELAY_ON_CORES=false)")
fi
if [ -n "${BASELINE:-}" ]; then
  targets+=("baseline=$(extra_gate baseline "$BASELINE")")
fi
# VARIANT_ENV: also this build with that extra environment (a setting tried side by side).
if [ -n "${VARIANT_ENV:-}" ]; then
  targets+=("variant=$(extra_gate variant target/release/cdpgate $VARIANT_ENV)")
fi
if command -v nginx >/dev/null 2>&1; then
  nginx_port=$(start_nginx "$echo_addr")
  pids+=("$(cat "$tmp/nginx-pid")")
  sleep 0.5
  echo "nginx=${pids[-1]} $(pgrep -P "${pids[-1]}" | tr '\n' ' ')" >>"$tmp/cpu-pids"
  targets+=("nginx=ws://127.0.0.1:$nginx_port/devtools/browser/echo")
else
  echo "(nginx not installed: apt-get install -y nginx to compare with it)"
fi

# CPU seconds (user + system) of the processes PIDS, all threads.
cpu_s() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done |
  awk -v hz="$(getconf CLK_TCK)" '{s += $1} END {printf "%.2f", s / hz}'; }
echo "cdpgate=${pids[1]}" >>"$tmp/cpu-pids"
# Context switches (voluntary: the thread slept; involuntary: it was preempted) of the
# processes PIDS, all threads.
switches() { for p in "$@"; do cat /proc/"$p"/task/*/status 2>/dev/null || true; done |
  awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v + 0, n + 0}'; }
if [ "$rounds" -gt 0 ]; then
  declare -A cpu_before switches_before
  while IFS== read -r name list; do
    cpu_before[$name]=$(cpu_s $list)
    switches_before[$name]=$(switches $list)
  done <"$tmp/cpu-pids"
  target/release/wsload compare "${targets[@]}" --rounds "$rounds" --seconds "$seconds"
  # Each relay serves only its own target's loads, which take the same time for each.
  echo "## CPU and context switches of each relay over all its loads"
  echo
  while IFS== read -r name list; do
    read -r v0 n0 <<<"${switches_before[$name]}"
    read -r v1 n1 <<<"$(switches $list)"
    echo "- $name: $(awk -v a="$(cpu_s $list)" -v b="${cpu_before[$name]}" 'BEGIN {printf "%.2f", a - b}') CPU-s," \
      "$((v1 - v0)) voluntary and $((n1 - n0)) involuntary context switches"
  done <"$tmp/cpu-pids"
  echo
fi

gate_pid=${pids[1]}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
before=$(rss_kib "$gate_pid")
target/release/wsload idle "$cdp_url" --connections "$idle" --hold 5 >"$tmp/idle.log" 2>&1 &
idle_pid=$!
for _ in $(seq 600); do grep -q holding "$tmp/idle.log" && break; sleep 0.1; done
grep -q holding "$tmp/idle.log" || { echo "idle load failed:"; cat "$tmp/idle.log"; exit 1; }
sleep 1
during=$(rss_kib "$gate_pid")
wait "$idle_pid"
echo "## $idle idle proxied connections"
echo
echo "broker RSS $before KiB before, $during KiB while holding them:" \
  "$(( (during - before) * 1024 / (idle > 0 ? idle : 1) )) bytes per connection"
echo

echo "## TTL cutoff"
echo
target/release/wsload cutoff --api "http://$gate_addr" --key "$key" \
  --cdp-url "ws://$echo_addr/devtools/browser/echo" --sessions 50 --ttl 2
