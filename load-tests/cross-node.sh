#!/usr/bin/env bash
# Cross-node delivery: two Belay nodes on one PostgreSQL database and one Redis. The `notify`
# scenario holds its sessions on node B and publishes either to node B itself (same node) or to
# node A (cross-node, through the Redis bridge), alternated, fresh database and nodes per row.
# Loopback only; every run is bounded in time.
#
# Usage: load-tests/cross-node.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
USERS=${USERS:-200}
DURATION=${DURATION:-8}
RATES=${RATES:-"1000 3000"}
PORT_A=${PORT_A:-18181}
PORT_B=${PORT_B:-18182}
REDIS=${REDIS:-redis://127.0.0.1:6379}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/cross-node-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-cross.XXXXXX)
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

start_node() {
    local port=$1 url=$2 prefix=$3
    BELAY__SERVER__PORT=$port \
    BELAY__DATABASE__URL=$url \
    BELAY__REDIS__URL=$REDIS \
    BELAY__CLUSTER__KEY_PREFIX=$prefix \
    BELAY__AUTH__API_KEY=cross-node-key \
    BELAY__AUTH__JWT_SECRET=cross-node-secret-0123456789 \
    BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
    BELAY__SSE__MAX_SESSIONS_PER_USER=64 \
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
    for rate in $RATES; do
        for mode in same cross; do
            DB="belay_cross_$$_$RANDOM"
            psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
            url="${PG_ADMIN%/*}/$DB"
            start_node "$PORT_A" "$url" "$DB"
            start_node "$PORT_B" "$url" "$DB"
            publish=$PORT_B
            [[ $mode == cross ]] && publish=$PORT_A
            echo "== $mode node, $rate req/s (run $run)"
            "$LOAD_BIN" notify --url "http://127.0.0.1:$PORT_B" \
                --publish-url "http://127.0.0.1:$publish" --api-key cross-node-key \
                --users "$USERS" --rate "$rate" --duration "$DURATION" \
                --out "$OUT/$mode-$rate-$run.json" | tee "$OUT/$mode-$rate-$run.txt"
            stop_nodes
        done
    done
done
echo "results in $OUT"
