#!/usr/bin/env bash
# What `block: ["image", "media", "font"]` saves on a heavy local page, and what
# `block: ["ads"]` costs (every request decided by the broker), side by side in one run:
# three sessions of one broker load the same page in turn, the HTTP cache off; medians of
# load time and of the bytes each session's gateway received.
# The page: 40 images of 48 KiB, 3 web fonts of 96 KiB, a 4 MiB video, 2 stylesheets,
# 2 scripts, served by Python's threading http.server on loopback.
# usage: scripts/bench-block.sh [ROUNDS]
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

mkdir -p "$tmp/site"
python3 - "$tmp/site" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(40):
    open(f"{d}/img{i}.png", "wb").write(os.urandom(48 * 1024))
for i in range(3):
    open(f"{d}/font{i}.woff2", "wb").write(os.urandom(96 * 1024))
open(f"{d}/video.mp4", "wb").write(os.urandom(4 * 1024 * 1024))
for i in range(2):
    open(f"{d}/style{i}.css", "w").write("p { margin: 1px; }\n" * 200)
    open(f"{d}/app{i}.js", "w").write("window.x = (window.x || 0) + 1;\n" * 200)
fonts = "".join(f"@font-face {{ font-family: f{i}; src: url(font{i}.woff2); }} .f{i} {{ font-family: f{i}; }}" for i in range(3))
text = "".join(f'<p class="f{i}">text in font {i}</p>' for i in range(3))
imgs = "".join(f'<img src="img{i}.png" width="48" height="48">' for i in range(40))
head = "".join(f'<link rel="stylesheet" href="style{i}.css"><script src="app{i}.js"></script>' for i in range(2))
open(f"{d}/index.html", "w").write(
    f"<html><head><title>heavy</title>{head}<style>{fonts}</style></head>"
    f"<body>{text}{imgs}<video src=\"video.mp4\" autoplay muted preload=\"auto\"></video></body></html>")
PY
site_port=$(free_port)
python3 -m http.server "$site_port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
pids+=($!)

key=bench-key-0123456789abcdef
# An EasyList-format list that matches nothing on the page: `ads` then costs only its
# decisions (every request paused, matched and continued by the broker).
printf '[Adblock Plus 2.0]\n||ads.example.com^\n/banner/ad-*.gif\n##.sponsored\n' >"$tmp/ads.txt"
gate=$(start_broker target/release/cdpgate cdpgate CDPGATE_POOL_SIZE=3 CDPGATE_ADBLOCK_LISTS="$tmp/ads.txt")
sleep 2 # the warm pool fills
node tests/js/bench_block.mjs "$gate" "$key" "http://127.0.0.1:$site_port/index.html" "$rounds" 2>/dev/null | python3 -m json.tool
