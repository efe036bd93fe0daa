package format

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

func BenchmarkHashBlock(b *testing.B) {
	for _, n := range []int{4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dK", n>>10), func(b *testing.B) {
			buf := make([]byte, n)
			h := NewHasher(1)
			b.SetBytes(int64(n))
			for b.Loop() {
				h.Sum(buf)
			}
		})
	}
}

// BenchmarkSigStream writes and reads the signature of a 1 GiB image at
// 64 KiB blocks (16384 hashes).
func BenchmarkSigStream(b *testing.B) {
	hdr := SigHeader{BlockSize: 64 << 10, Base: Base{Size: 1 << 30}}
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		sw, _ := NewSigWriter(&buf, hdr)
		for i := range hdr.Blocks() {
			sw.Add(i)
		}
		sw.Close()
		sr, _ := NewSigReader(&buf)
		for {
			if _, err := sr.Next(); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
		}
	}
}

// BenchmarkDeltaWriter compresses 32 MiB of Data records: half random,
// half zeros within each block (like 4 KiB writes into an empty volume).
func BenchmarkDeltaWriter(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	const bs = 64 << 10
	blk := make([]byte, bs)
	for i := range bs / 2 {
		blk[i] = byte(rng.Uint32())
	}
	hdr := DeltaHeader{BlockSize: bs, DeviceSize: 32 << 20}
	for level := LevelFastest; level <= LevelBetter; level++ {
		b.Run(fmt.Sprintf("level=%d", level), func(b *testing.B) {
			b.SetBytes(int64(hdr.DeviceSize))
			for b.Loop() {
				dw, _ := NewDeltaWriter(io.Discard, hdr, DeltaOptions{Level: level})
				for i := range hdr.Blocks() {
					dw.Data(i, blk)
				}
				dw.Close(End{})
			}
		})
	}
}

func BenchmarkDeltaReader(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	const bs = 64 << 10
	blk := make([]byte, bs)
	for i := range bs / 2 {
		blk[i] = byte(rng.Uint32())
	}
	hdr := DeltaHeader{BlockSize: bs, DeviceSize: 32 << 20}
	var stream bytes.Buffer
	dw, _ := NewDeltaWriter(&stream, hdr, DeltaOptions{})
	for i := range hdr.Blocks() {
		dw.Data(i, blk)
	}
	dw.Close(End{})
	b.SetBytes(int64(hdr.DeviceSize))
	for b.Loop() {
		dr, err := NewDeltaReader(bytes.NewReader(stream.Bytes()))
		if err != nil {
			b.Fatal(err)
		}
		for err == nil {
			_, err = dr.Next()
		}
		if err != io.EOF {
			b.Fatal(err)
		}
		dr.Close()
	}
}
