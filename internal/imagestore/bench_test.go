package imagestore

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkPatchFirst applies a first backup of a 64 MiB device (30% data)
// with 1 MiB blocks: partial image, digest check, fsync, rename.
func BenchmarkPatchFirst(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	dev := device(r, 64<<20)
	dir := b.TempDir()
	b.SetBytes(int64(len(dev)))
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		img := filepath.Join(dir, "img")
		os.RemoveAll(img)
		os.RemoveAll(StateDir(img))
		d, _ := makeDelta(b, img, dev, 1<<20)
		b.StartTimer()
		if _, err := patch(b, img, d, PatchOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPatchIncremental applies an incremental run with 1% of the 4 KiB
// blocks of a 64 MiB image rewritten (64 KiB blocks), journaled, keeping
// versions.
func BenchmarkPatchIncremental(b *testing.B) {
	r := rand.New(rand.NewPCG(2, 2))
	dev := device(r, 64<<20)
	img := filepath.Join(b.TempDir(), "img")
	d, _ := makeDelta(b, img, dev, 64<<10)
	if _, err := patch(b, img, d, PatchOptions{TxOptions: TxOptions{Keep: 3}}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(dev)))
	for b.Loop() {
		b.StopTimer()
		dev = mutate(r, dev, len(dev)/4096/100)
		d, _ := makeDelta(b, img, dev, 64<<10)
		b.StartTimer()
		if _, err := patch(b, img, d, PatchOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPatchIncremental4K is an incremental at the default 4 KiB block
// size with a version 2 delta: 1% of the blocks rewritten, the next-seed
// hashes of the other 99% received and committed as the hash cache.
func BenchmarkPatchIncremental4K(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 3))
	dev := device(r, 64<<20)
	img := filepath.Join(b.TempDir(), "img")
	d, _ := makeDelta(b, img, dev, testBS)
	if _, err := patch(b, img, d, PatchOptions{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(dev)))
	for b.Loop() {
		b.StopTimer()
		dev = mutate(r, dev, len(dev)/4096/100)
		d, _ := makeDelta(b, img, dev, testBS)
		b.StartTimer()
		if _, err := patch(b, img, d, PatchOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPatchZeros zeroes half of an existing 64 MiB image in runs of
// 64 neighbouring 4 KiB blocks: Zero records, journaled, punched as one
// hole per run.
func BenchmarkPatchZeros(b *testing.B) {
	r := rand.New(rand.NewPCG(4, 4))
	full := make([]byte, 64<<20)
	for i := range full {
		full[i] = byte(r.Uint32()) | 1
	}
	zeroed := bytes.Clone(full)
	for off := 0; off < len(zeroed); off += 2 * 64 * testBS {
		clear(zeroed[off : off+64*testBS])
	}
	img := filepath.Join(b.TempDir(), "img")
	syncTo(b, img, full, PatchOptions{})
	b.SetBytes(int64(len(full)) / 2)
	for b.Loop() {
		b.StopTimer()
		syncTo(b, img, full, PatchOptions{})
		d, _ := makeDelta(b, img, zeroed, testBS)
		b.StartTimer()
		if _, err := patch(b, img, d, PatchOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
