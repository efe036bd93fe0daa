package imagestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/dosvob/dosvob/internal/format"
)

// The tests play both ends of the block pipe in-process with the format
// package: sign the image's current content through the Store (as
// dosvob-hash does) and compute the delta against a device held in memory
// (as dosvob-hash --delta does).

const testBS = 4096

// deltaStats counts what a delta carries.
type deltaStats struct {
	data, zero int
	bytes      int
}

// makeDelta signs the content of img through its Store and returns the
// delta stream that turns it into dev.
func makeDelta(t testing.TB, img string, dev []byte, bs uint32) ([]byte, deltaStats) {
	s, err := Open(img, Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("open for signing: %v", err)
	}
	defer s.Close()
	return makeDeltaStore(t, s, dev, bs)
}

func makeDeltaStore(t testing.TB, s *Store, dev []byte, bs uint32) ([]byte, deltaStats) {
	r, size, err := s.Content()
	if err != nil {
		t.Fatal(err)
	}
	seed := rand.Uint64()
	base := s.Base()
	g, err := s.BeginSigning(seed, bs)
	if err != nil {
		t.Fatalf("begin signing: %v", err)
	}
	var sig bytes.Buffer
	sw, err := format.NewSigWriter(&sig, format.SigHeader{BlockSize: bs, Seed: seed, Base: base})
	if err != nil {
		t.Fatal(err)
	}
	n := format.BlockCount(uint64(size), bs)
	old := make([]uint64, n)
	buf := make([]byte, bs)
	for i := range n {
		l := format.BlockLen(uint64(size), bs, i)
		if _, err := r.ReadAt(buf[:l], int64(i)*int64(bs)); err != nil {
			t.Fatal(err)
		}
		old[i] = format.HashBlock(seed, buf[:l])
		sw.Add(old[i])
		if err := g.Add(old[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Finish(sw.Digest()); err != nil {
		t.Fatalf("finish signing: %v", err)
	}
	sigDigest := sw.Digest()

	var out bytes.Buffer
	h := format.DeltaHeader{BlockSize: bs, DeviceSize: uint64(len(dev)), Seed: seed, Base: base}
	dw, err := format.NewDeltaWriter(&out, h, format.DeltaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var st deltaStats
	bd := format.NewBlockDigester()
	for i := range h.Blocks() {
		b := dev[int(i)*int(bs) : int(i)*int(bs)+h.BlockLen(i)]
		hh := format.HashBlock(seed, b)
		bd.Add(hh)
		if i < n && old[i] == hh {
			continue
		}
		if allZero(b) {
			dw.Zero(i)
			st.zero++
		} else {
			dw.Data(i, b)
			st.data++
			st.bytes += len(b)
		}
	}
	if _, err := dw.Close(format.End{SigDigest: sigDigest, BlockDigest: bd.Sum64(), DeviceDigest: xxhashSum(dev)}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), st
}

func xxhashSum(b []byte) uint64 {
	d, _ := digestFile(context.Background(), bytes.NewReader(b), nil)
	return d
}

// patch applies delta to img in-process.
func patch(t testing.TB, img string, delta []byte, opts PatchOptions) (*Result, error) {
	s, err := Open(img, Options{Writer: true, Logf: t.Logf})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Patch(context.Background(), bytes.NewReader(delta), opts)
}

// syncTo runs the whole pipe and fails the test unless img ends equal to dev.
func syncTo(t testing.TB, img string, dev []byte, opts PatchOptions) *Result {
	d, _ := makeDelta(t, img, dev, testBS)
	res, err := patch(t, img, d, opts)
	if err != nil {
		t.Fatalf("patch: %v", err)
	}
	mustEqual(t, img, dev)
	return res
}

func mustEqual(t testing.TB, name string, want []byte) {
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes, want %d; first difference at %d", filepath.Base(name), len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// device makes a device image of size bytes: random runs over zeros.
func device(r *rand.Rand, size int) []byte {
	b := make([]byte, size)
	for off := 0; off < size; off += 3 * testBS {
		if r.IntN(3) == 0 {
			continue
		}
		end := min(off+r.IntN(3*testBS)+1, size)
		for i := off; i < end; i += 8 {
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], r.Uint64())
			copy(b[i:end], w[:])
		}
	}
	return b
}

// mutate returns a copy of b with n scattered 4 KiB writes, some of them
// zeros.
func mutate(r *rand.Rand, b []byte, n int) []byte {
	c := append([]byte(nil), b...)
	for range n {
		off := r.IntN(len(c))
		end := min(off+testBS, len(c))
		zero := r.IntN(4) == 0
		for i := off; i < end; i++ {
			if zero {
				c[i] = 0
			} else {
				c[i] = byte(r.Uint32())
			}
		}
	}
	return c
}
