package imagestore

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked reports that another dosvob process holds the writer lock of an
// image: a patch, a recovery or a restore is running on it.
var ErrLocked = errors.New("locked")

// LockedError names the image whose lock is held.
type LockedError struct{ Path string }

func (e *LockedError) Error() string {
	return fmt.Sprintf("%q is locked by another dosvob process", e.Path)
}
func (e *LockedError) Unwrap() error { return ErrLocked }

// flock is an advisory whole-file lock (flock(2)) on a file in the state
// directory. The kernel drops it when the process dies, so a killed run
// never leaves a stale lock behind.
type flock struct{ f *os.File }

// lockFile takes an exclusive lock on name. With wait, it retries until
// timeout; otherwise it fails at once with ErrLocked.
func lockFile(name string, wait time.Duration) (*flock, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, fileMode)
	if errors.Is(err, unix.EROFS) {
		// A backup disk mounted read-only, as for a disaster recovery:
		// flock needs no write access, and still excludes a writer that
		// reaches the same file through a writable mount.
		f, err = os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			return nil, missingLock(name)
		}
	}
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &flock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, ErrLocked
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *flock) unlock() {
	if l == nil || l.f == nil {
		return
	}
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
	l.f = nil
}
