package imagestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
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
	t.Helper()
	s, err := Open(img, Options{Backup: true, Logf: t.Logf})
	if err != nil {
		t.Fatalf("open for signing: %v", err)
	}
	defer s.Close()
	return makeDeltaStore(t, s, dev, bs)
}

// testStreamVersion is the stream version makeDeltaStore signs with.
var testStreamVersion uint16 = format.Version

// makeDeltaStore plays dosvob-hash IMAGE and dosvob-hash --delta: it signs
// the store's content (from the hash cache when the store offers one, by
// reading otherwise) and computes the delta to dev. In version 2 it draws
// a next seed and sends the next-seed hashes of unchanged blocks.
func makeDeltaStore(t testing.TB, s *Store, dev []byte, bs uint32) ([]byte, deltaStats) {
	t.Helper()
	r, size, err := s.Content()
	if err != nil {
		t.Fatal(err)
	}
	version := testStreamVersion
	seed, next := rand.Uint64(), uint64(0)
	if version >= 2 {
		next = rand.Uint64()
	}
	n := format.BlockCount(uint64(size), bs)
	old := make([]uint64, n)
	cache, _ := s.HashCache()
	var digest *format.DeviceDigester
	var raw []byte // the cached hashes, recorded in chunks as dosvob-hash does
	if version >= 2 && cache != nil && cache.BlockSize == bs {
		seed = cache.Seed
		if raw, err = io.ReadAll(cache); err != nil || uint64(len(raw)) != 8*n {
			t.Fatalf("hash cache: %d bytes for %d blocks, %v", len(raw), n, err)
		}
		for i := range n {
			old[i] = binary.LittleEndian.Uint64(raw[8*i:])
		}
	} else {
		// Reading, it digests what it reads, as dosvob-hash does.
		digest = s.ContentDigester()
		buf := make([]byte, bs)
		for i := range n {
			l := format.BlockLen(uint64(size), bs, i)
			if _, err := r.ReadAt(buf[:l], int64(i)*int64(bs)); err != nil {
				t.Fatal(err)
			}
			old[i] = format.HashBlock(seed, buf[:l])
			if digest != nil {
				digest.Write(buf[:l])
			}
		}
	}
	base := s.Base()
	hdr := format.SigHeader{Version: version, BlockSize: bs, Seed: seed, NextSeed: next, Base: base}
	g, err := s.BeginSigning(hdr)
	if err != nil {
		t.Fatalf("begin signing: %v", err)
	}
	if digest != nil {
		g.Found(digest.Sum64())
	}
	var sig bytes.Buffer
	sw, err := format.NewSigWriter(&sig, hdr)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		sw.Add(old[i])
		if raw == nil {
			if err := g.Add(old[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for p := raw; len(p) > 0; {
		k := min(len(p), 8*(1+rand.IntN(1000)))
		if err := g.AddRaw(p[:k]); err != nil {
			t.Fatal(err)
		}
		p = p[k:]
	}
	if err := g.Finish(sw.Digest()); err != nil {
		t.Fatalf("finish signing: %v", err)
	}
	sigDigest := sw.Digest()

	var out bytes.Buffer
	h := format.DeltaHeader{Version: version, BlockSize: bs, DeviceSize: uint64(len(dev)), Seed: seed, NextSeed: next, Base: base}
	dw, err := format.NewDeltaWriter(&out, h, format.DeltaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var st deltaStats
	bd, nd := format.NewBlockDigester(), format.NewBlockDigester()
	for i := range h.Blocks() {
		b := dev[int(i)*int(bs) : int(i)*int(bs)+h.BlockLen(i)]
		hh, nh := format.HashBlock(seed, b), format.HashBlock(next, b)
		bd.Add(hh)
		nd.Add(nh)
		if i < n && old[i] == hh {
			if err := dw.Unchanged(i, nh); err != nil {
				t.Fatal(err)
			}
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
	if _, err := dw.Close(format.End{SigDigest: sigDigest, BlockDigest: bd.Sum64(), DeviceDigest: deviceDigest(version, bs, dev), NextDigest: nd.Sum64()}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), st
}

// deviceDigest is End.DeviceDigest of b in the given version.
func deviceDigest(version uint16, bs uint32, b []byte) uint64 {
	d, _ := digestFile(context.Background(), bytes.NewReader(b), version, bs, nil)
	return d
}

// patch applies delta to img in-process.
func patch(t testing.TB, img string, delta []byte, opts PatchOptions) (*Result, error) {
	t.Helper()
	s, err := Open(img, Options{Writer: true, Backup: true, Logf: t.Logf})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Patch(context.Background(), bytes.NewReader(delta), opts)
}

// syncTo runs the whole pipe and fails the test unless img ends equal to dev.
func syncTo(t testing.TB, img string, dev []byte, opts PatchOptions) *Result {
	t.Helper()
	d, _ := makeDelta(t, img, dev, testBS)
	res, err := patch(t, img, d, opts)
	if err != nil {
		t.Fatalf("patch: %v", err)
	}
	mustEqual(t, img, dev)
	return res
}

func mustEqual(t testing.TB, name string, want []byte) {
	t.Helper()
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
