package cliutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
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
	if code != ExitUsage || !strings.Contains(stderr.String(), "dosvob-test: flag provided but not defined") ||
		!strings.Contains(stderr.String(), "dosvob-test: hint: run 'dosvob-test --help'") {
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
