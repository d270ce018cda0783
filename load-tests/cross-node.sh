#!/usr/bin/env bash
# Cross-node delivery, Belay beside Nchan, one client. Two Belay nodes on one PostgreSQL
# database and one Redis: the `notify` scenario holds its sessions on node B and publishes to
# node B itself (`same`) or to node A (`cross`, through the Redis bridge). Then two Nchan
# servers sharing the same Redis (`nchan_redis_pass` to `nchan_redis_server`): sessions
# subscribe on server B, the publisher posts on server A (`nchan`). Rows alternate; fresh
# database, nodes and servers per row. At the end `belay-load compare` prints cross-node Belay /
# Nchan per rate. The Redis is a private redis-server on a free port, without persistence,
# started and stopped by this script (Belay's keys carry the row's prefix; Nchan's are its own).
# Loopback only; every run is bounded in time. A row whose checks fail (an event lost, repeated
# or out of order) is reported and the other rows still run; the script then exits 1.
#
# Usage: load-tests/cross-node.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
USERS=${USERS:-200}
DURATION=${DURATION:-8}
RATES=${RATES:-"1000 3000"}
MODES=${MODES:-"same cross nchan"}
PORT_A=${PORT_A:-18181}
PORT_B=${PORT_B:-18182}
NCHAN_A=${NCHAN_A:-18183}
NCHAN_B=${NCHAN_B:-18184}
REDIS_PORT=${REDIS_PORT:-18179}
# `off` sets PostgreSQL's synchronous_commit off for the row's database (a diagnostic: what the
# commit's WAL flush costs); empty keeps the server's setting (durable commits).
SYNCHRONOUS_COMMIT=${SYNCHRONOUS_COMMIT:-}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/cross-node-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-cross.XXXXXX)
mkdir -p "$OUT"

# shellcheck source=load-tests/cluster-lib.sh
. "$ROOT/load-tests/cluster-lib.sh"
trap 'stop_nodes; stop_nginx; stop_private_redis; rm -rf "$WORK"' EXIT
binaries
[[ $MODES == *nchan* ]] && install_nchan
start_private_redis "$REDIS_PORT"
REDIS=redis://127.0.0.1:$REDIS_PORT
echo "load before: $(uptime)" | tee "$OUT/settings.txt"
echo "settings: RUNS=$RUNS USERS=$USERS DURATION=$DURATION RATES=$RATES MODES=$MODES SYNCHRONOUS_COMMIT=$SYNCHRONOUS_COMMIT" |
    tee -a "$OUT/settings.txt"

FAILED=()
for run in $(seq "$RUNS"); do
    for rate in $RATES; do
        for mode in $MODES; do
            echo "== $mode, $rate req/s (run $run); load $(cut -d' ' -f1-3 /proc/loadavg)"
            if [[ $mode == nchan ]]; then
                start_nchan "$NCHAN_A" "$REDIS_PORT"
                start_nchan "$NCHAN_B" "$REDIS_PORT"
                "$LOAD_BIN" notify --server nchan --url "http://127.0.0.1:$NCHAN_B" \
                    --publish-url "http://127.0.0.1:$NCHAN_A" \
                    --users "$USERS" --rate "$rate" --duration "$DURATION" \
                    --out "$OUT/$mode-$rate-$run.json" | tee "$OUT/$mode-$rate-$run.txt" ||
                    FAILED+=("$mode-$rate-$run")
                stop_nginx
                continue
            fi
            fresh_database
            if [[ -n "$SYNCHRONOUS_COMMIT" && $DB_SERVER == postgres ]]; then
                psql "$PG_ADMIN" -qc "ALTER DATABASE $DB SET synchronous_commit = $SYNCHRONOUS_COMMIT"
            fi
            for port in "$PORT_A" "$PORT_B"; do
                start_node "$port" BELAY__DATABASE__URL="$URL" BELAY__REDIS__URL="$REDIS" \
                    BELAY__CLUSTER__KEY_PREFIX="$DB" BELAY__AUTH__API_KEY=cross-node-key \
                    BELAY__AUTH__JWT_SECRET=cross-node-secret-0123456789 \
                    BELAY__SSE__MAX_SESSIONS_PER_USER=64
            done
            publish=$PORT_B
            [[ $mode == cross ]] && publish=$PORT_A
            "$LOAD_BIN" notify --url "http://127.0.0.1:$PORT_B" \
                --publish-url "http://127.0.0.1:$publish" --api-key cross-node-key \
                --users "$USERS" --rate "$rate" --duration "$DURATION" \
                --out "$OUT/$mode-$rate-$run.json" | tee "$OUT/$mode-$rate-$run.txt" ||
                FAILED+=("$mode-$rate-$run")
            stop_nodes
        done
    done
done
echo "load after: $(uptime)" | tee -a "$OUT/settings.txt"
if [[ $MODES == *cross* && $MODES == *nchan* ]]; then
    for rate in $RATES; do
        echo "== cross-node at $rate req/s: Belay (PostgreSQL + Redis) / Nchan (Redis)"
        "$LOAD_BIN" compare "$OUT"/cross-"$rate"-*.json "$OUT"/nchan-"$rate"-*.json |
            tee "$OUT/compare-$rate.txt"
    done
fi
echo "results in $OUT"
if ((${#FAILED[@]} > 0)); then
    echo "rows that failed their checks: ${FAILED[*]}" | tee -a "$OUT/settings.txt" >&2
    exit 1
fi
