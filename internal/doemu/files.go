package doemu

import (
	"errors"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// createSparse creates an empty file (the caller sizes it with Truncate, so
// it stays a hole until written).
func createSparse(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// copySparse copies src to a new file dst, keeping holes: only the data
// extents that SEEK_DATA/SEEK_HOLE report are copied, so a mostly empty
// 1 GiB volume costs only its data. Where the file system cannot report
// extents the whole file is copied, skipping all-zero blocks.
func copySparse(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	size := fi.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	fd := int(in.Fd())
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return copyDense(in, out, off, size, buf)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return copyDense(in, out, data, size, buf)
		}
		if err := copyRange(in, out, data, hole, buf); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies [from, to) of in to the same offsets of out, skipping
// all-zero blocks (they stay holes in out).
func copyRange(in, out *os.File, from, to int64, buf []byte) error {
	for off := from; off < to; {
		n := int64(len(buf))
		if to-off < n {
			n = to - off
		}
		b := buf[:n]
		if _, err := in.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if !allZero(b) {
			if _, err := out.WriteAt(b, off); err != nil {
				return err
			}
		}
		off += n
	}
	return nil
}

func copyDense(in, out *os.File, from, size int64, buf []byte) error {
	return copyRange(in, out, from, size, buf)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// allocatedBytes reports the bytes a file occupies on disk.
func allocatedBytes(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}
