package pipe

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// An image changed outside dosvob since its last backup: the next run
// says so, still backs the volume up, keeps what it found as a version that
// restores exactly that, and marks the versions that the change cut off, so
// that restoring one fails at once and says why.

// backupAt runs the pipe from dev into img, keeping versions, as the
// backup of the given snapshot time.
func backupAt(t *testing.T, img, dev, snapshot string) result {
	t.Helper()
	c1 := exec.Command(filepath.Join(bin, "dosvob-hash"), img)
	c2 := exec.Command(filepath.Join(bin, "dosvob-hash"), "--delta", dev)
	c3 := exec.Command(filepath.Join(bin, "dosvob-patch"), "--keep", "5", "--snapshot-time", snapshot, img)
	res := runStages(t, c1, c2, c3)
	if !res.ok() {
		t.Fatalf("backup of %s: %v", snapshot, res)
	}
	sameContent(t, img, dev)
	return res
}

// restoreVersion runs dosvob-patch restore-version into a new file in dir
// and returns its path, exit code and stderr.
func restoreVersion(t *testing.T, img, version, dir string) (string, int, string) {
	t.Helper()
	out := filepath.Join(dir, "restored-"+strings.ReplaceAll(version, ":", ""))
	c := exec.Command(filepath.Join(bin, "dosvob-patch"), "restore-version", "--version", version, "--output", out, img)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	err := c.Run()
	return out, exitCode(err), stderr.String()
}

// mustRestore restores version and checks that it is want.
func mustRestore(t *testing.T, img, version string, want []byte) {
	t.Helper()
	out, code, stderr := restoreVersion(t, img, version, t.TempDir())
	if code != 0 {
		t.Fatalf("restore-version %s: exit %d: %s", version, code, stderr)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("restore-version %s wrote other content than that version", version)
	}
}

// mustNotRestore checks that restoring version fails with exit 5 and a
// message matching why, and leaves no file behind.
func mustNotRestore(t *testing.T, img, version, why string) {
	t.Helper()
	dir := t.TempDir()
	out, code, stderr := restoreVersion(t, img, version, dir)
	if code != 5 {
		t.Fatalf("restore-version %s: exit %d, want 5: %s", version, code, stderr)
	}
	if !regexp.MustCompile(why).MatchString(stderr) {
		t.Fatalf("restore-version %s: the message does not say why (%s):\n%s", version, why, stderr)
	}
	if strings.Contains(stderr, "restored version") {
		t.Fatalf("restore-version %s applied the versions and found the digest wrong instead of refusing at once:\n%s", version, stderr)
	}
	if _, err := os.Lstat(out); err == nil {
		t.Fatalf("restore-version %s wrote %s", version, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		t.Fatalf("restore-version %s left %s behind", version, ents[0].Name())
	}
}

// keptVersion is a version as dosvob-patch versions --json lists it.
type keptVersion struct {
	Name           string `json:"name"`
	Time           time.Time
	DeviceDigest   string `json:"device_digest"`
	Unrestorable   string `json:"unrestorable"`
	ChangedOutside *struct {
		Since time.Time `json:"since"`
		Found time.Time `json:"found"`
	} `json:"changed_outside"`
}

func listVersions(t *testing.T, img string) ([]keptVersion, string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(bin, "dosvob-patch"), "versions", "--json", img).Output()
	if err != nil {
		t.Fatalf("versions --json: %v", err)
	}
	var vs []keptVersion
	if err := json.Unmarshal(out, &vs); err != nil {
		t.Fatal(err)
	}
	table, err := exec.Command(filepath.Join(bin, "dosvob-patch"), "versions", img).Output()
	if err != nil {
		t.Fatalf("versions: %v", err)
	}
	return vs, string(table)
}

// threeBackups makes backups of dev into img at 00:00, 04:00, 08:00 and
// 12:00, changing the device between them, and returns the device's
// content at each.
func threeBackups(t *testing.T, rng *rand.Rand, img string, dev fileTarget) [][]byte {
	var at [][]byte
	for i, snap := range []string{"2026-11-16T00:00:00Z", "2026-11-16T04:00:00Z", "2026-11-16T08:00:00Z", "2026-11-16T12:00:00Z"} {
		if i > 0 {
			dev.Write(t, int64(rng.IntN(200))*blockSize, content(rng, 3*blockSize, 1, blockSize))
		}
		backupAt(t, img, dev.Path(), snap)
		at = append(at, readDevice(t, dev.Path()))
	}
	return at
}

// TestImageReplacedByOldVersion: the user restored the 04:00 version into
// a file and moved it over IMAGE (whose last backup is of 12:00). The next
// run says that IMAGE holds that version and what that costs; afterwards
// the newest restorable version is what IMAGE held (the 04:00 backup), the
// 08:00 version, which led back from the 12:00 content, fails at once with
// a clear message, and the 00:00 version, older than the one put back,
// still restores.
func TestImageReplacedByOldVersion(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	dev := newFile(t, content(rng, 1<<20+1000, 0.6, 8<<10))
	at := threeBackups(t, rng, img, dev)

	put, code, stderr := restoreVersion(t, img, "20261116T040000Z", dir)
	if code != 0 {
		t.Fatalf("restore-version: %s", stderr)
	}
	if err := os.Rename(put, img); err != nil {
		t.Fatal(err)
	}
	// Before any run, a restore from the replaced image fails early too.
	mustNotRestore(t, img, "20261116T080000Z", `was changed outside dosvob \(or is damaged\) since its backup of 2026-11-16T12:00:00Z.*no kept version leads back from it`)

	dev.Write(t, 5*blockSize, content(rng, blockSize, 1, blockSize))
	res := backupAt(t, img, dev.Path(), "2026-11-16T16:00:00Z")
	at16 := readDevice(t, dev.Path())
	line := regexp.MustCompile(`(?m)^dosvob-hash: "\S*vol.img" holds its kept version 20261116T040000Z, not its backup of 2026-11-16T12:00:00Z \(it was put back outside dosvob\): that backup and the kept version 20261116T080000Z can no longer be restored$`)
	if !line.MatchString(res.stderr[0]) {
		t.Fatalf("dosvob-hash did not say what it found:\n%s", res.stderr[0])
	}
	if !strings.Contains(res.stderr[0], "dosvob-hash: hint: ") {
		t.Fatalf("no hint:\n%s", res.stderr[0])
	}
	if !strings.Contains(res.stderr[2], "kept version 20261116T040000Z (what "+img+" held, put back outside dosvob), marked 1 older versions unrestorable") {
		t.Fatalf("dosvob-patch's summary does not say what it kept:\n%s", res.stderr[2])
	}

	vs, table := listVersions(t, img)
	if len(vs) != 3 || vs[0].Name != "20261116T080000Z" || vs[1].Name != "20261116T040000Z" || vs[2].Name != "20261116T000000Z" {
		t.Fatalf("versions after the run: %+v", vs)
	}
	if vs[0].Unrestorable == "" || vs[1].Unrestorable != "" || vs[2].Unrestorable != "" {
		t.Fatalf("only the 08:00 version should be marked unrestorable: %+v", vs)
	}
	if !regexp.MustCompile(`(?m)^20261116T080000Z .* cannot be restored: the image was changed outside dosvob \(or damaged\) after it was kept, found `).MatchString(table) {
		t.Fatalf("the versions table does not show the lost version:\n%s", table)
	}

	mustRestore(t, img, "latest", at[1])
	mustRestore(t, img, "20261116T040000Z", at[1])
	mustRestore(t, img, "20261116T000000Z", at[0])
	mustNotRestore(t, img, "20261116T080000Z", `version 20261116T080000Z of "\S*vol.img": the image was changed outside dosvob \(or damaged\) after it was kept, found \S+ \(restorable: 20261116T040000Z, 20261116T000000Z\): kept version can no longer be restored`)

	// The chain goes on from there: the next run keeps the 16:00 backup,
	// and the versions before it still restore.
	dev.Write(t, 9*blockSize, content(rng, blockSize, 1, blockSize))
	res = backupAt(t, img, dev.Path(), "2026-11-16T20:00:00Z")
	if strings.Contains(res.stderr[0]+res.stderr[2], "outside dosvob") {
		t.Fatalf("a run on an unchanged image warned:\n%v", res)
	}
	mustRestore(t, img, "latest", at16)
	mustRestore(t, img, "20261116T040000Z", at[1])
	mustRestore(t, img, "20261116T000000Z", at[0])
	mustNotRestore(t, img, "20261116T080000Z", `kept version can no longer be restored`)
}

// TestImageWrittenOutside: something wrote into IMAGE after its 12:00
// backup (a read-write loop mount, say, or a bad disk). The next run says
// so, keeps what it found as a version named by the time it found it and
// labelled as such, which restores exactly those bytes, and marks every
// version before it: restoring one fails at once, saying why. A run on an
// image whose mtime alone changed warns of nothing.
func TestImageWrittenOutside(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 44))
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	dev := newFile(t, content(rng, 1<<20+1000, 0.6, 8<<10))
	threeBackups(t, rng, img, dev)

	// Only the mtime changes: the image is read, found to be the backup,
	// and nothing is said or marked.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(img, later, later); err != nil {
		t.Fatal(err)
	}
	dev.Write(t, 7*blockSize, content(rng, blockSize, 1, blockSize))
	res := backupAt(t, img, dev.Path(), "2026-11-16T13:00:00Z")
	if !strings.Contains(res.stderr[0], "read the image") || strings.Contains(res.stderr[0]+res.stderr[2], "outside dosvob") {
		t.Fatalf("a run on an image whose mtime alone changed:\n%v", res)
	}
	if vs, _ := listVersions(t, img); vs[0].Name != "20261116T120000Z" || vs[0].Unrestorable != "" || vs[0].ChangedOutside != nil {
		t.Fatalf("versions: %+v", vs)
	}

	writeAt(t, img, 100*blockSize+123, []byte("written outside dosvob"))
	found, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().UTC().Truncate(time.Second)
	dev.Write(t, 50*blockSize, content(rng, blockSize, 1, blockSize))
	res = backupAt(t, img, dev.Path(), "2026-11-16T16:00:00Z")
	line := regexp.MustCompile(`(?m)^dosvob-hash: "\S*vol.img" was changed outside dosvob \(or is damaged\) since its backup of 2026-11-16T13:00:00Z: its 4 kept versions from 20261116T120000Z back to 20261116T000000Z can no longer be restored$`)
	if !line.MatchString(res.stderr[0]) {
		t.Fatalf("dosvob-hash did not say what it found:\n%s", res.stderr[0])
	}
	if !regexp.MustCompile(`(?m)^dosvob-hash: hint: this run still makes it the volume's backup; dosvob-patch keeps what it held as a version`).MatchString(res.stderr[0]) {
		t.Fatalf("no hint:\n%s", res.stderr[0])
	}

	vs, table := listVersions(t, img)
	if len(vs) != 5 {
		t.Fatalf("%d versions kept, want 5: %+v", len(vs), vs)
	}
	v := vs[0]
	if c := v.ChangedOutside; c == nil || !c.Since.Equal(time.Date(2026, 11, 16, 13, 0, 0, 0, time.UTC)) || c.Found.Before(start) || !c.Found.Equal(v.Time) ||
		v.Name != v.Time.UTC().Format("20060102T150405Z") || v.Unrestorable != "" {
		t.Fatalf("the version of what was found: %+v", v)
	}
	for _, w := range vs[1:] {
		if w.Unrestorable == "" {
			t.Fatalf("version %s is not marked unrestorable: %+v", w.Name, vs)
		}
	}
	if !regexp.MustCompile(`(?m)^` + v.Name + ` .* found changed outside dosvob \(or damaged\) since the backup of 2026-11-16T13:00:00Z$`).MatchString(table) {
		t.Fatalf("the versions table does not show the version found:\n%s", table)
	}
	if !strings.Contains(res.stderr[2], "kept version "+v.Name+" (what "+img+" held, changed outside dosvob), marked 4 older versions unrestorable") {
		t.Fatalf("dosvob-patch's summary:\n%s", res.stderr[2])
	}

	mustRestore(t, img, "latest", found)
	mustRestore(t, img, v.Name, found)
	mustNotRestore(t, img, "20261116T120000Z", `version 20261116T120000Z of "\S*vol.img": the image was changed outside dosvob \(or damaged\) after it was kept, found \S+ \(restorable: `+v.Name+`\): kept version can no longer be restored`)
	mustNotRestore(t, img, "2026-11-16T04:00:00Z", `kept version can no longer be restored`)
}
