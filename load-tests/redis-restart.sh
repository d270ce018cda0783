#!/usr/bin/env bash
# A Redis restart under load: two Belay nodes on one database (DB_SERVER, PostgreSQL by default)
# and one private Redis. `belay-load notify` holds USERS sessions on node B and publishes RATE
# notifies a second to node A, so every event crosses through Redis; KILL_AFTER seconds into the
# publishing the Redis gets SIGKILL, and DOWN_FOR seconds later it starts again, empty, on the
# same port. The nodes keep their sessions open throughout: events committed while Redis is away
# reach B's sessions when B's bridge is back and catches every session up from the store.
# Reported: the checks (0 lost, 0 repeated, 0 out of cursor order), publish-to-receive latency
# over the run, and each node's `belay_bridge_up` as it changed (polled every 50 ms): how long
# after Redis came back each bridge was up again. Fresh database, nodes and Redis per run.
# Loopback only; every run is bounded in time.
#
# Usage: load-tests/redis-restart.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
USERS=${USERS:-1000}
RATE=${RATE:-1000}
DURATION=${DURATION:-12}
KILL_AFTER=${KILL_AFTER:-4}
DOWN_FOR=${DOWN_FOR:-2}
PORT_A=${PORT_A:-18231}
PORT_B=${PORT_B:-18232}
REDIS_PORT=${REDIS_PORT:-18179}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/redis-restart-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-redis-restart.XXXXXX)
mkdir -p "$OUT"

# shellcheck source=load-tests/cluster-lib.sh
. "$ROOT/load-tests/cluster-lib.sh"
LOAD_PID="" POLL_PID=""
cleanup() {
    for pid in "$LOAD_PID" "$POLL_PID"; do
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    done
    stop_nodes
    stop_private_redis
    rm -rf "$WORK"
}
trap cleanup EXIT
binaries
{
    echo "load before: $(uptime)"
    echo "settings: RUNS=$RUNS DB_SERVER=$DB_SERVER USERS=$USERS RATE=$RATE DURATION=$DURATION KILL_AFTER=$KILL_AFTER DOWN_FOR=$DOWN_FOR"
} | tee "$OUT/settings.txt"

# Prints "<unix time> <port> <0|1>" whenever a node's belay_bridge_up changes, every 50 ms.
poll_bridges() {
    declare -A last
    while true; do
        for port in "$@"; do
            up=$(curl -fs --max-time 1 "http://127.0.0.1:$port/metrics" |
                awk '$1 == "belay_bridge_up" { print $2 }' || true)
            if [[ -n "$up" && "$up" != "${last[$port]:-}" ]]; then
                echo "$(date +%s.%N) $port $up"
                last[$port]=$up
            fi
        done
        sleep 0.05
    done
}

for run in $(seq "$RUNS"); do
    start_private_redis "$REDIS_PORT"
    REDIS=redis://127.0.0.1:$REDIS_PORT
    fresh_database
    for port in "$PORT_A" "$PORT_B"; do
        port_free "$port"
        start_node "$port" BELAY__DATABASE__URL="$URL" BELAY__REDIS__URL="$REDIS" \
            BELAY__CLUSTER__KEY_PREFIX="$DB" BELAY__AUTH__API_KEY=redis-restart-key \
            BELAY__AUTH__JWT_SECRET=redis-restart-secret-0123456789 \
            BELAY__SSE__MAX_SESSIONS_PER_USER=64
    done
    echo "== $USERS sessions on node B, $RATE notifies/s to node A, Redis SIGKILLed after $KILL_AFTER s and started again $DOWN_FOR s later (run $run); load $(cut -d' ' -f1-3 /proc/loadavg)"
    bridges="$OUT/bridges-$run.txt"
    poll_bridges "$PORT_A" "$PORT_B" >"$bridges" &
    POLL_PID=$!
    log="$OUT/notify-$run.log"
    timeout 300 "$LOAD_BIN" notify --url "http://127.0.0.1:$PORT_B" \
        --publish-url "http://127.0.0.1:$PORT_A" --api-key redis-restart-key \
        --users "$USERS" --rate "$RATE" --duration "$DURATION" --drain 20 \
        --out "$OUT/notify-$run.json" >"$OUT/notify-$run.txt" 2>"$log" &
    LOAD_PID=$!
    wait_publishing "$log" "$LOAD_PID"
    sleep "$KILL_AFTER"
    killed=$(date +%s.%N)
    kill -KILL "$PRIVATE_REDIS_PID"
    wait "$PRIVATE_REDIS_PID" 2>/dev/null || true
    PRIVATE_REDIS_PID=""
    sleep "$DOWN_FOR"
    start_private_redis "$REDIS_PORT"
    back=$(date +%s.%N)
    status=0
    wait "$LOAD_PID" || status=$?
    LOAD_PID=""
    kill "$POLL_PID" 2>/dev/null || true
    wait "$POLL_PID" 2>/dev/null || true
    POLL_PID=""
    cat "$OUT/notify-$run.txt"
    grep -E "^(error|checks)" "$log" || true
    # Each node's bridge: down after the kill, up again after Redis was back.
    awk -v killed="$killed" -v back="$back" '
        $3 == 0 && $1 >= killed && !(($2) in down) { down[$2] = $1 - killed }
        $3 == 1 && $1 >= back && !(($2) in up) { up[$2] = $1 - back }
        END {
            for (port in up) {
                printf "node %s: bridge down %.2f s after the kill, up %.2f s after Redis was back\n", port, (port in down) ? down[port] : -1, up[port]
            }
        }' "$bridges" | sort | tee -a "$OUT/notify-$run.txt"
    echo "exit status $status; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    stop_nodes
    stop_private_redis
done
echo "results in $OUT"
