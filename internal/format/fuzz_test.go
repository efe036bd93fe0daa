package format

import (
	"bytes"
	"encoding/binary"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

var update = flag.Bool("update", false, "rewrite the streams in testdata/")

// testdataStreams are the files in testdata/: name prefix "sig-" or
// "delta-"; a name containing "-bad-" must be rejected, any other accepted.
func testdataStreams(t testing.TB) map[string][]byte {
	t.Helper()
	if *update {
		writeTestdata(t)
	}
	files, err := filepath.Glob("testdata/*.bin")
	if err != nil || len(files) == 0 {
		t.Fatalf("no streams in testdata: %v", err)
	}
	m := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = b
	}
	return m
}

func writeTestdata(t testing.TB) {
	t.Helper()
	_, _, delta := smallDelta(t)
	_, _, v2small := v2Delta(t)
	v3hdr, v3recs, _ := v2Delta(t)
	v3hdr.Version = 3
	v3small := makeDelta(t, v3hdr, v3recs, End{BytesRead: v3hdr.DeviceSize, SigDigest: 3, BlockDigest: 4, DeviceDigest: 5, NextDigest: 6})
	sig := makeSig(t, SigHeader{BlockSize: 4096, Seed: 0x0123456789abcdef, Base: testBase}, []uint64{1, 2, 3, 4})
	files := map[string][]byte{
		"sig-empty.bin":              makeSig(t, SigHeader{BlockSize: 64 << 10, Seed: 1}, nil),
		"sig-small.bin":              sig,
		"sig-bad-truncated.bin":      sig[:len(sig)-3],
		"delta-small.bin":            delta,
		"delta-empty-device.bin":     makeDelta(t, DeltaHeader{BlockSize: 1 << 20, Seed: 1}, nil, End{}),
		"delta-bad-truncated.bin":    delta[:len(delta)-10],
		"delta-bad-trailing.bin":     append(bytes.Clone(delta), delta[DeltaHeaderSize:]...),
		"delta-bad-garbage.bin":      append(bytes.Clone(v3small), "garbage"...),
		"delta-bad-skippable.bin":    cat(v3small, skippableFrame("not part of the delta")),
		"delta-bad-empty-frame.bin":  cat(v3small, emptyFrame()),
		"delta-example.bin":          exampleDelta(t),
		"sig-example.bin":            exampleSig(t),
		"sig-v2-small.bin":           makeSig(t, SigHeader{Version: 2, BlockSize: 4096, Seed: 5, NextSeed: 6, Base: testBase}, []uint64{1, 2, 3, 4}),
		"delta-v2-small.bin":         v2small,
		"delta-v2-bad-truncated.bin": v2small[:len(v2small)-7],
		"sig-v3-small.bin":           makeSig(t, SigHeader{Version: 3, BlockSize: 4096, Seed: 5, NextSeed: 6, Base: testBase}, []uint64{1, 2, 3, 4}),
		"delta-v3-small.bin":         v3small,
		"delta-v3-bad-truncated.bin": v3small[:len(v3small)-7],
		"delta-v2-bad-gap.bin": rawDelta(DeltaHeader{Version: 2, BlockSize: 4096, DeviceSize: 8192, NextSeed: 1, Base: Base{Size: 8192}},
			rec(RecordZero, 1, nil), []uint64{2, 0, 1, 0, 0, 0, 0, 0}, nil),
		"delta-v2-bad-split.bin": rawDelta(DeltaHeader{Version: 2, BlockSize: 4096, DeviceSize: 8192, NextSeed: 1, Base: Base{Size: 8192}},
			cat(hashesRec(0, 1), hashesRec(1, 2)), []uint64{2, 0, 0, 0, 0, 0, 0, 0}, nil),
		"delta-bad-out-of-order.bin": rawDelta(DeltaHeader{BlockSize: 4096, DeviceSize: 8192}, cat(rec(RecordZero, 1, nil), rec(RecordZero, 0, nil)), []uint64{2, 0, 2, 0, 0, 0, 0}, nil),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join("testdata", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// exampleSig and exampleDelta are the worked examples of docs/FORMAT.md:
// an image of 5000 bytes (two 4 KiB blocks, the second short) that the
// device changed in its first block and extended by a zero block.
func exampleSig(t testing.TB) []byte {
	t.Helper()
	hdr := SigHeader{BlockSize: 4096, Seed: 0x1122334455667788,
		Base: Base{ImageID: [16]byte{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf}, Generation: 2, Size: 5000}}
	img := make([]byte, 5000)
	return makeSig(t, hdr, []uint64{HashBlock(hdr.Seed, img[:4096]), HashBlock(hdr.Seed, img[4096:])})
}

func exampleDelta(t testing.TB) []byte {
	t.Helper()
	sig := exampleSig(t)
	sh, _, err := readSig(sig)
	if err != nil {
		t.Fatal(err)
	}
	dev := append(bytes.Repeat([]byte{'A'}, 4096), make([]byte, 4096)...)
	dev = append(dev, "hello\n"...)
	hdr := DeltaHeader{BlockSize: 4096, DeviceSize: uint64(len(dev)), Seed: sh.Seed, Base: sh.Base}
	bd := NewBlockDigester()
	for i := range hdr.Blocks() {
		bd.Add(HashBlock(hdr.Seed, dev[i*4096:min(uint64(len(dev)), (i+1)*4096)]))
	}
	return makeDelta(t, hdr, []testRec{{RecordData, 0, dev[:4096]}, {RecordZero, 1, nil}, {RecordData, 2, dev[8192:]}},
		End{BytesRead: hdr.DeviceSize, SigDigest: binary.LittleEndian.Uint64(sig[len(sig)-8:]), BlockDigest: bd.Sum64(), DeviceDigest: xxhash.Sum64(dev)})
}

func TestTestdata(t *testing.T) {
	for name, b := range testdataStreams(t) {
		var err error
		switch {
		case strings.HasPrefix(name, "sig-"):
			_, _, err = readSig(b)
		case strings.HasPrefix(name, "delta-"):
			_, _, _, err = readDelta(b)
		default:
			t.Errorf("%s: unknown stream type", name)
			continue
		}
		bad := strings.Contains(name, "-bad-")
		if bad && err == nil {
			t.Errorf("%s: accepted", name)
		}
		if !bad && err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzSigReader checks that the reader never panics and that the
// signature format is not malleable: an accepted stream re-encodes to the
// very same bytes.
func FuzzSigReader(f *testing.F) {
	for name, b := range testdataStreams(f) {
		if strings.HasPrefix(name, "sig-") {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		hdr, hashes, err := readSig(b)
		if err != nil {
			return
		}
		if again := makeSig(t, hdr, hashes); !bytes.Equal(again, b) {
			t.Errorf("accepted stream does not re-encode to itself:\n%x\n%x", b, again)
		}
	})
}

// FuzzDeltaReader checks that the reader never panics, never reports a
// clean end for a stream whose records disagree with its end record, and
// that an accepted stream's contents survive a write/read round trip.
func FuzzDeltaReader(f *testing.F) {
	for name, b := range testdataStreams(f) {
		if strings.HasPrefix(name, "delta-") {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		hdr, recs, end, err := readDelta(b)
		if err != nil {
			return
		}
		var data, zero uint64
		for _, r := range recs {
			switch r.typ {
			case RecordData:
				data++
				if len(r.data) != hdr.BlockLen(r.index) {
					t.Fatalf("data record %d has %d bytes", r.index, len(r.data))
				}
			case RecordZero:
				zero++
			case RecordHashes:
				if hdr.V() < 2 || len(r.data) == 0 || len(r.data) > int(hdr.BlockSize) {
					t.Fatalf("hashes record %d of %d bytes in a version %d stream", r.index, len(r.data), hdr.V())
				}
			}
		}
		if end.DataRecords != data || end.ZeroRecords != zero || end.Blocks != hdr.Blocks() {
			t.Fatalf("end %+v disagrees with %d data, %d zero records", end, data, zero)
		}
		again := makeDelta(t, hdr, recs, end)
		hdr2, recs2, end2, err := readDelta(again)
		if err != nil || hdr2 != hdr || end2 != end || len(recs2) != len(recs) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range recs {
			if recs[i].typ != recs2[i].typ || recs[i].index != recs2[i].index || !bytes.Equal(recs[i].data, recs2[i].data) {
				t.Fatalf("round trip: record %d differs", i)
			}
		}
	})
}
