#!/usr/bin/env bash
# What each party spends per message under the relay's small-message load (50 connections ×
# 4 in flight, 300 B, through a bring-your-own session fronting the echo server): CPU µs,
# context switches and syscalls per message of the relay, of the echo server and of the
# load tool, counted by `perf stat` over 5 s of each run; then one connection's round trip.
# Targets: this build with each VARIANT's environment, and nginx; alternated over ROUNDS.
# usage: scripts/relay-syscalls.sh [ROUNDS=3] [NAME=VAR=VALUE,VAR=VALUE ...]
#   e.g. scripts/relay-syscalls.sh 3 default= nobatch=CDPGATE_RELAY_SCHED_BATCH=false
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift $(($# < 1 ? $# : 1))
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=("default=")
command -v perf >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
command -v nginx >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
cargo build --release --quiet --bin cdpgate --bin wsload
tmp=$(mktemp -d)
. scripts/bench-lib.sh
trap '[ -f "$tmp/nginx-pid" ] && kill "$(cat "$tmp/nginx-pid")" 2>/dev/null; kill "$echo_pid" 2>/dev/null; stop_brokers' EXIT
key=bench-key-0123456789abcdef
target/release/wsload echo --listen 127.0.0.1:0 >"$tmp/echo.log" 2>&1 &
echo_pid=$!
sleep 0.5
echo_addr=$(grep -o "listening on [0-9.:]*" "$tmp/echo.log" | awk '{print $NF}')

declare -A url pid
names=()
for spec in "${variants[@]}"; do
  name=${spec%%=*}
  IFS=, read -r -a env <<<"${spec#*=}"
  addr=$(start_broker target/release/cdpgate "$name" CDPGATE_BYO_ALLOW=127.0.0.0/8 CDPGATE_POOL_SIZE=0 \
    CDPGATE_MAX_CONNECTIONS_PER_SESSION=1000000 "${env[@]}")
  pid[$name]=$(tail -1 "$tmp/broker-pids")
  url[$name]=$(curl -sf -X POST "http://$addr/public/sessions" -H "X-API-Key: $key" \
    -d "{\"ttl\": 3600, \"cdp_url\": \"ws://$echo_addr/devtools/browser/echo\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["cdp_url"])')
  names+=("$name")
done
nginx_port=$(start_nginx "$echo_addr")
sleep 0.5
pid[nginx]=$(pgrep -d, -P "$(cat "$tmp/nginx-pid")")
url[nginx]="ws://127.0.0.1:$nginx_port/devtools/browser/echo"
names+=(nginx)

events=task-clock,context-switches,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sched_yield
# per_message MESSAGES FILE: one line of perf stat's counts divided by MESSAGES.
per_message() {
  awk -F, -v m="$1" '$1 ~ /^[0-9.]+$/ {
      n = $3; sub(/syscalls:sys_enter_/, "", n)
      if (n == "task-clock") printf "CPU %.2f µs", $1 * 1000 / m; else printf ", %s %.3f", n, $1 / m
    } END { print "" }' "$2"
}
for round in $(seq "$rounds"); do
  echo "## round $round"
  for t in "${names[@]}"; do
    target/release/wsload run "${url[$t]}" --connections 50 --inflight 4 --size 300 --seconds 8 >"$tmp/run.log" 2>&1 &
    load=$!
    sleep 2
    perf stat -x, -e "$events" -p "$echo_pid" -o "$tmp/echo.stat" -- sleep 5 &
    echo_stat=$!
    perf stat -x, -e "$events" -p "$load" -o "$tmp/load.stat" -- sleep 5 &
    load_stat=$!
    perf stat -x, -e "$events" -p "${pid[$t]}" -o "$tmp/relay.stat" -- sleep 5
    wait "$load" "$echo_stat" "$load_stat"
    rate=$(tail -1 "$tmp/run.log" | awk '{print $1}')
    echo "- $t: $(tail -1 "$tmp/run.log")"
    for who in relay echo load; do
      echo "  - $who: $(per_message $((rate * 5)) "$tmp/$who.stat")"
    done
    target/release/wsload run "${url[$t]}" --connections 1 --inflight 1 --size 300 --seconds 3 >"$tmp/rt.log" 2>&1
    echo "  - one connection: $(tail -1 "$tmp/rt.log")"
  done
done
