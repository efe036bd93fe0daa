package main

import (
	"bytes"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/imagestore"
	"github.com/klauspost/compress/zstd"
)

// TestTwoPatchesAtOnce: while one dosvob-patch is running on an image (here
// waiting for its stream), a second one fails fast with exit 6.
func TestTwoPatchesAtOnce(t *testing.T) {
	bin := buildBinary(t)
	img := filepath.Join(t.TempDir(), "vol.img")
	// The pipe's first stage makes the state directory, which holds the
	// lock; a patch started before it takes the lock with its stream.
	if out, err := exec.Command("sh", "-c", `"$1" "$2" >/dev/null`, "sh", buildHash(t), img).CombinedOutput(); err != nil {
		t.Fatalf("dosvob-hash: %v\n%s", err, out)
	}
	first := exec.Command(bin, img)
	in, err := first.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var firstErr bytes.Buffer
	first.Stderr = &firstErr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { in.Close(); first.Wait() }()
	// Wait until the first one holds the lock.
	deadline := time.Now().Add(10 * time.Second)
	for {
		second := exec.Command(bin, img)
		second.Stdin = strings.NewReader("")
		out, err := second.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 6 {
			if !strings.Contains(string(out), "is locked by another dosvob process") {
				t.Fatalf("exit 6 without a clear message: %s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second dosvob-patch never reported locked: %v %s", err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	second := exec.Command(bin, img)
	second.Stdin = strings.NewReader("")
	second.Run()
	// The first run waits for its stream forever: the second must not.
	if el := time.Since(start); el > 20*time.Second {
		t.Fatalf("locked run took %v to fail; want fast", el)
	}
	in.Close()
	first.Wait()
}

// TestRealPipe runs the three real binaries as a user does:
// dosvob-hash IMG | dosvob-hash --delta DEV | dosvob-patch IMG.
func TestRealPipe(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	dir := t.TempDir()
	img, dev := filepath.Join(dir, "backup.img"), filepath.Join(dir, "dev")
	r := rand.New(rand.NewPCG(31, 32))
	cur := device(r, 3<<20)
	pipe := func(extra string) string {
		os.WriteFile(dev, cur, 0o644)
		c := exec.Command("bash", "-o", "pipefail", "-c", `"$1" "$3" | "$1" --delta "$4" | "$2" `+extra+` "$3"`, "sh", hash, bin, img, dev)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("pipe: %v\n%s", err, out)
		}
		mustEqualFile(t, img, cur)
		return string(out)
	}
	pipe("--keep 3")
	v1 := cur
	cur = mutate(r, cur, 40)
	out := pipe("")
	if !strings.Contains(out, "generation 2") {
		t.Fatalf("second run: %s", out)
	}
	cur = append(mutate(r, cur, 5), device(r, 1<<20)...)
	pipe("")
	// The oldest kept version restores byte for byte.
	restored := filepath.Join(dir, "v1.img")
	if out, err := exec.Command(bin, "restore-version", "--version", "latest", "--output", restored, img).CombinedOutput(); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	m, _ := exec.Command(bin, "versions", img).Output()
	t.Logf("versions:\n%s", m)
	lines := strings.Split(strings.TrimSpace(string(m)), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 2 versions listed, got:\n%s", m)
	}
	oldest := strings.Fields(lines[2])[0]
	os.Remove(restored)
	if out, err := exec.Command(bin, "restore-version", "--version", oldest, "--output", restored, img).CombinedOutput(); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	mustEqualFile(t, restored, v1)
	// Scrub through dosvob-hash --verify.
	if out, err := exec.Command(hash, "--verify", img).CombinedOutput(); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	f.WriteAt([]byte{0xAA}, 1<<20+5)
	f.Close()
	out2, err := exec.Command(hash, "--verify", img).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(string(out2), "offset 1048576") {
		t.Fatalf("verify of a damaged image: %v\n%s", err, out2)
	}
}

// buildHash builds dosvob-hash beside dosvob-patch (once) and returns it.
func buildHash(t *testing.T) string {
	t.Helper()
	hash := filepath.Join(filepath.Dir(buildBinary(t)), "dosvob-hash")
	if _, err := os.Stat(hash); err != nil {
		if out, err := exec.Command("go", "build", "-o", hash, "../dosvob-hash").CombinedOutput(); err != nil {
			t.Fatalf("build dosvob-hash: %v\n%s", err, out)
		}
	}
	return hash
}

func mustEqualFile(t *testing.T, name string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the device (%d vs %d bytes)", filepath.Base(name), len(got), len(want))
	}
}

// pipeFiles returns the two binaries, a scratch directory and the paths of
// an image and a device file in it.
func pipeFiles(t *testing.T) (bin, hash, dir, img, dev string) {
	t.Helper()
	bin, hash, dir = buildBinary(t), buildHash(t), t.TempDir()
	return bin, hash, dir, filepath.Join(dir, "backup.img"), filepath.Join(dir, "dev")
}

// TestRealPipeResume cuts the first backup's stream half way (as a dying
// ssh would), then runs the pipe again: the second run sends only the
// blocks that had not landed.
func TestRealPipeResume(t *testing.T) {
	bin, hash, dir, img, dev := pipeFiles(t)
	r := rand.New(rand.NewPCG(61, 62))
	data := device(r, 4<<20)
	os.WriteFile(dev, data, 0o644)
	changed := func(out string) int {
		i := strings.Index(out, " changed")
		j := strings.LastIndex(out[:max(i, 0)], " ")
		if i < 0 || j < 0 {
			t.Fatalf("no delta summary in:\n%s", out)
		}
		n, _ := strconv.Atoi(out[j+1 : i])
		return n
	}
	// The full first backup would send this many blocks:
	full, err := exec.Command("bash", "-o", "pipefail", "-c", `"$1" "$2" | "$1" --delta "$3" >/dev/null`, "sh", hash, filepath.Join(dir, "none.img"), dev).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, full)
	}
	all := changed(string(full))
	cut := exec.Command("bash", "-c", `"$1" "$3" | "$1" --delta "$4" | head -c 400000 | "$2" "$3"`, "sh", hash, bin, img, dev)
	out, err := cut.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "dosvob-patch: delta stream: stream ends") {
		t.Fatalf("cut stream: %v\n%s", err, out)
	}
	if exists(img) {
		t.Fatal("an interrupted first backup created the image")
	}
	out, err = exec.Command("bash", "-o", "pipefail", "-c", `"$1" "$3" | "$1" --delta "$4" | "$2" "$3"`, "sh", hash, bin, img, dev).CombinedOutput()
	if err != nil {
		t.Fatalf("resumed pipe: %v\n%s", err, out)
	}
	again := changed(string(out))
	t.Logf("first backup: %d blocks to send; after a cut at 400000 bytes the resumed run sent %d", all, again)
	if again >= all || again == 0 {
		t.Fatalf("resumed run sent %d of %d blocks", again, all)
	}
	if !strings.Contains(string(out), "signed partial image") || !strings.Contains(string(out), "resumed") {
		t.Fatalf("resume not reported:\n%s", out)
	}
	mustEqualFile(t, img, data)
}

// TestVersionsExitCodes: the exit codes of versions and restore-version
// that docs/EXIT-CODES.md gives: 1 for a missing image, 4 for a file that
// is not a dosvob image, 5 for a damaged or missing version file.
func TestVersionsExitCodes(t *testing.T) {
	bin := buildBinary(t)
	r := rand.New(rand.NewPCG(61, 62))
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	dev := device(r, 100000)
	for range 3 {
		d, err := makeDelta(img, dev, 4096)
		if err != nil {
			t.Fatal(err)
		}
		c := exec.Command(bin, "--keep", "2", "--quiet", img)
		c.Stdin = bytes.NewReader(d)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("patch: %v\n%s", err, out)
		}
		dev = mutate(r, dev, 5)
	}
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("not a backup"), 0o644)
	vdir := filepath.Join(img+".dosvob", "versions")
	vs, _ := os.ReadDir(vdir)
	if len(vs) != 2 {
		t.Fatalf("%d kept versions, want 2", len(vs))
	}
	// The oldest version, whose restore reads both files.
	oldest := strings.TrimSuffix(vs[1].Name(), ".delta")
	f, _ := os.OpenFile(filepath.Join(vdir, vs[1].Name()), os.O_RDWR, 0)
	f.WriteAt([]byte("damage"), 200)
	f.Close()
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"versions", filepath.Join(dir, "missing")}, 1, "does not exist"},
		{[]string{"versions", plain}, 4, "has no dosvob manifest"},
		{[]string{"restore-version", "--version", "latest", "-o", filepath.Join(dir, "o1"), plain}, 4, "has no dosvob manifest"},
		{[]string{"restore-version", "--version", oldest, "-o", filepath.Join(dir, "o2"), img}, 5, "kept version is damaged"},
	}
	for _, c := range cases {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != c.code || !strings.Contains(string(out), c.msg) {
			t.Errorf("%v: %v, want exit %d and %q:\n%s", c.args, err, c.code, c.msg, out)
		}
	}
	os.Remove(filepath.Join(vdir, vs[1].Name()))
	out, err := exec.Command(bin, "restore-version", "--version", oldest, "-o", filepath.Join(dir, "o3"), img).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(string(out), "is missing: kept version is damaged") {
		t.Errorf("missing version file: %v\n%s", err, out)
	}
}

// TestBytesAfterStream: a valid delta stream followed by a skippable zstd
// frame, an empty zstd frame or plain garbage is a bad stream (exit 3),
// refused before the commit: the image stays the previous backup. The
// decompressor alone would take in the two kinds of frame silently.
func TestBytesAfterStream(t *testing.T) {
	bin, hash, dir, img, dev := pipeFiles(t)
	r := rand.New(rand.NewPCG(71, 72))
	v1 := device(r, 1<<20)
	os.WriteFile(dev, v1, 0o644)
	pipe := func(trailer string) (string, error) {
		c := exec.Command("bash", "-o", "pipefail", "-c", `"$1" "$3" | "$1" --delta "$4" | cat - "$5" | "$2" "$3"`,
			"sh", hash, bin, img, dev, trailer)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	none := filepath.Join(dir, "none")
	os.WriteFile(none, nil, 0o644)
	if out, err := pipe(none); err != nil {
		t.Fatalf("first backup: %v\n%s", err, out)
	}
	manifest, _ := os.ReadFile(filepath.Join(img+".dosvob", "manifest.json"))
	var empty bytes.Buffer
	enc, _ := zstd.NewWriter(&empty, zstd.WithZeroFrames(true))
	enc.Close()
	trailers := map[string][]byte{
		"skippable frame": {0x5A, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 'a', 'b', 'c'},
		"empty frame":     empty.Bytes(),
		"garbage":         []byte("garbage"),
	}
	os.WriteFile(dev, mutate(r, v1, 20), 0o644)
	for name, b := range trailers {
		trailer := filepath.Join(dir, "trailer")
		os.WriteFile(trailer, b, 0o644)
		out, err := pipe(trailer)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(out, "dosvob-patch: delta stream: data after the compressed stream") {
			t.Errorf("%s after the stream: %v, want exit 3 naming the data after the stream:\n%s", name, err, out)
		}
		mustEqualFile(t, img, v1)
		if m, _ := os.ReadFile(filepath.Join(img+".dosvob", "manifest.json")); !bytes.Equal(m, manifest) {
			t.Errorf("%s after the stream: the manifest changed", name)
		}
	}
	if out, err := pipe(none); err != nil {
		t.Fatalf("the same pipe without the trailer: %v\n%s", err, out)
	}
}

// TestNoStateLeftBehind: a command that only reads, or that is refused,
// leaves the directory as it was. Aimed at a missing file or at a file
// dosvob did not make, none may create IMAGE.dosvob/; only the start of a
// backup (dosvob-hash IMAGE) makes it.
func TestNoStateLeftBehind(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(81, 82))
	os.WriteFile(filepath.Join(dir, "plain"), device(r, 20000), 0o644)
	os.WriteFile(filepath.Join(dir, "garbage"), []byte("not a stream of any kind"), 0o644)
	sig, err := exec.Command(hash, "--raw", filepath.Join(dir, "plain")).Output()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "sig"), sig, 0o644)
	listing := func() string {
		var names []string
		filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error {
			names = append(names, strings.TrimPrefix(p, dir))
			return nil
		})
		return strings.Join(names, "\n")
	}
	for _, target := range []string{"missing.img", "plain"} {
		img := filepath.Join(dir, target)
		out := filepath.Join(dir, "out")
		for _, c := range []struct {
			stdin string
			cmd   []string
		}{
			{"", []string{hash, "--verify", img}},
			{"sig", []string{hash, "--delta", img}},
			{"", []string{hash, "--raw", img}},
			{"", []string{bin, "versions", img}},
			{"", []string{bin, "versions", "--json", img}},
			{"", []string{bin, "restore-version", "--version", "latest", "--output", out, img}},
			{"garbage", []string{bin, "--raw", img}},
			{"garbage", []string{bin, img}},
			{"garbage", []string{bin, "--force", img}},
		} {
			before := listing()
			cmd := exec.Command(c.cmd[0], c.cmd[1:]...)
			if c.stdin != "" {
				f, err := os.Open(filepath.Join(dir, c.stdin))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				cmd.Stdin = f
			}
			msg, _ := cmd.CombinedOutput()
			if after := listing(); after != before {
				t.Errorf("%s %q changed the directory:\nbefore:%s\nafter:%s\n%s", filepath.Base(c.cmd[0]), c.cmd[1:], before, after, msg)
			}
			if imagestore.HasState(img) {
				os.RemoveAll(img + ".dosvob")
			}
		}
	}
	// Read-only commands on a backup leave its state directory as it was.
	img, dev := filepath.Join(dir, "backup.img"), filepath.Join(dir, "plain")
	if out, err := exec.Command("bash", "-o", "pipefail", "-c", `"$1" "$3" | "$1" --delta "$4" | "$2" --keep 2 "$3"`, "sh", hash, bin, img, dev).CombinedOutput(); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	for _, args := range [][]string{{bin, "versions", img}, {hash, "--delta", img}} {
		before := listing()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = bytes.NewReader(sig)
		if out, err := cmd.Output(); err != nil {
			t.Fatalf("%q: %v\n%s", args, err, out)
		}
		if after := listing(); after != before {
			t.Errorf("%q changed the directory:\nbefore:%s\nafter:%s", args, before, after)
		}
	}
}

// TestTwoPipelinesOneImage runs two real pipelines on one image,
// interleaved stage by stage: both dosvob-hash IMAGE first, then both
// deltas, then both patches. Each patch finds its own signing record; the
// first commits, the second fails with exit 6 saying another run committed,
// and the image is exactly the first one's backup (one generation, one kept
// version). Then both whole pipelines run at once, a few times: each either
// backs up or fails with exit 6 in some stage, and the image is always one
// of the devices, intact.
func TestTwoPipelinesOneImage(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "backup.img")
	devA, devB := filepath.Join(dir, "devA"), filepath.Join(dir, "devB")
	r := rand.New(rand.NewPCG(91, 92))
	v1 := device(r, 2<<20)
	os.WriteFile(devA, v1, 0o644)
	sh := func(script string, args ...string) (string, error) {
		out, err := exec.Command("bash", append([]string{"-o", "pipefail", "-c", script, "sh"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := sh(`"$1" "$3" | "$1" --delta "$4" | "$2" --keep 5 "$3"`, hash, bin, img, devA); err != nil {
		t.Fatalf("first backup: %v\n%s", err, out)
	}
	a, b := mutate(r, v1, 30), mutate(r, v1, 30)
	os.WriteFile(devA, a, 0o644)
	os.WriteFile(devB, b, 0o644)
	stage := func(name, script string, args ...string) {
		t.Helper()
		if out, err := sh(script, args...); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	sigA, sigB, dA, dB := filepath.Join(dir, "sigA"), filepath.Join(dir, "sigB"), filepath.Join(dir, "dA"), filepath.Join(dir, "dB")
	stage("sign A", `"$1" "$2" > "$3"`, hash, img, sigA)
	stage("sign B", `"$1" "$2" > "$3"`, hash, img, sigB)
	stage("delta A", `"$1" --delta "$2" < "$3" > "$4"`, hash, devA, sigA, dA)
	stage("delta B", `"$1" --delta "$2" < "$3" > "$4"`, hash, devB, sigB, dB)
	stage("patch A", `"$1" "$2" < "$3"`, bin, img, dA)
	out, err := sh(`"$1" "$2" < "$3"`, bin, img, dB)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 6 || !strings.Contains(out, "another run committed generation 2 of") {
		t.Fatalf("patch B after A committed: %v, want exit 6 saying another run committed:\n%s", err, out)
	}
	mustEqualFile(t, img, a)
	vs, _ := exec.Command(bin, "versions", img).Output()
	if n := len(strings.Split(strings.TrimSpace(string(vs)), "\n")) - 1; n != 1 {
		t.Fatalf("%d kept versions after one committed run, want 1:\n%s", n, vs)
	}
	if out, err := exec.Command(hash, "--verify", img).CombinedOutput(); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	if left, _ := filepath.Glob(filepath.Join(img+".dosvob", "sign*")); len(left) != 0 {
		t.Fatalf("signing records left behind: %v", left)
	}

	// Both whole pipelines at once.
	cur := a
	for round := range 6 {
		a, b = mutate(r, cur, 20), mutate(r, cur, 20)
		os.WriteFile(devA, a, 0o644)
		os.WriteFile(devB, b, 0o644)
		type result struct {
			out    string
			status string
		}
		results := make(chan result, 2)
		for _, dev := range []string{devA, devB} {
			go func() {
				// PIPESTATUS: the exit code of every stage.
				out, _ := sh(`"$1" "$3" | "$1" --delta "$4" | "$2" "$3"; echo "status ${PIPESTATUS[*]}"`, hash, bin, img, dev)
				i := strings.LastIndex(out, "status ")
				results <- result{out, strings.TrimSpace(out[i+len("status "):])}
			}()
		}
		ok := 0
		for _, res := range []result{<-results, <-results} {
			if res.status == "0 0 0" {
				ok++
				continue
			}
			// A failing stage takes the others down: a cut stream (3), a
			// closed pipe (141, SIGPIPE). One of them must be exit 6.
			codes := strings.Fields(res.status)
			if !slices.Contains(codes, "6") || slices.ContainsFunc(codes, func(c string) bool { return !slices.Contains([]string{"0", "3", "6", "141"}, c) }) {
				t.Fatalf("round %d: a pipeline failed without exit 6 in a stage (stage codes %s):\n%s", round, res.status, res.out)
			}
			if !strings.Contains(res.out, "locked") && !strings.Contains(res.out, "another run") && !strings.Contains(res.out, "another dosvob") {
				t.Fatalf("round %d: exit 6 without a clear message:\n%s", round, res.out)
			}
		}
		if ok == 0 {
			t.Fatalf("round %d: neither pipeline backed up", round)
		}
		got, _ := os.ReadFile(img)
		switch {
		case bytes.Equal(got, a):
			cur = a
		case bytes.Equal(got, b):
			cur = b
		default:
			t.Fatalf("round %d: the image is neither device", round)
		}
		if out, err := exec.Command(hash, "--verify", img).CombinedOutput(); err != nil {
			t.Fatalf("round %d: verify: %v\n%s", round, err, out)
		}
		t.Logf("round %d: %d of 2 pipelines backed up", round, ok)
	}
}

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

// pipeDevice is pipeFiles with a random device of size bytes (from seed)
// written to dev; it returns the generator and the device's bytes too.
func pipeDevice(t *testing.T, seed uint64, size int) (bin, hash, img, dev string, r *rand.Rand, cur []byte) {
	t.Helper()
	bin, hash, _, img, dev = pipeFiles(t)
	r = rand.New(rand.NewPCG(seed, seed+1))
	cur = device(r, size)
	if err := os.WriteFile(dev, cur, 0o644); err != nil {
		t.Fatal(err)
	}
	return bin, hash, img, dev, r, cur
}

const fullPipe = `"$1" "$3" | "$1" --delta "$4" | "$2" "$3"`

// TestDamagedManifest: a manifest.json cut short is reported by every
// command as damage of the backup's state (exit 5) with a one-line message
// naming the file and a hint, and the hint's cheap way out works: with the
// manifest moved aside, one run with --force takes the image as its base.
func TestDamagedManifest(t *testing.T) {
	bin, hash, img, dev, r, cur := pipeDevice(t, 81, 2<<20)
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
	bin, hash, img, dev, r, cur := pipeDevice(t, 83, 2<<20)
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

// TestFailedFirstBackupRecord: a first backup's partial image keeps what a
// failed run wrote, though its base (image id, generation 0, size) may stay
// the same. The signing record that run's delta was made against then no
// longer describes the partial image: a delta made against it must be
// refused, never applied as if the partial were what was signed (that
// would skip blocks that differ and commit a wrong image with exit 0).
func TestFailedFirstBackupRecord(t *testing.T) {
	bin, hash, img, dev, r, _ := pipeDevice(t, 91, 0)
	dev0 := make([]byte, 4<<20) // random throughout: its delta is as large
	for i := range dev0 {
		dev0[i] = byte(r.Uint32())
	}
	os.WriteFile(dev, dev0, 0o644)
	run := func(want int, script string) string {
		t.Helper()
		out, code := runExit(t, hash, bin, img, dev, script)
		if code != want {
			t.Fatalf("%s: exit %d, want %d\n%s", script, code, want, out)
		}
		return out
	}
	run(0, `"$1" -q "$3" >"$3.sig0"`)
	out := run(3, `"$1" -q --delta "$4" <"$3.sig0" | head -c 2500000 | "$2" "$3"`)
	if strings.Contains(out, "is unchanged") {
		t.Errorf("a cut first backup that kept a partial image says the image is unchanged:\n%s", out)
	}
	partial := filepath.Join(img+".dosvob", "partial")
	fi, err := os.Stat(partial)
	if err != nil {
		t.Fatal(err)
	}
	size := fi.Size()
	run(0, `"$1" -q "$3" >"$3.sig1"`)
	// dev1: blocks 3 to 100 changed; its delta cut so that the partial
	// keeps its size but not its content.
	dev1 := append([]byte(nil), dev0...)
	for i := 3 * 4096; i < 101*4096; i++ {
		dev1[i] = byte(r.Uint32())
	}
	os.WriteFile(dev, dev1, 0o644)
	before, _ := os.ReadFile(partial)
	run(3, `"$1" -q --delta "$4" <"$3.sig1" | head -c 250000 | "$2" "$3"`)
	after, _ := os.ReadFile(partial)
	if int64(len(after)) != size || bytes.Equal(before, after) {
		t.Fatalf("the second cut run did not change the partial image in place (size %d -> %d)", size, len(after))
	}
	// The same signature again, now with dev0: its record describes the
	// partial as it was before the second cut run.
	os.WriteFile(dev, dev0, 0o644)
	out, code := runExit(t, hash, bin, img, dev, `"$1" -q --delta "$4" <"$3.sig1" | "$2" "$3"`)
	if code == 0 {
		if got, _ := os.ReadFile(img); !bytes.Equal(got, dev0) {
			t.Fatalf("a delta made against a stale record of the partial image committed a wrong image with exit 0:\n%s", out)
		}
	} else if code != 3 || !strings.Contains(out, "since this signature was made") {
		t.Fatalf("stale record: exit %d, want 3 naming why\n%s", code, out)
	}
	if exists(img) && code != 0 {
		t.Fatal("a refused delta created the image")
	}
	// The next whole pipe resumes the partial and completes the backup.
	run(0, fullPipe)
	mustEqualFile(t, img, dev0)
}

// TestDamagedManifestWithJournal: a run killed while it wrote the image
// leaves its journal; if the manifest is then damaged, the journal cannot
// be checked against it (nor undone). The hint must say to move the journal
// aside with the manifest (moving only the manifest makes every open refuse
// the journal, exit 4), and its way out must give an exact backup: the
// --force run reads the whole image, half-written as it is, as its base.
func TestDamagedManifestWithJournal(t *testing.T) {
	bin, hash, img, dev, r, cur := pipeDevice(t, 85, 2<<20)
	state := img + ".dosvob"
	journal, manifest := filepath.Join(state, "journal"), filepath.Join(state, "manifest.json")
	if out, code := runExit(t, hash, bin, img, dev, `"$1" "$3" | "$1" --delta "$4" | "$2" --keep 2 "$3"`); code != 0 {
		t.Fatalf("first backup: exit %d\n%s", code, out)
	}
	// Kill dosvob-patch at a step after it has written blocks in place.
	old := cur
	cur = mutate(r, cur, 20)
	os.WriteFile(dev, cur, 0o644)
	for k := 1; ; k++ {
		if k > 200 {
			t.Fatal("no crash step left a journal and a half-written image")
		}
		out, code := runExit(t, hash, bin, img, dev, `"$1" "$3" | "$1" --delta "$4" | DOSVOB_TEST_CRASH_AT=`+strconv.Itoa(k)+` "$2" "$3"`)
		if code == 0 {
			t.Fatalf("crash step %d: the run completed\n%s", k, out)
		}
		got, _ := os.ReadFile(img)
		if exists(journal) && !bytes.Equal(got, old) && !bytes.Equal(got, cur) {
			break
		}
	}
	if err := os.Truncate(manifest, 100); err != nil {
		t.Fatal(err)
	}
	for _, script := range []string{fullPipe, `"$1" --verify "$3"`} {
		out, code := runExit(t, hash, bin, img, dev, script)
		if code != 5 || !strings.Contains(out, `: hint: move "`+manifest+`" and "`+journal+`" aside`) {
			t.Fatalf("%s on a damaged manifest with a journal: exit %d, want 5 and a hint naming both files\n%s", script, code, out)
		}
	}
	for _, f := range []string{manifest, journal} {
		if err := os.Rename(f, filepath.Join(filepath.Dir(img), filepath.Base(f)+".damaged")); err != nil {
			t.Fatal(err)
		}
	}
	out, code := runExit(t, hash, bin, img, dev, `"$1" "$3" | "$1" --delta "$4" | "$2" --force "$3"`)
	if code != 0 {
		t.Fatalf("pipe with --force after moving the manifest and the journal aside: exit %d\n%s", code, out)
	}
	mustEqualFile(t, img, cur)
	if out, code := runExit(t, hash, bin, img, dev, `"$1" --verify "$3"`); code != 0 {
		t.Fatalf("verify after the way out: exit %d\n%s", code, out)
	}
}
