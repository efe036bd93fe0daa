package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/format"
	"github.com/dosvob/dosvob/internal/testenv"
)

// rawDelta is the delta that dosvob-hash --raw TARGET | dosvob-hash --delta
// SRC produces: against a raw signature (no image id) of target.
func rawDelta(t *testing.T, target, src []byte) []byte {
	t.Helper()
	const bs = 4096
	seed := rand.Uint64()
	base := format.Base{Size: uint64(len(target))}
	var sig bytes.Buffer
	sw, _ := format.NewSigWriter(&sig, format.SigHeader{BlockSize: bs, Seed: seed, Base: base})
	n := format.BlockCount(uint64(len(target)), bs)
	old := make([]uint64, n)
	for i := range n {
		old[i] = format.HashBlock(seed, target[i*bs:i*bs+uint64(format.BlockLen(uint64(len(target)), bs, i))])
		sw.Add(old[i])
	}
	var out bytes.Buffer
	h := format.DeltaHeader{BlockSize: bs, DeviceSize: uint64(len(src)), Seed: seed, Base: base}
	dw, _ := format.NewDeltaWriter(&out, h, format.DeltaOptions{})
	bd := format.NewBlockDigester()
	for i := range h.Blocks() {
		b := src[i*bs : i*bs+uint64(h.BlockLen(i))]
		hh := format.HashBlock(seed, b)
		bd.Add(hh)
		if i < n && old[i] == hh {
			continue
		}
		if bytes.Count(b, []byte{0}) == len(b) {
			dw.Zero(i)
		} else {
			dw.Data(i, b)
		}
	}
	if _, err := dw.Close(format.End{SigDigest: sw.Digest(), BlockDigest: bd.Sum64(), DeviceDigest: format.HashBlock(0, src)}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestRawOntoFile(t *testing.T) {
	bin := buildBinary(t)
	r := rand.New(rand.NewPCG(41, 42))
	dir := t.TempDir()
	target := filepath.Join(dir, "vol")
	old := device(r, 300*1024)
	src := mutate(r, old, 20)[:250*1024+5]
	os.WriteFile(target, old, 0o644)
	cmd := exec.Command(bin, "--raw", target)
	cmd.Stdin = bytes.NewReader(rawDelta(t, old, src))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("--raw: %v\n%s", err, out)
	}
	mustEqualFile(t, target, src)
	if exists(target + ".dosvob") {
		t.Fatal("--raw made a state directory")
	}
	// A delta made against other content is refused before writing.
	cmd = exec.Command(bin, "--raw", target)
	cmd.Stdin = bytes.NewReader(rawDelta(t, old, old))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "made against 307200 bytes") {
		t.Fatalf("mismatched raw delta: %v\n%s", err, out)
	}
	mustEqualFile(t, target, src)

	// A backup image is never written raw: no journal, and its manifest
	// and versions would describe other content (exit 4, nothing changes).
	os.Mkdir(target+".dosvob", 0o755)
	cmd = exec.Command(bin, "--raw", target)
	cmd.Stdin = bytes.NewReader(rawDelta(t, src, old))
	out, err = cmd.CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(string(out), "it is a backup image, not a new volume") {
		t.Fatalf("raw delta onto a backup image: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	mustEqualFile(t, target, src)

	// Nor through a symbolic link to it, nor through a hard link of it.
	for _, link := range []func(string, string) error{os.Symlink, os.Link} {
		alias := filepath.Join(dir, "restore-target")
		if err := link(target, alias); err != nil {
			t.Fatal(err)
		}
		cmd = exec.Command(bin, "--raw", alias)
		cmd.Stdin = bytes.NewReader(rawDelta(t, src, old))
		out, err = cmd.CombinedOutput()
		if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(string(out), "backup image") {
			t.Fatalf("raw delta onto a backup image through a link: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		mustEqualFile(t, target, src)
		os.Remove(alias)
	}
}

// TestRawOntoLoopDevice restores onto a real block device larger than the
// image, as restore.sh does onto a new volume.
func TestRawOntoLoopDevice(t *testing.T) {
	bin := buildBinary(t)
	dev := loopDevice(t, 2<<20)
	r := rand.New(rand.NewPCG(43, 44))
	src := device(r, 1<<20+4096*3+100)
	cur := make([]byte, 2<<20)
	cmd := exec.Command(bin, "--raw", dev)
	cmd.Stdin = bytes.NewReader(rawDelta(t, cur, src))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("--raw onto %s: %v\n%s", dev, err, out)
	}
	got := make([]byte, 2<<20)
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(src)], src) || bytes.Count(got[len(src):], []byte{0}) != len(got)-len(src) {
		t.Fatal("device content is not the image followed by the untouched zeros")
	}
}

func exists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// loopDevice attaches a loop device over a new file of size bytes and
// detaches it when the test ends. Without root or losetup it skips, except
// under CI=true, where it fails.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "loop.img")
	if err := os.Truncate(file, size); err != nil {
		f, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Truncate(file, size); err != nil {
			t.Fatal(err)
		}
	}
	return testenv.LoopDevice(t, file)
}

// TestRestoreAfterKill: a backup killed half way leaves an image that is
// neither backup until something opens its store. The local side of a
// restore (dosvob-hash --delta IMAGE) must open it so, and send exactly the
// previous backup, not the torn image.
func TestRestoreAfterKill(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	r := rand.New(rand.NewPCG(51, 52))
	dir := t.TempDir()
	img, dev := filepath.Join(dir, "backup.img"), filepath.Join(dir, "dev")
	v1 := device(r, 12<<20)
	v2 := append([]byte(nil), v1...)
	for i := range v2 {
		v2[i] ^= 0x5a // every block changes: several journal batches
	}
	// run runs the pipe; crashAt, if set, kills dosvob-patch at that step.
	run := func(crashAt string) error {
		c := exec.Command("bash", "-c", `"$1" "$3" | "$1" --delta "$4" | DOSVOB_TEST_CRASH_AT="$5" "$2" --quiet "$3"`,
			"sh", hash, bin, img, dev, crashAt)
		out, err := c.CombinedOutput()
		if err != nil && crashAt == "" {
			t.Fatalf("pipe: %v: %s", err, out)
		}
		return err
	}
	cp := func(to string, from ...string) {
		if out, err := exec.Command("cp", append(append([]string{"-a"}, from...), to)...).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
	}
	os.WriteFile(dev, v1, 0o644)
	run("")
	mustEqualFile(t, img, v1)
	saved := t.TempDir()
	cp(saved, img, img+".dosvob")
	os.WriteFile(dev, v2, 0o644)
	// Kill dosvob-patch at ever later steps until the image is torn.
	torn := false
	for k := 10; k < 200 && !torn; k += 3 {
		os.RemoveAll(img + ".dosvob")
		cp(dir, filepath.Join(saved, "backup.img"), filepath.Join(saved, "backup.img.dosvob"))
		if run(strconv.Itoa(k)) == nil {
			break // the run finished: no later kill tears it
		}
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		torn = !bytes.Equal(b, v1) && !bytes.Equal(b, v2)
	}
	if !torn {
		t.Fatal("no kill left a torn image to restore from")
	}

	target := filepath.Join(dir, "vol")
	if err := os.WriteFile(target, make([]byte, len(v1)), 0o644); err != nil {
		t.Fatal(err)
	}
	c := exec.Command("bash", "-o", "pipefail", "-c", `"$1" --raw "$3" | "$1" --delta "$4" | "$2" --raw "$3"`, "sh", hash, bin, target, img)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("restore pipe: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "rolled back an interrupted run") {
		t.Errorf("the restore did not say it rolled the image back:\n%s", out)
	}
	mustEqualFile(t, target, v1)
	mustEqualFile(t, img, v1)
}
