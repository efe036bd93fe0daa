package imagestore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
	"golang.org/x/sys/unix"
)

// leaveFree fills the file system of dir with a file of its own until only
// free bytes are left, and returns that file's name.
func leaveFree(t *testing.T, dir string, free int64) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	avail := int64(st.Bavail) * st.Bsize
	if avail < free {
		t.Fatalf("only %d bytes free in %s, want to leave %d", avail, dir, free)
	}
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, avail-free); err != nil {
		t.Fatalf("fill %s: %v", dir, err)
	}
	return name
}

// leftovers lists the files of a run that the state directory of img still
// holds: temporary files, new hashes, a journal.
func leftovers(t *testing.T, img string) []string {
	t.Helper()
	var found []string
	for _, dir := range []string{StateDir(img), filepath.Join(StateDir(img), versionsDir)} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if n := e.Name(); strings.HasSuffix(n, ".tmp") || n == newHashes || n == journalName {
				found = append(found, n)
			}
		}
	}
	return found
}

// TestFullDisk fills a real file system (a small tmpfs) at different steps
// of a run. Each run must fail with the file system's error and leave the
// image exactly the previous backup at once, in the same process, with
// nothing of the run left behind: not only after the next run's recovery,
// which on a disk that is still full could not do better.
func TestFullDisk(t *testing.T) {
	const mib = 1 << 20
	blocks := func(b []byte, lo, hi int, fill func(i int) byte) {
		for i := lo * testBS; i < hi*testBS; i++ {
			b[i] = fill(i)
		}
	}
	cases := []struct {
		name string
		// old is the previous backup; next turns it into the new device.
		old  int
		next func(r *rand.Rand, old []byte) []byte
		free int64 // left free before the run
		keep int
		// batch is batchBytes for the run: how often the journal is synced.
		batch int
		// where the disk fills up: a part of the error message.
		where string
	}{
		{
			// A trimmed, rewritten and grown volume: the growth takes the
			// space that the rollback needs to put the trimmed blocks back.
			name: "growing image",
			old:  2 * mib,
			next: func(r *rand.Rand, old []byte) []byte {
				b := append(append([]byte(nil), old...), make([]byte, 6*mib)...)
				blocks(b, 0, 256, func(int) byte { return 0 })
				blocks(b, 256, len(b)/testBS, func(int) byte { return byte(r.Uint32()) })
				return b
			},
			free:  4 * mib,
			batch: 256 << 10, // the old blocks are patched before it grows
			where: "no space left on device",
		},
		{
			// The kept version does not fit after the image was patched.
			name: "keeping a version",
			old:  4 * mib,
			next: func(r *rand.Rand, old []byte) []byte {
				b := append([]byte(nil), old...)
				blocks(b, 0, 128, func(int) byte { return 0 })
				blocks(b, 128, 768, func(int) byte { return byte(r.Uint32()) })
				return b
			},
			free:  4 * mib,
			keep:  2,
			batch: 4 << 20,
			where: "keep version",
		},
		{
			// The journal itself fills the disk after some blocks were
			// already written in place.
			name: "journal",
			old:  4 * mib,
			next: func(r *rand.Rand, old []byte) []byte {
				b := append([]byte(nil), old...)
				blocks(b, 0, len(b)/testBS, func(int) byte { return byte(r.Uint32()) })
				return b
			},
			free:  2 * mib,
			batch: 256 << 10,
			where: "write journal",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := testenv.SmallFS(t, 64*mib)
			r := rand.New(rand.NewPCG(uint64(c.old), uint64(c.free)))
			img := filepath.Join(dir, "vol.img")
			old := make([]byte, c.old)
			blocks(old, 0, c.old/testBS, func(int) byte { return byte(r.Uint32()) })
			syncTo(t, img, old, PatchOptions{TxOptions: TxOptions{Keep: c.keep}})
			before := readManifestT(t, img)
			dev := c.next(r, old)
			d, _ := makeDelta(t, img, dev, testBS)

			filler := leaveFree(t, dir, c.free)
			defer func(b int) { batchBytes = b }(batchBytes)
			batchBytes = c.batch
			_, err := patch(t, img, d, PatchOptions{TxOptions: TxOptions{Keep: c.keep}})
			batchBytes = 4 << 20
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), c.where) {
				t.Fatalf("patch on a full disk: got %v, want ENOSPC at %q", err, c.where)
			}
			t.Logf("patch: %v", err)
			if strings.Contains(err.Error(), "undoing") {
				t.Fatalf("the run could not be undone: %v", err)
			}
			mustEqual(t, img, old)
			if l := leftovers(t, img); len(l) > 0 {
				t.Fatalf("the failed run left %v in the state directory", l)
			}

			// Still full: opening recovers nothing and the backup is whole.
			s, err := Open(img, Options{Writer: true, Logf: t.Logf})
			if err != nil {
				t.Fatalf("open on the full disk: %v", err)
			}
			if m := s.Manifest(); m.Generation != before.Generation || m.DeviceDigest != before.DeviceDigest {
				t.Fatalf("manifest generation %d digest %s, want the previous backup's %d %s", m.Generation, m.DeviceDigest, before.Generation, before.DeviceDigest)
			}
			s.Close()
			if rep, err := Verify(t.Context(), img, nil, t.Logf); err != nil || !rep.Intact() {
				t.Fatalf("scrub of the previous backup on the full disk: %+v, %v", rep, err)
			}

			// With room again, the same change goes through.
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			syncTo(t, img, dev, PatchOptions{TxOptions: TxOptions{Keep: c.keep}})
		})
	}
}

// TestScrubFullDisk: on a full disk the scrub cannot renew the hash cache,
// but it still gives its verdict, both ways.
func TestScrubFullDisk(t *testing.T) {
	dir := testenv.SmallFS(t, 16<<20)
	r := rand.New(rand.NewPCG(5, 6))
	img := filepath.Join(dir, "vol.img")
	dev := device(r, 1<<20)
	syncTo(t, img, dev, PatchOptions{})
	before := readManifestT(t, img)
	leaveFree(t, dir, 0)

	var logged []string
	logf := func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }
	rep, err := Verify(t.Context(), img, nil, logf)
	if err != nil || !rep.Intact() {
		t.Fatalf("scrub of an intact image on a full disk: %+v, %v", rep, err)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], "intact, but its per-block hashes were not refreshed") {
		t.Fatalf("scrub said %q, want that the hashes were not refreshed", logged)
	}
	if m := readManifestT(t, img); m.Hashes != before.Hashes || m.HashSeed != before.HashSeed {
		t.Fatalf("manifest names hashes %s seed %s, want the old %s %s", m.Hashes, m.HashSeed, before.Hashes, before.HashSeed)
	}
	if l := leftovers(t, img); len(l) > 0 {
		t.Fatalf("the scrub left %v", l)
	}
	if !checkCache(t, img) {
		t.Fatal("the old hash cache is no longer trusted")
	}

	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	off := 300000
	for dev[off] == 0 {
		off++ // a byte of data: a hole would need a page that is not there
	}
	if _, err := f.WriteAt([]byte{dev[off] ^ 1}, int64(off)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Verify(t.Context(), img, nil, t.Logf); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("scrub of a damaged image on a full disk: got %v, want ErrCorrupt", err)
	}
}

// TestReadOnlyDisk: a backup disk mounted read-only (as for a disaster
// recovery) can still be scrubbed, listed and restored from, and its lock
// still keeps out a reader while a writer works through a writable mount.
func TestReadOnlyDisk(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	devs := backups(t, rand.New(rand.NewPCG(7, 8)), img, 200*1024, 2, 2)
	roImg := filepath.Join(testenv.ReadOnlyBind(t, dir), "vol.img")

	var logged []string
	logf := func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }
	if rep, err := Verify(t.Context(), roImg, nil, logf); err != nil || !rep.Intact() {
		t.Fatalf("scrub through a read-only mount: %+v, %v", rep, err)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], "were not refreshed") {
		t.Errorf("scrub said %q, want that the hashes were not refreshed", logged)
	}
	s, err := Open(roImg, Options{Writer: true, Logf: t.Logf})
	if err != nil {
		t.Fatalf("open through a read-only mount: %v", err)
	}
	vs := s.Manifest().Versions
	if len(vs) != 1 {
		t.Fatalf("%d versions, want 1", len(vs))
	}
	restoreAndCheck(t, s, vs[0], filepath.Join(t.TempDir(), "old.img"), devs[0])

	// The writer lock, taken through the read-only mount, keeps out a
	// writer on the writable one; and the other way round.
	if _, err := Open(img, Options{Writer: true}); !errors.Is(err, ErrLocked) {
		t.Fatalf("a writer beside a reader on the read-only mount: got %v, want ErrLocked", err)
	}
	s.Close()
	w, err := Open(img, Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := Verify(t.Context(), roImg, nil, t.Logf); !errors.Is(err, ErrLocked) {
		t.Fatalf("a scrub on the read-only mount while a writer works: got %v, want ErrLocked", err)
	}
}
