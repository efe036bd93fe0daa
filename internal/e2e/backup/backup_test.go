package backup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupAndRestore: a first backup and an incremental one. Each time
// every image is byte-identical to its volume's snapshot, the second run
// keeps the first as a version, and nothing of either run is left in the
// account. Then restores from those backups (see checkRestore).
func TestBackupAndRestore(t *testing.T) {
	t.Parallel()
	// Volumes as backing files: the demo test below covers loop devices.
	e := newEnv(t, false)

	// A dry run plans and prices, and creates nothing.
	dry := e.backup("--dry-run")
	if dry.code != 0 || !strings.Contains(dry.stderr, "$") {
		t.Fatalf("backup-all.sh --dry-run exited %d, want 0 and a cost estimate\nstderr:\n%s", dry.code, dry.stderr)
	}
	if diff := stateDiff(e.initial, e.emu.State()); diff != "" {
		t.Fatalf("a dry run changed the account: %s", diff)
	}
	if _, err := os.Stat(e.backups); err == nil {
		t.Errorf("a dry run made the backup directory")
	}

	p := newPings(t)
	hook := filepath.Join(e.dir, "hook.out")
	r := e.mustBackup("-j", "2", "--ping-url", p.srv.URL+"/uuid-1", "--hook", hookCommand(hook))
	checkPings(t, p, "uuid-1", true)
	checkHook(t, hook, "success 0")
	t.Logf("first run: %v", r.dur)
	e.checkImages()
	e.checkNothingLeft()
	for _, want := range []string{"fra1/db", "nyc1/web", "VOLUME", "RESULT", "teardown complete"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the log lacks %q:\n%s", want, r.stderr)
		}
	}
	if r.stdout != "" {
		t.Errorf("backup-all.sh wrote to stdout: %q", r.stdout)
	}
	if strings.Contains(r.stderr+r.stdout, token) {
		t.Fatalf("the API token appears in the output")
	}

	e.change("fra1/db", 20)
	e.change("nyc1/web", 5)
	// The reads in flight and the compression level reach dosvob-hash on
	// the droplets, which says so in its summary.
	// A state directory given to dosvob-provision reaches the teardown
	// too: the run's key and state are gone from it afterwards.
	otherState := filepath.Join(e.dir, "other-state")
	r = e.mustBackup("-j", "1", "--readers", "3", "--level", "4", "--provision-arg", "--state-dir="+otherState)
	t.Logf("second run: %v", r.dur)
	if runs, err := os.ReadDir(filepath.Join(otherState, "runs")); err != nil || len(runs) != 0 {
		t.Errorf("--provision-arg --state-dir: %d runs left in it (%v), want none", len(runs), err)
	}
	for _, v := range sourceVolumes {
		if !strings.Contains(r.stderr, "["+v+"] dosvob-hash: delta of ") {
			t.Errorf("the log lacks the droplet's summary for %s:\n%s", v, r.stderr)
		}
	}
	if n := strings.Count(r.stderr, "up to 3 reads in flight), "); n != len(sourceVolumes) {
		t.Errorf("%d of %d deltas say they had up to 3 reads in flight:\n%s", n, len(sourceVolumes), r.stderr)
	}
	if n := strings.Count(r.stderr, " sent at zstd level 4 in "); n != len(sourceVolumes) {
		t.Errorf("%d of %d deltas say they used zstd level 4:\n%s", n, len(sourceVolumes), r.stderr)
	}
	e.checkImages()
	e.checkNothingLeft()
	for _, v := range sourceVolumes {
		if n := len(versions(t, e.image(v))); n != 1 {
			t.Errorf("%s keeps %d versions after two runs, want 1", v, n)
		}
	}
	if strings.Contains(r.stderr+r.stdout, token) {
		t.Fatalf("the API token appears in the output")
	}

	t.Run("restore", func(t *testing.T) {
		e.t = t
		checkRestore(t, e)
	})
}
