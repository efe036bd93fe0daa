package format

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// RecordType is the type byte of a delta record.
type RecordType uint8

// Record types. RecordEnd never leaves a DeltaReader: Next reports it as
// io.EOF and End returns its contents.
const (
	RecordData RecordType = 0x01 // the bytes of one block
	RecordZero RecordType = 0x02 // one block that is all zeros (no payload)
	RecordEnd  RecordType = 0x03 // counts and digests; the last record
	// RecordHashes (version 2) carries the next-seed hashes of consecutive
	// blocks that are unchanged (no Data or Zero record).
	RecordHashes RecordType = 0x04
)

func (t RecordType) String() string {
	switch t {
	case RecordData:
		return "data"
	case RecordZero:
		return "zero"
	case RecordEnd:
		return "end"
	case RecordHashes:
		return "hashes"
	}
	return fmt.Sprintf("RecordType(%#02x)", uint8(t))
}

// Record is one Data, Zero or Hashes record. For Data, Bytes holds the
// block (short for a short last block); for Hashes, Hashes holds the
// next-seed hashes of blocks Index, Index+1, ... Both are only valid until
// the next call to Next.
type Record struct {
	Type   RecordType
	Index  uint64
	Bytes  []byte
	Hashes []uint64
}

// Compression levels for DeltaOptions.Level, from fastest to smallest.
const (
	LevelFastest = 1
	LevelDefault = 2
	LevelBetter  = 3
	LevelBest    = 4
)

// DefaultLevel is the level a DeltaWriter uses when none is given; see
// docs/BENCHMARKS.md for the measurements behind it.
const DefaultLevel = LevelFastest

// DefaultWindow is the zstd window a DeltaWriter uses.
const DefaultWindow = 2 << 20

// DeltaOptions tunes a DeltaWriter. The zero value is good.
type DeltaOptions struct {
	Level       int // LevelFastest..LevelBest; 0 means DefaultLevel
	Concurrency int // zstd encoder goroutines; 0 means 1
}

// DeltaWriter writes a delta stream: the plain header, then one zstd stream
// holding Data and Zero records in strictly increasing block order and the
// End record.
type DeltaWriter struct {
	hdr       DeltaHeader
	pend      []byte // version 2: next-seed hashes not yet written, little-endian
	pstart    uint64 // index of the first of them
	rec       []byte // scratch for a Hashes record
	enc       *zstd.Encoder
	digest    *xxhash.Digest
	next      uint64 // lowest index the next record may have
	data      uint64
	zero      uint64
	scratch   [endRecordSize]byte
	err       error
	closed    bool
	blockSize uint64
}

// NewDeltaWriter validates h, writes the delta stream header to w and starts
// the compressed part.
func NewDeltaWriter(w io.Writer, h DeltaHeader, opts DeltaOptions) (*DeltaWriter, error) {
	if !ValidBlockSize(h.BlockSize) {
		return nil, fmt.Errorf("invalid block size %d (want a power of two from %d to %d)", h.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if h.Version > Version {
		return nil, fmt.Errorf("delta stream: cannot write version %d", h.Version)
	}
	if h.V() < 2 && h.NextSeed != 0 {
		return nil, errors.New("delta stream: version 1 has no next seed")
	}
	level := opts.Level
	if level == 0 {
		level = DefaultLevel
	}
	if level < LevelFastest || level > LevelBest {
		return nil, fmt.Errorf("invalid compression level %d (want %d to %d)", level, LevelFastest, LevelBest)
	}
	conc := max(opts.Concurrency, 1)
	if _, err := w.Write(MarshalDeltaHeader(h)); err != nil {
		return nil, err
	}
	enc, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.EncoderLevel(level)),
		zstd.WithEncoderConcurrency(conc),
		zstd.WithWindowSize(DefaultWindow),
		zstd.WithEncoderCRC(true),
		zstd.WithZeroFrames(true),
	)
	if err != nil {
		return nil, err
	}
	return &DeltaWriter{hdr: h, enc: enc, digest: xxhash.New(), blockSize: uint64(h.BlockSize)}, nil
}

// MarshalDeltaHeader returns the encoding of h: 72 bytes in version 1, 80
// in version 2.
func MarshalDeltaHeader(h DeltaHeader) []byte {
	n := h.Size()
	b := make([]byte, n)
	copy(b, DeltaMagic)
	binary.LittleEndian.PutUint16(b[8:], h.V())
	binary.LittleEndian.PutUint16(b[10:], 0) // flags
	binary.LittleEndian.PutUint32(b[12:], h.BlockSize)
	binary.LittleEndian.PutUint64(b[16:], h.DeviceSize)
	binary.LittleEndian.PutUint64(b[24:], h.Seed)
	copy(b[32:48], h.Base.ImageID[:])
	binary.LittleEndian.PutUint64(b[48:], h.Base.Generation)
	binary.LittleEndian.PutUint64(b[56:], h.Base.Size)
	if h.V() >= 2 {
		binary.LittleEndian.PutUint64(b[64:], h.NextSeed)
	}
	binary.LittleEndian.PutUint64(b[n-8:], xxhash.Sum64(b[:n-8]))
	return b
}

// Header returns the header the writer was created with.
func (dw *DeltaWriter) Header() DeltaHeader { return dw.hdr }

func (dw *DeltaWriter) check(index uint64) error {
	if dw.err != nil {
		return dw.err
	}
	if dw.closed {
		return errors.New("delta stream: writer is closed")
	}
	if index < dw.next {
		return fmt.Errorf("delta stream: record for block %d after block %d", index, dw.next-1)
	}
	if dw.hdr.V() >= 2 && index != dw.next {
		return fmt.Errorf("delta stream: version 2 needs a record for every block, block %d follows block %d", index, int64(dw.next)-1)
	}
	if index >= dw.hdr.Blocks() {
		return fmt.Errorf("delta stream: block %d past the device's %d blocks", index, dw.hdr.Blocks())
	}
	return nil
}

// Unchanged records that block index is unchanged (it gets no Data or Zero
// record) and, in version 2, that its hash under the next seed is h: the
// writer gathers such hashes into Hashes records. In version 1 h is
// ignored. An unchanged block must lie within the signed content.
func (dw *DeltaWriter) Unchanged(index, h uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], h)
	return dw.UnchangedRaw(index, 1, b[:])
}

// UnchangedRaw records that the n blocks from first on are unchanged, like
// n calls of Unchanged; in version 2 next holds their hashes under the next
// seed as raw little-endian uint64s (8n bytes), in version 1 it is ignored.
// A call it refuses records nothing.
func (dw *DeltaWriter) UnchangedRaw(first uint64, n int, next []byte) error {
	if n <= 0 {
		return dw.err
	}
	if err := dw.check(first); err != nil {
		return err
	}
	last := first + uint64(n) - 1
	if last >= dw.hdr.Blocks() {
		return fmt.Errorf("delta stream: block %d past the device's %d blocks", max(first, dw.hdr.Blocks()), dw.hdr.Blocks())
	}
	if last >= dw.hdr.SigBlocks() {
		return fmt.Errorf("delta stream: block %d past the signed content is not unchanged", max(first, dw.hdr.SigBlocks()))
	}
	if dw.hdr.V() < 2 {
		dw.next = first + uint64(n)
		return nil
	}
	if len(next) != 8*n {
		return fmt.Errorf("delta stream: %d bytes of next-seed hashes for %d blocks", len(next), n)
	}
	limit := 8 * dw.hdr.MaxHashes()
	for len(next) > 0 && dw.err == nil {
		if len(dw.pend) == 0 {
			dw.pstart = dw.next
		}
		k := min(len(next), limit-len(dw.pend))
		dw.pend = append(dw.pend, next[:k]...)
		dw.next += uint64(k / 8)
		next = next[k:]
		if len(dw.pend) >= limit {
			dw.flushHashes()
		}
	}
	return dw.err
}

// flushHashes writes the pending next-seed hashes as one Hashes record.
func (dw *DeltaWriter) flushHashes() {
	if len(dw.pend) == 0 || dw.err != nil {
		return
	}
	b := dw.rec[:0]
	b = append(b, byte(RecordHashes))
	b = binary.LittleEndian.AppendUint64(b, dw.pstart)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(dw.pend)/8))
	b = append(b, dw.pend...)
	dw.rec = b
	dw.write(b)
	dw.pend = dw.pend[:0]
}

func (dw *DeltaWriter) write(b []byte) {
	if dw.err != nil {
		return
	}
	dw.digest.Write(b)
	if _, err := dw.enc.Write(b); err != nil {
		dw.err = err
	}
}

// Data writes a Data record: block index holds b, whose length must be
// Header().BlockLen(index).
func (dw *DeltaWriter) Data(index uint64, b []byte) error {
	dw.flushHashes()
	if err := dw.check(index); err != nil {
		return err
	}
	if want := dw.hdr.BlockLen(index); len(b) != want {
		return fmt.Errorf("delta stream: block %d has %d bytes, want %d", index, len(b), want)
	}
	dw.scratch[0] = byte(RecordData)
	binary.LittleEndian.PutUint64(dw.scratch[1:], index)
	dw.write(dw.scratch[:9])
	dw.write(b)
	dw.next = index + 1
	dw.data++
	return dw.err
}

// Zero writes a Zero record: block index is all zeros.
func (dw *DeltaWriter) Zero(index uint64) error {
	dw.flushHashes()
	if err := dw.check(index); err != nil {
		return err
	}
	dw.scratch[0] = byte(RecordZero)
	binary.LittleEndian.PutUint64(dw.scratch[1:], index)
	dw.write(dw.scratch[:9])
	dw.next = index + 1
	dw.zero++
	return dw.err
}

// Flush compresses and writes everything buffered so far.
func (dw *DeltaWriter) Flush() error {
	if dw.err == nil && !dw.closed {
		dw.flushHashes()
		dw.err = dw.enc.Flush()
	}
	return dw.err
}

// Counts returns the number of Data and Zero records written so far.
func (dw *DeltaWriter) Counts() (data, zero uint64) { return dw.data, dw.zero }

// Close writes the End record and finishes the compressed stream. The
// writer sets e.Blocks, e.DataRecords and e.ZeroRecords itself; the caller
// supplies the digests and BytesRead. It does not close the underlying
// writer. Close returns the End record as written.
func (dw *DeltaWriter) Close(e End) (End, error) {
	if dw.err != nil {
		dw.Abort()
		return e, dw.err
	}
	if dw.closed {
		return e, errors.New("delta stream: writer is closed")
	}
	dw.flushHashes()
	if dw.hdr.V() >= 2 && dw.err == nil && dw.next != dw.hdr.Blocks() {
		dw.err = fmt.Errorf("delta stream: records cover %d of %d blocks", dw.next, dw.hdr.Blocks())
	}
	if dw.err != nil {
		dw.Abort()
		return e, dw.err
	}
	e.Blocks, e.DataRecords, e.ZeroRecords = dw.hdr.Blocks(), dw.data, dw.zero
	if dw.hdr.V() < 2 {
		e.NextDigest = 0
	}
	b := marshalEnd(e, dw.hdr.V())
	dw.digest.Write(b)
	var scratch [endRecordSizeV2]byte
	copy(scratch[:], b)
	binary.LittleEndian.PutUint64(scratch[len(b):], dw.digest.Sum64())
	dw.closed = true
	if _, err := dw.enc.Write(scratch[:len(b)+8]); err != nil {
		dw.err = err
		dw.enc.Reset(io.Discard)
		dw.enc.Close()
		return e, err
	}
	dw.err = dw.enc.Close()
	return e, dw.err
}

// Abort releases the encoder without finishing the stream: what was written
// so far stays an incomplete stream that every reader rejects.
func (dw *DeltaWriter) Abort() {
	if dw.closed {
		return
	}
	dw.closed = true
	dw.enc.Reset(io.Discard)
	dw.enc.Close()
}

// marshalEnd encodes e without its record digest.
func marshalEnd(e End, version uint16) []byte {
	fields := []uint64{e.Blocks, e.DataRecords, e.ZeroRecords, e.BytesRead, e.SigDigest, e.BlockDigest, e.DeviceDigest}
	if version >= 2 {
		fields = append(fields, e.NextDigest)
	}
	b := make([]byte, 1+8*len(fields))
	b[0] = byte(RecordEnd)
	for i, v := range fields {
		binary.LittleEndian.PutUint64(b[1+8*i:], v)
	}
	return b
}

// DeltaReader reads a delta stream.
type DeltaReader struct {
	hdr     DeltaHeader
	r       io.Reader
	frame   *oneFrame // between r and dec: the delta's one zstd frame
	dec     *zstd.Decoder
	digest  *xxhash.Digest
	next    uint64 // lowest index the next record may have
	records uint64
	data    uint64
	zero    uint64
	buf     []byte
	hashes  []uint64
	short   bool // the last record was a Hashes record with fewer than MaxHashes
	scratch [endRecordSizeV2]byte
	end     End
	done    bool
	err     error
}

// NewDeltaReader reads and validates the header of a delta stream. It reads
// nothing beyond the header, so the caller can check the header (base, size)
// before it reads or writes anything else.
func NewDeltaReader(r io.Reader) (*DeltaReader, error) {
	b := make([]byte, DeltaHeaderSizeV2)
	h, err := parseDeltaHeader(r, b)
	if err != nil {
		return nil, err
	}
	return &DeltaReader{hdr: h, r: r, digest: xxhash.New()}, nil
}

func parseDeltaHeader(r io.Reader, b []byte) (DeltaHeader, error) {
	var h DeltaHeader
	if err := readPrefix(r, b, DeltaMagic, SigMagic, "signature stream, not a delta stream", deltaStream); err != nil {
		return h, err
	}
	version := binary.LittleEndian.Uint16(b[8:])
	if err := checkVersion(deltaStream, version); err != nil {
		return h, err
	}
	h.Version = version
	size := h.Size()
	b = b[:size]
	if n, err := io.ReadFull(r, b[10:]); err != nil {
		return h, deltaStream.readErr(err, "truncated header (%d of %d bytes)", 10+n, size)
	}
	if got, want := binary.LittleEndian.Uint64(b[size-8:]), xxhash.Sum64(b[:size-8]); got != want {
		return h, deltaErr(ErrChecksum, "header checksum %#016x, computed %#016x", got, want)
	}
	if version >= 2 {
		h.NextSeed = binary.LittleEndian.Uint64(b[64:])
	}
	h.BlockSize = binary.LittleEndian.Uint32(b[12:])
	if err := checkHeaderCommon(deltaStream, version, binary.LittleEndian.Uint16(b[10:]), h.BlockSize); err != nil {
		return h, err
	}
	h.DeviceSize = binary.LittleEndian.Uint64(b[16:])
	h.Seed = binary.LittleEndian.Uint64(b[24:])
	copy(h.Base.ImageID[:], b[32:48])
	h.Base.Generation = binary.LittleEndian.Uint64(b[48:])
	h.Base.Size = binary.LittleEndian.Uint64(b[56:])
	return h, nil
}

// Header returns the validated header.
func (dr *DeltaReader) Header() DeltaHeader { return dr.hdr }

// End returns the End record once Next has returned io.EOF.
func (dr *DeltaReader) End() (End, bool) { return dr.end, dr.done }

// Close releases the decompressor. It does not close the underlying reader.
func (dr *DeltaReader) Close() {
	if dr.dec != nil {
		dr.dec.Close()
		dr.dec = nil
	}
	if dr.err == nil {
		dr.err = errors.New("delta stream: reader is closed")
	}
}

// decErr classifies an error from the decompressor.
func (dr *DeltaReader) decErr(err error, what string) error {
	switch {
	case dr.frame != nil && dr.frame.skippable:
		return errSkippable
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		if dr.done || what == "data after the end record" {
			return deltaErr(io.ErrUnexpectedEOF, "truncated %s", what)
		}
		if what == "record type" {
			return deltaErr(io.ErrUnexpectedEOF, "stream ends after %d records without an end record", dr.records)
		}
		return deltaErr(io.ErrUnexpectedEOF, "stream ends inside a %s after %d records", what, dr.records)
	case errors.Is(err, zstd.ErrWindowSizeExceeded), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return deltaErr(ErrCompression, "zstd window larger than %d bytes: %v", MaxWindow, err)
	case isZstdError(err):
		return deltaErr(ErrCompression, "%v (after %d records)", err, dr.records)
	}
	return fmt.Errorf("reading delta stream: %w", err)
}

// isZstdError reports whether err comes from the decompressor rather than
// from the underlying reader.
func isZstdError(err error) bool {
	for _, z := range []error{
		zstd.ErrMagicMismatch, zstd.ErrCRCMismatch, zstd.ErrReservedBlockType, zstd.ErrCompressedSizeTooBig,
		zstd.ErrBlockTooSmall, zstd.ErrUnexpectedBlockSize, zstd.ErrWindowSizeTooSmall, zstd.ErrFrameSizeExceeded,
		zstd.ErrFrameSizeMismatch, zstd.ErrUnknownDictionary, zstd.ErrDecoderClosed,
	} {
		if errors.Is(err, z) {
			return true
		}
	}
	// Other decoding errors (bad literals, bad sequences) are plain errors
	// without a sentinel; the decoder never wraps I/O errors as those.
	return !isIOError(err)
}

// ioErr marks errors that came from the underlying reader.
type ioErr struct{ err error }

func (e *ioErr) Error() string { return e.err.Error() }
func (e *ioErr) Unwrap() error { return e.err }

func isIOError(err error) bool {
	var e *ioErr
	return errors.As(err, &e)
}

// markIO wraps the underlying reader so that its errors (other than EOF) can
// be told apart from decompression errors.
type markIO struct{ r io.Reader }

func (m markIO) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if err != nil && err != io.EOF {
		err = &ioErr{err}
	}
	return n, err
}

func (dr *DeltaReader) fill(b []byte, what string) error {
	if _, err := io.ReadFull(dr.dec, b); err != nil {
		return dr.decErr(err, what)
	}
	dr.digest.Write(b)
	return nil
}

// Next returns the next Data or Zero record. After the End record it checks
// the counts and the digest, checks that nothing follows, and returns
// io.EOF. Every other problem is a *ParseError (or an I/O error of the
// underlying reader), and it is sticky.
func (dr *DeltaReader) Next() (Record, error) {
	if dr.err != nil {
		return Record{}, dr.err
	}
	rec, err := dr.next1()
	if err != nil {
		dr.err = err
		if dr.dec != nil {
			dr.dec.Close()
			dr.dec = nil
		}
	}
	return rec, err
}

func (dr *DeltaReader) next1() (Record, error) {
	if dr.dec == nil {
		dr.frame = &oneFrame{r: markIO{dr.r}}
		dec, err := zstd.NewReader(dr.frame,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(MaxWindow),
		)
		if err != nil {
			return Record{}, dr.decErr(err, "compressed data")
		}
		dr.dec = dec
	}
	if err := dr.fill(dr.scratch[:1], "record type"); err != nil {
		return Record{}, err
	}
	t := RecordType(dr.scratch[0])
	blocks := dr.hdr.Blocks()
	switch t {
	case RecordData, RecordZero:
		if err := dr.fill(dr.scratch[1:9], t.String()+" record"); err != nil {
			return Record{}, err
		}
		idx := binary.LittleEndian.Uint64(dr.scratch[1:])
		if idx >= blocks {
			return Record{}, deltaErr(ErrRecord, "%s record for block %d, device has %d blocks", t, idx, blocks)
		}
		if idx < dr.next {
			return Record{}, deltaErr(ErrRecord, "%s record for block %d after a record for block %d", t, idx, dr.next-1)
		}
		if err := dr.checkContiguous(t, idx); err != nil {
			return Record{}, err
		}
		dr.next = idx + 1
		dr.records++
		dr.short = false
		rec := Record{Type: t, Index: idx}
		if t == RecordZero {
			dr.zero++
			return rec, nil
		}
		n := dr.hdr.BlockLen(idx)
		if cap(dr.buf) < n {
			dr.buf = make([]byte, min(uint64(dr.hdr.BlockSize), dr.hdr.DeviceSize))
		}
		rec.Bytes = dr.buf[:n]
		if err := dr.fill(rec.Bytes, "data record"); err != nil {
			return Record{}, err
		}
		dr.data++
		return rec, nil
	case RecordHashes:
		if dr.hdr.V() >= 2 {
			return dr.readHashes()
		}
	case RecordEnd:
		return Record{}, dr.readEnd()
	}
	return Record{}, deltaErr(ErrRecord, "unknown record type %#02x after %d records", byte(t), dr.records)
}

// checkContiguous enforces version 2's rule that the records cover every
// block in order, with no gap.
func (dr *DeltaReader) checkContiguous(t RecordType, idx uint64) error {
	if dr.hdr.V() >= 2 && idx != dr.next {
		return deltaErr(ErrRecord, "%s record for block %d, but block %d has no record", t, idx, dr.next)
	}
	return nil
}

// readHashes reads the rest of a Hashes record.
func (dr *DeltaReader) readHashes() (Record, error) {
	b := dr.scratch[1:hashesRecordHead]
	if err := dr.fill(b, "hashes record"); err != nil {
		return Record{}, err
	}
	idx := binary.LittleEndian.Uint64(b)
	count := uint64(binary.LittleEndian.Uint32(b[8:]))
	if count == 0 || count > uint64(dr.hdr.MaxHashes()) {
		return Record{}, deltaErr(ErrRecord, "hashes record for %d blocks (want 1 to %d)", count, dr.hdr.MaxHashes())
	}
	if err := dr.checkContiguous(RecordHashes, idx); err != nil {
		return Record{}, err
	}
	if dr.short {
		// Runs of unchanged blocks are cut only when a record is full:
		// one encoding per content (no malleability).
		return Record{}, deltaErr(ErrRecord, "hashes record for block %d follows a hashes record that is not full", idx)
	}
	if end := idx + count; end > dr.hdr.SigBlocks() || end > dr.hdr.Blocks() {
		return Record{}, deltaErr(ErrRecord, "hashes record for blocks %d to %d, past the signed content's %d or the device's %d blocks",
			idx, end-1, dr.hdr.SigBlocks(), dr.hdr.Blocks())
	}
	n := int(count) * 8
	if cap(dr.buf) < n {
		dr.buf = make([]byte, max(n, int(min(uint64(dr.hdr.BlockSize), dr.hdr.DeviceSize))))
	}
	raw := dr.buf[:n]
	if err := dr.fill(raw, "hashes record"); err != nil {
		return Record{}, err
	}
	if cap(dr.hashes) < int(count) {
		dr.hashes = make([]uint64, dr.hdr.MaxHashes())
	}
	hs := dr.hashes[:count]
	for i := range hs {
		hs[i] = binary.LittleEndian.Uint64(raw[8*i:])
	}
	dr.next = idx + count
	dr.records++
	dr.short = count < uint64(dr.hdr.MaxHashes())
	return Record{Type: RecordHashes, Index: idx, Hashes: hs}, nil
}

func (dr *DeltaReader) readEnd() error {
	size := endRecordSize
	if dr.hdr.V() >= 2 {
		size = endRecordSizeV2
	}
	b := dr.scratch[:size]
	if err := dr.fill(b[1:size-8], "end record"); err != nil {
		return err
	}
	want := dr.digest.Sum64()
	if _, err := io.ReadFull(dr.dec, b[size-8:]); err != nil {
		return dr.decErr(err, "end record")
	}
	var v [9]uint64
	nf := (size - 1) / 8 // fields including the record digest
	for i := range nf {
		v[i] = binary.LittleEndian.Uint64(b[1+8*i:])
	}
	e := End{Blocks: v[0], DataRecords: v[1], ZeroRecords: v[2], BytesRead: v[3], SigDigest: v[4], BlockDigest: v[5], DeviceDigest: v[6]}
	if nf == 9 {
		e.NextDigest = v[7]
	}
	if got := v[nf-1]; got != want {
		return deltaErr(ErrChecksum, "record digest %#016x, computed %#016x", got, want)
	}
	if e.Blocks != dr.hdr.Blocks() {
		return deltaErr(ErrCount, "end record counts %d blocks, header implies %d", e.Blocks, dr.hdr.Blocks())
	}
	if e.DataRecords != dr.data || e.ZeroRecords != dr.zero {
		return deltaErr(ErrCount, "end record counts %d data and %d zero records, stream has %d and %d", e.DataRecords, e.ZeroRecords, dr.data, dr.zero)
	}
	if dr.hdr.V() >= 2 && dr.next != e.Blocks {
		return deltaErr(ErrCount, "records cover %d of the device's %d blocks", dr.next, e.Blocks)
	}
	// Nothing may follow: neither more records in the frame nor any byte
	// after it. This read also makes the decoder check the frame checksum;
	// it ends at the end of the frame, so that what follows (another frame,
	// also a skippable or an empty one, which the decoder would take in
	// silently) is still unread.
	var one [1]byte
	n, err := io.ReadFull(dr.dec, one[:])
	if n > 0 {
		return deltaErr(ErrTrailingData, "data after the end record")
	}
	if err != io.EOF {
		return dr.decErr(err, "data after the end record")
	}
	n, err = io.ReadFull(markIO{dr.r}, one[:])
	if n > 0 {
		return deltaErr(ErrTrailingData, "data after the compressed stream")
	}
	if err != io.EOF {
		return dr.decErr(err, "data after the compressed stream")
	}
	dr.end, dr.done = e, true
	return io.EOF
}
