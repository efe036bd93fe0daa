package backup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/doemu"
)

// failDropletDeletes makes every droplet delete fail with a 403, which no
// client retries, until ClearFaults: a run's teardown fails and leaves its
// droplets, as an API outage would.
func (e *env) failDropletDeletes() {
	e.emu.InjectFault(doemu.Fault{Method: "DELETE", Path: `/v2/droplets(/[0-9]+)?`, Status: 403,
		Message: "injected: deleting droplets is forbidden", Times: 1000})
}

// checkKeptForRetry checks the run r of prog ("restore" or "backup-all")
// whose final teardown failed: it exits 8; its work directory (the only
// one in the scripts' TMPDIR) is kept with what the next run needs to tear
// its run down (want, beside the marker that says why it was kept) and
// nothing else, no secret; its last lines say where, what happens next,
// and the command that tears the run down now; its droplets are left. It
// returns the directory and the run id.
func (e *env) checkKeptForRetry(t *testing.T, prog string, r result, want ...string) (string, string) {
	t.Helper()
	if r.code != 8 {
		t.Fatalf("%s.sh whose teardown failed exited %d, want 8\nstderr:\n%s", prog, r.code, r.stderr)
	}
	if e.sameAsInitial(e.emu.State(), nil) == "" {
		t.Fatalf("the failed teardown left nothing: the test proves nothing\nstderr:\n%s", r.stderr)
	}
	runs, err := filepath.Glob(filepath.Join(e.dir, "state", "runs", "*"))
	if err != nil || len(runs) != 1 {
		t.Fatalf("runs in the state directory: %v, want the one whose teardown failed (%v)", runs, err)
	}
	id := filepath.Base(runs[0])
	dirs := workDirs(t, e.dir)
	if len(dirs) != 1 {
		t.Errorf("%s.sh whose teardown failed left work directories %v, want its own, kept for the next run\nstderr:\n%s", prog, dirs, r.stderr)
		return "", id
	}
	dir := dirs[0]
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ent := range ents {
		got = append(got, ent.Name())
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), token) || strings.Contains(string(b), "PRIVATE KEY") {
			t.Errorf("the kept %s holds a secret: %q", ent.Name(), b)
		}
	}
	want = append(want, ".locked", "run-id", "teardown.args", "teardown-failed")
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the kept work directory holds %v, want %v", got, want)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "run-id")); err != nil || strings.TrimSpace(string(b)) != id {
		t.Errorf("the kept run-id holds %q (%v), want %s", b, err, id)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) < 2 ||
		!strings.HasSuffix(lines[len(lines)-2], prog+": kept the work directory "+dir+" for run "+id+
			": the next backup-all.sh or restore.sh run with its work directories in "+e.dir+" tries the teardown again, then removes it") ||
		!strings.HasSuffix(lines[len(lines)-1], prog+": hint: or tear the run down now (until it exits 0): dosvob-teardown --config "+e.conf+" --run "+id) {
		t.Errorf("the last lines do not say where the work directory is kept, what the next run does, and how to tear the run down now:\n%s", r.stderr)
	}
	return dir, id
}

// checkRetried checks the run r of prog after one whose teardown failed: it
// tore that run down (its droplets and key are gone, and so is its state,
// with its private key) and removed its work directory, saying so.
func (e *env) checkRetried(t *testing.T, prog string, r result, dir, id string, restored ...string) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s.sh after a failed teardown exited %d, want 0\nstderr:\n%s", prog, r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, prog+": tearing down run "+id+", left by an earlier run whose teardown failed (its work directory "+dir+")") {
		t.Errorf("%s.sh does not say that it tears down run %s:\n%s", prog, id, r.stderr)
	}
	if !strings.Contains(r.stderr, prog+": removed "+dir+", the work directory of an earlier run whose teardown failed") {
		t.Errorf("%s.sh does not say that it removed %s:\n%s", prog, dir, r.stderr)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s.sh left %s, the work directory of the run whose teardown failed (%v)", prog, dir, err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "state", "runs", id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the state of run %s, with its private key, is still there (%v)", id, err)
	}
	if dirs := workDirs(t, e.dir); len(dirs) != 0 {
		t.Errorf("work directories left: %v", dirs)
	}
	e.checkNothingLeft(restored...)
}

// TestTeardownFailedRetried: a run whose final teardown fails (an API
// error) exits 8 and keeps its work directory, and the next run of either
// script tears that run down at once and removes it. restore.sh without a
// backup directory's lock keeps its run's owner lock there: removing the
// directory made the run's liveness uncheckable, and its droplet and key
// were left for 48 hours (--cleanup-stale's bound); the next restore.sh
// did not even try. After a backup-all.sh whose teardown failed, a
// restore.sh (which gives no --cleanup-stale) was refused (exit 6) until
// the run was torn down by hand or by the next backup-all.sh.
func TestTeardownFailedRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	img := e.looseImage()
	// A teardown whose droplet delete fails waits for the volumes to
	// detach from the droplet, up to half its --detach-wait (2.5 min):
	// the failing runs' teardown waits 2 s in all.
	quick := e.binWith(map[string]string{"dosvob-teardown": `exec "$REAL" --detach-wait 2s "$@"`})
	var restored []string
	restore := func(name string, opts ...string) result {
		restored = append(restored, "fra1/"+name)
		return e.restore(append(opts, "--volume-name", name, "--region", "fra1", img)...)
	}
	failing := func(run func() result) result {
		e.failDropletDeletes()
		defer e.emu.ClearFaults()
		return run()
	}

	t.Run("restore, then restore", func(t *testing.T) {
		e.t = t
		r := failing(func() result { return restore("first", "--bin", quick) })
		dir, id := e.checkKeptForRetry(t, "restore", r, "owner.lock")
		e.checkRetried(t, "restore", restore("second"), dir, id, restored...)
	})

	t.Run("restore, then backup-all", func(t *testing.T) {
		e.t = t
		r := failing(func() result { return restore("third", "--bin", quick) })
		dir, id := e.checkKeptForRetry(t, "restore", r, "owner.lock")
		e.checkRetried(t, "backup-all", e.backup(), dir, id, restored...)
		e.checkImages()
	})

	t.Run("backup-all, then restore", func(t *testing.T) {
		e.t = t
		r := failing(func() result { return e.backup("--bin", quick) })
		dir, id := e.checkKeptForRetry(t, "backup-all", r)
		e.checkRetried(t, "restore", restore("fourth"), dir, id, restored...)
	})

	t.Run("backup-all, then backup-all", func(t *testing.T) {
		e.t = t
		r := failing(func() result { return e.backup("--bin", quick) })
		dir, id := e.checkKeptForRetry(t, "backup-all", r)
		e.checkRetried(t, "backup-all", e.backup(), dir, id, restored...)
		e.checkImages()
	})
}
