#!/usr/bin/env python3
"""UDP helper for the lab demo.

  udp.py recv PORT [--family 4|6] [--idle S]   count datagrams until S seconds of silence; print the count
  udp.py send ADDR PORT COUNT [--flows N]       send COUNT 64-byte datagrams from N source ports, paced
  udp.py serve PORT NAME                        answer every datagram with "NAME: " + the datagram
  udp.py ask ADDR PORT COUNT                    COUNT requests, each from a fresh socket (a new flow);
                                                print JSON: answers per server name, "error" for lost
  udp.py probe ADDR PORT COUNT                  COUNT requests, each from a fresh connected socket;
                                                print how many were answered / refused (an ICMP port
                                                unreachable came back) / timed out, space-separated
  udp.py hop ADDR PORT TTL                      one datagram with that TTL / hop limit, as traceroute
                                                sends; print the ICMP error's sender and type, or "none"
"""
import argparse
import json
import select
import socket
import struct
import time

# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>: not all in Python's socket module
IP_RECVERR = 11
IPV6_RECVERR = 25
IPV6_UNICAST_HOPS = 16
MSG_ERRQUEUE = 0x2000


def recv(port: int, family: int, idle: float) -> None:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    s = socket.socket(af, socket.SOCK_DGRAM)
    s.bind(("::" if family == 6 else "0.0.0.0", port))
    s.settimeout(idle)
    n = 0
    deadline = time.time() + 30  # never outlive the demo
    try:
        while time.time() < deadline:
            s.recv(2048)
            n += 1
    except socket.timeout:
        pass
    print(n, flush=True)


def send(addr: str, port: int, count: int, flows: int) -> None:
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    socks = [socket.socket(af, socket.SOCK_DGRAM) for _ in range(flows)]
    payload = b"sluice-demo".ljust(64, b".")
    for i in range(count):
        socks[i % flows].sendto(payload, (addr, port))
        if i % 50 == 49:  # ~50k datagrams/s at most: a demo, not a benchmark
            time.sleep(0.001)


def serve(port: int, name: str) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 clients too
    s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(name.encode() + b": " + data, peer)


def ask(addr: str, port: int, count: int) -> None:
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    seen = {}
    for i in range(count):
        with socket.socket(af, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            q = f"q{i}".encode()
            try:
                s.sendto(q, (addr, port))
                data, _ = s.recvfrom(2048)
                name, _, echoed = data.partition(b": ")
                key = name.decode() if echoed == q else "error"
            except OSError:  # timeout or unreachable: counted, the caller decides
                key = "error"
        seen[key] = seen.get(key, 0) + 1
    print(json.dumps(seen), flush=True)


def probe(addr: str, port: int, count: int) -> None:
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    got = {"answered": 0, "refused": 0, "timeout": 0}
    for _ in range(count):
        with socket.socket(af, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.connect((addr, port))  # a connected socket hears the ICMP errors about its flow
            s.send(b"probe")
            try:
                s.recv(2048)
                got["answered"] += 1
            except ConnectionRefusedError:
                got["refused"] += 1
            except socket.timeout:
                got["timeout"] += 1
    print(" ".join(f"{k}={v}" for k, v in got.items()), flush=True)


def hop(addr: str, port: int, ttl: int) -> None:
    v6 = ":" in addr
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS, ttl)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    s.connect((addr, port))
    s.send(b"hop")
    # an error in the queue makes the socket readable
    if not select.select([s], [], [], 2)[0]:
        print("none", flush=True)
        return
    _, anc, _, _ = s.recvmsg(512, 512, MSG_ERRQUEUE)
    for _, _, data in anc:
        # struct sock_extended_err (16 bytes), then the offender's sockaddr
        _errno, _origin, kind, _code = struct.unpack_from("=IBBB", data, 0)
        family = struct.unpack_from("=H", data, 16)[0]
        if family == socket.AF_INET:
            who = socket.inet_ntop(socket.AF_INET, data[20:24])
        else:
            who = socket.inet_ntop(socket.AF_INET6, data[24:40])
        print(f"{who} type={kind}", flush=True)
        return
    print("none", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("port", type=int)
    r.add_argument("--family", type=int, default=4, choices=(4, 6))
    r.add_argument("--idle", type=float, default=2.0)
    s = sub.add_parser("send")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    s.add_argument("count", type=int)
    s.add_argument("--flows", type=int, default=8)
    v = sub.add_parser("serve")
    v.add_argument("port", type=int)
    v.add_argument("name")
    k = sub.add_parser("ask")
    k.add_argument("addr")
    k.add_argument("port", type=int)
    k.add_argument("count", type=int)
    h = sub.add_parser("hop")
    h.add_argument("addr")
    h.add_argument("port", type=int)
    h.add_argument("ttl", type=int)
    b = sub.add_parser("probe")
    b.add_argument("addr")
    b.add_argument("port", type=int)
    b.add_argument("count", type=int)
    a = p.parse_args()
    if a.cmd == "recv":
        recv(a.port, a.family, a.idle)
    elif a.cmd == "send":
        send(a.addr, a.port, a.count, a.flows)
    elif a.cmd == "serve":
        serve(a.port, a.name)
    elif a.cmd == "hop":
        hop(a.addr, a.port, a.ttl)
    elif a.cmd == "probe":
        probe(a.addr, a.port, a.count)
    else:
        ask(a.addr, a.port, a.count)


if __name__ == "__main__":
    main()
