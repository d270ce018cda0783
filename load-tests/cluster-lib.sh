# Shared by the cluster load scripts (cross-node.sh, cluster-matchmaking.sh, cluster-fanout.sh,
# node-loss.sh); sourced, not run.
# Expects ROOT, WORK and PG_ADMIN set; keeps the started nodes in PIDS and the database in DB.
# DB_SERVER=mysql puts the nodes on the machine's MariaDB/MySQL instead of PostgreSQL
# (BELAY_TEST_MYSQL_URL, as in the tests).

PIDS=()
DB=""
DB_SERVER=${DB_SERVER:-postgres}
MY_ADMIN=${BELAY_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
# The database server's process name, for cpu_of.
case "$DB_SERVER" in
    postgres) DB_PROCESS=postgres ;;
    mysql) DB_PROCESS=mariadbd ;;
    *)
        echo "DB_SERVER is postgres or mysql, not $DB_SERVER" >&2
        exit 1
        ;;
esac

# mysql://USER@HOST:PORT/DB → the mariadb client's flags.
mariadb_cli() {
    local rest=${MY_ADMIN#*://}
    local user=${rest%%@*} hostport=${rest#*@}
    hostport=${hostport%%/*}
    mariadb -u "${user%%:*}" -h "${hostport%%:*}" -P "${hostport##*:}" "$@"
}

# Stops every node started, then drops the row's database.
stop_nodes() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    if [[ -n "$DB" ]]; then
        case "$DB_SERVER" in
            postgres) psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" ;;
            mysql) mariadb_cli -e "DROP DATABASE IF EXISTS $DB" ;;
        esac
        DB=""
    fi
}

# A fresh database on DB_SERVER for the row: sets DB (dropped by stop_nodes) and its URL.
fresh_database() {
    DB="belay_load_$$_$RANDOM"
    case "$DB_SERVER" in
        postgres)
            psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
            URL="${PG_ADMIN%/*}/$DB"
            ;;
        mysql)
            mariadb_cli -e "CREATE DATABASE $DB"
            URL="${MY_ADMIN%/*}/$DB"
            ;;
    esac
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

# Starts a node on `port` with the given BELAY__* assignments and waits until it is ready. Its
# log goes to NODE_LOG when set, else to this script's output.
start_node() {
    local port=$1
    shift
    env "$@" BELAY__SERVER__PORT="$port" BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
        BELAY__LIMITS__CONNECTIONS_PER_IP=0 RUST_LOG=warn "$BELAY_BIN" >>"${NODE_LOG:-/dev/stdout}" 2>&1 &
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

# Waits until `belay-load` (pid $2, its standard error in $1) says it is publishing, or ends.
wait_publishing() {
    for _ in $(seq 600); do
        grep -qs "publishing" "$1" && return
        kill -0 "$2" 2>/dev/null || return
        sleep 0.1
    done
}

# CPU seconds (user + system) of every live process whose name is one of the arguments, summed:
# `cpu_of redis-server` before and after a row gives what the shared services spent on it.
cpu_of() {
    local total=0 ticks pid
    ticks=$(getconf CLK_TCK)
    for pid in $(pgrep -x "$(IFS='|'; echo "$*")"); do
        # Fields 14 and 15 of /proc/<pid>/stat, counted after the name's closing parenthesis.
        total=$(($(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0) + total))
    done
    awk -v t="$total" -v k="$ticks" 'BEGIN { printf "%.2f", t / k }'
}

# Nchan (nginx's pub/sub module) from the Debian packages, installed only when missing; the
# scripts run their own instances (`nginx -p <temp>`), never the system service.
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
install_nchan() {
    if command -v nginx >/dev/null && [[ -e "$NCHAN_MODULE" ]]; then
        return
    fi
    echo "installing nginx-light and libnginx-mod-nchan" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan
    # The package may start the system service; these scripts use their own instances only.
    systemctl disable --now nginx 2>/dev/null || service nginx stop 2>/dev/null || true
}

# Fails when something already listens on `port`.
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "port $1 is taken; pick others (see the settings at the top)" >&2
        exit 1
    fi
}

wait_for_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

# A private redis-server on `port`, without persistence, stopped by stop_private_redis.
PRIVATE_REDIS_PID=""
start_private_redis() {
    local port=$1
    port_free "$port"
    mkdir -p "$WORK/redis"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" --daemonize no &
    PRIVATE_REDIS_PID=$!
    wait_for_port "$port"
}

stop_private_redis() {
    if [[ -n "$PRIVATE_REDIS_PID" ]]; then
        kill "$PRIVATE_REDIS_PID" 2>/dev/null || true
        wait "$PRIVATE_REDIS_PID" 2>/dev/null || true
        PRIVATE_REDIS_PID=""
    fi
}

# An Nchan server on `port` whose channels live in the Redis at `redis_port`
# (`nchan_redis_pass` to an upstream of `nchan_redis_server`): two of them on one Redis see
# each other's messages. Its master's pid goes to NGINX_PIDS (stopped by stop_nginx).
NGINX_PIDS=()
start_nchan() {
    local port=$1 redis_port=$2 workers=${NCHAN_WORKERS:-$(nproc)}
    local dir="$WORK/nchan-$port"
    port_free "$port"
    rm -rf "$dir" && mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
    cat >"$dir/conf/nginx.conf" <<CONF
load_module $NCHAN_MODULE;
worker_processes $workers;
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
    upstream nchan_redis {
        nchan_redis_server redis://127.0.0.1:$redis_port;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location ~ ^/sub/(\w+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
            nchan_redis_pass nchan_redis;
        }
        location ~ ^/pub/(\w+)$ {
            nchan_publisher;
            nchan_channel_id \$1;
            nchan_message_timeout 5m;
            nchan_redis_pass nchan_redis;
        }
    }
}
CONF
    nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/conf/nginx.conf"
    wait_for_port "$port"
    NGINX_PIDS+=("$(cat "$dir/nginx.pid")")
    # Nchan answers 503 until its workers are connected to Redis: wait for 20 publishes in a
    # row to work (each worker connects on its own; a connection goes to any of them).
    local ok=0
    for _ in $(seq 200); do
        if curl -fs -o /dev/null -X POST -d ready "http://127.0.0.1:$port/pub/nchan_ready"; then
            ok=$((ok + 1))
            ((ok < 20)) || return 0
        else
            ok=0
            sleep 0.1
        fi
    done
    echo "nchan on port $port did not reach its Redis" >&2
    exit 1
}

# Stops every nginx started by these scripts (the masters take their workers along).
stop_nginx() {
    for pid in "${NGINX_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    NGINX_PIDS=()
}
