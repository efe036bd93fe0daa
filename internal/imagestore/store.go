package imagestore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// Names inside the state directory IMAGE.dosvob/ (docs/MANIFEST.md).
const (
	stateSuffix  = ".dosvob"
	manifestName = "manifest.json"
	lockName     = "lock"       // writer lock: held by patch, restore and recovery
	stateLock    = "state.lock" // short lock around recovery and records
	journalName  = "journal"    // undo journal of the run in progress
	partialName  = "partial"    // image of an unfinished first backup
	partialMeta  = "partial.json"
	versionsDir  = "versions"
	newHashes    = "hashes.new"      // per-block hashes being written by a run
	nextTmp      = "hashes-next.tmp" // next-seed hashes being written by a version 2 run
)

// Modes of what dosvob creates. Every file it makes holds or describes a
// user's volume data (the image is a raw copy of it, and the manifest,
// hashes, records and versions describe it), so it is private to the owner
// whatever the umask (which can only take bits away). An existing image that
// a run updates in place keeps the mode it has.
const (
	fileMode os.FileMode = 0o600
	dirMode  os.FileMode = 0o700
)

// Errors the commands map to exit codes.
var (
	// ErrNotOurs: the image exists but has no dosvob manifest.
	ErrNotOurs = errors.New("not a dosvob image")
	// ErrOtherVolume: the manifest names another source volume.
	ErrOtherVolume = errors.New("image belongs to another volume")
	// ErrBase: a delta was made against other image content than IMAGE.
	ErrBase = errors.New("delta does not fit the image")
	// ErrCorrupt: a scrub found the image damaged.
	ErrCorrupt = errors.New("image is corrupt")
	// ErrIsImage: a raw patch was aimed at a dosvob image.
	ErrIsImage = errors.New("refusing to write a backup image raw")
)

// Options configure Open.
type Options struct {
	// Logf receives what recovery did and other notes for stderr. Nil
	// discards them.
	Logf func(format string, args ...any)
	// Writer takes the writer lock for the life of the Store (patch,
	// restore). Without it the Store only reads the image and records
	// signing runs; it takes the writer lock just long enough to recover
	// an interrupted run, if there is one. With no state directory yet
	// there is nothing to lock: Begin takes the lock once dosvob-hash has
	// made the directory.
	Writer bool
	// Backup marks the Store of a backup run (dosvob-hash IMAGE,
	// dosvob-patch IMAGE). Only such a Store sweeps up what earlier runs
	// left behind (sweep), and even it deletes no version file that is not
	// provably a leftover. Every other Store (a scrub, versions,
	// restore-version, the --delta IMAGE of a restore) deletes and renames
	// nothing of the image's history: it still finishes or undoes an
	// interrupted run, which the image must be for anything to read it.
	Backup bool
	// StateWait bounds the wait for the state lock (default 5 minutes: it
	// is held for milliseconds, except while a recovery rolls back a
	// large run).
	StateWait time.Duration

	fs fsys // tests replace the file system
}

// Store is an image and its state directory.
type Store struct {
	path string // the image
	dir  string // its state directory
	opts Options
	fs   fsys

	writer   *flock
	manifest *Manifest
	partial  *partialRecord
	base     format.Base
	content  string // file holding the current content: path, the partial, or ""
	open     []io.Closer
}

// partialRecord is partial.json: the identity of a first backup in progress.
type partialRecord struct {
	ImageID    ID     `json:"image_id"`
	Generation uint64 `json:"generation"`
	// Runs counts the patch runs that began writing the partial image. A
	// run that fails keeps what it wrote, and the partial's base (id,
	// generation 0, size) need not change; so each run raises Runs
	// durably before its first write, and a signing record is trusted
	// only with the Runs it was made under.
	Runs uint64 `json:"runs,omitempty"`
}

// partialRuns is the Runs of p, 0 without a partial image.
func partialRuns(p *partialRecord) uint64 {
	if p == nil {
		return 0
	}
	return p.Runs
}

// StateDir returns the state directory of an image.
func StateDir(image string) string { return image + stateSuffix }

// HasState reports whether path has a state directory beside it: whether it
// is a dosvob image (or the start of one).
func HasState(path string) bool {
	fi, err := os.Stat(StateDir(path))
	return err == nil && fi.IsDir()
}

// HasPartial reports whether image has no file yet but the partial image of
// an unfinished first backup, which the next run resumes.
func HasPartial(image string) bool {
	return !exists(image) && exists(filepath.Join(StateDir(image), partialName))
}

// Open opens the image at path and its state directory, recovering an
// interrupted run first. With opts.Writer it holds the writer lock until
// Close and fails with a *LockedError (ErrLocked) if another process has
// it.
//
// Open creates nothing. Without a state directory (no image yet, or a file
// dosvob has not signed) the Store has no manifest and nothing to recover;
// BeginSigning makes the directory when dosvob-hash IMAGE starts a backup.
// So a command that only reads, or that is refused, leaves no trace.
func Open(path string, opts Options) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(abs); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%q is not a regular file", path)
	}
	if opts.fs == nil {
		opts.fs = newOSFS()
	}
	if opts.StateWait == 0 {
		opts.StateWait = 5 * time.Minute
	}
	s := &Store{path: abs, dir: StateDir(abs), opts: opts, fs: opts.fs}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("directory %q of the image does not exist", filepath.Dir(path))
	}
	if !HasState(abs) {
		if err := s.load(); err != nil {
			return nil, err
		}
		return s, nil
	}
	if err := s.attach(); err != nil {
		return nil, err
	}
	return s, nil
}

// attach takes the state lock and, for a writer, the writer lock; recovers
// an interrupted run; and loads the state.
func (s *Store) attach() error {
	st, err := s.lockState()
	if err != nil {
		return err
	}
	defer st.unlock()
	if s.opts.Writer {
		if s.writer, err = s.tryWriter(); err != nil {
			return err
		}
	}
	if err := s.recover(); err != nil {
		s.Close()
		return err
	}
	if err := s.load(); err != nil {
		s.Close()
		return err
	}
	return nil
}

// makeState creates the state directory (and versions/ in it) if it is
// missing: only a run that starts a backup calls it.
func (s *Store) makeState() error {
	for _, d := range []string{s.dir, s.join(versionsDir)} {
		err := s.fs.Mkdir(d, dirMode)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err == nil {
			err = s.fs.SyncDir(filepath.Dir(d))
		}
		if err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	return nil
}

func (s *Store) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

func (s *Store) lockState() (*flock, error) {
	l, err := lockFile(filepath.Join(s.dir, stateLock), s.opts.StateWait)
	if errors.Is(err, ErrLocked) {
		return nil, &LockedError{Path: s.path}
	}
	return l, err
}

func (s *Store) tryWriter() (*flock, error) {
	l, err := lockFile(filepath.Join(s.dir, lockName), 0)
	if errors.Is(err, ErrLocked) {
		return nil, &LockedError{Path: s.path}
	}
	return l, err
}

func exists(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}

func (s *Store) join(name string) string { return filepath.Join(s.dir, name) }

// load reads the manifest and the partial record and works out the base.
func (s *Store) load() error {
	st, err := s.readState()
	if err != nil {
		return err
	}
	s.manifest, s.partial, s.base, s.content = st.manifest, st.partial, st.base, st.content
	return nil
}

// state is what load works out.
type state struct {
	manifest *Manifest
	partial  *partialRecord
	base     format.Base
	content  string
}

func (s *Store) readState() (state, error) {
	var st state
	m, err := readManifest(s.dir)
	if err != nil {
		return st, err
	}
	st.manifest = m
	if b, err := os.ReadFile(s.join(partialMeta)); err == nil {
		var p partialRecord
		if json.Unmarshal(b, &p) == nil && exists(s.join(partialName)) {
			st.partial = &p
		}
	}
	if fi, err := os.Stat(s.path); err == nil {
		st.content = s.path
		st.base.Size = uint64(fi.Size())
		if m != nil {
			st.base.ImageID = m.ImageID
			st.base.Generation = m.Generation
		}
	} else if st.partial != nil {
		fi, err := os.Stat(s.join(partialName))
		if err != nil {
			return st, err
		}
		st.content = s.join(partialName)
		st.base = format.Base{ImageID: st.partial.ImageID, Generation: st.partial.Generation, Size: uint64(fi.Size())}
	}
	return st, nil
}

// Path is the image's path.
func (s *Store) Path() string { return s.path }

// Manifest returns the image's manifest, nil if it has none.
func (s *Store) Manifest() *Manifest { return s.manifest }

// Base is the identity of the current content: the image, or the partial
// image of an interrupted first backup, or the zero Base when there is
// neither.
func (s *Store) Base() format.Base { return s.base }

// Partial reports whether the content is a partial first backup.
func (s *Store) Partial() bool { return s.content != "" && s.content != s.path }

// Content opens the current content (the image or the partial image) for
// reading. A Store with no content yet returns an empty reader and size 0.
// The file is closed by Close.
func (s *Store) Content() (io.ReaderAt, int64, error) {
	if s.content == "" {
		return strings.NewReader(""), 0, nil
	}
	f, err := os.Open(s.content)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	s.open = append(s.open, f)
	return f, fi.Size(), nil
}

// Close releases the files and the writer lock.
func (s *Store) Close() error {
	for _, c := range s.open {
		c.Close()
	}
	s.open = nil
	s.writer.unlock()
	s.writer = nil
	return nil
}

// needsRecovery reports whether an earlier run left work behind.
func (s *Store) needsRecovery() bool {
	if exists(s.join(journalName)) {
		return true
	}
	if exists(s.path) || !exists(s.join(partialName)) {
		return false
	}
	return s.committedPartial() != nil
}

// committedPartial returns the manifest when it names the partial image:
// a first backup that committed but was not yet moved into place.
func (s *Store) committedPartial() *Manifest {
	m, err := readManifest(s.dir)
	if err != nil || m == nil {
		return m // an unreadable manifest: let recovery report it
	}
	b, err := os.ReadFile(s.join(partialMeta))
	if err != nil {
		return nil
	}
	var p partialRecord
	if json.Unmarshal(b, &p) != nil || p.ImageID != m.ImageID {
		return nil
	}
	return m
}

// recover finishes or undoes an interrupted run. The caller holds the state
// lock.
func (s *Store) recover() error {
	if !s.needsRecovery() {
		if s.writer != nil && s.opts.Backup {
			s.sweep()
		}
		return nil
	}
	if s.writer == nil {
		w, err := s.tryWriter()
		if err != nil {
			// A writer is mid-run: its journal is live, not left over.
			return err
		}
		defer w.unlock()
	}
	if err := s.checkWritable(); err != nil {
		return err
	}
	m, err := readManifest(s.dir)
	if err != nil {
		return err
	}
	// The interrupted run's temporary files go first: on a full disk the
	// space they hold may be what rolling back needs.
	s.removeTemps()
	if exists(s.join(journalName)) {
		if err := s.recoverJournal(m); err != nil {
			return err
		}
	}
	if !exists(s.path) && exists(s.join(partialName)) && s.committedPartial() != nil {
		if err := s.recoverRename(m); err != nil {
			return err
		}
	}
	if s.opts.Backup {
		s.sweep()
	}
	return nil
}

func (s *Store) recoverJournal(m *Manifest) error {
	jf, err := s.fs.OpenFile(s.join(journalName), os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer jf.Close()
	jr, err := openJournal(jf)
	if errors.Is(err, errNoJournal) {
		return s.tornJournal(m)
	}
	if err != nil {
		return err
	}
	h := jr.h
	var curID ID
	var curGen uint64
	if m != nil {
		curID, curGen = m.ImageID, m.Generation
	}
	switch {
	case curID == h.NewID && curGen == h.NewGen:
		s.logf("recovery: the interrupted run on %s had committed (generation %d); finished its cleanup", s.path, h.NewGen)
	case curID == h.OldID && curGen == h.OldGen:
		img, err := s.fs.OpenFile(s.path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("recovery: %w", err)
		}
		n, err := rollback(jr, img)
		if cerr := img.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("recovery: rolling back %s: %w", s.path, err)
		}
		s.logf("recovery: rolled back an interrupted run on %s: restored %d blocks and the size of %d bytes (generation %d)",
			s.path, n, h.OldSize, h.OldGen)
	default:
		return fmt.Errorf("recovery: journal of %s is for image %s generation %d->%d, manifest says %s generation %d: %w",
			s.path, h.OldID, h.OldGen, h.NewGen, curID, curGen, ErrUnknownVersion)
	}
	return s.removeDurably(journalName)
}

// tornJournal handles a journal whose header does not check out. The header
// is fsynced before the first write to the image, so after a crash that is
// a run that never touched it. But damage to the journal later (a disk
// fault, a hand edit) looks the same, and then the image may hold part of
// a run under the old manifest. So the journal goes only when the image
// still has the manifest's size and digest, read in full (this happens
// only after a crash within a few system calls, or after damage), or the
// size and digest that a signing run of this content found in it (an image
// changed outside dosvob since its last backup, which that run was to back
// up over); else it is damage (ErrStateDamaged) and stays, for the hint.
// With no manifest nothing says what the image was: the journal goes with
// every signing record, and the next signature reads the image. The caller
// holds the writer lock.
func (s *Store) tornJournal(m *Manifest) error {
	if m == nil {
		for key := range s.signings() {
			s.removeSign(key)
		}
		s.logf("recovery: removed the incomplete journal of an interrupted run on %s, which has no manifest to check it against", s.path)
		return s.removeDurably(journalName)
	}
	damaged := &DamagedError{File: s.join(journalName), Err: fmt.Errorf(
		"its header does not check out, and %s no longer has the size and digest of generation %d: it may hold part of the interrupted run", s.path, m.Generation)}
	if !format.ValidBlockSize(uint32(m.BlockSize)) {
		return damaged // nothing to compute the digest with
	}
	s.logf("recovery: the journal of an interrupted run on %s has a header that does not check out; reading the image to check it against its manifest", s.path)
	d, size, err := s.contentDigest(m)
	if err != nil {
		return fmt.Errorf("recovery: checking %s: %w", s.path, err)
	}
	if size == m.DeviceSize && d == m.DeviceDigest {
		s.logf("recovery: removed the incomplete journal of an interrupted run; %s was not touched (it has its manifest's digest)", s.path)
		return s.removeDurably(journalName)
	}
	// A finished record that was not voided read the image before the
	// interrupted run began writing (Begin voids unfinished ones, and no
	// signing starts while a journal is there).
	cur := format.Base{ImageID: m.ImageID, Generation: m.Generation, Size: uint64(size)}
	for _, r := range s.signings() {
		if r != nil && r.Done && r.Void == "" && r.base() == cur && r.Found != nil && *r.Found == d {
			s.logf("recovery: removed the incomplete journal of an interrupted run; %s was not touched (it has the digest its signing run found)", s.path)
			return s.removeDurably(journalName)
		}
	}
	return damaged
}

// contentDigest reads the image and returns its digest as m defines its
// device_digest, and its size.
func (s *Store) contentDigest(m *Manifest) (Digest, int64, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	d, err := digestFile(context.Background(), f, uint16(m.FormatVersion), uint32(m.BlockSize), nil)
	return Digest(d), fi.Size(), err
}

// recoverRename finishes a first backup whose manifest was committed but
// whose partial image was not yet moved into place.
func (s *Store) recoverRename(m *Manifest) error {
	b, err := os.ReadFile(s.join(partialMeta))
	if err != nil {
		return nil // no record: the partial is not the committed one
	}
	var p partialRecord
	if json.Unmarshal(b, &p) != nil || p.ImageID != m.ImageID {
		return nil
	}
	if err := s.fs.Rename(s.join(partialName), s.path); err != nil {
		return fmt.Errorf("recovery: %w", err)
	}
	if err := s.fs.SyncDir(filepath.Dir(s.path)); err != nil {
		return err
	}
	s.logf("recovery: the interrupted first backup of %s had committed; moved it into place", s.path)
	return s.removeDurably(partialMeta)
}

func (s *Store) removeDurably(name string) error {
	if err := s.fs.Remove(s.join(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return s.fs.SyncDir(s.dir)
}

// sweep removes leftovers no committed state refers to: temporary files,
// signing records of other content, and per-block hash files the manifest
// does not list. Of the version files the manifest does not list it
// removes only those that are provably leftovers (sweepVersions): any other
// may be an old backup. With no manifest at all (lost, or moved away by
// hand) it removes no version file. Only a backup run sweeps (Options.Backup).
// The caller holds the writer lock and the state lock.
func (s *Store) sweep() {
	st, err := s.readState()
	if err != nil {
		return
	}
	m := st.manifest
	s.removeTemps()
	if exists(s.path) && !exists(s.join(partialName)) {
		os.Remove(s.join(partialMeta)) // its first backup was moved into place
	}
	s.sweepSigns(st.base, maxSignings)
	if m == nil {
		return
	}
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "hashes-") && n != m.Hashes {
			os.Remove(s.join(n))
		}
	}
	s.sweepVersions(m)
}

// sweepVersions removes the files in versions/ that m does not list and
// that are provably leftovers of a run, and says on stderr which it keeps.
// A file m does not list is a leftover only if
//
//   - m.Pruned names it: the commit of m dropped it beyond --keep and was
//     to delete it right after the commit point; or
//   - its header says it applies to a later generation of this image than
//     m's: a run wrote it before its commit point and never committed (the
//     generation of a committed manifest only grows).
//
// Anything else (a file a damaged manifest of an older dosvob no longer
// names, the versions of an image whose manifest was moved aside, a file
// that does not read) may be an old backup: it stays.
func (s *Store) sweepVersions(m *Manifest) {
	listed := map[string]bool{}
	for _, v := range m.Versions {
		listed[v.File] = true
	}
	dir := s.join(versionsDir)
	ents, _ := os.ReadDir(dir)
	var kept []string
	for _, e := range ents {
		n := e.Name()
		if listed[n] {
			continue
		}
		why := s.leftoverVersion(m, n)
		if why == "" {
			kept = append(kept, n)
			continue
		}
		if err := s.fs.Remove(filepath.Join(dir, n)); err == nil {
			s.logf("removed version file %s of %s: %s", n, s.path, why)
		}
	}
	switch {
	case len(kept) == 1:
		s.logf("kept version file %s in %s: the manifest does not list it, but nothing shows that it is a leftover of a run "+
			"(it may be an old backup); remove it by hand if you do not need it", kept[0], dir)
	case len(kept) > 1:
		list := strings.Join(kept[:min(3, len(kept))], ", ")
		if len(kept) > 3 {
			list += fmt.Sprintf(" and %d more", len(kept)-3)
		}
		s.logf("kept %d version files in %s (%s): the manifest does not list them, but nothing shows that they are leftovers of a run "+
			"(they may be old backups); remove them by hand if you do not need them", len(kept), dir, list)
	}
}

// leftoverVersion says why the file name in versions/, which m does not
// list, is a leftover of a run, or "" if nothing shows it is one. (A
// version name can come back after its version was pruned, so a file the
// Pruned record names may be one that a later run wrote and did not
// commit: the header is asked first, for the right reason.)
func (s *Store) leftoverVersion(m *Manifest, name string) string {
	f, err := os.Open(filepath.Join(s.dir, versionsDir, name))
	if err == nil {
		defer f.Close()
		if dr, err := format.NewDeltaReader(bufio.NewReader(f)); err == nil {
			defer dr.Close()
			if b := dr.Header().Base; ID(b.ImageID) == m.ImageID && b.Generation > m.Generation {
				return fmt.Sprintf("a run wrote it for generation %d and did not commit (the manifest is at generation %d)", b.Generation, m.Generation)
			}
		}
	}
	if slices.Contains(m.Pruned, name) {
		return fmt.Sprintf("the commit of generation %d dropped it beyond --keep %d", m.Generation, m.Keep)
	}
	return ""
}

// removeTemps removes the files a run writes before its commit: temporary
// files in the state directory and in versions/, and the per-block hashes
// being written. None of them is ever part of a committed state. The caller
// holds the writer lock and the state lock.
func (s *Store) removeTemps() {
	for _, dir := range []string{s.dir, s.join(versionsDir)} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if n := e.Name(); strings.HasSuffix(n, ".tmp") || n == newHashes {
				os.Remove(filepath.Join(dir, n))
			}
		}
	}
}
