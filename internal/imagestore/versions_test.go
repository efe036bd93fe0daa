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

func TestVersionsRestoreByteIdentical(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	clock := time.Date(2026, 11, 16, 4, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	// Runs with different changes and sizes; keep 3 versions.
	var devs [][]byte
	dev := device(r, 96*1024+77)
	for run := range 6 {
		switch run {
		case 2:
			dev = append(mutate(r, dev, 3), device(r, 30000)...) // grows
		case 4:
			dev = mutate(r, dev, 10)[:50*1024] // shrinks
		default:
			if run > 0 {
				dev = mutate(r, dev, 8)
			}
		}
		syncTo(t, img, dev, PatchOptions{TxOptions: TxOptions{Keep: 3, Now: now}})
		devs = append(devs, dev)
		clock = clock.Add(4 * time.Hour)
	}
	s, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	m := s.Manifest()
	if len(m.Versions) != 3 {
		t.Fatalf("kept %d versions, want 3", len(m.Versions))
	}
	ents, _ := os.ReadDir(filepath.Join(StateDir(img), versionsDir))
	if len(ents) != 3 {
		t.Fatalf("%d files in versions/, want 3 (pruned ones deleted)", len(ents))
	}
	for k, v := range m.Versions {
		want := devs[len(devs)-2-k]
		if wantName := time.Date(2026, 11, 16, 4, 0, 0, 0, time.UTC).Add(time.Duration(len(devs)-2-k) * 4 * time.Hour).Format("20060102T150405Z"); v.Name != wantName {
			t.Errorf("version %d is named %s, want %s", k, v.Name, wantName)
		}
		out := restoreAndCheck(t, s, v, filepath.Join(dir, fmt.Sprintf("restored-%d.img", k)), want)
		if _, err := s.RestoreVersion(context.Background(), v.Name, out); !errors.Is(err, ErrExists) {
			t.Fatalf("restore over an existing file: got %v, want ErrExists", err)
		}
	}
	mustEqual(t, img, devs[len(devs)-1])
	if _, err := s.RestoreVersion(context.Background(), "20200101T000000Z", filepath.Join(dir, "x")); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("unknown version: got %v", err)
	}
	// A damaged and a missing version file: clear errors, no output file.
	vdir := filepath.Join(StateDir(img), versionsDir)
	f, _ := os.OpenFile(filepath.Join(vdir, m.Versions[1].File), os.O_RDWR, 0)
	f.WriteAt([]byte("garbage!"), 100)
	f.Close()
	out := filepath.Join(dir, "bad.img")
	if _, err := s.RestoreVersion(context.Background(), m.Versions[2].Name, out); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged version file: got %v, want ErrCorrupt", err)
	} else {
		t.Logf("damaged: %v", err)
	}
	if exists(out) || exists(out+".dosvob-tmp") {
		t.Fatal("a failed restore left a file behind")
	}
	os.Remove(filepath.Join(vdir, m.Versions[0].File))
	if _, err := s.RestoreVersion(context.Background(), m.Versions[0].Name, out); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("missing version file: got %v, want ErrCorrupt", err)
	} else {
		t.Logf("missing: %v", err)
	}
	s.Close()
}

// restoreAndCheck restores kept version v of s into out and fails the test
// unless it holds want. It returns out.
func restoreAndCheck(t *testing.T, s *Store, v Version, out string, want []byte) string {
	t.Helper()
	if _, err := s.RestoreVersion(context.Background(), v.Name, out); err != nil {
		t.Fatalf("restore %s (format %d): %v", v.Name, v.FormatVersion, err)
	}
	mustEqual(t, out, want)
	return out
}

// TestVersionsSurviveLostManifest: with the manifest gone (lost, or moved
// away by hand), opening the image must not delete the kept versions as
// unlisted: they are old backups. With the manifest back, they restore.
func TestVersionsSurviveLostManifest(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	devs := backups(t, rand.New(rand.NewPCG(31, 32)), img, 40*1024, 3, 5)
	manifest := filepath.Join(StateDir(img), manifestName)
	aside := filepath.Join(dir, "manifest.json")
	if err := os.Rename(manifest, aside); err != nil {
		t.Fatal(err)
	}
	for _, writer := range []bool{false, true} {
		s, err := Open(img, Options{Writer: writer, Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	if _, err := Verify(context.Background(), img, nil, t.Logf); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("scrub without a manifest: got %v, want ErrNotOurs", err)
	}
	if _, err := patch(t, img, nil, PatchOptions{}); err == nil {
		t.Fatal("patch of an image without a manifest went through")
	}
	ents, _ := os.ReadDir(filepath.Join(StateDir(img), versionsDir))
	if len(ents) != 2 {
		t.Fatalf("%d version files left, want 2", len(ents))
	}
	if err := os.Rename(aside, manifest); err != nil {
		t.Fatal(err)
	}
	s, err := Open(img, Options{Writer: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for k, v := range s.Manifest().Versions {
		restoreAndCheck(t, s, v, filepath.Join(dir, fmt.Sprintf("v%d.img", k)), devs[1-k])
	}
}

// backups makes n backups into img, each of a device of size bytes that
// differs from the one before in a few blocks, keeping keep versions, and
// returns the devices in order.
func backups(t *testing.T, r *rand.Rand, img string, size, n, keep int) [][]byte {
	t.Helper()
	dev := device(r, size)
	var devs [][]byte
	for range n {
		syncTo(t, img, dev, PatchOptions{TxOptions: TxOptions{Keep: keep}})
		devs = append(devs, dev)
		dev = mutate(r, dev, 4)
	}
	return devs
}
