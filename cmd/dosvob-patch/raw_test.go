package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
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
