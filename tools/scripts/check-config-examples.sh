#!/usr/bin/env bash
# Every example config in configs/ must pass `sluiced --check-config`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/debug/sluiced
[ -x "$bin" ] || cargo build -q -p sluice-daemon
for f in configs/*.toml; do
    "$bin" --check-config "$f"
done
