package imagestore

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// ManifestVersion is the version of manifest.json this build reads and
// writes. A manifest with another version is never rewritten (see
// ErrUnknownVersion).
const ManifestVersion = 1

// ID identifies one image lineage: it is drawn at random when a first backup
// starts and kept for the life of the image. The zero ID stands for "no
// dosvob image": a missing file or a file dosvob did not create.
type ID [16]byte

// NewID draws a random ID.
func NewID() ID {
	var id ID
	if _, err := rand.Read(id[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return id
}

func (id ID) IsZero() bool   { return id == ID{} }
func (id ID) String() string { return hex.EncodeToString(id[:]) }

func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }
func (id *ID) UnmarshalText(b []byte) error {
	if len(b) != 32 {
		return fmt.Errorf("bad image id %q", b)
	}
	_, err := hex.Decode(id[:], b)
	return err
}

// Digest is a 64-bit digest, written in JSON as 16 hex digits.
type Digest uint64

func (d Digest) String() string { return fmt.Sprintf("%016x", uint64(d)) }
func (d Digest) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}
func (d *Digest) UnmarshalText(b []byte) error {
	var v uint64
	if len(b) != 16 {
		return fmt.Errorf("bad digest %q", b)
	}
	if _, err := fmt.Sscanf(string(b), "%016x", &v); err != nil {
		return fmt.Errorf("bad digest %q", b)
	}
	*d = Digest(v)
	return nil
}

// Source names the DigitalOcean volume an image is a backup of.
type Source struct {
	VolumeName   string    `json:"volume_name,omitempty"`
	VolumeID     string    `json:"volume_id,omitempty"`
	SnapshotTime time.Time `json:"snapshot_time,omitzero"`
}

// describe names the volume as far as s knows it: "name", id "id", or
// "name" (id "id").
func (s Source) describe() string {
	switch {
	case s.VolumeID == "":
		return fmt.Sprintf("%q", s.VolumeName)
	case s.VolumeName == "":
		return fmt.Sprintf("id %q", s.VolumeID)
	}
	return fmt.Sprintf("%q (id %q)", s.VolumeName, s.VolumeID)
}

// RunStats describes the run that made the current image.
type RunStats struct {
	Time         time.Time `json:"time"`
	Seconds      float64   `json:"seconds"`
	Blocks       int64     `json:"blocks"`
	DataBlocks   int64     `json:"data_blocks"`
	ZeroBlocks   int64     `json:"zero_blocks"`
	BytesWritten int64     `json:"bytes_written"`
	Resumed      bool      `json:"resumed,omitempty"`
}

// Version is a kept older backup, stored as a reverse delta in versions/.
type Version struct {
	Name         string    `json:"name"`          // UTC time of that backup, e.g. 20261122T074012Z
	File         string    `json:"file"`          // file name in versions/
	Time         time.Time `json:"time"`          // when that backup was made
	Generation   uint64    `json:"generation"`    // generation of that backup
	Size         int64     `json:"size"`          // image size of that backup
	DeviceDigest Digest    `json:"device_digest"` // whole-image digest of that backup
	// FormatVersion and BlockSize are those of the run that made that
	// backup: they say how DeviceDigest is computed. Absent (0) in
	// versions kept before format version 3: the content digest of
	// versions 1 and 2.
	FormatVersion int   `json:"format_version,omitempty"`
	BlockSize     int   `json:"block_size,omitempty"`
	DeltaBytes    int64 `json:"delta_bytes"` // size of the reverse delta file
	// Outside is set on a version that is no backup of dosvob's but what
	// a run found in IMAGE, changed outside dosvob (or damaged) since a
	// backup: DeviceDigest is the digest of what was found, Time when.
	Outside *Outside `json:"changed_outside,omitempty"`
	// Unrestorable says why the version can no longer be restored: the
	// image was changed outside dosvob after it was kept, so the chain of
	// reverse deltas from the image back to it is broken. Empty: it can.
	Unrestorable string `json:"unrestorable,omitempty"`
}

// Outside describes a version that a run found changed outside dosvob.
type Outside struct {
	Since time.Time `json:"since"` // backup_time of the backup that IMAGE no longer was
	Found time.Time `json:"found"` // when the signing run read it
}

// Manifest is manifest.json in an image's state directory: what the image
// is a backup of and how to check it. docs/MANIFEST.md describes it.
type Manifest struct {
	ManifestVersion int    `json:"manifest_version"`
	FormatVersion   int    `json:"format_version"`
	ImageID         ID     `json:"image_id"`
	Generation      uint64 `json:"generation"`
	Source          Source `json:"source"`
	DeviceSize      int64  `json:"device_size"`
	BlockSize       int    `json:"block_size"`
	DeviceDigest    Digest `json:"device_digest"`
	BlockDigest     Digest `json:"block_digest"`
	HashSeed        Digest `json:"hash_seed"`
	Hashes          string `json:"hashes"` // per-block hash file in the state directory
	// HashesFresh says that no comparison has used HashSeed yet: it is the
	// next seed of the run that made the image (or a scrub's new seed), so
	// dosvob-hash may sign from the hash file without reading the image.
	// BlockDigest is the digest of the hash file.
	HashesFresh bool      `json:"hashes_fresh,omitempty"`
	BackupTime  time.Time `json:"backup_time"`
	Keep        int       `json:"keep"`
	// ImageMtime is IMAGE's modification time (ns) when the run committed:
	// the per-block hashes are trusted without reading IMAGE only while it
	// is unchanged.
	ImageMtime int64     `json:"image_mtime_ns"`
	LastRun    RunStats  `json:"last_run"`
	Versions   []Version `json:"versions"`
	// Pruned names the files in versions/ that the commit of this manifest
	// dropped from Versions (beyond Keep) and deletes right after its
	// commit point. A crash in between leaves them, and only this record
	// tells the next backup run that they are leftovers: a version file
	// that no manifest lists is otherwise kept (it may be an old backup).
	Pruned []string `json:"pruned,omitempty"`
	// Checksum is the checksum of the rest of the manifest (checksum.go),
	// written at every commit and checked by every reader. A manifest of
	// a dosvob before it has none.
	Checksum string `json:"checksum,omitempty"`
}

// ErrUnknownVersion reports a manifest or journal written by a dosvob that
// this build does not understand. dosvob refuses to touch such an image.
var ErrUnknownVersion = errors.New("unknown state version")

// ErrStateDamaged reports a file of the state directory that dosvob needs
// and cannot parse: manifest.json cut short or overwritten (a disk fault, a
// hand edit). dosvob then no longer knows what the image is, so it refuses
// to go on rather than guess. errors.Is(err, ErrCorrupt) holds for it too.
// (Files that are only caches or records of one run are not reported: a
// damaged one is dropped and rebuilt.)
var ErrStateDamaged error = stateDamaged{}

type stateDamaged struct{}

func (stateDamaged) Error() string        { return "state file is damaged" }
func (stateDamaged) Is(target error) bool { return target == ErrCorrupt }

// DamagedError is the error of a damaged state file (ErrStateDamaged).
type DamagedError struct {
	File string // the damaged file
	Err  error  // what is wrong with it
	// Manifest is what a manifest that fails its checksum says, when it
	// still parses: not to be trusted, but the scrub compares the image
	// with it (a damaged digest does not match an image by chance).
	Manifest *Manifest
	// Compared says that the scrub has compared the image with Manifest
	// and said what it found.
	Compared bool
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("%q is damaged: %v", e.File, e.Err)
}

func (e *DamagedError) Unwrap() []error { return []error{e.Err, ErrStateDamaged} }

// readManifest reads dir/manifest.json; a missing file gives (nil, nil).
func readManifest(dir string) (*Manifest, error) {
	name := filepath.Join(dir, manifestName)
	b, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseManifest(name, b)
}

// parseManifest parses b, the content of the manifest file name.
func parseManifest(name string, b []byte) (*Manifest, error) {
	doc, err := decodeObject(b)
	if err != nil {
		return nil, &DamagedError{File: name, Err: err}
	}
	if err := checkManifest(doc); err != nil {
		return nil, &DamagedError{File: name, Err: err, Manifest: damagedContent(b)}
	}
	var probe struct {
		V int `json:"manifest_version"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, &DamagedError{File: name, Err: err}
	}
	if probe.V != ManifestVersion {
		return nil, fmt.Errorf("manifest %s has version %d, this dosvob knows %d: %w",
			name, probe.V, ManifestVersion, ErrUnknownVersion)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return nil, &DamagedError{File: name, Err: err}
	}
	// Its versions are reverse deltas in that stream format: a build that
	// cannot read them must not add versions in another format beside them.
	if m.FormatVersion < format.MinVersion || m.FormatVersion > format.Version {
		return nil, fmt.Errorf("manifest %s records stream format version %d, this dosvob knows %d to %d: %w",
			name, m.FormatVersion, format.MinVersion, format.Version, ErrUnknownVersion)
	}
	return &m, nil
}

// writeFileAtomic writes name through a temporary file: write, fsync,
// rename, fsync the directory. Readers see the old or the new file, never a
// mix, whatever happens. An error before the rename leaves the old file and
// no temporary one. An error of the last step is an *unsyncedError: the new
// file is in place, but a power loss may still bring back the old one.
func writeFileAtomic(fs fsys, name string, data []byte) (err error) {
	tmp := name + ".tmp"
	f, err := fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		return err
	}
	renamed := false
	defer func() {
		if !renamed {
			f.Close()
			fs.Remove(tmp)
		}
	}()
	if _, err := f.WriteAt(data, 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, name); err != nil {
		return err
	}
	renamed = true
	if err := fs.SyncDir(filepath.Dir(name)); err != nil {
		return &unsyncedError{name: name, err: err}
	}
	return nil
}

// unsyncedError is writeFileAtomic's error when the new file is in place
// but its directory could not be synced.
type unsyncedError struct {
	name string
	err  error
}

func (e *unsyncedError) Error() string {
	return fmt.Sprintf("%s is written, but syncing its directory failed: %v", e.name, e.err)
}

func (e *unsyncedError) Unwrap() error { return e.err }

func writeJSONAtomic(fs fsys, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(fs, name, append(b, '\n'))
}

// versionName is the name of a backup made at t.
func versionName(t time.Time) string { return t.UTC().Format("20060102T150405Z") }

// DamagedHint tells the user what to do about err, a damaged manifest (or
// journal) of image. The image itself may well be intact, but nothing says
// what it is: a run with --force takes it as the base of a backup without a
// manifest (only what differs is sent; the kept versions, which no manifest
// lists any more, can no longer be restored, though their files stay), or a
// new first backup starts afresh. When the manifest still parses (it fails
// only its checksum), the scrub can tell whether the image still has the
// digest it records; the hint points to it unless the scrub made err.
//
// A journal beside it is of a run that was interrupted while it wrote the
// image; without the manifest it can be neither checked nor undone, and
// the next open would refuse it (exit 4). It goes aside too: the --force
// run signs by reading the whole image, so whatever that run left is
// compared block by block and the result is exact.
func DamagedHint(err error, image string) string {
	dir := StateDir(image)
	manifest, journal := filepath.Join(dir, manifestName), filepath.Join(dir, journalName)
	fresh := fmt.Sprintf("or move %q and %q aside for a new first backup", image, dir)
	if exists(journal) {
		return fmt.Sprintf("move %q and %q aside and run the pipe once with dosvob-patch --force "+
			"(the journal is of an interrupted run that may have written part of the image; the --force run reads all of it "+
			"as the base and sends only what differs, but the kept versions can then no longer be restored), %s", manifest, journal, fresh)
	}
	check := ""
	if de := (*DamagedError)(nil); errors.As(err, &de) && de.Manifest != nil && !de.Compared {
		check = fmt.Sprintf("%q itself may well be intact: dosvob-hash --verify %s compares it with the digest this manifest records; then ", image, image)
	}
	return fmt.Sprintf("%smove %q aside and run the pipe once with dosvob-patch --force "+
		"(it takes the image as the base and sends only what differs, but the kept versions can then no longer be restored), %s", check, manifest, fresh)
}
