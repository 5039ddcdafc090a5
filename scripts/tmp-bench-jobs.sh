#!/usr/bin/env bash
# The same Puppeteer job (get a browser, open a local page, read its title, screenshot,
# disconnect) against cdpgate (defaults, release build; process sessions and context
# sessions) and browserless 2.42 (npm, on Debian's Chromium), side by side, alternated
# round by round, at one concurrency.
# browserless is installed under target/bench-browserless and started by bench-lib.sh
# (browserless_setup, start_browserless), which links the browser paths it insists on to
# /usr/bin/chromium for the run and removes the links after (only Chromium is started).
# BROWSERLESS_CHROME=/usr/lib/chromium/chromium-headless-shell runs browserless on Chromium's
# headless shell instead (its paths linked there, launched with "headless": "shell"), the
# browser cdpgate's context sessions use.
# cdpgate's process sessions run its default_browser (the headless shell where installed);
# cdpgate_full is a second broker of the same build whose process sessions run the full
# Chromium (CDPGATE_DEFAULT_BROWSER=full: its warm pool holds full browsers), and
# cdpgate_single (only when SYSTEMS names it) one whose process sessions' shells run as one
# process (CDPGATE_SINGLE_PROCESS_SHELL=true). BROWSERLESS_SINGLE=1 adds browserless_single:
# browserless launching its Chrome with the same flags (--single-process --no-zygote);
# with browserless 2.42 on the shell every such job fails at its screenshot (Chrome exits:
# "Target closed"; docs/benchmarks.md, "Process sessions as one process").
# usage: [BASELINE=<another cdpgate binary> [BASELINE_ENV="CDPGATE_X=…"]] [SYSTEMS=cdpgate,cdpgate_full,cdpgate_single,cdpgate_context,baseline,baseline_context]
#        [BROWSERLESS_CHROME=…] [BROWSERLESS_SINGLE=1] [GATE_ENV="CDPGATE_X=… …"] [CAPTURE=1] scripts/bench-jobs.sh [ROUNDS] [JOBS] [CONCURRENCY]
# CAPTURE=1 adds cdpgate_capture and cdpgate_context_capture: the same jobs with
# capture_console and capture_network on.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
jobs=${2:-12}
concurrency=${3:-4}
scripts/setup.sh --test
tmp=$(mktemp -d)
pids=()
. scripts/bench-lib.sh
trap stop_all EXIT
browserless_setup

page=$(serve_html '<html><head><title>job</title></head><body><h1>A page for the job</h1><p>Some text.</p></body></html>')

key=bench-key-0123456789abcdef
# Its defaults, plus one warm shared browser for the context sessions' first.
# shellcheck disable=SC2086 # GATE_ENV: more settings for this build's broker, split on spaces
gate=$(start_broker /tmp/reltarget/release/cdpgate cdpgate CDPGATE_CONTEXT_WARM_BROWSERS=1 ${GATE_ENV:-})
# (only when it runs: its warm pool of full browsers would sit beside the others)
case ",${SYSTEMS:-cdpgate_full}," in
  *,cdpgate_full,*)
    # shellcheck disable=SC2086
    FULL_GATE=$(start_broker /tmp/reltarget/release/cdpgate cdpgate-full CDPGATE_CONTEXT_WARM_BROWSERS=0 CDPGATE_DEFAULT_BROWSER=full ${GATE_ENV:-})
    export FULL_GATE
    ;;
esac
case ",${SYSTEMS:-}," in
  *,cdpgate_single,*)
    # shellcheck disable=SC2086
    SINGLE_GATE=$(start_broker /tmp/reltarget/release/cdpgate cdpgate-single CDPGATE_CONTEXT_WARM_BROWSERS=0 CDPGATE_SINGLE_PROCESS_SHELL=true ${GATE_ENV:-})
    export SINGLE_GATE
    ;;
esac
if [ -n "${BASELINE:-}" ]; then
  # shellcheck disable=SC2086 # BASELINE_ENV: settings for the baseline's broker, split on spaces
  BASELINE_GATE=$(start_broker "$BASELINE" baseline CDPGATE_CONTEXT_WARM_BROWSERS=1 ${BASELINE_ENV:-})
  export BASELINE_GATE
fi
bl_ws=$(start_browserless "$concurrency")
echo "load before: $(uptime)" >&2
node tests/js/bench_jobs.mjs "$gate" "$key" "$bl_ws" \
  "$page" "$rounds" "$jobs" "$concurrency" | python3 -m json.tool
echo "load after: $(uptime)" >&2
