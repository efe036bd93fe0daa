package backup

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// restoreSignalled runs restore.sh of img into the new volume
// region/name, over an ssh slowed to 256 KiB/s (the signature of the new
// 1 GiB volume alone takes seconds), sends it sig half a second after its
// restore pipe started, and returns its result.
func (e *env) restoreSignalled(sig syscall.Signal, name, region, img string) result {
	e.t.Helper()
	cmd, stdout, stderr := e.script("restore.sh", "--config", e.conf, "--ssh", e.slowSSH("256k"),
		"--volume-name", name, "--region", region, img)
	done := e.start(cmd, stdout, stderr)
	e.waitFor(cmd.Process.Pid, "ssh", 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(sig)
	return waitKill(e.t, cmd, done, sig.String())
}

// TestRestoreInterruptedWhileWriting: a restore.sh stopped by SIGINT (a
// Ctrl-C) while its pipe writes the new volume exits 130, tears down its
// droplet and key, keeps the half-written volume, and says so: its last
// lines name the volume, say that it is incomplete and what to do. Before,
// it said only "(the new volume is kept)", and an incomplete volume looked
// like a restored one.
func TestRestoreInterruptedWhileWriting(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	r := e.restoreSignalled(syscall.SIGINT, "int-test", "fra1", e.looseImage())
	if r.code != 130 || !strings.Contains(r.stderr, "received SIGINT") {
		t.Fatalf("restore.sh exited %d after SIGINT, want 130 saying so\nstderr:\n%s", r.code, r.stderr)
	}
	v, ok := e.volumeNamed("fra1", "int-test")
	if !ok {
		t.Fatalf("the new volume was deleted; a restore's volume is kept\nstderr:\n%s", r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) < 2 ||
		!strings.HasSuffix(lines[len(lines)-2], "restore: the restore was stopped while writing: the new volume int-test ("+v.ID+") is kept but incomplete") ||
		!strings.HasSuffix(lines[len(lines)-1], "restore: hint: delete it in the control panel, or run restore.sh again with another --volume-name") {
		t.Errorf("the last lines do not say that int-test (%s) is incomplete and what to do:\n%s", v.ID, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("stdout %q, want nothing", r.stdout)
	}
	e.checkNothingLeft("fra1/int-test")
}
