#!/usr/bin/env bash
# Local demo: two full RFC 5780 STUN servers on 127.0.0.1 + 127.0.0.2 (two ports each), the p2pd client
# with every CHANGE-REQUEST in both dialects, the NAT classifier against both servers (loopback has no
# NAT: "open internet"), then the classifier against every simulated NAT behaviour.
# Needs only cargo (Linux routes 127/8 to lo).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p p2pd --bin p2pd
p2pd=target/release/p2pd
port=${DEMO_PORT:-34780}
alt=$((port + 1))
port2=$((port + 2))
alt2=$((port + 3))

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done' EXIT
"$p2pd" stun-server --primary 127.0.0.1 --alternate 127.0.0.2 --port "$port" --alt-port "$alt" --duration 60 &
pids+=($!)
"$p2pd" stun-server --primary 127.0.0.1 --alternate 127.0.0.2 --port "$port2" --alt-port "$alt2" --duration 60 &
pids+=($!)
# Wait until both servers answer.
for p in "$port" "$port2"; do
    for _ in $(seq 50); do
        "$p2pd" stun "127.0.0.1:$p" --single-shot-ms 100 --json >/dev/null 2>&1 && break
        sleep 0.1
    done
done

for change in none port ip both; do
    echo
    echo "== p2pd stun 127.0.0.1:$port --change $change"
    "$p2pd" stun "127.0.0.1:$port" --change "$change"
done
echo
echo "== p2pd stun 127.0.0.1:$port --legacy --change both --json   (RFC 3489 dialect, as p2pd speaks it)"
"$p2pd" stun "127.0.0.1:$port" --legacy --change both --json
echo
echo "== p2pd stun 127.0.0.2:$alt --json   (the alternate role)"
"$p2pd" stun "127.0.0.2:$alt" --json
echo
echo "== p2pd nat --server 127.0.0.1:$port --server 127.0.0.1:$port2   (no NAT on loopback)"
"$p2pd" nat --server "127.0.0.1:$port" --server "127.0.0.1:$port2"
echo
echo "== p2pd sim nat   (every simulated NAT behaviour x loss x seeds, against ground truth)"
"$p2pd" sim nat
