package pipe

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
	"golang.org/x/sys/unix"
)

// coarseFS mounts a new ext4 file system whose timestamps have a resolution
// of one second (128-byte inodes, as ext2/ext3-era file systems and small
// ones) on a loop device, and returns its mount point.
func coarseFS(t *testing.T) string {
	t.Helper()
	testenv.RequireCommand(t, "mkfs.ext4")
	backing := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 64<<20); err != nil {
		t.Fatal(err)
	}
	dev := testenv.LoopDevice(t, backing)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-I", "128", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		testenv.SkipOrFail(t, "mount %s: %v", dev, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// A write to the image right after a backup, within the same second (a
// loop mount of the fresh backup writes its superblock), is noticed by the
// next run on a file system with one-second timestamps: the hash cache is
// not trusted, and the image ends equal to the device.
func TestWriteRightAfterCommitOnCoarseFS(t *testing.T) {
	dir := coarseFS(t)
	r := rand.New(rand.NewPCG(31, 32))
	dev := newFile(t, content(r, 4<<20, 0.5, 8))
	for round := range 3 {
		img := filepath.Join(dir, "img")
		os.RemoveAll(img + ".dosvob")
		os.Remove(img)
		if res := runPipe(t, img, dev.Path()); !res.ok() {
			t.Fatalf("first backup: %v", res)
		}
		f, err := os.OpenFile(img, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("written outside dosvob"), 1024); err != nil {
			t.Fatal(err)
		}
		f.Close()
		res := runPipe(t, img, dev.Path())
		if !res.ok() {
			t.Fatalf("round %d: second backup: %v", round, res)
		}
		if strings.Contains(res.stderr[0], "from the hash cache") {
			t.Errorf("round %d: the image was written after the commit, and still signed from the hash cache: %s", round, res.stderr[0])
		}
		sameContent(t, img, dev.Path())
	}
}
