#!/usr/bin/env bash
# Does a flood of wrong passwords hurt anyone else? Against ringmq (2 shards) and then, the same
# way, Mosquitto, both reading the same password file (PBKDF2-SHA512, 1,000 iterations, written
# by `ringmq passwd`): the latency of 10 QoS 1 pairs at 2,000 msg/s open loop (anonymous
# clients, allow_anonymous = true) alone, and while 2 flooders send CONNECTs for a real user
# with a new wrong password each time, as fast as the broker answers. Prints p50/p99/max
# latency and losses per broker and phase, and how many wrong passwords each broker answered.
# Usage: bash bench/auth_flood.sh   (release build first: cargo build --release --workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
# Mosquitto started as root drops to its own user before it reads the password file.
chmod 755 "$work"
broker=""
trap 'kill $broker 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/ringmq passwd -c -b "$work/passwd" victim correct-horse
chmod 644 "$work/passwd"
cat > "$work/ringmq.toml" <<EOF2
[broker]
pin_cores = false
[auth]
password_file = "$work/passwd"
allow_anonymous = true
EOF2
cat > "$work/flood.py" <<'EOF2'
import os, socket, struct, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
def field(b): return struct.pack("!H", len(b)) + b
def connect(i):
    body = field(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
    body += field(b"flood-%d-%d" % (os.getpid(), i)) + field(b"victim") + field(os.urandom(12).hex().encode())
    return bytes([0x10, len(body)]) + body
end, n, refused = time.time() + secs, 0, 0
while time.time() < end:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(connect(n))
    ack = s.recv(4)
    refused += len(ack) == 4 and ack[3] in (4, 5)
    n += 1
    s.close()
print(refused)
EOF2
. bench/probe.sh
phases() {
  probe alone; row alone "$1 alone" "-"
  python3 "$work/flood.py" "$port" 8 > "$work/f1" & local f1=$!
  python3 "$work/flood.py" "$port" 8 > "$work/f2" & local f2=$!
  probe flood
  wait $f1 $f2
  row flood "$1 wrong-password flood" "$(( $(cat "$work/f1") + $(cat "$work/f2") ))"
}
echo "| broker, phase | delivered | lost | p50 ms | p99 ms | max ms | wrong passwords answered |"
echo "|---|---|---|---|---|---|---|"
both "password_file $work/passwd
"
