#!/bin/bash
# NAT lab (see docs: nat-lab reference): network namespaces + veth + bridge, every address a TEST-NET address living
# only inside namespaces created here. No namespace has a link to the root namespace and the routers have no
# default route, so nothing can leave the lab.
#
#   usage: lab.sh up|services|turn|down [PREFIX]   (PREFIX also from $LAB_PREFIX; default "nl")
#
#   PREFIX-wan : bridge br0 = "internet" 203.0.113.0/24
#   PREFIX-stun: 203.0.113.1 .2 .3 .4 on one veth (coturn RFC 5780 server on .1/.2, ports 3478/3479;
#                with "turn": a second coturn, a TURN server, on 203.0.113.1:3480)
#   PREFIX-ra  : NAT A  wan0 203.0.113.10  lan0 192.0.2.1/24     PREFIX-ha: eth0 192.0.2.2    (gw 192.0.2.1)
#   PREFIX-rb  : NAT B  wan0 203.0.113.20  lan0 198.51.100.1/24  PREFIX-hb: eth0 198.51.100.2 (gw 198.51.100.1)
#   PREFIX-ho  : open host (no NAT) wan0 203.0.113.30, straight on the "internet" bridge
#
# Namespace names are the only global thing, so labs with different prefixes run side by side.
# State (pid files, logs, generated nft maps) goes to $LAB_STATE (default /tmp/p2pd-lab-PREFIX).
set -e
P=${2:-${LAB_PREFIX:-nl}}
case "$P" in *[!A-Za-z0-9_-]*|"") echo "bad prefix '$P'" >&2; exit 2;; esac
S=${LAB_STATE:-/tmp/p2pd-lab-$P}
NS="$P-wan $P-stun $P-ra $P-ha $P-rb $P-hb $P-ho"
sc() { ip netns exec "$1" sysctl -qw "$2"; }
up() {
  mkdir -p "$S"
  for n in $NS; do
    ip netns add "$n"; ip -n "$n" link set lo up
    sc "$n" net.ipv6.conf.all.disable_ipv6=1; sc "$n" net.ipv6.conf.default.disable_ipv6=1
    sc "$n" net.ipv4.conf.all.rp_filter=0; sc "$n" net.ipv4.conf.default.rp_filter=0
  done
  ip -n "$P-wan" link add br0 type bridge; ip -n "$P-wan" link set br0 up
  for pair in stun:$P-stun ra:$P-ra rb:$P-rb ho:$P-ho; do   # veth created inside PREFIX-wan, peer goes straight into its namespace
    p=${pair%%:*}; n=${pair##*:}
    ip -n "$P-wan" link add "p-$p" type veth peer name wan0 netns "$n"
    ip -n "$P-wan" link set "p-$p" master br0 up; ip -n "$n" link set wan0 up
  done
  for a in 1 2 3 4; do ip -n "$P-stun" addr add 203.0.113.$a/24 dev wan0; done
  ip -n "$P-ra" addr add 203.0.113.10/24 dev wan0; ip -n "$P-rb" addr add 203.0.113.20/24 dev wan0
  ip -n "$P-ho" addr add 203.0.113.30/24 dev wan0
  ip -n "$P-ra" link add lan0 type veth peer name eth0 netns "$P-ha"
  ip -n "$P-rb" link add lan0 type veth peer name eth0 netns "$P-hb"
  ip -n "$P-ra" addr add 192.0.2.1/24 dev lan0;    ip -n "$P-ra" link set lan0 up
  ip -n "$P-rb" addr add 198.51.100.1/24 dev lan0; ip -n "$P-rb" link set lan0 up
  ip -n "$P-ha" addr add 192.0.2.2/24 dev eth0;    ip -n "$P-ha" link set eth0 up; ip -n "$P-ha" route add default via 192.0.2.1
  ip -n "$P-hb" addr add 198.51.100.2/24 dev eth0; ip -n "$P-hb" link set eth0 up; ip -n "$P-hb" route add default via 198.51.100.1
  sc "$P-ra" net.ipv4.ip_forward=1; sc "$P-rb" net.ipv4.ip_forward=1
}
listening() {   # listening IP PORT: a UDP socket is bound there inside PREFIX-stun
  ip netns exec "$P-stun" ss -Hlun "src $1:$2" 2>/dev/null | grep -q .
}
services() {
  # coturn as an RFC 5780 STUN-only server. Quirk: change-IP and OTHER-ADDRESS are right only for requests to the
  # first -L IP (203.0.113.1). Started as a direct child of this shell (ip netns exec execs turnserver, so the pid
  # recorded is turnserver's) and left running; "down" kills it by pid.
  ip netns exec "$P-stun" turnserver -n --stun-only -L 203.0.113.1 -L 203.0.113.2 --listening-port 3478 \
    --alt-listening-port 3479 --no-tls --no-dtls --no-cli --log-file stdout --simple-log \
    --pidfile "$S/turnserver.pid" --userdb "$S/turndb" > "$S/turnserver.log" 2>&1 &
  echo $! > "$S/turnserver.bgpid"
  for i in $(seq 200); do
    if listening 203.0.113.1 3478 && listening 203.0.113.1 3479 && listening 203.0.113.2 3478 && listening 203.0.113.2 3479; then
      return 0
    fi
    kill -0 "$(cat "$S/turnserver.bgpid")" 2>/dev/null || { echo "turnserver exited; log:" >&2; cat "$S/turnserver.log" >&2; return 1; }
    sleep 0.05
  done
  echo "turnserver not listening after 10 s; log:" >&2; cat "$S/turnserver.log" >&2; return 1
}
turn() {
  # A second coturn, a TURN server (RFC 5766 + RFC 6062 TCP relays) with TURN REST API credentials (shared secret
  # $LAB_TURN_SECRET, realm p2pd-lab) on 203.0.113.1:3480 (UDP + TCP), relaying from 203.0.113.1. Allocations live
  # at most 4 s unless refreshed (so a longer stream proves the client refreshes). --verbose logs every request
  # (REFRESH, CONNECT, deletion) to $S/turn.log. Like the STUN coturn, a direct child left running, killed by "down".
  [ -n "${LAB_TURN_SECRET:-}" ] || { echo "turn: set LAB_TURN_SECRET" >&2; return 2; }
  ip netns exec "$P-stun" turnserver -n --use-auth-secret "--static-auth-secret=$LAB_TURN_SECRET" --realm p2pd-lab \
    -L 203.0.113.1 --listening-port 3480 --relay-ip 203.0.113.1 --max-allocate-lifetime=4 \
    --no-tls --no-dtls --no-cli --log-file stdout --simple-log --verbose \
    --pidfile "$S/turn.pid" --userdb "$S/turn.db" > "$S/turn.log" 2>&1 &
  echo $! > "$S/turn.bgpid"
  for i in $(seq 200); do
    if listening 203.0.113.1 3480 && ip netns exec "$P-stun" ss -Hltn "src 203.0.113.1:3480" 2>/dev/null | grep -q .; then
      return 0
    fi
    kill -0 "$(cat "$S/turn.bgpid")" 2>/dev/null || { echo "turnserver (TURN) exited; log:" >&2; cat "$S/turn.log" >&2; return 1; }
    sleep 0.05
  done
  echo "turnserver (TURN) not listening after 10 s; log:" >&2; cat "$S/turn.log" >&2; return 1
}
down() {
  for n in $NS; do for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done; done   # by PID only
  for i in $(seq 50); do [ -z "$(for n in $NS; do ip netns pids "$n" 2>/dev/null; done)" ] && break; sleep 0.05; done
  for n in $NS; do for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; done
  for n in $NS; do ip netns del "$n" 2>/dev/null || true; done
}
case "$1" in up) up;; services) services;; turn) turn;; down) down;; *) echo "usage: $0 up|services|turn|down [PREFIX]" >&2; exit 2;; esac
