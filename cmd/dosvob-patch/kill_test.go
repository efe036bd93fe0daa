package main

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/imagestore"
)

// TestKill kills the real dosvob-patch binary with SIGKILL at random
// moments: at a chosen mutating step (the DOSVOB_TEST_CRASH_AT hook, which
// reaches every journal write, fsync, truncate and rename), from outside
// at a random time while the stream is still arriving, and by cutting the
// stream at a random offset. After each, recovery must give exactly the
// old image or exactly the new one, and the next run must complete the
// backup. The seed is logged; set DOSVOB_KILL_SEED to replay a run and
// DOSVOB_KILL_ROUNDS for a longer soak.
func TestKill(t *testing.T) {
	bin := buildBinary(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("DOSVOB_KILL_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 99))
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")

	rounds := 60
	if v := os.Getenv("DOSVOB_KILL_ROUNDS"); v != "" {
		rounds, _ = strconv.Atoi(v) // the longer soak of scripts/bench
	}
	var cur []byte // nil: no image yet
	var hookKills, outsideKills, cuts, committed, rolledBack, iters, changes int
	for iters = 0; hookKills+outsideKills+cuts < rounds; iters++ {
		var next []byte
		switch {
		case cur == nil:
			next = device(r, 200*1024+r.IntN(50000))
		case r.IntN(6) == 0:
			next = append(mutate(r, cur, 4), device(r, r.IntN(60000))...) // grown
		case r.IntN(6) == 0:
			next = mutate(r, cur, 4)[:len(cur)-r.IntN(len(cur)/3)] // shrunk
		default:
			next = mutate(r, cur, 1+r.IntN(30))
		}
		// Now and then IMAGE was changed outside dosvob before the run:
		// whatever kills the run, what it held is kept as a version.
		var found *outsideChange
		if cur != nil && r.IntN(4) == 0 {
			found = changeOutside(t, r, img, dir)
			cur = found.content
		}
		delta, err := makeDelta(img, next, 4096)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--keep", "2", "--quiet", img)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		mode := r.IntN(3)
		if mode == 0 {
			cmd.Env = append(os.Environ(), "DOSVOB_TEST_CRASH_AT="+strconv.Itoa(1+r.IntN(45)))
		}
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		feed := delta
		if mode == 2 {
			feed = delta[:r.IntN(len(delta))]
		}
		var killer *time.Timer
		if mode == 1 {
			killer = time.AfterFunc(time.Duration(r.IntN(40_000))*time.Microsecond, func() { cmd.Process.Kill() })
		}
		go func() {
			// Trickle the stream so that outside kills land mid-run.
			for len(feed) > 0 {
				n := min(len(feed), 8192)
				if _, err := in.Write(feed[:n]); err != nil {
					break
				}
				feed = feed[n:]
				if mode == 1 {
					time.Sleep(200 * time.Microsecond)
				}
			}
			in.Close()
		}()
		err = cmd.Wait()
		if killer != nil {
			killer.Stop()
		}
		var ee *exec.ExitError
		killed := errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled()
		switch {
		case killed && mode == 0:
			hookKills++
		case killed:
			outsideKills++
		case mode == 2 && err != nil:
			cuts++
			if code := ee.ExitCode(); code != 3 {
				t.Fatalf("iteration %d: cut stream gave exit %d, want 3: %s", iters, code, stderr.String())
			}
		case err != nil:
			t.Fatalf("iteration %d: dosvob-patch failed: %v\n%s", iters, err, stderr.String())
		}

		// Recovery (what the next dosvob-hash or dosvob-patch does first).
		var notes []string
		s, err := imagestore.Open(img, imagestore.Options{Writer: true, Logf: func(f string, a ...any) { notes = append(notes, f) }})
		if err != nil {
			t.Fatalf("iteration %d: recovery: %v", iters, err)
		}
		s.Close()
		got, err := os.ReadFile(img)
		switch {
		case err == nil && bytes.Equal(got, next):
			committed++
		case cur == nil && errors.Is(err, os.ErrNotExist):
			rolledBack++
		case err == nil && bytes.Equal(got, cur):
			rolledBack++
		default:
			t.Fatalf("iteration %d (mode %d): after recovery the image is neither old nor new (%v, %d bytes)\n%s",
				iters, mode, err, len(got), stderr.String())
		}
		if !bytes.Equal(got, next) {
			// The next run completes the backup.
			delta, err := makeDelta(img, next, 4096)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "--keep", "2", "--quiet", img)
			cmd.Stdin = bytes.NewReader(delta)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("iteration %d: the run after the kill failed: %v\n%s", iters, err, out)
			}
			if got, _ := os.ReadFile(img); !bytes.Equal(got, next) {
				t.Fatalf("iteration %d: the run after the kill did not complete the backup", iters)
			}
		}
		if found != nil {
			found.check(t, iters, img, dir)
			changes++
		}
		cur = next
	}
	t.Logf("%d runs after a change outside dosvob kept what they found", changes)
	t.Logf("%d runs: %d killed at a step, %d killed from outside, %d streams cut; afterwards %d were the new image, %d the old",
		iters, hookKills, outsideKills, cuts, committed, rolledBack)
	if hookKills < 10 || outsideKills+cuts < 10 {
		t.Fatalf("too few kills of each kind: %d at a step, %d outside, %d cuts", hookKills, outsideKills, cuts)
	}
}

// outsideChange is a change to an image outside dosvob (changeOutside).
type outsideChange struct {
	content []byte // what the image held after it
	// put back: the name of the restorable version after the one put
	// back over the image, if any, and its content
	older     string
	olderData []byte
}

// changeOutside changes img outside dosvob: it puts its newest restorable
// version back over it (restored into a file and moved over it), or
// writes a few bytes into it.
func changeOutside(t *testing.T, r *rand.Rand, img, dir string) *outsideChange {
	t.Helper()
	s, err := imagestore.Open(img, imagestore.Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, v := range s.Manifest().Versions {
		if v.Unrestorable == "" {
			vs = append(vs, v.Name)
		}
	}
	c := &outsideChange{}
	restore := func(name string) string {
		out := filepath.Join(dir, "restored")
		os.Remove(out)
		if _, err := s.RestoreVersion(context.Background(), name, out); err != nil {
			t.Fatalf("restore %s before changing the image: %v", name, err)
		}
		return out
	}
	if len(vs) > 0 && r.IntN(2) == 0 {
		if len(vs) > 1 {
			c.older = vs[1]
			c.olderData, err = os.ReadFile(restore(c.older))
			if err != nil {
				t.Fatal(err)
			}
		}
		put := restore(vs[0])
		s.Close()
		if err := os.Rename(put, img); err != nil {
			t.Fatal(err)
		}
	} else {
		s.Close()
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		b := make([]byte, 1+r.IntN(100))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		_, err = f.WriteAt(b, r.Int64N(fi.Size()+1))
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if c.content, err = os.ReadFile(img); err != nil {
		t.Fatal(err)
	}
	return c
}

// check checks, once the run after the change is complete, that the
// newest kept version is what the image held, and that the version after
// one that was put back still restores.
func (c *outsideChange) check(t *testing.T, iter int, img, dir string) {
	t.Helper()
	s, err := imagestore.Open(img, imagestore.Options{Writer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, want := range map[string][]byte{"latest": c.content, c.older: c.olderData} {
		if name == "" {
			continue
		}
		out := filepath.Join(dir, "restored")
		os.Remove(out)
		if _, err := s.RestoreVersion(context.Background(), name, out); err != nil {
			t.Fatalf("iteration %d: after a change outside dosvob, version %s: %v", iter, name, err)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Fatalf("iteration %d: after a change outside dosvob, version %s restores other content", iter, name)
		}
	}
}

// TestInterrupt: SIGTERM in the middle of a run rolls it back at once and
// exits 130.
func TestInterrupt(t *testing.T) {
	bin := buildBinary(t)
	r := rand.New(rand.NewPCG(51, 52))
	img := filepath.Join(t.TempDir(), "vol.img")
	old := device(r, 256*1024)
	d, err := makeDelta(img, old, 4096)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--quiet", img)
	cmd.Stdin = bytes.NewReader(d)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	next := mutate(r, old, 40)
	d, err = makeDelta(img, next, 4096)
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, img)
	in, _ := cmd.StdinPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in.Write(d[:len(d)/2])
	// Wait until the run has begun writing (its journal exists).
	for deadline := time.Now().Add(60 * time.Second); !exists(filepath.Join(img+".dosvob", "journal")); {
		if time.Now().After(deadline) {
			t.Fatal("the run never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(500 * time.Millisecond)
	in.Close() // the rest of the pipe dies with the signal too
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("SIGTERM: %v, want exit 130\n%s", err, stderr.String())
	}
	if !bytes.Contains(stderr.Bytes(), []byte("is unchanged")) {
		t.Fatalf("no word about the image: %s", stderr.String())
	}
	mustEqualFile(t, img, old)
	if exists(filepath.Join(img+".dosvob", "journal")) {
		t.Fatal("journal left after an in-process rollback")
	}
}

// TestVersion1Delta: dosvob-patch still applies version 1 and 2 deltas
// (from a dosvob-hash of an older stream version) in any order with
// version 3 ones; a version 2 or 3 run after a version 1 run starts a fresh
// hash cache again, and the scrub checks each image against the digest of
// the version that made it.
func TestVersion1Delta(t *testing.T) {
	bin := buildBinary(t)
	r := rand.New(rand.NewPCG(5, 55))
	img := filepath.Join(t.TempDir(), "vol.img")
	defer func(v uint16) { deltaVersion = v }(deltaVersion)
	dev := device(r, 120*1024+7)
	for i, v := range []uint16{1, 1, 2, 2, 1, 2, 3, 3, 1, 3, 2} {
		deltaVersion = v
		dev = mutate(r, dev, 5)
		d, err := makeDelta(img, dev, 4096)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, img)
		cmd.Stdin = bytes.NewReader(d)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("run %d (version %d): %v\n%s", i, v, err, out)
		}
		mustEqualFile(t, img, dev)
		s, err := imagestore.Open(img, imagestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, why := s.HashCache()
		s.Close()
		if (c != nil) != (v >= 2) {
			t.Fatalf("run %d (version %d): hash cache offered %v (%s)", i, v, c != nil, why)
		}
		if rep, err := imagestore.Verify(context.Background(), img, nil, t.Logf); err != nil || !rep.Intact() {
			t.Fatalf("run %d (version %d): scrub: %v %+v", i, v, err, rep)
		}
	}
}
