#!/usr/bin/env python3
"""A Geneve peer in scapy, for kernels without the geneve device (no module, not built in).

  geneve_peer.py receive --iface IF --port 6081 --outer-src IP --vni V --pod IP --seconds S [--ready FILE]
      count Geneve packets from OUTER_SRC with VNI V carrying an inner packet to POD, with valid
      checksums; prints {"received": N, "wrong": M}
  geneve_peer.py send --iface IF --dst-mac MAC --src IP --dst IP --port 6081 --vni V
                      --inner-src IP --inner-dst IP --dport P --count N
      sends N Geneve-encapsulated UDP datagrams, as a node's tunnel device would
"""
import argparse
import json
import sys

from scapy.all import IP, UDP, Ether, IPv6, Raw, bind_layers, conf, get_if_hwaddr, sendp, sniff
from scapy.contrib.geneve import GENEVE


def outer_of(p):
    o = p[Ether].payload if Ether in p else None
    return o if isinstance(o, (IP, IPv6)) else None


def receive(a) -> int:
    bind_layers(UDP, GENEVE, dport=a.port)
    stats = {"received": 0, "wrong": 0}

    def check(p):
        o = outer_of(p)
        if o is None or not isinstance(o.payload, UDP) or o.payload.dport != a.port or o.src != a.outer_src:
            return
        ok = GENEVE in p and p[GENEVE].vni == a.vni
        inner = p[GENEVE].payload if GENEVE in p else None
        iip = None
        if inner is not None:
            iip = inner[IP] if IP in inner else (inner[IPv6] if IPv6 in inner else None)
        ok = ok and iip is not None and iip.dst == a.pod
        u = o.payload
        if u.chksum not in (0, None):
            fresh = o.__class__(bytes(o))
            fresh[UDP].chksum = None
            ok = ok and o.__class__(bytes(fresh))[UDP].chksum == u.chksum
        stats["received" if ok else "wrong"] += 1

    def started():
        if a.ready:
            open(a.ready, "w").close()

    sniff(iface=a.iface, filter=f"udp port {a.port}", prn=check, store=False, timeout=a.seconds, started_callback=started, count=a.count)
    print(json.dumps(stats), flush=True)
    return 0


def send(a) -> int:
    bind_layers(UDP, GENEVE, dport=a.port)
    ipl = IPv6 if ":" in a.src else IP
    il = IPv6 if ":" in a.inner_src else IP
    frames = []
    for i in range(a.count):
        inner = Ether(src="02:00:00:00:ee:02", dst="02:00:00:00:00:01") / il(src=a.inner_src, dst=a.inner_dst) / UDP(sport=40000 + i % 8, dport=a.dport) / Raw(b"geneve-reply")
        frames.append(Ether(src=get_if_hwaddr(a.iface), dst=a.dst_mac) / ipl(src=a.src, dst=a.dst) / UDP(sport=50000 + i % 64, dport=a.port) / GENEVE(vni=a.vni, proto=0x6558) / inner)
    sendp(frames, iface=a.iface, verbose=False, inter=0.0005)
    return 0


def main() -> int:
    conf.verb = 0
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("receive")
    r.add_argument("--iface", required=True)
    r.add_argument("--port", type=int, default=6081)
    r.add_argument("--outer-src", required=True)
    r.add_argument("--vni", type=int, required=True)
    r.add_argument("--pod", required=True)
    r.add_argument("--seconds", type=float, default=5)
    r.add_argument("--ready", help="file created once the sniffer is capturing")
    r.add_argument("--count", type=int, default=0, help="stop after this many captured packets (0: run for --seconds)")
    s = sub.add_parser("send")
    s.add_argument("--iface", required=True)
    s.add_argument("--dst-mac", required=True)
    s.add_argument("--src", required=True)
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, default=6081)
    s.add_argument("--vni", type=int, required=True)
    s.add_argument("--inner-src", required=True)
    s.add_argument("--inner-dst", required=True)
    s.add_argument("--dport", type=int, required=True)
    s.add_argument("--count", type=int, default=100)
    a = ap.parse_args()
    return receive(a) if a.cmd == "receive" else send(a)


if __name__ == "__main__":
    sys.exit(main())
