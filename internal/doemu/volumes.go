package doemu

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"
)

// volume is a Volume; the emulator keeps nothing else about it.
type volume struct {
	Volume
}

var volumeNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,63}$`)

const (
	gib           = 1 << 30
	maxVolumeSize = 16 * 1024 // GiB
)

func (e *Emulator) volumeJSON(v *volume) map[string]any {
	return map[string]any{
		"id":               v.ID,
		"region":           e.regionJSON(v.Region),
		"droplet_ids":      jsonList(v.DropletIDs),
		"name":             v.Name,
		"description":      v.Description,
		"size_gigabytes":   v.SizeGigabytes,
		"created_at":       timeJSON(v.CreatedAt),
		"filesystem_type":  v.FilesystemType,
		"filesystem_label": v.FilesystemLabel,
		"tags":             jsonList(v.Tags),
	}
}

// sortedVolumes returns the volumes in creation order. Call with mu held.
func (e *Emulator) sortedVolumes() []*volume {
	vs := make([]*volume, 0, len(e.volumes))
	for _, v := range e.volumes {
		vs = append(vs, v)
	}
	sort.Slice(vs, func(i, j int) bool {
		if !vs[i].CreatedAt.Equal(vs[j].CreatedAt) {
			return vs[i].CreatedAt.Before(vs[j].CreatedAt)
		}
		return vs[i].ID < vs[j].ID
	})
	return vs
}

// volumeByName finds a volume by name and region. Call with mu held.
func (e *Emulator) volumeByName(name, region string) *volume {
	for _, v := range e.volumes {
		if v.Name == name && v.Region == region {
			return v
		}
	}
	return nil
}

func (e *Emulator) listVolumes(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	q := r.URL.Query()
	name, region := q.Get("name"), q.Get("region")
	var out []any
	for _, v := range e.sortedVolumes() {
		if (name == "" || v.Name == name) && (region == "" || v.Region == region) {
			out = append(out, e.volumeJSON(v))
		}
	}
	return e.paginate(r, "volumes", out)
}

func (e *Emulator) getVolume(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[r.param("volume")]
	if !ok {
		return reply{}, errNotFound()
	}
	return reply{http.StatusOK, map[string]any{"volume": e.volumeJSON(v)}}, nil
}

// VolumeCreate is the body of POST /v2/volumes.
type volumeCreate struct {
	Name            string   `json:"name"`
	Region          string   `json:"region"`
	SizeGigabytes   int64    `json:"size_gigabytes"`
	Description     string   `json:"description"`
	SnapshotID      string   `json:"snapshot_id"`
	FilesystemType  string   `json:"filesystem_type"`
	FilesystemLabel string   `json:"filesystem_label"`
	Tags            []string `json:"tags"`
}

func (e *Emulator) createVolume(r *request) (reply, error) {
	var req volumeCreate
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.newVolume(req, time.Now())
	if err != nil {
		return reply{}, err
	}
	return reply{http.StatusCreated, map[string]any{"volume": e.volumeJSON(v)}}, nil
}

// newVolume validates req as DigitalOcean does and creates the volume and
// its backing file. Call with mu held.
func (e *Emulator) newVolume(req volumeCreate, now time.Time) (*volume, error) {
	if !volumeNameRE.MatchString(req.Name) {
		return nil, errUnprocessable("name must be lowercase letters, numbers and hyphens, start with a letter and be at most 64 characters long")
	}
	var src *snapshot
	if req.SnapshotID != "" {
		s, ok := e.snapshots[req.SnapshotID]
		if !ok || s.ResourceType != "volume" {
			return nil, errUnprocessable("snapshot %s not found", req.SnapshotID)
		}
		src = s
		if req.Region != "" && req.Region != s.Region {
			return nil, errUnprocessable("snapshot %s is not available in region %s", s.ID, req.Region)
		}
		req.Region = s.Region
		if req.SizeGigabytes == 0 {
			req.SizeGigabytes = int64(s.MinDiskSize)
		}
		if req.SizeGigabytes < int64(s.MinDiskSize) {
			return nil, errUnprocessable("size_gigabytes must be at least the snapshot's min_disk_size of %d", s.MinDiskSize)
		}
	}
	if req.Region == "" {
		return nil, errUnprocessable("region is required")
	}
	if e.region(req.Region) == nil {
		return nil, errUnprocessable("invalid region %s", req.Region)
	}
	if req.SizeGigabytes < 1 || req.SizeGigabytes > maxVolumeSize {
		return nil, errUnprocessable("size_gigabytes must be between 1 and %d", maxVolumeSize)
	}
	switch req.FilesystemType {
	case "", "ext4", "xfs":
	default:
		return nil, errUnprocessable("filesystem_type must be ext4 or xfs")
	}
	if req.FilesystemLabel != "" && req.FilesystemType == "" {
		return nil, errUnprocessable("filesystem_label needs a filesystem_type")
	}
	if max := map[string]int{"ext4": 16, "xfs": 12}[req.FilesystemType]; len(req.FilesystemLabel) > max && max > 0 {
		return nil, errUnprocessable("filesystem_label must be at most %d characters for %s", max, req.FilesystemType)
	}
	if err := checkTagNames(req.Tags); err != nil {
		return nil, err
	}
	if e.volumeByName(req.Name, req.Region) != nil {
		return nil, errConflict("a volume with the name %s already exists in %s", req.Name, req.Region)
	}

	v := &volume{Volume: Volume{
		ID:              newUUID(),
		Name:            req.Name,
		Region:          req.Region,
		SizeGigabytes:   req.SizeGigabytes,
		Description:     req.Description,
		Tags:            e.useTags(req.Tags),
		FilesystemType:  req.FilesystemType,
		FilesystemLabel: req.FilesystemLabel,
		SnapshotID:      req.SnapshotID,
		CreatedAt:       now.UTC().Truncate(time.Second),
	}}
	v.File = filepath.Join(e.dataDir, "volumes", v.ID+".img")
	var err error
	if src != nil {
		err = copySparse(src.File, v.File)
	} else {
		err = createSparse(v.File)
	}
	if err == nil {
		err = os.Truncate(v.File, v.SizeGigabytes*gib)
	}
	// DigitalOcean formats a new empty volume when asked to.
	if err == nil && src == nil && v.FilesystemType == "ext4" {
		err = mkfsExt4(v.File, v.FilesystemLabel, nil)
	}
	if err == nil && src == nil && v.FilesystemType == "xfs" {
		err = mkfsXFS(v.File, v.FilesystemLabel)
	}
	if err != nil {
		os.Remove(v.File)
		return nil, fmt.Errorf("volume backing file: %w", err)
	}
	e.volumes[v.ID] = v
	return v, nil
}

func (e *Emulator) deleteVolume(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[r.param("volume")]
	if !ok {
		return reply{}, errNotFound()
	}
	return e.removeVolume(v)
}

func (e *Emulator) deleteVolumeByName(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	q := r.URL.Query()
	if q.Get("name") == "" || q.Get("region") == "" {
		return reply{}, errUnprocessable("name and region are required")
	}
	v := e.volumeByName(q.Get("name"), q.Get("region"))
	if v == nil {
		return reply{}, errNotFound()
	}
	return e.removeVolume(v)
}

// removeVolume deletes an unattached volume. Call with mu held.
func (e *Emulator) removeVolume(v *volume) (reply, error) {
	if len(v.DropletIDs) > 0 {
		return reply{}, errConflict("A volume that's attached to a Droplet cannot be deleted. Please detach it first before deleting.")
	}
	delete(e.volumes, v.ID)
	os.Remove(v.File)
	return reply{http.StatusNoContent, nil}, nil
}
