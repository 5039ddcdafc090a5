#!/usr/bin/env bash
# Starts the broker with the repository's config.toml (installing Chromium if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release -- config.toml
