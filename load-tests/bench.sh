#!/usr/bin/env bash
# Belay and Nchan side by side: the same client (belay-load) runs `connections` and `fanout`
# against each, with a fresh server per row, `belay-load compare` prints the ratios
# Belay / Nchan, and `belay-load plot` draws each fan-out row of both servers on one chart. Nchan runs from its own nginx prefix under a temp folder (its own config, pid
# file and logs), never as the system nginx service. Loopback only.
#
# Usage: load-tests/bench.sh            (settings below, as environment variables)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}                        # runs of every row, to show the spread
SESSIONS=${SESSIONS:-18000}            # connections: sessions held
BURST=${BURST:-20}                     # connections: broadcasts before memory is read again
FANOUT_SESSIONS=${FANOUT_SESSIONS:-15000}
BROADCASTS=${BROADCASTS:-100}          # fanout, back to back
PACED_BROADCASTS=${PACED_BROADCASTS:-100}
PACED_RATE=${PACED_RATE:-5}            # fanout, broadcasts per second
PER_WORKER=${PER_WORKER:-5000}         # sessions per client process
SERVERS=${SERVERS:-"belay nchan"}
BELAY_PORT=${BELAY_PORT:-18080}
NCHAN_PORT=${NCHAN_PORT:-18090}
NCHAN_WORKERS=${NCHAN_WORKERS:-$(nproc)}   # Belay runs one worker per core by default
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
OUT=${OUT:-$ROOT/load-tests/results/bench-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-bench.XXXXXX)
mkdir -p "$OUT" "$WORK/bin"

SERVER_PID=""
cleanup() {
    # The trap can fire before stop_server is defined (a failed build).
    if declare -F stop_server >/dev/null; then
        stop_server
    fi
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

install_nchan() {
    if command -v nginx >/dev/null && [[ -e "$NCHAN_MODULE" ]]; then
        return
    fi
    echo "installing nginx and libnginx-mod-nchan" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan
    # The package starts the system service; this script uses its own instance only.
    systemctl disable --now nginx 2>/dev/null || service nginx stop 2>/dev/null || true
}

wait_for_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on port $port" >&2
    return 1
}

start_belay() {
    local dir="$WORK/belay"
    rm -rf "$dir" && mkdir -p "$dir"
    # Fresh SQLite file; caps and rate limits raised for load (one user per session here).
    BELAY__SERVER__PORT=$BELAY_PORT \
    BELAY__DATABASE__URL="sqlite://$dir/belay.db" \
    BELAY__AUTH__DEV_SECRETS_FILE="$dir/dev-secrets.json" \
    BELAY__SSE__MAX_SESSIONS_PER_USER=64 \
    BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
    BELAY__LIMITS__CONNECTIONS_PER_IP=0 \
    BELAY__LOG__FORMAT=json RUST_LOG=warn \
        "$BELAY_BIN" >"$dir/belay.log" 2>&1 &
    SERVER_PID=$!
    wait_for_port "$BELAY_PORT"
}

start_nchan() {
    local dir="$WORK/nchan"
    rm -rf "$dir" && mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
    cat >"$dir/conf/nginx.conf" <<CONF
load_module $NCHAN_MODULE;
worker_processes $NCHAN_WORKERS;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections 19500;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    nchan_shared_memory_size 256m;
    server {
        listen 127.0.0.1:$NCHAN_PORT backlog=4096;
        location ~ ^/sub/(\w+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/(\w+)$ {
            nchan_publisher;
            nchan_channel_id \$1;
            nchan_message_timeout 5m;
        }
    }
}
CONF
    nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/conf/nginx.conf"
    wait_for_port "$NCHAN_PORT"
    SERVER_PID=$(cat "$dir/nginx.pid")
}

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        SERVER_PID=""
        # Let the kernel finish closing the last run's sockets.
        sleep 1
    fi
}

# One row: a fresh server, one scenario, its result file.
row() {
    local server=$1 scenario=$2 name=$3
    shift 3
    local url pid_args=()
    if [[ $server == belay ]]; then
        start_belay
        url=http://127.0.0.1:$BELAY_PORT
        pid_args=(--server-pid "$SERVER_PID")
    else
        start_nchan
        url=http://127.0.0.1:$NCHAN_PORT
    fi
    echo "== $name ($server)" >&2
    "$LOAD_BIN" "$scenario" --server "$server" --url "$url" --per-worker "$PER_WORKER" \
        "${pid_args[@]}" --out "$OUT/$name-$server.json" "$@" | tee "$OUT/$name-$server.txt"
    stop_server
}

[[ $SERVERS == *nchan* ]] && install_nchan
{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
    echo "settings: RUNS=$RUNS SESSIONS=$SESSIONS BURST=$BURST FANOUT_SESSIONS=$FANOUT_SESSIONS BROADCASTS=$BROADCASTS PACED_BROADCASTS=$PACED_BROADCASTS PACED_RATE=$PACED_RATE"
} | tee "$OUT/settings.txt"

for run in $(seq "$RUNS"); do
    for server in $SERVERS; do
        row "$server" connections "connections-$run" --sessions "$SESSIONS" --burst "$BURST" --hold 2
        row "$server" fanout "fanout-b2b-$run" --sessions "$FANOUT_SESSIONS" --broadcasts "$BROADCASTS"
        row "$server" fanout "fanout-paced-$run" --sessions "$FANOUT_SESSIONS" \
            --broadcasts "$PACED_BROADCASTS" --rate "$PACED_RATE"
    done
done

"$LOAD_BIN" compare "$OUT"/*.json | tee "$OUT/compare.txt"
# Each fan-out row of each run with both servers on one chart.
for row in "$OUT"/fanout-*-belay.json; do
    other=${row%-belay.json}-nchan.json
    if [[ -e $row && -e $other ]]; then
        name=$(basename "${row%-belay.json}")
        "$LOAD_BIN" plot --title "$name: Belay and Nchan, $FANOUT_SESSIONS sessions" \
            --out "${row%-belay.json}.svg" "$row" "$other"
    fi
done
echo "results in $OUT" >&2
