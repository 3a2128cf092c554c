# Sourced by the flood benchmarks (flood.sh, auth_flood.sh): the latency probe they run beside
# a flood, and its table row. Needs $port and $work set by the caller.
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
