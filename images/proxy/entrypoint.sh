#!/bin/sh
# Start the proxy as its non-root user (uid 10001) in the group that owns the Docker socket,
# whatever that group is on this host: no DOCKER_GID to look up, no edits to compose files.
# DOCKER_GID, when set, overrides the group found on the socket.
set -eu

RUN_UID=10001

if [ "$(id -u)" != 0 ]; then
    # Started as a chosen user (`docker run --user`, compose `user:`): that user's groups apply.
    exec llamaswap-docker "$@"
fi

case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
    unix://*)
        socket="${DOCKER_HOST:-unix:///var/run/docker.sock}"
        socket="${socket#unix://}"
        if [ -S "$socket" ]; then
            group="$(stat -L -c %g "$socket")"
            origin="the group of $socket"
        elif [ -e "$socket" ]; then
            echo "llamaswap-docker: $socket is not a socket: mount the engine's socket there" \
                 "(volumes: - /var/run/docker.sock:/var/run/docker.sock)" >&2
            exit 78
        else
            echo "llamaswap-docker: no Docker socket at $socket: mount the engine's socket there" \
                 "(volumes: - /var/run/docker.sock:/var/run/docker.sock) or set DOCKER_HOST" >&2
            exit 78
        fi
        ;;
    *)
        group="$RUN_UID"  # an engine over TCP: no socket group to join
        origin="no socket: the engine is at $DOCKER_HOST"
        ;;
esac
if [ -n "${DOCKER_GID:-}" ]; then
    group="$DOCKER_GID"
    origin="DOCKER_GID"
fi
# One line in `docker compose logs`: which group the server got, and from where.
echo "llamaswap-docker: running as uid $RUN_UID, group $group ($origin)" >&2

# setpriv (util-linux): drop to the user, keep only that one supplementary group, no
# capabilities and no way to gain privileges back (setuid binaries), then become the server
# (the PID stays the same: signals reach it directly).
exec setpriv --reuid="$RUN_UID" --regid="$RUN_UID" --groups="$group" --inh-caps=-all \
    --bounding-set=-all --no-new-privs llamaswap-docker "$@"
