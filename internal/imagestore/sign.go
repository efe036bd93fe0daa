package imagestore

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// signRecord is sign.json: what the latest dosvob-hash of this image signed.
// dosvob-patch accepts only a delta made against exactly this signature.
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
}

func (r *signRecord) base() format.Base {
	return format.Base{ImageID: r.ImageID, Generation: r.Gen, Size: r.Size}
}

// Signing records one dosvob-hash run: its seed and base, each block hash as
// it is produced (sign.hashes, little-endian uint64s) and, at the end, the
// digest of the signature stream. dosvob-patch checks a delta against it and
// takes the hashes of unchanged blocks from it.
type Signing struct {
	s   *Store
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
// Base(). Call it before writing the signature header.
func (s *Store) BeginSigning(h format.SigHeader) (*Signing, error) {
	if h.Base != s.base {
		return nil, fmt.Errorf("signature base (image %s generation %d size %d) is not the content of %s", ID(h.Base.ImageID), h.Base.Generation, h.Base.Size, s.path)
	}
	// The start of a backup: the one place where the state directory is
	// made.
	if err := s.makeState(); err != nil {
		return nil, err
	}
	st, err := s.lockState()
	if err != nil {
		return nil, err
	}
	defer st.unlock()
	if exists(s.join(newHashes)) {
		// A patch run may be live: it must keep the signing record it
		// checks against.
		w, err := s.tryWriter()
		if err != nil {
			return nil, fmt.Errorf("a dosvob-patch run is writing %s: %w", s.path, err)
		}
		w.unlock()
	}
	g := &Signing{s: s, rec: signRecord{
		Seed: Digest(h.Seed), NextSeed: Digest(h.NextSeed), Version: h.V(), BlockSize: h.BlockSize,
		ImageID: s.base.ImageID, Gen: s.base.Generation, Size: s.base.Size,
		Started: time.Now().UTC(),
	}}
	f, err := s.fs.OpenFile(s.join(signHashes), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := writeJSONAtomic(s.fs, s.join(signName), &g.rec); err != nil {
		f.Close()
		return nil, fmt.Errorf("record signing run: %w", err)
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
	cur, err := readSign(g.s.dir)
	if err != nil {
		return err
	}
	if cur.Seed != g.rec.Seed {
		return fmt.Errorf("another dosvob-hash of %s started meanwhile: %w", g.s.path, ErrLocked)
	}
	g.rec.Done = true
	g.rec.SigDigest = Digest(sigDigest)
	return writeJSONAtomic(g.s.fs, g.s.join(signName), &g.rec)
}

// Abort gives up the record; the next delta against it will be refused.
func (g *Signing) Abort() {
	if g.f != nil {
		g.f.Close()
	}
	g.err = errors.New("signing aborted")
}

func readSign(dir string) (*signRecord, error) {
	b, err := os.ReadFile(dir + "/" + signName)
	if err != nil {
		return nil, err
	}
	var r signRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", signName, err)
	}
	return &r, nil
}
