package backup

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binWith makes a directory with the built binaries (symlinks), in which
// each binary named in bodies is a bash script instead: its body, with
// $REAL the real binary. The scripts take it with --bin.
func (e *env) binWith(bodies map[string]string) string {
	dir, err := os.MkdirTemp(e.dir, "bin-")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, b := range []string{"dosvob-hash", "dosvob-patch", "dosvob-provision", "dosvob-teardown"} {
		real := filepath.Join(e.bin, b)
		if body, ok := bodies[b]; ok {
			writeFile(e.t, filepath.Join(dir, b), "#!/bin/bash\nREAL="+real+"\n"+body+"\n", 0o755)
		} else if err := os.Symlink(real, filepath.Join(dir, b)); err != nil {
			e.t.Fatal(err)
		}
	}
	return dir
}

// looseImage writes a small dosvob image in a directory of its own: no
// backup directory's lock beside it, so restore.sh uses an owner lock of
// its own.
func (e *env) looseImage() string {
	img := filepath.Join(e.dir, "loose", "some.img")
	dosvobImage(e.t, e.bin, img, strings.Repeat("dosvob restore ", 4096))
	return img
}

// TestProvisionCrash: a dosvob-provision that dies after its run began
// exits with whatever code its crash gives (a Go panic exits 2, as a
// refused config does; 6 is a lock's). The scripts must not read "nothing
// was created" into that code: the run id that provision wrote before it
// created anything says a run exists, so they tear it down, exit 7, and
// the account is as before (but for a restore's new volume, which is
// kept). The crash is stood in for by a wrapper that lets the real
// dosvob-provision make the whole run, drops its JSON and exits the code.
func TestProvisionCrash(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	img := e.looseImage()
	var kept []string // the restores' new volumes
	for _, code := range []string{"2", "6"} {
		bin := e.binWith(map[string]string{"dosvob-provision": `"$REAL" "$@" >/dev/null; exit ` + code})
		check := func(t *testing.T, prog string, r result) {
			if !strings.Contains(r.stderr, "is ready") {
				t.Fatalf("dosvob-provision made no run: the test proves nothing\nstderr:\n%s", r.stderr)
			}
			if r.code != 7 {
				t.Errorf("%s exited %d after dosvob-provision exited %s with a run, want 7\nstderr:\n%s", prog, r.code, code, r.stderr)
			}
			if !strings.Contains(r.stderr, "provisioning failed (dosvob-provision exit "+code+") after it had started run ") ||
				!strings.Contains(r.stderr, "(provisioning did not finish") {
				t.Errorf("%s does not say that it tears down the run that provision started:\n%s", prog, r.stderr)
			}
			if strings.Contains(r.stderr, "nothing was created") || strings.Contains(r.stderr, "nothing to tear down") {
				t.Errorf("%s claims that nothing was created:\n%s", prog, r.stderr)
			}
			checkNoTeardownAll(t, prog, r.stderr)
			e.checkNothingLeft(kept...)
		}
		t.Run("backup-all exit "+code, func(t *testing.T) {
			e.t = t
			check(t, "backup-all.sh", e.backup("--bin", bin))
		})
		t.Run("restore exit "+code, func(t *testing.T) {
			e.t = t
			name := "crashed-" + code
			kept = append(kept, "fra1/"+name)
			check(t, "restore.sh", e.restore("--bin", bin, "--volume-name", name, "--region", "fra1", img))
		})
	}
}

// killAll SIGKILLs pid and every process below it, as a crash would.
func killAll(pid int) {
	ps := descendants(pid, "")
	syscall.Kill(pid, syscall.SIGKILL)
	for _, p := range ps {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// TestKilledRunTornDown: the next run of either script tears down the run
// of a killed one from its work directory before it removes that, at once.
// A restore.sh without a backup directory's lock keeps its run's owner
// lock in its work directory: removing the directory first made the run's
// liveness uncheckable, and dosvob-provision --cleanup-stale left its
// droplet and key for 48 hours. A killed backup-all.sh's run is torn down
// the same way by a restore.sh, which gives no --cleanup-stale.
func TestKilledRunTornDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	img := e.looseImage()

	t.Run("restore killed, then backup-all", func(t *testing.T) {
		e.t = t
		cmd, stdout, stderr := e.script("restore.sh", "--config", e.conf, "--ssh", e.slowSSH("64k"),
			"--volume-name", "killed", "--region", "fra1", img)
		done := e.start(cmd, stdout, stderr)
		e.waitFor(cmd.Process.Pid, "ssh", 60*time.Second)
		killAll(cmd.Process.Pid)
		<-done
		if e.sameAsInitial(e.emu.State(), []string{"fra1/killed"}) == "" {
			t.Fatalf("the killed restore left nothing: the test proves nothing")
		}
		dead := workDirs(t, e.dir)
		r := e.backup()
		if r.code != 0 {
			t.Fatalf("backup-all.sh after a killed restore exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "backup-all: tearing down run ") {
			t.Errorf("backup-all.sh does not say that it tears down the killed run:\n%s", r.stderr)
		}
		checkRemoved(t, "backup-all", r.stderr, dead)
		e.checkNothingLeft("fra1/killed")
	})

	t.Run("backup-all killed, then restore", func(t *testing.T) {
		e.t = t
		e.change("fra1/db", 10)
		r := e.startBackup()
		r.syncing()
		killAll(r.pid)
		<-r.done
		if e.sameAsInitial(e.emu.State(), []string{"fra1/killed"}) == "" {
			t.Fatalf("the killed backup left nothing: the test proves nothing")
		}
		dead := workDirs(t, e.dir)
		res := e.restore("--volume-name", "after-kill", "--region", "nyc1", e.image("nyc1/web"))
		if res.code != 0 {
			t.Fatalf("restore.sh after a killed backup-all.sh exited %d, want 0\nstderr:\n%s", res.code, res.stderr)
		}
		checkRemoved(t, "restore", res.stderr, dead)
		e.checkNothingLeft("fra1/killed", "nyc1/after-kill")
	})
}
