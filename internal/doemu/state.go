package doemu

import (
	"slices"
	"sort"
	"time"
)

// Volume is a block-storage volume as State reports it.
type Volume struct {
	ID              string    `json:"id"`
	Name            string    `json:"name"`
	Region          string    `json:"region"`
	SizeGigabytes   int64     `json:"size_gigabytes"`
	Description     string    `json:"description"`
	Tags            []string  `json:"tags"`
	DropletIDs      []int     `json:"droplet_ids"`
	FilesystemType  string    `json:"filesystem_type"`
	FilesystemLabel string    `json:"filesystem_label"`
	SnapshotID      string    `json:"snapshot_id"` // the snapshot it was created from, if any
	CreatedAt       time.Time `json:"created_at"`
	File            string    `json:"file"` // the backing file
}

// Snapshot is a volume snapshot as State reports it.
type Snapshot struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	ResourceID    string    `json:"resource_id"`   // the source volume
	ResourceType  string    `json:"resource_type"` // "volume"
	Region        string    `json:"region"`
	MinDiskSize   int       `json:"min_disk_size"`
	SizeGigabytes float64   `json:"size_gigabytes"`
	Tags          []string  `json:"tags"`
	CreatedAt     time.Time `json:"created_at"`
	File          string    `json:"file"` // the frozen backing file
}

// Droplet is a droplet as State reports it.
type Droplet struct {
	ID        int       `json:"id"`
	Name      string    `json:"name"`
	Region    string    `json:"region"`
	Size      string    `json:"size"`
	Image     string    `json:"image"`
	Status    string    `json:"status"` // "new", "active" or "off"
	Tags      []string  `json:"tags"`
	VolumeIDs []string  `json:"volume_ids"`
	SSHKeyIDs []int     `json:"ssh_key_ids"` // the account keys named at creation
	UserData  string    `json:"-"`           // as given at creation; never in JSON: it may hold private host keys
	IPv4      string    `json:"ipv4"`        // empty until active
	SSHPort   int       `json:"ssh_port"`    // port of the droplet's sshd on IPv4 (0 without Options.SSH)
	Root      string    `json:"root"`        // the droplet's directory: DOSVOB_ROOT when logged in over SSH
	CreatedAt time.Time `json:"created_at"`
}

// Key is an account SSH key.
type Key struct {
	ID          int    `json:"id"`
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	PublicKey   string `json:"public_key"`
}

// State is a deep copy of every resource in the emulated account, each list
// sorted (volumes and snapshots by region and name then ID, droplets and
// keys by ID, tags by name), so two States compare with reflect.DeepEqual.
type State struct {
	Volumes   []Volume   `json:"volumes"`
	Snapshots []Snapshot `json:"snapshots"`
	Droplets  []Droplet  `json:"droplets"`
	Keys      []Key      `json:"keys"`
	Tags      []string   `json:"tags"`
}

// State returns a deep copy of every resource.
func (e *Emulator) State() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s State
	for _, v := range e.volumes {
		c := v.Volume
		c.Tags = slices.Clone(c.Tags)
		c.DropletIDs = slices.Clone(c.DropletIDs)
		s.Volumes = append(s.Volumes, c)
	}
	sort.Slice(s.Volumes, func(i, j int) bool {
		a, b := s.Volumes[i], s.Volumes[j]
		if a.Region != b.Region {
			return a.Region < b.Region
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.ID < b.ID
	})
	for _, sn := range e.snapshots {
		c := sn.Snapshot
		c.Tags = slices.Clone(c.Tags)
		s.Snapshots = append(s.Snapshots, c)
	}
	sort.Slice(s.Snapshots, func(i, j int) bool {
		a, b := s.Snapshots[i], s.Snapshots[j]
		if a.Region != b.Region {
			return a.Region < b.Region
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.ID < b.ID
	})
	for _, d := range e.droplets {
		c := d.Droplet
		c.Tags = slices.Clone(c.Tags)
		c.VolumeIDs = slices.Clone(c.VolumeIDs)
		c.SSHKeyIDs = slices.Clone(c.SSHKeyIDs)
		s.Droplets = append(s.Droplets, c)
	}
	sort.Slice(s.Droplets, func(i, j int) bool { return s.Droplets[i].ID < s.Droplets[j].ID })
	for _, k := range e.keys {
		s.Keys = append(s.Keys, *k)
	}
	sort.Slice(s.Keys, func(i, j int) bool { return s.Keys[i].ID < s.Keys[j].ID })
	for _, t := range e.tags {
		s.Tags = append(s.Tags, t)
	}
	sort.Strings(s.Tags)
	return s
}

// VolumeFile returns the backing file of a volume ("" if there is none).
// Tests write into it to give a volume content.
func (e *Emulator) VolumeFile(volumeID string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if v, ok := e.volumes[volumeID]; ok {
		return v.File
	}
	return ""
}

// SnapshotFile returns the frozen backing file of a snapshot ("" if none).
func (e *Emulator) SnapshotFile(snapshotID string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s, ok := e.snapshots[snapshotID]; ok {
		return s.File
	}
	return ""
}

// Requests returns how many API requests the emulator has answered.
func (e *Emulator) Requests() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.requests
}

// Call is one answered API request, for tests that check how a client
// called the API (no blind retries, no calls at all in a dry run, ...).
type Call struct {
	Method string    `json:"method"`
	Path   string    `json:"path"` // the URL path, without the query
	Query  string    `json:"query"`
	Status int       `json:"status"` // 0: no answer (a hanging fault)
	Time   time.Time `json:"time"`
}

// Calls returns every API request answered so far (not the emulator's own
// /emulator/ endpoints), oldest first.
func (e *Emulator) Calls() []Call {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.calls)
}

// jsonList copies s for a response body, as an empty array rather than
// null when it is empty: DigitalOcean's schema requires arrays there.
func jsonList[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return slices.Clone(s)
}
