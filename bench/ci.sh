#!/usr/bin/env bash
# Benchmark CI: criterion benches plus a loadgen suite against ringmq and Mosquitto side by side
# (and FlashMQ, the fastest peer measured, when ../shared/peers has it: RINGMQ_PEERS names
# another peers dir), each broker pinned to one core and the load generator to another,
# interleaved: 1:1 pairs, fan-out, QoS 1 with clean and with persistent sessions, a burst of
# connects, latency at a fixed open-loop rate, idle connections. Writes
# bench/report/latest.{json,md} and compares the ringmq/Mosquitto ratios with
# bench/baseline.json.
#
#   bench/ci.sh                    full run; fails if a ratio fell more than the margin
#   bench/ci.sh --smoke            seconds-long run: every step works, a report is written, no gate
#   bench/ci.sh --update-baseline  full run, then the report becomes the baseline
#
# Ratios, not absolute rates, are compared: the machine is shared and noisy, and both brokers
# suffer the same noise in an interleaved run. Margin: RINGMQ_BENCH_MARGIN (default 0.25).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
case "${1:-}" in
  --smoke) mode=smoke ;;
  --update-baseline) mode=update ;;
  "") ;;
  *) echo "usage: bench/ci.sh [--smoke|--update-baseline]" >&2; exit 2 ;;
esac
margin="${RINGMQ_BENCH_MARGIN:-0.25}"
out=bench/report
mkdir -p "$out"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

if [ "$mode" = smoke ]; then
  crit=(--warm-up-time 0.1 --measurement-time 0.2)
  dur=(--duration 1 --warmup 0.5); reps=1; conns=500; hold=2; burst=1000
else
  crit=(--warm-up-time 1 --measurement-time 3)
  # Held past broker.hibernate_after (10 s by default): idle connections measured as they stay.
  dur=(--duration 8 --warmup 2); reps=3; conns=10000; hold=12; burst=10000
fi
peers="${RINGMQ_PEERS:-../shared/peers}"
flashmq=false
[ -x "$peers/start-peer.sh" ] && [ -x "$peers/bin/flashmq" ] && flashmq=true

echo "== build"
cargo build --release --workspace -q
command -v mosquitto >/dev/null || { echo "mosquitto is needed: apt-get install mosquitto" >&2; exit 1; }

echo "== criterion"
for b in codec trie ring session; do
  cargo bench -q --bench "$b" -- "${crit[@]}" > "$work/criterion-$b.txt" 2>&1
done

ncpu=$(nproc)
broker_cpu=$((ncpu - 1)); gen_cpus=0
[ "$ncpu" -gt 2 ] && gen_cpus="0-$((ncpu - 2))"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && break; sleep 0.05; done; }
start_brokers() {
  rport=$(free_port); mport=$(free_port)
  taskset -c "$broker_cpu" target/release/ringmq --listen "127.0.0.1:$rport" --shards 1 --admin 127.0.0.1:0 --data-dir "$work/data" > "$work/ringmq.log" 2>&1 &
  rpid=$!
  taskset -c "$broker_cpu" mosquitto -p "$mport" > "$work/mosquitto.log" 2>&1 &
  mpid=$!
  pids=("$rpid" "$mpid")
  extra=()
  if $flashmq; then
    fport=$(free_port)
    "$peers/start-peer.sh" flashmq "$fport" "$broker_cpu" > "$work/flashmq.log" 2>&1 &
    pids+=($!)
    wait_port "$fport"
    fpid=$(awk 'NR==1 {print $2}' "$work/flashmq.log")
    extra=(--broker "flashmq=127.0.0.1:$fport@$fpid")
  fi
  wait_port "$rport"; wait_port "$mport"
}
stop_brokers() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
lg() { taskset -c "$gen_cpus" target/release/ringmq-loadgen --threads 1 --json "$@" 2>/dev/null; }
# Mosquitto last: the ratios are to it.
brokers() { echo --broker "ringmq=127.0.0.1:$rport@$rpid" "${extra[@]}" --broker "mosquitto=127.0.0.1:$mport@$mpid" --reps "$reps"; }

echo "== idle connections (fresh brokers)"
start_brokers
lg compare $(brokers) conn -n "$conns" --rate 5000 --hold "$hold" > "$work/idle.json"
echo "== 50 pairs, QoS 0, closed loop"
lg compare $(brokers) pubsub --publishers 50 --subscribers 50 --qos 0 --inflight 100 "${dur[@]}" > "$work/pairs.json"
echo "== fan-out 1 -> 500, QoS 0, closed loop"
lg compare $(brokers) pubsub --publishers 1 --subscribers 500 --pub-topic fan/out --sub-topic fan/+ --qos 0 --inflight 100 "${dur[@]}" > "$work/fanout.json"
echo "== 20 pairs, QoS 1, 16 in flight"
lg compare $(brokers) pubsub --publishers 20 --subscribers 20 --qos 1 --inflight 16 "${dur[@]}" > "$work/qos1.json"
echo "== latency: 50 -> 50 pairs, QoS 0, open loop at 200 msg/s each (10 k msg/s)"
lg compare $(brokers) pubsub --publishers 50 --subscribers 50 --qos 0 --rate 200 "${dur[@]}" > "$work/latency.json"
stop_brokers

echo "== a burst of $burst connects, 100 handshakes in flight (fresh brokers)"
start_brokers
lg --source 127.0.0.2-127.0.0.9 compare $(brokers) conn -n "$burst" --rate 0 --max-pending 100 --hold 1 > "$work/connect.json"
stop_brokers

echo "== 20 pairs, QoS 1, persistent sessions: ringmq crash (the default), ringmq off, Mosquitto persistence true"
cport=$(free_port); oport=$(free_port); mport=$(free_port)
taskset -c "$broker_cpu" target/release/ringmq --listen "127.0.0.1:$cport" --shards 1 --admin 127.0.0.1:0 --data-dir "$work/crash" > "$work/crash.log" 2>&1 &
cpid=$!
RINGMQ_DURABILITY__MODE=off taskset -c "$broker_cpu" target/release/ringmq --listen "127.0.0.1:$oport" --shards 1 --admin 127.0.0.1:0 --data-dir "$work/off" > "$work/off.log" 2>&1 &
opid=$!
mkdir -p "$work/mosquitto"
printf '%s\n' "listener $mport 127.0.0.1" "allow_anonymous true" "persistence true" \
  "persistence_location $work/mosquitto/" "user root" > "$work/mosquitto.conf"
taskset -c "$broker_cpu" mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
mpid=$!
for p in $cport $oport $mport; do
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done
lg compare --reps "$reps" --baseline mosquitto --broker "ringmq=127.0.0.1:$cport@$cpid" \
  --broker "ringmq_off=127.0.0.1:$oport@$opid" --broker "mosquitto=127.0.0.1:$mport@$mpid" \
  pubsub --persistent --client-prefix ci --publishers 20 --subscribers 20 --qos 1 --inflight 16 \
  "${dur[@]}" > "$work/qos1_persistent.json"
kill "$cpid" "$opid" "$mpid" 2>/dev/null || true; wait "$cpid" "$opid" "$mpid" 2>/dev/null || true

python3 bench/report.py "$work" "$out" "$mode" "$margin"
if [ "$mode" = update ]; then
  cp "$out/latest.json" bench/baseline.json
  cp "$out/latest.md" bench/baseline.md
  echo "baseline updated: bench/baseline.json, bench/baseline.md"
fi
