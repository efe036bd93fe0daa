#!/usr/bin/env bash
#
# restore.sh: restore a dosvob image (or any kept version of it) into a NEW
# DigitalOcean volume, in one command.
#
# Run `restore.sh --help` for usage and exit codes; docs/OPERATIONS.md has
# the disaster-recovery walk-through.
#
# shellcheck source-path=SCRIPTDIR
# Functions run from traps and as background jobs: not unreachable.
# shellcheck disable=SC2317

set -euo pipefail
# What this run writes (a kept version of an image) is the user's alone.
umask 077

# shellcheck disable=SC2034 # read by lib/common.sh
DOSVOB_PROG=restore
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$script_dir/lib/common.sh"
hide_token

readonly EXIT_OK=0 EXIT_FAILED=1 EXIT_USAGE=2 EXIT_REFUSED=4 EXIT_CORRUPT=5 \
	EXIT_LOCKED=6 EXIT_PROVISION=7 EXIT_TEARDOWN=8 EXIT_INTERRUPTED=130

usage() {
	cat <<'EOF'
Usage: restore.sh [options] --volume-name NAME --region REGION IMAGE

Create a NEW DigitalOcean volume NAME in REGION and fill it with IMAGE (a
dosvob backup image, or one of its kept versions with --version): a
temporary droplet signs the empty volume, this machine computes the delta
against the image, the droplet writes it onto the volume with dosvob-patch
and checks it; then this script compares a SHA-256 of the volume with one of
the image, deletes the temporary droplet and key, and leaves the new volume
detached, ready to attach. It logs first what it restores: the source
volume (name and id) and the time of the backup, from IMAGE's manifest. It
never writes into an existing volume: a NAME that exists in REGION is
refused. It writes nothing beside the image: the backup disk may be mounted
read-only. IMAGE must be the image file itself (REGION/VOLUME.img, with its
state directory VOLUME.img.dosvob/ beside it); anything else, or an image
whose manifest is damaged, is refused before anything is created. When a
restore does not succeed, its last lines say where that leaves you: what
was created, whether the new volume was made (by name and id) and in what
state, and what to do.

On success it prints the new volume as one JSON object on stdout:
  {"name":"...","id":"...","region":"...","size_gib":N,"sha256":"..."}
("sha256" is null with --no-sha256.)

Options:
      --volume-name NAME  the new volume's name (required; must not exist)
      --region REGION     the new volume's region (required)
      --size-gib N        its size (default: the image size rounded up to a
                          whole GiB, at least 1)
      --version TIME      restore the kept version TIME (as listed by
                          dosvob-patch versions IMAGE) instead of the newest
                          backup; it is first written to a temporary file
                          in the work directory (see --tmp-dir), and the
                          image is not touched
      --level N           zstd level of the stream sent up, 1 (fastest, the
                          default) to 4 (smallest): a higher level sends
                          fewer bytes over a slow uplink for more local CPU
      --no-sha256         skip the SHA-256 comparison, which reads the whole
                          volume and image once more (dosvob-patch has
                          already checked the volume against the image)
  -c, --config FILE       dosvob config (default: dosvob-provision's default)
      --bin DIR           directory with the dosvob binaries (default:
                          $DOSVOB_BIN, else ../bin beside this script, else
                          the directory of dosvob-provision on PATH)
      --lock FILE         hold this lock while reading the image (default:
                          the backup directory's .dosvob-backup.lock when it
                          exists), so a backup run cannot change it meanwhile;
                          a FILE that exists is only read
      --tmp-dir DIR       where the work directory goes (default: $TMPDIR,
                          else /tmp); with --version it must have room for
                          the version, up to the image's size (less where
                          the version is zeros); no room exits 1. Work
                          directories that killed runs left there, or that
                          runs whose teardown failed kept, are removed
                          once their runs are torn down
      --ssh PROGRAM       ssh client to run (default: ssh)
  -h, --help              show this help

Exit codes:
  0    restored and verified; the new volume is detached and kept
  1    the restore failed (the new volume, if made, is kept: the last lines
       name it; delete it or run again with another name), also no room
       in --tmp-dir for the version (nothing was created)
  2    usage or set-up: bad options or arguments (also a --tmp-dir that is
       not a writable directory, a --lock FILE that cannot be opened), a
       missing tool or dosvob binary, or a config that dosvob-provision
       refuses
  4    refused: a volume NAME already exists in REGION, or IMAGE is not a
       dosvob image (a directory, not a regular file, or no manifest.json
       in IMAGE.dosvob/); nothing was created
  5    IMAGE's state is damaged (its manifest or journal: the message names
       it); nothing was created. Or IMAGE itself is damaged, found while it
       is read: its data is not the backup its manifest describes (bit rot
       on the backup disk, a write from outside); the new volume is kept
       but incomplete. Check it with dosvob-hash --verify IMAGE; restore a
       kept version (--version) or another copy
  6    a backup run (or a scrub) holds the lock on the backup directory
       (after waiting a second) or on the image, or dosvob-provision would
       not start (its exit 6: a lock, or interrupted runs' leftovers; its
       message says)
  7    provisioning failed (what it created was deleted again; the new
       volume, if made, is kept: the last lines say whether it was, by name
       and id), also when dosvob-provision exited 2, 4 or 6 after its run
       had begun
  8    teardown left temporary resources behind: the work directory is
       kept, and the next backup-all.sh or restore.sh run with the same
       --tmp-dir tries again; or run the dosvob-teardown --run ID that
       the log names
  130  interrupted by SIGINT, SIGTERM, SIGHUP (a terminal that hung up) or
       SIGPIPE (a reader of its output that quit); the last lines say what
       is left. Stopped before provisioning: nothing was created (a
       version's temporary file is removed). Stopped while provisioning:
       whether the new volume was made, by name and id; a made one is kept,
       empty, and a restore into its name is refused (exit 4) until it is
       deleted. Stopped while writing: the new volume is kept but
       incomplete. Delete it, or run again with another name

Examples:
  restore.sh --volume-name data-restored --region fra1 /srv/backups/fra1/data.img
  restore.sh --volume-name data-monday --region fra1 \
      --version 2026-11-16T04:00:00Z /srv/backups/fra1/data.img
EOF
}

# ---- options ---------------------------------------------------------------

volume_name=""
region=""
size_gib=""
version=""
config=""
bin_dir=""
lock_file=""
tmp_dir=${TMPDIR:-/tmp}
ssh_prog=ssh
sha_check=1
delta_args=() # for the local dosvob-hash --delta

while [[ $# -gt 0 ]]; do
	case "$1" in
	-h | --help)
		usage
		exit "$EXIT_OK"
		;;
	--volume-name) need_arg "$@"; volume_name=$2; shift 2 ;;
	--region) need_arg "$@"; region=$2; shift 2 ;;
	--size-gib) need_arg "$@"; size_gib=$2; shift 2 ;;
	--version) need_arg "$@"; version=$2; shift 2 ;;
	--no-sha256) sha_check=0; shift ;;
	--level) need_arg "$@"; need_level "$2"; delta_args+=(--level "$2"); shift 2 ;;
	-c | --config) need_arg "$@"; config=$2; shift 2 ;;
	--bin) need_arg "$@"; bin_dir=$2; shift 2 ;;
	--lock) need_arg "$@"; lock_file=$2; shift 2 ;;
	--tmp-dir) need_arg "$@"; tmp_dir=$2; shift 2 ;;
	--ssh) need_arg "$@"; ssh_prog=$2; shift 2 ;;
	--) shift; break ;;
	-*) usage_error "unknown option \"$1\"" ;;
	*) break ;;
	esac
done
if [[ $# -ne 1 ]]; then
	usage_error "want exactly one IMAGE, got $# arguments"
fi
image=$1
if [[ -z "$volume_name" ]]; then
	usage_error "--volume-name is required"
fi
if [[ ! "$volume_name" =~ ^[a-z][a-z0-9-]{0,63}$ ]]; then
	usage_error "invalid --volume-name \"$volume_name\": want lowercase letters, digits and dashes, starting with a letter, at most 64"
fi
if [[ -z "$region" ]]; then
	usage_error "--region is required"
fi
if [[ -n "$size_gib" ]] && { ! is_uint "$size_gib" || [[ "$size_gib" -lt 1 ]]; }; then
	usage_error "invalid --size-gib \"$size_gib\": want a whole number of at least 1"
fi
# IMAGE must be a dosvob image, not any file: refused (4) before anything is
# made. Whether its state can be read is checked once the lock is held.
image_must="IMAGE must be a backup image file, such as REGION/VOLUME.img, whose state directory IMAGE.dosvob/ beside it holds manifest.json"
if [[ ! -e "$image" ]]; then
	usage_error "image \"$image\" not found"
elif [[ -d "$image" ]]; then
	die "$EXIT_REFUSED" "refusing \"$image\": it is a directory, not a dosvob image ($image_must)"
elif [[ ! -f "$image" ]]; then
	die "$EXIT_REFUSED" "refusing \"$image\": it is not a regular file, not a dosvob image ($image_must)"
elif [[ ! -f "$image.dosvob/manifest.json" ]]; then
	die "$EXIT_REFUSED" "refusing \"$image\": not a dosvob image, there is no \"$image.dosvob/manifest.json\" ($image_must)"
fi
if [[ -n "$config" && ! -f "$config" ]]; then
	usage_error "config \"$config\" not found"
fi
if [[ ! -d "$tmp_dir" || ! -w "$tmp_dir" || ! -x "$tmp_dir" ]]; then
	usage_error "work directory base \"$tmp_dir\" is not a writable directory (give --tmp-dir DIR)"
fi

need_cmd jq jq
need_cmd flock util-linux
need_cmd sha256sum coreutils
need_cmd "$ssh_prog" openssh-client
use_bins "$script_dir"
config_args=()
if [[ -n "$config" ]]; then
	config_args=(--config "$config")
fi

image_dir=$(cd "$(dirname "$image")" && pwd)
image="$image_dir/$(basename "$image")"

# ---- lock ------------------------------------------------------------------

if [[ -z "$lock_file" && -e "$image_dir/../.dosvob-backup.lock" ]]; then
	lock_file="$image_dir/../.dosvob-backup.lock"
fi
# A lock file that exists is opened read-only (flock needs no more), so a
# restore works from a backup disk mounted read-only.
if [[ -n "$lock_file" ]]; then
	opened=0
	if [[ -e "$lock_file" ]]; then
		{ exec 9<"$lock_file"; } 2>/dev/null && opened=1
	else
		{ exec 9>>"$lock_file"; } 2>/dev/null && opened=1
	fi
	if [[ "$opened" -eq 0 ]]; then
		die "$EXIT_USAGE" "cannot open the lock file \"$lock_file\"" "check its path and permissions, or give another --lock"
	fi
	# -w 1, as in backup-all.sh: a liveness test of dosvob-provision holds
	# the lock shared for an instant.
	if ! flock -w 1 9; then
		die "$EXIT_LOCKED" "a backup run holds the lock $lock_file" "wait for it to finish, then restore"
	fi
fi

# ---- state and cleanup -----------------------------------------------------

clean_dead_work_dirs "$tmp_dir"
work=""
make_work_dir work "$tmp_dir" dosvob-restore "${config_args[@]}"
run_json="$work/run.json"
run_id_file="$work/run-id" # written by dosvob-provision before it creates anything
# The run is alive while this script holds fd 9: the backup directory's
# lock when there is one, else a lock file of this run's own.
# dosvob-provision gets it as fd 8, locks it and records it, so that no
# other run's --cleanup-stale touches this run until the lock goes, with
# this script. (Like the lock, it is closed for every other child.)
if [[ -z "$lock_file" ]]; then
	exec 9>>"$work/owner.lock"
fi
source_file="$image"
provisioned=0
torn_down=0
teardown_failed=0
interrupted=0
completed=0 # 1 once the run reached its end: only then can it exit 0
# How far the run got, for the last lines that on_exit logs when it ends
# short of success (report_end): check (the image's state), version (a
# kept version written to a temporary file), provision, ready (the new
# volume made, still empty), writing (by the pipe: stopped then, it is
# incomplete), verify, teardown (restored; the droplet and key go).
stage=check
run_started=0  # 1 once dosvob-provision has started a run (do_teardown)
volume_made="" # after provisioning: yes, no or unknown (find_new_volume)
new_id=""      # the new volume's id, once known
new_volume=""  # "NAME (ID)" of the new volume, once known
last_msg=""    # why the run failed, with what to do (fail): logged
last_hint=""   # last, after the teardown's lines
incomplete_hint="delete it in the control panel, or run restore.sh again with another --volume-name"
child_pid=""

# fail CODE MESSAGE [HINT]: die, once provisioning has begun: the message
# and hint are logged last, after what the teardown says, so that the last
# lines tell the user where they stand.
fail() {
	last_msg=$2 last_hint=${3:-}
	exit "$1"
}

# find_new_volume RUN_ID: whether provisioning that did not finish made the
# new volume, and its id. Only the run's state knows (it records the id as
# soon as DigitalOcean answers), and the teardown deletes that state: so,
# before it, dosvob-teardown --dry-run lists what the state names that
# still exists, the new volume as one that it keeps. Sets volume_made to
# yes (and new_id, new_volume), no (the state names none), or unknown (no
# state: a provision that failed tore its run down itself, and its message
# says whether it kept the volume; or the listing failed).
find_new_volume() {
	local pid rc=0 line
	volume_made=unknown
	run_group pid with_token "$teardown" "${config_args[@]}" --dry-run --run "$1" \
		</dev/null >"$work/dry-run" 2>/dev/null
	wait "$pid" || rc=$?
	[[ "$rc" -eq 0 ]] || return 0
	line=$(grep -F -m 1 "(and keep) volume $volume_name (" "$work/dry-run") || true
	if [[ -n "$line" ]]; then
		new_id=${line#*"(and keep) volume $volume_name ("}
		new_id=${new_id%%)*}
		new_volume="$volume_name ($new_id)"
		volume_made=yes
	elif grep -q -F "the local state and keys of run $1 (" "$work/dry-run"; then
		volume_made=no
	fi
}

do_teardown() {
	[[ "$provisioned" -eq 1 && "$torn_down" -eq 0 ]] || return 0
	# Signals ignored first, as in backup-all.sh: none may land between
	# marking the teardown done and starting it.
	ignore_stop_signals
	torn_down=1
	local run_id kept
	run_id=$(jq -r '.run_id // empty' "$run_json" 2>/dev/null) || true
	if [[ -z "$run_id" ]] && ! run_id=$(started_run_id "$run_id_file"); then
		volume_made=no # nothing created, nothing to tear down
		return 0
	fi
	run_started=1
	if [[ -z "$new_id" ]]; then
		find_new_volume "$run_id"
	fi
	case "$volume_made" in
	yes) kept="the new volume $new_volume is kept" ;;
	no) kept="it made no new volume" ;;
	*) kept="the new volume, if made, is kept" ;;
	esac
	# Provisioning that did not finish is torn down by its run id.
	teardown_run "$run_json" "$run_id_file" \
		"deleting the temporary droplet and key of run RUN_ID (the new volume is kept)" \
		"deleting what run RUN_ID created (provisioning did not finish; $kept)" \
		"" "${config_args[@]}" || teardown_failed=1
}

# report_end RC: the last lines of a run that did not succeed, after the
# teardown's: why (fail's message, an interruption, an unexpected error),
# where that leaves the new volume, and what to do.
report_end() {
	local why=$last_msg hint=$last_hint how="the restore failed (exit $1)"
	if [[ "$interrupted" -eq 1 ]]; then
		how="the restore was stopped"
	fi
	case "$stage" in
	check | version)
		# die said why; only an interruption is said here.
		[[ -z "$why" && "$interrupted" -eq 1 ]] || return 0
		why="$how before it created anything in DigitalOcean: nothing was created there"
		if [[ "$stage" == version && -e "$work" ]]; then
			why="$how while it wrote version $version to a temporary file, before it created anything in DigitalOcean: nothing was created there; remove $work, which is left"
		elif [[ "$stage" == version ]]; then
			why="$how while it wrote version $version to a temporary file, before it created anything in DigitalOcean: nothing was created there, and the temporary file was removed"
		fi
		;;
	provision)
		if [[ "$run_started" -eq 0 ]]; then
			: "${why:="$how while provisioning, before it created anything: nothing was created in DigitalOcean"}"
		else
			: "${why:="$how while provisioning"}"
			case "$volume_made" in
			yes)
				why+=": the new volume $new_volume was made and is kept, empty; a restore with --volume-name $volume_name is refused (exit 4) while it exists"
				hint=${hint:-$incomplete_hint}
				;;
			no) why+=": the new volume $volume_name was not made (its run recorded none)" ;;
			*)
				why+=": whether the new volume $volume_name was made is not known here (dosvob-provision's message above names it if it kept it); if it was, it is kept, empty, and a restore with --volume-name $volume_name is refused (exit 4) while it exists"
				hint=${hint:-"look for $volume_name in $region in the control panel: $incomplete_hint"}
				;;
			esac
		fi
		;;
	ready)
		: "${why:="$how before it wrote the new volume: $new_volume is kept, empty"}"
		hint=${hint:-$incomplete_hint}
		;;
	writing)
		: "${why:="$how while writing: the new volume $new_volume is kept but incomplete"}"
		hint=${hint:-$incomplete_hint}
		;;
	verify)
		: "${why:="$how while verifying: the new volume $new_volume is kept; it was written and dosvob-patch checked it against the image, but the SHA-256 comparison did not finish"}"
		hint=${hint:-"$incomplete_hint, to have it checked to the end"}
		;;
	teardown)
		if [[ "$teardown_failed" -eq 1 ]]; then
			why="the new volume $new_volume holds the image and is kept, but the teardown failed: temporary resources are left (see below)"
			hint=""
		else
			why="$how after it restored the new volume: $new_volume holds the image and is kept"
		fi
		;;
	esac
	log "$why"
	if [[ -n "$hint" ]]; then
		log "hint: $hint"
	fi
}

# on_signal NAME: SIGINT, SIGTERM, SIGHUP and SIGPIPE, as in backup-all.sh.
on_signal() {
	ignore_stop_signals
	interrupted=1
	if [[ "$provisioned" -eq 1 ]]; then
		log "received SIG$1: stopping, then deleting the temporary droplet"
	else
		log "received SIG$1: stopping"
	fi
	if [[ -n "$child_pid" ]]; then
		stop_group "$child_pid"
		wait "$child_pid" 2>/dev/null || true
	fi
	exit "$EXIT_INTERRUPTED"
}

on_exit() {
	local rc=$?
	ignore_stop_signals
	set +e
	do_teardown
	if [[ "$teardown_failed" -eq 0 ]]; then
		rm -rf -- "$work"
	fi
	if [[ "$teardown_failed" -eq 1 ]]; then
		rc=$EXIT_TEARDOWN
	elif [[ "$interrupted" -eq 1 ]]; then
		rc=$EXIT_INTERRUPTED
	elif [[ "$rc" -eq 0 && "$completed" -eq 0 ]]; then
		# A signal this script does not trap (bash runs this trap with $?
		# 0): never a success.
		log "stopped before the end of the restore (an untrapped signal): it failed"
		rc=$EXIT_FAILED
	fi
	if [[ "$completed" -eq 0 ]]; then
		report_end "$rc"
	fi
	if [[ "$teardown_failed" -eq 1 ]]; then
		# The work directory stays for the next run, which tears the run
		# down at once; so does the owner lock in it, without whose file
		# --cleanup-stale could not tell the run dead for 48 hours. Its
		# lines, with the teardown command, come last.
		keep_work_dir "$work"
	fi
	exit "$rc"
}

trap on_exit EXIT
trap_stop_signals

# run_bg CMD...: run CMD in its own process group and wait for it, so a
# signal reaches this script first; returns CMD's exit code. CMD's output
# goes to files through redir, never through redirections of the run_bg
# call: those would hold while the trap of a signal runs in it, and what
# the trap logs would go into the file, unseen.
run_bg() {
	local rc=0
	run_group child_pid "$@"
	wait "$child_pid" || rc=$?
	child_pid=""
	return "$rc"
}

# redir OUT ERR CMD...: exec CMD (a program, or with_token) with stdin from
# /dev/null and stdout and stderr into the files OUT and ERR ("-" leaves
# that one as it is). Exec, so that run_bg waits for CMD itself.
redir() {
	local out=$1 err=$2
	shift 2
	exec </dev/null
	if [[ "$out" != - ]]; then
		exec >"$out"
	fi
	if [[ "$err" != - ]]; then
		exec 2>"$err"
	fi
	if [[ "$1" == with_token ]]; then
		"$@" # it execs the program
	fi
	exec "$@"
}

# ---- the image's state -----------------------------------------------------

# The image's manifest must be readable before anything is created: a
# damaged one (exit 5 of every dosvob command on IMAGE) would otherwise stop
# the restore only after the new volume was made.
rc=0
run_bg redir /dev/null "$work/check.err" "$patch" versions "$image" || rc=$?
if [[ "$rc" -ne 0 ]]; then
	why=$(grep -v -m 1 '^dosvob-patch: hint:' "$work/check.err" | sed 's/^dosvob-patch: //') || true
	case "$rc" in
	"$EXIT_REFUSED") die "$EXIT_REFUSED" "refusing \"$image\": dosvob-patch cannot read it as a dosvob image: ${why:-exit $rc}" ;;
	"$EXIT_CORRUPT")
		die "$EXIT_CORRUPT" "cannot restore \"$image\": its state is damaged: ${why:-dosvob-patch exit $rc}; nothing was created" \
			"the image itself may be intact: see docs/MANIFEST.md, \"Damaged state files\", or restore another copy"
		;;
	"$EXIT_LOCKED") die "$EXIT_LOCKED" "another dosvob process holds the image $image: ${why:-dosvob-patch exit $rc}" "wait for it to finish, then restore" ;;
	*) die "$EXIT_FAILED" "cannot read the state of \"$image\" (dosvob-patch versions exit $rc): ${why:-no message}" ;;
	esac
fi

# What is restored, from the manifest that dosvob-patch has just read (see
# docs/MANIFEST.md): the source volume, and the time of the newest backup.
mapfile -t about < <(jq -r '
	(.source // {}) as $s
	| (if $s.volume_name and $s.volume_id then "\($s.volume_name) (id \($s.volume_id))"
	   elif $s.volume_name then $s.volume_name
	   elif $s.volume_id then "volume id \($s.volume_id)"
	   else "a volume that its manifest does not name" end),
	  ((.backup_time // "") | sub("\\.[0-9]+Z$"; "Z")
	   | try (fromdateiso8601 | strftime("%Y-%m-%d %H:%M UTC")) catch "an unknown time")
' "$image.dosvob/manifest.json" 2>/dev/null) || true
restoring="restoring ${about[0]:-a volume that its manifest does not name}"

# ---- a kept version --------------------------------------------------------

# The version goes into the work directory, never beside the image (whose
# disk may be read-only); it goes with the work directory.
if [[ -n "$version" ]]; then
	stage=version
	version_file="$work/version.img"
	log "$restoring, version $version of $image: writing it to a temporary file in $work first"
	rc=0
	run_bg redir - "$work/version.err" "$patch" restore-version --version "$version" --output "$version_file" "$image" || rc=$?
	if [[ "$rc" -ne 0 ]] && grep -qi 'no space left on device' "$work/version.err"; then
		die "$EXIT_FAILED" "no room for version $version in $tmp_dir: it needs up to $(human_bytes "$(stat -c %s -- "$image")") (the image's size), $(human_bytes "$(df -B1 --output=avail -- "$tmp_dir" | tail -n 1 | tr -d ' ')") is free; nothing was created in DigitalOcean" \
			"give --tmp-dir DIR on a disk with that much room"
	fi
	while IFS= read -r line; do
		log "[version] $line"
	done <"$work/version.err"
	if [[ "$rc" -ne 0 ]]; then
		die "$EXIT_FAILED" "could not write version $version (dosvob-patch exit $rc); nothing was created in DigitalOcean" "list the kept versions with: dosvob-patch versions $image"
	fi
	source_file=$version_file
else
	log "$restoring, backup of ${about[1]:-an unknown time}, from $image"
fi

image_bytes=$(stat -c %s -- "$source_file")
if [[ -z "$size_gib" ]]; then
	gib=$((1024 * 1024 * 1024))
	size_gib=$(((image_bytes + gib - 1) / gib))
	if [[ "$size_gib" -lt 1 ]]; then
		size_gib=1
	fi
elif [[ $((size_gib * 1024 * 1024 * 1024)) -lt "$image_bytes" ]]; then
	usage_error "--size-gib $size_gib is smaller than the image ($(human_bytes "$image_bytes"))"
fi

# ---- provision -------------------------------------------------------------

log "creating the new volume $volume_name ($size_gib GiB) in $region and a temporary droplet to fill it"
stage=provision
provisioned=1
rc=0
run_bg redir "$run_json" - with_token "$provision" "${config_args[@]}" --restore --volume-name "$volume_name" \
	--region "$region" --size-gib "$size_gib" --owner-lock-fd 8 --run-id-file "$run_id_file" \
	8>&9 6<&7 || rc=$?
# Whether it created anything is told by the run id it writes first, never
# by its exit code (a crash may exit 2): with a run, any failure is 7, and
# on_exit tears the run down and says whether the new volume was made.
if [[ "$rc" -ne 0 ]] && run_id=$(started_run_id "$run_id_file"); then
	fail "$EXIT_PROVISION" "provisioning failed (dosvob-provision exit $rc) after it had started run $run_id"
fi
case "$rc" in
0) ;;
"$EXIT_USAGE")
	fail "$EXIT_USAGE" "dosvob-provision refused the config or arguments (exit $rc): nothing was created" \
		"fix what its message names${config:+ in $config}"
	;;
"$EXIT_REFUSED")
	fail "$EXIT_REFUSED" "refusing to restore into $volume_name: dosvob-provision refused (exit $rc); nothing was created" \
		"a restore always makes a new volume: choose a name that does not exist in $region (or delete $volume_name first, if an interrupted restore left it)"
	;;
"$EXIT_LOCKED")
	fail "$EXIT_LOCKED" "dosvob-provision would not start (exit $rc): a lock is held, or interrupted runs left resources" \
		"its message above says which; leftovers go with the dosvob-teardown --run ID it names"
	;;
*) fail "$EXIT_PROVISION" "provisioning failed (dosvob-provision exit $rc)" ;;
esac
if ! jq -e '.run_id and (.volumes | length == 1) and (.droplets | length == 1)' "$run_json" >/dev/null 2>&1; then
	fail "$EXIT_PROVISION" "dosvob-provision printed no valid restore JSON (want one volume and one droplet)"
fi
new_id=$(jq -r '.volumes[0].copy_id' "$run_json")
new_volume="$volume_name ($new_id)"
volume_made=yes
stage=ready
ssh_opts_for "$run_json"
device=$(jq -r '.volumes[0].device_path' "$run_json")
addr=$(jq -r '.droplets[0].address' "$run_json")
port=$(jq -r '.droplets[0].port // 22' "$run_json")
user=$(jq -r '.droplets[0].user // "root"' "$run_json")
rhash=$(jq -r '.droplets[0].remote_hash_path' "$run_json")
rpatch=$(jq -r '.droplets[0].remote_patch_path' "$run_json")
target="$user@$addr"

# ---- the pipe, the other way round ----------------------------------------

# restore_pipe: returns 0, or EXIT_CORRUPT when the local dosvob-hash
# --delta found that the image is not the backup its manifest describes
# (its exit 5; it cuts the stream, so the remote apply fails too), else 1.
restore_pipe() {
	set +e # a background job: collect every stage's status, do not stop at the first
	"$ssh_prog" "${SSH_OPTS[@]}" -p "$port" "$target" "$(remote_cmd "$rhash" --raw "$device")" 2>"$work/sign.err" </dev/null |
		"$hash" --delta "${delta_args[@]}" "$source_file" 2>"$work/delta.err" |
		"$ssh_prog" "${SSH_OPTS[@]}" -p "$port" "$target" "$(remote_cmd "$rpatch" --raw "$device")" 2>"$work/apply.err"
	local st=("${PIPESTATUS[@]}") f line
	for f in sign delta apply; do
		while IFS= read -r line; do
			log "[$f] $line"
		done <"$work/$f.err"
	done
	if [[ "${st[0]}" -ne 0 || "${st[1]}" -ne 0 || "${st[2]}" -ne 0 ]]; then
		log "the restore pipe failed (remote sign ${st[0]}, local delta ${st[1]}, remote apply ${st[2]})"
		if [[ "${st[1]}" -eq "$EXIT_CORRUPT" ]]; then
			return "$EXIT_CORRUPT"
		fi
		return 1
	fi
}

log "writing $(human_bytes "$image_bytes") from $source_file onto $volume_name ($device)"
rc=0
stage=writing
run_bg restore_pipe || rc=$?
case "$rc" in
0) ;;
"$EXIT_CORRUPT")
	damaged="the backup image $image"
	if [[ -n "$version" ]]; then
		damaged="the temporary file of version $version"
	fi
	fail "$EXIT_CORRUPT" "restore into $volume_name failed: $damaged is damaged (dosvob-hash found it is not the backup its manifest describes: see [delta] above), not the new volume and not the network; the new volume $new_volume is kept but incomplete" \
		"check the image with: dosvob-hash --verify $image; restore a kept version instead (--version, listed by dosvob-patch versions $image) or another copy, after deleting the incomplete $volume_name or with another --volume-name"
	;;
*) fail "$EXIT_FAILED" "restore into $volume_name failed; the new volume $new_volume is kept but incomplete" "$incomplete_hint" ;;
esac

# ---- verify ----------------------------------------------------------------

local_sum=""
if [[ "$sha_check" -eq 1 ]]; then
	stage=verify
	log "verifying: SHA-256 of the first $(human_bytes "$image_bytes") of the volume against the image"
	remote_sum_cmd="head -c $image_bytes $(printf '%q' "$device") | sha256sum"
	verify() {
		"$ssh_prog" "${SSH_OPTS[@]}" -p "$port" "$target" "$remote_sum_cmd" </dev/null >"$work/remote.sum" &
		local rpid=$!
		sha256sum <"$source_file" >"$work/local.sum"
		wait "$rpid"
	}
	rc=0
	run_bg verify || rc=$?
	remote_sum=$(awk '{print $1}' "$work/remote.sum" 2>/dev/null || true)
	local_sum=$(awk '{print $1}' "$work/local.sum" 2>/dev/null || true)
	if [[ "$rc" -ne 0 || -z "$remote_sum" || "$remote_sum" != "$local_sum" ]]; then
		fail "$EXIT_FAILED" "verification failed: volume ${remote_sum:-unreadable}, image ${local_sum:-unreadable}; the new volume $new_volume is kept" \
			"delete it and run restore.sh again"
	fi
	log "verified: $local_sum"
fi

stage=teardown
do_teardown
if [[ "$teardown_failed" -eq 1 ]]; then
	exit "$EXIT_TEARDOWN"
fi
log "done: $volume_name ($new_id) in $region holds the image and is detached, ready to attach"
jq -cn --arg name "$volume_name" --arg id "$new_id" --arg region "$region" \
	--argjson size "$size_gib" --arg sum "$local_sum" \
	'{name: $name, id: $id, region: $region, size_gib: $size, sha256: (if $sum == "" then null else $sum end)}'
completed=1
