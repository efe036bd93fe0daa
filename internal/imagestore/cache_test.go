package imagestore

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/format"
)

// checkCache fails unless the image's hash cache, if it offers one, holds
// the hashes of the image's actual blocks. It reports whether there was one.
func checkCache(t testing.TB, img string) bool {
	t.Helper()
	s, err := Open(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, _ := s.HashCache()
	if c == nil {
		return false
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if c.Blocks != format.BlockCount(uint64(len(b)), c.BlockSize) {
		t.Fatalf("hash cache has %d blocks, the image %d bytes", c.Blocks, len(b))
	}
	for i := range c.Blocks {
		h, err := c.Next()
		if err != nil {
			t.Fatal(err)
		}
		lo := i * uint64(c.BlockSize)
		if want := format.HashBlock(c.Seed, b[lo:min(lo+uint64(c.BlockSize), uint64(len(b)))]); h != want {
			t.Fatalf("hash cache block %d: %x, the image's block hashes to %x", i, h, want)
		}
	}
	return true
}

// TestCacheChain: every version 2 run leaves a fresh cache under the next
// seed it announced; the next run signs from it (without reading) and
// still ends with the device's content; a version 1 run leaves no cache to
// sign from.
func TestCacheChain(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 200*testBS+17)
	syncTo(t, img, dev, PatchOptions{})
	var seeds []uint64
	for run := range 4 {
		if !checkCache(t, img) {
			t.Fatalf("run %d: no fresh hash cache", run)
		}
		s, _ := Open(img, Options{})
		c, _ := s.HashCache()
		seeds = append(seeds, c.Seed)
		m := s.Manifest()
		if !m.HashesFresh || m.FormatVersion != format.Version {
			t.Fatalf("manifest %+v", m)
		}
		s.Close()
		dev = mutate(r, dev, 5)
		syncTo(t, img, dev, PatchOptions{})
	}
	for i := 1; i < len(seeds); i++ {
		if seeds[i] == seeds[i-1] {
			t.Fatal("two runs signed with the same seed")
		}
	}

	// A version 1 run: its hashes are under the seed it compared with, so
	// they are not offered for signing.
	defer func(v uint16) { testStreamVersion = v }(testStreamVersion)
	testStreamVersion = 1
	dev = mutate(r, dev, 3)
	syncTo(t, img, dev, PatchOptions{})
	s, _ := Open(img, Options{})
	c, why := s.HashCache()
	s.Close()
	if c != nil || !strings.Contains(why, "fresh") {
		t.Fatalf("version 1 run left a cache to sign from (%q)", why)
	}
	testStreamVersion = 2
	dev = mutate(r, dev, 3)
	syncTo(t, img, dev, PatchOptions{}) // reads the image, then caches again
	if !checkCache(t, img) {
		t.Fatal("no cache after a version 2 run")
	}
}

// TestCacheRefused: a cache that does not fit the manifest is never used.
func TestCacheRefused(t *testing.T) {
	r := rand.New(rand.NewPCG(33, 34))
	img := filepath.Join(t.TempDir(), "vol.img")
	dev := device(r, 64*testBS)
	syncTo(t, img, dev, PatchOptions{})
	s, _ := Open(img, Options{})
	name := filepath.Join(StateDir(img), s.Manifest().Hashes)
	s.Close()
	good, _ := os.ReadFile(name)
	for _, tc := range []struct {
		name   string
		damage func()
		why    string
	}{
		{"flipped hash", func() { b := bytes.Clone(good); b[100] ^= 1; os.WriteFile(name, b, 0o644) }, "digest"},
		{"short", func() { os.WriteFile(name, good[:len(good)-8], 0o644) }, "length"},
		{"missing", func() { os.Remove(name) }, "missing"},
		{"foreign", func() {
			// Another image's hashes of the same length.
			b := bytes.Clone(good)
			for i := 0; i < len(b); i += 8 {
				binary.LittleEndian.PutUint64(b[i:], r.Uint64())
			}
			os.WriteFile(name, b, 0o644)
		}, "digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.damage()
			s, _ := Open(img, Options{})
			defer s.Close()
			if c, why := s.HashCache(); c != nil || !strings.Contains(why, tc.why) {
				t.Fatalf("cache offered (%v) or wrong reason %q", c != nil, why)
			}
			// The pipe falls back to reading and still syncs.
			d2 := mutate(r, dev, 2)
			syncTo(t, img, d2, PatchOptions{})
			syncTo(t, img, dev, PatchOptions{})
			good, _ = os.ReadFile(filepath.Join(StateDir(img), readManifestT(t, img).Hashes))
			s2, _ := Open(img, Options{})
			name = filepath.Join(StateDir(img), s2.Manifest().Hashes)
			s2.Close()
		})
	}
}

func readManifestT(t testing.TB, img string) *Manifest {
	t.Helper()
	m, err := readManifest(StateDir(img))
	if err != nil || m == nil {
		t.Fatalf("manifest: %v", err)
	}
	return m
}
