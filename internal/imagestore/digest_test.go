package imagestore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDigestAcrossFormatVersions: an image backed up with version 2
// streams and then with version 3 streams records, in its manifest and in
// each kept version, the format version whose DeviceDigest it holds; the
// scrub and the restore of every version, whichever format made it, check
// against the right digest.
func TestDigestAcrossFormatVersions(t *testing.T) {
	defer func(v uint16) { testStreamVersion = v }(testStreamVersion)
	r := rand.New(rand.NewPCG(21, 22))
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	clock := time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)
	opts := PatchOptions{TxOptions: TxOptions{Keep: 4, Now: func() time.Time { return clock }}}
	dev := device(r, 80*1024+333)
	var devs [][]byte
	for run, version := range []uint16{2, 2, 3, 3} {
		testStreamVersion = version
		if run > 0 {
			dev = mutate(r, dev, 5)
		}
		syncTo(t, img, dev, opts)
		devs = append(devs, dev)
		clock = clock.Add(4 * time.Hour)

		s, err := Open(img, Options{})
		if err != nil {
			t.Fatal(err)
		}
		m := s.Manifest()
		s.Close()
		if m.FormatVersion != int(version) {
			t.Fatalf("run %d (version %d): manifest format_version %d", run, version, m.FormatVersion)
		}
		if want := deviceDigest(version, testBS, dev); uint64(m.DeviceDigest) != want {
			t.Fatalf("run %d (version %d): manifest digest %s, want %s", run, version, m.DeviceDigest, Digest(want))
		}
		if rep, err := Verify(context.Background(), img, nil, t.Logf); err != nil || !rep.Intact() {
			t.Fatalf("run %d (version %d): scrub of an intact image: %v %+v", run, version, err, rep)
		}
	}
	if deviceDigest(2, testBS, dev) == deviceDigest(3, testBS, dev) {
		t.Fatal("the version 2 and 3 digests agree: the test cannot tell them apart")
	}

	s, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	m := s.Manifest()
	if len(m.Versions) != 3 {
		t.Fatalf("kept %d versions, want 3", len(m.Versions))
	}
	for k, v := range m.Versions {
		made := devs[len(devs)-2-k]
		wantVersion := []int{3, 2, 2}[k] // newest first: made by runs 2, 1, 0
		if v.FormatVersion != wantVersion || v.BlockSize != testBS {
			t.Errorf("version %s records format %d, block size %d; want %d, %d", v.Name, v.FormatVersion, v.BlockSize, wantVersion, testBS)
		}
		restoreAndCheck(t, s, v, filepath.Join(dir, fmt.Sprintf("restored-%d.img", k)), made)
	}
	s.Close()

	// Without the per-block hashes the scrub has only the digest, and the
	// version 3 digest alone finds a flipped byte.
	s, _ = Open(img, Options{})
	hashes := s.join(s.Manifest().Hashes)
	s.Close()
	if err := os.Remove(hashes); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	b := []byte{0}
	f.ReadAt(b, 50_000)
	b[0] ^= 1
	f.WriteAt(b, 50_000)
	f.Close()
	rep, err := Verify(context.Background(), img, nil, t.Logf)
	if !errors.Is(err, ErrCorrupt) || rep == nil || rep.PerBlock {
		t.Fatalf("flipped byte, no per-block hashes: got %v (report %+v), want ErrCorrupt from the digest alone", err, rep)
	}
}
