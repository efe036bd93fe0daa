package doemu

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// apiError is an error answered with DigitalOcean's error body
// {"id","message","request_id"}.
type apiError struct {
	status  int
	id      string
	message string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.id, e.message) }

func errNotFound() *apiError {
	return &apiError{http.StatusNotFound, "not_found", "The resource you were accessing could not be found."}
}

func errUnprocessable(format string, args ...any) *apiError {
	return &apiError{http.StatusUnprocessableEntity, "unprocessable_entity", fmt.Sprintf(format, args...)}
}

func errConflict(format string, args ...any) *apiError {
	return &apiError{http.StatusConflict, "conflict", fmt.Sprintf(format, args...)}
}

func errBadRequest(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "bad_request", fmt.Sprintf(format, args...)}
}

func errTooMany(message string) *apiError {
	return &apiError{http.StatusTooManyRequests, "too_many_requests", message}
}

// reply is what a handler answers: a status and a JSON body (nil: no body).
type reply struct {
	status int
	body   any
}

type handlerFunc func(r *request) (reply, error)

// request is one API call as handlers see it.
type request struct {
	*http.Request
	params  map[string]string
	errored bool          // Fault.ActionErrored: actions started by it end errored
	linger  time.Duration // Fault.LingerDetach; 0 = default
	body    []byte
}

func (r *request) param(name string) string { return r.params[name] }

// decode reads the JSON body into v. An empty body leaves v unchanged.
func (r *request) decode(v any) error {
	if len(strings.TrimSpace(string(r.body))) == 0 {
		return nil
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		return errBadRequest("unable to parse request body: %v", err)
	}
	return nil
}

type route struct {
	method string
	parts  []string // ":name" segments are parameters
	h      handlerFunc
}

func (e *Emulator) routes() []route {
	var rs []route
	add := func(method, pattern string, h handlerFunc) {
		rs = append(rs, route{method, strings.Split(strings.Trim(pattern, "/"), "/"), h})
	}
	add("GET", "/v2/account", e.getAccount)
	add("GET", "/v2/account/keys", e.listKeys)
	add("POST", "/v2/account/keys", e.createKey)
	add("GET", "/v2/account/keys/:key", e.getKey)
	add("PUT", "/v2/account/keys/:key", e.updateKey)
	add("DELETE", "/v2/account/keys/:key", e.deleteKey)
	add("GET", "/v2/regions", e.listRegions)
	add("GET", "/v2/sizes", e.listSizes)
	add("GET", "/v2/actions", e.listActions)
	add("GET", "/v2/actions/:action", e.getAction)

	add("GET", "/v2/volumes", e.listVolumes)
	add("POST", "/v2/volumes", e.createVolume)
	add("DELETE", "/v2/volumes", e.deleteVolumeByName)
	add("POST", "/v2/volumes/actions", e.volumeActionByName)
	add("GET", "/v2/volumes/snapshots/:snapshot", e.getSnapshot)
	add("DELETE", "/v2/volumes/snapshots/:snapshot", e.deleteSnapshot)
	add("GET", "/v2/volumes/:volume", e.getVolume)
	add("DELETE", "/v2/volumes/:volume", e.deleteVolume)
	add("GET", "/v2/volumes/:volume/snapshots", e.listVolumeSnapshots)
	add("POST", "/v2/volumes/:volume/snapshots", e.createSnapshot)
	add("GET", "/v2/volumes/:volume/actions", e.listVolumeActions)
	add("POST", "/v2/volumes/:volume/actions", e.volumeAction)
	add("GET", "/v2/volumes/:volume/actions/:action", e.getVolumeAction)

	add("GET", "/v2/snapshots", e.listSnapshots)
	add("GET", "/v2/snapshots/:snapshot", e.getSnapshot)
	add("DELETE", "/v2/snapshots/:snapshot", e.deleteSnapshot)

	add("GET", "/v2/droplets", e.listDroplets)
	add("POST", "/v2/droplets", e.createDroplet)
	add("DELETE", "/v2/droplets", e.deleteDropletsByTag)
	add("GET", "/v2/droplets/:droplet", e.getDroplet)
	add("DELETE", "/v2/droplets/:droplet", e.deleteDroplet)
	add("GET", "/v2/droplets/:droplet/actions", e.listDropletActions)
	add("POST", "/v2/droplets/:droplet/actions", e.dropletAction)
	add("GET", "/v2/droplets/:droplet/actions/:action", e.getDropletAction)

	add("GET", "/v2/tags", e.listTags)
	add("POST", "/v2/tags", e.createTag)
	add("GET", "/v2/tags/:tag", e.getTag)
	add("DELETE", "/v2/tags/:tag", e.deleteTag)
	add("POST", "/v2/tags/:tag/resources", e.tagResources)
	add("DELETE", "/v2/tags/:tag/resources", e.untagResources)

	add("GET", "/emulator/state", e.controlState)
	add("GET", "/emulator/calls", e.controlCalls)
	add("POST", "/emulator/faults", e.controlAddFault)
	add("DELETE", "/emulator/faults", e.controlClearFaults)
	return rs
}

// match finds the handler for method and path. It reports whether the path
// exists at all (for 405 versus 404).
func match(rs []route, method, path string) (handlerFunc, map[string]string, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	pathKnown := false
	for _, rt := range rs {
		if len(rt.parts) != len(parts) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i, p := range rt.parts {
			if strings.HasPrefix(p, ":") {
				if parts[i] == "" {
					ok = false
					break
				}
				params[p[1:]] = parts[i]
			} else if p != parts[i] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		pathKnown = true
		if rt.method == method {
			return rt.h, params, true
		}
	}
	return nil, nil, pathKnown
}

// ServeHTTP answers one API request: authentication, rate limit, faults, then
// the endpoint.
func (e *Emulator) ServeHTTP(rw http.ResponseWriter, hr *http.Request) {
	w := &statusWriter{ResponseWriter: rw}
	if !strings.HasPrefix(hr.URL.Path, "/emulator/") {
		defer func() { e.recordCall(hr, w.status) }()
	}
	reqID := newUUID()
	w.Header().Set("x-request-id", reqID)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")

	control := strings.HasPrefix(hr.URL.Path, "/emulator/")
	var over bool
	var retryAfter time.Duration
	if !control {
		var limit, remaining int
		var reset time.Time
		limit, remaining, reset, retryAfter, over = e.countRequest(hr.Method, hr.URL.Path)
		resetSecs := reset.Unix() // whole seconds, rounded up: never before the reset
		if reset.After(time.Unix(resetSecs, 0)) {
			resetSecs++
		}
		w.Header().Set("ratelimit-limit", strconv.Itoa(limit))
		w.Header().Set("ratelimit-remaining", strconv.Itoa(remaining))
		w.Header().Set("ratelimit-reset", strconv.FormatInt(resetSecs, 10))
	}

	if !e.checkToken(hr) {
		writeError(w, reqID, &apiError{http.StatusUnauthorized, "unauthorized", "Unable to authenticate you"})
		return
	}
	if over {
		if retryAfter > 0 {
			w.Header().Set("retry-after", strconv.Itoa(int(retryAfter.Seconds()+0.999)))
		}
		writeError(w, reqID, errTooMany("API Rate limit exceeded."))
		return
	}

	body, err := io.ReadAll(io.LimitReader(hr.Body, 1<<20))
	if err != nil {
		writeError(w, reqID, errBadRequest("unable to read request body"))
		return
	}
	h, params, known := match(e.rts, hr.Method, hr.URL.Path)
	if h == nil {
		if known {
			writeError(w, reqID, &apiError{http.StatusMethodNotAllowed, "method_not_allowed", "Method Not Allowed"})
		} else {
			writeError(w, reqID, errNotFound())
		}
		return
	}
	r := &request{Request: hr, params: params, body: body}

	var f *Fault
	if !control {
		f = e.takeFault(hr.Method, hr.URL.Path)
	}
	if f != nil {
		e.logf("fault on %s %s: %s", hr.Method, hr.URL.Path, f)
		if f.Delay > 0 {
			select {
			case <-time.After(f.Delay):
			case <-hr.Context().Done():
				return
			case <-e.closing:
				return
			}
		}
		if f.Hang {
			select {
			case <-hr.Context().Done():
			case <-e.closing:
			}
			return
		}
		r.errored = f.ActionErrored
		r.linger = f.LingerDetach
		if f.Status != 0 && !f.AfterCommit {
			e.writeFault(w, reqID, f)
			return
		}
	}

	rep, err := e.call(h, r)
	status := statusOf(rep, err)
	if f != nil && f.Status != 0 && f.AfterCommit {
		status = f.Status
	}
	e.logf("%s %s -> %d", hr.Method, hr.URL.RequestURI(), status)
	if f != nil && f.Status != 0 && f.AfterCommit {
		e.writeFault(w, reqID, f)
		return
	}
	if err != nil {
		ae, ok := err.(*apiError)
		if !ok {
			ae = &apiError{http.StatusInternalServerError, "server_error", "Server Error"}
			e.logf("internal error: %v", err)
		}
		writeError(w, reqID, ae)
		return
	}
	if f != nil && f.Body != "" {
		w.WriteHeader(rep.status)
		io.WriteString(w, f.Body)
		return
	}
	if rep.body == nil {
		w.Header().Del("Content-Type")
		w.WriteHeader(rep.status)
		return
	}
	b, err := json.Marshal(rep.body)
	if err != nil {
		writeError(w, reqID, &apiError{http.StatusInternalServerError, "server_error", "Server Error"})
		return
	}
	w.WriteHeader(rep.status)
	w.Write(append(b, '\n'))
}

// statusWriter remembers the status a handler answered (0: none, e.g. a
// hanging fault).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (e *Emulator) recordCall(hr *http.Request, status int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, Call{Method: hr.Method, Path: hr.URL.Path, Query: hr.URL.RawQuery, Status: status, Time: time.Now()})
}

// call runs a handler; a panic (an emulator bug) becomes a 500 and a log
// line with the stack instead of a dropped connection.
func (e *Emulator) call(h handlerFunc, r *request) (rep reply, err error) {
	defer func() {
		if p := recover(); p != nil {
			e.logf("panic serving %s %s: %v\n%s", r.Method, r.URL.RequestURI(), p, debug.Stack())
			rep, err = reply{}, fmt.Errorf("panic: %v", p)
		}
	}()
	return h(r)
}

func statusOf(rep reply, err error) int {
	if err != nil {
		if ae, ok := err.(*apiError); ok {
			return ae.status
		}
		return 500
	}
	return rep.status
}

func (e *Emulator) writeFault(w http.ResponseWriter, reqID string, f *Fault) {
	if f.RetryAfter != "" {
		w.Header().Set("retry-after", f.RetryAfter)
	}
	ae := &apiError{f.Status, "server_error", "Server Error"}
	switch {
	case f.Status == http.StatusTooManyRequests:
		ae.id, ae.message = "too_many_requests", "API Rate limit exceeded."
	case f.Status == http.StatusBadGateway:
		ae.id, ae.message = "bad_gateway", "Bad Gateway"
	case f.Status == http.StatusServiceUnavailable:
		ae.id, ae.message = "service_unavailable", "Service Unavailable"
	case f.Status < 500:
		ae.id, ae.message = strings.ToLower(strings.ReplaceAll(http.StatusText(f.Status), " ", "_")), http.StatusText(f.Status)
	}
	if f.Message != "" {
		ae.message = f.Message
	}
	writeError(w, reqID, ae)
}

func writeError(w http.ResponseWriter, reqID string, ae *apiError) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(ae.status)
	b, _ := json.Marshal(map[string]string{"id": ae.id, "message": ae.message, "request_id": reqID})
	w.Write(append(b, '\n'))
}

// countRequest counts an API request against DigitalOcean's limits, as its
// API documents them: each request counts against the hourly budget for one
// RateWindow after it was made (ratelimit-reset is when the oldest counted
// one expires), and against the per-minute burst limit for a minute; listing
// the account's SSH keys has a per-minute limit of its own. A refused
// request counts against nothing. retryAfter is set when a per-minute limit
// refused it (DigitalOcean sends retry-after only then).
func (e *Emulator) countRequest(method, path string) (limit, remaining int, reset time.Time, retryAfter time.Duration, over bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	r := &e.rate
	r.hour = expire(r.hour, now, e.opts.RateWindow)
	r.burst = expire(r.burst, now, time.Minute)
	r.keys = expire(r.keys, now, time.Minute)
	keyList := method == http.MethodGet && path == "/v2/account/keys"
	e.requests++
	limit = e.opts.RequestLimit
	switch {
	case len(r.hour) >= limit:
		over = true
	case e.opts.BurstLimit > 0 && len(r.burst) >= e.opts.BurstLimit:
		over, retryAfter = true, r.burst[0].Add(time.Minute).Sub(now)
	case keyList && e.opts.KeyListLimit > 0 && len(r.keys) >= e.opts.KeyListLimit:
		over, retryAfter = true, r.keys[0].Add(time.Minute).Sub(now)
	default:
		r.hour = append(r.hour, now)
		r.burst = append(r.burst, now)
		if keyList {
			r.keys = append(r.keys, now)
		}
	}
	remaining = limit - len(r.hour)
	if over {
		remaining = 0
	}
	// Refused by a per-minute limit with a RateWindow under a minute (in
	// tests), no request may count against the hour.
	reset = now.Add(e.opts.RateWindow)
	if len(r.hour) > 0 {
		reset = r.hour[0].Add(e.opts.RateWindow)
	}
	return limit, remaining, reset, retryAfter, over
}

// expire drops the times of q (oldest first) that are window or more
// before now.
func expire(q []time.Time, now time.Time, window time.Duration) []time.Time {
	n := 0
	for n < len(q) && now.Sub(q[n]) >= window {
		n++
	}
	return q[n:]
}

// rateState is what countRequest counts: the times of the requests that
// still count, oldest first.
type rateState struct {
	hour, burst, keys []time.Time
}
