package format

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
)

// SigWriter writes a signature stream.
//
// The caller adds exactly Header.Blocks() hashes, then calls Close, which
// writes the trailer. Digest is available before Close, so a caller can record
// it durably before the trailer makes the stream complete.
type SigWriter struct {
	w      *bufio.Writer
	hdr    SigHeader
	n      uint64 // hashes written
	digest *xxhash.Digest
	buf    [8]byte
	err    error
}

// NewSigWriter validates h and writes the signature stream header to w.
func NewSigWriter(w io.Writer, h SigHeader) (*SigWriter, error) {
	if !ValidBlockSize(h.BlockSize) {
		return nil, fmt.Errorf("invalid block size %d (want a power of two from %d to %d)", h.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if h.Version > Version {
		return nil, fmt.Errorf("signature stream: cannot write version %d", h.Version)
	}
	if h.V() < 2 && h.NextSeed != 0 {
		return nil, errors.New("signature stream: version 1 has no next seed")
	}
	sw := &SigWriter{w: bufio.NewWriterSize(w, 32<<10), hdr: h, digest: xxhash.New()}
	b := MarshalSigHeader(h)
	sw.digest.Write(b)
	if _, err := sw.w.Write(b); err != nil {
		return nil, err
	}
	return sw, nil
}

// MarshalSigHeader returns the encoding of h: 64 bytes in version 1, 72 in
// version 2.
func MarshalSigHeader(h SigHeader) []byte {
	n := h.Size()
	b := make([]byte, n)
	copy(b, SigMagic)
	binary.LittleEndian.PutUint16(b[8:], h.V())
	binary.LittleEndian.PutUint16(b[10:], 0) // flags
	binary.LittleEndian.PutUint32(b[12:], h.BlockSize)
	binary.LittleEndian.PutUint64(b[16:], h.Seed)
	copy(b[24:40], h.Base.ImageID[:])
	binary.LittleEndian.PutUint64(b[40:], h.Base.Generation)
	binary.LittleEndian.PutUint64(b[48:], h.Base.Size)
	if h.V() >= 2 {
		binary.LittleEndian.PutUint64(b[56:], h.NextSeed)
	}
	binary.LittleEndian.PutUint64(b[n-8:], xxhash.Sum64(b[:n-8]))
	return b
}

// Header returns the header the writer was created with.
func (sw *SigWriter) Header() SigHeader { return sw.hdr }

// Add writes the hash of the next block.
func (sw *SigWriter) Add(h uint64) error {
	if sw.err != nil {
		return sw.err
	}
	if sw.n >= sw.hdr.Blocks() {
		sw.err = fmt.Errorf("signature stream: more than %d block hashes", sw.hdr.Blocks())
		return sw.err
	}
	binary.LittleEndian.PutUint64(sw.buf[:], h)
	sw.digest.Write(sw.buf[:])
	sw.n++
	if _, err := sw.w.Write(sw.buf[:]); err != nil {
		sw.err = err
	}
	return sw.err
}

// AddRaw writes the hashes of the next len(p)/8 blocks, given as raw
// little-endian uint64s (as hash caches store them): the same stream, checks
// and digest as Add of each, without handling them one by one. len(p) must
// be a multiple of 8. A p of at least the writer's buffer goes to the
// underlying writer in one write when nothing is buffered (after Flush).
func (sw *SigWriter) AddRaw(p []byte) error {
	if sw.err != nil {
		return sw.err
	}
	if len(p)%8 != 0 {
		sw.err = fmt.Errorf("signature stream: %d bytes of block hashes, not a multiple of 8", len(p))
		return sw.err
	}
	if k := uint64(len(p) / 8); k > sw.hdr.Blocks()-sw.n {
		sw.err = fmt.Errorf("signature stream: more than %d block hashes", sw.hdr.Blocks())
		return sw.err
	}
	sw.digest.Write(p)
	sw.n += uint64(len(p) / 8)
	if _, err := sw.w.Write(p); err != nil {
		sw.err = err
	}
	return sw.err
}

// Flush writes buffered hashes to the underlying writer.
func (sw *SigWriter) Flush() error {
	if sw.err != nil {
		return sw.err
	}
	sw.err = sw.w.Flush()
	return sw.err
}

// Digest returns the digest of the stream so far: xxhash64 (seed 0) of the
// header and the hashes. After all hashes are added it is the digest the
// trailer will carry (End.SigDigest on the delta side).
func (sw *SigWriter) Digest() uint64 { return sw.digest.Sum64() }

// Close writes the trailer and flushes. It fails if fewer hashes than blocks
// were added. It does not close the underlying writer.
func (sw *SigWriter) Close() error {
	if sw.err != nil {
		return sw.err
	}
	if sw.n != sw.hdr.Blocks() {
		sw.err = fmt.Errorf("signature stream: %d of %d block hashes written", sw.n, sw.hdr.Blocks())
		return sw.err
	}
	var t [SigTrailerSize]byte
	binary.LittleEndian.PutUint64(t[0:], sw.n)
	binary.LittleEndian.PutUint64(t[8:], sw.digest.Sum64())
	if _, err := sw.w.Write(t[:]); err != nil {
		sw.err = err
		return err
	}
	sw.err = sw.w.Flush()
	if sw.err == nil {
		sw.err = errors.New("signature stream: writer is closed")
		return nil
	}
	return sw.err
}

// SigReader reads a signature stream.
type SigReader struct {
	r      *bufio.Reader
	hdr    SigHeader
	n      uint64 // hashes read
	digest *xxhash.Digest
	buf    [8]byte
	err    error
}

// NewSigReader reads and validates the header of a signature stream. It
// reads nothing beyond the header.
func NewSigReader(r io.Reader) (*SigReader, error) {
	br := bufio.NewReaderSize(r, 32<<10)
	b := make([]byte, SigHeaderSizeV2)
	h, err := parseSigHeader(br, b)
	if err != nil {
		return nil, err
	}
	sr := &SigReader{r: br, hdr: h, digest: xxhash.New()}
	sr.digest.Write(b[:h.Size()])
	return sr, nil
}

// readPrefix reads the 10 bytes of magic and version into b and checks
// them. A stream of the other type is named as such.
func readPrefix(r io.Reader, b []byte, magic, other, otherName string, s stream) error {
	errf := s.errorf
	n, err := io.ReadFull(r, b[:10])
	if n < 8 && !bytes.HasPrefix([]byte(magic), b[:n]) || n >= 8 && string(b[:8]) != magic {
		got := b[:min(n, 8)]
		if string(got) == other {
			return errf(ErrMagic, "bad magic %q: this is a %s", got, otherName)
		}
		return errf(ErrMagic, "bad magic %q (want %q)", got, magic)
	}
	if n == 0 && err == io.EOF {
		return errf(io.ErrUnexpectedEOF, "empty stream")
	}
	if err != nil {
		return s.readErr(err, "truncated header (%d of at least 10 bytes)", n)
	}
	return nil
}

func parseSigHeader(r io.Reader, b []byte) (SigHeader, error) {
	var h SigHeader
	if err := readPrefix(r, b, SigMagic, DeltaMagic, "delta stream, not a signature stream", sigStream); err != nil {
		return h, err
	}
	version := binary.LittleEndian.Uint16(b[8:])
	if err := checkVersion(sigStream, version); err != nil {
		return h, err
	}
	h.Version = version
	size := h.Size()
	b = b[:size]
	if n, err := io.ReadFull(r, b[10:]); err != nil {
		return h, sigStream.readErr(err, "truncated header (%d of %d bytes)", 10+n, size)
	}
	if got, want := binary.LittleEndian.Uint64(b[size-8:]), xxhash.Sum64(b[:size-8]); got != want {
		return h, sigErr(ErrChecksum, "header checksum %#016x, computed %#016x", got, want)
	}
	if version >= 2 {
		h.NextSeed = binary.LittleEndian.Uint64(b[56:])
	}
	h.BlockSize = binary.LittleEndian.Uint32(b[12:])
	if err := checkHeaderCommon(sigStream, version, binary.LittleEndian.Uint16(b[10:]), h.BlockSize); err != nil {
		return h, err
	}
	h.Seed = binary.LittleEndian.Uint64(b[16:])
	copy(h.Base.ImageID[:], b[24:40])
	h.Base.Generation = binary.LittleEndian.Uint64(b[40:])
	h.Base.Size = binary.LittleEndian.Uint64(b[48:])
	return h, nil
}

// Header returns the validated header.
func (sr *SigReader) Header() SigHeader { return sr.hdr }

// Next returns the hash of the next block. After the last block it reads and
// checks the trailer and returns io.EOF; any problem is a *ParseError (or an
// I/O error from the underlying reader). Errors are sticky.
func (sr *SigReader) Next() (uint64, error) {
	if sr.err != nil {
		return 0, sr.err
	}
	blocks := sr.hdr.Blocks()
	if sr.n < blocks {
		if _, err := io.ReadFull(sr.r, sr.buf[:]); err != nil {
			sr.err = sigStream.readErr(err, "truncated after %d of %d block hashes", sr.n, blocks)
			return 0, sr.err
		}
		sr.digest.Write(sr.buf[:])
		sr.n++
		return binary.LittleEndian.Uint64(sr.buf[:]), nil
	}
	sr.err = sr.readTrailer()
	return 0, sr.err
}

// NextRaw reads the hashes of the next len(p)/8 blocks into p, as raw
// little-endian uint64s: what as many calls of Next would return, with the
// same digest and errors, in one read. len(p) must be a multiple of 8 and
// at most 8 times the blocks left; the trailer is left to Next, which
// returns io.EOF after the last block.
func (sr *SigReader) NextRaw(p []byte) error {
	if sr.err != nil {
		return sr.err
	}
	blocks := sr.hdr.Blocks()
	if len(p)%8 != 0 || uint64(len(p)/8) > blocks-sr.n {
		return fmt.Errorf("signature stream: %d bytes of block hashes asked for, %d hashes left", len(p), blocks-sr.n)
	}
	got, err := io.ReadFull(sr.r, p)
	sr.digest.Write(p[:got/8*8])
	sr.n += uint64(got / 8)
	if err != nil {
		sr.err = sigStream.readErr(err, "truncated after %d of %d block hashes", sr.n, blocks)
		return sr.err
	}
	return nil
}

func (sr *SigReader) readTrailer() error {
	var t [SigTrailerSize]byte
	if n, err := io.ReadFull(sr.r, t[:]); err != nil {
		return sigStream.readErr(err, "truncated trailer (%d of %d bytes)", n, SigTrailerSize)
	}
	if got := binary.LittleEndian.Uint64(t[0:]); got != sr.n {
		return sigErr(ErrCount, "trailer counts %d block hashes, stream has %d", got, sr.n)
	}
	if got, want := binary.LittleEndian.Uint64(t[8:]), sr.digest.Sum64(); got != want {
		return sigErr(ErrChecksum, "trailer digest %#016x, computed %#016x", got, want)
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		if err != nil {
			return sigStream.readErr(err, "")
		}
		return sigErr(ErrTrailingData, "data after the trailer")
	}
	return io.EOF
}

// Digest returns the digest of the header and the hashes read so far. After
// Next has returned io.EOF it is the verified digest of the whole stream.
func (sr *SigReader) Digest() uint64 { return sr.digest.Sum64() }
