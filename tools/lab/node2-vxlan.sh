#!/usr/bin/env bash
# Node n2 of the lab as a kernel VXLAN peer: a vxlan device (VNI 2, the identity sluice sends for
# traffic from outside the cluster) toward the appliance, pod address 10.244.2.5 on it, and an
# HTTP server there. usage: node2-vxlan.sh PREFIX
set -euo pipefail
P=${1:-sl}
STATE=/run/sluice-lab/$P
ns() { ip netns exec "$P-n2" "$@"; }
ns ip link add tun0 type vxlan id 2 local 10.20.0.21 dstport 8472 dev eth0 nolearning
ns bridge fdb append 00:00:00:00:00:00 dev tun0 dst 10.20.0.1
ns ip link set tun0 address 02:00:00:00:ee:02
ns ip link set tun0 up
ns ip addr add 10.244.2.5/24 dev tun0
ns ip route add 10.10.0.0/24 dev tun0
ns ip neigh add 10.10.0.2 lladdr 02:00:00:00:00:01 dev tun0 nud permanent
mkdir -p "$STATE/www-pod"
echo "hello from pod 10.244.2.5 on node n2, through VXLAN" > "$STATE/www-pod/index.html"
# not through ns(): $! must be the server's own pid for lab.sh down to stop it
ip netns exec "$P-n2" python3 -m http.server 8080 --bind 10.244.2.5 --directory "$STATE/www-pod" >"$STATE/http-pod.log" 2>&1 &
echo $! > "$STATE/http-pod.pid"
for _ in $(seq 50); do
    ns ss -ltn 2>/dev/null | grep -q '10.244.2.5:8080' && break
    sleep 0.1
done
