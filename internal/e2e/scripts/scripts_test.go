// Package scripts checks dosvob's shell scripts and deployment files with
// the tools their users' systems will judge them by: shellcheck for every
// script under scripts/, systemd-analyze for the systemd units.
package scripts

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
)

func repoRoot(t *testing.T) string { return testenv.RepoRoot(t) }

// need skips the test when tool is missing, but fails it when CI=true:
// CI installs every tool these tests use.
func need(t *testing.T, tool string) string {
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	testenv.SkipOrFail(t, "%s not found: install it (Debian package %s) to run this test", tool, debPackage[tool])
	return ""
}

var debPackage = map[string]string{
	"shellcheck":      "shellcheck",
	"systemd-analyze": "systemd",
}

// shellScripts lists every shell script under dir: files ending in .sh and
// files whose first line is a shell shebang.
func shellScripts(t *testing.T, dir string) []string {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(p, ".sh") {
			out = append(out, p)
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		first, _, _ := bytes.Cut(b, []byte("\n"))
		if bytes.HasPrefix(first, []byte("#!")) && bytes.Contains(first, []byte("sh")) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestShellcheck(t *testing.T) {
	sc := need(t, "shellcheck")
	root := repoRoot(t)
	files := shellScripts(t, filepath.Join(root, "scripts"))
	for _, want := range []string{"backup-all.sh", "restore.sh", "demo.sh", "lib/common.sh"} {
		found := false
		for _, f := range files {
			if strings.HasSuffix(f, filepath.Join("scripts", want)) {
				found = true
			}
		}
		if !found {
			t.Errorf("scripts/%s is missing: the checks below would pass vacuously", want)
		}
	}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		t.Run(rel, func(t *testing.T) {
			// -x follows `source` into scripts/lib; every optional check
			// that is on by default stays on.
			cmd := exec.Command(sc, "-x", "--severity=style", f)
			cmd.Dir = filepath.Dir(f)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("shellcheck %s: %v\n%s", rel, err, out)
			}
		})
	}
}

// TestShellcheckCatchesMistakes proves the check above can fail: an unquoted
// variable is flagged.
func TestShellcheckCatchesMistakes(t *testing.T) {
	sc := need(t, "shellcheck")
	bad := filepath.Join(t.TempDir(), "bad.sh")
	if err := os.WriteFile(bad, []byte("#!/bin/bash\nf=$1\nrm $f\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sc, "-x", bad).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("SC2086")) {
		t.Fatalf("shellcheck passed a script with an unquoted variable: %v\n%s", err, out)
	}
}

func TestScriptsHaveStrictMode(t *testing.T) {
	root := repoRoot(t)
	for _, f := range shellScripts(t, filepath.Join(root, "scripts")) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		if strings.HasPrefix(string(b), "#!") {
			if !bytes.Contains(b, []byte("\nset -euo pipefail\n")) {
				t.Errorf("%s: no `set -euo pipefail`", rel)
			}
			if st, err := os.Stat(f); err == nil && st.Mode()&0o111 == 0 {
				t.Errorf("%s: has a shebang but is not executable", rel)
			}
		}
	}
}

// analyzeUnits runs systemd-analyze verify on the units in dir and returns
// its error and combined output. Any output counts as a finding: verify
// exits 0 on unknown keys and only warns.
func analyzeUnits(t *testing.T, dir string, units ...string) (string, error) {
	sa := need(t, "systemd-analyze")
	args := []string{"verify"}
	for _, u := range units {
		args = append(args, filepath.Join(dir, u))
	}
	cmd := exec.Command(sa, args...)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// installedPath is where the units expect the scripts; the test points
// them at this checkout instead, since verify checks the command exists.
const installedPath = "/usr/local/lib/dosvob/scripts/"

func copyUnits(t *testing.T, root, dir string, mutate func(name, text string) string) {
	for _, u := range []string{"dosvob-backup.service", "dosvob-backup.timer"} {
		b, err := os.ReadFile(filepath.Join(root, "scripts", "deploy", u))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), installedPath, filepath.Join(root, "scripts")+"/")
		if mutate != nil {
			text = mutate(u, text)
		}
		if err := os.WriteFile(filepath.Join(dir, u), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSystemdUnits(t *testing.T) {
	root := repoRoot(t)
	svc, err := os.ReadFile(filepath.Join(root, "scripts", "deploy", "dosvob-backup.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(svc), "ExecStart="+installedPath+"backup-all.sh") {
		t.Fatalf("dosvob-backup.service does not start %sbackup-all.sh", installedPath)
	}
	dir := t.TempDir()
	copyUnits(t, root, dir, nil)
	out, err := analyzeUnits(t, dir, "dosvob-backup.service", "dosvob-backup.timer")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdVerifyCatchesMistakes proves the check above can fail: an
// unknown key in the timer is reported.
func TestSystemdVerifyCatchesMistakes(t *testing.T) {
	root := repoRoot(t)
	dir := t.TempDir()
	copyUnits(t, root, dir, func(name, text string) string {
		if name == "dosvob-backup.timer" {
			return strings.Replace(text, "Persistent=true", "Persistant=true", 1)
		}
		return text
	})
	out, err := analyzeUnits(t, dir, "dosvob-backup.service", "dosvob-backup.timer")
	if err == nil && !strings.Contains(out, "Persistant") {
		t.Fatalf("systemd-analyze verify passed a timer with a misspelt key:\n%s", out)
	}
}

// TestCronLine runs the command of the cron file's job line as cron would
// (its SHELL, under cron's usual umask 022), pointed at this checkout and
// a temporary log, with a config that does not exist: backup-all.sh
// refuses it (exit 2), and the log that the line's shell made is its
// user's alone, as whatever backup-all.sh would make.
func TestCronLine(t *testing.T) {
	root := repoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "scripts", "deploy", "dosvob-backup.cron"))
	if err != nil {
		t.Fatal(err)
	}
	var job string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 6 && !strings.HasPrefix(line, "#") && !strings.Contains(f[0], "=") {
			if job != "" {
				t.Fatalf("more than one job line in the cron file")
			}
			// minute hour day month weekday user command
			job = strings.Join(f[6:], " ")
		}
	}
	const logPath = "/var/log/dosvob-backup.log"
	if !strings.Contains(job, installedPath+"backup-all.sh ") || !strings.Contains(job, logPath) {
		t.Fatalf("the cron job does not run %sbackup-all.sh into %s: %q", installedPath, logPath, job)
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "dosvob-backup.log")
	job = strings.ReplaceAll(job, installedPath, filepath.Join(root, "scripts")+"/")
	job = strings.ReplaceAll(job, "/etc/dosvob/conf.json", filepath.Join(dir, "missing.json"))
	job = strings.ReplaceAll(job, logPath, log)
	cmd := exec.Command("bash", "-c", "umask 022 && bash -c \"$1\"", "bash", job)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("the cron job with a missing config: %v, want exit 2\n%s", err, out)
	}
	st, err := os.Stat(log)
	if err != nil {
		t.Fatal(err)
	}
	logText, _ := os.ReadFile(log)
	if !bytes.Contains(logText, []byte("backup-all: config")) {
		t.Errorf("the log lacks backup-all.sh's error:\n%s", logText)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Errorf("the cron job's log has mode %v under umask 022: group or others may read it", st.Mode().Perm())
	}
}
