#!/usr/bin/env bash
# Build and run the images on this host, whatever it can reach (docs/deployment.md, "Building the
# images here").
#
#   docker/local.sh base        anytime-base:bookworm, a Debian bookworm base made with debootstrap
#                               (`build` makes it when an official base can be neither found nor pulled)
#   docker/local.sh build [cpu|gpu|stack]...   anytime:cpu (default), anytime:gpu, and the nginx +
#                               Prometheus images of the compose stack when theirs cannot be pulled
#   docker/local.sh smoke       the CPU image end to end (tests/deploy/test_docker_image.py)
#   docker/local.sh stack       the compose stack end to end (tests/deploy/test_compose_stack.py)
#
# Starts dockerd when no engine answers and we are root, and stops it again at exit (only the one
# it started). Settings (environment):
#   CA_BUNDLE        CA bundle pip trusts in the build, a BuildKit secret that no layer keeps
#                    (default: the host's system bundle; empty: none)
#   TORCH_INDEX_URL  torch's wheel index; unset: the Dockerfile's default when it answers, else
#                    pip's default index (a larger CUDA build of torch); empty: pip's default index
#   BUILD_NETWORK    network of the build's RUN steps (default: host, so they use the host's)
#   DOCKER           the docker CLI (default: the first on PATH that builds with BuildKit)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_TAG=anytime-base:bookworm           # the local stand-in for the official base images
LOCAL_PREFIX=anytime-local               # the stack's nginx / Prometheus images made here
STATE=${XDG_RUNTIME_DIR:-/tmp}/anytime-docker
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
BUILD_NETWORK=${BUILD_NETWORK:-host}
PY=${PY:-.venv/bin/python}

log() { printf '[docker/local.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- the engine ------------------------------------------------------------------------------
started_dockerd=""
stop_dockerd() {
    if [ -n "$started_dockerd" ] && kill -0 "$started_dockerd" 2>/dev/null; then
        log "stopping the dockerd this script started (pid $started_dockerd)"
        kill -TERM "$started_dockerd"
        for _ in $(seq 60); do kill -0 "$started_dockerd" 2>/dev/null || return 0; sleep 1; done
    fi
}

pick_cli() {
    # BuildKit is needed (secret and cache mounts): through buildx, or built into CLIs before 23.
    local cli version
    if [ -n "${DOCKER:-}" ]; then echo "$DOCKER"; return; fi
    while read -r cli; do
        if "$cli" buildx version >/dev/null 2>&1; then echo "$cli"; return; fi
        version=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)
        if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ] 2>/dev/null; then
            echo "$cli"; return
        fi
    done < <(type -ap docker)
    die "no docker CLI that builds with BuildKit (install buildx, or Debian's docker.io)"
}

ensure_engine() {
    DOCKER=$(pick_cli)
    export DOCKER DOCKER_BUILDKIT=1
    "$DOCKER" info >/dev/null 2>&1 && return 0
    command -v dockerd >/dev/null || die "no Docker engine answers and dockerd is not installed"
    [ "$(id -u)" = 0 ] || die "no Docker engine answers; start one (dockerd needs root)"
    mkdir -p "$STATE"
    log "starting dockerd (log: $STATE/dockerd.log)"
    dockerd >"$STATE/dockerd.log" 2>&1 &
    started_dockerd=$!
    trap stop_dockerd EXIT
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && return 0
        kill -0 "$started_dockerd" 2>/dev/null || break
        sleep 1
    done
    tail -20 "$STATE/dockerd.log" >&2
    die "dockerd did not come up"
}

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
# An image that is here or can be pulled (fails at once where no registry is reachable).
image_available() { have_image "$1" || "$DOCKER" pull --quiet "$1" >/dev/null 2>&1; }
dockerfile_arg() { sed -n "s/^ARG $2=//p" "$1" | head -1; }

# --- the base image ----------------------------------------------------------------------------
# Like the other verbs, install what the build needs: debootstrap from Debian's archive as root,
# else the one command to run.
ensure_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "debootstrap missing; run as root: apt-get install debootstrap"
    log "installing debootstrap (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        debootstrap >/dev/null; } || die "apt-get install debootstrap failed"
}

build_base() {
    have_image "$BASE_TAG" && { log "$BASE_TAG is here"; return 0; }
    ensure_debootstrap
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/anytime-rootfs.XXXXXX")
    log "debootstrap bookworm into $root"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; die "debootstrap failed"; }
    # Like the official slim images: no package lists or caches in the image.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | "$DOCKER" import \
        -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
    rm -rf "$root" "$root.log"
    log "built $BASE_TAG ($("$DOCKER" run --rm "$BASE_TAG" python3 --version))"
}

# Base image build args: none when the official base is here or pulled, else the local one.
base_args() {
    local dockerfile=$1 arg=$2 official
    official=$(dockerfile_arg "$dockerfile" "$arg")
    official=${official//\$\{PYTHON_VERSION\}/$(dockerfile_arg "$dockerfile" PYTHON_VERSION)}
    if image_available "$official"; then return 0; fi
    log "$official cannot be pulled: building on $BASE_TAG" >&2
    build_base
    echo "--build-arg" "$arg=$BASE_TAG"
}

# --- the images ----------------------------------------------------------------------------
torch_index_args() {
    local dockerfile=$1 url
    if [ -n "${TORCH_INDEX_URL+set}" ]; then echo "--build-arg" "TORCH_INDEX_URL=$TORCH_INDEX_URL"; return; fi
    url=$(dockerfile_arg "$dockerfile" TORCH_INDEX_URL)
    command -v curl >/dev/null || return 0  # cannot probe: keep the Dockerfile's default
    local cert=()
    [ -n "$CA_BUNDLE" ] && cert=(--cacert "$CA_BUNDLE")
    if ! curl -fsS -o /dev/null --max-time 20 "${cert[@]}" "$url/torch/"; then
        log "torch's wheel index $url does not answer: torch from pip's default index"
        echo "--build-arg" "TORCH_INDEX_URL="
    fi
}

build_image() {
    local tag=$1 dockerfile=$2 base_arg=$3 base torch start
    base=$(base_args "$dockerfile" "$base_arg")
    torch=$(torch_index_args "$dockerfile")
    # shellcheck disable=SC2206  # base_args and torch_index_args print words without spaces
    local args=($base $torch)
    if [ -n "$CA_BUNDLE" ]; then
        [ -r "$CA_BUNDLE" ] || die "CA_BUNDLE=$CA_BUNDLE is not readable"
        args+=(--secret "id=ca-bundle,src=$CA_BUNDLE")
    fi
    log "building $tag from $dockerfile ${args[*]}"
    start=$(date +%s)
    "$DOCKER" build --network "$BUILD_NETWORK" "${args[@]}" -f "$dockerfile" -t "$tag" .
    log "built $tag in $(($(date +%s) - start)) s; size $("$DOCKER" image inspect -f '{{.Size}}' "$tag" \
        | awk '{printf "%.2f GB", $1 / 1e9}')"
}

# The compose stack's nginx and Prometheus: the images users pull, or Debian's packages on the
# local base (docker-compose.local.yml names them).
build_stack_images() {
    local name official
    for name in nginx prometheus; do
        official=$(grep -oE "image: (prom/)?$name:[^ ]+" docker-compose.yml | head -1 | cut -d' ' -f2)
        if image_available "$official"; then log "$official is here"; continue; fi
        log "$official cannot be pulled: Debian's $name on $BASE_TAG"
        build_base
        "$DOCKER" build --network "$BUILD_NETWORK" --build-arg "BASE_IMAGE=$BASE_TAG" \
            -f "docker/local/Dockerfile.$name" -t "$LOCAL_PREFIX/$name:bookworm" docker/local
    done
}

build() {
    [ $# -gt 0 ] || set -- cpu
    for what in "$@"; do
        case $what in
            cpu) build_image anytime:cpu docker/Dockerfile.cpu PYTHON_IMAGE ;;
            gpu) build_image anytime:gpu docker/Dockerfile.gpu CUDA_IMAGE ;;
            stack) build_stack_images ;;
            *) die "build what? cpu, gpu or stack (got '$what')" ;;
        esac
    done
}

# Tests that need the engine: REQUIRE_DEPLOY_TOOLS=1 turns a missing tool into a failure
# (tests/tools.py).
run_tests() {
    REQUIRE_DEPLOY_TOOLS=1 DOCKER="$DOCKER" "$PY" -m pytest -q -s -m docker "$@"
}

main() {
    [ $# -gt 0 ] || die "usage: $0 base | build [cpu|gpu|stack]... | smoke | stack"
    local cmd=$1; shift
    ensure_engine
    case $cmd in
        base) build_base ;;
        build) build "$@" ;;
        smoke) run_tests tests/deploy/test_docker_image.py "$@" ;;
        stack) build_stack_images; run_tests tests/deploy/test_compose_stack.py "$@" ;;
        *) die "unknown command '$cmd'" ;;
    esac
}

main "$@"
