#!/usr/bin/env bash
# The lab's backends as DSR backends (sluice lb.mode = "dsr"/"hybrid"): each holds the `web`
# service addresses on lo (so the kernel accepts the client's packets addressed to them and
# answers from them) and runs `sluice-decap` on eth0, which strips the appliance's IPIP /
# IPv6-in-IPv6 / Geneve tunnels in XDP. Replies go straight back to the client.
# usage: dsr-backends.sh PREFIX [GENEVE_PORT]
set -euo pipefail
P=${1:-sl}
GENEVE=${2:-}
STATE=/run/sluice-lab/$P
DECAP=${SLUICE_DECAP:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/sluice-decap}
# the addresses of the lab's `web` service that DSR serves (port 80 = targetPort 80)
VIPS4="10.96.0.80 192.0.2.80"
VIPS6="fd00:96::80"
for i in 1 2 3; do
    ns() { ip netns exec "$P-be$i" "$@"; }
    for v in $VIPS4; do ns ip addr add "$v/32" dev lo; done
    for v in $VIPS6; do ns ip -6 addr add "$v/128" dev lo; done
    # ARP for a VIP is never answered by a backend (as for any DSR/LVS-DR real server)
    ns sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
    args=(--dev eth0 --allow 10.20.0.1 --allow fd00:20::1 --stats-file "$STATE/decap-be$i.json")
    [ -n "$GENEVE" ] && args+=(--geneve-port "$GENEVE")
    # not through ns(): $! must be the decap process itself for lab.sh down to stop it
    ip netns exec "$P-be$i" "$DECAP" "${args[@]}" >"$STATE/decap-be$i.log" 2>&1 &
    echo $! > "$STATE/decap-be$i.pid"
done
for i in 1 2 3; do
    for _ in $(seq 50); do
        [ -s "$STATE/decap-be$i.json" ] && break
        sleep 0.1
    done
    [ -s "$STATE/decap-be$i.json" ] || { cat "$STATE/decap-be$i.log" >&2; echo "decap on be$i did not start" >&2; exit 1; }
done
echo "lab $P: DSR backends ready (decap on be1-3 eth0${GENEVE:+, Geneve :$GENEVE})"
