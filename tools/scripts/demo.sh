#!/usr/bin/env bash
# `make run`: bring the lab up, start sluiced on it, send demo traffic through it, show what it
# counted. Runs until Ctrl-C, or RUN_SECONDS=N seconds. Exits non-zero if the demo traffic failed.
set -euo pipefail
cd "$(dirname "$0")/../.."

P=sl
BIN=target/release
LAB=tools/lab/lab.sh
UDP=tools/lab/udp.py
RUNDIR=/run/sluice
STATS=$RUNDIR/stats.json
LOG=$RUNDIR/sluiced.log
RUN_SECONDS=${RUN_SECONDS:-}

if [ "$(id -u)" -ne 0 ]; then
    echo "make run needs root: it creates network namespaces and attaches XDP programs" >&2
    exit 1
fi

pid=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" 2>/dev/null || true
    fi
    bash $LAB down $P
    rm -rf $RUNDIR/conntrack
    echo "lab torn down"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ns() { ip netns exec "$P-$1" "${@:2}"; }

bold "lab topology"
bash $LAB down $P
bash $LAB up $P 1

bold "starting sluiced in $P-app with configs/lab.toml"
mkdir -p $RUNDIR
rm -f $STATS
# the demo starts from an empty cluster state and no tracked connections
rm -rf $RUNDIR/state $RUNDIR/conntrack
# not through ns(): $! must be the pid of sluiced itself (ip netns exec execs it)
ip netns exec "$P-app" $BIN/sluiced --config configs/lab.toml --stats-file $STATS >"$LOG" 2>&1 &
pid=$!
for _ in $(seq 100); do
    [ -s $STATS ] && break
    kill -0 $pid 2>/dev/null || { cat "$LOG"; echo "sluiced exited" >&2; exit 1; }
    sleep 0.1
done
[ -s $STATS ] || { cat "$LOG"; echo "sluiced did not become ready" >&2; exit 1; }
sed 's/\x1b\[[0-9;]*m//g' "$LOG"

fail=0
check() { # what expected actual
    if [ "$2" = "$3" ]; then echo "  ok    $1: $3"; else echo "  FAIL  $1: expected '$2', got '$3'"; fail=1; fi
}

bold "HTTP through the appliance (curl in the client namespace)"
check "curl http://10.20.0.11/" "hello from backend be1" "$(ns cli curl -s -m 5 http://10.20.0.11/ || true)"
check "curl http://10.20.0.12/" "hello from backend be2" "$(ns cli curl -s -m 5 http://10.20.0.12/ || true)"
check "curl http://[fd00:20::11]/" "hello from backend be1" "$(ns cli curl -s -m 5 'http://[fd00:20::11]/' || true)"

bold "UDP burst: 2000 datagrams from 8 flows, client -> be2:9000"
ns be2 python3 $UDP recv 9000 --idle 1.5 >/tmp/sluice-demo-udp.$$ &
rpid=$!
sleep 0.3
ns cli python3 $UDP send 10.20.0.12 9000 2000 --flows 8
wait $rpid
got=$(cat /tmp/sluice-demo-udp.$$); rm -f /tmp/sluice-demo-udp.$$
if [ "$got" -ge 1900 ]; then echo "  ok    be2 received $got/2000"; else echo "  FAIL  be2 received only $got/2000"; fail=1; fi

bold "a packet sluice drops, and says why: TTL 1 from the client, answered as a router does"
ns cli python3 -c "
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
[s.sendto(b'ttl1', ('10.20.0.11', 9999)) for _ in range(5)]"
check "traceroute's first hop toward be1: ICMP time exceeded (type 11) from the appliance" "10.20.0.1 type=11" \
    "$(ns cli python3 $UDP hop 10.20.0.11 33434 1)"

sleep 1
bold "what the appliance counted (sluice stats)"
$BIN/sluice stats --file $STATS
steered=$(python3 -c "import json; print(sum(i['xdp_steered'] for i in json.load(open('$STATS'))['interfaces']))")
if [ "$steered" -gt 0 ]; then echo "  ok    $steered packets steered into AF_XDP"; else echo "  FAIL  nothing was steered into AF_XDP"; fail=1; fi

bold "control API: cluster state in Kubernetes' own shapes (sluice apply -f configs/lab-cluster.yaml)"
export SLUICE_SERVER=unix:$RUNDIR/api.sock SLUICE_TOKEN_FILE=$RUNDIR/token
if $BIN/sluice apply -f configs/lab-cluster.yaml; then echo "  ok    applied"; else echo "  FAIL  apply"; fail=1; fi
$BIN/sluice get services
$BIN/sluice get endpoints
$BIN/sluice get identities
echo
$BIN/sluice status | head -4
# split URL N: N new connections through a frontend, checked against the weights 1:1:2 within
# 10 points (a binomial spread: at N=200 that is 2.8 standard deviations for be3, a ~0.5% chance
# of a false alarm per check, which happened; at N=400, 4 standard deviations: under 0.01%)
split() {
    local got
    got=$(ns cli python3 tools/lab/http_split.py "$1" "$2")
    echo "  $1: answers per backend $got"
    if python3 -c "
import json,sys; s=json.loads('$got'); n=sum(s.values())
ok = 'error' not in s and all(abs(s.get(b,0)/n - w) < 0.1 for b, w in [('be1', .25), ('be2', .25), ('be3', .5)])
sys.exit(0 if ok else 1)"; then echo "  ok    split follows the weights (Maglev)"; else echo "  FAIL  split $got"; fail=1; fi
}
bold "service load balancing: new connections per frontend (weights be1:be2:be3 = 1:1:2)"
split http://10.10.0.1:30080/ 400      # NodePort on the node address
split http://192.0.2.80/ 400           # LoadBalancer ingress VIP
split "http://[fd00:96::80]/" 400      # ClusterIP, IPv6 (dual-stack service)
bold "sessionAffinity ClientIP (web-sticky, 10.96.0.81): 30 connections from one client"
sticky=$(ns cli python3 tools/lab/http_split.py http://10.96.0.81/ 30)
echo "  answers per backend: $sticky"
if python3 -c "import json,sys; s=json.loads('$sticky'); sys.exit(0 if len(s)==1 and 'error' not in s else 1)"
then echo "  ok    the client sticks to one backend"; else echo "  FAIL  affinity $sticky"; fail=1; fi
bold "wrk for 2 s through the LoadBalancer VIP, a new connection per request"
ns cli wrk -t1 -c4 -d2s -H "Connection: close" http://192.0.2.80/ | sed 's/^/  /'
bold "UDP service: 200 requests to 10.96.0.53:53, each from a new socket (backends answer on 5353)"
udp=$(ns cli python3 $UDP ask 10.96.0.53 53 200)
echo "  answers per backend: $udp"
if python3 -c "
import json,sys; s=json.loads('$udp'); sys.exit(0 if s.get('error',0)==0 and all(s.get(b,0)>30 for b in ('be1','be2','be3')) else 1)"
then echo "  ok    every request answered, by all three backends"; else echo "  FAIL  udp $udp"; fail=1; fi
echo "  backends see the appliance (SNAT): $(tail -1 /run/sluice-lab/$P/http-be3.log 2>/dev/null | cut -d' ' -f1-4)"

bold "ICMP follows the connection: UDP to a backend port nobody listens on (10.96.0.54:53 -> be1:5399)"
$BIN/sluice apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: closed, namespace: lab}
spec:
  clusterIP: 10.96.0.54
  ports: [{name: q, port: 53, protocol: UDP, targetPort: 5399}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: closed-lab, namespace: lab, labels: {kubernetes.io/service-name: closed}}
addressType: IPv4
endpoints: [{addresses: [10.20.0.11], conditions: {ready: true}}]
ports: [{name: q, port: 5399, protocol: UDP}]
YAML
check "be1's port unreachable, translated, reaches the client's socket" "answered=0 refused=3 timeout=0" \
    "$(ns cli python3 $UDP probe 10.96.0.54 53 3)"

bold "network policy: the web pods admit only app=client on TCP 80 (configs/lab-policy.yaml)"
$BIN/sluice apply -f configs/lab-policy.yaml | sed 's/^/  /'
sleep 0.3
check "curl http://10.96.0.80/ as app=client (allowed)" "ok" "$(ns cli curl -s -m 3 http://10.96.0.80/ | grep -q 'hello from backend' && echo ok || echo refused)"
udp=$(ns cli python3 $UDP ask 10.96.0.53 53 3)
check "UDP 10.96.0.53:53 (not TCP 80: denied)" '{"error": 3}' "$udp"
sed 's/labels: {app: client}/labels: {app: intruder}/' configs/lab-policy.yaml | $BIN/sluice apply -f - >/dev/null
sleep 0.3
check "curl http://10.20.0.11/ relabelled app=intruder (dropped)" "refused" "$(ns cli curl -s -m 2 http://10.20.0.11/ | grep -q 'hello' && echo ok || echo refused)"
sleep 0.6   # the stats file is rewritten every 500 ms
echo "  drops by reason: $(python3 -c "import json; print(json.load(open('$STATS'))['totals']['drops'])" 2>/dev/null)"
echo "  policy drops by policy: $(python3 -c "import json; print(json.load(open('$STATS'))['totals']['policy_drops'])" 2>/dev/null)"
$BIN/sluice apply -f configs/lab-policy.yaml >/dev/null   # the client is app=client again

bold "L7 policy: the same policy with HTTP rules, only GET /api/users/.* and POST /api/login (configs/lab-policy-l7.yaml)"
$BIN/sluice apply -f configs/lab-policy-l7.yaml | sed 's/^/  /'
sleep 0.3
http() { ns cli curl -s -m 3 -o /dev/null -w '%{http_code}' "$@" || true; }
check "GET http://10.96.0.80/api/users/1 (allowed)" "200" "$(http http://10.96.0.80/api/users/1)"
check "POST http://10.96.0.80/api/login (allowed)" "200" "$(http -d user=a http://10.96.0.80/api/login)"
check "POST http://10.96.0.80/admin/delete (refused by sluice)" "Access denied 403" \
    "$(ns cli curl -s -m 3 -w ' %{http_code}' -X POST http://10.96.0.80/admin/delete || true)"
check "GET http://10.20.0.13/ (no rule allows it)" "403" "$(http http://10.20.0.13/)"
check "the web pods never saw /admin/delete" "0" "$(cat /run/sluice-lab/$P/http-be*.log | grep -c /admin/ || true)"
sleep 0.6   # the stats file is rewritten every 500 ms
echo "  HTTP requests judged / refused: $(python3 -c "
import json; w=json.load(open('$STATS'))['workers']; print(sum(x['l7_requests'] for x in w), '/', sum(x['l7_refused'] for x in w))" 2>/dev/null)"
echo "  policy drops by policy: $(python3 -c "import json; print(json.load(open('$STATS'))['totals']['policy_drops'])" 2>/dev/null)"

bold "flows (Hubble-style): sluice observe --verdict DROPPED --last 6"
$BIN/sluice observe --verdict DROPPED --last 6 | sed 's/^/  /'
check "the L7 refusal is a flow with its policy" "yes" \
    "$($BIN/sluice observe --http-method POST --http-status 403 --last 1 | grep -q 'L7 DROPPED (POST /admin/delete => 403, policy lab/web-from-client' && echo yes || echo no)"
bold "Prometheus metrics (GET /metrics, a few of them)"
curl -s --unix-socket "$RUNDIR/api.sock" http://sluice/metrics \
    | grep -E '^sluice_(drops_total\{reason="POLICY_(DENIED|L7_DENIED)"|policy_drops_total|l7_re|conntrack_(entries|capacity)|batch_duration_seconds_count)' \
    | sed 's/^/  /'
bold "capture: what the workers see, as received and as sent after rewriting (sluice capture -c 4 tcp and port 80)"
$BIN/sluice capture -i any -c 4 -G 5 tcp and port 80 >/tmp/sluice-demo-cap.$$ 2>&1 &
cpid=$!
sleep 0.3
ns cli curl -s -m 3 -o /dev/null http://10.96.0.80/api/users/1 || true
wait $cpid || true
sed 's/^/  /' /tmp/sluice-demo-cap.$$
check "the SYN to the ClusterIP, then rewritten to a backend" "2" \
    "$(grep -cE 'In  10.10.0.2:[0-9]+ > 10.96.0.80:80|Out 10.20.0.1:[0-9]+ > 10.20.0.1[123]:80' /tmp/sluice-demo-cap.$$)"
rm -f /tmp/sluice-demo-cap.$$
# the rest of the demo is not about policy
$BIN/sluice delete -f configs/lab-policy.yaml >/dev/null

bold "overlay: a pod on node n2 behind a kernel vxlan device, through sluice's VXLAN"
bash tools/lab/node2-vxlan.sh $P
sleep 0.5   # the pod CIDR is steered on the control loop's next tick
check "curl http://10.244.2.5:8080/ (client -> sluice encap -> kernel vxlan -> pod, and back)" \
    "hello from pod 10.244.2.5 on node n2, through VXLAN" "$(ns cli curl -s -m 5 --retry 2 http://10.244.2.5:8080/ || true)"

bold "a bad object is refused, naming the field, and changes nothing"
frontends=$($BIN/sluice status -o json | python3 -c "import json,sys; print(json.load(sys.stdin)['frontends'])")
sed 's/port: 80, nodePort: 30080/port: 70000, nodePort: 30080/' configs/lab-cluster.yaml | $BIN/sluice apply -f - 2>&1 | grep -i error || true
if $BIN/sluice status -o json | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if s['frontends']==$frontends and s['converged'] else 1)"; then
    echo "  ok    state unchanged: $frontends frontends, all workers current"
else
    echo "  FAIL  state changed after a rejected apply"; fail=1
fi

# start_sluiced CONFIG: starts sluiced again, waits until its API answers
start_sluiced() {
    ip netns exec "$P-app" $BIN/sluiced --config "$1" --stats-file $STATS >>"$LOG" 2>&1 &
    pid=$!
    for _ in $(seq 100); do $BIN/sluice status >/dev/null 2>&1 && break; sleep 0.1; done
}

bold "a restart keeps connections: 5 keep-alive connections through the NodePort while sluiced restarts"
ns cli python3 tools/lab/hold_open.py 10.10.0.1 30080 5 4 >/tmp/sluice-demo-hold.$$ &
hpid=$!
sleep 1
t0=$(date +%s%N)
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
start_sluiced configs/lab.toml
echo "  sluiced stopped and started again in $(( ($(date +%s%N) - t0) / 1000000 )) ms; it took over the tables:"
grep -E 'conntrack table adopted file=\S+lb-v4-tcp|outlive the process' "$LOG" | tail -n 2 | sed 's/\x1b\[[0-9;]*m//g; s/^/  /'
wait $hpid || true
python3 -c "
import json; r = json.load(open('/tmp/sluice-demo-hold.$$'))
print(f\"  {r['connections']} connections answered {r['answered']} requests, longest wait {r['max_wait_ms']} ms, errors: {r['errors'] or 'none'}\")"
check "connections reset by the restart" "0" \
    "$(python3 -c "import json; print(len(json.load(open('/tmp/sluice-demo-hold.$$'))['errors']))")"
rm -f /tmp/sluice-demo-hold.$$

bold "direct server return: sluiced restarted with lb.mode = \"dsr\" (IPIP), backends strip the tunnel (sluice-decap)"
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
sed 's/^mode = "snat"/mode = "dsr"/' configs/lab.toml > $RUNDIR/lab-dsr.toml
SLUICE_DECAP=$BIN/sluice-decap bash tools/lab/dsr-backends.sh $P | sed 's/^/  /'
start_sluiced $RUNDIR/lab-dsr.toml
sleep 0.5   # the restored services are steered on the control loop's first tick
before=$(grep -c '^::ffff:10.10.0.2 ' /run/sluice-lab/$P/http-be*.log | awk -F: '{s+=$NF} END {print s}')
split http://192.0.2.80/ 400
after=$(grep -c '^::ffff:10.10.0.2 ' /run/sluice-lab/$P/http-be*.log | awk -F: '{s+=$NF} END {print s}')
echo "  the backends logged the client's own address for $((after - before)) requests (no SNAT); they answered it directly"
if [ $((after - before)) -ge 300 ]; then echo "  ok    DSR"; else echo "  FAIL  DSR: the backends did not see the client"; fail=1; fi
echo "  decapsulated by the backends: $(cat /run/sluice-lab/$P/decap-be*.json | python3 -c "import sys,json; print(sum(json.loads(l)['decapsulated'] for l in sys.stdin.read().replace('}{','}\n{').splitlines()))") packets"

if [ $fail -ne 0 ]; then
    echo; echo "demo FAILED; sluiced log:"; cat "$LOG"
    exit 1
fi

bold "demo passed. sluiced keeps running; try: sluice status, sluice get services, sluice stats --file $STATS"
if [ -n "$RUN_SECONDS" ]; then
    echo "stopping after ${RUN_SECONDS}s (RUN_SECONDS)"
    end=$((SECONDS + RUN_SECONDS))
else
    echo "Ctrl-C to stop"
    end=-1
fi
while [ $end -lt 0 ] || [ $SECONDS -lt $end ]; do
    sleep 5
    ns cli curl -s -m 2 -o /dev/null http://10.20.0.11/ || true
    python3 -c "
import json; s=json.load(open('$STATS')); t=s['totals']
print(f\"  rx {t['rx_packets']} tx {t['tx_packets']} dropped {t['dropped']} generation {s['generation']}\")"
    kill -0 $pid 2>/dev/null || { echo "sluiced exited unexpectedly"; cat "$LOG"; exit 1; }
done
