package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dosvob/dosvob/internal/cliutil"
)

// StateVersion is the version of state.json. A reader refuses others.
const StateVersion = 1

// Run modes.
const (
	ModeBackup  = "backup"
	ModeRestore = "restore"
)

// Run is the document dosvob-provision prints on stdout (docs/RUN-JSON.md).
type Run struct {
	RunID          string       `json:"run_id"`
	CreatedAt      time.Time    `json:"created_at"`
	Mode           string       `json:"mode"`
	PrivateKeyPath string       `json:"private_key_path"`
	KnownHostsPath string       `json:"known_hosts_path"`
	Droplets       []RunDroplet `json:"droplets"`
	Volumes        []RunVolume  `json:"volumes"`
}

// RunDroplet is one droplet of a run.
type RunDroplet struct {
	ID              int    `json:"id"`
	Name            string `json:"name"`
	Region          string `json:"region"`
	Address         string `json:"address"`
	Port            int    `json:"port"`
	User            string `json:"user"`
	HostKey         string `json:"host_key"`
	RemoteHashPath  string `json:"remote_hash_path"`
	RemotePatchPath string `json:"remote_patch_path,omitempty"`
}

// RunVolume is one volume of a run: in a backup the copy of a source
// volume, in a restore the new volume to fill.
type RunVolume struct {
	SourceName        string    `json:"source_name,omitempty"`
	SourceID          string    `json:"source_id,omitempty"`
	Region            string    `json:"region"`
	SnapshotID        string    `json:"snapshot_id,omitempty"`
	SnapshotCreatedAt time.Time `json:"snapshot_created_at,omitzero"`
	CopyName          string    `json:"copy_name"`
	CopyID            string    `json:"copy_id"`
	SizeBytes         int64     `json:"size_bytes"`
	DropletID         int       `json:"droplet_id"`
	DevicePath        string    `json:"device_path"`
	Kept              bool      `json:"kept,omitempty"`
}

// State is what the state directory keeps of a run: everything in Run,
// plus what teardown needs after a crash. Every resource's name is written
// before it is created, and its id as soon as it is known.
type State struct {
	Version   int       `json:"version"`
	RunID     string    `json:"run_id"`
	CreatedAt time.Time `json:"created_at"`
	Mode      string    `json:"mode"`
	// Status is "provisioning", "ready", "failed" or "interrupted".
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// KeptOnFailure is set on a failed run whose resources were left for
	// inspection (dosvob-provision --keep-on-failure).
	KeptOnFailure bool `json:"kept_on_failure,omitempty"`
	// Owner is what keeps the run alive (see Provisioner.Survey); absent
	// in the state of older versions.
	Owner    *OwnerState    `json:"owner,omitempty"`
	Key      KeyState       `json:"ssh_key"`
	Droplets []DropletState `json:"droplets"`
	Volumes  []VolumeState  `json:"volumes"`
}

// OwnerState names the lock that keeps a run alive: while some process
// holds Lock (flock), the run is alive and no other run's cleanup touches
// it. A killed owner's lock goes away with its processes.
type OwnerState struct {
	// Lock is the lock file's absolute path: the caller's
	// (dosvob-provision --owner-lock-fd, as the scripts give it), held
	// for the whole run, or else the run's own lock file, held by
	// dosvob-provision while it runs.
	Lock string `json:"lock"`
	// Caller is set when Lock is the caller's.
	Caller bool `json:"caller,omitempty"`
	// Dev and Inode identify the lock file that was held (absent in the
	// state of older versions). A file at Lock that is another one (the
	// lock was removed, as a cleaner of /tmp or /run may, and made again)
	// says nothing about the run's owner.
	Dev   uint64 `json:"dev,omitempty"`
	Inode uint64 `json:"inode,omitempty"`
}

// newOwner names the lock f, open, as a run's owner.
func newOwner(f *os.File, caller bool) (*OwnerState, error) {
	abs, err := filepath.Abs(f.Name())
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("the owner's lock %q: %w", abs, err)
	}
	o := &OwnerState{Lock: abs, Caller: caller}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		o.Dev, o.Inode = uint64(st.Dev), st.Ino
	}
	return o, nil
}

// isLock says whether fi is the owner's lock file, as far as the state
// tells: a state without Dev and Inode takes any file at Lock for it.
func (o *OwnerState) isLock(fi os.FileInfo) bool {
	if o.Inode == 0 {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && uint64(st.Dev) == o.Dev && st.Ino == o.Inode
}

// KeyState is the run's account SSH key.
type KeyState struct {
	Name        string `json:"name"`
	ID          int    `json:"id,omitempty"`
	Fingerprint string `json:"fingerprint"`
}

// DropletState is a droplet of the run; ID 0 until created.
type DropletState struct {
	RunDroplet
	Size string `json:"size"`
}

// VolumeState is a volume of the run.
type VolumeState struct {
	RunVolume
	SizeGiB      int64  `json:"size_gigabytes"`
	SnapshotName string `json:"snapshot_name,omitempty"`
	// SnapshotDeleted is set once the snapshot is gone; SnapshotID stays
	// for the record but is left out of the run JSON.
	SnapshotDeleted bool   `json:"snapshot_deleted,omitempty"`
	DropletName     string `json:"droplet_name,omitempty"`
}

// Run returns the run document for s, with the key paths of store.
func (s *State) Run(st *Store) Run {
	r := Run{
		RunID:          s.RunID,
		CreatedAt:      s.CreatedAt,
		Mode:           s.Mode,
		PrivateKeyPath: st.KeyPath(s.RunID),
		KnownHostsPath: st.KnownHostsPath(s.RunID),
		Droplets:       []RunDroplet{},
		Volumes:        []RunVolume{},
	}
	for _, d := range s.Droplets {
		r.Droplets = append(r.Droplets, d.RunDroplet)
	}
	for _, v := range s.Volumes {
		rv := v.RunVolume
		if v.SnapshotDeleted {
			rv.SnapshotID = ""
		}
		r.Volumes = append(r.Volumes, rv)
	}
	return r
}

// Store is the state directory: <dir>/runs/<run-id>/{state.json,
// id_ed25519, known_hosts, lock} and <dir>/lock.
type Store struct {
	Dir string
	// AfterSave, if set, is called after every successful Save with the
	// number of saves so far. Tests use it to kill the process between
	// steps.
	AfterSave func(n int)

	mu    sync.Mutex
	saves int
	lock  *os.File
}

// ErrLocked is returned by Lock when another dosvob process holds the lock.
var ErrLocked = errors.New("another dosvob-provision or dosvob-teardown is running")

// OpenStore returns the store in dir. The directory is made (mode 0700)
// only when something is written: a dry run leaves no trace.
func OpenStore(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("no state directory")
	}
	return &Store{Dir: dir}, nil
}

// Lock makes the state directory if needed and takes its lock without
// waiting.
func (s *Store) Lock() error {
	return s.LockWait(context.Background(), 0, nil)
}

// LockWait is Lock, waiting up to timeout while another process holds the
// lock (saying so once through logf, if set). The lock is held only for
// short steps (a provision's look at earlier runs and the start of its
// own; a teardown), so concurrent runs wait for each other's steps rather
// than fail.
func (s *Store) LockWait(ctx context.Context, timeout time.Duration, logf func(string, ...any)) error {
	if err := os.MkdirAll(filepath.Join(s.Dir, "runs"), 0o700); err != nil {
		return fmt.Errorf("state directory %q: %w", s.Dir, cliutil.PathCause(err))
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	said := false
	for {
		err := lockFile(f)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrLocked) {
			f.Close()
			return err
		}
		if !time.Now().Before(deadline) {
			f.Close()
			return fmt.Errorf("%w (lock %q)", ErrLocked, f.Name())
		}
		if !said && logf != nil {
			logf("waiting for the state directory's lock %q: another dosvob-provision or dosvob-teardown is at a step that takes it", f.Name())
			said = true
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			f.Close()
			return err
		}
	}
	s.lock = f
	return nil
}

// LockHeld reports whether some process holds a flock on the file path.
// It takes a shared lock for an instant to find out.
func LockHeld(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return lockHeld(f)
}

// lockHeld is LockHeld on a file that is open (and stays so).
func lockHeld(f *os.File) (bool, error) {
	err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if err == nil {
		// Let go at once: the shared lock would keep its owner out.
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return false, nil
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	return false, err
}

// lockFile takes an exclusive flock on f without waiting.
func lockFile(f *os.File) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("%w (lock %s)", ErrLocked, f.Name())
	}
	return err
}

// Unlock releases the lock.
func (s *Store) Unlock() {
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
}

// RunDir is the directory of one run.
func (s *Store) RunDir(id string) string { return filepath.Join(s.Dir, "runs", id) }

// KeyPath is the run's private key file.
func (s *Store) KeyPath(id string) string { return filepath.Join(s.RunDir(id), "id_ed25519") }

// KnownHostsPath is the run's known_hosts file.
func (s *Store) KnownHostsPath(id string) string { return filepath.Join(s.RunDir(id), "known_hosts") }

// runLockPath is the run's own lock file, held by dosvob-provision while
// it runs when no caller's lock keeps the run alive.
func (s *Store) runLockPath(id string) string { return filepath.Join(s.RunDir(id), "lock") }

func (s *Store) statePath(id string) string { return filepath.Join(s.RunDir(id), "state.json") }

// Create makes the run directory. It fails if the run exists.
func (s *Store) Create(id string) error {
	if !ValidRunID(id) {
		return fmt.Errorf("invalid run id %q", id)
	}
	if err := os.MkdirAll(filepath.Join(s.Dir, "runs"), 0o700); err != nil {
		return err
	}
	return os.Mkdir(s.RunDir(id), 0o700)
}

// Save writes st atomically (temporary file, fsync, rename, fsync of the
// directory): after a crash state.json is the old or the new version.
func (s *Store) Save(st *State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Version = StateVersion
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(s.statePath(st.RunID), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save run state: %w", err)
	}
	s.saves++
	if s.AfterSave != nil {
		s.AfterSave(s.saves)
	}
	return nil
}

// Load reads a run's state.
func (s *Store) Load(id string) (*State, error) {
	if !ValidRunID(id) {
		return nil, fmt.Errorf("invalid run id %q", id)
	}
	data, err := os.ReadFile(s.statePath(id))
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("run state %s: %w", s.statePath(id), err)
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("run state %s: unsupported version %d", s.statePath(id), st.Version)
	}
	if st.RunID != id {
		return nil, fmt.Errorf("run state %s: holds run %q", s.statePath(id), st.RunID)
	}
	return &st, nil
}

// Runs lists the run ids that have a directory, oldest first.
func (s *Store) Runs() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.Dir, "runs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() && ValidRunID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Remove records the run as torn down (MarkTornDown) and deletes its
// directory: its state and its key files. Call it once the run's teardown
// has succeeded.
func (s *Store) Remove(id string) error {
	if err := s.MarkTornDown(id); err != nil {
		return err
	}
	return os.RemoveAll(s.RunDir(id))
}

// tornDownPath is the list of the runs torn down from this state
// directory: one run id a line, appended to, never rewritten.
func (s *Store) tornDownPath() string { return filepath.Join(s.Dir, "torn-down") }

// MarkTornDown records that the runs ids were torn down, so that a later
// teardown of one of them knows it for a run that existed and is gone (a
// success), not an id that no run ever had (a mistyped one). A run is
// recorded once; its line costs 23 bytes: a run every hour adds 200 KB a
// year.
func (s *Store) MarkTornDown(ids ...string) error {
	recorded, err := s.tornDown()
	if err != nil {
		return err
	}
	var b strings.Builder
	if n := len(recorded); n > 0 && recorded[n-1] != "" {
		b.WriteString("\n") // after a line that a crash cut short
	}
	start := b.Len()
	for _, id := range ids {
		if !ValidRunID(id) {
			return fmt.Errorf("invalid run id %q", id)
		}
		if !slices.Contains(recorded, id) {
			recorded = append(recorded, id)
			b.WriteString(id + "\n")
		}
	}
	if b.Len() == start {
		return nil
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("state directory %q: %w", s.Dir, cliutil.PathCause(err))
	}
	f, err := os.OpenFile(s.tornDownPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Known reports whether the state directory knows the run id: it has the
// run's directory, or a record that the run was torn down.
func (s *Store) Known(id string) (bool, error) {
	if !ValidRunID(id) {
		return false, nil
	}
	if _, err := os.Stat(s.RunDir(id)); err == nil {
		return true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	recorded, err := s.tornDown()
	return slices.Contains(recorded, id), err
}

// tornDown returns the lines of the list of runs torn down. (A line cut
// short by a crash matches no run id: harmless.)
func (s *Store) tornDown() ([]string, error) {
	data, err := os.ReadFile(s.tornDownPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return strings.Split(string(data), "\n"), nil
}

// WriteFileAtomic writes data to path through a temporary file and a
// rename, with fsyncs, so path is never seen half-written.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
