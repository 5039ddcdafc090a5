#!/usr/bin/env bash
# The lifecycle benchmark of public browser-platform benchmarks: per iteration create ->
# connect (Puppeteer) -> open a page -> navigate to a local page -> release, each step
# timed (tests/js/bench_lifecycle.mjs), for cdpgate (release build, defaults: process
# sessions on its default browser, the headless shell where installed; context sessions,
# one warm shared browser; sessions from a named pool of POOL_SIZE, default 2, the size of
# the default warm pool) and browserless 2.42 (npm) launching the same headless shell per
# connection. Kinds alternated within each round (their order turned each round); p50, p90
# and p99 of the whole and of each step; the load average before and after.
# usage: [KINDS=process,context,pool,browserless] [POOL_SIZE=2] [BROWSERLESS_CHROME=…]
#        [GATE_ENV="CDPGATE_X=… …"] scripts/bench-lifecycle.sh [ROUNDS] [ITERATIONS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
iterations=${2:-50}
concurrency=${3:-1}
export BROWSERLESS_CHROME=${BROWSERLESS_CHROME:-/usr/lib/chromium/chromium-headless-shell}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
pids=()
. scripts/bench-lib.sh
trap stop_all EXIT
browserless_setup

page=$(serve_html '<html><head><title>lifecycle</title></head><body><h1>A local page</h1><p>Some text.</p></body></html>')

key=bench-key-0123456789abcdef
# Room for the warm pool, the named pool's ready browsers and the sessions running.
# shellcheck disable=SC2086 # GATE_ENV: more settings for the broker, split on spaces
gate=$(start_broker target/release/cdpgate lifecycle CDPGATE_CONTEXT_WARM_BROWSERS=1 CDPGATE_MAX_SESSIONS=16 ${GATE_ENV:-})
bl_ws=$(start_browserless "$concurrency")
echo "load before: $(uptime)" >&2
POOL_SIZE=${POOL_SIZE:-2} node tests/js/bench_lifecycle.mjs "$gate" "$key" "$bl_ws" \
  "$page" "$rounds" "$iterations" "$concurrency" \
  "${KINDS:-process,context,pool,browserless}" | python3 -m json.tool
echo "load after: $(uptime)" >&2
