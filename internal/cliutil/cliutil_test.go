package cliutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/dosvob/dosvob/internal/testenv"
)

func TestCodeOf(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, ExitOK},
		{"plain", base, ExitFailure},
		{"coded", Exit(ExitLocked, base), ExitLocked},
		{"wrapped coded", fmt.Errorf("outer: %w", Exit(ExitBadStream, base)), ExitBadStream},
		{"canceled", fmt.Errorf("read: %w", context.Canceled), ExitInterrupted},
		{"hinted keeps code", WithHint(Exit(ExitRefused, base), "use --force"), ExitRefused},
		{"hinted plain", WithHint(base, "x"), ExitFailure},
		{"usage", Usagef("bad %q", "x"), ExitUsage},
	}
	for _, tt := range tests {
		if got := CodeOf(tt.err); got != tt.want {
			t.Errorf("%s: CodeOf = %d, want %d", tt.name, got, tt.want)
		}
	}
	if Exit(ExitLocked, nil) != nil || WithHint(nil, "h") != nil {
		t.Error("nil errors must stay nil")
	}
}

func TestReport(t *testing.T) {
	var b bytes.Buffer
	Report(&b, "dosvob-patch", WithHint(Exitf(ExitRefused, "refusing to overwrite %q", "a.img"), "pass --force"))
	want := "dosvob-patch: refusing to overwrite \"a.img\"\ndosvob-patch: hint: pass --force\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
}

// Detail lines come between the message and the hint, each a line of its
// own with the command's name, whichever is attached first, and a wrapped
// error keeps them.
func TestReportDetails(t *testing.T) {
	err := WithDetails(WithHint(Exitf(ExitIncomplete, "2 left"), "run it again"), []string{"left: a: why", "left: b:\nwhy"})
	err = fmt.Errorf("tearing down: %w", err)
	var b bytes.Buffer
	Report(&b, "dosvob-x", err)
	want := "dosvob-x: tearing down: 2 left\ndosvob-x: left: a: why\ndosvob-x: left: b: why\ndosvob-x: hint: run it again\n"
	if b.String() != want || CodeOf(err) != ExitIncomplete {
		t.Fatalf("got %q (exit %d), want %q (exit 8)", b.String(), CodeOf(err), want)
	}
}

// A hint given to a wrapped error keeps the wrapping text, and the exit
// code within.
func TestWithHintWrapped(t *testing.T) {
	err := WithHint(fmt.Errorf("state directory: %w", Usagef("bad %q", "x")), "fix it")
	var b bytes.Buffer
	Report(&b, "dosvob-x", err)
	if want := "dosvob-x: state directory: bad \"x\"\ndosvob-x: hint: fix it\n"; b.String() != want || CodeOf(err) != ExitUsage {
		t.Fatalf("got %q (exit %d), want %q (exit 2)", b.String(), CodeOf(err), want)
	}
}

// A message of several lines (yaml.v3 writes them) is still one line.
func TestReportOneLine(t *testing.T) {
	var b bytes.Buffer
	Report(&b, "dosvob-emulator", Exit(ExitUsage, fmt.Errorf("account file %q: %w", "a.yaml", errors.New("yaml: unmarshal errors:\n  line 3: field regoin not found"))))
	want := "dosvob-emulator: account file \"a.yaml\": yaml: unmarshal errors: line 3: field regoin not found\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
}

func app(action cli.ActionFunc) *cli.App {
	return &cli.App{
		Name:   "dosvob-test",
		Writer: io.Discard,
		Flags:  []cli.Flag{&cli.IntFlag{Name: "n"}},
		Action: action,
	}
}

func TestRunArgs(t *testing.T) {
	var stderr bytes.Buffer
	code := RunArgs(app(func(*cli.Context) error { return nil }), []string{"x"}, &stderr)
	if code != 0 || stderr.Len() != 0 {
		t.Fatalf("success: code %d, stderr %q", code, stderr.String())
	}

	stderr.Reset()
	code = RunArgs(app(func(*cli.Context) error { return Exitf(ExitLocked, "image %q is locked", "b.img") }), []string{"x"}, &stderr)
	if code != ExitLocked || stderr.String() != "dosvob-test: image \"b.img\" is locked\n" {
		t.Fatalf("locked: code %d, stderr %q", code, stderr.String())
	}

	stderr.Reset()
	var stdout bytes.Buffer
	a := app(func(*cli.Context) error { return nil })
	a.Writer = &stdout
	code = RunArgs(a, []string{"x", "--bogus"}, &stderr)
	if code != ExitUsage || stderr.String() != "dosvob-test: unknown flag \"--bogus\"\ndosvob-test: hint: run 'dosvob-test --help' for usage\n" {
		t.Fatalf("bad flag: code %d, stderr %q", code, stderr.String())
	}
	if stdout.Len() != 0 {
		t.Fatalf("a usage error wrote to stdout, which carries data: %q", stdout.String())
	}

	stderr.Reset()
	code = RunArgs(app(func(*cli.Context) error { return nil }), []string{"x", "--n", "many"}, &stderr)
	if code != ExitUsage {
		t.Fatalf("bad value: code %d, stderr %q", code, stderr.String())
	}
}

// urfave/cli's own usage errors come out in dosvob's style: one lowercase
// line naming the flag, the bad value quoted, a hint to --help, exit 2,
// nothing on stdout (no help dump anywhere).
func TestUsageErrorsInHouseStyle(t *testing.T) {
	newApp := func() *cli.App {
		return &cli.App{
			Name: "dosvob-test",
			Flags: []cli.Flag{
				&cli.IntFlag{Name: "n"},
				&cli.Float64Flag{Name: "hours"},
				&cli.DurationFlag{Name: "wait", EnvVars: []string{"DOSVOB_TEST_WAIT"}},
				&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}},
				&cli.StringFlag{Name: "name"},
			},
			Action: func(*cli.Context) error { return nil },
			Commands: []*cli.Command{{
				Name:  "sub",
				Flags: []cli.Flag{&cli.StringFlag{Name: "version"}, &cli.StringFlag{Name: "output", Aliases: []string{"o"}}},
				Action: func(c *cli.Context) error {
					return Need(c, "version", "output")
				},
			}, {
				Name:   "req",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "a", Required: true}, &cli.StringFlag{Name: "bee", Required: true}},
				Action: func(*cli.Context) error { return nil },
			}},
		}
	}
	const hint = "dosvob-test: hint: run 'dosvob-test --help' for usage\n"
	const subHint = "dosvob-test: hint: run 'dosvob-test sub --help' for usage\n"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "dosvob-test: unknown flag \"--bogus\"\n" + hint},
		{[]string{"-x"}, "dosvob-test: unknown flag \"-x\"\n" + hint},
		{[]string{"--bogus=1"}, "dosvob-test: unknown flag \"--bogus\"\n" + hint},
		{[]string{"--n"}, "dosvob-test: --n needs a value\n" + hint},
		{[]string{"--name"}, "dosvob-test: --name needs a value\n" + hint},
		{[]string{"--n", "many"}, "dosvob-test: --n \"many\" is not an integer\n" + hint},
		{[]string{"--hours=soon"}, "dosvob-test: --hours \"soon\" is not a number\n" + hint},
		{[]string{"--wait", "5 min"}, "dosvob-test: --wait \"5 min\" is not a duration (like 90s or 5m)\n" + hint},
		{[]string{"--quiet=maybe"}, "dosvob-test: --quiet \"maybe\" is not true or false\n" + hint},
		{[]string{"sub", "--bogus"}, "dosvob-test: unknown flag \"--bogus\"\n" + subHint},
		{[]string{"sub", "--output"}, "dosvob-test: --output needs a value\n" + subHint},
		{[]string{"sub", "x"}, "dosvob-test: sub needs --version and --output\n" + subHint},
		{[]string{"sub", "-o", "f", "x"}, "dosvob-test: sub needs --version\n" + subHint},
		{[]string{"req", "--a", "1"}, "dosvob-test: missing --bee\n" + hint},
		{[]string{"req"}, "dosvob-test: missing -a and --bee\n" + hint},
	} {
		var stdout, stderr bytes.Buffer
		a := newApp()
		a.Writer = &stdout
		code := RunArgs(a, append([]string{"dosvob-test"}, tc.args...), &stderr)
		if code != ExitUsage || stderr.String() != tc.want {
			t.Errorf("%q: exit %d, stderr\n%s\nwant exit 2 and\n%s", tc.args, code, stderr.String(), tc.want)
		}
		if tc.args[0] != "req" && stdout.Len() != 0 { // urfave/cli shows the help on a Required flag: use Need
			t.Errorf("%q: wrote to stdout: %q", tc.args, stdout.String())
		}
	}

	t.Setenv("DOSVOB_TEST_WAIT", "later")
	var stderr bytes.Buffer
	code := RunArgs(newApp(), []string{"dosvob-test"}, &stderr)
	want := "dosvob-test: --wait \"later\" (from DOSVOB_TEST_WAIT) is not a duration (like 90s or 5m)\n" + hint
	if code != ExitUsage || stderr.String() != want {
		t.Errorf("bad environment value: exit %d, stderr\n%s\nwant\n%s", code, stderr.String(), want)
	}
}

// A usage error of the command's own gets the --help hint too, unless it
// has a hint of its own.
func TestUsageErrorsGetAHint(t *testing.T) {
	var stderr bytes.Buffer
	code := RunArgs(app(func(*cli.Context) error { return Usagef("unexpected argument %q", "x") }), []string{"x"}, &stderr)
	if want := "dosvob-test: unexpected argument \"x\"\ndosvob-test: hint: run 'dosvob-test --help' for usage\n"; code != ExitUsage || stderr.String() != want {
		t.Errorf("exit %d, stderr %q, want %q", code, stderr.String(), want)
	}
	stderr.Reset()
	RunArgs(app(func(*cli.Context) error { return WithHint(Usagef("no token"), "set it") }), []string{"x"}, &stderr)
	if want := "dosvob-test: no token\ndosvob-test: hint: set it\n"; stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}

func TestVersionOf(t *testing.T) {
	for _, tc := range []struct {
		bi   *debug.BuildInfo
		want string
	}{
		{nil, "(devel), revision unknown, go unknown"},
		{&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/dosvob/dosvob", Version: "(devel)"}},
			"(devel), revision unknown, go1.26.8"},
		{&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"}, Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "a35d544e"}, {Key: "vcs.modified", Value: "false"}}},
			"v1.2.0, revision a35d544e, go1.26.8"},
		{&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261122143934-a35d544e0000+dirty"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "a35d544e"}, {Key: "vcs.modified", Value: "true"}}},
			"v0.0.0-20261122143934-a35d544e0000+dirty, revision a35d544e (modified), go1.26.8"},
	} {
		if got := versionOf(tc.bi); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

// --version prints one line on stdout, even for a command whose help and
// messages go to stderr, and exits 0; it has no -v.
func TestVersionFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	a := app(func(*cli.Context) error { t.Error("the action ran"); return nil })
	a.Writer = &stderr
	if code := runArgs(a, []string{"dosvob-test", "--version"}, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if want := "dosvob-test version " + Version() + "\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	stdout.Reset()
	if code := runArgs(app(func(*cli.Context) error { return nil }), []string{"dosvob-test", "-v"}, &stdout, &stderr); code != ExitUsage {
		t.Errorf("-v: exit %d, want 2", code)
	}
}

// Each app's --version goes to its own stdout, also when another app was
// set up since (urfave/cli's version printer is one for the process).
func TestVersionFlagOwnStdout(t *testing.T) {
	var out1, out2, stderr bytes.Buffer
	a1 := app(func(*cli.Context) error { return nil })
	a1.Name = "dosvob-one"
	a2 := app(func(*cli.Context) error { return nil })
	a2.Name = "dosvob-two"
	a1.ErrWriter, a2.ErrWriter = &stderr, &stderr
	versionFlag(a1, &out1)
	versionFlag(a2, &out2)
	if err := a1.Run([]string{"dosvob-one", "--version"}); err != nil {
		t.Fatal(err)
	}
	if want := "dosvob-one version " + Version() + "\n"; out1.String() != want || out2.Len() != 0 {
		t.Errorf("app one's stdout %q, app two's %q; want %q and nothing", out1.String(), out2.String(), want)
	}
}

// What go build embeds is what --version prints: a real binary, built from
// this checkout with VCS stamping on, names the commit git has checked out.
func TestVersionOfABuiltBinary(t *testing.T) {
	testenv.RequireCommand(t, "git")
	root := testenv.RepoRoot(t)
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		testenv.SkipOrFail(t, "not a git checkout: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "dosvob-teardown")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "./cmd/dosvob-teardown")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("dosvob-teardown --version: %v", err)
	}
	want := "dosvob-teardown version "
	rev := "revision " + strings.TrimSpace(string(head))
	if !strings.HasPrefix(string(out), want) || !strings.Contains(string(out), rev) || strings.Count(string(out), "\n") != 1 {
		t.Errorf("dosvob-teardown --version printed %q, want a line %q...%q", out, want, rev)
	}
}
