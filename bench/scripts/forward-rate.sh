#!/usr/bin/env bash
# Forwarding rate on the lab veth, in one run, same generator:
#   1. the appliance namespace's kernel forwarding (baseline; no sluiced)
#   2. kernel XDP forwarding (sluice-pktgen --engine xdp-fwd: MAC rewrite and bpf_redirect to
#      the server side, nothing else): what XDP alone does on this veth
#   3. bare AF_XDP receive-and-forward (sluice-pktgen --engine afxdp-fwd: XDP steering, one
#      socket per interface, MAC rewrite, nothing else): the I/O ceiling of any AF_XDP datapath
#   4. sluiced (XDP steering -> AF_XDP worker -> AF_XDP transmit)
# The generator is sluice-pktgen in the client namespace, its `live` engine by default
# (ENGINE=afxdp for the AF_XDP one). What counts is the packets arriving on the server segment:
# sluice-pktgen's XDP sink on sw-app (the switch's end of the appliance's server-side link)
# counts and drops them, so what a datapath forwards costs nothing more downstream (a backend's
# stack answering would be charged to whichever core sends). SINK=0 counts sw-app's rx_packets
# instead and lets the frames on to be1.
# usage: [ENGINE=live|afxdp] forward-rate.sh [SECONDS] [SIZE]  results: bench/results/forward-rate-*.json
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
SIZE=${2:-64}
P=slb
BIN=target/release
OUT=bench/results/forward-rate-$(date +%Y%m%d-%H%M%S).json

[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
pid=""
sink_pid=""
# this run's own counter file
SINK_COUNT=/tmp/$P-sink.$$.count
cleanup() {
    for p in $pid $sink_pid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    bash tools/lab/lab.sh down $P
    rm -f "$SINK_COUNT"
}
trap cleanup EXIT
bash tools/lab/lab.sh down $P
bash tools/lab/lab.sh up $P 1 >/dev/null

ns() { ip netns exec "$P-$1" "${@:2}"; }
dmac=$(ns app cat /sys/class/net/eth-cli/address)
# make sure the kernel knows be1, so the baseline is not measuring ARP
ns cli curl -s -m 3 -o /dev/null http://10.20.0.11/
# the live engine transmits with XDP_TX into cli0: its peer needs NAPI (GRO on, or an XDP program)
ns app ethtool -K eth-cli gro on >/dev/null
# the counter at the far end, started once the appliance's kernel knows be1 (the sink drops IP)
if [ "${SINK:-1}" = 1 ]; then
    # not pinned: it only counts, in the softirq of whichever core delivers
    ip netns exec "$P-sw" $BIN/sluice-pktgen --engine sink --iface sw-app --duration 36000 \
        --counter-file "$SINK_COUNT" >/dev/null 2>&1 &
    sink_pid=$!
    for _ in $(seq 50); do [ -s "$SINK_COUNT" ] && break; sleep 0.1; done
    # the count is rewritten every 100 ms: read it after that long
    arrived() { sleep 0.2; cat "$SINK_COUNT"; }
else
    arrived() { ns sw cat /sys/class/net/sw-app/statistics/rx_packets; }
fi
ENGINE=${ENGINE:-live}
# the live engine's thread, and the veth receive it drives, on the core the worker is not on
# (configs/lab.toml pins worker 0 to core 0)
GEN_CPUS=""
[ "$ENGINE" = live ] && GEN_CPUS="--cpus $(( $(nproc) - 1 ))"

# Offered loads (pps; 0 = the generator's full rate). Overloaded, both datapaths forward less
# than they can (the kernel's receive livelock, the AF_XDP ring overflowing), so the capacity
# reported is the best forwarded rate over the sweep, as RFC 2544 looks for the best rate.
RATES=${RATES:-"100000 200000 400000 800000 0"}

gen() { # rate
    ns cli $BIN/sluice-pktgen --engine "$ENGINE" --iface cli0 --dst-mac "$dmac" --src-ip 10.10.0.2 --dst-ip 10.20.0.11 \
        --flows 64 --size "$SIZE" --duration "$SECS" --rate "$1" $GEN_CPUS 2>/dev/null
}

# "busy total" jiffies of all CPUs (busy: user, nice, system, irq, softirq, steal)
jiffies() { awk '/^cpu /{b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6}' /proc/stat; }

# Every point also reports the cores busy while the generator ran (all of the machine's: the
# generator's own share, the same for every datapath at the same offered load, included) and
# those per forwarded Mpps.
measure() { # label -> prints JSON fragment: every offered load, and the best
    local before after g cpu0 cpu1 points=()
    for rate in $RATES; do
        before=$(arrived)
        cpu0=$(jiffies)
        g=$(gen "$rate")
        cpu1=$(jiffies)
        sleep 0.5
        after=$(arrived)
        points+=("$(python3 -c "
import json
g=json.loads('''$g''')
b0, t0 = map(int, '$cpu0'.split()); b1, t1 = map(int, '$cpu1'.split())
fwd = ($after - $before) / g['seconds']
cores = (b1 - b0) / max(t1 - t0, 1) * $(nproc)
print(json.dumps({'offered_pps': round(g['pps']), 'forwarded_pps': round(fwd), 'cpu_cores': round(cores, 2),
                  'cores_per_mpps': round(cores / (fwd / 1e6), 2) if fwd > 0 else None}))")")
        echo "    $1 ${points[-1]}" >&2
    done
    python3 -c "
import json,sys
pts=[json.loads(p) for p in sys.argv[1:]]
print(json.dumps({'label':'$1','engine':'$ENGINE','forwarded_pps':max(p['forwarded_pps'] for p in pts),'sweep':pts}))" "${points[@]}"
}

echo "kernel forwarding baseline (${SECS}s, ${SIZE}B)..." >&2
kernel=$(measure kernel)
echo "  $kernel" >&2

be1_mac=$(ns be1 cat /sys/class/net/eth0/address)
# XDP redirect into eth-srv needs NAPI on its peer (the sink's program gives it; GRO without)
ns sw ethtool -K sw-app gro on >/dev/null

# forwarder LABEL ENGINE [PREFIX...]: sluice-pktgen's ENGINE forwards eth-cli -> eth-srv (to
# be1) in the appliance namespace while the sweep measures it; prints the measure's JSON
forwarder() {
    local label=$1 engine=$2 fwd
    shift 2
    # not through ns(): $! must be the generator itself (ip netns exec execs it), to stop it
    ip netns exec "$P-app" "$@" $BIN/sluice-pktgen --engine "$engine" --iface eth-cli --out-iface eth-srv \
        --dst-mac "$be1_mac" --duration 36000 >/dev/null 2>&1 &
    fwd=$!
    sleep 1
    echo "$label (${SECS}s, ${SIZE}B)..." >&2
    measure "$engine"
    kill "$fwd" 2>/dev/null; wait "$fwd" 2>/dev/null || true
}

xdp=$(forwarder "kernel XDP forward" xdp-fwd)
echo "  $xdp" >&2
# on core 0, where sluiced's worker runs (configs/lab.toml), away from the generator's
bare=$(forwarder "bare AF_XDP forward" afxdp-fwd taskset -c 0)
echo "  $bare" >&2

rm -f /tmp/$P-stats.json
ip netns exec "$P-app" $BIN/sluiced --config configs/lab.toml --stats-file /tmp/$P-stats.json >/tmp/$P-sluiced.log 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s /tmp/$P-stats.json ] && break; sleep 0.1; done
echo "sluiced (${SECS}s, ${SIZE}B)..." >&2
sluice=$(measure sluiced)
echo "  $sluice" >&2
sleep 1 # one more stats rewrite

python3 - "$OUT" <<PY
import json, sys, platform, os
k = json.loads('''$kernel'''); s = json.loads('''$sluice'''); b = json.loads('''$bare''')
x = json.loads('''$xdp''')
res = {
    "what": "UDP forwarding client -> appliance -> server segment on veth, AF_XDP copy mode",
    "frame_size": "$SIZE", "seconds": $SECS, "cpus": os.cpu_count(), "kernel": platform.release(),
    "counted_by": "xdp sink on sw-app" if "${SINK:-1}" == "1" else "sw-app rx_packets",
    "kernel_forwarding": k, "kernel_xdp_forward": x, "bare_afxdp_forward": b, "sluiced": s,
    "sluiced_counters": {kk: sum(w[kk] for w in json.load(open("/tmp/$P-stats.json"))["workers"])
                         for kk in ("rx_packets", "tx_packets", "xsk_rx_ring_full", "xsk_fill_ring_empty", "wakeups")},
    "ratio_sluiced_vs_kernel": round(s["forwarded_pps"] / max(k["forwarded_pps"], 1), 3),
    "ratio_sluiced_vs_bare_afxdp": round(s["forwarded_pps"] / max(b["forwarded_pps"], 1), 3),
}
json.dump(res, open(sys.argv[1], "w"), indent=2)
print(json.dumps(res, indent=2))
PY
