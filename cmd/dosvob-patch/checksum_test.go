package main

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDamagedManifestFields: one bit flipped in a field of the manifest
// (a digest, a seed, a size, the image id, the generation, a version's
// file, the layout version) leaves valid JSON. The manifest's checksum
// finds it: every command exits 5 naming the manifest, never the image,
// and touches nothing; the scrub still reads the image and says whether it
// has the size and digest the damaged manifest records.
func TestDamagedManifestFields(t *testing.T) {
	bin, hash, img, dev, _ := keptBackups(t, 105, 1<<20, 3, 2)
	manifest := filepath.Join(img+".dosvob", "manifest.json")
	good, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	image, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	versions := versionFiles(t, img)
	const (
		intact = "has the size and digest that its damaged manifest records: the image is intact"
		differ = "the image or that field is damaged, and nothing tells which"
	)
	for _, c := range []struct {
		field string // the flipped byte follows this text
		skip  int    // by this many bytes
		scrub string // what the scrub says of the image
	}{
		{`"device_digest": "`, 0, "does not have the digest that its damaged manifest records"},
		{`"device_size": `, 1, differ},
		{`"block_size": `, 0, "cannot be compared with its damaged manifest"},
		{`"hash_seed": "`, 0, intact},
		{`"block_digest": "`, 0, intact},
		{`"image_id": "`, 0, intact},
		{`"generation": `, 0, intact},
		{`"manifest_version": `, 0, intact},
		{`"file": "`, 0, intact},
	} {
		flipInManifest(t, img, c.field, len(c.field)+c.skip)
		for _, s := range []struct{ what, script string }{
			{"verify", `"$1" --verify "$3"`},
			{"restore-version", `"$2" restore-version --version latest -o "$3.old" "$3"`},
			{"versions", `"$2" versions "$3"`},
			{"pipe", fullPipe},
		} {
			out, code := runExit(t, hash, bin, img, dev, s.script)
			if code != 5 || !strings.Contains(out, `manifest.json" is damaged: its content does not match its checksum (it was changed after dosvob wrote it)`) ||
				!strings.Contains(out, `: hint: `) || strings.Contains(out, "image is corrupt") || strings.Contains(out, "do not patch over it") {
				t.Errorf("%s after a flip in %s: exit %d, want 5 naming the manifest, not the image\n%s", s.what, c.field, code, out)
			}
			if s.what == "verify" && !strings.Contains(out, c.scrub) {
				t.Errorf("verify after a flip in %s: want %q\n%s", c.field, c.scrub, out)
			}
			if s.what == "restore-version" && !strings.Contains(out, "dosvob-hash --verify "+img+" compares it with the digest this manifest records") {
				t.Errorf("restore-version after a flip in %s: the hint does not point to the scrub\n%s", c.field, out)
			}
		}
		if exists(img + ".old") {
			t.Fatalf("restore-version wrote an output from a damaged manifest (%s)", c.field)
		}
		if b, _ := os.ReadFile(img); !bytes.Equal(b, image) {
			t.Fatalf("the image changed under a damaged manifest (%s)", c.field)
		}
		if got := versionFiles(t, img); !maps.EqualFunc(got, versions, bytes.Equal) {
			t.Fatalf("versions/ changed under a damaged manifest (%s)", c.field)
		}
		if err := os.WriteFile(manifest, good, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, code := runExit(t, hash, bin, img, dev, `"$1" --verify "$3"`); code != 0 {
		t.Fatalf("verify with the manifest mended: exit %d\n%s", code, out)
	}

	// A manifest of an older dosvob, which has no checksum, is read as it
	// is by the commands that only read, and gets one at the next commit.
	asOlderRelease(t, img)
	old, _ := os.ReadFile(manifest)
	for _, script := range []string{`"$2" versions "$3"`, `"$2" restore-version --version latest -o "$3.old" "$3"`} {
		if out, code := runExit(t, hash, bin, img, dev, script); code != 0 {
			t.Fatalf("%s on a manifest without a checksum: exit %d\n%s", script, code, out)
		}
	}
	if b, _ := os.ReadFile(manifest); !bytes.Equal(b, old) {
		t.Fatal("a command that only reads rewrote the manifest")
	}
	if out, code := runExit(t, hash, bin, img, dev, fullPipe); code != 0 {
		t.Fatalf("backup over a manifest without a checksum: exit %d\n%s", code, out)
	}
	if b, _ := os.ReadFile(manifest); !bytes.Contains(b, []byte(`"checksum": "sha256:`)) {
		t.Fatalf("the commit did not add a checksum:\n%s", b)
	}
}

// TestScrubChecksVersions: a kept version's file with a flipped byte, cut
// short or missing is found by the scrub (exit 5), which names it and says
// which versions can no longer be restored, and touches none of them; the
// image is still reported intact. "versions" warns of a file that is
// missing or of another size (it does not read them), and still lists.
func TestScrubChecksVersions(t *testing.T) {
	bin, hash, img, dev, _ := keptBackups(t, 107, 1<<20, 4, 3)
	vdir := filepath.Join(img+".dosvob", "versions")
	if out, code := runExit(t, hash, bin, img, dev, `"$1" --verify "$3"`); code != 0 || !strings.Contains(out, "; 3 kept versions checked") {
		t.Fatalf("verify: exit %d, want 0 and the versions checked\n%s", code, out)
	}
	good := versionFiles(t, img)
	for _, c := range []struct {
		what    string
		version string
		damage  func(name string) error
		lost    string // what the scrub says can no longer be restored
		listed  bool   // whether "versions" notices it
	}{
		{"a flipped byte", "20261122T140000Z", func(name string) error {
			f, err := os.OpenFile(name, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			b := make([]byte, 1)
			fi, _ := f.Stat()
			off := fi.Size() / 2
			f.ReadAt(b, off)
			_, err = f.WriteAt([]byte{b[0] ^ 0x10}, off)
			return err
		}, `kept version 20261122T140000Z and the 1 older one can no longer be restored (the image and the 1 newer version are not affected)`, false},
		{"a cut", "20261122T140000Z", func(name string) error { return os.Truncate(name, 100) },
			`kept version 20261122T140000Z and the 1 older one can no longer be restored (the image and the 1 newer version are not affected)`, true},
		{"a flipped header", "20261122T180000Z", func(name string) error {
			f, err := os.OpenFile(name, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, 40); err != nil {
				return err
			}
			_, err = f.WriteAt([]byte{b[0] ^ 0x10}, 40) // a byte of the image id: random, so flipped, never set
			return err
		}, `kept version 20261122T180000Z and the 2 older ones can no longer be restored (the image is not affected)`, false},
		{"a missing file", "20261122T100000Z", os.Remove,
			`kept version 20261122T100000Z can no longer be restored (the image and the 2 newer versions are not affected)`, true},
	} {
		name := filepath.Join(vdir, c.version+".delta")
		if err := c.damage(name); err != nil {
			t.Fatal(err)
		}
		damaged := versionFiles(t, img)
		out, code := runExit(t, hash, bin, img, dev, `"$1" --verify "$3"`)
		if code != 5 || !strings.Contains(out, "dosvob-hash: kept version "+c.version+" of "+img+" is damaged: ") ||
			!strings.Contains(out, `dosvob-hash: "`+img+`": `+c.lost+": kept version is damaged") ||
			!strings.Contains(out, "dosvob-hash: "+img+" is intact: ") {
			t.Errorf("verify with %s in version %s: exit %d, want 5 naming it and what it costs, the image intact\n%s", c.what, c.version, code, out)
		}
		if got := versionFiles(t, img); !maps.EqualFunc(got, damaged, bytes.Equal) {
			t.Fatalf("the scrub changed versions/ (%s)", c.what)
		}
		out, code = runExit(t, hash, bin, img, dev, `"$2" versions "$3"`)
		if code != 0 || strings.Contains(out, "is damaged") != c.listed || !strings.Contains(out, c.version) {
			t.Errorf("versions with %s in version %s: exit %d, want 0 and a warning: %v\n%s", c.what, c.version, code, c.listed, out)
		}
		if err := os.WriteFile(name, good[c.version+".delta"], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, code := runExit(t, hash, bin, img, dev, `"$1" --verify "$3"`); code != 0 {
		t.Fatalf("verify with every version mended: exit %d\n%s", code, out)
	}
}
