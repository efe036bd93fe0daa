package doemu

import (
	"net/http"
	"os"
	"slices"
	"strconv"
)

// volumeActionRequest is the body of POST /v2/volumes/{id}/actions and
// POST /v2/volumes/actions (which names the volume by name and region).
type volumeActionRequest struct {
	Type          string   `json:"type"`
	DropletID     int      `json:"droplet_id"`
	Region        string   `json:"region"`
	SizeGigabytes int64    `json:"size_gigabytes"`
	VolumeName    string   `json:"volume_name"`
	Tags          []string `json:"tags"` // attach: tags to apply to the volume
}

func (e *Emulator) volumeAction(r *request) (reply, error) {
	var req volumeActionRequest
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[r.param("volume")]
	if !ok {
		return reply{}, errNotFound()
	}
	return e.doVolumeAction(r, v, req)
}

func (e *Emulator) volumeActionByName(r *request) (reply, error) {
	var req volumeActionRequest
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if req.VolumeName == "" || req.Region == "" {
		return reply{}, errUnprocessable("volume_name and region are required")
	}
	v := e.volumeByName(req.VolumeName, req.Region)
	if v == nil {
		return reply{}, errNotFound()
	}
	return e.doVolumeAction(r, v, req)
}

// doVolumeAction starts an attach, detach or resize. Call with mu held.
func (e *Emulator) doVolumeAction(r *request, v *volume, req volumeActionRequest) (reply, error) {
	if req.Region != "" && req.Region != v.Region {
		return reply{}, errUnprocessable("volume %s is not in region %s", v.ID, req.Region)
	}
	switch req.Type {
	case "attach":
		if err := checkTagNames(req.Tags); err != nil {
			return reply{}, err
		}
		a, err := e.attach(r, v, req.DropletID)
		if err != nil {
			return reply{}, err
		}
		for _, t := range e.useTags(req.Tags) {
			if !hasTag(v.Tags, t) {
				v.Tags = append(v.Tags, t)
			}
		}
		return e.actionReply(http.StatusAccepted, a), nil
	case "detach":
		a, err := e.detach(r, v, req.DropletID)
		if err != nil {
			return reply{}, err
		}
		return e.actionReply(http.StatusAccepted, a), nil
	case "resize":
		if req.SizeGigabytes <= v.SizeGigabytes {
			return reply{}, errUnprocessable("new size must be greater than the current size of %d GiB", v.SizeGigabytes)
		}
		if req.SizeGigabytes > maxVolumeSize {
			return reply{}, errUnprocessable("size_gigabytes must be between 1 and %d", maxVolumeSize)
		}
		size, file := req.SizeGigabytes, v.File
		var ds []*droplet
		for _, id := range v.DropletIDs {
			if d, ok := e.droplets[id]; ok {
				ds = append(ds, d)
			}
		}
		a := e.startAction(r, "resize", "volume", 0, v.Region, v.ID, job{
			work: func() error {
				if err := os.Truncate(file, size*gib); err != nil {
					return err
				}
				for _, d := range ds {
					e.refreshDevice(d, v.ID)
				}
				return nil
			},
			finish: func(ok bool) {
				if ok {
					v.SizeGigabytes = size
				}
			},
		})
		return e.actionReply(http.StatusAccepted, a), nil
	default:
		return reply{}, errUnprocessable("type must be one of attach, detach, resize")
	}
}

// attach attaches v to a droplet. The attachment shows at once (so limits
// count it); its device appears when the action completes, and an errored
// action takes the attachment back. Call with mu held.
func (e *Emulator) attach(r *request, v *volume, dropletID int) (*action, error) {
	d, ok := e.droplets[dropletID]
	if !ok {
		return nil, errUnprocessable("droplet %d not found", dropletID)
	}
	if d.Region != v.Region {
		return nil, errUnprocessable("volume and droplet must be in the same region (volume in %s, droplet in %s)", v.Region, d.Region)
	}
	if slices.Contains(v.DropletIDs, dropletID) {
		return nil, errUnprocessable("volume %s is already attached to droplet %d", v.ID, dropletID)
	}
	if len(v.DropletIDs) > 0 {
		return nil, errUnprocessable("volume %s is already attached to another droplet", v.ID)
	}
	if len(d.VolumeIDs) >= MaxVolumesPerDroplet {
		return nil, errUnprocessable("droplet %d already has the maximum of %d volumes attached", d.ID, MaxVolumesPerDroplet)
	}
	v.DropletIDs = append(v.DropletIDs, d.ID)
	d.VolumeIDs = append(d.VolumeIDs, v.ID)
	name, file := v.Name, v.File
	return e.startAction(r, "attach_volume", "volume", 0, v.Region, v.ID, job{
		work: func() error { return e.attachDevice(d, v.ID, name, file) },
		finish: func(ok bool) {
			if !ok {
				v.DropletIDs = slices.DeleteFunc(v.DropletIDs, func(id int) bool { return id == d.ID })
				d.VolumeIDs = slices.DeleteFunc(d.VolumeIDs, func(id string) bool { return id == v.ID })
			}
		},
	}), nil
}

// detach detaches v from a droplet when the action completes. Call with mu
// held.
func (e *Emulator) detach(r *request, v *volume, dropletID int) (*action, error) {
	if !slices.Contains(v.DropletIDs, dropletID) {
		return nil, errUnprocessable("Attachment not found")
	}
	d := e.droplets[dropletID]
	return e.startAction(r, "detach_volume", "volume", 0, v.Region, v.ID, job{
		work: func() error {
			if d != nil {
				e.detachDevice(d, v.ID)
			}
			return nil
		},
		finish: func(ok bool) {
			if ok {
				e.unlink(v, dropletID)
			}
		},
	}), nil
}

// unlink removes the attachment between v and a droplet. Call with mu held.
func (e *Emulator) unlink(v *volume, dropletID int) {
	v.DropletIDs = slices.DeleteFunc(v.DropletIDs, func(id int) bool { return id == dropletID })
	if d, ok := e.droplets[dropletID]; ok {
		d.VolumeIDs = slices.DeleteFunc(d.VolumeIDs, func(id string) bool { return id == v.ID })
	}
}

func (e *Emulator) listVolumeActions(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := r.param("volume")
	if _, ok := e.volumes[id]; !ok {
		return reply{}, errNotFound()
	}
	return e.paginate(r, "actions", e.sortedActions(func(a *action) bool { return a.VolumeID == id }))
}

func (e *Emulator) getVolumeAction(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	aid, err := strconv.Atoi(r.param("action"))
	if err != nil {
		return reply{}, errNotFound()
	}
	a, ok := e.actions[aid]
	if !ok || a.VolumeID != r.param("volume") {
		return reply{}, errNotFound()
	}
	return e.actionReply(http.StatusOK, a), nil
}
