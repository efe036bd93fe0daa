package blocksync

import (
	"context"
	"encoding/binary"
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

// block is one block of a chunk, as (*chunk).block shows it.
type block struct {
	index   uint64
	buf     []byte // len = the block's length
	zero    bool   // buf is all zeros
	hash    uint64 // xxhash64(seed, buf)
	next    uint64 // xxhash64(next seed, buf), when hashSeeds.two
	content uint64 // xxhash64(0, buf), when hashSeeds.content
}

// chunk is the unit of reading: several consecutive blocks, so that small
// blocks still make large reads. Its hashes are raw little-endian uint64s,
// one per block, as streams and caches carry them, so that its consumer
// can digest, compare and pass them on a chunk at a time.
type chunk struct {
	first     uint64 // index of its first block
	blockSize uint64
	buf       []byte
	zero      []bool
	hashes    []byte // under the seed
	nexts     []byte // under the next seed, if any
	contents  []byte // under seed 0, if any
	err       error
	done      chan struct{}
}

// blocks is the number of blocks the chunk holds.
func (c *chunk) blocks() int { return len(c.zero) }

// block sets b to block k of the chunk.
func (c *chunk) block(k int, b *block) {
	lo := uint64(k) * c.blockSize
	b.index = c.first + uint64(k)
	b.buf = c.buf[lo:min(lo+c.blockSize, uint64(len(c.buf)))]
	b.zero = c.zero[k]
	b.hash = binary.LittleEndian.Uint64(c.hashes[8*k:])
	if c.nexts != nil {
		b.next = binary.LittleEndian.Uint64(c.nexts[8*k:])
	}
	if c.contents != nil {
		b.content = binary.LittleEndian.Uint64(c.contents[8*k:])
	}
}

// resize sets the chunk's length to nb blocks.
func (c *chunk) resize(nb uint64) {
	c.zero = c.zero[:nb]
	c.hashes = c.hashes[:8*nb]
	if c.nexts != nil {
		c.nexts = c.nexts[:8*nb]
	}
	if c.contents != nil {
		c.contents = c.contents[:8*nb]
	}
}

// chunkTarget is the preferred read size; memoryCap bounds the buffers.
// A read through the page cache is a copy by the CPU: in pieces of 256 KiB
// the buffers in flight stay in the CPU's own cache, where the hashing
// finds them (1 MiB pieces cost a third more CPU on a warm no-change run,
// docs/BENCHMARKS.md). A direct read goes from the device to memory with no
// copy; there larger requests serve a network disk better.
const (
	chunkTarget = 256 << 10
	chunkDirect = 1 << 20
	memoryCap   = 32 << 20
)

// directReader is a source that says whether its reads bypass the page
// cache (Source does).
type directReader interface{ IsDirect() bool }

// chunkSizeFor is the read size for src.
func chunkSizeFor(src io.ReaderAt) int {
	if d, ok := src.(directReader); ok && d.IsDirect() {
		return chunkDirect
	}
	return chunkTarget
}

// hashSeeds are the seeds readBlocks hashes each block with: always seed,
// next as well when two is set, and seed 0 when content is set (the
// per-block hashes of a version 3 DeviceDigest).
type hashSeeds struct {
	seed, next uint64
	two        bool
	content    bool
	// whole, if set, receives every byte of the source in order. It is
	// fed by a goroutine of its own after fn is done with a chunk, so that
	// this serial pass runs beside the comparing loop instead of in it.
	whole io.Writer
}

// readBlocks reads the blocks of src (size bytes, cut in blockSize blocks)
// with up to readers reads in flight (DefaultReaders when readers is 0),
// tells the all-zero blocks, hashes each block with the seeds (in the
// reading goroutines, so hashing runs in parallel; an all-zero block of
// full length is not hashed, as its hashes are constants), and calls fn
// for each chunk of blocks in order. fn must not keep the chunk or its
// slices after it returns. Reads are of about chunkSizeFor(src) (a whole
// number of blocks); at most readers+2 of them are buffered, and never
// more than 32 MiB. Nothing is allocated per block.
func readBlocks(ctx context.Context, src io.ReaderAt, size uint64, blockSize uint32, seeds hashSeeds, readers int, fn func(c *chunk) error) error {
	n := format.BlockCount(size, blockSize)
	if n == 0 {
		return nil
	}
	per, depth, readers := plan(src, size, blockSize, readers)
	chunkSize := per * uint64(blockSize)
	nchunks := (n + per - 1) / per

	free := make(chan *chunk, depth)
	for _, buf := range alignedBufs(int(chunkSize), depth) {
		c := &chunk{blockSize: uint64(blockSize), buf: buf, zero: make([]bool, per), hashes: make([]byte, 8*per), done: make(chan struct{}, 1)}
		if seeds.two {
			c.nexts = make([]byte, 8*per)
		}
		if seeds.content {
			c.contents = make([]byte, 8*per)
		}
		free <- c
	}
	// The hashes of a full all-zero block, which the readers do not compute.
	zeroHash := block{zero: true, hash: format.ZeroHash(seeds.seed, int(blockSize))}
	if seeds.two {
		zeroHash.next = format.ZeroHash(seeds.next, int(blockSize))
	}
	if seeds.content {
		zeroHash.content = format.ZeroHash(0, int(blockSize))
	}
	jobs := make(chan *chunk, depth)
	order := make(chan *chunk, depth)
	quit := make(chan struct{})
	defer close(quit)
	release := free // where the consumer hands a chunk when done with it
	if seeds.whole != nil {
		digestQ := make(chan *chunk, depth)
		digested := make(chan struct{})
		go func() {
			defer close(digested)
			for c := range digestQ {
				seeds.whole.Write(c.buf)
				c.buf = c.buf[:cap(c.buf)]
				free <- c
			}
		}()
		// Runs before close(quit): the digest is complete when
		// readBlocks returns.
		defer func() {
			close(digestQ)
			<-digested
		}()
		release = digestQ
	}

	for range readers {
		go func() {
			h := format.NewHasher(seeds.seed)
			h2 := format.NewHasher(seeds.next)
			h0 := format.NewHasher(0)
			for c := range jobs {
				off := c.first * uint64(blockSize)
				c.err = readFull(src, c.buf, int64(off))
				if c.err == nil {
					le := binary.LittleEndian
					for k := range c.zero {
						lo := uint64(k) * uint64(blockSize)
						b := c.buf[lo:min(lo+uint64(blockSize), uint64(len(c.buf)))]
						c.zero[k] = isZero(b)
						if c.zero[k] && len(b) == int(blockSize) {
							le.PutUint64(c.hashes[8*k:], zeroHash.hash)
							if seeds.two {
								le.PutUint64(c.nexts[8*k:], zeroHash.next)
							}
							if seeds.content {
								le.PutUint64(c.contents[8*k:], zeroHash.content)
							}
							continue
						}
						le.PutUint64(c.hashes[8*k:], h.Sum(b))
						if seeds.two {
							le.PutUint64(c.nexts[8*k:], h2.Sum(b))
						}
						if seeds.content {
							le.PutUint64(c.contents[8*k:], h0.Sum(b))
						}
					}
				}
				c.done <- struct{}{}
			}
		}()
	}
	go func() {
		defer close(jobs)
		defer close(order)
		for ci := range nchunks {
			var c *chunk
			select {
			case c = <-free:
			case <-quit:
				return
			}
			c.first = ci * per
			nb := min(per, n-c.first)
			off := c.first * uint64(blockSize)
			c.buf = c.buf[:min(nb*uint64(blockSize), size-off)]
			c.resize(nb)
			c.err = nil
			jobs <- c // never blocks: at most depth chunks exist
			order <- c
		}
	}()
	for c := range order {
		<-c.done
		if c.err != nil {
			return c.err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
		c.resize(per)
		if release == free {
			c.buf = c.buf[:cap(c.buf)]
		}
		release <- c
	}
	return ctx.Err()
}

// plan returns how readBlocks reads src (size bytes in blockSize blocks)
// when asked for readers reads in flight: blocks per chunk, chunks
// buffered, and the reads in flight it really keeps, which the memory cap
// and a small source may lower (to 0 for an empty one).
func plan(src io.ReaderAt, size uint64, blockSize uint32, readers int) (per uint64, depth, inFlight int) {
	per = uint64(max(1, chunkSizeFor(src)/int(blockSize)))
	chunkSize := per * uint64(blockSize)
	if readers <= 0 {
		readers = DefaultReaders
	}
	readers = min(readers, MaxReaders)
	depth = max(2, min(readers+2, int(memoryCap/chunkSize)))
	readers = max(1, min(readers, depth-1))
	nchunks := (format.BlockCount(size, blockSize) + per - 1) / per
	depth = int(min(uint64(depth), nchunks))
	return per, depth, min(readers, depth)
}

// ReadsInFlight is the number of reads Sign and Delta keep in flight on
// src (size bytes, in blockSize blocks) when asked for readers (0 for
// DefaultReaders): readers itself, unless the bound on buffer memory or a
// source of fewer chunks allows fewer.
func ReadsInFlight(src io.ReaderAt, size uint64, blockSize uint32, readers int) int {
	_, _, n := plan(src, size, blockSize, readers)
	return n
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
// otherwise (or the image was made with another). docs/BENCHMARKS.md has
// the measurements behind it: with 4 KiB blocks, an incremental whose
// changes are scattered 4 KiB writes sends no more than the changed data,
// while a run with no change costs about 15% more CPU than with 64 KiB
// blocks and the signature is 0.2% of the image size.
const DefaultBlockSize = 4 << 10

// DefaultZstdThreads is the number of compression goroutines of a delta.
const DefaultZstdThreads = 2
