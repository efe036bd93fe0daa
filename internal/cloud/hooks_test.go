package cloud

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"

	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/doemu"
)

// The hooks run around the snapshot with the volume in their environment;
// the post hook runs even when the snapshot fails; a failing pre hook stops
// the run before any snapshot. The API token never reaches a hook.
func TestHooks(t *testing.T) {
	v := newEnv(t, envOpts{account: userAccount(1, 0)})
	dir := t.TempDir()
	logFile := filepath.Join(dir, "hooks.log")
	t.Setenv("DIGITALOCEAN_ACCESS_TOKEN", testToken)
	hooks := Hooks{
		PreSnapshot:  `echo "pre $DOSVOB_HOOK $DOSVOB_VOLUME_NAME $DOSVOB_VOLUME_REGION $DOSVOB_RUN_ID tok=$DIGITALOCEAN_ACCESS_TOKEN" >> ` + logFile,
		PostSnapshot: `echo "post $DOSVOB_HOOK $DOSVOB_VOLUME_NAME $DOSVOB_SNAPSHOT_RESULT" >> ` + logFile,
		Timeout:      10 * time.Second,
	}
	// The snapshot fails for good (DigitalOcean's 10-minute limit): the
	// post hook must still run, to thaw what the pre hook froze.
	v.emu.InjectFault(doemu.Fault{Method: "POST", Path: `/v2/volumes/[^/]+/snapshots`, Status: 429, Message: "this operation is rate-limited"})
	p := v.provisioner(func(p *Provisioner) {
		p.Filter = Filter{Include: []string{"data-*"}}
		p.Hooks = hooks
	})
	_, err := p.Provision(context.Background())
	if !errors.Is(err, ErrSnapshotRateLimited) {
		t.Fatalf("err = %v", err)
	}
	got, _ := os.ReadFile(logFile)
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "pre pre_snapshot data-00 fra1 2") || !strings.HasSuffix(lines[0], "tok=") ||
		lines[1] != "post post_snapshot data-00 failed" {
		t.Fatalf("hook log:\n%s", got)
	}

	// A pre hook that fails after freezing: no snapshot is taken, the post
	// hook still thaws (told the snapshot was skipped), the run is torn down.
	thaw := `echo "thawed $DOSVOB_SNAPSHOT_RESULT" >> ` + logFile
	os.Remove(logFile)
	before := v.emu.State()
	p = v.provisioner(func(p *Provisioner) {
		p.Filter = Filter{Include: []string{"data-*"}}
		p.Hooks = Hooks{PreSnapshot: "echo frozen >> " + logFile + "; exit 3", PostSnapshot: thaw}
	})
	_, err = p.Provision(context.Background())
	var re *RunError
	if !errors.As(err, &re) || !re.TornDown || !strings.Contains(err.Error(), "pre_snapshot hook") {
		t.Fatalf("err = %v", err)
	}
	if got, _ := os.ReadFile(logFile); string(got) != "frozen\nthawed skipped\n" {
		t.Errorf("hook log %q", got)
	}
	assertUserStateUnchanged(t, before, v.emu.State())

	// A pre hook that hangs is stopped at its timeout, and the post hook runs.
	os.Remove(logFile)
	p = v.provisioner(func(p *Provisioner) {
		p.Filter = Filter{Include: []string{"data-*"}}
		p.Hooks = Hooks{PreSnapshot: "echo frozen >> " + logFile + "; sleep 60", PostSnapshot: thaw, Timeout: 300 * time.Millisecond}
	})
	start := time.Now()
	if _, err = p.Provision(context.Background()); err == nil || !strings.Contains(err.Error(), "did not finish within") {
		t.Fatalf("hanging hook: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("hanging hook took %v", time.Since(start))
	}
	if got, _ := os.ReadFile(logFile); string(got) != "frozen\nthawed skipped\n" {
		t.Errorf("hook log after a timeout %q", got)
	}

	// A run interrupted while the pre hook runs (SIGTERM to dosvob-provision)
	// still thaws.
	os.Remove(logFile)
	ctx, cancel := context.WithCancel(context.Background())
	p = v.provisioner(func(p *Provisioner) {
		p.Filter = Filter{Include: []string{"data-*"}}
		p.Hooks = Hooks{PreSnapshot: "echo frozen >> " + logFile + "; sleep 60", PostSnapshot: thaw, Timeout: 30 * time.Second}
	})
	go func() {
		for !strings.Contains(readString(logFile), "frozen") {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	if _, err = p.Provision(ctx); err == nil {
		t.Fatal("an interrupted run succeeded")
	}
	if got := readString(logFile); got != "frozen\nthawed skipped\n" {
		t.Errorf("hook log after an interruption %q", got)
	}
	teardownUntilClean(t, v)
	assertUserStateUnchanged(t, before, v.emu.State())
}

// readString is the content of a file, or "" if it cannot be read.
func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// DigitalOcean's real limit of one snapshot per volume every 10 minutes is
// reported clearly, not retried blindly.
func TestSnapshotRateLimit(t *testing.T) {
	lb := &logBuf{t: t}
	e, err := doemu.New(doemu.Options{KeyListLimit: -1, BurstLimit: -1, Token: testToken, ActionDelay: 10 * time.Millisecond, Account: userAccount(1, 0), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	api, err := NewAPI(APIOptions{BaseURL: e.URL(), Token: testToken, Backoff: 5 * time.Millisecond, Poll: 10 * time.Millisecond, Logf: lb.logf})
	if err != nil {
		t.Fatal(err)
	}
	vols, err := api.ListVolumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, v := range vols {
		if v.Name == "data-00" {
			id = v.ID
		}
	}
	if _, _, err := api.Godo().Storage.CreateSnapshot(context.Background(), &godo.SnapshotCreateRequest{VolumeID: id, Name: "users-own"}); err != nil {
		t.Fatal(err)
	}
	p := &Provisioner{API: api, Store: &Store{Dir: t.TempDir()}, Logf: lb.logf, HashBinary: "/bin/sh", Image: "ubuntu-24-04-x64",
		Filter: Filter{Include: []string{"data-*"}}, ActionWait: 3 * time.Second}
	_, err = p.Provision(context.Background())
	if !errors.Is(err, ErrSnapshotRateLimited) || !strings.Contains(err.Error(), `volume "data-00"`) {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(lb.String(), "retrying") {
		t.Errorf("the snapshot limit was retried:\n%s", lb.String())
	}
	ce := ExitError(err, testToken)
	if !strings.Contains(ce.Error(), "10 minutes") {
		t.Errorf("message: %v", ce)
	}
}

// What teardown cannot remove is listed, with exit code 8: here a volume
// with dosvob's marks attached to a droplet of the user's, which teardown
// never touches.
func TestTeardownIncomplete(t *testing.T) {
	acct := &doemu.Account{
		Volumes: []doemu.SeedVolume{{Name: "dosvob-ephemeral-20260101-000000-abcdef-0", Region: "fra1", SizeGigabytes: 1,
			Tags: []string{"dosvob-ephemeral", "dosvob-run-20260101-000000-abcdef"}}},
		Droplets: []doemu.SeedDroplet{{Name: "app", Region: "fra1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64",
			Volumes: []string{"dosvob-ephemeral-20260101-000000-abcdef-0"}}},
	}
	v := newEnv(t, envOpts{account: acct})
	before := v.emu.State()
	err := v.api.Teardown(context.Background(), Scope{}, TeardownOptions{DetachWait: 200 * time.Millisecond, ActionWait: time.Second, Logf: v.log.logf})
	var ie *IncompleteError
	if !errors.As(err, &ie) || len(ie.Left) != 1 || ie.Left[0].Kind != "volume" {
		t.Fatalf("err = %v", err)
	}
	// Why, in its one line: the attachment, and the answer to the delete.
	line := ie.Lines()[0]
	if !strings.HasPrefix(line, "left: volume dosvob-ephemeral-20260101-000000-abcdef-0 (") ||
		!strings.Contains(line, ": attached to droplet(s) [") ||
		!strings.Contains(line, "; delete failed: 409 A volume that's attached to a Droplet cannot be deleted.") ||
		strings.Contains(line, "http://") || strings.Contains(line, "\n") {
		t.Errorf("line %q", line)
	}
	if code := cliutilCode(ExitError(err, testToken)); code != 8 {
		t.Errorf("exit code %d, want 8", code)
	}
	if !reflect.DeepEqual(before.Droplets, v.emu.State().Droplets) {
		t.Error("the user's droplet was changed")
	}
}

func cliutilCode(err error) int { return cliutil.CodeOf(err) }
