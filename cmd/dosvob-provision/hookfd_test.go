package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/cloud"
	"github.com/dosvob/dosvob/internal/doemu"
)

// A snapshot hook that leaves a background process behind (as an ssh
// ControlPersist master does) must not keep the caller's lock: the real
// binary is started as backup-all.sh starts it, its lock as fd 8, and with
// another lock the caller holds (as flock(1) would pass one) as fd 7. The
// hook lists its descriptors: none of them is a lock or a file of the state
// directory, and once the caller is gone both locks are free, while the
// hook's background process still runs.
func TestHookInheritsNoLock(t *testing.T) {
	needRoot(t)
	provision, teardown := buildBinaries(t)
	acct := &doemu.Account{Volumes: []doemu.SeedVolume{{Name: "pgdata", Region: "fra1", SizeGigabytes: 1}}}
	e, err := doemu.New(doemu.Options{Token: killToken, ActionDelay: 10 * time.Millisecond, Account: acct,
		DataDir: t.TempDir(), SSH: true, NoLoopDevices: true, SnapshotInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	before := e.State()

	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	lock, other := filepath.Join(dir, "b.lock"), filepath.Join(dir, "other.lock")
	fds, pidFile := filepath.Join(dir, "hook.fds"), filepath.Join(dir, "hook.pid")
	conf := filepath.Join(dir, "conf.json")
	hook := `ls -l /proc/$$/fd > ` + fds + `; (exec sleep 120 </dev/null >/dev/null 2>&1 & echo $! > ` + pidFile + `)`
	if err := os.WriteFile(conf, []byte(`{"hooks": {"post_snapshot": "`+strings.ReplaceAll(hook, `"`, `\"`)+`"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})

	// As backup-all.sh: fd 9 holds the lock, dosvob-provision gets a copy
	// as fd 8 and not fd 9.
	script := `exec 9>>"$LOCK" 7>>"$OTHER"
flock -n 9 && flock -n 7 || exit 99
"$PROVISION" --config "$CONF" --owner-lock-fd 8 --hash-binary "$HASH" --poll-interval 10ms --retry-backoff 5ms \
	--ssh-wait 20s --action-wait 5s >"$RUN" </dev/null 8>&9 9>&-`
	run := filepath.Join(dir, "run.json")
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "DIGITALOCEAN_ACCESS_TOKEN="+killToken, "DOSVOB_API_URL="+e.URL(), "DOSVOB_STATE_DIR="+state,
		"LOCK="+lock, "OTHER="+other, "PROVISION="+provision, "CONF="+conf, "RUN="+run,
		"HASH="+filepath.Join(filepath.Dir(provision), "dosvob-hash"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("provision: %v\n%s", err, out)
	}
	r := runBin(t, teardown, []string{"DIGITALOCEAN_ACCESS_TOKEN=" + killToken, "DOSVOB_API_URL=" + e.URL(), "DOSVOB_STATE_DIR=" + state,
		"XDG_CONFIG_HOME=" + t.TempDir()}, nil, "--poll-interval", "10ms", run)
	if r.code != 0 {
		t.Fatalf("teardown: exit %d\n%s", r.code, r.stderr)
	}
	if !reflect.DeepEqual(userView(before), userView(e.State())) {
		t.Fatal("account differs after teardown")
	}

	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the hook left no background process: %v\n%s", err, out)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 1 || syscall.Kill(pid, 0) != nil {
		t.Fatalf("the hook's background process %q is not running: the test proves nothing", b)
	}
	listing, err := os.ReadFile(fds)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{lock, other, state} {
		if strings.Contains(string(listing), bad) {
			t.Errorf("the hook inherited a descriptor of %s:\n%s", bad, listing)
		}
	}
	for _, l := range []string{lock, other} {
		if held, err := cloud.LockHeld(l); err != nil || held {
			t.Errorf("the lock %s is held after the run (%v), by the hook's background process", l, err)
		}
	}
}
