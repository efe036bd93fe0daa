package imagestore

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fsys is the narrow file-system interface through which the store makes
// every change to disk. Production code uses osFS; the power-loss tests wrap
// it in a dropFS that silently discards every mutation after the Nth, which is
// what a machine that loses power between two writes looks like from disk.
type fsys interface {
	OpenFile(name string, flag int, perm os.FileMode) (file, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	Mkdir(name string, perm os.FileMode) error
	// SyncDir fsyncs a directory so that renames and creations in it are
	// durable.
	SyncDir(name string) error
}

// file is an open file of an fsys.
type file interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Truncate(size int64) error
	Sync() error
	Close() error
	Stat() (os.FileInfo, error)
	// Punch deallocates [off, off+n) keeping the file size: the range reads
	// as zeros afterwards.
	Punch(off, n int64) error
	// SetModTime sets the modification time (and leaves the access time).
	SetModTime(t time.Time) error
}

// osFS is the real file system. When the environment variable
// DOSVOB_TEST_CRASH_AT holds a number K, the process sends itself SIGKILL
// just before its Kth mutating operation: the kill tests use it to stop
// dosvob-patch at chosen steps. Without it nothing changes.
type osFS struct {
	mu      sync.Mutex
	ops     int
	crashAt int
}

func newOSFS() *osFS {
	fs := &osFS{}
	if v := os.Getenv("DOSVOB_TEST_CRASH_AT"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			fs.crashAt = n
		}
	}
	return fs
}

// step counts one mutating operation and carries out the crash hook.
func (fs *osFS) step() {
	if fs == nil || fs.crashAt == 0 {
		return
	}
	fs.mu.Lock()
	fs.ops++
	n := fs.ops
	fs.mu.Unlock()
	if n == fs.crashAt {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal arrives asynchronously; never go on
	}
}

func (fs *osFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	if flag&(os.O_CREATE|os.O_TRUNC) != 0 {
		fs.step()
	}
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f: f, fs: fs}, nil
}

func (fs *osFS) Rename(oldpath, newpath string) error {
	fs.step()
	return os.Rename(oldpath, newpath)
}

func (fs *osFS) Remove(name string) error {
	fs.step()
	return os.Remove(name)
}

func (fs *osFS) Mkdir(name string, perm os.FileMode) error {
	fs.step()
	return os.Mkdir(name, perm)
}

func (fs *osFS) SyncDir(name string) error {
	fs.step()
	return syncDir(name)
}

func syncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

type osFile struct {
	f  *os.File
	fs *osFS
}

func (o *osFile) ReadAt(p []byte, off int64) (int, error) { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) {
	o.fs.step()
	return o.f.WriteAt(p, off)
}
func (o *osFile) Truncate(size int64) error {
	o.fs.step()
	return o.f.Truncate(size)
}
func (o *osFile) Sync() error {
	o.fs.step()
	return o.f.Sync()
}
func (o *osFile) Close() error               { return o.f.Close() }
func (o *osFile) Stat() (os.FileInfo, error) { return o.f.Stat() }
func (o *osFile) Punch(off, n int64) error {
	o.fs.step()
	return punch(o.f, off, n)
}

// SetModTime is not a step of the kill tests: a crash on either side of it
// leaves the same content, and at worst a hash cache that is not trusted.
func (o *osFile) SetModTime(t time.Time) error { return os.Chtimes(o.f.Name(), time.Time{}, t) }

// punch deallocates a range of f. File systems without hole punching get
// the zeros written instead, so the contents are right either way.
func punch(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("punch hole in %s: %w", filepath.Base(f.Name()), err)
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// dropFS wraps an fsys and silently discards every mutating operation after
// the first limit ones, reporting success: the process goes on believing its
// writes landed, exactly like one whose machine lost power at that moment
// (ordering aside, which fsync already enforces). Used by the power-loss
// tests.
type dropFS struct {
	inner fsys
	mu    sync.Mutex
	limit int
	ops   int
	// lossy also loses, at the cut, every write, punch and truncate that
	// was not yet fsynced (see revert): the page cache dies with the power.
	lossy bool
	// rnd, if set, picks which unsynced operations are lost (each with
	// probability 1/2, as the kernel writes dirty pages back in any order);
	// without it all of them are.
	rnd    *rand.Rand
	unsync map[string][]undo // per path, in order, since the last fsync
	lost   int               // operations revert undid
	punch  int               // Punch calls (holes made)
}

// undo restores what one unsynced operation changed in a file.
type undo struct {
	off  int64
	old  []byte // bytes before the operation (as far as the file reached)
	size int64  // file size before the operation
}

// remember records, before an operation on [off, off+n) of f, what it is
// about to change.
func (d *dropFS) remember(f *dropFile, off, n int64) {
	if !d.lossy || f.inner == nil {
		return
	}
	fi, err := f.inner.Stat()
	if err != nil {
		return
	}
	u := undo{off: off, size: fi.Size()}
	if off < fi.Size() && n > 0 {
		u.old = make([]byte, min(n, fi.Size()-off))
		f.inner.ReadAt(u.old, off)
	}
	d.mu.Lock()
	if d.unsync == nil {
		d.unsync = map[string][]undo{}
	}
	d.unsync[f.name] = append(d.unsync[f.name], u)
	d.mu.Unlock()
}

// revert undoes the operations that no fsync made durable (all, or a
// random half), newest first: the state of the disk after the power came
// back.
func (d *dropFS) revert() error {
	for name, us := range d.unsync {
		f, err := os.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			continue // removed or renamed away meanwhile
		}
		for i := len(us) - 1; i >= 0; i-- {
			u := us[i]
			if d.rnd != nil && d.rnd.IntN(2) == 0 {
				continue // this one reached the disk before the power went
			}
			if len(u.old) > 0 {
				f.WriteAt(u.old, u.off)
			}
			f.Truncate(u.size)
			d.lost++
		}
		f.Close()
	}
	d.unsync = nil
	return nil
}

// allow counts one mutation and reports whether it may reach the disk.
func (d *dropFS) allow() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops++
	return d.ops <= d.limit
}

func (d *dropFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	if flag&(os.O_CREATE|os.O_TRUNC) != 0 && !d.allow() {
		// The file may not exist on disk; hand out a file that drops
		// everything and reads as empty.
		if _, err := os.Stat(name); err != nil {
			return &dropFile{d: d, name: name}, nil
		}
		flag &^= os.O_CREATE | os.O_TRUNC
	}
	if flag&os.O_TRUNC != 0 {
		d.mu.Lock()
		delete(d.unsync, name) // a new file: what it held before does not matter
		d.mu.Unlock()
	}
	f, err := d.inner.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &dropFile{d: d, inner: f, name: name}, nil
}

func (d *dropFS) Rename(o, n string) error {
	if !d.allow() {
		return nil
	}
	d.mu.Lock()
	if us, ok := d.unsync[o]; ok {
		d.unsync[n] = us
		delete(d.unsync, o)
	} else {
		delete(d.unsync, n)
	}
	d.mu.Unlock()
	return d.inner.Rename(o, n)
}

func (d *dropFS) Remove(name string) error {
	if !d.allow() {
		return nil
	}
	return d.inner.Remove(name)
}

func (d *dropFS) Mkdir(name string, perm os.FileMode) error {
	if !d.allow() {
		return nil
	}
	return d.inner.Mkdir(name, perm)
}

func (d *dropFS) SyncDir(name string) error {
	if !d.allow() {
		return nil
	}
	return d.inner.SyncDir(name)
}

type dropFile struct {
	d     *dropFS
	inner file // nil: the file never reached the disk
	name  string
}

func (f *dropFile) ReadAt(p []byte, off int64) (int, error) {
	if f.inner == nil {
		return 0, io.EOF
	}
	return f.inner.ReadAt(p, off)
}

func (f *dropFile) WriteAt(p []byte, off int64) (int, error) {
	if !f.d.allow() || f.inner == nil {
		return len(p), nil
	}
	f.d.remember(f, off, int64(len(p)))
	return f.inner.WriteAt(p, off)
}

func (f *dropFile) Truncate(size int64) error {
	if !f.d.allow() || f.inner == nil {
		return nil
	}
	if fi, err := f.inner.Stat(); err == nil && size < fi.Size() {
		f.d.remember(f, size, fi.Size()-size)
	} else {
		f.d.remember(f, 0, 0)
	}
	return f.inner.Truncate(size)
}

func (f *dropFile) Sync() error {
	if !f.d.allow() || f.inner == nil {
		return nil
	}
	f.d.mu.Lock()
	delete(f.d.unsync, f.name)
	f.d.mu.Unlock()
	return f.inner.Sync()
}

func (f *dropFile) Punch(off, n int64) error {
	f.d.mu.Lock()
	f.d.punch++
	f.d.mu.Unlock()
	if !f.d.allow() || f.inner == nil {
		return nil
	}
	f.d.remember(f, off, n)
	return f.inner.Punch(off, n)
}

func (f *dropFile) SetModTime(t time.Time) error {
	if !f.d.allow() || f.inner == nil {
		return nil
	}
	return f.inner.SetModTime(t)
}

func (f *dropFile) Close() error {
	if f.inner == nil {
		return nil
	}
	return f.inner.Close()
}

func (f *dropFile) Stat() (os.FileInfo, error) {
	if f.inner == nil {
		return nil, os.ErrNotExist
	}
	return f.inner.Stat()
}
