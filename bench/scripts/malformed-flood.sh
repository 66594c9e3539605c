#!/usr/bin/env bash
# Malformed-packet flood (issue 9): sluice-pktgen replays a corpus of broken frames (truncated
# headers, bad lengths, bad checksums, IP options, fragments, TTL 1, unknown EtherTypes,
# tunnel packets with garbage inside) at its full rate through sluiced, twice SECONDS/2. Pass:
# sluiced is still up, every packet its workers received is accounted for (transmitted or
# dropped with a reason), and its memory is flat: the second half adds nothing to what the
# first half filled (the flow store and the rings are bounded).
# usage: malformed-flood.sh [SECONDS]     result: bench/results/malformed-flood-*.json
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
P=smf
OUT=bench/results/malformed-flood-$(date +%Y%m%d-%H%M%S).json
. bench/scripts/lab-sluiced.sh
start_lab_sluiced ""
pid=$SLUICED_PID
ns cli curl -s -m 3 -o /dev/null http://10.20.0.11/ || true # neighbours known
rss() { awk '/^VmRSS/ {print $2}' /proc/$pid/status; }
sleep 1
rss_before=$(rss)
dmac=$(ns app cat /sys/class/net/eth-cli/address)
echo "malformed corpus at full rate, twice $((SECS / 2))s..." >&2
flood() {
    ns cli $BIN/sluice-pktgen --iface cli0 --dst-mac "$dmac" --src-ip 10.10.0.2 \
        --dst-ip 10.20.0.11 --dst-port 9000 --proto malformed --duration "$((SECS / 2))" 2>/dev/null
}
gen=$(flood)
sleep 0.5
rss_half=$(rss)
gen2=$(flood)
sleep 1.2 # two stats rewrites
rss_after=$(rss)
alive=0; kill -0 $pid 2>/dev/null && alive=1

python3 - "$OUT" "$RUN/stats.json" <<PY
import json, sys, os, platform
out, stats = sys.argv[1], json.load(open(sys.argv[2]))
g = json.loads('''$gen'''); g2 = json.loads('''$gen2''')
w = stats["workers"]
rx = sum(x["rx_packets"] for x in w)
tx = sum(x["tx_packets"] for x in w)
dropped = stats["totals"]["dropped"]
res = {
    "what": "a corpus of malformed frames at the generator's full rate through sluiced (issue 9)",
    "seconds": $SECS, "cpus": os.cpu_count(), "kernel": platform.release(),
    "generated": {"sent": g["sent"] + g2["sent"], "pps": round((g["pps"] + g2["pps"]) / 2),
                  "kinds": g["kinds"]},
    "xdp": {"steered": sum(i["xdp_steered"] for i in stats["interfaces"]),
            "passed_to_kernel": sum(i["xdp_passed"] for i in stats["interfaces"])},
    "workers": {"received": rx, "transmitted": tx, "dropped": dropped,
                "unaccounted": rx - tx - dropped},
    "drops": stats["totals"]["drops"],
    "xsk_rx_ring_full": sum(x["xsk_rx_ring_full"] for x in w),
    "rss_kib": {"before": int("$rss_before"), "after_first_half": int("$rss_half"),
                "after": int("$rss_after")},
    "sluiced_alive": bool($alive),
}
res["pass"] = (res["sluiced_alive"] and res["workers"]["unaccounted"] == 0
               and res["rss_kib"]["after"] <= res["rss_kib"]["after_first_half"] * 1.05 + 4096)
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
sys.exit(0 if res["pass"] else 1)
PY
