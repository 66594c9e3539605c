#!/usr/bin/env python3
"""Independent check of sluice's tunnel packets with scapy (not sluice's own parser).

  check_tunnel.py PCAP --kind vxlan|geneve --port N --outer-src IP --vni V --inner-dst IP

Every packet from OUTER_SRC to the tunnel PORT must decode as KIND with VNI V, carry an inner
IP packet to INNER_DST, and have valid outer IPv4 header and UDP checksums (as scapy recomputes
them). Prints a JSON summary; exits 1 if no packet matched or any was wrong.
"""
import argparse
import json
import sys

from scapy.all import IP, UDP, Ether, IPv6, bind_layers, rdpcap
from scapy.contrib.geneve import GENEVE
from scapy.layers.vxlan import VXLAN


def main() -> int:
    a = argparse.ArgumentParser()
    a.add_argument("pcap")
    a.add_argument("--kind", choices=("vxlan", "geneve"), required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--outer-src", required=True)
    a.add_argument("--vni", type=int, required=True)
    a.add_argument("--inner-dst", required=True)
    args = a.parse_args()
    layer = VXLAN if args.kind == "vxlan" else GENEVE
    bind_layers(UDP, layer, dport=args.port)
    bind_layers(VXLAN, Ether)

    good, bad, problems = 0, 0, []
    for p in rdpcap(args.pcap):
        # the outer header is the one right after Ethernet (p[IP] could find the inner one)
        outer = p[Ether].payload if Ether in p else None
        if not isinstance(outer, (IP, IPv6)) or not isinstance(outer.payload, UDP):
            continue
        u = outer.payload
        if u.dport != args.port or outer.src != args.outer_src:
            continue
        why = []
        if layer not in p:
            why.append("not decoded as " + args.kind)
        else:
            t = p[layer]
            if t.vni != args.vni:
                why.append(f"vni {t.vni}")
            inner = t.payload
            inner_ip = inner[IP] if IP in inner else (inner[IPv6] if IPv6 in inner else None)
            if inner_ip is None or inner_ip.dst != args.inner_dst:
                why.append("inner destination " + (inner_ip.dst if inner_ip is not None else "missing"))
        if isinstance(outer, IP):
            fresh = IP(bytes(outer))
            del fresh.chksum
            if IP(bytes(fresh)).chksum != outer.chksum:
                why.append("outer IPv4 checksum")
        if u.chksum not in (0, None):
            # rebuild the outer packet with the checksum left for scapy to compute
            fresh = outer.__class__(bytes(outer))
            fresh[UDP].chksum = None
            if outer.__class__(bytes(fresh))[UDP].chksum != u.chksum:
                why.append("UDP checksum")
        elif isinstance(outer, IPv6):
            why.append("zero UDP checksum over IPv6")
        if why:
            bad += 1
            problems.append(why)
        else:
            good += 1
    print(json.dumps({"matched": good, "wrong": bad, "problems": problems[:5]}))
    return 0 if good > 0 and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
