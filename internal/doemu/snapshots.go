package doemu

import (
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// snapshot is a volume Snapshot; the emulator keeps nothing else about it.
type snapshot struct {
	Snapshot
}

func snapshotJSON(s *snapshot) map[string]any {
	return map[string]any{
		"id":             s.ID,
		"name":           s.Name,
		"created_at":     timeJSON(s.CreatedAt),
		"regions":        []string{s.Region},
		"min_disk_size":  s.MinDiskSize,
		"size_gigabytes": s.SizeGigabytes,
		"resource_id":    s.ResourceID,
		"resource_type":  s.ResourceType,
		"tags":           jsonList(s.Tags),
	}
}

func (e *Emulator) sortedSnapshots(keep func(*snapshot) bool) []any {
	var ss []*snapshot
	for _, s := range e.snapshots {
		if keep(s) {
			ss = append(ss, s)
		}
	}
	sort.Slice(ss, func(i, j int) bool {
		if !ss[i].CreatedAt.Equal(ss[j].CreatedAt) {
			return ss[i].CreatedAt.Before(ss[j].CreatedAt)
		}
		return ss[i].ID < ss[j].ID
	})
	out := make([]any, 0, len(ss))
	for _, s := range ss {
		out = append(out, snapshotJSON(s))
	}
	return out
}

func (e *Emulator) listSnapshots(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	q := r.URL.Query()
	typ, region := q.Get("resource_type"), q.Get("region")
	if typ == "droplet" {
		return e.paginate(r, "snapshots", nil) // droplet snapshots are not emulated
	}
	if typ != "" && typ != "volume" {
		return reply{}, errUnprocessable("resource_type must be droplet or volume")
	}
	return e.paginate(r, "snapshots", e.sortedSnapshots(func(s *snapshot) bool {
		return region == "" || s.Region == region
	}))
}

func (e *Emulator) listVolumeSnapshots(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := r.param("volume")
	if _, ok := e.volumes[id]; !ok {
		return reply{}, errNotFound()
	}
	return e.paginate(r, "snapshots", e.sortedSnapshots(func(s *snapshot) bool { return s.ResourceID == id }))
}

func (e *Emulator) getSnapshot(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.snapshots[r.param("snapshot")]
	if !ok {
		return reply{}, errNotFound()
	}
	return reply{http.StatusOK, map[string]any{"snapshot": snapshotJSON(s)}}, nil
}

func (e *Emulator) deleteSnapshot(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.snapshots[r.param("snapshot")]
	if !ok {
		return reply{}, errNotFound()
	}
	delete(e.snapshots, s.ID)
	os.Remove(s.File)
	return reply{http.StatusNoContent, nil}, nil
}

type snapshotCreate struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

func (e *Emulator) createSnapshot(r *request) (reply, error) {
	var req snapshotCreate
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[r.param("volume")]
	if !ok {
		return reply{}, errNotFound()
	}
	s, err := e.newSnapshot(v, req, time.Now(), true)
	if err != nil {
		return reply{}, err
	}
	return reply{http.StatusCreated, map[string]any{"snapshot": snapshotJSON(s)}}, nil
}

// newSnapshot freezes v's backing file into a new snapshot. Call with mu
// held. limits applies DigitalOcean's rate and count limits.
func (e *Emulator) newSnapshot(v *volume, req snapshotCreate, now time.Time, limits bool) (*snapshot, error) {
	if req.Name == "" {
		return nil, errUnprocessable("name is required")
	}
	if len(req.Name) > 255 {
		return nil, errUnprocessable("name must be at most 255 characters long")
	}
	if err := checkTagNames(req.Tags); err != nil {
		return nil, err
	}
	if limits {
		count := 0
		var newest time.Time
		for _, s := range e.snapshots {
			if s.ResourceID == v.ID {
				count++
				if s.CreatedAt.After(newest) {
					newest = s.CreatedAt
				}
			}
		}
		if last, ok := e.lastSnapshot[v.ID]; ok && last.After(newest) {
			newest = last
		}
		if e.opts.SnapshotInterval > 0 && !newest.IsZero() && now.Sub(newest) < e.opts.SnapshotInterval {
			return nil, errTooMany("this operation is rate-limited")
		}
		if count >= MaxSnapshotsPerVolume {
			return nil, errUnprocessable("volume %s already has the maximum of %d snapshots", v.ID, MaxSnapshotsPerVolume)
		}
	}
	s := &snapshot{Snapshot: Snapshot{
		ID:           newUUID(),
		Name:         req.Name,
		ResourceID:   v.ID,
		ResourceType: "volume",
		Region:       v.Region,
		MinDiskSize:  int(v.SizeGigabytes),
		Tags:         e.useTags(req.Tags),
		CreatedAt:    now.UTC().Truncate(time.Second),
	}}
	s.File = filepath.Join(e.dataDir, "snapshots", s.ID+".img")
	if err := copySparse(v.File, s.File); err != nil {
		os.Remove(s.File)
		return nil, fmt.Errorf("snapshot backing file: %w", err)
	}
	used, err := allocatedBytes(s.File)
	if err != nil {
		os.Remove(s.File)
		return nil, err
	}
	s.SizeGigabytes = math.Ceil(float64(used)/gib*100) / 100
	e.snapshots[s.ID] = s
	e.lastSnapshot[v.ID] = now
	return s, nil
}
