#!/usr/bin/env bash
# The main demo: two p2pd nodes connect by name. On loopback it starts everything a node needs —
# our RFC 5780 STUN server (UDP and TCP on 127.0.0.1 + 127.0.0.2), our PNP name server and an MQTT
# broker (mosquitto if installed, else the simulator's broker machine on real sockets) — writes a
# configuration file naming them, then runs `p2pd node --name bob` and `p2pd connect bob`: each
# classifies its NAT (none on loopback), bob registers its name, alice resolves it, picks the path
# (direct here) and both talk over an authenticated, encrypted stream. Needs only cargo.
# Then the STUN and NAT demo (scripts/stun-demo.sh) and the simulated ladder over every NAT pair.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p p2pd --bin p2pd -p p2pd-tests --bin mqtt-broker
bin=target/release
p2pd=$bin/p2pd
dir=$(mktemp -d)
port=${DEMO_PORT:-34790}
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

"$p2pd" stun-server --primary 127.0.0.1 --alternate 127.0.0.2 --port "$port" --alt-port $((port + 1)) --tcp >/dev/null &
pids+=($!)
"$p2pd" id new --file "$dir/pnp.key" >/dev/null
pnp_key=$("$p2pd" id show --file "$dir/pnp.key" --json | sed -n 's/.*"public_key":"\([0-9a-f]*\)".*/\1/p')
"$p2pd" pnp-server --db "$dir/names.db" --udp 127.0.0.1:$((port + 2)) --tcp 127.0.0.1:$((port + 2)) --identity "$dir/pnp.key" >/dev/null &
pids+=($!)
if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
    "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -p $((port + 3)) >/dev/null 2>&1 &
else
    "$bin/mqtt-broker" --listen 127.0.0.1:$((port + 3)) >/dev/null &
fi
pids+=($!)
cat >"$dir/config.toml" <<TOML
stun = ["127.0.0.1:$port"]
brokers = ["127.0.0.1:$((port + 3))"]

[[pnp]]
address = "127.0.0.1:$((port + 2))"
key = "$pnp_key"
TOML
export P2PD_CONFIG="$dir/config.toml"
"$p2pd" id new --file "$dir/bob.key" >/dev/null
"$p2pd" id new --file "$dir/alice.key" >/dev/null
sleep 0.5

echo "== configuration ($P2PD_CONFIG)"
cat "$P2PD_CONFIG"
echo
echo "== bob:   echo 'hello from bob' | p2pd node --name bob"
(echo "hello from bob" | "$p2pd" node --name bob --identity "$dir/bob.key" >"$dir/bob.out" 2>"$dir/bob.err") &
bob=$!
for _ in $(seq 100); do grep -q "^ready" "$dir/bob.err" 2>/dev/null && break; sleep 0.1; done
sed 's/^/   bob> /' "$dir/bob.err"
echo
echo "== alice: echo 'hello from alice' | p2pd connect bob"
echo "hello from alice" | "$p2pd" connect bob --identity "$dir/alice.key" 2> >(sed 's/^/ alice> /' >&2) | sed 's/^/ alice got: /'
wait "$bob" || true
sed -n '2,$p' "$dir/bob.err" | sed 's/^/   bob> /'
sed 's/^/   bob got: /' "$dir/bob.out"
echo
echo "== the same with --json (one object per line):"
(echo "json hello" | "$p2pd" node --name bob2 --identity "$dir/bob.key" --json >/dev/null 2>"$dir/bob2.err") &
bob=$!
for _ in $(seq 100); do grep -q '"ready"' "$dir/bob2.err" 2>/dev/null && break; sleep 0.1; done
echo "x" | "$p2pd" connect bob2 --identity "$dir/alice.key" --json 2>&1 >/dev/null | grep '"connected"'
wait "$bob" || true
echo
echo "== p2pd sim node   (the ladder between every pair of simulated NAT kinds, against an oracle)"
"$p2pd" sim node
echo
echo "== the STUN and NAT demo: scripts/stun-demo.sh"
./scripts/stun-demo.sh
