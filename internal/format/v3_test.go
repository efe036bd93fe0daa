package format

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestDeviceDigesterV3 checks the version 3 definition of DeviceDigest
// against a direct computation: xxhash64 (seed 0) over the little-endian
// xxhash64(0, block) of every block, the short last block included.
func TestDeviceDigesterV3(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for _, size := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 17, 64 << 10} {
		content := make([]byte, size)
		for i := range content {
			if i%3 != 0 {
				content[i] = byte(rng.Uint32())
			}
		}
		var hashes []byte
		for off := 0; off < size; off += 4096 {
			hashes = binary.LittleEndian.AppendUint64(hashes, xxhash.Sum64(content[off:min(off+4096, size)]))
		}
		want := xxhash.Sum64(hashes)

		// Written in pieces of every awkward size.
		for _, piece := range []int{1, 7, 4095, 4096, 5000, 1 << 20} {
			d := NewDeviceDigester(3, 4096)
			if !d.PerBlock() {
				t.Fatal("version 3 digest is not per block")
			}
			for off := 0; off < size; off += piece {
				d.Write(content[off:min(off+piece, size)])
			}
			if got := d.Sum64(); got != want {
				t.Fatalf("size %d, pieces of %d: digest %#x, want %#x", size, piece, got, want)
			}
			if got := d.Sum64(); got != want {
				t.Fatalf("size %d: a second Sum64 gave %#x, want %#x", size, got, want)
			}
		}

		// Handed in as block hashes.
		d := NewDeviceDigester(3, 4096)
		for off := 0; off < size; off += 4096 {
			d.AddBlockHash(HashBlock(0, content[off:min(off+4096, size)]))
		}
		if got := d.Sum64(); got != want {
			t.Fatalf("size %d, by block hashes: digest %#x, want %#x", size, got, want)
		}

		// Versions 1 and 2 digest the content itself.
		for _, v := range []uint16{1, 2} {
			d := NewDeviceDigester(v, 4096)
			if d.PerBlock() {
				t.Fatalf("version %d digest is per block", v)
			}
			d.Write(content)
			if got, want := d.Sum64(), xxhash.Sum64(content); got != want {
				t.Fatalf("version %d, size %d: digest %#x, want %#x", v, size, got, want)
			}
		}
	}
}

// TestDeviceDigesterV3DetectsChanges: a changed byte anywhere, a block
// moved, or a different length changes the version 3 digest.
func TestDeviceDigesterV3DetectsChanges(t *testing.T) {
	sum := func(b []byte) uint64 {
		d := NewDeviceDigester(3, 4096)
		d.Write(b)
		return d.Sum64()
	}
	content := bytes.Repeat([]byte("dosvob"), 3000)
	base := sum(content)
	for _, i := range []int{0, 4095, 4096, len(content) - 1} {
		c := bytes.Clone(content)
		c[i] ^= 1
		if sum(c) == base {
			t.Errorf("flipping byte %d does not change the digest", i)
		}
	}
	swapped := append(bytes.Clone(content[4096:8192]), content[:4096]...)
	swapped = append(swapped, content[8192:]...)
	if sum(swapped) == base {
		t.Error("swapping two blocks does not change the digest")
	}
	if sum(append(bytes.Clone(content), 0)) == base || sum(content[:len(content)-1]) == base {
		t.Error("a different length does not change the digest")
	}
}

func TestDeviceDigesterAddBlockHashMidBlockPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("AddBlockHash within a block did not panic")
		}
	}()
	d := NewDeviceDigester(3, 4096)
	d.Write([]byte{1})
	d.AddBlockHash(1)
}

// TestRoundTripV3: version 3 has the layout and rules of version 2; both
// streams carry the version they were written with.
func TestRoundTripV3(t *testing.T) {
	sh := SigHeader{Version: 3, BlockSize: 4096, Seed: 7, NextSeed: 8, Base: testBase}
	b := makeSig(t, sh, []uint64{1, 2, 3, 4})
	if len(b) != SigHeaderSizeV2+4*8+SigTrailerSize || binary.LittleEndian.Uint16(b[8:]) != 3 {
		t.Fatalf("version 3 signature of %d bytes, version field %d", len(b), binary.LittleEndian.Uint16(b[8:]))
	}
	if gh, hs, err := readSig(b); err != nil || gh != sh || len(hs) != 4 {
		t.Fatalf("read back %+v %v %v, want %+v", gh, hs, err, sh)
	}

	hdr, recs, _ := v2Delta(t)
	hdr.Version = 3
	e := End{BytesRead: hdr.DeviceSize, SigDigest: 3, BlockDigest: 4, DeviceDigest: 5, NextDigest: 6}
	d := makeDelta(t, hdr, recs, e)
	if binary.LittleEndian.Uint16(d[8:]) != 3 {
		t.Fatalf("delta version field %d", binary.LittleEndian.Uint16(d[8:]))
	}
	gh, got, ge, err := readDelta(d)
	if err != nil {
		t.Fatal(err)
	}
	if gh != hdr || len(got) != len(recs) || ge.DeviceDigest != 5 || ge.NextDigest != 6 {
		t.Fatalf("read back header %+v, %d records, end %+v", gh, len(got), ge)
	}
	// The version 2 rule that records cover every block holds in version 3.
	var buf bytes.Buffer
	dw, _ := NewDeltaWriter(&buf, hdr, DeltaOptions{})
	if err := dw.Data(1, blk4k()); err == nil {
		t.Error("version 3 writer accepted a gap before block 1")
	}
}

// TestZeroHash: the hash of n zero bytes, computed without a buffer of n
// bytes, is the block hash of such a buffer, across the 64 KiB pieces.
func TestZeroHash(t *testing.T) {
	for _, n := range []int{0, 1, 4096, 64 << 10, 64<<10 + 1, 3*64<<10 - 5, MaxBlockSize} {
		for _, seed := range []uint64{0, 7, 1 << 63} {
			if got, want := ZeroHash(seed, n), HashBlock(seed, make([]byte, n)); got != want {
				t.Errorf("ZeroHash(%d, %d) = %#x, want %#x", seed, n, got, want)
			}
		}
	}
}
