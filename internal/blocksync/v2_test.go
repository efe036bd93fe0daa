package blocksync

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/dosvob/dosvob/internal/format"
)

// signV2 returns a version 2 signature of img with the given seeds.
func signV2(t testing.TB, img []byte, seed, next uint64) []byte {
	return signVersion(t, 2, img, seed, next)
}

// signVersion returns a signature of the given version of img with the
// given seeds (next must be 0 in version 1).
func signVersion(t testing.TB, version uint16, img []byte, seed, next uint64) []byte {
	t.Helper()
	var buf bytes.Buffer
	sw, err := format.NewSigWriter(&buf, format.SigHeader{Version: version, BlockSize: bs, Seed: seed, NextSeed: next, Base: format.Base{Generation: 1, Size: uint64(len(img))}})
	if err != nil {
		t.Fatal(err)
	}
	if err := Sign(context.Background(), bytes.NewReader(img), sw, Options{}); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDeltaV2NextHashes: against a version 2 or 3 signature the delta has
// that version, covers every block, carries the next-seed hash of each
// unchanged block, and its End record holds the digest of the next-seed
// hashes of the whole device, and the device digest of its version.
func TestDeltaV2NextHashes(t *testing.T) {
	for _, v := range []uint16{2, 3} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { testDeltaNextHashes(t, v) })
	}
}

func testDeltaNextHashes(t *testing.T, version uint16) {
	rng := rand.New(rand.NewPCG(2, 9))
	img := randBytes(rng, 1500*bs+77)
	for i := 100; i < 700; i++ { // a long zero stretch
		clear(img[i*bs : (i+1)*bs])
	}
	dev := bytes.Clone(img)
	for _, i := range []int{0, 3, 599, 1000, 1499} {
		copy(dev[i*bs:], randBytes(rng, 100))
	}
	clear(dev[5*bs : 6*bs])
	dev = append(dev, randBytes(rng, 3*bs)...) // grown
	const seed, next = 11, 22
	d, end := delta(t, bytes.NewReader(signVersion(t, version, img, seed, next)), dev, Options{})

	dr, err := format.NewDeltaReader(bytes.NewReader(d))
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	h := dr.Header()
	if h.V() != version || h.NextSeed != next {
		t.Fatalf("delta header %+v, want version %d with next seed %d", h, version, next)
	}
	got := make([]uint64, h.Blocks()) // next-seed hashes as the patch side would know them
	covered := uint64(0)
	nh := format.NewHasher(next)
	for {
		r, err := dr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch r.Type {
		case format.RecordHashes:
			copy(got[r.Index:], r.Hashes)
			covered += uint64(len(r.Hashes))
		case format.RecordData:
			got[r.Index] = nh.Sum(r.Bytes)
			covered++
		case format.RecordZero:
			got[r.Index] = nh.Sum(make([]byte, h.BlockLen(r.Index)))
			covered++
		}
	}
	if covered != h.Blocks() {
		t.Fatalf("records cover %d of %d blocks", covered, h.Blocks())
	}
	nd := format.NewBlockDigester()
	for i := range h.Blocks() {
		want := nh.Sum(dev[i*bs : i*bs+uint64(h.BlockLen(i))])
		if got[i] != want {
			t.Fatalf("next-seed hash of block %d: %x, want %x", i, got[i], want)
		}
		nd.Add(want)
	}
	if end.NextDigest != nd.Sum64() {
		t.Fatalf("end next digest %x, want %x", end.NextDigest, nd.Sum64())
	}
	// The device digest, computed here independently of the format
	// package: the content itself in version 2, per-block hashes under
	// seed 0 from version 3.
	wantDev := xxhash.Sum64(dev)
	if version >= 3 {
		var hs []byte
		for i := 0; i < len(dev); i += bs {
			hs = binary.LittleEndian.AppendUint64(hs, xxhash.Sum64(dev[i:min(i+bs, len(dev))]))
		}
		wantDev = xxhash.Sum64(hs)
	}
	if end.DeviceDigest != wantDev {
		t.Fatalf("end device digest %x, want %x", end.DeviceDigest, wantDev)
	}
	// The records themselves still turn the image into the device.
	out, data, zero := apply(t, img, d)
	if !bytes.Equal(out, dev) {
		t.Fatal("applying the version 2 delta does not give the device")
	}
	if len(data) != 9 || len(zero) != 1 { // 5 changed, the old short last block, 3 new
		t.Fatalf("%d data records %v and %d zero records, want 9 and 1", len(data), data, len(zero))
	}

	// A version 1 signature still gets a version 1 delta.
	d1, _ := delta(t, bytes.NewReader(sign(t, img, bs, seed, Options{})), dev, Options{})
	dr1, err := format.NewDeltaReader(bytes.NewReader(d1))
	if err != nil {
		t.Fatal(err)
	}
	dr1.Close()
	if dr1.Header().V() != 1 {
		t.Fatalf("delta against a version 1 signature has version %d", dr1.Header().V())
	}
}

// TestSignCached: a signature from cached hashes equals the one from
// reading, whatever the number of blocks around the 64 KiB chunks it works
// in; the hooks see every hash once, in order; each chunk leaves in one
// write; a short cache is an error.
func TestSignCached(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	img := randBytes(rng, 10*bs+5)
	hdr := format.SigHeader{Version: 2, BlockSize: bs, Seed: 5, NextSeed: 6, Base: format.Base{Size: uint64(len(img))}}
	var read, cached bytes.Buffer
	sw, _ := format.NewSigWriter(&read, hdr)
	if err := Sign(context.Background(), bytes.NewReader(img), sw, Options{}); err != nil {
		t.Fatal(err)
	}
	sw.Close()
	var raw []byte
	for i := range hdr.Blocks() {
		raw = binary.LittleEndian.AppendUint64(raw, format.HashBlock(5, img[i*bs:min(uint64(len(img)), (i+1)*bs)]))
	}
	var seen []byte
	onHash := func(i, h uint64) error {
		if i != uint64(len(seen)/8) {
			return fmt.Errorf("OnHash of block %d, want %d", i, len(seen)/8)
		}
		seen = binary.LittleEndian.AppendUint64(seen, h)
		return nil
	}
	sw, _ = format.NewSigWriter(&cached, hdr)
	if err := SignCached(context.Background(), bytes.NewReader(raw), sw, Options{OnHash: onHash}); err != nil {
		t.Fatal(err)
	}
	sw.Close()
	if !bytes.Equal(read.Bytes(), cached.Bytes()) {
		t.Fatal("signature from the cache differs from the one read")
	}
	if !bytes.Equal(seen, raw) {
		t.Fatal("OnHash did not see the cached hashes in order")
	}
	sw, _ = format.NewSigWriter(io.Discard, hdr)
	if err := SignCached(context.Background(), bytes.NewReader(raw[:5*8]), sw, Options{}); err == nil {
		t.Fatal("a short cache signed")
	}
	sw, _ = format.NewSigWriter(io.Discard, hdr)
	if err := SignCached(context.Background(), bytes.NewReader(raw[:len(raw)-3]), sw, Options{}); err == nil {
		t.Fatal("a cache that ends within a hash signed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sw, _ = format.NewSigWriter(io.Discard, hdr)
	if err := SignCached(ctx, bytes.NewReader(raw), sw, Options{}); err != context.Canceled {
		t.Fatalf("cancelled: got %v", err)
	}

	// Around the chunk size: the stream is the one Add writes, OnHashes
	// gets consecutive chunks, and each chunk is one write.
	per := uint64(cachedChunk / 8)
	for _, blocks := range []uint64{0, 1, per - 1, per, per + 1, 2*per - 1, 3*per + 5} {
		hdr := format.SigHeader{Version: format.Version, BlockSize: bs, Seed: 7, NextSeed: 8, Base: format.Base{Size: blocks*bs - min(blocks, 1)*9}}
		hs := make([]uint64, blocks)
		for i := range hs {
			hs[i] = rng.Uint64()
		}
		var want bytes.Buffer
		ref, _ := format.NewSigWriter(&want, hdr)
		var raw []byte
		for _, h := range hs {
			ref.Add(h)
			raw = binary.LittleEndian.AppendUint64(raw, h)
		}
		ref.Close()
		var got writeSizes
		var chunks []byte
		c := new(Counters)
		opts := Options{Counters: c, OnHashes: func(first uint64, p []byte) error {
			if first != uint64(len(chunks)/8) || len(p) == 0 || len(p)%8 != 0 {
				return fmt.Errorf("OnHashes(%d, %d bytes) after %d hashes", first, len(p), len(chunks)/8)
			}
			chunks = append(chunks, p...)
			return nil
		}, OnHash: func(i, h uint64) error { return fmt.Errorf("OnHash(%d) with OnHashes set", i) }}
		sw, _ := format.NewSigWriter(&got, hdr)
		if err := SignCached(context.Background(), bytes.NewReader(append(raw, 1, 2, 3)), sw, opts); err != nil {
			t.Fatalf("%d blocks: %v", blocks, err)
		}
		sizes := got.sizes
		if err := sw.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("%d blocks: signature from SignCached differs from Add's", blocks)
		}
		if !bytes.Equal(chunks, raw) || c.Blocks.Load() != blocks || c.Total.Load() != blocks {
			t.Fatalf("%d blocks: OnHashes saw %d bytes, counters %d of %d", blocks, len(chunks), c.Blocks.Load(), c.Total.Load())
		}
		wantSizes := []int{hdr.Size()}
		for left := 8 * blocks; left > 0; left -= min(left, cachedChunk) {
			wantSizes = append(wantSizes, int(min(left, cachedChunk)))
		}
		if !slices.Equal(sizes, wantSizes) {
			t.Fatalf("%d blocks: writes of %v, want %v", blocks, sizes, wantSizes)
		}
	}
}

// writeSizes records the length of every write it gets.
type writeSizes struct {
	bytes.Buffer
	sizes []int
}

func (w *writeSizes) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.Buffer.Write(p)
}
