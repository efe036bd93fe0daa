// Package cliutil is the one place where dosvob's commands turn errors into
// messages and exit codes.
//
// Every dosvob binary is a thin main around a urfave/cli App. Run gives it a
// context that SIGINT and SIGTERM cancel (so cleanup code runs), prints a
// failing command's error as one lowercase line on stderr prefixed with the
// command name, an optional "hint:" line beneath it, and exits with the code
// that the error carries. urfave/cli's own messages for bad flags are
// rewritten in that style too, and every usage error (exit 2) without a
// hint of its own gets one pointing to --help. The codes are documented in docs/EXIT-CODES.md and
// scripts depend on them: never renumber one.
package cliutil

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// Exit codes shared by every dosvob command. See docs/EXIT-CODES.md.
const (
	ExitOK          = 0   // success
	ExitFailure     = 1   // any other failure: I/O error, unexpected state
	ExitUsage       = 2   // bad flags, arguments or configuration
	ExitBadStream   = 3   // a stream is corrupt, truncated, of an unknown version or for another base
	ExitRefused     = 4   // refusing to overwrite something dosvob does not own (see --force)
	ExitCorrupt     = 5   // verification found the image damaged (scrub)
	ExitLocked      = 6   // another dosvob process holds the lock
	ExitAPI         = 7   // the DigitalOcean API failed or refused a request
	ExitIncomplete  = 8   // teardown finished but resources are still left
	ExitInterrupted = 130 // SIGINT or SIGTERM
)

// Error is an error that carries an exit code, optional detail lines (one
// for each item of a list that the message counts, say) and an optional
// hint telling the user what to do next.
type Error struct {
	Code    int
	Err     error
	Details []string
	Hint    string
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ExitCode reports the code the process should exit with.
func (e *Error) ExitCode() int { return e.Code }

// Exit wraps err with an exit code. A nil err stays nil.
func Exit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Code: code, Err: err}
}

// Exitf formats an error with an exit code.
func Exitf(code int, format string, args ...any) error {
	return &Error{Code: code, Err: fmt.Errorf(format, args...)}
}

// WithHint attaches a hint line to err, keeping its exit code (and its
// text: an *Error wrapped in another error is not unwrapped).
func WithHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		c := *e
		c.Hint = hint
		return &c
	}
	return &Error{Code: CodeOf(err), Err: err, Hint: hint}
}

// WithDetails attaches detail lines to err, keeping its exit code and
// hint: Report prints each on a line of its own after the message.
func WithDetails(err error, lines []string) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		c := *e
		c.Details = lines
		return &c
	}
	return &Error{Code: CodeOf(err), Err: err, Details: lines}
}

// Usagef is Exitf(ExitUsage, ...): for bad flags, arguments and config.
func Usagef(format string, args ...any) error {
	return Exitf(ExitUsage, format, args...)
}

// CodeOf returns the exit code for err: its own if it carries one (any error
// in its chain with an ExitCode() int method), ExitInterrupted for a
// cancelled context, ExitFailure otherwise, ExitOK for nil.
func CodeOf(err error) int {
	if err == nil {
		return ExitOK
	}
	var c interface{ ExitCode() int }
	if errors.As(err, &c) {
		return c.ExitCode()
	}
	if errors.Is(err, context.Canceled) {
		return ExitInterrupted
	}
	return ExitFailure
}

// HintOf returns the first hint in err's chain, or "".
func HintOf(err error) string {
	var e *Error
	for errors.As(err, &e) {
		if e.Hint != "" {
			return e.Hint
		}
		err = e.Err
	}
	return ""
}

// DetailsOf returns the first detail lines in err's chain, or nil.
func DetailsOf(err error) []string {
	var e *Error
	for errors.As(err, &e) {
		if len(e.Details) > 0 {
			return e.Details
		}
		err = e.Err
	}
	return nil
}

// Report writes err to w in dosvob's style: "name: message" on one line
// (a message of several lines, as some libraries write them, is joined),
// "name: detail" for each of its detail lines, and, when the error has
// one, "name: hint: ..." last.
func Report(w io.Writer, name string, err error) {
	if err == nil {
		return
	}
	fmt.Fprintf(w, "%s: %s\n", name, oneLine(err.Error()))
	for _, d := range DetailsOf(err) {
		fmt.Fprintf(w, "%s: %s\n", name, oneLine(d))
	}
	if h := HintOf(err); h != "" {
		fmt.Fprintf(w, "%s: hint: %s\n", name, oneLine(h))
	}
}

// oneLine joins the lines of s with single spaces.
func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, " ")
}

// Run runs app with os.Args and exits the process. SIGINT and SIGTERM cancel
// the context passed to the app's actions; a second signal kills at once.
func Run(app *cli.App) {
	os.Exit(RunArgs(app, os.Args, os.Stderr))
}

// RunArgs is Run without the exit, for tests: it returns the exit code.
func RunArgs(app *cli.App, args []string, stderr io.Writer) int {
	return runArgs(app, args, os.Stdout, stderr)
}

func runArgs(app *cli.App, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal now takes the default action and kills the process
	}()

	app.ErrWriter = stderr
	app.ExitErrHandler = func(*cli.Context, error) {} // we report and exit ourselves
	// urfave/cli would print its own message and the whole help (on
	// stdout, which carries data): usage errors are reported as ours.
	houseStyle(app, args)
	versionFlag(app, stdout)
	err := app.RunContext(ctx, args)
	if err == nil {
		return ExitOK
	}
	// urfave/cli reports a missing required flag as a plain error.
	var ce interface{ ExitCode() int }
	if !errors.As(err, &ce) && !errors.Is(err, context.Canceled) && isUsageError(err) {
		err = usageError(app.Name, app.Flags, args, err)
	}
	if ctx.Err() != nil && CodeOf(err) == ExitFailure {
		err = Exit(ExitInterrupted, fmt.Errorf("interrupted: %w", err))
	}
	if CodeOf(err) == ExitUsage && HintOf(err) == "" {
		err = WithHint(err, helpHint(app.Name))
	}
	Report(stderr, app.Name, err)
	return CodeOf(err)
}

// PathCause returns the cause of the *fs.PathError in err's chain ("no
// such file or directory" of "open x.img: no such file or directory"), or
// err when there is none: for a message that names the path itself,
// quoted, as every dosvob message does.
func PathCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// FromArgs is the value of the string flag name when it was given on the
// command line, "" when not given or given only through its environment
// variable env (which a next command in the same environment sees too).
func FromArgs(c *cli.Context, name, env string) string {
	if v := c.String(name); c.IsSet(name) && v != os.Getenv(env) {
		return v
	}
	return ""
}
