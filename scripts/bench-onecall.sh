#!/usr/bin/env bash
# One-call screenshots: cdpgate's POST /public/screenshot (release build, defaults, one warm
# shared browser) against browserless 2.42's POST /screenshot (npm, on the same Debian
# Chromium), of the same local page, side by side in one run, alternated round by round,
# at concurrency 1 and 4. browserless is installed and linked to Chromium by
# scripts/bench-lib.sh (the links it made removed after).
# BROWSERLESS_CHROME=/usr/lib/chromium/chromium-headless-shell runs browserless on the
# headless shell, the browser cdpgate's context sessions use.
# DOOR=markdown measures POST /public/markdown (and /public/content) of a local article
# (about 40 KB: navigation, twelve sections of paragraphs and links, a footer) against
# browserless's POST /content, its nearest call (it has no markdown).
# WARM_BROWSERS (default 1) is cdpgate's context_warm_browsers; CONCURRENCY (default "1 4")
# the concurrencies run.
# usage: [BROWSERLESS_CHROME=…] [DOOR=screenshot|markdown] scripts/bench-onecall.sh [ROUNDS] [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
calls=${2:-20}
door=${DOOR:-screenshot}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
pids=()
. scripts/bench-lib.sh
trap stop_all EXIT
browserless_setup

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
gate=$(start_broker target/release/cdpgate cdpgate CDPGATE_CONTEXT_WARM_BROWSERS="${WARM_BROWSERS:-1}")
# Its HTTP API on the address of the WebSocket URL it answers on.
bl_address=$(start_browserless 4 | sed -E 's#^ws://([^/]+)/.*#\1#')
for c in ${CONCURRENCY:-1 4}; do
  node tests/js/bench_onecall.mjs "$gate" "$key" "$bl_address" bench-token \
    "http://127.0.0.1:$site_port/$([ "$door" = markdown ] && echo article || echo index).html" \
    "$rounds" "$calls" "$c" "$door"
done
