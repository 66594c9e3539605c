#!/usr/bin/env bash
# New connections through N services (issue 8, the case kube-proxy's iptables mode degrades on).
# Every packet is a TCP SYN of a new flow (a million tuples from 198.18.0.0/15) to the LAST of N
# ClusterIP services (10.96.0.0/16, port 80), each backed by the 3 lab backends. Counted: packets
# reaching the backend segment per second (sw-app rx). Same generator (sluice-pktgen's live
# engine, on the core the appliance's worker is not on), same lab, one run:
#   iptables  DNAT as kube-proxy's iptables mode installs it (KUBE-SERVICES -> KUBE-SVC-* ->
#             KUBE-SEP-*, statistic random), through iptables-restore (iptables-nft here)
#   nftables  as kube-proxy's nftables mode does: one verdict map on (daddr, proto, dport), a
#             chain per service picking an endpoint chain with numgen
#   sluiced   the same services through its API (PUT /v1/state)
# for N in 1 1000 10000 (or the arguments). Before the SYNs, the TCP connect latency through the
# VIP (300 connects to the backends' web servers, idle datapath), timed by the client and on the
# wire. sluiced runs in busy-poll mode
# (SLUICED_POLL=adaptive for the other). The kernel's conntrack bound is raised for the run (and
# restored) so that it measures the rule lookup, not the table filling up.
# usage: [RATES="100000 300000 1000000"] service-scale.sh [SECONDS] [N...]   result: bench/results/service-scale-*.json
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-2}
shift || true
COUNTS=${*:-"1 1000 10000"}
RATES=${RATES:-"100000 300000 1000000"}
P=ssc
OUT=bench/results/service-scale-$(date +%Y%m%d-%H%M%S).json
LOWLAT=${LOWLAT:-1}
. bench/scripts/lab-sluiced.sh
WORK=/tmp/$P-work
ct_max=$(sysctl -n net.netfilter.nf_conntrack_max)
trap 'cleanup; sysctl -qw net.netfilter.nf_conntrack_max="$ct_max"; rm -rf "$WORK"' EXIT
sysctl -qw net.netfilter.nf_conntrack_max=4194304
mkdir -p "$WORK"
arrived() {
    if [ "${SINK:-1}" = 1 ]; then
        sunk
    else
        ns sw cat /sys/class/net/sw-app/statistics/rx_packets
    fi
}
vip() { echo "10.96.$(($1 / 250)).$(($1 % 250 + 1))"; }

lab_ready() {
    lab_up
    # the kernel knows the backends (no ARP in the measurement); the live engine's XDP_TX into
    # cli0 needs NAPI on its peer
    for b in 11 12 13; do ns cli curl -s -m 3 -o /dev/null http://10.20.0.$b/ || true; done
    ns app ethtool -K eth-cli gro on >/dev/null
    ns app sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth-cli.rp_filter=0
}

# measure LABEL N: connect latency, then the SYN flood at each offered load; prints the best
# rate as JSON. During the flood an XDP sink on the switch's end of the appliance's server-side
# link counts and drops the SYNs (sluice-pktgen --engine sink), so the backends' stacks do not
# load whichever core sends them (SINK=0: they reach the backends, counted by sw-app's rx).
measure() {
    local dmac pts=() conn wire
    dmac=$(ns app cat /sys/class/net/eth-cli/address)
    # the handshakes also on the wire (SYN to SYN-ACK on the client's interface): the datapath's
    # part of connect(), without the client process's scheduling
    ip netns exec "$P-cli" ${SERVER_CORES:+taskset -c $SERVER_CORES} tcpdump -i cli0 -tt -n -S -l 'tcp[tcpflags] & tcp-syn != 0' \
        >"$WORK/handshakes.txt" 2>"$WORK/tcpdump.err" &
    local td=$!
    for _ in $(seq 50); do grep -q 'listening on' "$WORK/tcpdump.err" 2>/dev/null && break; sleep 0.1; done
    conn=$(ns cli $PIN python3 tools/lab/connect_time.py "$(vip $(($2 - 1)))" 80 300)
    sleep 0.2
    kill "$td"; wait "$td" 2>/dev/null || true
    wire=$(python3 tools/lab/handshake_times.py "$WORK/handshakes.txt")
    echo "    $1 N=$2 connect $conn wire $wire" >&2
    if [ "${SINK:-1}" = 1 ]; then start_sink sw sw-app; fi
    for rate in $RATES; do
        pts+=("$(sweep_point new_flows_pps ns cli $BIN/sluice-pktgen --engine live \
            --cpus $(( $(nproc) - 1 )) --iface cli0 --dst-mac "$dmac" --src-ip 198.18.0.1 \
            --dst-ip "$(vip $(($2 - 1)))" --dst-port 80 --proto syn --flows 1000000 \
            --duration "$SECS" --rate "$rate")")
        echo "    $1 N=$2 ${pts[-1]}" >&2
    done
    stop_sink
    python3 -c "
import json, sys
pts = [json.loads(p) for p in sys.argv[1:]]
c = json.loads('''$conn''')
w = json.loads('''$wire''')
print(json.dumps({'datapath': '$1', 'services': $2, 'new_flows_pps': max(p['new_flows_pps'] for p in pts),
                  'connect_us': c['connect_us'], 'connect_failed': c['failed'],
                  'handshake_wire_us': w['wire_us'], 'handshakes_seen': w['handshakes'], 'sweep': pts}))" "${pts[@]}"
}

iptables_rules() { # N -> iptables-restore input, kube-proxy's shape
    python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
out = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
rules = ["-A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES"]
for i in range(n):
    vip = f"10.96.{i // 250}.{i % 250 + 1}"
    svc = f"KUBE-SVC-{i:08d}"
    out.append(f":{svc} - [0:0]")
    rules.append(f"-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"ns/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}")
    for k, (b, prob) in enumerate([(11, "0.33333333349"), (12, "0.50000000000"), (13, None)]):
        sep = f"KUBE-SEP-{i:07d}{k}"
        out.append(f":{sep} - [0:0]")
        stat = f"-m statistic --mode random --probability {prob} " if prob else ""
        rules.append(f"-A {svc} {stat}-j {sep}")
        rules.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination 10.20.0.{b}:80")
print("\n".join(out + rules + ["COMMIT"]))
PY
}

nft_rules() { # N -> nft -f input, kube-proxy nftables mode's shape
    python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
lines = ["table ip kube-proxy {"]
for i in range(n):
    for k, b in enumerate((11, 12, 13)):
        lines.append(f"  chain endpoint-{i}-{k} {{ meta l4proto tcp dnat to 10.20.0.{b}:80; }}")
    lines.append(f"  chain service-{i} {{ numgen random mod 3 vmap {{ 0 : goto endpoint-{i}-0, 1 : goto endpoint-{i}-1, 2 : goto endpoint-{i}-2 }}; }}")
elems = ", ".join(f"10.96.{i // 250}.{i % 250 + 1} . tcp . 80 : goto service-{i}" for i in range(n))
lines.append("  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; elements = { " + elems + " }; }")
lines.append("  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }")
lines.append("  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }")
lines.append("}")
print("\n".join(lines))
PY
}

state_doc() { # N -> PUT /v1/state body: N services on the 3 lab backends
    python3 - "$1" <<'PY'
import json, sys
n = int(sys.argv[1])
items = []
for i in range(n):
    items.append({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": f"svc-{i}", "namespace": "bench"},
                  "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                           "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": f"svc-{i}-x", "namespace": "bench",
                               "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
                  "addressType": "IPv4",
                  "endpoints": [{"addresses": [f"10.20.0.{b}"], "conditions": {"ready": True}} for b in (11, 12, 13)],
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]})
print(json.dumps({"kind": "List", "items": items}))
PY
}

results=()
for n in $COUNTS; do
    echo "== $n services" >&2
    lab_ready
    iptables_rules "$n" >"$WORK/iptables.rules"
    t0=$(date +%s.%N)
    ns app iptables-restore <"$WORK/iptables.rules"
    load_ipt=$(python3 -c "print(round($(date +%s.%N) - $t0, 3))")
    r=$(measure iptables "$n")
    results+=("$(echo "$r" | python3 -c "import json,sys; d=json.load(sys.stdin); d['load_s']=$load_ipt; print(json.dumps(d))")")

    lab_ready
    nft_rules "$n" >"$WORK/nft.rules"
    t0=$(date +%s.%N)
    ns app nft -f "$WORK/nft.rules"
    load_nft=$(python3 -c "print(round($(date +%s.%N) - $t0, 3))")
    r=$(measure nftables "$n")
    results+=("$(echo "$r" | python3 -c "import json,sys; d=json.load(sys.stdin); d['load_s']=$load_nft; print(json.dumps(d))")")

    lab_ready
    start_sluiced "s/^poll_mode = .*/poll_mode = \"${SLUICED_POLL:-busy}\"/"
    state_doc "$n" >"$WORK/state.json"
    t0=$(date +%s.%N)
    curl -sf --unix-socket "$RUN/api.sock" -H "Authorization: Bearer $(cat "$RUN/token")" \
        -X PUT --data-binary @"$WORK/state.json" -H 'Content-Type: application/json' \
        "http://sluice/v1/state?wait=true" >/dev/null
    load_sl=$(python3 -c "print(round($(date +%s.%N) - $t0, 3))")
    sleep 0.5 # the frontends are steered on the control loop's next tick
    r=$(measure sluiced "$n")
    sleep 0.6 # one more stats rewrite
    results+=("$(echo "$r" | python3 -c "
import json, sys
d = json.load(sys.stdin); d['load_s'] = $load_sl
st = json.load(open('$RUN/stats.json'))
d['drops'] = st['totals']['drops']
d['xdp_syn_shed'] = sum(i.get('xdp_syn_shed', 0) for i in st['interfaces'])
print(json.dumps(d))")")
    stop_sluiced
done

SLUICED_POLL=${SLUICED_POLL:-busy} python3 - "$OUT" "${results[@]}" <<'PY'
import json, os, platform, sys
out, rows = sys.argv[1], [json.loads(r) for r in sys.argv[2:]]
res = {"what": "new TCP connections (SYNs of new flows) to the last of N ClusterIP services",
       "cpus": os.cpu_count(), "kernel": platform.release(),
       "sluiced_poll_mode": os.environ.get("SLUICED_POLL", "busy"), "results": rows}
by = {(r["datapath"], r["services"]): r["new_flows_pps"] for r in rows}
res["ratios"] = {f"sluiced/{k} at {n}": round(by[("sluiced", n)] / max(by[(k, n)], 1), 2)
                 for (d, n) in by if d == "sluiced" for k in ("iptables", "nftables") if (k, n) in by}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
