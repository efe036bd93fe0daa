package imagestore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/format"
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

// TestJournalBadHeader: a journal whose header does not check out is
// deleted as a run that never touched the image only when the image still
// has its manifest's digest, or (changed: the image was changed outside
// dosvob before the run) the digest its signing run found in it. When
// blocks were written in place before the header was damaged, the image may
// hold part of a run: recovery reports damage (ErrStateDamaged, exit 5) and
// leaves the image and the journal as they are.
func TestJournalBadHeader(t *testing.T) {
	for _, tc := range []struct{ wrote, changed bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		wrote := tc.wrote
		t.Run(fmt.Sprintf("wrote=%v,changed=%v", wrote, tc.changed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(17, 18))
			img := filepath.Join(t.TempDir(), "vol.img")
			dev := device(r, 256*1024)
			syncTo(t, img, dev, PatchOptions{})
			if tc.changed {
				writeFileAt(t, img, 1000, []byte("written outside dosvob"))
				dev, _ = os.ReadFile(img)
			}
			next := mutate(r, dev, 20)
			d, _ := makeDelta(t, img, next, testBS)
			defer func(b int) { batchBytes = b }(batchBytes)
			batchBytes = 2 * testBS
			// A run that begins and, if wrote, writes blocks in place,
			// and then dies: no Abort, its files and locks just closed.
			s, err := Open(img, Options{Writer: true, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			dr, err := format.NewDeltaReader(bytes.NewReader(d))
			if err != nil {
				t.Fatal(err)
			}
			tx, err := s.Begin(dr.Header(), TxOptions{Keep: -1})
			if err != nil {
				t.Fatal(err)
			}
			for wrote {
				rec, err := dr.Next()
				if err != nil {
					t.Fatal(err)
				}
				switch rec.Type {
				case format.RecordData:
					err = tx.WriteBlock(rec.Index, rec.Bytes)
				case format.RecordZero:
					err = tx.ZeroBlock(rec.Index)
				case format.RecordHashes:
					err = tx.KeepHashes(rec.Index, rec.Hashes)
				}
				if err != nil {
					t.Fatal(err)
				}
				if b, _ := os.ReadFile(img); !bytes.Equal(b, dev) {
					break
				}
			}
			tx.closeFiles()
			s.Close()
			half, _ := os.ReadFile(img)
			// The header's JSON damaged.
			journal := filepath.Join(img+".dosvob", "journal")
			f, err := os.OpenFile(journal, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte{'#'}, 14)
			f.Close()

			s, err = Open(img, Options{Logf: t.Logf})
			if !wrote {
				if err != nil {
					t.Fatalf("open after a torn header of a run that wrote nothing: %v", err)
				}
				s.Close()
				mustEqual(t, img, dev)
				if exists(journal) {
					t.Fatal("the journal is left")
				}
				return
			}
			if err == nil {
				s.Close()
				t.Fatal("a half-written image under a journal with a bad header was taken as untouched")
			}
			if !errors.Is(err, ErrStateDamaged) || !strings.Contains(err.Error(), "journal") {
				t.Fatalf("open: %v, want the journal reported damaged", err)
			}
			mustEqual(t, img, half)
			if !exists(journal) {
				t.Fatal("the damaged journal was deleted")
			}
			if h := DamagedHint(err, img); !strings.Contains(h, journal) || !strings.Contains(h, "--force") {
				t.Fatalf("hint: %s", h)
			}
		})
	}
}
