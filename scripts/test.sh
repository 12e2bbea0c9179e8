#!/usr/bin/env bash
# Runs every test of the workspace on this machine: installs the test dependencies if missing,
# then the doc tests, then the whole suite under cargo-nextest (debug build). The last line printed
# is the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
cargo test --workspace --locked --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --profile ci
else
  echo "cargo-nextest not found; falling back to cargo test" >&2
  exec cargo test --workspace --locked
fi
