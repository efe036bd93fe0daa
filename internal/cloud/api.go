package cloud

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/godo"
)

// APIOptions configure the DigitalOcean client.
type APIOptions struct {
	BaseURL string // API base URL; "" is DigitalOcean's
	Token   string // bearer token; never logged, never put in an error
	// TokenSource says where the token came from (config.Config.TokenSource),
	// for the error of a call the API refuses it for (401).
	TokenSource string

	// RequestTimeout bounds one HTTP attempt (default 60s). A request that
	// hangs past it is retried like a 5xx.
	RequestTimeout time.Duration
	// MaxAttempts bounds the attempts of one call (default 8).
	MaxAttempts int
	// Backoff is the first retry delay, doubled on each retry up to
	// MaxBackoff (defaults 1s and 30s), with ±25% jitter.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// MaxRateWait is the longest a call waits for a rate limit to reset
	// (default 15m). A longer wait fails the call instead.
	MaxRateWait time.Duration
	// Poll is the interval between polls of an action or a droplet's
	// status (default 2s).
	Poll time.Duration

	Logf func(format string, args ...any)
}

// API is a godo client whose calls retry 429 and 5xx answers with backoff,
// honour retry-after and ratelimit-reset, bound every attempt in time, and
// scrub the token from every error.
type API struct {
	godo  *godo.Client
	opts  APIOptions
	token string
}

// NewAPI returns a client for o.BaseURL.
func NewAPI(o APIOptions) (*API, error) {
	if o.Token == "" {
		return nil, errors.New("no API token")
	}
	if o.BaseURL == "" {
		o.BaseURL = "https://api.digitalocean.com/"
	}
	if !strings.HasSuffix(o.BaseURL, "/") {
		o.BaseURL += "/"
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 60 * time.Second
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 8
	}
	if o.Backoff <= 0 {
		o.Backoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.MaxRateWait <= 0 {
		o.MaxRateWait = 15 * time.Minute
	}
	if o.Poll <= 0 {
		o.Poll = 2 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	base, err := url.Parse(o.BaseURL)
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("api_url %q is not a URL with a host", o.BaseURL)
	}
	hc := &http.Client{Transport: &bearer{token: o.Token, host: base.Host, next: http.DefaultTransport}}
	c, err := godo.New(hc, godo.SetBaseURL(o.BaseURL), godo.SetUserAgent("dosvob"))
	if err != nil {
		return nil, fmt.Errorf("api_url %q: %w", o.BaseURL, err)
	}
	return &API{godo: c, opts: o, token: o.Token}, nil
}

// Godo returns the underlying client (without retries).
func (a *API) Godo() *godo.Client { return a.godo }

// bearer adds the Authorization header to requests for the API's own host,
// and to no other: a redirect elsewhere goes without the token. The token
// lives only here and in the header: never in a URL, so godo's errors
// (which quote the URL) cannot carry it.
type bearer struct {
	token string
	host  string
	next  http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host != b.host {
		return b.next.RoundTrip(r)
	}
	r2 := r.Clone(r.Context())
	r2.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r2)
}

// APIError is a DigitalOcean call that failed for good.
type APIError struct {
	Op     string
	Status int // HTTP status, 0 when none came back
	Err    error
}

func (e *APIError) Error() string { return e.Op + ": " + e.Err.Error() }

// Reason says why the call failed without its Op, and DigitalOcean's
// answer without the method and URL, for a line that names the resource
// already: "giving up after 8 attempts: 500 Server Error (request
// \"4e2c...\")".
func (e *APIError) Reason() string {
	why := e.Err.Error()
	var er *godo.ErrorResponse
	if errors.As(e.Err, &er) && er.Response != nil {
		short := fmt.Sprintf("%d %s", er.Response.StatusCode, er.Message)
		if er.RequestID != "" {
			short += fmt.Sprintf(" (request %q)", er.RequestID)
		}
		why = strings.Replace(why, er.Error(), short, 1)
	}
	return why
}
func (e *APIError) Unwrap() error { return e.Err }

// IsNotFound reports a 404 from the API.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// scrubbed hides the token in an error's text, whatever the error is.
type scrubbed struct {
	msg string
	err error
}

func (s *scrubbed) Error() string { return s.msg }
func (s *scrubbed) Unwrap() error { return s.err }

// Scrub returns err with every occurrence of token in its text replaced.
func Scrub(err error, token string) error {
	if err == nil || token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return &scrubbed{msg: strings.ReplaceAll(err.Error(), token, "[redacted]"), err: err}
}

type failKind int

const (
	permanent   failKind = iota // a 4xx or a bad argument: do not repeat
	rateLimited                 // 429: not applied, repeat after the wait
	uncertain                   // 5xx, timeout, broken connection: may have been applied
)

// classify decides how to handle a failed attempt and how long to wait.
func (a *API) classify(resp *godo.Response, err error, attempt int) (failKind, time.Duration, int) {
	status := 0
	var er *godo.ErrorResponse
	if errors.As(err, &er) && er.Response != nil {
		status = er.Response.StatusCode
	} else if resp != nil && resp.Response != nil {
		status = resp.StatusCode
	}
	backoff := a.backoff(attempt)
	switch {
	case status == http.StatusTooManyRequests:
		if w, ok := rateWait(er); ok {
			return rateLimited, w, status
		}
		return rateLimited, backoff, status
	case status >= 500:
		return uncertain, backoff, status
	case status != 0:
		return permanent, 0, status
	}
	var arg *godo.ArgError
	if errors.As(err, &arg) {
		return permanent, 0, 0
	}
	// A timeout, a reset connection, a truncated body: the request may or
	// may not have been applied.
	return uncertain, backoff, 0
}

// rateWait reads retry-after (seconds) or, failing that, ratelimit-reset
// (a Unix time) from a 429.
func rateWait(er *godo.ErrorResponse) (time.Duration, bool) {
	if er == nil || er.Response == nil {
		return 0, false
	}
	h := er.Response.Header
	if s := h.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n >= 0 {
			return time.Duration(n) * time.Second, true
		}
		if t, err := http.ParseTime(s); err == nil {
			return max(time.Until(t), 0), true
		}
	}
	if s := h.Get("Ratelimit-Reset"); s != "" && h.Get("Ratelimit-Remaining") == "0" {
		if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil {
			return max(time.Until(time.Unix(n, 0)), 0), true
		}
	}
	return 0, false
}

func (a *API) backoff(attempt int) time.Duration {
	d := a.opts.Backoff
	for i := 1; i < attempt && d < a.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, a.opts.MaxBackoff)
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// callOpts tune one call.
type callOpts struct {
	// exists is asked, after an attempt that may have been applied,
	// whether the call's effect is already there; if so the call is done
	// and not repeated. This is how a create never makes a duplicate.
	exists func(ctx context.Context) (bool, error)
	// stop, if it returns a non-nil error for a failed attempt, ends the
	// call with that error instead of retrying.
	stop func(er *godo.ErrorResponse) error
}

// errFound is returned by call when exists found the effect in place.
var errFound = errors.New("already applied")

// call runs fn until it succeeds, fails for good, or runs out of
// attempts. It returns errFound when co.exists found the effect after an
// uncertain attempt.
func (a *API) call(ctx context.Context, op string, co callOpts, fn func(ctx context.Context) (*godo.Response, error)) error {
	mayExist := false
	for attempt := 1; ; attempt++ {
		if mayExist && co.exists != nil {
			found, err := co.exists(ctx)
			if err != nil {
				return err
			}
			if found {
				a.opts.Logf("%s: the earlier attempt was applied after all; not repeating it", op)
				return errFound
			}
		}
		actx, cancel := context.WithTimeout(ctx, a.opts.RequestTimeout)
		resp, err := fn(actx)
		timedOut := actx.Err() != nil
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err = Scrub(err, a.token)
		if timedOut {
			err = fmt.Errorf("no answer within %v: %w", a.opts.RequestTimeout, err)
		}
		var er *godo.ErrorResponse
		errors.As(err, &er)
		if co.stop != nil && er != nil {
			if serr := co.stop(er); serr != nil {
				return serr
			}
		}
		kind, wait, status := a.classify(resp, err, attempt)
		if status == http.StatusUnauthorized && a.opts.TokenSource != "" {
			err = fmt.Errorf("the API refused the token from %s: %w", a.opts.TokenSource, err)
		}
		if kind == permanent {
			return &APIError{Op: op, Status: status, Err: err}
		}
		if kind == rateLimited && wait > a.opts.MaxRateWait {
			return &APIError{Op: op, Status: status, Err: fmt.Errorf("rate limited for %v, longer than the %v dosvob waits: %w", wait.Round(time.Second), a.opts.MaxRateWait, err)}
		}
		if attempt >= a.opts.MaxAttempts {
			return &APIError{Op: op, Status: status, Err: fmt.Errorf("giving up after %d attempts: %w", attempt, err)}
		}
		if kind == uncertain {
			mayExist = true
		}
		a.opts.Logf("%s: %v; retrying in %v", op, err, wait.Round(time.Millisecond))
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// do is call without an existence check, for reads and idempotent calls.
func (a *API) do(ctx context.Context, op string, fn func(ctx context.Context) (*godo.Response, error)) error {
	return a.call(ctx, op, callOpts{}, fn)
}

// listAll fetches every page of a list.
func listAll[T any](ctx context.Context, a *API, op string, page func(ctx context.Context, opt *godo.ListOptions) ([]T, *godo.Response, error)) ([]T, error) {
	var all []T
	opt := &godo.ListOptions{Page: 1, PerPage: 200}
	for {
		var items []T
		var resp *godo.Response
		err := a.do(ctx, op, func(ctx context.Context) (*godo.Response, error) {
			var err error
			items, resp, err = page(ctx, opt)
			return resp, err
		})
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if resp == nil || resp.Links == nil || resp.Links.IsLastPage() || len(items) == 0 {
			return all, nil
		}
		cur, err := resp.Links.CurrentPage()
		if err != nil {
			return nil, &APIError{Op: op, Err: fmt.Errorf("bad pagination links: %w", err)}
		}
		opt = &godo.ListOptions{Page: cur + 1, PerPage: 200}
	}
}

// ErrActionErrored is wrapped by the error of an action that ended
// "errored".
var ErrActionErrored = errors.New("action ended errored")

// waitAction polls an action until it completes, errors, or timeout passes.
func (a *API) waitAction(ctx context.Context, op string, timeout time.Duration, get func(ctx context.Context) (*godo.Action, *godo.Response, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var act *godo.Action
		err := a.do(ctx, op, one(&act, "action", get))
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
				return &APIError{Op: op, Err: fmt.Errorf("action did not finish within %v", timeout)}
			}
			return err
		}
		switch act.Status {
		case godo.ActionCompleted:
			return nil
		case "errored":
			return &APIError{Op: op, Err: fmt.Errorf("action %d: %w", act.ID, ErrActionErrored)}
		}
		if err := sleep(ctx, a.opts.Poll); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return &APIError{Op: op, Err: fmt.Errorf("action %d did not finish within %v", act.ID, timeout)}
			}
			return err
		}
	}
}
