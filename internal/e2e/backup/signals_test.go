package backup

import (
	"bufio"
	"bytes"
	"os"
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
	start := func() (*running, string, map[string]string) {
		n++
		uuid := "uuid-" + strconv.Itoa(n)
		os.Remove(hook)
		p.mu.Lock()
		p.got = nil
		p.mu.Unlock()
		e.change("fra1/db", 40)
		e.change("nyc1/web", 40)
		before := e.digests()
		return e.startBackup("-j", "2", "--ping-url", p.srv.URL+"/"+uuid, "--hook", hookCommand(hook)), uuid, before
	}

	for _, c := range []struct {
		name string
		sig  syscall.Signal
		code int
	}{{"HUP", syscall.SIGHUP, 130}, {"PIPE", syscall.SIGPIPE, 130}, {"USR1", syscall.SIGUSR1, 1}} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			r, uuid, before := start()
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
		n++
		uuid := "uuid-" + strconv.Itoa(n)
		os.Remove(hook)
		p.mu.Lock()
		p.got = nil
		p.mu.Unlock()
		e.change("fra1/db", 40)
		e.change("nyc1/web", 40)
		before := e.digests()
		args := []string{"--config", e.conf, "--keep", "3", "--ssh", e.slowSSH("256k"), "-j", "2",
			"--ping-url", p.srv.URL + "/" + uuid, "--hook", hookCommand(hook), e.backups}
		cmd, stdout, _ := e.script("backup-all.sh", args...)
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
		var res result
		select {
		case res = <-done:
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			t.Fatalf("backup-all.sh still running 2 minutes after its stderr went away\nstderr until then:\n%s", seen.String())
		}
		res.stderr = seen.String() + "(the rest went to a closed pipe)"
		e.checkStopped(res, 130, hook, p, uuid, before)
	})

	t.Run("restore SIGHUP", func(t *testing.T) {
		e.t = t
		cmd, stdout, stderr := e.script("restore.sh", "--config", e.conf, "--ssh", e.slowSSH("256k"),
			"--volume-name", "db-hup", "--region", "fra1", e.image("fra1/db"))
		done := e.start(cmd, stdout, stderr)
		e.waitFor(cmd.Process.Pid, "ssh", 60*time.Second)
		time.Sleep(500 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGHUP)
		var res result
		select {
		case res = <-done:
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			t.Fatalf("restore.sh still running 2 minutes after SIGHUP\nstderr:\n%s", (<-done).stderr)
		}
		if res.code != 130 || !strings.Contains(res.stderr, "received SIGHUP") {
			t.Errorf("restore.sh exited %d after SIGHUP, want 130 saying so\nstderr:\n%s", res.code, res.stderr)
		}
		e.checkNothingLeft("fra1/db-hup")
	})
}
