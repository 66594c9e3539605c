#!/usr/bin/env bash
# sluice lab topology: network namespaces and veth pairs, nothing on the machine's own interfaces.
#
#   PREFIX-cli (client)                 PREFIX-app (appliance, runs sluiced)        PREFIX-sw (L2 switch)
#   cli0 10.10.0.2/24 fd00:10::2/64 --- eth-cli 10.10.0.1  fd00:10::1
#                                       eth-srv 10.20.0.1  fd00:20::1  ------------ sw-app ┐
#                                                                                           br0 ── sw-be1 --- PREFIX-be1 eth0 10.20.0.11 fd00:20::11 (HTTP :80, UDP :5353)
#                                                                                               ├─ sw-be2 --- PREFIX-be2 eth0 10.20.0.12 fd00:20::12 (HTTP :80, UDP :5353)
#                                                                                               ├─ sw-be3 --- PREFIX-be3 eth0 10.20.0.13 fd00:20::13 (HTTP :80, UDP :5353)
#                                                                                               └─ sw-n2  --- PREFIX-n2  eth0 10.20.0.21 fd00:20::21 (a second node)
#
# The appliance namespace also forwards in the kernel (ip_forward=1), so when sluiced is not
# running — or was killed — traffic still flows: that is the fallback the XDP bpf_link gives us.
#
# usage: lab.sh up [PREFIX] [QUEUES]    (default PREFIX=sl, QUEUES=1)
#        lab.sh down [PREFIX]
#        lab.sh status [PREFIX]
set -euo pipefail

cmd=${1:-}
P=${2:-sl}
Q=${3:-1}
STATE=/run/sluice-lab/$P
HERE=$(cd "$(dirname "$0")" && pwd)

ns() { ip netns exec "$P-$1" "${@:2}"; }

# Checksum offload off: a locally generated packet over veth otherwise carries only a partial
# checksum, which is fine for the kernel path but wrong once AF_XDP copies the bytes out.
# Without it the lab looks up but service traffic dies at the backends (bad TCP checksums).
nooffload() { ns "$1" ethtool -K "$2" tx off rx off >/dev/null; }

down() {
    local pids=()
    if [ -d "$STATE" ]; then
        for pid in "$STATE"/*.pid; do
            [ -e "$pid" ] && pids+=("$(cat "$pid")")
        done
    fi
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
    # wait for them to exit (sluice-decap writes its final counters on SIGTERM): files written
    # after the rm below would leave the state directory behind; 2 s at most, then SIGKILL
    for _ in $(seq 40); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.05
    done
    [ ${#pids[@]} -gt 0 ] && kill -9 "${pids[@]}" 2>/dev/null || true
    for n in cli app sw be1 be2 be3 n2; do
        ip netns del "$P-$n" 2>/dev/null || true
    done
    rm -rf "$STATE"
}

up() {
    for tool in ip ethtool python3; do
        command -v $tool >/dev/null || { echo "lab.sh: $tool is missing (tools/scripts/install-deps.sh installs it)" >&2; exit 1; }
    done
    if ip netns list | grep -q "^$P-app\b"; then
        echo "lab $P is already up (lab.sh down $P first)" >&2
        exit 1
    fi
    trap 'echo "lab.sh: setup failed, tearing down" >&2; down' ERR
    mkdir -p "$STATE"
    for n in cli app sw be1 be2 be3 n2; do
        ip netns add "$P-$n"
        ns "$n" ip link set lo up
        # No duplicate address detection on this private wire: addresses (link-local included)
        # are usable at once, so IPv6 neighbours resolve as fast as ARP does.
        ns "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    done

    ip link add eth-cli netns "$P-app" numtxqueues "$Q" numrxqueues "$Q" type veth \
        peer name cli0 netns "$P-cli" numtxqueues "$Q" numrxqueues "$Q"
    ip link add eth-srv netns "$P-app" numtxqueues "$Q" numrxqueues "$Q" type veth \
        peer name sw-app netns "$P-sw" numtxqueues "$Q" numrxqueues "$Q"
    ip link add eth0 netns "$P-be1" type veth peer name sw-be1 netns "$P-sw"
    ip link add eth0 netns "$P-be2" type veth peer name sw-be2 netns "$P-sw"
    ip link add eth0 netns "$P-be3" type veth peer name sw-be3 netns "$P-sw"
    ip link add eth0 netns "$P-n2" type veth peer name sw-n2 netns "$P-sw"

    # client
    ns cli ip addr add 10.10.0.2/24 dev cli0
    ns cli ip -6 addr add fd00:10::2/64 dev cli0 nodad
    ns cli ip link set cli0 up
    ns cli ip route add default via 10.10.0.1
    ns cli ip -6 route add default via fd00:10::1
    nooffload cli cli0

    # appliance
    ns app ip addr add 10.10.0.1/24 dev eth-cli
    ns app ip -6 addr add fd00:10::1/64 dev eth-cli nodad
    ns app ip addr add 10.20.0.1/24 dev eth-srv
    ns app ip -6 addr add fd00:20::1/64 dev eth-srv nodad
    ns app ip link set eth-cli up
    ns app ip link set eth-srv up
    ns app sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    nooffload app eth-cli
    nooffload app eth-srv

    # switch
    ns sw ip link add br0 type bridge
    for l in sw-app sw-be1 sw-be2 sw-be3 sw-n2; do
        ns sw ip link set "$l" master br0
        ns sw ip link set "$l" up
        nooffload sw "$l"
    done
    ns sw ip link set br0 up

    # backends, each with an HTTP/1.1 server saying who it is (web.py: keep-alive, every method)
    for i in 1 2 3; do
        ns "be$i" ip addr add "10.20.0.1$i/24" dev eth0
        ns "be$i" ip -6 addr add "fd00:20::1$i/64" dev eth0 nodad
        ns "be$i" ip link set eth0 up
        ns "be$i" ip route add default via 10.20.0.1
        ns "be$i" ip -6 route add default via fd00:20::1
        nooffload "be$i" eth0
        # not through ns(): $! must be the server's own pid (ip netns exec execs it), or
        # `down` would kill a subshell and leave the server running
        ip netns exec "$P-be$i" python3 "$HERE/web.py" "be$i" 80 \
            >"$STATE/http-be$i.log" 2>&1 &
        echo $! > "$STATE/http-be$i.pid"
        # a UDP request/response server (the lab's UDP service, 53 -> 5353)
        ip netns exec "$P-be$i" python3 "$HERE/udp.py" serve 5353 "be$i" \
            >"$STATE/udp-be$i.log" 2>&1 &
        echo $! > "$STATE/udp-be$i.pid"
    done

    # a second cluster node on the server segment: the overlay tests put a kernel vxlan/geneve
    # device with a pod address on it
    ns n2 ip addr add 10.20.0.21/24 dev eth0
    ns n2 ip -6 addr add fd00:20::21/64 dev eth0 nodad
    ns n2 ip link set eth0 up
    nooffload n2 eth0

    if [ "$Q" -gt 1 ]; then
        for d in eth-cli eth-srv; do ns app ethtool -L "$d" rx "$Q" tx "$Q" >/dev/null 2>&1 || true; done
        ns cli ethtool -L cli0 rx "$Q" tx "$Q" >/dev/null 2>&1 || true
        ns sw ethtool -L sw-app rx "$Q" tx "$Q" >/dev/null 2>&1 || true
    fi

    # wait until the HTTP servers listen (python takes a moment to start)
    for i in 1 2 3; do
        for _ in $(seq 50); do
            ns "be$i" ss -ltn 2>/dev/null | grep -q ':80 ' && break
            sleep 0.1
        done
    done
    # the control API's token (configs/lab.toml: api.token_file), if there is none yet
    if [ ! -s /run/sluice/token ]; then
        mkdir -p /run/sluice
        (umask 077; head -c 24 /dev/urandom | base64 > /run/sluice/token)
    fi
    trap - ERR
    echo "lab $P up: client 10.10.0.2, appliance $P-app (eth-cli, eth-srv), backends 10.20.0.11 10.20.0.12 10.20.0.13"
}

status() {
    for n in cli app sw be1 be2 be3 n2; do
        echo "== $P-$n"
        ns "$n" ip -br addr 2>/dev/null || echo "(absent)"
    done
}

case "$cmd" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status [PREFIX] [QUEUES]" >&2; exit 2 ;;
esac
