#!/usr/bin/env bash
# The whole test suite: installs what the tests need, checks formatting and lints, then runs
# unit, integration and benchmark-smoke tests against real Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Licenses, banned and duplicate crates, sources. Advisories need the RustSec database from
# GitHub, which this network does not reach: run `cargo deny check advisories` where it does.
cargo deny --log-level error check licenses bans sources
# --all-targets also builds and runs each criterion benchmark once (in the test profile), so
# the benches stay working without a second, release build of everything.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
