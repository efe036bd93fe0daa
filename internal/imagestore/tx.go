package imagestore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// batchBytes bounds the blocks a transaction holds before it journals and
// writes them: one journal fsync per batch, and bounded memory.
var batchBytes = 4 << 20

// TxOptions configure a patch run.
type TxOptions struct {
	// Keep is the number of previous versions to keep as reverse deltas;
	// negative means "as the manifest says" (0 for a new image).
	Keep int
	// Force writes over a file that has no dosvob manifest, or whose
	// manifest names another volume.
	Force bool
	// Source names the volume; empty fields keep what the manifest says,
	// except with Force, where the given name and id replace both.
	Source Source
	// Now returns the time of the run (default time.Now).
	Now func() time.Time
}

// Tx is one patch run on a Store: it applies a delta's records and commits
// them atomically, or undoes them.
type Tx struct {
	s    *Store
	hdr  format.DeltaHeader
	opts TxOptions
	sign *signRecord
	key  string    // of the signing run
	old  *Manifest // nil: no manifest

	inPlace   bool // writing over the existing image (journaled)
	img       file
	imgName   string
	oldSize   int64 // size of the content before the run
	newSize   int64
	bs        int64
	newID     ID
	newGen    uint64
	jw        *journalWriter
	journaled []uint64 // bitmap over old blocks
	written   []uint64 // bitmap over new blocks: hash in hashes.new
	hashes    file     // hashes.new
	hbuf      []byte   // contiguous run of hashes not yet written
	hstart    uint64   // block index of hbuf[0:8]
	hasher    *format.Hasher
	zeroFull  uint64 // hash of an all-zero full block
	zeroLast  uint64 // hash of an all-zero last block
	pending   []pendingOp
	pendBytes int

	// Version 2: the next-seed hashes of every block of the device, in
	// order, become the hash cache of the next run (nextTmp until commit).
	v2        bool
	next      file
	nextW     *bufio.Writer
	nextOff   int64
	nextN     uint64 // hashes written
	nextHash  *format.Hasher
	nextZeroF uint64 // next-seed hash of an all-zero full block
	nextZeroL uint64 // next-seed hash of an all-zero last block
	nextDig   *format.BlockDigester
	nextBuf   []byte // a Hashes record's hashes, encoded
	nextOne   [8]byte
	stats     RunStats
	start     time.Time
	done      bool
	// files are what the run created in the state directory besides
	// hashes.new and the next-seed hashes: none is committed until the
	// manifest names it, and Abort removes them.
	files []string
}

type pendingOp struct {
	index uint64
	data  []byte // nil: punch
}

func setBit(b []uint64, i uint64)      { b[i/64] |= 1 << (i % 64) }
func hasBit(b []uint64, i uint64) bool { return b[i/64]&(1<<(i%64)) != 0 }

// CheckOwner refuses (ErrNotOurs, ErrOtherVolume) to write into an image
// that dosvob did not make or that belongs to another volume, unless force.
// dosvob-patch calls it before it reads the stream; Begin calls it again.
func (s *Store) CheckOwner(src Source, force bool) error {
	if force {
		return nil
	}
	if exists(s.path) && s.manifest == nil {
		return fmt.Errorf("%q exists and has no dosvob manifest: %w", s.path, ErrNotOurs)
	}
	if m := s.manifest; m != nil {
		if src.VolumeID != "" && m.Source.VolumeID != "" && src.VolumeID != m.Source.VolumeID {
			return fmt.Errorf("%q is a backup of volume id %q, not %q: %w", s.path, m.Source.VolumeID, src.VolumeID, ErrOtherVolume)
		}
		if src.VolumeName != "" && m.Source.VolumeName != "" && src.VolumeName != m.Source.VolumeName {
			return fmt.Errorf("%q is a backup of volume %q, not %q: %w", s.path, m.Source.VolumeName, src.VolumeName, ErrOtherVolume)
		}
		// Both name a volume, but by different fields: nothing tells
		// whether it is the same one.
		byID := src.VolumeID != "" && m.Source.VolumeID != ""
		byName := src.VolumeName != "" && m.Source.VolumeName != ""
		if src.VolumeID+src.VolumeName != "" && m.Source.VolumeID+m.Source.VolumeName != "" && !byID && !byName {
			return fmt.Errorf("%q is a backup of volume %s, and this run names only volume %s: cannot tell whether they are the same: %w",
				s.path, m.Source.describe(), src.describe(), ErrOtherVolume)
		}
	}
	return nil
}

// superseded returns an ErrSuperseded error if the image has moved on from
// base: a run committed a later generation of the same image (or the first
// backup, if base is of none yet) since base was signed.
func (s *Store) superseded(base format.Base) error {
	if s.base.Generation <= base.Generation || (base.Generation > 0 && base.ImageID != s.base.ImageID) {
		return nil
	}
	return fmt.Errorf("another run committed generation %d of %s since this signature was made (of generation %d): %w",
		s.base.Generation, s.path, base.Generation, ErrSuperseded)
}

// baseError is a mismatch between a delta and the image, found before any
// write.
func baseError(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrBase)
}

// Begin starts applying a delta with header h. It checks, before writing
// anything, that h was made against the current content and the latest
// signing run of it. The Store must have been opened with Options.Writer.
func (s *Store) Begin(h format.DeltaHeader, opts TxOptions) (*Tx, error) {
	if s.writer == nil && s.opts.Writer {
		// Opened before dosvob-hash IMAGE made the state directory.
		if !HasState(s.path) {
			return nil, baseError("no dosvob-hash run of %s is recorded; the delta must come from signatures made by dosvob-hash %s", s.path, s.path)
		}
		if err := s.attach(); err != nil {
			return nil, err
		}
	}
	if s.writer == nil {
		return nil, errors.New("store opened without the writer lock")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	st, err := s.lockState()
	if err != nil {
		return nil, err
	}
	defer st.unlock()
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.CheckOwner(opts.Source, opts.Force); err != nil {
		return nil, err
	}
	// The signing run this delta was made against: its record is named by
	// the seeds that the delta header carries.
	key := signKey(h.Seed, h.NextSeed)
	sign, err := s.readSign(key)
	if errors.Is(err, os.ErrNotExist) {
		if err := s.superseded(h.Base); err != nil {
			return nil, err
		}
		return nil, baseError("no dosvob-hash run of %s with seed %s and next seed %s is recorded; the delta must come from signatures made by dosvob-hash %s",
			s.path, Digest(h.Seed), Digest(h.NextSeed), s.path)
	}
	if err != nil {
		return nil, err
	}
	if sign.Void != "" {
		return nil, fmt.Errorf("%s: %w", sign.Void, ErrSuperseded)
	}
	if err := s.superseded(sign.base()); err != nil {
		return nil, err
	}
	if sign.BlockSize != h.BlockSize {
		return nil, baseError("delta block size %d, signature block size %d", h.BlockSize, sign.BlockSize)
	}
	if h.V() != max(sign.Version, 1) || h.NextSeed != uint64(sign.NextSeed) {
		return nil, baseError("delta stream version %d with next seed %s, but its dosvob-hash run of %s signed version %d with next seed %s",
			h.V(), Digest(h.NextSeed), s.path, max(sign.Version, 1), sign.NextSeed)
	}
	if h.Base != sign.base() || h.Base != s.base {
		return nil, baseError("delta base (image %s generation %d size %d) is not the current content of %s (image %s generation %d size %d)",
			ID(h.Base.ImageID), h.Base.Generation, h.Base.Size, s.path, ID(s.base.ImageID), s.base.Generation, s.base.Size)
	}
	inPlace := exists(s.path)
	if !inPlace && sign.PartialRuns != partialRuns(s.partial) {
		return nil, baseError("a dosvob-patch run began writing the partial first backup of %s since this signature was made (a run that fails keeps what it wrote)", s.path)
	}
	if h.DeviceSize > 1<<62 {
		return nil, baseError("device size %d is too large", h.DeviceSize)
	}
	blocks := h.Blocks()
	// Another signing run that is not finished may have read blocks that
	// this run is about to write; and a first backup's partial image keeps
	// what a failed run wrote. Their records must not be used after this.
	for k, r := range s.signings() {
		if k == key || r == nil || r.Void != "" || (r.Done && inPlace) {
			continue
		}
		why := fmt.Sprintf("another dosvob-patch began writing %s while this signature was made", s.path)
		if !inPlace {
			why = fmt.Sprintf("another dosvob-patch wrote the partial first backup of %s since this signature was made", s.path)
		}
		if err := s.voidSign(k, r, why); err != nil {
			return nil, err
		}
	}
	tx := &Tx{
		s: s, hdr: h, opts: opts, sign: sign, key: key, old: s.manifest,
		oldSize: int64(s.base.Size), newSize: int64(h.DeviceSize), bs: int64(h.BlockSize),
		written: make([]uint64, blocks/64+1),
		hasher:  format.NewHasher(h.Seed),
		start:   time.Now(),
	}
	tx.journaled = make([]uint64, uint64(tx.oldSize)/uint64(tx.bs)/64+2)
	tx.zeroFull = format.ZeroHash(h.Seed, int(h.BlockSize))
	if blocks > 0 {
		tx.zeroLast = format.ZeroHash(h.Seed, h.BlockLen(blocks-1))
	}
	if h.V() >= 2 {
		tx.v2 = true
		tx.nextHash = format.NewHasher(h.NextSeed)
		tx.nextDig = format.NewBlockDigester()
		tx.nextZeroF = format.ZeroHash(h.NextSeed, int(h.BlockSize))
		if blocks > 0 {
			tx.nextZeroL = format.ZeroHash(h.NextSeed, h.BlockLen(blocks-1))
		}
	}
	if err := tx.open(); err != nil {
		tx.closeFiles()
		return nil, err
	}
	return tx, nil
}

func (tx *Tx) open() error {
	s, fs := tx.s, tx.s.fs
	var err error
	tx.hashes, err = fs.OpenFile(s.join(newHashes), os.O_RDWR|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		return err
	}
	if tx.v2 {
		tx.next, err = fs.OpenFile(s.join(nextTmp), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
		if err != nil {
			return err
		}
		tx.nextW = bufio.NewWriterSize(fileWriter{f: tx.next, off: &tx.nextOff}, 64<<10)
	}
	if exists(s.path) {
		// An existing image: every overwrite is journaled first.
		tx.inPlace = true
		tx.imgName = s.path
		var oldID ID
		var oldGen uint64
		if tx.old != nil {
			oldID, oldGen = tx.old.ImageID, tx.old.Generation
		}
		tx.newID, tx.newGen = oldID, oldGen+1
		if oldID.IsZero() {
			tx.newID = NewID()
		}
		tx.jw, err = createJournal(fs, s.join(journalName), journalHeader{
			BlockSize: int(tx.bs), OldID: oldID, OldGen: oldGen, OldSize: tx.oldSize,
			NewID: tx.newID, NewGen: tx.newGen, NewSize: tx.newSize,
		})
		if err != nil {
			return err
		}
		if err := tx.jw.sync(); err != nil {
			return err
		}
		if err := fs.SyncDir(s.dir); err != nil {
			return err
		}
		tx.img, err = fs.OpenFile(s.path, os.O_RDWR, 0)
		return err
	}
	// A first backup goes to the partial image, which becomes IMAGE only
	// at commit; an interrupted one is resumed.
	// partial.json counts the runs that began writing it, before the
	// first write: every signing record made before this run is stale
	// from here on, whether the run commits, fails or is killed.
	tx.imgName = s.join(partialName)
	tx.newGen = 1
	if s.partial != nil && s.partial.ImageID == ID(tx.hdr.Base.ImageID) {
		tx.newID = s.partial.ImageID
		tx.stats.Resumed = true
		p := *s.partial
		p.Runs++
		if err := writeJSONAtomic(fs, s.join(partialMeta), &p); err != nil {
			return err
		}
		tx.img, err = fs.OpenFile(tx.imgName, os.O_RDWR, 0)
		return err
	}
	tx.newID = NewID()
	if err := writeJSONAtomic(fs, s.join(partialMeta), &partialRecord{ImageID: tx.newID, Runs: 1}); err != nil {
		return err
	}
	tx.img, err = fs.OpenFile(tx.imgName, os.O_RDWR|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		return err
	}
	return fs.SyncDir(s.dir)
}

func (tx *Tx) check(i uint64) error {
	if tx.done {
		return errors.New("transaction is finished")
	}
	if i >= tx.hdr.Blocks() {
		return fmt.Errorf("block %d past the device's %d blocks", i, tx.hdr.Blocks())
	}
	if hasBit(tx.written, i) {
		return fmt.Errorf("block %d written twice", i)
	}
	return nil
}

// WriteBlock sets block i to b (of length Header.BlockLen(i)).
func (tx *Tx) WriteBlock(i uint64, b []byte) error {
	if err := tx.check(i); err != nil {
		return err
	}
	if len(b) != tx.hdr.BlockLen(i) {
		return fmt.Errorf("block %d has %d bytes, want %d", i, len(b), tx.hdr.BlockLen(i))
	}
	if err := tx.recordHash(i, tx.hasher.Sum(b)); err != nil {
		return err
	}
	if tx.v2 {
		if err := tx.addNext(i, tx.nextHash.Sum(b)); err != nil {
			return err
		}
	}
	tx.stats.DataBlocks++
	tx.stats.BytesWritten += int64(len(b))
	off := int64(i) * tx.bs
	if !tx.inPlace || off >= tx.oldSize {
		// Beyond the old content: nothing to undo but the size.
		_, err := tx.img.WriteAt(b, off)
		return err
	}
	tx.pending = append(tx.pending, pendingOp{index: i, data: append([]byte(nil), b...)})
	tx.pendBytes += len(b)
	if tx.pendBytes >= batchBytes {
		return tx.flush()
	}
	return nil
}

// ZeroBlock makes block i all zeros, as a hole.
func (tx *Tx) ZeroBlock(i uint64) error {
	if err := tx.check(i); err != nil {
		return err
	}
	h := tx.zeroFull
	if i == tx.hdr.Blocks()-1 {
		h = tx.zeroLast
	}
	if err := tx.recordHash(i, h); err != nil {
		return err
	}
	if tx.v2 {
		nh := tx.nextZeroF
		if i == tx.hdr.Blocks()-1 {
			nh = tx.nextZeroL
		}
		if err := tx.addNext(i, nh); err != nil {
			return err
		}
	}
	tx.stats.ZeroBlocks++
	off := int64(i) * tx.bs
	if off >= tx.oldSize {
		return nil // past the old end: a hole already
	}
	if !tx.inPlace {
		return tx.img.Punch(off, int64(tx.hdr.BlockLen(i)))
	}
	tx.pending = append(tx.pending, pendingOp{index: i})
	tx.pendBytes += 64
	if tx.pendBytes >= batchBytes {
		return tx.flush()
	}
	return nil
}

// KeepHashes takes the next-seed hashes of blocks i, i+1, ... that the
// delta leaves unchanged (a version 2 Hashes record).
func (tx *Tx) KeepHashes(i uint64, hs []uint64) error {
	if tx.done {
		return errors.New("transaction is finished")
	}
	if !tx.v2 {
		return errors.New("next-seed hashes in a version 1 run")
	}
	oldBlocks := format.BlockCount(uint64(tx.oldSize), uint32(tx.bs))
	if end := i + uint64(len(hs)); end > oldBlocks || end > tx.hdr.Blocks() {
		return fmt.Errorf("unchanged blocks %d to %d past the old content's %d or the device's %d blocks", i, end-1, oldBlocks, tx.hdr.Blocks())
	}
	if len(hs) == 0 {
		return nil
	}
	if i != tx.nextN {
		return fmt.Errorf("next-seed hash of block %d, expected block %d", i, tx.nextN)
	}
	// The whole record at once: one write, one digest update.
	b := tx.nextBuf[:0]
	for _, h := range hs {
		b = binary.LittleEndian.AppendUint64(b, h)
	}
	tx.nextBuf = b
	return tx.writeNext(b)
}

// addNext appends the next-seed hash of block i to the new hash cache.
// Blocks come in order, each once (the delta covers every block).
func (tx *Tx) addNext(i, h uint64) error {
	if i != tx.nextN {
		return fmt.Errorf("next-seed hash of block %d, expected block %d", i, tx.nextN)
	}
	binary.LittleEndian.PutUint64(tx.nextOne[:], h)
	return tx.writeNext(tx.nextOne[:])
}

// writeNext appends the next-seed hashes of the next len(p)/8 blocks, raw
// little-endian, to the new hash cache and its digest.
func (tx *Tx) writeNext(p []byte) error {
	if _, err := tx.nextW.Write(p); err != nil {
		return err
	}
	tx.nextDig.Write(p)
	tx.nextN += uint64(len(p) / 8)
	return nil
}

// recordHash keeps the new hash of block i for the digest check and the
// signature cache.
func (tx *Tx) recordHash(i, h uint64) error {
	if len(tx.hbuf) > 0 && (tx.hstart+uint64(len(tx.hbuf)/8) != i || len(tx.hbuf) >= 64<<10) {
		if err := tx.flushHashes(); err != nil {
			return err
		}
	}
	if len(tx.hbuf) == 0 {
		tx.hstart = i
	}
	tx.hbuf = binary.LittleEndian.AppendUint64(tx.hbuf, h)
	setBit(tx.written, i)
	return nil
}

func (tx *Tx) flushHashes() error {
	if len(tx.hbuf) == 0 {
		return nil
	}
	_, err := tx.hashes.WriteAt(tx.hbuf, int64(tx.hstart)*8)
	tx.hbuf = tx.hbuf[:0]
	return err
}

// oldLen is the length of block i in the content before the run.
func (tx *Tx) oldLen(i uint64) int {
	return format.BlockLen(uint64(tx.oldSize), uint32(tx.bs), i)
}

// journalOld appends the old contents of block i to the journal (once).
func (tx *Tx) journalOld(i uint64, buf []byte) error {
	if hasBit(tx.journaled, i) {
		return nil
	}
	n := tx.oldLen(i)
	if n == 0 {
		return nil
	}
	b := buf[:n]
	if _, err := tx.img.ReadAt(b, int64(i)*tx.bs); err != nil && err != io.EOF {
		return fmt.Errorf("read old block %d: %w", i, err)
	}
	tx.jw.add(journalEntry{zero: allZero(b), index: int64(i), n: n, data: b})
	setBit(tx.journaled, i)
	return nil
}

// flush journals the old contents of the pending blocks, fsyncs the
// journal, and only then writes the blocks in place.
func (tx *Tx) flush() error {
	if len(tx.pending) == 0 {
		return nil
	}
	buf := make([]byte, tx.bs)
	for _, p := range tx.pending {
		if err := tx.journalOld(p.index, buf); err != nil {
			return err
		}
	}
	if err := tx.jw.sync(); err != nil {
		return err
	}
	// Neighbouring zero blocks become one hole: one fallocate call for a
	// run of them instead of one per block.
	for k := 0; k < len(tx.pending); {
		p := tx.pending[k]
		off := int64(p.index) * tx.bs
		if p.data != nil {
			if _, err := tx.img.WriteAt(p.data, off); err != nil {
				return err
			}
			k++
			continue
		}
		j := k + 1
		for j < len(tx.pending) && tx.pending[j].data == nil && tx.pending[j].index == tx.pending[j-1].index+1 {
			j++
		}
		last := tx.pending[j-1].index
		n := int64(last-p.index)*tx.bs + int64(tx.hdr.BlockLen(last))
		if err := tx.img.Punch(off, n); err != nil {
			return err
		}
		k = j
	}
	tx.pending = tx.pending[:0]
	tx.pendBytes = 0
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Result describes a committed run.
type Result struct {
	Manifest *Manifest
	Stats    RunStats
	Pruned   []string // versions deleted by --keep
	Kept     string   // the version this run kept, if any
	// Changed is set when IMAGE was not the last backup when the run
	// signed it (changed outside dosvob, or damaged).
	Changed *Changed
}

// Commit checks the End record against what was applied and, if it all
// agrees, makes the new content the image atomically. On a mismatch it
// undoes the run and returns an ErrBase error.
func (tx *Tx) Commit(end format.End) (*Result, error) {
	res, err := tx.commit(end)
	if err != nil && !tx.done {
		if aerr := tx.Abort(); aerr != nil {
			err = fmt.Errorf("%w (and undoing the run failed: %v)", err, aerr)
		}
	}
	return res, err
}

func (tx *Tx) commit(end format.End) (*Result, error) {
	if tx.done {
		return nil, errors.New("transaction is finished")
	}
	s, fs := tx.s, tx.s.fs
	if err := tx.flush(); err != nil {
		return nil, err
	}
	if err := tx.flushHashes(); err != nil {
		return nil, err
	}
	blocks := tx.hdr.Blocks()
	if end.Blocks != blocks || end.DataRecords != uint64(tx.stats.DataBlocks) || end.ZeroRecords != uint64(tx.stats.ZeroBlocks) {
		return nil, baseError("end record counts %d blocks, %d data, %d zero; applied %d, %d, %d",
			end.Blocks, end.DataRecords, end.ZeroRecords, blocks, tx.stats.DataBlocks, tx.stats.ZeroBlocks)
	}
	sign, err := s.readSign(tx.key)
	if err != nil {
		return nil, fmt.Errorf("signing record: %w", err)
	}
	if !sign.Done {
		return nil, baseError("dosvob-hash of %s did not finish its signature", s.path)
	}
	if uint64(sign.SigDigest) != end.SigDigest {
		return nil, baseError("delta was made against signature digest %s, dosvob-hash recorded %s", Digest(end.SigDigest), sign.SigDigest)
	}

	// The new per-block hashes: the delta's for blocks it carried, the
	// signature's for the others. Their digest must be the device's.
	cacheName := fmt.Sprintf("hashes-%d", tx.newGen)
	cacheTmp := s.join(cacheName + ".tmp")
	tx.files = append(tx.files, cacheTmp, s.join(cacheName))
	if tx.v2 {
		cacheTmp = "" // the cache is the next-seed hashes, written as they came
	}
	oldDigest, newDigest, err := tx.writeCache(cacheTmp, sign)
	if err != nil {
		return nil, err
	}
	if newDigest != end.BlockDigest {
		return nil, baseError("block digest of the patched image %s, end record says %s", Digest(newDigest), Digest(end.BlockDigest))
	}
	hashSeed, hashDigest := tx.hdr.Seed, end.BlockDigest
	if tx.v2 {
		if tx.nextN != blocks {
			return nil, baseError("the delta gave next-seed hashes for %d of %d blocks", tx.nextN, blocks)
		}
		if got := tx.nextDig.Sum64(); got != end.NextDigest {
			return nil, baseError("next-seed digest of the patched image %s, end record says %s", Digest(got), Digest(end.NextDigest))
		}
		if err := tx.nextW.Flush(); err != nil {
			return nil, err
		}
		if err := tx.next.Sync(); err != nil {
			return nil, err
		}
		cacheTmp = s.join(nextTmp)
		hashSeed, hashDigest = tx.hdr.NextSeed, end.NextDigest
	} else {
		cacheTmp = s.join(cacheName + ".tmp")
	}

	// Shrinking cuts old blocks away: journal them first.
	if tx.inPlace && tx.newSize < tx.oldSize {
		buf := make([]byte, tx.bs)
		for i := uint64(tx.newSize) / uint64(tx.bs); i < format.BlockCount(uint64(tx.oldSize), uint32(tx.bs)); i++ {
			if err := tx.journalOld(i, buf); err != nil {
				return nil, err
			}
			if len(tx.jw.buf) >= batchBytes {
				if err := tx.jw.sync(); err != nil {
					return nil, err
				}
			}
		}
		if err := tx.jw.sync(); err != nil {
			return nil, err
		}
	}
	if err := tx.img.Truncate(tx.newSize); err != nil {
		return nil, err
	}
	if err := tx.img.Sync(); err != nil {
		return nil, err
	}
	mtime := stampMtime(tx.img, time.Now())
	if err := fs.Rename(cacheTmp, s.join(cacheName)); err != nil {
		return nil, err
	}

	now := tx.opts.Now().UTC()
	m := &Manifest{}
	if tx.old != nil && tx.inPlace {
		*m = *tx.old
		m.Versions = append([]Version(nil), tx.old.Versions...)
	}
	keep := tx.opts.Keep
	if keep < 0 {
		keep = m.Keep
	}
	res := &Result{Manifest: m}

	// What the signing run found, if IMAGE was not the last backup: the
	// versions kept before are marked, and what it held is kept instead.
	var replaced []Version
	ch := tx.outside(sign)
	if ch != nil {
		res.Changed = ch.public(s.path, tx.old)
		for _, i := range ch.lost {
			m.Versions[i].Unrestorable = ch.lostReason()
		}
	}
	// The old image becomes a version: the journal as a reverse delta.
	if keep > 0 && tx.inPlace && tx.old != nil {
		v, err := tx.writeVersion(tx.versionLabel(ch, m.Versions), oldDigest)
		if err != nil {
			return nil, fmt.Errorf("keep version: %w", err)
		}
		if ch != nil && ch.match >= 0 {
			replaced = append(replaced, m.Versions[ch.match])
			m.Versions[ch.match] = v
		} else {
			m.Versions = append([]Version{v}, m.Versions...)
		}
		res.Kept = v.Name
	}
	var pruned []Version
	if len(m.Versions) > keep {
		pruned = m.Versions[keep:]
		m.Versions = m.Versions[:keep:keep]
	}
	// The files this commit drops: those of the pruned versions and the old
	// files of the replaced ones, deleted after the commit point.
	m.Pruned = prunedFiles(s, m, append(replaced, pruned...))
	m.ManifestVersion = ManifestVersion
	// The stream's version says what DeviceDigest digests (format.DeviceDigester).
	m.FormatVersion = int(tx.hdr.V())
	m.ImageID = tx.newID
	m.Generation = tx.newGen
	m.Keep = keep
	switch src := tx.opts.Source; {
	case tx.opts.Force && (src.VolumeName != "" || src.VolumeID != ""):
		// A new owner: none of the old identity stays.
		m.Source.VolumeName, m.Source.VolumeID = src.VolumeName, src.VolumeID
	default:
		if src.VolumeName != "" {
			m.Source.VolumeName = src.VolumeName
		}
		if src.VolumeID != "" {
			m.Source.VolumeID = src.VolumeID
		}
	}
	m.Source.SnapshotTime = tx.opts.Source.SnapshotTime
	m.DeviceSize = tx.newSize
	m.BlockSize = int(tx.bs)
	m.DeviceDigest = Digest(end.DeviceDigest)
	m.BlockDigest = Digest(hashDigest)
	m.HashSeed = Digest(hashSeed)
	m.HashesFresh = tx.v2
	m.Hashes = cacheName
	m.ImageMtime = mtime
	m.BackupTime = now
	if !m.Source.SnapshotTime.IsZero() {
		m.BackupTime = m.Source.SnapshotTime.UTC()
	}
	tx.stats.Time = now
	tx.stats.Seconds = time.Since(tx.start).Seconds()
	tx.stats.Blocks = int64(blocks)
	m.LastRun = tx.stats
	if m.Versions == nil {
		m.Versions = []Version{}
	}

	// The commit point: the manifest names the new generation.
	if err := writeManifest(fs, s.join(manifestName), m); err != nil {
		var unsynced *unsyncedError
		if errors.As(err, &unsynced) {
			// The new manifest is in place, so the run must not be
			// undone under it; but until the directory is synced a power
			// loss may bring back the old manifest. The journal stays for
			// that case, and the next open finishes the run either way.
			tx.done = true
			tx.closeFiles()
			s.manifest = m
			return nil, fmt.Errorf("committed generation %d of %s, but not durably (the next run finishes or undoes it): %w", tx.newGen, s.path, err)
		}
		return nil, err
	}
	tx.done = true
	tx.closeFiles()

	if !tx.inPlace {
		if err := fs.Rename(tx.imgName, s.path); err != nil {
			return nil, fmt.Errorf("committed, but moving the image into place failed (the next run finishes it): %w", err)
		}
		if err := fs.SyncDir(filepath.Dir(s.path)); err != nil {
			return nil, err
		}
		fs.Remove(s.join(partialMeta))
	}
	fs.Remove(s.join(journalName))
	fs.Remove(s.join(newHashes))
	// Every signing record is of the old content now, this run's too.
	if st, err := s.lockState(); err == nil {
		s.base = format.Base{ImageID: m.ImageID, Generation: m.Generation, Size: uint64(m.DeviceSize)}
		s.sweepSigns(s.base, maxSignings)
		st.unlock()
	}
	if tx.old != nil && tx.old.Hashes != "" && tx.old.Hashes != cacheName {
		fs.Remove(s.join(tx.old.Hashes))
	}
	for _, f := range m.Pruned {
		fs.Remove(filepath.Join(s.dir, versionsDir, f))
	}
	for _, v := range pruned {
		res.Pruned = append(res.Pruned, v.Name)
	}
	if err := fs.SyncDir(s.dir); err != nil {
		return nil, err
	}
	s.manifest = m
	res.Stats = tx.stats
	return res, nil
}

// prunedFiles is the Pruned record of m, the manifest about to be
// committed: the files of the versions this run drops (beyond --keep, or
// replaced by a new file), and those an earlier commit dropped that are
// still there (the sweep could not delete them).
func prunedFiles(s *Store, m *Manifest, pruned []Version) []string {
	listed := map[string]bool{}
	for _, v := range m.Versions {
		listed[v.File] = true
	}
	var files []string
	for _, f := range m.Pruned {
		if !listed[f] && exists(filepath.Join(s.dir, versionsDir, f)) {
			files = append(files, f)
		}
	}
	for _, v := range pruned {
		if !listed[v.File] && !slices.Contains(files, v.File) {
			files = append(files, v.File)
		}
	}
	return files
}

// hashChunk is how many blocks writeCache handles at a time: 64 KiB of
// hashes. A variable, so that tests can make chunk boundaries frequent.
var hashChunk uint64 = 8192

// writeCache writes the new per-block hashes to name and returns the digest
// of the old content's hashes and of the new ones.
//
// It works in chunks of hashChunk blocks. A chunk in which the delta wrote
// no block keeps the signature's hashes as they are (the common case: an
// unchanged run reads the signing run's hashes once and nothing else); only
// a chunk with written blocks reads hashes.new and takes the signature's
// hashes for the blocks in it that were not written.
func (tx *Tx) writeCache(name string, sign *signRecord) (oldDigest, newDigest uint64, err error) {
	s := tx.s
	_, hashesName := s.signFiles(tx.key)
	sr, err := os.Open(hashesName)
	if err != nil {
		return 0, 0, fmt.Errorf("signature hashes: %w", err)
	}
	defer sr.Close()
	oldBlocks := format.BlockCount(uint64(tx.oldSize), uint32(tx.bs))
	if sign.Blocks != oldBlocks {
		return 0, 0, baseError("dosvob-hash recorded %d block hashes, the content has %d blocks", sign.Blocks, oldBlocks)
	}
	// A signing run's hashes are a record of that run only: if they are
	// cut short (a damaged disk, a hand edit), the delta cannot be checked
	// against them and this run is undone; the next run records its own.
	if fi, err := sr.Stat(); err != nil || fi.Size() != int64(oldBlocks)*8 {
		return 0, 0, baseError("the block hashes %q that dosvob-hash recorded for this delta are damaged (%d bytes, want %d)",
			hashesName, fileSize(fi), oldBlocks*8)
	}
	// With no name, only the digests are computed.
	var out file
	var off int64
	if name != "" {
		out, err = s.fs.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
		if err != nil {
			return 0, 0, err
		}
		defer out.Close()
	}
	od, nd := format.NewBlockDigester(), format.NewBlockDigester()
	blocks := tx.hdr.Blocks()
	oldBuf, newBuf := make([]byte, 8*hashChunk), make([]byte, 8*hashChunk)
	for lo := uint64(0); lo < max(blocks, oldBlocks); lo += hashChunk {
		// The signature's hashes of the old blocks in this chunk.
		var oldN uint64
		if lo < oldBlocks {
			oldN = min(hashChunk, oldBlocks-lo)
		}
		old := oldBuf[:8*oldN]
		if _, err := io.ReadFull(sr, old); err != nil {
			return 0, 0, fmt.Errorf("signature hashes: %w", err)
		}
		od.Write(old)
		if lo >= blocks {
			continue // past the new end: shrunk away
		}
		hi := min(lo+hashChunk, blocks)
		var hs []byte
		if hi <= oldBlocks && !anyBit(tx.written, lo, hi) {
			hs = old[:8*(hi-lo)] // nothing written: the signature's hashes
		} else {
			hs = newBuf[:8*(hi-lo)]
			if err := tx.readNewHashes(hs, lo); err != nil {
				return 0, 0, err
			}
			for i := lo; i < hi; i++ {
				if hasBit(tx.written, i) {
					continue
				}
				if i >= oldBlocks {
					return 0, 0, baseError("the delta carries nothing for block %d, past the old content", i)
				}
				k := 8 * (i - lo)
				copy(hs[k:k+8], old[k:k+8])
			}
		}
		nd.Write(hs)
		if out != nil {
			n, err := out.WriteAt(hs, off)
			off += int64(n)
			if err != nil {
				return 0, 0, err
			}
		}
	}
	if out != nil {
		if err := out.Sync(); err != nil {
			return 0, 0, err
		}
	}
	return od.Sum64(), nd.Sum64(), nil
}

// readNewHashes reads the hashes.new entries of blocks first, first+1, ...
// into p. The file has holes and may end early where the delta carried
// nothing: those read as zeros, and the written bitmap says which count.
func (tx *Tx) readNewHashes(p []byte, first uint64) error {
	n, err := tx.hashes.ReadAt(p, int64(first)*8)
	if err == io.EOF {
		clear(p[n:])
		err = nil
	}
	if err != nil {
		return fmt.Errorf("new hashes: %w", err)
	}
	return nil
}

// anyBit reports whether any bit lo..hi-1 of b is set.
func anyBit(b []uint64, lo, hi uint64) bool {
	for lo < hi {
		w := b[lo/64] >> (lo % 64)
		if n := hi - lo; n < 64-lo%64 {
			w &= 1<<n - 1
			lo = hi
		} else {
			lo += 64 - lo%64
		}
		if w != 0 {
			return true
		}
	}
	return false
}

func (tx *Tx) closeFiles() {
	for _, f := range []file{tx.img, tx.hashes, tx.next} {
		if f != nil {
			f.Close()
		}
	}
	if tx.jw != nil {
		tx.jw.close()
	}
	tx.img, tx.hashes, tx.jw, tx.next = nil, nil, nil, nil
}

// Abort undoes the run: an existing image gets its old contents and size
// back from the journal; a partial first backup is kept as it is, as the
// base of the next run. Abort after Commit does nothing.
func (tx *Tx) Abort() error {
	if tx.done {
		return nil
	}
	tx.done = true
	s := tx.s
	inPlace := tx.inPlace && tx.jw != nil
	if inPlace {
		// Entries still queued cover blocks not written yet: flush writes
		// a block in place only once its entry is on disk. So the journal
		// as it stands undoes the run, and nothing more need be written,
		// which on a full disk could not be.
		tx.pending = nil
		tx.jw.buf = tx.jw.buf[:0]
	} else if tx.img != nil {
		tx.img.Sync()
	}
	tx.closeFiles()
	// The run's own files go first: on a full disk the space they hold
	// may be what rolling back needs. Its signing record stays: after a
	// rollback the same delta may be applied again. (A first backup's
	// partial keeps what the run wrote: Begin counted the run in
	// partial.json, which makes every record made before it stale.)
	for _, name := range append(tx.files, s.join(newHashes), s.join(nextTmp)) {
		s.fs.Remove(name)
	}
	beforeRollback()
	if inPlace {
		return s.rollbackNow()
	}
	return nil
}

// beforeRollback runs in Abort after the run's own files are gone and
// before the image is rolled back: tests put another process's step there.
var beforeRollback = func() {}

// rollbackNow undoes the journaled run on the image (Abort).
func (s *Store) rollbackNow() error {
	jf, err := s.fs.OpenFile(s.join(journalName), os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer jf.Close()
	jr, err := openJournal(jf)
	if errors.Is(err, errNoJournal) {
		// This run fsynced the header before its first write: damage since.
		return s.tornJournal(s.manifest)
	}
	if err != nil {
		return err
	}
	img, err := s.fs.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	n, err := rollback(jr, img)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	s.logf("rolled back %s: restored %d blocks; the image is the previous backup", s.path, n)
	return s.removeDurably(journalName)
}

// fileSize is fi's size, or -1 without fi.
func fileSize(fi os.FileInfo) int64 {
	if fi == nil {
		return -1
	}
	return fi.Size()
}
