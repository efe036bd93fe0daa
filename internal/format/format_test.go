package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

var testBase = Base{ImageID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, Generation: 7, Size: 3*4096 + 100}

// makeSig returns a signature stream for hdr whose hashes are hashes.
func makeSig(t testing.TB, hdr SigHeader, hashes []uint64) []byte {
	t.Helper()
	var buf bytes.Buffer
	sw, err := NewSigWriter(&buf, hdr)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hashes {
		if err := sw.Add(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type testRec struct {
	typ   RecordType
	index uint64
	data  []byte
}

// makeDelta writes a delta stream with the given records through DeltaWriter.
func makeDelta(t testing.TB, hdr DeltaHeader, recs []testRec, e End) []byte {
	t.Helper()
	var buf bytes.Buffer
	dw, err := NewDeltaWriter(&buf, hdr, DeltaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		switch r.typ {
		case RecordData:
			err = dw.Data(r.index, r.data)
		case RecordZero:
			err = dw.Zero(r.index)
		case RecordHashes:
			for k := 0; k < len(r.data)/8 && err == nil; k++ {
				err = dw.Unchanged(r.index+uint64(k), binary.LittleEndian.Uint64(r.data[8*k:]))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dw.Close(e); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readSig reads a whole signature stream.
func readSig(b []byte) (SigHeader, []uint64, error) {
	sr, err := NewSigReader(bytes.NewReader(b))
	if err != nil {
		return SigHeader{}, nil, err
	}
	var hs []uint64
	for {
		h, err := sr.Next()
		if err == io.EOF {
			return sr.Header(), hs, nil
		}
		if err != nil {
			return sr.Header(), hs, err
		}
		hs = append(hs, h)
	}
}

// readDelta reads a whole delta stream.
func readDelta(b []byte) (DeltaHeader, []testRec, End, error) {
	dr, err := NewDeltaReader(bytes.NewReader(b))
	if err != nil {
		return DeltaHeader{}, nil, End{}, err
	}
	defer dr.Close()
	var recs []testRec
	for {
		r, err := dr.Next()
		if err == io.EOF {
			e, ok := dr.End()
			if !ok {
				panic("EOF without End")
			}
			return dr.Header(), recs, e, nil
		}
		if err != nil {
			return dr.Header(), recs, End{}, err
		}
		data := bytes.Clone(r.Bytes)
		if r.Type == RecordHashes {
			for _, h := range r.Hashes {
				data = binary.LittleEndian.AppendUint64(data, h)
			}
		}
		recs = append(recs, testRec{r.Type, r.Index, data})
	}
}

func smallDelta(t testing.TB) (DeltaHeader, []testRec, []byte) {
	t.Helper()
	hdr := DeltaHeader{Version: 1, BlockSize: 4096, DeviceSize: 5*4096 + 123, Seed: 42, Base: testBase}
	blk := bytes.Repeat([]byte("dosvob"), 4096/6+1)[:4096]
	recs := []testRec{
		{RecordData, 0, blk},
		{RecordZero, 2, nil},
		{RecordData, 3, bytes.Repeat([]byte{0xa5}, 4096)},
		{RecordData, 5, []byte("the short last block" + string(make([]byte, 103)))},
	}
	return hdr, recs, makeDelta(t, hdr, recs, End{BytesRead: hdr.DeviceSize, SigDigest: 1, BlockDigest: 2, DeviceDigest: 3})
}

func TestSigRoundTrip(t *testing.T) {
	for _, size := range []uint64{0, 1, 4095, 4096, 4097, 3*4096 + 100} {
		hdr := SigHeader{Version: 1, BlockSize: 4096, Seed: 0xdeadbeef, Base: Base{Generation: 3, Size: size}}
		var hashes []uint64
		for i := range hdr.Blocks() {
			hashes = append(hashes, i*0x9e3779b97f4a7c15)
		}
		b := makeSig(t, hdr, hashes)
		if want := SigHeaderSize + 8*len(hashes) + SigTrailerSize; len(b) != want {
			t.Errorf("size %d: stream is %d bytes, want %d", size, len(b), want)
		}
		gh, gotHashes, err := readSig(b)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if gh != hdr {
			t.Errorf("header %+v, want %+v", gh, hdr)
		}
		if len(gotHashes) != len(hashes) {
			t.Fatalf("got %d hashes, want %d", len(gotHashes), len(hashes))
		}
		for i := range hashes {
			if gotHashes[i] != hashes[i] {
				t.Errorf("hash %d: %x, want %x", i, gotHashes[i], hashes[i])
			}
		}
		// The trailer digest is xxhash64 of everything before it.
		if got, want := binary.LittleEndian.Uint64(b[len(b)-8:]), xxhash.Sum64(b[:len(b)-16]); got != want {
			t.Errorf("trailer digest %x, want %x", got, want)
		}
	}
}

func TestSigWriterDigestBeforeClose(t *testing.T) {
	hdr := SigHeader{BlockSize: 4096, Seed: 1, Base: Base{Size: 8192}}
	var buf bytes.Buffer
	sw, _ := NewSigWriter(&buf, hdr)
	sw.Add(10)
	sw.Add(20)
	d := sw.Digest()
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	sr, err := NewSigReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := sr.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if sr.Digest() != d {
		t.Errorf("reader digest %x, writer digest before close %x", sr.Digest(), d)
	}
}

func TestSigWriterMisuse(t *testing.T) {
	if _, err := NewSigWriter(io.Discard, SigHeader{BlockSize: 1000}); err == nil {
		t.Error("block size 1000 accepted")
	}
	sw, _ := NewSigWriter(io.Discard, SigHeader{BlockSize: 4096, Base: Base{Size: 4096}})
	if err := sw.Close(); err == nil {
		t.Error("Close with a missing hash succeeded")
	}
	sw, _ = NewSigWriter(io.Discard, SigHeader{BlockSize: 4096, Base: Base{Size: 4096}})
	sw.Add(1)
	if err := sw.Add(2); err == nil {
		t.Error("hash past the end accepted")
	}
}

func TestDeltaRoundTrip(t *testing.T) {
	hdr, recs, b := smallDelta(t)
	gh, got, e, err := readDelta(b)
	if err != nil {
		t.Fatal(err)
	}
	if gh != hdr {
		t.Errorf("header %+v, want %+v", gh, hdr)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d records, want %d", len(got), len(recs))
	}
	for i := range recs {
		if got[i].typ != recs[i].typ || got[i].index != recs[i].index || !bytes.Equal(got[i].data, recs[i].data) {
			t.Errorf("record %d: %v %d (%d bytes), want %v %d (%d bytes)", i, got[i].typ, got[i].index, len(got[i].data), recs[i].typ, recs[i].index, len(recs[i].data))
		}
	}
	want := End{Blocks: 6, DataRecords: 3, ZeroRecords: 1, BytesRead: hdr.DeviceSize, SigDigest: 1, BlockDigest: 2, DeviceDigest: 3}
	if e != want {
		t.Errorf("end %+v, want %+v", e, want)
	}
}

func TestDeltaEmptyDevice(t *testing.T) {
	hdr := DeltaHeader{BlockSize: 1 << 20, DeviceSize: 0}
	b := makeDelta(t, hdr, nil, End{})
	_, recs, e, err := readDelta(b)
	if err != nil || len(recs) != 0 || e.Blocks != 0 {
		t.Fatalf("recs %v end %+v err %v", recs, e, err)
	}
}

func TestDeltaWriterMisuse(t *testing.T) {
	hdr := DeltaHeader{BlockSize: 4096, DeviceSize: 3 * 4096}
	for name, f := range map[string]func(dw *DeltaWriter) error{
		"past end":     func(dw *DeltaWriter) error { return dw.Zero(3) },
		"out of order": func(dw *DeltaWriter) error { dw.Zero(2); return dw.Zero(1) },
		"repeated":     func(dw *DeltaWriter) error { dw.Zero(1); return dw.Data(1, make([]byte, 4096)) },
		"short data":   func(dw *DeltaWriter) error { return dw.Data(0, make([]byte, 100)) },
	} {
		dw, err := NewDeltaWriter(io.Discard, hdr, DeltaOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := f(dw); err == nil {
			t.Errorf("%s: accepted", name)
		}
		dw.Abort()
	}
	if _, err := NewDeltaWriter(io.Discard, DeltaHeader{BlockSize: 3 << 20}, DeltaOptions{}); err == nil {
		t.Error("block size 3 MiB accepted")
	}
	if _, err := NewDeltaWriter(io.Discard, hdr, DeltaOptions{Level: 9}); err == nil {
		t.Error("level 9 accepted")
	}
}

// fixChecksum recomputes a header's checksum after a test changed a field.
func fixChecksum(b []byte, size int) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint64(b[size-8:], xxhash.Sum64(b[:size-8]))
	return b
}

func patch(b []byte, off int, v ...byte) []byte {
	b = bytes.Clone(b)
	copy(b[off:], v)
	return b
}

func TestSigReaderErrors(t *testing.T) {
	hdr := SigHeader{BlockSize: 4096, Seed: 5, Base: testBase}
	good := makeSig(t, hdr, []uint64{1, 2, 3, 4})
	delta := func() []byte { _, _, b := smallDelta(t); return b }()
	hs := SigHeaderSize
	tests := []struct {
		name string
		in   []byte
		err  error
	}{
		{"empty", nil, io.ErrUnexpectedEOF},
		{"magic only", good[:8], io.ErrUnexpectedEOF},
		{"short header", good[:hs-1], io.ErrUnexpectedEOF},
		{"header only", good[:hs], io.ErrUnexpectedEOF},
		{"no trailer", good[:len(good)-SigTrailerSize], io.ErrUnexpectedEOF},
		{"half trailer", good[:len(good)-8], io.ErrUnexpectedEOF},
		{"wrong magic", patch(good, 0, 'X'), ErrMagic},
		{"short wrong magic", []byte("GIF8"), ErrMagic},
		{"text", []byte("hello, world\n"), ErrMagic},
		{"delta stream", delta, ErrMagic},
		{"version 4", fixChecksum(patch(good, 8, 4, 0), hs), ErrVersion},
		{"version 0", fixChecksum(patch(good, 8, 0, 0), hs), ErrVersion},
		{"flags", fixChecksum(patch(good, 10, 1, 0), hs), ErrFlags},
		{"high flag", fixChecksum(patch(good, 10, 0, 0x80), hs), ErrFlags},
		{"header checksum", patch(good, 56, good[56]^1), ErrChecksum},
		{"seed changed", patch(good, 16, good[16]^1), ErrChecksum},
		{"block size 0", fixChecksum(patch(good, 12, 0, 0, 0, 0), hs), ErrBlockSize},
		{"block size 2048", fixChecksum(patch(good, 12, 0, 8, 0, 0), hs), ErrBlockSize},
		{"block size 32 MiB", fixChecksum(patch(good, 12, 0, 0, 0, 2), hs), ErrBlockSize},
		{"block size 12 KiB", fixChecksum(patch(good, 12, 0, 0x30, 0, 0), hs), ErrBlockSize},
		{"hash flipped", patch(good, hs+3, good[hs+3]^0x10), ErrChecksum},
		{"trailer count", patch(good, len(good)-16, 5), ErrCount},
		{"trailer digest", patch(good, len(good)-1, good[len(good)-1]^1), ErrChecksum},
		{"trailing byte", append(bytes.Clone(good), 0), ErrTrailingData},
		{"second stream", append(bytes.Clone(good), good...), ErrTrailingData},
		{"size grown", fixChecksum(patch(good, 48, 0, 0x50), hs), io.ErrUnexpectedEOF},
		{"size shrunk", fixChecksum(patch(good, 48, 0, 0x30), hs), ErrCount},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readSig(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Errorf("error %T is not a *ParseError", err)
			}
		})
	}
}

// rawDelta builds a delta stream from raw record bytes, with a correct
// record digest appended to the end record when end is true, so that the
// semantic checks (not the digest) are what fails.
func rawDelta(hdr DeltaHeader, records []byte, endFields []uint64, trailing []byte) []byte {
	var plain bytes.Buffer
	plain.Write(records)
	if endFields != nil {
		plain.WriteByte(byte(RecordEnd))
		for _, v := range endFields {
			binary.Write(&plain, binary.LittleEndian, v)
		}
		binary.Write(&plain, binary.LittleEndian, xxhash.Sum64(plain.Bytes()))
	}
	plain.Write(trailing)
	var out bytes.Buffer
	out.Write(MarshalDeltaHeader(hdr))
	enc, _ := zstd.NewWriter(&out, zstd.WithWindowSize(1<<20))
	enc.Write(plain.Bytes())
	enc.Close()
	return out.Bytes()
}

func rec(t RecordType, idx uint64, data []byte) []byte {
	b := []byte{byte(t)}
	b = binary.LittleEndian.AppendUint64(b, idx)
	return append(b, data...)
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestDeltaReaderErrors(t *testing.T) {
	hdr, _, good := smallDelta(t)
	sig := makeSig(t, SigHeader{BlockSize: 4096, Base: Base{Size: 4096}}, []uint64{1})
	hs := DeltaHeaderSize
	h2 := DeltaHeader{BlockSize: 4096, DeviceSize: 2*4096 + 10}
	full := make([]byte, 4096)
	short := make([]byte, 10)
	zstdOnly := func() []byte {
		var b bytes.Buffer
		enc, _ := zstd.NewWriter(&b)
		enc.Write([]byte("not records"))
		enc.Close()
		return b.Bytes()
	}()
	bigWindow := func() []byte {
		var b bytes.Buffer
		b.Write(MarshalDeltaHeader(h2))
		enc, _ := zstd.NewWriter(&b, zstd.WithWindowSize(64<<20))
		rng := rand.New(rand.NewPCG(3, 4))
		junk := make([]byte, 1<<20)
		for i := range junk {
			junk[i] = byte(rng.Uint32())
		}
		enc.Write(junk)
		enc.Close()
		return b.Bytes()
	}()
	tests := []struct {
		name string
		in   []byte
		err  error
	}{
		{"empty", nil, io.ErrUnexpectedEOF},
		{"short header", good[:hs-1], io.ErrUnexpectedEOF},
		{"header only", good[:hs], io.ErrUnexpectedEOF},
		{"no frame end", good[:len(good)-1], io.ErrUnexpectedEOF},
		{"wrong magic", patch(good, 7, 'S'), ErrMagic},
		{"signature stream", sig, ErrMagic},
		{"zstd without header", zstdOnly, ErrMagic},
		{"version 4", fixChecksum(patch(good, 8, 4), hs), ErrVersion},
		{"flags", fixChecksum(patch(good, 11, 1), hs), ErrFlags},
		{"header checksum", patch(good, 64, good[64]^1), ErrChecksum},
		{"device size changed", patch(good, 16, good[16]^1), ErrChecksum},
		{"block size 1 KiB", fixChecksum(patch(good, 12, 0, 4, 0, 0), hs), ErrBlockSize},
		{"not zstd", cat(good[:hs], []byte("plain text, not compressed at all")), ErrCompression},
		{"window too large", bigWindow, ErrCompression},
		{"no records", rawDelta(h2, nil, nil, nil), io.ErrUnexpectedEOF},
		{"no end", rawDelta(h2, rec(RecordData, 0, full), nil, nil), io.ErrUnexpectedEOF},
		{"cut data", rawDelta(h2, rec(RecordData, 0, full[:100]), nil, nil), io.ErrUnexpectedEOF},
		{"cut index", rawDelta(h2, []byte{1, 0, 0}, nil, nil), io.ErrUnexpectedEOF},
		{"cut end", rawDelta(h2, cat(rec(RecordZero, 0, nil), []byte{3, 1, 0, 0}), nil, nil), io.ErrUnexpectedEOF},
		{"unknown type", rawDelta(h2, rec(9, 0, nil), nil, nil), ErrRecord},
		{"type zero", rawDelta(h2, []byte{0}, nil, nil), ErrRecord},
		{"index past end", rawDelta(h2, rec(RecordZero, 3, nil), []uint64{3, 0, 1, 0, 0, 0, 0}, nil), ErrRecord},
		{"huge index", rawDelta(h2, rec(RecordData, 1<<62, nil), nil, nil), ErrRecord},
		{"out of order", rawDelta(h2, cat(rec(RecordZero, 1, nil), rec(RecordZero, 0, nil)), []uint64{3, 0, 2, 0, 0, 0, 0}, nil), ErrRecord},
		{"repeated", rawDelta(h2, cat(rec(RecordZero, 1, nil), rec(RecordData, 1, full)), []uint64{3, 1, 1, 0, 0, 0, 0}, nil), ErrRecord},
		{"short last block is short", rawDelta(h2, rec(RecordData, 2, full), []uint64{3, 1, 0, 0, 0, 0, 0}, nil), ErrRecord},
		{"end blocks", rawDelta(h2, nil, []uint64{2, 0, 0, 0, 0, 0, 0}, nil), ErrCount},
		{"end data count", rawDelta(h2, rec(RecordData, 2, short), []uint64{3, 0, 0, 0, 0, 0, 0}, nil), ErrCount},
		{"end zero count", rawDelta(h2, rec(RecordZero, 2, nil), []uint64{3, 0, 2, 0, 0, 0, 0}, nil), ErrCount},
		{"record after end", rawDelta(h2, nil, []uint64{3, 0, 0, 0, 0, 0, 0}, rec(RecordZero, 0, nil)), ErrTrailingData},
		{"byte after end", rawDelta(h2, nil, []uint64{3, 0, 0, 0, 0, 0, 0}, []byte{0}), ErrTrailingData},
		{"second frame", cat(rawDelta(h2, nil, []uint64{3, 0, 0, 0, 0, 0, 0}, nil), zstdOnly), ErrTrailingData},
		{"garbage after frame", append(bytes.Clone(good), "garbage"...), ErrTrailingData},
		{"zero byte after frame", append(bytes.Clone(good), 0), ErrTrailingData},
		{"skippable frame after frame", cat(good, skippableFrame("not part of the delta")), ErrTrailingData},
		{"empty frame after frame", cat(good, emptyFrame()), ErrTrailingData},
		{"skippable frame before frame", cat(good[:hs], skippableFrame("x"), good[hs:]), ErrCompression},
	}
	// A stream whose end record digest is wrong.
	var bad []byte
	{
		var plain bytes.Buffer
		plain.WriteByte(byte(RecordEnd))
		for _, v := range []uint64{3, 0, 0, 0, 0, 0, 0, 12345} {
			binary.Write(&plain, binary.LittleEndian, v)
		}
		var out bytes.Buffer
		out.Write(MarshalDeltaHeader(h2))
		enc, _ := zstd.NewWriter(&out)
		enc.Write(plain.Bytes())
		enc.Close()
		bad = out.Bytes()
	}
	tests = append(tests, struct {
		name string
		in   []byte
		err  error
	}{"record digest", bad, ErrChecksum})
	_ = hdr
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := readDelta(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Errorf("error %T is not a *ParseError", err)
			}
		})
	}
}

func TestValidRawDelta(t *testing.T) {
	// rawDelta itself must produce acceptable streams, or the table above
	// proves nothing.
	h2 := DeltaHeader{BlockSize: 4096, DeviceSize: 2*4096 + 10}
	b := rawDelta(h2, cat(rec(RecordZero, 0, nil), rec(RecordData, 2, make([]byte, 10))), []uint64{3, 1, 1, 0, 0, 0, 0}, nil)
	if _, recs, _, err := readDelta(b); err != nil || len(recs) != 2 {
		t.Fatalf("recs %d, err %v", len(recs), err)
	}
}

func TestErrorMessages(t *testing.T) {
	_, _, err := readSig([]byte("DOSVOB\x00D\x01\x00"))
	want := `signature stream: bad magic "DOSVOB\x00D": this is a delta stream, not a signature stream`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	_, _, _, err = readDelta([]byte("#!/bin/sh\n"))
	want = `delta stream: bad magic "#!/bin/s" (want "DOSVOB\x00D")`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// TestTruncatedStreams cuts valid streams at every offset: no prefix may
// read as a complete stream.
func TestTruncatedStreams(t *testing.T) {
	_, _, delta := smallDelta(t)
	sig := makeSig(t, SigHeader{BlockSize: 4096, Seed: 9, Base: testBase}, []uint64{1, 2, 3, 4})
	for i := range len(sig) {
		if _, _, err := readSig(sig[:i]); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("signature cut at %d of %d: error %v, want unexpected EOF", i, len(sig), err)
		}
	}
	for i := range len(delta) {
		if _, _, _, err := readDelta(delta[:i]); err == nil {
			t.Errorf("delta cut at %d of %d: no error", i, len(delta))
		}
	}
}

// TestTruncatedLargeDelta cuts a multi-megabyte delta at random offsets.
func TestTruncatedLargeDelta(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	hdr := DeltaHeader{BlockSize: 64 << 10, DeviceSize: 64*(64<<10) - 1}
	var recs []testRec
	for i := uint64(0); i < hdr.Blocks(); i++ {
		switch rng.IntN(3) {
		case 0:
			b := make([]byte, hdr.BlockLen(i))
			for j := range b {
				b[j] = byte(rng.IntN(16)) // compressible but not trivially
			}
			recs = append(recs, testRec{RecordData, i, b})
		case 1:
			recs = append(recs, testRec{RecordZero, i, nil})
		}
	}
	b := makeDelta(t, hdr, recs, End{})
	if _, _, _, err := readDelta(b); err != nil {
		t.Fatal(err)
	}
	cuts := []int{len(b) - 1, len(b) - 4, len(b) - 5, DeltaHeaderSize, DeltaHeaderSize + 1}
	for range 200 {
		cuts = append(cuts, rng.IntN(len(b)))
	}
	for _, c := range cuts {
		if _, _, _, err := readDelta(b[:c]); err == nil {
			t.Errorf("cut at %d of %d: no error", c, len(b))
		}
	}
	for range 100 {
		c := rng.IntN(len(b))
		fb := patch(b, c, b[c]^byte(1<<rng.IntN(8)))
		if _, _, _, err := readDelta(fb); err == nil {
			t.Errorf("bit flipped at %d of %d: no error", c, len(b))
		}
	}
}

// TestFlippedBytes flips every byte of small streams: each must be rejected.
func TestFlippedBytes(t *testing.T) {
	_, _, delta := smallDelta(t)
	sig := makeSig(t, SigHeader{BlockSize: 4096, Seed: 9, Base: testBase}, []uint64{1, 2, 3, 4})
	for i := range sig {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			if _, _, err := readSig(patch(sig, i, sig[i]^x)); err == nil {
				t.Errorf("signature with byte %d ^ %#x: no error", i, x)
			}
		}
	}
	for i := range delta {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			if _, _, _, err := readDelta(patch(delta, i, delta[i]^x)); err == nil {
				t.Errorf("delta with byte %d ^ %#x: no error", i, x)
			}
		}
	}
}

// failingReader returns an I/O error after n bytes.
type failingReader struct {
	r io.Reader
	n int
}

var errDisk = errors.New("disk on fire")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errDisk
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func TestIOErrorsPassThrough(t *testing.T) {
	_, _, delta := smallDelta(t)
	for _, n := range []int{0, 5, DeltaHeaderSize, DeltaHeaderSize + 20, len(delta) - 2} {
		dr, err := NewDeltaReader(&failingReader{bytes.NewReader(delta), n})
		for err == nil {
			_, err = dr.Next()
		}
		var pe *ParseError
		if !errors.Is(err, errDisk) || errors.As(err, &pe) {
			t.Errorf("failing after %d bytes: error %v (%T), want the I/O error unwrapped", n, err, err)
		}
	}
	sig := makeSig(t, SigHeader{BlockSize: 4096, Base: testBase}, []uint64{1, 2, 3, 4})
	for _, n := range []int{0, 5, SigHeaderSize, SigHeaderSize + 9, len(sig) - 2} {
		sr, err := NewSigReader(&failingReader{bytes.NewReader(sig), n})
		for err == nil {
			_, err = sr.Next()
		}
		if !errors.Is(err, errDisk) {
			t.Errorf("failing after %d bytes: error %v, want the I/O error", n, err)
		}
	}
}

func TestBlockMath(t *testing.T) {
	for _, tt := range []struct {
		size   uint64
		bs     uint32
		blocks uint64
		last   int
	}{
		{0, 4096, 0, 0}, {1, 4096, 1, 1}, {4096, 4096, 1, 4096}, {4097, 4096, 2, 1},
		{1 << 40, 1 << 20, 1 << 20, 1 << 20}, {1<<64 - 1, 1 << 24, 1 << 40, 1<<24 - 1},
	} {
		if got := BlockCount(tt.size, tt.bs); got != tt.blocks {
			t.Errorf("BlockCount(%d, %d) = %d, want %d", tt.size, tt.bs, got, tt.blocks)
		}
		if tt.blocks > 0 {
			if got := BlockLen(tt.size, tt.bs, tt.blocks-1); got != tt.last {
				t.Errorf("BlockLen(%d, %d, last) = %d, want %d", tt.size, tt.bs, got, tt.last)
			}
		}
		if got := BlockLen(tt.size, tt.bs, tt.blocks); got != 0 {
			t.Errorf("BlockLen past end = %d", got)
		}
	}
	for _, tt := range []struct {
		n  uint32
		ok bool
	}{{4096, true}, {1 << 24, true}, {2048, false}, {1<<24 + 1, false}, {1 << 25, false}, {6144, false}, {0, false}} {
		if ValidBlockSize(tt.n) != tt.ok {
			t.Errorf("ValidBlockSize(%d) = %v", tt.n, !tt.ok)
		}
	}
}

// skippableFrame is a zstd skippable frame (RFC 8878, section 3.1.2) with
// payload p: a decompressor skips it.
func skippableFrame(p string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x184D2A5A)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
	return append(b, p...)
}

// emptyFrame is a complete zstd frame with no content: a decompressor's
// output does not change.
func emptyFrame() []byte {
	var b bytes.Buffer
	enc, _ := zstd.NewWriter(&b, zstd.WithZeroFrames(true), zstd.WithEncoderCRC(true))
	enc.Close()
	return b.Bytes()
}

// TestExtraFramesAreRealFrames: the frames the reader must refuse after a
// stream are ones the decompressor takes in silently, or the cases above
// prove nothing.
func TestExtraFramesAreRealFrames(t *testing.T) {
	for name, frame := range map[string][]byte{"skippable": skippableFrame("abc"), "empty": emptyFrame()} {
		dec, err := zstd.NewReader(bytes.NewReader(cat(emptyFrame(), frame, frame)))
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(dec)
		dec.Close()
		if err != nil || len(out) != 0 {
			t.Errorf("%s frame: decompressed %q, %v; want nothing and no error", name, out, err)
		}
	}
}
