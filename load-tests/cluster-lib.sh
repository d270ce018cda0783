# Shared by the cluster load scripts (cross-node.sh, cluster-matchmaking.sh); sourced, not run.
# Expects ROOT, WORK and PG_ADMIN set; keeps the started nodes in PIDS and the database in DB.

PIDS=()
DB=""

# Stops every node started, then drops the row's database.
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

# A fresh PostgreSQL database for the row: sets DB (dropped by stop_nodes) and its URL.
fresh_database() {
    DB="belay_load_$$_$RANDOM"
    psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
    URL="${PG_ADMIN%/*}/$DB"
}

# Binaries: given (BELAY_BIN, LOAD_BIN), or built now and copied, so a build elsewhere cannot
# swap them mid-run.
binaries() {
    if [[ -z "${BELAY_BIN:-}" || -z "${LOAD_BIN:-}" ]]; then
        (cd "$ROOT" && cargo build --release -p belay -p belay-load --bins)
        local target=${CARGO_TARGET_DIR:-$ROOT/target}
        mkdir -p "$WORK/bin"
        cp "$target/release/belay" "$target/release/belay-load" "$WORK/bin/"
        BELAY_BIN=${BELAY_BIN:-$WORK/bin/belay}
        LOAD_BIN=${LOAD_BIN:-$WORK/bin/belay-load}
    fi
}

# Starts a node on `port` with the given BELAY__* assignments and waits until it is ready.
start_node() {
    local port=$1
    shift
    env "$@" BELAY__SERVER__PORT="$port" BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
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
