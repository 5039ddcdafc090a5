#!/usr/bin/env bash
# A soak run: does a broker that has served hours of sessions look like the broker it was
# at start? Sessions of every kind (process, context, profile, recorded, through a proxy,
# killed clients, crashed tabs, TTL and idle ends; tests/js/soak.mjs) are created and ended
# continuously at RATE a minute, CONCURRENCY at most at once, against a release broker on a
# one-node cluster (Redis, so that its keys are watched too). Every SAMPLE_SECONDS the broker's
# RSS, open descriptors, threads, async tasks, its temp and data directory entries, its
# Chrome processes, Redis's keys and the contexts the shared browsers' identity keepers hold
# are sampled; scripts/soak_report.py fits a slope to each over the run's second half and
# fails if any grows, and draws the curves as a PNG.
#
#   scripts/soak.sh HOURS RATE [OUT_DIR]      e.g. scripts/soak.sh 2 20, scripts/soak.sh 0.1 30
#
# CONCURRENCY (default 3), SAMPLE_SECONDS (default 20 s, 5 s under 15 minutes), BINARY (a
# broker binary to soak instead of building this checkout's), SOAK_REDIS=0 (no Redis) and
# SOAK_SINGLE_PROCESS=1 (process sessions' shells as one process, single_process_shell; a
# crashed tab then ends its session) are read from the environment. Talks to 127.0.0.1
# only; stops by itself after HOURS (plus at most two minutes to drain). Exit status: 0
# when flat, 1 when something grew or the broker died, 2 on bad arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,18p "$0" >&2; exit 2; }
hours=$1 rate=$2
out=${3:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
seconds=$(python3 -c "print(int(float('$hours') * 3600))")
[ "$seconds" -ge 60 ] || { echo "soak: at least a minute (HOURS >= 0.017)" >&2; exit 2; }
concurrency=${CONCURRENCY:-3}
sample=${SAMPLE_SECONDS:-$([ "$seconds" -lt 900 ] && echo 5 || echo 20)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

scripts/setup.sh --test >/dev/null
binary=${BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release --quiet --bin cdpgate
  binary=target/release/cdpgate
fi
venv=target/soak-venv
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet matplotlib==3.10.*
fi

tmp=$(mktemp -d /tmp/soak.XXXX)
key=soak-key-0123456789abcdef
pids=()
cleanup() {
  # Where data_dir's entries are at the end, the broker still running (entries under each
  # directory of its first two levels), so that a growing count names its directory.
  if [ -d "$tmp/data" ]; then
    (cd "$tmp/data" && find . -mindepth 1 | cut -d/ -f2-3 | sort | uniq -c | sort -rn | head -40) \
      >"$out/data_dir_at_end.txt" 2>/dev/null || true
  fi
  # Newest first: the broker leaves the cluster while Redis still answers.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    sleep 0.5
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
source scripts/bench-lib.sh

redis_port=
if [ "${SOAK_REDIS:-1}" != 0 ] && command -v redis-server >/dev/null; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  cluster=(CDPGATE_REDIS_URL="redis://127.0.0.1:$redis_port/" CDPGATE_NODE_ID=soak
    CDPGATE_CLUSTER_SECRET=soak-cluster-secret-0123456789abcdef CDPGATE_PROFILE_STORE="$tmp/profiles")
else
  cluster=()
fi

# The broker's own temp directory, so that what it and its browsers leave there is counted
# apart from the rest of the machine's. Retention is short so that ended sessions' records
# and files are removed during the run, as they are over days in production.
mkdir -p "$tmp/t" "$tmp/data"
touch "$tmp/no-config.toml"
env TMPDIR="$tmp/t" CDPGATE_LISTEN=127.0.0.1:0 CDPGATE_DATA_DIR="$tmp/data" CDPGATE_API_KEYS=$key \
  RUST_LOG=warn CDPGATE_CREATES_PER_MINUTE=0 CDPGATE_BROWSER_EGRESS_ALLOW=loopback \
  CDPGATE_MAX_SESSIONS_PER_KEY=0 CDPGATE_MAX_BYO_SESSIONS_PER_KEY=0 CDPGATE_RETENTION_SECS=120 \
  CDPGATE_SINGLE_PROCESS_SHELL=$([ "${SOAK_SINGLE_PROCESS:-0}" = 1 ] && echo true || echo false) \
  "${cluster[@]}" "$binary" "$tmp/no-config.toml" >"$out/broker.log" 2>&1 &
broker=$!
pids+=($broker)
address=
for _ in $(seq 150); do
  address=$(grep -o "listening on [0-9.:]*" "$out/broker.log" | awk '{print $NF}' | head -1 || true)
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { cat "$out/broker.log" >&2; exit 1; }
echo "soak: broker $broker on $address, ${seconds}s at $rate/min, concurrency $concurrency, out $out"

# Processes under the broker, however deep (its browsers and their helpers, ffmpeg).
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { n = 0; for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]; if (q == root) n++ } print n }'
}

start=$(date +%s)
sampler() {
  # A failed read or write (a full disk, a scrape timing out) skips a sample; it must not
  # end the sampling, as it once did under `set -e` two hours before the run ended.
  set +e
  echo "t,rss_kb,fds,threads,tasks,sessions,tmp_entries,data_entries,processes,redis_keys,kept_contexts" >"$out/samples.csv"
  while kill -0 "$broker" 2>/dev/null; do
    local rss fds threads tasks sessions tmp_entries data_entries procs keys kept metrics
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$broker/status")
    threads=$(awk '/^Threads/ {print $2}' "/proc/$broker/status")
    fds=$(find "/proc/$broker/fd" -mindepth 1 2>/dev/null | wc -l)
    metrics=$(curl -sf --max-time 5 "http://$address/metrics" -H "X-API-Key: $key" || true)
    tasks=$(awk '$1 == "cdpgate_runtime_tasks" {print $2}' <<<"$metrics")
    sessions=$(awk '$1 == "cdpgate_sessions_active" {print $2}' <<<"$metrics")
    # Contexts the shared browsers' identity keepers hold registered, summed over browsers.
    kept=$(awk '$1 ~ /^cdpgate_shared_browser_kept_contexts/ {n += $2} END {print n + 0}' <<<"$metrics")
    tmp_entries=$(find "$tmp/t" -mindepth 1 2>/dev/null | wc -l)
    data_entries=$(find "$tmp/data" -mindepth 1 2>/dev/null | wc -l)
    procs=$(descendants "$broker")
    keys=0
    [ -n "$redis_port" ] && keys=$(redis-cli -p "$redis_port" dbsize 2>/dev/null || echo 0)
    echo "$(($(date +%s) - start)),$rss,$fds,$threads,${tasks:-0},${sessions:-0},$tmp_entries,$data_entries,$procs,$keys,${kept:-0}" \
      >>"$out/samples.csv"
    sleep "$sample"
  done
}
sampler &
pids+=($!)

status=0
node tests/js/soak.mjs "http://$address" "$key" "$seconds" "$rate" "$concurrency" "$out/jobs.json" |
  tee "$out/client.log" || status=1
# Samples after this are the wind-down: shown, not fitted.
echo $(($(date +%s) - start)) >"$out/driver_end"
# A last sample with nothing running, after the idle and TTL ends have settled.
sleep $((sample * 2))
kill -0 "$broker" 2>/dev/null || { echo "soak: the broker died" >&2; status=1; }
"$venv/bin/python" scripts/soak_report.py "$out" || status=1
exit $status
