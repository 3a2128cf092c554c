#!/usr/bin/env bash
# The cost of crossing nodes: the same QoS 0 and QoS 1 pairs (publishers and subscribers,
# closed loop) against one ringmq node, then against a cluster of two nodes with the
# publishers on one and the subscribers on the other, so every message is forwarded. Both
# brokers' processes are pinned to one core and the load generator to the other; the figure is
# messages delivered per broker CPU-second (all nodes' CPU summed, read from /proc), and the
# ratio cluster/one node is what a message pays for crossing; the same two nodes again with
# [cluster.tls] (mutual TLS, certificates made here with openssl) give what TLS adds. Runs
# alternate, REPS times each.
#
#   bench/cluster.sh            REPS=3, 10 s per run
#   bench/cluster.sh --smoke    one short run each: every step works
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${REPS:-3}; dur=(--duration 10 --warmup 2)
[ "${1:-}" = "--smoke" ] && { reps=1; dur=(--duration 2 --warmup 1); }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --workspace -q
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_log() { for _ in $(seq 400); do grep -qE "$2" "$1" 2>/dev/null && return; sleep 0.05; done; echo "never: $2 in $1" >&2; exit 1; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
broker_cpu=$(( $(nproc) - 1 ))
gen_cpus=0; [ "$(nproc)" -gt 2 ] && gen_cpus="0-$((broker_cpu - 1))"

# start NAME PORT [CLUSTER-TOML]: a one-shard node on the broker core; its pid in $started.
start() {
  mkdir -p "$work/$1"
  printf '[broker]\npin_cores = false\nnode_name = "%s"\n%s' "$1" "${3:-}" > "$work/$1/ringmq.toml"
  taskset -c "$broker_cpu" target/release/ringmq --config "$work/$1/ringmq.toml" --listen "127.0.0.1:$2" \
    --shards 1 --admin 127.0.0.1:0 --data-dir "$work/$1/data" > "$work/$1/log" 2>&1 &
  started=$!; pids+=("$started")
}
stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); rm -rf "${work:?}"/n*; }

# run LABEL PUB-PORT SUB-PORT QOS PIDS...: one loadgen run; prints "delivered cpu_seconds
# undelivered".
run() {
  local before after out
  before=$(cpu_ticks "${@:5}")
  out=$(taskset -c "$gen_cpus" target/release/ringmq-loadgen --threads 1 --json --addr "127.0.0.1:$2" \
    pubsub --sub-addr "127.0.0.1:$3" --publishers 20 --subscribers 20 --qos "$4" --inflight 16 "${dur[@]}")
  after=$(cpu_ticks "${@:5}")
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["delivered"], (int(sys.argv[3])-int(sys.argv[2]))/100, r["expected"]-r["delivered"])' \
    "$out" "$before" "$after"
}

# A CA and one node certificate (SAN ringmq-cluster) for the TLS runs.
tls=$work/certs; mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=node \
  -keyout "$tls/node.key" -out "$tls/node.csr" 2>/dev/null
openssl x509 -req -in "$tls/node.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 1 \
  -extfile <(printf 'subjectAltName=DNS:ringmq-cluster\n') -out "$tls/node.pem" 2>/dev/null
tls_toml=$(printf '[cluster.tls]\ncertfile = "%s"\nkeyfile = "%s"\ncafile = "%s"\nserver_name = "ringmq-cluster"\n' \
  "$tls/node.pem" "$tls/node.key" "$tls/ca.pem")

results=()
for _ in $(seq "$reps"); do
  for qos in 0 1; do
    p=$(free_port); start n0 "$p"; one=$started
    wait_log "$work/n0/log" "ringmq listening"
    read -r got cpu lost < <(run one "$p" "$p" "$qos" "$one")
    results+=("one $qos $got $cpu $lost"); stop_all

    for kind in two tls; do
      extra=""; [ "$kind" = tls ] && extra=$tls_toml
      a=$(free_port); b=$(free_port); ca="127.0.0.1:$(free_port)"; cb="127.0.0.2:$(free_port)"
      start n1 "$a" "$(printf '[cluster]\nenabled = true\nlisten = "%s"\nrpc_listen = "127.0.0.1:%s"\nseeds = ["%s"]\ncookie = "bench-cluster-cookie-0123456789"\n%s' "$ca" "$(free_port)" "$cb" "$extra")"; pa=$started
      start n2 "$b" "$(printf '[cluster]\nenabled = true\nlisten = "%s"\nrpc_listen = "127.0.0.2:%s"\nseeds = ["%s"]\ncookie = "bench-cluster-cookie-0123456789"\n%s' "$cb" "$(free_port)" "$ca" "$extra")"; pb=$started
      wait_log "$work/n1/log" "formed the cluster|joined the cluster"
      wait_log "$work/n2/log" "formed the cluster|joined the cluster"
      read -r got cpu lost < <(run "$kind" "$a" "$b" "$qos" "$pa" "$pb")
      results+=("$kind $qos $got $cpu $lost"); stop_all
    done
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin]
print("| QoS | one node msg/CPU-s | two nodes, every message crossing | ratio | crossing over TLS | ratio | lost |")
print("|---|---|---|---|---|---|---|")
for q in ("0", "1"):
    per = {k: statistics.median(int(r[2]) / max(float(r[3]), 0.01) for r in rows if r[0] == k and r[1] == q) for k in ("one", "two", "tls")}
    lost = sum(int(r[4]) for r in rows if r[1] == q)
    one, two, tls = per["one"], per["two"], per["tls"]
    print(f"| {q} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x | {tls:,.0f} | {tls / one:.2f}x | {lost} |")
'
