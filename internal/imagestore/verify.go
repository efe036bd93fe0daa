package imagestore

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// Report is the outcome of a scrub.
type Report struct {
	Size      int64  // bytes read
	Blocks    uint64 // blocks checked
	Digest    Digest // whole-image digest computed
	Want      Digest // whole-image digest in the manifest
	BadBlocks uint64 // blocks whose hash differs from the recorded one
	FirstBad  int64  // offset of the first bad block, -1 if none found
	// PerBlock says whether per-block hashes were available to name the
	// first bad block (without them only the whole-image digest is checked).
	PerBlock bool
	// Refreshed says that the scrub rebuilt missing per-block hashes or
	// tied them to a new mtime of the image: a progress note, which the
	// caller shows or not (every scrub renews the hashes and their seed).
	Refreshed bool
	// Versions is the number of kept versions checked; BadVersions are
	// those whose file does not check out, newest first.
	Versions    int
	BadVersions []VersionDamage
}

// VersionsChecked is "N kept versions", as many as the scrub checked.
func (r *Report) VersionsChecked() string { return count(r.Versions, "kept version") }

// Intact reports whether the image matched its manifest (whatever its kept
// versions).
func (r *Report) Intact() bool { return r.Digest == r.Want && r.BadBlocks == 0 && r.FirstBad < 0 }

// Verify re-reads the image at path and checks it against its manifest: the
// whole-image digest (End.DeviceDigest of the run that made it) and the
// recorded per-block hashes, which name the first bad block. It returns an
// error wrapping ErrCorrupt (with the first bad offset) when the image is
// damaged; ErrNotOurs when it has no manifest; ErrLocked when a patch is
// running on it. Then it reads the file of every kept version
// (verifyVersions): one that does not check out gives an ErrVersionDamaged
// error, unless the image's own error comes first. It never changes a
// version. Like every Open, it first recovers an interrupted run.
// progress, if set, is called with the bytes of the image read so far and
// the total.
func Verify(ctx context.Context, path string, progress func(done, total int64), logf func(string, ...any)) (*Report, error) {
	s, err := Open(path, Options{Writer: true, Logf: logf})
	if err != nil {
		var de *DamagedError
		if errors.As(err, &de) && de.Manifest != nil && logf != nil {
			compareDamaged(ctx, path, de.Manifest, progress, logf)
			de.Compared = true
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
		return nil, err
	}
	defer s.Close()
	rep, err := s.verify(ctx, progress)
	if rep == nil || ctx.Err() != nil {
		return rep, err
	}
	// The kept versions, after the image (whose verdict comes first).
	if verr := s.verifyVersions(ctx, rep); err == nil {
		err = verr
	}
	return rep, err
}

// compareDamaged reads the image at path and says whether it has the size
// and whole-image digest that m, a manifest that fails its checksum,
// records. That tells the user what the image is worth: a damaged digest
// (or size, block size, format version) does not match an image by chance,
// so a match shows the image and those fields intact, while a mismatch
// cannot tell which of the two is damaged. It writes nothing.
func compareDamaged(ctx context.Context, path string, m *Manifest, progress func(done, total int64), logf func(string, ...any)) {
	l, err := lockFile(filepath.Join(StateDir(path), lockName), 0)
	if err != nil {
		logf("cannot compare %s with its damaged manifest now: %v", path, err)
		return
	}
	defer l.unlock()
	f, err := os.Open(path)
	if err != nil {
		logf("cannot compare %s with its damaged manifest: %v", path, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		logf("cannot compare %s with its damaged manifest: %v", path, err)
		return
	case fi.Size() != m.DeviceSize:
		logf("%s is %d bytes, its damaged manifest records %d: the image or that field is damaged, and nothing tells which", path, fi.Size(), m.DeviceSize)
		return
	case !format.ValidBlockSize(uint32(m.BlockSize)) || m.FormatVersion < format.MinVersion || m.FormatVersion > format.Version:
		logf("%s cannot be compared with its damaged manifest: the manifest records no valid block size and format version", path)
		return
	}
	var prog func(int64)
	if progress != nil {
		prog = func(done int64) { progress(done, fi.Size()) }
	}
	d, err := digestFile(ctx, f, uint16(m.FormatVersion), uint32(m.BlockSize), prog)
	switch {
	case err != nil:
		logf("cannot compare %s with its damaged manifest: %v", path, err)
	case Digest(d) == m.DeviceDigest:
		logf("%s has the size and digest that its damaged manifest records: the image is intact (the damage is in another field of the manifest)", path)
	default:
		logf("%s does not have the digest that its damaged manifest records (%s, the image's is %s): the image or that field is damaged, and nothing tells which",
			path, m.DeviceDigest, Digest(d))
	}
}

func (s *Store) verify(ctx context.Context, progress func(done, total int64)) (*Report, error) {
	m := s.manifest
	if m == nil {
		if exists(s.path) {
			return nil, fmt.Errorf("%q has no dosvob manifest: %w", s.path, ErrNotOurs)
		}
		return nil, fmt.Errorf("%q: %w", s.path, os.ErrNotExist)
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	statTime := time.Now()
	rep := &Report{Want: m.DeviceDigest, FirstBad: -1}
	bs := m.BlockSize
	if !format.ValidBlockSize(uint32(bs)) {
		return nil, fmt.Errorf("manifest block size %d: %w", bs, ErrCorrupt)
	}
	blocks := format.BlockCount(uint64(m.DeviceSize), uint32(bs))
	var hr *bufio.Reader
	if hf, err := os.Open(s.join(m.Hashes)); err == nil {
		defer hf.Close()
		if st, err := hf.Stat(); err == nil && st.Size() == int64(blocks)*8 {
			hr = bufio.NewReaderSize(hf, 64<<10)
			rep.PerBlock = true
		}
	}
	hasher := format.NewHasher(uint64(m.HashSeed))
	bd := format.NewBlockDigester()
	// The new per-block hashes are under a new seed that no comparison has
	// used: the next run signs from them and compares the image's actual
	// content with the device afresh.
	newSeed := randomSeed()
	newHasher := format.NewHasher(newSeed)
	nd := format.NewBlockDigester()
	// The scrub rewrites the per-block hashes as it goes; they replace the
	// cache if the image proves intact.
	newName := fmt.Sprintf("hashes-%d-%016x", m.Generation, newSeed)
	tmpName := s.join(newName + ".tmp")
	// Refreshing them is a service to the next run: if it fails (on a full
	// disk, say), the scrub still gives its verdict.
	var cacheOff int64
	tmp, cacheErr := s.fs.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
	defer func() {
		if tmp != nil {
			tmp.Close()
			s.fs.Remove(tmpName)
		}
	}()
	cw := bufio.NewWriterSize(io.Discard, 64<<10)
	if cacheErr == nil {
		cw.Reset(fileWriter{f: tmp, off: &cacheOff})
	}
	d := format.NewDeviceDigester(uint16(m.FormatVersion), uint32(bs))
	buf := make([]byte, bs)
	total := fi.Size()
	var off int64
	for i := uint64(0); ; i++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			d.Write(buf[:n])
			sum := hasher.Sum(buf[:n])
			bd.Add(sum)
			fresh := newHasher.Sum(buf[:n])
			nd.Add(fresh)
			var hb [8]byte
			binary.LittleEndian.PutUint64(hb[:], fresh)
			cw.Write(hb[:])
			if hr != nil && i < blocks {
				var b [8]byte
				if _, err := io.ReadFull(hr, b[:]); err != nil {
					return nil, err
				}
				if sum != binary.LittleEndian.Uint64(b[:]) || n != format.BlockLen(uint64(m.DeviceSize), uint32(bs), i) {
					rep.BadBlocks++
					if rep.FirstBad < 0 {
						rep.FirstBad = off
					}
				}
			}
			rep.Blocks++
			off += int64(n)
			rep.Size = off
		}
		if progress != nil && (i%64 == 0 || rerr != nil) {
			progress(off, total)
		}
		if rerr == io.EOF || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	rep.Digest = Digest(d.Sum64())
	// Something else wrote to the image while it was read (a loop mount,
	// say): what was read is neither what the manifest describes nor
	// what the image holds now, and no hash of it may be trusted.
	if after, err := f.Stat(); err != nil {
		return nil, err
	} else if after.Size() != fi.Size() || !after.ModTime().Equal(fi.ModTime()) {
		return rep, fmt.Errorf("%q was written to while the scrub read it, by something other than dosvob: it no longer holds the backup its manifest describes: %w", s.path, ErrCorrupt)
	}
	if rep.Size != m.DeviceSize && rep.FirstBad < 0 {
		rep.FirstBad = min(rep.Size, m.DeviceSize)
	}
	if rep.BadBlocks > 0 && rep.Size == m.DeviceSize && rep.Digest == rep.Want && Digest(bd.Sum64()) == m.BlockDigest {
		// The image has both recorded digests, so the hash file is what
		// differs from it: it is only a cache, and is rebuilt below.
		s.logf("the per-block hashes %q are damaged (%d of them differ from the intact image); rebuilding them", s.join(m.Hashes), rep.BadBlocks)
		rep.BadBlocks, rep.FirstBad = 0, -1
	}
	switch {
	case rep.Size != m.DeviceSize:
		return rep, fmt.Errorf("%q is %d bytes, the manifest says %d (first bad offset %d): %w", s.path, rep.Size, m.DeviceSize, rep.FirstBad, ErrCorrupt)
	case rep.FirstBad >= 0:
		return rep, fmt.Errorf("%q is damaged: %d bad blocks, the first at offset %d: %w", s.path, rep.BadBlocks, rep.FirstBad, ErrCorrupt)
	case rep.Digest != rep.Want:
		return rep, fmt.Errorf("%q is damaged: digest %s, the manifest recorded %s (no per-block hashes to locate it): %w", s.path, rep.Digest, rep.Want, ErrCorrupt)
	case Digest(bd.Sum64()) != m.BlockDigest:
		return rep, fmt.Errorf("%q: its per-block digest %s is not the recorded %s: %w", s.path, Digest(bd.Sum64()), m.BlockDigest, ErrCorrupt)
	}
	// Intact: refresh the hash cache under the new seed, tied to the
	// image's mtime from before the read (the same after it). An mtime less
	// than a tick before that could be given again by a write to come
	// within the same tick, which would then go unnoticed: such an image
	// keeps the cache it has. (One in the future, after the clock was set
	// back, cannot be given by a write to come.)
	if age := statTime.Sub(fi.ModTime()); cacheErr == nil && age >= 0 && age < mtimeTick {
		cacheErr = fmt.Errorf("it was written %v ago; scrub it again later", age.Round(time.Millisecond))
	}
	if cacheErr == nil {
		cacheErr = s.refreshHashes(fi, cw, tmp, tmpName, newName, newSeed, nd.Sum64())
		tmp = nil
	}
	if cacheErr != nil {
		s.logf("%s is intact, but its per-block hashes were not refreshed: %v", s.path, cacheErr)
	} else if !rep.PerBlock || s.manifest.ImageMtime != m.ImageMtime {
		rep.Refreshed = true
	}
	return rep, nil
}

// refreshHashes makes the per-block hashes written to tmp (through cw,
// under seed, with that digest) the image's hash cache, under the name
// newName, and records them in the manifest with the image's mtime (fi,
// taken before the scrub read it). On an
// error before the manifest names them, the old cache stays as it was.
func (s *Store) refreshHashes(fi os.FileInfo, cw *bufio.Writer, tmp file, tmpName, newName string, seed, digest uint64) error {
	defer tmp.Close()
	renamed := false
	defer func() {
		if !renamed {
			s.fs.Remove(tmpName)
		}
	}()
	if err := cw.Flush(); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	// A new name: until the manifest names it, the old file stays valid.
	if err := s.fs.Rename(tmpName, s.join(newName)); err != nil {
		return err
	}
	renamed = true
	m := s.manifest
	nm := *m
	nm.ImageMtime = fi.ModTime().UnixNano()
	nm.HashSeed = Digest(seed)
	nm.BlockDigest = Digest(digest)
	nm.HashesFresh = true
	nm.Hashes = newName
	if err := writeManifest(s.fs, s.join(manifestName), &nm); err != nil {
		var unsynced *unsyncedError
		if errors.As(err, &unsynced) {
			// The manifest names the new hashes, but a power loss may
			// bring back the old one: keep both files.
			s.manifest = &nm
		} else {
			s.fs.Remove(s.join(newName))
		}
		return err
	}
	s.manifest = &nm
	if m.Hashes != "" && m.Hashes != newName {
		s.fs.Remove(s.join(m.Hashes))
	}
	return nil
}

// randomSeed draws a 64-bit hash seed.
func randomSeed() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return binary.LittleEndian.Uint64(b[:])
}
