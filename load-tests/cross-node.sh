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

# shellcheck source=load-tests/cluster-lib.sh
. "$ROOT/load-tests/cluster-lib.sh"
trap 'stop_nodes; rm -rf "$WORK"' EXIT
binaries

for run in $(seq "$RUNS"); do
    for rate in $RATES; do
        for mode in same cross; do
            fresh_database
            for port in "$PORT_A" "$PORT_B"; do
                start_node "$port" BELAY__DATABASE__URL="$URL" BELAY__REDIS__URL="$REDIS" \
                    BELAY__CLUSTER__KEY_PREFIX="$DB" BELAY__AUTH__API_KEY=cross-node-key \
                    BELAY__AUTH__JWT_SECRET=cross-node-secret-0123456789 \
                    BELAY__SSE__MAX_SESSIONS_PER_USER=64
            done
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
