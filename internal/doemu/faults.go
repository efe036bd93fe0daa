package doemu

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Fault describes a failure to inject into matching API calls.
//
// A call matches when its method equals Method (any method if empty) and
// its URL path matches Path, a regular expression anchored at both ends
// ("/v2/volumes", "/v2/volumes/[^/]+/actions"). Counting starts when the
// fault is injected: the Nth matching call is hit (0 and 1 both mean the
// next one), and so are the Times-1 matching calls after it (Times 0 means
// 1). Once spent, a fault is forgotten.
//
// What a hit does, in this order:
//   - Delay: the answer comes this much later.
//   - Hang: no answer at all until the client gives up (or the emulator
//     closes).
//   - Status (500, 502, 503, 429, ...): the call fails with this status and
//     DigitalOcean's error body; with AfterCommit the call is carried out
//     first (a retried create then makes a duplicate, as behind a real
//     gateway). RetryAfter, when set, is sent as the retry-after header.
//     Message replaces the error message.
//   - ActionErrored: the call succeeds, but the actions it starts (attach,
//     detach, resize, droplet create, power actions) end "errored" and
//     their change does not happen.
//   - LingerDetach: for a droplet delete, its volumes stay attached this long
//     after the droplet is gone.
//   - Body: the call is carried out, and its answer keeps its status but has
//     this body instead (`{"droplet": null}`, `{}`, a cut-off JSON): a
//     malformed answer, as a broken proxy or API release might send.
type Fault struct {
	Method        string
	Path          string
	Nth           int
	Times         int
	Status        int
	RetryAfter    string
	Message       string
	AfterCommit   bool
	Delay         time.Duration
	Hang          bool
	ActionErrored bool
	LingerDetach  time.Duration
	Body          string
}

type faultState struct {
	f    Fault
	re   *regexp.Regexp
	seen int
	hits int
}

func validPattern(p string) error {
	_, err := regexp.Compile("^(?:" + p + ")$")
	return err
}

// InjectFault arms f. It panics on an invalid Path pattern (a test bug).
func (e *Emulator) InjectFault(f Fault) {
	re := regexp.MustCompile("^(?:" + f.Path + ")$")
	if f.Nth < 1 {
		f.Nth = 1
	}
	if f.Times < 1 {
		f.Times = 1
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = append(e.faults, &faultState{f: f, re: re})
}

// ClearFaults disarms every injected fault.
func (e *Emulator) ClearFaults() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = nil
}

// PendingFaults reports how many injected faults have not fired yet (fully).
func (e *Emulator) PendingFaults() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.faults)
}

// takeFault counts a call against the armed faults and returns the first
// that hits it, or nil.
func (e *Emulator) takeFault(method, path string) *Fault {
	e.mu.Lock()
	defer e.mu.Unlock()
	var hit *Fault
	kept := e.faults[:0]
	for _, fs := range e.faults {
		if (fs.f.Method == "" || strings.EqualFold(fs.f.Method, method)) && fs.re.MatchString(path) {
			fs.seen++
			if hit == nil && fs.seen >= fs.f.Nth {
				f := fs.f
				hit = &f
				fs.hits++
			}
		}
		if fs.hits < fs.f.Times {
			kept = append(kept, fs)
		}
	}
	e.faults = kept
	return hit
}

func (f Fault) String() string {
	m := f.Method
	if m == "" {
		m = "any"
	}
	return fmt.Sprintf("%s %s (call %d)", m, f.Path, f.Nth)
}
