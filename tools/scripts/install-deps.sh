#!/usr/bin/env bash
# Installs the Debian packages sluice needs to build and test, only if something is missing.
# Idempotent: a machine that has everything returns at once without touching apt.
set -euo pipefail

PKGS=(clang llvm libelf-dev zlib1g-dev pkg-config m4 make
      iproute2 ethtool iptables nftables tcpdump tshark iperf3 curl python3 procps wrk)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# scapy: the independent decoder the overlay interop tests check sluice's packets with
need_scapy=0
python3 -c "import scapy" 2>/dev/null || need_scapy=1
# schemathesis: fuzzes the control API against its own OpenAPI document
need_st=0
command -v st >/dev/null 2>&1 || need_st=1

if [ ${#missing[@]} -eq 0 ] && [ $need_scapy -eq 0 ] && [ $need_st -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root or install them yourself" >&2
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $need_scapy -eq 1 ]; then
    echo "install-deps: installing scapy (PyPI)"
    python3 -m pip install --quiet --root-user-action=ignore scapy
fi
if [ $need_st -eq 1 ]; then
    echo "install-deps: installing schemathesis (PyPI)"
    python3 -m pip install --quiet --root-user-action=ignore schemathesis
fi
