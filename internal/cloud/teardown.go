package cloud

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/digitalocean/godo"
)

// Resource is one DigitalOcean resource that teardown found.
type Resource struct {
	Kind   string `json:"kind"` // "droplet", "volume", "snapshot", "ssh_key"
	ID     string `json:"id"`
	Name   string `json:"name"`
	Region string `json:"region,omitempty"`
	RunID  string `json:"run_id,omitempty"`
	// Kept marks a restore's new volume: teardown waits for it to be
	// detached and never deletes it.
	Kept bool `json:"kept,omitempty"`
	// AttachedTo lists the droplets a volume is attached to.
	AttachedTo []int `json:"attached_to,omitempty"`
	// Note says why a resource is left after a teardown.
	Note string `json:"note,omitempty"`
}

func (r Resource) String() string {
	s := fmt.Sprintf("%s %s (%s)", r.Kind, r.Name, r.ID)
	if r.Region != "" {
		s += " in " + r.Region
	}
	if r.Kept {
		s += ", kept"
	}
	if r.Note != "" {
		s += ": " + r.Note
	}
	return s
}

// Inventory is every resource of a run, or of every run.
type Inventory struct {
	Droplets  []Resource `json:"droplets"`
	Volumes   []Resource `json:"volumes"`
	Snapshots []Resource `json:"snapshots"`
	Keys      []Resource `json:"ssh_keys"`
}

// All returns the resources in teardown order.
func (inv *Inventory) All() []Resource {
	var all []Resource
	all = append(all, inv.Droplets...)
	all = append(all, inv.Volumes...)
	all = append(all, inv.Snapshots...)
	all = append(all, inv.Keys...)
	return all
}

// Deletable returns the resources teardown would delete (kept volumes are
// only detached).
func (inv *Inventory) Deletable() []Resource {
	var out []Resource
	for _, r := range inv.All() {
		if !r.Kept {
			out = append(out, r)
		}
	}
	return out
}

// Empty reports whether nothing is left to delete.
func (inv *Inventory) Empty() bool { return len(inv.Deletable()) == 0 }

// RunIDs returns the runs the inventory's resources belong to.
func (inv *Inventory) RunIDs() []string {
	var ids []string
	for _, r := range inv.All() {
		if r.RunID != "" && !slices.Contains(ids, r.RunID) {
			ids = append(ids, r.RunID)
		}
	}
	sort.Strings(ids)
	return ids
}

// Scope says what to tear down: one run (RunID, and its state if there is
// one), or every dosvob resource in the account (RunID "").
type Scope struct {
	RunID string
	State *State
}

func (s Scope) matches(name string, tags []string) bool {
	if !IsOurs(name, tags) {
		return false
	}
	return s.RunID == "" || HasTag(tags, RunTag(s.RunID))
}

// Discover lists what exists of the scope, each kind by name. A resource
// counts only when it carries both marks (see IsOurs); a restore's kept
// volume is listed, as Kept, only when the run's state names it.
func (a *API) Discover(ctx context.Context, scope Scope) (*Inventory, error) {
	inv := &Inventory{}
	tag := Tag
	if scope.RunID != "" {
		tag = RunTag(scope.RunID)
	}
	droplets, err := a.ListDropletsByTag(ctx, tag)
	if err != nil {
		return nil, err
	}
	for _, d := range droplets {
		if scope.matches(d.Name, d.Tags) {
			region := ""
			if d.Region != nil {
				region = d.Region.Slug
			}
			inv.Droplets = append(inv.Droplets, Resource{Kind: "droplet", ID: fmt.Sprint(d.ID), Name: d.Name, Region: region, RunID: RunOf(d.Tags)})
		}
	}
	vols, err := a.ListVolumes(ctx)
	if err != nil {
		return nil, err
	}
	kept := map[string]bool{}
	if scope.State != nil {
		for _, v := range scope.State.Volumes {
			if v.Kept && v.CopyID != "" {
				kept[v.CopyID] = true
			}
		}
	}
	for _, v := range vols {
		region := ""
		if v.Region != nil {
			region = v.Region.Slug
		}
		r := Resource{Kind: "volume", ID: v.ID, Name: v.Name, Region: region, RunID: RunOf(v.Tags), AttachedTo: v.DropletIDs}
		switch {
		case scope.matches(v.Name, v.Tags):
			inv.Volumes = append(inv.Volumes, r)
		case kept[v.ID]:
			r.Kept = true
			r.RunID = scope.RunID
			inv.Volumes = append(inv.Volumes, r)
		}
	}
	snaps, err := a.ListVolumeSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range snaps {
		if scope.matches(s.Name, s.Tags) {
			region := ""
			if len(s.Regions) > 0 {
				region = s.Regions[0]
			}
			inv.Snapshots = append(inv.Snapshots, Resource{Kind: "snapshot", ID: s.ID, Name: s.Name, Region: region, RunID: RunOf(s.Tags)})
		}
	}
	keys, err := a.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if !IsOurKey(k.Name) {
			continue
		}
		if scope.RunID != "" && k.Name != KeyName(scope.RunID) {
			continue
		}
		inv.Keys = append(inv.Keys, Resource{Kind: "ssh_key", ID: fmt.Sprint(k.ID), Name: k.Name, RunID: KeyRunID(k.Name)})
	}
	// By name: what is listed (left, or to delete) reads in a stable order.
	for _, rs := range [][]Resource{inv.Droplets, inv.Volumes, inv.Snapshots, inv.Keys} {
		slices.SortStableFunc(rs, func(a, b Resource) int { return strings.Compare(a.Name, b.Name) })
	}
	return inv, nil
}

// IncompleteError lists what a teardown could not remove. Its message is
// one line; Lines has one more for each resource left, with why.
type IncompleteError struct {
	// RunID is the run torn down, "" for every dosvob resource.
	RunID string
	Left  []Resource
}

func (e *IncompleteError) Error() string {
	what := "dosvob resource"
	if e.RunID != "" {
		what = "resource of run " + e.RunID
	}
	if len(e.Left) != 1 {
		what = strings.Replace(what, "resource", "resources", 1)
	}
	return fmt.Sprintf("teardown incomplete: %d %s left", len(e.Left), what)
}

// Lines says, one line each, what is left and why: "left: volume
// dosvob-ephemeral-... (id) in fra1: delete failed: ...".
func (e *IncompleteError) Lines() []string {
	lines := make([]string, len(e.Left))
	for i, r := range e.Left {
		lines[i] = "left: " + r.String()
	}
	return lines
}

// TeardownOptions tune a teardown.
type TeardownOptions struct {
	// DetachWait bounds the whole wait for volumes to detach from the
	// scope's droplets once these are deleted, detach actions included
	// (default 5m).
	DetachWait time.Duration
	// ActionWait bounds one detach action, within DetachWait (default 5m).
	ActionWait time.Duration
	Logf       func(format string, args ...any)
	// Found, if set, is called with what the teardown found, before it
	// deletes anything.
	Found func(inv *Inventory)
}

// Teardown deletes everything of the scope, in order: droplets; then, once
// their volumes have detached, volumes (never a kept one); snapshots; SSH
// keys. Nothing without both marks is ever touched. It is idempotent: what
// is already gone counts as deleted. On return it lists again, and what is
// still there (other than kept volumes, which must merely be detached from
// the scope's droplets) is returned in an *IncompleteError.
func (a *API) Teardown(ctx context.Context, scope Scope, o TeardownOptions) error {
	if o.DetachWait <= 0 {
		o.DetachWait = 5 * time.Minute
	}
	if o.ActionWait <= 0 {
		o.ActionWait = 5 * time.Minute
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	inv, err := a.Discover(ctx, scope)
	if err != nil {
		return err
	}
	if o.Found != nil {
		o.Found(inv)
	}
	// What failed, by resource ("volume ID"): the why of what is left.
	var errs []error
	failed := map[string][]string{}
	tried := map[string]bool{}
	note := func(r Resource, what string, err error) {
		tried[r.Kind+" "+r.ID] = true
		if err == nil {
			return
		}
		errs = append(errs, err)
		why := err.Error()
		var ae *APIError
		if errors.As(err, &ae) {
			why = ae.Reason()
		}
		failed[r.Kind+" "+r.ID] = append(failed[r.Kind+" "+r.ID], what+" failed: "+why)
	}

	// The droplets of the scope: those found, and those its state names
	// (already deleted, perhaps, by an earlier teardown). A volume is
	// waited for, and detached, only from these: a kept volume attached
	// to a droplet of the user's is the user's business, and a volume
	// with dosvob's marks on a droplet of the user's is never detached.
	ours := map[int]bool{}
	if scope.State != nil {
		for _, d := range scope.State.Droplets {
			if d.ID != 0 {
				ours[d.ID] = true
			}
		}
	}
	for _, d := range inv.Droplets {
		var id int
		fmt.Sscan(d.ID, &id)
		ours[id] = true
		logf("deleting %s", d)
		note(d, "delete", a.DeleteDroplet(ctx, id))
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	// Volumes detach from a deleted droplet after a while; deleting an
	// attached volume fails. Wait, then detach what lingers. DetachWait
	// bounds all of it: half for the volumes to detach by themselves, the
	// rest for the detach actions and for them to take effect.
	deadline := time.Now().Add(o.DetachWait)
	waitDetached := func(until time.Time) []Resource {
		var pending []Resource
		a.pollUntil(ctx, time.Until(until), func(ctx context.Context) (bool, error) {
			pending = pending[:0]
			for _, v := range inv.Volumes {
				gv, err := a.GetVolume(ctx, v.ID)
				if IsNotFound(err) {
					continue
				}
				if err != nil {
					return false, err
				}
				if on := onDroplets(gv.DropletIDs, ours); len(on) > 0 {
					v.AttachedTo = on
					pending = append(pending, v)
				}
			}
			return len(pending) == 0, nil
		})
		return pending
	}
	if len(inv.Volumes) > 0 {
		pending := waitDetached(deadline.Add(-o.DetachWait / 2))
		for _, v := range pending {
			for _, did := range v.AttachedTo {
				logf("volume %s still attached to deleted droplet %d: detaching it", v.Name, did)
				wait := min(o.ActionWait, time.Until(deadline))
				if err := a.Detach(ctx, v.ID, did, max(wait, time.Second)); err != nil && !IsNotFound(err) {
					note(v, fmt.Sprintf("detach from droplet %d", did), err)
				}
			}
		}
		if len(pending) > 0 {
			waitDetached(deadline)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, v := range inv.Volumes {
		if v.Kept {
			continue
		}
		logf("deleting %s", v)
		note(v, "delete", a.DeleteVolume(ctx, v.ID))
	}
	for _, s := range inv.Snapshots {
		logf("deleting %s", s)
		note(s, "delete", a.DeleteSnapshot(ctx, s.ID))
	}
	for _, k := range inv.Keys {
		var id int
		fmt.Sscan(k.ID, &id)
		logf("deleting %s", k)
		note(k, "delete", a.DeleteKey(ctx, id))
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	left, err := a.Discover(ctx, scope)
	if err != nil {
		return err
	}
	var rest []Resource
	for _, r := range left.All() {
		if r.Kept {
			if on := onDroplets(r.AttachedTo, ours); len(on) > 0 {
				r.Note = fmt.Sprintf("kept volume still attached to the run's droplet(s) %v", on)
				rest = append(rest, r)
			}
			continue
		}
		rest = append(rest, r)
	}
	if len(rest) > 0 {
		for i, r := range rest {
			key := r.Kind + " " + r.ID
			var why []string
			if r.Note != "" {
				why = append(why, r.Note)
			} else if len(r.AttachedTo) > 0 {
				why = append(why, fmt.Sprintf("attached to droplet(s) %v", r.AttachedTo))
			}
			why = append(why, failed[key]...)
			if len(why) == 0 {
				if tried[key] {
					why = append(why, "still there after its delete was accepted")
				} else {
					why = append(why, "appeared during the teardown")
				}
			}
			rest[i].Note = strings.Join(why, "; ")
		}
		return &IncompleteError{RunID: scope.RunID, Left: rest}
	}
	if len(errs) > 0 {
		logf("finished despite errors on the way: %v", errors.Join(errs...))
	}
	a.deleteRunTags(ctx, scope, logf)
	return nil
}

// onDroplets returns the ids among ids that are in set.
func onDroplets(ids []int, set map[int]bool) []int {
	var out []int
	for _, id := range ids {
		if set[id] {
			out = append(out, id)
		}
	}
	return out
}

// deleteRunTags deletes the per-run tags of the scope that no longer tag
// anything. (The shared tag dosvob-ephemeral stays: a firewall rule of the
// user's might name it.) Failures only cost a little clutter: logged.
func (a *API) deleteRunTags(ctx context.Context, scope Scope, logf func(string, ...any)) {
	var names []string
	if scope.RunID != "" {
		names = []string{RunTag(scope.RunID)}
	} else {
		tags, err := listAll(ctx, a, "list tags", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Tag, *godo.Response, error) {
			return a.godo.Tags.List(ctx, opt)
		})
		if err != nil {
			logf("listing tags: %v", err)
			return
		}
		for _, t := range tags {
			if RunOf([]string{t.Name}) != "" {
				names = append(names, t.Name)
			}
		}
	}
	for _, name := range names {
		var t *godo.Tag
		err := a.do(ctx, "get tag "+name, one(&t, "tag", func(ctx context.Context) (*godo.Tag, *godo.Response, error) {
			return a.godo.Tags.Get(ctx, name)
		}))
		if IsNotFound(err) {
			continue
		}
		if err != nil {
			logf("%v", err)
			continue
		}
		if t.Resources != nil && t.Resources.Count > 0 {
			continue
		}
		if err := a.deleteIgnoringNotFound(ctx, "delete tag "+name, func(ctx context.Context) (*godo.Response, error) {
			return a.godo.Tags.Delete(ctx, name)
		}); err != nil {
			logf("%v", err)
		}
	}
}
