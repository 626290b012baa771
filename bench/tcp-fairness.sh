#!/usr/bin/env bash
# TCP fairness under slow and idle clients from one source: `p2pd stun-server --tcp` and
# `p2pd pnp-server` (default limits) while 127.0.0.2 holds IDLE idle connections (default 5,000) or
# drips one byte per second on DRIP connections (default 64), reconnecting whatever the server
# closes; probes from 127.0.0.1 count how many are served. Figures per scenario: probes served,
# slowest answer, the server's peak RSS and open descriptors (sampled every 50 ms), and what the
# attacker managed (tests/src/bin/tcp-fairness.rs, the same code as cli/tests/tcp_fairness.rs).
#
#   bench/tcp-fairness.sh [PROBES]                     (default 200, one every 100 ms, 5 s timeout)
#   P2PD=path/to/other/p2pd bench/tcp-fairness.sh      (measure another build, e.g. an older one)
#
# Needs an open-files limit above IDLE + 1,000 (the script raises its soft limit to the hard one).
set -euo pipefail
cd "$(dirname "$0")/.."
probes=${1:-200}
# The PNP server rate-limits each source to 20 requests a second: probes stay below that.
spacing_ms=${SPACING_MS:-100}
idle=${IDLE:-5000}
drip=${DRIP:-64}
cargo build --release --quiet -p p2pd --bin p2pd -p p2pd-tests --bin tcp-fairness
p2pd=${P2PD:-target/release/p2pd}
tool=target/release/tcp-fairness
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((idle + 1000)) ]; then
    echo "open-files limit $(ulimit -n) is below $((idle + 1000)); set IDLE lower or raise the hard limit" >&2
    exit 1
fi
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { # a TCP port free on 127.0.0.1
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_listening() { # log file, expected listening lines
    for _ in $(seq 200); do
        [ "$(grep -c '"event":"listening"' "$1" 2>/dev/null || true)" -ge "$2" ] && return 0
        sleep 0.05
    done
    echo "server did not start:" >&2; cat "$1" >&2; return 1
}

start_stun() { # sets pid, port
    port=$(free_port)
    "$p2pd" stun-server --primary 127.0.0.1 --single --tcp --port "$port" --json >"$tmp/stun-$port.log" 2>&1 &
    pid=$!; pids+=("$pid")
    wait_listening "$tmp/stun-$port.log" 2
}

start_pnp() { # sets pid, port, key
    port=$(free_port)
    key=$("$p2pd" id new --file "$tmp/pnp-$port.key" --json | sed -E 's/.*"public_key":"([0-9a-f]+)".*/\1/')
    "$p2pd" pnp-server --db "$tmp/pnp-$port.db" --udp "127.0.0.1:$port" --tcp "127.0.0.1:$port" \
        --identity "$tmp/pnp-$port.key" --json >"$tmp/pnp-$port.log" 2>&1 &
    pid=$!; pids+=("$pid")
    wait_listening "$tmp/pnp-$port.log" 2
}

field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$2"; }

results=()
run() { # kind attack connections
    local kind=$1 attack=$2 n=$3 out
    if [ "$kind" = stun ]; then
        start_stun
        out=$("$tool" --kind stun --server "127.0.0.1:$port" --attack "$attack" --connections "$n" \
            --probes "$probes" --spacing-ms "$spacing_ms" --server-pid "$pid")
    else
        start_pnp
        out=$("$tool" --kind pnp --server "127.0.0.1:$port" --pnp-key "$key" --attack "$attack" \
            --connections "$n" --probes "$probes" --spacing-ms "$spacing_ms" --server-pid "$pid")
    fi
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    echo "$kind $attack x$n: $out" >&2
    results+=("| $kind-server | $n $attack | $(field served "$out") / $(field probes "$out") ($(field served_percent "$out") %) | $(field slowest_ms "$out") | $(field server_peak_rss_kib "$out") | $(field server_peak_fds "$out") | $(field attacker_connects "$out") / $(field attacker_closed_by_server "$out") |")
}

run stun idle "$idle"
run stun drip "$drip"
run pnp idle "$idle"
run pnp drip "$drip"

echo
build=$p2pd
[ -z "${P2PD:-}" ] && build="$p2pd (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "$build, $probes probes per scenario from 127.0.0.1 (one every $spacing_ms ms), attacker on 127.0.0.2:"
echo
echo "| server | attack | probes served | slowest ms | server peak RSS KiB | server peak fds | attacker handshakes / closed by server |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
