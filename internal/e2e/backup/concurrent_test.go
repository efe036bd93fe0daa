package backup

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestConcurrentRuns: two backup-all.sh runs with one config (one account,
// one state directory) into two backup directories, at once. The second
// starts while the first is syncing: its cleanup of earlier runs leaves the
// first run alone (its script holds the run's owner lock), both succeed,
// and every image of both is its volume. The second run's --hook sees
// neither API token variable, though the script was given both. (That a
// killed run's leftovers are still cleaned up by the next run is shown in
// TestFaults.)
func TestConcurrentRuns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	other := filepath.Join(e.dir, "backups-2")

	// The first run's syncs are throttled hard (the 5 MiB of the two
	// volumes take half a minute or more), so that the second run, at full
	// speed, starts and ends while they go on, also on a busy machine.
	slower := filepath.Join(e.dir, "slower-ssh")
	writeFile(t, slower, "#!/bin/bash\nset -o pipefail\nssh \"$@\" | pv -q -L 64k\n", 0o755)
	r1 := e.startBackup("-j", "2", "--ssh", slower)
	r1.syncing()

	hookEnv := filepath.Join(e.dir, "hook.env")
	cmd, stdout, stderr := e.script("backup-all.sh", "--config", e.conf, "--keep", "3",
		"--hook", "env > "+hookEnv, other)
	cmd.Env = append(cmd.Env, "DIGITALOCEAN_ACCESS_TOKEN="+token, "DIGITALOCEAN_TOKEN="+token)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r2 := wait(cmd, stdout, stderr, start)
	select {
	case res := <-r1.done:
		if res.code != 0 {
			t.Fatalf("the first backup-all.sh failed (exit %d) while the second ran: did the second run's cleanup hit it?\nstderr:\n%s", res.code, res.stderr)
		}
		t.Fatalf("the first run ended before the second: the test proves nothing\nstderr:\n%s", res.stderr)
	default:
	}
	if r2.code != 0 {
		t.Fatalf("the second backup-all.sh exited %d, want 0\nstderr:\n%s", r2.code, r2.stderr)
	}
	if !regexp.MustCompile(`leaving run [0-9a-f-]+: alive: its owner holds the lock`).MatchString(r2.stderr) {
		t.Errorf("the second run does not say that it left the first alone:\n%s", r2.stderr)
	}
	r1res := r1.wait(3 * time.Minute)
	if r1res.code != 0 {
		t.Fatalf("the first backup-all.sh exited %d, want 0 (did the second run's cleanup hit it?)\nstderr:\n%s", r1res.code, r1res.stderr)
	}
	e.checkImages()
	for _, v := range sourceVolumes {
		img := filepath.Join(other, filepath.FromSlash(v)+".img")
		if a, b := digest(t, img), digest(t, e.sourceFile(v)); a != b {
			t.Errorf("the second run's image of %s differs from the volume", v)
		}
	}
	e.checkNothingLeft()
	if runs, _ := filepath.Glob(filepath.Join(e.dir, "state", "runs", "*")); len(runs) != 0 {
		t.Errorf("run state left: %v", runs)
	}

	b, err := os.ReadFile(hookEnv)
	if err != nil {
		t.Fatalf("the hook did not run: %v", err)
	}
	if !strings.Contains(string(b), "DOSVOB_RESULT=success") {
		t.Errorf("the hook's environment lacks DOSVOB_RESULT=success:\n%s", b)
	}
	if strings.Contains(string(b), token) || strings.Contains(string(b), "DIGITALOCEAN_") {
		t.Errorf("the hook's environment holds an API token variable")
	}
}
