package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/digitalocean/godo"
)

// The operations on DigitalOcean resources that provision and teardown use,
// each with retries. Creates carry an existence check so that a retry after
// an uncertain failure never makes a duplicate.

func (a *API) ListVolumes(ctx context.Context) ([]godo.Volume, error) {
	return listAll(ctx, a, "list volumes", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Volume, *godo.Response, error) {
		return a.godo.Storage.ListVolumes(ctx, &godo.ListVolumeParams{ListOptions: opt})
	})
}

func (a *API) volumesNamed(ctx context.Context, region, name string) ([]godo.Volume, error) {
	return listAll(ctx, a, "list volumes", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Volume, *godo.Response, error) {
		return a.godo.Storage.ListVolumes(ctx, &godo.ListVolumeParams{Region: region, Name: name, ListOptions: opt})
	})
}

func (a *API) GetVolume(ctx context.Context, id string) (*godo.Volume, error) {
	var v *godo.Volume
	err := a.do(ctx, "get volume "+id, one(&v, "volume", func(ctx context.Context) (*godo.Volume, *godo.Response, error) {
		return a.godo.Storage.GetVolume(ctx, id)
	}))
	return v, err
}

// volumeCreate is the body of POST /v2/volumes. godo's own request type
// always sends filesystem_type (as ""), which dosvob never does: a copy of
// a snapshot keeps the filesystem the snapshot holds, untouched.
type volumeCreate struct {
	Name          string   `json:"name"`
	Region        string   `json:"region"`
	SizeGigaBytes int64    `json:"size_gigabytes"`
	SnapshotID    string   `json:"snapshot_id,omitempty"`
	Description   string   `json:"description,omitempty"`
	Tags          []string `json:"tags,omitempty"`
}

// CreateVolume creates a volume, or finds the one an earlier uncertain
// attempt made (volume names are unique per region).
func (a *API) CreateVolume(ctx context.Context, req volumeCreate) (*godo.Volume, error) {
	var v *godo.Volume
	find := func(ctx context.Context) (bool, error) {
		vs, err := a.volumesNamed(ctx, req.Region, req.Name)
		if err != nil {
			return false, err
		}
		for i := range vs {
			if vs[i].Name == req.Name {
				v = &vs[i]
				return true, nil
			}
		}
		return false, nil
	}
	err := a.call(ctx, "create volume "+req.Name, callOpts{exists: find}, one(&v, "volume", func(ctx context.Context) (*godo.Volume, *godo.Response, error) {
		hreq, err := a.godo.NewRequest(ctx, http.MethodPost, "v2/volumes", req)
		if err != nil {
			return nil, nil, err
		}
		var root struct {
			Volume *godo.Volume `json:"volume"`
		}
		resp, err := a.godo.Do(ctx, hreq, &root)
		return root.Volume, resp, err
	}))
	if errors.Is(err, errFound) {
		err = nil
	}
	return v, err
}

func (a *API) DeleteVolume(ctx context.Context, id string) error {
	return a.deleteIgnoringNotFound(ctx, "delete volume "+id, func(ctx context.Context) (*godo.Response, error) {
		return a.godo.Storage.DeleteVolume(ctx, id)
	})
}

// ErrSnapshotRateLimited is DigitalOcean's limit of one snapshot per volume
// every 10 minutes.
var ErrSnapshotRateLimited = errors.New("DigitalOcean allows one snapshot per volume every 10 minutes")

// CreateSnapshot snapshots a volume, or finds the snapshot an earlier
// uncertain attempt made.
func (a *API) CreateSnapshot(ctx context.Context, volumeID, name string, tags []string) (*godo.Snapshot, error) {
	var s *godo.Snapshot
	find := func(ctx context.Context) (bool, error) {
		ss, err := listAll(ctx, a, "list snapshots", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Snapshot, *godo.Response, error) {
			return a.godo.Storage.ListSnapshots(ctx, volumeID, opt)
		})
		if err != nil {
			return false, err
		}
		for i := range ss {
			if ss[i].Name == name {
				s = &ss[i]
				return true, nil
			}
		}
		return false, nil
	}
	stop := func(er *godo.ErrorResponse) error {
		// The per-volume snapshot limit answers 429 without retry-after;
		// waiting blindly for 10 minutes helps nobody.
		if er.Response.StatusCode == http.StatusTooManyRequests && er.Response.Header.Get("Retry-After") == "" &&
			containsFold(er.Message, "rate-limited") {
			return &APIError{Op: "snapshot volume " + volumeID, Status: http.StatusTooManyRequests,
				Err: fmt.Errorf("%w (%s)", ErrSnapshotRateLimited, er.Message)}
		}
		return nil
	}
	err := a.call(ctx, "snapshot volume "+volumeID, callOpts{exists: find, stop: stop}, one(&s, "snapshot", func(ctx context.Context) (*godo.Snapshot, *godo.Response, error) {
		return a.godo.Storage.CreateSnapshot(ctx, &godo.SnapshotCreateRequest{VolumeID: volumeID, Name: name, Tags: tags})
	}))
	if errors.Is(err, errFound) {
		err = nil
	}
	return s, err
}

func (a *API) ListVolumeSnapshots(ctx context.Context) ([]godo.Snapshot, error) {
	return listAll(ctx, a, "list snapshots", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Snapshot, *godo.Response, error) {
		return a.godo.Snapshots.ListVolume(ctx, opt)
	})
}

func (a *API) GetSnapshot(ctx context.Context, id string) (*godo.Snapshot, error) {
	var s *godo.Snapshot
	err := a.do(ctx, "get snapshot "+id, one(&s, "snapshot", func(ctx context.Context) (*godo.Snapshot, *godo.Response, error) {
		return a.godo.Snapshots.Get(ctx, id)
	}))
	return s, err
}

func (a *API) DeleteSnapshot(ctx context.Context, id string) error {
	return a.deleteIgnoringNotFound(ctx, "delete snapshot "+id, func(ctx context.Context) (*godo.Response, error) {
		return a.godo.Snapshots.Delete(ctx, id)
	})
}

// CreateKey registers an account SSH key, or finds it (by name and
// fingerprint) after an uncertain attempt.
func (a *API) CreateKey(ctx context.Context, name, public, fingerprint string) (*godo.Key, error) {
	var k *godo.Key
	find := func(ctx context.Context) (bool, error) {
		ks, err := a.ListKeys(ctx)
		if err != nil {
			return false, err
		}
		for i := range ks {
			if ks[i].Name == name && ks[i].Fingerprint == fingerprint {
				k = &ks[i]
				return true, nil
			}
		}
		return false, nil
	}
	err := a.call(ctx, "create ssh key "+name, callOpts{exists: find}, one(&k, "ssh key", func(ctx context.Context) (*godo.Key, *godo.Response, error) {
		return a.godo.Keys.Create(ctx, &godo.KeyCreateRequest{Name: name, PublicKey: public})
	}))
	if errors.Is(err, errFound) {
		err = nil
	}
	return k, err
}

func (a *API) ListKeys(ctx context.Context) ([]godo.Key, error) {
	return listAll(ctx, a, "list ssh keys", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Key, *godo.Response, error) {
		return a.godo.Keys.List(ctx, opt)
	})
}

func (a *API) DeleteKey(ctx context.Context, id int) error {
	return a.deleteIgnoringNotFound(ctx, fmt.Sprintf("delete ssh key %d", id), func(ctx context.Context) (*godo.Response, error) {
		return a.godo.Keys.DeleteByID(ctx, id)
	})
}

// CreateDroplet creates a droplet, or finds the one (by name, under the
// run's tag) that an earlier uncertain attempt made.
// The id of the droplet's create action is returned too (0 when unknown).
func (a *API) CreateDroplet(ctx context.Context, req *godo.DropletCreateRequest, runTag string) (*godo.Droplet, int, error) {
	var d *godo.Droplet
	actionID := 0
	find := func(ctx context.Context) (bool, error) {
		ds, err := a.ListDropletsByTag(ctx, runTag)
		if err != nil {
			return false, err
		}
		for i := range ds {
			if ds[i].Name == req.Name {
				d = &ds[i]
				return true, nil
			}
		}
		return false, nil
	}
	err := a.call(ctx, "create droplet "+req.Name, callOpts{exists: find}, one(&d, "droplet", func(ctx context.Context) (*godo.Droplet, *godo.Response, error) {
		d, resp, err := a.godo.Droplets.Create(ctx, req)
		if err == nil && resp != nil && resp.Links != nil {
			for _, la := range resp.Links.Actions {
				if la.Rel == "create" || actionID == 0 {
					actionID = la.ID
				}
			}
		}
		return d, resp, err
	}))
	if errors.Is(err, errFound) {
		err = nil
	}
	return d, actionID, err
}

func (a *API) ListDropletsByTag(ctx context.Context, tag string) ([]godo.Droplet, error) {
	return listAll(ctx, a, "list droplets", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Droplet, *godo.Response, error) {
		return a.godo.Droplets.ListByTag(ctx, tag, opt)
	})
}

func (a *API) GetDroplet(ctx context.Context, id int) (*godo.Droplet, error) {
	var d *godo.Droplet
	err := a.do(ctx, fmt.Sprintf("get droplet %d", id), one(&d, "droplet", func(ctx context.Context) (*godo.Droplet, *godo.Response, error) {
		return a.godo.Droplets.Get(ctx, id)
	}))
	return d, err
}

func (a *API) DeleteDroplet(ctx context.Context, id int) error {
	return a.deleteIgnoringNotFound(ctx, fmt.Sprintf("delete droplet %d", id), func(ctx context.Context) (*godo.Response, error) {
		return a.godo.Droplets.Delete(ctx, id)
	})
}

// WaitDropletActive polls a droplet until it is active with a public IPv4.
// When the id of its create action is known (non-zero), an action that
// ends errored fails the wait at once.
func (a *API) WaitDropletActive(ctx context.Context, id, actionID int, timeout time.Duration) (*godo.Droplet, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if actionID != 0 {
			var act *godo.Action
			err := a.do(ctx, fmt.Sprintf("get action %d", actionID), one(&act, "action", func(ctx context.Context) (*godo.Action, *godo.Response, error) {
				return a.godo.Actions.Get(ctx, actionID)
			}))
			if err == nil && act.Status == "errored" {
				return nil, &APIError{Op: fmt.Sprintf("droplet %d", id), Err: fmt.Errorf("create action %d: %w", actionID, ErrActionErrored)}
			}
			if err == nil && act.Status == godo.ActionCompleted {
				actionID = 0
			}
		}
		d, err := a.GetDroplet(ctx, id)
		if err == nil && d.Status == "active" {
			if ip, _ := d.PublicIPv4(); ip != "" {
				return d, nil
			}
		}
		if err == nil && (d.Status == "off" || d.Status == "archive") {
			return nil, &APIError{Op: fmt.Sprintf("droplet %d", id), Err: fmt.Errorf("droplet is %q instead of becoming active", d.Status)}
		}
		if err != nil && ctx.Err() == nil {
			return nil, err
		}
		if err := sleep(ctx, a.opts.Poll); err != nil || ctx.Err() != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, &APIError{Op: fmt.Sprintf("droplet %d", id), Err: fmt.Errorf("not active with an address within %v", timeout)}
			}
			return nil, ctx.Err()
		}
	}
}

// Attach attaches a volume to a droplet and waits for the action. An
// attach whose answer was lost is not repeated once the volume shows it is
// attached; an action that ends errored is tried again, twice.
func (a *API) Attach(ctx context.Context, volumeID string, dropletID int, timeout time.Duration) error {
	op := fmt.Sprintf("attach volume %s to droplet %d", volumeID, dropletID)
	attached := func(ctx context.Context) (bool, error) {
		v, err := a.GetVolume(ctx, volumeID)
		if err != nil {
			return false, err
		}
		return slices.Contains(v.DropletIDs, dropletID), nil
	}
	var last error
	for try := 0; try < 3; try++ {
		var act *godo.Action
		err := a.call(ctx, op, callOpts{exists: attached}, one(&act, "action", func(ctx context.Context) (*godo.Action, *godo.Response, error) {
			return a.godo.StorageActions.Attach(ctx, volumeID, dropletID)
		}))
		if errors.Is(err, errFound) {
			return nil
		}
		if err != nil {
			// An attach refused now may be one still running from a lost
			// answer: give it the time of an action to show up.
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if ok, _ := a.pollUntil(ctx, timeout, attached); ok {
				return nil
			}
			return err
		}
		err = a.waitAction(ctx, op, timeout, func(ctx context.Context) (*godo.Action, *godo.Response, error) {
			return a.godo.StorageActions.Get(ctx, volumeID, act.ID)
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrActionErrored) {
			return err
		}
		last = err
		a.opts.Logf("%s: %v; trying again", op, err)
	}
	return last
}

// Detach detaches a volume from a droplet and waits for the action.
func (a *API) Detach(ctx context.Context, volumeID string, dropletID int, timeout time.Duration) error {
	op := fmt.Sprintf("detach volume %s from droplet %d", volumeID, dropletID)
	var act *godo.Action
	err := a.do(ctx, op, one(&act, "action", func(ctx context.Context) (*godo.Action, *godo.Response, error) {
		return a.godo.StorageActions.DetachByDropletID(ctx, volumeID, dropletID)
	}))
	if err != nil {
		return err
	}
	return a.waitAction(ctx, op, timeout, func(ctx context.Context) (*godo.Action, *godo.Response, error) {
		return a.godo.StorageActions.Get(ctx, volumeID, act.ID)
	})
}

// pollUntil polls cond until it holds or timeout passes.
func (a *API) pollUntil(ctx context.Context, timeout time.Duration, cond func(ctx context.Context) (bool, error)) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond(ctx)
		if ok {
			return true, nil
		}
		if err != nil && ctx.Err() == nil {
			return false, err
		}
		if sleep(ctx, a.opts.Poll) != nil {
			return false, ctx.Err()
		}
	}
}

func (a *API) ListSizes(ctx context.Context) ([]godo.Size, error) {
	return listAll(ctx, a, "list sizes", func(ctx context.Context, opt *godo.ListOptions) ([]godo.Size, *godo.Response, error) {
		return a.godo.Sizes.List(ctx, opt)
	})
}

// deleteIgnoringNotFound runs a delete; a 404 (already gone) is success.
func (a *API) deleteIgnoringNotFound(ctx context.Context, op string, fn func(ctx context.Context) (*godo.Response, error)) error {
	err := a.do(ctx, op, fn)
	if IsNotFound(err) {
		return nil
	}
	return err
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// one adapts a call that answers one object for call and do: it stores
// the object in *out and makes an answer without it (a success whose body
// lacks it, or holds null) a failure, named after what, so that no caller
// ever dereferences a nil.
func one[T any](out **T, what string, fn func(ctx context.Context) (*T, *godo.Response, error)) func(ctx context.Context) (*godo.Response, error) {
	return func(ctx context.Context) (*godo.Response, error) {
		v, resp, err := fn(ctx)
		if err == nil && v == nil {
			err = fmt.Errorf("malformed answer: no %s in it", what)
		}
		*out = v
		return resp, err
	}
}
