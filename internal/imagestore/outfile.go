package imagestore

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OutputBusyError reports an output file whose temporary file another
// live process is writing (it holds the temporary file's lock). It is an
// ErrLocked.
type OutputBusyError struct{ Out, Tmp string }

func (e *OutputBusyError) Error() string {
	return fmt.Sprintf("another dosvob process is writing %q (it holds the lock of %q)", e.Out, e.Tmp)
}

func (e *OutputBusyError) Unwrap() error { return ErrLocked }

// tempSuffix names the temporary file of an output: OUT.dosvob-tmp, beside
// it, renamed to OUT when it is complete.
const tempSuffix = ".dosvob-tmp"

// openTemp opens the temporary file of the output out for writing, empty,
// and holds an exclusive lock (flock(2)) on it until the file is closed, so
// that another process can tell a live writer from a dead one.
//
// The name is fixed, so that a rerun finds what a killed run left. A
// leftover that nobody holds locked was left by a process that died (the
// kernel drops the lock with it): it is emptied and used, and logf says
// so. One that another process holds locked is being written: that is an
// *OutputBusyError (ErrLocked), and nothing is touched. A symbolic link or
// anything but a regular file by that name is never opened for writing.
//
// The caller removes the file before it closes it, or renames it to out
// while it is still open: either way under the lock, so that no other
// process takes the name over in between.
func openTemp(out string, logf func(string, ...any)) (*os.File, error) {
	tmp := out + tempSuffix
	for range 10 {
		made := true
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, fileMode) // a copy of volume data, as the image
		if errors.Is(err, os.ErrExist) {
			made = false
			f, err = os.OpenFile(tmp, os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
			if errors.Is(err, os.ErrNotExist) {
				continue // its writer finished or gave up meanwhile
			}
		}
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%q is a symbolic link, not a leftover of dosvob: %w", tmp, ErrExists)
		}
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &OutputBusyError{Out: out, Tmp: tmp}
			}
			return nil, fmt.Errorf("lock %s: %w", tmp, err)
		}
		// The lock is on the file that was opened: it must still be the
		// one by that name (its writer may have renamed or removed it
		// between the open and the lock).
		fi, err := f.Stat()
		cur, err2 := os.Lstat(tmp)
		if err != nil || err2 != nil || !os.SameFile(fi, cur) {
			f.Close()
			continue
		}
		if made {
			return f, nil
		}
		if !fi.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%q is not a regular file, not a leftover of dosvob: %w", tmp, ErrExists)
		}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, err
		}
		logf("found %q (%d bytes), left by a run that did not finish (no process writes it any more); writing it anew", tmp, fi.Size())
		return f, nil
	}
	return nil, fmt.Errorf("%q keeps changing: another dosvob process is writing it: %w", tmp, ErrLocked)
}
