#!/bin/sh
# Entry point of the redis stand-in: like the official image, a bare `redis-server` (or only
# options) listens on all interfaces without protected mode, in the foreground, logging to stdout.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
    shift
    set -- redis-server --bind '* -::*' --protected-mode no --daemonize no --logfile '' \
        --dir /data "$@"
fi
exec "$@"
