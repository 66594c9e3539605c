#!/usr/bin/env bash
# SYN flood (issue 9): sluice-pktgen floods SYNs at its full rate to the LB VIP 192.0.2.80:80
# from a million spoofed source tuples (198.18.0.0/15, the benchmarking range: no route back,
# so no SYN-ACK leaves the appliance), while 100 established connections to an echo service run
# through the same appliance, a line every 50 ms each. Pass: none of the 100 is dropped or
# reset; conntrack stays within its bound; the counters say what happened to the flood.
# CT_TCP_MAX (default 4096) bounds the TCP conntrack below what the SNAT ports allow (3
# backends x 4,536 ports), so the flood meets the conntrack bound: embryonic entries are evicted
# for new ones (sluice_conntrack_evicted_total) and established ones never are.
# RATE (pps, default 0: the generator's full rate) sets the flood's rate. Above what the
# appliance processes, its receive ring backs up: the worker flags the queue overloaded and the
# XDP program sheds new TCP connections (xdp_syn_shed) before they take ring slots, so the
# established connections' packets still find room.
# usage: [CT_TCP_MAX=N] [RATE=PPS] syn-flood.sh [SECONDS]    result: bench/results/syn-flood-*.json
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
P=ssf
OUT=bench/results/syn-flood-$(date +%Y%m%d-%H%M%S).json
. bench/scripts/lab-sluiced.sh
start_lab_sluiced "s#^ct_tcp_max = .*#ct_tcp_max = ${CT_TCP_MAX:-4096}#"
$BIN/sluice apply -f configs/lab-cluster.yaml >/dev/null
for i in 1 2; do
    ip netns exec "$P-be$i" python3 tools/lab/echo.py serve "be$i" 7000 >/dev/null 2>&1 &
    pids+=($!)
done
$BIN/sluice apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: lab}
spec: {clusterIP: 10.96.0.70, ports: [{name: echo, port: 7000, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-lab, namespace: lab, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
endpoints: [{addresses: [10.20.0.11]}, {addresses: [10.20.0.12]}]
ports: [{name: echo, port: 7000, protocol: TCP}]
EOF
sleep 0.5

echo "100 established connections to 10.96.0.70:7000, then a ${SECS}s SYN flood to 192.0.2.80:80..." >&2
talks=()
for n in $(seq 100); do
    ip netns exec "$P-cli" python3 tools/lab/echo.py talk 10.96.0.70 7000 $((SECS + 14)) \
        >"$RUN/talk-$n.json" 2>&1 &
    talks+=($!)
done
# the flood starts once all 100 are established (100 python processes take seconds to start
# on 2 cores; a connection still opening when the flood begins is a new connection, whose SYN
# is shed with the flood's)
for _ in $(seq 50); do
    up=$(ns cli ss -Htn state established '( dport = :7000 )' | wc -l)
    [ "$up" -ge 100 ] && break
    sleep 0.2
done
echo "$up connections established; flooding" >&2
sleep 0.5
dmac=$(ns app cat /sys/class/net/eth-cli/address)
flood=$(ns cli $BIN/sluice-pktgen --iface cli0 --dst-mac "$dmac" --src-ip 198.18.0.1 \
    --dst-ip 192.0.2.80 --dst-port 80 --proto syn --flows 1000000 --duration "$SECS" \
    --rate "${RATE:-0}" 2>/dev/null)
for t in "${talks[@]}"; do wait "$t" || true; done
sleep 0.6 # one more stats rewrite
curl -s --unix-socket "$RUN/api.sock" http://sluice/metrics >"$RUN/metrics.txt"
cp "$RUN/metrics.txt" "${OUT%.json}.metrics.txt"

python3 - "$OUT" "$RUN" <<PY
import json, sys, glob, os, platform
out, run = sys.argv[1], sys.argv[2]
flood = json.loads('''$flood''')
talks = [json.load(open(f)) for f in sorted(glob.glob(run + "/talk-*.json"))]
broken = [t for t in talks if t.get("error") or t["echoed"] != t["sent"] or t["sent"] == 0]
stats = json.load(open(run + "/stats.json"))
metric = lambda name: sum(float(l.split()[-1]) for l in open(run + "/metrics.txt")
                          if l.startswith(name + "{") or l.startswith(name + " "))
res = {
    "what": "SYN flood to the LB VIP while 100 established connections run (issue 9)",
    "seconds": $SECS, "cpus": os.cpu_count(), "kernel": platform.release(),
    "flood": {"sent": flood["sent"], "pps": round(flood["pps"]), "flows": flood["flows"],
              "rate_asked": int("${RATE:-0}")},
    "established": {"connections": len(talks), "broken": len(broken),
                    "broken_examples": broken[:3],
                    "lines_sent": sum(t["sent"] for t in talks),
                    "lines_echoed": sum(t["echoed"] for t in talks)},
    "conntrack": {"entries": metric("sluice_conntrack_entries"),
                  "capacity": metric("sluice_conntrack_capacity"),
                  "tcp_bound": int("${CT_TCP_MAX:-4096}"),
                  "evicted_embryonic": metric("sluice_conntrack_evicted_total"),
                  "new_connections": metric("sluice_lb_new_connections_total")},
    "drops": stats["totals"]["drops"],
    "xsk_rx_ring_full": sum(w["xsk_rx_ring_full"] for w in stats["workers"]),
    # new TCP connections shed at XDP while the worker's receive ring was backed up
    "overloads": sum(w.get("overloads", 0) for w in stats["workers"]),
    "xdp": {i["name"]: {k: i.get(k, 0) for k in ("xdp_steered", "xdp_syn_shed", "xdp_passed")}
            for i in stats["interfaces"]},
}
# every tracked connection here is TCP: the table holds at most its bound
res["pass"] = res["established"]["broken"] == 0 and res["conntrack"]["entries"] <= res["conntrack"]["tcp_bound"]
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
sys.exit(0 if res["pass"] else 1)
PY
