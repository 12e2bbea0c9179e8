#!/usr/bin/env bash
# Runs every test of the workspace on this machine: installs the test dependencies if missing,
# then the doc tests, then the fuzz targets (scripts/fuzz.sh, FUZZ_SECONDS each), then the whole
# suite under cargo-nextest (debug build). The last line printed is the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo test --workspace --locked --doc --quiet
# Every fuzz target from its committed corpus, FUZZ_SECONDS each (default 60); a crash fails here.
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --profile ci
else
  # Every test binary runs even when one fails, so one run shows every failure.
  echo "cargo-nextest not found; falling back to cargo test" >&2
  exec cargo test --workspace --locked --no-fail-fast
fi
