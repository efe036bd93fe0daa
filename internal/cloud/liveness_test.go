package cloud

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"
	"golang.org/x/sys/unix"

	"github.com/dosvob/dosvob/internal/doemu"
	"github.com/dosvob/dosvob/internal/sshx"
)

// makeRunResources creates what a run leaves in the account: its key and a
// volume copy, with both marks and the run's tag.
func makeRunResources(t *testing.T, v *env, runID string) {
	t.Helper()
	ctx := context.Background()
	k, err := sshx.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.api.Godo().Keys.Create(ctx, &godo.KeyCreateRequest{Name: KeyName(runID), PublicKey: k.AuthorizedKey()}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.api.CreateVolume(ctx, volumeCreate{Name: CopyName(runID, 0), Region: "fra1", SizeGigaBytes: 1, Tags: Tags(runID)}); err != nil {
		t.Fatal(err)
	}
}

// saveRun writes a local run state with the given owner and status.
func saveRun(t *testing.T, s *Store, runID, status string, owner *OwnerState) {
	t.Helper()
	if err := s.Create(runID); err != nil {
		t.Fatal(err)
	}
	st := &State{RunID: runID, Mode: ModeBackup, Status: status, Owner: owner, Key: KeyState{Name: KeyName(runID)}}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
}

// runsLeft lists the runs whose resources are in the account.
func runsLeft(t *testing.T, v *env) []string {
	t.Helper()
	inv, err := v.api.Discover(context.Background(), Scope{})
	if err != nil {
		t.Fatal(err)
	}
	return inv.RunIDs()
}

// A provision with --cleanup-stale tears down only the runs that are
// certainly not alive, each by its run id: a run whose owner holds its
// lock, a young run of another machine, a young run that dosvob-provision
// alone made, and a run whose owner cannot be asked are all left alone,
// while a run whose owner died, an old run of another machine, and an
// earlier run of this very owner are cleaned up. Without --cleanup-stale
// the stale ones, and only they, make it refuse.
func TestCleanupOnlyStaleRuns(t *testing.T) {
	v := newEnv(t, envOpts{account: userAccount(1, 0)})
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	id := func(ago time.Duration, suffix string) string {
		return now.Add(-ago).Format("20060102-150405") + "-" + suffix
	}
	var (
		alive       = id(time.Hour, "aaaaaa") // local; its owner holds its lock
		ownerDied   = id(time.Hour, "bbbbbb") // local; its owner's lock is free
		foreignNew  = id(time.Hour, "cccccc") // another machine's, an hour old
		foreignOld  = id(72*time.Hour, "dddddd")
		madeByHand  = id(time.Hour, "eeeeee") // dosvob-provision alone, finished
		sameOwner   = id(time.Hour, "ffffff") // the caller's previous run
		unreachable = id(time.Hour, "abcdef") // its owner's lock file is not here
	)
	store := v.store()
	locks := t.TempDir()
	lockAt := func(name string) string {
		p := filepath.Join(locks, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Another owner, holding its lock (another open file: flock tells
	// them apart within one process as between processes).
	held, err := os.Open(lockAt("held"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	mine, err := os.OpenFile(lockAt("mine"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()

	saveRun(t, store, alive, "ready", &OwnerState{Lock: held.Name(), Caller: true})
	saveRun(t, store, ownerDied, "ready", &OwnerState{Lock: lockAt("free"), Caller: true})
	saveRun(t, store, madeByHand, "ready", &OwnerState{Lock: lockAt("own")})
	saveRun(t, store, sameOwner, "ready", &OwnerState{Lock: mine.Name(), Caller: true})
	saveRun(t, store, unreachable, "provisioning", &OwnerState{Lock: filepath.Join(locks, "gone"), Caller: true})
	for _, r := range []string{alive, ownerDied, foreignNew, foreignOld, madeByHand, sameOwner, unreachable} {
		makeRunResources(t, v, r)
	}
	wantStale := []string{foreignOld, ownerDied, sameOwner}
	wantLive := []string{alive, foreignNew, madeByHand, unreachable}
	slices.Sort(wantStale)
	slices.Sort(wantLive)
	before := v.emu.State()

	// Without --cleanup-stale: a refusal that names the stale runs only.
	p := v.provisioner(func(p *Provisioner) { p.OwnerLock = mine; p.Filter = Filter{Include: []string{"data-*"}} })
	_, err = p.begin(ctx)
	var se *StaleError
	if !errors.As(err, &se) {
		t.Fatalf("begin without cleanup: %v, want a StaleError", err)
	}
	if got := se.Runs(); !slices.Equal(got, wantStale) {
		t.Fatalf("stale runs %v, want %v", got, wantStale)
	}
	if !reflectEqualState(before, v.emu.State()) {
		t.Fatal("a refusal changed the account")
	}

	// With it: the stale runs go, the others stay, and the new run is
	// started, owned by the caller's lock.
	runIDFile := filepath.Join(t.TempDir(), "run-id")
	p = v.provisioner(func(p *Provisioner) {
		p.OwnerLock, p.CleanupStale, p.RunIDFile = mine, true, runIDFile
		p.Filter = Filter{Include: []string{"data-*"}}
	})
	if _, err := p.begin(ctx); err != nil {
		t.Fatal(err)
	}
	if got := runsLeft(t, v); !slices.Equal(got, wantLive) {
		t.Errorf("runs left in the account %v, want %v", got, wantLive)
	}
	local, _ := store.Runs()
	newRun := p.st.RunID
	if want := []string{alive, unreachable, madeByHand, newRun}; !slices.Equal(local, want) {
		t.Errorf("local runs %v, want %v", local, want)
	}
	// The runs cleaned up, local or not, stay known: a later
	// dosvob-teardown --run of one of them is a success.
	for _, r := range append(wantStale, foreignNew) {
		if k, err := store.Known(r); err != nil || k != slices.Contains(wantStale, r) {
			t.Errorf("run %s known %v (%v) after the cleanup", r, k, err)
		}
	}
	b, err := os.ReadFile(runIDFile)
	if err != nil || strings.TrimSpace(string(b)) != newRun {
		t.Errorf("run id file: %q %v, want %s", b, err, newRun)
	}
	st, err := store.Load(newRun)
	if err != nil || st.Owner == nil || st.Owner.Lock != mine.Name() || !st.Owner.Caller {
		t.Fatalf("the new run's owner: %+v %v", st, err)
	}
	for _, want := range []string{"leaving run " + alive + ": alive", "leaving run " + foreignNew + ": no state of it here",
		"cleaning up run " + foreignOld, "within the stale-after bound"} {
		if !strings.Contains(v.log.String(), want) {
			t.Errorf("the log lacks %q", want)
		}
	}

	// Seen from another owner, the new run is alive while mine is held
	// and stale once it is let go, as when its script is killed.
	other := v.provisioner(nil)
	sv, err := other.Survey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := findRun(sv, newRun); r == nil || r.Stale {
		t.Fatalf("the new run, its owner alive: %+v", r)
	}
	mine.Close()
	if sv, err = other.Survey(ctx); err != nil {
		t.Fatal(err)
	}
	if r := findRun(sv, newRun); r == nil || !r.Stale {
		t.Fatalf("the new run, its owner gone: %+v", r)
	}
	if s := v.emu.State(); !slices.ContainsFunc(s.Volumes, func(x doemu.Volume) bool { return x.Name == "data-00" }) {
		t.Fatal("the user's volume is gone")
	}
}

func findRun(sv *Survey, id string) *RunView {
	for i := range sv.Runs {
		if sv.Runs[i].ID == id {
			return &sv.Runs[i]
		}
	}
	return nil
}

func reflectEqualState(a, b doemu.State) bool { return jsonEqualNoT(a, b) }

// A run's owner lock that is removed and made again at its path (as a
// cleaner of /tmp or /run may do) is another file: the run cannot be
// checked by it, so a new owner taking the new file does not count the run
// as its own earlier one, nor as one whose owner is gone. It is left alone
// until the stale-after bound, while its owner still holds the old file.
func TestRecreatedOwnerLock(t *testing.T) {
	v := newEnv(t, envOpts{account: userAccount(1, 0)})
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "b.lock")
	openLock := func() *os.File {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	sel := Filter{Include: []string{"data-*"}}

	// Run A, owned by the first file at path, is going on.
	lockA := openLock()
	a := v.provisioner(func(p *Provisioner) { p.OwnerLock, p.Filter = lockA, sel })
	if _, err := a.begin(ctx); err != nil {
		t.Fatal(err)
	}
	runA := a.st.RunID
	makeRunResources(t, v, runA)
	st, err := v.store().Load(runA)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := lockA.Stat(); st.Owner == nil || st.Owner.Inode == 0 || !st.Owner.isLock(fi) {
		t.Fatalf("run A's owner %+v does not identify its lock", st.Owner)
	}

	// The lock file goes and comes back: another file at the same path.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	lockB := openLock()

	// Seen by an owner-less survey, the new file is free: A cannot be
	// checked, and it is young.
	sv, err := v.provisioner(nil).Survey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := findRun(sv, runA); r == nil || r.Stale || !strings.Contains(r.Why, "cannot be checked here") || !strings.Contains(r.Why, "within the stale-after bound") {
		t.Fatalf("run A after its lock was made again: %+v", r)
	}

	// Run B takes the new file and cleans up stale runs: A is not among
	// them.
	b := v.provisioner(func(p *Provisioner) { p.OwnerLock, p.CleanupStale, p.Filter = lockB, true, sel })
	if _, err := b.begin(ctx); err != nil {
		t.Fatal(err)
	}
	if got := runsLeft(t, v); !slices.Contains(got, runA) {
		t.Fatalf("run B tore down run A, whose owner is alive: runs left %v", got)
	}
	if _, err := v.store().Load(runA); err != nil {
		t.Fatalf("run A's state is gone: %v", err)
	}
	if !strings.Contains(v.log.String(), "leaving run "+runA+": its owner's lock cannot be checked here") {
		t.Errorf("the log does not say why run A was left:\n%s", v.log.String())
	}

	// Past the bound, A is stale, though B (which holds path) has not
	// moved on from it.
	late := v.provisioner(func(p *Provisioner) {
		p.OwnerLock = lockB
		p.Now = func() time.Time { return time.Now().Add(DefaultStaleAfter + time.Hour) }
	})
	if sv, err = late.Survey(ctx); err != nil {
		t.Fatal(err)
	}
	if r := findRun(sv, runA); r == nil || !r.Stale || !strings.Contains(r.Why, "more than the stale-after bound") {
		t.Fatalf("run A past the stale-after bound: %+v", r)
	}
	if r := findRun(sv, b.st.RunID); r == nil || !r.Stale || !strings.Contains(r.Why, "moved on") {
		t.Fatalf("run B, seen from its own owner: %+v", r)
	}
}

// A failed run kept for inspection (--keep-on-failure) is left alone until
// the stale-after bound, though its owner is gone: whether dosvob-provision
// alone made it, or an owner that has moved on to a new run. A failed run
// that was not kept (its teardown failed) is cleaned up at once.
func TestKeptFailedRunWaits(t *testing.T) {
	v := newEnv(t, envOpts{account: userAccount(1, 0)})
	ctx := context.Background()
	sel := Filter{Include: []string{"data-*"}}
	failing := Hooks{PreSnapshot: "exit 3"}
	mine, err := os.OpenFile(filepath.Join(t.TempDir(), "mine.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()

	var kept []string
	for _, lock := range []*os.File{nil, mine} {
		p := v.provisioner(func(p *Provisioner) { p.Filter, p.Hooks, p.KeepOnFailure, p.OwnerLock = sel, failing, true, lock })
		_, err := p.Provision(ctx)
		var re *RunError
		if !errors.As(err, &re) || re.TornDown {
			t.Fatalf("a failing run with --keep-on-failure: %v", err)
		}
		st, err := v.store().Load(re.RunID)
		if err != nil || st.Status != "failed" || !st.KeptOnFailure {
			t.Fatalf("the kept run's state: %+v %v", st, err)
		}
		kept = append(kept, re.RunID)
	}
	slices.Sort(kept) // runsLeft is by id, and a run id ends in random hex
	if got := runsLeft(t, v); !slices.Equal(got, kept) {
		t.Fatalf("runs in the account %v, want the kept %v", got, kept)
	}
	// A failed run whose teardown failed: its state is left, not kept.
	notKept := time.Now().UTC().Add(-time.Minute).Format("20060102-150405") + "-fa11ed"
	free := filepath.Join(t.TempDir(), "lock")
	if err := os.WriteFile(free, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	saveRun(t, v.store(), notKept, "failed", &OwnerState{Lock: free})
	makeRunResources(t, v, notKept)

	next := v.provisioner(func(p *Provisioner) { p.Filter, p.CleanupStale, p.OwnerLock = sel, true, mine })
	if _, err := next.begin(ctx); err != nil {
		t.Fatal(err)
	}
	left := runsLeft(t, v)
	for _, id := range kept {
		if !slices.Contains(left, id) {
			t.Errorf("the kept failed run %s was torn down at once: runs left %v", id, left)
		}
	}
	if slices.Contains(left, notKept) {
		t.Errorf("the failed run %s that was not kept was left: runs left %v", notKept, left)
	}
	if !strings.Contains(v.log.String(), "kept for inspection (--keep-on-failure)") {
		t.Errorf("the log does not say why the kept runs were left")
	}

	late := v.provisioner(func(p *Provisioner) {
		p.OwnerLock = mine
		p.Now = func() time.Time { return time.Now().Add(DefaultStaleAfter + time.Hour) }
	})
	sv, err := late.Survey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range kept {
		if r := findRun(sv, id); r == nil || !r.Stale || !strings.Contains(r.Why, "more than the stale-after bound") {
			t.Errorf("the kept run past the stale-after bound: %+v", r)
		}
	}
}
