# Sourced by the bench scripts: a lab (prefix $P) with the release sluiced running in its
# appliance namespace, state under $RUN, torn down on exit whatever happens.
#   start_lab_sluiced EXTRA_SED   (a sed expression applied to configs/lab.toml, may be empty)
#   or: lab_up, then start_sluiced EXTRA_SED / stop_sluiced as often as needed
# Sets: BIN, RUN, SLUICED_PID, pids (extra processes to stop), ns(), PIN (a command prefix
# placing a measuring client, see LOWLAT); SLUICE_SERVER and
# SLUICE_TOKEN_FILE for the sluice CLI.
#
# LOWLAT=1 (the scripts that measure latency set it): the machine set up for latency, for every
# datapath alike (LOWLAT=0 runs them on the machine as it comes, to see the difference):
# - no vCPU halts when idle: /dev/cpu_dma_latency held at 0 for the run, which is what tuned's
#   latency-performance profile does. An idle vCPU of this VM halts (cpuidle haltpoll), and each
#   wakeup on the other core paid 100+ us for it.
# - the lab's servers on the cores other than core 0, where sluiced's worker spins: time-sliced
#   with it, a python server stalled the worker for milliseconds (the 1 ms p90 connect times of
#   earlier runs).
# - the measuring client ($PIN) on core CLIENT_CORE, 0 by default: the TCP connects' client
#   there, with the worker, because on the servers' core it waited ~0.5 ms behind the python
#   server's per-connection thread on every connect (p50 450-620 us, against 43 us on core 0);
#   latency.sh's UDP client on core 1, where it has the core to itself while the echo server
#   idles (kernel p99 70 us there, 343 us on core 0).
BIN=target/release
RUN=/tmp/sluice-$P
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
for b in sluiced sluice sluice-pktgen; do
    [ -x $BIN/$b ] || { echo "no $BIN/$b: make release first" >&2; exit 1; }
done
pids=()
SLUICED_PID=""
SINK_PID=""
SINK_COUNT=/tmp/$P-sink.$$.count
cleanup() {
    for p in "${pids[@]}" $SLUICED_PID $SINK_PID; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bash tools/lab/lab.sh down $P
    rm -rf "$RUN" "$SINK_COUNT"
}
trap cleanup EXIT
ns() { ip netns exec "$P-$1" "${@:2}"; }
PIN=""
SERVER_CORES=""
if [ "${LOWLAT:-0}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CORES=1-$(($(nproc) - 1))
    PIN="taskset -c ${CLIENT_CORE:-0}"
    # held open until the script ends (cleanup stops it)
    python3 -c 'import struct, time
f = open("/dev/cpu_dma_latency", "wb", buffering=0)
f.write(struct.pack("i", 0))
time.sleep(1e9)' &
    pids+=($!)
fi

# a fresh lab (prefix $P, one queue)
lab_up() {
    bash tools/lab/lab.sh down $P
    bash tools/lab/lab.sh up $P 1 >/dev/null
    if [ -n "$SERVER_CORES" ]; then
        local n pid
        for n in $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print $1}'); do
            for pid in $(ip netns pids "$n"); do
                taskset -a -p -c "$SERVER_CORES" "$pid" >/dev/null
            done
        done
    fi
}

# start_sink HOST IFACE: sluice-pktgen's XDP sink counting (and dropping) the IP frames that
# arrive on IFACE in namespace $P-HOST, into $SINK_COUNT; stop_sink stops it (so does the exit)
start_sink() {
    rm -f "$SINK_COUNT"
    # not through ns(): $! must be the sink itself (ip netns exec execs it), to stop it
    ip netns exec "$P-$1" $BIN/sluice-pktgen --engine sink --iface "$2" --duration 36000 \
        --counter-file "$SINK_COUNT" >/dev/null 2>&1 &
    SINK_PID=$!
    for _ in $(seq 50); do [ -s "$SINK_COUNT" ] && break; sleep 0.1; done
}
stop_sink() {
    [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=""
}
# the sink's count (it rewrites the file every 100 ms)
sunk() { sleep 0.2; cat "$SINK_COUNT"; }

# sweep_point KEY GENERATOR...: runs the generator command (sluice-pktgen, its JSON result on
# stdout) and prints {"offered_pps": ..., KEY: per second, what the caller's `arrived` counted}
sweep_point() {
    local key=$1 before g
    shift
    before=$(arrived)
    g=$("$@" 2>/dev/null)
    sleep 0.5
    python3 -c "
import json, sys
g = json.loads(sys.argv[1])
print(json.dumps({'offered_pps': round(g['pps']), sys.argv[2]: round((int(sys.argv[4]) - int(sys.argv[3])) / g['seconds'])}))" \
        "$g" "$key" "$before" "$(arrived)"
}

# start_sluiced EXTRA_SED: sluiced on the lab that is up, with fresh state under $RUN
start_sluiced() {
    rm -rf "$RUN"; mkdir -p "$RUN"
    echo "$P-bench-token-0123456789" >"$RUN/token"; chmod 600 "$RUN/token"
    # paths under $RUN, no TCP listener (make run's may be up)
    sed "s#/run/sluice#$RUN#g; s#127.0.0.1:9800##; ${1:-}" configs/lab.toml >"$RUN/sluiced.toml"
    ip netns exec "$P-app" $BIN/sluiced --config "$RUN/sluiced.toml" --stats-file "$RUN/stats.json" \
        >"$RUN/sluiced.log" 2>&1 &
    SLUICED_PID=$!
    for _ in $(seq 100); do [ -s "$RUN/stats.json" ] && break; sleep 0.1; done
    [ -s "$RUN/stats.json" ] || { cat "$RUN/sluiced.log" >&2; echo "sluiced did not start" >&2; exit 1; }
    export SLUICE_SERVER=unix:$RUN/api.sock SLUICE_TOKEN_FILE=$RUN/token
}

stop_sluiced() {
    [ -n "$SLUICED_PID" ] && kill "$SLUICED_PID" 2>/dev/null && wait "$SLUICED_PID" 2>/dev/null || true
    SLUICED_PID=""
}

start_lab_sluiced() {
    lab_up
    start_sluiced "${1:-}"
}
