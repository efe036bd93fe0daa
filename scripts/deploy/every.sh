#!/usr/bin/env bash
#
# every.sh INTERVAL COMMAND [ARG...]: run COMMAND now and then again every
# INTERVAL (a sleep(1) duration: 30m, 4h, 1d), for ever. The container image's
# entry point: `every.sh 4h backup-all.sh /backups`.
#
# SIGTERM and SIGINT are passed on to a running COMMAND and awaited (a backup
# run then tears down its temporary droplets), then every.sh exits. A failing
# run is logged and the schedule goes on; monitoring belongs to the run's
# --ping-url or --hook.
#
# shellcheck disable=SC2317 # on_signal runs from a trap

set -euo pipefail

usage() {
	echo "usage: every.sh INTERVAL COMMAND [ARG...]   (INTERVAL like 30m, 4h, 1d)" >&2
	exit 2
}
if [[ $# -lt 2 ]]; then
	usage
fi
interval=$1
shift
if [[ ! "$interval" =~ ^[0-9]+[smhd]?$ ]]; then
	echo "every.sh: invalid interval \"$interval\": want a number with an optional s, m, h or d" >&2
	exit 2
fi

child=""
on_signal() {
	if [[ -n "$child" ]]; then
		kill -TERM "$child" 2>/dev/null || true
		wait "$child" || true
	fi
	exit 130
}
trap on_signal INT TERM

while true; do
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) every: starting $1" >&2
	"$@" &
	child=$!
	rc=0
	wait "$child" || rc=$?
	child=""
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) every: $1 exited $rc; next run in $interval" >&2
	sleep "$interval" &
	wait $! || true
done
