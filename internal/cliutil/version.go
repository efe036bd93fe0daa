package cliutil

import (
	"fmt"
	"io"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// Version describes the running binary from what go build embeds in it
// (runtime/debug.ReadBuildInfo): the main module's version, the VCS
// revision it was built from and whether the tree had uncommitted changes,
// and the Go version. A build outside a git checkout, or with
// -buildvcs=false, has no revision: it says "revision unknown".
func Version() string {
	bi, _ := debug.ReadBuildInfo()
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	version, revision, modified, goVersion := "(devel)", "unknown", false, "go unknown"
	if bi != nil {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if modified {
		revision += " (modified)"
	}
	return fmt.Sprintf("%s, revision %s, %s", version, revision, goVersion)
}

// versionFlag is urfave/cli's --version, without its -v alias (which reads
// as "verbose"); it prints to stdout, also in the commands whose help goes
// to stderr, and exits 0.
func versionFlag(app *cli.App, stdout io.Writer) {
	if app.Version == "" {
		app.Version = Version()
	}
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version and the revision it was built from"}
	cli.VersionPrinter = func(c *cli.Context) {
		fmt.Fprintf(stdout, "%s version %s\n", c.App.Name, c.App.Version)
	}
}
