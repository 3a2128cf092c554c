# Sourced by the flood benchmarks (flood.sh, auth_flood.sh): the latency probe they run beside
# a flood, its table row, and the run of their phases against ringmq and then Mosquitto.
# Needs $port and $work set, and a `phases NAME` function, by the caller.
LG=target/release/ringmq-loadgen

# probe NAME: 10 QoS 1 pairs at 2,000 msg/s open loop for 6 s; loadgen's report in
# $work/NAME.txt (its exit status is ignored: the row shows what was lost).
probe() {
  $LG --threads 1 --addr "127.0.0.1:$port" pubsub --publishers 10 --subscribers 10 \
    --qos 1 --total-rate 2000 --duration 6 --warmup 1 2>/dev/null > "$work/$1.txt" || true
}

# row NAME PHASE [EXTRA]: a table row of delivered, lost and p50/p99/max latency in ms, then
# EXTRA as one more column when given.
row() {
  awk -v phase="$2" -v extra="${3:-}" '
    /^delivered/ { d = $2; lost = $7; sub(/,/, "", lost) }
    /^latency/ { p50 = $4; p99 = $8; max = $12 }
    END {
      printf "| %s | %s | %s | %.2f | %.2f | %.2f |", phase, d, lost, p50 / 1000, p99 / 1000, max / 1000
      if (extra != "") printf " %s |", extra
      printf "\n"
    }
  ' "$work/$1.txt"
}

# both MOSQUITTO_LINES: runs the caller's `phases NAME` against ringmq (2 shards, the caller's
# $work/ringmq.toml), then against Mosquitto (listening on $port, anonymous clients allowed,
# plus MOSQUITTO_LINES), one after the other on the same port; `broker` holds the running
# one's PID for the caller's exit trap.
both() {
  RINGMQ_LOG=warn target/release/ringmq --config "$work/ringmq.toml" --listen "127.0.0.1:$port" \
    --shards 2 --admin 127.0.0.1:0 --data-dir "$work/data" &
  broker=$!
  sleep 1
  phases ringmq
  kill $broker; wait $broker 2>/dev/null || true
  printf "listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\n%s" "$port" "$1" \
    > "$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" > /dev/null 2>&1 &
  broker=$!
  sleep 1
  phases mosquitto
}
