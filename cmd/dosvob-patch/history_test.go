package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// keptBackups makes n backups of a device of size bytes (from seed) through
// the real pipe with --keep keep, each a few blocks on from the one before
// and named by a snapshot time 4 hours later. It returns the binaries, the
// image, the device and the devices backed up, oldest first.
func keptBackups(t *testing.T, seed uint64, size, n, keep int) (bin, hash, img, dev string, devs [][]byte) {
	t.Helper()
	bin, hash, img, dev, r, cur := pipeDevice(t, seed, size)
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for i := range n {
		if i > 0 {
			cur = mutate(r, cur, 5)
			if err := os.WriteFile(dev, cur, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		script := fmt.Sprintf(`"$1" "$3" | "$1" --delta "$4" | "$2" -q --keep %d --snapshot-time %s "$3"`, keep, at.Format(time.RFC3339))
		if out, code := runExit(t, hash, bin, img, dev, script); code != 0 {
			t.Fatalf("backup %d: exit %d\n%s", i+1, code, out)
		}
		devs = append(devs, cur)
		at = at.Add(4 * time.Hour)
	}
	return bin, hash, img, dev, devs
}

// versionFiles reads every file in the versions/ directory of img.
func versionFiles(t *testing.T, img string) map[string][]byte {
	t.Helper()
	dir := filepath.Join(img+".dosvob", "versions")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

// asOlderRelease rewrites the manifest of img as a dosvob release before
// the manifest's own checksum wrote it: without the "checksum" member.
func asOlderRelease(t *testing.T, img string) {
	t.Helper()
	name := filepath.Join(img+".dosvob", "manifest.json")
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "checksum")
	if b, err = json.MarshalIndent(m, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, append(b, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

// flipInManifest flips the lowest bit of the byte at offset off past the
// first occurrence of text in the manifest of img, and returns the
// manifest's bytes as they were.
func flipInManifest(t *testing.T, img, text string, off int) []byte {
	t.Helper()
	name := filepath.Join(img+".dosvob", "manifest.json")
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(text))
	if i < 0 {
		t.Fatalf("no %q in the manifest:\n%s", text, b)
	}
	flipped := bytes.Clone(b)
	flipped[i+off] ^= 1
	if err := os.WriteFile(name, flipped, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReadCommandsKeepHistory: one bit flipped in a version's "file" field
// of a manifest (one of an older dosvob, which has no checksum to catch it)
// leaves valid JSON that names a file that is not there, and the real one
// unlisted. No command that only reads (the scrub, versions,
// restore-version, the --delta IMAGE of a restore) may delete it: with the
// bit mended, every version still restores. A backup run keeps it too,
// since nothing shows it is a leftover of a run, and says so.
func TestReadCommandsKeepHistory(t *testing.T) {
	bin, hash, img, dev, devs := keptBackups(t, 101, 1<<20, 4, 3)
	before := versionFiles(t, img)
	if len(before) != 3 {
		t.Fatalf("%d version files, want 3", len(before))
	}
	asOlderRelease(t, img)
	newest := "20261122T180000Z"
	// "1" becomes "0": the newest version's file is now 20261122T080000Z.delta.
	good := flipInManifest(t, img, `"file": "`+newest, len(`"file": "20261122T`))
	for _, script := range []string{
		`"$2" versions "$3"`,
		`"$2" versions --json "$3"`,
		`"$2" restore-version --version latest -o "$3.r1" "$3"`,
		`"$2" restore-version --version 20261122T100000Z -o "$3.r2" "$3"`,
		`"$1" --verify "$3"`,
		`"$1" --raw "$4" | "$1" --delta "$3" >/dev/null`,
	} {
		out, code := runExit(t, hash, bin, img, dev, script)
		t.Logf("%s: exit %d\n%s", script, code, out)
		if strings.Contains(out, "removed") {
			t.Errorf("%s removed something:\n%s", script, out)
		}
		if got := versionFiles(t, img); !maps.EqualFunc(got, before, bytes.Equal) {
			t.Fatalf("%s changed versions/: %q, was %q", script, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(before)))
		}
	}
	// With the bit mended, every kept version restores byte for byte.
	if err := os.WriteFile(filepath.Join(img+".dosvob", "manifest.json"), good, 0o600); err != nil {
		t.Fatal(err)
	}
	for k, name := range []string{"20261122T180000Z", "20261122T140000Z", "20261122T100000Z"} {
		out := filepath.Join(t.TempDir(), name)
		if o, code := runExit(t, hash, bin, img, dev, `"$2" restore-version --version `+name+` -o `+out+` "$3"`); code != 0 {
			t.Fatalf("restore %s: exit %d\n%s", name, code, o)
		}
		mustEqualFile(t, out, devs[len(devs)-2-k])
	}
	// A backup run over the damaged manifest keeps the unlisted file too,
	// and names it.
	flipInManifest(t, img, `"file": "`+newest, len(`"file": "20261122T`))
	out, code := runExit(t, hash, bin, img, dev, `"$1" "$3" | "$1" --delta "$4" | "$2" "$3"`)
	if code != 0 {
		t.Fatalf("backup over the damaged manifest: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "dosvob-patch: kept version file "+newest+".delta in ") ||
		!strings.Contains(out, "the manifest does not list it, but nothing shows that it is a leftover of a run") {
		t.Errorf("the backup run did not say that it kept %s.delta:\n%s", newest, out)
	}
	if !exists(filepath.Join(img+".dosvob", "versions", newest+".delta")) {
		t.Fatalf("the backup run deleted %s.delta", newest)
	}
}

// TestLeftoverVersionsSwept: a backup run killed at each of its mutating
// steps in turn (the DOSVOB_TEST_CRASH_AT hook) can leave a version file
// that no manifest lists: one written before a commit that never happened,
// or one that a commit dropped beyond --keep and had not deleted yet. A
// command that only reads leaves it; the next backup run knows it for a
// leftover, deletes it and says why, so that versions/ holds exactly what
// the manifest lists.
func TestLeftoverVersionsSwept(t *testing.T) {
	bin, hash, img, dev, devs := keptBackups(t, 103, 256<<10, 2, 1)
	// Runs back and forth between two devices that differ in the same
	// five blocks (data on both sides, never zeros), so that every run
	// takes the same steps and k meets each of them.
	r := rand.New(rand.NewPCG(103, 104))
	a := devs[len(devs)-1]
	b := bytes.Clone(a)
	for blk, n := 0, 0; n < 5; blk += 3 {
		if blk >= len(b)/4096 {
			t.Fatal("fewer than 5 blocks with data")
		}
		block := b[blk*4096 : (blk+1)*4096]
		if bytes.Count(block, []byte{0}) == len(block) {
			continue
		}
		for i := range block {
			block[i] = byte(r.Uint32()) | 1
		}
		n++
	}
	cur := a
	var uncommitted, pruned int
	for k := 1; ; k++ {
		if k > 200 {
			t.Fatal("every run up to step 200 was killed")
		}
		if cur = b; k%2 == 0 {
			cur = a
		}
		if err := os.WriteFile(dev, cur, 0o644); err != nil {
			t.Fatal(err)
		}
		_, code := runExit(t, hash, bin, img, dev, fmt.Sprintf(`"$1" -q "$3" | "$1" -q --delta "$4" | DOSVOB_TEST_CRASH_AT=%d "$2" -q "$3"`, k))
		if code == 0 {
			break // no step k: the run completed
		}
		left := versionFiles(t, img)
		// A half-written version (.tmp) is no version: recovery deletes it.
		maps.DeleteFunc(left, func(n string, _ []byte) bool { return strings.HasSuffix(n, ".tmp") })
		if out, code := runExit(t, hash, bin, img, dev, `"$2" versions "$3"`); code != 0 {
			t.Fatalf("k=%d: versions: exit %d\n%s", k, code, out)
		}
		if got := versionFiles(t, img); !maps.EqualFunc(got, left, bytes.Equal) {
			t.Fatalf("k=%d: versions changed versions/: %q, was %q", k, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(left)))
		}
		out, code := runExit(t, hash, bin, img, dev, `"$1" -q "$3" | "$1" -q --delta "$4" | "$2" -q "$3"`)
		if code != 0 {
			t.Fatalf("k=%d: the run after the kill: exit %d\n%s", k, code, out)
		}
		mustEqualFile(t, img, cur)
		if strings.Contains(out, "did not commit") {
			uncommitted++
		}
		if strings.Contains(out, "dropped it beyond --keep 1") {
			pruned++
		}
		if strings.Contains(out, "kept version file") {
			t.Fatalf("k=%d: a leftover of the killed run was not known for one:\n%s", k, out)
		}
		var m struct{ Versions []struct{ File string } }
		b, _ := os.ReadFile(filepath.Join(img+".dosvob", "manifest.json"))
		if err := json.Unmarshal(b, &m); err != nil || len(m.Versions) != 1 {
			t.Fatalf("k=%d: manifest: %v\n%s", k, err, b)
		}
		if got := slices.Sorted(maps.Keys(versionFiles(t, img))); !slices.Equal(got, []string{m.Versions[0].File}) {
			t.Fatalf("k=%d: versions/ holds %q, the manifest lists %q\n%s", k, got, m.Versions[0].File, out)
		}
	}
	t.Logf("of the kills, %d left a version written before its commit, %d one dropped after it", uncommitted, pruned)
	if uncommitted == 0 || pruned == 0 {
		t.Fatal("the kills did not reach both windows")
	}
}
