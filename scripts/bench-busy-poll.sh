#!/usr/bin/env bash
# Busy polling of the relay threads with real Chromium: one broker per longest window
# (`relay_busy_poll_us`), each with a process session; `Runtime.evaluate('1')` COUNT times
# in a row on a page of each, brokers alternated over ROUNDS; the round trip's p50/p90 as
# the client sees it and the CPU each broker spent meanwhile.
# usage: scripts/bench-busy-poll.sh [COUNT=2000] [ROUNDS=3] [WINDOW_US...=0 200 500 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-2000}
rounds=${2:-3}
shift $(($# < 2 ? $# : 2))
windows=("$@")
[ ${#windows[@]} -gt 0 ] || windows=(0 200 500 1000)
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
. scripts/bench-lib.sh
trap stop_brokers EXIT
key=bench-key-0123456789abcdef
# CPU seconds (user + system, all threads) of process PID.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

declare -A addr pid
for w in "${windows[@]}"; do
  addr[$w]=$(start_broker target/release/cdpgate "poll-$w" CDPGATE_POOL_SIZE=1 CDPGATE_RELAY_BUSY_POLL_US="$w")
  pid[$w]=$(tail -1 "$tmp/broker-pids")
done
sleep 3 # the warm browsers
echo "| window (µs) | round | p50 µs | p90 µs | broker CPU-s |"
echo "|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  for w in "${windows[@]}"; do
    before=$(cpu_s "${pid[$w]}")
    out=$(node --experimental-websocket tests/js/bench_density.mjs roundtrip "http://${addr[$w]}" "$key" "$count" process 2>/dev/null)
    after=$(cpu_s "${pid[$w]}")
    python3 -c 'import json,sys; r = json.loads(sys.argv[1])["process"]; print("| %s | %s | %s | %s | %.2f |" % (sys.argv[2], sys.argv[3], r["p50_us"], r["p90_us"], float(sys.argv[5]) - float(sys.argv[4])))' \
      "$out" "$w" "$round" "$before" "$after"
  done
done
