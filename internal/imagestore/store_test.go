package imagestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/format"
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

// TestTwoSigningsFirstCommitWins: two signing runs of one generation (two
// pipelines at once) each keep their own record. Whichever delta is applied
// first commits; the other is refused as superseded, writes nothing, and
// the records are swept.
func TestTwoSigningsFirstCommitWins(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 64*1024)
	syncTo(t, img, dev, PatchOptions{TxOptions: TxOptions{Keep: 5}})
	for _, firstSigned := range []bool{true, false} {
		a, b := mutate(r, dev, 5), mutate(r, dev, 5)
		da, _ := makeDelta(t, img, a, testBS)
		db, _ := makeDelta(t, img, b, testBS)
		if !firstSigned {
			da, db, a, b = db, da, b, a
		}
		keep := PatchOptions{TxOptions: TxOptions{Keep: -1}}
		if _, err := patch(t, img, da, keep); err != nil {
			t.Fatalf("first delta applied: %v", err)
		}
		gen := readManifestT(t, img).Generation
		_, err := patch(t, img, db, keep)
		if !errors.Is(err, ErrSuperseded) || !strings.Contains(err.Error(), fmt.Sprintf("another run committed generation %d of", gen)) {
			t.Fatalf("second delta: got %v, want ErrSuperseded naming generation %d", err, gen)
		}
		mustEqual(t, img, a)
		m := readManifestT(t, img)
		if m.Generation != gen || len(m.Versions) != int(gen)-1 {
			t.Fatalf("generation %d with %d versions after the refused run, want %d and %d", m.Generation, len(m.Versions), gen, gen-1)
		}
		if left := signFilesIn(t, img); len(left) != 0 {
			t.Fatalf("signing records left after the commit: %v", left)
		}
		dev = a
	}
}

func signFilesIn(t testing.TB, img string) []string {
	t.Helper()
	var names []string
	ents, err := os.ReadDir(StateDir(img))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "sign") {
			names = append(names, e.Name())
		}
	}
	return names
}

// TestUnfinishedSigningVoided: a patch run that begins writing while
// another signing run is still reading makes that run's record unusable,
// also when it is then undone: the other signature may hold a mix of old
// and new blocks.
func TestUnfinishedSigningVoided(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 64*1024)
	syncTo(t, img, dev, PatchOptions{})
	s, err := Open(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hdr := format.SigHeader{Version: format.Version, BlockSize: testBS, Seed: 1, NextSeed: 2, Base: s.Base()}
	g, err := s.BeginSigning(hdr)
	if err != nil {
		t.Fatal(err)
	}
	g.Add(1)
	// Another pipeline's delta, cut short: its run begins, writes, and is
	// undone.
	d, _ := makeDelta(t, img, mutate(r, dev, 10), testBS)
	if _, err := patch(t, img, d[:len(d)-20], PatchOptions{}); err == nil {
		t.Fatal("a cut delta was applied")
	}
	mustEqual(t, img, dev)
	if err := g.Finish(12345); !errors.Is(err, ErrSuperseded) || !strings.Contains(err.Error(), "began writing") {
		t.Fatalf("finish of the overtaken signing run: %v, want ErrSuperseded", err)
	}
}

// TestSigningRecordsBounded: signing runs whose pipes broke before their
// patch began leave records; no more than maxSignings stay, and a
// commit sweeps them all.
func TestSigningRecordsBounded(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 32*1024)
	syncTo(t, img, dev, PatchOptions{})
	for range 3 * maxSignings {
		makeDelta(t, img, dev, testBS)
	}
	if left := signFilesIn(t, img); len(left) != 2*maxSignings {
		t.Fatalf("%d signing files after %d unused runs, want %d: %v", len(left), 3*maxSignings, 2*maxSignings, left)
	}
	syncTo(t, img, mutate(r, dev, 3), PatchOptions{})
	if left := signFilesIn(t, img); len(left) != 0 {
		t.Fatalf("signing records left after a commit: %v", left)
	}
}

// TestForeignSigningRecord: a signing record copied from another image's
// state directory is never trusted, whatever its name.
func TestForeignSigningRecord(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	dir := t.TempDir()
	img, other := filepath.Join(dir, "vol.img"), filepath.Join(dir, "other.img")
	dev := device(r, 32*1024)
	syncTo(t, img, dev, PatchOptions{})
	syncTo(t, other, device(r, 32*1024), PatchOptions{})
	syncTo(t, other, device(r, 32*1024), PatchOptions{})
	d, _ := makeDelta(t, other, mutate(r, dev, 3), testBS)
	for _, name := range signFilesIn(t, other) {
		b, _ := os.ReadFile(filepath.Join(StateDir(other), name))
		os.WriteFile(filepath.Join(StateDir(img), name), b, 0o644)
	}
	if _, err := patch(t, img, d, PatchOptions{}); !errors.Is(err, ErrBase) {
		t.Fatalf("delta of another image with its record copied over: got %v, want ErrBase", err)
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

	// --force with only an id: the old name does not stay beside it, and a
	// run that names only a volume cannot be checked against it.
	if _, err := patch(t, img, d, PatchOptions{TxOptions: TxOptions{Force: true, Source: Source{VolumeID: "2"}}}); err != nil {
		t.Fatalf("--force with an id only: %v", err)
	}
	s, _ := Open(img, Options{})
	if got := s.Manifest().Source; got.VolumeName != "" || got.VolumeID != "2" {
		t.Fatalf("after --force with id 2 only, the manifest names %+v", got)
	}
	s.Close()
	d, _ = makeDelta(t, img, dev, testBS)
	if _, err := patch(t, img, d, PatchOptions{TxOptions: TxOptions{Source: Source{VolumeName: "a"}}}); !errors.Is(err, ErrOtherVolume) {
		t.Fatalf("a name only, against an id only: got %v, want ErrOtherVolume", err)
	}
	mustEqual(t, img, next)
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

// TestNoSigningDuringRollback: a dosvob-hash that opened the image before
// a patch began must not start signing while that patch, having failed,
// rolls the image back: its signature would be of half-restored blocks,
// and its record (of the old content, which the image is again afterwards)
// would be trusted. Abort removes hashes.new before it rolls back, so the
// signing is started in just that window.
func TestNoSigningDuringRollback(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 256*1024)
	syncTo(t, img, dev, PatchOptions{})
	d, _ := makeDelta(t, img, mutate(r, dev, 20), testBS)
	// Small batches: the cut run writes blocks in place before it fails.
	defer func(b int) { batchBytes = b }(batchBytes)
	batchBytes = 2 * testBS
	// The signing side opens first, as dosvob-hash in a second pipeline.
	s, err := Open(img, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hdr := format.SigHeader{Version: format.Version, BlockSize: testBS, Seed: 3, NextSeed: 4, Base: s.Base()}
	var during error
	called := false
	beforeRollback = func() {
		called = true
		state := filepath.Join(img+".dosvob", "journal")
		if !exists(state) {
			t.Error("no journal while the failed run is rolled back")
		}
		if b, _ := os.ReadFile(img); bytes.Equal(b, dev) {
			t.Error("the cut run wrote nothing in place: there is nothing to roll back")
		}
		var g *Signing
		if g, during = s.BeginSigning(hdr); during == nil {
			g.Abort()
		}
	}
	defer func() { beforeRollback = func() {} }()
	if _, err := patch(t, img, d[:len(d)-20], PatchOptions{}); err == nil {
		t.Fatal("a cut delta was applied")
	}
	if !called {
		t.Fatal("the cut run did not roll back")
	}
	if !errors.Is(during, ErrLocked) {
		t.Fatalf("signing while a failed patch rolls back: %v, want ErrLocked", during)
	}
	mustEqual(t, img, dev)
	// Once the rollback is done, signing goes ahead, of the old content.
	g, err := s.BeginSigning(hdr)
	if err != nil {
		t.Fatalf("signing after the rollback: %v", err)
	}
	g.Abort()
}

// A write to the image while a scrub reads it (a loop mount, say) makes
// the scrub fail, and no hash of what it read is trusted afterwards.
func TestVerifySeesWriteDuringRead(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	img := filepath.Join(t.TempDir(), "vol.img")
	syncTo(t, img, device(r, 1<<20), PatchOptions{})
	s, err := Open(img, Options{Writer: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	wrote := false
	_, err = s.verify(context.Background(), func(done, total int64) {
		if !wrote && done >= total/2 {
			wrote = true
			f, err := os.OpenFile(img, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			// Into a block the scrub has read already.
			if _, err := f.WriteAt([]byte("written outside dosvob"), 0); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	})
	s.Close()
	if !wrote || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "written to while the scrub read it") {
		t.Fatalf("scrub with a write during its read (wrote %v): %v", wrote, err)
	}
	s, _ = Open(img, Options{})
	defer s.Close()
	if c, _ := s.HashCache(); c != nil {
		t.Fatal("hash cache trusted for an image written during the scrub")
	}
}

// A commit leaves the image an mtime that no later write can give it: a
// whole second, before the commit. Otherwise a write within the same tick
// of a coarse file system clock (a second on ext4 with small inodes) would
// leave the mtime the commit recorded, and the cache would be trusted.
func TestCommitStampsMtime(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	img := filepath.Join(t.TempDir(), "vol.img")
	syncTo(t, img, device(r, 256*1024), PatchOptions{})
	now := time.Now()
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if mt := fi.ModTime(); mt.Nanosecond() != 0 || !mt.Before(now.Truncate(time.Second)) {
		t.Fatalf("image mtime %v after a commit that ended by %v", mt, now)
	}
	s, _ := Open(img, Options{})
	defer s.Close()
	if c, why := s.HashCache(); c == nil {
		t.Fatalf("the stamped image's cache is not trusted: %s", why)
	}
}
