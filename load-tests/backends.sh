#!/usr/bin/env bash
# The `notify` scenario on each store backend, same machine, same client, a fresh server and a
# fresh database per row: paced at 1,000 and 5,000 requests/s, saturated with one event per
# request, and saturated in batches of 50. PostgreSQL and MariaDB are the machine's servers
# (BELAY_TEST_POSTGRES_URL / BELAY_TEST_MYSQL_URL as in the tests); a database is created per
# row and dropped after it. Loopback only; every run is bounded in time.
#
# Usage: load-tests/backends.sh            (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BACKENDS=${BACKENDS:-"sqlite postgres mysql"}
RUNS=${RUNS:-1}
USERS=${USERS:-200}
DURATION=${DURATION:-8}
PORT=${PORT:-18080}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
MY_ADMIN=${BELAY_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
OUT=${OUT:-$ROOT/load-tests/results/backends-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-backends.XXXXXX)
mkdir -p "$OUT" "$WORK/bin"

SERVER_PID=""
DB=""
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
drop_db() {
    case "$DB" in
        postgres:*) psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS ${DB#postgres:} WITH (FORCE)" ;;
        mysql:*) mariadb_cli -e "DROP DATABASE IF EXISTS ${DB#mysql:}" ;;
    esac
    DB=""
}
cleanup() {
    stop_server
    drop_db
    rm -rf "$WORK"
}
trap cleanup EXIT

# mariadb_cli (the mariadb client for MY_ADMIN), shared with the cluster scripts.
# shellcheck source=load-tests/cluster-lib.sh
. "$ROOT/load-tests/cluster-lib.sh"

# Binaries: given, or built now and copied, so a build elsewhere cannot swap them mid-run.
if [[ -z "${BELAY_BIN:-}" || -z "${LOAD_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p belay -p belay-load --bins)
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    cp "$TARGET/release/belay" "$TARGET/release/belay-load" "$WORK/bin/"
    BELAY_BIN=${BELAY_BIN:-$WORK/bin/belay}
    LOAD_BIN=${LOAD_BIN:-$WORK/bin/belay-load}
fi

# A fresh database of `backend`: sets URL (and DB, to drop it afterwards).
fresh_db() {
    local backend=$1 name
    name="belay_load_$$_$RANDOM"
    case "$backend" in
        sqlite) URL="sqlite://$WORK/$name.db" ;;
        postgres)
            psql "$PG_ADMIN" -qc "CREATE DATABASE $name" >/dev/null
            DB="postgres:$name"
            URL="${PG_ADMIN%/*}/$name"
            ;;
        mysql)
            mariadb_cli -e "CREATE DATABASE $name"
            DB="mysql:$name"
            URL="${MY_ADMIN%/*}/$name"
            ;;
    esac
}

start_server() {
    local url=$1
    BELAY__SERVER__PORT=$PORT \
    BELAY__DATABASE__URL=$url \
    BELAY__AUTH__DEV_SECRETS_FILE=$WORK/secrets.json \
    BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
    BELAY__LIMITS__CONNECTIONS_PER_IP=0 \
    BELAY__SSE__MAX_SESSIONS_PER_USER=64 \
    RUST_LOG=warn "$BELAY_BIN" &
    SERVER_PID=$!
    for _ in $(seq 200); do
        if curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "belay did not become ready on $url" >&2
    exit 1
}

# name, then belay-load notify flags
ROWS=(
    "paced-1000|--rate 1000"
    "paced-5000|--rate 5000"
    "saturated|--rate 30000 --warmup 0"
    "batch-50|--rate 2000 --batch 50 --warmup 0"
)

for run in $(seq "$RUNS"); do
    for backend in $BACKENDS; do
        for row in "${ROWS[@]}"; do
            name=${row%%|*}
            flags=${row#*|}
            fresh_db "$backend"
            start_server "$URL"
            echo "== $backend $name (run $run)"
            # shellcheck disable=SC2086
            "$LOAD_BIN" notify --url "http://127.0.0.1:$PORT" --users "$USERS" \
                --duration "$DURATION" $flags --out "$OUT/$backend-$name-$run.json" \
                | tee "$OUT/$backend-$name-$run.txt"
            stop_server
            drop_db
        done
    done
done
echo "results in $OUT"
