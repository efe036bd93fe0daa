package format

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"strings"
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

// TestSigReaderNextRaw: reading a signature with NextRaw in pieces of any
// size, mixed with Next, gives the hashes, the digest and the end of Next
// alone; a truncated stream fails with Next's error at the same place;
// asking for a partial hash or more hashes than are left is an error.
func TestSigReaderNextRaw(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 9))
	for _, blocks := range []uint64{1, 2, 4095, 4096, 20000} {
		hdr := SigHeader{Version: Version, BlockSize: 4096, Seed: 5, NextSeed: 6, Base: Base{Generation: 1, Size: blocks*4096 - 3}}
		hs := make([]uint64, blocks)
		for i := range hs {
			hs[i] = r.Uint64()
		}
		stream := makeSig(t, hdr, hs)
		ref, err := NewSigReader(bytes.NewReader(stream))
		if err != nil {
			t.Fatal(err)
		}
		for range hs {
			ref.Next()
		}
		if _, err := ref.Next(); err != io.EOF {
			t.Fatalf("Next alone: %v at the end", err)
		}
		sr, err := NewSigReader(bytes.NewReader(stream))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(hs); {
			k := min(len(hs)-i, 1+r.IntN(3000))
			if k == 1 {
				h, err := sr.Next()
				if err != nil || h != hs[i] {
					t.Fatalf("%d blocks: Next at %d: %x, %v", blocks, i, h, err)
				}
			} else {
				p := make([]byte, 8*k)
				if err := sr.NextRaw(p); err != nil {
					t.Fatalf("%d blocks: NextRaw of %d at %d: %v", blocks, k, i, err)
				}
				if !bytes.Equal(p, hashBytes(hs[i:i+k]...)) {
					t.Fatalf("%d blocks: NextRaw of %d at %d: other hashes", blocks, k, i)
				}
			}
			i += k
		}
		if err := sr.NextRaw(make([]byte, 8)); err == nil {
			t.Fatalf("%d blocks: NextRaw past the last block succeeded", blocks)
		}
		if _, err := sr.Next(); err != io.EOF {
			t.Fatalf("%d blocks: %v after the last block, want io.EOF", blocks, err)
		}
		if sr.Digest() != ref.Digest() {
			t.Fatalf("%d blocks: digest %x, Next alone gives %x", blocks, sr.Digest(), ref.Digest())
		}
	}

	// Truncated within the hashes, also within a hash: the error of Next
	// at the same place, and it sticks.
	hdr := SigHeader{BlockSize: 4096, Base: Base{Size: 100 * 4096}}
	hs := make([]uint64, 100)
	for i := range hs {
		hs[i] = r.Uint64()
	}
	stream := makeSig(t, hdr, hs)
	hsize := len(stream) - 800 - SigTrailerSize
	for _, cut := range []int{hsize, hsize + 8, hsize + 8*37 + 3, hsize + 8*99 + 7} {
		ref, _ := NewSigReader(bytes.NewReader(stream[:cut]))
		var want error
		for want == nil {
			_, want = ref.Next()
		}
		sr, _ := NewSigReader(bytes.NewReader(stream[:cut]))
		err := sr.NextRaw(make([]byte, 8*100))
		if err == nil || err.Error() != want.Error() {
			t.Fatalf("cut at %d: NextRaw: %v, Next: %v", cut, err, want)
		}
		if _, again := sr.Next(); again != err {
			t.Fatalf("cut at %d: the error does not stick: %v", cut, again)
		}
	}

	sr, _ := NewSigReader(bytes.NewReader(stream))
	if err := sr.NextRaw(make([]byte, 12)); err == nil {
		t.Error("a partial hash asked for")
	}
	if err := sr.NextRaw(make([]byte, 8*101)); err == nil {
		t.Error("101 hashes of 100 asked for")
	}
	if h, err := sr.Next(); err != nil || h != hs[0] {
		t.Errorf("misuse consumed the stream: %x, %v", h, err)
	}
}

// TestDeltaWriterUnchangedRaw: a delta written with UnchangedRaw runs of
// any length (across Hashes records of the most hashes a record holds,
// and between Data and Zero records) is byte for byte the one Unchanged
// writes block by block, in every version, and its records, read back,
// carry each unchanged block's next-seed hash at its index, at most
// MaxHashes to a record; misuse is refused and records nothing.
func TestDeltaWriterUnchangedRaw(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 9))
	const bs = 4096 // a Hashes record holds 512 hashes
	for _, v := range []uint16{1, 2, 3} {
		blocks := uint64(5000)
		hdr := DeltaHeader{Version: v, BlockSize: bs, DeviceSize: blocks * bs, Seed: 7, Base: Base{Generation: 1, Size: (blocks - 100) * bs}}
		if v >= 2 {
			hdr.NextSeed = 8
		}
		next := make([]uint64, blocks)
		for i := range next {
			next[i] = r.Uint64()
		}
		data := bytes.Repeat([]byte{9}, bs)
		unchanged := make(map[uint64]bool)
		var want, got bytes.Buffer
		ref, err := NewDeltaWriter(&want, hdr, DeltaOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dw, err := NewDeltaWriter(&got, hdr, DeltaOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := uint64(0); i < blocks; {
			switch k := uint64(1 + r.IntN(1200)); {
			case i < hdr.SigBlocks() && r.IntN(3) > 0: // a run of unchanged blocks
				k = min(k, hdr.SigBlocks()-i)
				for j := i; j < i+k; j++ {
					if err := ref.Unchanged(j, next[j]); err != nil {
						t.Fatal(err)
					}
				}
				for j := i; j < i+k; j++ {
					unchanged[j] = true
				}
				var raw []byte
				if v >= 2 {
					raw = hashBytes(next[i : i+k]...)
				}
				if err := dw.UnchangedRaw(i, int(k), raw); err != nil {
					t.Fatalf("v%d: UnchangedRaw(%d, %d): %v", v, i, k, err)
				}
				i += k
			case r.IntN(2) == 0:
				ref.Zero(i)
				dw.Zero(i)
				i++
			default:
				ref.Data(i, data)
				dw.Data(i, data)
				i++
			}
		}
		end := End{BytesRead: blocks * bs}
		if _, err := ref.Close(end); err != nil {
			t.Fatal(err)
		}
		if _, err := dw.Close(end); err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("v%d: the stream differs from the one of Unchanged block by block", v)
		}
		_, recs, _, err := readDelta(got.Bytes())
		if err != nil {
			t.Fatalf("v%d: reading it back: %v", v, err)
		}
		seen := 0
		for _, rec := range recs {
			if rec.typ != RecordHashes {
				continue
			}
			if v < 2 {
				t.Fatalf("v%d: a Hashes record", v)
			}
			n := len(rec.data) / 8
			if n == 0 || n > hdr.MaxHashes() {
				t.Fatalf("v%d: a Hashes record of %d hashes", v, n)
			}
			for j := range n {
				idx := rec.index + uint64(j)
				if !unchanged[idx] || binary.LittleEndian.Uint64(rec.data[8*j:]) != next[idx] {
					t.Fatalf("v%d: Hashes record at %d: hash %d is not block %d's next-seed hash", v, rec.index, j, idx)
				}
			}
			seen += n
		}
		if v >= 2 && seen != len(unchanged) {
			t.Fatalf("v%d: %d next-seed hashes for %d unchanged blocks", v, seen, len(unchanged))
		}
	}

	// Misuse.
	hdr := DeltaHeader{Version: 2, BlockSize: bs, DeviceSize: 10 * bs, Seed: 1, NextSeed: 2, Base: Base{Size: 8 * bs}}
	for _, tc := range []struct {
		name       string
		first      uint64 // blocks before it get Zero records
		n, nextLen int
		want       string
	}{
		{"past the signed content", 6, 3, 24, "block 8 past the signed content"},
		{"past the device", 9, 2, 16, "block 10 past the device's 10 blocks"},
		{"next hashes of another count", 0, 3, 16, "16 bytes of next-seed hashes for 3 blocks"},
	} {
		dw, _ := NewDeltaWriter(io.Discard, hdr, DeltaOptions{})
		for i := range tc.first {
			dw.Zero(i)
		}
		err := dw.UnchangedRaw(tc.first, tc.n, make([]byte, tc.nextLen))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		// nothing was recorded: block first is still the next one
		if err := dw.Zero(tc.first); err != nil {
			t.Errorf("%s: then Zero(%d): %v", tc.name, tc.first, err)
		}
	}
	dw, _ := NewDeltaWriter(io.Discard, hdr, DeltaOptions{})
	if err := dw.UnchangedRaw(2, 1, make([]byte, 8)); err == nil || !strings.Contains(err.Error(), "block 2 follows block -1") {
		t.Errorf("a gap in version 2: %v", err)
	}
}

// TestDeviceDigesterAddBlockHashes: raw hashes in pieces give the digest
// of AddBlockHash of each; on a whole-content digest it panics.
func TestDeviceDigesterAddBlockHashes(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 9))
	hs := make([]uint64, 2000)
	for i := range hs {
		hs[i] = r.Uint64()
	}
	one := NewDeviceDigester(3, 4096)
	for _, h := range hs {
		one.AddBlockHash(h)
	}
	raw := hashBytes(hs...)
	bulk := NewDeviceDigester(3, 4096)
	for p := raw; len(p) > 0; {
		n := min(len(p), 8*r.IntN(300))
		bulk.AddBlockHashes(p[:n])
		p = p[n:]
	}
	if bulk.Sum64() != one.Sum64() {
		t.Fatalf("AddBlockHashes: %x, AddBlockHash: %x", bulk.Sum64(), one.Sum64())
	}
	defer func() {
		if recover() == nil {
			t.Error("AddBlockHashes on a version 2 digest did not panic")
		}
	}()
	NewDeviceDigester(2, 4096).AddBlockHashes(raw[:8])
}
