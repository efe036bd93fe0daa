package backup

import (
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/doemu"
)

// running is a backup-all.sh run in progress.
type running struct {
	e     *env
	pid   int
	done  chan result
	start time.Time
}

// startBackup starts backup-all.sh with a throttled ssh, so that the test
// can act while a volume is being transferred.
func (e *env) startBackup(opts ...string) *running {
	args := append([]string{"--config", e.conf, "--keep", "3", "--ssh", e.slowSSH("256k")}, opts...)
	cmd, stdout, stderr := e.script("backup-all.sh", append(args, e.backups)...)
	r := &running{e: e, done: make(chan result, 1), start: time.Now()}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	r.pid = cmd.Process.Pid
	go func() { r.done <- wait(cmd, stdout, stderr, r.start) }()
	return r
}

// syncing waits until a volume's transfer is under way: the real ssh
// client runs and the delta has begun to flow.
func (r *running) syncing() []int {
	ps := r.e.waitFor(r.pid, "ssh", 60*time.Second)
	time.Sleep(700 * time.Millisecond)
	return ps
}

// killSync sends sig to a volume's ssh client. A small incremental may end
// in less time than syncing waits; then the next volume's is the one.
func (r *running) killSync(sig syscall.Signal) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range descendants(r.pid, "ssh") {
			if syscall.Kill(p, sig) == nil {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.e.t.Fatalf("no ssh process below pid %d to kill", r.pid)
}

func (r *running) wait(timeout time.Duration) result {
	select {
	case res := <-r.done:
		return res
	case <-time.After(timeout):
		syscall.Kill(r.pid, syscall.SIGKILL)
		for _, p := range descendants(r.pid, "") {
			syscall.Kill(p, syscall.SIGKILL)
		}
		res := <-r.done
		r.e.t.Fatalf("backup-all.sh still running after %v; killed\nstderr:\n%s", timeout, res.stderr)
		return res
	}
}

// failedRe matches a summary table row (not a "[region/name]" log line).
var failedRe = regexp.MustCompile(`(?m)^\S+ backup-all: ([^\s\[]\S*)\s.*FAILED`)

// failedVolumes lists the volumes the summary table marks as failed.
func failedVolumes(stderr string) []string {
	var out []string
	for _, m := range failedRe.FindAllStringSubmatch(stderr, -1) {
		out = append(out, m[1])
	}
	return out
}

// checkUnchanged asserts that each image is exactly as before (digests
// from e.digests()).
func (e *env) checkUnchanged(before map[string]string, vols ...string) {
	for _, v := range vols {
		if got := digest(e.t, e.image(v)); got != before[v] {
			e.t.Errorf("image of %s changed after a failed run: xxhash %s, want the previous %s", v, got, before[v])
		}
	}
}

// checkOldOrNew asserts that each image is exactly its previous backup
// (digests from e.digests()) or exactly the new one (its volume now).
func (e *env) checkOldOrNew(before map[string]string, vols ...string) {
	for _, v := range vols {
		got := digest(e.t, e.image(v))
		if got != before[v] && got != digest(e.t, e.sourceFile(v)) {
			e.t.Errorf("image of %s is neither its previous backup nor the new one (xxhash %s)", v, got)
		}
	}
}

// TestFaults interrupts runs in every way a run can break and checks each
// time that the run says so in its exit code, that every image is still
// exactly its previous backup (or, for a volume that finished, the new
// one), and that nothing temporary is left in the account. The faults
// follow each other; after the SIGTERM and after the SIGKILL, the next run
// must succeed by itself, whatever the faults before it left (to keep the
// suite short, not every fault gets its own recovery run).
func TestFaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.mustBackup()
	e.checkImages()

	t.Run("ssh killed mid-transfer", func(t *testing.T) {
		e.t = t
		e.change("fra1/db", 40)
		e.change("nyc1/web", 40)
		before := e.digests()
		r := e.startBackup("-j", "1")
		r.syncing()
		r.killSync(syscall.SIGKILL)
		res := r.wait(2 * time.Minute)
		if res.code != 1 {
			t.Fatalf("backup-all.sh exited %d, want 1 (a volume failed)\nstderr:\n%s", res.code, res.stderr)
		}
		failed := failedVolumes(res.stderr)
		if len(failed) != 1 {
			t.Fatalf("want exactly one failed volume in the summary, got %v\nstderr:\n%s", failed, res.stderr)
		}
		e.checkUnchanged(before, failed[0])
		for _, v := range sourceVolumes {
			if v != failed[0] && digest(t, e.image(v)) != digest(t, e.sourceFile(v)) {
				t.Errorf("%s, which did not fail, is not the new backup", v)
			}
		}
		e.checkNothingLeft()
	})

	t.Run("dosvob-patch killed", func(t *testing.T) {
		e.t = t
		e.change("fra1/db", 40)
		e.change("nyc1/web", 40)
		before := e.digests()
		r := e.startBackup("-j", "2")
		r.syncing()
		ps := e.waitFor(r.pid, "dosvob-patch", 10*time.Second)
		for _, p := range ps {
			syscall.Kill(p, syscall.SIGKILL)
		}
		res := r.wait(2 * time.Minute)
		if res.code != 1 {
			t.Fatalf("backup-all.sh exited %d, want 1\nstderr:\n%s", res.code, res.stderr)
		}
		if len(failedVolumes(res.stderr)) == 0 {
			t.Fatalf("the summary shows no failed volume\nstderr:\n%s", res.stderr)
		}
		// A killed dosvob-patch leaves its journal; the next dosvob command
		// that touches the image finishes or undoes the run. After that
		// each image must be exactly the previous backup or the new one.
		for _, v := range sourceVolumes {
			recoverImage(t, e, v)
		}
		e.checkOldOrNew(before, sourceVolumes...)
		e.checkNothingLeft()
	})

	t.Run("emulator fails a step", func(t *testing.T) {
		e.t = t
		e.change("fra1/db", 10)
		before := e.digests()
		// Every attach of a volume copy ends "errored".
		e.emu.InjectFault(doemu.Fault{Method: "POST", Path: `/v2/volumes/[^/]+/actions`, ActionErrored: true, Times: 100})
		p := newPings(t)
		hook := filepath.Join(e.dir, "hook.out")
		res := e.backup("--ping-url", p.srv.URL+"/uuid-2", "--hook", hookCommand(hook))
		e.emu.ClearFaults()
		checkPings(t, p, "uuid-2", false)
		checkHook(t, hook, "failure 7")
		if res.code != 7 {
			t.Fatalf("backup-all.sh exited %d, want 7 (provisioning failed)\nstderr:\n%s", res.code, res.stderr)
		}
		e.checkUnchanged(before, sourceVolumes...)
		e.checkNothingLeft()
	})

	t.Run("SIGTERM mid-transfer", func(t *testing.T) {
		e.t = t
		e.change("fra1/db", 40)
		e.change("nyc1/web", 40)
		before := e.digests()
		r := e.startBackup("-j", "2")
		r.syncing()
		syscall.Kill(r.pid, syscall.SIGTERM)
		res := r.wait(2 * time.Minute)
		if res.code != 130 {
			t.Fatalf("backup-all.sh exited %d after SIGTERM, want 130\nstderr:\n%s", res.code, res.stderr)
		}
		if !strings.Contains(res.stderr, "teardown complete") {
			t.Errorf("no teardown after SIGTERM:\n%s", res.stderr)
		}
		e.checkNothingLeft()
		// Both transfers were cut: after recovery by the next dosvob
		// command each image must be its previous backup. dosvob-hash
		// recovers without writing a new backup when given no stream.
		for _, v := range sourceVolumes {
			recoverImage(t, e, v)
		}
		e.checkOldOrNew(before, sourceVolumes...)
		e.mustBackup()
		e.checkImages()
		e.checkNothingLeft()
	})

	t.Run("SIGKILL, then the next run cleans up while a concurrent run is refused", func(t *testing.T) {
		e.t = t
		e.change("fra1/db", 40)
		e.change("nyc1/web", 40)
		r := e.startBackup("-j", "2")
		r.syncing()
		// A crash: the script and everything it started die at once.
		procs := append([]int{r.pid}, descendants(r.pid, "")...)
		for _, p := range procs {
			syscall.Kill(p, syscall.SIGKILL)
		}
		r.wait(time.Minute)
		if e.sameAsInitial(e.emu.State(), nil) == "" {
			t.Fatalf("nothing was left after a SIGKILL: the test did not kill mid-run")
		}

		// The next run cleans up first, then backs up; meanwhile a second
		// run is refused at once.
		e.change("fra1/db", 5)
		e.change("nyc1/web", 5)
		r = e.startBackup("-j", "2")
		r.syncing()
		start := time.Now()
		res2 := e.backup()
		if res2.code != 6 {
			t.Errorf("a concurrent backup-all.sh exited %d, want 6 (locked)\nstderr:\n%s", res2.code, res2.stderr)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the concurrent run took %v to give up, want at once", d)
		}
		if !strings.Contains(res2.stderr, "another backup run holds the lock") {
			t.Errorf("no clear message from the refused run:\n%s", res2.stderr)
		}
		res := r.wait(2 * time.Minute)
		if res.code != 0 {
			t.Fatalf("the run after the SIGKILL exited %d, want 0\nstderr:\n%s", res.code, res.stderr)
		}
		e.checkImages()
		e.checkNothingLeft()
	})

	// Each volume had at least three successful runs (two versions) and
	// --keep 3 caps what is kept.
	for _, v := range sourceVolumes {
		if n := len(versions(t, e.image(v))); n < 2 || n > 3 {
			t.Errorf("%s keeps %d versions, want 2 or 3 (--keep 3)", v, n)
		}
	}
}

// recoverImage runs dosvob-hash on an image with its output discarded: it
// first finishes or undoes an interrupted run, as every dosvob command
// that touches the image does.
func recoverImage(t *testing.T, e *env, vol string) {
	cmd := exec.Command(e.bin+"/dosvob-hash", "--quiet", e.image(vol))
	cmd.Stdout = io.Discard
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	out := stderr.String()
	if err != nil {
		t.Fatalf("dosvob-hash %s: %v\n%s", vol, err, out)
	}
	if out != "" {
		t.Logf("dosvob-hash %s: %s", vol, strings.TrimSpace(out))
	}
}
