#!/usr/bin/env bash
# TLS cost, side by side in one run: full TLS handshakes per broker CPU-second (ECDSA P-256
# and RSA-2048 server keys, `openssl s_time -new`), and the broker CPU a stream of QoS 0
# messages costs over plain TCP and over TLS (mosquitto_pub -l -> ringmq -> mosquitto_sub).
# The broker runs one shard pinned to the last core, the clients on the others.
# Usage: bash bench/tls.sh [messages]   (release build first: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
work=$(mktemp -d)
trap 'kill $broker 2>/dev/null || true; rm -rf "$work"' EXIT
cores=$(nproc)
bcpu=$((cores - 1))
ccpu="0-$((bcpu > 0 ? bcpu - 1 : 0))"

cd "$work"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -subj "/CN=bench CA" -days 2 -out ca.pem 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > san.ext
openssl ecparam -name prime256v1 -genkey -noout -out ec.key
openssl genrsa -out rsa.key 2048 2>/dev/null
for k in ec rsa; do
  openssl req -new -key $k.key -subj "/CN=localhost" -out $k.csr
  openssl x509 -req -in $k.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out $k.pem 2>/dev/null
done
cd - >/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TCP=$(port); EC=$(port); RSA=$(port)
cat > "$work/ringmq.toml" <<EOF
[broker]
pin_cores = false
[listeners.tcp]
bind = "127.0.0.1:$TCP"
[listeners.ec]
type = "tls"
bind = "127.0.0.1:$EC"
certfile = "$work/ec.pem"
keyfile = "$work/ec.key"
[listeners.rsa]
type = "tls"
bind = "127.0.0.1:$RSA"
certfile = "$work/rsa.pem"
keyfile = "$work/rsa.key"
EOF
RINGMQ_LOG=warn taskset -c "$bcpu" target/release/ringmq --config "$work/ringmq.toml" --shards 1 \
  --admin 127.0.0.1:0 --data-dir "$work/data" &
broker=$!
sleep 1

cpu() { awk '{print $14 + $15}' "/proc/$broker/stat"; }
hz=$(getconf CLK_TCK)

echo "| server key | handshakes/s (one openssl client) | broker CPU-s | full handshakes per broker CPU-second |"
echo "|---|---|---|---|"
for k in ec rsa; do
  p=$EC; [ $k = rsa ] && p=$RSA
  c0=$(cpu); t0=$(date +%s.%N)
  out=$(taskset -c "$ccpu" openssl s_time -connect "127.0.0.1:$p" -new -time 8 2>/dev/null | grep "connections in" | head -1)
  t1=$(date +%s.%N); c1=$(cpu)
  n=$(echo "$out" | awk '{print $1}')
  awk -v n="$n" -v c="$((c1 - c0))" -v hz="$hz" -v t="$(echo "$t1 - $t0" | bc)" -v k="$k" \
    'BEGIN { s = c / hz; printf "| %s | %.0f | %.2f | %.0f |\n", k, n / t, s, (s > 0 ? n / s : 0) }'
done

echo
echo "| transport | $N QoS 0 messages, wall s | broker CPU-s | broker µs per message | cost vs TCP |"
echo "|---|---|---|---|---|"
base=""
for t in tcp tls; do
  if [ $t = tcp ]; then args=(-h 127.0.0.1 -p "$TCP"); else args=(-h 127.0.0.1 -p "$EC" --cafile "$work/ca.pem"); fi
  taskset -c "$ccpu" mosquitto_sub "${args[@]}" -t bench/tls -C "$N" > /dev/null &
  sub=$!
  sleep 0.5
  c0=$(cpu); t0=$(date +%s.%N)
  seq "$N" | taskset -c "$ccpu" mosquitto_pub "${args[@]}" -t bench/tls -l
  wait $sub
  t1=$(date +%s.%N); c1=$(cpu)
  s=$(awk -v c="$((c1 - c0))" -v hz="$hz" 'BEGIN { printf "%.3f", c / hz }')
  us=$(awk -v s="$s" -v n="$N" 'BEGIN { printf "%.2f", s * 1e6 / n }')
  [ -z "$base" ] && base=$us
  awk -v t="$t" -v w="$(echo "$t1 - $t0" | bc)" -v s="$s" -v us="$us" -v b="$base" -v n="$N" \
    'BEGIN { printf "| %s | %.2f | %.3f | %.2f | %.2fx |\n", t, w, s, us, us / b }'
done
