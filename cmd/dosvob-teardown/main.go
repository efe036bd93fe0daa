// Command dosvob-teardown deletes the temporary DigitalOcean resources of a
// dosvob run (droplets first, then, once detached, volume copies, snapshots
// and the run's SSH key) and the run's local key files. Given no run, it
// deletes every dosvob resource in the account, as after a crash that lost
// the run state.
//
// It never touches a resource that does not carry both of dosvob's marks:
// the name prefix "dosvob-ephemeral-" and the tag "dosvob-ephemeral" (an
// SSH key: the prefix followed by a run id).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/cloud"
	"github.com/dosvob/dosvob/internal/config"
)

func main() { cliutil.Run(app()) }

const examples = `
EXAMPLES:
   # the run that dosvob-provision printed:
   dosvob-teardown run.json

   # a run by its id, as a failed dosvob-provision's hint names it:
   dosvob-teardown --run 20260102-150405-a1b2c3

   # when no run is going (--all deletes the resources of runs still going too):
   # list what is left of every run, then delete it (until it exits 0):
   dosvob-teardown --all --dry-run
   dosvob-teardown --all
`

func app() *cli.App {
	return &cli.App{
		Name:      "dosvob-teardown",
		Usage:     "delete the temporary DigitalOcean resources of a dosvob run",
		UsageText: "dosvob-teardown [flags] RUN.json | -\n   dosvob-teardown [flags] --run RUN-ID\n   dosvob-teardown [flags] --all",
		Description: "Which run: the run JSON that dosvob-provision printed (a file, or \"-\" or a pipe on\n" +
			"stdin), or --run ID. With --all: every dosvob resource in the account, runs still going\n" +
			"included. Naming none of these is refused, and so is an empty run JSON (what a failed\n" +
			"dosvob-provision leaves). So is a --run ID that no run has had here: no run directory or record\n" +
			"of its teardown in the state directory, and nothing of it in the account (a mistyped id; the\n" +
			"hint names the runs with something left).\n" +
			"Exits 0 when nothing is left, 8 listing what is left otherwise, 2 for what it refuses, 130 when\n" +
			"interrupted (SIGINT or SIGTERM: the message names the command that finishes the job). Safe to\n" +
			"repeat: a run torn down before is known, and nothing of it is left.",
		CustomAppHelpTemplate: cli.AppHelpTemplate + examples,
		HideHelpCommand:       true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"DOSVOB_CONFIG"},
				Usage: "config file (default: $XDG_CONFIG_HOME/dosvob/conf.json or ~/.config/dosvob/conf.json)"},
			&cli.StringFlag{Name: "state-dir", EnvVars: []string{"DOSVOB_STATE_DIR"},
				Usage: "run state directory (default: the config's state_dir, else $XDG_STATE_HOME/dosvob or ~/.local/state/dosvob)"},
			&cli.StringFlag{Name: "api-url", EnvVars: []string{"DOSVOB_API_URL"}, Usage: "DigitalOcean API base URL (default: the config's api_url, else DigitalOcean's)"},
			&cli.StringFlag{Name: "run", Usage: "tear down the run with this id"},
			&cli.BoolFlag{Name: "all", Usage: "tear down every dosvob resource in the account"},
			&cli.BoolFlag{Name: "dry-run", Usage: "list what would be deleted; delete nothing"},
			&cli.DurationFlag{Name: "detach-wait", Usage: "how long to wait, in all, for the run's volumes to detach from its deleted droplets (detach actions included)", DefaultText: "5m"},
			&cli.DurationFlag{Name: "poll-interval", Hidden: true},
			&cli.DurationFlag{Name: "request-timeout", Hidden: true},
			&cli.DurationFlag{Name: "retry-backoff", Hidden: true},
		},
		Action: run,
	}
}

type logger struct {
	token *string
}

func (l logger) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if *l.token != "" {
		msg = cloud.Scrub(errors.New(msg), *l.token).Error()
	}
	fmt.Fprintf(os.Stderr, "dosvob-teardown: %s\n", msg)
}

// stdinIsData reports whether stdin is a pipe or a file rather than a
// terminal or nothing.
func stdinIsData() bool {
	st, err := os.Stdin.Stat()
	if err != nil {
		return false
	}
	m := st.Mode()
	return m&os.ModeNamedPipe != 0 || m.IsRegular()
}

func readRunJSON(r io.Reader, what string) (*cloud.Run, error) {
	data, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var run cloud.Run
	if err := json.Unmarshal(data, &run); err != nil {
		return nil, cliutil.Usagef("%s: not a run JSON document: %v", what, err)
	}
	if !cloud.ValidRunID(run.RunID) {
		return nil, cliutil.Usagef("%s: invalid run_id %q", what, run.RunID)
	}
	return &run, nil
}

func run(c *cli.Context) error {
	if c.NArg() > 1 {
		return cliutil.Usagef("unexpected argument %q", c.Args().Get(1))
	}
	if d := c.Duration("detach-wait"); c.IsSet("detach-wait") && d <= 0 {
		// 0 would be taken for the default of 5m.
		return cliutil.Usagef("--detach-wait %q: want a positive duration", d.String())
	}
	var token string
	lg := logger{token: &token}
	// The flags of the dosvob-teardown that a hint tells to run again.
	flags := cloud.TeardownFlagsOf(c)

	// Which run?
	var runID string
	var fromJSON *cloud.Run
	switch {
	case c.NArg() == 1:
		if c.IsSet("run") || c.Bool("all") {
			return cliutil.Usagef("give a run JSON, --run or --all, not several")
		}
		arg, what := c.Args().First(), "stdin"
		var r io.Reader = os.Stdin
		if arg != "-" {
			what = strconv.Quote(arg)
			f, err := os.Open(arg)
			if err != nil {
				return cliutil.Usagef("%s: %v", what, cliutil.PathCause(err))
			}
			defer f.Close()
			r = f
		}
		run, err := readRunJSON(r, what)
		if err != nil {
			return err
		}
		if run == nil {
			return cliutil.Usagef("%s: empty", what)
		}
		fromJSON = run
	case c.IsSet("run"):
		if c.Bool("all") {
			return cliutil.Usagef("give --run or --all, not both")
		}
		runID = c.String("run")
		if !cloud.ValidRunID(runID) {
			return cliutil.WithHint(cliutil.Usagef("--run: invalid run id %q (want e.g. \"20260102-150405-a1b2c3\")", runID),
				"list what the runs left with: "+cloud.TeardownCommand(flags)+" --all --dry-run")
		}
	case !c.Bool("all") && stdinIsData():
		run, err := readRunJSON(os.Stdin, "stdin")
		if err != nil {
			return err
		}
		if run == nil {
			// Most likely a failed dosvob-provision > run.json: taking it
			// for "everything" would delete the resources of runs still
			// going.
			return cliutil.Usagef("stdin: empty (give a run JSON, --run ID, or --all for every dosvob resource)")
		}
		fromJSON = run
	case !c.Bool("all"):
		// Nothing named: from cron, systemd or an empty $RUN_JSON this is
		// no request for "everything", which includes runs still going.
		return cliutil.Usagef("no run given (give a run JSON, - for stdin, --run ID, or --all for every dosvob resource)")
	}
	if fromJSON != nil {
		runID = fromJSON.RunID
	}

	path, explicit := c.String("config"), c.IsSet("config")
	if !explicit {
		path = config.DefaultPath()
	}
	cfg, err := config.Load(path, explicit)
	if err != nil {
		return cloud.ExitError(err, "")
	}
	if c.IsSet("api-url") {
		cfg.APIURL = c.String("api-url")
		if _, err := config.Parse([]byte(fmt.Sprintf(`{"api_url": %q}`, cfg.APIURL))); err != nil {
			return cliutil.Usagef("--api-url: invalid URL %q", cfg.APIURL)
		}
	}
	tok, err := cfg.Token(os.Getenv)
	if err != nil {
		return cloud.ExitError(err, "")
	}
	token = tok.Reveal()
	api, err := cloud.NewAPI(cloud.APIOptions{
		BaseURL: cfg.API(), Token: token, TokenSource: cfg.TokenSource(os.Getenv), Logf: lg.logf,
		RequestTimeout: c.Duration("request-timeout"), Backoff: c.Duration("retry-backoff"), Poll: c.Duration("poll-interval"),
	})
	if err != nil {
		return cloud.ExitError(err, token, flags...)
	}
	dir := cfg.State()
	if c.IsSet("state-dir") {
		dir = c.String("state-dir")
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	store, err := cloud.OpenStore(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}

	scope := cloud.Scope{RunID: runID}
	if runID != "" {
		st, err := store.Load(runID)
		switch {
		case err == nil:
			scope.State = st
		case errors.Is(err, os.ErrNotExist):
			if fromJSON != nil {
				// The JSON alone: enough to know a restore's kept volume.
				scope.State = &cloud.State{RunID: runID, Mode: fromJSON.Mode}
				for _, v := range fromJSON.Volumes {
					scope.State.Volumes = append(scope.State.Volumes, cloud.VolumeState{RunVolume: v})
				}
			}
		default:
			lg.logf("ignoring the run state: %v", err)
		}
	}

	// A run id that neither this state directory nor the account knows
	// is no run that is gone: most likely a mistyped one, whose real run
	// still costs money. (A run JSON is dosvob's own word that the run
	// existed.)
	if runID != "" && fromJSON == nil {
		if err := checkKnown(c, api, store, runID, token, flags); err != nil {
			return err
		}
	}

	if c.Bool("dry-run") {
		inv, err := api.Discover(c.Context, scope)
		if err != nil {
			return cloud.ExitError(err, token, flags...)
		}
		for _, r := range inv.All() {
			if r.Kept {
				fmt.Printf("would wait for the detach of (and keep) %s\n", r)
				continue
			}
			fmt.Printf("would delete %s\n", r)
		}
		local, err := localRuns(store, runID)
		if err != nil {
			return err
		}
		for _, id := range local {
			fmt.Printf("would delete the local state and keys of run %s (%s)\n", id, store.RunDir(id))
		}
		if len(inv.All()) == 0 && len(local) == 0 {
			fmt.Println("nothing to delete")
		}
		return nil
	}

	what, done, again := "every dosvob resource", "no dosvob resource is left", "--all"
	if runID != "" {
		what = "run " + runID
		done = "nothing of " + what + " is left"
		again = "--run " + runID
	}
	interrupted := func(err error) error {
		if c.Context.Err() == nil {
			return cloud.ExitError(err, token, flags...)
		}
		return cliutil.Exitf(cliutil.ExitInterrupted, "interrupted: droplets, volumes, snapshots or the SSH key of %s may be left, and cost money; finish with: %s %s", what, cloud.TeardownCommand(flags), again)
	}
	if err := store.LockWait(c.Context, cloud.DefaultLockWait, lg.logf); err != nil {
		return interrupted(err)
	}
	defer store.Unlock()
	lg.logf("tearing down %s", what)
	var found []string
	if runID != "" {
		found = []string{runID}
	}
	opts := cloud.TeardownOptions{Logf: lg.logf, DetachWait: c.Duration("detach-wait"),
		Found: func(inv *cloud.Inventory) {
			if runID == "" {
				found = inv.RunIDs()
			}
		}}
	if err := api.Teardown(c.Context, scope, opts); err != nil {
		return interrupted(err)
	}
	local, err := localRuns(store, runID)
	if err != nil {
		return err
	}
	for _, id := range local {
		if err := store.Remove(id); err != nil {
			return fmt.Errorf("removing the local state of run %s: %w", id, err)
		}
	}
	// The runs torn down that had no run directory (Remove records the
	// others): a second teardown of one of them still knows it.
	if err := store.MarkTornDown(slices.DeleteFunc(found, func(id string) bool { return slices.Contains(local, id) })...); err != nil {
		return fmt.Errorf("recording the teardown: %w", err)
	}
	lg.logf("done: %s", done)
	return nil
}

// checkKnown returns a usage error when runID is known neither to the
// state directory (no run directory, no record of its teardown) nor to the
// account (nothing of it there), with a hint that names the runs that have
// something left. Its errors carry their exit codes.
func checkKnown(c *cli.Context, api *cloud.API, store *cloud.Store, runID, token string, flags []string) error {
	known, err := store.Known(runID)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if known {
		return nil
	}
	inv, err := api.Discover(c.Context, cloud.Scope{})
	if err != nil {
		return cloud.ExitError(err, token, flags...)
	}
	left := inv.RunIDs()
	if slices.Contains(left, runID) {
		return nil
	}
	local, err := store.Runs()
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	for _, id := range local {
		if !slices.Contains(left, id) {
			left = append(left, id)
		}
	}
	slices.Sort(left)
	list := cloud.TeardownCommand(flags) + " --all --dry-run"
	hint := "no run has anything left in the account or the state directory (check with: " + list + ")"
	if len(left) > 0 {
		hint = "runs with something left: " + strings.Join(left, ", ") + "; see what with: " + list
	}
	return cliutil.WithHint(cliutil.Usagef("--run: unknown run %q: the state directory %q has no record of it, and the account holds nothing of it; nothing was deleted", runID, store.Dir), hint)
}

// localRuns lists the local run directories that a teardown of runID (""
// for all) removes.
func localRuns(store *cloud.Store, runID string) ([]string, error) {
	ids, err := store.Runs()
	if err != nil {
		return nil, err
	}
	if runID == "" {
		return ids, nil
	}
	for _, id := range ids {
		if id == runID {
			return []string{id}, nil
		}
	}
	return nil, nil
}
