package main

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/dosvob/dosvob/internal/clitest"
	"github.com/dosvob/dosvob/internal/format"
	"github.com/dosvob/dosvob/internal/imagestore"
	"github.com/rogpeppe/go-internal/testscript"
)

// binPath is the dosvob-patch binary built by TestMain for the kill tests.
var binPath string

func TestMain(m *testing.M) {
	testscript.Main(cleanupM{m}, map[string]func(){"dosvob-patch": func() { os.Exit(run()) }})
}

// cleanupM removes the built binary after the tests.
type cleanupM struct{ m *testing.M }

func (c cleanupM) Run() int {
	code := c.m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	return code
}

// buildBinary builds the real binary once per test process.
func buildBinary(t *testing.T) string {
	t.Helper()
	if binPath != "" {
		return binPath
	}
	dir, err := os.MkdirTemp("", "dosvob-patch-bin")
	if err != nil {
		t.Fatal(err)
	}
	binPath = filepath.Join(dir, "dosvob-patch")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return binPath
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Cmds: clitest.Cmds(map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"mkdev":    cmdMkdev,
			"mutate":   cmdMutate,
			"mkdelta":  cmdMkdelta,
			"flipbyte": cmdFlipbyte,
			"cutfile":  cmdCutfile,
		}),
	})
}

// mkdev SIZE SEED FILE: a device image of SIZE bytes, random runs over zeros.
func cmdMkdev(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 3 {
		ts.Fatalf("usage: mkdev SIZE SEED FILE")
	}
	size, _ := strconv.Atoi(args[0])
	seed, _ := strconv.ParseUint(args[1], 10, 64)
	ts.Check(os.WriteFile(ts.MkAbs(args[2]), device(rand.New(rand.NewPCG(seed, seed)), size), 0o644))
}

// mutate IN N SEED OUT: IN with N scattered 4 KiB writes.
func cmdMutate(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 4 {
		ts.Fatalf("usage: mutate IN N SEED OUT")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	n, _ := strconv.Atoi(args[1])
	seed, _ := strconv.ParseUint(args[2], 10, 64)
	ts.Check(os.WriteFile(ts.MkAbs(args[3]), mutate(rand.New(rand.NewPCG(seed, 7)), b, n), 0o644))
}

// mkdelta IMAGE DEVICE OUT: sign IMAGE as dosvob-hash does and write the
// delta stream that turns it into DEVICE.
func cmdMkdelta(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 3 {
		ts.Fatalf("usage: mkdelta IMAGE DEVICE OUT")
	}
	dev, err := os.ReadFile(ts.MkAbs(args[1]))
	ts.Check(err)
	d, err := makeDelta(ts.MkAbs(args[0]), dev, 4096)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[2]), d, 0o644))
}

// flipbyte FILE OFFSET [MASK]: flips the bits of MASK (default 1) in the
// byte at OFFSET.
func cmdFlipbyte(ts *testscript.TestScript, neg bool, args []string) {
	f, err := os.OpenFile(ts.MkAbs(args[0]), os.O_RDWR, 0)
	ts.Check(err)
	defer f.Close()
	off, _ := strconv.ParseInt(args[1], 10, 64)
	b := []byte{0}
	_, err = f.ReadAt(b, off)
	ts.Check(err)
	mask := int64(1)
	if len(args) > 2 {
		mask, err = strconv.ParseInt(args[2], 0, 16)
		ts.Check(err)
	}
	b[0] ^= byte(mask)
	_, err = f.WriteAt(b, off)
	ts.Check(err)
}

// cutfile FILE N: truncates FILE to N bytes.
func cmdCutfile(ts *testscript.TestScript, neg bool, args []string) {
	n, _ := strconv.ParseInt(args[1], 10, 64)
	ts.Check(os.Truncate(ts.MkAbs(args[0]), n))
}

// deltaVersion is the stream version makeDelta plays (dosvob-hash writes
// the newest; dosvob-patch still takes versions 1 and 2).
var deltaVersion uint16 = format.Version

// makeDelta plays dosvob-hash IMAGE and dosvob-hash --delta: it signs the
// image's current content through its store (recording the signing run as
// dosvob-hash does, from the store's hash cache when it offers one) and
// returns the delta stream that turns it into dev.
func makeDelta(img string, dev []byte, bs uint32) ([]byte, error) {
	s, err := imagestore.Open(img, imagestore.Options{Backup: true})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	r, size, err := s.Content()
	if err != nil {
		return nil, err
	}
	seed, next := rand.Uint64(), uint64(0)
	if deltaVersion >= 2 {
		next = rand.Uint64()
	}
	n := format.BlockCount(uint64(size), bs)
	old := make([]uint64, n)
	var digest *format.DeviceDigester
	if c, _ := s.HashCache(); deltaVersion >= 2 && c != nil && c.BlockSize == bs {
		seed = c.Seed
		for i := range n {
			if old[i], err = c.Next(); err != nil {
				return nil, err
			}
		}
	} else {
		// Reading, it digests what it reads, as dosvob-hash does: the
		// patch learns whether IMAGE was still the last backup.
		digest = s.ContentDigester()
		buf := make([]byte, bs)
		for i := range n {
			l := format.BlockLen(uint64(size), bs, i)
			if _, err := r.ReadAt(buf[:l], int64(i)*int64(bs)); err != nil {
				return nil, err
			}
			old[i] = format.HashBlock(seed, buf[:l])
			if digest != nil {
				digest.Write(buf[:l])
			}
		}
	}
	base := s.Base()
	sh := format.SigHeader{Version: deltaVersion, BlockSize: bs, Seed: seed, NextSeed: next, Base: base}
	g, err := s.BeginSigning(sh)
	if err != nil {
		return nil, err
	}
	if digest != nil {
		g.Found(digest.Sum64())
	}
	var sig bytes.Buffer
	sw, err := format.NewSigWriter(&sig, sh)
	if err != nil {
		return nil, err
	}
	for i := range n {
		sw.Add(old[i])
		g.Add(old[i])
	}
	if err := g.Finish(sw.Digest()); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	h := format.DeltaHeader{Version: deltaVersion, BlockSize: bs, DeviceSize: uint64(len(dev)), Seed: seed, NextSeed: next, Base: base}
	dw, err := format.NewDeltaWriter(&out, h, format.DeltaOptions{})
	if err != nil {
		return nil, err
	}
	bd, nd := format.NewBlockDigester(), format.NewBlockDigester()
	for i := range h.Blocks() {
		b := dev[int(i)*int(bs) : int(i)*int(bs)+h.BlockLen(i)]
		hh, nh := format.HashBlock(seed, b), format.HashBlock(next, b)
		bd.Add(hh)
		nd.Add(nh)
		if i < n && old[i] == hh {
			if err := dw.Unchanged(i, nh); err != nil {
				return nil, err
			}
			continue
		}
		if bytes.Count(b, []byte{0}) == len(b) {
			dw.Zero(i)
		} else {
			dw.Data(i, b)
		}
	}
	dd := format.NewDeviceDigester(deltaVersion, bs)
	dd.Write(dev)
	_, err = dw.Close(format.End{SigDigest: sw.Digest(), BlockDigest: bd.Sum64(), DeviceDigest: dd.Sum64(), NextDigest: nd.Sum64()})
	return out.Bytes(), err
}

func device(r *rand.Rand, size int) []byte {
	b := make([]byte, size)
	for off := 0; off < size; off += 12288 {
		if r.IntN(3) == 0 {
			continue
		}
		end := min(off+r.IntN(12288)+1, size)
		for i := off; i < end; i += 8 {
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], r.Uint64())
			copy(b[i:end], w[:])
		}
	}
	return b
}

func mutate(r *rand.Rand, b []byte, n int) []byte {
	c := append([]byte(nil), b...)
	for range n {
		off := r.IntN(len(c))
		end := min(off+4096, len(c))
		zero := r.IntN(4) == 0
		for i := off; i < end; i++ {
			if zero {
				c[i] = 0
			} else {
				c[i] = byte(r.Uint32())
			}
		}
	}
	return c
}
