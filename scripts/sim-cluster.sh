#!/usr/bin/env bash
# The cluster at scale, simulated on this machine (20 nodes, 10,000 bring-your-own
# sessions on a DevTools echo server by default): see scripts/sim-cluster.py.
# usage: scripts/sim-cluster.sh [NODES] [SESSIONS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test >/dev/null
cargo build --release --quiet --bin cdpgate --bin wsload
exec python3 scripts/sim-cluster.py "$@"
