package doemu

import (
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

var tagNameRE = regexp.MustCompile(`^[a-zA-Z0-9_\-:]{1,255}$`)

func checkTagNames(names []string) error {
	for _, n := range names {
		if !tagNameRE.MatchString(n) {
			return errUnprocessable("tag names may contain letters, numbers, colons, dashes and underscores, up to 255 characters; %q is not valid", n)
		}
	}
	return nil
}

// useTags creates the tags that do not exist yet and returns names in their
// canonical capitalization (the first one used), without duplicates. Call
// with mu held.
func (e *Emulator) useTags(names []string) []string {
	var out []string
	for _, n := range names {
		c := e.canonicalTag(n)
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// canonicalTag creates a tag if needed and returns its canonical name. Call
// with mu held.
func (e *Emulator) canonicalTag(n string) string {
	key := strings.ToLower(n)
	if c, ok := e.tags[key]; ok {
		return c
	}
	e.tags[key] = n
	return n
}

func hasTag(tags []string, name string) bool {
	for _, t := range tags {
		if strings.EqualFold(t, name) {
			return true
		}
	}
	return false
}

func removeTag(tags []string, name string) []string {
	return slices.DeleteFunc(tags, func(t string) bool { return strings.EqualFold(t, name) })
}

// tagJSON renders a tag with the counts of what carries it. Call with mu
// held.
func (e *Emulator) tagJSON(name string) map[string]any {
	type meta struct {
		count int
		last  string
	}
	var drops, vols, snaps meta
	for _, d := range e.sortedDroplets() {
		if hasTag(d.Tags, name) {
			drops.count++
			drops.last = e.url + "v2/droplets/" + itoa(d.ID)
		}
	}
	for _, v := range e.sortedVolumes() {
		if hasTag(v.Tags, name) {
			vols.count++
			vols.last = e.url + "v2/volumes/" + v.ID
		}
	}
	for _, s := range e.snapshots {
		if hasTag(s.Tags, name) {
			snaps.count++
			snaps.last = e.url + "v2/snapshots/" + s.ID
		}
	}
	m := func(x meta) map[string]any {
		out := map[string]any{"count": x.count}
		if x.last != "" {
			out["last_tagged_uri"] = x.last
		}
		return out
	}
	total := meta{count: drops.count + vols.count + snaps.count}
	for _, x := range []meta{drops, vols, snaps} {
		if x.last != "" {
			total.last = x.last
		}
	}
	res := m(total)
	res["droplets"] = m(drops)
	res["images"] = m(meta{})
	res["volumes"] = m(vols)
	res["volume_snapshots"] = m(snaps)
	res["databases"] = m(meta{})
	return map[string]any{"name": name, "resources": res}
}

func (e *Emulator) listTags(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := make([]string, 0, len(e.tags))
	for _, n := range e.tags {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]any, 0, len(names))
	for _, n := range names {
		out = append(out, e.tagJSON(n))
	}
	return e.paginate(r, "tags", out)
}

func (e *Emulator) createTag(r *request) (reply, error) {
	var req struct {
		Name string `json:"name"`
	}
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	if err := checkTagNames([]string{req.Name}); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.canonicalTag(req.Name)
	return reply{http.StatusCreated, map[string]any{"tag": e.tagJSON(c)}}, nil
}

// tagParam finds the tag named in the path. Call with mu held.
func (e *Emulator) tagParam(r *request) (string, error) {
	c, ok := e.tags[strings.ToLower(r.param("tag"))]
	if !ok {
		return "", errNotFound()
	}
	return c, nil
}

func (e *Emulator) getTag(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.tagParam(r)
	if err != nil {
		return reply{}, err
	}
	return reply{http.StatusOK, map[string]any{"tag": e.tagJSON(c)}}, nil
}

func (e *Emulator) deleteTag(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.tagParam(r)
	if err != nil {
		return reply{}, err
	}
	for _, d := range e.droplets {
		d.Tags = removeTag(d.Tags, c)
	}
	for _, v := range e.volumes {
		v.Tags = removeTag(v.Tags, c)
	}
	for _, s := range e.snapshots {
		s.Tags = removeTag(s.Tags, c)
	}
	delete(e.tags, strings.ToLower(c))
	return reply{http.StatusNoContent, nil}, nil
}

type tagResourcesRequest struct {
	Resources []struct {
		ResourceID   string `json:"resource_id"`
		ResourceType string `json:"resource_type"`
	} `json:"resources"`
}

func (e *Emulator) tagResources(r *request) (reply, error) {
	return e.retag(r, true)
}

func (e *Emulator) untagResources(r *request) (reply, error) {
	return e.retag(r, false)
}

// retag adds (or removes) a tag to (from) the listed resources. Nothing
// changes unless every resource exists.
func (e *Emulator) retag(r *request, add bool) (reply, error) {
	var req tagResourcesRequest
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.tagParam(r)
	if err != nil {
		return reply{}, err
	}
	if len(req.Resources) == 0 {
		return reply{}, errUnprocessable("resources must not be empty")
	}
	var targets []*[]string
	for _, res := range req.Resources {
		switch res.ResourceType {
		case "droplet":
			id, err := strconv.Atoi(res.ResourceID)
			d := e.droplets[id]
			if err != nil || d == nil {
				return reply{}, errUnprocessable("droplet %s not found", res.ResourceID)
			}
			targets = append(targets, &d.Tags)
		case "volume":
			v := e.volumes[res.ResourceID]
			if v == nil {
				return reply{}, errUnprocessable("volume %s not found", res.ResourceID)
			}
			targets = append(targets, &v.Tags)
		case "volume_snapshot":
			s := e.snapshots[res.ResourceID]
			if s == nil {
				return reply{}, errUnprocessable("volume snapshot %s not found", res.ResourceID)
			}
			targets = append(targets, &s.Tags)
		default:
			return reply{}, errUnprocessable("resource_type %q is not supported", res.ResourceType)
		}
	}
	for _, t := range targets {
		if add {
			if !hasTag(*t, c) {
				*t = append(*t, c)
			}
		} else {
			*t = removeTag(*t, c)
		}
	}
	return reply{http.StatusNoContent, nil}, nil
}
