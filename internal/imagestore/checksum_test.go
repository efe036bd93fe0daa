package imagestore

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checksummed returns the manifest of a fresh image with kept versions, as
// a commit wrote it, and the file's name.
func checksummed(t *testing.T) (name string, b []byte) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "vol.img")
	backups(t, rand.New(rand.NewPCG(51, 52)), img, 40*1024, 3, 2)
	name = filepath.Join(StateDir(img), manifestName)
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := readManifest(filepath.Dir(name)); err != nil || len(m.Versions) != 2 {
		t.Fatalf("the manifest as written: %v", err)
	}
	return name, b
}

// TestManifestBitFlips: every single bit flipped anywhere in a manifest
// (digits, names, white space, the checksum and its name) is found: the
// manifest is reported damaged, never read as another one, and never
// refused as one of an unknown version.
func TestManifestBitFlips(t *testing.T) {
	name, good := checksummed(t)
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range good {
		for bit := range 8 {
			if _, err := f.WriteAt([]byte{good[i] ^ 1<<bit}, int64(i)); err != nil {
				t.Fatal(err)
			}
			m, err := readManifest(filepath.Dir(name))
			if m != nil || !errors.Is(err, ErrStateDamaged) {
				t.Fatalf("bit %d of byte %d (%q in %q) flipped: got %v, want it damaged", bit, i, good[i],
					good[max(0, i-20):min(len(good), i+20)], err)
			}
		}
		if _, err := f.WriteAt(good[i:i+1], int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d single-bit flips of a %d-byte manifest all found", 8*len(good), len(good))
}

// editManifest decodes the manifest b, changes it with edit and encodes it again
// (members sorted, white space of its own), with its checksum recomputed
// unless edit removes or replaces it.
func editManifest(t *testing.T, b []byte, edit func(doc map[string]any)) []byte {
	t.Helper()
	doc, err := decodeObject(b)
	if err != nil {
		t.Fatal(err)
	}
	sum := doc[checksumMember]
	edit(doc)
	if v, ok := doc[checksumMember]; ok && v == sum {
		if doc[checksumMember], err = manifestChecksum(doc); err != nil {
			t.Fatal(err)
		}
	}
	out, err := json.MarshalIndent(doc, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestManifestChecksumCompatible: the checksum depends on the manifest's
// values, not on its layout or on the fields this build knows. A manifest
// of an older dosvob (no checksum) loads, and the next commit adds one. A
// later dosvob's, with fields this one does not know, checks out; one of a
// later manifest version is refused as such (exit 4), not as damage.
func TestManifestChecksumCompatible(t *testing.T) {
	name, good := checksummed(t)
	cases := []struct {
		what string
		edit func(doc map[string]any)
		want error
	}{
		{"other layout", func(map[string]any) {}, nil},
		{"older dosvob", func(doc map[string]any) { delete(doc, checksumMember) }, nil},
		{"later dosvob", func(doc map[string]any) {
			doc["future"] = map[string]any{"b": []any{json.Number("1.50"), "<&>"}, "a": nil}
		}, nil},
		{"later manifest version", func(doc map[string]any) { doc["manifest_version"] = json.Number("2") }, ErrUnknownVersion},
		{"later manifest version and checksum", func(doc map[string]any) {
			doc["manifest_version"] = json.Number("2")
			doc["future"] = "x"
			delete(doc, checksumMember)
			doc[checksumMember] = "blake3:00"
		}, ErrUnknownVersion},
		{"checksum of another kind", func(doc map[string]any) {
			delete(doc, checksumMember)
			doc[checksumMember] = "blake3:00"
		}, ErrStateDamaged},
		{"edited by hand", func(doc map[string]any) {
			delete(doc, checksumMember)
			doc["keep"] = json.Number("3")
			doc[checksumMember] = "sha256:" + strings.Repeat("0", 64)
		}, ErrStateDamaged},
	}
	for _, c := range cases {
		b := editManifest(t, good, c.edit)
		m, err := parseManifest(name, b)
		switch {
		case c.want == nil && (err != nil || m == nil || len(m.Versions) != 2):
			t.Errorf("%s: %v, want it read", c.what, err)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
	}

	// The next commit upgrades a manifest of an older dosvob.
	img := strings.TrimSuffix(filepath.Dir(name), stateSuffix)
	old := editManifest(t, good, func(doc map[string]any) { delete(doc, checksumMember) })
	if err := os.WriteFile(name, old, 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	syncTo(t, img, mutate(rand.New(rand.NewPCG(53, 54)), dev, 3), PatchOptions{})
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"checksum": "sha256:`)) {
		t.Fatalf("the commit after a manifest without a checksum wrote none:\n%s", b)
	}
	if _, err := parseManifest(name, b); err != nil {
		t.Fatal(err)
	}
}
