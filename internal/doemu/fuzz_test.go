package doemu

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzPaginate: any page and per_page either fail cleanly (400) or give a
// page of at most max(1..200) items, taken in order from the list, with
// meta.total the whole count.
func FuzzPaginate(f *testing.F) {
	for _, s := range []struct {
		total         uint8
		page, perPage string
	}{{0, "", ""}, {45, "2", "20"}, {45, "3", "20"}, {10, "-1", "0"}, {200, "1", "1000"}, {7, "x", "3"}, {7, "99999999999999999999", "1"}, {5, "9223372036854775807", "200"}, {5, "4611686018427387904", "2"}} {
		f.Add(s.total, s.page, s.perPage)
	}
	e := &Emulator{url: "http://127.0.0.1:1/"}
	f.Fuzz(func(t *testing.T, total uint8, page, perPage string) {
		items := make([]any, int(total))
		for i := range items {
			items[i] = i
		}
		q := url.Values{}
		if page != "" {
			q.Set("page", page)
		}
		if perPage != "" {
			q.Set("per_page", perPage)
		}
		hr, err := http.NewRequest(http.MethodGet, "http://127.0.0.1:1/v2/x?"+q.Encode(), nil)
		if err != nil {
			t.Skip()
		}
		rep, err := e.paginate(&request{Request: hr}, "x", items)
		if err != nil {
			if ae, ok := err.(*apiError); !ok || ae.status != http.StatusBadRequest {
				t.Fatalf("error %v", err)
			}
			return
		}
		body := rep.body.(map[string]any)
		got := body["x"].([]any)
		if len(got) > maxPerPage || body["meta"].(map[string]int)["total"] != int(total) {
			t.Fatalf("%d items, meta %v", len(got), body["meta"])
		}
		for i := 1; i < len(got); i++ {
			if got[i].(int) != got[i-1].(int)+1 {
				t.Fatalf("items not consecutive: %v", got)
			}
		}
		if pages, ok := body["links"].(map[string]any)["pages"].(map[string]string); ok {
			for rel, link := range pages {
				if !strings.HasPrefix(link, "http://127.0.0.1:1/v2/x?") {
					t.Fatalf("%s link %q is not absolute", rel, link)
				}
			}
		}
	})
}

// FuzzRoute: the router never panics, and a path it serves has no empty
// parameter.
func FuzzRoute(f *testing.F) {
	for _, p := range []string{"/v2/volumes", "/v2/volumes//actions", "/v2/volumes/snapshots/x", "/v2/droplets/1/actions/2", "/", "", "//", "/v2/tags/a:b/resources"} {
		f.Add("GET", p)
		f.Add("POST", p)
	}
	rs := (&Emulator{}).routes()
	f.Fuzz(func(t *testing.T, method, path string) {
		h, params, _ := match(rs, method, path)
		if h == nil {
			return
		}
		for k, v := range params {
			if v == "" {
				t.Fatalf("%s %q: empty parameter %s", method, path, k)
			}
		}
	})
}
