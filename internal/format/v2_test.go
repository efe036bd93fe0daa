package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// hashesRec encodes a Hashes record for blocks idx, idx+1, ...
func hashesRec(idx uint64, hs ...uint64) []byte {
	b := []byte{byte(RecordHashes)}
	b = binary.LittleEndian.AppendUint64(b, idx)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(hs)))
	for _, h := range hs {
		b = binary.LittleEndian.AppendUint64(b, h)
	}
	return b
}

func hashBytes(hs ...uint64) []byte {
	var b []byte
	for _, h := range hs {
		b = binary.LittleEndian.AppendUint64(b, h)
	}
	return b
}

func TestSigRoundTripV2(t *testing.T) {
	hdr := SigHeader{Version: 2, BlockSize: 4096, Seed: 7, NextSeed: 0xfeedface12345678, Base: testBase}
	b := makeSig(t, hdr, []uint64{1, 2, 3, 4})
	if want := SigHeaderSizeV2 + 4*8 + SigTrailerSize; len(b) != want {
		t.Fatalf("stream is %d bytes, want %d", len(b), want)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != 2 {
		t.Fatalf("version field %d", v)
	}
	gh, hs, err := readSig(b)
	if err != nil {
		t.Fatal(err)
	}
	if gh != hdr || len(hs) != 4 {
		t.Fatalf("header %+v (%d hashes), want %+v", gh, len(hs), hdr)
	}
	if _, err := NewSigWriter(io.Discard, SigHeader{Version: 1, BlockSize: 4096, NextSeed: 1}); err == nil {
		t.Error("a version 1 signature with a next seed was accepted")
	}
	if _, err := NewSigWriter(io.Discard, SigHeader{Version: Version + 1, BlockSize: 4096}); err == nil {
		t.Errorf("a version %d signature was written", Version+1)
	}
}

// v2Delta is a version 2 delta over a device of 1100 blocks against a
// signature of 1090: a long unchanged run (split at 512 hashes), changed,
// zero and grown blocks.
func v2Delta(t testing.TB) (DeltaHeader, []testRec, []byte) {
	hdr := DeltaHeader{Version: 2, BlockSize: 4096, DeviceSize: 1100*4096 - 5, Seed: 1, NextSeed: 2,
		Base: Base{ImageID: testBase.ImageID, Generation: 9, Size: 1090 * 4096}}
	var long []uint64
	for i := range uint64(1000) {
		long = append(long, i*0x9e3779b97f4a7c15+1)
	}
	blk := bytes.Repeat([]byte{0x5a}, 4096)
	recs := []testRec{
		{RecordData, 0, blk},
		{RecordHashes, 1, hashBytes(long[:512]...)},
		{RecordHashes, 513, hashBytes(long[512:]...)},
		{RecordZero, 1001, nil},
		{RecordHashes, 1002, hashBytes(long[:88]...)},
		{RecordData, 1090, blk},
		{RecordZero, 1091, nil},
		{RecordHashes, 1092, nil}, // placeholder, removed below
	}
	recs = recs[:len(recs)-1]
	for i := uint64(1092); i < 1100; i++ {
		if i == 1099 {
			recs = append(recs, testRec{RecordData, i, blk[:4096-5]})
		} else {
			recs = append(recs, testRec{RecordZero, i, nil})
		}
	}
	return hdr, recs, makeDelta(t, hdr, recs, End{BytesRead: hdr.DeviceSize, SigDigest: 3, BlockDigest: 4, DeviceDigest: 5, NextDigest: 6})
}

func TestDeltaRoundTripV2(t *testing.T) {
	hdr, recs, b := v2Delta(t)
	gh, got, e, err := readDelta(b)
	if err != nil {
		t.Fatal(err)
	}
	if gh != hdr {
		t.Fatalf("header %+v, want %+v", gh, hdr)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d records, want %d", len(got), len(recs))
	}
	for i := range recs {
		if got[i].typ != recs[i].typ || got[i].index != recs[i].index || !bytes.Equal(got[i].data, recs[i].data) {
			t.Errorf("record %d: %v %d (%d bytes), want %v %d (%d bytes)", i, got[i].typ, got[i].index, len(got[i].data), recs[i].typ, recs[i].index, len(recs[i].data))
		}
	}
	if e.NextDigest != 6 || e.Blocks != 1100 || e.DataRecords != 3 || e.ZeroRecords != 9 {
		t.Errorf("end %+v", e)
	}
	// The writer enforces the rules it shares with the reader.
	var buf bytes.Buffer
	dw, _ := NewDeltaWriter(&buf, hdr, DeltaOptions{})
	if err := dw.Data(1, blk4k()); err == nil {
		t.Error("version 2 writer accepted a gap before block 1")
	}
	dw, _ = NewDeltaWriter(&buf, hdr, DeltaOptions{})
	dw.Unchanged(0, 1)
	if _, err := dw.Close(End{}); err == nil {
		t.Error("version 2 writer closed a stream that covers 1 of 1100 blocks")
	}
	dw, _ = NewDeltaWriter(&buf, DeltaHeader{Version: 2, BlockSize: 4096, DeviceSize: 8192, Base: Base{Size: 4096}}, DeltaOptions{})
	dw.Unchanged(0, 1)
	if err := dw.Unchanged(1, 2); err == nil {
		t.Error("a block past the signed content was accepted as unchanged")
	}
}

func blk4k() []byte { return make([]byte, 4096) }

func TestDeltaReaderErrorsV2(t *testing.T) {
	h := DeltaHeader{Version: 2, BlockSize: 4096, DeviceSize: 3 * 4096, NextSeed: 9, Base: Base{Size: 2 * 4096}}
	h1 := h
	h1.Version, h1.NextSeed = 1, 0
	full := make([]byte, 4096)
	end := func(data, zero uint64) []uint64 { return []uint64{3, data, zero, 0, 0, 0, 0, 0} }
	max := make([]uint64, 512)
	long := DeltaHeader{Version: 2, BlockSize: 4096, DeviceSize: 1024 * 4096, Base: Base{Size: 1024 * 4096}}
	tests := []struct {
		name string
		in   []byte
		err  error
	}{
		{"good", rawDelta(h, cat(hashesRec(0, 1, 2), rec(RecordZero, 2, nil)), end(0, 1), nil), nil},
		{"gap before data", rawDelta(h, cat(rec(RecordData, 1, full), rec(RecordZero, 2, nil)), end(1, 1), nil), ErrRecord},
		{"gap before hashes", rawDelta(h, cat(hashesRec(1, 2), rec(RecordZero, 2, nil)), end(0, 1), nil), ErrRecord},
		{"gap at the end", rawDelta(h, hashesRec(0, 1, 2), end(0, 0), nil), ErrCount},
		{"hashes in version 1", rawDelta(h1, cat(hashesRec(0, 1, 2), rec(RecordZero, 2, nil)), end(0, 1)[:7], nil), ErrRecord},
		{"no hashes", rawDelta(h, cat(hashesRec(0), rec(RecordData, 0, full)), end(1, 0), nil), ErrRecord},
		{"hashes past the signed content", rawDelta(h, hashesRec(0, 1, 2, 3), end(0, 0), nil), ErrRecord},
		{"too many hashes", rawDelta(long, cat(hashesRec(0, append(max, 1)...)), end(0, 0), nil), ErrRecord},
		{"split run", rawDelta(h, cat(hashesRec(0, 1), hashesRec(1, 2), rec(RecordZero, 2, nil)), end(0, 1), nil), ErrRecord},
		{"truncated hashes", rawDelta(h, hashesRec(0, 1, 2)[:20], nil, nil), io.ErrUnexpectedEOF},
		{"version 1 end record", rawDelta(h, cat(hashesRec(0, 1, 2), rec(RecordZero, 2, nil)), end(0, 1)[:7], nil), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := readDelta(tt.in)
			if tt.err == nil {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				return
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
		})
	}
}

// TestTruncatedV2 cuts a version 2 stream at every offset: each cut is
// rejected.
func TestTruncatedV2(t *testing.T) {
	h := DeltaHeader{Version: 2, BlockSize: 4096, DeviceSize: 5 * 4096, Seed: 3, NextSeed: 4, Base: Base{Size: 4 * 4096}}
	b := makeDelta(t, h, []testRec{{RecordHashes, 0, hashBytes(1, 2)}, {RecordData, 2, bytes.Repeat([]byte("x"), 4096)}, {RecordHashes, 3, hashBytes(3)}, {RecordZero, 4, nil}}, End{NextDigest: 1})
	if _, _, _, err := readDelta(b); err != nil {
		t.Fatal(err)
	}
	for n := range len(b) {
		if _, _, _, err := readDelta(b[:n]); err == nil {
			t.Fatalf("stream cut at %d of %d bytes accepted", n, len(b))
		}
	}
	sig := makeSig(t, SigHeader{Version: 2, BlockSize: 4096, Seed: 1, NextSeed: 2, Base: Base{Size: 3 * 4096}}, []uint64{1, 2, 3})
	for n := range len(sig) {
		if _, _, err := readSig(sig[:n]); err == nil {
			t.Fatalf("signature cut at %d of %d bytes accepted", n, len(sig))
		}
	}
}
