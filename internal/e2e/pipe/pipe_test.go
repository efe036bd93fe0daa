// Package pipe tests the block pipe end to end with the real binaries:
//
//	dosvob-hash IMAGE | dosvob-hash --delta DEVICE | dosvob-patch IMAGE
//
// on regular files and on real loop block devices, and checks after every
// run that IMAGE is byte-identical to DEVICE.
package pipe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dosvob/dosvob/internal/format"
	"github.com/dosvob/dosvob/internal/testenv"
)

var bin string // directory with the built binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dosvob-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, c := range []string{"dosvob-hash", "dosvob-patch"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "github.com/dosvob/dosvob/cmd/"+c).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", c, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is the outcome of one run of the pipe.
type result struct {
	codes  [3]int    // exit codes of hash, hash --delta, patch
	stderr [3]string // their stderr
	delta  []byte    // the delta stream as it went by
}

func (r result) ok() bool { return r.codes == [3]int{} }

func (r result) String() string {
	return fmt.Sprintf("exit codes %v\nhash: %s\ndelta: %s\npatch: %s", r.codes, r.stderr[0], r.stderr[1], r.stderr[2])
}

// records returns the record counts of the captured delta stream.
func (r result) records(t *testing.T) (data, zero uint64) {
	t.Helper()
	dr, err := format.NewDeltaReader(bytes.NewReader(r.delta))
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	for err == nil {
		_, err = dr.Next()
	}
	if err != io.EOF {
		t.Fatal(err)
	}
	e, _ := dr.End()
	return e.DataRecords, e.ZeroRecords
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// runPipe runs dosvob-hash IMAGE | dosvob-hash --delta DEVICE | dosvob-patch IMAGE,
// wired with real pipes, and captures the delta stream on its way.
func runPipe(t *testing.T, img, dev string, deltaArgs ...string) result {
	t.Helper()
	return runPipeVia(t, img, exec.Command(filepath.Join(bin, "dosvob-hash"), append(append([]string{"--delta"}, deltaArgs...), dev)...))
}

// runPipeVia runs the pipe with c2 as its middle stage (dosvob-hash
// --delta, maybe over ssh).
func runPipeVia(t *testing.T, img string, c2 *exec.Cmd) result {
	t.Helper()
	c1 := exec.Command(filepath.Join(bin, "dosvob-hash"), img)
	c3 := exec.Command(filepath.Join(bin, "dosvob-patch"), img)
	return runStages(t, c1, c2, c3)
}

// runStages runs c1 | c2 | c3 with real pipes and returns their exit codes
// and stderr, and the stream between c2 and c3 (the delta).
func runStages(t *testing.T, c1, c2, c3 *exec.Cmd) result {
	t.Helper()
	var res result
	var errs [3]bytes.Buffer
	c1.Stderr, c2.Stderr, c3.Stderr = &errs[0], &errs[1], &errs[2]
	r1, w1, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var delta bytes.Buffer
	c1.Stdout, c2.Stdin = w1, r1
	c2.Stdout, c3.Stdin = io.MultiWriter(w2, &delta), r2
	for _, c := range []*exec.Cmd{c1, c2, c3} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	r1.Close()
	w1.Close()
	r2.Close()
	res.codes[0] = exitCode(c1.Wait())
	res.codes[1] = exitCode(c2.Wait())
	w2.Close()
	res.codes[2] = exitCode(c3.Wait())
	for i := range errs {
		res.stderr[i] = strings.TrimSpace(errs[i].String())
	}
	res.delta = delta.Bytes()
	return res
}

// patchWith runs dosvob-patch IMAGE with the given delta on stdin.
func patchWith(t *testing.T, img string, delta []byte) (int, string) {
	t.Helper()
	c := exec.Command(filepath.Join(bin, "dosvob-patch"), img)
	c.Stdin = bytes.NewReader(delta)
	out, err := c.CombinedOutput()
	return exitCode(err), string(out)
}

// sameContent fails the test unless img holds exactly the device's bytes.
func sameContent(t *testing.T, img, dev string) {
	t.Helper()
	a, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	b := readDevice(t, dev)
	if len(a) != len(b) {
		t.Fatalf("image is %d bytes, device %d", len(a), len(b))
	}
	if !bytes.Equal(a, b) {
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("image differs from the device at offset %d", i)
			}
		}
	}
}

func readDevice(t *testing.T, dev string) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// content returns size bytes: runs of random data covering about frac of
// it, zeros elsewhere.
func content(rng *rand.Rand, size int, frac float64, run int) []byte {
	b := make([]byte, size)
	if size == 0 {
		return b
	}
	run = min(run, size)
	for n := int(float64(size) * frac / float64(run)); n > 0; n-- {
		off := rng.IntN(size - run + 1)
		for i := off; i < off+run; i++ {
			b[i] = byte(rng.Uint32())
		}
	}
	return b
}

// target is a device to back up: a regular file or a loop device.
type target interface {
	Path() string
	// Write writes b at off and syncs.
	Write(t *testing.T, off int64, b []byte)
	// Resize changes the device's size; new bytes read as zeros.
	Resize(t *testing.T, size int64)
}

type fileTarget struct{ path string }

func (f fileTarget) Path() string { return f.path }

func (f fileTarget) Write(t *testing.T, off int64, b []byte) { writeAt(t, f.path, off, b) }

func (f fileTarget) Resize(t *testing.T, size int64) {
	if err := os.Truncate(f.path, size); err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// loopTarget is a loop block device over a backing file; writes go through
// the block device.
type loopTarget struct {
	dev, backing string
}

func (l loopTarget) Path() string { return l.dev }

func (l loopTarget) Write(t *testing.T, off int64, b []byte) { writeAt(t, l.dev, off, b) }

func (l loopTarget) Resize(t *testing.T, size int64) {
	t.Helper()
	if err := os.Truncate(l.backing, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("losetup", "--set-capacity", l.dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup --set-capacity: %v\n%s", err, out)
	}
}

// newLoop attaches a loop device to a new backing file holding b.
func newLoop(t *testing.T, b []byte) loopTarget {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(backing, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return loopTarget{dev: testenv.LoopDevice(t, backing), backing: backing}
}

func newFile(t *testing.T, b []byte) fileTarget {
	t.Helper()
	p := filepath.Join(t.TempDir(), "device")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return fileTarget{p}
}

const blockSize = 4 << 10 // dosvob-hash's default

func TestPipeFile(t *testing.T) {
	testPipe(t, func(b []byte) target { return newFile(t, b) })
}

func TestPipeLoop(t *testing.T) {
	testPipe(t, func(b []byte) target { return newLoop(t, b) })
}

// testPipe runs a series of backups of one device that changes in between.
// Sizes are multiples of 512 (a loop device's sector) but not of the block
// size.
func testPipe(t *testing.T, mk func([]byte) target) {
	rng := rand.New(rand.NewPCG(11, 12))
	size := 8<<20 + 3*512
	dev := mk(content(rng, size, 0.3, 256<<10))
	img := filepath.Join(t.TempDir(), "backup.img")

	step := func(name string, check func(r result)) {
		t.Helper()
		r := runPipe(t, img, dev.Path())
		if !r.ok() {
			t.Fatalf("%s: %v", name, r)
		}
		sameContent(t, img, dev.Path())
		if check != nil {
			check(r)
		}
	}

	step("first sync into a missing image", func(r result) {
		if data, _ := r.records(t); data == 0 {
			t.Error("first sync sent no data")
		}
	})
	step("no change", func(r result) {
		if data, zero := r.records(t); data != 0 || zero != 0 {
			t.Errorf("no change: %d data and %d zero records", data, zero)
		}
		// The image was signed from the cache the first sync left.
		if !strings.Contains(r.stderr[0], "from the hash cache, image not read, 0 B read") {
			t.Errorf("no change: the image was read to sign it: %s", r.stderr[0])
		}
		// A block device is read with O_DIRECT, a file through the cache.
		if _, isLoop := dev.(loopTarget); isLoop != strings.Contains(r.stderr[1], "(O_DIRECT, ") {
			t.Errorf("no change: O_DIRECT use does not fit the device kind: %s", r.stderr[1])
		}
	})

	// Scattered 4 KiB writes: one data record per touched block.
	touched := map[int64]bool{}
	for range 25 {
		off := int64(rng.IntN(size/4096)) * 4096
		buf := content(rng, 4096, 1, 4096)
		buf[0] |= 1 // never all zeros
		dev.Write(t, off, buf)
		touched[off/blockSize] = true
	}
	step("scattered 4 KiB writes", func(r result) {
		data, zero := r.records(t)
		if data != uint64(len(touched)) || zero != 0 {
			t.Errorf("scattered writes in %d blocks: %d data and %d zero records", len(touched), data, zero)
		}
	})

	grown := size + 1<<20 + 512
	dev.Resize(t, int64(grown))
	dev.Write(t, int64(size), content(rng, grown-size, 1, grown-size))
	step("grown device", nil)

	dev.Resize(t, 5<<20+512)
	step("shrunk device", func(r result) {
		if data, zero := r.records(t); data+zero != 1 {
			t.Errorf("shrunk device: %d data and %d zero records, want just the new short last block", data, zero)
		}
	})

	dev.Write(t, 0, make([]byte, 5<<20+512))
	step("device became all zeros", func(r result) {
		if data, _ := r.records(t); data != 0 {
			t.Errorf("all zeros: %d data records", data)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(img, &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks*512 > 256<<10 {
			t.Errorf("an all-zero image allocates %d bytes", st.Blocks*512)
		}
	})
	step("no change after zeros", func(r result) {
		if data, zero := r.records(t); data != 0 || zero != 0 {
			t.Errorf("no change: %d data and %d zero records", data, zero)
		}
	})
}

// TestSparseFirstSync: a first sync of a device that is 90% zeros makes an
// image whose allocated size is close to the non-zero data.
func TestSparseFirstSync(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	size := 32 << 20
	b := make([]byte, size)
	nonzero := 0
	for off := 0; off < size; off += 1 << 20 {
		if rng.IntN(10) == 0 || off == 0 {
			for i := off; i < off+1<<20; i++ {
				b[i] = byte(rng.Uint32()) | 1
			}
			nonzero += 1 << 20
		}
	}
	dev := newFile(t, b)
	img := filepath.Join(t.TempDir(), "backup.img")
	if r := runPipe(t, img, dev.Path()); !r.ok() {
		t.Fatal(r)
	}
	sameContent(t, img, dev.Path())
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	alloc := st.Blocks * 512
	t.Logf("device %d MiB, non-zero %d MiB, image allocates %.2f MiB", size>>20, nonzero>>20, float64(alloc)/(1<<20))
	if alloc < int64(nonzero) || alloc > int64(nonzero)+int64(nonzero)/20+256<<10 {
		t.Errorf("image allocates %d bytes for %d non-zero bytes", alloc, nonzero)
	}
}

// TestBrokenDelta feeds dosvob-patch the right delta cut short or with a
// flipped bit: every one must fail with exit code 3 and leave the image as
// it was; the intact delta then applies.
func TestBrokenDelta(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 9))
	size := 2<<20 + 100
	old := content(rng, size, 0.5, 64<<10)
	dev := newFile(t, old)
	img := filepath.Join(t.TempDir(), "backup.img")
	if r := runPipe(t, img, dev.Path()); !r.ok() {
		t.Fatal(r)
	}
	for range 10 {
		dev.Write(t, int64(rng.IntN(size-4096)), content(rng, 4096, 1, 4096))
	}
	// The delta against the current image, without applying it.
	sigCmd := exec.Command(filepath.Join(bin, "dosvob-hash"), "-q", img)
	sig, err := sigCmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	deltaCmd := exec.Command(filepath.Join(bin, "dosvob-hash"), "-q", "--delta", dev.Path())
	deltaCmd.Stdin = bytes.NewReader(sig)
	delta, err := deltaCmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	cuts := []int{0, 1, format.DeltaHeaderSize - 1, format.DeltaHeaderSize, format.DeltaHeaderSize + 1, len(delta) - 4, len(delta) - 1}
	for range 15 {
		cuts = append(cuts, rng.IntN(len(delta)))
	}
	for _, c := range cuts {
		code, out := patchWith(t, img, delta[:c])
		if code != 3 {
			t.Errorf("delta cut at %d of %d: exit %d, want 3\n%s", c, len(delta), code, out)
		}
		if got, _ := os.ReadFile(img); !bytes.Equal(got, old) {
			t.Fatalf("delta cut at %d changed the image", c)
		}
	}
	for range 15 {
		i := rng.IntN(len(delta))
		bad := bytes.Clone(delta)
		bad[i] ^= 1 << rng.IntN(8)
		code, out := patchWith(t, img, bad)
		if code == 0 {
			t.Errorf("delta with a bit flipped at %d of %d: accepted\n%s", i, len(delta), out)
		}
		if got, _ := os.ReadFile(img); !bytes.Equal(got, old) {
			t.Fatalf("delta with a flipped bit at %d changed the image", i)
		}
	}
	if code, out := patchWith(t, img, delta); code != 0 {
		t.Fatalf("intact delta: exit %d\n%s", code, out)
	}
	sameContent(t, img, dev.Path())
}

// TestFirstSyncOfEmptyDevice covers a zero-length device.
func TestFirstSyncOfEmptyDevice(t *testing.T) {
	dev := newFile(t, nil)
	img := filepath.Join(t.TempDir(), "backup.img")
	if r := runPipe(t, img, dev.Path()); !r.ok() {
		t.Fatal(r)
	}
	sameContent(t, img, dev.Path())
}

// TestResumeFirstSync breaks a first backup part way: the next run signs
// the partial image, so only what is missing travels again.
func TestResumeFirstSync(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	dev := newFile(t, content(rng, 4<<20, 1, 4<<20)) // all data: every block is a data record
	img := filepath.Join(t.TempDir(), "backup.img")

	sig, err := exec.Command(filepath.Join(bin, "dosvob-hash"), "-q", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	deltaCmd := exec.Command(filepath.Join(bin, "dosvob-hash"), "-q", "--delta", dev.Path())
	deltaCmd.Stdin = bytes.NewReader(sig)
	delta, err := deltaCmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	// The stream breaks at 60%.
	if code, out := patchWith(t, img, delta[:len(delta)*6/10]); code != 3 {
		t.Fatalf("cut first backup: exit %d, want 3\n%s", code, out)
	}
	if _, err := os.Stat(img); err == nil {
		t.Fatal("an incomplete first backup appeared as the image")
	}
	r := runPipe(t, img, dev.Path())
	if !r.ok() {
		t.Fatal(r)
	}
	sameContent(t, img, dev.Path())
	data, _ := r.records(t)
	total := uint64(4 << 20 / blockSize)
	t.Logf("resumed first backup sent %d of %d blocks", data, total)
	if data == 0 || data > total/2 {
		t.Errorf("resumed first backup sent %d of %d blocks, want only the missing ~40%%", data, total)
	}
	if !strings.Contains(r.stderr[0], "partial image") {
		t.Errorf("dosvob-hash did not say it signed the partial image: %s", r.stderr[0])
	}
}
