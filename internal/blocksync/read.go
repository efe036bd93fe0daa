package blocksync

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/dosvob/dosvob/internal/format"
	"golang.org/x/sys/unix"
)

// DefaultReaders is the number of reads in flight when Options.Readers is 0.
// Network block storage answers each read after a millisecond or so; several
// outstanding reads keep its queue busy (docs/BENCHMARKS.md).
const DefaultReaders = 8

// MaxReaders bounds Options.Readers.
const MaxReaders = 64

// block is one block read from the source, with its hash.
type block struct {
	index uint64
	buf   []byte // len = the block's length
	hash  uint64 // xxhash64(seed, buf)
	err   error
	done  chan struct{}
}

// readBlocks reads the blocks of src (size bytes, cut in blockSize blocks)
// with up to readers reads in flight, hashes each one with seed, and calls
// fn for each block in order. fn must not keep b.buf after it returns.
// Memory: (readers+2) buffers of blockSize.
func readBlocks(ctx context.Context, src io.ReaderAt, size uint64, blockSize uint32, seed uint64, readers int, fn func(b *block) error) error {
	n := format.BlockCount(size, blockSize)
	if n == 0 {
		return nil
	}
	readers = max(1, min(readers, MaxReaders))
	depth := readers + 2
	free := make(chan *block, depth)
	for range depth {
		free <- &block{buf: make([]byte, blockSize), done: make(chan struct{}, 1)}
	}
	jobs := make(chan *block, depth)
	order := make(chan *block, depth)
	quit := make(chan struct{})
	defer close(quit)

	for range readers {
		go func() {
			h := format.NewHasher(seed)
			for b := range jobs {
				b.err = readFull(src, b.buf, int64(b.index)*int64(blockSize))
				if b.err == nil {
					b.hash = h.Sum(b.buf)
				}
				b.done <- struct{}{}
			}
		}()
	}
	go func() {
		defer close(jobs)
		defer close(order)
		for i := range n {
			var b *block
			select {
			case b = <-free:
			case <-quit:
				return
			}
			b.index = i
			b.buf = b.buf[:format.BlockLen(size, blockSize, i)]
			b.err = nil
			jobs <- b // never blocks: at most depth blocks exist
			order <- b
		}
	}()
	for b := range order {
		<-b.done
		if b.err != nil {
			return b.err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(b); err != nil {
			return err
		}
		b.buf = b.buf[:cap(b.buf)]
		free <- b
	}
	return ctx.Err()
}

// readFull reads len(p) bytes at off. A source that ends early (it shrank
// while being read) is an error.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("short read at offset %d: got %d of %d bytes (did the source shrink?)", off, n, len(p))
	}
	return fmt.Errorf("read at offset %d: %w", off, err)
}

// Size returns the size of an open device or regular file: the size from
// stat for a file, the size of the block device (found by seeking to its
// end) otherwise. It also tells the kernel the file will be read
// sequentially.
func Size(f *os.File) (uint64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	switch m := fi.Mode(); {
	case m.IsRegular():
		return uint64(fi.Size()), nil
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, fmt.Errorf("size of block device %q: %w", f.Name(), err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return 0, err
		}
		return uint64(end), nil
	default:
		return 0, fmt.Errorf("%q is neither a block device nor a regular file", f.Name())
	}
}

// DefaultBlockSize is the block size dosvob-hash signs with unless told
// otherwise; docs/BENCHMARKS.md has the measurements behind it.
const DefaultBlockSize = 64 << 10

// DefaultZstdThreads is the number of compression goroutines of a delta.
const DefaultZstdThreads = 2
