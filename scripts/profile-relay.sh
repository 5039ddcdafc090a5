#!/usr/bin/env bash
# Where the relay's time goes under load: perf (Debian's linux-perf, installed if missing)
# samples the broker while the load tool sends 300 B messages over 50 connections with 4 in
# flight each through a bring-your-own session fronting an echo server. Prints the share
# of kernel and user time and the top symbols.
# usage: scripts/profile-relay.sh [SECONDS=6]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-6}
command -v perf >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
cargo build --release --quiet --bin cdpgate --bin wsload
tmp=$(mktemp -d)
trap '[ -f "$tmp/pids" ] && xargs -r kill <"$tmp/pids" 2>/dev/null; rm -rf "$tmp"' EXIT
. scripts/bench-lib.sh
key=bench-key-0123456789abcdef
target/release/wsload echo --listen 127.0.0.1:0 >"$tmp/echo.log" 2>&1 &
echo $! >>"$tmp/pids"
sleep 0.5
echo_addr=$(grep -o "listening on [0-9.:]*" "$tmp/echo.log" | awk '{print $NF}')
addr=$(start_broker target/release/cdpgate relay CDPGATE_BYO_ALLOW=127.0.0.0/8 CDPGATE_POOL_SIZE=0 \
  CDPGATE_MAX_CONNECTIONS_PER_SESSION=1000000)
cat "$tmp/broker-pids" >>"$tmp/pids"
url=$(curl -sf -X POST "http://$addr/public/sessions" -H "X-API-Key: $key" \
  -d "{\"ttl\": 3600, \"cdp_url\": \"ws://$echo_addr/devtools/browser/echo\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["cdp_url"])')
target/release/wsload run "$url" --connections 50 --inflight 4 --size 300 --seconds $((seconds + 4)) >"$tmp/run.log" 2>&1 &
load=$!
sleep 2
perf record -q -F 999 -g -p "$(head -1 "$tmp/broker-pids")" -o "$tmp/perf.data" -- sleep "$seconds" 2>/dev/null || true
wait "$load"
tail -1 "$tmp/run.log"
echo "== by object"
perf report -i "$tmp/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -5
echo "== top symbols"
perf report -i "$tmp/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep '%' | head -25
