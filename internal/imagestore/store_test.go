package imagestore

import (
	"bytes"
	"context"
	"errors"
	"github.com/dosvob/dosvob/internal/format"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFirstBackupAndIncrementals(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 300*1024+123)
	syncTo(t, img, dev, PatchOptions{TxOptions: TxOptions{Keep: -1}})
	if exists(filepath.Join(StateDir(img), partialName)) {
		t.Fatal("partial image left after a committed first backup")
	}
	// No change: no records at all.
	d, st := makeDelta(t, img, dev, testBS)
	if st.data+st.zero != 0 {
		t.Fatalf("unchanged device: %d data and %d zero records", st.data, st.zero)
	}
	if _, err := patch(t, img, d, PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, img, dev)
	for _, size := range []int{len(dev), len(dev) + 50000, len(dev) - 70001, 4096 * 10} {
		next := mutate(r, dev, 20)
		if size > len(next) {
			next = append(next, device(r, size-len(next))...)
		}
		next = next[:size]
		res := syncTo(t, img, next, PatchOptions{})
		if res.Manifest.DeviceSize != int64(size) || res.Manifest.Generation < 2 {
			t.Fatalf("manifest: size %d generation %d", res.Manifest.DeviceSize, res.Manifest.Generation)
		}
		dev = next
	}
	// A device that became all zeros.
	syncTo(t, img, make([]byte, len(dev)), PatchOptions{})
}

func TestBaseMismatchWritesNothing(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 64*1024)
	syncTo(t, img, dev, PatchOptions{})
	next := mutate(r, dev, 5)
	stale, _ := makeDelta(t, img, next, testBS)
	// A newer signing run makes the first delta stale.
	makeDelta(t, img, next, testBS)
	_, err := patch(t, img, stale, PatchOptions{})
	if !errors.Is(err, ErrBase) {
		t.Fatalf("stale delta: got %v, want ErrBase", err)
	}
	mustEqual(t, img, dev)
}

func TestNoClobber(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	dir := t.TempDir()
	img := filepath.Join(dir, "user.img")
	user := device(r, 40*1024)
	os.WriteFile(img, user, 0o644)
	dev := device(r, 48*1024)
	d, _ := makeDelta(t, img, dev, testBS)
	if _, err := patch(t, img, d, PatchOptions{}); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("foreign file: got %v, want ErrNotOurs", err)
	}
	mustEqual(t, img, user)
	if _, err := patch(t, img, d, PatchOptions{TxOptions: TxOptions{Force: true, Source: Source{VolumeName: "a", VolumeID: "1"}}}); err != nil {
		t.Fatalf("--force: %v", err)
	}
	mustEqual(t, img, dev)
	next := mutate(r, dev, 3)
	d, _ = makeDelta(t, img, next, testBS)
	_, err := patch(t, img, d, PatchOptions{TxOptions: TxOptions{Source: Source{VolumeName: "b", VolumeID: "2"}}})
	if !errors.Is(err, ErrOtherVolume) {
		t.Fatalf("other volume: got %v, want ErrOtherVolume", err)
	}
	mustEqual(t, img, dev)
}

func TestLocked(t *testing.T) {
	img := filepath.Join(t.TempDir(), "vol.img")
	syncTo(t, img, device(rand.New(rand.NewPCG(9, 10)), 8192), PatchOptions{})
	s, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(img, Options{Writer: true}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer: got %v, want ErrLocked", err)
	}
	// A reader (dosvob-hash) is not blocked by a writer with nothing to recover.
	h, err := Open(img, Options{})
	if err != nil {
		t.Fatalf("reader beside a writer: %v", err)
	}
	h.Close()
}

func TestVerifyFindsFlippedByte(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 200*1024)
	syncTo(t, img, dev, PatchOptions{})
	rep, err := Verify(context.Background(), img, nil, t.Logf)
	if err != nil || !rep.Intact() {
		t.Fatalf("intact image: %v %+v", err, rep)
	}
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	off := int64(123457)
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x10
	f.WriteAt(b, off)
	f.Close()
	rep, err = Verify(context.Background(), img, nil, t.Logf)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped byte: got %v, want ErrCorrupt", err)
	}
	if want := off / testBS * testBS; rep.FirstBad != want {
		t.Fatalf("first bad offset %d, want %d", rep.FirstBad, want)
	}
}

func TestInterruptedFirstBackupResumes(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 400*1024)
	full, st1 := makeDelta(t, img, dev, testBS)
	// The stream breaks at 60%.
	if _, err := patch(t, img, full[:len(full)*6/10], PatchOptions{}); err == nil {
		t.Fatal("a cut stream committed")
	}
	if exists(img) {
		t.Fatal("an interrupted first backup created the image")
	}
	part, err := os.ReadFile(filepath.Join(StateDir(img), partialName))
	if err != nil {
		t.Fatal(err)
	}
	have := 0
	for i := 0; i+testBS <= len(part) && i+testBS <= len(dev); i += testBS {
		if !allZero(dev[i:i+testBS]) && bytes.Equal(part[i:i+testBS], dev[i:i+testBS]) {
			have++
		}
	}
	if have == 0 {
		t.Fatal("the partial image holds no block")
	}
	d, st2 := makeDelta(t, img, dev, testBS)
	t.Logf("first attempt: %d data records; %d landed; resume sends %d (%d of %d bytes)", st1.data, have, st2.data, st2.bytes, st1.bytes)
	if st2.data != st1.data-have {
		t.Fatalf("resume sends %d data records, want %d (%d minus the %d already there)", st2.data, st1.data-have, st1.data, have)
	}
	res, err := patch(t, img, d, PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Stats.Resumed {
		t.Error("run not reported as resumed")
	}
	mustEqual(t, img, dev)
}

// An image deleted by hand leaves a stale manifest; an interrupted first
// backup after that must not look like a committed one, and must not make
// dosvob-hash wait for recovery that never comes.
func TestStaleManifestAndPartial(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	img := filepath.Join(t.TempDir(), "vol.img")
	syncTo(t, img, device(r, 64*1024), PatchOptions{TxOptions: TxOptions{Keep: 2}})
	os.Remove(img)
	dev := device(r, 96*1024)
	d, _ := makeDelta(t, img, dev, testBS)
	if _, err := patch(t, img, d[:len(d)/2], PatchOptions{}); err == nil {
		t.Fatal("cut stream committed")
	}
	w, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(img, Options{})
	if err != nil {
		t.Fatalf("dosvob-hash beside a writer: %v", err)
	}
	if !h.Partial() {
		t.Fatal("the partial image is not the content to sign")
	}
	h.Close()
	w.Close()
	syncTo(t, img, dev, PatchOptions{})
}

func TestHashCache(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 100*1024+5)
	syncTo(t, img, dev, PatchOptions{})
	s, err := Open(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, why := s.HashCache()
	if c == nil {
		t.Fatalf("no hash cache after a committed run: %s", why)
	}
	for i := range c.Blocks {
		h, err := c.Next()
		if err != nil {
			t.Fatal(err)
		}
		end := min(int(i+1)*testBS, len(dev))
		if want := format.HashBlock(c.Seed, dev[int(i)*testBS:end]); h != want {
			t.Fatalf("block %d: cached hash %x, want %x", i, h, want)
		}
	}
	s.Close()
	// Touched outside dosvob: not trusted any more.
	later := time.Now().Add(time.Minute)
	os.Chtimes(img, later, later)
	s, _ = Open(img, Options{})
	if c, _ := s.HashCache(); c != nil {
		t.Fatal("hash cache trusted for an image changed outside dosvob")
	}
	s.Close()
}

func TestVerifyRefreshesHashCache(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	img := filepath.Join(t.TempDir(), "vol.img")
	syncTo(t, img, device(r, 64*1024), PatchOptions{})
	s, _ := Open(img, Options{})
	hashes := filepath.Join(StateDir(img), s.Manifest().Hashes)
	s.Close()
	os.Remove(hashes)
	later := time.Now().Add(time.Minute)
	os.Chtimes(img, later, later)
	rep, err := Verify(context.Background(), img, nil, t.Logf)
	if err != nil || rep.PerBlock {
		t.Fatalf("verify without per-block hashes: %v %+v", err, rep)
	}
	s, _ = Open(img, Options{})
	defer s.Close()
	if c, why := s.HashCache(); c == nil {
		t.Fatalf("scrub of an intact image did not refresh the hash cache: %s", why)
	}
	if rep, err := Verify(context.Background(), img, nil, t.Logf); err == nil {
		// s holds no writer lock, so Verify ran; it must use the cache now.
		if !rep.PerBlock {
			t.Fatal("second scrub did not use the refreshed per-block hashes")
		}
	} else {
		t.Fatal(err)
	}
}
