#!/usr/bin/env bash
# Creates in bursts, side by side: this build and, with BASELINE=path/to/cdpgate, another
# one, each with a warm pool of 2; each round sends BURST creates in a row (create ->
# WebSocket -> first CDP reply, then terminate) to one broker after its pool is full, and
# the brokers alternate. A burst of 2 is "back to back while the pool is not empty"; longer
# bursts run the pool dry.
# OTHER_KIND=1 adds creates asking this build for the browser kind its pool does not keep
# warm ("browser": "full" where the default is the headless shell): a launch per create.
# usage: [BASELINE=BIN] [OTHER_KIND=1] scripts/bench-creates.sh [ROUNDS] [BURST]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
burst=${2:-10}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
cleanup() {
  kill $(cat "$tmp/broker-pids" 2>/dev/null) 2>/dev/null || true
  wait 2>/dev/null || true
  sleep 1
  rm -rf "$tmp"
}
trap cleanup EXIT
. scripts/bench-lib.sh
key=bench-key-0123456789abcdef
this=$(start_broker target/release/cdpgate this)
targets=("this=$this")
[ -n "${BASELINE:-}" ] && targets+=("baseline=$(start_broker "$BASELINE" baseline)")
[ -n "${OTHER_KIND:-}" ] && targets+=("this_full=$this={\"browser\":\"full\"}")
node --experimental-websocket tests/js/bench_creates.mjs "$key" "$rounds" "$burst" "${targets[@]}" 2>/dev/null | python3 -m json.tool
