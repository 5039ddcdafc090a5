#!/usr/bin/env bash
# Cluster mode, measured side by side in one run on this machine:
#  1. the round trip a cross-node hop adds: a WebSocket echo reached directly, through the
#     node that runs the session (one relay), and through another node (the hop: two
#     relays), with wsload;
#  2. creates per second through one node, and spread over three nodes on one Redis.
# Sessions front a WebSocket echo server (bring-your-own), so no Chrome is involved.
# usage: scripts/bench-cluster.sh [ROUNDS] [SECONDS] [CREATES]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
creates=${3:-400}
scripts/setup.sh --test >/dev/null
cargo build --release --quiet --bin cdpgate --bin wsload
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
address_in() {
  for _ in $(seq 100); do
    addr=$(grep -o "$2 [0-9.:]*" "$1" 2>/dev/null | head -1 | awk '{print $NF}')
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.1
  done
  echo "no address in $1" >&2; cat "$1" >&2; exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 &
pids+=($!)
target/release/wsload echo --listen 127.0.0.1:0 >"$tmp/echo.log" 2>&1 &
pids+=($!)
echo_addr=$(address_in "$tmp/echo.log" "listening on")
sleep 0.3

key=bench-key-0123456789abcdef
node() { # name → address
  CDPGATE_LISTEN=127.0.0.1:0 CDPGATE_DATA_DIR="$tmp/$1" CDPGATE_API_KEYS=$key \
    CDPGATE_REDIS_URL="redis://127.0.0.1:$redis_port/" CDPGATE_NODE_ID="$1" CDPGATE_PROFILE_STORE="$tmp/profiles" \
    CDPGATE_CLUSTER_SECRET=bench-cluster-secret-0123456789abcdef \
    CDPGATE_BYO_ALLOW=127.0.0.0/8 CDPGATE_POOL_SIZE=0 CDPGATE_CREATES_PER_MINUTE=0 RUST_LOG=warn \
    CDPGATE_BROWSER_EGRESS_ALLOW=loopback CDPGATE_MAX_SESSIONS_PER_KEY=0 CDPGATE_MAX_BYO_SESSIONS_PER_KEY=0 \
    CDPGATE_MAX_CONNECTIONS_PER_SESSION=100000 \
    target/release/cdpgate "$tmp/no-config.toml" >"$tmp/$1.log" 2>&1 &
  pids+=($!)
}
node node-a; node node-b; node node-c
a=$(address_in "$tmp/node-a.log" "listening on")
b=$(address_in "$tmp/node-b.log" "listening on")
c=$(address_in "$tmp/node-c.log" "listening on")

byo="{\"ttl\": 86400, \"cdp_url\": \"ws://$echo_addr/devtools/browser/echo\"}"
cdp_url=$(curl -sf -X POST "http://$a/public/sessions" -H "X-API-Key: $key" -d "$byo" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["cdp_url"])')
echo "## The hop"
echo
target/release/wsload compare "direct=ws://$echo_addr/devtools/browser/echo" \
  "owner-node=$cdp_url" "other-node=${cdp_url/$a/$b}" --rounds "$rounds" --seconds "$seconds"

echo "## Creates per second ($creates bring-your-own creates, 8 at a time)"
echo
python3 - "$key" "$creates" "$byo" "$a" "$b" "$c" <<'PY'
import json, statistics, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
key, n, body, nodes = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4:]
def create(i, doors):
    req = urllib.request.Request(f"http://{doors[i % len(doors)]}/public/sessions", data=body,
                                 headers={"X-API-Key": key}, method="POST")
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201
    return time.perf_counter() - t
for label, doors in [("one node", nodes[:1]), ("three nodes", nodes)]:
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        took = list(pool.map(lambda i: create(i, doors), range(n)))
    wall = time.perf_counter() - started
    took.sort()
    print(f"{label}: {n / wall:.0f} creates/s, median {statistics.median(took) * 1000:.1f} ms, "
          f"p99 {took[int(len(took) * 0.99) - 1] * 1000:.1f} ms")
PY
