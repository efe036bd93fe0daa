package cliutil

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"

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

// stdoutKey is the key of app.Metadata under which versionFlag leaves the
// writer the version goes to.
const stdoutKey = "dosvob/cliutil.stdout"

// setVersionFlag sets urfave/cli's --version flag and printer, which are
// package variables of cli, once for the process.
var setVersionFlag sync.Once

// versionFlag is urfave/cli's --version, without its -v alias (which reads
// as "verbose"); it prints to stdout, also in the commands whose help goes
// to stderr, and exits 0. The writer is the app's own (in its Metadata), as
// urfave/cli's flag and printer are shared by every app of the process.
func versionFlag(app *cli.App, stdout io.Writer) {
	if app.Version == "" {
		app.Version = Version()
	}
	if app.Metadata == nil {
		app.Metadata = map[string]any{}
	}
	app.Metadata[stdoutKey] = stdout
	setVersionFlag.Do(func() {
		cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version and the revision it was built from"}
		cli.VersionPrinter = func(c *cli.Context) {
			w, ok := c.App.Metadata[stdoutKey].(io.Writer)
			if !ok {
				w = os.Stdout
			}
			fmt.Fprintf(w, "%s version %s\n", c.App.Name, c.App.Version)
		}
	})
}
