// Command dosvob-patch applies a delta stream to a local backup image,
// atomically: afterwards the image is exactly the previous backup or exactly
// the new one, whatever happens. It also lists and restores the versions it
// keeps.
//
//	dosvob-hash backup.img | dosvob-hash --delta /dev/sdb | dosvob-patch backup.img
//
// The logic lives in internal/imagestore; this file is flags and wiring.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/dosvob/dosvob/internal/blockdev"
	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/format"
	"github.com/dosvob/dosvob/internal/imagestore"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

const name = "dosvob-patch"

func main() { cliutil.Run(newApp(os.Stdin, os.Stdout, os.Stderr)) }

// run is main for tests: it returns the exit code.
func run() int { return cliutil.RunArgs(newApp(os.Stdin, os.Stdout, os.Stderr), os.Args, os.Stderr) }

const description = `Reads a delta stream (made by "dosvob-hash --delta") on standard input and
makes IMAGE identical to the device it was made from. Standard output stays
empty; messages go to standard error.

The run is atomic. Changed blocks are written in place, but the old contents
of every block are saved first in an undo journal in IMAGE.dosvob/, and the
run commits only after the stream's end record has been verified (counts,
the signature digest, and the digest of every block of the new image). If
the stream breaks, the process is killed or the machine loses power, IMAGE is
the previous backup or the new one, and the next dosvob-hash or dosvob-patch
of IMAGE finishes or undoes the interrupted run and says so. A first backup
is written to a partial image that becomes IMAGE only when complete; an
interrupted one is resumed by the next run, which transfers only what is
missing.

IMAGE.dosvob/manifest.json records the source volume, the snapshot time,
sizes, digests and the kept versions (see docs/MANIFEST.md). dosvob-patch
refuses to write into a file that has no dosvob manifest, or whose manifest
names another volume, unless --force.

With --raw, IMAGE is an existing block device (or file) that receives the
delta directly, without state directory, journal or versions: the restore
direction, "dosvob-hash --raw DEV | dosvob-hash --delta IMAGE | dosvob-patch
--raw DEV", onto a new volume. The delta must have been made against a raw
signature of DEV; a device is never resized; afterwards DEV is read back and
checked against the stream's digests. A dosvob backup image is never written
raw, also not through a symbolic link or a second hard link (exit 4).
Before writing, --raw refuses (exit 4, nothing written) a block device
that is mounted, even read-only, or otherwise in use (LVM, RAID, swap,
another program's exclusive open), and holds it exclusively while it
writes. It also refuses a DEV whose start holds a file system, partition
table, LVM, LUKS or swap signature unless the image leaves the same one
there (the same UUID): a new volume (zeros) is written, and so is an
earlier restore of the same file system, which the run brings up to date;
--force writes over another one.

With --keep N, the N previous backups are kept as reverse deltas (only the
blocks each run overwrote); "dosvob-patch versions IMAGE" lists them and
"dosvob-patch restore-version" writes one into a new file.

Exit codes: 0 done, 1 failure, 2 usage, 3 bad stream or a delta made against
other content than IMAGE (nothing written, or the run undone), also a device
smaller than the image, 4 refused (not a dosvob image, another volume,
unknown state version, output exists; with --raw, a device in use or one
that holds another file system), 5 a kept version or
IMAGE.dosvob/manifest.json is damaged, or the version can no longer be
restored (IMAGE was changed outside dosvob), 6 locked (another dosvob run
on IMAGE holds it, or committed first since the signature was made), 130
interrupted.`

const examples = `
EXAMPLES:
   # a backup, first or incremental, with no network:
   dosvob-hash backup.img | dosvob-hash --delta /dev/sdb | dosvob-patch backup.img

   # over ssh, keeping a week of 4-hourly versions, naming the source:
   dosvob-hash data.img | ssh root@host dosvob-hash --delta /dev/disk/by-id/scsi-0DO_Volume_data |
     dosvob-patch --keep 42 --volume-name data --volume-id 506f78a4 \
       --snapshot-time 2026-11-16T04:00:00Z data.img

   # list kept versions and restore one into a new file:
   dosvob-patch versions data.img
   dosvob-patch restore-version --version 2026-11-16T04:00:00Z --output old.img data.img
`

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		CustomAppHelpTemplate:  cli.AppHelpTemplate + examples,
		Name:                   name,
		Usage:                  "apply a dosvob delta stream to a backup image, atomically",
		UsageText:              "dosvob-patch [flags] IMAGE < DELTA\ndosvob-patch versions IMAGE\ndosvob-patch restore-version --version TIME --output FILE IMAGE",
		Description:            description,
		HideHelpCommand:        true,
		UseShortOptionHandling: true,
		Reader:                 stdin,
		Writer:                 stderr, // help and messages; stdout carries data only
		ErrWriter:              stderr,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "keep", Value: -1, DefaultText: "as the last run, 0 for a new image",
				Usage: "keep the `N` previous versions as reverse deltas; older ones are deleted"},
			&cli.BoolFlag{Name: "force", Usage: "write into IMAGE even if it has no dosvob manifest or belongs to another volume (the given --volume-name and --volume-id then replace both recorded ones); with --raw, even over another file system or partition table (never onto a device in use)"},
			&cli.StringFlag{Name: "volume-name", Usage: "source volume `NAME`, recorded in the manifest and checked against it"},
			&cli.StringFlag{Name: "volume-id", Usage: "source volume `ID`, recorded in the manifest and checked against it"},
			&cli.StringFlag{Name: "snapshot-time", Usage: "`TIME` (RFC 3339) of the snapshot the delta was read from; names the backup"},
			&cli.BoolFlag{Name: "raw", Usage: "write the delta straight onto IMAGE, an existing block device or file, with no state, journal or versions (the restore direction; see --help)"},
			&cli.BoolFlag{Name: "progress", Usage: "show progress on stderr even when it is not a terminal"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress and no summary line (errors and recovery notes still show)"},
		},
		Action: func(c *cli.Context) error { return patchCmd(c, stdin, stderr) },
		Commands: []*cli.Command{
			{
				Name:      "versions",
				Usage:     "list the kept versions of IMAGE on stdout (and warn on stderr of a version file that is missing or cut short)",
				ArgsUsage: "IMAGE",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "json", Usage: "print the versions as JSON"},
				},
				Action: func(c *cli.Context) error { return versionsCmd(c, stdout, stderr) },
			},
			{
				Name:  "restore-version",
				Usage: "write a kept version of IMAGE into a new file, leaving IMAGE alone",
				Description: `Copies IMAGE to FILE (sparse) and applies the reverse deltas from the newest
back to the chosen version, then checks the result against the digest the
manifest recorded for that version. FILE must not exist, and is never a
device (to put a version on one, write it to a file, then use the raw
restore pipe: see dosvob-patch --help); it appears only when complete and
verified. Until then the version is written into FILE.dosvob-tmp, which an
interrupted run removes. One that a killed run left is taken over (a line
says so); one that another live process is writing is refused (exit 6).

The versions lead back from IMAGE as the last backup left it. A version that
a run marked as no longer restorable (IMAGE was changed outside dosvob after
it was kept; "versions" shows it) is refused at once, and so is any version
while IMAGE is not its last backup (found while it is copied): exit 5.`,
				ArgsUsage: "IMAGE",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "version", Usage: "the version's `TIME`, as listed by \"versions\" (20261116T040000Z or 2026-11-16T04:00:00Z), or \"latest\", the newest that can be restored (required)"},
					&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "the new `FILE` to write (required)"},
				},
				Action: func(c *cli.Context) error { return restoreCmd(c, stderr) },
			},
		},
	}
}

// imageArg returns the single IMAGE argument.
func imageArg(c *cli.Context) (string, error) {
	switch c.NArg() {
	case 1:
		if c.Args().First() == "" {
			return "", cliutil.Usagef("empty IMAGE argument")
		}
		return c.Args().First(), nil
	case 0:
		return "", cliutil.WithHint(cliutil.Usagef("missing IMAGE argument"), "run '"+name+" --help' for usage")
	}
	return "", cliutil.WithHint(cliutil.Usagef("want one IMAGE argument, got %d: %q", c.NArg(), c.Args().Slice()),
		"put flags before IMAGE")
}

func isTerminal(f any) bool {
	o, ok := f.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(o.Fd()), unix.TCGETS)
	return err == nil
}

func patchCmd(c *cli.Context, stdin io.Reader, stderr io.Writer) error {
	img, err := imageArg(c)
	if err != nil {
		return err
	}
	if isTerminal(stdin) {
		return cliutil.WithHint(cliutil.Usagef("no delta stream on standard input (it is a terminal)"),
			"pipe a delta into it: dosvob-hash "+img+" | dosvob-hash --delta DEVICE | dosvob-patch "+img)
	}
	src := imagestore.Source{VolumeName: c.String("volume-name"), VolumeID: c.String("volume-id")}
	if v := c.String("snapshot-time"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return cliutil.Usagef("--snapshot-time %q is not an RFC 3339 time (like 2026-11-16T04:00:00Z)", v)
		}
		src.SnapshotTime = t.UTC()
	}
	keep := c.Int("keep") // -1 when not given: as the last run
	if c.IsSet("keep") && keep < 0 {
		return cliutil.Usagef("--keep %d is negative", keep)
	}
	quiet := c.Bool("quiet")
	if c.Bool("raw") {
		for _, f := range []string{"keep", "volume-name", "volume-id", "snapshot-time"} {
			if c.IsSet(f) {
				return cliutil.Usagef("--%s does not go with --raw", f)
			}
		}
		return rawCmd(c, img, stdin, stderr, quiet)
	}
	logf := func(f string, a ...any) { fmt.Fprintf(stderr, name+": "+f+"\n", a...) }

	s, err := imagestore.Open(img, imagestore.Options{Writer: true, Backup: true, Logf: logf})
	if err != nil {
		return mapErr(err, img)
	}
	defer s.Close()
	// Refuse before reading a byte of the stream.
	if err := s.CheckOwner(src, c.Bool("force")); err != nil {
		return mapErr(err, img)
	}
	opts := imagestore.PatchOptions{TxOptions: imagestore.TxOptions{Keep: keep, Force: c.Bool("force"), Source: src}}
	var prog *progress
	if !quiet && (c.Bool("progress") || isTerminal(stderr)) {
		prog = &progress{w: stderr, start: time.Now()}
		opts.Progress = prog.update
	}
	res, err := s.Patch(c.Context, stdin, opts)
	prog.done()
	if err != nil && c.Context.Err() != nil {
		// A signal also ends the rest of the pipe, so the stream breaks:
		// report the interruption, not the broken stream.
		return cliutil.Exit(cliutil.ExitInterrupted, fmt.Errorf("interrupted; %s (%v)", unchanged(img), err))
	}
	if err != nil {
		return mapErr(err, img)
	}
	if !quiet {
		m, st := res.Manifest, res.Stats
		line := fmt.Sprintf("%s: generation %d, %d blocks of %s, %d data (%s written), %d zero, %s in %.2fs",
			img, m.Generation, st.Blocks, size(int64(m.BlockSize)), st.DataBlocks, size(st.BytesWritten), st.ZeroBlocks,
			size(m.DeviceSize), st.Seconds)
		if st.Resumed {
			line += ", resumed"
		}
		if res.Kept != "" {
			line += ", kept version " + res.Kept
		}
		if ch := res.Changed; ch != nil {
			// dosvob-hash said what it found; this says what was done.
			if ch.Match != "" {
				line += " (what " + img + " held, put back outside dosvob)"
			} else {
				line += " (what " + img + " held, changed outside dosvob)"
			}
			if len(ch.Lost) > 0 {
				line += fmt.Sprintf(", marked %d older versions unrestorable", len(ch.Lost))
			}
		}
		if len(res.Pruned) > 0 {
			line += fmt.Sprintf(", deleted %d old versions", len(res.Pruned))
		}
		fmt.Fprintln(stderr, name+": "+line)
	}
	return nil
}

// rawCmd is dosvob-patch --raw DEVICE.
func rawCmd(c *cli.Context, dev string, stdin io.Reader, stderr io.Writer, quiet bool) error {
	var prog *progress
	var pf func(done, total uint64, bytes int64)
	if !quiet && (c.Bool("progress") || isTerminal(stderr)) {
		prog = &progress{w: stderr, start: time.Now()}
		pf = prog.update
	}
	start := time.Now()
	res, err := imagestore.PatchRaw(c.Context, dev, stdin, imagestore.RawOptions{Force: c.Bool("force"), Progress: pf})
	prog.done()
	if err != nil {
		return rawErr(err, dev)
	}
	if !quiet {
		fmt.Fprintf(stderr, "%s: %s: %d blocks of %s, %d data (%s written), %d zero, %s verified in %.2fs\n", name, dev,
			res.End.Blocks, size(int64(res.Header.BlockSize)), res.DataBlocks, size(res.Bytes), res.ZeroBlocks,
			size(int64(res.Header.DeviceSize)), time.Since(start).Seconds())
	}
	return nil
}

// rawErr gives an error of dosvob-patch --raw DEV its exit code and a hint.
func rawErr(err error, dev string) error {
	pipe := "dosvob-hash --raw " + dev + " | dosvob-hash --delta IMAGE | " + name + " --raw " + dev
	var small *imagestore.TooSmallError
	switch {
	case errors.Is(err, imagestore.ErrRawIncomplete):
		return rawIncomplete(err, dev)
	case errors.Is(err, os.ErrNotExist):
		return cliutil.Exitf(cliutil.ExitFailure, "%q does not exist (--raw writes onto an existing device or file)", dev)
	case errors.Is(err, blockdev.ErrBusy):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, fmt.Errorf("%w; nothing written", err)),
			"check the device name (lsblk "+dev+" shows its mount points and holders); if it really is the restore target, unmount it (and stop what holds it) first")
	case errors.Is(err, imagestore.ErrForeign):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err),
			"check the device name; to overwrite it all the same, run the pipe again with "+name+" --raw --force "+dev)
	case errors.As(err, &small):
		gib := (small.Need + 1<<30 - 1) >> 30
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitBadStream, err), fmt.Sprintf(
			"nothing written; restore onto a device of at least %d bytes (a new volume of %d GiB or more): %s", small.Need, gib, pipe))
	case errors.Is(err, imagestore.ErrBase):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitBadStream, err),
			"the delta must come from a raw signature of this device, made by the same pipe: "+pipe)
	}
	return mapErr(err, dev)
}

// unchanged says what a run that failed left of img: the image as it was,
// or, for a first backup, no image yet and a partial one that keeps what
// arrived (a failed first backup is not undone: the next run resumes it).
func unchanged(img string) string {
	if imagestore.HasPartial(img) {
		return fmt.Sprintf("%q is not made yet: the partial first backup in %q keeps what arrived, and the next run resumes it",
			img, imagestore.StateDir(img))
	}
	return fmt.Sprintf("%q is unchanged", img)
}

// rawIncomplete maps an error of --raw after it began writing DEV: unlike
// an image, whose run is undone, DEV may hold part of the stream.
func rawIncomplete(err error, dev string) error {
	hint := fmt.Sprintf("%q is incomplete: part of the stream may have been written onto it; do not use it until a restore onto it completes (run the whole pipe again: it sends only the blocks that differ)", dev)
	var pe *format.ParseError
	switch {
	case errors.Is(err, context.Canceled):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitInterrupted, errors.New("interrupted")), hint)
	case errors.As(err, &pe):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitBadStream, err), hint)
	}
	return cliutil.WithHint(cliutil.Exit(cliutil.ExitFailure, err), hint)
}

// mapErr gives err its exit code and a hint.
func mapErr(err error, img string) error {
	var pe *format.ParseError
	var busy *imagestore.OutputBusyError
	var ro *imagestore.ReadOnlyError
	switch {
	case errors.Is(err, context.Canceled):
		return cliutil.Exit(cliutil.ExitInterrupted, fmt.Errorf("interrupted; %s", unchanged(img)))
	case errors.Is(err, imagestore.ErrStateDamaged):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err), imagestore.DamagedHint(err, img))
	case errors.Is(err, imagestore.ErrVersionLost):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err), "list the versions that can be restored with: "+name+" versions "+img)
	case errors.Is(err, imagestore.ErrImageChanged):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err),
			"put back the image it replaced, if you can; or back the volume up: that run keeps what "+img+" holds as a version, and marks the versions it cut off")
	case errors.As(err, &ro):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitFailure, err), ro.Hint())
	case errors.Is(err, imagestore.ErrVersionDamaged):
		// Before the stream errors: a kept version's file is one too.
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitCorrupt, err),
			"the image itself is not read from this file (check it with dosvob-hash --verify "+img+"); a newer version may still restore")
	case errors.As(err, &pe):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitBadStream, err), unchanged(img)+"; run the whole pipe again")
	case errors.Is(err, imagestore.ErrBase):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitBadStream, err),
			"the delta must come from signatures of this image: run dosvob-hash "+img+" | dosvob-hash --delta DEVICE | dosvob-patch "+img)
	case errors.As(err, &busy):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitLocked, err), "wait for it to finish, or choose another --output")
	case errors.Is(err, imagestore.ErrLocked):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitLocked, err), "another dosvob run is using "+img+"; wait for it to finish")
	case errors.Is(err, imagestore.ErrSuperseded):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitLocked, err),
			img+" is as the other run left it; for a newer backup, run the whole pipe again once it has finished")
	case errors.Is(err, imagestore.ErrNotOurs):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err), "choose another IMAGE path, or pass --force to overwrite this file")
	case errors.Is(err, imagestore.ErrIsImage):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err),
			"--raw writes onto a new volume or a plain file; to update a backup, run "+name+" without --raw")
	case errors.Is(err, imagestore.ErrOtherVolume):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err), "check --volume-name/--volume-id, or pass --force to overwrite this backup")
	case errors.Is(err, imagestore.ErrUnknownVersion):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err), "a newer dosvob wrote this state; use that version")
	case errors.Is(err, imagestore.ErrExists):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitRefused, err), "choose an --output that does not exist")
	case errors.Is(err, imagestore.ErrNoVersion):
		return cliutil.WithHint(cliutil.Exit(cliutil.ExitUsage, err), "list the kept versions with: "+name+" versions "+img)
	case errors.Is(err, imagestore.ErrCorrupt):
		return cliutil.Exit(cliutil.ExitCorrupt, err)
	}
	return err
}

func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// progress prints blocks, bytes, rate and ETA on one updating line.
type progress struct {
	w     io.Writer
	start time.Time
	last  time.Time
	shown bool
}

func (p *progress) update(done, total uint64, bytes int64) {
	now := time.Now()
	if now.Sub(p.last) < 200*time.Millisecond && done != total {
		return
	}
	p.last = now
	el := now.Sub(p.start).Seconds()
	rate := float64(bytes) / max(el, 1e-3)
	eta := "?"
	if done > 0 && done < total {
		eta = (time.Duration(el*float64(total-done)/float64(done)) * time.Second).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "\r%s: block %d/%d, %s received, %s/s, eta %s   ", name, done, total, size(bytes), size(int64(rate)), eta)
	p.shown = true
}

func (p *progress) done() {
	if p != nil && p.shown {
		fmt.Fprintln(p.w)
	}
}
