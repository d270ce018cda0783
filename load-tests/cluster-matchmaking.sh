#!/usr/bin/env bash
# Matchmaking across nodes beside one node, alternated in the same run: `belay-load matchmaking`
# against one node on PostgreSQL, then against three nodes on the same kind of database and one
# Redis, with the climbers spread over the three (one client process per node). Fresh database
# and nodes per row. Loopback only; every run is bounded in time.
#
# Usage: load-tests/cluster-matchmaking.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
CLIMBERS=${CLIMBERS:-6000}
PORTS=(${PORTS:-18281 18282 18283})
REDIS=${REDIS:-redis://127.0.0.1:6379}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/cluster-matchmaking-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-cluster-mm.XXXXXX)
mkdir -p "$OUT"

PIDS=()
DB=""
stop_nodes() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    if [[ -n "$DB" ]]; then
        psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
        DB=""
    fi
}
trap 'stop_nodes; rm -rf "$WORK"' EXIT

if [[ -z "${BELAY_BIN:-}" || -z "${LOAD_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p belay -p belay-load --bins)
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    mkdir -p "$WORK/bin"
    cp "$TARGET/release/belay" "$TARGET/release/belay-load" "$WORK/bin/"
    BELAY_BIN=${BELAY_BIN:-$WORK/bin/belay}
    LOAD_BIN=${LOAD_BIN:-$WORK/bin/belay-load}
fi

# port, database url, redis url (empty: a single node)
start_node() {
    local port=$1 url=$2 redis=$3
    BELAY__SERVER__PORT=$port \
    BELAY__DATABASE__URL=$url \
    BELAY__REDIS__URL=$redis \
    BELAY__CLUSTER__KEY_PREFIX=$DB \
    BELAY__AUTH__API_KEY=cluster-mm-key \
    BELAY__AUTH__JWT_SECRET=cluster-mm-secret-0123456789 \
    BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
    RUST_LOG=warn "$BELAY_BIN" &
    PIDS+=($!)
    for _ in $(seq 200); do
        if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "belay did not become ready on port $port" >&2
    exit 1
}

for run in $(seq "$RUNS"); do
    for mode in one three; do
        DB="belay_mm_$$_$RANDOM"
        psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
        url="${PG_ADMIN%/*}/$DB"
        per_worker=$((CLIMBERS / 3))
        extra=()
        if [[ $mode == one ]]; then
            start_node "${PORTS[0]}" "$url" ""
        else
            for port in "${PORTS[@]}"; do
                start_node "$port" "$url" "$REDIS"
            done
            extra=(--node "http://127.0.0.1:${PORTS[1]}" --node "http://127.0.0.1:${PORTS[2]}")
        fi
        echo "== $mode node(s), $CLIMBERS climbers (run $run)"
        server_pids=()
        for pid in "${PIDS[@]}"; do
            server_pids+=(--server-pid "$pid")
        done
        "$LOAD_BIN" matchmaking --url "http://127.0.0.1:${PORTS[0]}" "${extra[@]}" \
            --api-key cluster-mm-key --climbers "$CLIMBERS" --per-worker "$per_worker" \
            "${server_pids[@]}" --out "$OUT/$mode-$run.json" | tee "$OUT/$mode-$run.txt"
        stop_nodes
    done
done
echo "results in $OUT"
