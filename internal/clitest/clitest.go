// Package clitest holds what the commands' script tests (testdata/*.txt,
// run with testscript) share: script commands that check what "! exec"
// cannot, such as the documented exit codes.
package clitest

import (
	"errors"
	"os/exec"
	"strconv"

	"github.com/rogpeppe/go-internal/testscript"
)

// Cmds returns the shared script commands, merged into more (which may be
// nil; its entries win).
func Cmds(more map[string]func(ts *testscript.TestScript, neg bool, args []string)) map[string]func(ts *testscript.TestScript, neg bool, args []string) {
	cmds := map[string]func(ts *testscript.TestScript, neg bool, args []string){
		"exits": Exits,
	}
	for k, v := range more {
		cmds[k] = v
	}
	return cmds
}

// Exits is the script command "exits CODE PROGRAM [ARGS...]": it runs
// PROGRAM like exec does (its stdout and stderr are then checked with
// stdout and stderr) and fails unless it exits with CODE.
func Exits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits CODE PROGRAM [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: bad exit code %q", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exits: %v", err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited %d, want %d", args[1], got, want)
	}
}
