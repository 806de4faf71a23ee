#!/usr/bin/env bash
# scripts/redis-cluster.sh — start/stop a 3-master (no replica) Redis Cluster on
# 127.0.0.1 for tollgate's cluster integration tests.
#
# Usage:
#   scripts/redis-cluster.sh start [PORT...]     # default ports 7000 7001 7002
#   scripts/redis-cluster.sh stop  [PORT...]
#   scripts/redis-cluster.sh status [PORT...]
#   TOLLGATE_REDIS_CLUSTER_MODE=docker scripts/redis-cluster.sh start ...
#
# Modes:
#   process (default) — plain `redis-server` processes from PATH (Debian's
#                       package; scripts/redis-image.sh installs it).
#   docker            — containers of ${TOLLGATE_REDIS_IMAGE:-tollgate-redis:7}
#                       with `--network host` (build it with redis-image.sh).
# Either way every node binds and announces 127.0.0.1:PORT (cluster bus on
# PORT+10000, which must be free too), so a host client following MOVED/ASK
# reaches the right node and no traffic leaves 127.0.0.0/8. Bridge networking
# with -p mappings does not work for a cluster (see redis-image.sh).
#
# On success `start` prints the seed URLs, one per line:
#   redis://127.0.0.1:7000 ...
# Data/logs (process mode): ${TOLLGATE_REDIS_CLUSTER_DIR:-/tmp/tollgate-redis-cluster}/PORT/
set -euo pipefail

CMD="${1:-}"; shift || true
PORTS=("$@"); [ ${#PORTS[@]} -gt 0 ] || PORTS=(7000 7001 7002)
MODE="${TOLLGATE_REDIS_CLUSTER_MODE:-process}"
IMAGE="${TOLLGATE_REDIS_IMAGE:-tollgate-redis:7}"
BASE="${TOLLGATE_REDIS_CLUSTER_DIR:-/tmp/tollgate-redis-cluster}"
NODE_TIMEOUT="${TOLLGATE_REDIS_NODE_TIMEOUT:-2000}"
log() { printf 'redis-cluster: %s\n' "$*" >&2; }

COMMON_ARGS=(--bind 127.0.0.1 --protected-mode no --save '' --appendonly no
             --cluster-enabled yes --cluster-node-timeout "$NODE_TIMEOUT")

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

wait_ping() {  # port
    for _ in $(seq 100); do
        [ "$(cli "$1" PING 2>/dev/null)" = PONG ] && return 0
        sleep 0.05
    done
    log "node 127.0.0.1:$1 did not answer PING"; return 1
}

stop_nodes() {
    for p in "${PORTS[@]}"; do
        if [ "$MODE" = docker ]; then
            docker rm -f "tollgate-redis-cluster-$p" >/dev/null 2>&1 || true
        else
            local pidf="$BASE/$p/redis.pid"
            if [ -f "$pidf" ]; then
                local pid; pid="$(cat "$pidf")"
                kill "$pid" 2>/dev/null || true
                # daemonized nodes are reparented to PID 1, which may not reap
                # them: a zombie ("Z") counts as gone.
                for _ in $(seq 50); do
                    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ''|Z*) break ;; esac
                    sleep 0.05
                done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -rf "${BASE:?}/$p"
        fi
    done
}

start_nodes() {
    command -v redis-cli >/dev/null || { log "redis-cli not on PATH (apt-get install redis-tools)"; exit 1; }
    stop_nodes   # idempotent: a fresh, empty cluster every time
    for p in "${PORTS[@]}"; do
        if cli "$p" PING >/dev/null 2>&1; then
            log "port $p is already serving Redis (not ours); pick other ports"; exit 1
        fi
        if [ "$MODE" = docker ]; then
            docker run -d --name "tollgate-redis-cluster-$p" --network host "$IMAGE" \
                --port "$p" "${COMMON_ARGS[@]}" --cluster-config-file "nodes-$p.conf" >/dev/null
        else
            command -v redis-server >/dev/null || { log "redis-server not on PATH (run scripts/redis-image.sh)"; exit 1; }
            mkdir -p "$BASE/$p"
            redis-server --port "$p" "${COMMON_ARGS[@]}" --dir "$BASE/$p" \
                --cluster-config-file nodes.conf --daemonize yes \
                --pidfile "$BASE/$p/redis.pid" --logfile "$BASE/$p/redis.log"
        fi
    done
    for p in "${PORTS[@]}"; do wait_ping "$p"; done

    # Equivalent to `redis-cli --cluster create 127.0.0.1:P1 ... --cluster-replicas 0
    # --cluster-yes` (also verified), done by hand because that tool sleeps in
    # 1 s steps: split the 16384 slots evenly, give each node its own config
    # epoch, then MEET every node from the first.
    local n=${#PORTS[@]} i=0
    for p in "${PORTS[@]}"; do
        local lo=$(( i * 16384 / n )) hi=$(( (i + 1) * 16384 / n - 1 ))
        cli "$p" CLUSTER SET-CONFIG-EPOCH $(( i + 1 )) >/dev/null
        [ "$(cli "$p" CLUSTER ADDSLOTSRANGE "$lo" "$hi")" = OK ] \
            || { log "ADDSLOTSRANGE $lo $hi on $p failed"; exit 1; }
        i=$(( i + 1 ))
    done
    for p in "${PORTS[@]:1}"; do cli "${PORTS[0]}" CLUSTER MEET 127.0.0.1 "$p" >/dev/null; done

    # Wait until every node reports ok and knows every other node.
    for _ in $(seq 200); do
        local ok=1
        for p in "${PORTS[@]}"; do
            local info; info="$(cli "$p" CLUSTER INFO 2>/dev/null | tr -d '\r')"
            grep -q '^cluster_state:ok' <<<"$info" || ok=0
            grep -q "^cluster_known_nodes:${#PORTS[@]}\$" <<<"$info" || ok=0
        done
        if [ $ok = 1 ]; then
            for p in "${PORTS[@]}"; do echo "redis://127.0.0.1:$p"; done
            return 0
        fi
        sleep 0.05
    done
    log "cluster did not reach cluster_state:ok"; exit 1
}

case "$CMD" in
    start)  mkdir -p "$BASE"; start_nodes ;;
    stop)   stop_nodes ;;
    status) for p in "${PORTS[@]}"; do
                printf '%s: ' "$p"; cli "$p" CLUSTER INFO 2>/dev/null | tr -d '\r' | grep cluster_state || echo down
            done ;;
    *) echo "usage: $0 start|stop|status [PORT...]" >&2; exit 2 ;;
esac
