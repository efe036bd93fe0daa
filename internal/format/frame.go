package format

import (
	"encoding/binary"
	"io"
)

// zstd frame layout (RFC 8878, section 3.1.1), as far as oneFrame needs it.
const (
	zstdMagic          = 0xFD2FB528
	skippableMagicMask = 0xFFFFFFF0
	skippableMagic     = 0x184D2A50
)

// oneFrame passes exactly one zstd frame from r to the decompressor and then
// reports io.EOF, leaving whatever follows the frame unread in r.
//
// The decompressor reads a sequence of frames and skips skippable frames;
// a frame with no content adds nothing to its output. Either, appended to a
// complete delta stream, would pass unnoticed. With oneFrame in between,
// the reader sees the end of the delta's frame as the end of the
// decompressed data and then looks at r itself for anything after it.
//
// It parses only the frame's structure: the frame header's length and each
// block header's type and size. Anything it does not recognise (a wrong
// magic, a reserved block type) it passes on unchanged, for the
// decompressor to reject. A skippable frame in place of the delta's frame
// it rejects itself (the decompressor would skip it).
type oneFrame struct {
	r        io.Reader
	hdr      [18]byte // the frame header or a block header being passed on
	pend     []byte   // of hdr: read, not yet passed on
	pendErr  error    // returned once pend is passed on (a short read)
	left     int64    // bytes of a block's content or of the checksum still to pass
	state    frameState
	checksum bool // the frame ends with a 4-byte content checksum
	// skippable is set when the stream holds a skippable frame where the
	// delta's frame belongs.
	skippable bool
}

type frameState uint8

const (
	inFrameHeader frameState = iota
	inBlockHeader
	inChecksum
	passThrough // something oneFrame does not parse: the decompressor judges it
	frameDone
)

// errSkippable stops the decompressor at a skippable frame; oneFrame.skippable
// says why.
var errSkippable = deltaErr(ErrCompression, "a skippable zstd frame where the delta's frame belongs")

func (f *oneFrame) Read(p []byte) (int, error) {
	for {
		if len(f.pend) > 0 {
			n := copy(p, f.pend)
			f.pend = f.pend[n:]
			return n, nil
		}
		if f.pendErr != nil {
			return 0, f.pendErr
		}
		if f.left > 0 || f.state == passThrough {
			if f.state != passThrough && int64(len(p)) > f.left {
				p = p[:f.left]
			}
			n, err := f.r.Read(p)
			f.left -= int64(n)
			return n, err
		}
		switch f.state {
		case inFrameHeader:
			if !f.readHeader(5) {
				continue
			}
			magic := binary.LittleEndian.Uint32(f.hdr[:4])
			if magic&skippableMagicMask == skippableMagic {
				f.skippable = true
				f.pend, f.pendErr = nil, errSkippable
				continue
			}
			if magic != zstdMagic {
				f.state = passThrough
				continue
			}
			fhd := f.hdr[4]
			f.checksum = fhd&0x04 != 0
			single := fhd&0x20 != 0
			n := [4]int{0, 1, 2, 4}[fhd&0x03] // dictionary id
			if !single {
				n++ // window descriptor
			}
			switch fcs := fhd >> 6; {
			case fcs == 0 && single:
				n++
			case fcs > 0:
				n += 1 << fcs // 2, 4 or 8 bytes of content size
			}
			f.state = inBlockHeader
			f.readMore(5, n)
		case inBlockHeader:
			if !f.readHeader(3) {
				continue
			}
			h := uint32(f.hdr[0]) | uint32(f.hdr[1])<<8 | uint32(f.hdr[2])<<16
			switch typ := h >> 1 & 3; typ {
			case 0, 2: // raw, compressed: the block size in bytes follow
				f.left = int64(h >> 3)
			case 1: // RLE: one byte follows
				f.left = 1
			default: // reserved
				f.state = passThrough
				continue
			}
			if h&1 != 0 { // the last block
				f.state = inChecksum
			}
		case inChecksum:
			f.state = frameDone
			if f.checksum {
				f.left = 4
			}
		case frameDone:
			return 0, io.EOF
		}
	}
}

// readHeader reads the first n bytes of a header into f.hdr and queues
// them. It reports false on a short read: what was read is queued, and the
// decompressor gets the underlying error after it.
func (f *oneFrame) readHeader(n int) bool {
	f.readMore(0, n)
	return f.pendErr == nil
}

// readMore reads n more header bytes after the first off ones and queues
// all off+n.
func (f *oneFrame) readMore(off, n int) {
	got, err := io.ReadFull(f.r, f.hdr[off:off+n])
	f.pend = f.hdr[:off+got]
	if err == io.ErrUnexpectedEOF {
		err = io.EOF // the decompressor reports the truncation itself
	}
	f.pendErr = err
}
