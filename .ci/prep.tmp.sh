#!/usr/bin/env bash
# CI: make the machine ready (engine, build tools, package, local images), then run exactly
# the README's test command. Runs on a fresh machine with only package registries reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    as_root apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# 1. A Docker engine that answers.
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    echo "[ci] starting dockerd"
    (as_root dockerd >/tmp/dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "[ci] dockerd did not start:"; tail -20 /tmp/dockerd.log; exit 1; }
fi

# 2. Tools the image builds and the compose tests use.
missing=()
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# 3. The package with its test extras.
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# 4. The local images (built when missing or when their inputs changed).
python3 images/build.py
echo "[ci] machine ready in $(( $(date +%s) - started ))s"

