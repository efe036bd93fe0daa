package backup

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// pings records the requests a healthchecks-style server receives.
type pings struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []string // "METHOD PATH BODY"
}

func newPings(t *testing.T) *pings {
	p := &pings{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.got = append(p.got, r.Method+" "+r.URL.Path+" "+string(b))
		p.mu.Unlock()
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *pings) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.got...)
}

// checkPings asserts the start ping and then exactly one of success or
// failure, with the summary table as the body of the last one.
func checkPings(t *testing.T, p *pings, uuid string, success bool) {
	got := p.list()
	if len(got) != 2 {
		t.Fatalf("want 2 pings (start, then the result), got %q", got)
	}
	if !strings.HasPrefix(got[0], "GET /"+uuid+"/start") {
		t.Errorf("first ping %q, want GET /%s/start", got[0], uuid)
	}
	want := "POST /" + uuid + "/fail "
	if success {
		want = "POST /" + uuid + " "
	}
	if !strings.HasPrefix(got[1], want) {
		t.Errorf("last ping %q, want %q...", got[1], want)
	}
}

// hookCommand is a --hook that records what it was told into file.
func hookCommand(file string) string {
	return `{ echo "$DOSVOB_RESULT $DOSVOB_EXIT_CODE"; cat "$DOSVOB_SUMMARY_FILE"; } > ` + file
}

func checkHook(t *testing.T, file, wantFirstLine string) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the hook did not run: %v", err)
	}
	first, rest, _ := strings.Cut(string(b), "\n")
	if first != wantFirstLine {
		t.Errorf("the hook saw %q, want %q", first, wantFirstLine)
	}
	if wantFirstLine == "success 0" && !strings.Contains(rest, "RESULT") {
		t.Errorf("the hook's summary file lacks the table:\n%s", rest)
	}
}

// TestUsage: backup-all.sh and restore.sh explain themselves and reject bad
// arguments with exit 2 before touching anything. No root needed.
func TestUsage(t *testing.T) {
	root := repoRoot(t)
	for _, c := range []struct {
		script string
		args   []string
		code   int
		want   string
	}{
		{"backup-all.sh", []string{"--help"}, 0, "Exit codes:"},
		{"backup-all.sh", nil, 2, "want exactly one BACKUP_DIR"},
		{"backup-all.sh", []string{"-j", "0", "/nonexistent"}, 2, `invalid --jobs "0"`},
		{"backup-all.sh", []string{"--keep", "x", "/nonexistent"}, 2, `invalid --keep "x"`},
		{"backup-all.sh", []string{"--frobnicate", "/nonexistent"}, 2, `unknown option "--frobnicate"`},
		{"backup-all.sh", []string{"--readers", "0", "/nonexistent"}, 2, `invalid --readers "0"`},
		{"backup-all.sh", []string{"--readers", "65", "/nonexistent"}, 2, `invalid --readers "65"`},
		{"backup-all.sh", []string{"--level", "5", "/nonexistent"}, 2, `invalid --level "5"`},
		{"backup-all.sh", []string{"--config", "/nonexistent/conf.json", "/nonexistent"}, 2, "not found"},
		{"restore.sh", []string{"--help"}, 0, "Exit codes:"},
		{"restore.sh", []string{"--region", "fra1", "/etc/hostname"}, 2, "--volume-name is required"},
		{"restore.sh", []string{"--volume-name", "Bad_Name", "--region", "fra1", "/etc/hostname"}, 2, `invalid --volume-name "Bad_Name"`},
		{"restore.sh", []string{"--volume-name", "ok", "--region", "fra1", "/nonexistent.img"}, 2, "not found"},
		{"restore.sh", []string{"--volume-name", "ok", "--region", "fra1", "--size-gib", "0", "/etc/hostname"}, 2, "invalid --size-gib"},
		{"restore.sh", []string{"--volume-name", "ok", "--region", "fra1", "--level", "9", "/etc/hostname"}, 2, `invalid --level "9"`},
		{"demo.sh", []string{"--help"}, 0, "Usage: demo.sh"},
		// The demo deletes its work directory at the end: not one of yours.
		{"demo.sh", []string{"--workdir", root}, 2, "exists and is not an empty directory"},
		{"demo.sh", []string{"--workdir", "/etc/hostname"}, 2, "exists and is not an empty directory"},
	} {
		cmd := exec.Command("bash", append([]string{filepath.Join(root, "scripts", c.script)}, c.args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("%s %q: exit %d, want %d with %q\n%s", c.script, c.args, code, c.code, c.want, out)
		}
	}
}

// TestProvisionRefusedNoTeardown: when dosvob-provision refuses to start
// (a bad config here; another run's lock is the other case), it created
// nothing, so backup-all.sh must not tear down "everything dosvob's": that
// could only hit another run's resources. It exits 2 as provision did
// (a config error), not 8.
func TestProvisionRefusedNoTeardown(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "conf.json")
	if err := os.WriteFile(conf, []byte(`{"do_token": "x", "regoin": "fra1"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "backup-all.sh"), "--config", conf, filepath.Join(dir, "backups"))
	cmd.Env = append(os.Environ(), "DOSVOB_BIN="+binDir(t), "XDG_STATE_HOME="+filepath.Join(dir, "state"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "dosvob-provision exit 2") {
		t.Fatalf("backup-all.sh with a bad config: %v, want exit 2 after provision's exit 2\n%s", err, out)
	}
	if strings.Contains(string(out), "tearing down") {
		t.Fatalf("backup-all.sh tore down after a provision that created nothing:\n%s", out)
	}
}

// TestLockProbeNoRefusal: dosvob-provision tells whether a dead run's
// owner lock is free by taking it shared for an instant. A backup-all.sh
// starting in that instant must wait for it, not exit 6 as if another
// backup were running. The probe is stood in for by a real shared flock
// held for half a second; the run then goes on to provision (which refuses
// the bad config: exit 2).
func TestLockProbeNoRefusal(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "conf.json")
	if err := os.WriteFile(conf, []byte(`{"do_token": "x", "regoin": "fra1"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backups := filepath.Join(dir, "backups")
	if err := os.Mkdir(backups, 0o700); err != nil {
		t.Fatal(err)
	}
	// Built first: the build takes longer than the probe holds the lock.
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "backup-all.sh"), "--config", conf, backups)
	cmd.Env = append(os.Environ(), "DOSVOB_BIN="+binDir(t), "XDG_STATE_HOME="+filepath.Join(dir, "state"))
	lock := filepath.Join(backups, ".dosvob-backup.lock")
	probe := exec.Command("flock", "-s", lock, "sh", "-c", "echo held; sleep 0.5")
	stdout, err := probe.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := probe.Start(); err != nil {
		t.Fatal(err)
	}
	defer probe.Wait()
	if _, err := stdout.Read(make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "dosvob-provision exit 2") {
		t.Fatalf("backup-all.sh while the lock was held shared for an instant: %v, want it to wait and reach provision (exit 2)\n%s", err, out)
	}
}
