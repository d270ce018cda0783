#!/usr/bin/env bash
# Soak: one release node on SQLite (fresh file) holds SESSIONS SSE sessions for DURATION seconds
# under steady traffic, and memory and open files must stay flat after the warm-up. Three
# belay-load processes run side by side, each bounded in time:
#   - `soak` holds the sessions (client processes of PER_WORKER each), broadcasts to all of them
#     at BROADCAST_RATE, and every EVERY seconds samples the node: RSS, open files
#     (/proc/PID/fd), the `belay_sessions_open` gauge of /metrics, the p99 of broadcast delivery
#     over the interval, and the load average. It writes soak.json, soak.csv and soak.svg and
#     prints the table;
#   - `notify` sends NOTIFY_RATE targeted notifications per second to NOTIFY_USERS sessions of
#     its own, and checks loss, duplicates and order over the whole run;
#   - `matchmaking` rounds of CLIMBERS climbers (open streams, join, match, ready, confirm,
#     report the result, close) every MATCH_PAUSE seconds until `soak` ends: streams opened and
#     closed all along, and every match ends as a played one does.
# Loopback only.
#
# Usage: load-tests/soak.sh                  (settings below, as environment variables)
#        DURATION=150 WARMUP=60 load-tests/soak.sh     (a short run, to check the setup)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-1800}          # seconds the sessions are held, once open
EVERY=${EVERY:-10}                  # seconds between samples
WARMUP=${WARMUP:-300}               # seconds before memory and files must be flat
SESSIONS=${SESSIONS:-15000}
PER_WORKER=${PER_WORKER:-5000}      # sessions per client process
BROADCAST_RATE=${BROADCAST_RATE:-1} # broadcasts per second, to every session
NOTIFY_USERS=${NOTIFY_USERS:-200}
NOTIFY_RATE=${NOTIFY_RATE:-50}      # notifications per second
CLIMBERS=${CLIMBERS:-200}           # per matchmaking round
MATCH_PAUSE=${MATCH_PAUSE:-10}      # seconds between matchmaking rounds
PORT=${PORT:-18110}
OUT=${OUT:-$ROOT/load-tests/results/soak-$(date +%Y%m%d-%H%M%S)}
WORK=$(mktemp -d /tmp/belay-soak.XXXXXX)
mkdir -p "$OUT/matchmaking" "$WORK/bin"

# The node holds every session's socket: take the whole hard limit of open files.
ulimit -n "$(ulimit -Hn)"
if ((SESSIONS + NOTIFY_USERS + CLIMBERS + 500 > $(ulimit -n))); then
    echo "$SESSIONS sessions and the drivers' do not fit $(ulimit -n) open files" >&2
    exit 1
fi

SERVER_PID=""
DRIVERS=()
cleanup() {
    for pid in "${DRIVERS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Binaries: given, or built now and copied, so a build elsewhere cannot swap them mid-run.
if [[ -z "${BELAY_BIN:-}" || -z "${LOAD_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --locked -p belay -p belay-load --bins)
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    cp "$TARGET/release/belay" "$TARGET/release/belay-load" "$WORK/bin/"
    BELAY_BIN=${BELAY_BIN:-$WORK/bin/belay}
    LOAD_BIN=${LOAD_BIN:-$WORK/bin/belay-load}
fi
URL=http://127.0.0.1:$PORT

wait_for_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on port $PORT" >&2
    return 1
}

# The open-session gauge of /metrics (empty if it cannot be read).
sessions_open() {
    curl -fsS "$URL/metrics" 2>/dev/null | awk '$1 == "belay_sessions_open" { print $2 }'
}

{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
    echo "settings: DURATION=$DURATION EVERY=$EVERY WARMUP=$WARMUP SESSIONS=$SESSIONS PER_WORKER=$PER_WORKER BROADCAST_RATE=$BROADCAST_RATE NOTIFY_USERS=$NOTIFY_USERS NOTIFY_RATE=$NOTIFY_RATE CLIMBERS=$CLIMBERS MATCH_PAUSE=$MATCH_PAUSE"
    echo "before: $(uptime)"
} | tee "$OUT/settings.txt"

# Fresh SQLite file; caps and rate limits raised for load (one user per session here).
BELAY__SERVER__PORT=$PORT \
BELAY__DATABASE__URL="sqlite://$WORK/belay.db" \
BELAY__AUTH__DEV_SECRETS_FILE="$WORK/dev-secrets.json" \
BELAY__SSE__MAX_SESSIONS_PER_USER=64 \
BELAY__LIMITS__USER_REQUESTS_PER_SEC=0 \
BELAY__LIMITS__CONNECTIONS_PER_IP=0 \
BELAY__LOG__FORMAT=json RUST_LOG=warn \
    "$BELAY_BIN" >"$OUT/belay.log" 2>&1 &
SERVER_PID=$!
wait_for_port

"$LOAD_BIN" soak --url "$URL" --server-pid "$SERVER_PID" --sessions "$SESSIONS" \
    --per-worker "$PER_WORKER" --duration "$DURATION" --every "$EVERY" --warmup "$WARMUP" \
    --broadcast-rate "$BROADCAST_RATE" --out "$OUT/soak.json" >"$OUT/soak.txt" &
SOAK_PID=$!
DRIVERS+=("$SOAK_PID")

# The drivers start once the held sessions are open, so that the soak's clock and theirs agree.
for _ in $(seq 600); do
    open=$(sessions_open)
    if [[ -n "$open" ]] && ((open >= SESSIONS)); then
        break
    fi
    kill -0 "$SOAK_PID" 2>/dev/null || break
    sleep 0.5
done

"$LOAD_BIN" notify --url "$URL" --users "$NOTIFY_USERS" --rate "$NOTIFY_RATE" \
    --duration "$DURATION" --warmup 5 --drain 10 --out "$OUT/notify.json" \
    >"$OUT/notify.txt" 2>"$OUT/notify.err" &
NOTIFY_PID=$!
DRIVERS+=("$NOTIFY_PID")

(
    round=0 failed=0
    while kill -0 "$SOAK_PID" 2>/dev/null; do
        round=$((round + 1))
        if ! "$LOAD_BIN" matchmaking --url "$URL" --server-pid "$SERVER_PID" \
            --climbers "$CLIMBERS" --per-worker "$CLIMBERS" --open-concurrency 16 --settle \
            --out "$OUT/matchmaking/round-$round.json" \
            >"$OUT/matchmaking/round-$round.txt" 2>/dev/null; then
            failed=$((failed + 1))
        fi
        sleep "$MATCH_PAUSE"
    done
    echo "matchmaking: $round rounds of $CLIMBERS climbers, $failed with an error or a failed check"
) >"$OUT/matchmaking.txt" &
MATCH_PID=$!
DRIVERS+=("$MATCH_PID")

status=0
wait "$SOAK_PID" || status=$?
wait "$NOTIFY_PID" || { echo "notify: exit $?, see $OUT/notify.txt" >&2; status=1; }
wait "$MATCH_PID" || true
DRIVERS=()
echo "after: $(uptime)" | tee -a "$OUT/settings.txt"

cat "$OUT/soak.txt"
echo
grep -E '^  (sessions|events|lost|duplicates|latency ms)' "$OUT/notify.txt" | sed 's/^/notify /' || true
cat "$OUT/matchmaking.txt"
echo "belay log: $(grep -c '"level":"WARN"' "$OUT/belay.log" || true) warnings, $(grep -c '"level":"ERROR"' "$OUT/belay.log" || true) errors" |
    tee -a "$OUT/settings.txt"
echo "results in $OUT" >&2
exit "$status"
