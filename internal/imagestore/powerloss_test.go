package imagestore

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyTree copies the regular files of src (a file or a directory tree) to
// dst, replacing dst.
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	os.RemoveAll(dst)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o644)
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// powerLossCase prepares an image holding old (nil: no image yet), signs it
// and makes the delta to new.
type powerLossCase struct {
	name     string
	old, new []byte
	keep     int
	// partialFirst interrupts a first backup before the case starts, so
	// the case resumes from a partial image.
	partialFirst bool
	// outside changes the image (backed up as old) outside dosvob before
	// the case starts, and returns what it holds then: the run must keep
	// that as its newest version.
	outside func(t *testing.T, img string) []byte
}

// TestPowerLoss cuts the power (drops every write after the kth) at every
// k of a run, for several kinds of run, then recovers with the real file
// system: the image must be exactly old or exactly new, and the next run
// must complete the backup. Each cut is tried twice: with the writes before
// it on disk, and with every write, punch and truncate that no fsync had
// made durable lost as well, each with probability 1/2 (dirty pages reach
// the disk in any order).
func TestPowerLoss(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	base := device(r, 80*1024+100)
	cases := []powerLossCase{
		{name: "first", new: base},
		{name: "incremental", old: base, new: mutate(r, base, 12), keep: 2},
		{name: "grow", old: base, new: append(mutate(r, base, 4), device(r, 40000)...), keep: 1},
		{name: "shrink", old: base, new: mutate(r, base, 4)[:30*1024+7], keep: 1},
		{name: "zeros", old: base, new: make([]byte, len(base))},
		{name: "resume", new: base, partialFirst: true},
		{name: "written-outside", old: base, new: mutate(r, base, 6), keep: 2, outside: func(t *testing.T, img string) []byte {
			writeFileAt(t, img, 5000, []byte("written outside dosvob"))
			b, _ := os.ReadFile(img)
			return b
		}},
		{name: "put-back", old: base, new: mutate(r, base, 6), keep: 2, outside: func(t *testing.T, img string) []byte {
			// A later backup, then the version of base put back over it.
			syncTo(t, img, mutate(r, base, 3), PatchOptions{TxOptions: TxOptions{Keep: -1}})
			putBack(t, img, "latest")
			return base
		}},
	}
	ctx := context.Background()
	// Small batches: several journal fsyncs and in-place writes per run.
	defer func(b int) { batchBytes = b }(batchBytes)
	batchBytes = 3 * testBS
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			work := t.TempDir()
			tmpl := filepath.Join(work, "tmpl")
			os.Mkdir(tmpl, 0o755)
			img := filepath.Join(tmpl, "vol.img")
			if c.old != nil {
				syncTo(t, img, c.old, PatchOptions{TxOptions: TxOptions{Keep: c.keep}})
				// One more run so that there is a version to prune.
				syncTo(t, img, c.old, PatchOptions{TxOptions: TxOptions{Keep: c.keep}})
			}
			if c.outside != nil {
				c.old = c.outside(t, img)
			}
			if c.partialFirst {
				d, _ := makeDelta(t, img, c.new, testBS)
				if _, err := patch(t, img, d[:len(d)*2/3], PatchOptions{}); err == nil {
					t.Fatal("cut stream committed")
				}
				if !exists(filepath.Join(StateDir(img), partialName)) {
					t.Fatal("no partial image after an interrupted first backup")
				}
			}
			delta, _ := makeDelta(t, img, c.new, testBS)

			// Count the mutations of a complete run.
			run := filepath.Join(work, "run")
			copyTree(t, tmpl, run)
			rimg := filepath.Join(run, "vol.img")
			counter := &dropFS{inner: newOSFS(), limit: 1 << 30}
			s, err := Open(rimg, Options{Writer: true, Backup: true, fs: counter})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Patch(ctx, bytes.NewReader(delta), PatchOptions{TxOptions: TxOptions{Keep: -1}}); err != nil {
				t.Fatalf("complete run: %v", err)
			}
			s.Close()
			mustEqual(t, rimg, c.new)
			total := counter.ops
			t.Logf("%d mutating operations in a complete run", total)

			var sawOld, sawNew, lost, cached int
			for k := 0; k <= 2*total+1; k++ {
				// Each cut point twice: once keeping what was written
				// before it, once also losing every write no fsync had
				// made durable yet.
				lossy := k > total
				cut := k
				if lossy {
					cut = k - total - 1
				}
				copyTree(t, tmpl, run)
				dfs := &dropFS{inner: newOSFS(), limit: cut, lossy: lossy, rnd: rand.New(rand.NewPCG(uint64(k), 5))}
				s, err := Open(rimg, Options{Writer: true, Backup: true, fs: dfs})
				if err == nil {
					s.Patch(ctx, bytes.NewReader(delta), PatchOptions{TxOptions: TxOptions{Keep: -1}})
					s.Close()
				}
				dfs.revert()
				lost += dfs.lost
				// Power back on: recover with the real file system.
				var logs []string
				s, err = Open(rimg, Options{Writer: true, Logf: func(f string, a ...any) { logs = append(logs, f) }})
				if err != nil {
					t.Fatalf("k=%d: recovery: %v", k, err)
				}
				s.Close()
				got, err := os.ReadFile(rimg)
				switch {
				case err != nil && c.old == nil && os.IsNotExist(err):
					sawOld++
				case err == nil && bytes.Equal(got, c.new):
					sawNew++
				case err == nil && c.old != nil && bytes.Equal(got, c.old):
					sawOld++
				default:
					t.Fatalf("k=%d: after recovery the image is neither old nor new (%v, %d bytes)", k, err, len(got))
				}
				// The hash cache the next run would sign from, if any,
				// holds the hashes of the image as it is.
				if err == nil && checkCache(t, rimg) {
					cached++
				}
				done := err == nil && bytes.Equal(got, c.new)
				// The recovery above deleted nothing of the history (it
				// may have been a scrub's); the next backup run's sweep
				// leaves exactly the version files the manifest lists:
				// whatever the cut left in versions/ is known for a leftover.
				if s, err = Open(rimg, Options{Writer: true, Backup: true, Logf: t.Logf}); err != nil {
					t.Fatalf("k=%d: open for the next run: %v", k, err)
				}
				s.Close()
				if extra, missing := versionFiles(t, rimg); len(extra)+len(missing) > 0 {
					t.Fatalf("k=%d: versions/ has %q that the manifest does not list, lacks %q that it does", k, extra, missing)
				}
				// The next run completes the backup. After a change
				// outside dosvob, the run that committed kept what the
				// image held as its newest version.
				if c.outside != nil && done {
					restoreWant(t, rimg, "latest", c.old)
				}
				var opts PatchOptions
				if c.outside != nil {
					opts.Keep = -1 // keep, as the run that was cut would have
				}
				syncTo(t, rimg, c.new, opts)
				if c.outside != nil && !done {
					restoreWant(t, rimg, "latest", c.old)
				}
			}
			t.Logf("power cut at %d points, each with and without losing unsynced writes at random: %d gave the old image, %d the new", total+1, sawOld, sawNew)
			if lost == 0 {
				t.Fatal("the lossy cuts never lost an unsynced write: the model is not exercised")
			}
			t.Logf("%d unsynced operations lost in all", lost)
			t.Logf("%d recovered images offered a hash cache, each checked block by block", cached)
			if cached == 0 {
				t.Fatal("no recovered image offered a hash cache: the cache commit is not exercised")
			}
			if sawOld == 0 || sawNew == 0 {
				t.Fatalf("expected both outcomes, got old %d new %d", sawOld, sawNew)
			}
		})
	}
}

// renamedUnsynced is the real file system, except that the directory sync
// right after the manifest is renamed into place fails: the commit point is
// passed, but not durably.
type renamedUnsynced struct {
	fsys
	armed bool
}

func (f *renamedUnsynced) Rename(o, n string) error {
	err := f.fsys.Rename(o, n)
	f.armed = err == nil && filepath.Base(n) == manifestName
	return err
}

func (f *renamedUnsynced) SyncDir(name string) error {
	if f.armed {
		f.armed = false
		return errors.New("injected sync failure")
	}
	return f.fsys.SyncDir(name)
}

// TestCommitNotDurable: a run whose manifest is in place but whose
// directory sync fails must not be undone under that manifest (the image
// would be the old backup under the new one's digests and hashes). It stays
// the new backup, keeps the journal in case a power loss brings the old
// manifest back, and the next open finishes it.
func TestCommitNotDurable(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	old := device(r, 64*1024+10)
	syncTo(t, img, old, PatchOptions{TxOptions: TxOptions{Keep: 1}})
	dev := mutate(r, old, 6)
	d, _ := makeDelta(t, img, dev, testBS)

	manifest := filepath.Join(StateDir(img), manifestName)
	oldManifest, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(img, Options{Writer: true, Backup: true, Logf: t.Logf, fs: &renamedUnsynced{fsys: newOSFS()}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Patch(context.Background(), bytes.NewReader(d), PatchOptions{TxOptions: TxOptions{Keep: 1}})
	s.Close()
	if err == nil || !strings.Contains(err.Error(), "not durably") {
		t.Fatalf("patch: got %v, want a commit that is not durable", err)
	}
	t.Logf("patch: %v", err)
	mustEqual(t, img, dev)
	if !exists(filepath.Join(StateDir(img), journalName)) {
		t.Fatal("the journal is gone: a power loss could not be undone")
	}

	// A power loss that brings the old manifest back: recovery rolls the
	// image back to the old backup, which its manifest then describes.
	lost := t.TempDir()
	copyTree(t, dir, lost)
	limg := filepath.Join(lost, "vol.img")
	if err := os.WriteFile(filepath.Join(StateDir(limg), manifestName), oldManifest, 0o644); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(context.Background(), limg, nil, t.Logf); err != nil || !rep.Intact() {
		t.Fatalf("scrub after the power loss: %+v, %v", rep, err)
	}
	mustEqual(t, limg, old)

	// No power loss: the next open finishes the run; the backup is whole.
	s, err = Open(img, Options{Writer: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if exists(filepath.Join(StateDir(img), journalName)) {
		t.Fatal("the journal is still there after recovery")
	}
	if rep, err := Verify(context.Background(), img, nil, t.Logf); err != nil || !rep.Intact() {
		t.Fatalf("scrub: %+v, %v", rep, err)
	}
	syncTo(t, img, mutate(r, dev, 3), PatchOptions{})
}

// versionFiles compares versions/ of img with its manifest (none: no
// version): the files that it does not list, and the listed files that are
// missing.
func versionFiles(t *testing.T, img string) (extra, missing []string) {
	t.Helper()
	m, err := readManifest(StateDir(img))
	if err != nil {
		t.Fatal(err)
	}
	if m == nil {
		m = &Manifest{} // a first backup that did not commit
	}
	listed := map[string]bool{}
	for _, v := range m.Versions {
		listed[v.File] = true
		if !exists(filepath.Join(StateDir(img), versionsDir, v.File)) {
			missing = append(missing, v.File)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(StateDir(img), versionsDir))
	for _, e := range ents {
		if !listed[e.Name()] {
			extra = append(extra, e.Name())
		}
	}
	return extra, missing
}
