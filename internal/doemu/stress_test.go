package doemu

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/godo"
)

// TestPaginationWalk: for many totals and page sizes, following the next
// links visits every item once and in order, prev leads back, and last is
// the page that next ends on.
func TestPaginationWalk(t *testing.T) {
	e := newEmu(t, Options{})
	base, _ := url.Parse(e.URL())
	for total := 0; total <= 23; total++ {
		items := make([]any, total)
		for i := range items {
			items[i] = i
		}
		for perPage := 1; perPage <= 7; perPage++ {
			u := *base
			u.Path = "/v2/things"
			u.RawQuery = "per_page=" + strconv.Itoa(perPage) + "&tag_name=x"
			var seen []int
			var last string
			pages := 0
			for next := u.String(); next != ""; pages++ {
				nu, err := url.Parse(next)
				if err != nil || nu.Host != base.Host || nu.Query().Get("tag_name") != "x" {
					t.Fatalf("total %d per_page %d: link %q", total, perPage, next)
				}
				hr, _ := http.NewRequest(http.MethodGet, next, nil)
				rep, err := e.paginate(&request{Request: hr}, "things", items)
				if err != nil {
					t.Fatal(err)
				}
				body := rep.body.(map[string]any)
				for _, it := range body["things"].([]any) {
					seen = append(seen, it.(int))
				}
				if got := body["meta"].(map[string]int)["total"]; got != total {
					t.Fatalf("meta.total %d, want %d", got, total)
				}
				links := body["links"].(map[string]any)
				pg, _ := links["pages"].(map[string]string)
				page, _ := strconv.Atoi(nu.Query().Get("page"))
				if page > 1 {
					prev, _ := url.Parse(pg["prev"])
					if p, _ := strconv.Atoi(prev.Query().Get("page")); p != page-1 || pg["first"] == "" {
						t.Fatalf("page %d: prev %q first %q", page, pg["prev"], pg["first"])
					}
				} else if pg["prev"] != "" || pg["first"] != "" {
					t.Fatalf("first page links back: %v", pg)
				}
				if pg["last"] != "" {
					last = pg["last"]
				}
				if pg["next"] == "" && last != "" && last != next {
					t.Fatalf("total %d per_page %d: ended on %q, last said %q", total, perPage, next, last)
				}
				next = pg["next"]
				if pages > total+1 {
					t.Fatal("next links never end")
				}
			}
			if len(seen) != total {
				t.Fatalf("total %d per_page %d: saw %d items", total, perPage, len(seen))
			}
			for i, v := range seen {
				if v != i {
					t.Fatalf("total %d per_page %d: items out of order: %v", total, perPage, seen)
				}
			}
		}
	}
}

// TestConcurrentClients: several clients create, attach, detach and delete
// at once (under -race this also looks for data races), then the state is
// consistent and every device is gone.
func TestConcurrentClients(t *testing.T) {
	t.Run("files", func(t *testing.T) { concurrentClients(t, true) })
	t.Run("loop-devices", func(t *testing.T) {
		requireRoot(t, "loop")
		concurrentClients(t, false)
	})
}

func concurrentClients(t *testing.T, noLoop bool) {
	e := newEmu(t, Options{ActionDelay: 2 * time.Millisecond, DetachDelay: 5 * time.Millisecond, SnapshotInterval: -1, BurstLimit: -1, NoLoopDevices: noLoop, Logf: func(string, ...any) {}})
	c := client(t, e, testToken)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			fail := func(err error) { errs <- fmt.Errorf("worker %d: %w", w, err) }
			region := []string{"nyc1", "fra1"}[w%2]
			for i := 0; i < 3; i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				v, _, err := c.Storage.CreateVolume(context.Background(), &godo.VolumeCreateRequest{Name: name, Region: region, SizeGigaBytes: 1})
				if err != nil {
					fail(err)
					return
				}
				s, _, err := c.Storage.CreateSnapshot(context.Background(), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: name})
				if err != nil {
					fail(err)
					return
				}
				d, _, err := c.Droplets.Create(context.Background(), &godo.DropletCreateRequest{Name: name, Region: region, Size: "s-1vcpu-1gb",
					Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"}, Tags: []string{"stress"}})
				if err != nil {
					fail(err)
					return
				}
				a, _, err := c.StorageActions.Attach(context.Background(), v.ID, d.ID)
				if err != nil {
					fail(err)
					return
				}
				if i%2 == 0 {
					if err := pollAction(c, a.ID); err != nil {
						fail(err)
						return
					}
					a, _, err = c.StorageActions.DetachByDropletID(context.Background(), v.ID, d.ID)
					if err != nil {
						fail(err)
						return
					}
					if err := pollAction(c, a.ID); err != nil {
						fail(err)
						return
					}
				}
				// Odd rounds delete the droplet with the volume still attached.
				if _, err := c.Droplets.Delete(context.Background(), d.ID); err != nil {
					fail(err)
					return
				}
				if _, err := c.Snapshots.Delete(context.Background(), s.ID); err != nil {
					fail(err)
					return
				}
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
					_, err := c.Storage.DeleteVolume(context.Background(), v.ID)
					if err == nil {
						break
					}
					if time.Now().After(deadline) {
						fail(err)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := e.State()
	if len(st.Volumes)+len(st.Snapshots)+len(st.Droplets) != 0 {
		t.Fatalf("left behind: %+v", st)
	}
	ents, err := os.ReadDir(e.DataDir() + "/volumes")
	if err != nil || len(ents) != 0 {
		t.Fatalf("backing files left: %v %v", ents, err)
	}
	ents, _ = os.ReadDir(e.DataDir() + "/snapshots")
	if len(ents) != 0 {
		t.Fatalf("snapshot files left: %v", ents)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ents, _ = os.ReadDir(e.DataDir() + "/droplets")
		if len(ents) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("droplet directories left: %v", ents)
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, err := os.ReadFile(l); err == nil && strings.HasPrefix(string(b), e.DataDir()+"/") {
			t.Errorf("%s still backed by %s", l, strings.TrimSpace(string(b)))
		}
	}
}

// pollAction waits for an action to complete, for goroutines (no t.Fatal).
func pollAction(c *godo.Client, id int) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		a, _, err := c.Actions.Get(context.Background(), id)
		if err != nil {
			return err
		}
		switch a.Status {
		case "completed":
			return nil
		case "errored":
			return fmt.Errorf("action %d errored", id)
		}
	}
	return fmt.Errorf("action %d still in progress", id)
}
