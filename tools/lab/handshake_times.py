#!/usr/bin/env python3
"""TCP handshake round trips as seen on the wire, from `tcpdump -tt -n -S` lines (SYNs and
SYN-ACKs captured on the client's interface): each SYN's time to the SYN-ACK acknowledging it.

  handshake_times.py CAPTURE.txt

Prints JSON: handshakes matched and their p50/p90/p99 in microseconds. Unlike connect()'s time,
this leaves out the client process (its scheduling, the syscall, python): what is left is the
datapath and the server's kernel.
"""
import json
import re
import sys

LINE = re.compile(r"(\d+\.\d+) IP6? \S+ > \S+: Flags \[(S|S\.)\], seq (\d+)(?:, ack (\d+))?")


def main():
    syn, rtt = {}, []
    for line in open(sys.argv[1]):
        m = LINE.match(line)
        if not m:
            continue
        t, flags, seq, ack = float(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if flags == "S":
            syn.setdefault(seq, t)
        elif ack is not None and (int(ack) - 1) % 2**32 in syn:
            rtt.append((t - syn.pop((int(ack) - 1) % 2**32)) * 1e6)
    rtt.sort()
    q = lambda p: round(rtt[min(len(rtt) - 1, int(p * len(rtt)))], 1) if rtt else None
    print(json.dumps({"handshakes": len(rtt), "wire_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}}))


if __name__ == "__main__":
    main()
