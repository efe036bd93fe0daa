package cloud

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/config"
)

// ExitError gives err the exit code and hint that dosvob-provision and
// dosvob-teardown report (docs/EXIT-CODES.md), and scrubs token from its
// text. It is the one place where cloud errors meet exit codes.
func ExitError(err error, token string) error {
	if err == nil {
		return nil
	}
	err = Scrub(err, token)
	var (
		fe    *config.FieldError
		in    *InputError
		stale *StaleError
		inc   *IncompleteError
		api   *APIError
		run   *RunError
	)
	hint := ""
	if errors.As(err, &run) && !run.TornDown {
		hint = fmt.Sprintf("delete what the run left with: dosvob-teardown --run %s", run.RunID)
		if run.Teardown != nil {
			err = fmt.Errorf("%w; tearing it down failed too: %v", err, Scrub(run.Teardown, token))
		}
	}
	code := cliutil.ExitFailure
	switch {
	case errors.Is(err, context.Canceled):
		code = cliutil.ExitInterrupted
	case errors.As(err, &fe), errors.As(err, &in), errors.Is(err, config.ErrNoToken):
		code = cliutil.ExitUsage
	case errors.Is(err, ErrNothingSelected):
		code = cliutil.ExitUsage
		hint = "check region, regions, include, exclude, include_tags and exclude_tags in the config"
	case errors.Is(err, ErrLocked):
		code = cliutil.ExitLocked
		hint = "wait for the other dosvob process to finish, or find it with ps"
	case errors.As(err, &stale):
		code = cliutil.ExitLocked
		hint = fmt.Sprintf("delete what they left with dosvob-teardown --run ID (%s), or start with --cleanup-stale", strings.Join(stale.Runs(), ", "))
	case errors.Is(err, ErrRefused):
		code = cliutil.ExitRefused
	case errors.As(err, &inc):
		code = cliutil.ExitIncomplete
		if hint == "" {
			hint = "run dosvob-teardown --run ID for the run the message names until it exits 0; what is left costs money"
		}
	case errors.Is(err, ErrSnapshotRateLimited):
		code = cliutil.ExitAPI
		if hint == "" {
			hint = "wait 10 minutes after the last snapshot of that volume, then run again"
		}
	case errors.As(err, &api):
		code = cliutil.ExitAPI
	}
	out := cliutil.Exit(code, err)
	if hint != "" {
		out = cliutil.WithHint(out, hint)
	}
	return out
}
