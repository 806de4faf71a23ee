#!/usr/bin/env bash
# scripts/redis-image.sh — build the local Docker image used by tollgate's Redis
# integration tests, without any registry.
#
# Usage:   scripts/redis-image.sh            (idempotent; ~0.1 s when up to date)
#          TOLLGATE_REDIS_IMAGE=name:tag scripts/redis-image.sh
#          TOLLGATE_REDIS_FORCE=1 scripts/redis-image.sh    (force a rebuild)
#
# What it does
#   1. Ensures Debian's `redis-server` (and `redis-tools`: redis-cli) are
#      installed, so a `redis-server` binary is on PATH for the non-docker
#      fallback of the tests. (apt-get update + install, noninteractive.)
#   2. If a Docker daemon is reachable, assembles a minimal rootfs (the
#      redis-server binary, every shared library `ldd` reports, the dynamic
#      loader, /etc/passwd|group|nsswitch.conf, /data, /tmp) and loads it with
#      `docker build` FROM scratch as ${TOLLGATE_REDIS_IMAGE:-tollgate-redis:7}.
#      The build is skipped when the image exists and its label
#      `org.tollgate.redis-version` matches the local binary (+ recipe rev).
#   No docker / daemon unreachable -> message on stderr, exit 0.
#   Docker reachable but build fails -> exit nonzero.
#
# Image contract
#   ENTRYPOINT ["/usr/bin/redis-server"]
#   CMD ["--port","6379","--protected-mode","no","--bind","0.0.0.0",
#        "--save","","--appendonly","no"]
#   WORKDIR /data, EXPOSE 6379. Logs go to stdout, including the line
#   "Ready to accept connections" (testcontainers' WaitFor::message_on_stdout).
#   Any `docker run IMAGE <args>` REPLACES the CMD defaults, so pass the full
#   set you need, e.g. for a cluster node:
#     --port 7000 --cluster-enabled yes --protected-mode no --save '' --appendonly no
#
# Single node (verified):
#   docker run -d -p 127.0.0.1:0:6379 tollgate-redis:7
#   docker port <id> 6379/tcp    -> 127.0.0.1:<port>; redis-cli -p <port> PING
#
# 3-master cluster from containers (verified): use host networking so that the
# addresses nodes announce (127.0.0.1:700x) are the ones a host client dials
# when following MOVED/ASK — no bridge IPs, nothing outside 127.0.0.0/8:
#   for p in 7000 7001 7002; do
#     docker run -d --name tg-redis-$p --network host tollgate-redis:7 \
#       --port $p --bind 127.0.0.1 --protected-mode no --save '' --appendonly no \
#       --cluster-enabled yes --cluster-config-file nodes-$p.conf \
#       --cluster-node-timeout 2000
#   done
#   redis-cli --cluster create 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002 \
#     --cluster-replicas 0 --cluster-yes
#   (wait until `redis-cli -p 7000 cluster info` shows cluster_state:ok)
#   teardown: docker rm -f tg-redis-7000 tg-redis-7001 tg-redis-7002
# Bridge networking + `-p` mappings does NOT give a usable cluster for a host
# client: nodes announce their container IPs, and --cluster-announce-ip
# 127.0.0.1 breaks the node-to-node bus (127.0.0.1 inside a container is the
# container itself). Without docker, scripts/redis-cluster.sh builds the same
# cluster from plain redis-server processes.
set -euo pipefail

IMAGE="${TOLLGATE_REDIS_IMAGE:-tollgate-redis:7}"
RECIPE_REV=1   # bump when the image layout/CMD below changes
log() { printf 'redis-image: %s\n' "$*" >&2; }

# ---- 1. redis-server on PATH -------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "redis-server not found and apt-get unavailable; install redis-server manually"
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    log "installing redis-server via apt-get"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
    # The Debian package may try to start a system instance on 6379; tests must
    # not depend on it (and under systemd-less containers it does not start).
fi
REDIS_BIN="$(readlink -f "$(command -v redis-server)")"
REDIS_VERSION="$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
BIN_SUM="$(sha256sum "$REDIS_BIN" | cut -c1-16)"
WANT_LABEL="${REDIS_VERSION}-${BIN_SUM}-r${RECIPE_REV}"

# ---- 2. docker available? ----------------------------------------------------
if ! command -v docker >/dev/null 2>&1; then
    log "docker CLI not found; skipping image build (tests will use REDIS_URL or redis-server on PATH)"
    exit 0
fi
if ! docker info >/dev/null 2>&1; then
    log "docker daemon not reachable; skipping image build (tests will use REDIS_URL or redis-server on PATH)"
    exit 0
fi

HAVE_LABEL="$(docker image inspect --format '{{ index .Config.Labels "org.tollgate.redis-version" }}' "$IMAGE" 2>/dev/null || true)"
if [ "$HAVE_LABEL" = "$WANT_LABEL" ] && [ -z "${TOLLGATE_REDIS_FORCE:-}" ]; then
    log "$IMAGE is up to date (redis $REDIS_VERSION)"
    exit 0
fi

# ---- 3. assemble rootfs --------------------------------------------------------
CTX="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-redis-image.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
ROOT="$CTX/rootfs"
mkdir -p "$ROOT/usr/bin" "$ROOT/etc" "$ROOT/data" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"

# Debian ships /usr/bin/redis-server as a symlink to redis-check-rdb; redis
# picks its mode from argv[0], so the real file must be copied under the name
# redis-server.
cp "$REDIS_BIN" "$ROOT/usr/bin/redis-server"

copy_lib() {  # copy path (and the symlink chain) preserving the original path
    local src="$1" real
    [ -e "$src" ] || return 0
    mkdir -p "$ROOT$(dirname "$src")"
    cp -L "$src" "$ROOT$src"
    real="$(readlink -f "$src")"
    if [ "$real" != "$src" ]; then
        mkdir -p "$ROOT$(dirname "$real")"
        cp -L "$real" "$ROOT$real"
    fi
}

LIBS="$(ldd "$REDIS_BIN" | awk '
    /=> \// { print $3; next }
    /^[[:space:]]*\// { print $1 }')"
[ -n "$LIBS" ] || { log "ldd found no libraries for $REDIS_BIN"; exit 1; }
for lib in $LIBS; do copy_lib "$lib"; done
# The loader under its ABI path (/lib64 is a symlink to /usr/lib64 or a dir on
# Debian; copy_lib handles both) is in the ldd output above; also make sure the
# multiarch loader path exists.
for ld in /lib64/ld-linux-x86-64.so.2 /lib/ld-linux-aarch64.so.1; do
    if [ -e "$ld" ]; then copy_lib "$ld"; fi
done

cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
cat >"$ROOT/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1 localhost
::1       localhost
EOF

cat >"$CTX/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
LABEL org.tollgate.redis-version="$WANT_LABEL"
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/bin/redis-server"]
CMD ["--port", "6379", "--protected-mode", "no", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no"]
EOF

log "building $IMAGE from $REDIS_BIN (redis $REDIS_VERSION)"
# Legacy builder (no buildx on this machine); it still works for FROM scratch.
if ! DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$CTX" >/dev/null 2>"$CTX/build.err"; then
    grep -v 'DEPRECATED\|legacy builder\|buildx\|docs.docker.com\|BuildKit\|environment-variable\|^[[:space:]]*$' "$CTX/build.err" >&2 || true
    log "docker build failed"
    exit 1
fi

# Smoke test: the binary must start in the image.
if ! docker run --rm --network none "$IMAGE" --version >/dev/null 2>&1; then
    log "built $IMAGE but 'redis-server --version' fails inside it"
    exit 1
fi
log "built $IMAGE (label $WANT_LABEL)"
