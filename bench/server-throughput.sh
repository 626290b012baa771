#!/usr/bin/env bash
# STUN server throughput on one core: p2pd-rs `p2pd stun-server` against coturn, same load generator
# (tests/src/bin/stun-load.rs), same loopback address, in one run.
#
# Each server is pinned to CPU 0 and the load generator to CPU 1; every server is measured at several
# client windows and its best rate counts. Two figures per server: responses per second of wall time
# (bounded by the single-core load generator too), and responses per second of the server's own CPU
# time (user + system, all threads, from /proc/PID/stat), which is its capacity on one core.
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

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

measure() { # name pid -> "best_rps best_per_cpu_second"
    local best=0 best_cpu=0
    for w in $windows; do
        local out rps answered t0 t1 per_cpu
        t0=$(cpu_ticks "$2")
        out=$("${pin_load[@]}" "$load" --server "127.0.0.1:$port" --seconds "$secs" --window "$w" --json)
        t1=$(cpu_ticks "$2")
        rps=$(sed -E 's/.*"responses_per_second":([0-9]+).*/\1/' <<<"$out")
        answered=$(sed -E 's/.*"answered":([0-9]+).*/\1/' <<<"$out")
        per_cpu=$(awk -v a="$answered" -v t=$((t1 - t0)) -v hz="$hz" 'BEGIN { printf "%d", (t > 0) ? a / (t / hz) : 0 }')
        echo "  $1 window=$w: $rps responses/s, server CPU $(( (t1 - t0) * 100 / hz / secs ))%, $per_cpu responses per CPU-second" >&2
        [ "$rps" -gt "$best" ] && best=$rps
        [ "$per_cpu" -gt "$best_cpu" ] && best_cpu=$per_cpu
    done
    echo "$best $best_cpu"
}

"${pin_server[@]}" target/release/p2pd stun-server --primary 127.0.0.1 --single --port "$port" >"$tmp/p2pd.log" 2>&1 &
pid=$!
wait_ready
read -r ours ours_cpu <<<"$(measure p2pd-rs "$pid")"
kill "$pid"; wait "$pid" 2>/dev/null || true

coturn=0; coturn_cpu=0
if command -v turnserver >/dev/null; then
    "${pin_server[@]}" turnserver -n --stun-only -L 127.0.0.1 --listening-port "$port" --no-tls --no-dtls \
        --no-cli --log-file "$tmp/coturn.log" --simple-log --userdb "$tmp/turndb" --pidfile "$tmp/coturn.pid" \
        >/dev/null 2>&1 &
    pid=$!
    wait_ready
    read -r coturn coturn_cpu <<<"$(measure coturn "$pid")"
    kill "$pid"; wait "$pid" 2>/dev/null || true
else
    echo "coturn (turnserver) is not installed: apt-get install -y coturn" >&2
fi

echo
echo "| server (pinned to 1 core) | best responses/s | best responses per server CPU-second |"
echo "|---|---|---|"
echo "| p2pd-rs stun-server | $ours | $ours_cpu |"
echo "| coturn $(turnserver --version 2>/dev/null | head -1 || true) | $coturn | $coturn_cpu |"
if [ "$coturn" -gt 0 ] && [ "$coturn_cpu" -gt 0 ]; then
    awk -v a="$ours" -v b="$coturn" -v c="$ours_cpu" -v d="$coturn_cpu" \
        'BEGIN { printf "ratio p2pd-rs / coturn: %.2fx responses/s, %.2fx per CPU-second\n", a / b, c / d }'
fi
