#!/usr/bin/env bash
# NAT classification wall time in the real NAT lab (tests/lab): p2pd-rs `p2pd nat` against p2pd 3.1.9 (PyPI),
# same NAT configs, same lab, interleaved run by run.
#
#   bench/nat-vs-p2pd.sh [ROUNDS]          (default 3; needs root, iproute2, nftables, conntrack, coturn, pip)
#   env: MODES="masq seq ..."  P2PD_VENV=DIR (default ${XDG_CACHE_HOME:-/tmp}/p2pd-bench-venv, reused if present)
#        STATE_DIR=DIR (raw TSV and logs; default /tmp/p2pd-nat-vs-p2pd-PREFIX, kept after the run)
#
# Lab: its own namespace prefix; coturn on 203.0.113.1/.2 (lab.sh services) and our `p2pd stun-server` on
# 203.0.113.3/.4 as a second RFC 5780 server. For every NAT mode of router A (tests/lab/nat.sh, conntrack
# flushed before EVERY run so each tool meets a fresh NAT) and every round:
#   ours : ip netns exec PREFIX-ha target/release/p2pd nat --server 203.0.113.1:3478 --server 203.0.113.3:3478 --json
#          whole-process wall time (mapping + filtering + port-allocation/delta test, process start to exit)
#   p2pd : ip netns exec PREFIX-ha VENV/bin/python bench/p2pd_nat_probe.py  (p2pd's fast_nat_test + delta_test via
#          Interface.load_nat, against the lab coturn, after the 2 in-process patches of the lab reference)
#          in-process time of load_nat() (NAT + delta work) and whole-process wall time (Python start-up,
#          imports, Interface() route discovery included)
# The order of the two tools alternates per round. Both classifications are recorded and checked against the
# lab's ground truth. Ratio = ours (whole process) / p2pd; below 0.25 means ours takes at most a quarter.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
rounds=${1:-3}
modes=${MODES:-"masq snat-range masq-fully seq preserve fullcone restricted"}
venv=${P2PD_VENV:-${XDG_CACHE_HOME:-/tmp}/p2pd-bench-venv}
prefix=nvp$$
state=${STATE_DIR:-/tmp/p2pd-nat-vs-p2pd-$prefix}
export LAB_PREFIX=$prefix LAB_STATE=$state/lab

[ "$(id -u)" = 0 ] || { echo "needs root (the NAT lab creates network namespaces)" >&2; exit 1; }
for tool in ip nft conntrack ss turnserver; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y iproute2 nftables conntrack coturn)" >&2; exit 1; }
done

# --- p2pd 3.1.9 in a venv (reused) ---------------------------------------------------------------------------
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("p2pd") != "3.1.9")' 2>/dev/null; then
    py=$(command -v python3.11 || command -v python3)
    echo "creating $venv with p2pd==3.1.9 ($py)" >&2
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q p2pd==3.1.9
fi
py_version=$("$venv/bin/python" -c 'import sys, importlib.metadata as m; print("p2pd", m.version("p2pd") + ", Python", sys.version.split()[0])')

# --- ours -----------------------------------------------------------------------------------------------------
cargo build --release --quiet -p p2pd --bin p2pd
bin=$ROOT/target/release/p2pd

# --- lab ------------------------------------------------------------------------------------------------------
mkdir -p "$state" "$LAB_STATE"
server_pid=""
cleanup() {
    set +e
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
    bash tests/lab/lab.sh down   # kills, by pid, what runs in this run's namespaces (all started here), deletes them
    rm -f "$LAB_STATE"/map-*.nft
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash tests/lab/lab.sh up
bash tests/lab/lab.sh services   # coturn on 203.0.113.1 + .2, ports 3478/3479, waits until it listens
ip netns exec "$prefix-stun" "$bin" stun-server --primary 203.0.113.3 --alternate 203.0.113.4 \
    --port 3478 --alt-port 3479 --json >"$state/stun-server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    [ "$(grep -c '"listening"' "$state/stun-server.log" 2>/dev/null)" -ge 4 ] && break
    kill -0 "$server_pid" 2>/dev/null || { echo "p2pd stun-server exited:" >&2; cat "$state/stun-server.log" >&2; exit 1; }
    sleep 0.05
done
[ "$(grep -c '"listening"' "$state/stun-server.log")" -ge 4 ] || { echo "p2pd stun-server not listening" >&2; exit 1; }

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
ms_since() { echo $(( ($(now_us) - $1) / 1000 )); }   # integer ms since a now_us stamp

tsv=$state/results.tsv
printf 'mode\tround\ttool\twhole_ms\tinproc_ms\tinit_ms\tclassification\tdetail\texit\n' >"$tsv"

run_ours() { # mode round
    local t0 out code whole
    bash tests/lab/nat.sh A "$1" inputdrop
    t0=$(now_us)
    set +e
    out=$(timeout 30 ip netns exec "$prefix-ha" "$bin" nat --server 203.0.113.1:3478 --server 203.0.113.3:3478 --json 2>>"$state/ours.stderr")
    code=$?
    set -e
    whole=$(ms_since "$t0")
    printf '%s\n' "$out" >>"$state/ours.jsonl"
    jq -r --arg m "$1" --arg r "$2" --arg w "$whole" --arg c "$code" \
        '[$m, $r, "ours", $w, (.elapsed_ms|tostring), "", (.p2pd_full_label // .classification),
          "\(.classification) \(.mapping // "-")/\(.filtering // "-"); \(.allocation // "-")", $c] | @tsv' \
        <<<"$out" >>"$tsv" 2>/dev/null \
        || printf '%s\t%s\tours\t%s\t\t\tFAILED\t%s\t%s\n' "$1" "$2" "$whole" "$(tr '\t\n' '  ' <<<"$out" | cut -c1-200)" "$code" >>"$tsv"
}

run_p2pd() { # mode round
    local t0 out code whole
    bash tests/lab/nat.sh A "$1" inputdrop
    t0=$(now_us)
    set +e
    out=$(cd "$state" && timeout 60 ip netns exec "$prefix-ha" "$venv/bin/python" "$ROOT/bench/p2pd_nat_probe.py" eth0 2>>"$state/p2pd.stderr")
    code=$?
    set -e
    whole=$(ms_since "$t0")
    printf '%s\n' "$out" >>"$state/p2pd.jsonl"
    if jq -e '.nat' <<<"$out" >/dev/null 2>&1; then
        jq -r --arg m "$1" --arg r "$2" --arg w "$whole" --arg c "$code" \
            '[$m, $r, "p2pd", $w, (.elapsed_ms|tostring), (.init_ms|tostring), "\(.nat) / \(.delta)",
              "\(.nat) \(.delta):\(.delta_value)", $c] | @tsv' <<<"$out" >>"$tsv"
    else
        printf '%s\t%s\tp2pd\t%s\t\t\tFAILED\t%s\t%s\n' "$1" "$2" "$whole" "$(tr '\t\n' '  ' <<<"$out" | cut -c1-200)" "$code" >>"$tsv"
    fi
}

echo "lab $prefix up; $py_version; $("$bin" --version 2>/dev/null || echo p2pd-rs); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$rounds"); do
    for m in $modes; do
        if [ $((r % 2)) = 1 ]; then run_ours "$m" "$r"; run_p2pd "$m" "$r"; else run_p2pd "$m" "$r"; run_ours "$m" "$r"; fi
        echo "round $r $m: $(tail -n 2 "$tsv" | cut -f3,4,5,7 | tr '\t\n' '  ')" >&2
    done
done

python3 - "$tsv" "$rounds" <<'PY'
import csv, statistics as st, sys
tsv, rounds = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
# Lab ground truth (nat-lab reference §3.1): ours (label prefix, allocation prefix); p2pd (type, delta[:value])
# p2pd's delta test binds 12 consecutive local ports from a random start in 4000..65k; when that start falls in
# 20000-29999 the snat-range NAT keeps the in-range ports and p2pd reports EQUAL for snat-range (seen 1 run in 3).
WANT = {
    "masq":       ("port restricted", "endpoint-independent/address-and-port-dependent", "port preserving", "RESTRICT_PORT_NAT", "EQUAL"),
    "snat":       ("port restricted", "endpoint-independent/address-and-port-dependent", "port preserving", "RESTRICT_PORT_NAT", "EQUAL"),
    "snat-range": ("port restricted", "endpoint-independent/address-and-port-dependent", "random", "RESTRICT_PORT_NAT", "RANDOM"),
    "masq-fully": ("symmetric", "address-and-port-dependent/address-and-port-dependent", "random", "SYMMETRIC_NAT", "RANDOM"),
    "seq":        ("symmetric", "address-and-port-dependent/address-and-port-dependent", "sequential, stride 1", "SYMMETRIC_NAT", "INDEPENDENT:1"),
    "preserve":   ("port restricted", "endpoint-independent/address-and-port-dependent", "fixed offset +1000", "RESTRICT_PORT_NAT", "PRESERV"),
    "fullcone":   ("full cone", "endpoint-independent/endpoint-independent", "port preserving", "FULL_CONE", "EQUAL"),
    "restricted": ("restricted", "endpoint-independent/address-dependent", "port preserving", "RESTRICT_NAT", "EQUAL"),
}
def correct(r):
    w = WANT.get(r["mode"])
    if w is None or r["classification"] == "FAILED" or r["exit"] != "0":
        return False
    if r["tool"] == "ours":
        cls, rest = r["detail"].split(" ", 1)
        mf, alloc = rest.split("; ", 1)
        return cls == "nat" and r["classification"].startswith(w[0]) and mf == w[1] and alloc.startswith(w[2])
    nat, delta = r["detail"].split(" ")
    return nat == w[3] and (delta.startswith(w[4] + ":") if ":" not in w[4] else delta == w[4])
ABBR = {"endpoint-independent": "EI", "address-dependent": "AD", "address-and-port-dependent": "APD", "-": "-"}
def short(detail):  # "nat EIM/APDF; port preserving (external = local)" -> "EIM/APDF; port preserving"
    try:
        mf, alloc = detail.split(" ", 1)[1].split("; ", 1)
        m, f = mf.split("/")
        return f"{ABBR.get(m, m)}M/{ABBR.get(f, f)}F; {alloc.split(' (')[0]}"
    except ValueError:
        return detail
med = lambda xs: st.median(xs) if xs else float("nan")
modes = list(dict.fromkeys(r["mode"] for r in rows))
print()
print(f"NAT classification, real NAT lab, {rounds} round(s) per mode; medians in ms. ours = whole `p2pd nat` process;")
print("p2pd 3.1.9: in = load_nat() (NAT + delta test) inside the process, whole = whole Python process.")
print("ours (in) = elapsed_ms ours reports (information only). ratio = ours whole process / p2pd (<= 0.25: ours takes")
print("at most a quarter of p2pd's time). ok = runs classified as the lab ground truth says (nat-lab reference, section 3.1).")
hdr = f"{'mode':<11} {'ours':>5} {'(in)':>5} {'p2pd in':>8} {'p2pd whole':>10} {'ours/in':>8} {'ours/whole':>10}  {'ours classification':<68} {'ok':>4}  {'p2pd classification':<28} {'ok':>4}"
print(hdr); print("-" * len(hdr))
r_in, r_whole = [], []
failures = []
for m in modes:
    o = [r for r in rows if r["mode"] == m and r["tool"] == "ours"]
    p = [r for r in rows if r["mode"] == m and r["tool"] == "p2pd"]
    ow = [int(r["whole_ms"]) for r in o if r["classification"] != "FAILED"]
    pin = [float(r["inproc_ms"]) for r in p if r["classification"] != "FAILED"]
    pw = [int(r["whole_ms"]) for r in p if r["classification"] != "FAILED"]
    failures += [r for r in o + p if r["classification"] == "FAILED"]
    for a, b in zip(sorted(o, key=lambda r: r["round"]), sorted(p, key=lambda r: r["round"])):
        if a["classification"] != "FAILED" and b["classification"] != "FAILED":
            r_in.append(int(a["whole_ms"]) / float(b["inproc_ms"])); r_whole.append(int(a["whole_ms"]) / int(b["whole_ms"]))
    ocls = " | ".join(dict.fromkeys(f'{r["classification"]} [{short(r["detail"])}]' for r in o))
    pcls = " | ".join(dict.fromkeys(r["detail"] for r in p))
    ratio = lambda a, b: f"{med(a) / med(b):.2f}" if a and b else "n/a"
    oin = [float(r["inproc_ms"]) for r in o if r["classification"] != "FAILED"]
    print(f"{m:<11} {med(ow):>5.0f} {med(oin):>5.0f} {med(pin):>8.0f} {med(pw):>10.0f} {ratio(ow, pin):>8} {ratio(ow, pw):>10}  {ocls:<68} {sum(map(correct, o))}/{len(o)}  {pcls:<28} {sum(map(correct, p))}/{len(p)}")
print("-" * len(hdr))
if r_in:
    print(f"overall median of per-run ratios: ours/p2pd in-process {med(r_in):.2f}, ours/p2pd whole-process {med(r_whole):.2f} "
          f"({len(r_in)} pairs); goal <= 0.25: {'met' if med(r_in) <= 0.25 else 'NOT met'} (in-process), "
          f"{'met' if med(r_whole) <= 0.25 else 'NOT met'} (whole-process)")
else:
    print("no pair of successful runs: no ratio (see failures below)")
for r in failures:
    print(f"FAILED {r['tool']} {r['mode']} round {r['round']} exit {r['exit']}: {r['detail']}")
PY
echo "raw results: $tsv (per-run JSON: $state/ours.jsonl, $state/p2pd.jsonl)"
