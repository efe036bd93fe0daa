package imagestore

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// writeTestJournal makes a journal with a few entries and returns its bytes.
func writeTestJournal(t testing.TB) []byte {
	t.Helper()
	name := filepath.Join(t.TempDir(), "journal")
	w, err := createJournal(newOSFS(), name, journalHeader{BlockSize: 4096, OldSize: 10000, NewSize: 20000, OldGen: 1, NewGen: 2})
	if err != nil {
		t.Fatal(err)
	}
	w.add(journalEntry{index: 0, n: 4096, data: bytes.Repeat([]byte{1}, 4096)})
	w.add(journalEntry{zero: true, index: 1, n: 4096})
	w.add(journalEntry{index: 2, n: 1808, data: bytes.Repeat([]byte{3}, 1808)})
	if err := w.sync(); err != nil {
		t.Fatal(err)
	}
	w.close()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJournalTornTail(t *testing.T) {
	b := writeTestJournal(t)
	// Cut at every offset: the reader returns a prefix of the entries and
	// never an entry that was not completely written.
	for cut := 0; cut <= len(b); cut++ {
		jr, err := openJournal(bytes.NewReader(b[:cut]))
		if err != nil {
			continue // header incomplete: the run never touched the image
		}
		n := 0
		for {
			e, err := jr.next()
			if err == io.EOF {
				break
			}
			if e.index != int64(n) {
				t.Fatalf("cut %d: entry %d has index %d", cut, n, e.index)
			}
			n++
		}
		if cut == len(b) && n != 3 {
			t.Fatalf("whole journal: %d entries, want 3", n)
		}
	}
}

// FuzzJournal feeds arbitrary bytes to the journal reader: it must never
// panic, and every entry it returns must be within its limits.
func FuzzJournal(f *testing.F) {
	f.Add(writeTestJournal(f))
	f.Add([]byte(journalMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		jr, err := openJournal(bytes.NewReader(b))
		if err != nil {
			return
		}
		for {
			e, err := jr.next()
			if err == io.EOF {
				return
			}
			if e.n > jr.h.BlockSize || e.index < 0 || (!e.zero && len(e.data) != e.n) {
				t.Fatalf("bad entry %+v", e)
			}
		}
	})
}
