#!/usr/bin/env bash
#
# backup-all.sh: back up every selected DigitalOcean volume into raw disk
# images under one directory, in one run: provision, sync, tear down.
#
# Run `backup-all.sh --help` for usage and exit codes; docs/OPERATIONS.md
# explains running it for real.
#
# shellcheck source-path=SCRIPTDIR
# Functions run from traps and as background jobs: not unreachable.
# shellcheck disable=SC2317

set -euo pipefail
# The images hold the volumes' data: whatever this run creates is the
# user's alone, whatever umask cron or a shell hands it.
umask 077

# shellcheck disable=SC2034 # read by lib/common.sh
DOSVOB_PROG=backup-all
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$script_dir/lib/common.sh"
hide_token

# Exit codes of this script (documented in --help and docs/OPERATIONS.md);
# usage errors exit 2 through usage_error in lib/common.sh.
readonly EXIT_OK=0 EXIT_FAILED=1 EXIT_LOCKED=6 EXIT_PROVISION=7 \
	EXIT_TEARDOWN=8 EXIT_INTERRUPTED=130

usage() {
	cat <<'EOF'
Usage: backup-all.sh [options] BACKUP_DIR

Back up every volume that the config selects into BACKUP_DIR, as raw disk
images BACKUP_DIR/REGION/VOLUME.img (each with its manifest and kept
versions beside it); what it creates is readable by its user only (umask
077, BACKUP_DIR 0700 when it makes it). It makes BACKUP_DIR itself, never
its parent, which must exist (else exit 2): let the parent be a directory
on the backup disk, not its mount point (which exists when the disk is not
mounted), and a disk that is not mounted stops the run (docs/OPERATIONS.md).
One run: clean up what earlier, killed runs left (never a run that is
still going: see docs/OPERATIONS.md; their work directories in $TMPDIR
too, and those that runs whose teardown failed kept there), snapshot and
copy the volumes and start a temporary droplet per region
(dosvob-provision), sync each volume over ssh with the droplet's pinned host
key (dosvob-hash | ssh ... dosvob-hash --delta | dosvob-patch), then delete
every temporary resource (dosvob-teardown), on every exit path.

Options:
  -c, --config FILE       dosvob config (default: dosvob-provision's default,
                          $XDG_CONFIG_HOME/dosvob/conf.json or
                          ~/.config/dosvob/conf.json)
  -j, --jobs N            volumes synced at once (default 2)
  -k, --keep N            previous versions kept per image (default 7)
      --readers N         reads in flight on each volume copy (1 to 64,
                          default 8): more can help a large volume on a
                          droplet whose storage allows a deeper queue
      --level N           zstd level of the delta streams, 1 (fastest, the
                          default) to 4 (smallest): a higher level sends
                          fewer bytes over a slow link for more droplet CPU
      --bin DIR           directory with the dosvob binaries (default:
                          $DOSVOB_BIN, else ../bin beside this script, else
                          the directory of dosvob-provision on PATH)
      --lock FILE         lock file (default BACKUP_DIR/.dosvob-backup.lock)
      --ping-url URL      healthchecks-style pings: URL/start when the run
                          starts, URL on success, URL/fail on failure
      --ping-start URL    ping URL when the run starts
      --ping-success URL  ping URL when the run succeeds
      --ping-failure URL  ping URL when the run fails (the summary is the body)
      --hook COMMAND      run COMMAND with bash -c at the end; it sees
                          DOSVOB_RESULT (success|failure), DOSVOB_EXIT_CODE and
                          DOSVOB_SUMMARY_FILE (the summary table), and not
                          the API token variables
      --ssh PROGRAM       ssh client to run (default: ssh)
      --provision-arg ARG pass ARG on to dosvob-provision (repeatable); a
                          --state-dir or --api-url among them reaches the
                          teardown too
      --dry-run           print what a run would create and its estimated
                          cost (dosvob-provision --dry-run), then exit
  -h, --help              show this help

Exit codes:
  0    every volume backed up, everything temporary deleted
  1    at least one volume failed (the others were backed up; each failed
       image is still exactly its previous backup)
  2    usage or set-up: bad options or arguments, a BACKUP_DIR (or --lock
       FILE) that cannot be made or written (also one whose parent does
       not exist: a backup disk not mounted), a missing tool or dosvob
       binary, or a config that dosvob-provision refuses (nothing was done)
  6    another backup-all.sh run, a restore.sh or a scrub holds the lock
       (after waiting 1 s), or dosvob-provision would not start (its exit
       6: its message says which lock, or which earlier run's leftovers)
  7    provisioning failed (nothing was synced; what it made is deleted),
       also when dosvob-provision exited 2 or 6 after its run had begun
  8    teardown left temporary resources behind (they cost money): the
       work directory is kept, and the next backup-all.sh or restore.sh
       run tries again; or run the dosvob-teardown --run ID that the log
       names
  130  interrupted by SIGINT, SIGTERM, SIGHUP (a terminal that hung up) or
       SIGPIPE (a reader of its output that quit): the syncs were stopped,
       teardown ran, the hook and the failure ping were told
When several apply, the first of 8, 130, 7 (or 2, 6), 1 wins.

Examples:
  backup-all.sh /srv/backups
  backup-all.sh -c /etc/dosvob/conf.json -j 4 -k 14 \
      --ping-url https://hc-ping.com/UUID /srv/backups
EOF
}

# ---- options ---------------------------------------------------------------

config=""
jobs=2
keep=7
bin_dir=""
lock_file=""
ping_start=""
ping_success=""
ping_failure=""
hook=""
ssh_prog=ssh
provision_args=()
delta_args=() # for dosvob-hash --delta on the droplets
backup_dir=""
dry_run=0

while [[ $# -gt 0 ]]; do
	case "$1" in
	-h | --help)
		usage
		exit "$EXIT_OK"
		;;
	-c | --config) need_arg "$@"; config=$2; shift 2 ;;
	-j | --jobs) need_arg "$@"; jobs=$2; shift 2 ;;
	-k | --keep) need_arg "$@"; keep=$2; shift 2 ;;
	--bin) need_arg "$@"; bin_dir=$2; shift 2 ;;
	--lock) need_arg "$@"; lock_file=$2; shift 2 ;;
	--ping-url)
		need_arg "$@"
		ping_start="${2%/}/start"
		ping_success="${2%/}"
		ping_failure="${2%/}/fail"
		shift 2
		;;
	--ping-start) need_arg "$@"; ping_start=$2; shift 2 ;;
	--ping-success) need_arg "$@"; ping_success=$2; shift 2 ;;
	--ping-failure) need_arg "$@"; ping_failure=$2; shift 2 ;;
	--hook) need_arg "$@"; hook=$2; shift 2 ;;
	--ssh) need_arg "$@"; ssh_prog=$2; shift 2 ;;
	--provision-arg) need_arg "$@"; provision_args+=("$2"); shift 2 ;;
	--readers)
		need_arg "$@"
		if ! [[ "$2" =~ ^[1-9][0-9]?$ ]] || [[ "$2" -gt 64 ]]; then
			usage_error "invalid --readers \"$2\": want a whole number from 1 to 64"
		fi
		delta_args+=(--readers "$2")
		shift 2
		;;
	--level) need_arg "$@"; need_level "$2"; delta_args+=(--level "$2"); shift 2 ;;
	--dry-run) dry_run=1; shift ;;
	--) shift; break ;;
	-*) usage_error "unknown option \"$1\"" ;;
	*) break ;;
	esac
done
if [[ $# -ne 1 ]]; then
	usage_error "want exactly one BACKUP_DIR, got $# arguments"
fi
backup_dir=$1
if ! is_uint "$jobs" || [[ "$jobs" -lt 1 ]]; then
	usage_error "invalid --jobs \"$jobs\": want a whole number of at least 1"
fi
if ! is_uint "$keep"; then
	usage_error "invalid --keep \"$keep\": want a whole number"
fi
if [[ -n "$config" && ! -f "$config" ]]; then
	usage_error "config \"$config\" not found"
fi

need_cmd jq jq
need_cmd flock util-linux
need_cmd "$ssh_prog" openssh-client
if [[ -n "$ping_start$ping_success$ping_failure" ]]; then
	need_cmd curl curl
fi
use_bins "$script_dir"
config_args=()
if [[ -n "$config" ]]; then
	config_args=(--config "$config")
fi
# Teardown must work on the same API and run state as provisioning: it
# gets the --state-dir and --api-url that --provision-arg gave.
teardown_args=()
for ((k = 0; k < ${#provision_args[@]}; k++)); do
	case "${provision_args[k]}" in
	--state-dir=* | --api-url=*) teardown_args+=("${provision_args[k]}") ;;
	--state-dir | --api-url)
		teardown_args+=("${provision_args[k]}")
		if ((k + 1 < ${#provision_args[@]})); then
			teardown_args+=("${provision_args[k + 1]}")
			k=$((k + 1))
		fi
		;;
	esac
done

if [[ "$dry_run" -eq 1 ]]; then
	log "dry run: what a run would create and cost; nothing is created, no image is touched"
	rc=0
	(with_token "$provision" "${config_args[@]}" --dry-run "${provision_args[@]}") </dev/null >&2 || rc=$?
	if [[ "$rc" -ne 0 ]]; then
		die "$EXIT_PROVISION" "dosvob-provision --dry-run failed (exit $rc)"
	fi
	exit "$EXIT_OK"
fi

# The backup directory must exist, or be made, and be writable before
# anything else: a read-only or missing disk is a set-up error (exit 2), not
# a failed volume. Only its last component is made, never its parents: a
# backup disk that is not mounted leaves the parent missing, and the run
# must stop there rather than fill the root file system.
if [[ -e "$backup_dir" && ! -d "$backup_dir" ]]; then
	die 2 "backup directory \"$backup_dir\" exists and is not a directory" \
		"name a directory, or a path where one can be made"
fi
if [[ ! -d "$backup_dir" ]]; then
	parent=$(dirname -- "$backup_dir")
	if [[ ! -e "$parent" ]]; then
		die 2 "cannot create the backup directory \"$backup_dir\": its parent \"$parent\" does not exist (is the backup disk mounted?)"
	fi
	if ! err=$(mkdir -- "$backup_dir" 2>&1) && [[ ! -d "$backup_dir" ]]; then
		die 2 "cannot create the backup directory \"$backup_dir\": ${err##*: }" \
			"check that its disk is mounted and writable"
	fi
fi
if [[ ! -w "$backup_dir" || ! -x "$backup_dir" ]]; then
	die 2 "backup directory \"$backup_dir\" is not writable" \
		"check that its disk is mounted read-write and that it belongs to $(id -un)"
fi
backup_dir=$(cd "$backup_dir" && pwd)
lock_file=${lock_file:-$backup_dir/.dosvob-backup.lock}

# ---- the lock --------------------------------------------------------------
# fd 9 holds the lock for the life of this shell. Every child gets 9>&- so
# that a child outliving a killed run does not keep the next run out.

if ! { exec 9>>"$lock_file"; } 2>/dev/null; then
	die 2 "cannot open the lock file \"$lock_file\" for writing" \
		"check that its directory exists and is writable"
fi
# -w 1, not -n: dosvob-provision tests whether a dead run's lock is free by
# taking it shared for an instant, which must not turn this run away.
if ! flock -w 1 9; then
	die "$EXIT_LOCKED" "another backup run holds the lock $lock_file" \
		"wait for it to finish; a run that was killed releases the lock when its processes are gone"
fi

# ---- state and cleanup -----------------------------------------------------

clean_dead_work_dirs "${TMPDIR:-/tmp}"
work=""
make_work_dir work "${TMPDIR:-/tmp}" dosvob-backup "${config_args[@]}" "${teardown_args[@]}"
run_json="$work/run.json"
run_id_file="$work/run-id" # written by dosvob-provision before it creates anything
summary_file="$work/summary.txt"
provision_pid=""
provisioned=0      # 1 once dosvob-provision has started: teardown is owed
torn_down=0
interrupted=0
completed=0     # 1 once the run reached its end: only then can it succeed
script_failed=0 # 1 after an error of this script, or a signal it does not trap
provision_failed=0
provision_code=$EXIT_PROVISION # the exit when provision_failed
teardown_failed=0
volumes_failed=0
declare -a worker_pids=()

# ping URL [BODY_FILE]: notify a monitoring URL; failures are logged only.
ping() {
	local url=$1 body=${2:-}
	[[ -n "$url" ]] || return 0
	local args=(-fsS -m 10 --retry 3 -o /dev/null)
	if [[ -n "$body" && -s "$body" ]]; then
		args+=(--data-binary "@$body")
	fi
	if ! curl "${args[@]}" "$url" 7<&- 9>&- 2>"$work/curl.err"; then
		warn "ping failed: $(tr '\n' ' ' <"$work/curl.err")"
	fi
}

do_teardown() {
	[[ "$provisioned" -eq 1 && "$torn_down" -eq 0 ]] || return 0
	# Interrupting a teardown would leave resources that cost money: from
	# here on this script ignores the signals it traps (SIGKILL still
	# works, and the next run cleans up). First, so that no signal lands
	# between marking the teardown done and starting it.
	ignore_stop_signals
	torn_down=1
	teardown_run "$run_json" "$run_id_file" \
		"tearing down run RUN_ID: deleting its droplets, volume copies, snapshots and key" \
		"tearing down run RUN_ID (provisioning did not finish): deleting what it created" \
		"teardown complete: nothing temporary is left" \
		"${config_args[@]}" "${teardown_args[@]}" || teardown_failed=1
}

stop_children() {
	local pid
	if [[ -n "$provision_pid" ]]; then
		stop_group "$provision_pid"
	fi
	for pid in "${worker_pids[@]}"; do
		stop_group "$pid"
	done
	if [[ -n "$provision_pid" ]]; then
		wait "$provision_pid" 2>/dev/null || true
	fi
	for pid in "${worker_pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
}

# on_signal NAME: SIGINT, SIGTERM, SIGHUP (the terminal hung up) and
# SIGPIPE (the reader of stderr quit; log then writes to /dev/null) all
# stop the run, which reports itself interrupted.
on_signal() {
	ignore_stop_signals
	interrupted=1
	log "received SIG$1: stopping the syncs (each image stays exactly its previous backup), then tearing down"
	stop_children
	exit "$EXIT_INTERRUPTED"
}

final_code() {
	if [[ "$teardown_failed" -eq 1 ]]; then
		echo "$EXIT_TEARDOWN"
	elif [[ "$interrupted" -eq 1 ]]; then
		echo "$EXIT_INTERRUPTED"
	elif [[ "$provision_failed" -eq 1 ]]; then
		echo "$provision_code"
	elif [[ "$volumes_failed" -gt 0 || "$script_failed" -eq 1 ]]; then
		echo "$EXIT_FAILED"
	else
		echo "$EXIT_OK"
	fi
}

on_exit() {
	local rc=$?
	ignore_stop_signals
	set +e
	# Only a run that reached its end may succeed. Here before it, and not
	# by a signal or failed provisioning that was counted, is an error of
	# this script, or a signal that it does not trap (bash runs this trap
	# then, with $? 0): a failure.
	if [[ "$completed" -eq 0 && "$interrupted" -eq 0 && "$provision_failed" -eq 0 ]]; then
		script_failed=1
		log "stopping before the end of the run (an unexpected error or signal, exit $rc): the run failed"
		stop_children
	fi
	do_teardown
	local code
	code=$(final_code)
	if [[ "$code" -eq 0 ]]; then
		log "run succeeded"
		ping "$ping_success" "$summary_file"
		run_hook success "$code"
	else
		log "run failed (exit $code)"
		ping "$ping_failure" "$summary_file"
		run_hook failure "$code"
	fi
	# After a failed teardown the work directory stays, so that the next
	# run of either script tears the run down at once (a restore.sh too,
	# which gives no --cleanup-stale); its lines come last.
	if [[ "$teardown_failed" -eq 1 ]]; then
		keep_work_dir "$work"
	else
		rm -rf -- "$work"
	fi
	exit "$code"
}

run_hook() {
	[[ -n "$hook" ]] || return 0
	local result=$1 code=$2 rc=0
	# The hook never sees the API token (hide_token; as the config's hooks
	# do not).
	DOSVOB_RESULT="$result" DOSVOB_EXIT_CODE="$code" DOSVOB_SUMMARY_FILE="$summary_file" \
		bash -c "$hook" 7<&- 9>&- </dev/null >&2 || rc=$?
	if [[ "$rc" -ne 0 ]]; then
		warn "hook exited $rc"
	fi
}

trap on_exit EXIT
trap_stop_signals

# ---- provision -------------------------------------------------------------

log "starting: backups in $backup_dir, $jobs at once, keeping $keep versions"
ping "$ping_start"
: >"$summary_file"

provisioned=1
log "provisioning (first removing what earlier, killed runs left behind)"
# The run is alive while this script holds the lock: dosvob-provision gets
# it as fd 8 (a copy of fd 9) and records it, so that no other run's
# --cleanup-stale touches this run until the lock goes, with the processes
# of this run. It holds the work directory's lock too (fd 6, a copy of
# fd 7), so that no next run's clean_dead_work_dirs tears this run down
# while provisioning goes on after this script was killed.
run_group provision_pid with_token "$provision" "${config_args[@]}" --cleanup-stale \
	--owner-lock-fd 8 --run-id-file "$run_id_file" "${provision_args[@]}" >"$run_json" </dev/null 8>&9 6<&7
rc=0
wait "$provision_pid" || rc=$?
provision_pid=""
if [[ "$rc" -ne 0 ]]; then
	provision_failed=1
	# Whether it created anything is told by the run id it writes first,
	# never by its exit code. With a run, whatever the code (a crash may
	# exit 2), it failed (7) and the run is torn down on exit. Without one,
	# it created nothing: a config it refused (2) and a lock (6) keep their
	# meaning, as in restore.sh, and there is nothing to tear down.
	if run_id=$(started_run_id "$run_id_file"); then
		log "provisioning failed (dosvob-provision exit $rc) after it had started run $run_id"
	else
		log "provisioning failed (dosvob-provision exit $rc)"
		if [[ "$rc" -eq 2 || "$rc" -eq "$EXIT_LOCKED" ]]; then
			provisioned=0
			provision_code=$rc
		fi
	fi
	printf 'provisioning failed (dosvob-provision exit %s): no volume was synced\n' "$rc" >"$summary_file"
	exit "$provision_code"
fi
if ! jq -e '.run_id and (.volumes | type == "array") and (.droplets | type == "array")' "$run_json" >/dev/null 2>&1; then
	provision_failed=1
	log "dosvob-provision printed no valid run JSON"
	exit "$EXIT_PROVISION"
fi
ssh_opts_for "$run_json"
nvol=$(jq '.volumes | length' "$run_json")
log "run $(jq -r '.run_id' "$run_json"): $nvol volumes on $(jq '.droplets | length' "$run_json") droplets"

# ---- sync ------------------------------------------------------------------

# sync_volume INDEX: sync volume INDEX of the run JSON into its image and
# write one result line (tab-separated) into $work/vol-INDEX/result. Runs as a
# background job; its own exit code is 0 on success.
sync_volume() {
	local i=$1 d="$work/vol-$1"
	mkdir -p "$d"
	local v name id region snap size droplet device
	v=$(jq -c ".volumes[$i]" "$run_json")
	name=$(jq -r '.source_name' <<<"$v")
	id=$(jq -r '.source_id' <<<"$v")
	region=$(jq -r '.region' <<<"$v")
	snap=$(jq -r '.snapshot_created_at' <<<"$v")
	size=$(jq -r '.size_bytes' <<<"$v")
	droplet=$(jq -r '.droplet_id' <<<"$v")
	device=$(jq -r '.device_path' <<<"$v")
	local dr addr port user rhash
	dr=$(jq -c --argjson id "$droplet" '.droplets[] | select(.id == $id)' "$run_json")
	addr=$(jq -r '.address' <<<"$dr")
	port=$(jq -r '.port // 22' <<<"$dr")
	user=$(jq -r '.user // "root"' <<<"$dr")
	rhash=$(jq -r '.remote_hash_path' <<<"$dr")

	local img="$backup_dir/$region/$name.img"
	mkdir -p -- "$backup_dir/$region"
	local t0 t1
	t0=$(date +%s)
	printf '%s\t%s\t-\t-\t-\t%s\trunning\n' "$region/$name" "$size" "$img" >"$d/result"
	log "[$region/$name] syncing into $img"

	# The stages' messages go to files (their summary lines are read
	# below) and are logged as they come, each line prefixed: tail follows
	# the files until the keeper process ends after the pipe.
	: >"$d/hash.err"
	: >"$d/ssh.err"
	: >"$d/patch.err"
	sleep 2147483647 &
	local keeper=$! follower
	tail -q -n +1 -s 0.2 -F --pid="$keeper" "$d/hash.err" "$d/ssh.err" "$d/patch.err" 2>/dev/null |
		while IFS= read -r line; do
			log "[$region/$name] $line"
		done &
	follower=$!

	local st
	set +e
	"$hash" "$img" 2>"$d/hash.err" |
		"$ssh_prog" "${SSH_OPTS[@]}" -p "$port" "$user@$addr" \
			"$(remote_cmd "$rhash" --delta "${delta_args[@]}" "$device")" 2>"$d/ssh.err" |
		"$patch" --keep "$keep" --volume-name "$name" --volume-id "$id" \
			--snapshot-time "$snap" "$img" 2>"$d/patch.err"
	st=("${PIPESTATUS[@]}")
	kill "$keeper" 2>/dev/null
	wait "$keeper" 2>/dev/null
	wait "$follower"
	set -e
	t1=$(date +%s)

	local result="ok"
	if [[ "${st[0]}" -ne 0 || "${st[1]}" -ne 0 || "${st[2]}" -ne 0 ]]; then
		result="FAILED (hash ${st[0]}, ssh ${st[1]}, patch ${st[2]})"
	fi
	local changed="-" sent="-"
	if [[ "$result" == ok ]]; then
		IFS=$'\t' read -r changed sent < <(volume_stats "$img" "$d/ssh.err")
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$region/$name" "$size" "$changed" "$sent" \
		"$((t1 - t0))s" "$img" "$result" >"$d/result"
	if [[ "$result" != ok ]]; then
		log "[$region/$name] $result: the image is still exactly its previous backup"
		return 1
	fi
	log "[$region/$name] done in $((t1 - t0))s"
}

# volume_stats IMAGE REMOTE_STDERR: print "CHANGED<TAB>TRANSFERRED": the
# bytes of changed data the run wrote (from the image's manifest) and the
# size of the delta stream (from the remote dosvob-hash's summary line, as
# it printed it); "-" for what is unknown.
volume_stats() {
	local img=$1 remote_err=$2 changed sent
	changed=$(jq -r '.last_run.bytes_written // "-"' "$img.dosvob/manifest.json" 2>/dev/null || echo -)
	sent=$(sed -nE 's/.* ([0-9.]+ [KMGTP]?i?B) sent.*/\1/p' "$remote_err" | tail -n 1)
	printf '%s\t%s\n' "${changed:--}" "${sent:--}"
}

for ((i = 0; i < nvol; i++)); do
	while [[ $(jobs -rp | wc -l) -ge "$jobs" ]]; do
		wait -n || true
	done
	pid=""
	run_group pid sync_volume "$i"
	worker_pids+=("$pid")
done
for pid in "${worker_pids[@]}"; do
	wait "$pid" || true
done
worker_pids=()
# A volume counts as backed up only when its worker wrote "ok" as its
# result: a worker that died on its own is a failure too.
for ((i = 0; i < nvol; i++)); do
	if [[ ! -f "$work/vol-$i/result" ]] || [[ "$(cut -f 7 "$work/vol-$i/result")" != ok ]]; then
		volumes_failed=$((volumes_failed + 1))
	fi
done

# ---- summary ---------------------------------------------------------------

{
	printf '%-32s %10s %12s %12s %7s  %s\n' VOLUME SIZE CHANGED TRANSFERRED TIME RESULT
	for ((i = 0; i < nvol; i++)); do
		f="$work/vol-$i/result"
		if [[ ! -f "$f" ]]; then
			printf '%-32s %10s %12s %12s %7s  %s\n' "volume $i" - - - - "not started"
			continue
		fi
		IFS=$'\t' read -r vname vsize vchanged vsent vtime _ vresult <"$f"
		printf '%-32s %10s %12s %12s %7s  %s\n' "$vname" "$(human_bytes "$vsize")" \
			"$(human_bytes "$vchanged")" "$vsent" "$vtime" "$vresult"
	done
} >"$summary_file"
log "summary:"
while IFS= read -r line; do
	log "$line"
done <"$summary_file"
if [[ "$volumes_failed" -gt 0 ]]; then
	log "$volumes_failed of $nvol volumes failed"
fi

do_teardown
completed=1
exit "$(final_code)"
