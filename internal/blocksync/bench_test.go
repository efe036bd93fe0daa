package blocksync

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/format"
	"github.com/klauspost/compress/zstd"
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

// BenchmarkDeltaNoChangeV2 is the comparing path of an unchanged run at 4
// KiB blocks with a signature of each version: version 2 hashes every
// block under both seeds and sends the next-seed hashes, and like version
// 1 digests the whole content in a pass of its own; version 3 digests
// per-block hashes instead, and hashes no all-zero block. Besides wall time
// it reports the process's CPU time per byte, which a busy machine
// disturbs less. "read" is the floor: reading the same bytes in the same
// pieces, and nothing else. "work" is the delta side's own work on them,
// the same pieces read and each block told zero or hashed under three seeds
// (as version 3 does), in as many goroutines as CPUs, with nothing ordered,
// compared or written: what v3 costs beyond it is the pipeline's.
func BenchmarkDeltaNoChangeV2(b *testing.B) {
	data := benchData()
	b.Run("read", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		buf := make([]byte, chunkTarget)
		src := bytes.NewReader(data)
		cpu0 := cpuTime()
		for b.Loop() {
			for off := 0; off < len(data); off += len(buf) {
				if err := readFull(src, buf, int64(off)); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportCPU(b, cpu0, len(data))
	})
	b.Run("work", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		src := bytes.NewReader(data)
		pieces := int64(len(data) / chunkTarget)
		var sum atomic.Uint64
		cpu0 := cpuTime()
		for b.Loop() {
			var next atomic.Int64
			var wg sync.WaitGroup
			for range runtime.GOMAXPROCS(0) {
				wg.Go(func() {
					buf := make([]byte, chunkTarget)
					h, h2, h0 := format.NewHasher(1), format.NewHasher(2), format.NewHasher(0)
					var x uint64
					for i := next.Add(1) - 1; i < pieces; i = next.Add(1) - 1 {
						if err := readFull(src, buf, i*chunkTarget); err != nil {
							panic(err)
						}
						for lo := 0; lo < len(buf); lo += 4096 {
							if blk := buf[lo : lo+4096]; !isZero(blk) {
								x ^= h.Sum(blk) ^ h2.Sum(blk) ^ h0.Sum(blk)
							}
						}
					}
					sum.Add(x)
				})
			}
			wg.Wait()
		}
		reportCPU(b, cpu0, len(data))
	})
	for _, v := range []uint16{1, 2, 3} {
		b.Run(fmt.Sprintf("v%d", v), func(b *testing.B) {
			sig := signVersion(b, v, data, 1, uint64(v-1))
			b.SetBytes(int64(len(data)))
			var sent uint64
			cpu0 := cpuTime()
			for b.Loop() {
				sent = deltaSent(b, sig, data)
			}
			b.ReportMetric(float64(sent)/float64(len(data)/4096), "sent-B/block")
			reportCPU(b, cpu0, len(data))
		})
	}
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time since cpu0 per GiB, for b.N
// rounds of size bytes each.
func reportCPU(b *testing.B, cpu0 time.Duration, size int) {
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/float64(size)*(1<<30), "cpu-ns/GiB")
}

// deltaSent computes the delta of dev against sig and returns the bytes of
// the delta stream.
func deltaSent(b *testing.B, sig, dev []byte) uint64 {
	sr, _ := format.NewSigReader(bytes.NewReader(sig))
	c := new(Counters)
	if _, err := Delta(context.Background(), sr, bytes.NewReader(dev), uint64(len(dev)), io.Discard, Options{Counters: c}); err != nil {
		b.Fatal(err)
	}
	return c.BytesSent.Load()
}

// BenchmarkIncrementalWire is the incremental of the wire-bytes goal: 1% of
// the 4 KiB blocks of a 64 MiB image rewritten with random data. It reports
// the delta stream's bytes against the zstd-compressed size of the changed
// blocks themselves ("wire/zstd"; goal: at most 1.5), for a version 1 and
// a version 2 signature (version 2 adds 8 bytes per unchanged block, the
// next-seed hashes, less what zstd saves on the equal hashes of zero blocks).
func BenchmarkIncrementalWire(b *testing.B) {
	img := benchData()
	rng := rand.New(rand.NewPCG(9, 9))
	dev := bytes.Clone(img)
	nblocks := len(dev) / 4096
	var changed bytes.Buffer
	picked := map[int]bool{}
	for len(picked) < nblocks/100 {
		i := rng.IntN(nblocks)
		if picked[i] {
			continue
		}
		picked[i] = true
		for j := i * 4096; j < (i+1)*4096; j++ {
			dev[j] = byte(rng.Uint32())
		}
	}
	for i := range nblocks {
		if picked[i] {
			changed.Write(dev[i*4096 : (i+1)*4096])
		}
	}
	var z bytes.Buffer
	enc, _ := zstd.NewWriter(&z, zstd.WithEncoderLevel(zstd.EncoderLevel(format.DefaultLevel)), zstd.WithWindowSize(format.DefaultWindow))
	enc.Write(changed.Bytes())
	enc.Close()
	for _, v := range []uint16{1, 2} {
		b.Run(fmt.Sprintf("v%d", v), func(b *testing.B) {
			sig := signVersion(b, v, img, 1, uint64(v-1))
			b.SetBytes(int64(len(dev)))
			var sent uint64
			for b.Loop() {
				sent = deltaSent(b, sig, dev)
			}
			b.ReportMetric(float64(sent), "wire-B")
			b.ReportMetric(float64(z.Len()), "zstd-changed-B")
			b.ReportMetric(float64(sent)/float64(z.Len()), "wire/zstd")
		})
	}
}

// BenchmarkSlowDeviceInFlight measures the delta side over a device whose
// every (1 MiB) read takes 10 ms, at 1, 2, 4, 8 and 16 reads in flight, and
// reports each throughput and the ratio of 8 in flight to 1 (goal: 4 or
// more).
func BenchmarkSlowDeviceInFlight(b *testing.B) {
	const size = 32 << 20
	sig := sign(b, nil, 64<<10, 1, Options{})
	for b.Loop() {
		rates := map[int]float64{}
		for _, readers := range []int{1, 2, 4, 8, 16} {
			sr, _ := format.NewSigReader(bytes.NewReader(sig))
			dev := &slowReaderAt{r: zeroReaderAt{size}, delay: 10 * time.Millisecond}
			start := time.Now()
			if _, err := Delta(context.Background(), sr, dev, size, io.Discard, Options{Readers: readers}); err != nil {
				b.Fatal(err)
			}
			rates[readers] = size / time.Since(start).Seconds() / (1 << 20)
		}
		for _, r := range []int{1, 2, 4, 8, 16} {
			b.ReportMetric(rates[r], fmt.Sprintf("MiB/s@%d", r))
		}
		b.ReportMetric(rates[8]/rates[1], "x8/x1")
	}
}
