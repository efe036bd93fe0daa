package backup

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// checkStopped asserts that a backup-all.sh run stopped mid-sync reported
// the truth: exit code, the hook's view and the failure ping, no "run
// succeeded", and nothing temporary left; each image is its previous backup
// or the new one.
func (e *env) checkStopped(res result, code int, hook string, p *pings, uuid string, before map[string]string) {
	t := e.t
	if res.code != code {
		t.Errorf("backup-all.sh exited %d, want %d\nstderr:\n%s", res.code, code, res.stderr)
	}
	if strings.Contains(res.stderr, "run succeeded") {
		t.Errorf("backup-all.sh says the run succeeded:\n%s", res.stderr)
	}
	checkHook(t, hook, "failure "+strconv.Itoa(code))
	// The failure ping, without a body when the run stopped before its
	// summary; never the success ping.
	if got := p.list(); len(got) != 2 || !strings.HasPrefix(got[0], "GET /"+uuid+"/start ") ||
		!strings.Contains(got[1], " /"+uuid+"/fail ") {
		t.Errorf("pings %q, want the start ping, then the failure ping", got)
	}
	e.checkNothingLeft()
	for _, v := range sourceVolumes {
		recoverImage(t, e, v)
	}
	e.checkOldOrNew(before, sourceVolumes...)
}

// waitKill waits up to 2 minutes for a script started with env.start to
// end after what happened to it (after), and fails the test, killing it,
// if it does not.
func waitKill(t *testing.T, cmd *exec.Cmd, done <-chan result, after string) result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("%s still running 2 minutes after %s\nstderr:\n%s", filepath.Base(cmd.Args[1]), after, (<-done).stderr)
		return result{}
	}
}

// TestSignals: SIGHUP (the terminal of a hand-run backup hung up) and
// SIGPIPE stop backup-all.sh as SIGTERM does: the syncs stop, teardown
// runs, the exit is 130 and the hook and the ping hear of a failure. A
// signal that it does not trap (SIGUSR1) still never reads as a success.
// A stderr whose reader goes away mid-run (an ssh session that dropped,
// a `| tee` that died) is the real SIGPIPE: the run still tears down and
// tells the hook and the ping the truth. restore.sh takes SIGHUP as
// SIGTERM too.
func TestSignals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.mustBackup()
	hook := filepath.Join(e.dir, "hook.out")
	p := newPings(t)
	n := 0
	// prepare changes both volumes, forgets the last run's hook and pings,
	// and returns the next run's ping uuid, the images' digests and its
	// options.
	prepare := func() (string, map[string]string, []string) {
		n++
		uuid := "uuid-" + strconv.Itoa(n)
		os.Remove(hook)
		p.mu.Lock()
		p.got = nil
		p.mu.Unlock()
		e.change("fra1/db", 40)
		e.change("nyc1/web", 40)
		return uuid, e.digests(), []string{"-j", "2", "--ping-url", p.srv.URL + "/" + uuid, "--hook", hookCommand(hook)}
	}

	for _, c := range []struct {
		name string
		sig  syscall.Signal
		code int
	}{{"HUP", syscall.SIGHUP, 130}, {"PIPE", syscall.SIGPIPE, 130}, {"USR1", syscall.SIGUSR1, 1}} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			uuid, before, opts := prepare()
			r := e.startBackup(opts...)
			r.syncing()
			syscall.Kill(r.pid, c.sig)
			res := r.wait(2 * time.Minute)
			if c.sig == syscall.SIGUSR1 {
				// bash dies of it after its exit trap, whatever that exits.
				res.code = 1
			} else if !strings.Contains(res.stderr, "received SIG"+c.name) {
				t.Errorf("backup-all.sh does not say which signal stopped it:\n%s", res.stderr)
			}
			e.checkStopped(res, c.code, hook, p, uuid, before)
		})
	}

	t.Run("stderr reader gone", func(t *testing.T) {
		e.t = t
		uuid, before, opts := prepare()
		args := append([]string{"--config", e.conf, "--keep", "3", "--ssh", e.slowSSH("256k")}, opts...)
		cmd, stdout, _ := e.script("backup-all.sh", append(args, e.backups)...)
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = pw
		done := e.start(cmd, stdout, &bytes.Buffer{})
		pw.Close()
		var seen strings.Builder
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			seen.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "syncing into") {
				break
			}
		}
		pr.Close() // the reader is gone: the next line the script writes breaks the pipe
		res := waitKill(t, cmd, done, "its stderr went away")
		res.stderr = seen.String() + "(the rest went to a closed pipe)"
		e.checkStopped(res, 130, hook, p, uuid, before)
	})

	t.Run("restore SIGHUP", func(t *testing.T) {
		e.t = t
		res := e.restoreSignalled(syscall.SIGHUP, "db-hup", "fra1", e.image("fra1/db"))
		if res.code != 130 || !strings.Contains(res.stderr, "received SIGHUP") {
			t.Errorf("restore.sh exited %d after SIGHUP, want 130 saying so\nstderr:\n%s", res.code, res.stderr)
		}
		e.checkNothingLeft("fra1/db-hup")
	})
}
