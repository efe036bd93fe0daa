package imagestore

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// signRecord is sign-<key>.json: what one dosvob-hash run of this image
// signed. Every run has its own, named by its seeds (signKey), so that two
// pipelines on one image each find their own: dosvob-patch accepts only a
// delta made against a recorded signature of exactly the current content.
type signRecord struct {
	Seed Digest `json:"seed"`
	// NextSeed is the next seed of a version 2 signature: the delta must
	// carry it, and the run's new hash cache is under it.
	NextSeed  Digest    `json:"next_seed,omitempty"`
	Version   uint16    `json:"version,omitempty"` // stream version; 0 means 1
	BlockSize uint32    `json:"block_size"`
	ImageID   ID        `json:"image_id"`
	Gen       uint64    `json:"generation"`
	Size      uint64    `json:"size"`
	Started   time.Time `json:"started"`
	Blocks    uint64    `json:"blocks"`
	Done      bool      `json:"done"`
	SigDigest Digest    `json:"sig_digest"`
	// Void says why the record may no longer be used, though it describes
	// the current content: another patch run began writing the image
	// while it was being signed, or wrote the partial image of a first
	// backup (which a failed run does not undo). Its hashes are gone.
	Void string `json:"void,omitempty"`
	// PartialRuns is the Runs of partial.json when the signing began: a
	// first backup's patch run that began writing the partial image since
	// then makes the record stale, even if that run failed.
	PartialRuns uint64 `json:"partial_runs,omitempty"`
	// Found is the digest of the content the run read, as the manifest
	// defines its device_digest (Signing.Found): set by a run that read
	// an image with a manifest, absent when it signed from the hash cache
	// (an unchanged image) or had nothing to compare with.
	Found *Digest `json:"found_digest,omitempty"`
}

// ErrSuperseded: another run on the same image got ahead of this one: it
// committed since this run's signature was made, or began writing the
// image while it was being signed. The image is that other run's backup.
var ErrSuperseded = errors.New("another run on this image got ahead")

// maxSignings bounds the signing records of one content. A pipe that broke
// before its dosvob-patch began leaves its record until the next commit
// sweeps it; when more than this many pile up, the oldest go first.
const maxSignings = 8

const signPrefix = "sign-"

// signKey names the record of a signing run: its seed and next seed, which
// every delta header carries. A fresh next seed is drawn for every run.
func signKey(seed, next uint64) string { return fmt.Sprintf("%016x-%016x", seed, next) }

// signFiles are the record and the hashes file of the run called key.
func (s *Store) signFiles(key string) (record, hashes string) {
	return s.join(signPrefix + key + ".json"), s.join(signPrefix + key + ".hashes")
}

func (r *signRecord) base() format.Base {
	return format.Base{ImageID: r.ImageID, Generation: r.Gen, Size: r.Size}
}

// Signing records one dosvob-hash run: its seed and base, each block hash as
// it is produced (sign-<key>.hashes, little-endian uint64s) and, at the end, the
// digest of the signature stream. dosvob-patch checks a delta against it and
// takes the hashes of unchanged blocks from it.
type Signing struct {
	s   *Store
	key string
	rec signRecord
	f   file
	w   *bufio.Writer
	off int64
	err error
	one [8]byte // Add's hash, kept here so that it does not escape per call
}

// fileWriter adapts a file to io.Writer by appending.
type fileWriter struct {
	f   file
	off *int64
}

func (w fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, *w.off)
	*w.off += int64(n)
	return n, err
}

// BeginSigning records the start of a signing run of the current content
// with the seed, next seed, version and block size of h, whose Base must be
// Base(). Call it before writing the signature header. It makes the state
// directory if there is none: this is where a backup starts.
func (s *Store) BeginSigning(h format.SigHeader) (*Signing, error) {
	if h.Base != s.base {
		return nil, fmt.Errorf("signature base (image %s generation %d size %d) is not the content of %s", ID(h.Base.ImageID), h.Base.Generation, h.Base.Size, s.path)
	}
	if err := s.makeState(); err != nil {
		return nil, err
	}
	st, err := s.lockState()
	if err != nil {
		return nil, err
	}
	defer st.unlock()
	if exists(s.join(newHashes)) || exists(s.join(journalName)) {
		// A patch run may be live: what this run would read is what that
		// one is writing, or, while a failed run rolls back (its
		// hashes.new already gone), what it is restoring. The writer lock
		// is taken only under the state lock, which this holds, so a
		// free one stays free until this returns.
		w, err := s.tryWriter()
		if err != nil {
			return nil, fmt.Errorf("a dosvob-patch run is writing %s: %w", s.path, err)
		}
		w.unlock()
		// Or it died (after this Store was opened) and left its journal:
		// the image may be half of that run. Undo it first.
		if err := s.recover(); err != nil {
			return nil, err
		}
	}
	now, err := s.readState()
	if err != nil {
		return nil, err
	}
	cur := now.base
	if cur != s.base {
		return nil, fmt.Errorf("%s changed while it was opened (generation %d, now %d): %w", s.path, s.base.Generation, cur.Generation, ErrSuperseded)
	}
	s.sweepSigns(cur, maxSignings-1)
	key := signKey(h.Seed, h.NextSeed)
	g := &Signing{s: s, key: key, rec: signRecord{
		Seed: Digest(h.Seed), NextSeed: Digest(h.NextSeed), Version: h.V(), BlockSize: h.BlockSize,
		ImageID: s.base.ImageID, Gen: s.base.Generation, Size: s.base.Size,
		Started: time.Now().UTC(), PartialRuns: partialRuns(now.partial),
	}}
	recName, hashesName := s.signFiles(key)
	if err := writeJSONAtomic(s.fs, recName, &g.rec); err != nil {
		return nil, fmt.Errorf("record signing run: %w", err)
	}
	f, err := s.fs.OpenFile(hashesName, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		s.removeSign(key)
		return nil, err
	}
	g.f = f
	g.w = bufio.NewWriterSize(fileWriter{f: f, off: &g.off}, 64<<10)
	return g, nil
}

// Add records the hash of the next block.
func (g *Signing) Add(h uint64) error {
	binary.LittleEndian.PutUint64(g.one[:], h)
	return g.AddRaw(g.one[:])
}

// AddRaw records the hashes of the next len(p)/8 blocks, given as raw
// little-endian uint64s (as the hash cache holds them). len(p) must be a
// multiple of 8.
func (g *Signing) AddRaw(p []byte) error {
	if g.err != nil {
		return g.err
	}
	if len(p)%8 != 0 {
		g.err = fmt.Errorf("%d bytes of block hashes, not a multiple of 8", len(p))
		return g.err
	}
	_, g.err = g.w.Write(p)
	g.rec.Blocks += uint64(len(p) / 8)
	return g.err
}

// Finish records the digest of the signature stream (the one in its
// trailer). Call it before writing the trailer, so that a delta can never
// arrive before the record is complete.
func (g *Signing) Finish(sigDigest uint64) error {
	if g.err != nil {
		return g.err
	}
	defer g.f.Close()
	if err := g.w.Flush(); err != nil {
		return err
	}
	if err := g.f.Sync(); err != nil {
		return err
	}
	st, err := g.s.lockState()
	if err != nil {
		return err
	}
	defer st.unlock()
	cur, err := g.s.readSign(g.key)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("the record of this signing run of %s was swept: another run committed since it began: %w", g.s.path, ErrSuperseded)
	}
	if err != nil {
		return err
	}
	if cur.Void != "" {
		return fmt.Errorf("%s: %w", cur.Void, ErrSuperseded)
	}
	g.rec.Done = true
	g.rec.SigDigest = Digest(sigDigest)
	recName, _ := g.s.signFiles(g.key)
	return writeJSONAtomic(g.s.fs, recName, &g.rec)
}

// Abort gives up the run and removes its record: no delta can be made
// against an unfinished signature.
func (g *Signing) Abort() {
	if g.f != nil {
		g.f.Close()
	}
	g.err = errors.New("signing aborted")
	g.s.removeSign(g.key)
}

// readSign reads the record of the signing run called key.
func (s *Store) readSign(key string) (*signRecord, error) {
	name, _ := s.signFiles(key)
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var r signRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(name), err)
	}
	return &r, nil
}

// removeSign removes the record and the hashes of the run called key.
func (s *Store) removeSign(key string) {
	rec, hashes := s.signFiles(key)
	s.fs.Remove(hashes)
	s.fs.Remove(rec)
}

// signings returns the signing records in the state directory by key; a
// record that cannot be read is nil. Hashes files without a record are
// listed with a nil record too.
func (s *Store) signings() map[string]*signRecord {
	recs := map[string]*signRecord{}
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, signPrefix) {
			continue
		}
		key := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(n, signPrefix), ".json"), ".hashes")
		if key == strings.TrimPrefix(n, signPrefix) { // neither a record nor hashes (a .tmp)
			continue
		}
		if _, seen := recs[key]; !seen {
			recs[key], _ = s.readSign(key)
		}
	}
	return recs
}

// sweepSigns removes the signing records that can no longer be used: those
// of other content than cur (a later commit made them stale for good),
// unreadable ones and hashes without a record, the single record of older
// dosvob builds, and the oldest beyond keep records of cur. The caller
// holds the state lock.
func (s *Store) sweepSigns(cur format.Base, keep int) {
	s.fs.Remove(s.join("sign.json"))
	s.fs.Remove(s.join("sign.hashes"))
	var live []string
	recs := s.signings()
	for key, r := range recs {
		if r == nil || r.base() != cur {
			s.removeSign(key)
			continue
		}
		live = append(live, key)
	}
	if len(live) <= keep {
		return
	}
	slices.SortFunc(live, func(a, b string) int { return recs[a].Started.Compare(recs[b].Started) })
	for _, key := range live[:len(live)-keep] {
		s.removeSign(key)
	}
}

// voidSign marks the record called key as no longer usable, for why, and
// removes its hashes. The caller holds the state lock.
func (s *Store) voidSign(key string, r *signRecord, why string) error {
	r.Void = why
	rec, hashes := s.signFiles(key)
	if err := writeJSONAtomic(s.fs, rec, r); err != nil {
		return err
	}
	s.fs.Remove(hashes)
	return nil
}
