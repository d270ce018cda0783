#!/usr/bin/env bash
# Matchmaking across nodes beside one node, alternated in the same run: `belay-load matchmaking`
# against one node on PostgreSQL (DB_SERVER=mysql: MariaDB), then against three nodes on the same
# kind of database and one Redis, with the climbers spread over the three (one client process
# per node). Fresh database and nodes per row. Loopback only; every run is bounded in time.
#
# Usage: load-tests/cluster-matchmaking.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
MODES=${MODES:-one three}
CLIMBERS=${CLIMBERS:-6000}
# Join and ready requests in flight per client process (belay-load's --concurrency).
CONCURRENCY=${CONCURRENCY:-64}
PORTS=(${PORTS:-18281 18282 18283})
REDIS=${REDIS:-redis://127.0.0.1:6379}
# More BELAY__* settings for each of the three nodes, space-separated
# (e.g. BELAY__SERVER__WORKERS=1, so three nodes run as many HTTP workers as there are cores).
CLUSTER_SETTINGS=${CLUSTER_SETTINGS:-}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/cluster-matchmaking-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-cluster-mm.XXXXXX)
mkdir -p "$OUT"

# shellcheck source=load-tests/cluster-lib.sh
. "$ROOT/load-tests/cluster-lib.sh"
trap 'stop_nodes; rm -rf "$WORK"' EXIT
binaries

for run in $(seq "$RUNS"); do
    for mode in $MODES; do
        fresh_database
        per_worker=$((CLIMBERS / 3))
        secrets=(BELAY__AUTH__API_KEY=cluster-mm-key
            BELAY__AUTH__JWT_SECRET=cluster-mm-secret-0123456789)
        extra=()
        if [[ $mode == one ]]; then
            start_node "${PORTS[0]}" BELAY__DATABASE__URL="$URL" "${secrets[@]}"
        else
            for port in "${PORTS[@]}"; do
                start_node "$port" BELAY__DATABASE__URL="$URL" BELAY__REDIS__URL="$REDIS" \
                    BELAY__CLUSTER__KEY_PREFIX="$DB" "${secrets[@]}" $CLUSTER_SETTINGS
            done
            extra=(--node "http://127.0.0.1:${PORTS[1]}" --node "http://127.0.0.1:${PORTS[2]}")
        fi
        echo "== $mode node(s), $CLIMBERS climbers (run $run)"
        server_pids=()
        for pid in "${PIDS[@]}"; do
            server_pids+=(--server-pid "$pid")
        done
        redis_before=$(cpu_of redis-server)
        db_before=$(cpu_of "$DB_PROCESS")
        "$LOAD_BIN" matchmaking --url "http://127.0.0.1:${PORTS[0]}" "${extra[@]}" \
            --api-key cluster-mm-key --climbers "$CLIMBERS" --per-worker "$per_worker" --concurrency "$CONCURRENCY" \
            "${server_pids[@]}" --out "$OUT/$mode-$run.json" | tee "$OUT/$mode-$run.txt"
        # The services the nodes share, over the same run (both serve this row only).
        awk -v r0="$redis_before" -v r1="$(cpu_of redis-server)" -v p0="$db_before" \
            -v p1="$(cpu_of "$DB_PROCESS")" -v db="$DB_SERVER" 'BEGIN { printf "shared services CPU: redis %.2f s, %s %.2f s\n", r1 - r0, db, p1 - p0 }' |
            tee -a "$OUT/$mode-$run.txt"
        stop_nodes
    done
done
echo "results in $OUT"
