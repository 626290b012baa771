#!/usr/bin/env bash
# STUN server throughput on one core: p2pd-rs `p2pd stun-server` against coturn, same load generator
# (tests/src/bin/stun-load.rs), same loopback address, in one run.
#
# Each server is pinned to CPU 0 and the load generator to CPU 1; every server is measured at several
# client windows and its best rate counts. Prints a table and the ratio ours/coturn.
#
#   bench/server-throughput.sh [SECONDS_PER_RUN]      (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-4}
windows=${WINDOWS:-"32 128 512"}
port=${BENCH_PORT:-34900}
cargo build --release --quiet -p p2pd-mio --bin p2pd -p p2pd-sim --bin stun-load
load=target/release/stun-load
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cpus=$(nproc)
pin_server=(); pin_load=()
if command -v taskset >/dev/null && [ "$cpus" -ge 2 ]; then
    pin_server=(taskset -c 0); pin_load=(taskset -c 1)
fi

wait_ready() {
    for _ in $(seq 100); do
        target/release/p2pd stun "127.0.0.1:$port" --single-shot-ms 100 --json >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server on port $port did not answer" >&2
    return 1
}

measure() { # name
    local best=0
    for w in $windows; do
        local out rps
        out=$("${pin_load[@]}" "$load" --server "127.0.0.1:$port" --seconds "$secs" --window "$w" --json)
        rps=$(sed -E 's/.*"responses_per_second":([0-9]+).*/\1/' <<<"$out")
        echo "  $1 window=$w: $rps responses/s   $out" >&2
        [ "$rps" -gt "$best" ] && best=$rps
    done
    echo "$best"
}

"${pin_server[@]}" target/release/p2pd stun-server --primary 127.0.0.1 --single --port "$port" >"$tmp/p2pd.log" 2>&1 &
pid=$!
wait_ready
ours=$(measure p2pd-rs)
kill "$pid"; wait "$pid" 2>/dev/null || true

coturn=0
if command -v turnserver >/dev/null; then
    "${pin_server[@]}" turnserver -n --stun-only -L 127.0.0.1 --listening-port "$port" --no-tls --no-dtls \
        --no-cli --log-file "$tmp/coturn.log" --simple-log --userdb "$tmp/turndb" --pidfile "$tmp/coturn.pid" \
        >/dev/null 2>&1 &
    pid=$!
    wait_ready
    coturn=$(measure coturn)
    kill "$pid"; wait "$pid" 2>/dev/null || true
else
    echo "coturn (turnserver) is not installed: apt-get install -y coturn" >&2
fi

echo
echo "| server | best responses/s (1 core) |"
echo "|---|---|"
echo "| p2pd-rs stun-server | $ours |"
echo "| coturn $(turnserver --version 2>/dev/null | head -1 || true) | $coturn |"
if [ "$coturn" -gt 0 ]; then
    awk -v a="$ours" -v b="$coturn" 'BEGIN { printf "ratio p2pd-rs / coturn: %.2fx\n", a / b }'
fi
