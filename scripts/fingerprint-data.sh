#!/usr/bin/env bash
# Regenerates src/browser/fingerprints.json, the fingerprint table sessions pick from, out
# of the Apify fingerprint-generator's published data (npm, Apache-2.0; its licence is
# src/browser/fingerprints.LICENSE). Installs the package under target/, not into the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.1.88
dir=target/fingerprint-data
mkdir -p "$dir"
if ! [ -d "$dir/node_modules/fingerprint-generator" ]; then
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "fingerprint-generator@$version")
fi
cp scripts/fingerprint-data.mjs "$dir/"
FINGERPRINT_GENERATOR_VERSION=$version node "$dir/fingerprint-data.mjs" > src/browser/fingerprints.json.new
mv src/browser/fingerprints.json.new src/browser/fingerprints.json
cp "$dir/node_modules/fingerprint-generator/LICENSE.md" src/browser/fingerprints.LICENSE
echo "wrote src/browser/fingerprints.json"
