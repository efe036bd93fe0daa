package imagestore

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/dosvob/dosvob/internal/blockdev"
	"golang.org/x/sys/unix"
)

// ErrReadOnly reports an image on a file system mounted read-only that
// cannot be used as it is without a write: it holds an interrupted run,
// which must be rolled back (or finished) first, or a lock file of its
// state directory is missing.
var ErrReadOnly = errors.New("read-only file system")

// ReadOnlyError says which of the two it is, and Hint what to do.
type ReadOnlyError struct {
	Image string
	Lock  string // the missing lock file; "" for an interrupted run
}

func (e *ReadOnlyError) Error() string {
	if e.Lock != "" {
		return fmt.Sprintf("%q is missing, and it cannot be made again: the file system of %q is read-only (dosvob locks the image through that empty file)", e.Lock, e.Image)
	}
	return fmt.Sprintf("%q holds an interrupted run that must be rolled back (or finished) before the image can be read, and its file system is read-only", e.Image)
}

func (e *ReadOnlyError) Unwrap() error { return ErrReadOnly }

// Hint tells the user how to get on.
func (e *ReadOnlyError) Hint() string {
	remount := "remount its disk read-write"
	if mp := blockdev.MountPointOf(filepath.Dir(e.Image)); mp != "" {
		remount = fmt.Sprintf("remount its disk read-write (mount -o remount,rw %s)", mp)
	}
	if e.Lock != "" {
		return fmt.Sprintf("%s and run this again, which makes the file; or copy %q and %q again with a tool that keeps empty files (cp -a, rsync -a)",
			remount, e.Image, StateDir(e.Image))
	}
	return fmt.Sprintf("%s and run this again, which rolls the run back; or copy %q and %q to a writable disk (cp -a) and use the copy",
		remount, e.Image, StateDir(e.Image))
}

// checkWritable refuses, with a *ReadOnlyError, to recover an interrupted
// run on a read-only file system: every way of finishing or undoing it
// writes. The caller holds the writer lock, so the run is not alive.
func (s *Store) checkWritable() error {
	for _, p := range []string{s.dir, s.path} {
		if errors.Is(unix.Access(p, unix.W_OK), unix.EROFS) {
			return &ReadOnlyError{Image: s.path}
		}
	}
	return nil
}

// missingLock is the error for the lock file name that does not exist on a
// read-only file system.
func missingLock(name string) error {
	return &ReadOnlyError{Image: strings.TrimSuffix(filepath.Dir(name), stateSuffix), Lock: name}
}
