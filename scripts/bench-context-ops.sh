#!/usr/bin/env bash
# What one context costs Chrome, side by side: the full Chromium with the broker's flags,
# the same without Chrome's spare renderer (what shared browsers are started with), and
# Chromium's headless shell (what shared browsers run where it is installed). Variants
# alternate round by round; per operation, the median over rounds of wall time and CPU per
# operation (browser process, and every Chrome process).
# usage: scripts/bench-context-ops.sh [ROUNDS] [OPERATIONS_PER_ROUND]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-20}
scripts/setup.sh --test
tmp=$(mktemp -d)
trap 'kill $site 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
echo '<html><head><title>job</title></head><body><h1>A page for the job</h1><p>Some text.</p></body></html>' >"$tmp/index.html"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$tmp" >/dev/null 2>&1 &
site=$!
sleep 0.5
features=WebUIOmniboxPopup,WebUIOmniboxAimPopup
declare -A variants=(
  ["chromium"]="/usr/bin/chromium --disable-features=$features"
  ["chromium, no spare renderer"]="/usr/bin/chromium --disable-features=$features,SpareRendererForSitePerProcess"
  ["headless shell, no spare renderer"]="/usr/lib/chromium/chromium-headless-shell --disable-features=$features,SpareRendererForSitePerProcess"
)
for r in $(seq "$rounds"); do
  for name in "${!variants[@]}"; do
    read -r executable flags <<<"${variants[$name]}"
    echo "{\"variant\": \"$name\", \"round\": $r, \"ops\": $(node tests/js/bench_context_ops.mjs "$executable" "http://127.0.0.1:$port/index.html" "$n" $flags)}"
  done
done >"$tmp/runs.jsonl"
python3 - "$tmp/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
variants = list(dict.fromkeys(r["variant"] for r in runs))
ops = list(runs[0]["ops"])
print("| operation | variant | wall per op | browser process CPU-s | all Chrome CPU-s |")
print("|---|---|---|---|---|")
for op in ops:
    for v in variants:
        mine = [r["ops"][op] for r in runs if r["variant"] == v]
        med = lambda k: statistics.median(m[k] for m in mine)
        print(f"| {op} | {v} | {med('wall_ms'):.1f} ms | {med('browser_process_cpu_s'):.3f} | {med('chrome_cpu_s'):.3f} |")
PY
