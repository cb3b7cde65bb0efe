#!/bin/sh
# Container entry point for typha and felix: raise the open-files soft limit to the hard limit, then
# exec the command (so the program, not this shell, receives SIGTERM from tini).
#
# Go programs raise this limit themselves; Python does not. Container runtimes since containerd 2.x
# hand containers a soft limit of 1024 (hard 524288), which would cap a typha replica near 1,000
# agent connections whatever --max-connections says.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: pytypha-entrypoint COMMAND [ARGS...]   (e.g. typha, felix)" >&2
    exit 64
fi

hard="$(ulimit -Hn)"
if [ "$hard" = unlimited ]; then
    hard=1048576
fi
if ! ulimit -Sn "$hard" 2>/dev/null; then
    echo "pytypha-entrypoint: could not raise the open-files limit to $hard; it stays $(ulimit -Sn)" >&2
fi

exec "$@"
