#!/usr/bin/env bash
# User-space instructions per request of examples/bench_server.rs (built as the package
# tollgate-bench-server: tollgate with its default features only), counted by callgrind.
#
#   bash scripts/callgrind-bench.sh ip                  # one mode
#   bash scripts/callgrind-bench.sh bare ip memory flood governor
#
# Callgrind counts instructions, not time, so the figure does not depend on the machine's load
# (repeated runs of one binary differ by a few dozen instructions per request, from the runtime's
# idle polls); it is the figure to use for hot-path work on a shared machine. It sees user space
# only: the kernel's share (loopback TCP, epoll) is not in it.
#
# For each mode: the server runs under `valgrind --tool=callgrind`, wrk loads it for WARMUP
# seconds, the counters are zeroed (`callgrind_control -z`), wrk loads it for DURATION, the
# counters are dumped (`callgrind_control -d`), and the instructions of that dump are divided by
# the requests wrk completed. The dump is kept (OUT/callgrind.MODE.out) for
# `callgrind_annotate --inclusive=yes OUT/callgrind.MODE.out`.
#
# Settings (environment): BIN (default target/release/bench_server; built here with line
# tables unless SKIP_BUILD=1), DURATION (default 5s), WARMUP (default 2s), CONNECTIONS
# (default 8), OUT (where dumps go, default target/callgrind). Needs valgrind, wrk, curl.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -gt 0 ] || set -- bare ip memory flood governor
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-8}
OUT=${OUT:-target/callgrind}
BIN=${BIN:-target/release/bench_server}
PATH_UNDER_TEST=/api/public/v1/vms

die() {
    echo "callgrind-bench: $*" >&2
    exit 1
}
for tool in valgrind callgrind_control wrk curl; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install valgrind wrk curl)"
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # Line tables give callgrind_annotate file:line and function names; the code is the same.
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release -p tollgate-bench-server --quiet
fi
[ -x "$BIN" ] || die "$BIN missing"
mkdir -p "$OUT"

PID=""
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

printf '%-15s %10s %16s %12s\n' mode requests instructions "per request"
for mode in "$@"; do
    port=$((20000 + RANDOM % 10000))
    url="http://127.0.0.1:$port$PATH_UNDER_TEST"
    dump="$OUT/callgrind.$mode.out"
    rm -f "$dump" "$dump".*
    TOLLGATE_ADDR="127.0.0.1:$port" valgrind --tool=callgrind --callgrind-out-file="$dump" \
        "$BIN" "$mode" >"$OUT/server.$mode.log" 2>&1 &
    PID=$!
    status=""
    for _ in $(seq 300); do
        status=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: bench' "$url" 2>/dev/null || true)
        [ "$status" = 200 ] && break
        [[ "$mode" == *flood ]] && [ "$status" = 429 ] && break
        kill -0 "$PID" 2>/dev/null || die "server $mode exited: $(tail -5 "$OUT/server.$mode.log")"
        sleep 0.1
    done
    [ "$status" = 200 ] || { [[ "$mode" == *flood ]] && [ "$status" = 429 ]; } ||
        die "server $mode answers '$status'"
    wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" -H 'x-api-key: bench' "$url" >/dev/null
    callgrind_control -z "$PID" >/dev/null 2>&1
    requests=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H 'x-api-key: bench' "$url" |
        awk '$2 == "requests" && $3 == "in" { print $1 }')
    callgrind_control -d "$PID" >/dev/null 2>&1
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
    # The dump made by -d is the numbered one (the zeroed part before it is not dumped; the
    # final dump at exit holds only the shutdown).
    part=$(ls "$dump".* 2>/dev/null | grep -v '\.out\.[0-9]*-' | sort -t. -k4 -n | head -1 || true)
    [ -n "$part" ] || part=$(ls -t "$dump"* | tail -1)
    instructions=$(awk '/^summary:/ { print $2 }' "$part")
    mv "$part" "$dump.measured"
    printf '%-15s %10s %16s %12.0f\n' "$mode" "$requests" "$instructions" \
        "$(awk -v i="$instructions" -v r="$requests" 'BEGIN { print i / r }')"
done
echo "(dumps: $OUT/callgrind.MODE.out.measured; callgrind_annotate --inclusive=yes FILE | head -60)"
