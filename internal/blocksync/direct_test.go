package blocksync

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

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

// TestAlignedBufs: the buffers are zeroed, do not overlap, have no room to
// grow into each other, start on directAlign (on a huge page when they
// come to one or more), and from a huge page on the kernel is asked for
// huge pages (VmFlags "hg" of their mapping in /proc/self/smaps).
func TestAlignedBufs(t *testing.T) {
	for _, tc := range []struct{ n, count int }{
		{4096, 3},           // less than a huge page
		{256 << 10, 10},     // the buffered reads of 4 KiB blocks
		{1 << 20, 10},       // the direct reads
		{16 << 20, 2},       // the largest block
		{3 * 4096, 1 << 10}, // not a divisor of a huge page
	} {
		bufs := alignedBufs(tc.n, tc.count)
		if len(bufs) != tc.count {
			t.Fatalf("n=%d count=%d: %d buffers", tc.n, tc.count, len(bufs))
		}
		first := uintptr(unsafe.Pointer(&bufs[0][0]))
		align := uintptr(directAlign)
		if tc.n*tc.count >= hugePage {
			align = hugePage
		}
		if first%align != 0 {
			t.Errorf("n=%d count=%d: starts at %#x, not on %d", tc.n, tc.count, first, align)
		}
		for i, b := range bufs {
			if len(b) != tc.n || cap(b) != tc.n {
				t.Fatalf("n=%d: buffer %d has len %d cap %d", tc.n, i, len(b), cap(b))
			}
			if p := uintptr(unsafe.Pointer(&b[0])); p != first+uintptr(i*tc.n) {
				t.Fatalf("n=%d: buffer %d at %#x, want %#x", tc.n, i, p, first+uintptr(i*tc.n))
			}
			if !isZero(b) {
				t.Fatalf("n=%d: buffer %d not zeroed", tc.n, i)
			}
		}
		if align == hugePage {
			checkHugePageAdvice(t, first)
		}
	}
}

// checkHugePageAdvice fails unless the mapping holding addr has the
// MADV_HUGEPAGE flag, where the kernel has transparent huge pages.
func checkHugePageAdvice(t *testing.T, addr uintptr) {
	t.Helper()
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || bytes.Contains(mode, []byte("[never]")) {
		t.Skipf("transparent huge pages are off or absent here (%q, %v): cannot check the advice", bytes.TrimSpace(mode), err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") { // a mapping's first line: "lo-hi perms ..."
			var lo, hi uintptr
			if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil {
				t.Fatalf("smaps: %q: %v", line, err)
			}
			in = lo <= addr && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			if !slices.Contains(f[1:], "hg") {
				t.Errorf("the buffers at %#x are not advised for huge pages: %s", addr, line)
			}
			return
		}
	}
	t.Errorf("no mapping of %#x in /proc/self/smaps", addr)
}
