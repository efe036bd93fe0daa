package doemu

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"

	"github.com/dosvob/dosvob/internal/testenv"
)

const testToken = "dop_v1_emulator-test-token"

// bearer adds the token to every request, as the oauth2 transport would.
type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// newEmu starts an emulator for one test, closed (and checked for leftover
// processes) at its end.
func newEmu(t *testing.T, opts Options) *Emulator {
	if opts.Token == "" {
		opts.Token = testToken
	}
	if opts.ActionDelay == 0 {
		opts.ActionDelay = 10 * time.Millisecond
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return e
}

// client returns a godo client for e with the given token.
func client(t *testing.T, e *Emulator, token string) *godo.Client {
	hc := &http.Client{Transport: bearer{token, http.DefaultTransport}, Timeout: 30 * time.Second}
	c, err := godo.New(hc, godo.SetBaseURL(e.URL()))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// apiErr asserts err is a *godo.ErrorResponse with status and a message
// containing msg.
func apiErr(t *testing.T, err error, status int, msg string) {
	var er *godo.ErrorResponse
	if !errors.As(err, &er) {
		t.Fatalf("got error %v (%T), want *godo.ErrorResponse %d", err, err, status)
	}
	if er.Response.StatusCode != status {
		t.Fatalf("got status %d (%s), want %d", er.Response.StatusCode, er.Message, status)
	}
	if !strings.Contains(er.Message, msg) {
		t.Fatalf("got message %q, want it to contain %q", er.Message, msg)
	}
	if er.RequestID == "" {
		t.Fatalf("error %q carries no request id", er.Message)
	}
}

// waitAction polls an action until it is no longer in progress.
func waitAction(t *testing.T, c *godo.Client, id int) *godo.Action {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		a, _, err := c.Actions.Get(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if a.Status != "in-progress" {
			return a
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("action %d still in progress", id)
	return nil
}

// waitActive polls a droplet until it is active.
func waitActive(t *testing.T, c *godo.Client, id int) *godo.Droplet {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		d, _, err := c.Droplets.Get(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Status == "active" {
			return d
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("droplet %d not active", id)
	return nil
}

// requireRoot skips (or, with CI=true, fails) a test that needs root, loop
// devices or sshd.
func requireRoot(t *testing.T, what ...string) {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, w := range what {
		switch w {
		case "sshd":
			if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
				missing = append(missing, "/usr/sbin/sshd (openssh-server)")
			}
			if _, err := exec.LookPath("ssh"); err != nil {
				missing = append(missing, "ssh (openssh-client)")
			}
		case "loop":
			if _, err := os.Stat("/dev/loop-control"); err != nil {
				missing = append(missing, "/dev/loop-control")
			}
			if _, err := exec.LookPath("losetup"); err != nil {
				missing = append(missing, "losetup")
			}
		}
	}
	if len(missing) == 0 {
		return
	}
	testenv.SkipOrFail(t, "needs %s", strings.Join(missing, ", "))
}
