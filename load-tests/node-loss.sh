#!/usr/bin/env bash
# Node loss under load: NODES Belay nodes on one PostgreSQL database and one Redis behind nginx
# with the repository's proxy settings (deploy/nginx/belay.conf). `belay-load notify --resume`
# opens USERS sessions through the proxy (spread over the nodes by its round robin) and
# publishes RATE notifies a second to the first node, directly; KILL_AFTER seconds into the
# publishing the last node gets SIGKILL. Its sessions' streams end; each reopens through the
# proxy (to a live node) with `Last-Event-ID`, as an EventSource does. Reported: streams
# resumed, the time from the first stream that ended to the last one reopened, each one's time
# from its end to its `unread` frame, publish-to-receive latency (the events published while a
# session was away included), and the checks: 0 lost, 0 repeated, 0 out of cursor order.
# The Redis is a private redis-server on a free port, nginx its own instance (`nginx -p`); fresh
# database, nodes and proxy per run. Loopback only; every run is bounded in time.
#
# Usage: load-tests/node-loss.sh          (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
NODES=${NODES:-3}
USERS=${USERS:-300}
RATE=${RATE:-1000}
DURATION=${DURATION:-10}
KILL_AFTER=${KILL_AFTER:-4}
FIRST_PORT=${FIRST_PORT:-18201}
PROXY_PORT=${PROXY_PORT:-18200}
REDIS_PORT=${REDIS_PORT:-18179}
PG_ADMIN=${BELAY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/load-tests/results/node-loss-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-node-loss.XXXXXX)
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

# shellcheck source=load-tests/cluster-lib.sh
. "$ROOT/load-tests/cluster-lib.sh"
LOAD_PID=""
cleanup() {
    if [[ -n "$LOAD_PID" ]]; then
        kill "$LOAD_PID" 2>/dev/null || true
    fi
    stop_nodes
    stop_nginx
    stop_private_redis
    rm -rf "$WORK"
}
trap cleanup EXIT
binaries
command -v nginx >/dev/null || install_nchan # nginx itself; Nchan is not used here
start_private_redis "$REDIS_PORT"
REDIS=redis://127.0.0.1:$REDIS_PORT
{
    echo "load before: $(uptime)"
    echo "settings: RUNS=$RUNS NODES=$NODES USERS=$USERS RATE=$RATE DURATION=$DURATION KILL_AFTER=$KILL_AFTER"
} | tee "$OUT/settings.txt"

# nginx in front of the nodes, with the repository's locations.
start_proxy() {
    local dir="$WORK/nginx" servers=""
    port_free "$PROXY_PORT"
    rm -rf "$dir" && mkdir -p "$dir/logs" "$dir/tmp"
    for port in "$@"; do
        servers+="        server 127.0.0.1:$port max_fails=1 fail_timeout=2s;"$'\n'
    done
    cat >"$dir/nginx.conf" <<CONF
worker_processes ${NGINX_WORKERS:-1};
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections 19000;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    upstream belay_nodes {
$servers        keepalive 32;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;
        include $ROOT/deploy/nginx/belay.conf;
    }
}
CONF
    nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf"
    wait_for_port "$PROXY_PORT"
    NGINX_PIDS+=("$(cat "$dir/nginx.pid")")
}

for run in $(seq "$RUNS"); do
    fresh_database
    ports=()
    for i in $(seq 0 $((NODES - 1))); do
        port=$((FIRST_PORT + i))
        port_free "$port"
        ports+=("$port")
        start_node "$port" BELAY__DATABASE__URL="$URL" BELAY__REDIS__URL="$REDIS" \
            BELAY__CLUSTER__KEY_PREFIX="$DB" BELAY__AUTH__API_KEY=node-loss-key \
            BELAY__AUTH__JWT_SECRET=node-loss-secret-0123456789
    done
    victim=${PIDS[$((NODES - 1))]}
    start_proxy "${ports[@]}"
    echo "== $USERS sessions through the proxy, $RATE notifies/s to node ${ports[0]}, SIGKILL node ${ports[-1]} (pid $victim) after $KILL_AFTER s (run $run); load $(cut -d' ' -f1-3 /proc/loadavg)"
    log="$OUT/notify-$run.log"
    timeout 300 "$LOAD_BIN" notify --resume --url "http://127.0.0.1:$PROXY_PORT" \
        --publish-url "http://127.0.0.1:${ports[0]}" --api-key node-loss-key \
        --users "$USERS" --rate "$RATE" --duration "$DURATION" --drain 20 --open-timeout 30 \
        --out "$OUT/notify-$run.json" >"$OUT/notify-$run.txt" 2>"$log" &
    LOAD_PID=$!
    # The kill comes KILL_AFTER seconds after publishing began (the tool says when).
    wait_publishing "$log" "$LOAD_PID"
    sleep "$KILL_AFTER"
    kill -KILL "$victim"
    echo "SIGKILL sent to pid $victim at $(date +%T.%N)" | tee -a "$log"
    status=0
    wait "$LOAD_PID" || status=$?
    LOAD_PID=""
    cat "$OUT/notify-$run.txt"
    grep -E "^(error|checks)" "$log" || true
    echo "exit status $status; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    stop_nginx
    stop_nodes
done
echo "results in $OUT"
