package doemu

import (
	"net/http"
	"net/url"
	"strconv"
)

// Pagination as DigitalOcean does it: page (from 1) and per_page (default
// 20, at most 200) query parameters, links.pages with absolute URLs of the
// first, previous, next and last pages where they exist, and meta.total.
const (
	defaultPerPage = 20
	maxPerPage     = 200
)

// paginate answers a list: body[key] is the requested page of items.
func (e *Emulator) paginate(r *request, key string, items []any) (reply, error) {
	q := r.URL.Query()
	page, perPage := 1, defaultPerPage
	if s := q.Get("page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return reply{}, errBadRequest("page must be an integer")
		}
		if n > 1 {
			page = n
		}
	}
	if s := q.Get("per_page"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return reply{}, errBadRequest("per_page must be an integer")
		}
		if n >= 1 {
			perPage = n
		}
		if perPage > maxPerPage {
			perPage = maxPerPage
		}
	}
	total := len(items)
	last := (total + perPage - 1) / perPage
	if last < 1 {
		last = 1
	}
	lo := total // past the end (also where (page-1)*perPage would overflow)
	if page-1 <= total/perPage {
		lo = min((page-1)*perPage, total)
	}
	hi := lo + perPage
	if hi > total {
		hi = total
	}
	pageItems := items[lo:hi]
	if pageItems == nil {
		pageItems = []any{}
	}

	pageURL := func(n int) string {
		u := *r.URL
		u.Scheme = "http"
		u.Host = r.Host
		v := url.Values{}
		for k, vs := range q {
			v[k] = vs
		}
		v.Set("page", strconv.Itoa(n))
		if q.Get("per_page") != "" {
			v.Set("per_page", strconv.Itoa(perPage))
		}
		u.RawQuery = v.Encode()
		return u.String()
	}
	pages := map[string]string{}
	if page > 1 {
		pages["first"] = pageURL(1)
		prev := page - 1
		if prev > last {
			prev = last
		}
		pages["prev"] = pageURL(prev)
	}
	if page < last {
		pages["next"] = pageURL(page + 1)
		pages["last"] = pageURL(last)
	}
	links := map[string]any{}
	if len(pages) > 0 {
		links["pages"] = pages
	}
	return reply{http.StatusOK, map[string]any{
		key:     pageItems,
		"links": links,
		"meta":  map[string]int{"total": total},
	}}, nil
}
