#!/usr/bin/env bash
# What recording costs a session: a page command's round trip in a session recorded and
# one not, both on a page that repaints every frame (the screencast's worst case: a new
# frame all the time), alternated on one broker; and the CPU the broker and ffmpeg spend
# while they run.
# usage: scripts/bench-recording.sh [COUNT=4000] [FPS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-4000}
fps=${2:-5}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
. scripts/bench-lib.sh
trap stop_brokers EXIT
key=bench-key-0123456789abcdef
client() { node --experimental-websocket tests/js/bench_density.mjs "$@" 2>/dev/null; }

# CPU seconds (user + system, from /proc, in clock ticks of 1/100 s) of the processes PIDS.
ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done | awk '{s+=$1} END {print s/100}'; }

addr=$(start_broker target/release/cdpgate rec CDPGATE_POOL_SIZE=2 CDPGATE_RECORDING_FPS="$fps")
sleep 3
broker_pid=$(head -1 "$tmp/broker-pids")
before_broker=$(ticks "$broker_pid")
start=$(date +%s.%N)
echo "== Runtime.evaluate round trip, $count per session, alternated; both pages repaint every frame; recording at $fps fps"
client roundtrip "http://$addr" "$key" "$count" process+animate process+record+animate
end=$(date +%s.%N)
after_broker=$(ticks "$broker_pid")
# The recording's ffmpeg started with its session, after the first reading.
before_ffmpeg=0
after_ffmpeg=$(ticks $(pgrep -x ffmpeg || true))
awk -v s="$start" -v e="$end" -v b0="$before_broker" -v b1="$after_broker" -v f0="$before_ffmpeg" -v f1="$after_ffmpeg" \
  'BEGIN { w = e - s; printf "wall %.1f s; broker CPU %.2f s (%.0f%% of a core); ffmpeg CPU %.2f s (%.0f%% of a core) for one recording\n", w, b1 - b0, 100 * (b1 - b0) / w, f1 - f0, 100 * (f1 - f0) / w }'
