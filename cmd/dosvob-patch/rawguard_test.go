package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
	"golang.org/x/sys/unix"
)

// rawRestore is the local restore pipe: $4 is the target, $3 the image.
const rawRestore = `"$1" --raw "$4" | "$1" --delta "$3" | "$2" --raw "$4"`

// mkfs makes an ext4 file system of size bytes in a new file and returns
// its path and UUID.
func mkfs(t *testing.T, dir, name string, size int64) (string, string) {
	t.Helper()
	testenv.RequireCommand(t, "mkfs.ext4", "blkid")
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	mkfsExt4(t, p)
	return p, uuidOf(t, p)
}

func mkfsExt4(t *testing.T, p string) {
	t.Helper()
	mk, _ := testenv.LookPath("mkfs.ext4")
	if out, err := exec.Command(mk, "-q", "-F", p).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v\n%s", p, err, out)
	}
}

func uuidOf(t *testing.T, p string) string {
	t.Helper()
	b, _ := testenv.LookPath("blkid")
	out, err := exec.Command(b, "-p", "-s", "UUID", "-o", "value", p).Output()
	if err != nil {
		t.Fatalf("blkid %s: %v", p, err)
	}
	return strings.TrimSpace(string(out))
}

func readAll(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRawGuardsDevice: dosvob-patch --raw onto a real block device refuses
// one that is mounted (read-only, too) and one that holds another file
// system, changing nothing (exit 4, one line naming the device and what it
// holds, and a hint); it writes a new (zeroed) device, and updates a device
// that an earlier restore of the same file system filled, also when the
// file system's superblock changed since; --force writes over another one.
func TestRawGuardsDevice(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	dir := t.TempDir()
	img, imgUUID := mkfs(t, dir, "backup.img", 16<<20)
	disk, diskUUID := mkfs(t, dir, "disk", 32<<20) // someone's disk
	dev := testenv.LoopDevice(t, disk)
	before := readAll(t, dev)

	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		testenv.SkipOrFail(t, "mount %s read-only: %v", dev, err)
	}
	out, code := runExit(t, hash, bin, img, dev, rawRestore)
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount %s: %v", mnt, err)
	}
	t.Logf("mounted:\n%s", out)
	if code != 4 || !strings.Contains(out, "dosvob-patch: \""+dev+"\" is in use: mounted on "+mnt+"; nothing written\n") ||
		!strings.Contains(out, "dosvob-patch: hint: check the device name (lsblk "+dev) {
		t.Fatalf("restore onto a device mounted read-only: exit %d, want 4 with a line that says where it is mounted:\n%s", code, out)
	}
	if !bytes.Equal(readAll(t, dev), before) {
		t.Fatal("the mounted device changed")
	}

	out, code = runExit(t, hash, bin, img, dev, rawRestore)
	t.Logf("another file system:\n%s", out)
	want := regexp.MustCompile(`(?m)^dosvob-patch: "` + regexp.QuoteMeta(dev) + `" holds an ext4 file system \(UUID ` + diskUUID +
		`\), and the image would leave an ext4 file system \(UUID ` + imgUUID + `\): it is not a new volume, nor an earlier restore of this image; nothing written\n` +
		`dosvob-patch: hint: check the device name; to overwrite it all the same, run the pipe again with dosvob-patch --raw --force ` + regexp.QuoteMeta(dev) + `$`)
	if code != 4 || !want.MatchString(out) {
		t.Fatalf("restore onto a device with another file system: exit %d, want 4 and\n%s\ngot:\n%s", code, want, out)
	}
	if !bytes.Equal(readAll(t, dev), before) {
		t.Fatal("the device with another file system changed")
	}

	// A new volume: zeros.
	if err := os.WriteFile(dev, make([]byte, 32<<20), 0); err != nil {
		t.Fatal(err)
	}
	if out, code := runExit(t, hash, bin, img, dev, rawRestore); code != 0 {
		t.Fatalf("restore onto a new device: exit %d\n%s", code, out)
	}
	first := readAll(t, img)
	if got := readAll(t, dev); !bytes.Equal(got[:len(first)], first) {
		t.Fatal("the device is not the image after the restore")
	}

	// The backup changes, its superblock too (a new label), and the same
	// device is brought up to date: the same file system, so no refusal.
	tune, _ := testenv.LookPath("tune2fs")
	if out, err := exec.Command(tune, "-L", "second", img).CombinedOutput(); err != nil {
		t.Fatalf("tune2fs: %v\n%s", err, out)
	}
	second := readAll(t, img)
	if bytes.Equal(second[:4096], first[:4096]) {
		t.Fatal("the superblock did not change: the test proves nothing")
	}
	if out, code := runExit(t, hash, bin, img, dev, rawRestore); code != 0 {
		t.Fatalf("update of an earlier restore: exit %d\n%s", code, out)
	}
	if got := readAll(t, dev); !bytes.Equal(got[:len(second)], second) {
		t.Fatal("the device is not the changed image after the update")
	}

	// Another file system, written over on purpose.
	mkfsExt4(t, dev)
	if out, code := runExit(t, hash, bin, img, dev, rawRestore); code != 4 {
		t.Fatalf("restore onto a device made anew: exit %d, want 4\n%s", code, out)
	}
	if out, code := runExit(t, hash, bin, img, dev, strings.Replace(rawRestore, `"$2" --raw`, `"$2" --raw --force`, 1)); code != 0 {
		t.Fatalf("restore with --force: exit %d\n%s", code, out)
	}
	if got := readAll(t, dev); !bytes.Equal(got[:len(second)], second) {
		t.Fatal("the device is not the image after the restore with --force")
	}
}

// TestRawGuardsFile: a regular file that holds a file system is a restore
// target only for the same file system, or with --force. (A file of data
// in no known format is written, as TestRawOntoFile shows.)
func TestRawGuardsFile(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	dir := t.TempDir()
	img, _ := mkfs(t, dir, "backup.img", 8<<20)
	target, targetUUID := mkfs(t, dir, "target", 8<<20)
	before := readAll(t, target)
	out, code := runExit(t, hash, bin, img, target, rawRestore)
	if code != 4 || !strings.Contains(out, `holds an ext4 file system (UUID `+targetUUID+`)`) {
		t.Fatalf("restore onto a file with another file system: exit %d, want 4\n%s", code, out)
	}
	if !bytes.Equal(readAll(t, target), before) {
		t.Fatal("the target changed")
	}
	if out, code := runExit(t, hash, bin, img, target, strings.Replace(rawRestore, `"$2" --raw`, `"$2" --raw --force`, 1)); code != 0 {
		t.Fatalf("with --force: exit %d\n%s", code, out)
	}
	mustEqualFile(t, target, readAll(t, img))
}

// TestRawHints: the hints for getting a backup onto a device point the
// right way. A device smaller than the image gets the size it needs and the
// raw restore pipe (not the backup pipe); restore-version aimed at a device
// says to write a file and then use the raw pipe, and doing just what it
// says puts the version on the device.
func TestRawHints(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	r := rand.New(rand.NewPCG(81, 82))
	img := filepath.Join(t.TempDir(), "backup.img")
	v1 := device(r, 8<<20)
	backups(t, bin, img, v1, mutate(r, v1, 30))

	small := loopDevice(t, 4<<20)
	out, code := runExit(t, hash, bin, img, small, rawRestore)
	t.Logf("too small:\n%s", out)
	want := `dosvob-patch: the image is 8388608 bytes, device "` + small + `" has only 4194304: delta does not fit the image
dosvob-patch: hint: nothing written; restore onto a device of at least 8388608 bytes (a new volume of 1 GiB or more): dosvob-hash --raw ` + small + ` | dosvob-hash --delta IMAGE | dosvob-patch --raw ` + small + "\n"
	if code != 3 || !strings.Contains(out, want) {
		t.Fatalf("restore onto a device too small: exit %d, want 3 and\n%s", code, want)
	}
	if !bytes.Equal(readAll(t, small), make([]byte, 4<<20)) {
		t.Fatal("the small device changed")
	}

	dev := loopDevice(t, 16<<20)
	res, err := exec.Command(bin, "restore-version", "--version", "latest", "--output", dev, img).CombinedOutput()
	t.Logf("restore-version onto a device:\n%s", res)
	const lead = "dosvob-patch: hint: write the version to a file, then copy it onto the device with the raw restore pipe: "
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 ||
		!strings.HasPrefix(string(res), `dosvob-patch: --output "`+dev+`" is a block device: restore-version writes only a new file`+"\n"+lead) {
		t.Fatalf("restore-version onto a device: %v, want exit 4 and a hint that says how", err)
	}
	// Do what the hint says, with a file for FILE.
	script := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(res), "\n", 2)[1], lead))
	script = strings.ReplaceAll(script, "FILE", filepath.Join(t.TempDir(), "old.img"))
	script = strings.NewReplacer("dosvob-patch ", bin+" ", "dosvob-hash ", hash+" ").Replace(script)
	if out, err := exec.Command("bash", "-o", "pipefail", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("the hint's commands: %v\n%s\n%s", err, script, out)
	}
	if got := readAll(t, dev); !bytes.Equal(got[:len(v1)], v1) {
		t.Fatal("the device does not hold the version after following the hint")
	}
}
