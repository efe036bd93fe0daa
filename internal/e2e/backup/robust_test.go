package backup

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/testenv"
)

// underUmask022 makes cmd (a script run from env.script) run under umask
// 022, as cron hands it, whatever the test process's umask.
func underUmask022(cmd *exec.Cmd) {
	cmd.Args = append([]string{"bash", "-c", `umask 022 && exec "$@"`, "bash"}, cmd.Args...)
}

// checkPrivate asserts that nothing under root (root included) can be read,
// written or searched by group or others.
func checkPrivate(t *testing.T, root string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		n++
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: group or others may read it", p, st.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 5 {
		t.Fatalf("only %d entries under %s: the check proves nothing", n, root)
	}
}

// workDirs lists the scripts' work directories in dir (their TMPDIR).
func workDirs(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, pat := range []string{"dosvob-backup.*", "dosvob-restore.*"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

// deadDirs lists the work directories in dir (the scripts' TMPDIR) but
// live.
func deadDirs(t *testing.T, dir, live string) []string {
	t.Helper()
	var dead []string
	for _, d := range workDirs(t, dir) {
		if d != live {
			dead = append(dead, d)
		}
	}
	return dead
}

// checkRemoved asserts that a script's run removed each of dead, the work
// directories of killed runs, and said so in its log.
func checkRemoved(t *testing.T, prog, stderr string, dead []string) {
	t.Helper()
	for _, d := range dead {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the next run left %s, the work directory of the killed run", d)
		}
		if !strings.Contains(stderr, prog+": removed "+d+", the work directory of an earlier run that was killed") {
			t.Errorf("the next run does not say that it removed %s:\n%s", d, stderr)
		}
	}
}

// checkNoTeardownAll asserts that no line of a run's log suggests
// dosvob-teardown --all, which would delete other runs' resources too.
func checkNoTeardownAll(t *testing.T, what, stderr string) {
	t.Helper()
	if strings.Contains(stderr, "--all") {
		t.Errorf("%s suggests dosvob-teardown --all:\n%s", what, stderr)
	}
}

// lockedDir makes a directory in dir that looks like a live run's work
// directory: the marker a script writes, and a lock on it that this test
// process holds until the test ends, as a running script holds its own.
func lockedDir(t *testing.T, dir, prefix string) string {
	t.Helper()
	d := filepath.Join(dir, prefix+".live00") // as mktemp names them
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(d, ".locked"), "", 0o600)
	f, err := os.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return d
}

// TestRestoreRobust runs restore.sh where users run it in a disaster: from
// a backup disk mounted read-only, with too little room for a version,
// interrupted while it writes a version, onto a name that exists, and
// after a run that was SIGKILLed.
func TestRestoreRobust(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.mustBackup()
	e.change("nyc1/web", 40)
	e.mustBackup()
	version, old := e.keptVersion(e.image("nyc1/web"))
	if digest(t, old) == digest(t, e.image("nyc1/web")) {
		t.Fatalf("the kept version equals the newest backup: the test proves nothing")
	}
	// What a restore must not change: every name, mode, size and mtime.
	listing := func(dir string) string {
		var b strings.Builder
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			st, err := os.Lstat(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s %v %d %s\n", p, st.Mode(), st.Size(), st.ModTime().Format(time.RFC3339Nano))
			return nil
		})
		return b.String()
	}
	before := listing(e.backups)

	// The backup disk mounted read-only, as one restores after a disaster.
	ro := testenv.ReadOnlyBind(t, e.backups)
	img := filepath.Join(ro, "nyc1", "web.img")

	t.Run("read-only", func(t *testing.T) {
		r := e.restore("--volume-name", "web-ro", "--region", "nyc1", img)
		if r.code != 0 {
			t.Fatalf("restore.sh from a read-only disk exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
		}
		e.checkRestored("nyc1", "web-ro", gib, img)

		r = e.restore("--volume-name", "web-old", "--region", "nyc1", "--version", version, "--no-sha256", img)
		if r.code != 0 {
			t.Fatalf("restore.sh --version from a read-only disk exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
		}
		e.checkRestored("nyc1", "web-old", gib, old)
		if after := listing(e.backups); after != before {
			t.Errorf("the restores changed the backup directory:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		e.checkNothingLeft("nyc1/web-ro", "nyc1/web-old")
	})

	t.Run("no-room", func(t *testing.T) {
		// The version holds 2 MiB of data: no room in 1 MiB.
		small := testenv.SmallFS(t, 1<<20)
		r := e.restore("--volume-name", "web-noroom", "--region", "nyc1", "--version", version, "--tmp-dir", small, img)
		if r.code != 1 {
			t.Fatalf("restore.sh --version with no room exited %d, want 1\nstderr:\n%s", r.code, r.stderr)
		}
		if !regexp.MustCompile(`(?m)^\S+ restore: no room for version \S+ in `+regexp.QuoteMeta(small)+`: it needs up to 1\.0 GiB \(the image's size\), \d`).MatchString(r.stderr) ||
			!strings.Contains(r.stderr, "restore: hint: give --tmp-dir DIR on a disk with that much room") {
			t.Errorf("no one-line error that names the room needed and --tmp-dir:\n%s", r.stderr)
		}
		if strings.Contains(r.stderr, "dosvob-patch:") {
			t.Errorf("the error is not one line: dosvob-patch's own messages are shown:\n%s", r.stderr)
		}
		checkNoTeardownAll(t, "a restore with no room", r.stderr)
		if _, ok := e.volumeNamed("nyc1", "web-noroom"); ok {
			t.Errorf("a volume was created although the version could not be written")
		}
		if ents, _ := os.ReadDir(small); len(ents) != 0 {
			t.Errorf("the run left %d entries in --tmp-dir", len(ents))
		}
	})

	t.Run("interrupted version", func(t *testing.T) {
		// A Ctrl-C while the version is written to its temporary file, the
		// step before anything is made in DigitalOcean: dosvob-patch
		// restore-version stands still once it has written it, so that the
		// signal lands in that step. The last line says what is left.
		// Before, the script's own lines went into the removed file, and
		// the last line was "writing version ...".
		bin := e.binWith(map[string]string{"dosvob-patch": `if [[ $1 == restore-version ]]; then "$REAL" "$@" || exit; exec sleep 60; fi; exec "$REAL" "$@"`})
		st := e.emu.State()
		cmd, stdout, stderr := e.script("restore.sh", "--config", e.conf, "--bin", bin,
			"--volume-name", "web-int", "--region", "nyc1", "--version", version, img)
		done := e.start(cmd, stdout, stderr)
		e.waitFor(cmd.Process.Pid, "sleep", 60*time.Second)
		files, _ := filepath.Glob(filepath.Join(e.dir, "dosvob-restore.*", "version.img"))
		if len(files) != 1 {
			cmd.Process.Kill()
			t.Fatalf("version files %v, want the run's one\nstderr:\n%s", files, (<-done).stderr)
		}
		cmd.Process.Signal(syscall.SIGINT)
		r := waitKill(t, cmd, done, "SIGINT")
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 130 || !strings.HasSuffix(lines[len(lines)-1], "restore: the restore was stopped while it wrote version "+version+
			" to a temporary file, before it created anything in DigitalOcean: nothing was created there, and the temporary file was removed") {
			t.Errorf("restore.sh exited %d after SIGINT, want 130 and a last line that says what is left\nstderr:\n%s", r.code, r.stderr)
		}
		if _, err := os.Stat(files[0]); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the temporary version file is left: %v", err)
		}
		if diff := stateDiff(st, e.emu.State()); diff != "" {
			t.Errorf("the interrupted restore changed the account: %s", diff)
		}
	})

	t.Run("refused", func(t *testing.T) {
		st := e.emu.State()
		r := e.restore("--volume-name", "web", "--region", "nyc1", img)
		if r.code != 4 {
			t.Fatalf("restore.sh onto the existing volume web exited %d, want 4\nstderr:\n%s", r.code, r.stderr)
		}
		checkNoTeardownAll(t, "a refused restore", r.stderr)
		if diff := stateDiff(st, e.emu.State()); diff != "" {
			t.Errorf("a refused restore changed the account: %s", diff)
		}
	})

	t.Run("killed", func(t *testing.T) {
		// SIGKILL right after "writing version", on the writable disk: the
		// version is being written (it may finish: dosvob-patch is not
		// killed), and nothing removes it but the next run.
		live := lockedDir(t, e.dir, "dosvob-restore")
		cmd, stdout, stderr := e.script("restore.sh", "--config", e.conf, "--volume-name", "web-killed",
			"--region", "nyc1", "--version", version, e.image("nyc1/web"))
		done := e.start(cmd, stdout, stderr)
		// The version file appears (beside the image, or in the work
		// directory): the run is writing it.
		deadline := time.Now().Add(60 * time.Second)
		for {
			a, _ := filepath.Glob(filepath.Join(e.backups, "nyc1", ".restore-*"))
			b, _ := filepath.Glob(filepath.Join(e.dir, "dosvob-restore.*", "version.img"))
			if len(a)+len(b) > 0 {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("restore.sh wrote no version file\nstderr:\n%s", (<-done).stderr)
			}
			time.Sleep(5 * time.Millisecond)
		}
		patches := descendants(cmd.Process.Pid, "dosvob-patch")
		cmd.Process.Signal(syscall.SIGKILL)
		r := <-done
		if r.code != 128+9 {
			t.Fatalf("restore.sh exited %d, want SIGKILLed\nstderr:\n%s", r.code, r.stderr)
		}
		// Its dosvob-patch finishes by itself.
		for _, p := range patches {
			for syscall.Kill(p, 0) == nil && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
		}
		dead := deadDirs(t, e.dir, live)
		left, _ := filepath.Glob(filepath.Join(e.backups, "nyc1", ".restore-*"))
		if len(dead) == 0 && len(left) == 0 {
			t.Fatalf("the killed run left nothing: the test proves nothing\nstderr:\n%s", r.stderr)
		}

		// The next run (here refused: the name exists) removes what the
		// killed one left, says so, and leaves the live run's directory.
		r = e.restore("--volume-name", "web", "--region", "nyc1", e.image("nyc1/web"))
		if r.code != 4 {
			t.Fatalf("restore.sh onto the existing volume web exited %d, want 4\nstderr:\n%s", r.code, r.stderr)
		}
		checkRemoved(t, "restore", r.stderr, dead)
		if left, _ := filepath.Glob(filepath.Join(e.backups, "nyc1", ".restore-*")); len(left) != 0 {
			t.Errorf("temporary version files left beside the image: %v", left)
		}
		if _, err := os.Stat(live); err != nil {
			t.Errorf("the next run removed a live run's work directory: %v", err)
		}
		if _, ok := e.volumeNamed("nyc1", "web-killed"); ok {
			t.Errorf("the killed run created its volume")
		}
	})
}

// TestBackupRobust: backup-all.sh under cron's umask 022 makes nothing that
// group or others can read; a SIGKILLed run's work directory is removed by
// the next run, which says so, and a live run's is not.
func TestBackupRobust(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	// The disk exists (backup-all.sh never makes a backup directory's
	// parent: TestBackupDirParentMissing), the backup directory not yet.
	if err := os.Mkdir(filepath.Join(e.dir, "disk"), 0o700); err != nil {
		t.Fatal(err)
	}
	e.backups = filepath.Join(e.dir, "disk", "backups")
	run := func(cmd *exec.Cmd, stdout, stderr *bytes.Buffer) result {
		return <-e.start(cmd, stdout, stderr)
	}

	t.Run("umask", func(t *testing.T) {
		cmd, stdout, stderr := e.script("backup-all.sh", "--config", e.conf, "--keep", "3", e.backups)
		underUmask022(cmd)
		r := run(cmd, stdout, stderr)
		if r.code != 0 {
			t.Fatalf("backup-all.sh under umask 022 exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
		}
		e.checkImages()
		checkPrivate(t, filepath.Join(e.dir, "disk"))
	})

	t.Run("killed", func(t *testing.T) {
		live := lockedDir(t, e.dir, "dosvob-backup")
		e.change("fra1/db", 10)
		e.change("nyc1/web", 10)
		r := e.startBackup()
		r.syncing()
		// As a crash would: the script and every process of it.
		ps := descendants(r.pid, "")
		syscall.Kill(r.pid, syscall.SIGKILL)
		for _, p := range ps {
			syscall.Kill(p, syscall.SIGKILL)
		}
		if res := <-r.done; res.code != 128+9 {
			t.Fatalf("backup-all.sh exited %d, want SIGKILLed\nstderr:\n%s", res.code, res.stderr)
		}
		dead := deadDirs(t, e.dir, live)
		if len(dead) == 0 {
			out, _ := exec.Command("ls", "-la", e.dir).CombinedOutput()
			t.Fatalf("the killed run left no work directory: the test proves nothing\n%s", out)
		}

		cmd, stdout, stderr := e.script("backup-all.sh", "--config", e.conf, "--keep", "3", e.backups)
		underUmask022(cmd)
		res := run(cmd, stdout, stderr)
		if res.code != 0 {
			t.Fatalf("backup-all.sh after a SIGKILLed run exited %d, want 0\nstderr:\n%s", res.code, res.stderr)
		}
		checkRemoved(t, "backup-all", res.stderr, dead)
		if _, err := os.Stat(live); err != nil {
			t.Errorf("the next run removed a live run's work directory: %v", err)
		}
		e.checkImages()
		e.checkNothingLeft()
		checkPrivate(t, filepath.Join(e.dir, "disk"))
	})
}

// TestBackupDirUnwritable: a backup directory that cannot be made or
// written (a read-only disk), and a lock file that cannot be, are a set-up
// error: exit 2 with one line that says so (and a hint), before anything is
// provisioned.
func TestBackupDirUnwritable(t *testing.T) {
	requireEnv(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "conf.json")
	writeFile(t, conf, "{}\n", 0o600)
	disk := filepath.Join(dir, "disk")
	if err := os.MkdirAll(filepath.Join(disk, "bk"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(disk, "file"), "x", 0o600)
	ro := testenv.ReadOnlyBind(t, disk)
	ok := filepath.Join(dir, "ok")

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{filepath.Join(ro, "new")}, `backup-all: cannot create the backup directory "` + filepath.Join(ro, "new") + `": Read-only file system`},
		{[]string{filepath.Join(ro, "bk")}, `backup-all: backup directory "` + filepath.Join(ro, "bk") + `" is not writable`},
		{[]string{filepath.Join(ro, "file")}, `backup-all: backup directory "` + filepath.Join(ro, "file") + `" exists and is not a directory`},
		{[]string{"--lock", filepath.Join(ro, "bk.lock"), ok}, `backup-all: cannot open the lock file "` + filepath.Join(ro, "bk.lock") + `" for writing`},
	} {
		cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "scripts", "backup-all.sh"), "--config", conf}, c.args...)...)
		cmd.Env = append(os.Environ(), "DOSVOB_BIN="+binDir(t), "TMPDIR="+dir, "XDG_STATE_HOME="+filepath.Join(dir, "state"))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("backup-all.sh %q: %v, want exit 2\n%s", c.args, err, out)
			continue
		}
		checkNoTeardownAll(t, "backup-all.sh "+strings.Join(c.args, " "), string(out))
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 2 || !strings.HasSuffix(lines[0], c.want) || !strings.Contains(lines[1], " backup-all: hint: ") {
			t.Errorf("backup-all.sh %q: want the line %q and a hint, got\n%s", c.args, c.want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Errorf("dosvob-provision ran")
	}
}
