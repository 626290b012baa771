#!/usr/bin/env bash
# Local demo: a full RFC 5780 STUN server on 127.0.0.1 + 127.0.0.2 (two ports each), queried by the
# p2pd client with every CHANGE-REQUEST, in both dialects. Needs only cargo (Linux routes 127/8 to lo).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p p2pd-mio --bin p2pd
p2pd=target/release/p2pd
port=${DEMO_PORT:-34780}
alt=$((port + 1))

"$p2pd" stun-server --primary 127.0.0.1 --alternate 127.0.0.2 --port "$port" --alt-port "$alt" --duration 30 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
# Wait until the server answers.
for _ in $(seq 50); do
    "$p2pd" stun "127.0.0.1:$port" --single-shot-ms 100 --json >/dev/null 2>&1 && break
    sleep 0.1
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
