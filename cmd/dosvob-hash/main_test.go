package main

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/blocksync"
	"github.com/dosvob/dosvob/internal/clitest"
	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/format"
	"github.com/dosvob/dosvob/internal/imagestore"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"dosvob-hash": func() { os.Exit(run()) }})
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Cmds: clitest.Cmds(map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"mkfile":     cmdMkfile,
			"poke":       cmdPoke,
			"flip":       cmdFlip,
			"cutfile":    cmdCutfile,
			"checkdelta": cmdCheckdelta,
			"checksig":   cmdChecksig,
			"checkraw":   cmdCheckraw,
			"mkbackup":   cmdMkbackup,
		}),
	})
}

// mkfile FILE SIZE [SEED]: a file of SIZE bytes (K/M suffixes), random
// with a seed, zeros without.
func cmdMkfile(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: mkfile FILE SIZE [SEED]")
	}
	n, err := parseSize(args[1])
	ts.Check(err)
	b := make([]byte, n)
	if len(args) == 3 {
		seed, _ := strconv.ParseUint(args[2], 10, 64)
		rng := rand.New(rand.NewPCG(seed, seed))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), b, 0o644))
}

// poke FILE OFFSET TEXT: writes TEXT at OFFSET.
func cmdPoke(ts *testscript.TestScript, neg bool, args []string) {
	f, err := os.OpenFile(ts.MkAbs(args[0]), os.O_RDWR, 0)
	ts.Check(err)
	defer f.Close()
	off, _ := strconv.ParseInt(args[1], 10, 64)
	_, err = f.WriteAt([]byte(args[2]), off)
	ts.Check(err)
}

// flip FILE OFFSET: inverts the bits of the byte at OFFSET, which
// changes it whatever it was (poke changes nothing when the byte is
// already the one written, as a random hash byte is once in 256 runs).
func cmdFlip(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: flip FILE OFFSET")
	}
	f, err := os.OpenFile(ts.MkAbs(args[0]), os.O_RDWR, 0)
	ts.Check(err)
	defer f.Close()
	off, err := strconv.ParseInt(args[1], 10, 64)
	ts.Check(err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	ts.Check(err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	ts.Check(err)
}

// cutfile FILE N: truncates FILE to N bytes.
func cmdCutfile(ts *testscript.TestScript, neg bool, args []string) {
	n, _ := strconv.ParseInt(args[1], 10, 64)
	ts.Check(os.Truncate(ts.MkAbs(args[0]), n))
}

// checksig FILE BLOCKSIZE BLOCKS: FILE is a complete signature stream.
func cmdChecksig(ts *testscript.TestScript, neg bool, args []string) {
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	sr, err := format.NewSigReader(bytes.NewReader(b))
	ts.Check(err)
	var n int
	for {
		if _, err = sr.Next(); err != nil {
			break
		}
		n++
	}
	if err != io.EOF {
		ts.Fatalf("%s: %v", args[0], err)
	}
	if got := strconv.Itoa(int(sr.Header().BlockSize)); got != args[1] {
		ts.Fatalf("block size %s, want %s", got, args[1])
	}
	if got := strconv.Itoa(n); got != args[2] {
		ts.Fatalf("%s block hashes, want %s", got, args[2])
	}
}

// checkraw FILE SIZE: FILE is a signature stream of raw content (no image
// id, generation 0) of SIZE bytes.
func cmdCheckraw(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: checkraw FILE SIZE")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	sr, err := format.NewSigReader(bytes.NewReader(b))
	ts.Check(err)
	base := sr.Header().Base
	if base.ImageID != ([16]byte{}) || base.Generation != 0 || strconv.FormatUint(base.Size, 10) != args[1] {
		ts.Fatalf("base %x generation %d size %d, want a raw base of %s bytes", base.ImageID, base.Generation, base.Size, args[1])
	}
}

// checkdelta FILE DATA ZERO: FILE is a complete delta stream with DATA
// data records and ZERO zero records.
func cmdCheckdelta(ts *testscript.TestScript, neg bool, args []string) {
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	dr, err := format.NewDeltaReader(bytes.NewReader(b))
	ts.Check(err)
	defer dr.Close()
	for err == nil {
		_, err = dr.Next()
	}
	if err != io.EOF {
		ts.Fatalf("%s: %v", args[0], err)
	}
	e, _ := dr.End()
	if got := strconv.FormatUint(e.DataRecords, 10) + " " + strconv.FormatUint(e.ZeroRecords, 10); got != args[1]+" "+args[2] {
		ts.Fatalf("data and zero records: %s, want %s %s", got, args[1], args[2])
	}
}

// TestExitCodes checks the documented exit codes, which testscript's
// "! exec" cannot tell apart.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	os.WriteFile(img, bytes.Repeat([]byte("x"), 100000), 0o644)
	sigFile := filepath.Join(dir, "sig")
	{
		out, _ := os.Create(sigFile)
		if code := runWith(t, nil, out, "dosvob-hash", img); code != 0 {
			t.Fatalf("signing: exit %d", code)
		}
		out.Close()
	}
	sig, _ := os.ReadFile(sigFile)
	for _, tt := range []struct {
		name  string
		stdin []byte
		args  []string
		code  int
	}{
		{"no args", nil, []string{}, cliutil.ExitUsage},
		{"two args", nil, []string{img, img}, cliutil.ExitUsage},
		{"bad flag", nil, []string{"--nope", img}, cliutil.ExitUsage},
		{"bad block size", nil, []string{"--block-size", "3000", img}, cliutil.ExitUsage},
		{"block size with delta", sig, []string{"--delta", "--block-size", "4K", img}, cliutil.ExitUsage},
		{"readers 0", sig, []string{"--delta", "--readers", "0", img}, cliutil.ExitUsage},
		{"level 5", sig, []string{"--delta", "--level", "5", img}, cliutil.ExitUsage},
		{"delta and verify", sig, []string{"--delta", "--verify", img}, cliutil.ExitUsage},
		{"missing device", sig, []string{"--delta", filepath.Join(dir, "nope")}, cliutil.ExitFailure},
		{"empty stdin", []byte{}, []string{"--delta", img}, cliutil.ExitBadStream},
		{"truncated signature", sig[:len(sig)-1], []string{"--delta", img}, cliutil.ExitBadStream},
		{"text on stdin", []byte("hello\n"), []string{"--delta", img}, cliutil.ExitBadStream},
		{"good delta", sig, []string{"--delta", img}, cliutil.ExitOK},
		{"verify without manifest", nil, []string{"--verify", img}, cliutil.ExitRefused},
		{"verify missing", nil, []string{"--verify", filepath.Join(dir, "nope")}, cliutil.ExitFailure},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var in *os.File
			if tt.stdin != nil {
				p := filepath.Join(t.TempDir(), "stdin")
				os.WriteFile(p, tt.stdin, 0o644)
				in, _ = os.Open(p)
				defer in.Close()
			}
			if code := runWith(t, in, io.Discard, append([]string{"dosvob-hash"}, tt.args...)...); code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
		})
	}
}

func runWith(t *testing.T, stdin *os.File, stdout io.Writer, args ...string) int {
	t.Helper()
	var in io.Reader = strings.NewReader("")
	if stdin != nil {
		in = stdin
	}
	var stderr bytes.Buffer
	code := cliutil.RunArgs(newApp(in, stdout, &stderr), args, &stderr)
	t.Logf("%q: exit %d\n%s", args, code, stderr.String())
	return code
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint32{"4096": 4096, "64K": 65536, "64k": 65536, "64KiB": 65536, "1M": 1 << 20, "16MiB": 16 << 20, "128KB": 128 << 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "K", "-1", "1G", "abc", "99999999999"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// mkbackup IMAGE DEVICE: backs DEVICE up into IMAGE in-process, the way the
// pipe does (sign, delta, then the image store's patch), so that IMAGE has
// a manifest for --verify.
func cmdMkbackup(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: mkbackup IMAGE DEVICE")
	}
	img, dev := ts.MkAbs(args[0]), ts.MkAbs(args[1])
	ctx := context.Background()
	quiet := output{w: io.Discard, quiet: true}
	var sig, delta bytes.Buffer
	ts.Check(sign(ctx, img, 4096, false, &sig, quiet, blocksync.Options{Counters: new(blocksync.Counters)}))
	ts.Check(deltaRun(ctx, dev, &sig, &delta, quiet, blocksync.Options{Counters: new(blocksync.Counters)}))
	s, err := imagestore.Open(img, imagestore.Options{Writer: true, Backup: true})
	ts.Check(err)
	defer s.Close()
	_, err = s.Patch(ctx, &delta, imagestore.PatchOptions{})
	ts.Check(err)
}
