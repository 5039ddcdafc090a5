#!/usr/bin/env bash
# Whether a context session's cost grows with the number of live context sessions in its
# shared browser: a context create's time to its first CDP reply, and a new tab's in a
# context session (Puppeteer newPage + evaluate), with none live, beside K live idle ones,
# then with none again (tests/js/bench_context_density.mjs). One shared browser. Medians of
# ROUNDS runs of each broker's p50 and p90.
# BASELINE=path/to/cdpgate: an older build measured too, the two alternated run by run
# (never at once: each run's K live contexts would load the other's).
# usage: [BASELINE=BIN] scripts/bench-context-density.sh [ROUNDS=3] [K=40] [N=10]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
k=${2:-40}
n=${3:-10}
scripts/setup.sh --test
cargo build --release --quiet --bin cdpgate
tmp=$(mktemp -d)
key=bench-key-0123456789abcdef
. scripts/bench-lib.sh
trap stop_brokers EXIT
touch "$tmp/no-config.toml"
settings=(CDPGATE_MAX_SESSIONS=$((k + 20)) CDPGATE_DEFAULT_TTL=3600 CDPGATE_CONTEXT_BROWSERS=1
  CDPGATE_CONTEXT_WARM_BROWSERS=1 CDPGATE_MAX_CONTEXTS_PER_BROWSER=$((k + 10)))
binaries=("this=target/release/cdpgate")
[ -n "${BASELINE:-}" ] && binaries=("baseline=$BASELINE" "${binaries[@]}")
for r in $(seq "$rounds"); do
  for entry in "${binaries[@]}"; do
    name=${entry%%=*}
    address=$(start_broker "${entry#*=}" "$name-$r" "${settings[@]}")
    sleep 8 # the warm browser and its spares
    echo "{\"broker\": \"$name\", \"round\": $r, \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"phases\": $(
      cd tests/js && node --experimental-websocket bench_context_density.mjs "http://$address" "$key" "$k" "$n"
    )}" | tee -a "$tmp/runs.jsonl"
    kill "$(tail -1 "$tmp/broker-pids")" && sleep 2
  done
done
python3 - "$tmp/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
brokers = list(dict.fromkeys(r["broker"] for r in runs))
phases = list(runs[0]["phases"])
print("| what | live context sessions | " + " | ".join(f"{b} p50 / p90" for b in brokers) + " |")
print("|---|---|" + "---|" * len(brokers))
for what in ("create", "tab"):
    for phase in phases:
        cells = []
        for b in brokers:
            mine = [r["phases"][phase][what] for r in runs if r["broker"] == b]
            med = lambda key: statistics.median(m[key] for m in mine)
            cells.append(f"{med('p50'):.0f} / {med('p90'):.0f} ms")
        print(f"| {what} | {phase} | " + " | ".join(cells) + " |")
print("load averages (1, 5, 15 min) per run:", ", ".join(f"{r['broker']} {r['load']}" for r in runs))
PY
