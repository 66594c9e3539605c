#!/usr/bin/env bash
# Encapsulated forwarding (issue 8): VXLAN from the lab's second node n2 (10.20.0.21, VNI 2, pod
# 10.244.2.5) to the client 10.10.0.2, decapsulated and routed by the appliance. One run, same
# generator (sluice-pktgen's live engine in n2, --encap vxlan, on the core the worker is not on):
#   kernel   the appliance namespace's own VXLAN device (the kernel decapsulates, then forwards)
#   sluiced  the lab config (overlay mode vxlan) with the lab's cluster state applied (Node n2)
# Counted: the inner packets arriving at the client, by an XDP sink on cli0 (sluice-pktgen
# --engine sink). 64-byte inner frames (114 on the wire), 64 flows, swept over offered loads.
# usage: [RATES="..."] encap-rate.sh [SECONDS]     result: bench/results/encap-rate-*.json
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-3}
RATES=${RATES:-"100000 200000 400000 800000 0"}
P=senc
OUT=bench/results/encap-rate-$(date +%Y%m%d-%H%M%S).json
. bench/scripts/lab-sluiced.sh
lab_up
start_sink cli cli0
arrived() { sunk; }

# the outer frame goes to the appliance's server-side MAC, and so does the inner one: the
# kernel's VXLAN device below takes that MAC so the decapsulated frame is addressed to it
app_mac=$(ns app cat /sys/class/net/eth-srv/address)
# n2's live engine transmits with XDP_TX into eth0: its peer needs NAPI
ns sw ethtool -K sw-n2 gro on >/dev/null

measure() { # label -> JSON: every offered load, and the best
    local points=()
    for rate in $RATES; do
        points+=("$(sweep_point forwarded_pps ns n2 $BIN/sluice-pktgen --engine live --iface eth0 \
            --dst-mac "$app_mac" --src-ip 10.244.2.5 --dst-ip 10.10.0.2 --dst-port 9000 \
            --flows 64 --encap vxlan --vni 2 --outer-src 10.20.0.21 --outer-dst 10.20.0.1 \
            --duration "$SECS" --rate "$rate" --cpus $(($(nproc) - 1)))")
        echo "    $1 ${points[-1]}" >&2
    done
    python3 -c "
import json, sys
pts = [json.loads(p) for p in sys.argv[1:]]
print(json.dumps({'label': '$1', 'forwarded_pps': max(p['forwarded_pps'] for p in pts), 'sweep': pts}))" "${points[@]}"
}

echo "kernel VXLAN decapsulation and forwarding (${SECS}s)..." >&2
ns app ip link add vx-enc type vxlan id 2 local 10.20.0.1 dstport 8472 dev eth-srv nolearning
ns app ip link set vx-enc address "$app_mac"
ns app ip link set vx-enc up
ns app ip route add 10.244.2.0/24 dev vx-enc
ns app sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.vx-enc.rp_filter=0
# the client's MAC known, so the baseline does not measure ARP
ns app ip neigh replace 10.10.0.2 lladdr "$(ns cli cat /sys/class/net/cli0/address)" dev eth-cli nud permanent
kernel=$(measure kernel)
echo "  $kernel" >&2
ns app ip link del vx-enc

start_sluiced ""
$BIN/sluice apply -f configs/lab-cluster.yaml >/dev/null
sleep 0.6 # the overlay's peers are taken on the control loop's next tick
echo "sluiced (${SECS}s)..." >&2
sluice=$(measure sluiced)
echo "  $sluice" >&2
sleep 0.6 # one more stats rewrite

python3 - "$OUT" "$RUN/stats.json" <<PY
import json, os, platform, sys
k = json.loads('''$kernel'''); s = json.loads('''$sluice''')
st = json.load(open(sys.argv[2]))
res = {"what": "VXLAN (VNI 2) from node n2 to the client, decapsulated and routed; 64-byte inner frames",
       "seconds": $SECS, "cpus": os.cpu_count(), "kernel": platform.release(),
       "counted_by": "xdp sink on cli0", "kernel_vxlan": k, "sluiced": s,
       "sluiced_decapsulated": sum(w["decapsulated"] for w in st["workers"]),
       "sluiced_drops": st["totals"]["drops"],
       "ratio_sluiced_vs_kernel": round(s["forwarded_pps"] / max(k["forwarded_pps"], 1), 3)}
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
json.dump(res, open(sys.argv[1], "w"), indent=2)
print(json.dumps(res, indent=2))
PY
