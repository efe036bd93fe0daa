package pipe

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runRestore runs the restore direction of the pipe:
//
//	dosvob-hash --raw DEVICE | dosvob-hash --delta IMAGE | dosvob-patch --raw DEVICE
//
// with real pipes, and returns the exit codes and stderr of the stages.
func runRestore(t *testing.T, img, dev string) result {
	t.Helper()
	c1 := exec.Command(filepath.Join(bin, "dosvob-hash"), "--raw", dev)
	c2 := exec.Command(filepath.Join(bin, "dosvob-hash"), "--delta", img)
	c3 := exec.Command(filepath.Join(bin, "dosvob-patch"), "--raw", dev)
	return runStages(t, c1, c2, c3)
}

// TestRestoreOntoLoop restores a backup image onto a real loop block device
// that is larger than the image, as a new volume rounded up to whole GiB
// is: the device's first bytes become the image, the tail past the image's
// size stays as it was, and no state directory appears beside the device.
func TestRestoreOntoLoop(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 70))
	const imgSize = 3<<20 + 1234 // not a multiple of the block size
	const devSize = 4 << 20
	image := content(rng, imgSize, 0.4, 64<<10)
	img := filepath.Join(t.TempDir(), "backup.img")
	if err := os.WriteFile(img, image, 0o644); err != nil {
		t.Fatal(err)
	}
	// The new volume: mostly zeros, with some leftover bytes in the region
	// the image covers and in the tail.
	old := content(rng, devSize, 0.1, 16<<10)
	tail := bytes.Repeat([]byte("tail"), 64)
	copy(old[devSize-len(tail):], tail)
	loop := newLoop(t, old)

	res := runRestore(t, img, loop.Path())
	if !res.ok() {
		t.Fatalf("restore failed: %v", res)
	}
	got := readDevice(t, loop.Path())
	if len(got) != devSize {
		t.Fatalf("device is %d bytes after the restore, want %d (a device is never resized)", len(got), devSize)
	}
	if !bytes.Equal(got[:imgSize], image) {
		t.Fatal("the device's first bytes are not the image")
	}
	if !bytes.Equal(got[imgSize:], old[imgSize:]) {
		t.Fatal("the device's tail past the image changed")
	}
	for _, p := range []string{loop.Path() + ".dosvob", img + ".dosvob"} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("the restore made a state directory %s", p)
		}
	}
	if !strings.Contains(res.stderr[0], "raw, no state") {
		t.Fatalf("dosvob-hash --raw summary: %q", res.stderr[0])
	}
	data, _ := res.records(t)
	if data == 0 {
		t.Fatal("the restore sent no data records")
	}

	// A second restore of the same image onto the now restored device sends
	// nothing but the image's short last block: the device's block there is
	// a full block (image bytes and tail), so its hash cannot match.
	res = runRestore(t, img, loop.Path())
	if !res.ok() {
		t.Fatalf("second restore failed: %v", res)
	}
	if data, zero := res.records(t); data+zero != 1 {
		t.Fatalf("second restore sent %d data and %d zero records, want only the short last block", data, zero)
	}
	got = readDevice(t, loop.Path())
	if !bytes.Equal(got[:imgSize], image) || !bytes.Equal(got[imgSize:], old[imgSize:]) {
		t.Fatal("second restore changed the device")
	}
}

// TestRestoreRefusesSmallerDevice: a device smaller than the image cannot
// receive it; dosvob-patch --raw refuses before writing.
func TestRestoreRefusesSmallerDevice(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 80))
	image := content(rng, 2<<20, 0.5, 64<<10)
	img := filepath.Join(t.TempDir(), "backup.img")
	if err := os.WriteFile(img, image, 0o644); err != nil {
		t.Fatal(err)
	}
	old := content(rng, 1<<20, 0.5, 64<<10)
	loop := newLoop(t, old)
	res := runRestore(t, img, loop.Path())
	if res.codes[2] == 0 {
		t.Fatalf("restore onto a smaller device succeeded: %v", res)
	}
	if !bytes.Equal(readDevice(t, loop.Path()), old) {
		t.Fatal("the refused restore changed the device")
	}
}
