package doemu

import (
	"net/http"
	"time"
)

// The emulator's own endpoints, beside the DigitalOcean API, for scripts and
// tests that drive the standalone command (they need the same token):
//
//	GET    /emulator/state   State as JSON
//	GET    /emulator/calls   Calls as JSON
//	POST   /emulator/faults  arm a fault (FaultSpec as JSON)
//	DELETE /emulator/faults  disarm every fault
//
// DigitalOcean has no such paths, so a client that works against the
// emulator cannot depend on them by accident.

// FaultSpec is a Fault as JSON, with durations as Go duration strings
// ("1.5s", "300ms").
type FaultSpec struct {
	Method        string `json:"method"`
	Path          string `json:"path"`
	Nth           int    `json:"nth"`
	Times         int    `json:"times"`
	Status        int    `json:"status"`
	RetryAfter    string `json:"retry_after"`
	Message       string `json:"message"`
	AfterCommit   bool   `json:"after_commit"`
	Delay         string `json:"delay"`
	Hang          bool   `json:"hang"`
	ActionErrored bool   `json:"action_errored"`
	LingerDetach  string `json:"linger_detach"`
	Body          string `json:"body"`
}

// Fault converts the spec, checking its durations and pattern.
func (s FaultSpec) Fault() (Fault, error) {
	f := Fault{
		Method: s.Method, Path: s.Path, Nth: s.Nth, Times: s.Times, Status: s.Status,
		RetryAfter: s.RetryAfter, Message: s.Message, AfterCommit: s.AfterCommit,
		Hang: s.Hang, ActionErrored: s.ActionErrored, Body: s.Body,
	}
	var err error
	if s.Delay != "" {
		if f.Delay, err = time.ParseDuration(s.Delay); err != nil {
			return f, errUnprocessable("delay: %v", err)
		}
	}
	if s.LingerDetach != "" {
		if f.LingerDetach, err = time.ParseDuration(s.LingerDetach); err != nil {
			return f, errUnprocessable("linger_detach: %v", err)
		}
	}
	if s.Path == "" {
		return f, errUnprocessable("path is required")
	}
	if err := validPattern(s.Path); err != nil {
		return f, errUnprocessable("path: %v", err)
	}
	if s.Status != 0 && (s.Status < 400 || s.Status > 599) {
		return f, errUnprocessable("status must be an HTTP error status")
	}
	return f, nil
}

func (e *Emulator) controlState(r *request) (reply, error) {
	return reply{http.StatusOK, e.State()}, nil
}

func (e *Emulator) controlCalls(r *request) (reply, error) {
	calls := e.Calls()
	if calls == nil {
		calls = []Call{}
	}
	return reply{http.StatusOK, map[string]any{"calls": calls}}, nil
}

func (e *Emulator) controlAddFault(r *request) (reply, error) {
	var spec FaultSpec
	if err := r.decode(&spec); err != nil {
		return reply{}, err
	}
	f, err := spec.Fault()
	if err != nil {
		return reply{}, err
	}
	e.InjectFault(f)
	return reply{http.StatusCreated, map[string]any{"fault": spec}}, nil
}

func (e *Emulator) controlClearFaults(r *request) (reply, error) {
	e.ClearFaults()
	return reply{http.StatusNoContent, nil}, nil
}
