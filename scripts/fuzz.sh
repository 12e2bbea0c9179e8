#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60), one after the other, starting
# from its committed seed corpus (fuzz/corpus/<target>/); inputs that reach new code are kept in
# fuzz/corpus-run/<target>/ (gitignored), so a later run goes on from there. Fails on the first
# crash, printing the input that caused it (fuzz/artifacts/<target>/…) and the command that
# reproduces it. Needs the nightly toolchain and cargo-fuzz (scripts/install-test-deps.sh).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]       every target
#   FUZZ_TARGETS="record segment" scripts/fuzz.sh 600   some targets, longer
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a whole number of seconds, got '$seconds'" >&2; exit 2 ;;
esac
# cargo-fuzz needs nightly's -Z flags. Without a nightly toolchain (a machine that cannot download
# one), the stable compiler is told to accept them (RUSTC_BOOTSTRAP=1): the same instrumentation.
if cargo +nightly --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  echo "fuzz.sh: no nightly toolchain; building the fuzz targets with stable and RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
  toolchain=()
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing: run scripts/install-test-deps.sh (cargo install cargo-fuzz --locked)" >&2
  exit 1
fi

# The fuzz crate has its own target directory whatever the caller's CARGO_TARGET_DIR says:
# its sanitizer-coverage builds must not mix with the workspace's.
target_dir="$PWD/fuzz/target"
# Release code with overflow checks and debug assertions: an overflow is a finding.
build_flags=(--target-dir "$target_dir" --debug-assertions)
targets="${FUZZ_TARGETS:-$(cd fuzz && cargo "${toolchain[@]}" fuzz list)}"

for t in $targets; do
  echo "fuzz.sh: building $t" >&2
  (cd fuzz && cargo "${toolchain[@]}" fuzz build "${build_flags[@]}" "$t")
done
for t in $targets; do
  mkdir -p "fuzz/corpus-run/$t" "fuzz/artifacts/$t"
  echo "fuzz.sh: running $t for ${seconds}s" >&2
  log="fuzz/artifacts/$t/last-run.log"
  # -timeout: one input taking 25 s is a hang (a finding). The first corpus directory receives
  # new inputs; the committed seeds are only read.
  if ! (cd fuzz && cargo "${toolchain[@]}" fuzz run "${build_flags[@]}" "$t" \
      "corpus-run/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=25 -print_final_stats=1) >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    artifact="$(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -n 1)"
    echo "fuzz.sh: target $t FAILED; input: ${artifact:-(none written, see the log above)}" >&2
    echo "fuzz.sh: reproduce with: (cd fuzz && cargo "${toolchain[@]}" fuzz run --debug-assertions $t ${artifact:-<input>})" >&2
    echo "fuzz.sh: full log: $log" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^Done [0-9]+ runs" "$log" | sed "s/^/fuzz.sh: $t: /" >&2 || true
done
echo "fuzz.sh: every target ran ${seconds}s without a crash: $(echo $targets)" >&2
