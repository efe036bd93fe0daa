package blocksync

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/dosvob/dosvob/internal/format"
)

const bs = 4096

// sign returns the signature stream of img.
func sign(t testing.TB, img []byte, blockSize uint32, seed uint64, opts Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	sw, err := format.NewSigWriter(&buf, format.SigHeader{BlockSize: blockSize, Seed: seed, Base: format.Base{Generation: 1, Size: uint64(len(img))}})
	if err != nil {
		t.Fatal(err)
	}
	if err := Sign(context.Background(), bytes.NewReader(img), sw, opts); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// delta returns the delta stream of dev against sig.
func delta(t testing.TB, sig io.Reader, dev []byte, opts Options) ([]byte, format.End) {
	t.Helper()
	sr, err := format.NewSigReader(sig)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	end, err := Delta(context.Background(), sr, bytes.NewReader(dev), uint64(len(dev)), &out, opts)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), end
}

// apply applies a delta stream to img the simple way and returns the
// result with the records it saw.
func apply(t testing.TB, img []byte, d []byte) (out []byte, data, zero []uint64) {
	t.Helper()
	dr, err := format.NewDeltaReader(bytes.NewReader(d))
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	h := dr.Header()
	out = make([]byte, h.DeviceSize)
	copy(out, img)
	for {
		r, err := dr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		off := r.Index * uint64(h.BlockSize)
		n := uint64(h.BlockLen(r.Index))
		switch r.Type {
		case format.RecordHashes:
			// unchanged blocks: their next-seed hashes only
		case format.RecordData:
			copy(out[off:], r.Bytes)
			data = append(data, r.Index)
		default:
			clear(out[off : off+n])
			zero = append(zero, r.Index)
		}
	}
	return out, data, zero
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestRoundTrips(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	base := randBytes(rng, 40*bs+100)
	for i := 10; i < 20; i++ { // some zero blocks in the image
		clear(base[i*bs : (i+1)*bs])
	}
	scattered := bytes.Clone(base)
	for range 5 {
		off := rng.IntN(len(scattered) - 10)
		scattered[off] ^= 0xff
	}
	zeroed := bytes.Clone(base)
	clear(zeroed[bs : 3*bs])
	tests := []struct {
		name       string
		img, dev   []byte
		data, zero int // expected record counts, -1 to skip
	}{
		{"no change", base, base, 0, 0},
		{"first sync", nil, base, 31, 10},
		{"empty device", base, nil, 0, 0},
		{"both empty", nil, nil, 0, 0},
		{"scattered", base, scattered, -1, 0},
		{"zeroed blocks", base, zeroed, 0, 2},
		{"grown by a block and a bit", base, append(bytes.Clone(base), randBytes(rng, bs+7)...), 2, 0},
		{"grown with zeros", base, append(bytes.Clone(base), make([]byte, 3*bs)...), 1, 3},
		{"shrunk to a block boundary", base, base[:30*bs], 0, 0},
		{"shrunk mid-block", base, base[:30*bs+5], 1, 0},
		{"all zeros", base, make([]byte, len(base)), 0, 31},
		{"tiny", []byte("x"), []byte("y"), 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, readers := range []int{1, 3, 8} {
				opts := Options{Readers: readers, Counters: new(Counters)}
				sig := sign(t, tt.img, bs, rng.Uint64(), Options{Readers: readers})
				d, end := delta(t, bytes.NewReader(sig), tt.dev, opts)
				out, data, zero := apply(t, tt.img, d)
				if !bytes.Equal(out, tt.dev) {
					t.Fatalf("readers %d: patched image differs from the device", readers)
				}
				if tt.data >= 0 && len(data) != tt.data {
					t.Errorf("readers %d: %d data records %v, want %d", readers, len(data), data, tt.data)
				}
				if tt.zero >= 0 && len(zero) != tt.zero {
					t.Errorf("readers %d: %d zero records %v, want %d", readers, len(zero), zero, tt.zero)
				}
				if end.DeviceDigest != xxhash.Sum64(tt.dev) {
					t.Errorf("device digest %x, want %x", end.DeviceDigest, xxhash.Sum64(tt.dev))
				}
				if end.BytesRead != uint64(len(tt.dev)) || opts.Counters.BytesRead.Load() != uint64(len(tt.dev)) {
					t.Errorf("bytes read %d, want %d", end.BytesRead, len(tt.dev))
				}
				if got := opts.Counters.BytesSent.Load(); got != uint64(len(d)) {
					t.Errorf("counted %d bytes sent, stream has %d", got, len(d))
				}
				if end.SigDigest != binary64(sig[len(sig)-8:]) {
					t.Errorf("sig digest %x is not the signature trailer's", end.SigDigest)
				}
			}
		})
	}
}

func binary64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestBlockDigest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	dev := randBytes(rng, 5*bs+3)
	clear(dev[bs : 3*bs]) // all-zero blocks take the constant hash
	seed := uint64(99)
	sig := sign(t, nil, bs, seed, Options{})
	_, end := delta(t, bytes.NewReader(sig), dev, Options{})
	bd := format.NewBlockDigester()
	for i := 0; i < len(dev); i += bs {
		bd.Add(format.HashBlock(seed, dev[i:min(len(dev), i+bs)]))
	}
	if end.BlockDigest != bd.Sum64() {
		t.Errorf("block digest %x, want %x", end.BlockDigest, bd.Sum64())
	}
}

func TestSignMatchesHashBlock(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	img := randBytes(rng, 3*bs+17)
	clear(img[bs : 2*bs]) // an all-zero block, whose hash is a constant
	clear(img[3*bs:])     // and a short all-zero last block
	var hashes []uint64
	sig := sign(t, img, bs, 5, Options{OnHash: func(i, h uint64) error {
		if i != uint64(len(hashes)) {
			t.Errorf("OnHash index %d, want %d", i, len(hashes))
		}
		hashes = append(hashes, h)
		return nil
	}})
	sr, err := format.NewSigReader(bytes.NewReader(sig))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		h, err := sr.Next()
		if err == io.EOF {
			if i != 4 {
				t.Fatalf("%d hashes", i)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		want := format.HashBlock(5, img[i*bs:min(len(img), (i+1)*bs)])
		if h != want || hashes[i] != want {
			t.Errorf("block %d: hash %x, recorded %x, want %x", i, h, hashes[i], want)
		}
	}
}

// TestSignDigest: Sign hands the content it reads to Options.Digest, which
// then has the digest of the whole content, whatever its stream version and
// block size (the per-block hashes when they are the signature's blocks, a
// pass of its own otherwise), for an image of many reads with all-zero
// blocks and a short last block.
func TestSignDigest(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	img := randBytes(rng, 5*chunkTarget+3*bs+17)
	clear(img[chunkTarget : 2*chunkTarget])
	for _, tt := range []struct {
		version   uint16
		blockSize uint32
	}{{3, bs}, {3, 64 << 10}, {3, 1 << 20}, {2, bs}, {1, bs}} {
		want := format.NewDeviceDigester(tt.version, tt.blockSize)
		want.Write(img)
		got := format.NewDeviceDigester(tt.version, tt.blockSize)
		sign(t, img, bs, 9, Options{Readers: 3, Digest: got})
		if got.Sum64() != want.Sum64() {
			t.Errorf("version %d, %d-byte blocks: digest %016x, want %016x", tt.version, tt.blockSize, got.Sum64(), want.Sum64())
		}
	}
}

// TestDeltaDoesNotWaitForSignature feeds the signature through a pipe and
// holds it back: the delta side must scan the blocks whose signature has
// arrived, and read the rest of the device meanwhile.
func TestDeltaDoesNotWaitForSignature(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	img := randBytes(rng, 64*bs)
	sig := sign(t, img, bs, 1, Options{})
	pr, pw := io.Pipe()
	c := new(Counters)
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		sr, err := format.NewSigReader(pr)
		if err == nil {
			_, err = Delta(context.Background(), sr, bytes.NewReader(img), uint64(len(img)), &out, Options{Readers: 4, Counters: c})
		}
		done <- err
	}()
	// Header and the hashes of the first 10 blocks only.
	if _, err := pw.Write(sig[:format.SigHeaderSize+10*8]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Blocks.Load() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("delta scanned %d blocks with 10 signatures available", c.Blocks.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := pw.Write(sig[format.SigHeaderSize+10*8:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, data, zero := apply(t, img, out.Bytes()); len(data)+len(zero) != 0 {
		t.Errorf("records for an unchanged device: %v %v", data, zero)
	}
}

// slowReaderAt simulates network block storage: every read takes a while,
// and reads can overlap.
type slowReaderAt struct {
	r        io.ReaderAt
	delay    time.Duration
	inFlight atomic.Int32
	max      atomic.Int32
}

// IsDirect says that, like a droplet's volume read with O_DIRECT, it
// gets reads of chunkDirect bytes.
func (s *slowReaderAt) IsDirect() bool { return true }

func (s *slowReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.max.Load()
		if n <= m || s.max.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(s.delay)
	return s.r.ReadAt(p, off)
}

// zeroReaderAt is a device of size zero bytes that needs no memory.
type zeroReaderAt struct{ size int64 }

func (z zeroReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= z.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), z.size-off))
	clear(p[:n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestReadsInFlight(t *testing.T) {
	img := zeroReaderAt{64 * chunkTarget}
	for _, readers := range []int{1, 4, 8, 0} { // 0: DefaultReaders
		src := &slowReaderAt{r: img, delay: 2 * time.Millisecond}
		var buf bytes.Buffer
		sw, _ := format.NewSigWriter(&buf, format.SigHeader{BlockSize: bs, Base: format.Base{Size: uint64(img.size)}})
		if err := Sign(context.Background(), src, sw, Options{Readers: readers}); err != nil {
			t.Fatal(err)
		}
		got := int(src.max.Load())
		if limit := cmp.Or(readers, DefaultReaders); got > limit {
			t.Errorf("readers %d: %d reads in flight", readers, got)
		}
		if readers != 1 && got < 2 {
			t.Errorf("readers %d: reads never overlapped", readers)
		}
		if n := ReadsInFlight(src, uint64(img.size), bs, readers); n != cmp.Or(readers, DefaultReaders) || got > n {
			t.Errorf("readers %d: ReadsInFlight says %d, and %d were seen", readers, n, got)
		}
		t.Logf("readers %d: at most %d reads in flight", readers, got)
	}
}

// directZeros is a source of zeros that says it reads with O_DIRECT.
type directZeros struct{ zeroReaderAt }

func (directZeros) IsDirect() bool { return true }

// TestReadsInFlightBounds: what ReadsInFlight reports when the memory cap
// or a small source keeps fewer reads in flight than asked for.
func TestReadsInFlightBounds(t *testing.T) {
	big := zeroReaderAt{1 << 30}
	for _, c := range []struct {
		name      string
		src       io.ReaderAt
		size      uint64
		blockSize uint32
		readers   int
		want      int
	}{
		{"default", big, 1 << 30, bs, 0, DefaultReaders},
		{"as asked", big, 1 << 30, bs, 64, 64},
		{"more than the most", big, 1 << 30, bs, 1000, MaxReaders},
		{"direct, 1 MiB reads, 32 MiB of buffers", directZeros{big}, 1 << 30, bs, 64, 31},
		{"direct, as asked", directZeros{big}, 1 << 30, bs, 16, 16},
		{"16 MiB blocks: two buffers", big, 1 << 30, 16 << 20, 8, 1},
		{"three chunks", big, 3 * chunkTarget, bs, 8, 3},
		{"one short block", big, 100, bs, 8, 1},
		{"empty", big, 0, bs, 8, 0},
	} {
		if got := ReadsInFlight(c.src, c.size, c.blockSize, c.readers); got != c.want {
			t.Errorf("%s: ReadsInFlight %d, want %d", c.name, got, c.want)
		}
	}
}

func TestBadSignatureStream(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	img := randBytes(rng, 8*bs)
	sig := sign(t, img, bs, 1, Options{})
	for name, in := range map[string][]byte{
		"truncated in hashes":  sig[:format.SigHeaderSize+20],
		"truncated trailer":    sig[:len(sig)-1],
		"trailing data":        append(bytes.Clone(sig), 1),
		"flipped hash":         flip(sig, format.SigHeaderSize+3),
		"flipped trailer":      flip(sig, len(sig)-2),
		"device shorter, cut":  sig[:len(sig)-5],
		"device shorter, flip": flip(sig, len(sig)-9),
	} {
		t.Run(name, func(t *testing.T) {
			dev := img
			if len(name) > 14 && name[:14] == "device shorter" {
				dev = img[:2*bs]
			}
			sr, err := format.NewSigReader(bytes.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			_, err = Delta(context.Background(), sr, bytes.NewReader(dev), uint64(len(dev)), &out, Options{})
			var pe *format.ParseError
			if !errors.Is(err, ErrSignature) || !errors.As(err, &pe) {
				t.Fatalf("error %v, want a signature parse error", err)
			}
			// Whatever was written must not pass as a delta.
			if dr, err := format.NewDeltaReader(&out); err == nil {
				for err == nil {
					_, err = dr.Next()
				}
				if err == io.EOF {
					t.Error("the aborted delta reads as complete")
				}
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 0x40
	return b
}

type failingReaderAt struct {
	r    io.ReaderAt
	from int64
}

var errMedia = errors.New("medium error")

func (f failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.from {
		return 0, errMedia
	}
	return f.r.ReadAt(p, off)
}

func TestDeviceReadError(t *testing.T) {
	img := make([]byte, 3*chunkTarget)
	sig := sign(t, img, bs, 1, Options{})
	sr, _ := format.NewSigReader(bytes.NewReader(sig))
	_, err := Delta(context.Background(), sr, failingReaderAt{bytes.NewReader(img), 2*chunkTarget + 5*bs}, uint64(len(img)), io.Discard, Options{})
	if !errors.Is(err, errMedia) || errors.Is(err, ErrSignature) {
		t.Fatalf("error %v, want the device's error", err)
	}
	// A device that is shorter than it claimed.
	sr, _ = format.NewSigReader(bytes.NewReader(sig))
	_, err = Delta(context.Background(), sr, bytes.NewReader(img[:len(img)-10]), uint64(len(img)), io.Discard, Options{})
	if err == nil {
		t.Fatal("short device accepted")
	}
}

func TestCancel(t *testing.T) {
	img := zeroReaderAt{1 << 30}
	ctx, cancel := context.WithCancel(context.Background())
	src := &slowReaderAt{r: img, delay: time.Millisecond}
	sw, _ := format.NewSigWriter(io.Discard, format.SigHeader{BlockSize: bs, Base: format.Base{Size: uint64(img.size)}})
	time.AfterFunc(20*time.Millisecond, cancel)
	err := Sign(ctx, src, sw, Options{Readers: 2})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// TestNoGoroutineLeak checks that an early error stops every reader.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	img := zeroReaderAt{64 * chunkTarget}
	for range 20 {
		sw, _ := format.NewSigWriter(io.Discard, format.SigHeader{BlockSize: bs, Base: format.Base{Size: uint64(img.size)}})
		Sign(context.Background(), failingReaderAt{img, 3 * chunkTarget}, sw, Options{Readers: 8})
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBoundedMemory runs a delta over a large sparse file and checks that
// the heap stays small: memory does not grow with the device size.
func TestBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 512 MiB")
	}
	path := filepath.Join(t.TempDir(), "dev")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 512 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// Some data every 8 MiB so that records are written.
	for off := int64(0); off < size; off += 8 << 20 {
		f.WriteAt(bytes.Repeat([]byte("dosvob"), 1000), off)
	}
	sig := sign(t, nil, 64<<10, 1, Options{})
	sr, _ := format.NewSigReader(bytes.NewReader(sig))
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	sz, err := Size(f)
	if err != nil || sz != size {
		t.Fatalf("Size = %d, %v", sz, err)
	}
	end, err := Delta(context.Background(), sr, f, sz, io.Discard, Options{Readers: 8})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if end.DataRecords != 64 || end.ZeroRecords != size/(64<<10)-64 {
		t.Errorf("end %+v", end)
	}
	t.Logf("peak heap in use: %.1f MiB", float64(peak.Load())/(1<<20))
	if peak.Load() > 48<<20 {
		t.Errorf("peak heap %d MiB for a %d MiB device", peak.Load()>>20, size>>20)
	}
}

func TestSizeRejectsOtherFiles(t *testing.T) {
	f, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Size(f); err == nil {
		t.Error("a directory has a size")
	}
}

// TestChunkBoundaries crosses the 1 MiB read chunks with every kind of
// block size: many blocks per chunk, one, and blocks larger than the device.
func TestChunkBoundaries(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	img := make([]byte, 5*chunkTarget+123)
	for off := 0; off < len(img); off += 300 << 10 { // runs of data over zeros
		copy(img[off:], randBytes(rng, 100<<10))
	}
	dev := bytes.Clone(img)
	for range 40 {
		dev[rng.IntN(len(dev))] ^= 0x5a
	}
	dev = append(dev, randBytes(rng, 70000)...)
	for _, bsz := range []uint32{4 << 10, 64 << 10, 1 << 20, 2 << 20, 16 << 20} {
		for _, readers := range []int{1, 5} {
			sig := sign(t, img, bsz, rng.Uint64(), Options{Readers: readers})
			d, end := delta(t, bytes.NewReader(sig), dev, Options{Readers: readers})
			out, data, _ := apply(t, img, d)
			if !bytes.Equal(out, dev) {
				t.Fatalf("block size %d, readers %d: patched image differs", bsz, readers)
			}
			if end.DeviceDigest != xxhash.Sum64(dev) || len(data) == 0 {
				t.Errorf("block size %d: end %+v", bsz, end)
			}
			// Unchanged: no records.
			d, _ = delta(t, bytes.NewReader(sign(t, dev, bsz, 3, Options{Readers: readers})), dev, Options{Readers: readers})
			if _, data, zero := apply(t, dev, d); len(data)+len(zero) != 0 {
				t.Errorf("block size %d: %d records for no change", bsz, len(data)+len(zero))
			}
		}
	}
}

// TestSignHandsHashesOn checks that the signature reaches its reader while
// the image is still being read, not in large bursts: with the image's
// reads stalled after 2 MiB, the hashes of the first MiB must have arrived.
func TestSignHandsHashesOn(t *testing.T) {
	const size = 8 << 20
	gate := make(chan struct{})
	src := gatedReaderAt{r: zeroReaderAt{size}, from: 2 << 20, gate: gate}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		sw, err := format.NewSigWriter(pw, format.SigHeader{BlockSize: bs, Base: format.Base{Size: size}})
		if err == nil {
			err = Sign(context.Background(), src, sw, Options{Readers: 2})
		}
		if err == nil {
			err = sw.Close()
		}
		pw.CloseWithError(err)
		done <- err
	}()
	sr, err := format.NewSigReader(pr)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() {
		for i := 0; i < (1<<20)/bs; i++ {
			if _, err := sr.Next(); err != nil {
				first <- fmt.Errorf("hash %d: %w", i, err)
				return
			}
		}
		first <- nil
	}()
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(gate)
		t.Fatal("the hashes of the first MiB did not arrive while the rest of the image was being read")
	}
	close(gate)
	for err == nil {
		_, err = sr.Next()
	}
	if err != io.EOF {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// gatedReaderAt blocks reads at or past from until gate is closed.
type gatedReaderAt struct {
	r    io.ReaderAt
	from int64
	gate chan struct{}
}

func (g gatedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > g.from {
		<-g.gate
	}
	return g.r.ReadAt(p, off)
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 4096, 64 << 10, 64<<10 + 1, 3 << 20} {
		b := make([]byte, n)
		if !isZero(b) {
			t.Errorf("%d zero bytes: not zero", n)
		}
		for _, i := range []int{0, n / 2, n - 1} {
			if n == 0 {
				continue
			}
			b[i] = 1
			if isZero(b) {
				t.Errorf("%d bytes with byte %d set: zero", n, i)
			}
			b[i] = 0
		}
	}
}
