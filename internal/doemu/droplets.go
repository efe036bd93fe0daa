package doemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// droplet is a Droplet with what its emulation needs.
type droplet struct {
	Droplet
	authorized []string // public keys for root's authorized_keys

	devMu   sync.Mutex // guards the fields below
	stopped bool       // deleted: no more devices or sshd
	devices map[string]*device
	sshd    *sshdProc
	addr    string // reserved loopback address
}

// device is an attached volume as the droplet sees it.
type device struct {
	link string // $DOSVOB_ROOT/dev/disk/by-id/scsi-0DO_Volume_<name>
	loop string // /dev/loopN, or "" when the link points at the backing file
}

var dropletNameRE = regexp.MustCompile(`^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$`)

const maxUserData = 64 << 10

func (e *Emulator) dropletJSON(d *droplet) map[string]any {
	sz := e.size(d.Size)
	var sizeObj map[string]any
	mem, vcpus, disk := 0, 0, 0
	if sz != nil {
		sizeObj = sizeJSON(sz)
		mem, vcpus, disk = sz.Memory, sz.VCPUs, sz.Disk
	} else {
		sizeObj = sizeJSON(&Size{Slug: d.Size})
	}
	var imageObj map[string]any
	if im := e.image(d.Image); im != nil {
		imageObj = e.imageJSON(im)
	} else {
		imageObj = e.imageJSON(&Image{Slug: d.Image, Name: d.Image, Distribution: "Unknown"})
	}
	v4 := []any{}
	if d.IPv4 != "" {
		v4 = append(v4, map[string]any{
			"ip_address": d.IPv4,
			"netmask":    "255.0.0.0",
			"gateway":    "127.0.0.1",
			"type":       "public",
		})
	}
	return map[string]any{
		"id":                 d.ID,
		"name":               d.Name,
		"memory":             mem,
		"vcpus":              vcpus,
		"disk":               disk,
		"locked":             false,
		"status":             d.Status,
		"kernel":             nil,
		"created_at":         timeJSON(d.CreatedAt),
		"features":           []string{},
		"backup_ids":         []int{},
		"next_backup_window": backupWindow(d.CreatedAt),
		"snapshot_ids":       []int{},
		"image":              imageObj,
		"volume_ids":         jsonList(d.VolumeIDs),
		"size":               sizeObj,
		"size_slug":          d.Size,
		"networks":           map[string]any{"v4": v4, "v6": []any{}},
		"region":             e.regionJSON(d.Region),
		"tags":               jsonList(d.Tags),
		"vpc_uuid":           "",
	}
}

// backupWindow is a droplet's next backup window. DigitalOcean answers null
// for droplets without backups, which its own schema rejects; the emulator
// answers a window, the next day's 02:00-06:00 UTC.
func backupWindow(created time.Time) map[string]string {
	day := created.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
	return map[string]string{"start": timeJSON(day.Add(2 * time.Hour)), "end": timeJSON(day.Add(6 * time.Hour))}
}

func (e *Emulator) sortedDroplets() []*droplet {
	ds := make([]*droplet, 0, len(e.droplets))
	for _, d := range e.droplets {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].ID < ds[j].ID })
	return ds
}

func (e *Emulator) listDroplets(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	q := r.URL.Query()
	tag, name := q.Get("tag_name"), q.Get("name")
	var out []any
	for _, d := range e.sortedDroplets() {
		if tag != "" && !hasTag(d.Tags, tag) {
			continue
		}
		if name != "" && d.Name != name {
			continue
		}
		out = append(out, e.dropletJSON(d))
	}
	return e.paginate(r, "droplets", out)
}

func (e *Emulator) dropletParam(r *request) (*droplet, error) {
	id, err := strconv.Atoi(r.param("droplet"))
	if err != nil {
		return nil, errNotFound()
	}
	d, ok := e.droplets[id]
	if !ok {
		return nil, errNotFound()
	}
	return d, nil
}

func (e *Emulator) getDroplet(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := e.dropletParam(r)
	if err != nil {
		return reply{}, err
	}
	return reply{http.StatusOK, map[string]any{"droplet": e.dropletJSON(d)}}, nil
}

// dropletCreate is the body of POST /v2/droplets.
type dropletCreate struct {
	Name     string            `json:"name"`
	Names    []string          `json:"names"`
	Region   string            `json:"region"`
	Size     string            `json:"size"`
	Image    json.RawMessage   `json:"image"`
	SSHKeys  []json.RawMessage `json:"ssh_keys"`
	Tags     []string          `json:"tags"`
	UserData string            `json:"user_data"`
	Volumes  []json.RawMessage `json:"volumes"`
}

// rawString turns a JSON string or number into its text.
func rawString(m json.RawMessage) string {
	var s string
	if json.Unmarshal(m, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(m, &n) == nil {
		return n.String()
	}
	return strings.TrimSpace(string(m))
}

func (e *Emulator) createDroplet(r *request) (reply, error) {
	var req dropletCreate
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(req.Names) > 0 {
		return reply{}, errUnprocessable("creating several droplets at once is not emulated")
	}
	d, a, err := e.newDroplet(r, req, time.Now())
	if err != nil {
		return reply{}, err
	}
	return reply{http.StatusAccepted, map[string]any{
		"droplet": e.dropletJSON(d),
		"links": map[string]any{"actions": []any{map[string]any{
			"id":   a.ID,
			"rel":  "create",
			"href": e.url + "v2/actions/" + itoa(a.ID),
		}}},
	}}, nil
}

// newDroplet validates req as DigitalOcean does, records a "new" droplet
// and starts its create action. Call with mu held.
func (e *Emulator) newDroplet(r *request, req dropletCreate, now time.Time) (*droplet, *action, error) {
	d, j, err := e.prepareDroplet(req, now)
	if err != nil {
		return nil, nil, err
	}
	a := e.startAction(r, "create", "droplet", d.ID, d.Region, "", j)
	return d, a, nil
}

// createDropletNow creates a droplet that is active at once (a seeded one).
// Call with mu held.
func (e *Emulator) createDropletNow(req dropletCreate, now time.Time) (*droplet, error) {
	d, j, err := e.prepareDroplet(req, now)
	if err != nil {
		return nil, err
	}
	err = j.work()
	j.finish(err == nil)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// prepareDroplet validates req, records the droplet as "new" and returns
// the job that boots it. Call with mu held.
func (e *Emulator) prepareDroplet(req dropletCreate, now time.Time) (*droplet, job, error) {
	if len(req.Name) > 255 || !dropletNameRE.MatchString(req.Name) {
		return nil, job{}, errUnprocessable("Name Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)")
	}
	rg := e.region(req.Region)
	if rg == nil || (rg.Available != nil && !*rg.Available) {
		return nil, job{}, errUnprocessable("You specified an invalid region for Droplet creation.")
	}
	if e.size(req.Size) == nil {
		return nil, job{}, errUnprocessable("You specified an invalid size for Droplet creation.")
	}
	if !slices.Contains(rg.Sizes, req.Size) {
		return nil, job{}, errUnprocessable("Size is not available in this region.")
	}
	im := e.image(rawString(req.Image))
	if im == nil {
		return nil, job{}, errUnprocessable("You specified an invalid image for Droplet creation.")
	}
	if len(req.UserData) > maxUserData {
		return nil, job{}, errUnprocessable("user_data must be at most 64 KiB")
	}
	if err := checkTagNames(req.Tags); err != nil {
		return nil, job{}, err
	}
	var keyIDs []int
	var authorized []string
	for _, raw := range req.SSHKeys {
		k := e.keyByRef(rawString(raw))
		if k == nil {
			return nil, job{}, errUnprocessable("Unable to find the SSH key %s", rawString(raw))
		}
		keyIDs = append(keyIDs, k.ID)
		authorized = append(authorized, k.PublicKey)
	}
	var vols []*volume
	for _, raw := range req.Volumes {
		ref := rawString(raw)
		var obj struct{ ID, Name string }
		if json.Unmarshal(raw, &obj) == nil {
			ref = obj.ID
			if ref == "" {
				ref = obj.Name
			}
		}
		v := e.volumes[ref]
		if v == nil {
			v = e.volumeByName(ref, req.Region)
		}
		if v == nil || v.Region != req.Region || len(v.DropletIDs) > 0 || slices.Contains(vols, v) {
			return nil, job{}, errUnprocessable("Invalid volume allocations")
		}
		vols = append(vols, v)
	}
	if len(vols) > MaxVolumesPerDroplet {
		return nil, job{}, errUnprocessable("Invalid volume allocations")
	}
	if len(e.droplets) >= e.account.DropletLimit {
		return nil, job{}, errUnprocessable("creating this droplet will exceed your droplet limit")
	}

	d := &droplet{
		Droplet: Droplet{
			ID:        e.newID(500000000),
			Name:      req.Name,
			Region:    req.Region,
			Size:      req.Size,
			Image:     im.Slug,
			Status:    "new",
			Tags:      e.useTags(req.Tags),
			SSHKeyIDs: keyIDs,
			UserData:  req.UserData,
			CreatedAt: now.UTC().Truncate(time.Second),
		},
		authorized: authorized,
		devices:    map[string]*device{},
	}
	d.Root = filepath.Join(e.dataDir, "droplets", itoa(d.ID))
	// A data directory kept from an earlier run may hold a directory of the
	// same name: a new droplet starts empty.
	if err := os.RemoveAll(d.Root); err != nil {
		return nil, job{}, fmt.Errorf("droplet directory: %w", err)
	}
	for _, sub := range []string{"dev/disk/by-id", "opt", "etc/ssh", "root/.ssh", "tmp"} {
		if err := os.MkdirAll(filepath.Join(d.Root, sub), 0o755); err != nil {
			return nil, job{}, fmt.Errorf("droplet directory: %w", err)
		}
	}
	e.droplets[d.ID] = d
	type att struct{ id, name, file string }
	var atts []att
	for _, v := range vols {
		v.DropletIDs = append(v.DropletIDs, d.ID)
		d.VolumeIDs = append(d.VolumeIDs, v.ID)
		atts = append(atts, att{v.ID, v.Name, v.File})
	}
	return d, job{
		work: func() error {
			if err := e.boot(d); err != nil {
				return err
			}
			for _, at := range atts {
				if err := e.attachDevice(d, at.id, at.name, at.file); err != nil {
					return err
				}
			}
			return nil
		},
		finish: func(ok bool) {
			if ok && !d.deleted() {
				d.Status = "active"
				d.devMu.Lock()
				d.IPv4 = d.addr
				if d.sshd != nil {
					d.SSHPort = e.opts.SSHPort
				}
				d.devMu.Unlock()
			}
		},
	}, nil
}

func (d *droplet) deleted() bool {
	d.devMu.Lock()
	defer d.devMu.Unlock()
	return d.stopped
}

func (e *Emulator) deleteDroplet(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := e.dropletParam(r)
	if err != nil {
		return reply{}, err
	}
	e.removeDroplet(r, d)
	return reply{http.StatusNoContent, nil}, nil
}

func (e *Emulator) deleteDropletsByTag(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	tag := r.URL.Query().Get("tag_name")
	if tag == "" {
		return reply{}, errUnprocessable("tag_name is required")
	}
	for _, d := range e.sortedDroplets() {
		if hasTag(d.Tags, tag) {
			e.removeDroplet(r, d)
		}
	}
	return reply{http.StatusNoContent, nil}, nil
}

// removeDroplet deletes a droplet at once; its volumes stay attached for the
// detach delay (or the request's LingerDetach fault), as on DigitalOcean.
// Call with mu held.
func (e *Emulator) removeDroplet(r *request, d *droplet) {
	delete(e.droplets, d.ID)
	vols := slices.Clone(d.VolumeIDs)
	linger := e.opts.DetachDelay
	if r != nil && r.linger > 0 {
		linger = r.linger
	}
	e.deleted[d] = true
	e.afterLocked(0, func() {
		e.stopDroplet(d)
		os.RemoveAll(d.Root)
		e.mu.Lock()
		delete(e.deleted, d)
		e.mu.Unlock()
	})
	detach := func() {
		for _, id := range vols {
			if v, ok := e.volumes[id]; ok {
				e.unlink(v, d.ID)
			}
		}
	}
	if len(vols) == 0 {
		return
	}
	if linger == 0 {
		detach()
		return
	}
	e.afterLocked(linger, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		detach()
	})
}

// stopDroplet stops a droplet's sshd and frees its devices, for good.
func (e *Emulator) stopDroplet(d *droplet) {
	d.devMu.Lock()
	defer d.devMu.Unlock()
	d.stopped = true
	e.stopSSHD(d)
	for id := range d.devices {
		e.freeDevice(d, id)
	}
	if d.addr != "" {
		releaseAddr(d.addr)
		d.addr = ""
	}
}

type dropletActionRequest struct {
	Type string `json:"type"`
}

func (e *Emulator) dropletAction(r *request) (reply, error) {
	var req dropletActionRequest
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := e.dropletParam(r)
	if err != nil {
		return reply{}, err
	}
	if d.Status == "new" {
		return reply{}, errUnprocessable("Droplet is currently being created")
	}
	var j job
	switch req.Type {
	case "power_off", "shutdown":
		j = job{
			work: func() error { d.devMu.Lock(); defer d.devMu.Unlock(); e.stopSSHD(d); return nil },
			finish: func(ok bool) {
				if ok {
					d.Status = "off"
				}
			},
		}
	case "power_on", "reboot", "power_cycle":
		j = job{
			work: func() error {
				d.devMu.Lock()
				defer d.devMu.Unlock()
				e.stopSSHD(d)
				return e.startSSHDLocked(d)
			},
			finish: func(ok bool) {
				if ok {
					d.Status = "active"
				}
			},
		}
	default:
		return reply{}, errUnprocessable("action type %s is not supported", req.Type)
	}
	a := e.startAction(r, req.Type, "droplet", d.ID, d.Region, "", j)
	return e.actionReply(http.StatusCreated, a), nil
}

func (e *Emulator) listDropletActions(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := e.dropletParam(r)
	if err != nil {
		return reply{}, err
	}
	return e.paginate(r, "actions", e.sortedActions(func(a *action) bool {
		return a.ResourceType == "droplet" && a.ResourceID == d.ID
	}))
}

func (e *Emulator) getDropletAction(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := e.dropletParam(r)
	if err != nil {
		return reply{}, err
	}
	aid, err := strconv.Atoi(r.param("action"))
	if err != nil {
		return reply{}, errNotFound()
	}
	a, ok := e.actions[aid]
	if !ok || a.ResourceType != "droplet" || a.ResourceID != d.ID {
		return reply{}, errNotFound()
	}
	return e.actionReply(http.StatusOK, a), nil
}
