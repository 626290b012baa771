#!/usr/bin/env python3
"""p2pd 3.1.9 (PyPI) NAT test + delta test inside a NAT-lab namespace; prints one JSON line.

Used by bench/nat-vs-p2pd.sh. Run it ONLY inside a lab namespace (e.g. `ip netns exec PREFIX-ha`), where
nothing can reach the real internet: p2pd ships hard-coded lists of hundreds of public STUN servers.

Two in-process patches, as in the NAT-lab reference (§7):
  1. the public STUN server lists are replaced IN PLACE by the lab's coturn (203.0.113.1/.2, ports 3478/3479;
     every p2pd module did `from .settings import *`, so the list objects are shared);
  2. 203.0.113.0/24 (TEST-NET-3, which Python's ipaddress calls private) counts as public, otherwise
     `Interface()` fails at route_defs.py `assert(ext_ips[0].is_public)`.

Then it does what p2pd itself does to learn the NAT (`Interface.load_nat`, the work behind `nic_load_nat`):
`fast_nat_test` (the RFC 3489-style NAT type test) and `delta_test` (port allocation), concurrently.

Output fields: nat / delta (p2pd's names), delta_value, elapsed_ms = time of `load_nat()` (NAT + delta test),
init_ms = time of `await Interface("eth0")` (route discovery: STUN to learn the external address),
import_ms = Python module import time of p2pd, raw = p2pd's nat dict. On failure: {"error": ...} and exit 1.
"""
import time

T_START = time.perf_counter()

import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import p2pd.ip_range as R  # noqa: E402
import p2pd.settings as S  # noqa: E402
from p2pd import Interface  # noqa: E402
from p2pd.nat_utils import (  # noqa: E402
    BLOCKED_NAT, DEPENDENT_DELTA, EQUAL_DELTA, FULL_CONE, INDEPENDENT_DELTA, NA_DELTA, OPEN_INTERNET,
    PRESERV_DELTA, RANDOM_DELTA, RESTRICT_NAT, RESTRICT_PORT_NAT, SYMMETRIC_NAT, SYMMETRIC_UDP_FIREWALL,
)

T_IMPORTED = time.perf_counter()

LAB = "203.0.113."
IFACE = sys.argv[1] if len(sys.argv) > 1 else "eth0"

# Patch 2: TEST-NET-3 is the lab's "internet", so it must count as public.
_orig_init = R.IPRange.__init__


def _init(self, *a, **k):
    _orig_init(self, *a, **k)
    if str(self.ip).startswith(LAB):
        self.is_public, self.is_private = True, False


R.IPRange.__init__ = _init

# Patch 1: the lab's coturn replaces every public server, in place. coturn answers change requests correctly
# only for its first address (203.0.113.1), so the change server is always .1 with .2:3479 as secondary.
LOCAL_CHANGE = {"mode": 1, "primary": {"ip": LAB + "1", "port": 3478}, "secondary": {"ip": LAB + "2", "port": 3479}}
LOCAL_MAP = [{"mode": 2, "host": None, "primary": {"ip": LAB + h, "port": p}, "secondary": {"ip": None, "port": None}}
             for h in ("1", "2") for p in (3478, 3479)]
for proto in (S.UDP, S.TCP):
    for af in (S.IP4, S.IP6):
        S.STUN_MAP_SERVERS[proto][af][:] = (LOCAL_MAP * 4) if af == S.IP4 else []
        if proto in S.STUN_CHANGE_SERVERS:
            S.STUN_CHANGE_SERVERS[proto][af][:] = [LOCAL_CHANGE] * 12 if (af == S.IP4 and proto == S.UDP) else []
# Nothing outside the lab may remain in any list p2pd could fall back to.
for name in ("STUN_MAP_SERVERS", "STUN_CHANGE_SERVERS"):
    for by_af in getattr(S, name).values():
        for servers in by_af.values():
            assert all(s["primary"]["ip"].startswith(LAB) for s in servers), name

NAMES = {OPEN_INTERNET: "OPEN_INTERNET", SYMMETRIC_UDP_FIREWALL: "SYM_UDP_FIREWALL", FULL_CONE: "FULL_CONE",
         RESTRICT_NAT: "RESTRICT_NAT", RESTRICT_PORT_NAT: "RESTRICT_PORT_NAT", SYMMETRIC_NAT: "SYMMETRIC_NAT",
         BLOCKED_NAT: "BLOCKED_NAT"}
DNAMES = {NA_DELTA: "NA", EQUAL_DELTA: "EQUAL", PRESERV_DELTA: "PRESERV", INDEPENDENT_DELTA: "INDEPENDENT",
          DEPENDENT_DELTA: "DEPENDENT", RANDOM_DELTA: "RANDOM"}


async def main():
    t0 = time.perf_counter()
    nic = await Interface(IFACE)
    t1 = time.perf_counter()
    nat = await nic.load_nat()  # p2pd defaults: nat_tests=5, delta_tests=12, timeout=4
    t2 = time.perf_counter()
    return {
        "nat": NAMES.get(nat["type"], str(nat["type"])),
        "delta": DNAMES.get(nat["delta"]["type"], str(nat["delta"]["type"])),
        "delta_value": nat["delta"]["value"],
        "elapsed_ms": round((t2 - t1) * 1000, 1),
        "init_ms": round((t1 - t0) * 1000, 1),
        "import_ms": round((T_IMPORTED - T_START) * 1000, 1),
        "raw": nat,
    }


try:
    out = asyncio.run(main())
except Exception as e:  # report, never invent a result
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(1)
print(json.dumps(out))
