#!/usr/bin/env bash
# The same Puppeteer job (get a browser, open a local page, read its title, screenshot,
# disconnect) against cdpgate (defaults, release build; process sessions and context
# sessions) and browserless 2.42 (npm, on Debian's Chromium), side by side, alternated
# round by round, at one concurrency.
# browserless is installed under target/bench-browserless. It insists on finding every
# browser it knows (Chrome, Edge, Playwright's Chromium, Firefox, WebKit): the script links
# the missing paths to /usr/bin/chromium for the run and removes the links it made after
# (only Chromium is ever started).
# BROWSERLESS_CHROME=/usr/lib/chromium/chromium-headless-shell runs browserless on Chromium's
# headless shell instead (its paths linked there, launched with "headless": "shell"), the
# browser cdpgate's context sessions use.
# cdpgate's process sessions run its default_browser (the headless shell where installed);
# cdpgate_full is a second broker of the same build whose process sessions run the full
# Chromium (CDPGATE_DEFAULT_BROWSER=full: its warm pool holds full browsers).
# usage: [BASELINE=<another cdpgate binary> [BASELINE_ENV="CDPGATE_X=…"]] [SYSTEMS=cdpgate,cdpgate_full,cdpgate_context,baseline,baseline_context]
#        [BROWSERLESS_CHROME=…] [GATE_ENV="CDPGATE_X=… …"] [CAPTURE=1] scripts/bench-jobs.sh [ROUNDS] [JOBS] [CONCURRENCY]
# CAPTURE=1 adds cdpgate_capture and cdpgate_context_capture: the same jobs with
# capture_console and capture_network on.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
jobs=${2:-12}
concurrency=${3:-4}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
bl=target/bench-browserless
if ! [ -d "$bl/node_modules/@browserless.io/browserless" ]; then
  mkdir -p "$bl"
  (cd "$bl" && npm install --silent --no-audit --no-fund @browserless.io/browserless@2.42.0)
fi
# It requires its own copy of playwright-core where npm hoisted the shared one.
mkdir -p "$bl/node_modules/@browserless.io/browserless/node_modules"
ln -sfn "$(pwd)/$bl/node_modules/playwright-core" "$bl/node_modules/@browserless.io/browserless/node_modules/playwright-core"
bl_chrome=${BROWSERLESS_CHROME:-/usr/bin/chromium}
links=()
link_browser() {
  if ! [ -e "$1" ]; then
    mkdir -p "$(dirname "$1")"
    ln -s "$bl_chrome" "$1"
    links+=("$1")
  elif [ -L "$1" ] && [ "$(readlink "$1")" != "$bl_chrome" ]; then
    echo "$1 links to $(readlink "$1"), not $bl_chrome: remove it first" >&2
    exit 1
  fi
}
for b in chromium firefox webkit; do
  link_browser "$(cd "$bl" && node -e "import('playwright-core').then(p=>console.log(p.$b.executablePath()))")"
done
link_browser /usr/bin/google-chrome-stable
link_browser /usr/bin/microsoft-edge-stable

tmp=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" $(cat "$tmp/broker-pids" 2>/dev/null) 2>/dev/null || true
  wait 2>/dev/null || true
  for l in "${links[@]}"; do rm -f "$l"; done
  sleep 1
  rm -rf "$tmp"
}
trap cleanup EXIT
. scripts/bench-lib.sh

mkdir -p "$tmp/site"
echo '<html><head><title>job</title></head><body><h1>A page for the job</h1><p>Some text.</p></body></html>' >"$tmp/site/index.html"
site_port=$(free_port)
python3 -m http.server "$site_port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
pids+=($!)

key=bench-key-0123456789abcdef
# Its defaults, plus one warm shared browser for the context sessions' first.
# shellcheck disable=SC2086 # GATE_ENV: more settings for this build's broker, split on spaces
gate=$(start_broker target/release/cdpgate cdpgate CDPGATE_CONTEXT_WARM_BROWSERS=1 ${GATE_ENV:-})
# shellcheck disable=SC2086
FULL_GATE=$(start_broker target/release/cdpgate cdpgate-full CDPGATE_CONTEXT_WARM_BROWSERS=0 CDPGATE_DEFAULT_BROWSER=full ${GATE_ENV:-})
export FULL_GATE
if [ -n "${BASELINE:-}" ]; then
  # shellcheck disable=SC2086 # BASELINE_ENV: settings for the baseline's broker, split on spaces
  BASELINE_GATE=$(start_broker "$BASELINE" baseline CDPGATE_CONTEXT_WARM_BROWSERS=1 ${BASELINE_ENV:-})
  export BASELINE_GATE
fi
bl_port=$(free_port)
(cd "$bl/node_modules/@browserless.io/browserless" && PORT=$bl_port HOST=127.0.0.1 TOKEN=bench-token \
  CONCURRENT="$concurrency" QUEUED=1000 DEBUG=-* exec node build/index.js) >"$tmp/browserless.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$bl_port/json/version?token=bench-token" >/dev/null && break
  sleep 0.2
done
bl_ws="ws://127.0.0.1:$bl_port/chromium?token=bench-token"
case "$bl_chrome" in
  *headless-shell*) bl_ws="$bl_ws&launch=%7B%22headless%22%3A%22shell%22%7D" ;;
esac
echo "load before: $(uptime)" >&2
node tests/js/bench_jobs.mjs "$gate" "$key" "$bl_ws" \
  "http://127.0.0.1:$site_port/index.html" "$rounds" "$jobs" "$concurrency" | python3 -m json.tool
echo "load after: $(uptime)" >&2
