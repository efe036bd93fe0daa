// Package doemu emulates the part of DigitalOcean's API v2 that dosvob uses,
// so that provisioning, teardown and the whole backup run can be tested, and
// demonstrated, without a DigitalOcean account.
//
// The emulator is an HTTP server on a loopback address; the real godo client
// reaches it through godo.SetBaseURL. It keeps volumes, volume snapshots,
// droplets, SSH keys and tags in memory, answers in the shapes of
// DigitalOcean's OpenAPI description, and behaves as DigitalOcean does where
// dosvob depends on it: actions are asynchronous, droplets start "new" with no
// address, attach limits and validation rules are enforced with DigitalOcean's
// status codes and messages, lists are paginated, every response carries
// rate-limit headers, and faults can be injected (see Fault).
//
// Volumes and snapshots are backed by sparse files in a data directory. With
// Options.SSH, every active droplet gets its own loopback address and a real
// OpenSSH sshd keyed from the droplet's cloud-init user data, and its attached
// volumes appear under $DOSVOB_ROOT/dev/disk/by-id/scsi-0DO_Volume_<name>,
// where DOSVOB_ROOT is set by that sshd for every login (on a real droplet
// it is unset, so the same path names the real device).
package doemu

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Defaults for Options fields left zero.
const (
	DefaultActionDelay      = 2 * time.Second
	DefaultSnapshotInterval = 10 * time.Minute
	DefaultRequestLimit     = 5000
	DefaultRateWindow       = time.Hour
	DefaultBurstLimit       = 250
	DefaultKeyListLimit     = 10
	DefaultSSHPort          = 22
	DefaultSSHD             = "/usr/sbin/sshd"
	MaxVolumesPerDroplet    = 15
	MaxSnapshotsPerVolume   = 25
)

// Options configure an Emulator. Only Token is required.
type Options struct {
	// Token is the bearer token every request must carry; any other token
	// gets 401 {"id":"unauthorized",...}.
	Token string
	// Listen is the address to listen on (default "127.0.0.1:0"). It must be
	// a loopback address.
	Listen string
	// ActionDelay is how long actions stay "in-progress" before they complete
	// (default 2s; tests use a few milliseconds). Droplets become active after
	// it too. A negative value means no delay at all.
	ActionDelay time.Duration
	// DetachDelay is how long a deleted droplet's volumes stay attached to it
	// (default: ActionDelay). Fault.LingerDetach overrides it per request.
	DetachDelay time.Duration
	// Account is the seed; nil means an empty account with default regions,
	// sizes and images.
	Account *Account
	// DataDir holds the backing files of volumes and snapshots and the
	// droplets' directories. Empty means a temporary directory that Close
	// removes.
	DataDir string
	// SnapshotInterval is the minimum time between two snapshots of one
	// volume (DigitalOcean: 10 minutes, the default). Negative disables it.
	SnapshotInterval time.Duration
	// RequestLimit requests are allowed per RateWindow (defaults 5000 per
	// hour, as DigitalOcean). Each request counts for one RateWindow after
	// it was made; past the limit a request gets 429 without retry-after,
	// and ratelimit-reset says when the oldest one counted expires.
	RequestLimit int
	RateWindow   time.Duration
	// BurstLimit requests are allowed per minute (default 250, as
	// DigitalOcean; negative: no burst limit); past it a request gets 429
	// with retry-after.
	BurstLimit int
	// KeyListLimit GET /v2/account/keys are allowed per minute (default 10,
	// as DigitalOcean; negative: no such limit); past it one gets 429 with
	// retry-after.
	KeyListLimit int
	// SSH starts a real sshd for every active droplet (needs root and
	// /usr/sbin/sshd), on 127.0.0.2, 127.0.0.3, ... port SSHPort (default 22).
	SSH     bool
	SSHPort int
	// SSHD is the sshd binary (default DefaultSSHD). With SSH, New fails
	// at once unless it runs as root and SSHD is an executable file
	// (CheckSSH).
	SSHD string
	// NoLoopDevices makes attached volumes symlinks to their backing files
	// even when loop devices could be used.
	NoLoopDevices bool
	// Logf receives the emulator's log lines (requests, sshd output). Nil
	// discards them.
	Logf func(format string, args ...any)
}

// Emulator is a running emulated DigitalOcean API.
type Emulator struct {
	opts    Options
	ln      net.Listener
	srv     *http.Server
	url     string
	dataDir string
	tempDir bool

	mu           sync.Mutex
	closed       bool
	closing      chan struct{}
	bg           sync.WaitGroup // background jobs (action completions)
	timers       map[*time.Timer]struct{}
	volumes      map[string]*volume
	snapshots    map[string]*snapshot
	droplets     map[int]*droplet
	deleted      map[*droplet]bool // deleted droplets whose sshd and devices may still need stopping
	keys         map[int]*Key
	tags         map[string]string // lower-case name -> canonical name
	actions      map[int]*action
	nextID       int
	regions      []Region
	sizes        []Size
	images       []Image
	account      AccountInfo
	faults       []*faultState
	rate         rateState
	requests     int
	calls        []Call
	rts          []route
	lastSnapshot map[string]time.Time // volume ID -> its newest snapshot, deleted or not

}

// New starts an emulator listening on a loopback address.
func New(opts Options) (*Emulator, error) {
	if opts.Token == "" {
		return nil, errors.New("doemu: a token is required")
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.ActionDelay == 0 {
		opts.ActionDelay = DefaultActionDelay
	} else if opts.ActionDelay < 0 {
		opts.ActionDelay = 0
	}
	if opts.DetachDelay == 0 {
		opts.DetachDelay = opts.ActionDelay
	} else if opts.DetachDelay < 0 {
		opts.DetachDelay = 0
	}
	if opts.SnapshotInterval == 0 {
		opts.SnapshotInterval = DefaultSnapshotInterval
	}
	if opts.RequestLimit <= 0 {
		opts.RequestLimit = DefaultRequestLimit
	}
	if opts.RateWindow <= 0 {
		opts.RateWindow = DefaultRateWindow
	}
	if opts.BurstLimit == 0 {
		opts.BurstLimit = DefaultBurstLimit
	}
	if opts.KeyListLimit == 0 {
		opts.KeyListLimit = DefaultKeyListLimit
	}
	if opts.SSHPort == 0 {
		opts.SSHPort = DefaultSSHPort
	}
	if opts.SSHD == "" {
		opts.SSHD = DefaultSSHD
	}
	if opts.SSH {
		if err := CheckSSH(opts.SSHD); err != nil {
			return nil, fmt.Errorf("doemu: SSH %w", err)
		}
	}
	host, _, err := net.SplitHostPort(opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("doemu: bad listen address %q: %w", opts.Listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("doemu: listen address %q is not a loopback address", opts.Listen)
	}

	e := &Emulator{
		opts:         opts,
		closing:      make(chan struct{}),
		timers:       map[*time.Timer]struct{}{},
		volumes:      map[string]*volume{},
		snapshots:    map[string]*snapshot{},
		droplets:     map[int]*droplet{},
		deleted:      map[*droplet]bool{},
		keys:         map[int]*Key{},
		tags:         map[string]string{},
		actions:      map[int]*action{},
		nextID:       1,
		lastSnapshot: map[string]time.Time{},
	}
	e.rts = e.routes()

	if opts.DataDir == "" {
		d, err := os.MkdirTemp("", "doemu-")
		if err != nil {
			return nil, err
		}
		e.dataDir, e.tempDir = d, true
	} else {
		d, err := filepath.Abs(opts.DataDir)
		if err != nil {
			return nil, err
		}
		e.dataDir = d
	}
	for _, sub := range []string{"volumes", "snapshots", "droplets"} {
		if err := os.MkdirAll(filepath.Join(e.dataDir, sub), 0o700); err != nil {
			e.removeData()
			return nil, err
		}
	}

	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		e.removeData()
		return nil, fmt.Errorf("doemu: %w", err)
	}
	e.ln = ln
	e.url = "http://" + ln.Addr().String() + "/"

	if err := e.seed(opts.Account); err != nil {
		ln.Close()
		e.stopAll()
		e.removeData()
		return nil, err
	}

	e.srv = &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second}
	go e.srv.Serve(ln)
	e.logf("listening on %s", e.url)
	return e, nil
}

// URL returns the base URL for godo.SetBaseURL, with a trailing slash.
func (e *Emulator) URL() string { return e.url }

// DataDir returns the directory holding backing files and droplet roots.
func (e *Emulator) DataDir() string { return e.dataDir }

// Close stops the server, waits for pending actions, stops every droplet's
// sshd, detaches every loop device, removes the droplets' directories and,
// if the data directory was temporary, all of it. It is safe to call more
// than once.
func (e *Emulator) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	close(e.closing)
	for t := range e.timers {
		if t.Stop() {
			e.bg.Done()
		}
	}
	e.timers = nil
	e.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	if err != nil {
		e.srv.Close()
	}
	e.bg.Wait()
	e.stopAll()
	e.removeData()
	return nil
}

// stopAll stops every sshd and frees every loop device.
func (e *Emulator) stopAll() {
	e.mu.Lock()
	ds := make([]*droplet, 0, len(e.droplets)+len(e.deleted))
	for _, d := range e.droplets {
		ds = append(ds, d)
	}
	for d := range e.deleted {
		ds = append(ds, d)
	}
	e.mu.Unlock()
	for _, d := range ds {
		e.stopDroplet(d)
		// The droplets' directories hold host keys; the emulator's state,
		// droplets included, does not outlive it anyway.
		os.RemoveAll(d.Root)
	}
}

func (e *Emulator) removeData() {
	if e.tempDir {
		os.RemoveAll(e.dataDir)
	}
}

func (e *Emulator) logf(format string, args ...any) {
	if e.opts.Logf != nil {
		e.opts.Logf(format, args...)
	}
}

// afterLocked runs f after d in the background, unless the emulator closes
// first; f runs without the lock held. Call with mu held.
func (e *Emulator) afterLocked(d time.Duration, f func()) {
	if e.closed {
		return
	}
	e.bg.Add(1)
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			e.bg.Done()
			return
		}
		delete(e.timers, t)
		e.mu.Unlock()
		defer e.bg.Done()
		f()
	})
	e.timers[t] = struct{}{}
}

func (e *Emulator) checkToken(r *http.Request) bool {
	got := r.Header.Get("Authorization")
	want := "Bearer " + e.opts.Token
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newID returns a fresh integer ID (droplets, keys, actions). Call with mu held.
func (e *Emulator) newID(base int) int {
	e.nextID++
	return base + e.nextID
}
