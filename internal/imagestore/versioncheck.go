package imagestore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dosvob/dosvob/internal/format"
)

// Checking the kept versions without restoring them. A version's file is a
// reverse delta (versions.go); what can be told of it without applying it
// to a copy of the image is what the scrub checks: that it is there, has
// the size the manifest records, applies to the generation the one before
// it leaves (the image's, for the newest), restores the recorded size, and
// reads back to its End record with every checksum of the stream (header,
// zstd frame, record digest) and its counts right.

// VersionDamage is a kept version whose file does not check out. Its
// restore, and that of every older version (which applies it on the way),
// would fail.
type VersionDamage struct {
	Version Version
	File    string // the version's file
	Err     error  // what is wrong with it
	Older   int    // the older versions that can no longer be restored either
	Newer   int    // the newer versions, which are not affected
}

// badVersion is what checkVersion found wrong with a version file, as
// opposed to an error that kept it from checking (an I/O error).
type badVersion struct{ msg string }

func (e *badVersion) Error() string { return e.msg }

func versionBad(format string, args ...any) error {
	return &badVersion{msg: fmt.Sprintf(format, args...)}
}

// checkVersions checks every kept version's file, newest first: in full
// (reading each to its end) or, without full, only that it is there with
// the recorded size. It returns the damaged ones, and an error if one
// could not be checked (or ctx was cancelled). The image is not read.
func (s *Store) checkVersions(ctx context.Context, full bool) ([]VersionDamage, error) {
	m := s.manifest
	var bad []VersionDamage
	base := format.Base{ImageID: m.ImageID, Generation: m.Generation, Size: uint64(m.DeviceSize)}
	for k, v := range m.Versions {
		name := filepath.Join(s.dir, versionsDir, v.File)
		err := checkVersion(ctx, name, v, base, full)
		var b *badVersion
		switch {
		case errors.As(err, &b):
			bad = append(bad, VersionDamage{Version: v, File: name, Err: b, Older: len(m.Versions) - 1 - k, Newer: k})
		case err != nil:
			return bad, fmt.Errorf("kept version %s of %s: %w", v.Name, s.path, err)
		}
		base = format.Base{ImageID: m.ImageID, Generation: v.Generation, Size: uint64(v.Size)}
	}
	return bad, nil
}

// VersionFiles checks, without reading them, that the files of the kept
// versions are there with the sizes the manifest records (for "dosvob-patch
// versions"; the scrub reads them in full).
func (s *Store) VersionFiles() ([]VersionDamage, error) {
	if s.manifest == nil {
		return nil, nil
	}
	return s.checkVersions(context.Background(), false)
}

// checkVersion checks the file name of kept version v, which must apply to
// base; see checkVersions.
func checkVersion(ctx context.Context, name string, v Version, base format.Base, full bool) error {
	fi, err := os.Stat(name)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return versionBad("its file %q is missing", name)
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return versionBad("%q is not a regular file", name)
	case v.DeltaBytes > 0 && fi.Size() != v.DeltaBytes:
		return versionBad("its file %q is %d bytes, the manifest records %d", name, fi.Size(), v.DeltaBytes)
	case !full:
		return nil
	}
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	dr, err := format.NewDeltaReader(bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		return streamBad(name, err)
	}
	defer dr.Close()
	h := dr.Header()
	if err := checkVersionBase(name, h.Base, base); err != nil {
		return &badVersion{msg: err.Error()}
	}
	if h.DeviceSize != uint64(v.Size) {
		return versionBad("its file %q restores %d bytes, the manifest records %d", name, h.DeviceSize, v.Size)
	}
	for n := 0; ; n++ {
		if n%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		_, err := dr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return streamBad(name, err)
		}
	}
}

// streamBad is the error of reading version file name: damage when the
// stream is bad, an I/O error otherwise.
func streamBad(name string, err error) error {
	var pe *format.ParseError
	if errors.As(err, &pe) {
		return versionBad("its file %q does not read back: %v", name, err)
	}
	return err
}

// checkVersionBase checks that the version file name, whose header names
// got, applies to want: the content the newer version (or the image)
// leaves.
func checkVersionBase(name string, got, want format.Base) error {
	if got == want {
		return nil
	}
	if got.ImageID != want.ImageID {
		return fmt.Errorf("version file %q applies to image %s generation %d of size %d, not image %s generation %d of size %d",
			name, ID(got.ImageID), got.Generation, got.Size, ID(want.ImageID), want.Generation, want.Size)
	}
	return fmt.Errorf("version file %q applies to generation %d of size %d, not generation %d of size %d",
		name, got.Generation, got.Size, want.Generation, want.Size)
}

// verifyVersions is the scrub of the kept versions (Verify): it reads every
// version's file in full, says on stderr which are damaged and why, and
// returns an ErrVersionDamaged error naming the newest damaged one, which
// no older version can be restored past. rep gets the counts.
func (s *Store) verifyVersions(ctx context.Context, rep *Report) error {
	bad, err := s.checkVersions(ctx, true)
	rep.Versions, rep.BadVersions = len(s.manifest.Versions), bad
	for _, d := range bad {
		s.logf("kept version %s of %s is damaged: %v", d.Version.Name, s.path, d.Err)
	}
	if err != nil || len(bad) == 0 {
		return err
	}
	return fmt.Errorf("%s: %w", bad[0].Lost(s.path), ErrVersionDamaged)
}

// Lost says what d costs: which versions of image can no longer be
// restored, and which still can.
func (d VersionDamage) Lost(image string) string {
	which := "kept version " + d.Version.Name
	if d.Older > 0 {
		which += " and the " + count(d.Older, "older one")
	}
	kept := "the image is not affected"
	if d.Newer > 0 {
		kept = "the image and the " + count(d.Newer, "newer version") + " are not affected"
	}
	return fmt.Sprintf("%q: %s can no longer be restored (%s)", image, which, kept)
}

// count is "1 thing" or "n things".
func count(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
