package imagestore

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// The undo journal. Before a run overwrites, punches or cuts away any byte
// of an existing image, the old contents of that block are appended to the
// journal and the journal is fsynced. If the run does not commit, replaying
// the journal (in reverse) and truncating to the old size gives back the old
// image exactly. docs/CRASH-SAFETY.md has the full argument.
//
// Layout (all integers little-endian):
//
//	header:  "DOSVOBJ1" | u32 n | n bytes JSON journalHeader | u64 xxhash64(JSON)
//	entry:   u8 kind | u64 block index | u32 length | payload | u64 xxhash64(kind..payload)
//
// kind 'B' carries the block's old bytes (length of them); kind 'Z' says the
// old bytes were all zero (no payload; length is the old length). After a
// crash, a header that does not check out means no image byte was touched
// yet (the header is fsynced before the first write), but later damage looks
// the same: recovery deletes it only when the image has its manifest's
// digest (Store.tornJournal). An entry that does not check out ends the
// journal (entries are fsynced before the blocks they cover are written).

const journalMagic = "DOSVOBJ1"

// journalHeader describes the run a journal belongs to.
type journalHeader struct {
	Version   int    `json:"version"`
	BlockSize int    `json:"block_size"`
	OldID     ID     `json:"old_image_id"`
	OldGen    uint64 `json:"old_generation"`
	OldSize   int64  `json:"old_size"`
	NewID     ID     `json:"new_image_id"`
	NewGen    uint64 `json:"new_generation"`
	NewSize   int64  `json:"new_size"`
}

const journalVersion = 1

type journalEntry struct {
	zero  bool
	index int64
	n     int    // old length of the block
	data  []byte // nil for zero entries
}

// journalWriter appends entries to a journal file.
type journalWriter struct {
	f   file
	off int64
	buf []byte
}

func createJournal(fs fsys, name string, h journalHeader) (*journalWriter, error) {
	f, err := fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		return nil, err
	}
	h.Version = journalVersion
	js, err := json.Marshal(h)
	if err != nil {
		f.Close()
		return nil, err
	}
	b := make([]byte, 0, len(journalMagic)+4+len(js)+8)
	b = append(b, journalMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(js)))
	b = append(b, js...)
	b = binary.LittleEndian.AppendUint64(b, xxhash.Sum64(js))
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return nil, err
	}
	return &journalWriter{f: f, off: int64(len(b))}, nil
}

// add queues an entry; sync writes the queued entries and fsyncs.
func (w *journalWriter) add(e journalEntry) {
	start := len(w.buf)
	kind := byte('B')
	if e.zero {
		kind = 'Z'
	}
	w.buf = append(w.buf, kind)
	w.buf = binary.LittleEndian.AppendUint64(w.buf, uint64(e.index))
	w.buf = binary.LittleEndian.AppendUint32(w.buf, uint32(e.n))
	if !e.zero {
		w.buf = append(w.buf, e.data...)
	}
	w.buf = binary.LittleEndian.AppendUint64(w.buf, xxhash.Sum64(w.buf[start:]))
}

func (w *journalWriter) sync() error {
	if len(w.buf) > 0 {
		if _, err := w.f.WriteAt(w.buf, w.off); err != nil {
			return fmt.Errorf("write journal: %w", err)
		}
		w.off += int64(len(w.buf))
		w.buf = w.buf[:0]
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync journal: %w", err)
	}
	return nil
}

func (w *journalWriter) close() error { return w.f.Close() }

// errNoJournal: the journal's header is missing or torn: after a crash, the
// run it belongs to never touched the image (see tornJournal).
var errNoJournal = errors.New("journal header incomplete")

// journalReader reads a journal back.
type journalReader struct {
	r   io.ReaderAt
	off int64
	h   journalHeader
	max int // largest payload accepted
}

func openJournal(r io.ReaderAt) (*journalReader, error) {
	var pre [12]byte
	if _, err := r.ReadAt(pre[:], 0); err != nil {
		return nil, errNoJournal
	}
	if string(pre[:8]) != journalMagic {
		return nil, errNoJournal
	}
	n := binary.LittleEndian.Uint32(pre[8:])
	if n > 1<<16 {
		return nil, errNoJournal
	}
	b := make([]byte, int(n)+8)
	if _, err := r.ReadAt(b, 12); err != nil {
		return nil, errNoJournal
	}
	js := b[:n]
	if xxhash.Sum64(js) != binary.LittleEndian.Uint64(b[n:]) {
		return nil, errNoJournal
	}
	jr := &journalReader{r: r, off: 12 + int64(n) + 8}
	if err := json.Unmarshal(js, &jr.h); err != nil {
		return nil, errNoJournal
	}
	if jr.h.Version != journalVersion {
		return nil, fmt.Errorf("journal version %d: %w", jr.h.Version, ErrUnknownVersion)
	}
	if jr.h.BlockSize <= 0 || jr.h.BlockSize > 1<<30 {
		return nil, errNoJournal
	}
	jr.max = jr.h.BlockSize
	return jr, nil
}

// next returns the next valid entry, or io.EOF at the end of the journal or
// at the first entry that does not check out (a torn tail).
func (jr *journalReader) next() (journalEntry, error) {
	var hd [13]byte
	if _, err := jr.r.ReadAt(hd[:], jr.off); err != nil {
		return journalEntry{}, io.EOF
	}
	kind := hd[0]
	e := journalEntry{
		zero:  kind == 'Z',
		index: int64(binary.LittleEndian.Uint64(hd[1:])),
		n:     int(binary.LittleEndian.Uint32(hd[9:])),
	}
	if (kind != 'B' && kind != 'Z') || e.n > jr.max || e.index < 0 {
		return journalEntry{}, io.EOF
	}
	plen := 0
	if !e.zero {
		plen = e.n
	}
	rest := make([]byte, plen+8)
	if _, err := jr.r.ReadAt(rest, jr.off+13); err != nil {
		return journalEntry{}, io.EOF
	}
	d := xxhash.New()
	d.Write(hd[:])
	d.Write(rest[:plen])
	if d.Sum64() != binary.LittleEndian.Uint64(rest[plen:]) {
		return journalEntry{}, io.EOF
	}
	if !e.zero {
		e.data = rest[:plen]
	}
	jr.off += 13 + int64(plen) + 8
	return e, nil
}

// entryRef is where one entry lies in the journal, for replay in reverse
// without holding payloads in memory.
type entryRef struct {
	off   int64
	index int64
	zero  bool
}

// firstEntries reads the journal from jr's position and returns, in block
// order, where the first entry of each journaled block lies: the one that
// holds the block's bytes from before the run.
func firstEntries(jr *journalReader) []entryRef {
	var refs []entryRef
	for {
		off := jr.off
		e, err := jr.next()
		if err == io.EOF {
			break
		}
		refs = append(refs, entryRef{off: off, index: e.index, zero: e.zero})
	}
	slices.SortStableFunc(refs, func(a, b entryRef) int { return cmp.Compare(a.index, b.index) })
	return slices.CompactFunc(refs, func(a, b entryRef) bool { return a.index == b.index })
}

// rollback undoes a run on img from the journal: the file gets its old size
// back, and every journaled block its old contents (from the first entry of
// the block, which holds the bytes from before the run); then img is
// fsynced. What frees space comes first, so that a rollback on a full disk
// goes through: cutting away what the run appended, then punching the holes
// back, and only then writing the old data back. It is idempotent: a crash
// during rollback is fixed by running it again.
func rollback(jr *journalReader, img file) (blocks int, err error) {
	refs := firstEntries(jr)
	if err := img.Truncate(jr.h.OldSize); err != nil {
		return 0, err
	}
	bs := int64(jr.h.BlockSize)
	for _, zero := range []bool{true, false} {
		for _, r := range refs {
			if r.zero != zero {
				continue
			}
			jr.off = r.off
			e, err := jr.next()
			if err != nil || e.index != r.index {
				return blocks, fmt.Errorf("journal changed under recovery")
			}
			off := e.index * bs
			if e.zero {
				err = img.Punch(off, int64(e.n))
			} else {
				_, err = img.WriteAt(e.data, off)
			}
			if err != nil {
				return blocks, err
			}
			blocks++
		}
	}
	return blocks, img.Sync()
}
