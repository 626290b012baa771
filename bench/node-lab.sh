#!/usr/bin/env bash
# p2pd node / p2pd connect benchmark in the real-NAT lab (tests/lab/): how long a connect by name takes
# on each path, against the goals of issues 12 and 13, and the throughput of a relayed stream against a
# direct one.
#
# The lab's servers go in a config file (no NAT flags: every process classifies its own NAT): coturn's
# RFC 5780 STUN on 203.0.113.1:3478 (UDP, and TCP for the listener's address and the punch), our
# `p2pd pnp-server` on 203.0.113.1:5300, the two mosquitto brokers on 203.0.113.3:1883 and 203.0.113.4:1883,
# and a TURN relay: a second coturn (`lab.sh turn`) on 203.0.113.1:3480 with TURN REST API credentials
# (`[[relay]]` with the shared secret, so the file is mode 600), allocations granted at most 4 s.
# Cases (node host / connect host, router modes with `inputdrop`; the relay is configured for all):
#   direct       node on the open host ho (203.0.113.30, no NAT), connect from ha behind masq
#   reverse      node on ha behind masq, connect from the open host
#   punched      masq/masq and seq/restricted (node on hb, connect from ha)
#   unpunchable  masq-fully/masq-fully: relayed through the TURN server
# For each case, RUNS times: the routers get their modes (conntrack flushed), `p2pd node --name` starts and
# registers (its `ready` line), then `p2pd connect NAME`; a run counts when both print the expected path
# (connected.path, accepted.path), each side's stdout holds the other's stdin message and both exit 0.
# From the connect's JSON status lines:
#   connect   connected.elapsed_ms: from the connect call (after its own `ready`) to the stream, name resolution included
#   resolve   the resolve phase's took_ms (the PNP lookup)
#   -resolve  connect minus resolve
# The signaling round trip (for the reverse goal) is `p2pd signal send`'s round_trip_ms from the open host
# to a `p2pd signal listen` on ha, RUNS messages.
# Throughput, RUNS times each: SIZE_MB MiB of zeros (`head -c`) into the connect's stdin once its `connected`
# line is out, to the node's stdout (`head -c` of the same size, then the time): MB/s (10^6 bytes/s) from the
# first byte offered to the last byte out of the node. The node sends nothing (stdin /dev/null); both must exit
# 0 with the path expected, and the node's stdout must hold every byte.
#   relayed      node on hb, connect from ha, masq-fully/masq-fully (through the TURN server)
#   direct       node on the open host ho, connect from ha behind masq
#
#   sudo bench/node-lab.sh [RUNS]        (RUNS default 10; SIZE_MB default 64)
#   P2PD=path/to/p2pd uses that binary instead of building target/release/p2pd.
#   KEEP=1 keeps every run's output in the state directory (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-${RUNS:-10}}
[ "$(id -u)" = 0 ] || { echo "run as root (the lab creates network namespaces)" >&2; exit 2; }
for t in ip nft conntrack ss turnserver mosquitto; do
    command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "missing: $t" >&2; exit 2; }
done
if [ -z "${P2PD:-}" ]; then
    cargo build --release --quiet -p p2pd --bin p2pd
    P2PD=$PWD/target/release/p2pd
fi
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

export LAB_PREFIX=nb$$
export LAB_STATE=${TMPDIR:-/tmp}/p2pd-lab-$LAB_PREFIX
lab=tests/lab
mkdir -p "$LAB_STATE"
S=$LAB_STATE
cleanup() {
    bash $lab/lab.sh down || true     # kills every process in the lab's namespaces (by pid), then deletes them
    [ -n "${KEEP:-}" ] || rm -rf "$LAB_STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bash $lab/lab.sh up
bash $lab/lab.sh services
turn_secret=p2pd-bench-turn-$$
LAB_TURN_SECRET=$turn_secret bash $lab/lab.sh turn
for ip in 203.0.113.3 203.0.113.4; do
    printf 'listener 1883 %s\nallow_anonymous true\npersistence false\n' $ip > "$S/mosquitto-$ip.conf"
    ip netns exec "$LAB_PREFIX-stun" "$mosq" -c "$S/mosquitto-$ip.conf" > "$S/mosquitto-$ip.log" 2>&1 &
done
key() { "$P2PD" id new --file "$S/$1.key" --json | sed -E 's/.*"public_key":"([0-9a-f]+)".*/\1/'; }
pnp_key=$(key pnp)
key node > /dev/null
key connect > /dev/null
ip netns exec "$LAB_PREFIX-stun" "$P2PD" pnp-server --db "$S/names.db" --udp 203.0.113.1:5300 --tcp 203.0.113.1:5300 \
    --identity "$S/pnp.key" --json > "$S/pnp.log" 2>&1 &
up() { ip netns exec "$LAB_PREFIX-stun" ss "$1" "src $2" | grep -q .; }
for _ in $(seq 200); do
    up -Hltn 203.0.113.3:1883 && up -Hltn 203.0.113.4:1883 && up -Hlun 203.0.113.1:5300 && break
    sleep 0.05
done
: > "$S/config.toml"
chmod 600 "$S/config.toml"     # it holds the relay's secret: the CLI refuses a file others may read
printf 'stun = ["203.0.113.1:3478"]\nbrokers = ["203.0.113.3:1883", "203.0.113.4:1883"]\n\n[[pnp]]\naddress = "203.0.113.1:5300"\nkey = "%s"\n\n[[relay]]\naddress = "203.0.113.1:3480"\nsecret = "%s"\n' \
    "$pnp_key" "$turn_secret" > "$S/config.toml"

# line FILE EVENT: the first EVENT line of FILE
line() { grep -m1 "\"event\":\"$2\"" "$1" 2>/dev/null || true; }
field() { sed -nE "s/.*\"$1\":\"?([A-Za-z0-9. {}:]+)\"?[,}].*/\1/p" | head -1; }   # top-level-ish field of one line
phase_took() { sed -nE "s/.*\"phase\":\"$1\",[^}]*\"took_ms\":([0-9]+).*/\1/p"; }
host_ns() { case $1 in ho) echo "$LAB_PREFIX-ho";; ha) echo "$LAB_PREFIX-ha";; hb) echo "$LAB_PREFIX-hb";; esac; }

results=$S/results
: > "$results"
nats=$S/nats
: > "$nats"
# case NAME NODE_HOST NODE_MODE CONNECT_HOST CONNECT_MODE PATH
cases=(
    "direct ho open ha masq direct"
    "reverse ha masq ho open reverse"
    "punched-masq/masq hb masq ha masq punched"
    "punched-seq/restricted hb restricted ha seq punched"
    "unpunchable hb masq-fully ha masq-fully relayed"
)
for c in "${cases[@]}"; do
    read -r name nh nm ch cm want <<< "$c"
    for run in $(seq "$runs"); do
        [ "$nh" = ha ] && bash $lab/nat.sh A "$nm" inputdrop
        [ "$nh" = hb ] && bash $lab/nat.sh B "$nm" inputdrop
        [ "$ch" = ha ] && bash $lab/nat.sh A "$cm" inputdrop
        [ "$ch" = hb ] && bash $lab/nat.sh B "$cm" inputdrop
        d=$S/${name//\//-}-$run; mkdir -p "$d"
        n="bench-${name//\//-}-$run"
        msg_n="from the node $name $run"; msg_c="from the connect $name $run"
        ( set +e; printf '%s\n' "$msg_n" | timeout 60 ip netns exec "$(host_ns "$nh")" "$P2PD" --config "$S/config.toml" \
            node --name "$n" --identity "$S/node.key" --json > "$d/n.out" 2> "$d/n.err"; echo $? > "$d/n.rc" ) 2>/dev/null &
        pid_n=$!
        for _ in $(seq 300); do grep -q '"event":"ready"' "$d/n.err" 2>/dev/null && break; sleep 0.05; done
        t0=$(date +%s%N)
        ( set +e; printf '%s\n' "$msg_c" | timeout 60 ip netns exec "$(host_ns "$ch")" "$P2PD" --config "$S/config.toml" \
            connect "$n" --timeout 20 --identity "$S/connect.key" --json > "$d/c.out" 2> "$d/c.err"; echo $? > "$d/c.rc" )
        wall=$(( ($(date +%s%N) - t0) / 1000000 ))
        wait "$pid_n" || true
        rc_c=$(cat "$d/c.rc"); rc_n=$(cat "$d/n.rc")
        printf '%s node %s %s\n%s connect %s %s\n' "$name" "$nh" "$(line "$d/n.err" ready | sed -nE 's/.*"nat":(.*)\}$/\1/p')" \
            "$name" "$ch" "$(line "$d/c.err" ready | sed -nE 's/.*"nat":(.*)\}$/\1/p')" >> "$nats"
        ok=0
        cl=$(line "$d/c.err" connected); al=$(line "$d/n.err" accepted)
        [ "$rc_c" = 0 ] && [ "$rc_n" = 0 ] && [ "$(field path <<< "$cl")" = "$want" ] && [ "$(field path <<< "$al")" = "$want" ] \
            && grep -qF "$msg_n" "$d/c.out" && grep -qF "$msg_c" "$d/n.out" && ok=1
        if [ $ok = 1 ]; then
            echo "$name 1 $(field elapsed_ms <<< "$cl") $(phase_took resolve <<< "$cl") $wall" >> "$results"
        else
            echo "$name 0 - - $wall" >> "$results"
        fi
        [ $ok = 1 ] || echo "  $name run $run FAILED (connect exit $rc_c, node exit $rc_n; output in $d, KEEP=1 keeps it)" >&2
        printf '.' >&2
    done
    echo " $name done" >&2
done

# Throughput: SIZE_MB MiB through the relay and through a direct stream.
size_mb=${SIZE_MB:-64}
bytes=$((size_mb * 1024 * 1024))
tput=$S/tput
: > "$tput"
# tput_case NAME NODE_HOST NODE_MODE CONNECT_HOST CONNECT_MODE PATH
tput_cases=(
    "relayed hb masq-fully ha masq-fully relayed"
    "direct ho open ha masq direct"
)
for c in "${tput_cases[@]}"; do
    read -r name nh nm ch cm want <<< "$c"
    for run in $(seq "$runs"); do
        [ "$nh" = hb ] && bash $lab/nat.sh B "$nm" inputdrop
        [ "$ch" = ha ] && bash $lab/nat.sh A "$cm" inputdrop
        d=$S/tput-$name-$run; mkdir -p "$d"
        n="tput-$name-$run"
        # The node's stdout: exactly `bytes` bytes counted, then the time the last one came out.
        ( set +e; timeout 120 ip netns exec "$(host_ns "$nh")" "$P2PD" --config "$S/config.toml" node --name "$n" \
            --identity "$S/node.key" --json < /dev/null 2> "$d/n.err" \
            | { head -c "$bytes" | wc -c > "$d/count"; date +%s%N > "$d/t1"; cat > /dev/null; }
          echo "${PIPESTATUS[0]}" > "$d/n.rc" ) 2>/dev/null &
        pid_n=$!
        for _ in $(seq 300); do grep -q '"event":"ready"' "$d/n.err" 2>/dev/null && break; sleep 0.05; done
        # The connect's stdin: nothing until its `connected` line, then the bytes (t0 when they start).
        ( set +e
          { for _ in $(seq 3000); do grep -q '"event":"connected"' "$d/c.err" 2>/dev/null && break; sleep 0.01; done
            date +%s%N > "$d/t0"; head -c "$bytes" /dev/zero; } \
            | timeout 120 ip netns exec "$(host_ns "$ch")" "$P2PD" --config "$S/config.toml" connect "$n" --timeout 20 \
                --identity "$S/connect.key" --json > "$d/c.out" 2> "$d/c.err"
          echo "${PIPESTATUS[1]}" > "$d/c.rc" )
        wait "$pid_n" || true
        rc_c=$(cat "$d/c.rc"); rc_n=$(cat "$d/n.rc"); got=$(cat "$d/count" 2>/dev/null || echo 0)
        cl=$(line "$d/c.err" connected); al=$(line "$d/n.err" accepted)
        if [ "$rc_c" = 0 ] && [ "$rc_n" = 0 ] && [ "$got" = "$bytes" ] && [ "$(field path <<< "$cl")" = "$want" ] \
            && [ "$(field path <<< "$al")" = "$want" ] && [ -s "$d/t0" ] && [ -s "$d/t1" ]; then
            echo "$name 1 $(awk -v b="$bytes" -v t0="$(cat "$d/t0")" -v t1="$(cat "$d/t1")" 'BEGIN { printf "%.1f", b / ((t1 - t0) / 1e9) / 1e6 }')" >> "$tput"
        else
            echo "$name 0 -" >> "$tput"
            echo "  throughput $name run $run FAILED (connect exit $rc_c, node exit $rc_n, $got of $bytes bytes; output in $d, KEEP=1 keeps it)" >&2
        fi
        printf '.' >&2
    done
    echo " throughput $name done" >&2
done

# The signaling round trip: RUNS receipts from the open host to a listener on ha (masq).
bash $lab/nat.sh A masq inputdrop
sig_pk=$(key sig)
ip netns exec "$LAB_PREFIX-ha" "$P2PD" signal listen --identity "$S/sig.key" --broker 203.0.113.3 --broker 203.0.113.4 \
    --json > "$S/listen.out" 2>&1 &
for _ in $(seq 100); do [ "$(grep -c '"event":"subscribed"' "$S/listen.out")" -ge 2 ] && break; sleep 0.05; done
rtts=""
for run in $(seq "$runs"); do
    r=$(ip netns exec "$LAB_PREFIX-ho" "$P2PD" signal send "$sig_pk" "rtt $run" --identity "$S/connect.key" \
        --broker 203.0.113.3 --broker 203.0.113.4 --json 2>/dev/null | sed -nE 's/.*"round_trip_ms":([0-9.]+).*/\1/p' | head -1)
    [ -n "$r" ] && rtts="$rtts $r"
done

echo
echo "p2pd node / p2pd connect through real NATs (no NAT flags), inputdrop routers, $runs run(s) per case ($P2PD)"
echo "ms: median / min / max over successful runs; connect = connected.elapsed_ms from the connect call"
echo "(name resolution included)"
echo
echo "NAT classification printed on the ready lines (distinct per case and side):"
sort -u "$nats" | sed 's/^/  /'
echo
awk -v rtts="$rtts" '
function sorted(list, a,   n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n
}
function med(list,   a, n) { n = sorted(list, a); if (n == 0) return ""; return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function mx(list,   a, n) { n = sorted(list, a); if (n == 0) return ""; return a[n] }
function stats(list,   a, n) {
    n = sorted(list, a); if (n == 0) return "-"
    return sprintf("%.0f / %.0f / %.0f", med(list), a[1], a[n])
}
{
    if (!($1 in runs)) order[++np] = $1
    runs[$1]++; ok[$1] += $2
    if ($2 == 1 && $3 != "-") conn[$1] = conn[$1] " " $3
    if ($2 == 1 && $4 != "-") res[$1] = res[$1] " " $4
    if ($2 == 1 && $3 != "-" && $4 != "-") net[$1] = net[$1] " " ($3 - $4)
    if ($2 == 1) wall[$1] = wall[$1] " " $5
}
function goal(text, value, limit, all_ok) {
    if (value == "") { printf "  %-86s no successful run: NOT met\n", text; return }
    printf "  %-86s %6.0f ms  %s\n", text, value, (value <= limit && all_ok) ? "met" : "NOT met"
}
END {
    printf "%-24s %4s %4s  %-16s %-14s %-16s %-18s\n", "case", "runs", "ok", "connect", "resolve", "-resolve", "connect process"
    for (i = 1; i <= np; i++) {
        p = order[i]
        printf "%-24s %4d %4d  %-16s %-14s %-16s %-18s\n", p, runs[p], ok[p], stats(conn[p]), stats(res[p]), stats(net[p]), stats(wall[p])
    }
    rtt = med(rtts)
    printf "\nsignaling round trip (p2pd signal send receipt, open host -> ha): %s ms (median / min / max)\n", stats(rtts)
    print "\ngoals (issues 12 and 13; judged on the worst successful run, and every run must succeed):"
    goal("direct: connect - resolve <= 50 ms (max)", mx(net["direct"]), 50, ok["direct"] == runs["direct"])
    lim = (rtt == "" ? 0 : rtt) + 50
    goal(sprintf("reverse: connect - resolve <= signaling RTT + 50 = %.0f ms (max)", lim), mx(net["reverse"]), lim, ok["reverse"] == runs["reverse"])
    for (i = 1; i <= np; i++) if (order[i] ~ /^punched/) {
        p = order[i]; goal(p ": connect <= 1000 ms (max)", mx(conn[p]), 1000, ok[p] == runs[p])
    }
    goal("unpunchable: connect to a usable relayed stream <= 4000 ms (max connected.elapsed_ms)", mx(conn["unpunchable"]), 4000, ok["unpunchable"] == runs["unpunchable"])
}' "$results"
echo
echo "throughput: $size_mb MiB from the connect's stdin to the node's stdout, MB/s (10^6 bytes/s), $runs run(s) each"
awk '
function sorted(list, a,   n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n
}
function med(list,   a, n) { n = sorted(list, a); if (n == 0) return ""; return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
{
    if (!($1 in runs)) order[++np] = $1
    runs[$1]++; ok[$1] += $2
    if ($2 == 1) v[$1] = v[$1] " " $3
}
END {
    printf "%-10s %4s %4s  %-28s\n", "path", "runs", "ok", "MB/s min / median / max"
    for (i = 1; i <= np; i++) {
        p = order[i]; n = sorted(v[p], a)
        if (n == 0) { printf "%-10s %4d %4d  -\n", p, runs[p], ok[p]; continue }
        printf "%-10s %4d %4d  %.1f / %.1f / %.1f\n", p, runs[p], ok[p], a[1], med(v[p]), a[n]
    }
    r = med(v["relayed"]); d = med(v["direct"])
    if (r != "" && d != "" && d > 0) printf "relayed / direct (medians): %.2f\n", r / d
    else print "relayed / direct: - (no successful run on one side)"
}' "$tput"
[ -n "${KEEP:-}" ] && echo "runs kept in $LAB_STATE"
exit 0
