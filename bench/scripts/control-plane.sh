#!/usr/bin/env bash
# Control-plane benchmark on the lab: sluiced with its real workers, the API over its unix socket.
#   full-state apply of 10,000 Services x 10 endpoints (HTTP, validation, compile, publish),
#   then the same state again (a resync: unchanged Maglev tables are kept)
#   single-Service changes, each until every worker runs the new snapshot
# usage: [PODS=N] [BIN=DIR] control-plane.sh [SERVICES] [ENDPOINTS]   results: bench/results/control-plane-*.json
#   PODS: also N Pods as the syncer sends them, and single-Pod relabels timed
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
E=${2:-10}
P=slc
BIN=${BIN:-target/release}
DIR=/tmp/$P-sluice
OUT=bench/results/control-plane-$(date +%Y%m%d-%H%M%S).json
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    bash tools/lab/lab.sh down $P
    grep "full state applied" "$DIR/sluiced.log" >&2 || true; rm -rf "$DIR"
}
trap cleanup EXIT
bash tools/lab/lab.sh down $P
bash tools/lab/lab.sh up $P 1 >/dev/null
rm -rf "$DIR"; mkdir -p "$DIR"
(umask 077; echo "bench-token-$$" > "$DIR/token")
sed "s|/run/sluice/|$DIR/|g" configs/lab.toml > "$DIR/sluiced.toml"
ip netns exec "$P-app" $BIN/sluiced --config "$DIR/sluiced.toml" --stats-file "$DIR/stats.json" >"$DIR/sluiced.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$DIR/api.sock" ] && break; sleep 0.1; done
$BIN/sluice-control-bench --server "unix:$DIR/api.sock" --token-file "$DIR/token" --services "$N" --endpoints "$E" --changes "${CHANGES:-50}" --pods "${PODS:-0}" \
    | python3 -c "import json,sys; r=json.load(sys.stdin); json.dump(r, open('$OUT','w'), indent=2); print(json.dumps(r, indent=2))"
