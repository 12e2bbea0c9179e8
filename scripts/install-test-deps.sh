#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, and nothing if it is all there:
# nats-server (JetStream), PostgreSQL 15, and Chromium with ChromeDriver (the dashboard's browser
# test drives /usr/bin/chromium through /usr/bin/chromedriver). The tests start their own
# throwaway servers on loopback; no system service is started here.
set -euo pipefail

need=()
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  need+=(nats-server)
fi
if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  need+=(postgresql-15)
fi
if [ ! -x /usr/bin/chromium ]; then
  need+=(chromium)
fi
if [ ! -x /usr/bin/chromedriver ]; then
  need+=(chromium-driver)
fi
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The fuzz targets (scripts/fuzz.sh) build with the nightly toolchain and cargo-fuzz.
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "installing: the nightly Rust toolchain" >&2
  # Not fatal: scripts/fuzz.sh falls back to stable with RUSTC_BOOTSTRAP=1.
  rustup toolchain install nightly --profile minimal ||
    echo "warning: could not install the nightly toolchain; the fuzz targets will build with stable" >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing: cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# The OpenAPI property test (crates/cli/tests/openapi_property.rs) runs schemathesis, pinned, from
# its own virtualenv so that it never disturbs the machine's Python packages.
schemathesis_version="4.32.5"
venv="${HOME}/.cache/driftless/schemathesis-venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "installing: schemathesis $schemathesis_version in $venv" >&2
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$schemathesis_version"
fi
