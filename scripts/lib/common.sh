# shellcheck shell=bash
#
# Shared functions for dosvob's shell scripts (backup-all.sh, restore.sh,
# demo.sh). Source it; it defines functions and a few variables and runs
# nothing else.
#
# Conventions: every message goes to stderr as one timestamped line
# prefixed with the script's name; stdout carries data only.

# DOSVOB_PROG is the name that prefixes every message; scripts set it.
DOSVOB_PROG=${DOSVOB_PROG:-dosvob}

# The environment variables that dosvob-provision and dosvob-teardown read
# the API token from (internal/config's TokenEnv).
DOSVOB_TOKEN_VARS=(DIGITALOCEAN_ACCESS_TOKEN DIGITALOCEAN_TOKEN)

# hide_token: take the token variables out of this shell's environment, at
# a script's start: they stay shell variables, which with_token hands to
# dosvob-provision and dosvob-teardown only. No other child (ssh, dosvob-hash,
# dosvob-patch, jq, curl, the hook) sees the token.
hide_token() {
	export -n "${DOSVOB_TOKEN_VARS[@]}"
}

# with_token CMD...: exec CMD with the token variables that are set in its
# environment. It replaces the shell it runs in: call it in a subshell, as
# run_group's background job or in ( ).
with_token() {
	local v
	for v in "${DOSVOB_TOKEN_VARS[@]}"; do
		if [[ -n "${!v+set}" ]]; then
			export "${v?}"
		fi
	done
	exec "$@"
}

# The signals that stop a run of backup-all.sh or restore.sh as SIGTERM
# does: an interrupt, a kill, a terminal that hung up, a reader that quit.
DOSVOB_STOP_SIGNALS=(INT TERM HUP PIPE)

# trap_stop_signals: run on_signal SIG (the script's own) on each of them.
trap_stop_signals() {
	local sig
	for sig in "${DOSVOB_STOP_SIGNALS[@]}"; do
		# shellcheck disable=SC2064 # the signal's name, now
		trap "on_signal $sig" "$sig"
	done
}

# ignore_stop_signals: from now on this shell ignores them (a teardown
# under way; SIGKILL still works, and the next run cleans up).
ignore_stop_signals() {
	trap '' "${DOSVOB_STOP_SIGNALS[@]}"
}

# log MESSAGE...: one timestamped line on stderr. It never fails: when
# stderr cannot be written any more (a terminal that hung up, a reader that
# quit), this shell and what it starts from then on write to /dev/null
# instead, where a write can neither fail nor kill (a Go program dies of a
# broken pipe on stderr even with SIGPIPE ignored: dosvob-teardown must not).
log() {
	if ! printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$DOSVOB_PROG" "$*" >&2 2>/dev/null; then
		exec 2>/dev/null
	fi
}

# warn MESSAGE...: like log, marked as a warning.
warn() {
	log "warning: $*"
}

# die CODE MESSAGE [HINT]: log the message (and a hint line) and exit.
die() {
	local code=$1 msg=$2 hint=${3:-}
	log "$msg"
	if [[ -n "$hint" ]]; then
		log "hint: $hint"
	fi
	exit "$code"
}

# usage_error MESSAGE: a bad option or argument: exit 2 (every dosvob
# command's usage code) with a hint to read the script's --help.
usage_error() {
	die 2 "$1" "see $DOSVOB_PROG.sh --help"
}

# need_arg OPTION [VALUE...]: in an option loop, called with "$@": fail
# unless OPTION is followed by a non-empty value.
need_arg() {
	if [[ $# -lt 2 || -z "$2" ]]; then
		usage_error "option $1 needs a value"
	fi
}

# need_cmd CMD PACKAGE: fail with exit 1 and an install hint when CMD is
# not on PATH.
need_cmd() {
	local cmd=$1 pkg=$2
	if ! command -v "$cmd" >/dev/null 2>&1; then
		die 2 "$cmd not found" "install it, e.g. apt-get install $pkg"
	fi
}

# use_bins SCRIPT_DIR: settle bin_dir (kept if --bin set it, else
# find_bin_dir), check the four binaries there, and set provision, teardown,
# hash and patch to their paths.
use_bins() {
	if [[ -z "${bin_dir:-}" ]] && ! bin_dir=$(find_bin_dir "$1"); then
		die 2 "dosvob binaries not found" "build them: CGO_ENABLED=0 go build -o bin/ ./cmd/... (or pass --bin DIR)"
	fi
	check_bins "$bin_dir" dosvob-provision dosvob-teardown dosvob-hash dosvob-patch
	# shellcheck disable=SC2034 # used by the sourcing script
	provision="$bin_dir/dosvob-provision" teardown="$bin_dir/dosvob-teardown" \
		hash="$bin_dir/dosvob-hash" patch="$bin_dir/dosvob-patch"
}

# find_bin_dir SCRIPT_DIR: print the directory that holds the dosvob
# binaries. $DOSVOB_BIN wins; then SCRIPT_DIR/../bin (where
# `go build -o bin/ ./cmd/...` puts them in a checkout); then the directory of
# dosvob-provision on PATH.
find_bin_dir() {
	local script_dir=$1 p
	if [[ -n "${DOSVOB_BIN:-}" ]]; then
		printf '%s\n' "$DOSVOB_BIN"
		return 0
	fi
	if [[ -x "$script_dir/../bin/dosvob-provision" ]]; then
		(cd "$script_dir/../bin" && pwd)
		return 0
	fi
	if p=$(command -v dosvob-provision 2>/dev/null); then
		dirname "$p"
		return 0
	fi
	return 1
}

# check_bins DIR NAME...: fail unless every named binary is executable in DIR.
check_bins() {
	local dir=$1 b
	shift
	for b in "$@"; do
		if [[ ! -x "$dir/$b" ]]; then
			die 2 "$b not found in $dir" "build them: CGO_ENABLED=0 go build -o bin/ ./cmd/... (or pass --bin DIR)"
		fi
	done
}

# need_level VALUE: fail with a usage error unless VALUE is a compression
# level that dosvob-hash --level takes (1 to 4).
need_level() {
	if ! [[ "$1" =~ ^[1-4]$ ]]; then
		usage_error "invalid --level \"$1\": want 1, 2, 3 or 4"
	fi
}

# is_uint VALUE: true when VALUE is a non-negative decimal integer.
is_uint() {
	[[ "$1" =~ ^[0-9]+$ ]]
}

# human_bytes N: print N bytes with a binary unit (B, KiB, MiB, GiB, TiB).
human_bytes() {
	local n=$1
	if ! is_uint "$n"; then
		printf '%s' "-"
		return 0
	fi
	awk -v n="$n" 'BEGIN {
		split("B KiB MiB GiB TiB PiB", u, " ")
		i = 1
		while (n >= 1024 && i < 6) { n /= 1024; i++ }
		if (i == 1) printf "%d %s", n, u[i]; else printf "%.1f %s", n, u[i]
	}'
}

# ssh_opts_for RUN_JSON: fill the global array SSH_OPTS with the options that
# pin the run's host key and use the run's key, nothing else: no user ssh
# config, no keys but the run's, no trust on first use.
# shellcheck disable=SC2034 # used by the scripts that source this file
SSH_OPTS=()
ssh_opts_for() {
	local run_json=$1 key known
	key=$(jq -er '.private_key_path' "$run_json")
	known=$(jq -er '.known_hosts_path' "$run_json")
	# shellcheck disable=SC2034 # used by the scripts that source this file
	SSH_OPTS=(
		-F none
		-i "$key"
		-o IdentitiesOnly=yes
		-o UserKnownHostsFile="$known"
		-o GlobalKnownHostsFile=/dev/null
		-o StrictHostKeyChecking=yes
		-o UpdateHostKeys=no
		-o BatchMode=yes
		-o ConnectTimeout=30
		-o ServerAliveInterval=15
		-o ServerAliveCountMax=4
		-o LogLevel=ERROR
	)
}

# remote_cmd ARG...: print the arguments quoted for the remote shell (or
# for the user's, in a hint).
remote_cmd() {
	local out="" a
	for a in "$@"; do
		out+="$(printf '%q' "$a") "
	done
	printf '%s\n' "${out% }"
}

# run_group VAR CMD...: start CMD in its own process group (so a terminal's
# Ctrl-C reaches the calling script only, which then stops it in order) and
# store its pid in VAR. CMD inherits neither fd 9, the lock, nor fd 7, the
# work directory's lock (make_work_dir).
run_group() {
	local -n pid_ref=$1
	shift
	set -m
	"$@" 7<&- 9>&- &
	# shellcheck disable=SC2034 # a nameref: sets the caller's variable
	pid_ref=$!
	set +m
}

# stop_group PID: send SIGTERM to the process group led by PID (a job
# started with `set -m`), if it still exists.
stop_group() {
	local pid=$1
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
}

# started_run_id ID_FILE: print the run id that dosvob-provision wrote to
# ID_FILE (its --run-id-file) before it created anything; false when there
# is none. Only this tells whether a provision created anything: its exit
# code does not (a crash after the run began may exit 2, as a refused config
# does).
started_run_id() {
	local id=""
	id=$(head -n 1 -- "$1" 2>/dev/null) || true
	[[ -n "$id" ]] || return 1
	printf '%s\n' "$id"
}

# teardown_run JSON ID_FILE DONE PARTIAL OK [ARG...]: tear down this
# script's run and nothing else: by its run JSON, or, when provisioning did
# not finish, by the run id that dosvob-provision wrote to ID_FILE before it
# created anything (never --all, which would take runs going beside it).
# DONE and PARTIAL are the log lines of the two cases, RUN_ID standing for
# the run id; OK, unless empty, is logged when the teardown succeeds. ARGs
# go to dosvob-teardown ($teardown), which holds the work directory's lock
# (fd 7, as fd 6) while it runs. Returns 1 when the teardown failed, logged;
# ID_FILE then names the run, for keep_work_dir.
teardown_run() {
	local json=$1 id_file=$2 done_msg=$3 partial_msg=$4 ok_msg=$5 rc=0 pid="" run_id=""
	shift 5
	run_id=$(jq -r '.run_id // empty' "$json" 2>/dev/null || true)
	if [[ -n "$run_id" ]]; then
		log "${done_msg//RUN_ID/$run_id}"
		run_group pid with_token "$teardown" "$@" "$json" </dev/null 6<&7
	elif run_id=$(started_run_id "$id_file"); then
		log "${partial_msg//RUN_ID/$run_id}"
		run_group pid with_token "$teardown" "$@" --run "$run_id" </dev/null 6<&7
	else
		log "provisioning started no run: nothing to tear down"
		return 0
	fi
	wait "$pid" || rc=$?
	if [[ "$rc" -ne 0 ]]; then
		log "teardown failed (dosvob-teardown exit $rc): temporary resources may be left and cost money"
		if [[ ! -s "$id_file" ]]; then
			printf '%s\n' "$run_id" >"$id_file"
		fi
		return 1
	fi
	if [[ -n "$ok_msg" ]]; then
		log "$ok_msg"
	fi
}

# make_work_dir VAR BASE NAME [TEARDOWN_ARG...]: make a work directory
# BASE/NAME.XXXXXX (mode 0700; NAME is dosvob-backup or dosvob-restore, the
# names that clean_dead_work_dirs looks for), store its path in VAR, and lock
# it on fd 7 for the life of this shell: clean_dead_work_dirs tears down its
# run and removes it once no process of the run holds it (children started
# with run_group do not; dosvob-provision and dosvob-teardown get it as
# fd 6). teardown.args records the current directory and the TEARDOWN_ARGs
# (--config, --state-dir, --api-url) that its run's teardown needs. The
# marker .locked, written last, tells a dead run's directory from one that
# is being made.
make_work_dir() {
	local -n dir_ref=$1
	dir_ref=$(mktemp -d "$2/$3.XXXXXX")
	shift 3
	exec 7<"$dir_ref"
	flock -n 7
	printf '%s\0' "$PWD" "$@" >"$dir_ref/teardown.args"
	: >"$dir_ref/.locked"
}

# keep_work_dir DIR: at the exit of a script whose teardown of its run
# failed, keep its work directory DIR instead of removing it: the next run
# of either script (clean_dead_work_dirs) tears the run down at once, then
# removes it. It keeps only what that needs: the marker .locked, run-id,
# teardown.args and, when restore.sh made it there, owner.lock, the run's
# owner lock, whose file must stay so that dosvob-provision --cleanup-stale
# of any run sees the run dead at once instead of after 48 hours. The marker
# teardown-failed says why it was kept. Nothing secret is kept: the token is
# never written to a work directory, and the run's private key is in its
# state directory, which its successful teardown deletes. The last lines say
# where it is and the command that tears the run down now.
keep_work_dir() {
	local d=$1 id args=()
	if ! id=$(started_run_id "$d/run-id") || [[ ! -f "$d/teardown.args" ]]; then
		rm -rf -- "$d"
		return 0
	fi
	find "$d" -mindepth 1 -maxdepth 1 ! -name .locked ! -name run-id ! -name teardown.args \
		! -name owner.lock -exec rm -rf -- {} +
	: >"$d/teardown-failed"
	mapfile -d '' -t args <"$d/teardown.args"
	log "kept the work directory $d for run $id: the next backup-all.sh or restore.sh run with its work directories in ${d%/*} tries the teardown again, then removes it"
	log "hint: or tear the run down now (until it exits 0): $(remote_cmd dosvob-teardown "${args[@]:1}" --run "$id")"
}

# clean_dead_work_dirs BASE: remove the work directories (of backup-all.sh
# and restore.sh) in BASE that runs left when they were killed (SIGKILL, a
# crash) or kept when their teardown failed (keep_work_dir): this user's,
# with the .locked marker, whose lock no process holds.
# One that names a run (its run-id file) is first torn down by that run's
# id, with the arguments its teardown.args recorded, and stays when that
# fails: the directory may hold the run's owner lock (restore.sh's
# owner.lock), without which dosvob-provision --cleanup-stale could not tell
# that the run is dead and would leave it for 48 hours. A live run's
# directory is locked and stays; so does one without the marker (being
# made, or made by an older release). Says what it did.
clean_dead_work_dirs() {
	local base=$1 d fd rc id why
	for d in "$base"/dosvob-backup.?????? "$base"/dosvob-restore.??????; do
		[[ -d "$d" && ! -L "$d" && -O "$d" && -f "$d/.locked" ]] || continue
		{ exec {fd}<"$d"; } 2>/dev/null || continue
		if ! flock -n "$fd"; then
			exec {fd}<&-
			continue
		fi
		rc=0
		why="that was killed"
		if [[ -f "$d/teardown-failed" ]]; then
			why="whose teardown failed"
		fi
		if id=$(started_run_id "$d/run-id") && [[ -f "$d/teardown.args" ]]; then
			teardown_dead_run "$d" "$id" "$why" || rc=$?
		fi
		if [[ "$rc" -ne 0 ]]; then
			warn "kept $d, the work directory of an earlier run $why: the teardown of its run $id failed (dosvob-teardown exit $rc); the next run tries again"
		elif rm -rf -- "$d" 2>/dev/null; then
			log "removed $d, the work directory of an earlier run $why"
		else
			warn "could not remove $d, the work directory of an earlier run $why"
		fi
		exec {fd}<&-
	done
}

# teardown_dead_run DIR ID WHY: tear down run ID of the dead work directory
# DIR (left by an earlier run WHY) with the directory and arguments that
# DIR/teardown.args recorded.
teardown_dead_run() {
	local d=$1 id=$2 why=$3 args=()
	mapfile -d '' -t args <"$d/teardown.args"
	log "tearing down run $id, left by an earlier run $why (its work directory $d)"
	(cd -- "${args[0]}" && with_token "$teardown" "${args[@]:1}" --run "$id") </dev/null 9>&-
}
