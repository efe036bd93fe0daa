package cloud

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/config"
)

// ExitError gives err the exit code and hint that dosvob-provision and
// dosvob-teardown report (docs/EXIT-CODES.md), and scrubs token from its
// text. It is the one place where cloud errors meet exit codes.
//
// teardown are the flags that a dosvob-teardown command in a hint needs to
// find what the failed command used (TeardownFlags).
func ExitError(err error, token string, teardown ...string) error {
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
	var details []string
	if errors.As(err, &run) && !run.TornDown {
		hint = fmt.Sprintf("delete what the run left with: %s --run %s", TeardownCommand(teardown), run.RunID)
		if run.Teardown != nil {
			err = fmt.Errorf("%w; tearing it down failed too: %v", err, Scrub(run.Teardown, token))
			if errors.As(run.Teardown, &inc) {
				details = inc.Lines()
			}
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
		hint = fmt.Sprintf("delete what they left with %s --run ID (%s), or start with --cleanup-stale", TeardownCommand(teardown), strings.Join(stale.Runs(), ", "))
	case errors.Is(err, ErrRefused):
		code = cliutil.ExitRefused
	case errors.As(err, &inc):
		code = cliutil.ExitIncomplete
		details = inc.Lines()
		if hint == "" {
			again := "--all"
			if inc.RunID != "" {
				again = "--run " + inc.RunID
			}
			hint = fmt.Sprintf("run %s %s until it exits 0; what is left costs money", TeardownCommand(teardown), again)
		}
	case errors.Is(err, ErrSnapshotRateLimited):
		code = cliutil.ExitAPI
		if hint == "" {
			hint = "wait 10 minutes after the last snapshot of that volume, then run again"
		}
	case errors.As(err, &api):
		code = cliutil.ExitAPI
		if api.Status == 401 && hint == "" {
			hint = "check that token; DIGITALOCEAN_ACCESS_TOKEN or DIGITALOCEAN_TOKEN, when set, comes before the config's token_file and do_token"
		}
	}
	out := cliutil.Exit(code, err)
	if len(details) > 0 {
		for i, d := range details {
			details[i] = Scrub(errors.New(d), token).Error()
		}
		out = cliutil.WithDetails(out, details)
	}
	if hint != "" {
		out = cliutil.WithHint(out, hint)
	}
	return out
}

// TeardownFlags are the flags of a dosvob-teardown command that finds what
// a dosvob-provision or dosvob-teardown given these found: --config,
// --state-dir and --api-url, each only when given (empty: not given).
func TeardownFlags(config, stateDir, apiURL string) []string {
	var flags []string
	for _, f := range [][2]string{{"--config", config}, {"--state-dir", stateDir}, {"--api-url", apiURL}} {
		if f[1] != "" {
			flags = append(flags, f[0], f[1])
		}
	}
	return flags
}

// TeardownFlagsOf is TeardownFlags for the command c of dosvob-provision
// or dosvob-teardown: the --config, --state-dir and --api-url given on its
// command line (not those from their environment variables, which a next
// command in the same environment sees too).
func TeardownFlagsOf(c *cli.Context) []string {
	return TeardownFlags(cliutil.FromArgs(c, "config", "DOSVOB_CONFIG"), cliutil.FromArgs(c, "state-dir", "DOSVOB_STATE_DIR"), cliutil.FromArgs(c, "api-url", "DOSVOB_API_URL"))
}

// TeardownCommand is "dosvob-teardown" with flags, each quoted for a shell
// where it needs it.
func TeardownCommand(flags []string) string {
	words := []string{"dosvob-teardown"}
	for _, f := range flags {
		if f == "" || strings.ContainsFunc(f, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-:=@+,", r))
		}) {
			f = "'" + strings.ReplaceAll(f, "'", `'\''`) + "'"
		}
		words = append(words, f)
	}
	return strings.Join(words, " ")
}
