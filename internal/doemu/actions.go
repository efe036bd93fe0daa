package doemu

import (
	"net/http"
	"sort"
	"strconv"
	"time"
)

// action is an asynchronous operation: "in-progress" until it completes or
// errors, ActionDelay after it started.
type action struct {
	ID           int
	Status       string
	Type         string
	StartedAt    time.Time
	CompletedAt  time.Time
	ResourceID   int // droplet ID, 0 for volumes (whose IDs are not integers)
	ResourceType string
	Region       string
	VolumeID     string // for volume actions
}

func (e *Emulator) actionJSON(a *action) map[string]any {
	m := map[string]any{
		"id":            a.ID,
		"status":        a.Status,
		"type":          a.Type,
		"started_at":    timeJSON(a.StartedAt),
		"completed_at":  nil,
		"resource_id":   nil,
		"resource_type": a.ResourceType,
		"region":        e.regionJSON(a.Region),
		"region_slug":   a.Region,
	}
	if !a.CompletedAt.IsZero() {
		m["completed_at"] = timeJSON(a.CompletedAt)
	}
	if a.ResourceID != 0 {
		m["resource_id"] = a.ResourceID
	}
	return m
}

// job is the work of an action. prepare runs under the lock right away and
// validates; work runs later without the lock (devices, sshd); finish runs
// under the lock when the action completes (ok) or errors (!ok).
type job struct {
	work   func() error
	finish func(ok bool)
}

// startAction records a new in-progress action and completes it after the
// action delay. Call with mu held.
func (e *Emulator) startAction(r *request, typ, resType string, resID int, region, volumeID string, j job) *action {
	a := &action{
		ID:           e.newID(2000000000),
		Status:       "in-progress",
		Type:         typ,
		StartedAt:    time.Now(),
		ResourceID:   resID,
		ResourceType: resType,
		Region:       region,
		VolumeID:     volumeID,
	}
	e.actions[a.ID] = a
	errored := r != nil && r.errored
	e.afterLocked(e.opts.ActionDelay, func() {
		ok := !errored
		if ok && j.work != nil {
			if err := j.work(); err != nil {
				e.logf("action %d (%s): %v", a.ID, typ, err)
				ok = false
			}
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if j.finish != nil {
			j.finish(ok)
		}
		a.CompletedAt = time.Now()
		if ok {
			a.Status = "completed"
		} else {
			a.Status = "errored"
		}
	})
	return a
}

func (e *Emulator) actionReply(status int, a *action) reply {
	return reply{status, map[string]any{"action": e.actionJSON(a)}}
}

func (e *Emulator) sortedActions(keep func(*action) bool) []any {
	var as []*action
	for _, a := range e.actions {
		if keep(a) {
			as = append(as, a)
		}
	}
	sort.Slice(as, func(i, j int) bool { return as[i].ID > as[j].ID }) // newest first
	out := make([]any, 0, len(as))
	for _, a := range as {
		out = append(out, e.actionJSON(a))
	}
	return out
}

func (e *Emulator) listActions(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.paginate(r, "actions", e.sortedActions(func(*action) bool { return true }))
}

func (e *Emulator) getAction(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id, err := strconv.Atoi(r.param("action"))
	if err != nil {
		return reply{}, errNotFound()
	}
	a, ok := e.actions[id]
	if !ok {
		return reply{}, errNotFound()
	}
	return e.actionReply(http.StatusOK, a), nil
}

func itoa(n int) string { return strconv.Itoa(n) }
