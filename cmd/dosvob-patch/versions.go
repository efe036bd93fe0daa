package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dosvob/dosvob/internal/blockdev"
	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/imagestore"
	"github.com/urfave/cli/v2"
)

func openForReading(img string, stderr io.Writer) (*imagestore.Store, error) {
	logf := func(f string, a ...any) { fmt.Fprintf(stderr, name+": "+f+"\n", a...) }
	s, err := imagestore.Open(img, imagestore.Options{Logf: logf})
	if err != nil {
		return nil, mapErr(err, img)
	}
	if err := noManifest(s, img); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// noManifest is the error for a store with no manifest, nil if it has one:
// a missing image is a failure (exit 1), a file that is not a dosvob image
// is refused (exit 4).
func noManifest(s *imagestore.Store, img string) error {
	if s.Manifest() != nil {
		return nil
	}
	if _, err := os.Stat(img); err != nil {
		return cliutil.Exitf(cliutil.ExitFailure, "%q does not exist: no versions", img)
	}
	return cliutil.WithHint(cliutil.Exitf(cliutil.ExitRefused, "%q has no dosvob manifest: no versions", img),
		"only images written by "+name+" have kept versions")
}

func versionsCmd(c *cli.Context, stdout, stderr io.Writer) error {
	img, err := imageArg(c)
	if err != nil {
		return err
	}
	s, err := openForReading(img, stderr)
	if err != nil {
		return err
	}
	defer s.Close()
	vs := s.Manifest().Versions
	if c.Bool("json") {
		b, err := json.MarshalIndent(vs, "", "  ")
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(stdout, "%s\n", b); err != nil {
			return err
		}
		warnVersionFiles(s, img, stderr)
		return nil
	}
	fmt.Fprintf(stdout, "%-20s %-20s %14s %14s  %s\n", "VERSION", "TIME", "SIZE", "DELTA_BYTES", "NOTE")
	for _, v := range vs {
		fmt.Fprintf(stdout, "%-20s %-20s %14d %14d  %s\n", v.Name, v.Time.UTC().Format(time.RFC3339), v.Size, v.DeltaBytes, note(v))
	}
	warnVersionFiles(s, img, stderr)
	return nil
}

// note is the NOTE column of a version: "-", or why it cannot be restored,
// or what it is when it is no backup of dosvob's.
func note(v imagestore.Version) string {
	switch {
	case v.Unrestorable != "":
		return "cannot be restored: " + v.Unrestorable
	case v.Outside != nil:
		return "found changed outside dosvob (or damaged) since the backup of " + v.Outside.Since.UTC().Format(time.RFC3339)
	}
	return "-"
}

// warnVersionFiles says on stderr which kept versions of img have a file
// that is missing or of another size than recorded, and what that costs.
// The listing still succeeds: it is what the manifest says, and the image
// itself is not affected (restore.sh reads the state through it).
func warnVersionFiles(s *imagestore.Store, img string, stderr io.Writer) {
	bad, err := s.VersionFiles()
	for _, d := range bad {
		fmt.Fprintf(stderr, "%s: kept version %s of %s is damaged: %v\n", name, d.Version.Name, img, d.Err)
	}
	if len(bad) > 0 {
		fmt.Fprintf(stderr, "%s: %s; dosvob-hash --verify %s reads every kept version in full\n", name, bad[0].Lost(img), img)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: could not check the files of the kept versions: %v\n", name, err)
	}
}

// versionName accepts a version's name or its time in RFC 3339.
func versionName(v string) string {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC().Format("20060102T150405Z")
	}
	return strings.TrimSpace(v)
}

func restoreCmd(c *cli.Context, stderr io.Writer) error {
	if err := cliutil.Need(c, "version", "output"); err != nil {
		return err
	}
	img, err := imageArg(c)
	if err != nil {
		return err
	}
	out, version := c.String("output"), c.String("version")
	if blockdev.IsBlock(out) {
		return cliutil.WithHint(cliutil.Exitf(cliutil.ExitRefused, "--output %q is a block device: restore-version writes only a new file", out), fmt.Sprintf(
			"write the version to a file, then copy it onto the device with the raw restore pipe: %s restore-version --version %s --output FILE %s && dosvob-hash --raw %s | dosvob-hash --delta FILE | %s --raw %s",
			name, version, img, out, name, out))
	}
	logf := func(f string, a ...any) { fmt.Fprintf(stderr, name+": "+f+"\n", a...) }
	s, err := imagestore.Open(img, imagestore.Options{Writer: true, Logf: logf})
	if err != nil {
		return mapErr(err, img)
	}
	defer s.Close()
	if err := noManifest(s, img); err != nil {
		return err
	}
	v, err := s.RestoreVersion(c.Context, versionName(version), out)
	if err != nil {
		return mapErr(err, img)
	}
	fmt.Fprintf(stderr, "%s: wrote version %s of %s (%d bytes, digest %s verified) to %s\n", name, v.Name, img, v.Size, v.DeviceDigest, out)
	return nil
}
