#!/usr/bin/env bash
# Durable state: what ringmq's crash-safe store costs and what it gives back. Each broker is
# pinned to one core and the load generator to the other(s), as in bench/ci.sh.
#  1. Cost: 20 QoS 1 pairs with persistent sessions, closed loop (16 in flight), against ringmq
#     with [durability] mode = "off", ringmq with mode = "crash" (the default) and Mosquitto
#     with persistence true (autosave settings default), interleaved, medians: messages per
#     broker CPU-second, and the ratios crash/off and ringmq crash/Mosquitto.
#  2. Offline queues: QUEUE_MSGS QoS 1 messages into offline persistent sessions, PUBACKed,
#     then drained, every message counted once: fill and drain rates, same three brokers,
#     interleaved, medians of REPS runs (losses summed over them).
#  3. Restart: REC_SESSIONS sessions holding REC_MSGS queued messages in all, kill -9, restart
#     on the same data dir: restore time and counts from /metrics (ringmq_store_*), data dir
#     bytes (its files' sizes) per queued message, and a drain counting what survived;
#     Mosquitto the same way.
# Writes bench/report/durable.{json,md} and prints the tables. Fails when ringmq loses an
# acknowledged message (across kill -9 only once it knows [durability]), or when one of its
# fills was incomplete, which leaves its losses unjudged.
#
#   bench/durable.sh           full run, a few minutes
#   bench/durable.sh --smoke   small and quick: every step works, a report is written
#
# Sizes from the environment: REPS, QUEUE_MSGS and QUEUE_SESSIONS (full: 1,000,000 into 2,000:
# 500 each, under both brokers' default of 1,000 queued per session), REC_MSGS and
# REC_SESSIONS (full: 1,000,000 into 100,000).
#
# A figure a broker does not give (the store's metrics before the store exists) reads "n/a".
# A ringmq that does not know [durability] yet runs as it is for both modes, and the report
# says so.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
case "${1:-}" in
  --smoke) mode=smoke ;;
  "") ;;
  *) echo "usage: bench/durable.sh [--smoke]" >&2; exit 2 ;;
esac
out=bench/report
mkdir -p "$out"
work=$(mktemp -d)
# The brokers are waited for before their data dirs go: one still writing would fail the rm.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

if [ "$mode" = smoke ]; then
  dur=(--duration 1 --warmup 0.5)
  reps=${REPS:-1}; QUEUE_MSGS=${QUEUE_MSGS:-20000}; QUEUE_SESSIONS=${QUEUE_SESSIONS:-40}
  REC_MSGS=${REC_MSGS:-5000}; REC_SESSIONS=${REC_SESSIONS:-500}
else
  dur=(--duration 8 --warmup 2)
  reps=${REPS:-3}; QUEUE_MSGS=${QUEUE_MSGS:-1000000}; QUEUE_SESSIONS=${QUEUE_SESSIONS:-2000}
  REC_MSGS=${REC_MSGS:-1000000}; REC_SESSIONS=${REC_SESSIONS:-100000}
fi
# Each restart test connects every session twice: past 10,000 sessions, spread the
# connections over source addresses for their ports.
sources=()
[ "$REC_SESSIONS" -gt 10000 ] && sources=(--source 127.0.0.2-127.0.0.9)

cargo build --release --workspace -q
for c in mosquitto mosquitto_pub; do
  command -v $c >/dev/null || { echo "$c is needed: apt-get install mosquitto mosquitto-clients" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ncpu=$(nproc)
broker_cpu=$((ncpu - 1)); gen_cpus=0
[ "$ncpu" -gt 2 ] && gen_cpus="0-$((ncpu - 2))"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
lg() { taskset -c "$gen_cpus" target/release/ringmq-loadgen --threads 1 "$@"; }

# up PORT PID: waits (2 minutes at most) until PORT answers an MQTT CONNECT: a broker
# restoring its state may listen before it answers. Fails when PID has exited first.
up() {
  for _ in $(seq 2400); do
    kill -0 "$2" 2>/dev/null || return 1
    timeout 120 mosquitto_pub -h 127.0.0.1 -p "$1" -t durable/up -n 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# start_ringmq NAME MODE PORT ADMIN DATA: ringmq with [durability] mode = MODE on the broker
# core; its PID in $pid and the seconds from its launch to its first CONNACK in $up_secs. A
# port still held by a broker just killed (io_uring lets go of its sockets a moment after the
# process is gone) is tried again; a ringmq that refuses the [durability] section is started
# without it, and $durability says so from then on.
durability=known
start_ringmq() {
  local name=$1 mode=$2 port=$3 admin=$4 data=$5 t0 log="$work/$1.log" seen
  touch "$log"
  for _ in $(seq 100); do
    seen=$(wc -l < "$log")
    local env=(RINGMQ_LOG=warn)
    [ "$durability" = known ] && env+=("RINGMQ_DURABILITY__MODE=$mode")
    t0=$EPOCHREALTIME
    env "${env[@]}" taskset -c "$broker_cpu" target/release/ringmq --listen "127.0.0.1:$port" \
      --shards 1 --admin "127.0.0.1:$admin" --data-dir "$data" >> "$log" 2>&1 &
    pid=$!
    if up "$port" "$pid"; then
      up_secs=$(python3 -c "print(round($EPOCHREALTIME - $t0, 3))")
      return 0
    fi
    wait "$pid" 2>/dev/null || true
    local said; said=$(tail -n "+$((seen + 1))" "$log")
    if [ "$durability" = known ] && grep -q 'unknown field `durability`' <<< "$said"; then
      durability=unknown
      echo "ringmq does not know [durability] yet: both modes run the broker as it is" >&2
    elif grep -q "Address already in use" <<< "$said"; then
      sleep 0.05
    else
      echo "ringmq $name did not start:" >&2; tail -5 <<< "$said" >&2; exit 1
    fi
  done
  echo "ringmq $name: its port stayed in use" >&2; exit 1
}

# start_mosquitto NAME PORT DATA: Mosquitto with persistence true in DATA; PID and $up_secs as
# start_ringmq. It stays root (`user root`) to write a data dir under this one's temp dir.
start_mosquitto() {
  local name=$1 port=$2 data=$3 t0
  mkdir -p "$data"
  printf '%s\n' "listener $port 127.0.0.1" "allow_anonymous true" "max_connections -1" \
    "persistence true" "persistence_location $data/" "user root" \
    "log_type error" "log_type warning" > "$work/$name.conf"
  t0=$EPOCHREALTIME
  taskset -c "$broker_cpu" mosquitto -c "$work/$name.conf" >> "$work/$name.log" 2>&1 &
  pid=$!
  up "$port" "$pid" || { echo "mosquitto $name did not start:" >&2; tail -5 "$work/$name.log" >&2; exit 1; }
  up_secs=$(python3 -c "print(round($EPOCHREALTIME - $t0, 3))")
}

# metrics ADMIN FILE: the broker's /metrics into FILE; empty when it has none (ADMIN 0).
metrics() {
  : > "$2"
  [ "$1" = 0 ] && return 0
  for _ in $(seq 30); do
    curl -sf --max-time 2 "http://127.0.0.1:$1/metrics" > "$2" && return 0
    sleep 0.1
  done
}

stop() { kill "$@" 2>/dev/null || true; wait "$@" 2>/dev/null || true; }

echo "== 1. 20 QoS 1 pairs, persistent sessions: ringmq off, ringmq crash, Mosquitto persistent"
off_port=$(free_port); crash_port=$(free_port); mq_port=$(free_port)
start_ringmq off off "$off_port" "$(free_port)" "$work/off"; off_pid=$pid
start_ringmq crash crash "$crash_port" "$(free_port)" "$work/crash"; crash_pid=$pid
start_mosquitto mosquitto "$mq_port" "$work/mosquitto"; mq_pid=$pid
# One client prefix per broker: each repetition resumes the sessions the last one left.
lg --json compare --reps "$reps" --baseline off \
  --broker "off=127.0.0.1:$off_port@$off_pid" \
  --broker "crash=127.0.0.1:$crash_port@$crash_pid" \
  --broker "mosquitto=127.0.0.1:$mq_port@$mq_pid" \
  pubsub --persistent --client-prefix dur --publishers 20 --subscribers 20 --qos 1 \
  --inflight 16 "${dur[@]}" > "$work/pairs.json" 2>"$work/pairs.err" || true

echo "== 2. offline queues: $QUEUE_MSGS messages into $QUEUE_SESSIONS sessions, then drained (REPS=$reps)"
# Each run its own client prefix (and topics): none drains what another filled.
for rep in $(seq "$reps"); do
  for b in off:$off_port:$off_pid crash:$crash_port:$crash_pid mosquitto:$mq_port:$mq_pid; do
    IFS=: read -r name port bpid <<< "$b"
    lg --json --addr "127.0.0.1:$port" --broker-pid "$bpid" queue --sessions "$QUEUE_SESSIONS" \
      --messages "$QUEUE_MSGS" --publishers 8 --inflight 1000 --drain \
      > "$work/queue-$name-$rep.json" 2>"$work/queue-$name-$rep.err" || true
  done
done
stop "$off_pid" "$crash_pid" "$mq_pid"

echo "== 3. kill -9 with $REC_MSGS messages queued for $REC_SESSIONS sessions, restart"
# recover NAME PORT ADMIN DATA: starts a broker (rec_start_NAME PORT ADMIN DATA), fills its
# sessions' queues, reads its metrics and data dir, kills it with SIGKILL, starts it again on
# the same data dir, reads its metrics again and drains what it restored.
recover() {
  local name=$1 port=$2 admin=$3 data=$4
  "rec_start_$name" "$port" "$admin" "$data"
  lg --json "${sources[@]}" --addr "127.0.0.1:$port" --broker-pid "$pid" queue \
    --sessions "$REC_SESSIONS" --messages "$REC_MSGS" --publishers 8 --inflight 1000 \
    --client-prefix rec > "$work/rec-$name-fill.json" 2>"$work/rec-$name-fill.err" || true
  metrics "$admin" "$work/rec-$name-before.prom"
  find "$data" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }' > "$work/rec-$name-du"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  "rec_start_$name" "$port" "$admin" "$data"
  echo "$up_secs" > "$work/rec-$name-up"
  metrics "$admin" "$work/rec-$name-after.prom"
  lg --json "${sources[@]}" --connect-timeout 60 --addr "127.0.0.1:$port" --broker-pid "$pid" \
    queue --sessions "$REC_SESSIONS" --messages "$REC_MSGS" --client-prefix rec --drain \
    --no-fill > "$work/rec-$name-drain.json" 2>"$work/rec-$name-drain.err" || true
  stop "$pid"
}
rec_start_ringmq() { start_ringmq ringmq-rec crash "$1" "$2" "$3"; }
rec_start_mosquitto() { start_mosquitto mosquitto-rec "$1" "$3"; }
recover ringmq "$(free_port)" "$(free_port)" "$work/ringmq-rec"
recover mosquitto "$(free_port)" 0 "$work/mosquitto-rec"

python3 bench/durable.py "$work" "$out" "$mode" "$durability" "$reps" \
  "$QUEUE_SESSIONS" "$QUEUE_MSGS" "$REC_SESSIONS" "$REC_MSGS"
