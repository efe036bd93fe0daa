package blocksync

import (
	"errors"
	"io"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment O_DIRECT reads need here: buffer address,
// offset and length all multiples of it (4096 covers 512- and 4096-byte
// logical sectors).
const directAlign = 4096

// Source is a device or file opened for reading blocks.
type Source struct {
	f      *os.File    // buffered
	direct *os.File    // O_DIRECT, for block devices; nil if unavailable
	off    atomic.Bool // O_DIRECT was refused: buffered from now on
	// Direct counts the reads served with O_DIRECT, Buffered the others.
	Direct, Buffered atomic.Uint64
}

// OpenSource opens path for reading. A block device is read with O_DIRECT
// where the kernel allows it: the reads go straight from the device into
// the chunk buffers, with no copy through the page cache (less CPU, and a
// cache that a volume read once would only pollute), and the reads in
// flight reach the device as a real queue. A regular file, or a read that
// O_DIRECT cannot serve (unaligned, or refused), goes through the page
// cache as usual.
func OpenSource(path string) (*Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	s := &Source{f: f}
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 {
		if d, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0); err == nil {
			s.direct = d
		}
	}
	return s, nil
}

// File is the buffered file (for Size and Stat).
func (s *Source) File() *os.File { return s.f }

// ReadAt reads len(p) bytes at off, with O_DIRECT when p, off and len(p)
// are aligned.
func (s *Source) ReadAt(p []byte, off int64) (int, error) {
	if s.direct != nil && !s.off.Load() && aligned(p, off) {
		n, err := s.direct.ReadAt(p, off)
		if !errors.Is(err, unix.EINVAL) {
			s.Direct.Add(1)
			return n, err
		}
		// Refused (a device with larger sectors): buffered from now on.
		s.off.Store(true)
	}
	s.Buffered.Add(1)
	return s.f.ReadAt(p, off)
}

// IsDirect reports whether reads go with O_DIRECT (so far).
func (s *Source) IsDirect() bool { return s.direct != nil && !s.off.Load() }

// Close closes both descriptors.
func (s *Source) Close() error {
	if s.direct != nil {
		s.direct.Close()
	}
	return s.f.Close()
}

func aligned(p []byte, off int64) bool {
	return len(p) > 0 && len(p)%directAlign == 0 && off%directAlign == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%directAlign == 0
}

// hugePage is the size of a transparent huge page (x86-64 and arm64 with
// 4 KiB pages).
const hugePage = 2 << 20

// alignedBufs returns count zeroed buffers of n bytes each, cut one after
// another from one allocation whose first byte is directAlign-aligned (so
// each buffer is, when n is a multiple of directAlign). Each buffer's
// capacity is its length.
//
// When they come to a huge page or more, the allocation starts on a huge
// page and the kernel is asked to back it with huge pages (MADV_HUGEPAGE:
// transparent huge pages are on for those who ask in the kernels' default
// "madvise" mode). A direct read pins every page of its buffer for the
// device and unpins it after; with 2 MiB pages instead of 4 KiB ones that
// costs the kernel about half the CPU time (docs/BENCHMARKS.md). It is a
// request, not a need: where the kernel declines, the pages are small and
// all else is the same.
func alignedBufs(n, count int) [][]byte {
	total := n * count
	align := directAlign
	if total >= hugePage {
		align = hugePage
	}
	b := make([]byte, total+align)
	k := int(uintptr(unsafe.Pointer(&b[0])) % uintptr(align))
	if k != 0 {
		k = align - k
	}
	b = b[k : k+total : k+total]
	if align == hugePage {
		_ = unix.Madvise(b[:total/hugePage*hugePage], unix.MADV_HUGEPAGE)
	}
	bufs := make([][]byte, count)
	for i := range bufs {
		bufs[i] = b[i*n : (i+1)*n : (i+1)*n]
	}
	return bufs
}

var _ io.ReaderAt = (*Source)(nil)
