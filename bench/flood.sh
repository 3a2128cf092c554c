#!/usr/bin/env bash
# Does a flood hurt anyone else? Three phases against ringmq (2 shards, publish rate limited
# to 1,000/s per client) and then, the same way, against Mosquitto: the latency of 10 QoS 1
# pairs at 2,000 msg/s open loop alone, during a connect flood (loadgen opening 8,000
# connections at 4,000/s), and during a publish flood (3 MQTT 3.1.1 clients publishing as fast
# as mosquitto_pub can). Prints p50/p99/max latency and losses per broker and phase. On a
# small machine the flooders share the cores: compare the brokers, not the phases alone.
# Usage: bash bench/flood.sh   (release build first: cargo build --release --workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
broker=""
trap 'kill $broker 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/ringmq.toml" <<EOF
[broker]
pin_cores = false
[limits]
publish_rate = 1000
publish_burst = 100
EOF
. bench/probe.sh
phases() {
  probe alone; row alone "$1 alone"
  $LG --threads 1 --addr "127.0.0.1:$port" conn -n 8000 --rate 4000 --hold 4 > /dev/null 2>&1 &
  local flood=$!
  probe connect-flood; row connect-flood "$1 connect flood"
  wait $flood || true
  local floods=()
  for i in 1 2 3; do
    (seq 100000000 | timeout 8 mosquitto_pub -h 127.0.0.1 -p "$port" -i "flood$i" -t flood/x -l -V mqttv311 || true) &
    floods+=($!)
  done
  probe publish-flood; row publish-flood "$1 publish flood"
  wait "${floods[@]}"
}
echo "| broker, phase | delivered | lost | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|"
both ""
