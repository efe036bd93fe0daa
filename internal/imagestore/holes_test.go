package imagestore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestNeighbouringZeroBlocksOneHole: an incremental that zeroes a run of
// neighbouring blocks punches one hole for the run (one fallocate), not one
// per block, and still journals every old block: a rollback restores them.
func TestNeighbouringZeroBlocksOneHole(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	img := filepath.Join(t.TempDir(), "vol.img")
	old := make([]byte, 300*testBS)
	for i := range old {
		old[i] = byte(r.Uint32()) | 1
	}
	syncTo(t, img, old, PatchOptions{})
	dev := bytes.Clone(old)
	clear(dev[10*testBS : 210*testBS]) // 200 neighbouring blocks
	clear(dev[250*testBS : 251*testBS])
	clear(dev[252*testBS : 253*testBS])
	for i := 260 * testBS; i < len(dev); i++ { // data after the zeros, to cut into
		dev[i] = byte(r.Uint32()) | 1
	}
	delta, st := makeDelta(t, img, dev, testBS)
	if st.zero != 202 {
		t.Fatalf("delta has %d zero records, want 202", st.zero)
	}

	// A cut stream after the zero records, with small batches so that
	// holes are punched before the cut: the run is rolled back, the old
	// blocks come back from the journal.
	defer func(b int) { batchBytes = b }(batchBytes)
	batchBytes = 64 * 50
	fs := &dropFS{inner: newOSFS(), limit: 1 << 30}
	s, err := Open(img, Options{Writer: true, Backup: true, fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Patch(context.Background(), bytes.NewReader(delta[:len(delta)-80000]), PatchOptions{}); err == nil {
		t.Fatal("cut stream committed")
	}
	s.Close()
	if fs.punch == 0 {
		t.Fatal("no hole was punched before the cut")
	}
	mustEqual(t, img, old)
	batchBytes = 4 << 20

	delta, _ = makeDelta(t, img, dev, testBS)
	fs = &dropFS{inner: newOSFS(), limit: 1 << 30}
	s, err = Open(img, Options{Writer: true, Backup: true, fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Patch(context.Background(), bytes.NewReader(delta), PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	mustEqual(t, img, dev)
	if fs.punch != 3 {
		t.Fatalf("%d punches for 3 runs of zero blocks, want 3", fs.punch)
	}
	var st2 syscall.Stat_t
	if err := syscall.Stat(img, &st2); err != nil {
		t.Fatal(err)
	}
	if alloc, data := st2.Blocks*512, int64(len(dev)-202*testBS); alloc > data+64<<10 {
		t.Fatalf("image allocates %d bytes for %d bytes of data: the zero blocks are not holes", alloc, data)
	}
	if _, err := os.Stat(filepath.Join(StateDir(img), journalName)); err == nil {
		t.Fatal("journal left behind")
	}
}
