package format

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestBlockDigesterWrite: raw little-endian hashes written in pieces cut
// anywhere give the digest of adding them one by one.
func TestBlockDigesterWrite(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 9))
	hs := make([]uint64, 3000)
	for i := range hs {
		hs[i] = r.Uint64()
	}
	add := NewBlockDigester()
	for _, h := range hs {
		add.Add(h)
	}
	raw := hashBytes(hs...)
	if add.Sum64() != xxhash.Sum64(raw) {
		t.Fatal("Add is not xxhash64 over the concatenated hashes")
	}
	for range 20 {
		w := NewBlockDigester()
		for p := raw; len(p) > 0; {
			n := min(len(p), r.IntN(5000))
			if m, err := w.Write(p[:n]); err != nil || m != n {
				t.Fatalf("Write of %d bytes: %d, %v", n, m, err)
			}
			p = p[n:]
		}
		if w.Sum64() != add.Sum64() {
			t.Fatalf("Write in pieces: digest %x, Add gives %x", w.Sum64(), add.Sum64())
		}
	}
	// Add and Write mix.
	m := NewBlockDigester()
	m.Add(hs[0])
	m.Write(raw[8 : 8*100])
	for _, h := range hs[100:] {
		m.Add(h)
	}
	if m.Sum64() != add.Sum64() {
		t.Fatal("Add and Write mixed give another digest")
	}
}

// TestSigWriterAddRaw: a stream written with AddRaw in chunks of any size
// (mixed with Add) is byte for byte the one Add writes, with the same
// digest at every step. (That a chunk leaves in one write after Flush is
// checked where it matters, by blocksync's TestSignCached.)
func TestSigWriterAddRaw(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 9))
	for _, blocks := range []uint64{0, 1, 2, 4095, 4096, 20000} {
		hdr := SigHeader{Version: Version, BlockSize: 4096, Seed: 3, NextSeed: 4, Base: Base{Generation: 2, Size: blocks*4096 - min(blocks, 1)*7}}
		hs := make([]uint64, blocks)
		for i := range hs {
			hs[i] = r.Uint64()
		}
		want := makeSig(t, hdr, hs)
		var got bytes.Buffer
		sw, err := NewSigWriter(&got, hdr)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := NewSigWriter(io.Discard, hdr)
		for i := 0; i < len(hs); {
			k := min(len(hs)-i, r.IntN(9000))
			if k == 1 {
				err = sw.Add(hs[i])
			} else {
				err = sw.AddRaw(hashBytes(hs[i : i+k]...))
			}
			if err != nil {
				t.Fatalf("%d blocks: AddRaw of %d at %d: %v", blocks, k, i, err)
			}
			for _, h := range hs[i : i+k] {
				ref.Add(h)
			}
			if sw.Digest() != ref.Digest() {
				t.Fatalf("%d blocks: digest after %d hashes differs from Add's", blocks, i+k)
			}
			i += k
		}
		if err := sw.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("%d blocks: stream from AddRaw differs from Add's", blocks)
		}
	}

	// Misuse: a partial hash, more hashes than blocks; errors are sticky.
	small := SigHeader{BlockSize: 4096, Base: Base{Size: 2 * 4096}}
	sw, _ := NewSigWriter(io.Discard, small)
	if err := sw.AddRaw(make([]byte, 12)); err == nil {
		t.Error("12 bytes of hashes accepted")
	}
	if err := sw.Add(1); err == nil {
		t.Error("Add after a failed AddRaw succeeded")
	}
	sw, _ = NewSigWriter(io.Discard, small)
	sw.Add(1)
	if err := sw.AddRaw(make([]byte, 16)); err == nil {
		t.Error("hashes past the end accepted")
	}
	if err := sw.Close(); err == nil {
		t.Error("Close after a failed AddRaw succeeded")
	}
}
