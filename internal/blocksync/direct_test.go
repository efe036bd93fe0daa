package blocksync

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/dosvob/dosvob/internal/format"
	"github.com/dosvob/dosvob/internal/testenv"
)

// loopDevice attaches a loop device over a file holding b. Without root or
// losetup the test is skipped, but with CI=true it fails.
func loopDevice(t *testing.T, b []byte) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(backing, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return testenv.LoopDevice(t, backing)
}

// TestDirectSource: a block device is read with O_DIRECT, and the delta
// and digests are those of a buffered read of the same bytes; a regular
// file is read through the page cache.
func TestDirectSource(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 21))
	dev := randBytes(rng, 5<<20+3*512) // a whole number of sectors, not of chunks
	for i := 1 << 20; i < 2<<20; i++ {
		dev[i] = 0
	}
	img := bytes.Clone(dev)
	copy(img[3<<20:], randBytes(rng, 10000))
	loop := loopDevice(t, dev)
	src, err := OpenSource(loop)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	size, err := Size(src.File())
	if err != nil || size != uint64(len(dev)) {
		t.Fatalf("size %d, %v; want %d", size, err, len(dev))
	}
	sig := signV2(t, img, 3, 4)
	sr, _ := format.NewSigReader(bytes.NewReader(sig))
	var direct bytes.Buffer
	endDirect, err := Delta(context.Background(), sr, src, size, &direct, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if src.Direct.Load() == 0 {
		t.Fatal("no read of the block device used O_DIRECT")
	}
	if src.Buffered.Load() != 1 {
		t.Errorf("%d buffered reads, want 1 (the short last chunk)", src.Buffered.Load())
	}
	_, endBuffered := delta(t, bytes.NewReader(sig), dev, Options{})
	endDirect.BytesRead, endBuffered.BytesRead = 0, 0
	if endDirect != endBuffered {
		t.Fatalf("direct read end %+v, buffered %+v", endDirect, endBuffered)
	}
	out, _, _ := apply(t, img, direct.Bytes())
	if !bytes.Equal(out, dev) {
		t.Fatal("the delta read with O_DIRECT does not give the device")
	}

	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, dev, 0o644)
	fs, err := OpenSource(f)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	sr, _ = format.NewSigReader(bytes.NewReader(sig))
	var buf bytes.Buffer
	if _, err := Delta(context.Background(), sr, fs, uint64(len(dev)), &buf, Options{}); err != nil {
		t.Fatal(err)
	}
	if fs.Direct.Load() != 0 {
		t.Fatal("a regular file was read with O_DIRECT")
	}
}
