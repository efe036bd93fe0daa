package cloud

import (
	"context"
	"errors"
	"github.com/dosvob/dosvob/internal/cliutil"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"
	"github.com/urfave/cli/v2"

	"github.com/dosvob/dosvob/internal/doemu"
)

// DigitalOcean's rules: volume names ^[a-z][a-z0-9-]{0,63}$; droplet names
// are hostnames (letters, digits, dots, dashes; at most 253, labels 63).
var (
	doVolumeName  = regexp.MustCompile(`^[a-z][a-z0-9-]{0,63}$`)
	doDropletName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	doTagName     = regexp.MustCompile(`^[a-zA-Z0-9_\-:]{1,255}$`)
)

func TestNames(t *testing.T) {
	id := NewRunID(time.Date(2026, 1, 2, 15, 4, 5, 0, time.FixedZone("x", 3600)))
	if !ValidRunID(id) || id[:15] != "20260102-140405" {
		t.Fatalf("run id %q", id)
	}
	now := time.Now()
	if a, b := NewRunID(now), NewRunID(now); a == b {
		t.Error("two run ids in the same second are equal")
	}
	for _, n := range []string{CopyName(id, 0), CopyName(id, 9999)} {
		if !doVolumeName.MatchString(n) {
			t.Errorf("volume name %q breaks DigitalOcean's rule", n)
		}
	}
	for _, r := range []string{"fra1", "nyc3", "sgp1"} {
		if n := DropletName(id, r, 12); !doDropletName.MatchString(n) {
			t.Errorf("droplet name %q is not a hostname", n)
		}
	}
	for _, tg := range Tags(id) {
		if !doTagName.MatchString(tg) {
			t.Errorf("tag %q invalid", tg)
		}
	}
	if !IsOurKey(KeyName(id)) || KeyRunID(KeyName(id)) != id {
		t.Errorf("key name %q", KeyName(id))
	}
	if RunOf(Tags(id)) != id || RunOf([]string{"DOSVOB-RUN-" + id}) != id || RunOf([]string{"dosvob-run-x"}) != "" {
		t.Error("RunOf")
	}
}

// Both marks, or it is not ours.
func TestMarks(t *testing.T) {
	for _, c := range []struct {
		name string
		tags []string
		want bool
	}{
		{"dosvob-ephemeral-20260101-000000-abcdef-0", []string{"dosvob-ephemeral"}, true},
		{"dosvob-ephemeral-x", []string{"prod", "Dosvob-Ephemeral"}, true},
		{"dosvob-ephemeral-data", nil, false},
		{"dosvob-ephemeral-data", []string{"dosvob-ephemeral-x"}, false},
		{"data", []string{"dosvob-ephemeral"}, false},
		{"dosvob-ephemeral", []string{"dosvob-ephemeral"}, false},
		{"Dosvob-ephemeral-x", []string{"dosvob-ephemeral"}, false},
		{"xdosvob-ephemeral-x", []string{"dosvob-ephemeral"}, false},
	} {
		if got := IsOurs(c.name, c.tags); got != c.want {
			t.Errorf("IsOurs(%q, %v) = %v", c.name, c.tags, got)
		}
	}
	for name, want := range map[string]bool{
		"dosvob-ephemeral-20260101-000000-abcdef":     true,
		"dosvob-ephemeral-20260101-000000-ABCDEF":     false,
		"dosvob-ephemeral-20260101-000000-abcdef-old": false,
		"dosvob-ephemeral-laptop":                     false,
		"my-dosvob-ephemeral-20260101-000000-abcdef":  false,
	} {
		if IsOurKey(name) != want {
			t.Errorf("IsOurKey(%q) != %v", name, want)
		}
	}
}

func TestFilter(t *testing.T) {
	vol := func(name, region string, tags ...string) godo.Volume {
		return godo.Volume{Name: name, Region: &godo.Region{Slug: region}, Tags: tags}
	}
	f := Filter{Regions: []string{"fra1"}, Include: []string{"db-*", "pg*"}, Exclude: []string{"*-scratch"}, ExcludeTags: []string{"nobackup"}}
	for v, want := range map[*godo.Volume]bool{
		ptr(vol("db-1", "fra1")):                     true,
		ptr(vol("pgdata", "fra1", "PROD")):           true,
		ptr(vol("db-1", "ams3")):                     false,
		ptr(vol("web", "fra1")):                      false,
		ptr(vol("db-scratch", "fra1")):               false,
		ptr(vol("db-2", "fra1", "NoBackup")):         false,
		ptr(vol("db-3", "fra1", "dosvob-ephemeral")): true,
	} {
		if f.Selects(*v) != want {
			t.Errorf("%s %v: want %v", v.Name, v.Tags, want)
		}
	}
	if (Filter{}).Selects(vol("dosvob-ephemeral-20260101-000000-abcdef-0", "fra1", "dosvob-ephemeral")) {
		t.Error("a dosvob copy was selected")
	}
	if !(Filter{IncludeTags: []string{"backup"}}).Selects(vol("x", "nyc1", "Backup")) {
		t.Error("include_tags is not case-insensitive")
	}
}

func ptr[T any](v T) *T { return &v }

func TestChooseSize(t *testing.T) {
	sizes := []godo.Size{
		{Slug: "big", PriceHourly: 0.1, Available: true, Regions: []string{"fra1", "ams3"}},
		{Slug: "tiny", PriceHourly: 0.005, Available: true, Regions: []string{"fra1"}},
		{Slug: "gone", PriceHourly: 0.001, Available: false, Regions: []string{"fra1", "ams3"}},
	}
	if s, _ := ChooseSize(sizes, "fra1", ""); s.Slug != "tiny" {
		t.Errorf("fra1: %s", s.Slug)
	}
	if s, _ := ChooseSize(sizes, "ams3", ""); s.Slug != "big" {
		t.Errorf("ams3: %s", s.Slug)
	}
	if _, err := ChooseSize(sizes, "ams3", "tiny"); err == nil {
		t.Error("a size the region does not offer was accepted")
	}
	if _, err := ChooseSize(sizes, "sgp1", ""); err == nil {
		t.Error("a region without sizes was accepted")
	}
}

func TestStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, _ := OpenStore(dir)
	if ids, err := s.Runs(); err != nil || len(ids) != 0 {
		t.Fatalf("empty store: %v %v", ids, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatal("opening the store created it")
	}
	if err := s.Lock(); err != nil {
		t.Fatal(err)
	}
	s2, _ := OpenStore(dir)
	if err := s2.Lock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v", err)
	}
	s.Unlock()
	if err := s2.Lock(); err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	s2.Unlock()
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v", st.Mode())
	}

	id := NewRunID(time.Now())
	if err := s.Create(id); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(id); err == nil {
		t.Error("a run was created twice")
	}
	if err := s.Create("../evil"); err == nil {
		t.Error("a bad run id was accepted")
	}
	saves := 0
	s.AfterSave = func(n int) { saves = n }
	st := &State{RunID: id, Mode: ModeBackup, Status: "provisioning", Volumes: []VolumeState{{RunVolume: RunVolume{CopyName: "c", SnapshotID: "s"}, SnapshotDeleted: true}}}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(st); err != nil || saves != 2 {
		t.Fatalf("saves %d %v", saves, err)
	}
	got, err := s.Load(id)
	if err != nil || got.Status != "provisioning" || got.Volumes[0].CopyName != "c" {
		t.Fatalf("load: %+v %v", got, err)
	}
	if r := got.Run(s); r.Volumes[0].SnapshotID != "" || r.PrivateKeyPath != s.KeyPath(id) {
		t.Errorf("run view: %+v", r)
	}
	if fi, _ := os.Stat(filepath.Join(s.RunDir(id), "state.json")); fi.Mode().Perm() != 0o600 {
		t.Errorf("state.json mode %v", fi.Mode())
	}
	os.WriteFile(filepath.Join(s.RunDir(id), "state.json"), []byte(`{"version": 99, "run_id": "`+id+`"}`), 0o600)
	if _, err := s.Load(id); err == nil {
		t.Error("an unknown state version was accepted")
	}
	if ids, _ := s.Runs(); len(ids) != 1 || ids[0] != id {
		t.Errorf("runs %v", ids)
	}
	if err := s.Remove(id); err != nil {
		t.Fatal(err)
	}
	if ids, _ := s.Runs(); len(ids) != 0 {
		t.Errorf("runs after remove %v", ids)
	}
}

func TestRateWait(t *testing.T) {
	mk := func(h map[string]string) *godo.ErrorResponse {
		r := &http.Response{StatusCode: 429, Header: http.Header{}}
		for k, v := range h {
			r.Header.Set(k, v)
		}
		return &godo.ErrorResponse{Response: r}
	}
	if d, ok := rateWait(mk(map[string]string{"retry-after": "7"})); !ok || d != 7*time.Second {
		t.Errorf("retry-after: %v %v", d, ok)
	}
	reset := time.Now().Add(30 * time.Second).Unix()
	d, ok := rateWait(mk(map[string]string{"ratelimit-remaining": "0", "ratelimit-reset": strconv.FormatInt(reset, 10)}))
	if !ok || d < 25*time.Second || d > 31*time.Second {
		t.Errorf("ratelimit-reset: %v %v", d, ok)
	}
	// A reset an hour away with requests remaining is not a reason to wait.
	if _, ok := rateWait(mk(map[string]string{"ratelimit-remaining": "10", "ratelimit-reset": strconv.FormatInt(reset+3600, 10)})); ok {
		t.Error("waited for a reset with requests remaining")
	}
	if _, ok := rateWait(mk(nil)); ok {
		t.Error("no headers: no wait")
	}
}

func TestScrub(t *testing.T) {
	err := Scrub(errors.New("GET https://x/v2?t=sekret-123: bad sekret-123"), "sekret-123")
	if err.Error() != "GET https://x/v2?t=[redacted]: bad [redacted]" {
		t.Errorf("scrubbed: %q", err)
	}
	if ce := ExitError(errors.New("token sekret-123 leaked"), "sekret-123"); ce.Error() != "token [redacted] leaked" {
		t.Errorf("ExitError does not scrub: %q", ce)
	}
}

// An account past DigitalOcean's hourly request limit answers 429 with no
// retry-after, only ratelimit-reset (when the oldest request expires);
// calls wait for it and go on instead of failing.
func TestRateLimitedAccount(t *testing.T) {
	lb := &logBuf{t: t}
	e, err := doemu.New(doemu.Options{Token: testToken, ActionDelay: 10 * time.Millisecond, Account: userAccount(3, 2),
		DataDir: t.TempDir(), RequestLimit: 15, RateWindow: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	api, err := NewAPI(APIOptions{BaseURL: e.URL(), Token: testToken, Backoff: 5 * time.Millisecond, MaxAttempts: 4, Poll: 10 * time.Millisecond, Logf: lb.logf})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < 6; i++ { // 6 x (droplets, volumes, snapshots, keys) = 24 requests
		inv, err := api.Discover(context.Background(), Scope{})
		if err != nil {
			t.Fatalf("round %d: %v\n%s", i, err, lb.String())
		}
		if !inv.Empty() {
			t.Fatal("found resources in a fresh account")
		}
	}
	if !strings.Contains(lb.String(), "429") || !strings.Contains(lb.String(), "retrying in") {
		t.Fatalf("the limit was never hit:\n%s", lb.String())
	}
	if time.Since(start) < 500*time.Millisecond {
		t.Errorf("did not wait for the window (%v)", time.Since(start))
	}
	noToken(t, lb.String())
}

// The dosvob-teardown a hint names finds what the failed command used: its
// --config, --state-dir and --api-url, quoted for a shell where needed.
func TestTeardownHintFlags(t *testing.T) {
	flags := TeardownFlags("/etc/dosvob/my conf.json", "", "http://127.0.0.1:8080/")
	err := ExitError(&RunError{RunID: "20260101-000000-abcdef", Err: errors.New("boom")}, "", flags...)
	want := "delete what the run left with: dosvob-teardown --config '/etc/dosvob/my conf.json' --api-url http://127.0.0.1:8080/ --run 20260101-000000-abcdef"
	if got := cliutil.HintOf(err); got != want {
		t.Errorf("hint %q\nwant %q", got, want)
	}
	if got := TeardownCommand(TeardownFlags("", "it's", "")); got != `dosvob-teardown --state-dir 'it'\''s'` {
		t.Errorf("quoting: %s", got)
	}
}

// The flags of the dosvob-teardown in a hint are those given on the
// command line of dosvob-provision or dosvob-teardown, not those that
// came from the environment (which the next command sees too).
func TestTeardownFlagsOf(t *testing.T) {
	t.Setenv("DOSVOB_STATE_DIR", "/var/lib/from-env")
	t.Setenv("DOSVOB_API_URL", "")
	t.Setenv("DOSVOB_CONFIG", "")
	var got []string
	app := &cli.App{
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"DOSVOB_CONFIG"}},
			&cli.StringFlag{Name: "state-dir", EnvVars: []string{"DOSVOB_STATE_DIR"}},
			&cli.StringFlag{Name: "api-url", EnvVars: []string{"DOSVOB_API_URL"}},
		},
		Action: func(c *cli.Context) error { got = TeardownFlagsOf(c); return nil },
	}
	if err := app.Run([]string{"x", "-c", "my conf.json", "--api-url", "http://127.0.0.1:9/"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"--config", "my conf.json", "--api-url", "http://127.0.0.1:9/"}
	if !slices.Equal(got, want) {
		t.Errorf("flags %q, want %q", got, want)
	}
}

// A run torn down from the state directory stays known there after its
// directory is gone, recorded once; an id no run had is not known, and a
// last line that a crash cut short costs no later record.
func TestStoreKnown(t *testing.T) {
	s, _ := OpenStore(filepath.Join(t.TempDir(), "state"))
	a, b, c := "20260101-000000-aaaaaa", "20260102-000000-bbbbbb", "20260103-000000-cccccc"
	known := func(id string) bool {
		t.Helper()
		k, err := s.Known(id)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if known(a) {
		t.Fatal("an empty store knows a run")
	}
	if err := s.Create(a); err != nil {
		t.Fatal(err)
	}
	if !known(a) {
		t.Fatal("a run with a directory is not known")
	}
	if err := s.Remove(a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.RunDir(a)); !os.IsNotExist(err) {
		t.Fatalf("run directory left: %v", err)
	}
	if !known(a) || known(b) {
		t.Fatalf("after removing %s: known %v, %s known %v", a, known(a), b, known(b))
	}
	// A crash cut the next line short.
	f, err := os.OpenFile(filepath.Join(s.Dir, "torn-down"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(b[:10])
	f.Close()
	if err := s.MarkTornDown(a, b, c, c); err != nil {
		t.Fatal(err)
	}
	if !known(b) || !known(c) {
		t.Fatal("runs recorded after a cut line are not known")
	}
	data, _ := os.ReadFile(filepath.Join(s.Dir, "torn-down"))
	if want := a + "\n" + b[:10] + "\n" + b + "\n" + c + "\n"; string(data) != want {
		t.Errorf("torn-down:\n%q\nwant\n%q", data, want)
	}
	if err := s.MarkTornDown("../etc"); err == nil {
		t.Error("a bad run id was recorded")
	}
}

// What a teardown left is reported one resource a line, whether the
// teardown was dosvob-teardown's (exit 8; the hint names the command that
// finishes it) or a failed provision's own (the run's error keeps its
// exit code and hint).
func TestIncompleteDetails(t *testing.T) {
	const run = "20260101-000000-abcdef"
	left := []Resource{
		{Kind: "volume", ID: "v-1", Name: CopyName(run, 0), Region: "fra1", Note: "delete failed: 500 Server Error"},
		{Kind: "ssh_key", ID: "7", Name: KeyName(run), Note: "delete failed: 503 " + testToken},
	}
	lines := []string{
		"left: volume " + CopyName(run, 0) + " (v-1) in fra1: delete failed: 500 Server Error",
		"left: ssh_key " + KeyName(run) + " (7): delete failed: 503 [redacted]",
	}
	for _, c := range []struct {
		err     error
		code    int
		msg     string
		details []string
		hint    string
	}{
		{&IncompleteError{RunID: run, Left: left}, 8, "teardown incomplete: 2 resources of run " + run + " left", lines,
			"run dosvob-teardown --state-dir /s --run " + run + " until it exits 0; what is left costs money"},
		{&IncompleteError{Left: left[:1]}, 8, "teardown incomplete: 1 dosvob resource left", lines[:1],
			"run dosvob-teardown --state-dir /s --all until it exits 0; what is left costs money"},
		{&RunError{RunID: run, Err: &APIError{Op: "create droplet", Status: 500, Err: errors.New("boom")}, Teardown: &IncompleteError{RunID: run, Left: left}}, 7,
			"run " + run + ": create droplet: boom; tearing it down failed too: teardown incomplete: 2 resources of run " + run + " left", lines,
			"delete what the run left with: dosvob-teardown --state-dir /s --run " + run},
	} {
		err := ExitError(c.err, testToken, "--state-dir", "/s")
		if got := cliutil.DetailsOf(err); !slices.Equal(got, c.details) {
			t.Errorf("%v: details %q\nwant %q", c.err, got, c.details)
		}
		if err.Error() != c.msg || cliutil.HintOf(err) != c.hint || cliutil.CodeOf(err) != c.code {
			t.Errorf("got %q, hint %q, exit %d\nwant %q, hint %q, exit %d", err, cliutil.HintOf(err), cliutil.CodeOf(err), c.msg, c.hint, c.code)
		}
	}
}
