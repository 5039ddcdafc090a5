#!/usr/bin/env bash
# Bounded fuzzing of the parts that read untrusted input, with cargo-fuzz (libFuzzer).
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
# Starts from fuzz/corpus/<target>/ and the hand-written seeds and past crashes in
# fuzz/seeds/<target>/; new inputs that reach new code are added to fuzz/corpus/<target>/
# (minimize with `RUSTC_BOOTSTRAP=1 cargo fuzz cmin <target>`, then commit: the test suite
# replays both directories, tests/fuzz_corpus.rs). A failure stops with its input under
# fuzz/artifacts/<target>/: fix it and keep the input in fuzz/seeds/<target>/.
# Fails (exit 1) on anything but a clean run: a build that fails, a crash, a timeout, an
# out-of-memory, a leak, or cargo-fuzz ending with an error.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(request_body token discovery frames instruction context_filter cdp_tap)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz builds with sanitizer flags that need nightly features; the one toolchain
# here is stable, so it is told to allow them.
export RUSTC_BOOTSTRAP=1

failed=()
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  # Artifacts of earlier runs are not this run's findings: only newer ones count.
  started="$(mktemp)"
  status=0
  cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$started.log" 2>&1 || status=$?
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added|==[0-9]+==|SUMMARY|Done|error)" \
    "$started.log" || true
  found="$(find "fuzz/artifacts/$target" -maxdepth 1 -type f -newer "$started" \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)"
  if [ "$status" -ne 0 ] || [ -n "$found" ]; then
    echo "!! $target failed (cargo fuzz exit status $status)${found:+: $found}" >&2
    tail -n 20 "$started.log" >&2
    failed+=("$target")
  fi
  rm -f "$started" "$started.log"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "!! failed: ${failed[*]}" >&2
  exit 1
fi
