package pipe

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
)

// backupOf makes a real backup image of src in a new directory: the backup
// pipe into a missing image, with hashArgs for its first stage.
func backupOf(t *testing.T, src string, hashArgs ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "backup.img")
	c1 := exec.Command(filepath.Join(bin, "dosvob-hash"), append(hashArgs, img)...)
	c2 := exec.Command(filepath.Join(bin, "dosvob-hash"), "--delta", src)
	c3 := exec.Command(filepath.Join(bin, "dosvob-patch"), img)
	if res := runStages(t, c1, c2, c3); !res.ok() {
		t.Fatalf("backup failed: %v", res)
	}
	sameContent(t, img, src)
	return img
}

// TestRestoreRefusesRottedImage: a restore reads a backup image whose
// content is no longer the one its manifest describes (a bit flipped on
// the backup disk, mtime as it was). The delta side must fail with exit 5
// and cut its stream before the End record, so that the receiving side
// fails too and nothing calls the copy complete; an intact image restores.
// Both with the image's own block size, whose digest the stream computes
// anyway, and with another (the target signed with 4 KiB blocks, the
// backup made with 16 KiB ones), which needs a digest of its own.
func TestRestoreRefusesRottedImage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hashArgs []string
	}{
		{"same block size", nil},
		{"image of 16K blocks", []string{"--block-size", "16K"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(11, 110))
			const size = 2<<20 + 777
			src := newFile(t, content(rng, size, 0.5, 32<<10)).Path()
			img := backupOf(t, src, tc.hashArgs...)
			want, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}

			// Intact: the restore goes through and is the image.
			target := newFile(t, make([]byte, size)).Path()
			if res := runRestore(t, img, target); !res.ok() {
				t.Fatalf("restore of the intact image failed: %v", res)
			}
			if got, _ := os.ReadFile(target); !bytes.Equal(got, want) {
				t.Fatal("the restored copy is not the image")
			}

			// One bit flipped in a data block.
			off := int64(bytes.IndexFunc(want[size/2:], func(r rune) bool { return r != 0 }) + size/2)
			testenv.Rot(t, img, off)
			target = newFile(t, make([]byte, size)).Path()
			res := runRestore(t, img, target)
			if res.codes[1] != 5 {
				t.Fatalf("the delta side of a rotted image: exit %d, want 5\n%v", res.codes[1], res)
			}
			if !strings.Contains(res.stderr[1], "does not hold the backup its manifest describes") || !strings.Contains(res.stderr[1], "--verify") {
				t.Fatalf("the delta side's message: %q", res.stderr[1])
			}
			if res.codes[2] == 0 {
				t.Fatalf("dosvob-patch --raw took the cut stream for complete: %v", res)
			}
			// It wrote part of the stream: it must not say the target is unchanged.
			if !strings.Contains(res.stderr[2], `is incomplete`) || strings.Contains(res.stderr[2], "unchanged") {
				t.Fatalf("dosvob-patch --raw's message on a cut stream: %q", res.stderr[2])
			}
		})
	}
}

// TestRestoreRefusesTruncatedImage: an image shorter than its manifest
// says is refused before anything is read or sent.
func TestRestoreRefusesTruncatedImage(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 120))
	const size = 1 << 20
	src := newFile(t, content(rng, size, 0.5, 32<<10)).Path()
	img := backupOf(t, src)
	if err := os.Truncate(img, size-4096); err != nil {
		t.Fatal(err)
	}
	target := newFile(t, make([]byte, size)).Path()
	res := runRestore(t, img, target)
	if res.codes[1] != 5 || !strings.Contains(res.stderr[1], "its manifest recorded 1048576") {
		t.Fatalf("restore of a truncated image: %v", res)
	}
	if res.codes[2] == 0 {
		t.Fatalf("dosvob-patch --raw succeeded without a stream: %v", res)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, make([]byte, size)) {
		t.Fatal("the target was written")
	}
}
