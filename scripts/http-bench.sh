#!/usr/bin/env bash
# End-to-end HTTP benchmark: examples/bench_server.rs loaded with wrk, over 127.0.0.1 only. The
# server is built as the package tollgate-bench-server (crates/bench-server), so tollgate has its
# default features only, as a user's build would (the root crate's examples get every feature
# its tests enable, `metrics` among them).
#
#   bash scripts/http-bench.sh                 # 2 rounds x 7 variants x 5 s, about 3 minutes
#   DURATION=10s ROUNDS=3 bash scripts/http-bench.sh
#
# Variants (see examples/bench_server.rs): bare (axum hello world), memory (tollgate, memory
# store, the two VMArea buckets stacked), ip (tollgate, one per-IP GCRA limit with its headers),
# redis (memory's limiter on RedisStore), redis-counters (the same with fixed_window_counters),
# governor (tower_governor per IP, with its headers), and
# two floods where every request after the first is a 429: flood (tollgate) and governor-flood
# (tower_governor). Every request carries `x-api-key`, so the per-token bucket applies; outside
# the floods the quotas admit the whole load. Variants alternate (A B C D A B C D ...) so that drift in the
# machine's load hits them all alike; the summary gives the median of the rounds per variant and
# its ratio to bare axum.
#
# Needs: wrk (Debian package `wrk`), and for the redis variant REDIS_URL or redis-server
# (Debian package `redis-server`). Installs nothing. Starts a redis-server on a free loopback
# port unless REDIS_URL is set, and stops everything it started on exit.
#
# Pinning (taskset, when there are 2+ CPUs): the server alone on CPUs 1..n-1; wrk and the
# redis-server on CPU 0 (in production Redis runs elsewhere: the server's core stays its own).
# Each run prints the CPU used by the server, wrk, redis-server and every other process on the
# machine; a run disturbed by other processes is flagged NOISY.
#
# Settings (environment): DURATION (per run, default 5s), WARMUP (unmeasured wrk run before each
# measured one, default 1s; 0 to skip), ROUNDS (default 2), CONNECTIONS (default 64), THREADS
# (wrk threads, default 1), VARIANTS (default "bare memory ip redis redis-counters governor flood governor-flood"), PIN (1: pin with
# taskset when available, default; 0: don't), NOISY (flag a run during which other processes
# used more than this % of a CPU, default 25), WAIT_QUIET (on a shared machine: before each run,
# wait up to this many seconds for other processes to calm down below NOISY, default 0), SKIP_BUILD (1: use the built binary as is),
# CARGO_TARGET_DIR (where the binary is built).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
VARIANTS=${VARIANTS:-bare memory ip redis redis-counters governor flood governor-flood}
PIN=${PIN:-1}
NOISY=${NOISY:-25}
WAIT_QUIET=${WAIT_QUIET:-0}
PATH_UNDER_TEST=/api/public/v1/vms

die() {
    echo "http-bench: $*" >&2
    exit 1
}

command -v wrk >/dev/null || die "wrk not found: install it (Debian/Ubuntu: apt-get install wrk)"
command -v curl >/dev/null || die "curl not found: install it (apt-get install curl)"

# --- cleanup: everything this script starts is recorded here and stopped on exit -----------
PIDS=()
TMP=$(mktemp -d)
cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port on 127.0.0.1 that nothing listens on now, below the kernel's ephemeral range (so no
# client socket, e.g. one of wrk's, holds it).
EPHEMERAL_LOW=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
PORT_LOW=10000
[ "$EPHEMERAL_LOW" -gt $((PORT_LOW + 1000)) ] || PORT_LOW=1024
free_port() {
    local port
    for _ in $(seq 200); do
        port=$((PORT_LOW + RANDOM % (EPHEMERAL_LOW - PORT_LOW)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free port on 127.0.0.1"
}

# --- CPU pinning: the server alone on its cores; wrk (and the redis-server, which in production
# would run on another machine) on CPU 0 -------------------------------------------------------
CPUS=$(nproc)
WRK_PIN=()
SERVER_PIN=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$CPUS" -ge 2 ]; then
    WRK_PIN=(taskset -c 0)
    SERVER_PIN=(taskset -c "1-$((CPUS - 1))")
    PINNING="wrk and redis-server on CPU 0; the server alone on CPU 1-$((CPUS - 1)) (taskset)"
else
    PINNING="none (PIN=$PIN, taskset $(command -v taskset >/dev/null && echo found || echo missing), $CPUS CPUs)"
fi

# --- the server binary ---------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/bench_server"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "== cargo build --release -p tollgate-bench-server (target dir $TARGET_DIR)"
    cargo build --release -p tollgate-bench-server --quiet
fi
[ -x "$BIN" ] || die "$BIN missing: cargo build --release -p tollgate-bench-server"

# --- Redis for the redis variant -------------------------------------------------------------
REDIS_NOTE=""
REDIS_PID=""
if [[ " $VARIANTS " == *" redis "* || " $VARIANTS " == *" redis-counters "* ]]; then
    if [ -n "${REDIS_URL:-}" ]; then
        REDIS_NOTE="REDIS_URL=$REDIS_URL"
    elif command -v redis-server >/dev/null; then
        port=$(free_port)
        mkdir -p "$TMP/redis"
        "${WRK_PIN[@]}" redis-server --port "$port" --bind 127.0.0.1 --protected-mode no \
            --save "" --appendonly no --dir "$TMP/redis" >"$TMP/redis.log" 2>&1 &
        REDIS_PID=$!
        PIDS+=("$REDIS_PID")
        export REDIS_URL="redis://127.0.0.1:$port"
        for _ in $(seq 100); do
            if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then break; fi
            sleep 0.05
        done
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] || die "redis-server did not start: $(cat "$TMP/redis.log")"
        REDIS_NOTE="redis-server $(redis-server --version | grep -o 'v=[0-9.]*') on 127.0.0.1:$port"
    else
        echo "http-bench: skipping the redis variant: set REDIS_URL or install redis-server (apt-get install redis-server)" >&2
        VARIANTS=$(echo " $VARIANTS " | sed 's/ redis-counters / /; s/ redis / /')
    fi
fi

# --- one run -----------------------------------------------------------------------------------
# wrk's latency figures to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { printf "nan" } }'
}

# CPU accounting, so that a busy machine shows in the output: jiffies used by the whole machine
# (/proc/stat, all CPUs), by one process (/proc/PID/stat: utime + stime, all threads), and by
# this shell's waited-for children (bash `times`: that is wrk).
TCK=$(getconf CLK_TCK)
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# (`times` must run in this shell, not in a pipe or $(...): a subshell has children of its own.)
children_ticks() {
    times >"$TMP/times"
    awk -v tck="$TCK" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%.0f\n", t * tck }' "$TMP/times"
}
now_ns() { date +%s%N; }

# Waits (at most WAIT_QUIET seconds) until other processes use less than NOISY % of a CPU.
wait_quiet() {
    local deadline=$((SECONDS + WAIT_QUIET)) m0 m1 busy
    while :; do
        m0=$(machine_ticks)
        sleep 1
        m1=$(machine_ticks)
        busy=$(((m1 - m0) * 100 / TCK))
        [ "$busy" -le "$NOISY" ] && return
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "   (the machine is still busy: $busy% of a CPU; measuring anyway)"
            return
        fi
    done
}

# run VARIANT: sets RPS, P99 (ms), NON2XX, and CPU use during the measured run in % of one CPU:
# SERVER_CPU, WRK_CPU, REDIS_CPU, OTHER_CPU (everything else on the machine). Not run in a
# subshell: the server's pid must reach the exit trap.
run() {
    local variant=$1 port url pid out status t0 t1 m0 m1 s0 s1 c0 c1 r0 r1 attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        url="http://127.0.0.1:$port$PATH_UNDER_TEST"
        TOLLGATE_ADDR="127.0.0.1:$port" "${SERVER_PIN[@]}" "$BIN" "$variant" >"$TMP/server.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        status=""
        for _ in $(seq 200); do
            status=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: bench' "$url" 2>/dev/null || true)
            # A flood variant admits its first request only.
            [ "$status" = 200 ] && break
            [[ "$variant" == *flood ]] && [ "$status" = 429 ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        [ "$status" = 200 ] && break
        [[ "$variant" == *flood ]] && [ "$status" = 429 ] && break
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        unset 'PIDS[-1]'
        # Taken between the check and the bind: try another port.
        grep -q AddrInUse "$TMP/server.log" && [ "$attempt" -lt 3 ] && continue
        die "bench_server $variant answers '$status', not 200: $(cat "$TMP/server.log")"
    done
    if [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
        "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H 'x-api-key: bench' "$url" >/dev/null
    fi
    children_ticks >"$TMP/c0"
    t0=$(now_ns) m0=$(machine_ticks) s0=$(proc_ticks "$pid")
    r0=$(if [ -n "$REDIS_PID" ]; then proc_ticks "$REDIS_PID"; else echo 0; fi)
    "${WRK_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'x-api-key: bench' "$url" >"$TMP/wrk.out"
    t1=$(now_ns) m1=$(machine_ticks) s1=$(proc_ticks "$pid")
    children_ticks >"$TMP/c1"
    c0=$(cat "$TMP/c0") c1=$(cat "$TMP/c1")
    r1=$(if [ -n "$REDIS_PID" ]; then proc_ticks "$REDIS_PID"; else echo 0; fi)
    out=$(cat "$TMP/wrk.out")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'PIDS[-1]'
    RPS=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    NON2XX=${NON2XX:-0}
    read -r SERVER_CPU WRK_CPU REDIS_CPU OTHER_CPU < <(awk -v w="$(((t1 - t0) / 1000))" -v tck="$TCK" \
        -v m=$((m1 - m0)) -v s=$((s1 - s0)) -v c=$((c1 - c0)) -v r=$((r1 - r0)) 'BEGIN {
            f = 100 / tck / (w / 1e6)
            o = (m - s - c - r) * f; if (o < 0) o = 0
            printf "%.0f %.0f %.0f %.0f\n", s * f, c * f, r * f, o }')
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "== HTTP bench: GET $PATH_UNDER_TEST with x-api-key, wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP), $ROUNDS rounds"
echo "   variants: $VARIANTS"
echo "   machine: $CPUS CPUs; pinning: $PINNING"
if [ -n "$REDIS_NOTE" ]; then echo "   redis: $REDIS_NOTE"; fi
echo "   (wrk shares the machine with the server: figures are comparative, ratios from this run;"
echo "    CPU% is per run, in % of one CPU; 'other processes' is load from outside this bench)"
echo

: >"$TMP/results"
NOISY_RUNS=0
for round in $(seq "$ROUNDS"); do
    for variant in $VARIANTS; do
        if [ "$WAIT_QUIET" -gt 0 ]; then wait_quiet; fi
        run "$variant"
        printf 'round %d  %-14s %10.0f req/s   p99 %8.3f ms   CPU%%: server %3d, wrk %3d, redis %3d, other processes %3d' \
            "$round" "$variant" "$RPS" "$P99" "$SERVER_CPU" "$WRK_CPU" "$REDIS_CPU" "$OTHER_CPU"
        if [ "$NON2XX" != 0 ] && [[ "$variant" != *flood ]]; then printf '   WARNING: %s non-2xx responses' "$NON2XX"; fi
        if [ "$OTHER_CPU" -gt "$NOISY" ]; then
            printf '   NOISY'
            NOISY_RUNS=$((NOISY_RUNS + 1))
        fi
        echo
        noisy=0
        if [ "$OTHER_CPU" -gt "$NOISY" ]; then noisy=1; fi
        echo "$variant $RPS $P99 $NON2XX $noisy" >>"$TMP/results"
    done
done

echo
# The rows a variant's summary uses: its quiet runs if it has any, else all its runs.
rows() {
    awk -v v="$1" '$1 == v && $5 == 0' "$TMP/results" | grep . ||
        awk -v v="$1" '$1 == v' "$TMP/results"
}

echo "median per variant (of its quiet runs when it has any; NOISY runs are left out then):"
bare_rps=$(rows bare | awk '{ print $2 }' | median)
printf '%-14s %12s %12s %14s %8s\n' variant "req/s" "p99 (ms)" "ratio to bare" runs
for variant in $VARIANTS; do
    rps=$(rows "$variant" | awk '{ print $2 }' | median)
    p99=$(rows "$variant" | awk '{ print $3 }' | median)
    used=$(rows "$variant" | wc -l)
    quiet=$(awk -v v="$variant" '$1 == v && $5 == 0' "$TMP/results" | wc -l)
    if [ -n "$bare_rps" ]; then
        ratio=$(awk -v a="$rps" -v b="$bare_rps" 'BEGIN { printf "%.3f", a / b }')
    else
        ratio="-"
    fi
    if [ "$quiet" -gt 0 ]; then note="$used quiet"; else note="$used NOISY"; fi
    printf '%-14s %12.0f %12.3f %14s %8s\n' "$variant" "$rps" "$p99" "$ratio" "$note"
done
if [ "$NOISY_RUNS" -gt 0 ]; then
    echo
    echo "note: $NOISY_RUNS run(s) flagged NOISY: other processes used more than $NOISY% of a CPU during"
    echo "the run. Quote figures from quiet runs (WAIT_QUIET=120 ROUNDS=3 helps on a shared machine)."
fi
