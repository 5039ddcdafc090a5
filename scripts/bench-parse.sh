#!/usr/bin/env bash
# What one maximal message costs the broker's memory where it parses messages (a context
# session's cdp_url, a live view link): the peak resident memory growth over the message's
# size, for `[0,0,…]` at max_parsed_message_bytes and at 64 MiB. With BASELINE=path/to/an
# older cdpgate, the same cases against it (one broker at a time, so the peaks are apart).
# usage: [BASELINE=BIN] [MAX=BYTES] scripts/bench-parse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
max=${MAX:-16777216}
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
trap stop_brokers EXIT
. scripts/bench-lib.sh
key=bench-key-0123456789abcdef

run() {
  local binary=$1 name=$2 address pid
  address=$(start_broker "$binary" "$name" CDPGATE_POOL_SIZE=0 CDPGATE_CONTEXT_BROWSERS=1 \
    CDPGATE_MAX_PARSED_MESSAGE_BYTES="$max")
  pid=$(tail -n 1 "$tmp/broker-pids")
  node tests/js/bench_parse.mjs "$address" "$key" "$pid" "$max" "$name"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

run target/release/cdpgate cdpgate
[ -n "${BASELINE:-}" ] && run "$BASELINE" baseline
exit 0
