package doemu

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/godo"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/dosvob/dosvob/internal/testenv"
)

// specPath finds DigitalOcean's OpenAPI description: ../shared/do-openapi.yaml
// next to the module root. Without it the test skips, or fails when CI=true.
func specPath(t *testing.T) string {
	p := filepath.Join(filepath.Dir(testenv.RepoRoot(t)), "shared", "do-openapi.yaml")
	if _, err := os.Stat(p); err != nil {
		testenv.SkipOrFail(t, "DigitalOcean's OpenAPI description is not at %s", p)
	}
	return p
}

// exchange is one recorded API call.
type exchange struct {
	req      *http.Request
	status   int
	header   http.Header
	respBody []byte
}

// recorder is a transport that keeps every exchange.
type recorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	log  []exchange
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	r.mu.Lock()
	r.log = append(r.log, exchange{req.Clone(context.Background()), resp.StatusCode, resp.Header.Clone(), body})
	r.mu.Unlock()
	return resp, nil
}

// specRoute finds the operation of the spec that serves method and path:
// the template matching it with the most literal segments.
func specRoute(doc *openapi3.T, method, path string) (*routers.Route, map[string]string) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	var best *routers.Route
	var bestParams map[string]string
	bestLiterals := -1
	for tmpl, item := range doc.Paths.Map() {
		tp := strings.Split(strings.Trim(tmpl, "/"), "/")
		if len(tp) != len(parts) {
			continue
		}
		op := item.GetOperation(method)
		if op == nil {
			continue
		}
		params := map[string]string{}
		literals := 0
		ok := true
		for i, s := range tp {
			if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
				params[s[1:len(s)-1]] = parts[i]
			} else if s == parts[i] {
				literals++
			} else {
				ok = false
				break
			}
		}
		if ok && literals > bestLiterals {
			best = &routers.Route{Spec: doc, Path: tmpl, PathItem: item, Method: method, Operation: op}
			bestParams, bestLiterals = params, literals
		}
	}
	return best, bestParams
}

// TestSchema drives every implemented endpoint through godo (or plain
// HTTP where godo has no call for it) and validates every response against
// DigitalOcean's OpenAPI description. It also checks that every endpoint
// answered at least once with success, so none goes unvalidated.
func TestSchema(t *testing.T) {
	path := specPath(t)
	t0 := time.Now()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %s in %v", filepath.Base(path), time.Since(t0))

	e := newEmu(t, Options{NoLoopDevices: true, SnapshotInterval: -1, DetachDelay: -1, ActionDelay: 5 * time.Millisecond})
	rec := &recorder{base: bearer{testToken, http.DefaultTransport}}
	c, err := godo.New(&http.Client{Transport: rec, Timeout: 30 * time.Second}, godo.SetBaseURL(e.URL()))
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	raw := func(method, path string, body any) {
		req, err := c.NewRequest(ctx(t), method, path, body)
		must(err)
		_, err = c.Do(ctx(t), req, nil)
		must(err)
	}
	wait := func(id int) {
		for {
			a, _, err := c.Actions.Get(ctx(t), id)
			must(err)
			if a.Status != "in-progress" {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	_, _, err = c.Account.Get(ctx(t))
	must(err)
	_, _, err = c.Regions.List(ctx(t), nil)
	must(err)
	_, _, err = c.Sizes.List(ctx(t), nil)
	must(err)

	pub, _ := newPubKey(t)
	k, _, err := c.Keys.Create(ctx(t), &godo.KeyCreateRequest{Name: "k", PublicKey: pub})
	must(err)
	_, _, err = c.Keys.List(ctx(t), nil)
	must(err)
	_, _, err = c.Keys.GetByID(ctx(t), k.ID)
	must(err)
	_, _, err = c.Keys.UpdateByFingerprint(ctx(t), k.Fingerprint, &godo.KeyUpdateRequest{Name: "k2"})
	must(err)

	_, _, err = c.Tags.Create(ctx(t), &godo.TagCreateRequest{Name: "env:prod"})
	must(err)
	v, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "nyc1", SizeGigaBytes: 1, Tags: []string{"env:prod"}})
	must(err)
	_, _, err = c.Storage.ListVolumes(ctx(t), &godo.ListVolumeParams{Region: "nyc1", ListOptions: &godo.ListOptions{PerPage: 1}})
	must(err)
	_, _, err = c.Storage.GetVolume(ctx(t), v.ID)
	must(err)
	s, _, err := c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: "snap", Tags: []string{"env:prod"}})
	must(err)
	s2, _, err := c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: "snap2"})
	must(err)
	_, _, err = c.Storage.ListSnapshots(ctx(t), v.ID, nil)
	must(err)
	_, _, err = c.Storage.GetSnapshot(ctx(t), s.ID)
	must(err)
	_, _, err = c.Snapshots.Get(ctx(t), s.ID)
	must(err)
	raw(http.MethodGet, "v2/volumes/snapshots/"+s.ID, nil)
	_, _, err = c.Snapshots.ListVolume(ctx(t), &godo.ListOptions{PerPage: 1})
	must(err)
	cp, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "copy", SnapshotID: s.ID})
	must(err)

	d, resp, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{
		Name: "worker", Region: "nyc1", Size: "s-1vcpu-512mb-10gb", Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"},
		SSHKeys: []godo.DropletCreateSSHKey{{ID: k.ID}}, Tags: []string{"env:prod"}, UserData: "#cloud-config\n",
	})
	must(err)
	_, _, err = c.Droplets.Get(ctx(t), d.ID) // status new
	must(err)
	wait(resp.Links.Actions[0].ID)
	_, _, err = c.Droplets.Get(ctx(t), d.ID) // active, with an address
	must(err)
	_, _, err = c.Droplets.ListByTag(ctx(t), "env:prod", nil)
	must(err)

	a, _, err := c.StorageActions.Attach(ctx(t), v.ID, d.ID)
	must(err)
	wait(a.ID)
	_, _, err = c.StorageActions.Get(ctx(t), v.ID, a.ID)
	must(err)
	_, _, err = c.StorageActions.List(ctx(t), v.ID, nil)
	must(err)
	_, _, err = c.Storage.ListVolumes(ctx(t), nil) // with droplet_ids
	must(err)
	a, _, err = c.StorageActions.DetachByDropletID(ctx(t), v.ID, d.ID)
	must(err)
	wait(a.ID)
	raw(http.MethodPost, "v2/volumes/actions", map[string]any{"type": "attach", "volume_name": "copy", "region": "nyc1", "droplet_id": d.ID})
	a, _, err = c.StorageActions.Resize(ctx(t), v.ID, 2, "nyc1")
	must(err)
	wait(a.ID)

	a, _, err = c.DropletActions.Reboot(ctx(t), d.ID)
	must(err)
	wait(a.ID)
	_, _, err = c.DropletActions.Get(ctx(t), d.ID, a.ID)
	must(err)
	_, _, err = c.Droplets.Actions(ctx(t), d.ID, nil)
	must(err)
	_, _, err = c.Actions.List(ctx(t), nil)
	must(err)

	_, err = c.Tags.TagResources(ctx(t), "env:prod", &godo.TagResourcesRequest{Resources: []godo.Resource{{ID: cp.ID, Type: godo.VolumeResourceType}}})
	must(err)
	_, _, err = c.Tags.Get(ctx(t), "env:prod")
	must(err)
	_, _, err = c.Tags.List(ctx(t), nil)
	must(err)
	_, err = c.Tags.UntagResources(ctx(t), "env:prod", &godo.UntagResourcesRequest{Resources: []godo.Resource{{ID: cp.ID, Type: godo.VolumeResourceType}}})
	must(err)

	// Errors are validated too (against the declared error responses).
	_, _, err = c.Storage.GetVolume(ctx(t), "no-such-volume")
	apiErr(t, err, http.StatusNotFound, "")

	// Deletes.
	_, err = c.Droplets.Delete(ctx(t), d.ID)
	must(err)
	d2 := createDroplet(t, c, "other", "nyc1", []string{"batch"})
	_ = d2
	_, err = c.Droplets.DeleteByTag(ctx(t), "batch")
	must(err)
	raw(http.MethodDelete, "v2/volumes/snapshots/"+s.ID, nil)
	_, err = c.Snapshots.Delete(ctx(t), s2.ID)
	must(err)
	_, err = c.Storage.DeleteVolume(ctx(t), v.ID)
	must(err)
	raw(http.MethodDelete, "v2/volumes?name=copy&region=nyc1", nil)
	_, err = c.Keys.DeleteByID(ctx(t), k.ID)
	must(err)
	_, err = c.Tags.Delete(ctx(t), "env:prod")
	must(err)

	// Validate everything recorded.
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}
	errOpts := &openapi3filter.Options{MultiError: true}
	covered := map[string]bool{}
	for _, x := range rec.log {
		route, params := specRoute(doc, x.req.Method, x.req.URL.Path)
		if route == nil {
			t.Errorf("%s %s: no operation in the spec", x.req.Method, x.req.URL.Path)
			continue
		}
		o := errOpts
		if x.status < 300 {
			o = opts
			if _, _, known := match(e.rts, x.req.Method, x.req.URL.Path); known {
				covered[x.req.Method+" "+pattern(e.rts, x.req.Method, x.req.URL.Path)] = true
			}
		}
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: x.req, PathParams: params, Route: route},
			Status:                 x.status,
			Header:                 x.header,
			Options:                o,
		}
		in.SetBodyBytes(x.respBody)
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			t.Errorf("%s %s -> %d does not match %s: %v\nbody: %s", x.req.Method, x.req.URL, x.status, route.Path, err, x.respBody)
		}
	}
	var missing []string
	for _, rt := range e.rts {
		if rt.parts[0] == "emulator" {
			continue // the emulator's own endpoints are not DigitalOcean's
		}
		key := rt.method + " /" + strings.Join(rt.parts, "/")
		if !covered[key] {
			missing = append(missing, key)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("endpoints never answered with success, so never validated:\n%s", strings.Join(missing, "\n"))
	}
	t.Logf("validated %d responses of %d endpoints", len(rec.log), len(covered))
}

// pattern returns the route pattern that serves method and path.
func pattern(rs []route, method, path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for _, rt := range rs {
		if rt.method != method || len(rt.parts) != len(parts) {
			continue
		}
		ok := true
		for i, p := range rt.parts {
			if !strings.HasPrefix(p, ":") && p != parts[i] {
				ok = false
				break
			}
		}
		if ok {
			return "/" + strings.Join(rt.parts, "/")
		}
	}
	return ""
}
