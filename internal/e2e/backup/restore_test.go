package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/dosvob/dosvob/internal/doemu"
)

// restore runs restore.sh to completion.
func (e *env) restore(args ...string) result {
	cmd, stdout, stderr := e.script("restore.sh", append([]string{"--config", e.conf}, args...)...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	return wait(cmd, stdout, stderr, start)
}

// volumeNamed returns the volume region/name in the emulated account.
func (e *env) volumeNamed(region, name string) (doemu.Volume, bool) {
	for _, v := range e.emu.State().Volumes {
		if v.Region == region && v.Name == name {
			return v, true
		}
	}
	return doemu.Volume{}, false
}

// prefixDigest is the digest (as digest's) of the first n bytes of a file.
func prefixDigest(t *testing.T, name string, n int64) string {
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := xxhash.New()
	if _, err := io.CopyBuffer(h, io.LimitReader(f, n), make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

// sha256File is the SHA-256 of a file, as sha256sum prints it.
func sha256File(t *testing.T, name string) string {
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// keptVersion returns the name of the one version that img keeps, and a
// file that dosvob-patch restore-version wrote it into.
func (e *env) keptVersion(img string) (string, string) {
	t := e.t
	b, err := exec.Command(e.bin+"/dosvob-patch", "versions", "--json", img).Output()
	if err != nil {
		t.Fatalf("dosvob-patch versions: %v", err)
	}
	var list []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list) != 1 {
		t.Fatalf("want one kept version of %s, got %s (%v)", img, b, err)
	}
	old := filepath.Join(t.TempDir(), "old.img")
	if out, err := exec.Command(e.bin+"/dosvob-patch", "restore-version", "--version", list[0].Name, "--output", old, img).CombinedOutput(); err != nil {
		t.Fatalf("dosvob-patch restore-version: %v\n%s", err, out)
	}
	return list[0].Name, old
}

// checkRestored asserts that a restore made the volume region/name and
// that its first size bytes are those of the file want.
func (e *env) checkRestored(region, name string, size int64, want string) {
	v, ok := e.volumeNamed(region, name)
	if !ok {
		e.t.Fatalf("no volume %s/%s after the restore", region, name)
	}
	if prefixDigest(e.t, e.emu.VolumeFile(v.ID), size) != digest(e.t, want) {
		e.t.Errorf("the restored volume %s/%s differs from %s", region, name, want)
	}
}

// checkRestore: restore.sh fills a new volume from an image, and from a
// kept version, byte for byte, and its log names the source volume and the
// backup's time (before, nothing said what was restored); it refuses a
// name that exists; each time nothing temporary is left and the restored
// volumes stay, detached. The env must hold two backups of fra1/db that
// differ.
func checkRestore(t *testing.T, e *env) {
	img := e.image("fra1/db")
	size := int64(gib)
	if st, err := os.Stat(img); err == nil {
		size = st.Size()
	}

	// The newest backup into a new volume, compressed at the smallest
	// level, as over a slow uplink.
	r := e.restore("--volume-name", "db-restored", "--region", "fra1", "--level", "4", img)
	t.Logf("restore: %v", r.dur)
	if r.code != 0 {
		t.Fatalf("restore.sh exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "[delta] dosvob-hash: delta of ") || !strings.Contains(r.stderr, " sent at zstd level 4 in ") {
		t.Errorf("the local delta does not say it used zstd level 4:\n%s", r.stderr)
	}
	// The log says what is restored: the source volume and the time of
	// its backup, as the manifest records them.
	when, err := time.Parse(time.RFC3339, manifest(t, img)["backup_time"].(string))
	if err != nil {
		t.Fatal(err)
	}
	source := "restore: restoring db (id " + e.ids["fra1/db"] + ")"
	if want := source + ", backup of " + when.UTC().Format("2006-01-02 15:04 UTC") + ", from " + img; !strings.Contains(r.stderr, want) {
		t.Errorf("the log does not say %q:\n%s", want, r.stderr)
	}
	var out struct {
		Name   string `json:"name"`
		ID     string `json:"id"`
		Region string `json:"region"`
		SHA256 string `json:"sha256"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("restore.sh stdout is not the volume JSON: %v\n%q", err, r.stdout)
	}
	v, ok := e.volumeNamed("fra1", "db-restored")
	if !ok {
		t.Fatalf("no volume fra1/db-restored after the restore")
	}
	if out.ID != v.ID || out.Name != "db-restored" || out.Region != "fra1" {
		t.Errorf("restore.sh printed %+v, want volume %s", out, v.ID)
	}
	if got, want := prefixDigest(t, e.emu.VolumeFile(v.ID), size), digest(t, img); got != want {
		t.Errorf("the restored volume differs from the image: xxhash %s, want %s", got, want)
	}
	if want := sha256File(t, img); out.SHA256 != want {
		t.Errorf("restore.sh reported sha256 %s, want %s", out.SHA256, want)
	}
	e.checkNothingLeft("fra1/db-restored")

	// A kept version into another new volume.
	version, old := e.keptVersion(img)
	// (--no-sha256: the first restore covered that check; the volume is
	// compared with the version below anyway.)
	r = e.restore("--volume-name", "db-previous", "--region", "fra1", "--version", version, "--no-sha256", img)
	if r.code != 0 {
		t.Fatalf("restore.sh --version exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
	}
	if want := source + ", version " + version + " of " + img + ": "; !strings.Contains(r.stderr, want) {
		t.Errorf("the log does not say %q:\n%s", want, r.stderr)
	}
	e.checkRestored("fra1", "db-previous", size, old)
	if digest(t, old) == digest(t, img) {
		t.Errorf("the kept version equals the newest backup: the test proves nothing")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(img), ".restore-*")); len(leftovers) != 0 {
		t.Errorf("temporary version files left: %v", leftovers)
	}
	e.checkNothingLeft("fra1/db-restored", "fra1/db-previous")

	// Restoring onto a name that exists is refused, and touches nothing.
	before := e.emu.State()
	dbFile := digest(t, e.sourceFile("fra1/db"))
	r = e.restore("--volume-name", "db", "--region", "fra1", img)
	if r.code != 4 {
		t.Fatalf("restore.sh onto the existing volume db exited %d, want 4\nstderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "db") {
		t.Errorf("the refusal does not name the volume:\n%s", r.stderr)
	}
	if got := digest(t, e.sourceFile("fra1/db")); got != dbFile {
		t.Errorf("the existing volume db was written to")
	}
	if diff := stateDiff(before, e.emu.State()); diff != "" {
		t.Errorf("a refused restore changed the account: %s", diff)
	}
}

// TestRestoreInterruptedWhileProvisioning: a restore.sh stopped by SIGTERM
// while dosvob-provision is still at work deletes what its run had created
// by then, by its run id: the droplet and the key go. Its last lines say
// whether the new volume was made. Stopped at the attach, it was: named,
// with its id, and kept, and the same --volume-name is refused (exit 4)
// until it is deleted, as a rerun shows. Stopped while the volume was
// being created, it was not. Before, the log said only "the new volume, if
// made, is kept".
func TestRestoreInterruptedWhileProvisioning(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	img := e.looseImage()
	// stopAt starts a restore into name, hangs the API call that fault
	// names, stops the restore with SIGTERM once the call hangs, and
	// returns its result and last two lines.
	stopAt := func(fault doemu.Fault, name string) (result, []string) {
		e.emu.InjectFault(fault)
		cmd, stdout, stderr := e.script("restore.sh", "--config", e.conf, "--volume-name", name, "--region", "fra1", img)
		done := e.start(cmd, stdout, stderr)
		deadline := time.Now().Add(60 * time.Second)
		for e.emu.PendingFaults() != 0 {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("provisioning never reached %s %s\nstderr:\n%s", fault.Method, fault.Path, (<-done).stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		if n := len(e.emu.State().Droplets); n != len(e.initial.Droplets)+1 {
			t.Fatalf("%d droplets while provisioning, want the restore's besides the user's", n)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		r := waitKill(t, cmd, done, "SIGTERM")
		if r.code != 130 {
			t.Fatalf("restore.sh exited %d after SIGTERM, want 130\nstderr:\n%s", r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "provisioning did not finish") {
			t.Errorf("restore.sh does not say what it tore down:\n%s", r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		return r, lines[max(len(lines)-2, 0):]
	}

	r, last := stopAt(doemu.Fault{Method: "POST", Path: `/v2/volumes/[^/]+/actions`, Hang: true}, "halfway")
	v, ok := e.volumeNamed("fra1", "halfway")
	if !ok {
		t.Fatalf("the new volume was deleted; a restore's volume is kept\nstderr:\n%s", r.stderr)
	}
	if len(last) != 2 ||
		!strings.HasSuffix(last[0], "restore: the restore was stopped while provisioning: the new volume halfway ("+v.ID+
			") was made and is kept, empty; a restore with --volume-name halfway is refused (exit 4) while it exists") ||
		!strings.HasSuffix(last[1], "restore: hint: delete it in the control panel, or run restore.sh again with another --volume-name") {
		t.Errorf("the last lines do not say that halfway (%s) was made and is kept, and what to do:\n%s", v.ID, r.stderr)
	}
	e.checkNothingLeft("fra1/halfway")

	// The rerun with the same name is refused, as the last lines said.
	before := e.emu.State()
	r = e.restore("--volume-name", "halfway", "--region", "fra1", img)
	if r.code != 4 || !strings.Contains(r.stderr, "restore: refusing to restore into halfway: ") ||
		!strings.Contains(r.stderr, "(or delete halfway first, if an interrupted restore left it)") {
		t.Errorf("the rerun into halfway exited %d, want 4, refused with a hint\nstderr:\n%s", r.code, r.stderr)
	}
	if diff := stateDiff(before, e.emu.State()); diff != "" {
		t.Errorf("the refused rerun changed the account: %s", diff)
	}

	r, last = stopAt(doemu.Fault{Method: "POST", Path: `/v2/volumes`, Hang: true}, "never-made")
	if _, ok := e.volumeNamed("fra1", "never-made"); ok {
		t.Fatalf("the volume was made although its creation hung: the test proves nothing")
	}
	if len(last) == 0 || !strings.HasSuffix(last[len(last)-1], "restore: the restore was stopped while provisioning: the new volume never-made was not made (its run recorded none)") {
		t.Errorf("the last line does not say that never-made was not made:\n%s", r.stderr)
	}
	e.checkNothingLeft("fra1/halfway")
}

// TestRestoreBadConfig: a config that dosvob-provision refuses (exit 2) is
// a usage error of restore.sh too (exit 2), not a provisioning failure.
func TestRestoreBadConfig(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "conf.json")
	writeFile(t, conf, `{"do_token": "x", "regoin": "fra1"}`+"\n", 0o600)
	img := filepath.Join(dir, "some.img")
	dosvobImage(t, binDir(t), img, "a dosvob image\n")
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "restore.sh"), "--config", conf,
		"--volume-name", "new", "--region", "fra1", img)
	cmd.Env = append(os.Environ(), "DOSVOB_BIN="+binDir(t), "XDG_STATE_HOME="+filepath.Join(dir, "state"), "TMPDIR="+dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "regoin") {
		t.Fatalf("restore.sh with a bad config: %v, want exit 2 naming the field\n%s", err, out)
	}
}

func stateDiff(a, b doemu.State) string {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) == string(jb) {
		return ""
	}
	return "before " + string(ja) + "\nafter " + string(jb)
}
