#!/usr/bin/env bash
# Single-action latency, side by side in one run: each kind of action through
# POST /public/single-actions/run-action, against the same click done by a Puppeteer script
# that connects over cdp_url, clicks and disconnects (what a caller does without actions).
# usage: scripts/bench-actions.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-30}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir -p "$tmp/site"
cat >"$tmp/site/step.html" <<'HTML'
<html><head><title>Step</title></head><body><h1>Step</h1>
<label for="u">Username</label> <input id="u">
<button id="next" onclick="document.getElementById('status').textContent = 'Continue clicked'">Continue</button>
<p id="status"></p></body></html>
HTML
site_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$site_port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
pids+=($!)

key=bench-key-0123456789abcdef
CDPGATE_LISTEN=127.0.0.1:0 CDPGATE_DATA_DIR="$tmp/data" CDPGATE_API_KEYS=$key RUST_LOG=warn \
  CDPGATE_CREATES_PER_MINUTE=0 CDPGATE_BROWSER_EGRESS_ALLOW=loopback CDPGATE_MAX_SESSIONS_PER_KEY=0 \
  target/release/cdpgate "$tmp/no-config.toml" >"$tmp/cdpgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  gate=$(grep -o "listening on [0-9.:]*" "$tmp/cdpgate.log" 2>/dev/null | awk '{print $NF}' | head -1 || true)
  [ -n "$gate" ] && break
  sleep 0.1
done

"$(dirname "$0")/../target/test-venv/bin/python" - "$gate" "$key" "$site_port" "$rounds" <<'PY'
import json, statistics, subprocess, sys, time
import requests

gate, key, port, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
api = f"http://{gate}"
h = {"X-API-Key": key}
session = requests.post(f"{api}/public/sessions", headers=h, json={}).json()
sid = session["session_id"]
page = f"http://127.0.0.1:{port}/step.html"

def act(action, **extra):
    start = time.perf_counter()
    r = requests.post(f"{api}/public/single-actions/run-action", headers=h,
                      json={"session_id": sid, "action": action, **extra}).json()
    took = (time.perf_counter() - start) * 1000
    assert r["success"], r
    return took

def measure(name, action, before=None, **extra):
    times = []
    for _ in range(rounds):
        if before:
            act(before)
        times.append(act(action, **extra))
    times.sort()
    print(f"| {name} | {statistics.median(times):.1f} | {times[int(len(times) * 0.9) - 1]:.1f} |")
    return statistics.median(times)

act(f"go to {page}")
print(f"{rounds} rounds each, milliseconds from request to answer:\n")
print("| action | median | p90 |\n|---|---|---|")
measure("get the title", "get the title")
measure("type into a field found by label", "type hello into the Username field")
click = measure("click a button found by text (fresh)", "click the Continue button", set_cache=False)
measure("same click replayed from the cache", "click the Continue button", id="bench-click")
measure("go to a page (load)", f"go to {page}")
measure("take a screenshot", "take a screenshot")
out = subprocess.run(["node", "tests/js/click_bench.mjs", session["cdp_url"], str(rounds)],
                     capture_output=True, text=True, check=True).stdout
pt = sorted(json.loads(out.strip().splitlines()[-1]))
print(f"| Puppeteer: connect, click #next, read, disconnect | {statistics.median(pt):.1f} | {pt[int(len(pt) * 0.9) - 1]:.1f} |")
print(f"\nfresh click / Puppeteer round: {click / statistics.median(pt):.2f}x")
PY
