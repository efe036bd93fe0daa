package main

import (
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runExit runs a bash script with the binaries as $1 (dosvob-hash), $2
// (dosvob-patch), $3 (the image) and $4 (the device), and returns its
// output and exit code.
func runExit(t *testing.T, hash, bin, img, dev, script string) (string, int) {
	t.Helper()
	out, err := exec.Command("bash", "-o", "pipefail", "-c", script, "sh", hash, bin, img, dev).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("%s: %v", script, err)
	return "", 0
}

const fullPipe = `"$1" "$3" | "$1" --delta "$4" | "$2" "$3"`

// TestDamagedManifest: a manifest.json cut short is reported by every
// command as damage of the backup's state (exit 5) with a one-line message
// naming the file and a hint, and the hint's cheap way out works: with the
// manifest moved aside, one run with --force takes the image as its base.
func TestDamagedManifest(t *testing.T) {
	bin, hash, _, img, dev := pipeFiles(t)
	r := rand.New(rand.NewPCG(81, 82))
	cur := device(r, 2<<20)
	os.WriteFile(dev, cur, 0o644)
	for range 2 {
		if out, code := runExit(t, hash, bin, img, dev, `"$1" "$3" | "$1" --delta "$4" | "$2" --keep 2 "$3"`); code != 0 {
			t.Fatalf("pipe: exit %d\n%s", code, out)
		}
		cur = mutate(r, cur, 20)
		os.WriteFile(dev, cur, 0o644)
	}
	manifest := filepath.Join(img+".dosvob", "manifest.json")
	if err := os.Truncate(manifest, 100); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ what, script string }{
		{"pipe", fullPipe},
		{"patch", `"$2" "$3" </dev/null`},
		{"versions", `"$2" versions "$3"`},
		{"restore-version", `"$2" restore-version --version latest -o "$3.old" "$3"`},
		{"verify", `"$1" --verify "$3"`},
	} {
		out, code := runExit(t, hash, bin, img, dev, c.script)
		if code != 5 {
			t.Errorf("%s on a damaged manifest: exit %d, want 5\n%s", c.what, code, out)
			continue
		}
		// In the pipe both ends report it; the other stages' lines follow.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		found := false
		for i := 0; i+1 < len(lines); i++ {
			if strings.HasSuffix(lines[i], `img.dosvob/manifest.json" is damaged: unexpected end of JSON input`) &&
				strings.Contains(lines[i+1], `: hint: move "`) && strings.Contains(lines[i+1], "--force") {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: want the damaged file named and a hint, got:\n%s", c.what, out)
		}
	}
	if exists(img + ".old") {
		t.Error("restore-version wrote an output from a damaged manifest")
	}
	// What the hint says: move the manifest aside, run once with --force.
	if err := os.Rename(manifest, filepath.Join(filepath.Dir(img), "manifest.damaged")); err != nil {
		t.Fatal(err)
	}
	out, code := runExit(t, hash, bin, img, dev, `"$1" "$3" | "$1" --delta "$4" | "$2" --force "$3"`)
	if code != 0 {
		t.Fatalf("pipe with --force after moving the manifest aside: exit %d\n%s", code, out)
	}
	mustEqualFile(t, img, cur)
	// Only what differs was sent: the image was the base.
	if !strings.Contains(out, "generation 1, 512 blocks") || strings.Contains(out, " 512 data") {
		t.Fatalf("the --force run did not patch the old image:\n%s", out)
	}
	if out, code := runExit(t, hash, bin, img, dev, `"$1" --verify "$3"`); code != 0 {
		t.Fatalf("verify after recovery: exit %d\n%s", code, out)
	}
}

// TestDamagedRunRecords: the records of one run (a first backup's
// partial.json, a signing run's hashes) are not the backup's state. A
// damaged one costs that run at most; the next run rebuilds it and
// completes the backup.
func TestDamagedRunRecords(t *testing.T) {
	bin, hash, _, img, dev := pipeFiles(t)
	r := rand.New(rand.NewPCG(83, 84))
	cur := device(r, 2<<20)
	os.WriteFile(dev, cur, 0o644)
	state := img + ".dosvob"

	// A cut first backup, then its partial.json damaged: the next run
	// cannot resume and starts the first backup afresh.
	if out, code := runExit(t, hash, bin, img, dev, `"$1" "$3" | "$1" --delta "$4" | head -c 300000 | "$2" "$3"`); code != 3 {
		t.Fatalf("cut first backup: exit %d\n%s", code, out)
	}
	if err := os.Truncate(filepath.Join(state, "partial.json"), 10); err != nil {
		t.Fatal(err)
	}
	if out, code := runExit(t, hash, bin, img, dev, fullPipe); code != 0 {
		t.Fatalf("first backup after a damaged partial.json: exit %d\n%s", code, out)
	}
	mustEqualFile(t, img, cur)

	// The block hashes of the signing run a delta was made from, cut
	// short: the run is undone (exit 3, as for any delta that does not fit
	// its signature), and the next run makes its own record.
	old := cur
	cur = mutate(r, cur, 20)
	os.WriteFile(dev, cur, 0o644)
	out, code := runExit(t, hash, bin, img, dev, `"$1" -q "$3" >"$3.sig" && for f in "$3".dosvob/sign-*.hashes; do truncate -s 800 "$f"; done && "$1" -q --delta "$4" <"$3.sig" | "$2" "$3"`)
	if code != 3 || !strings.Contains(out, "that dosvob-hash recorded for this delta are damaged (800 bytes, want") {
		t.Fatalf("damaged signing hashes: exit %d, want 3 naming the file\n%s", code, out)
	}
	mustEqualFile(t, img, old)
	if out, code := runExit(t, hash, bin, img, dev, fullPipe); code != 0 {
		t.Fatalf("run after damaged signing hashes: exit %d\n%s", code, out)
	}
	mustEqualFile(t, img, cur)

	// A signing record that does not parse is dropped: the delta made
	// against it is refused (exit 3) and the next run completes.
	cur = mutate(r, cur, 20)
	os.WriteFile(dev, cur, 0o644)
	out, code = runExit(t, hash, bin, img, dev, `"$1" -q "$3" >"$3.sig" && for f in "$3".dosvob/sign-*.json; do truncate -s 20 "$f"; done && "$1" -q --delta "$4" <"$3.sig" | "$2" "$3"`)
	if code != 3 {
		t.Fatalf("damaged signing record: exit %d, want 3\n%s", code, out)
	}
	if out, code := runExit(t, hash, bin, img, dev, fullPipe); code != 0 {
		t.Fatalf("run after a damaged signing record: exit %d\n%s", code, out)
	}
	mustEqualFile(t, img, cur)
}
