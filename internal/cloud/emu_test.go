package cloud

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/doemu"
	"github.com/dosvob/dosvob/internal/testenv"
)

// testToken is the emulator's token. Every test's captured output is
// checked not to contain it.
const testToken = "dop_v1_cloudtest-6f1d2a9be0c34f7d"

// needRootSSHD skips (or fails, under CI=true) a test that needs the
// emulator's real sshd droplets.
func needRootSSHD(t *testing.T) {
	t.Helper()
	testenv.RequireSSHD(t)
}

// logBuf collects log lines of a test (thread-safe) so they can be
// searched for the token.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
	t  *testing.T
}

func (l *logBuf) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.b, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// noToken fails the test if any captured text holds the token.
func noToken(t *testing.T, texts ...string) {
	t.Helper()
	for _, s := range texts {
		if strings.Contains(s, testToken) {
			t.Fatalf("the API token appears in output:\n%s", s)
		}
	}
}

type env struct {
	t    *testing.T
	emu  *doemu.Emulator
	api  *API
	log  *logBuf
	bin  string // a file to upload as dosvob-hash / dosvob-patch
	root string // state directory
}

type envOpts struct {
	account *doemu.Account
	ssh     bool
	loop    bool // attach volumes as loop devices where the emulator can
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if o.ssh {
		needRootSSHD(t)
	}
	lb := &logBuf{t: t}
	e, err := doemu.New(doemu.Options{
		Token:            testToken,
		ActionDelay:      10 * time.Millisecond,
		Account:          o.account,
		DataDir:          t.TempDir(),
		SSH:              o.ssh,
		NoLoopDevices:    !o.loop,
		SnapshotInterval: -1,
		// Tests poll every 10 ms (a real run: 2 s) and list the account's keys
		// more than 10 times a minute.
		BurstLimit:   -1,
		KeyListLimit: -1,
		Logf:         func(string, ...any) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	api, err := NewAPI(APIOptions{
		BaseURL:        e.URL(),
		Token:          testToken,
		RequestTimeout: 2 * time.Second,
		MaxAttempts:    6,
		Backoff:        5 * time.Millisecond,
		MaxBackoff:     50 * time.Millisecond,
		MaxRateWait:    3 * time.Second,
		Poll:           10 * time.Millisecond,
		Logf:           lb.logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A real file stands for the binaries: what matters here is that its
	// bytes arrive intact and executable. (The binaries themselves are
	// uploaded in cmd/dosvob-provision's tests.)
	bin := filepath.Join(t.TempDir(), "dosvob-hash")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("DOSVOB_TEST_LOG") != "" {
			t.Logf("log:\n%s", lb.String())
		}
		noToken(t, lb.String())
	})
	return &env{t: t, emu: e, api: api, log: lb, bin: bin, root: t.TempDir()}
}

func (v *env) store() *Store {
	s, err := OpenStore(v.root)
	if err != nil {
		v.t.Fatal(err)
	}
	return s
}

func (v *env) provisioner(mod func(p *Provisioner)) *Provisioner {
	p := &Provisioner{
		API:        v.api,
		Store:      v.store(),
		Logf:       v.log.logf,
		Image:      "ubuntu-24-04-x64",
		SSHWait:    20 * time.Second,
		ActionWait: 3 * time.Second,
		DeviceWait: 5 * time.Second,
		HashBinary: v.bin,
	}
	if mod != nil {
		mod(p)
	}
	return p
}

func (v *env) teardownAll(ctx context.Context) error {
	return v.api.Teardown(ctx, Scope{}, TeardownOptions{DetachWait: 3 * time.Second, ActionWait: 3 * time.Second, Logf: v.log.logf})
}

// userView is the part of the emulator's state that must survive every
// teardown unchanged: everything, except that the shared tag
// "dosvob-ephemeral" may remain once dosvob has used it.
func userView(s doemu.State) doemu.State {
	var tags []string
	for _, tg := range s.Tags {
		if !strings.EqualFold(tg, Tag) {
			tags = append(tags, tg)
		}
	}
	s.Tags = tags
	return s
}

func assertUserStateUnchanged(t *testing.T, before, after doemu.State) {
	t.Helper()
	b, a := userView(before), userView(after)
	if !reflect.DeepEqual(b, a) {
		t.Fatalf("account differs from the user's own resources after teardown:\nbefore: %+v\nafter:  %+v", b, a)
	}
}

// userAccount is an account with the user's volumes in two regions and
// resources that merely look like dosvob's.
func userAccount(fra, ams int) *doemu.Account {
	a := &doemu.Account{}
	for i := 0; i < fra; i++ {
		a.Volumes = append(a.Volumes, doemu.SeedVolume{Name: fmt.Sprintf("data-%02d", i), Region: "fra1", SizeGigabytes: 1,
			Content: &doemu.Content{Seed: uint64(i + 1), Bytes: 64 << 10, Offset: int64(i) << 20}})
	}
	for i := 0; i < ams; i++ {
		a.Volumes = append(a.Volumes, doemu.SeedVolume{Name: fmt.Sprintf("web-%d", i), Region: "ams3", SizeGigabytes: 2, Tags: []string{"prod"},
			Content: &doemu.Content{Pattern: "text", Text: fmt.Sprintf("web volume %d ", i), Bytes: 8 << 10}})
	}
	// Look-alikes: the user's, never dosvob's.
	a.Volumes = append(a.Volumes,
		doemu.SeedVolume{Name: "dosvob-ephemeral-data", Region: "nyc1", SizeGigabytes: 1},
		doemu.SeedVolume{Name: "tagged-only", Region: "nyc1", SizeGigabytes: 1, Tags: []string{"dosvob-ephemeral"}},
	)
	a.Snapshots = []doemu.SeedSnapshot{
		{Name: "dosvob-ephemeral-keepme", Volume: "dosvob-ephemeral-data", Region: "nyc1"},
		{Name: "nightly", Volume: "tagged-only", Region: "nyc1", Tags: []string{"dosvob-ephemeral"}},
	}
	a.Droplets = []doemu.SeedDroplet{
		{Name: "web", Region: "nyc1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64", Tags: []string{"dosvob-ephemeral"}},
		{Name: "dosvob-ephemeral-db", Region: "nyc1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64", Tags: []string{"prod"}},
	}
	return a
}

// sshClient returns the path of the real OpenSSH client.
func sshClient(t *testing.T) string {
	t.Helper()
	testenv.RequireCommand(t, "ssh")
	p, _ := testenv.LookPath("ssh")
	return p
}
