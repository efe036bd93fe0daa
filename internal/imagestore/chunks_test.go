package imagestore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/dosvob/dosvob/internal/format"
)

// blockHashes returns the per-block hashes of b under seed, little-endian,
// as a full re-read of the image computes them.
func blockHashes(seed uint64, bs int, b []byte) []byte {
	var out []byte
	for off := 0; off < len(b); off += bs {
		out = binary.LittleEndian.AppendUint64(out, format.HashBlock(seed, b[off:min(off+bs, len(b))]))
	}
	return out
}

// checkHashFile reports how the hash file the manifest names differs from
// the hashes of the image's blocks under the manifest's seed, or the
// manifest's block digest from theirs; a fresh cache must also be offered
// for signing and read back the same.
func checkHashFile(img string, dev []byte) error {
	m, err := readManifest(StateDir(img))
	if err != nil || m == nil {
		return fmt.Errorf("manifest: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(StateDir(img), m.Hashes))
	if err != nil {
		return err
	}
	want := blockHashes(uint64(m.HashSeed), m.BlockSize, dev)
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s: %d bytes, a re-read gives %d; first difference at block %d", m.Hashes, len(got), len(want), firstDiff(got, want)/8)
	}
	if d := Digest(xxhash.Sum64(want)); m.BlockDigest != d {
		return fmt.Errorf("manifest block_digest %s, a re-read gives %s", m.BlockDigest, d)
	}
	if !m.HashesFresh {
		return nil
	}
	s, err := Open(img, Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	c, why := s.HashCache()
	if c == nil {
		return fmt.Errorf("fresh per-block hashes not offered for signing: %s", why)
	}
	if b, err := io.ReadAll(c); err != nil || !bytes.Equal(b, want) {
		return fmt.Errorf("hash cache reads %d bytes (%v), not the re-read's hashes", len(b), err)
	}
	return nil
}

// checkVersionDigest reports whether the newest kept version's End record
// lacks the block digest of prev (the content it restores) under its seed:
// the digest writeCache computes from the signature's hashes.
func checkVersionDigest(img string, prev []byte) error {
	m, err := readManifest(StateDir(img))
	if err != nil || m == nil || len(m.Versions) == 0 {
		return fmt.Errorf("no version kept (%v)", err)
	}
	f, err := os.Open(filepath.Join(StateDir(img), versionsDir, m.Versions[0].File))
	if err != nil {
		return err
	}
	defer f.Close()
	dr, err := format.NewDeltaReader(f)
	if err != nil {
		return err
	}
	defer dr.Close()
	for {
		if _, err := dr.Next(); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
	}
	end, _ := dr.End()
	if want := xxhash.Sum64(blockHashes(dr.Header().Seed, m.BlockSize, prev)); end.BlockDigest != want {
		return fmt.Errorf("version %s: block digest %s, the previous content's is %s", m.Versions[0].Name, Digest(end.BlockDigest), Digest(want))
	}
	return nil
}

// rewrite returns a copy of b resized to size with new random contents in
// the given blocks (a negative index counts from the end) and zeros in the
// blocks of zero.
func rewrite(r *rand.Rand, b []byte, size int, blocks, zero []int) []byte {
	c := make([]byte, size)
	copy(c, b)
	n := (size + testBS - 1) / testBS
	at := func(i int) []byte {
		if i < 0 {
			i += n
		}
		return c[i*testBS : min((i+1)*testBS, size)]
	}
	for _, i := range blocks {
		for k := range at(i) {
			at(i)[k] = byte(r.Uint32()) | 1
		}
	}
	for _, i := range zero {
		clear(at(i))
	}
	return c
}

// TestHashChunkBoundaries: writeCache and KeepHashes work on chunks of
// blocks; after an unchanged run, incrementals with written blocks only in
// the first or only in the last (partial) chunk, grows and shrinks to
// sizes around multiples of the chunk, the hash file and block_digest are
// what a full re-read computes, and so is the digest of the content each
// run replaced (in its kept version). For the stream versions that leave a
// fresh cache (read from sign.hashes and Hashes records) and for version
// 1 (the merged hashes are written by writeCache).
func TestHashChunkBoundaries(t *testing.T) {
	defer func(c uint64, v uint16) { hashChunk, testStreamVersion = c, v }(hashChunk, testStreamVersion)
	hashChunk = 64
	const c = 64 * testBS // one chunk of image
	for _, version := range []uint16{format.Version, 1} {
		testStreamVersion = version
		r := rand.New(rand.NewPCG(41, uint64(version)))
		img := filepath.Join(t.TempDir(), "vol.img")
		clock := time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)
		opts := PatchOptions{TxOptions: TxOptions{Keep: 2, Now: func() time.Time { clock = clock.Add(time.Hour); return clock }}}
		dev := device(r, 3*c)
		syncTo(t, img, dev, opts)
		if err := checkHashFile(img, dev); err != nil {
			t.Fatalf("version %d, first backup: %v", version, err)
		}
		for _, run := range []struct {
			name         string
			size         int
			blocks, zero []int
		}{
			{"unchanged", 3 * c, nil, nil},
			{"first chunk only", 3 * c, []int{0, 5, 63}, []int{7}},
			{"last chunk only", 3 * c, []int{128, -1}, []int{130}},
			{"grow by a short block", 3*c + 100, nil, nil},
			{"short last block only", 3*c + 100, []int{-1}, nil},
			{"grow to a whole chunk more", 4 * c, []int{2}, nil},
			{"shrink to a chunk boundary", 2 * c, nil, nil},
			{"shrink within a chunk", 2*c - testBS - 5, []int{0}, nil},
			{"grow across two chunks", 4*c + 2*testBS, nil, []int{64}},
			{"shrink below one chunk", c - testBS, []int{-1}, nil},
			{"shrink to a block", testBS, nil, nil},
			{"grow from a block", 2*c + 1, nil, nil},
			{"unchanged again", 2*c + 1, nil, nil},
		} {
			prev := dev
			dev = rewrite(r, dev, run.size, run.blocks, run.zero)
			syncTo(t, img, dev, opts)
			if err := checkHashFile(img, dev); err != nil {
				t.Fatalf("version %d, %s: %v", version, run.name, err)
			}
			if err := checkVersionDigest(img, prev); err != nil {
				t.Fatalf("version %d, %s: %v", version, run.name, err)
			}
		}
	}
}

// TestHashChunkProductionSize: the same checks at the chunk size the
// store uses, around its multiples.
func TestHashChunkProductionSize(t *testing.T) {
	c := int(hashChunk) * testBS
	r := rand.New(rand.NewPCG(43, 44))
	img := filepath.Join(t.TempDir(), "vol.img")
	opts := PatchOptions{TxOptions: TxOptions{Keep: 1}}
	dev := rewrite(r, make([]byte, 2*c+100), 2*c+100, []int{0, 1, int(hashChunk) - 1, int(hashChunk), -2, -1}, nil)
	syncTo(t, img, dev, opts)
	for _, size := range []int{2*c + 100, 2*c + 100, c, c + testBS} {
		prev := dev
		dev = rewrite(r, dev, size, []int{-1}, nil)
		syncTo(t, img, dev, opts)
		if err := checkHashFile(img, dev); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if err := checkVersionDigest(img, prev); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
	}
}

// TestAnyBit: the bitmap range test writeCache relies on agrees with
// testing bit by bit, for every range over a few words.
func TestAnyBit(t *testing.T) {
	r := rand.New(rand.NewPCG(45, 46))
	for range 40 {
		b := make([]uint64, 4)
		for range r.IntN(4) {
			setBit(b, r.Uint64N(256))
		}
		for lo := uint64(0); lo <= 256; lo++ {
			want := false // any bit in lo..hi-1
			for hi := lo; hi <= 256; hi++ {
				if hi > lo {
					want = want || hasBit(b, hi-1)
				}
				if got := anyBit(b, lo, hi); got != want {
					t.Fatalf("anyBit(%x, %d, %d) = %v, want %v", b, lo, hi, got, want)
				}
			}
		}
	}
}
