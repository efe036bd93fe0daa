#!/usr/bin/env bash
#
# demo.sh: see dosvob back up DigitalOcean volumes, with no DigitalOcean
# account: everything runs against dosvob's API emulator on this machine,
# whose droplets are real OpenSSH servers on loopback addresses.
#
# Run it as root on a Debian or Ubuntu machine (it installs what it needs):
#   sudo scripts/demo.sh
# It takes a couple of minutes and stops everything it started.
#
# shellcheck source-path=SCRIPTDIR
# Functions run from traps: not unreachable.
# shellcheck disable=SC2317

set -euo pipefail

# shellcheck disable=SC2034 # read by lib/common.sh
DOSVOB_PROG=demo
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
# shellcheck source=lib/common.sh
. "$script_dir/lib/common.sh"

usage() {
	cat <<'EOF'
Usage: demo.sh [--keep] [--workdir DIR]

Shows dosvob at work against its DigitalOcean API emulator: a sample account
with two regions, three volumes holding ext4 file systems (one excluded by
the config) and the user's own droplets, snapshot, key and tags. It backs
the volumes up, changes files on them, backs them up again (only the change
travels), shows the changed files inside the backup image, lists the kept
versions, scrubs the images, and shows that nothing temporary is left and
the user's resources are untouched.

Needs root (the emulated droplets run real sshd, their volumes are loop
devices). Installs openssh-server, e2fsprogs, jq and curl with apt-get when
missing. Builds the binaries with Go unless DOSVOB_BIN names a directory
that holds them.

Options:
  --keep         keep the work directory (backups, logs) afterwards
  --workdir DIR  work in DIR, which must be new or empty: it is made private
                 and deleted at the end unless --keep (default: a new
                 temporary directory)
  -h, --help     show this help
EOF
}

keep=0
work=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	-h | --help)
		usage
		exit 0
		;;
	--keep) keep=1; shift ;;
	--workdir)
		[[ $# -ge 2 ]] || die 2 "--workdir needs a directory"
		work=$2
		shift 2
		;;
	*) die 2 "unknown argument \"$1\"" "see demo.sh --help" ;;
	esac
done
# The demo deletes its work directory at the end: never one that holds
# anything of the user's.
if [[ -n "$work" && -e "$work" ]] && { [[ ! -d "$work" ]] || [[ -n "$(ls -A -- "$work")" ]]; }; then
	die 2 "--workdir \"$work\" exists and is not an empty directory" "give a new or empty directory: the demo deletes it at the end (unless --keep)"
fi

# say TEXT...: a step of the demo, in words, set off from the tools' output.
step=0
bold="" plain=""
if [[ -t 2 ]]; then
	bold=$'\033[1m' plain=$'\033[0m'
fi
say() {
	step=$((step + 1))
	printf '\n%s== %d. %s%s\n' "$bold" "$step" "$*" "$plain" >&2
}
note() {
	printf '   %s\n' "$@" >&2
}

if [[ "$(id -u)" -ne 0 ]]; then
	die 1 "the demo needs root: its emulated droplets run real sshd and see their volumes as loop devices" \
		"run it as: sudo $0"
fi

# ---- what it needs ---------------------------------------------------------

say "Checking what the demo needs"
missing=()
for pair in sshd:openssh-server ssh:openssh-client debugfs:e2fsprogs mkfs.ext4:e2fsprogs jq:jq curl:curl flock:util-linux losetup:mount; do
	cmd=${pair%%:*}
	pkg=${pair#*:}
	if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$cmd" ]]; then
		missing+=("$pkg")
	fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
	note "installing with apt-get: ${missing[*]}"
	if ! command -v apt-get >/dev/null 2>&1; then
		die 1 "missing ${missing[*]} and no apt-get to install them" "install them with your package manager, then run the demo again"
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
	note "everything is installed (sshd, ssh, e2fsprogs, jq, curl, flock, losetup)"
fi

if [[ -z "$work" ]]; then
	work=$(mktemp -d "${TMPDIR:-/tmp}/dosvob-demo.XXXXXX")
else
	mkdir -p "$work"
	work=$(cd "$work" && pwd)
fi
chmod 700 "$work"

emu_pid=""
cleanup() {
	local rc=$?
	trap '' INT TERM
	if [[ -n "$emu_pid" ]]; then
		note "" "stopping the emulator (its droplets' sshd and loop devices go with it)"
		kill -TERM "$emu_pid" 2>/dev/null || true
		wait "$emu_pid" 2>/dev/null || true
	fi
	if [[ "$keep" -eq 1 || "$rc" -ne 0 ]]; then
		note "the work directory is kept: $work"
	else
		rm -rf -- "$work"
	fi
	if [[ "$rc" -ne 0 ]]; then
		log "the demo failed (exit $rc); the emulator's log is $work/emulator.log"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the binaries ----------------------------------------------------------

say "Building dosvob"
if [[ -n "${DOSVOB_BIN:-}" ]]; then
	bin=$DOSVOB_BIN
	note "using the binaries in $bin (DOSVOB_BIN)"
else
	if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
		# sudo resets PATH; Go's own installer puts it here.
		PATH=$PATH:/usr/local/go/bin
	fi
	if ! command -v go >/dev/null 2>&1; then
		die 1 "go not found: the demo builds dosvob from this checkout" \
			"install Go (https://go.dev/dl/), or set DOSVOB_BIN to a directory with the dosvob binaries"
	fi
	bin="$work/bin"
	note "CGO_ENABLED=0 go build -o $bin/ ./cmd/...   (static: dosvob-provision uploads dosvob-hash to the droplets)"
	(cd "$repo" && CGO_ENABLED=0 go build -o "$bin/" ./cmd/...)
fi
check_bins "$bin" dosvob-emulator dosvob-provision dosvob-teardown dosvob-hash dosvob-patch
export PATH="$bin:$PATH"

# ---- the emulator ----------------------------------------------------------

say "Starting the DigitalOcean API emulator with a sample account"
umask 077
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
note "account: scripts/demo/account.yaml (two regions, three volumes with ext4 file systems, the user's own droplets, snapshot, key and tags)" \
	"the emulated droplets answer SSH on 127.0.0.2, 127.0.0.3, ... port 2222; their volumes are loop devices" \
	"(DigitalOcean allows one snapshot per volume per 10 minutes: the demo lifts that limit, so the second backup can follow at once)"
dosvob-emulator --token-file "$work/token" --account "$script_dir/demo/account.yaml" \
	--data "$work/emulator" --url-file "$work/url" --ssh --ssh-port 2222 \
	--action-delay 300ms --snapshot-interval=-1s --quiet >/dev/null 2>"$work/emulator.log" &
emu_pid=$!
for _ in $(seq 100); do
	[[ -s "$work/url" ]] && break
	if ! kill -0 "$emu_pid" 2>/dev/null; then
		cat "$work/emulator.log" >&2
		emu_pid=""
		die 1 "the emulator did not start"
	fi
	sleep 0.1
done
[[ -s "$work/url" ]] || die 1 "the emulator did not start within 10 seconds"
url=$(cat "$work/url")
note "listening on $url"

# api GET PATH: the emulator's API, with the token from its file (never argv).
api() {
	curl -fsS -H @- "$url${1#/}" <<<"Authorization: Bearer $(cat "$work/token")"
}

# account_view: the account as a user sees it, for before/after comparison.
account_view() {
	api emulator/state | jq -S '{
		volumes: [.volumes[] | {region, name, id, size_gigabytes, tags, droplet_ids}],
		droplets: [.droplets[] | {region, name, id, status, tags, volume_ids}],
		snapshots: [.snapshots[] | {region, name, id, resource_id}],
		keys: [.keys[] | {name, id, fingerprint}]
	}'
}

show_account() {
	api emulator/state | jq -r '
		"   volumes:   " + ([.volumes[] | "\(.region)/\(.name)" + (if (.droplet_ids // []) | length > 0 then " (attached)" else "" end)] | join(", ")),
		"   droplets:  " + ([.droplets[] | "\(.name) (\(.region), \(.status))"] | join(", ")),
		"   snapshots: " + ([.snapshots[] | .name] | join(", ")),
		"   ssh keys:  " + ([.keys[] | .name] | join(", "))' >&2
}

show_account
account_view >"$work/account-before.json"

# The config dosvob reads: scripts/demo/conf.json with this run's paths.
jq --arg t "$work/token" --arg u "$url" --arg s "$work/state" \
	'.token_file = $t | .api_url = $u | .state_dir = $s' \
	"$script_dir/demo/conf.json" >"$work/conf.json"
chmod 600 "$work/conf.json"
note "config $work/conf.json (mode 0600): excludes the volume \"scratch\"; the token is in a file, never on a command line"

backups="$work/backups"
volume_file() { # REGION NAME: the emulator's backing file of a source volume
	api emulator/state | jq -er --arg r "$1" --arg n "$2" '.volumes[] | select(.region == $r and .name == $n) | .file'
}

# ---- the first backup ------------------------------------------------------

say "The first backup: scripts/backup-all.sh --config conf.json $backups"
note "it snapshots each volume, copies it, starts a temporary droplet per region with a pinned host key," \
	"streams every non-zero block home over ssh, and deletes everything temporary again" ""
"$script_dir/backup-all.sh" --config "$work/conf.json" --keep 5 "$backups"

say "What is on the backup disk"
(cd "$backups" && find . -name '*.img' -printf '   %p: %s bytes, %k KiB on disk (sparse: the empty blocks are holes)\n' | sort) >&2
note "" "files in the backup of nyc1/website (read with debugfs, no mount needed):"
debugfs -R "ls -l /" "$backups/nyc1/website.img" 2>/dev/null | sed 's/^/     /' >&2

# ---- change, and back up again ---------------------------------------------

say "Changing files on the volumes, as the applications would"
printf '<h1>Welcome to Sammy'"'"'s shop</h1>\n<p>Winter sale: 20%% off!</p>\n' >"$work/index.html"
printf 'id,customer,total\n1,alice,12.50\n2,bob,7.00\n3,carol,99.90\n' >"$work/orders.csv"
web_file=$(volume_file nyc1 website)
db_file=$(volume_file fra1 database)
debugfs -w -f - "$web_file" >/dev/null 2>&1 <<EOF
rm /index.html
write $work/index.html /index.html
EOF
debugfs -w -f - "$db_file" >/dev/null 2>&1 <<EOF
rm /orders.csv
write $work/orders.csv /orders.csv
EOF
note "nyc1/website: index.html now announces a sale" "fra1/database: orders.csv has a new order"

say "The second backup: only the changed blocks travel"
"$script_dir/backup-all.sh" --config "$work/conf.json" --keep 5 "$backups"

say "The backup holds the changed files"
note "index.html in the backup of nyc1/website:"
debugfs -R "cat /index.html" "$backups/nyc1/website.img" 2>/dev/null | sed 's/^/     /' >&2
note "orders.csv in the backup of fra1/database:"
debugfs -R "cat /orders.csv" "$backups/fra1/database.img" 2>/dev/null | sed 's/^/     /' >&2
if ! debugfs -R "cat /orders.csv" "$backups/fra1/database.img" 2>/dev/null | grep -q carol; then
	die 1 "the new order is not in the backup"
fi

say "The kept versions: the previous backup, as a reverse delta of the blocks that changed"
for img in "$backups"/*/*.img; do
	note "${img#"$backups"/}:"
	dosvob-patch versions "$img" | sed 's/^/     /' >&2
done
img="$backups/nyc1/website.img"
v=$(dosvob-patch versions --json "$img" | jq -r '.[0].name')
dosvob-patch restore-version --version "$v" --output "$work/website-$v.img" "$img" 2>/dev/null
note "" "version $v of nyc1/website, written to a new file, still has the old page (no sale):"
old_page=$(debugfs -R "cat /index.html" "$work/website-$v.img" 2>/dev/null)
printf '     %s\n' "$old_page" >&2
rm -f "$work/website-$v.img"
if [[ "$old_page" != *"Welcome to Sammy"* || "$old_page" == *"Winter sale"* ]]; then
	die 1 "version $v of nyc1/website does not hold the page as it was before the sale"
fi

say "Scrub: every image re-read and checked against its manifest's digest"
for img in "$backups"/*/*.img; do
	dosvob-hash --verify "$img"
done

say "Nothing temporary is left, and the user's resources are untouched"
account_view >"$work/account-after.json"
show_account
if ! diff -u "$work/account-before.json" "$work/account-after.json" >&2; then
	die 1 "the account changed"
fi
note "the account is exactly as before: same volumes (still attached to web-1 and db-1), droplets, snapshot and key"
dosvob-teardown --config "$work/conf.json" --all --dry-run
if [[ -e "$backups/fra1/scratch.img" ]]; then
	die 1 "the excluded volume scratch was backed up"
fi
note "the excluded volume fra1/scratch was not backed up"

say "Done"
note "This is what a run against DigitalOcean does too. docs/OPERATIONS.md shows how to run it for real:" \
	"a token, a config, a schedule (cron, systemd or a container), and scripts/restore.sh for a disaster."
