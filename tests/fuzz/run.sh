#!/usr/bin/env bash
# A short run of every fuzz target here (cargo-fuzz, libFuzzer): `tests/fuzz/run.sh [SECONDS]`,
# 60 s each by default (proxy_protocol, a small parser, half that). Installs cargo-fuzz when it
# is missing and builds on the toolchain at hand, nightly features unlocked with
# RUSTC_BOOTSTRAP=1 (a fresh machine may have stable only), with AddressSanitizer where the
# toolchain has its runtime and without a sanitizer otherwise.
# Where fuzzing cannot run at all it says so in one line and exits 0; a crash is a failure, its
# input kept in tests/fuzz/artifacts/<target>/. Build output, corpus and artifacts stay in
# tests/fuzz/{target,corpus,artifacts}, which git ignores.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
log="$PWD/target/fuzz-setup.log"
mkdir -p target
: >"$log"
skip() {
  echo "== fuzz: skipped, $1 (details in tests/fuzz/target/fuzz-setup.log)"
  exit 0
}

if ! cargo fuzz --version >>"$log" 2>&1; then
  cargo install cargo-fuzz --locked >>"$log" 2>&1 || skip "cargo-fuzz cannot be installed"
fi
export RUSTC_BOOTSTRAP=1
fuzz() { (cd ../.. && cargo fuzz "$1" --fuzz-dir tests/fuzz "${@:2}"); }
sanitizer=address
if ! fuzz build --sanitizer address >>"$log" 2>&1; then
  sanitizer=none
  fuzz build --sanitizer none >>"$log" 2>&1 || skip "the fuzz targets do not build here"
fi
for target in $(fuzz list); do
  out="target/fuzz-$target.log"
  # The PROXY header parser is small: half the time covers it.
  t="$secs"
  if [ "$target" = proxy_protocol ]; then t=$((secs / 2)); fi
  if fuzz run --sanitizer "$sanitizer" "$target" -- -max_total_time="$t" >"$out" 2>&1; then
    echo "== fuzz: $target, ${t}s, sanitizer $sanitizer: $(grep -m1 -E '^Done [0-9]+ runs' "$out")"
  else
    tail -n 40 "$out"
    echo "== fuzz: $target failed (input in tests/fuzz/artifacts/$target/, log in tests/fuzz/$out)"
    exit 1
  fi
done
