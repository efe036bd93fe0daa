package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startRestore starts restore-version of the latest version of img into
// out and waits until it has written into its temporary file; ok is false
// when the run finished first. wait waits for the run's end.
func startRestore(t *testing.T, bin, img, out string) (cmd *exec.Cmd, wait func() *os.ProcessState, stderr *bytes.Buffer, ok bool) {
	t.Helper()
	stderr = new(bytes.Buffer)
	cmd = exec.Command(bin, "restore-version", "--version", "latest", "-o", out, img)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	wait = func() *os.ProcessState { <-done; return cmd.ProcessState }
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Microsecond) {
		if fi, err := os.Stat(out + ".dosvob-tmp"); err == nil && fi.Size() > 0 {
			return cmd, wait, stderr, true
		}
		select {
		case <-done:
			return cmd, wait, stderr, false
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("restore-version never began writing")
		}
	}
}

// backups makes img the backup of each device in turn, keeping 2
// versions.
func backups(t *testing.T, bin, img string, devs ...[]byte) {
	t.Helper()
	for _, dev := range devs {
		d, err := makeDelta(img, dev, 4096)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--keep", "2", "--quiet", img)
		cmd.Stdin = bytes.NewReader(d)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("patch: %v\n%s", err, out)
		}
	}
}

// TestRestoreVersionLeftover: restore-version killed with SIGKILL leaves
// its temporary file; a rerun takes it over, says so and writes the
// version. A temporary file that a live process writes (here, one stopped
// with SIGSTOP) is refused (exit 6, one line and a hint) and left alone;
// SIGINT still removes the run's own.
func TestRestoreVersionLeftover(t *testing.T) {
	bin := buildBinary(t)
	r := rand.New(rand.NewPCG(61, 62))
	dir := t.TempDir()
	img := filepath.Join(dir, "backup.img")
	v1 := device(r, 48<<20)
	backups(t, bin, img, v1, mutate(r, v1, 50))
	// A copy of the backup, restored into the same output by a second
	// process (the image's own lock does not keep the two apart).
	other := filepath.Join(t.TempDir(), "copy.img")
	if out, err := exec.Command("cp", "-a", img, img+".dosvob", filepath.Dir(other)).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	other = filepath.Join(filepath.Dir(other), "backup.img")

	out := filepath.Join(dir, "k.img")
	tmp := out + ".dosvob-tmp"
	var first *exec.Cmd
	var firstWait func() *os.ProcessState
	for try := 0; ; try++ {
		cmd, wait, _, ok := startRestore(t, bin, img, out)
		if ok {
			first, firstWait = cmd, wait
			break
		}
		os.Remove(out)
		if try == 20 {
			t.Fatal("restore-version always finished before it could be stopped")
		}
	}
	first.Process.Signal(syscall.SIGSTOP)
	time.Sleep(50 * time.Millisecond)

	// A live writer: refused, and its file is left as it is.
	held, _ := os.ReadFile(tmp)
	res, err := exec.Command(bin, "restore-version", "--version", "latest", "-o", out, other).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 6 ||
		!strings.Contains(string(res), `dosvob-patch: another dosvob process is writing "`+out+`" (it holds the lock of "`+tmp+`")`) ||
		!strings.Contains(string(res), "dosvob-patch: hint: wait for it to finish, or choose another --output") {
		t.Fatalf("restore into an output another process writes: %v, want exit 6 and a line that says so\n%s", err, res)
	}
	if now, _ := os.ReadFile(tmp); !bytes.Equal(now, held) || exists(out) {
		t.Fatal("the refused run touched the other's temporary file or made the output")
	}

	// The writer dies: its file is a leftover now.
	first.Process.Kill()
	first.Process.Signal(syscall.SIGCONT)
	firstWait()
	if !exists(tmp) || exists(out) {
		t.Fatalf("SIGKILL left tmp %v, output %v; want the temporary file only", exists(tmp), exists(out))
	}
	res, err = exec.Command(bin, "restore-version", "--version", "latest", "-o", out, img).CombinedOutput()
	if err != nil {
		t.Fatalf("rerun after a kill: %v\n%s", err, res)
	}
	if !strings.Contains(string(res), `dosvob-patch: found "`+tmp+`" (`) || strings.Contains(string(res), "(0 bytes)") || !strings.Contains(string(res), "left by a run that did not finish (no process writes it any more); writing it anew") {
		t.Errorf("the rerun did not say it took over the leftover:\n%s", res)
	}
	t.Logf("%s", res)
	mustEqualFile(t, out, v1)
	if exists(tmp) {
		t.Fatal("the temporary file is left after a good run")
	}

	// Ctrl-C removes the run's own temporary file, as before.
	out2 := filepath.Join(dir, "i.img")
	for try := 0; ; try++ {
		cmd, wait, stderr, ok := startRestore(t, bin, img, out2)
		if !ok {
			os.Remove(out2)
			if try == 20 {
				t.Fatal("restore-version always finished before it could be interrupted")
			}
			continue
		}
		cmd.Process.Signal(syscall.SIGINT)
		if code := wait().ExitCode(); code != 130 && !exists(out2) {
			t.Fatalf("SIGINT: exit %d, want 130\n%s", code, stderr)
		}
		if exists(out2) { // it finished before the signal arrived
			os.Remove(out2)
			continue
		}
		break
	}
	if exists(out2 + ".dosvob-tmp") {
		t.Fatal("SIGINT left the temporary file")
	}
}
