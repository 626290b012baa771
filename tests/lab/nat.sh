#!/bin/bash
# usage: nat.sh A|B MODE [inputdrop|open] [PREFIX]        (PREFIX also from $LAB_PREFIX; default "nl")
#  MODE: masq | snat | masq-fully | snat-range | seq | preserve | fullcone | restricted | none
#   masq, snat   EIM, port preserved, APDF (Linux default filtering)
#   snat-range   EIM, random port from 20000-29999, APDF
#   masq-fully   address-and-port-dependent mapping (new random port per destination), APDF
#   seq          address-and-port-dependent mapping, sequential ports 20000, 20001, ... (nft map, see below), APDF
#   preserve     EIM, mapped port = local port + 1000 (64k-entry nft map), APDF
#   fullcone     EIM + endpoint-independent filtering (emulated: set of used ports + DNAT)
#   restricted   EIM + address-dependent filtering (emulated: set of (peer IP, port) + DNAT)
#  3rd arg: inputdrop (default: drop unsolicited WAN input, avoids stale conntrack entries) | open
# The nft map files are generated on first use into $LAB_STATE (default /tmp/p2pd-lab-PREFIX).
set -e
R=$1; MODE=$2; DROP=${3:-inputdrop}; P=${4:-${LAB_PREFIX:-nl}}
case "$P" in *[!A-Za-z0-9_-]*|"") echo "bad prefix '$P'" >&2; exit 2;; esac
S=${LAB_STATE:-/tmp/p2pd-lab-$P}
case "$R" in
  A) NS=$P-ra; WAN=203.0.113.10; HOST=192.0.2.2 ;;
  B) NS=$P-rb; WAN=203.0.113.20; HOST=198.51.100.2 ;;
  *) echo "usage: $0 A|B MODE [inputdrop|open] [PREFIX]" >&2; exit 2 ;;
esac
case "$DROP" in inputdrop|open) ;; *) echo "bad 3rd argument '$DROP'" >&2; exit 2;; esac
ip netns exec "$NS" nft flush ruleset
if [ "$MODE" = none ]; then ip netns exec "$NS" conntrack -F >/dev/null 2>&1 || true; exit 0; fi

gen_maps() {   # written to a temp file and renamed, so parallel callers never see a half-written map
  mkdir -p "$S"
  if [ ! -s "$S/map-seq.nft" ]; then
    # nft 1.0.6 byte-swaps "numgen ... offset N" in snat; a typeof map from the counter to the port avoids it
    awk 'BEGIN { printf "  map seq { typeof numgen inc mod 10000 : udp sport; elements = { ";
                 for (i = 0; i < 10000; i++) printf "%s%d : %d", (i ? ", " : ""), i, 20000 + i;
                 printf " }\n  }\n" }' > "$S/map-seq.nft.$$" && mv "$S/map-seq.nft.$$" "$S/map-seq.nft"
  fi
  if [ ! -s "$S/map-pres.nft" ]; then
    # preserving delta: mapped = local + 1000 (wrapping inside 1024..65535)
    awk 'BEGIN { printf "  map pmap { type inet_service : inet_service; elements = { ";
                 for (p = 1024; p < 65536; p++) printf "%s%d : %d", (p > 1024 ? ", " : ""), p, 1024 + (p - 1024 + 1000) % 64512;
                 printf " }\n  }\n" }' > "$S/map-pres.nft.$$" && mv "$S/map-pres.nft.$$" "$S/map-pres.nft"
  fi
}

MAPF=""
case $MODE in
  masq)             POST='oifname "wan0" masquerade' ;;
  masq-fully)       POST='oifname "wan0" masquerade fully-random' ;;
  snat)             POST="oifname \"wan0\" snat to $WAN" ;;
  snat-range)       POST="oifname \"wan0\" meta l4proto { tcp, udp } snat to $WAN:20000-29999; oifname \"wan0\" snat to $WAN" ;;
  fullcone|restricted) POST='oifname "wan0" masquerade' ;;
  seq)       gen_maps; MAPF=$S/map-seq.nft;  POST="oifname \"wan0\" meta l4proto { tcp, udp } snat to $WAN : numgen inc mod 10000 map @seq; oifname \"wan0\" snat to $WAN" ;;
  preserve)  gen_maps; MAPF=$S/map-pres.nft; POST="oifname \"wan0\" meta l4proto { tcp, udp } snat to $WAN : th sport map @pmap; oifname \"wan0\" snat to $WAN" ;;
  *) echo "bad mode '$MODE'" >&2; exit 2;;
esac
PRE=""; TRACK=""
if [ "$MODE" = fullcone ]; then
  # EIF emulation: any inbound NEW udp/tcp to a port the host has used outbound is DNATed to the host (port preserved)
  TRACK='oifname "wan0" meta l4proto { tcp, udp } update @mapped { meta l4proto . th sport timeout 120s }'
  PRE="iifname \"wan0\" meta l4proto . th dport @mapped dnat to $HOST"
fi
if [ "$MODE" = restricted ]; then
  # ADF emulation: inbound NEW from a remote IP the host has sent to (any remote port) on that mapped port
  TRACK='oifname "wan0" meta l4proto { tcp, udp } update @peers { ip daddr . meta l4proto . th sport timeout 120s }'
  PRE="iifname \"wan0\" ip saddr . meta l4proto . th dport @peers dnat to $HOST"
fi
INPUT=""
[ "$DROP" = inputdrop ] && INPUT='chain input { type filter hook input priority 0; policy accept; iifname "wan0" ct state established,related accept; iifname "wan0" icmp type echo-request accept; iifname "wan0" drop
}'
ip netns exec "$NS" nft -f - <<NFT
table ip nat {
$( [ -n "$MAPF" ] && cat "$MAPF" )
  set mapped { type inet_proto . inet_service; flags timeout; }
  set peers  { type ipv4_addr . inet_proto . inet_service; flags timeout; }
  chain pre  { type nat hook prerouting priority dstnat; $PRE
  }
  chain post { type nat hook postrouting priority srcnat; $POST
  }
  chain track { type filter hook postrouting priority srcnat + 10; $TRACK
  }
  $INPUT
}
NFT
ip netns exec "$NS" conntrack -F >/dev/null 2>&1 || true   # stale entries keep OLD mappings: always flush after changing rules
