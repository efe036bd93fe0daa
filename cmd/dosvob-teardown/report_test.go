package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/doemu"
)

// A failed teardown's report is one line that counts what is left, one
// line per resource left (its type, name, id and why), and the hint, last:
// nothing runs together. Here the API fails every delete of a volume
// (500) and of an SSH key (503) of run A.
func TestIncompleteReport(t *testing.T) {
	acct, err := account()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e, err := doemu.New(doemu.Options{KeyListLimit: -1, BurstLimit: -1, Token: scriptToken, ActionDelay: 10 * time.Millisecond, Account: acct, DataDir: filepath.Join(dir, "emu")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.InjectFault(doemu.Fault{Method: "DELETE", Path: `/v2/volumes/[^/]+`, Status: 500, Times: 1000})
	e.InjectFault(doemu.Fault{Method: "DELETE", Path: `/v2/account/keys/[0-9]+`, Status: 503, Times: 1000})

	bin := filepath.Join(dir, "dosvob-teardown")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--run", runA, "--retry-backoff", "1ms", "--poll-interval", "10ms")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOSVOB_") && !strings.HasPrefix(kv, "DIGITALOCEAN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "DIGITALOCEAN_ACCESS_TOKEN="+scriptToken, "DOSVOB_API_URL="+e.URL(),
		"DOSVOB_STATE_DIR="+filepath.Join(dir, "state"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 8 || stdout.Len() != 0 {
		t.Fatalf("exit %d (%v), stdout %q, want 8 and nothing\nstderr:\n%s", code, err, stdout.String(), stderr.String())
	}

	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	first := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "dosvob-teardown: teardown incomplete") {
			first = i
			break
		}
	}
	if first < 0 {
		t.Fatalf("no report:\n%s", stderr.String())
	}
	id := `\([0-9a-f-]+\)`
	why := func(status string) string {
		return `delete failed: giving up after 8 attempts: ` + status + ` \(request "[0-9a-f-]+"\)$`
	}
	want := []string{
		`^dosvob-teardown: teardown incomplete: 3 resources of run ` + runA + ` left$`,
		`^dosvob-teardown: left: volume dosvob-ephemeral-` + runA + `-0 ` + id + ` in fra1: ` + why("500 Server Error"),
		`^dosvob-teardown: left: volume dosvob-ephemeral-` + runA + `-1 ` + id + ` in ams3: ` + why("500 Server Error"),
		`^dosvob-teardown: left: ssh_key dosvob-ephemeral-` + runA + ` \([0-9]+\): ` + why("503 Service Unavailable"),
		`^dosvob-teardown: hint: run dosvob-teardown --run ` + runA + ` until it exits 0; what is left costs money$`,
	}
	report := lines[first:]
	if len(report) != len(want) {
		t.Fatalf("the report has %d lines, want %d:\n%s", len(report), len(want), strings.Join(report, "\n"))
	}
	for i, w := range want {
		if !regexp.MustCompile(w).MatchString(report[i]) {
			t.Errorf("line %d of the report:\n %s\nwant %s", i+1, report[i], w)
		}
	}
}
