package main

import (
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupFilesPrivate runs the real binaries under umask 022, as a cron
// job does: everything dosvob creates for a backup holds or describes a
// user's volume data, so every file must come out 0600 and every directory
// 0700 (docs/MANIFEST.md, "Who can read a backup"). An image whose mode the
// user chose keeps it when a run updates it in place.
func TestBackupFilesPrivate(t *testing.T) {
	bin, hash, dir, img, dev := pipeFiles(t)
	state := img + ".dosvob"
	r := rand.New(rand.NewPCG(71, 72))
	cur := device(r, 4<<20)
	sh := func(script string) (string, error) {
		os.WriteFile(dev, cur, 0o644)
		c := exec.Command("bash", "-o", "pipefail", "-c", "umask 022; "+script, "sh", hash, bin, img, dev, dir)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	pipe := func(extra string) {
		t.Helper()
		if out, err := sh(`"$1" "$3" | "$1" --delta "$4" | "$2" ` + extra + ` "$3"`); err != nil {
			t.Fatalf("pipe: %v\n%s", err, out)
		}
		mustEqualFile(t, img, cur)
	}
	// checkPrivate fails for every file under the state directory (and
	// the extra files named) that others could read.
	checkPrivate := func(when string, extra ...string) {
		t.Helper()
		seen := 0
		check := func(name string, fi fs.FileInfo) {
			seen++
			want := os.FileMode(0o600)
			if fi.IsDir() {
				want = 0o700
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("%s: %s has mode %04o, want %04o", when, strings.TrimPrefix(name, dir+"/"), got, want)
			}
		}
		filepath.Walk(state, func(name string, fi fs.FileInfo, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			check(name, fi)
			return nil
		})
		for _, name := range extra {
			fi, err := os.Stat(name)
			if err != nil {
				t.Fatal(err)
			}
			check(name, fi)
		}
		if seen < 4 {
			t.Fatalf("%s: only %d files and directories checked", when, seen)
		}
	}

	// An interrupted first backup leaves the partial image and its record.
	if out, err := sh(`"$1" "$3" | "$1" --delta "$4" | head -c 300000 | "$2" "$3"`); err == nil {
		t.Fatalf("cut stream did not fail:\n%s", out)
	}
	if !exists(filepath.Join(state, "partial")) || !exists(filepath.Join(state, "partial.json")) {
		t.Fatal("no partial image after a cut first backup")
	}
	checkPrivate("interrupted first backup")

	// The first backup (resumed) makes the image, the manifest and the
	// hash cache; the next runs keep versions.
	pipe("--keep 2")
	checkPrivate("first backup", img)
	cur = mutate(r, cur, 30)
	pipe("")
	cur = mutate(r, cur, 30)
	pipe("")
	if vs, _ := os.ReadDir(filepath.Join(state, "versions")); len(vs) != 2 {
		t.Fatalf("want 2 kept versions, have %d", len(vs))
	}
	checkPrivate("incremental runs", img)

	// A scrub writes a new hash cache; a signing run leaves its record.
	if out, err := sh(`"$1" --verify "$3"`); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	if out, err := sh(`"$1" "$3" >/dev/null`); err != nil {
		t.Fatalf("sign: %v\n%s", err, out)
	}
	signs, _ := filepath.Glob(filepath.Join(state, "sign-*"))
	if len(signs) == 0 {
		t.Fatal("no signing record")
	}
	checkPrivate("scrub and signing", img)

	// restore-version's output is a copy of a volume too.
	out := filepath.Join(dir, "old.img")
	if o, err := sh(`"$2" restore-version --version latest --output "$5/old.img" "$3"`); err != nil {
		t.Fatalf("restore-version: %v\n%s", err, o)
	}
	checkPrivate("restore-version", out)

	// An image whose mode the user set keeps it through a run in place.
	if err := os.Chmod(img, 0o640); err != nil {
		t.Fatal(err)
	}
	cur = mutate(r, cur, 30)
	pipe("")
	if fi, _ := os.Stat(img); fi.Mode().Perm() != 0o640 {
		t.Fatalf("an updated image has mode %04o, the user gave it 0640", fi.Mode().Perm())
	}
}
