package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeFileAt writes b into the file name at off, as a program other than
// dosvob would.
func writeFileAt(t testing.TB, name string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// putBack restores the kept version called name of img into a file and
// moves that over img, as a user who rolls a backup back by hand does.
func putBack(t testing.TB, img, name string) {
	t.Helper()
	s, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	out := img + ".put-back"
	_, err = s.RestoreVersion(context.Background(), name, out)
	s.Close()
	if err != nil {
		t.Fatalf("restore %s to put it back: %v", name, err)
	}
	if err := os.Rename(out, img); err != nil {
		t.Fatal(err)
	}
}

// restoreWant restores the version called name of img and checks that it
// holds want.
func restoreWant(t testing.TB, img, name string, want []byte) {
	t.Helper()
	s, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := filepath.Join(filepath.Dir(img), "restored-"+name)
	defer os.Remove(out)
	if _, err := s.RestoreVersion(context.Background(), name, out); err != nil {
		t.Fatalf("restore %s: %v", name, err)
	}
	mustEqual(t, out, want)
}

// restoreLost checks that restoring the version called name of img fails
// with ErrVersionLost (or ErrImageChanged with changed) before it applies
// anything, and writes no file.
func restoreLost(t testing.TB, img, name string, changed bool) error {
	t.Helper()
	s, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := filepath.Join(filepath.Dir(img), "lost-"+name)
	_, err = s.RestoreVersion(context.Background(), name, out)
	want := ErrVersionLost
	if changed {
		want = ErrImageChanged
	}
	if !errors.Is(err, want) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore %s: got %v, want %v", name, err, want)
	}
	if exists(out) || exists(out+".dosvob-tmp") {
		t.Fatalf("restore %s left a file", name)
	}
	return err
}

// backupsAt backs devs up into img one after the other with keep 5, as
// the backups of 00:00, 04:00, 08:00 ... of 2026-11-16.
func backupsAt(t *testing.T, img string, devs [][]byte) {
	t.Helper()
	for i, d := range devs {
		snap := time.Date(2026, 11, 16, 4*i, 0, 0, 0, time.UTC)
		syncTo(t, img, d, PatchOptions{TxOptions: TxOptions{Keep: 5, Source: Source{SnapshotTime: snap}}})
	}
}

// TestOutsideVersions: what a run does with the kept versions when the
// image it signed by reading is not the last backup. Written into, it
// keeps what it found (labelled so) and marks every older version; with a
// kept version put back, it keeps that as the version it is and marks only
// the newer ones; with only its mtime changed, it changes nothing. A marked
// version is refused at once, and so is every version while the image is
// changed and not yet backed up.
func TestOutsideVersions(t *testing.T) {
	r := rand.New(rand.NewPCG(61, 62))
	dev := device(r, 90*1024+33)
	var devs [][]byte
	for range 4 {
		dev = mutate(r, dev, 4)
		devs = append(devs, dev)
	}
	for _, tc := range []string{"touched", "written", "put back", "put back oldest", "grown"} {
		t.Run(tc, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "vol.img")
			backupsAt(t, img, devs) // versions 08:00, 04:00, 00:00; the image 12:00
			var found []byte
			switch tc {
			case "touched":
				later := time.Now().Add(time.Hour)
				os.Chtimes(img, later, later)
				found = devs[3]
			case "written":
				writeFileAt(t, img, 12345, []byte("outside"))
			case "put back":
				putBack(t, img, "20261116T040000Z")
			case "put back oldest":
				putBack(t, img, "20261116T000000Z")
			case "grown":
				writeFileAt(t, img, int64(len(devs[3])+5000), []byte("outside"))
			}
			if found == nil {
				found, _ = os.ReadFile(img)
				restoreLost(t, img, "latest", true)
				restoreLost(t, img, "20261116T000000Z", true)
			}
			next := mutate(r, devs[3], 2)
			res := syncTo(t, img, next, PatchOptions{TxOptions: TxOptions{Keep: -1, Source: Source{SnapshotTime: time.Date(2026, 11, 16, 16, 0, 0, 0, time.UTC)}}})
			s, err := Open(img, Options{})
			if err != nil {
				t.Fatal(err)
			}
			vs := s.Manifest().Versions
			s.Close()
			names := func() (n []string) {
				for _, v := range vs {
					n = append(n, v.Name)
				}
				return n
			}
			restoreWant(t, img, "latest", found)
			switch tc {
			case "touched":
				if res.Changed != nil || res.Kept != "20261116T120000Z" || len(vs) != 4 || vs[0].Outside != nil {
					t.Fatalf("an image whose mtime alone changed: %+v, versions %v", res, names())
				}
				for _, v := range vs {
					if v.Unrestorable != "" {
						t.Fatalf("version %s marked: %s", v.Name, v.Unrestorable)
					}
				}
				restoreWant(t, img, "20261116T000000Z", devs[0])
			case "written", "grown":
				if res.Changed == nil || res.Changed.Match != "" || len(res.Changed.Lost) != 3 || len(vs) != 4 {
					t.Fatalf("changed: %+v, versions %v", res.Changed, names())
				}
				v := vs[0]
				if v.Name != res.Kept || v.Outside == nil || !v.Outside.Since.Equal(time.Date(2026, 11, 16, 12, 0, 0, 0, time.UTC)) ||
					!v.Outside.Found.Equal(v.Time) || v.Size != int64(len(found)) || v.Unrestorable != "" {
					t.Fatalf("the version of what was found: %+v", v)
				}
				for _, w := range vs[1:] {
					if w.Unrestorable == "" || w.Outside != nil {
						t.Fatalf("version %s not marked", w.Name)
					}
					err := restoreLost(t, img, w.Name, false)
					if !strings.Contains(err.Error(), "restorable: "+v.Name+")") {
						t.Fatalf("the error does not name what can be restored: %v", err)
					}
				}
			case "put back":
				if res.Changed == nil || res.Changed.Match != "20261116T040000Z" || strings.Join(res.Changed.Lost, " ") != "20261116T080000Z" ||
					res.Kept != "20261116T040000Z" || strings.Join(names(), " ") != "20261116T080000Z 20261116T040000Z 20261116T000000Z" {
					t.Fatalf("changed: %+v, kept %s, versions %v", res.Changed, res.Kept, names())
				}
				if vs[1].Outside != nil || vs[1].File == "20261116T040000Z.delta" || vs[0].Unrestorable == "" || vs[2].Unrestorable != "" {
					t.Fatalf("versions: %+v", vs)
				}
				restoreWant(t, img, "20261116T040000Z", devs[1])
				restoreWant(t, img, "20261116T000000Z", devs[0])
				restoreLost(t, img, "20261116T080000Z", false)
				if ents, _ := os.ReadDir(filepath.Join(StateDir(img), versionsDir)); len(ents) != 3 {
					t.Fatalf("%d files in versions/, want 3: the replaced one is deleted", len(ents))
				}
			case "put back oldest":
				if res.Changed == nil || res.Changed.Match != "20261116T000000Z" || len(res.Changed.Lost) != 2 || len(vs) != 3 {
					t.Fatalf("changed: %+v, versions %v", res.Changed, names())
				}
				restoreLost(t, img, "20261116T040000Z", false)
			}

			// The next run, on an unchanged image, goes on from there.
			kept := res.Kept
			later := mutate(r, next, 2)
			res = syncTo(t, img, later, PatchOptions{TxOptions: TxOptions{Keep: -1, Source: Source{SnapshotTime: time.Date(2026, 11, 16, 20, 0, 0, 0, time.UTC)}}})
			if res.Changed != nil {
				t.Fatalf("a run on an unchanged image found a change: %+v", res.Changed)
			}
			restoreWant(t, img, "latest", next)
			restoreWant(t, img, kept, found)
			if tc == "put back" {
				restoreWant(t, img, "20261116T040000Z", devs[1])
				restoreWant(t, img, "20261116T000000Z", devs[0])
			}
		})
	}
}

// TestOutsideManifestFields: the new fields are optional: a manifest
// without them (an older dosvob's) loads, and its versions are
// restorable; a manifest with them survives a run of this build.
func TestOutsideManifestFields(t *testing.T) {
	r := rand.New(rand.NewPCG(63, 64))
	img := filepath.Join(t.TempDir(), "vol.img")
	a, b := device(r, 50*1024), device(r, 50*1024)
	backupsAt(t, img, [][]byte{a, b})
	raw, err := os.ReadFile(filepath.Join(StateDir(img), manifestName))
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"changed_outside", "unrestorable", "found"} {
		if strings.Contains(string(raw), field) {
			t.Fatalf("a manifest with no change outside dosvob has %q:\n%s", field, raw)
		}
	}
	restoreWant(t, img, "latest", a)

	writeFileAt(t, img, 100, []byte("outside"))
	found, _ := os.ReadFile(img)
	syncTo(t, img, b, PatchOptions{TxOptions: TxOptions{Keep: -1}})
	raw, err = os.ReadFile(filepath.Join(StateDir(img), manifestName))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Versions []map[string]json.RawMessage `json:"versions"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Versions) != 2 || m.Versions[0]["changed_outside"] == nil || m.Versions[1]["unrestorable"] == nil {
		t.Fatalf("manifest after the change:\n%s", raw)
	}
	syncTo(t, img, a, PatchOptions{TxOptions: TxOptions{Keep: -1}})
	s, err := Open(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	vs := s.Manifest().Versions
	s.Close()
	if len(vs) != 3 || vs[1].Outside == nil || vs[2].Unrestorable == "" {
		t.Fatalf("a later run lost the marks: %+v", vs)
	}
	restoreWant(t, img, vs[1].Name, found)
}
