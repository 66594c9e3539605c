#!/usr/bin/env bash
# Added latency (issue 8): UDP round trips from the client to be1's echo server (udp.py serve,
# port 5353) through the appliance, sluice-pktgen's latency engine at RATE requests a second,
# in one run: the kernel's forwarding, then sluiced in adaptive poll mode, then in busy-poll
# mode. The echo server's own time is in every figure alike: the differences are the datapaths'.
# usage: [RATE=pps] latency.sh [SECONDS]     result: bench/results/latency-*.json
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
RATE=${RATE:-2000}
P=slat
OUT=bench/results/latency-$(date +%Y%m%d-%H%M%S).json
LOWLAT=${LOWLAT:-1}
CLIENT_CORE=${CLIENT_CORE:-1} # see lab-sluiced.sh
. bench/scripts/lab-sluiced.sh
lab_up

rtt() { # label
    ns cli $PIN $BIN/sluice-pktgen --engine latency \
        --src-ip 10.10.0.2 --dst-ip 10.20.0.11 --dst-port 5353 --rate "$RATE" \
        --duration "$SECS" | python3 -c "import json,sys; d=json.load(sys.stdin); d['label']='$1'; print(json.dumps(d))"
}

# the requests went through sluiced's workers, not around them
through_sluiced() {
    sleep 0.6 # one more stats rewrite
    python3 -c "
import json, sys
s = json.load(open('$RUN/stats.json'))
rx = sum(w['rx_packets'] for w in s['workers'])
sys.exit(0 if rx >= $RATE * $SECS else 1)" || { echo "sluiced did not carry the requests" >&2; exit 1; }
}

echo "kernel forwarding, ${RATE} requests/s for ${SECS}s..." >&2
kernel=$(rtt kernel); echo "  $kernel" >&2
rows=("$kernel")
for mode in adaptive busy; do
    start_sluiced "s#^poll_mode = .*#poll_mode = \"$mode\"#"
    echo "sluiced ($mode poll)..." >&2
    r=$(rtt "sluiced-$mode"); echo "  $r" >&2
    through_sluiced
    rows+=("$r")
    stop_sluiced
done

python3 - "$OUT" "${rows[@]}" <<'PY'
import json, os, platform, sys
out, rows = sys.argv[1], [json.loads(r) for r in sys.argv[2:]]
k = rows[0]["rtt_us"]
res = {"what": "UDP round trips client -> appliance -> be1 echo -> appliance -> client",
       "cpus": os.cpu_count(), "kernel": platform.release(), "results": rows,
       "added_us": {r["label"]: {q: r["rtt_us"][q] - k[q] for q in ("p50", "p90", "p99", "p99_9")}
                    for r in rows[1:]}}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
