package backup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
)

// dosvobImage writes data into a new dosvob image img, as a first backup
// does (dosvob-hash IMG | dosvob-hash --delta SOURCE | dosvob-patch IMG),
// with the binaries in bin: an image with its state directory and
// manifest, without a backup run.
func dosvobImage(t *testing.T, bin, img, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(img), 0o700); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "source")
	writeFile(t, src, data, 0o600)
	cmd := exec.Command("bash", "-c", `set -o pipefail; "$1/dosvob-hash" "$2" | "$1/dosvob-hash" --delta "$3" | "$1/dosvob-patch" "$2"`,
		"bash", bin, img, src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make the dosvob image %s: %v\n%s", img, err, out)
	}
}

// TestRestoreNotAnImage: restore.sh restores dosvob images only, and
// intact ones (see "damaged image" below). A file
// that is not one (the image's own manifest.json, a file without a state
// directory, a device), its state directory, and an image whose manifest is
// damaged are refused before anything is created, with one line that says
// what IMAGE is; the account is untouched. Before, the manifest.json was
// restored into a new volume and reported done, the directory was "not
// found", and the damaged image failed only after the volume was made.
func TestRestoreNotAnImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	img := e.looseImage()
	damaged := filepath.Join(e.dir, "damaged", "some.img")
	dosvobImage(t, e.bin, damaged, strings.Repeat("damaged ", 8192))
	writeFile(t, damaged+".dosvob/manifest.json", `{"version": 1, "volu`, 0o600)
	plain := filepath.Join(e.dir, "plain.img")
	writeFile(t, plain, strings.Repeat("plain ", 8192), 0o600)

	for _, c := range []struct {
		name, image string
		code        int
		says        string
	}{
		{"manifest", img + ".dosvob/manifest.json", 4, `": not a dosvob image, there is no "`},
		{"state directory", img + ".dosvob", 4, `": it is a directory, not a dosvob image (IMAGE must be`},
		{"no state directory", plain, 4, `": not a dosvob image, there is no "` + plain + `.dosvob/manifest.json"`},
		{"device", "/dev/null", 4, `": it is not a regular file, not a dosvob image (IMAGE must be`},
		{"damaged manifest", damaged, 5, `": its state is damaged: "` + damaged + `.dosvob/manifest.json" is damaged: `},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			before := e.emu.State()
			// A name of its own: a volume that an earlier case made must
			// not be what refuses this one.
			name := "x-" + strings.ReplaceAll(c.name, " ", "-")
			r := e.restore("--volume-name", name, "--region", "fra1", c.image)
			if r.code != c.code {
				t.Errorf("restore.sh %s exited %d, want %d\nstderr:\n%s", c.image, r.code, c.code, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if !strings.Contains(lines[0], "restore: ") || !strings.Contains(lines[0], `"`+c.image+c.says) {
				t.Errorf("the first line does not say %q:\n%s", c.says, r.stderr)
			}
			if len(lines) > 2 || (len(lines) == 2 && !strings.Contains(lines[1], "restore: hint: ")) {
				t.Errorf("want one line (and a hint), got:\n%s", r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			if diff := stateDiff(before, e.emu.State()); diff != "" {
				t.Errorf("the refused restore changed the account: %s", diff)
			}
		})
	}
	e.t = t

	// Bit rot: an image whose data is no longer the backup its manifest
	// describes is found only while the pipe reads it, once the new
	// volume is made. The restore fails (never "verified", never 0) with
	// exit 5, and its last lines say that the image is damaged, that the
	// volume is kept but incomplete, and what to do. Before, that was "the
	// restore pipe failed", exit 1.
	t.Run("damaged image", func(t *testing.T) {
		e.t = t
		rotten := filepath.Join(e.dir, "rotten", "some.img")
		dosvobImage(t, e.bin, rotten, strings.Repeat("rotten ", 8192))
		testenv.Rot(t, rotten, 1000)
		r := e.restore("--volume-name", "x-rotten", "--region", "fra1", rotten)
		v, ok := e.volumeNamed("fra1", "x-rotten")
		if !ok {
			t.Fatalf("restore.sh exited %d and made no volume: the test proves nothing\nstderr:\n%s", r.code, r.stderr)
		}
		if r.code != 5 || strings.Contains(r.stderr, "restore: verified") || r.stdout != "" {
			t.Errorf("restore.sh of a damaged image exited %d, want 5, without \"verified\" or stdout %q\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if len(lines) < 2 ||
			!strings.Contains(lines[len(lines)-2], "restore: restore into x-rotten failed: the backup image "+rotten+" is damaged (") ||
			!strings.HasSuffix(lines[len(lines)-2], "not the new volume and not the network; the new volume x-rotten ("+v.ID+") is kept but incomplete") ||
			!strings.Contains(lines[len(lines)-1], "restore: hint: check the image with: dosvob-hash --verify "+rotten+"; restore a kept version instead (--version") {
			t.Errorf("the last lines do not say that the image is damaged, that x-rotten (%s) is kept but incomplete, and what to do:\n%s", v.ID, r.stderr)
		}
	})
	e.t = t
	e.checkNothingLeft("fra1/x-rotten")
}
