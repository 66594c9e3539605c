#!/usr/bin/env bash
# Installs the Debian packages sluice needs to build and test, only if something is missing.
# Idempotent: a machine that has everything returns at once without touching apt.
set -euo pipefail

PKGS=(clang llvm libelf-dev zlib1g-dev pkg-config m4 make
      iproute2 ethtool iptables nftables tcpdump curl python3 procps)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root or install them yourself" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
