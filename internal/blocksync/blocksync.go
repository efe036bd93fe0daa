// Package blocksync computes signatures of images and deltas of devices
// against them: the work behind `dosvob-hash IMAGE` and
// `dosvob-hash --delta DEVICE`.
//
// Both read their source with several reads in flight (network block
// storage serves a deep queue much faster than one read at a time) and in
// bounded memory: a few block buffers, whatever the size of the source.
// Delta reads the device while the signature still arrives and compares
// each chunk of blocks (one read's worth) as soon as both their hashes and
// their signatures are there; it never waits for the whole signature
// stream.
//
// The package knows nothing of image stores, SSH or DigitalOcean: callers
// hand it an io.ReaderAt and stream writers (internal/format).
package blocksync

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/dosvob/dosvob/internal/format"
)

// Counters are the live figures of a run. Sign and Delta update them as
// they go; another goroutine may read them at any time (for progress).
type Counters struct {
	Total     atomic.Uint64 // blocks to scan
	Blocks    atomic.Uint64 // blocks scanned so far
	Data      atomic.Uint64 // Data records written
	Zero      atomic.Uint64 // Zero records written
	BytesRead atomic.Uint64 // bytes read from the source
	BytesSent atomic.Uint64 // bytes written to the output stream
}

// Options tune Sign and Delta. The zero value is good.
type Options struct {
	// Readers is the number of reads in flight; 0 means DefaultReaders.
	Readers int
	// Counters, if set, receives live figures.
	Counters *Counters
	// Level and Concurrency configure the delta's compressor (Delta only).
	Level       int
	Concurrency int
	// OnHash, if set, is called with each block hash in order before it is
	// written to the signature (Sign, and SignCached without OnHashes).
	OnHash func(index, hash uint64) error
	// OnHashes, if set, is called by SignCached instead of OnHash with
	// each chunk of hashes before it is written to the signature: those of
	// blocks first, first+1, ... as raw little-endian uint64s. hashes is
	// only valid during the call.
	OnHashes func(first uint64, hashes []byte) error
	// Digest, if set, receives the content that Sign or Delta reads, so
	// that the caller learns the whole-content digest of what was read
	// without a read of its own. A per-block digest of the stream's block
	// size takes the blocks' xxhash64(0, block), computed in the reading
	// goroutines beside the stream's hashes; any other gets the content in
	// a pass of its own.
	Digest *format.DeviceDigester
	// Want, if set (Delta only, with Digest), is the digest that Digest
	// must reach. Delta checks it before it writes the End record and, if
	// the content read differs, fails with a *DigestError and leaves the
	// stream without its End record, so that no reader takes the content
	// for whole. It is how a restore refuses an image that rotted since
	// its backup: the stream's own digests are of what was read.
	Want *uint64
}

// DigestError reports content whose digest is not Options.Want.
type DigestError struct{ Got, Want uint64 }

func (e *DigestError) Error() string {
	return fmt.Sprintf("the content read has digest %016x, not the expected %016x", e.Got, e.Want)
}

// feedDigest arranges for opts.Digest, if any, to receive the content
// readBlocks reads in blocks of blockSize: per block (it returns true, and
// the caller hands it each chunk's contents) or as a whole, beside any
// other whole-content writer.
func (o *Options) feedDigest(seeds *hashSeeds, blockSize uint32) bool {
	d := o.Digest
	switch {
	case d == nil:
		return false
	case d.PerBlock() && d.BlockSize() == blockSize:
		seeds.content = true
		return true
	case seeds.whole != nil:
		seeds.whole = io.MultiWriter(seeds.whole, d)
	default:
		seeds.whole = d
	}
	return false
}

func (o *Options) counters() *Counters {
	if o.Counters == nil {
		o.Counters = new(Counters)
	}
	return o.Counters
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(uint64(n))
	return n, err
}

// flushBytes is how much image a signature covers between flushes.
const flushBytes = 1 << 20

// Sign reads src (the content sw's header describes: Base.Size bytes) and
// adds the hash of every block to sw. It does not write the trailer: the
// caller records sw.Digest() where it must and then calls sw.Close.
func Sign(ctx context.Context, src io.ReaderAt, sw *format.SigWriter, opts Options) error {
	h := sw.Header()
	c := opts.counters()
	c.Total.Store(h.Blocks())
	// Hand the hashes on every MiB of image, so that the delta side, which
	// compares a read's worth of blocks at a time, never waits for a large
	// buffer to fill.
	flushEvery := uint64(max(1, flushBytes/int(h.BlockSize)))
	seeds := hashSeeds{seed: h.Seed}
	perBlock := opts.feedDigest(&seeds, h.BlockSize)
	err := readBlocks(ctx, src, h.Base.Size, h.BlockSize, seeds, opts.Readers, func(ch *chunk) error {
		nb := uint64(ch.blocks())
		if perBlock {
			opts.Digest.AddBlockHashes(ch.contents)
		}
		if opts.OnHash != nil {
			var b block
			for k := range ch.blocks() {
				ch.block(k, &b)
				if err := opts.OnHash(b.index, b.hash); err != nil {
					return err
				}
			}
		}
		if err := sw.AddRaw(ch.hashes); err != nil {
			return err
		}
		c.Blocks.Add(nb)
		c.BytesRead.Add(uint64(len(ch.buf)))
		if (ch.first+nb)/flushEvery != ch.first/flushEvery {
			return sw.Flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return sw.Flush()
}

// cachedChunk is how many bytes of hashes SignCached hands on at a time.
const cachedChunk = 64 << 10

// SignCached writes a signature from per-block hashes that are already
// known (an image store's cache), without reading the content: hashes
// yields the hash of each block in order as a little-endian uint64. It
// checks that there are at least as many as the header's blocks, takes
// exactly that many and, like Sign, does not write the trailer.
//
// It works on chunks of 64 KiB of hashes (8192 blocks), never on single
// hashes. As nothing is read, the delta side never waits for a block to be
// read and hashed: the header goes out at once and then each chunk in one
// write of 64 KiB, few and large writes into a pipe.
func SignCached(ctx context.Context, hashes io.Reader, sw *format.SigWriter, opts Options) error {
	h := sw.Header()
	c := opts.counters()
	total := h.Blocks()
	c.Total.Store(total)
	if err := sw.Flush(); err != nil {
		return err
	}
	buf := make([]byte, min(total*8, cachedChunk))
	for i := uint64(0); i < total; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(total-i, cachedChunk/8)
		p := buf[:n*8]
		if _, err := io.ReadFull(hashes, p); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("cached hashes of blocks %d to %d: %w", i, i+n-1, err)
		}
		switch {
		case opts.OnHashes != nil:
			if err := opts.OnHashes(i, p); err != nil {
				return err
			}
		case opts.OnHash != nil:
			for k := range n {
				if err := opts.OnHash(i+k, binary.LittleEndian.Uint64(p[8*k:])); err != nil {
					return err
				}
			}
		}
		if err := sw.AddRaw(p); err != nil {
			return err
		}
		if err := sw.Flush(); err != nil {
			return err
		}
		c.Blocks.Add(n)
		i += n
	}
	return nil
}

// ErrSignature wraps the errors of the incoming signature stream, so that
// callers can tell a bad input stream from a failing device.
var ErrSignature = errors.New("bad signature stream")

type sigError struct{ err error }

func (e *sigError) Error() string { return e.err.Error() }
func (e *sigError) Unwrap() []error {
	return []error{e.err, ErrSignature}
}

// Delta reads the device dev (devSize bytes) and the signature stream sr
// at the same time and writes to w a delta stream that turns the signed
// content into the device: a Data record for each block whose hash differs
// from its signature or that lies past the signed content's end, a Zero
// record instead when such a block is all zeros, and the End record. It
// returns the End record it wrote.
//
// The delta has the signature's version. From version 2 every device block
// is hashed under the next seed as well: the hashes of the unchanged blocks
// travel in Hashes records and the digest of them all in the End record,
// so that the patching side can keep them as the signature of the next
// run. From version 3 the device digest is made of per-block hashes too
// (format.DeviceDigester), so no serial pass over the content remains and
// an all-zero block is never hashed.
//
// Errors of the signature stream wrap ErrSignature (and the
// *format.ParseError, if any). On error the delta stream is left without an
// End record, so that no reader accepts it.
func Delta(ctx context.Context, sr *format.SigReader, dev io.ReaderAt, devSize uint64, w io.Writer, opts Options) (format.End, error) {
	sh := sr.Header()
	c := opts.counters()
	hdr := format.DeltaHeader{Version: sh.V(), BlockSize: sh.BlockSize, DeviceSize: devSize, Seed: sh.Seed, NextSeed: sh.NextSeed, Base: sh.Base}
	two := sh.V() >= 2
	c.Total.Store(hdr.Blocks())
	dw, err := format.NewDeltaWriter(countingWriter{w, &c.BytesSent}, hdr, format.DeltaOptions{Level: opts.Level, Concurrency: opts.Concurrency})
	if err != nil {
		return format.End{}, err
	}
	sigBlocks := sh.Blocks()
	bd := format.NewBlockDigester()
	nd := format.NewBlockDigester()
	dd := format.NewDeviceDigester(hdr.V(), hdr.BlockSize)
	seeds := hashSeeds{seed: sh.Seed, next: sh.NextSeed, two: two, content: dd.PerBlock()}
	if !dd.PerBlock() {
		// Versions 1 and 2 digest the content itself, in a pass of its own.
		seeds.whole = dd
	}
	perBlock := opts.feedDigest(&seeds, hdr.BlockSize)
	var sig []byte // the signature's hashes of the chunk's blocks
	err = readBlocks(ctx, dev, devSize, sh.BlockSize, seeds, opts.Readers, func(ch *chunk) error {
		nb := ch.blocks()
		bd.Write(ch.hashes)
		if two {
			nd.Write(ch.nexts)
		}
		if dd.PerBlock() {
			dd.AddBlockHashes(ch.contents)
		}
		if perBlock {
			opts.Digest.AddBlockHashes(ch.contents)
		}
		c.Blocks.Add(uint64(nb))
		c.BytesRead.Add(uint64(len(ch.buf)))
		ns := 0 // blocks of the chunk within the signed content
		if ch.first < sigBlocks {
			ns = int(min(uint64(nb), sigBlocks-ch.first))
			if cap(sig) < 8*ns {
				sig = make([]byte, 8*ns)
			}
			sig = sig[:8*ns]
			if err := sr.NextRaw(sig); err != nil {
				return &sigError{err}
			}
		}
		k := 0
		if ns > 0 && bytes.Equal(sig, ch.hashes[:8*ns]) {
			// The common case of an unchanged run: all of them, at once.
			var next []byte
			if two {
				next = ch.nexts[:8*ns]
			}
			if err := dw.UnchangedRaw(ch.first, ns, next); err != nil {
				return err
			}
			k = ns
		}
		var b block
		for ; k < nb; k++ {
			ch.block(k, &b)
			if k < ns && binary.LittleEndian.Uint64(sig[8*k:]) == b.hash {
				if err := dw.Unchanged(b.index, b.next); err != nil {
					return err
				}
				continue
			}
			if b.zero {
				c.Zero.Add(1)
				if err := dw.Zero(b.index); err != nil {
					return err
				}
				continue
			}
			c.Data.Add(1)
			if err := dw.Data(b.index, b.buf); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = drainSig(sr)
	}
	if err == nil && opts.Want != nil && opts.Digest != nil {
		if got := opts.Digest.Sum64(); got != *opts.Want {
			err = &DigestError{Got: got, Want: *opts.Want}
		}
	}
	if err != nil {
		dw.Abort()
		return format.End{}, err
	}
	end, err := dw.Close(format.End{
		BytesRead:    c.BytesRead.Load(),
		SigDigest:    sr.Digest(),
		BlockDigest:  bd.Sum64(),
		DeviceDigest: dd.Sum64(),
		NextDigest:   nd.Sum64(),
	})
	if err != nil {
		return format.End{}, fmt.Errorf("writing delta stream: %w", err)
	}
	return end, nil
}

// zeros is compared against in slices, so that checking a 16 MiB block
// needs no 16 MiB of zeros.
var zeros [64 << 10]byte

// isZero reports whether b holds only zero bytes.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// drainSig reads the signatures of blocks past the device's end and the
// trailer, which must be valid.
func drainSig(sr *format.SigReader) error {
	for {
		_, err := sr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &sigError{err}
		}
	}
}
