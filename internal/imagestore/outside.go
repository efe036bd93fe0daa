package imagestore

import (
	"fmt"
	"strings"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// An image changed outside dosvob. The manifest records the digest of the
// last backup, and every kept version is a reverse delta that leads back
// from that content. When IMAGE no longer holds it (a user restored an old
// version into it or over it, wrote into a loop mount of it, or the disk
// rotted), the chain is broken: applying the reverse deltas to what IMAGE
// holds now gives none of the recorded backups.
//
// dosvob-hash notices it only when it reads IMAGE, which it does whenever
// IMAGE's size or mtime is not what the last commit left (the hash cache is
// trusted only while they are): it digests what it reads as the manifest
// defines its device_digest (ContentDigester), records that in its signing
// record and compares it with the manifest (Signing.Found), and says what is
// lost. The run still makes IMAGE the volume's backup. Its dosvob-patch
// keeps what IMAGE held as a version labelled with that digest (so that it
// restores exactly what was found), and marks the versions kept before the
// change as no longer restorable (Version.Unrestorable), so that a restore
// of one fails at once and says why. When what IMAGE held is exactly a kept
// version (an old version put back), the new version takes its place, and
// that version and the older ones stay restorable.

// ErrVersionLost reports a kept version that can no longer be restored,
// because the image was changed outside dosvob since it was kept (a run
// found it so and marked the version). errors.Is(err, ErrCorrupt) holds
// for it too.
var ErrVersionLost error = lostErr("kept version can no longer be restored")

// ErrImageChanged reports a restore from an image that is not its
// manifest's last backup: changed outside dosvob (or damaged), and not yet
// backed up again. No kept version leads back from it.
// errors.Is(err, ErrCorrupt) holds for it too.
var ErrImageChanged error = lostErr("image is not its last backup")

type lostErr string

func (e lostErr) Error() string      { return string(e) }
func (lostErr) Is(target error) bool { return target == ErrCorrupt }

// ContentDigester returns a digester for a signing run that reads the image:
// fed everything the run reads, it gives the digest of the content as the
// manifest defines its device_digest (its format version and block size),
// for Signing.Found. It is nil when there is nothing to compare with: no
// manifest, or the content is the partial image of a first backup.
func (s *Store) ContentDigester() *format.DeviceDigester {
	m := s.manifest
	if m == nil || s.content != s.path || !format.ValidBlockSize(uint32(m.BlockSize)) {
		return nil
	}
	return format.NewDeviceDigester(uint16(m.FormatVersion), uint32(m.BlockSize))
}

// Found records digest, of all the content that this signing run read (see
// ContentDigester), in the run's record, for its dosvob-patch. It returns
// nil when the image is its manifest's last backup, else what the change
// means for the kept versions. Call it before Finish.
func (g *Signing) Found(digest uint64) *Changed {
	d := Digest(digest)
	g.rec.Found = &d
	m := g.s.manifest
	c := changeOf(m, d, int64(g.rec.Size), g.rec.Started)
	if c == nil {
		return nil
	}
	return c.public(g.s.path, m)
}

// Changed describes an image whose content is not its manifest's last
// backup: it was changed outside dosvob, or is damaged.
type Changed struct {
	Image string
	Since time.Time // backup_time of the last backup, which IMAGE no longer holds
	// Lost names the kept versions, newest first, that can no longer be
	// restored because of the change (those already marked are not named).
	Lost []string
	// Match names the kept version that IMAGE holds exactly, if any: it
	// and the versions before it stay restorable.
	Match string
	Keep  int // the manifest's keep
}

// String is the one line that tells the user.
func (c *Changed) String() string {
	since := c.Since.UTC().Format(time.RFC3339)
	if c.Match != "" {
		lost := "that backup"
		if len(c.Lost) > 0 {
			lost += " and the " + strings.TrimPrefix(names(c.Lost), "its ")
		}
		return fmt.Sprintf("%q holds its kept version %s, not its backup of %s (it was put back outside dosvob): %s can no longer be restored",
			c.Image, c.Match, since, lost)
	}
	s := fmt.Sprintf("%q was changed outside dosvob (or is damaged) since its backup of %s", c.Image, since)
	if len(c.Lost) == 0 {
		return s + "; no kept version that could be restored depends on it"
	}
	return s + ": " + names(c.Lost) + " can no longer be restored"
}

// Hint says what happens next and what to do.
func (c *Changed) Hint() string {
	if c.Match != "" {
		return fmt.Sprintf("this run makes it the volume's backup again; dosvob-patch keeps what it held as version %s (unless --keep 0), and the versions before that one stay restorable", c.Match)
	}
	kept := "dosvob-patch keeps what it held as a version named by the time it was found (unless --keep 0)"
	if c.Keep == 0 {
		kept = "what it held is not kept (dosvob-patch --keep N would keep it as a version)"
	}
	return "this run still makes it the volume's backup; " + kept + "; if nobody changed it, check its disk and scrub the other images on it (dosvob-hash --verify)"
}

// names lists kept versions for a message.
func names(vs []string) string {
	switch n := len(vs); {
	case n == 1:
		return "its kept version " + vs[0]
	case n <= 3:
		return "its kept versions " + strings.Join(vs[:n-1], ", ") + " and " + vs[n-1]
	default:
		return fmt.Sprintf("its %d kept versions from %s back to %s", n, vs[0], vs[n-1])
	}
}

// outsideChange is what a signing run found: content that is not the
// manifest's last backup.
type outsideChange struct {
	found Digest    // its digest, as the manifest defines device_digest
	size  int64     // its size
	at    time.Time // when the signing run began reading it
	lost  []int     // the versions (indexes) it makes unrestorable
	match int       // the restorable version it is exactly, -1 if none
}

// changeOf compares content of digest found and size with m's last backup:
// nil if it is that backup (or there is no manifest), else which kept
// versions it makes unrestorable: every restorable one, or, when it is
// exactly a restorable kept version, those before that one.
func changeOf(m *Manifest, found Digest, size int64, at time.Time) *outsideChange {
	if m == nil || (found == m.DeviceDigest && size == m.DeviceSize) {
		return nil
	}
	c := &outsideChange{found: found, size: size, at: at.UTC().Truncate(time.Second), match: -1}
	kind := digestKind(max(m.FormatVersion, 1), m.BlockSize)
	for i, v := range m.Versions {
		if v.Unrestorable != "" {
			continue
		}
		if v.DeviceDigest == found && v.Size == size && digestKind(int(v.digestVersion()), v.BlockSize) == kind {
			c.match = i
			break
		}
		c.lost = append(c.lost, i)
	}
	return c
}

// digestKind is what a device digest of a format version and block size
// is computed over: the content (versions 1 and 2), or the per-block hashes
// of blocks of that size.
func digestKind(version, blockSize int) [2]int {
	if version < 3 {
		return [2]int{1, 0}
	}
	return [2]int{3, blockSize}
}

// public is c as Changed for the image at path with manifest m.
func (c *outsideChange) public(path string, m *Manifest) *Changed {
	p := &Changed{Image: path, Since: m.BackupTime, Keep: m.Keep}
	for _, i := range c.lost {
		p.Lost = append(p.Lost, m.Versions[i].Name)
	}
	if c.match >= 0 {
		p.Match = m.Versions[c.match].Name
	}
	return p
}

// lostReason is Version.Unrestorable of the versions the change makes
// unrestorable.
func (c *outsideChange) lostReason() string {
	return fmt.Sprintf("the image was changed outside dosvob (or damaged) after it was kept, found %s", c.at.Format(time.RFC3339))
}

// lostError is the error of a restore of v, which is marked unrestorable.
func lostError(path string, v Version, m *Manifest) error {
	var ok []string
	for _, w := range m.Versions {
		if w.Unrestorable == "" {
			ok = append(ok, w.Name)
		}
	}
	can := "none"
	if len(ok) > 0 {
		can = strings.Join(ok, ", ")
	}
	return fmt.Errorf("version %s of %q: %s (restorable: %s): %w", v.Name, path, v.Unrestorable, can, ErrVersionLost)
}

// errChangedImage is the error of a restore from an image that is not its
// manifest's last backup: got and size are what it holds.
func errChangedImage(path string, m *Manifest, got Digest, size int64) error {
	return fmt.Errorf("%q was changed outside dosvob (or is damaged) since its backup of %s (%d bytes, digest %s; recorded %d bytes, %s): no kept version leads back from it: %w",
		path, m.BackupTime.UTC().Format(time.RFC3339), size, got, m.DeviceSize, m.DeviceDigest, ErrImageChanged)
}
