package doemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"
)

// rawGet fetches a path with the test token and decodes the JSON body.
func rawGet(t *testing.T, e *Emulator, path string, v any) *http.Response {
	req, err := http.NewRequest(http.MethodGet, e.URL()+strings.TrimPrefix(path, "/"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	return resp
}

func TestPagination(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	for i := 0; i < 205; i++ {
		if _, _, err := c.Tags.Create(ctx(t), &godo.TagCreateRequest{Name: fmt.Sprintf("t%03d", i)}); err != nil {
			t.Fatal(err)
		}
	}

	// godo walks the pages by the links.
	var names []string
	opt := &godo.ListOptions{PerPage: 50}
	pages := 0
	for {
		tags, resp, err := c.Tags.List(ctx(t), opt)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, tg := range tags {
			names = append(names, tg.Name)
		}
		if resp.Meta == nil || resp.Meta.Total != 205 {
			t.Fatalf("meta %+v", resp.Meta)
		}
		if resp.Links == nil || resp.Links.IsLastPage() {
			break
		}
		page, err := resp.Links.CurrentPage()
		if err != nil {
			t.Fatal(err)
		}
		opt.Page = page + 1
	}
	if pages != 5 || len(names) != 205 || names[0] != "t000" || names[204] != "t204" {
		t.Fatalf("%d pages, %d names", pages, len(names))
	}

	// The links themselves: absolute URLs, first/prev only past page 1,
	// next/last only before the end, the query kept.
	type body struct {
		Tags  []any
		Links struct{ Pages map[string]string }
		Meta  struct{ Total int }
	}
	var b body
	rawGet(t, e, "/v2/tags?per_page=100&page=2", &b)
	want := map[string]string{
		"first": e.URL() + "v2/tags?page=1&per_page=100",
		"prev":  e.URL() + "v2/tags?page=1&per_page=100",
		"next":  e.URL() + "v2/tags?page=3&per_page=100",
		"last":  e.URL() + "v2/tags?page=3&per_page=100",
	}
	if len(b.Tags) != 100 || b.Meta.Total != 205 || !reflect.DeepEqual(b.Links.Pages, want) {
		t.Fatalf("page 2: %d items, total %d, links %v", len(b.Tags), b.Meta.Total, b.Links.Pages)
	}
	b = body{}
	rawGet(t, e, "/v2/tags", &b)
	if len(b.Tags) != defaultPerPage || b.Links.Pages["first"] != "" || b.Links.Pages["last"] != e.URL()+"v2/tags?page=11" {
		t.Fatalf("default page: %d items, links %v", len(b.Tags), b.Links.Pages)
	}
	b = body{}
	rawGet(t, e, "/v2/tags?per_page=1000", &b)
	if len(b.Tags) != maxPerPage {
		t.Fatalf("per_page=1000 gave %d items", len(b.Tags))
	}
	b = body{}
	rawGet(t, e, "/v2/tags?per_page=100&page=9", &b)
	if len(b.Tags) != 0 || b.Meta.Total != 205 || b.Links.Pages["next"] != "" {
		t.Fatalf("past the end: %d items, links %v", len(b.Tags), b.Links.Pages)
	}
}

// The hourly budget, as DigitalOcean documents it: each request counts for
// one window after it was made, a request past the budget gets 429 with no
// retry-after, and ratelimit-reset says when the oldest request expires,
// freeing one request (not the whole budget).
func TestRateLimit(t *testing.T) {
	// ratelimit-reset is in whole seconds, rounded up: the window leaves room.
	const window = 3 * time.Second
	e := newEmu(t, Options{RequestLimit: 5, RateWindow: window})
	c := client(t, e, testToken)
	get := func() (*godo.Response, error) {
		_, resp, err := c.Account.Get(ctx(t))
		return resp, err
	}
	for i := range 5 {
		resp, err := get()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rate.Limit != 5 || resp.Rate.Remaining != 4-i {
			t.Fatalf("request %d: rate %+v", i, resp.Rate)
		}
		if i == 0 {
			time.Sleep(window / 2) // the first request expires well before the others
		}
	}
	resp, err := get()
	apiErr(t, err, http.StatusTooManyRequests, "API Rate limit exceeded")
	if resp.Header.Get("retry-after") != "" || resp.Rate.Remaining != 0 {
		t.Fatalf("429 headers %v", resp.Header)
	}
	until := time.Until(resp.Rate.Reset.Time)
	if until < 0 || until > window {
		t.Fatalf("ratelimit-reset %v is %v away", resp.Rate.Reset, until)
	}
	time.Sleep(until + 50*time.Millisecond)
	if _, err := get(); err != nil {
		t.Fatalf("after the oldest request expired: %v", err)
	}
	if _, err := get(); err == nil {
		t.Fatal("one expired request freed more than one")
	}
}

// The per-minute burst limit and the limit on listing SSH keys answer 429
// with retry-after.
func TestBurstAndKeyListLimits(t *testing.T) {
	e := newEmu(t, Options{BurstLimit: 3, KeyListLimit: 1})
	c := client(t, e, testToken)
	if _, _, err := c.Keys.List(ctx(t), nil); err != nil {
		t.Fatal(err)
	}
	_, resp, err := c.Keys.List(ctx(t), nil)
	apiErr(t, err, http.StatusTooManyRequests, "API Rate limit exceeded")
	if ra, _ := strconv.Atoi(resp.Header.Get("retry-after")); ra < 1 || ra > 60 {
		t.Fatalf("key list limit: retry-after %q", resp.Header.Get("retry-after"))
	}
	for range 2 {
		if _, _, err := c.Account.Get(ctx(t)); err != nil {
			t.Fatalf("other calls within the burst limit: %v", err)
		}
	}
	_, resp, err = c.Account.Get(ctx(t))
	apiErr(t, err, http.StatusTooManyRequests, "API Rate limit exceeded")
	if ra, _ := strconv.Atoi(resp.Header.Get("retry-after")); ra < 1 || ra > 60 || resp.Rate.Remaining != 0 {
		t.Fatalf("burst limit: retry-after %q, remaining %d", resp.Header.Get("retry-after"), resp.Rate.Remaining)
	}
}

func TestFaults(t *testing.T) {
	e := newEmu(t, Options{NoLoopDevices: true})
	c := client(t, e, testToken)

	// The 2nd matching call fails with 503 and nothing happens.
	e.InjectFault(Fault{Method: "POST", Path: "/v2/volumes", Nth: 2, Status: 503})
	if _, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "a", Region: "nyc1", SizeGigaBytes: 1}); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "b", Region: "nyc1", SizeGigaBytes: 1})
	apiErr(t, err, http.StatusServiceUnavailable, "Service Unavailable")
	if n := len(e.State().Volumes); n != 1 {
		t.Fatalf("%d volumes after a failed create", n)
	}

	// After commit: the volume exists although the call failed, so a blind
	// retry makes a conflict (for droplets: a duplicate).
	e.InjectFault(Fault{Method: "POST", Path: "/v2/volumes", Status: 500, AfterCommit: true})
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "b", Region: "nyc1", SizeGigaBytes: 1})
	apiErr(t, err, http.StatusInternalServerError, "Server Error")
	if n := len(e.State().Volumes); n != 2 {
		t.Fatalf("%d volumes after a create failed after commit", n)
	}
	e.InjectFault(Fault{Method: "POST", Path: "/v2/droplets", Status: 502, AfterCommit: true})
	req := &godo.DropletCreateRequest{Name: "w", Region: "nyc1", Size: "s-1vcpu-1gb", Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"}}
	_, _, err = c.Droplets.Create(ctx(t), req)
	apiErr(t, err, http.StatusBadGateway, "Bad Gateway")
	if _, _, err := c.Droplets.Create(ctx(t), req); err != nil {
		t.Fatal(err)
	}
	if n := len(e.State().Droplets); n != 2 {
		t.Fatalf("%d droplets after a retried create, want the duplicate", n)
	}
	var creates []int
	for _, call := range e.Calls() {
		if call.Method == "POST" && call.Path == "/v2/droplets" {
			creates = append(creates, call.Status)
		}
	}
	if !reflect.DeepEqual(creates, []int{502, 202}) {
		t.Fatalf("droplet creates answered %v", creates)
	}

	// 429 with and without retry-after, for two calls in a row.
	e.InjectFault(Fault{Path: "/v2/account", Status: 429, RetryAfter: "7", Times: 2})
	_, resp, err := c.Account.Get(ctx(t))
	apiErr(t, err, http.StatusTooManyRequests, "")
	if resp.Header.Get("retry-after") != "7" {
		t.Fatalf("retry-after %q", resp.Header.Get("retry-after"))
	}
	_, _, err = c.Account.Get(ctx(t))
	apiErr(t, err, http.StatusTooManyRequests, "")
	e.InjectFault(Fault{Path: "/v2/account", Status: 429})
	_, resp, err = c.Account.Get(ctx(t))
	apiErr(t, err, http.StatusTooManyRequests, "")
	if resp.Header.Get("retry-after") != "" {
		t.Fatalf("unexpected retry-after %q", resp.Header.Get("retry-after"))
	}
	if _, _, err := c.Account.Get(ctx(t)); err != nil {
		t.Fatalf("fault outlived its calls: %v", err)
	}

	// Slow and hanging answers.
	e.InjectFault(Fault{Path: "/v2/regions", Delay: 150 * time.Millisecond})
	t0 := time.Now()
	if _, _, err := c.Regions.List(ctx(t), nil); err != nil || time.Since(t0) < 150*time.Millisecond {
		t.Fatalf("delayed call: %v after %v", err, time.Since(t0))
	}
	e.InjectFault(Fault{Path: "/v2/sizes", Hang: true})
	hctx, cancel := context.WithTimeout(ctx(t), 200*time.Millisecond)
	defer cancel()
	if _, _, err := c.Sizes.List(hctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging call: %v", err)
	}
	// The server notices the client is gone, ends the call and records it
	// as unanswered.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		calls := e.Calls()
		if last := calls[len(calls)-1]; last.Path == "/v2/sizes" {
			if last.Status != 0 {
				t.Fatalf("hanging call recorded as %+v", last)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hanging call never ended on the server")
		}
	}

	// An errored attach leaves the volume unattached.
	vols := e.State().Volumes
	d := e.State().Droplets[0]
	waitActive(t, c, d.ID)
	e.InjectFault(Fault{Method: "POST", Path: "/v2/volumes/[^/]+/actions", ActionErrored: true})
	a, _, err := c.StorageActions.Attach(ctx(t), vols[0].ID, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if a := waitAction(t, c, a.ID); a.Status != "errored" {
		t.Fatalf("attach ended %s", a.Status)
	}
	if v, _, _ := c.Storage.GetVolume(ctx(t), vols[0].ID); len(v.DropletIDs) != 0 {
		t.Fatalf("errored attach left droplet_ids %v", v.DropletIDs)
	}

	// A detach that lingers after the droplet is deleted.
	a, _, err = c.StorageActions.Attach(ctx(t), vols[0].ID, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	waitAction(t, c, a.ID)
	e.InjectFault(Fault{Method: "DELETE", Path: "/v2/droplets/[0-9]+", LingerDetach: 300 * time.Millisecond})
	if _, err := c.Droplets.Delete(ctx(t), d.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	if v, _, _ := c.Storage.GetVolume(ctx(t), vols[0].ID); len(v.DropletIDs) != 1 {
		t.Fatalf("volume detached before the linger: %v", v.DropletIDs)
	}
	time.Sleep(300 * time.Millisecond)
	if v, _, _ := c.Storage.GetVolume(ctx(t), vols[0].ID); len(v.DropletIDs) != 0 {
		t.Fatalf("volume still attached after the linger: %v", v.DropletIDs)
	}
	if n := e.PendingFaults(); n != 0 {
		t.Fatalf("%d faults never fired", n)
	}
}

func TestErroredDropletCreate(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	e.InjectFault(Fault{Method: "POST", Path: "/v2/droplets", ActionErrored: true})
	d, resp, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{Name: "w", Region: "ams3", Size: "s-1vcpu-1gb", Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"}})
	if err != nil {
		t.Fatal(err)
	}
	if a := waitAction(t, c, resp.Links.Actions[0].ID); a.Status != "errored" {
		t.Fatalf("create action %s", a.Status)
	}
	got, _, err := c.Droplets.Get(ctx(t), d.ID)
	if err != nil || got.Status != "new" || len(got.Networks.V4) != 0 {
		t.Fatalf("droplet after errored create: %+v %v", got, err)
	}
}
