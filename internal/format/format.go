// Package format encodes and decodes dosvob's two wire streams: the
// signature stream (one xxhash64 per block of an image) and the delta stream
// (the blocks of a device that differ from a signature, zstd-compressed).
//
// Both streams start with a fixed binary header that a reader validates
// completely before it returns, so a consumer can refuse a stream before it
// writes anything. Both end with a record that proves the stream is complete:
// the signature trailer (block count and digest of everything before it) and
// the delta End record (counts and digests). A reader reports io.EOF only
// after that final record has been checked; any other end is an error.
//
// As with compress/gzip, the contents of a delta stream are tentative until
// DeltaReader.Next has returned io.EOF: a consumer that applies Data and Zero
// records as they arrive must be able to undo them if the stream then fails.
//
// The byte-level specification is docs/FORMAT.md.
package format

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// Version is the newest stream version; this package reads and writes
// versions MinVersion to Version. Version 2 adds the next seed: the
// signature announces the seed of the next run, the delta carries the
// hashes of the blocks it sends no record for under that seed (Hashes
// records), and its End record their digest, so that the image store can
// keep a signature cache for the next run without reading the image.
// Version 3 keeps the layout of version 2 and changes what End.DeviceDigest
// digests: the per-block hashes xxhash64(0, block) instead of the content
// itself, so that it is computed block by block, in parallel, and at no
// cost for an all-zero block (see DeviceDigester).
const Version = 3

// MinVersion is the oldest stream version this package reads (and writes
// when a header asks for it).
const MinVersion = 1

// Magic strings, distinct per stream type.
const (
	SigMagic   = "DOSVOB\x00S"
	DeltaMagic = "DOSVOB\x00D"
)

// Header and record sizes in bytes. The V2 sizes hold the next seed too.
const (
	SigHeaderSize     = 64 // version 1
	SigHeaderSizeV2   = 72
	SigTrailerSize    = 16
	DeltaHeaderSize   = 72 // version 1
	DeltaHeaderSizeV2 = 80
	endRecordSize     = 1 + 8*8 // version 1: type byte, 7 fields, record digest
	endRecordSizeV2   = 1 + 9*8 // version 2: type byte, 8 fields, record digest
	hashesRecordHead  = 1 + 8 + 4
)

// Block size limits. A block size must be a power of two in this range.
const (
	MinBlockSize = 4 << 10
	MaxBlockSize = 16 << 20
)

// MaxWindow is the largest zstd window a delta stream may use. Readers refuse
// frames that declare a larger one, which bounds their memory.
const MaxWindow = 8 << 20

// Sentinel errors. Every error a reader returns for bad input is a
// *ParseError wrapping one of these (or io.ErrUnexpectedEOF).
var (
	ErrMagic        = errors.New("bad magic")
	ErrVersion      = errors.New("unsupported version")
	ErrFlags        = errors.New("unknown flags")
	ErrChecksum     = errors.New("checksum mismatch")
	ErrBlockSize    = errors.New("invalid block size")
	ErrRecord       = errors.New("invalid record")
	ErrCount        = errors.New("count mismatch")
	ErrCompression  = errors.New("corrupt compressed data")
	ErrTrailingData = errors.New("trailing data after end of stream")
)

// ParseError reports malformed input. Err is one of the sentinel errors or
// io.ErrUnexpectedEOF; errors.Is sees through it.
type ParseError struct {
	Stream string // "signature stream" or "delta stream"
	Msg    string // what is wrong, with the bad value quoted
	Err    error
}

func (e *ParseError) Error() string { return e.Stream + ": " + e.Msg }
func (e *ParseError) Unwrap() error { return e.Err }

// stream names a stream type in errors.
type stream string

const (
	sigStream   stream = "signature stream"
	deltaStream stream = "delta stream"
)

// errorf returns a *ParseError wrapping err.
func (s stream) errorf(err error, format string, args ...any) error {
	return &ParseError{Stream: string(s), Msg: fmt.Sprintf(format, args...), Err: err}
}

// readErr turns a read error into a ParseError for truncation, and wraps
// any other (I/O) error without making it a ParseError.
func (s stream) readErr(err error, format string, args ...any) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return s.errorf(io.ErrUnexpectedEOF, format, args...)
	}
	var pe *ParseError
	if errors.As(err, &pe) {
		return err
	}
	return fmt.Errorf("reading %s: %w", s, err)
}

func sigErr(err error, format string, args ...any) error {
	return sigStream.errorf(err, format, args...)
}

func deltaErr(err error, format string, args ...any) error {
	return deltaStream.errorf(err, format, args...)
}

// Base identifies the image content a signature was made from.
type Base struct {
	// ImageID is the random id the store gave the image when it created it;
	// all zero when there is no image yet.
	ImageID [16]byte
	// Generation is the store's commit counter for the image (0 for a new
	// or partial image).
	Generation uint64
	// Size is the image size in bytes.
	Size uint64
}

// SigHeader is the header of a signature stream.
type SigHeader struct {
	// Version is the stream version: 0 or 1 for version 1, 2 for version 2.
	// A reader sets it to the version it read.
	Version   uint16
	BlockSize uint32
	Seed      uint64 // xxhash64 seed of every block hash
	// NextSeed (version 2) is the seed the delta side hashes every device
	// block with as well, for the signature cache of the next run.
	NextSeed uint64
	Base     Base
}

// V returns the stream version (1 for a zero Version).
func (h SigHeader) V() uint16 { return max(h.Version, 1) }

// Size is the length of the encoded header.
func (h SigHeader) Size() int {
	if h.V() >= 2 {
		return SigHeaderSizeV2
	}
	return SigHeaderSize
}

// Blocks is the number of block hashes that follow the header.
func (h SigHeader) Blocks() uint64 { return BlockCount(h.Base.Size, h.BlockSize) }

// DeltaHeader is the plain (uncompressed) header of a delta stream. Seed and
// Base echo the signature the delta was computed against.
type DeltaHeader struct {
	// Version is the stream version: 0 or 1 for version 1, 2 for version 2.
	Version    uint16
	BlockSize  uint32
	DeviceSize uint64
	Seed       uint64
	NextSeed   uint64 // version 2: copied from the signature
	Base       Base
}

// V returns the stream version (1 for a zero Version).
func (h DeltaHeader) V() uint16 { return max(h.Version, 1) }

// Size is the length of the encoded header.
func (h DeltaHeader) Size() int {
	if h.V() >= 2 {
		return DeltaHeaderSizeV2
	}
	return DeltaHeaderSize
}

// SigBlocks is the number of blocks of the signed content (Base.Size).
func (h DeltaHeader) SigBlocks() uint64 { return BlockCount(h.Base.Size, h.BlockSize) }

// MaxHashes is the most hashes one Hashes record may carry: one block's
// worth of bytes, so that a reader's buffer never exceeds a block.
func (h DeltaHeader) MaxHashes() int { return int(h.BlockSize / 8) }

// Blocks is the number of blocks of the device.
func (h DeltaHeader) Blocks() uint64 { return BlockCount(h.DeviceSize, h.BlockSize) }

// BlockLen is the length of block i of the device: BlockSize, or less for a
// short last block.
func (h DeltaHeader) BlockLen(i uint64) int { return BlockLen(h.DeviceSize, h.BlockSize, i) }

// End is the final record of a delta stream.
type End struct {
	Blocks      uint64 // number of blocks of the device
	DataRecords uint64 // number of Data records in the stream
	ZeroRecords uint64 // number of Zero records in the stream
	BytesRead   uint64 // bytes the producer read from the device (informational)
	// SigDigest is the signature stream digest as the producer received it
	// (the digest in its trailer). The consumer compares it with the digest
	// of the signature stream it expected the delta to be made against.
	SigDigest uint64
	// BlockDigest is xxhash64 (seed 0) over the little-endian 64-bit
	// per-block hashes xxhash64(Seed, block) of the whole device.
	BlockDigest uint64
	// DeviceDigest is the digest of the entire device content, as
	// DeviceDigester computes it for the stream's version: in versions 1
	// and 2 xxhash64 (seed 0) of the content, from version 3 xxhash64
	// (seed 0) over the little-endian per-block hashes xxhash64(0, block).
	DeviceDigest uint64
	// NextDigest (version 2) is xxhash64 (seed 0) over the little-endian
	// per-block hashes xxhash64(NextSeed, block) of the whole device.
	NextDigest uint64
}

// BlockCount returns ceil(size/blockSize).
func BlockCount(size uint64, blockSize uint32) uint64 {
	if blockSize == 0 {
		return 0
	}
	n := size / uint64(blockSize)
	if size%uint64(blockSize) != 0 {
		n++
	}
	return n
}

// BlockLen returns the length of block i of a content of the given size.
func BlockLen(size uint64, blockSize uint32, i uint64) int {
	if i >= BlockCount(size, blockSize) {
		return 0
	}
	off := i * uint64(blockSize)
	if rest := size - off; rest < uint64(blockSize) {
		return int(rest)
	}
	return int(blockSize)
}

// ValidBlockSize reports whether n is a power of two in [MinBlockSize, MaxBlockSize].
func ValidBlockSize(n uint32) bool {
	return n >= MinBlockSize && n <= MaxBlockSize && bits.OnesCount32(n) == 1
}

// HashBlock returns the per-block hash xxhash64(seed, b).
func HashBlock(seed uint64, b []byte) uint64 {
	d := xxhash.NewWithSeed(seed)
	d.Write(b)
	return d.Sum64()
}

// zeros is hashed in pieces by ZeroHash.
var zeros [64 << 10]byte

// ZeroHash returns the per-block hash xxhash64(seed, b) of a block b of n
// zero bytes, without a buffer of n bytes.
func ZeroHash(seed uint64, n int) uint64 {
	d := xxhash.NewWithSeed(seed)
	for rest := n; rest > 0; rest -= len(zeros) {
		d.Write(zeros[:min(rest, len(zeros))])
	}
	return d.Sum64()
}

// Hasher computes per-block hashes without allocating.
type Hasher struct {
	d    *xxhash.Digest
	seed uint64
}

// NewHasher returns a Hasher for the given seed.
func NewHasher(seed uint64) *Hasher { return &Hasher{d: xxhash.NewWithSeed(seed), seed: seed} }

// Sum returns xxhash64(seed, b).
func (h *Hasher) Sum(b []byte) uint64 {
	h.d.ResetWithSeed(h.seed)
	h.d.Write(b)
	return h.d.Sum64()
}

// BlockDigester computes End.BlockDigest from the per-block hashes in order.
type BlockDigester struct {
	d   *xxhash.Digest
	buf [8]byte
}

// NewBlockDigester returns an empty BlockDigester.
func NewBlockDigester() *BlockDigester { return &BlockDigester{d: xxhash.New()} }

// Add appends the hash of the next block.
func (b *BlockDigester) Add(h uint64) {
	binary.LittleEndian.PutUint64(b.buf[:], h)
	b.d.Write(b.buf[:])
}

// Write adds the hashes of the next blocks given as raw little-endian
// uint64s, as they are stored and sent: Write(p) is Add of each of them,
// since the digest is xxhash64 over their concatenation. It never fails.
func (b *BlockDigester) Write(p []byte) (int, error) { return b.d.Write(p) }

// Sum64 returns the digest of the hashes added so far.
func (b *BlockDigester) Sum64() uint64 { return b.d.Sum64() }

// DeviceDigester computes End.DeviceDigest of a stream version from the
// device content in order. For versions 1 and 2 it is xxhash64 (seed 0) of
// the content. From version 3 it is xxhash64 (seed 0) over the
// little-endian per-block hashes xxhash64(0, block) (the last block may be
// short), like BlockDigest with seed 0: the per-block hashes can be
// computed in parallel and handed in with AddBlockHash, and the hash of an
// all-zero block is a constant.
type DeviceDigester struct {
	whole     *xxhash.Digest // versions 1 and 2
	perBlock  *BlockDigester // version 3
	block     *xxhash.Digest // version 3: the block being written
	blockSize uint64
	filled    uint64 // bytes of the current block written so far
}

// NewDeviceDigester returns a DeviceDigester for a stream version and
// block size.
func NewDeviceDigester(version uint16, blockSize uint32) *DeviceDigester {
	if version < 3 {
		return &DeviceDigester{whole: xxhash.New()}
	}
	return &DeviceDigester{perBlock: NewBlockDigester(), block: xxhash.New(), blockSize: uint64(blockSize)}
}

// PerBlock reports whether the digest is made of per-block hashes (version
// 3 and later), which AddBlockHash may hand in.
func (d *DeviceDigester) PerBlock() bool { return d.perBlock != nil }

// BlockSize is the block size of a per-block digest (0 for a whole-content
// one): the blocks whose hashes AddBlockHash takes.
func (d *DeviceDigester) BlockSize() uint32 { return uint32(d.blockSize) }

// Write adds the next bytes of the content, cut anywhere. It never fails.
func (d *DeviceDigester) Write(p []byte) (int, error) {
	if d.whole != nil {
		return d.whole.Write(p)
	}
	n := len(p)
	for len(p) > 0 {
		k := min(uint64(len(p)), d.blockSize-d.filled)
		d.block.Write(p[:k])
		d.filled += k
		p = p[k:]
		if d.filled == d.blockSize {
			d.perBlock.Add(d.block.Sum64())
			d.block.Reset()
			d.filled = 0
		}
	}
	return n, nil
}

// AddBlockHash adds the next block by its hash xxhash64(0, block). It may
// only be used when PerBlock is true and Write has not left a block
// unfinished.
func (d *DeviceDigester) AddBlockHash(h uint64) {
	if d.perBlock == nil || d.filled != 0 {
		panic("format: DeviceDigester.AddBlockHash on a whole-content digest or within a block")
	}
	d.perBlock.Add(h)
}

// AddBlockHashes adds the next len(p)/8 blocks by their hashes, given as raw
// little-endian uint64s: AddBlockHash of each, in one call. len(p) must be
// a multiple of 8.
func (d *DeviceDigester) AddBlockHashes(p []byte) {
	if d.perBlock == nil || d.filled != 0 || len(p)%8 != 0 {
		panic("format: DeviceDigester.AddBlockHashes on a whole-content digest, within a block or with a partial hash")
	}
	d.perBlock.Write(p)
}

// Sum64 returns the digest of the content added so far, a short last block
// included. It does not change the state.
func (d *DeviceDigester) Sum64() uint64 {
	if d.whole != nil {
		return d.whole.Sum64()
	}
	if d.filled == 0 {
		return d.perBlock.Sum64()
	}
	last := *d.perBlock.d // a copy: Sum64 must not add the short block for good
	last.Write(binary.LittleEndian.AppendUint64(nil, d.block.Sum64()))
	return last.Sum64()
}

// checkVersion rejects a version this package does not read.
func checkVersion(s stream, version uint16) error {
	if version < MinVersion || version > Version {
		return s.errorf(ErrVersion, "unsupported version %d (this build reads versions %d to %d)", version, MinVersion, Version)
	}
	return nil
}

func checkHeaderCommon(s stream, version, flags uint16, blockSize uint32) error {
	errf := s.errorf
	if err := checkVersion(s, version); err != nil {
		return err
	}
	if flags != 0 {
		return errf(ErrFlags, "unknown flags %#04x", flags)
	}
	if !ValidBlockSize(blockSize) {
		return errf(ErrBlockSize, "invalid block size %d (want a power of two from %d to %d)", blockSize, MinBlockSize, MaxBlockSize)
	}
	return nil
}
