package imagestore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dosvob/dosvob/internal/format"
)

// Kept versions. When a run overwrites an image whose manifest keeps N > 0
// versions, the journal of the run (the old contents of every block it
// changed, plus the old size) is written out as a reverse delta in the delta
// stream format: its header's Base is the new image, its DeviceSize the old
// size, its records the old blocks, and its End record carries the old
// image's digests. Applying the reverse deltas newest first to a copy of
// the image walks back through the versions.

// ErrNoVersion reports a version name the manifest does not list.
var ErrNoVersion = errors.New("no such version")

// ErrVersionDamaged reports a kept version's file that is missing or does
// not read back: errors.Is(err, ErrCorrupt) holds for it too.
var ErrVersionDamaged error = versionDamaged{}

type versionDamaged struct{}

func (versionDamaged) Error() string        { return "kept version is damaged" }
func (versionDamaged) Is(target error) bool { return target == ErrCorrupt }

// ErrExists reports an output file that already exists.
var ErrExists = errors.New("file exists")

// versionLabel is the kept version of the content this run replaces, but
// for its DeltaBytes: the manifest's last backup, or, when the signing run
// found IMAGE changed outside dosvob (ch), what it found. That is the kept
// version it matched, if any (in a new file: the old one stays valid until
// the manifest is committed), or else a version named by the time it was
// found, labelled with the digest of what was found. versions are the
// versions of the new manifest so far, whose names it must not take.
func (tx *Tx) versionLabel(ch *outsideChange, versions []Version) Version {
	if ch != nil && ch.match >= 0 {
		v := versions[ch.match]
		v.File = fmt.Sprintf("%s.g%d.delta", v.Name, tx.newGen)
		v.DeltaBytes = 0
		return v
	}
	t := tx.old.BackupTime
	if ch != nil {
		t = ch.at
	}
	name := versionName(t)
	taken := func(n string) bool {
		return slices.ContainsFunc(versions, func(v Version) bool { return v.Name == n })
	}
	for k := 2; taken(name); k++ {
		name = fmt.Sprintf("%s-%d", versionName(t), k)
	}
	v := Version{
		Name: name, File: name + ".delta", Time: t,
		Generation: tx.old.Generation, Size: tx.oldSize, DeviceDigest: tx.old.DeviceDigest,
		FormatVersion: tx.old.FormatVersion, BlockSize: tx.old.BlockSize,
	}
	if ch != nil {
		v.DeviceDigest = ch.found
		v.Outside = &Outside{Since: tx.old.BackupTime, Found: ch.at}
	}
	return v
}

// outside is what the signing run of this delta found, if it read IMAGE
// and IMAGE was not the manifest's last backup; nil otherwise (also when it
// signed from the hash cache, which it does only while IMAGE is unchanged).
// sign is the run's record as it is at the commit: complete (it was not
// yet when the delta's header arrived, as the two run at once).
func (tx *Tx) outside(sign *signRecord) *outsideChange {
	if sign.Found == nil || tx.old == nil || !tx.inPlace {
		return nil
	}
	return changeOf(tx.old, *sign.Found, tx.oldSize, sign.Started)
}

// writeVersion writes the journal of the run as the reverse delta of the
// kept version v (labelled by versionLabel), whose old per-block hashes
// (under the run's seed) have the digest oldBlockDigest.
func (tx *Tx) writeVersion(v Version, oldBlockDigest uint64) (Version, error) {
	s, fs := tx.s, tx.s.fs
	if err := tx.jw.sync(); err != nil {
		return v, err
	}
	jr, err := openJournal(tx.jw.f)
	if err != nil {
		return v, err
	}
	refs := firstEntries(jr)

	dir := filepath.Join(s.dir, versionsDir)
	if err := s.makeState(); err != nil { // versions/ may have been removed by hand
		return v, err
	}
	tmp := filepath.Join(dir, v.File+".tmp")
	tx.files = append(tx.files, tmp, filepath.Join(dir, v.File))
	f, err := fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode) // old volume data, as in the journal
	if err != nil {
		return v, err
	}
	defer f.Close()
	var size int64
	bw := bufio.NewWriterSize(fileWriter{f: f, off: &size}, 256<<10)
	dw, err := format.NewDeltaWriter(bw, format.DeltaHeader{
		BlockSize: uint32(tx.bs), DeviceSize: uint64(tx.oldSize), Seed: tx.hdr.Seed,
		Base: format.Base{ImageID: tx.newID, Generation: tx.newGen, Size: uint64(tx.newSize)},
	}, format.DeltaOptions{})
	if err != nil {
		return v, err
	}
	for _, r := range refs {
		jr.off = r.off
		e, err := jr.next()
		if err != nil {
			dw.Abort()
			return v, fmt.Errorf("journal changed while writing a version")
		}
		if e.zero {
			err = dw.Zero(uint64(e.index))
		} else {
			err = dw.Data(uint64(e.index), e.data)
		}
		if err != nil {
			dw.Abort()
			return v, err
		}
	}
	if _, err := dw.Close(format.End{BlockDigest: oldBlockDigest, DeviceDigest: uint64(v.DeviceDigest)}); err != nil {
		return v, err
	}
	if err := bw.Flush(); err != nil {
		return v, err
	}
	if err := f.Sync(); err != nil {
		return v, err
	}
	if err := fs.Rename(tmp, filepath.Join(dir, v.File)); err != nil {
		return v, err
	}
	v.DeltaBytes = size
	return v, fs.SyncDir(dir)
}

// RestoreVersion writes the kept version called name (see Manifest.Versions;
// "latest" means the newest that can be restored) into the new file out,
// without touching the image: it copies the image and applies the reverse
// deltas from the newest back to that version, then checks the result
// against the version's whole-image digest. out must not exist. The Store
// must hold the writer lock, so that the image does not change meanwhile.
//
// A version marked unrestorable (the image was changed outside dosvob
// after it was kept) is refused at once, and so is every version when the
// image is not the manifest's last backup (found while it is copied):
// errors wrapping ErrVersionLost.
//
// The version is written into OUT.dosvob-tmp, which becomes out only when
// complete and verified, and is removed if the run fails or is
// interrupted. One that a killed run left is taken over; one that a live
// process is writing is refused with an *OutputBusyError (see openTemp).
func (s *Store) RestoreVersion(ctx context.Context, name, out string) (Version, error) {
	m := s.manifest
	if m == nil {
		return Version{}, fmt.Errorf("%q has no dosvob manifest: %w", s.path, ErrNotOurs)
	}
	if s.writer == nil {
		return Version{}, errors.New("store opened without the writer lock")
	}
	k := -1
	for i, v := range m.Versions {
		if v.Name == name || (name == "latest" && v.Unrestorable == "") {
			k = i
			break
		}
	}
	if k < 0 && name == "latest" && len(m.Versions) > 0 {
		return m.Versions[0], lostError(s.path, m.Versions[0], m) // none is restorable
	}
	if k < 0 {
		var names []string
		for _, v := range m.Versions {
			names = append(names, v.Name)
		}
		have := "none"
		if len(names) > 0 {
			have = strings.Join(names, ", ")
		}
		return Version{}, fmt.Errorf("%q has no version %q (kept: %s): %w", s.path, name, have, ErrNoVersion)
	}
	want := m.Versions[k]
	if want.Unrestorable != "" {
		return want, lostError(s.path, want, m)
	}
	if _, err := os.Lstat(out); err == nil {
		return want, fmt.Errorf("%q already exists: %w", out, ErrExists)
	}
	tmp := out + tempSuffix
	f, err := openTemp(out, s.logf)
	if err != nil {
		return want, err
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp) // under its lock: see openTemp
		}
		f.Close()
	}()
	// The reverse deltas lead back from the last backup: an image changed
	// outside dosvob since (and not yet backed up again, which would have
	// marked the versions) is found while it is copied, before any is
	// applied.
	id := format.NewDeviceDigester(uint16(m.FormatVersion), uint32(m.BlockSize))
	size, err := sparseCopy(ctx, f, s.path, id)
	if err != nil {
		return want, err
	}
	if Digest(id.Sum64()) != m.DeviceDigest || size != m.DeviceSize {
		return want, errChangedImage(s.path, m, Digest(id.Sum64()), size)
	}
	// The chain runs through the restorable versions: one that a change
	// outside dosvob cut off leads nowhere, and a version found by the
	// run after the change comes after it, when it was put back.
	base := format.Base{ImageID: m.ImageID, Generation: m.Generation, Size: uint64(m.DeviceSize)}
	for j := 0; j <= k; j++ {
		v := m.Versions[j]
		if v.Unrestorable != "" {
			continue
		}
		if err := applyVersion(ctx, f, filepath.Join(s.dir, versionsDir, v.File), base); err != nil {
			return want, fmt.Errorf("version %s: %w", v.Name, err)
		}
		base = format.Base{ImageID: m.ImageID, Generation: v.Generation, Size: uint64(v.Size)}
	}
	d, err := digestFile(ctx, f, want.digestVersion(), uint32(want.BlockSize), nil)
	if err != nil {
		return want, err
	}
	if Digest(d) != want.DeviceDigest {
		return want, fmt.Errorf("restored version %s has digest %s, the manifest recorded %s: %w", want.Name, Digest(d), want.DeviceDigest, ErrCorrupt)
	}
	if err := f.Sync(); err != nil {
		return want, err
	}
	if err := os.Rename(tmp, out); err != nil {
		return want, err
	}
	ok = true
	return want, syncDir(filepath.Dir(out))
}

// applyVersion applies one reverse delta to f, which must hold base.
func applyVersion(ctx context.Context, f *os.File, name string, base format.Base) error {
	vf, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("version file %q is missing: %w", name, ErrVersionDamaged)
	}
	if err != nil {
		return err
	}
	defer vf.Close()
	dr, err := format.NewDeltaReader(bufio.NewReaderSize(vf, 256<<10))
	if err != nil {
		return fmt.Errorf("version file %q: %w: %w", name, err, ErrVersionDamaged)
	}
	defer dr.Close()
	h := dr.Header()
	if err := checkVersionBase(name, h.Base, base); err != nil {
		return fmt.Errorf("%w: %w", err, ErrVersionDamaged)
	}
	for n := 0; ; n++ {
		if n%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		rec, err := dr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("version file %q: %w: %w", name, err, ErrVersionDamaged)
		}
		off := int64(rec.Index) * int64(h.BlockSize)
		if rec.Type == format.RecordZero {
			err = punch(f, off, int64(h.BlockLen(rec.Index)))
		} else {
			_, err = f.WriteAt(rec.Bytes, off)
		}
		if err != nil {
			return err
		}
	}
	return f.Truncate(int64(h.DeviceSize))
}

// sparseCopy copies the file src into f, leaving holes for zero runs, and
// hands what it copies to d. It returns the size copied.
func sparseCopy(ctx context.Context, f *os.File, src string, d io.Writer) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if ctx.Err() != nil {
			return off, ctx.Err()
		}
		n, err := io.ReadFull(in, buf)
		d.Write(buf[:n])
		if n > 0 && !allZero(buf[:n]) {
			if _, werr := f.WriteAt(buf[:n], off); werr != nil {
				return off, werr
			}
		}
		off += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return off, err
		}
	}
	return off, f.Truncate(off)
}

// digestVersion is the format version whose DeviceDigest v records.
func (v Version) digestVersion() uint16 { return uint16(max(v.FormatVersion, 1)) }

// digestFile returns the DeviceDigest of the delta format of the given
// version and block size of the whole content of r (format.DeviceDigester).
func digestFile(ctx context.Context, r io.ReaderAt, version uint16, blockSize uint32, progress func(done int64)) (uint64, error) {
	d := format.NewDeviceDigester(version, blockSize)
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		n, err := r.ReadAt(buf, off)
		d.Write(buf[:n])
		off += int64(n)
		if progress != nil {
			progress(off)
		}
		if err == io.EOF {
			return d.Sum64(), nil
		}
		if err != nil {
			return 0, err
		}
	}
}
