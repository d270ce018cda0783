#!/usr/bin/env bash
# Many sessions over six nodes: NODES Belay nodes on one PostgreSQL database and one Redis hold
# SESSIONS sessions between them (one client process per node, each on its own 127.0.0.x, so no
# process passes the open-files limit), then BROADCASTS broadcasts published to the first node
# at RATE per second reach every session through the Redis bridge. `belay-load fanout` reports
# the time until every session had each broadcast (p50/p99/max), and each node's memory per
# session it holds, connected and after the broadcasts. The Redis is a private redis-server on
# a free port, without persistence, started and stopped here. Fresh database and nodes per run.
# Loopback only; every run is bounded in time.
#
# Usage: load-tests/cluster-fanout.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-1}
NODES=${NODES:-6}
SESSIONS=${SESSIONS:-100000}
BROADCASTS=${BROADCASTS:-10}
RATE=${RATE:-0.25}
FIRST_PORT=${FIRST_PORT:-18191}
REDIS_PORT=${REDIS_PORT:-18179}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-16}   # per client process
# More BELAY__* settings for every node, space-separated (e.g. BELAY__CLUSTER__PROBE_TIMEOUT_MS=10000).
NODE_SETTINGS=${NODE_SETTINGS:-}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/cluster-fanout-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-cluster-fanout.XXXXXX)
mkdir -p "$OUT"

# Every node and client process holds thousands of sockets: take the whole hard limit.
ulimit -n "$(ulimit -Hn)"
per_node=$(((SESSIONS + NODES - 1) / NODES))
if ((per_node + 1000 > $(ulimit -n))); then
    echo "$per_node sessions per node do not fit $(ulimit -n) open files: use more NODES" >&2
    exit 1
fi

# shellcheck source=load-tests/cluster-lib.sh
. "$ROOT/load-tests/cluster-lib.sh"
trap 'stop_nodes; stop_private_redis; rm -rf "$WORK"' EXIT
binaries
start_private_redis "$REDIS_PORT"
# CPU seconds the private Redis has used (user + system).
redis_cpu() {
    sed 's/.*) //' "/proc/$PRIVATE_REDIS_PID/stat" |
        awk -v k="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / k }'
}
REDIS=redis://127.0.0.1:$REDIS_PORT
{
    echo "load before: $(uptime)"
    echo "settings: RUNS=$RUNS NODES=$NODES SESSIONS=$SESSIONS BROADCASTS=$BROADCASTS RATE=$RATE NODE_SETTINGS=$NODE_SETTINGS open files $(ulimit -n)"
} | tee "$OUT/settings.txt"

for run in $(seq "$RUNS"); do
    NODE_LOG=$OUT/nodes-$run.log
    fresh_database
    ports=()
    for i in $(seq 0 $((NODES - 1))); do
        port=$((FIRST_PORT + i))
        port_free "$port"
        ports+=("$port")
        start_node "$port" BELAY__DATABASE__URL="$URL" BELAY__REDIS__URL="$REDIS" \
            BELAY__CLUSTER__KEY_PREFIX="$DB" BELAY__AUTH__API_KEY=cluster-fanout-key \
            BELAY__AUTH__JWT_SECRET=cluster-fanout-secret-0123456789 $NODE_SETTINGS
    done
    nodes=() pids=()
    for port in "${ports[@]:1}"; do
        nodes+=(--node "http://127.0.0.1:$port")
    done
    for pid in "${PIDS[@]}"; do
        pids+=(--server-pid "$pid")
    done
    echo "== $SESSIONS sessions over $NODES nodes, $BROADCASTS broadcasts at $RATE/s (run $run); load $(cut -d' ' -f1-3 /proc/loadavg)"
    # Bounded: 300 s at most; the sessions open within --open-timeout, the broadcasts end after
    # BROADCASTS / RATE seconds plus --drain.
    redis_before=$(redis_cpu)
    timeout 300 "$LOAD_BIN" fanout --url "http://127.0.0.1:${ports[0]}" "${nodes[@]}" \
        --api-key cluster-fanout-key "${pids[@]}" --sessions "$SESSIONS" \
        --per-worker "$per_node" --open-concurrency "$OPEN_CONCURRENCY" --open-timeout 120 \
        --broadcasts "$BROADCASTS" --rate "$RATE" --drain 30 \
        --out "$OUT/fanout-$run.json" | tee "$OUT/fanout-$run.txt"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); Redis CPU over the run:" \
        "$(awk -v a="$redis_before" -v b="$(redis_cpu)" 'BEGIN { printf "%.2f s", b - a }')" |
        tee -a "$OUT/settings.txt"
    stop_nodes
done
echo "results in $OUT"
