#!/usr/bin/env bash
# The whole test suite: installs what the tests need, checks formatting and lints, then runs
# unit, integration and benchmark-smoke tests against real Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# --all-targets also runs each criterion benchmark once, so the benches stay working.
cargo test --all-targets
