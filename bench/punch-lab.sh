#!/usr/bin/env bash
# Punch benchmark in the real-NAT lab (tests/lab/): time from signaling exchange to connected.
#
# For every NAT pair, RUNS times: both routers get their mode with `inputdrop` (conntrack flushed),
# `p2pd punch --wait` starts on host B, `p2pd punch B_KEY` on host A half a second later; both use the
# two mosquitto brokers inside the lab (203.0.113.3:1883, 203.0.113.4:1883) and coturn's STUN over TCP
# (203.0.113.1:3478). A run counts as a success when both exit 0 and each side's stdout holds the
# other side's stdin message. From the JSON status lines:
#   start->connected  A's `connected` elapsed_ms (from the command's start: broker connect, STUN probe,
#                     signaling, the meet lead and the connect itself)
#   armed->connected  per side, `connected` minus the `armed` line of the same round (the time from the
#                     end of the signaling exchange to connected: the meet lead, which the initiator picks from
#                     the measured signaling round trip, plus the connect and the channel handshake)
#   signal            A's `armed` elapsed_ms minus its `candidates` elapsed_ms (offer -> answer -> ack)
# Failing pairs (masq-fully/masq-fully) report the time to the typed failure instead.
#
#   sudo bench/punch-lab.sh [RUNS] [A_MODE/B_MODE ...]      (RUNS default 10)
#   default pairs: masq/masq masq/fullcone seq/restricted snat-range/masq preserve/masq masq-fully/fullcone
#   P2PD=path/to/p2pd uses that binary instead of building target/release/p2pd.
#   KEEP=1 keeps every run's output in the state directory (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
shift || true
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(masq/masq masq/fullcone seq/restricted snat-range/masq preserve/masq masq-fully/fullcone)
[ "$(id -u)" = 0 ] || { echo "run as root (the lab creates network namespaces)" >&2; exit 2; }
for t in ip nft conntrack ss turnserver mosquitto; do
    command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "missing: $t" >&2; exit 2; }
done
if [ -z "${P2PD:-}" ]; then
    cargo build --release --quiet -p p2pd --bin p2pd
    P2PD=$PWD/target/release/p2pd
fi
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

export LAB_PREFIX=pb$$
export LAB_STATE=${TMPDIR:-/tmp}/p2pd-lab-$LAB_PREFIX
lab=tests/lab
mkdir -p "$LAB_STATE"
cleanup() {
    bash $lab/lab.sh down || true     # kills every process in the lab's namespaces (by pid), then deletes them
    [ -n "${KEEP:-}" ] || rm -rf "$LAB_STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bash $lab/lab.sh up
bash $lab/lab.sh services
for ip in 203.0.113.3 203.0.113.4; do
    printf 'listener 1883 %s\nallow_anonymous true\npersistence false\n' $ip > "$LAB_STATE/mosquitto-$ip.conf"
    ip netns exec "$LAB_PREFIX-stun" "$mosq" -c "$LAB_STATE/mosquitto-$ip.conf" > "$LAB_STATE/mosquitto-$ip.log" 2>&1 &
done
for ip in 203.0.113.3 203.0.113.4; do
    for _ in $(seq 200); do
        ip netns exec "$LAB_PREFIX-stun" ss -Hltn "src $ip:1883" | grep -q . && break
        sleep 0.05
    done
done
key() { "$P2PD" id new --file "$LAB_STATE/$1.key" --json | sed -E 's/.*"public_key":"([0-9a-f]+)".*/\1/'; }
key a >/dev/null
key_b=$(key b)

nat_args() { # the NAT view a side passes for its router's mode
    case $1 in
        seq) echo "--nat-mapping apdm --nat-allocation sequential:1" ;;
        preserve) echo "--nat-mapping eim" ;;
        *) echo "" ;;
    esac
}
num() { # num FILE EVENT KEY: KEY's number on the first EVENT line (empty if none)
    grep -m1 "\"event\":\"$2\"" "$1" 2>/dev/null | sed -nE "s/.*\"$3\":([0-9.]+).*/\1/p"
}
last_armed() { grep "\"event\":\"armed\"" "$1" | tail -1 | sed -nE 's/.*"elapsed_ms":([0-9.]+).*/\1/p'; }

# Feeds MSG, then holds stdin open until OUT holds WANT (or the run ended), so the close that follows
# stdin's EOF never races the peer's bytes.
feed() { # feed MSG OUT WANT ERR
    printf '%s\n' "$1"
    for _ in $(seq 1200); do
        grep -qF "$3" "$2" 2>/dev/null && return 0
        grep -qE '"event":"(failed|timeout|peer_closed)"' "$4" 2>/dev/null && return 0
        sleep 0.05
    done
}

results=$LAB_STATE/results
: > "$results"
common=(--broker 203.0.113.3:1883 --broker 203.0.113.4:1883 --stun 203.0.113.1:3478 --json)
for pair in "${pairs[@]}"; do
    ma=${pair%%/*}; mb=${pair##*/}
    expect_fail=0; [ "$pair" = masq-fully/masq-fully ] && expect_fail=1
    for run in $(seq "$runs"); do
        bash $lab/nat.sh A "$ma" inputdrop
        bash $lab/nat.sh B "$mb" inputdrop
        d=$LAB_STATE/$ma-$mb-$run; mkdir -p "$d"; : > "$d/a.out"; : > "$d/b.out"; : > "$d/a.err"; : > "$d/b.err"
        msg_a="hello from A $pair $run"; msg_b="hello from B $pair $run"
        # shellcheck disable=SC2046
        ( set +e; feed "$msg_b" "$d/b.out" "$msg_a" "$d/b.err" | ip netns exec "$LAB_PREFIX-hb" "$P2PD" punch --wait \
            --identity "$LAB_STATE/b.key" "${common[@]}" --timeout 60 $(nat_args "$mb") > "$d/b.out" 2> "$d/b.err"
          echo "${PIPESTATUS[1]}" > "$d/b.rc" ) &
        pid_b=$!
        sleep 0.5
        # shellcheck disable=SC2046
        ( set +e; feed "$msg_a" "$d/a.out" "$msg_b" "$d/a.err" | ip netns exec "$LAB_PREFIX-ha" "$P2PD" punch "$key_b" \
            --identity "$LAB_STATE/a.key" "${common[@]}" --timeout 60 $(nat_args "$ma") > "$d/a.out" 2> "$d/a.err"
          echo "${PIPESTATUS[1]}" > "$d/a.rc" )
        wait "$pid_b"
        rc_a=$(cat "$d/a.rc"); rc_b=$(cat "$d/b.rc")
        ok=0
        if [ $expect_fail = 1 ]; then
            [ "$rc_a" = 1 ] && [ "$rc_b" = 1 ] && grep -q '"event":"failed"' "$d/a.err" && grep -q '"event":"failed"' "$d/b.err" && ok=1
            echo "$pair $ok $(num "$d/a.err" failed elapsed_ms) - - -" >> "$results"
        else
            [ "$rc_a" = 0 ] && [ "$rc_b" = 0 ] && grep -qF "$msg_b" "$d/a.out" && grep -qF "$msg_a" "$d/b.out" && ok=1
            ca=$(num "$d/a.err" connected elapsed_ms); cb=$(num "$d/b.err" connected elapsed_ms)
            aa=$(last_armed "$d/a.err"); ab=$(last_armed "$d/b.err"); cand=$(num "$d/a.err" candidates elapsed_ms)
            ra=-; rb=-; sig=-
            [ -n "$ca" ] && [ -n "$aa" ] && ra=$(awk -v c="$ca" -v a="$aa" 'BEGIN { print c - a }')
            [ -n "$cb" ] && [ -n "$ab" ] && rb=$(awk -v c="$cb" -v a="$ab" 'BEGIN { print c - a }')
            [ -n "$aa" ] && [ -n "$cand" ] && sig=$(awk -v a="$aa" -v c="$cand" 'BEGIN { print a - c }')
            if [ $ok = 1 ]; then echo "$pair 1 $ca $ra $rb $sig" >> "$results"; else echo "$pair 0 - - - -" >> "$results"; fi
        fi
        [ $ok = 1 ] || echo "  $pair run $run FAILED (output in $d; KEEP=1 keeps it)" >&2
        printf '.' >&2
    done
    echo " $pair done" >&2
done

echo
echo "p2pd punch through two real NATs, inputdrop routers, $runs run(s) per pair ($P2PD)"
echo "ms: median / min / max over successful runs; armed->connected counts both sides"
awk '
function stats(list,   n, a, i, j, t, med) {
    n = split(list, a, " "); if (n == 0) return "-"
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    return sprintf("%.0f / %.0f / %.0f", med, a[1], a[n])
}
{
    if (!($1 in runs)) order[++np] = $1
    runs[$1]++; ok[$1] += $2
    if ($2 == 1 && $3 != "-") start[$1] = start[$1] " " $3
    if ($2 == 1 && $4 != "-") armed[$1] = armed[$1] " " $4
    if ($2 == 1 && $5 != "-") armed[$1] = armed[$1] " " $5
    if ($2 == 1 && $6 != "-") sig[$1] = sig[$1] " " $6
}
END {
    printf "%-32s %4s %4s  %-22s %-22s %-16s\n", "pair A/B", "runs", "ok", "start->connected (A)", "armed->connected", "signal (A)"
    for (i = 1; i <= np; i++) {
        p = order[i]; label = p; if (p == "masq-fully/masq-fully") label = p " (fail)"
        printf "%-32s %4d %4d  %-22s %-22s %-16s\n", label, runs[p], ok[p], stats(start[p]), stats(armed[p]), stats(sig[p])
    }
}' "$results"
[ -n "${KEEP:-}" ] && echo "runs kept in $LAB_STATE"
exit 0
