#!/usr/bin/env bash
# What session options cost, side by side in one run: create -> first CDP reply without
# options, with an identity, a fingerprint, a device, a proxy and an idle timeout, recorded,
# and context sessions without options, with a fingerprint and a device; and a page of 20
# resources loaded through a session's forward proxy against the same Chromium started
# directly. With BASELINE=path/to/another/cdpgate (an older build), creates without options
# and recorded ones are timed against it too, alternated.
# usage: [BASELINE=BIN] scripts/bench-options.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-15}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" $(cat "$tmp/broker-pids" 2>/dev/null) 2>/dev/null || true
  wait 2>/dev/null || true
  sleep 1
  rm -rf "$tmp"
}
trap cleanup EXIT
. scripts/bench-lib.sh

# A page with 20 small images: the forward proxy sees 21 requests per load.
mkdir -p "$tmp/site"
python3 - "$tmp/site" <<'PY'
import base64, sys
png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
for i in range(20):
    open(f"{sys.argv[1]}/{i}.png", "wb").write(png)
imgs = "".join(f'<img src="{i}.png?x={i}">' for i in range(20))
open(f"{sys.argv[1]}/index.html", "w").write(f"<html><head><title>bench</title></head><body>{imgs}</body></html>")
PY
site_port=$(free_port)
python3 -m http.server "$site_port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
pids+=($!)

key=bench-key-0123456789abcdef
gate=$(start_broker target/release/cdpgate cdpgate)
baseline=""
[ -n "${BASELINE:-}" ] && baseline=$(start_broker "$BASELINE" baseline)
sleep 2 # the warm pool fills

# The proxy is only named at create (nothing is loaded through it).
proxy_port=$(free_port)
node --experimental-websocket tests/js/bench_options.mjs "$gate" "$key" \
  "http://127.0.0.1:$site_port/index.html" "127.0.0.1:$proxy_port" "$rounds" $baseline 2>/dev/null | python3 -m json.tool
