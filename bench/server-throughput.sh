#!/usr/bin/env bash
# STUN server throughput on one core: p2pd-rs `p2pd stun-server` against coturn, same load generator
# (tests/src/bin/stun-load.rs), same loopback address, in one run.
#
# Both servers run at once, pinned to CPU 0 (an idle one costs nothing); the load generator is pinned
# to CPU 1 and alternates between them, window by window, for several rounds, so slow phases of a
# shared machine hit both alike. Per round each server's best window counts; the ratio reported is
# the median of the per-round ratios. Two figures per server: responses per second of wall time, and
# responses per second of the server's own CPU time (user + system, all threads, /proc/PID/stat).
#
#   bench/server-throughput.sh [SECONDS_PER_RUN] [ROUNDS]      (defaults 3 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
rounds=${2:-3}
windows=${WINDOWS:-"32 128 512"}
port=${BENCH_PORT:-34900}
coturn_port=$((port + 10))
cargo build --release --quiet -p p2pd --bin p2pd -p p2pd-tests --bin stun-load
load=target/release/stun-load
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
pin_server=(); pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0); pin_load=(taskset -c 1)
fi
hz=$(getconf CLK_TCK)

wait_ready() { # port
    for _ in $(seq 100); do
        target/release/p2pd stun "127.0.0.1:$1" --single-shot-ms 100 --json >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server on port $1 did not answer" >&2
    return 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

run_one() { # name pid port window -> "rps per_cpu_second"
    local out rps answered t0 t1 per_cpu
    t0=$(cpu_ticks "$2")
    out=$("${pin_load[@]}" "$load" --server "127.0.0.1:$3" --seconds "$secs" --window "$4" --json)
    t1=$(cpu_ticks "$2")
    rps=$(sed -E 's/.*"responses_per_second":([0-9]+).*/\1/' <<<"$out")
    answered=$(sed -E 's/.*"answered":([0-9]+).*/\1/' <<<"$out")
    per_cpu=$(awk -v a="$answered" -v t=$((t1 - t0)) -v hz="$hz" 'BEGIN { printf "%d", (t > 0) ? a / (t / hz) : 0 }')
    echo "  $1 window=$4: $rps responses/s, server CPU $(( (t1 - t0) * 100 / hz / secs ))%, $per_cpu per CPU-second" >&2
    echo "$rps $per_cpu"
}

"${pin_server[@]}" target/release/p2pd stun-server --primary 127.0.0.1 --single --port "$port" >"$tmp/p2pd.log" 2>&1 &
ours_pid=$!; pids+=("$ours_pid")
wait_ready "$port"
have_coturn=0
if command -v turnserver >/dev/null; then
    "${pin_server[@]}" turnserver -n --stun-only -L 127.0.0.1 --listening-port "$coturn_port" --no-tls --no-dtls \
        --no-cli --log-file "$tmp/coturn.log" --simple-log --userdb "$tmp/turndb" --pidfile "$tmp/coturn.pid" \
        >/dev/null 2>&1 &
    coturn_pid=$!; pids+=("$coturn_pid")
    wait_ready "$coturn_port"
    have_coturn=1
else
    echo "coturn (turnserver) is not installed: apt-get install -y coturn" >&2
fi

: >"$tmp/rounds"
for r in $(seq "$rounds"); do
    echo "round $r" >&2
    ob=0; oc=0; cb=0; cc=0
    for w in $windows; do
        read -r rps cpu <<<"$(run_one p2pd-rs "$ours_pid" "$port" "$w")"
        [ "$rps" -gt "$ob" ] && ob=$rps; [ "$cpu" -gt "$oc" ] && oc=$cpu
        if [ "$have_coturn" = 1 ]; then
            read -r rps cpu <<<"$(run_one coturn "$coturn_pid" "$coturn_port" "$w")"
            [ "$rps" -gt "$cb" ] && cb=$rps; [ "$cpu" -gt "$cc" ] && cc=$cpu
        fi
    done
    echo "$ob $oc $cb $cc" >>"$tmp/rounds"
done

echo
echo "| round | p2pd-rs responses/s | coturn responses/s | ratio | p2pd-rs per CPU-s | coturn per CPU-s | ratio |"
echo "|---|---|---|---|---|---|---|"
awk '{ r1 = ($3 > 0) ? $1 / $3 : 0; r2 = ($4 > 0) ? $2 / $4 : 0
       printf "| %d | %d | %d | %.2fx | %d | %d | %.2fx |\n", NR, $1, $3, r1, $2, $4, r2 }' "$tmp/rounds"
if [ "$have_coturn" = 1 ]; then
    echo
    awk '{ a[NR] = $1 / $3; b[NR] = $2 / $4 }
         function median(x, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
                                         return (n % 2) ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }
         END { printf "median ratio p2pd-rs / coturn (%s, one core each): %.2fx responses/s, %.2fx per CPU-second\n",
               "'"$(turnserver --version 2>/dev/null | head -1)"'", median(a, NR), median(b, NR) }' "$tmp/rounds"
fi
