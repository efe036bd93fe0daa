package blocksync

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// benchData is 64 MiB like the bench script's image: 30% random data in
// 1 MiB runs, zeros elsewhere.
func benchData() []byte {
	rng := rand.New(rand.NewPCG(1, 1))
	b := make([]byte, 64<<20)
	for i := 0; i < 64; i++ {
		if rng.IntN(10) < 3 {
			for j := i << 20; j < (i+1)<<20; j++ {
				b[j] = byte(rng.Uint32())
			}
		}
	}
	return b
}

// textData is compressible: repeated, slightly varied text.
func textData(n int) []byte {
	rng := rand.New(rand.NewPCG(2, 2))
	var buf bytes.Buffer
	for buf.Len() < n {
		fmt.Fprintf(&buf, "%d 2026-11-22T07:%02d:%02dZ dosvob backup of volume-%d: %d blocks ok\n", rng.IntN(1e6), rng.IntN(60), rng.IntN(60), rng.IntN(9), rng.IntN(1e5))
	}
	return buf.Bytes()[:n]
}

var blockSizes = []uint32{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

func BenchmarkSign(b *testing.B) {
	data := benchData()
	for _, bsz := range blockSizes {
		b.Run(fmt.Sprintf("bs=%dK", bsz>>10), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				sw, _ := format.NewSigWriter(io.Discard, format.SigHeader{BlockSize: bsz, Base: format.Base{Size: uint64(len(data))}})
				if err := Sign(context.Background(), bytes.NewReader(data), sw, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDeltaNoChange is the comparing path: device equal to the image.
func BenchmarkDeltaNoChange(b *testing.B) {
	data := benchData()
	for _, bsz := range blockSizes {
		b.Run(fmt.Sprintf("bs=%dK", bsz>>10), func(b *testing.B) {
			sig := sign(b, data, bsz, 1, Options{})
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				sr, _ := format.NewSigReader(bytes.NewReader(sig))
				if _, err := Delta(context.Background(), sr, bytes.NewReader(data), uint64(len(data)), io.Discard, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDeltaCompress is a first sync (everything travels) of random and
// of compressible data at each compression level, reporting the ratio of
// stream bytes to non-zero input bytes.
func BenchmarkDeltaCompress(b *testing.B) {
	sig := sign(b, nil, 64<<10, 1, Options{})
	for name, data := range map[string][]byte{"random30": benchData(), "text": textData(32 << 20)} {
		nonzero := 0
		for i := 0; i < len(data); i += 1 << 20 {
			if !bytes.Equal(data[i:i+1<<20], make([]byte, 1<<20)) {
				nonzero += 1 << 20
			}
		}
		for level := format.LevelFastest; level <= format.LevelBest; level++ {
			for _, threads := range []int{1, 2} {
				b.Run(fmt.Sprintf("%s/level=%d/threads=%d", name, level, threads), func(b *testing.B) {
					b.SetBytes(int64(len(data)))
					var out int
					for b.Loop() {
						sr, _ := format.NewSigReader(bytes.NewReader(sig))
						c := new(Counters)
						if _, err := Delta(context.Background(), sr, bytes.NewReader(data), uint64(len(data)), io.Discard, Options{Level: level, Concurrency: threads, Counters: c}); err != nil {
							b.Fatal(err)
						}
						out = int(c.BytesSent.Load())
					}
					b.ReportMetric(float64(out)/float64(nonzero), "out/in")
				})
			}
		}
	}
}

// BenchmarkSlowDevice reads a device that answers each (1 MiB) read after
// 10 ms, like network block storage that gives one stream of requests about
// 100 MB/s, with several reads in flight.
func BenchmarkSlowDevice(b *testing.B) {
	const size = 32 << 20
	sig := sign(b, nil, 64<<10, 1, Options{})
	for _, readers := range []int{1, 2, 4, 8, 16} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				sr, _ := format.NewSigReader(bytes.NewReader(sig))
				dev := &slowReaderAt{r: zeroReaderAt{size}, delay: 10 * time.Millisecond}
				if _, err := Delta(context.Background(), sr, dev, size, io.Discard, Options{Readers: readers}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDeltaNoChangeV2 is the comparing path of an unchanged run with a
// version 2 signature: every block hashed under both seeds, the next-seed
// hashes sent.
func BenchmarkDeltaNoChangeV2(b *testing.B) {
	data := benchData()
	var sig bytes.Buffer
	sw, _ := format.NewSigWriter(&sig, format.SigHeader{Version: 2, BlockSize: 4096, Seed: 1, NextSeed: 2, Base: format.Base{Size: uint64(len(data))}})
	if err := Sign(context.Background(), bytes.NewReader(data), sw, Options{}); err != nil {
		b.Fatal(err)
	}
	sw.Close()
	b.SetBytes(int64(len(data)))
	var sent uint64
	for b.Loop() {
		sr, _ := format.NewSigReader(bytes.NewReader(sig.Bytes()))
		c := new(Counters)
		if _, err := Delta(context.Background(), sr, bytes.NewReader(data), uint64(len(data)), io.Discard, Options{Counters: c}); err != nil {
			b.Fatal(err)
		}
		sent = c.BytesSent.Load()
	}
	b.ReportMetric(float64(sent)/float64(len(data)/4096), "sent-B/block")
}
