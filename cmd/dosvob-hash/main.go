// Command dosvob-hash is both ends of dosvob's block comparison.
//
//	dosvob-hash backup.img | dosvob-hash --delta /dev/sdb | dosvob-patch backup.img
//
// "dosvob-hash IMAGE" writes the signature stream of a local backup image:
// one hash per block. "dosvob-hash --delta DEVICE" runs next to the device
// (over ssh on the droplet), reads that signature stream on stdin and the
// device at the same time, and writes the delta stream: only the blocks that
// changed. "dosvob-hash --verify IMAGE" re-reads an image and checks it
// against its manifest. The work lives in internal/blocksync,
// internal/format and internal/imagestore; this file is flags and wiring.
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dosvob/dosvob/internal/blocksync"
	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/format"
	"github.com/dosvob/dosvob/internal/imagestore"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

const name = "dosvob-hash"

func main() { cliutil.Run(newApp(os.Stdin, os.Stdout, os.Stderr)) }

// run is main for the CLI tests: it returns the exit code.
func run() int { return cliutil.RunArgs(newApp(os.Stdin, os.Stdout, os.Stderr), os.Args, os.Stderr) }

const description = `dosvob-hash IMAGE writes the signature stream of IMAGE to standard output:
a header (block size, a random per-run seed, the identity and size of the
image) and one xxhash64 per block. A missing IMAGE (the first backup) gives
the valid signature of an empty image. If an earlier run on IMAGE was
interrupted, it is first finished or undone (and the partial image of an
interrupted first backup is what gets signed, so only the rest travels).
The signing run is recorded in IMAGE.dosvob/, so that dosvob-patch accepts
only a delta made against exactly this signature. When the last run left a
valid hash cache in IMAGE.dosvob/ (the per-block hashes of the image under
a seed no run has compared with yet), the signature comes from it and the
image is not read at all; otherwise (or with --no-cache) the image is read.
The summary line says which. The signature also announces a fresh next
seed: the delta side hashes the device under it as well, and dosvob-patch
keeps those hashes as the cache of the next run. When it reads IMAGE, it
also digests it: if IMAGE is no longer the backup its manifest records
(changed outside dosvob, or damaged), it says so on standard error, also
with --quiet, and which kept versions that cuts off; dosvob-patch then keeps
what IMAGE held as a version and marks those (docs/MANIFEST.md).

dosvob-hash --delta DEVICE reads such a signature stream on standard input
and DEVICE (a block device or a regular file) at the same time, with several
reads in flight, and writes a zstd-compressed delta stream to standard
output: the blocks whose hash differs or that lie past the end of the signed
image, a payload-free zero record for each such block that is all zeros, and
an end record with counts and digests of the whole device. Its memory use is
a few blocks, whatever the size of DEVICE.

dosvob-hash --raw DEVICE signs a block device (or a regular file) as it
is, with no state: it never creates DEVICE.dosvob/ and never recovers or
records anything. The signature's base is "no image" (a zero image id,
generation 0) with the size of DEVICE. It is the first stage of the restore
direction: on the droplet "dosvob-hash --raw DEVICE" signs the new volume,
locally "dosvob-hash --delta IMAGE" computes what the volume lacks, and on
the droplet "dosvob-patch --raw DEVICE" writes it. When DEVICE is larger
than IMAGE (a volume rounded up to whole GiB), its bytes past the image's
size are left as they are. dosvob-hash --raw only reads DEVICE and so does
not claim it: dosvob-patch --raw, the stage that writes, refuses a device
that is mounted or in use, or that holds another file system. When DEVICE
is a dosvob image, what --delta reads must be the backup its manifest
describes (the same size and whole-image digest); otherwise (bit rot on
the backup disk, a write from outside) it exits 5 without the stream's
end record, so that the receiving dosvob-patch --raw fails too.

dosvob-hash --verify IMAGE (the scrub) re-reads IMAGE and checks it against
the digests in its manifest; it prints the first bad offset if it is not
intact. Then it reads every kept version's file (IMAGE.dosvob/versions/)
and checks what can be checked without restoring it: its size, the
generation it applies to, its stream's checksums and End record; it names
a damaged one and the versions it costs, and changes none. Like every
command it first checks the manifest against its own checksum; one that
fails it is damaged (exit 5), but the scrub still compares IMAGE with the
size and digest that manifest records and says whether they match (then
IMAGE is intact; docs/MANIFEST.md says what to do).

Standard output carries the stream only. Progress (blocks, bytes, rate, ETA)
goes to standard error when it is a terminal or with --progress; a summary
line follows at the end unless --quiet. docs/FORMAT.md specifies the streams.

Exit codes: 0 ok; 1 failure (I/O error on IMAGE or DEVICE); 2 usage;
3 bad signature stream on standard input (truncated, corrupt, wrong type or
version); 4 refused (IMAGE's state was written by an unknown dosvob version,
or --verify on a file that is not a dosvob image); 5 --verify found IMAGE
damaged, a kept version damaged, --delta read an image that is not the
backup its manifest describes, or IMAGE.dosvob/manifest.json is damaged;
6 locked (another dosvob run holds IMAGE, or got ahead of this one);
130 interrupted.`

const examples = `
EXAMPLES:
   # a backup, first or incremental, with no network:
   dosvob-hash backup.img | dosvob-hash --delta /dev/sdb | dosvob-patch backup.img

   # the same over ssh, as scripts/backup-all.sh runs it:
   dosvob-hash data.img |
     ssh root@host dosvob-hash --delta /dev/disk/by-id/scsi-0DO_Volume_data |
     dosvob-patch data.img

   # smaller blocks, 16 reads in flight on a slow network disk:
   dosvob-hash --block-size 16K data.img | dosvob-hash --delta --readers 16 /dev/sdb | dosvob-patch data.img

   # restore: fill a new volume (on the droplet) from a local image:
   ssh root@host dosvob-hash --raw /dev/sdb |
     dosvob-hash --delta data.img |
     ssh root@host dosvob-patch --raw /dev/sdb

   # scrub: is the backup still intact?
   dosvob-hash --verify data.img
`

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:                   name,
		Usage:                  "sign a backup image, compute a device's delta against it, or verify an image",
		UsageText:              "dosvob-hash [flags] IMAGE > SIGNATURE\ndosvob-hash --raw [flags] DEVICE > SIGNATURE\ndosvob-hash --delta [flags] DEVICE < SIGNATURE > DELTA\ndosvob-hash --verify [flags] IMAGE",
		Description:            description,
		CustomAppHelpTemplate:  cli.AppHelpTemplate + examples,
		HideHelpCommand:        true,
		UseShortOptionHandling: true,
		Reader:                 stdin,
		Writer:                 stderr, // help and messages; stdout carries data only
		ErrWriter:              stderr,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "delta", Aliases: []string{"d"}, Usage: "read a signature on stdin and DEVICE; write the delta to stdout"},
			&cli.BoolFlag{Name: "verify", Usage: "re-read IMAGE and check it against its manifest (scrub)"},
			&cli.BoolFlag{Name: "no-cache", Usage: "read IMAGE to sign it even when its hash cache is valid"},
			&cli.BoolFlag{Name: "raw", Usage: "sign DEVICE as it is, with no state directory (the restore direction; see above)"},
			&cli.StringFlag{Name: "block-size", Aliases: []string{"b"}, DefaultText: sizeString(blocksync.DefaultBlockSize) + ", or the image's",
				Usage: "block `SIZE` when signing (4K to 16M, a power of two; K and M suffixes); the delta side takes it from the signature"},
			&cli.IntFlag{Name: "readers", Value: blocksync.DefaultReaders, Usage: "`N` reads in flight, 1 to 64 (fewer if the device is small or 32 MiB of read buffers allow fewer; the summary says how many)"},
			&cli.IntFlag{Name: "level", Value: format.DefaultLevel, Usage: "zstd compression `LEVEL` of the delta, 1 to 4: 1 fastest, 2 zstd's default, 3 better, 4 best"},
			&cli.IntFlag{Name: "zstd-threads", Value: blocksync.DefaultZstdThreads, Usage: "`N` compression goroutines for the delta"},
			&cli.BoolFlag{Name: "progress", Usage: "show progress on stderr even when it is not a terminal"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress and no summary line"},
		},
		Action: func(c *cli.Context) error {
			return action(c, stdin, stdout, stderr)
		},
	}
}

func action(c *cli.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	modes := 0
	for _, m := range []string{"delta", "verify", "raw"} {
		if c.Bool(m) {
			modes++
		}
	}
	if modes > 1 {
		return cliutil.Usagef("--delta, --verify and --raw do not go together")
	}
	what := "IMAGE"
	if c.Bool("delta") || c.Bool("raw") {
		what = "DEVICE"
	}
	switch {
	case c.NArg() == 0:
		return cliutil.WithHint(cliutil.Usagef("missing %s argument", what), "run '"+name+" --help' for usage")
	case c.NArg() > 1:
		return cliutil.WithHint(cliutil.Usagef("want one %s argument, got %d: %q", what, c.NArg(), c.Args().Slice()), "put flags before "+what)
	case c.Args().First() == "":
		return cliutil.Usagef("empty %s argument", what)
	}
	path := c.Args().First()
	readers := c.Int("readers")
	if readers < 1 || readers > blocksync.MaxReaders {
		return cliutil.Usagef("--readers %d is out of range (1 to %d)", readers, blocksync.MaxReaders)
	}
	level := c.Int("level")
	if level < format.LevelFastest || level > format.LevelBest {
		return cliutil.Usagef("--level %d is out of range (%d to %d)", level, format.LevelFastest, format.LevelBest)
	}
	threads := c.Int("zstd-threads")
	if threads < 1 || threads > 64 {
		return cliutil.Usagef("--zstd-threads %d is out of range (1 to 64)", threads)
	}
	var blockSize uint32
	if c.IsSet("block-size") {
		if c.Bool("delta") || c.Bool("verify") {
			return cliutil.WithHint(cliutil.Usagef("--block-size applies to signing only"),
				"the delta side takes the block size from the signature header")
		}
		v := c.String("block-size")
		n, err := parseSize(v)
		if err != nil || !format.ValidBlockSize(n) {
			return cliutil.Usagef("--block-size %q is not a power of two from 4K to 16M", v)
		}
		blockSize = n
	}
	o := output{w: stderr, quiet: c.Bool("quiet")}
	o.progress = !o.quiet && (c.Bool("progress") || isTerminal(stderr))
	opts := blocksync.Options{Readers: readers, Level: level, Concurrency: threads, Counters: new(blocksync.Counters)}
	switch {
	case c.Bool("verify"):
		return verify(c.Context, path, o)
	case c.Bool("delta"):
		if isTerminal(stdin) {
			return cliutil.WithHint(cliutil.Usagef("no signature stream on standard input (it is a terminal)"),
				"pipe a signature into it: dosvob-hash IMAGE | dosvob-hash --delta "+path+" | dosvob-patch IMAGE")
		}
		if isTerminal(stdout) {
			return cliutil.WithHint(cliutil.Usagef("refusing to write a binary delta stream to a terminal"), "pipe it into dosvob-patch IMAGE")
		}
		return deltaRun(c.Context, path, stdin, stdout, o, opts)
	case c.Bool("raw"):
		if isTerminal(stdout) {
			return cliutil.WithHint(cliutil.Usagef("refusing to write a binary signature stream to a terminal"),
				"pipe it into dosvob-hash --delta IMAGE")
		}
		return signRaw(c.Context, path, blockSize, stdout, o, opts)
	default:
		if isTerminal(stdout) {
			return cliutil.WithHint(cliutil.Usagef("refusing to write a binary signature stream to a terminal"),
				"pipe it into dosvob-hash --delta DEVICE")
		}
		return sign(c.Context, path, blockSize, c.Bool("no-cache"), stdout, o, opts)
	}
}

// sign writes the signature stream of the image at path: from the image
// store's hash cache when it offers a fresh one (no read of the image at
// all), by reading the image otherwise.
func sign(ctx context.Context, path string, blockSize uint32, noCache bool, stdout io.Writer, o output, opts blocksync.Options) error {
	s, err := imagestore.Open(path, imagestore.Options{Backup: true, Logf: o.logf})
	if err != nil {
		return storeErr(err, path)
	}
	defer s.Close()
	src, size, err := s.Content()
	if err != nil {
		return cliutil.Exit(cliutil.ExitFailure, fmt.Errorf("open %q: %w", path, cliutil.PathCause(err)))
	}
	base := s.Base()
	if uint64(size) != base.Size {
		return fmt.Errorf("%q changed size while opening it (%d, then %d bytes)", path, base.Size, size)
	}
	if blockSize == 0 {
		blockSize = blocksync.DefaultBlockSize
		if m := s.Manifest(); m != nil && format.ValidBlockSize(uint32(m.BlockSize)) {
			blockSize = uint32(m.BlockSize) // keep the image's recorded per-block hashes comparable
		}
	}
	// The seed of this run's comparison: the cache's (drawn by the last run
	// and never used for a comparison) or a fresh one. The next seed is
	// always fresh: the delta side hashes the device under it too, and the
	// patch keeps those hashes as the next run's cache.
	var cache *imagestore.HashCache
	why := "--no-cache"
	if !noCache {
		cache, why = s.HashCache()
	}
	if cache != nil && cache.BlockSize != blockSize {
		cache, why = nil, fmt.Sprintf("the cache has %s blocks", sizeString(uint64(cache.BlockSize)))
	}
	seed, err := randomSeed()
	if err != nil {
		return err
	}
	if cache != nil {
		seed = cache.Seed
	}
	next, err := randomSeed()
	if err != nil {
		return err
	}
	hdr := format.SigHeader{Version: format.Version, BlockSize: blockSize, Seed: seed, NextSeed: next, Base: base}
	rec, err := s.BeginSigning(hdr)
	if err != nil {
		return storeErr(err, path)
	}
	sw, err := format.NewSigWriter(stdout, hdr)
	if err != nil {
		rec.Abort()
		return err
	}
	stop := o.start("sign", opts.Counters)
	if cache != nil {
		// Whole chunks of hashes, from the cache file to the record and
		// the signature, never one hash at a time.
		opts.OnHashes = func(_ uint64, p []byte) error { return rec.AddRaw(p) }
		err = blocksync.SignCached(ctx, cache, sw, opts)
	} else {
		opts.OnHash = func(_, h uint64) error { return rec.Add(h) }
		// Reading it anyway, the run learns whether IMAGE is still the
		// last backup, for the cost of hashing what it reads.
		opts.Digest = s.ContentDigester()
		err = blocksync.Sign(ctx, src, sw, opts)
	}
	if err == nil && opts.Digest != nil {
		if ch := rec.Found(opts.Digest.Sum64()); ch != nil {
			o.logf("%s", ch)
			o.logf("hint: %s", ch.Hint())
		}
	}
	if err == nil {
		// The record must be complete before the trailer lets a delta
		// stream finish.
		err = rec.Finish(sw.Digest())
	} else {
		rec.Abort()
	}
	if err == nil {
		err = sw.Close()
	}
	el := stop()
	if errors.Is(err, imagestore.ErrSuperseded) {
		return storeErr(err, path) // another run began writing IMAGE meanwhile
	}
	if err != nil {
		return deviceErr(err, path)
	}
	c := opts.Counters
	what := "image"
	if s.Partial() {
		what = "partial image"
	}
	how := "from the hash cache, image not read"
	if cache == nil {
		how = "read the image (no cache: " + why + ")"
	}
	o.summary("signed %s %s: %d blocks of %s, %s, %s read, %s sent in %s (%s/s)", what, path,
		c.Blocks.Load(), sizeString(uint64(blockSize)), how, sizeString(c.BytesRead.Load()),
		sizeString(uint64(hdr.Size())+8*c.Blocks.Load()+format.SigTrailerSize), seconds(el), rate(uint64(size), el))
	return nil
}

// signRaw writes the signature stream of the device (or file) at path as it
// is: base "no image" with the device's size, and no state recorded.
func signRaw(ctx context.Context, path string, blockSize uint32, stdout io.Writer, o output, opts blocksync.Options) error {
	f, err := blocksync.OpenSource(path)
	if err != nil {
		return cliutil.Exit(cliutil.ExitFailure, fmt.Errorf("open %q: %w", path, cliutil.PathCause(err)))
	}
	defer f.Close()
	size, err := blocksync.Size(f.File())
	if err != nil {
		return err
	}
	if blockSize == 0 {
		blockSize = blocksync.DefaultBlockSize
	}
	seed, err := randomSeed()
	if err != nil {
		return err
	}
	next, err := randomSeed()
	if err != nil {
		return err
	}
	hdr := format.SigHeader{Version: format.Version, BlockSize: blockSize, Seed: seed, NextSeed: next, Base: format.Base{Size: size}}
	sw, err := format.NewSigWriter(stdout, hdr)
	if err != nil {
		return err
	}
	stop := o.start("sign", opts.Counters)
	err = blocksync.Sign(ctx, f, sw, opts)
	if err == nil {
		err = sw.Close()
	}
	el := stop()
	if err != nil {
		return deviceErr(err, path)
	}
	c := opts.Counters
	o.summary("signed device %s (raw, no state): %d blocks of %s, %s read, %s sent in %s (%s/s)", path,
		c.Blocks.Load(), sizeString(uint64(blockSize)), sizeString(c.BytesRead.Load()),
		sizeString(uint64(hdr.Size())+8*c.Blocks.Load()+format.SigTrailerSize), seconds(el), rate(c.BytesRead.Load(), el))
	return nil
}

// randomSeed draws a fresh 64-bit hash seed.
func randomSeed() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// deltaRun writes the delta stream of the device at path against the
// signature on stdin.
//
// A dosvob image (a file with a state directory beside it, as a restore
// reads one) is opened through its store first: that finishes or undoes a
// run that was interrupted on it, so that what is read is exactly a backup,
// and holds its writer lock while it is read, so that no run patches it
// meanwhile.
func deltaRun(ctx context.Context, path string, stdin io.Reader, stdout io.Writer, o output, opts blocksync.Options) error {
	// Of a dosvob image whose backup is complete: its manifest, and a
	// digester of what is read as the manifest's digest is computed.
	var m *imagestore.Manifest
	var digest *format.DeviceDigester
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && imagestore.HasState(path) {
		s, err := imagestore.Open(path, imagestore.Options{Writer: true, Logf: o.logf})
		if err != nil {
			return storeErr(err, path)
		}
		defer s.Close()
		if digest = s.ContentDigester(); digest != nil {
			m = s.Manifest()
		}
	}
	f, err := blocksync.OpenSource(path)
	if err != nil {
		return cliutil.Exit(cliutil.ExitFailure, fmt.Errorf("open %q: %w", path, cliutil.PathCause(err)))
	}
	defer f.Close()
	size, err := blocksync.Size(f.File())
	if err != nil {
		return err
	}
	if m != nil {
		// What is read must be the backup the manifest describes, not an
		// image that rotted or was written to since: the stream's own
		// digests are of what is read, so without this a restore would
		// copy the damage and call it verified.
		if size != uint64(m.DeviceSize) {
			return damagedImage(fmt.Errorf("%q is %d bytes, its manifest recorded %d: it is damaged, or was changed outside dosvob since its last backup", path, size, m.DeviceSize), path)
		}
		want := uint64(m.DeviceDigest)
		opts.Digest, opts.Want = digest, &want
	}
	sr, err := format.NewSigReader(stdin)
	if err != nil {
		return sigErr(err)
	}
	// Before the run: a device that refuses O_DIRECT is read with other
	// pieces from then on.
	inFlight := blocksync.ReadsInFlight(f, size, sr.Header().BlockSize, opts.Readers)
	stop := o.start("delta", opts.Counters)
	end, err := blocksync.Delta(ctx, sr, f, size, stdout, opts)
	el := stop()
	if err != nil {
		if errors.Is(err, blocksync.ErrSignature) {
			return sigErr(err)
		}
		if de := (*blocksync.DigestError)(nil); errors.As(err, &de) {
			return damagedImage(fmt.Errorf("%q does not hold the backup its manifest describes (digest %016x, the manifest recorded %016x): it is damaged, or was changed outside dosvob since its last backup; the stream was cut before its end, so nothing takes it for complete",
				path, de.Got, de.Want), path)
		}
		return deviceErr(err, path)
	}
	c := opts.Counters
	how := "up to 1 read in flight"
	if inFlight != 1 {
		how = fmt.Sprintf("up to %d reads in flight", inFlight)
	}
	if f.Direct.Load() > 0 {
		how = "O_DIRECT, " + how
	}
	o.summary("delta of %s: %d blocks scanned, %d changed, %d zero, %s read (%s), %s sent at zstd level %d in %s (%s/s)", path,
		end.Blocks, end.DataRecords, end.ZeroRecords, sizeString(c.BytesRead.Load()), how, sizeString(c.BytesSent.Load()),
		opts.Level, seconds(el), rate(c.BytesRead.Load(), el))
	return nil
}

// verify scrubs the image at path.
func verify(ctx context.Context, path string, o output) error {
	var progress func(done, total int64)
	start := time.Now()
	p := &progressLine{w: o.w, start: start}
	if o.progress {
		progress = func(done, total int64) { p.show(uint64(done), uint64(total), uint64(done), 0, "") }
	}
	rep, err := imagestore.Verify(ctx, path, progress, o.logf)
	p.finish()
	el := time.Since(start)
	intact := func() {
		o.summary("%s is intact: %d blocks, %s read in %s (%s/s), digest %s; %s checked", path, rep.Blocks, sizeString(uint64(rep.Size)),
			seconds(el), rate(uint64(rep.Size), el), rep.Digest, rep.VersionsChecked())
	}
	switch {
	case errors.Is(err, imagestore.ErrVersionDamaged):
		intact()
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err),
			"backups go on, and the damaged versions leave as --keep drops them; if you need them, restore their files from another copy of "+
				imagestore.StateDir(path)+"/versions")
	case errors.Is(err, imagestore.ErrCorrupt) && !errors.Is(err, imagestore.ErrStateDamaged):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err),
			"do not patch over it: restore it from another copy, or move it aside and make a new first backup")
	case err != nil:
		return storeErr(err, path)
	}
	if rep.Refreshed {
		o.summary("refreshed the per-block hashes of %s", path)
	}
	intact()
	return nil
}

// damagedImage is exit code 5 for a dosvob image that is not the backup
// its manifest describes, with the hint of what to do.
func damagedImage(err error, path string) error {
	return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err),
		fmt.Sprintf("run 'dosvob-hash --verify %s' to locate the damage; restore a kept version (dosvob-patch versions %s) or another copy; the image is a raw disk image, which can still be copied as it is, damage and all", path, path))
}

// sigErr maps a bad signature stream to exit code 3.
func sigErr(err error) error {
	hint := "standard input must be the output of 'dosvob-hash IMAGE', complete"
	var pe *format.ParseError
	if errors.As(err, &pe) && errors.Is(err, format.ErrVersion) {
		hint = "use the same dosvob version on both ends"
	}
	return cliutil.WithHint(cliutil.Exit(cliutil.ExitBadStream, err), hint)
}

// storeErr maps image store errors to exit codes.
func storeErr(err error, path string) error {
	var ro *imagestore.ReadOnlyError
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, imagestore.ErrLocked):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitLocked, err), "another dosvob run is using "+path+"; wait for it to finish")
	case errors.Is(err, imagestore.ErrSuperseded):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitLocked, err), "another dosvob run on "+path+" got ahead; run the whole pipe again once it has finished")
	case errors.Is(err, imagestore.ErrStateDamaged):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err), imagestore.DamagedHint(err, path))
	case errors.As(err, &ro):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitFailure, err), ro.Hint())
	case errors.Is(err, imagestore.ErrUnknownVersion):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err), "a newer dosvob wrote this state; use that version")
	case errors.Is(err, imagestore.ErrNotOurs):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err), "only images written by dosvob-patch have a manifest to verify against")
	case errors.Is(err, fs.ErrNotExist):
		return cliutil.Exit(cliutil.ExitFailure, cliutil.PathCause(err))
	}
	return err
}

// deviceErr maps an error of the signing or delta run.
func deviceErr(err error, path string) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%q: %w", path, err)
}

func isTerminal(f any) bool {
	o, ok := f.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(o.Fd()), unix.TCGETS)
	return err == nil
}

// parseSize parses a block size: bytes, or a number with a K or M suffix
// (KiB and MiB also accepted).
func parseSize(s string) (uint32, error) {
	mult := uint64(1)
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "IB"), "B")
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, strings.TrimSuffix(t, "K")
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, strings.TrimSuffix(t, "M")
	}
	n, err := strconv.ParseUint(t, 10, 32)
	if err != nil || n*mult > 1<<31 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return uint32(n * mult), nil
}
