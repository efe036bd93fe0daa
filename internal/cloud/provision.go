package cloud

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/godo"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/dosvob/dosvob/internal/sshx"
)

// Provisioner makes the cloud side of one run. See Provision.
type Provisioner struct {
	API   *API
	Store *Store
	Logf  func(format string, args ...any)

	Filter      Filter
	DropletSize string // "" = the cheapest size in each region
	Image       string
	SSHPort     int
	SSHUser     string
	SSHWait     time.Duration // bound for a droplet's SSH to answer
	ActionWait  time.Duration // bound for one action or a droplet to become active
	DeviceWait  time.Duration // bound for an attached volume's device to appear (default 2m)
	HashBinary  string        // local static linux/amd64 dosvob-hash
	PatchBinary string        // local dosvob-patch; required for restores
	Hooks       Hooks
	HookStderr  *os.File

	// CleanupStale tears down the resources of stale runs (see Survey)
	// first instead of refusing to start.
	CleanupStale bool
	// StaleAfter is the age from which a run whose liveness cannot be
	// checked here counts as stale (default DefaultStaleAfter).
	StaleAfter time.Duration
	// OwnerLock, if set, is the caller's lock file, open: the run counts as
	// alive for as long as it is locked. Provision locks it before the run
	// exists (a lock the caller already holds on the same open file stays
	// as it is) and records its path. Without it, the run's own lock file
	// keeps the run alive while Provision runs.
	OwnerLock *os.File
	// RunIDFile, if set, receives the run id as soon as the run exists,
	// before anything is created in the account, so that a caller can tear
	// the run down when Provision fails or is interrupted.
	RunIDFile string
	// LockWait bounds the wait for the state directory's lock (default
	// DefaultLockWait).
	LockWait time.Duration
	// KeepOnFailure leaves a failed run's resources in place (for
	// debugging) instead of tearing them down at once. Such a run is
	// not stale before StaleAfter, whatever its owner does.
	KeepOnFailure bool
	// Restore, when set, makes a restore run (see RestoreSpec).
	Restore *RestoreSpec

	Now func() time.Time

	mu      sync.Mutex // guards st while goroutines update it
	st      *State
	runLock *os.File             // the run's own lock file, when no OwnerLock
	hosts   map[string]*sshx.Key // droplet name -> host key
	key     *sshx.Key
}

// RestoreSpec is the new volume a restore fills. It is kept: never named
// or tagged as dosvob's, never deleted by teardown.
type RestoreSpec struct {
	Name    string
	Region  string
	SizeGiB int64
}

// DefaultStaleAfter is the age from which a run that cannot be proven dead
// here (another machine's, or one of this state directory whose owner
// cannot be asked) counts as stale: longer than any real run.
const DefaultStaleAfter = 48 * time.Hour

// DefaultLockWait bounds the wait for the state directory's lock.
const DefaultLockWait = 30 * time.Minute

// RunView is one run that Survey found, and what it concluded.
type RunView struct {
	ID    string
	Local bool // its state is in this state directory
	Stale bool // certainly not alive: its leftovers may be torn down
	Why   string
	State *State // its state, if it could be read
}

func (r RunView) String() string { return fmt.Sprintf("run %s: %s", r.ID, r.Why) }

// Survey is every run whose resources are in the account or whose state is
// in the state directory.
type Survey struct {
	Inventory *Inventory
	Runs      []RunView // by id
	// Orphans are dosvob resources that name no run (no run tag): only
	// dosvob-teardown --all deletes them.
	Orphans []Resource
}

// Stale returns the runs that are certainly not alive.
func (s *Survey) Stale() []RunView { return s.filter(true) }

// Live returns the runs that are alive, or cannot be proven dead yet.
func (s *Survey) Live() []RunView { return s.filter(false) }

func (s *Survey) filter(stale bool) []RunView {
	var out []RunView
	for _, r := range s.Runs {
		if r.Stale == stale {
			out = append(out, r)
		}
	}
	return out
}

// StaleError says that stale runs left resources or state.
type StaleError struct {
	Stale []RunView
}

func (e *StaleError) Error() string {
	var why []string
	for _, r := range e.Stale {
		why = append(why, r.String())
	}
	return fmt.Sprintf("earlier runs were interrupted and left resources or state (%s): %s",
		strings.Join(e.Runs(), ", "), strings.Join(why, "; "))
}

// Runs lists the stale runs' ids.
func (e *StaleError) Runs() []string {
	var ids []string
	for _, r := range e.Stale {
		ids = append(ids, r.ID)
	}
	return ids
}

// ErrRefused is wrapped by an error refusing to touch an existing resource.
var ErrRefused = errors.New("refused")

// ErrNothingSelected is returned when no volume matches the filters.
var ErrNothingSelected = errors.New("no volume matches the configured regions and filters")

// RunError is a provision that failed after it created its run. It says
// whether the run's resources were torn down.
type RunError struct {
	RunID    string
	Err      error
	TornDown bool  // everything the run made is gone
	Teardown error // why teardown failed, if it ran and failed
	Kept     []string
}

func (e *RunError) Error() string {
	msg := fmt.Sprintf("run %s: %v", e.RunID, e.Err)
	if e.TornDown {
		msg += "; everything this run created was deleted again"
	}
	if len(e.Kept) > 0 {
		msg += fmt.Sprintf("; the new volume %s is kept", strings.Join(e.Kept, ", "))
	}
	return msg
}

func (e *RunError) Unwrap() error { return e.Err }

func (p *Provisioner) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

func (p *Provisioner) defaults() {
	if p.SSHUser == "" {
		p.SSHUser = "root"
	}
	if p.SSHPort == 0 {
		p.SSHPort = 22
	}
	if p.SSHWait <= 0 {
		p.SSHWait = 5 * time.Minute
	}
	if p.ActionWait <= 0 {
		p.ActionWait = 10 * time.Minute
	}
	if p.DeviceWait <= 0 {
		p.DeviceWait = 2 * time.Minute
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.StaleAfter <= 0 {
		p.StaleAfter = DefaultStaleAfter
	}
	if p.LockWait <= 0 {
		p.LockWait = DefaultLockWait
	}
}

// Survey finds every run whose resources are in the account or whose state
// is in the state directory, and says which are stale: certainly not
// alive. A run of this state directory is alive while its owner holds the
// lock its state names (see OwnerState); it is stale once that lock is
// free, or is this Provisioner's own OwnerLock (one owner makes one run at
// a time). A run made by dosvob-provision alone, which finished, and a run
// whose liveness cannot be checked here (no state here: another machine or
// another state directory; no owner in its state; its lock file not
// reachable, or not the file its owner locked any more) count as stale only when older than StaleAfter, judged from
// the start time in the run id.
func (p *Provisioner) Survey(ctx context.Context) (*Survey, error) {
	p.defaults()
	inv, err := p.API.Discover(ctx, Scope{})
	if err != nil {
		return nil, err
	}
	var local []string
	if p.Store != nil {
		if local, err = p.Store.Runs(); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	sv := &Survey{Inventory: inv}
	ids := inv.RunIDs()
	for _, id := range local {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		r := RunView{ID: id, Local: slices.Contains(local, id)}
		known := false
		if r.Local {
			st, err := p.Store.Load(id)
			if err != nil {
				r.Why = fmt.Sprintf("its state cannot be read (%v)", err)
			} else {
				r.State = st
				r.Stale, known, r.Why = p.ownerGone(st)
			}
		} else {
			r.Why = "no state of it here (another machine's or another state directory's)"
		}
		if !known {
			r.Stale, r.Why = p.old(id, r.Why)
		}
		sv.Runs = append(sv.Runs, r)
	}
	for _, res := range inv.All() {
		if res.RunID == "" && !res.Kept {
			sv.Orphans = append(sv.Orphans, res)
		}
	}
	return sv, nil
}

// ownerGone says whether a local run's owner is gone, if that can be known
// here. The lock is judged by the file that the run's owner held: a file
// now at its path that is another one says nothing about the owner.
func (p *Provisioner) ownerGone(st *State) (gone, known bool, why string) {
	o := st.Owner
	if o == nil || o.Lock == "" {
		return false, false, "its state names no owner"
	}
	unchecked := func(cause any) (bool, bool, string) {
		return false, false, fmt.Sprintf("its owner's lock cannot be checked here (%v)", cause)
	}
	f, err := os.Open(o.Lock)
	if err != nil {
		return unchecked(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return unchecked(err)
	}
	if !o.isLock(fi) {
		return unchecked(o.Lock + " is not the file the run's owner locked: it was removed and made again")
	}
	sameOwner := false
	if p.OwnerLock != nil && o.Caller {
		mine, err := p.OwnerLock.Stat()
		sameOwner = err == nil && os.SameFile(mine, fi)
	}
	why = fmt.Sprintf("its owner is gone (the lock %s is free)", o.Lock)
	if sameOwner {
		why = fmt.Sprintf("its owner's lock %s is the one this provision was given: that owner has moved on to a new run", o.Lock)
	} else {
		held, err := lockHeld(f)
		switch {
		case err != nil:
			return unchecked(err)
		case held:
			return false, true, fmt.Sprintf("alive: its owner holds the lock %s", o.Lock)
		case !o.Caller && st.Status == "ready":
			return false, false, "dosvob-provision made it and finished, and nothing holds it"
		}
	}
	if st.Status == "failed" && st.KeptOnFailure {
		// Left for inspection: deleted later, by hand or once old.
		return false, false, "it failed and was kept for inspection (--keep-on-failure); " + why
	}
	return true, true, why
}

// old applies the age bound to a run whose liveness is unknown.
func (p *Provisioner) old(id, why string) (bool, string) {
	start, ok := RunTime(id)
	if !ok {
		return false, why + "; its age is unknown"
	}
	age := p.Now().Sub(start).Truncate(time.Second)
	if age > p.StaleAfter {
		return true, fmt.Sprintf("%s; started %v ago, more than the stale-after bound of %v", why, age, p.StaleAfter)
	}
	return false, fmt.Sprintf("%s; started %v ago, within the stale-after bound of %v", why, max(age, 0), p.StaleAfter)
}

// cleanup tears down the stale runs, each by its run id (never everything:
// the resources of live runs stay).
func (p *Provisioner) cleanup(ctx context.Context, stale []RunView) error {
	for _, r := range stale {
		p.logf("cleaning up %s", r)
		scope := Scope{RunID: r.ID, State: r.State}
		err := p.API.Teardown(ctx, scope, TeardownOptions{Logf: p.Logf, ActionWait: p.ActionWait})
		if err != nil {
			return fmt.Errorf("cleaning up run %s: %w", r.ID, err)
		}
		if r.Local {
			err = p.Store.Remove(r.ID)
		} else {
			err = p.Store.MarkTornDown(r.ID)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Plan lists the selected volumes and sizes and returns what a run would
// create, with its estimated cost for a run of hours.
func (p *Provisioner) Plan(ctx context.Context, hours float64) (*Plan, error) {
	p.defaults()
	sizes, err := p.API.ListSizes(ctx)
	if err != nil {
		return nil, err
	}
	if r := p.Restore; r != nil {
		v := godo.Volume{Name: r.Name, Region: &godo.Region{Slug: r.Region}, SizeGigaBytes: r.SizeGiB}
		return MakeRestorePlan([]godo.Volume{v}, sizes, p.DropletSize, hours)
	}
	if err := knownRegions(sizes, p.Filter.Regions); err != nil {
		return nil, err
	}
	vols, err := p.API.ListVolumes(ctx)
	if err != nil {
		return nil, err
	}
	var sel []godo.Volume
	for _, v := range vols {
		if p.Filter.Selects(v) {
			sel = append(sel, v)
		}
	}
	if len(sel) == 0 {
		return nil, ErrNothingSelected
	}
	return MakePlan(sel, sizes, p.DropletSize, hours)
}

// Provision makes one run: for every selected volume a snapshot (between
// the hooks), a copy made from it, and the snapshot deleted once the copy
// exists; per region droplets with the copies attached, SSH answering with
// the pinned host key, dosvob-hash uploaded and every device checked. It
// holds the store's lock while it looks at earlier runs and starts its own
// (see begin), not longer: runs with their own resources go on side by
// side.
//
// Every resource is named in the run state before it is created, and its id
// is saved as soon as it is known. When a step fails the run's resources
// are torn down (unless KeepOnFailure) and a *RunError says so; when ctx is
// cancelled the state is saved and the error says to run dosvob-teardown.
func (p *Provisioner) Provision(ctx context.Context) (*Run, error) {
	p.defaults()
	if p.HashBinary == "" {
		return nil, errors.New("no dosvob-hash binary to upload")
	}
	if p.Restore != nil && p.PatchBinary == "" {
		return nil, errors.New("a restore needs a dosvob-patch binary to upload")
	}
	for _, b := range []string{p.HashBinary, p.PatchBinary} {
		if b == "" {
			continue
		}
		if st, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("binary to upload: %w", err)
		} else if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("binary to upload %q is not a regular file", b)
		}
	}

	plan, err := p.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer p.endRunLock()
	runID := p.st.RunID
	p.logf("run %s: %d volume(s) in %d region(s)", runID, plan.VolumeCount(), len(plan.Regions))

	err = p.steps(ctx)
	if err == nil {
		p.st.Status = "ready"
		if err := p.Store.Save(p.st); err != nil {
			return nil, err
		}
		run := p.st.Run(p.Store)
		return &run, nil
	}

	// Failure. Record it; then tear down unless interrupted or told not to.
	if ctx.Err() != nil {
		p.st.Status = "interrupted"
		p.st.Error = "interrupted"
		p.Store.Save(p.st)
		return nil, &RunError{RunID: runID, Err: fmt.Errorf("interrupted: %w", ctx.Err())}
	}
	p.st.Status = "failed"
	p.st.Error = err.Error()
	p.st.KeptOnFailure = p.KeepOnFailure
	p.Store.Save(p.st)
	re := &RunError{RunID: runID, Err: err}
	for _, v := range p.st.Volumes {
		if v.Kept && v.CopyID != "" {
			re.Kept = append(re.Kept, v.CopyName)
		}
	}
	if p.KeepOnFailure {
		return nil, re
	}
	p.logf("run %s failed: %v; tearing down what it created", runID, err)
	st := *p.st
	if terr := p.API.Teardown(ctx, Scope{RunID: runID, State: &st}, TeardownOptions{Logf: p.Logf, ActionWait: p.ActionWait}); terr != nil {
		re.Teardown = terr
		return nil, re
	}
	re.TornDown = true
	if err := p.Store.Remove(runID); err != nil {
		p.logf("removing the run's state: %v", err)
	}
	return nil, re
}

// begin takes the state directory's lock for the start of the run: it
// looks at earlier runs (cleaning up the stale ones, or refusing to start
// while they exist), plans, and makes the run's state, held by its owner,
// before it lets go.
func (p *Provisioner) begin(ctx context.Context) (*Plan, error) {
	if p.OwnerLock != nil {
		if err := lockFile(p.OwnerLock); err != nil {
			if errors.Is(err, ErrLocked) {
				return nil, fmt.Errorf("%w: another process holds the owner's lock %s", ErrLocked, p.OwnerLock.Name())
			}
			return nil, fmt.Errorf("the owner's lock: %w", err)
		}
	}
	if err := p.Store.LockWait(ctx, p.LockWait, p.Logf); err != nil {
		return nil, err
	}
	defer p.Store.Unlock()

	sv, err := p.Survey(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range sv.Live() {
		p.logf("leaving %s", r)
	}
	if n := len(sv.Orphans); n > 0 {
		p.logf("leaving %d dosvob resource(s) that name no run (dosvob-teardown --all deletes them, and every run still going: use it when none is)", n)
	}
	if stale := sv.Stale(); len(stale) > 0 {
		if !p.CleanupStale {
			return nil, &StaleError{Stale: stale}
		}
		if err := p.cleanup(ctx, stale); err != nil {
			return nil, err
		}
	}

	if r := p.Restore; r != nil {
		vs, err := p.API.volumesNamed(ctx, r.Region, r.Name)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			if v.Name == r.Name {
				return nil, fmt.Errorf("%w: a volume named %q already exists in region %q (id %s); a restore only fills a new volume", ErrRefused, r.Name, r.Region, v.ID)
			}
		}
	}
	plan, err := p.Plan(ctx, 1)
	if err != nil {
		return nil, err
	}
	if err := p.start(plan); err != nil {
		return nil, err
	}
	return plan, nil
}

// endRunLock lets go of the run's own lock file, if it holds one.
func (p *Provisioner) endRunLock() {
	if p.runLock != nil {
		p.runLock.Close()
		p.runLock = nil
	}
}

// start makes the run id, the run directory, the keys and the first state.
func (p *Provisioner) start(plan *Plan) error {
	now := p.Now().UTC().Truncate(time.Second)
	runID := NewRunID(now)
	if err := p.Store.Create(runID); err != nil {
		return err
	}
	// The owner's lock is held before the run's state can be read: no
	// other survey ever sees this run without its owner.
	var owner *OwnerState
	if p.OwnerLock != nil {
		o, err := newOwner(p.OwnerLock, true)
		if err != nil {
			return err
		}
		owner = o
	} else {
		f, err := os.OpenFile(p.Store.runLockPath(runID), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		if err := lockFile(f); err != nil {
			f.Close()
			return err
		}
		p.runLock = f
		if owner, err = newOwner(f, false); err != nil {
			return err
		}
	}
	key, err := sshx.NewKey()
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(p.Store.KeyPath(runID), key.PrivatePEM, 0o600); err != nil {
		return err
	}
	p.key = key
	mode := ModeBackup
	if p.Restore != nil {
		mode = ModeRestore
	}
	st := &State{
		RunID:     runID,
		CreatedAt: now,
		Mode:      mode,
		Status:    "provisioning",
		Owner:     owner,
		Key:       KeyState{Name: KeyName(runID), Fingerprint: ssh.FingerprintLegacyMD5(key.Public())},
		Droplets:  []DropletState{},
		Volumes:   []VolumeState{},
	}
	p.hosts = map[string]*sshx.Key{}
	i := 0
	for _, rp := range plan.Regions {
		for k := 0; k < rp.Droplets; k++ {
			hk, err := sshx.NewKey()
			if err != nil {
				return err
			}
			name := DropletName(runID, rp.Region, k)
			p.hosts[name] = hk
			st.Droplets = append(st.Droplets, DropletState{
				RunDroplet: RunDroplet{Name: name, Region: rp.Region, Port: p.SSHPort, User: p.SSHUser, HostKey: hk.AuthorizedKey()},
				Size:       rp.Size.Slug,
			})
		}
		for j, v := range rp.Volumes {
			vs := VolumeState{
				RunVolume:   RunVolume{Region: rp.Region, SizeBytes: v.SizeGigaBytes << 30},
				SizeGiB:     v.SizeGigaBytes,
				DropletName: DropletName(runID, rp.Region, j/MaxVolumesPerDroplet),
			}
			if p.Restore != nil {
				vs.CopyName = p.Restore.Name
				vs.Kept = true
			} else {
				vs.SourceName, vs.SourceID = v.Name, v.ID
				vs.CopyName = CopyName(runID, i)
				vs.SnapshotName = CopyName(runID, i)
			}
			st.Volumes = append(st.Volumes, vs)
			i++
		}
	}
	p.st = st
	if err := p.Store.Save(st); err != nil {
		return err
	}
	if p.RunIDFile != "" {
		if err := WriteFileAtomic(p.RunIDFile, []byte(runID+"\n"), 0o600); err != nil {
			return fmt.Errorf("run id file: %w", err)
		}
	}
	return nil
}

// update applies f to the state under the lock and saves it.
func (p *Provisioner) update(f func(st *State)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p.st)
	return p.Store.Save(p.st)
}

func (p *Provisioner) steps(ctx context.Context) error {
	st := p.st
	runID := st.RunID
	tags := Tags(runID)

	// 1. The run's account key, which the droplets authorize for root.
	k, err := p.API.CreateKey(ctx, st.Key.Name, p.key.AuthorizedKey(), st.Key.Fingerprint)
	if err != nil {
		return err
	}
	if err := p.update(func(st *State) { st.Key.ID = k.ID }); err != nil {
		return err
	}

	// 2. Droplets first: they boot while the snapshots and copies are made.
	createActions := map[string]int{}
	for i := range st.Droplets {
		d := &st.Droplets[i]
		p.logf("creating droplet %s (%s, %s)", d.Name, d.Region, d.Size)
		req := &godo.DropletCreateRequest{
			Name:     d.Name,
			Region:   d.Region,
			Size:     d.Size,
			Image:    godo.DropletCreateImage{Slug: p.Image},
			SSHKeys:  []godo.DropletCreateSSHKey{{ID: k.ID}},
			UserData: p.hosts[d.Name].CloudConfig(),
			Tags:     tags,
		}
		gd, actionID, err := p.API.CreateDroplet(ctx, req, RunTag(runID))
		if err != nil {
			return err
		}
		createActions[d.Name] = actionID
		if err := p.update(func(*State) { d.ID = gd.ID }); err != nil {
			return err
		}
	}

	// 3. Per volume: snapshot between the hooks, copy, drop the snapshot.
	for i := range st.Volumes {
		if err := p.copyVolume(ctx, &st.Volumes[i], tags); err != nil {
			return err
		}
	}

	// 4. Droplets active, with an address.
	for i := range st.Droplets {
		d := &st.Droplets[i]
		gd, err := p.API.WaitDropletActive(ctx, d.ID, createActions[d.Name], p.ActionWait)
		if err != nil {
			return err
		}
		ip, _ := gd.PublicIPv4()
		if err := p.update(func(*State) { d.Address = ip }); err != nil {
			return err
		}
		p.logf("droplet %s is active at %s", d.Name, ip)
	}
	if err := p.writeKnownHosts(); err != nil {
		return err
	}

	// 5. Attach each copy to its droplet, one at a time per droplet.
	byName := map[string]*DropletState{}
	for i := range st.Droplets {
		byName[st.Droplets[i].Name] = &st.Droplets[i]
	}
	g, gctx := errgroup.WithContext(ctx)
	for i := range st.Droplets {
		d := &st.Droplets[i]
		g.Go(func() error {
			for j := range st.Volumes {
				v := &st.Volumes[j]
				if v.DropletName != d.Name {
					continue
				}
				p.logf("attaching %s to %s", v.CopyName, d.Name)
				if err := p.API.Attach(gctx, v.CopyID, d.ID, p.ActionWait); err != nil {
					return err
				}
				if err := p.update(func(*State) { v.DropletID = d.ID }); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}

	// 6. SSH, upload, device checks: per droplet, in parallel.
	g, gctx = errgroup.WithContext(ctx)
	for i := range st.Droplets {
		d := &st.Droplets[i]
		g.Go(func() error { return p.prepareDroplet(gctx, d) })
	}
	return g.Wait()
}

func (p *Provisioner) copyVolume(ctx context.Context, v *VolumeState, tags []string) error {
	if v.Kept {
		// A restore: a new, empty volume that stays the user's.
		p.logf("creating the new volume %s (%d GiB in %s)", v.CopyName, v.SizeGiB, v.Region)
		gv, err := p.API.CreateVolume(ctx, volumeCreate{Name: v.CopyName, Region: v.Region, SizeGigaBytes: v.SizeGiB,
			Description: "restored by dosvob run " + p.st.RunID})
		if err != nil {
			return err
		}
		return p.update(func(*State) { v.CopyID = gv.ID })
	}

	env := HookEnv{RunID: p.st.RunID, Volume: v.SourceName, VolumeID: v.SourceID, Region: v.Region}
	// The post hook runs whenever the pre hook was started, whatever became
	// of it (failed, timed out, interrupted): it may have frozen something
	// before it stopped.
	var snap *godo.Snapshot
	var serr error
	preOK := true
	if p.Hooks.PreSnapshot != "" {
		env.Hook = "pre_snapshot"
		p.logf("running the pre_snapshot hook for %s", v.SourceName)
		if serr = RunHook(ctx, p.Hooks.PreSnapshot, env, p.Hooks.Timeout, p.HookStderr); serr != nil {
			preOK = false
		}
	}
	if preOK {
		p.logf("snapshotting volume %s", v.SourceName)
		snap, serr = p.API.CreateSnapshot(ctx, v.SourceID, v.SnapshotName, tags)
	}
	if p.Hooks.PostSnapshot != "" {
		env.Hook, env.Result = "post_snapshot", "ok"
		switch {
		case !preOK:
			env.Result = "skipped"
		case serr != nil:
			env.Result = "failed"
		}
		p.logf("running the post_snapshot hook for %s", v.SourceName)
		// Thaw even when interrupted: run it on a context of its own.
		herr := RunHook(context.WithoutCancel(ctx), p.Hooks.PostSnapshot, env, p.Hooks.Timeout, p.HookStderr)
		switch {
		case herr == nil:
		case serr == nil:
			serr = herr
		default:
			serr = fmt.Errorf("%w; then the %v", serr, herr)
		}
	}
	if snap != nil {
		created, _ := time.Parse(time.RFC3339, snap.Created)
		if err := p.update(func(*State) { v.SnapshotID, v.SnapshotCreatedAt = snap.ID, created.UTC() }); err != nil {
			return err
		}
	}
	if serr != nil {
		if errors.Is(serr, ErrSnapshotRateLimited) {
			return fmt.Errorf("volume %q: %w", v.SourceName, serr)
		}
		return serr
	}

	p.logf("creating %s from the snapshot of %s", v.CopyName, v.SourceName)
	gv, err := p.API.CreateVolume(ctx, volumeCreate{Name: v.CopyName, Region: v.Region, SizeGigaBytes: v.SizeGiB,
		SnapshotID: snap.ID, Description: "dosvob temporary copy of " + v.SourceName, Tags: tags})
	if err != nil {
		return err
	}
	if err := p.update(func(*State) { v.CopyID = gv.ID }); err != nil {
		return err
	}
	// The copy exists: the snapshot only costs money now. If it cannot be
	// deleted yet (DigitalOcean may still be reading it for the copy), the
	// run goes on: it carries the run's tag, and teardown deletes it.
	if err := p.API.DeleteSnapshot(ctx, snap.ID); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.logf("could not delete the snapshot of %s yet (teardown will): %v", v.SourceName, err)
		return nil
	}
	return p.update(func(*State) { v.SnapshotDeleted = true })
}

func (p *Provisioner) writeKnownHosts() error {
	var b strings.Builder
	for _, d := range p.st.Droplets {
		b.WriteString(sshx.KnownHostsLine(d.Address, d.Port, p.hosts[d.Name].Public()))
		b.WriteString("\n")
	}
	return WriteFileAtomic(p.Store.KnownHostsPath(p.st.RunID), []byte(b.String()), 0o600)
}

func (p *Provisioner) prepareDroplet(ctx context.Context, d *DropletState) error {
	t := sshx.Target{Host: d.Address, Port: d.Port, User: d.User, HostKey: p.hosts[d.Name].Public(), Signer: p.key.Signer}
	p.logf("waiting for ssh on %s (%s)", d.Name, d.Address)
	c, err := sshx.WaitReady(ctx, t, p.SSHWait, p.Logf)
	if err != nil {
		return fmt.Errorf("droplet %s: %w", d.Name, err)
	}
	defer c.Close()
	out, err := c.Run(ctx, `printf '%s' "${DOSVOB_ROOT}"`, nil)
	if err != nil {
		return fmt.Errorf("droplet %s: %w", d.Name, err)
	}
	root := strings.TrimRight(string(out), "/")
	dir := path.Join(root+"/", "opt", "dosvob", p.st.RunID)
	hashPath := path.Join(dir, "dosvob-hash")
	p.logf("uploading dosvob-hash to %s", d.Name)
	if err := c.Upload(ctx, p.HashBinary, hashPath, 0o755); err != nil {
		return fmt.Errorf("droplet %s: %w", d.Name, err)
	}
	patchPath := ""
	if p.PatchBinary != "" {
		patchPath = path.Join(dir, "dosvob-patch")
		p.logf("uploading dosvob-patch to %s", d.Name)
		if err := c.Upload(ctx, p.PatchBinary, patchPath, 0o755); err != nil {
			return fmt.Errorf("droplet %s: %w", d.Name, err)
		}
	}
	if err := p.update(func(*State) { d.RemoteHashPath, d.RemotePatchPath = hashPath, patchPath }); err != nil {
		return err
	}
	for i := range p.st.Volumes {
		v := &p.st.Volumes[i]
		if v.DropletName != d.Name {
			continue
		}
		dev, size, err := p.checkDevice(ctx, c, v)
		if err != nil {
			return fmt.Errorf("droplet %s: %w", d.Name, err)
		}
		if err := p.update(func(*State) { v.DevicePath, v.SizeBytes = dev, size }); err != nil {
			return err
		}
	}
	return nil
}

// deviceScript resolves a DigitalOcean volume's device path on a droplet
// (under $DOSVOB_ROOT on an emulated one) and prints "<size> <path>".
const deviceScript = `link="${DOSVOB_ROOT}/dev/disk/by-id/scsi-0DO_Volume_"%s
dev=$(readlink -f "$link") || exit 3
[ -e "$dev" ] || { echo "no device at $link" >&2; exit 3; }
if [ -b "$dev" ]; then size=$(blockdev --getsize64 "$dev"); else size=$(stat -L -c %%s "$dev"); fi || exit 4
printf '%%s %%s\n' "$size" "$dev"`

// checkDevice waits until the volume's device shows up and checks its size.
func (p *Provisioner) checkDevice(ctx context.Context, c *sshx.Client, v *VolumeState) (string, int64, error) {
	want := v.SizeGiB << 30
	deadline := time.Now().Add(p.DeviceWait)
	delay := 200 * time.Millisecond
	for {
		out, err := c.Run(ctx, fmt.Sprintf(deviceScript, sshx.Quote(v.CopyName)), nil)
		if err == nil {
			f := strings.Fields(string(out))
			if len(f) != 2 {
				return "", 0, fmt.Errorf("volume %s: unexpected answer %q", v.CopyName, out)
			}
			size, perr := strconv.ParseInt(f[0], 10, 64)
			if perr != nil {
				return "", 0, fmt.Errorf("volume %s: unexpected size %q", v.CopyName, f[0])
			}
			if size != want {
				return "", 0, fmt.Errorf("volume %s: device %s has %d bytes, want %d", v.CopyName, f[1], size, want)
			}
			return f[1], size, nil
		}
		if ctx.Err() != nil {
			return "", 0, ctx.Err()
		}
		var re *sshx.RemoteError
		if !errors.As(err, &re) || time.Now().After(deadline) {
			return "", 0, fmt.Errorf("volume %s: device not found: %w", v.CopyName, err)
		}
		if err := sleep(ctx, delay); err != nil {
			return "", 0, err
		}
		delay = min(delay*2, 5*time.Second)
	}
}
