#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: checks formatting and clippy first (they fail
# fast), installs what the tests need (Mosquitto for side-by-side runs and its mosquitto_passwd,
# iproute2 for the network namespaces of the partition test, openssl,
# Chromium, Firefox ESR, shellcheck, cargo-deb, a Python venv with paho-mqtt, cryptography and
# PyYAML, Node's MQTT.js, ws and playwright-core), then runs the Rust tests, the integration suite
# again on the epoll driver, the Python and Node client tests, the dashboard in headless Chromium
# and Firefox, the package tests (.deb, Dockerfile steps, Grafana and Prometheus files), checks
# that the benchmarks still build, fuzzes each fuzz target for a minute, runs `ringmq doctor` and
# the benchmark CI and the cluster benchmark in smoke mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean run builds everything once, so incremental state would only take disk (1.7 GB of it).
export CARGO_INCREMENTAL=0
# When a step fails, say how much disk and memory were left: a linker that runs out of either
# fails with a message that the rest of its output can bury.
trap 'echo "== a step failed; disk and memory left:"; df -h . /tmp; free -m' ERR
df -h . | tail -1

echo "== cargo fmt --check, cargo clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v firefox-esr >/dev/null || missing+=(firefox-esr)
command -v shellcheck >/dev/null || missing+=(shellcheck)
# `ip netns` and veth for the cluster's partition test; openssl for bench/cluster.sh's TLS run.
command -v ip >/dev/null || missing+=(iproute2)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo-deb >/dev/null; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked
fi

if [ ! -d tests/node/node_modules/mqtt ] || [ ! -d tests/node/node_modules/playwright-core ] \
  || [ ! -d tests/node/node_modules/ws ]; then
  echo "== installing MQTT.js, ws and playwright-core (tests/node)"
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import paho.mqtt, pytest, cryptography, yaml' 2>/dev/null; then
  echo "== creating .venv with paho-mqtt"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/python/requirements.txt
fi

echo "== cargo build"
cargo build --workspace --release --bins
cargo build --workspace --bins

echo "== cargo test"
cargo test --workspace

echo "== integration tests on the epoll driver"
RINGMQ_BROKER__DRIVER=epoll cargo test --test it

echo "== python and node client tests (paho-mqtt, MQTT.js)"
RINGMQ_BIN="$PWD/target/debug/ringmq" .venv/bin/python -m pytest -q tests/python

echo "== the dashboard in headless Chromium and Firefox (screenshots in target/dashboard-screenshots/)"
RINGMQ_BIN="$PWD/target/debug/ringmq" node --test tests/node/dashboard.test.js
RINGMQ_BIN="$PWD/target/debug/ringmq" node --test tests/node/dashboard.firefox.test.js

echo "== packages: the .deb (cargo deb --no-build --fast), the Dockerfile's steps, Grafana and alert rules"
.venv/bin/python -m pytest -q -rs tests/packaging

echo "== benches build"
cargo bench --workspace --no-run

echo "== fuzz targets, 60 s each"
bash tests/fuzz/run.sh 60

echo "== ringmq doctor on this machine (reports only: its verdict depends on the machine)"
target/release/ringmq doctor --connections 10000 || echo "(doctor exit status $?: not ready for 10000 here)"

echo "== benchmark CI, smoke mode (every step runs, the report is written, no ratio gate)"
bash bench/ci.sh --smoke
test -s bench/report/latest.json

echo "== cluster benchmark, smoke mode (one short run each: one node, two nodes, two over TLS)"
bash bench/cluster.sh --smoke | tail -4
