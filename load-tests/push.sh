#!/usr/bin/env bash
# The `push` scenario: a release Belay node on a fresh database, a fake FCM (`belay-load
# fake-fcm`, answering after LATENCY_MS) and the load client, one fresh set per row:
#   push     10,000 offline climbers with one FCM device each get one event each (a wave),
#            while ~500 online users receive live notifies over SSE;
#   faults   the same with 1% dead tokens (404 UNREGISTERED) and 5% of sends answered 503;
#   baseline the live notifies alone (devices registered, no wave).
# Push settings: grace_ms=0, poll_ms=50, concurrency as configured (CONCURRENCY overrides it).
# Before each row it records `uptime`, and with WAIT_FOR set (a fragment of another
# benchmark's command line) waits until no such belay-load runs. Loopback only; every process is
# bounded in time and stopped at the end, every database dropped.
#
# Usage: load-tests/push.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BACKENDS=${BACKENDS:-sqlite}
ROWS=${ROWS:-"push faults baseline"}
RUNS=${RUNS:-1}
CLIMBERS=${CLIMBERS:-10000}
ONLINE=${ONLINE:-500}
LIVE_RATE=${LIVE_RATE:-100}
LIVE_SECONDS=${LIVE_SECONDS:-20}
LATENCY_MS=${LATENCY_MS:-50}
CONCURRENCY=${CONCURRENCY:-}
PORT=${PORT:-18280}
FAKE_PORT=${FAKE_PORT:-18281}
WAIT_FOR=${WAIT_FOR:-}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/push-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-push.XXXXXX)
mkdir -p "$OUT" "$WORK/bin"

SERVER_PID=""
FAKE_PID=""
DB=""
stop() {
    local pid
    for pid in "$SERVER_PID" "$FAKE_PID"; do
        if [[ -n "$pid" ]]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    SERVER_PID=""
    FAKE_PID=""
    if [[ "$DB" == postgres:* ]]; then
        psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS ${DB#postgres:} WITH (FORCE)"
    fi
    DB=""
}
cleanup() {
    stop
    rm -rf "$WORK"
}
trap cleanup EXIT

# Binaries: given, or built now and copied, so a build elsewhere cannot swap them mid-run.
if [[ -z "${BELAY_BIN:-}" || -z "${LOAD_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p belay -p belay-load --bins)
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    cp "$TARGET/release/belay" "$TARGET/release/belay-load" "$WORK/bin/"
    BELAY_BIN=${BELAY_BIN:-$WORK/bin/belay}
    LOAD_BIN=${LOAD_BIN:-$WORK/bin/belay-load}
fi

wait_for_quiet() {
    local waited=0
    [[ -z "$WAIT_FOR" ]] && return 0
    while pgrep -af belay-load | grep -F -- "$WAIT_FOR" >/dev/null; do
        if ((waited == 0)); then echo "waiting for the belay-load runs of $WAIT_FOR to end"; fi
        sleep 5
        waited=$((waited + 5))
        if ((waited > 1800)); then
            echo "still busy after 30 minutes; giving up" >&2
            exit 1
        fi
    done
}

start_fake() {
    "$LOAD_BIN" fake-fcm --port "$FAKE_PORT" --latency-ms "$LATENCY_MS" --lifetime 600 \
        --credentials-out "$WORK/service-account.json" "$@" 2>"$WORK/fake.log" &
    FAKE_PID=$!
    for _ in $(seq 100); do
        if curl -fs "http://127.0.0.1:$FAKE_PORT/stats" >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "the fake FCM did not start" >&2
    cat "$WORK/fake.log" >&2
    exit 1
}

start_server() {
    local backend=$1 url name
    name="belay_push_$$_$RANDOM"
    case "$backend" in
        sqlite) url="sqlite://$WORK/$name.db" ;;
        postgres)
            psql "$PG_ADMIN" -qc "CREATE DATABASE $name" >/dev/null
            DB="postgres:$name"
            url="${PG_ADMIN%/*}/$name"
            ;;
        *) echo "unknown backend $backend" >&2; exit 1 ;;
    esac
    local extra=()
    if [[ -n "$CONCURRENCY" ]]; then extra+=("BELAY__PUSH__CONCURRENCY=$CONCURRENCY"); fi
    env "${extra[@]}" \
    BELAY__SERVER__PORT=$PORT \
    BELAY__DATABASE__URL=$url \
    BELAY__AUTH__DEV_SECRETS_FILE=$WORK/secrets.json \
    BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
    BELAY__LIMITS__CONNECTIONS_PER_IP=0 \
    BELAY__SSE__MAX_SESSIONS_PER_USER=64 \
    BELAY__PUSH__FCM__CREDENTIALS_FILE=$WORK/service-account.json \
    BELAY__PUSH__FCM__BASE_URL=http://127.0.0.1:$FAKE_PORT \
    BELAY__PUSH__GRACE_MS=0 \
    BELAY__PUSH__POLL_MS=50 \
    RUST_LOG=warn "$BELAY_BIN" >"$WORK/belay.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 200); do
        if curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "belay did not become ready on $url" >&2
    tail -20 "$WORK/belay.log" >&2
    exit 1
}

for run in $(seq "$RUNS"); do
    for backend in $BACKENDS; do
        for row in $ROWS; do
            fake_flags=()
            load_flags=()
            case "$row" in
                push) ;;
                faults) fake_flags=(--dead-percent 1 --unavailable-percent 5) ;;
                baseline) load_flags=(--no-wave) ;;
                *) echo "unknown row $row" >&2; exit 1 ;;
            esac
            wait_for_quiet
            name="$backend-$row${CONCURRENCY:+-c$CONCURRENCY}-$run"
            echo "== $name  load: $(uptime | sed 's/.*load average: //')" \
                | tee "$OUT/$name.txt"
            start_fake "${fake_flags[@]}"
            start_server "$backend"
            timeout 180 "$LOAD_BIN" push --url "http://127.0.0.1:$PORT" \
                --fake "http://127.0.0.1:$FAKE_PORT" --server-pid "$SERVER_PID" \
                --climbers "$CLIMBERS" --online "$ONLINE" --live-rate "$LIVE_RATE" \
                --live-seconds "$LIVE_SECONDS" --drain 120 "${load_flags[@]}" \
                --out "$OUT/$name.json" | tee -a "$OUT/$name.txt" || true
            echo "after: $(uptime | sed 's/.*load average: //')" | tee -a "$OUT/$name.txt"
            grep -ci warn "$WORK/belay.log" | sed "s/^/belay warnings: /" | tee -a "$OUT/$name.txt" || true
            cp "$WORK/belay.log" "$OUT/$name.belay.log"
            stop
        done
    done
done
echo "results in $OUT"
