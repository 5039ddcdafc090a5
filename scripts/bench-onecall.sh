#!/usr/bin/env bash
# One-call screenshots: cdpgate's POST /public/screenshot (release build, defaults, one warm
# shared browser) against browserless 2.42's POST /screenshot (npm, on the same Debian
# Chromium), of the same local page, side by side in one run, alternated round by round,
# at concurrency 1 and 4. browserless is installed under target/bench-browserless and
# linked to Chromium as scripts/bench-jobs.sh does (the links it made removed after).
# BROWSERLESS_CHROME=/usr/lib/chromium/chromium-headless-shell runs browserless on the
# headless shell, the browser cdpgate's context sessions use.
# DOOR=markdown measures POST /public/markdown (and /public/content) of a local article
# (about 40 KB: navigation, twelve sections of paragraphs and links, a footer) against
# browserless's POST /content, its nearest call (it has no markdown).
# usage: [BROWSERLESS_CHROME=…] [DOOR=screenshot|markdown] scripts/bench-onecall.sh [ROUNDS] [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
calls=${2:-20}
door=${DOOR:-screenshot}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
bl=target/bench-browserless
if ! [ -d "$bl/node_modules/@browserless.io/browserless" ]; then
  mkdir -p "$bl"
  (cd "$bl" && npm install --silent --no-audit --no-fund @browserless.io/browserless@2.42.0)
fi
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
cat >"$tmp/site/index.html" <<'HTML'
<html><head><title>shot</title><style>body{font:16px sans-serif;margin:2em}.c{background:#e8f0fe;padding:1em}</style></head>
<body><h1>A page to screenshot</h1><div class="c"><p>Some text, a list and a table.</p>
<ul><li>one</li><li>two</li><li>three</li></ul><table><tr><td>a</td><td>b</td></tr></table></div></body></html>
HTML
python3 - "$tmp/site/article.html" <<'PY'
import sys
words = "the broker hands out a browser in milliseconds and relays every frame both ways".split()
sections = []
for n in range(1, 13):
    paragraphs = "".join(
        "<p>" + " ".join(words[(n + i + j) % len(words)] for j in range(120))
        + f' <a href="/ref/{n}">reference {n}</a>.</p>'
        for i in range(3)
    )
    sections.append(f"<h2>Section {n}</h2>{paragraphs}")
nav = "".join(f'<a href="/nav/{i}">Menu {i}</a> ' for i in range(30))
page = (
    "<html><head><title>An article</title><style>body{font:16px serif;max-width:40em}</style></head>"
    f"<body><nav>{nav}</nav><article><h1>An article</h1>{''.join(sections)}</article>"
    "<aside>Related: nothing.</aside><footer>Footer text, (c) nobody.</footer></body></html>"
)
open(sys.argv[1], "w").write(page)
PY
site_port=$(free_port)
python3 -m http.server "$site_port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
pids+=($!)

key=bench-key-0123456789abcdef
gate=$(start_broker target/release/cdpgate cdpgate CDPGATE_CONTEXT_WARM_BROWSERS=1)
bl_port=$(free_port)
(cd "$bl/node_modules/@browserless.io/browserless" && PORT=$bl_port HOST=127.0.0.1 TOKEN=bench-token \
  CONCURRENT=4 QUEUED=1000 DEBUG=-* exec node build/index.js) >"$tmp/browserless.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$bl_port/json/version?token=bench-token" >/dev/null && break
  sleep 0.2
done
for c in 1 4; do
  node tests/js/bench_onecall.mjs "$gate" "$key" "127.0.0.1:$bl_port" bench-token \
    "http://127.0.0.1:$site_port/$([ "$door" = markdown ] && echo article || echo index).html" \
    "$rounds" "$calls" "$c" "$door"
done
