// Command dosvob-provision makes the cloud side of one dosvob run: for every
// selected DigitalOcean volume a snapshot, a temporary volume made from it,
// and per region a droplet with the copies attached, SSH answering with a
// pinned host key and dosvob-hash uploaded. It prints the run as one JSON
// document on stdout (docs/RUN-JSON.md); dosvob-teardown removes it all.
//
// With --restore it makes a new, kept volume and a droplet to fill it.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/cloud"
	"github.com/dosvob/dosvob/internal/config"
)

func main() { cliutil.Run(app()) }

const examples = `
EXAMPLES:
   # what a run would create, and what it costs; creates nothing:
   dosvob-provision --dry-run

   # a backup run's cloud side, as scripts/backup-all.sh starts it, and its end:
   dosvob-provision --cleanup-stale > run.json
   dosvob-teardown run.json

   # a new, kept volume to restore into, as scripts/restore.sh starts it:
   dosvob-provision --restore --volume-name restored-data --region fra1 --size-gib 100 > run.json

   # against the emulator (see dosvob-emulator --help), with its token:
   DIGITALOCEAN_ACCESS_TOKEN="$(cat emulator.token)" dosvob-provision --api-url "$(cat emulator.url)" --dry-run
`

func app() *cli.App {
	return &cli.App{
		Name:      "dosvob-provision",
		Usage:     "snapshot DigitalOcean volumes and attach copies to temporary droplets",
		UsageText: "dosvob-provision [--config FILE] [--dry-run] [--cleanup-stale] > run.json\n   dosvob-provision --restore --volume-name NAME --region REGION --size-gib N > run.json",
		Description: "Prints the run as JSON on stdout (see docs/RUN-JSON.md) and progress on stderr.\n" +
			"The API token comes from DIGITALOCEAN_ACCESS_TOKEN, DIGITALOCEAN_TOKEN, or the config's\n" +
			"token_file or do_token (see docs/CONFIG.md). Delete the run's resources with dosvob-teardown.",
		CustomAppHelpTemplate: cli.AppHelpTemplate + examples,
		HideHelpCommand:       true,
		Flags:                 flags(),
		Action:                run,
	}
}

func flags() []cli.Flag {
	return append(commonFlags(),
		&cli.BoolFlag{Name: "dry-run", Usage: "print the plan and its estimated cost; create nothing"},
		&cli.Float64Flag{Name: "estimate-hours", Value: 1, Usage: "run length assumed by the --dry-run cost estimate"},
		&cli.BoolFlag{Name: "cleanup-stale", Usage: "tear down what stale runs (certainly not alive: see --stale-after) left first, instead of refusing to start; live runs are left alone"},
		&cli.DurationFlag{Name: "stale-after", Value: cloud.DefaultStaleAfter,
			Usage: "age from which a run whose liveness cannot be checked here (another machine's, or no owner to ask) counts as stale"},
		&cli.IntFlag{Name: "owner-lock-fd", Usage: "open file descriptor of a lock file that the caller holds (flock) for the whole run: the run counts as alive while it is locked", DefaultText: "none"},
		&cli.StringFlag{Name: "run-id-file", Usage: "write the run id to `FILE` as soon as the run exists, before it creates anything"},
		&cli.BoolFlag{Name: "keep-on-failure", Usage: "leave a failed run's resources for inspection (delete them later with dosvob-teardown; another run's --cleanup-stale leaves them until they are older than --stale-after)"},
		&cli.StringFlag{Name: "hash-binary", Usage: "static linux/amd64 dosvob-hash to upload (default: beside this program)"},
		&cli.StringFlag{Name: "patch-binary", Usage: "static linux/amd64 dosvob-patch to upload (default: beside this program; always uploaded for --restore)"},
		&cli.BoolFlag{Name: "restore", Usage: "make a new, kept volume and a droplet to fill it, instead of a backup run"},
		&cli.StringFlag{Name: "volume-name", Usage: "--restore: name of the new volume (must not exist in the region)"},
		&cli.StringFlag{Name: "region", Usage: "--restore: region of the new volume"},
		&cli.Int64Flag{Name: "size-gib", Usage: "--restore: size of the new volume in GiB", DefaultText: "none"},
		&cli.IntFlag{Name: "ssh-port", Usage: "SSH port of the droplets", DefaultText: "the config's ssh_port, else 22"},
		&cli.DurationFlag{Name: "ssh-wait", Usage: "how long to wait for a droplet's SSH to answer", DefaultText: "the config's ssh_wait, else 5m"},
	)
}

// commonFlags are shared with dosvob-teardown (which has its own copy).
func commonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"DOSVOB_CONFIG"},
			Usage: "config file (default: " + defaultConfigText() + ")"},
		&cli.StringFlag{Name: "state-dir", EnvVars: []string{"DOSVOB_STATE_DIR"},
			Usage: "run state directory (default: the config's state_dir, else $XDG_STATE_HOME/dosvob or ~/.local/state/dosvob)"},
		&cli.StringFlag{Name: "api-url", EnvVars: []string{"DOSVOB_API_URL"}, Usage: "DigitalOcean API base URL (default: the config's api_url, else DigitalOcean's)"},
		// Tuning for tests against the emulator.
		&cli.DurationFlag{Name: "poll-interval", Hidden: true},
		&cli.DurationFlag{Name: "request-timeout", Hidden: true},
		&cli.DurationFlag{Name: "retry-backoff", Hidden: true},
		&cli.DurationFlag{Name: "action-wait", Hidden: true},
	}
}

func defaultConfigText() string {
	return "$XDG_CONFIG_HOME/dosvob/conf.json or ~/.config/dosvob/conf.json"
}

// setup loads the config and the token and makes the API client and the
// store. Errors are already mapped to exit codes.
func setup(c *cli.Context, logf func(string, ...any)) (*config.Config, string, *cloud.API, *cloud.Store, error) {
	path, explicit := c.String("config"), c.IsSet("config")
	if !explicit {
		path = config.DefaultPath()
	}
	cfg, err := config.Load(path, explicit)
	if err != nil {
		return nil, "", nil, nil, cloud.ExitError(err, "")
	}
	if c.IsSet("api-url") {
		cfg.APIURL = c.String("api-url")
		if _, err := config.Parse([]byte(fmt.Sprintf(`{"api_url": %q}`, cfg.APIURL))); err != nil {
			return nil, "", nil, nil, cliutil.Usagef("--api-url: invalid URL %q", cfg.APIURL)
		}
	}
	tok, err := cfg.Token(os.Getenv)
	if err != nil {
		return nil, "", nil, nil, cloud.ExitError(err, "")
	}
	token := tok.Reveal()
	api, err := cloud.NewAPI(cloud.APIOptions{
		BaseURL:        cfg.API(),
		Token:          token,
		TokenSource:    cfg.TokenSource(os.Getenv),
		RequestTimeout: c.Duration("request-timeout"),
		Backoff:        c.Duration("retry-backoff"),
		Poll:           c.Duration("poll-interval"),
		Logf:           logf,
	})
	if err != nil {
		return nil, "", nil, nil, cloud.ExitError(err, token, cloud.TeardownFlagsOf(c)...)
	}
	dir := cfg.State()
	if c.IsSet("state-dir") {
		dir = c.String("state-dir")
	}
	if dir == "" {
		return nil, "", nil, nil, cliutil.Usagef("no state directory: set --state-dir or state_dir")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, "", nil, nil, err
	}
	store, err := cloud.OpenStore(abs)
	if err != nil {
		return nil, "", nil, nil, fmt.Errorf("state directory: %w", err)
	}
	return cfg, token, api, store, nil
}

// logger writes progress lines to stderr, prefixed and scrubbed of the
// token (which is set once known).
type logger struct {
	name  string
	token *string
}

func (l logger) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if *l.token != "" {
		msg = cloud.Scrub(fmt.Errorf("%s", msg), *l.token).Error()
	}
	fmt.Fprintf(os.Stderr, "%s: %s\n", l.name, msg)
}

func run(c *cli.Context) error {
	if c.NArg() > 0 {
		return cliutil.Usagef("unexpected argument %q", c.Args().First())
	}
	closeInheritedOnExec()
	restore := c.Bool("restore")
	if !restore {
		for _, f := range []string{"volume-name", "region", "size-gib"} {
			if c.IsSet(f) {
				return cliutil.Usagef("--%s is only for --restore", f)
			}
		}
	}
	var token string
	lg := logger{name: "dosvob-provision", token: &token}
	cfg, token, api, store, err := setup(c, lg.logf)
	if err != nil {
		return err
	}

	p := &cloud.Provisioner{
		API:   api,
		Store: store,
		Logf:  lg.logf,
		Filter: cloud.Filter{
			Regions: cfg.RegionList(), Include: cfg.Include, Exclude: cfg.Exclude,
			IncludeTags: cfg.IncludeTags, ExcludeTags: cfg.ExcludeTags,
		},
		DropletSize:   cfg.DropletSize,
		Image:         cfg.Image(),
		SSHPort:       cfg.Port(),
		SSHWait:       cfg.SSHTimeout(),
		ActionWait:    cfg.ActionTimeout(),
		Hooks:         cloud.Hooks{PreSnapshot: cfg.Hooks.PreSnapshot, PostSnapshot: cfg.Hooks.PostSnapshot, Timeout: cfg.HookTimeout()},
		HookStderr:    os.Stderr,
		CleanupStale:  c.Bool("cleanup-stale"),
		KeepOnFailure: c.Bool("keep-on-failure"),
	}
	if c.IsSet("ssh-port") {
		if port := c.Int("ssh-port"); port < 1 || port > 65535 {
			return cliutil.Usagef("--ssh-port: invalid port %d", port)
		}
		p.SSHPort = c.Int("ssh-port")
	}
	if c.IsSet("ssh-wait") {
		if c.Duration("ssh-wait") <= 0 {
			return cliutil.Usagef("--ssh-wait: must be positive")
		}
		p.SSHWait = c.Duration("ssh-wait")
	}
	if c.IsSet("action-wait") {
		p.ActionWait = c.Duration("action-wait")
	}
	if p.StaleAfter = c.Duration("stale-after"); p.StaleAfter <= 0 {
		return cliutil.Usagef("--stale-after: must be positive, got %q", c.String("stale-after"))
	}
	if restore {
		name, region, size := c.String("volume-name"), c.String("region"), c.Int64("size-gib")
		switch {
		case name == "":
			return cliutil.Usagef("--restore needs --volume-name")
		case !validVolumeName(name):
			return cliutil.Usagef("--volume-name: invalid volume name %q (lowercase letters, digits and dashes, starting with a letter, at most 64)", name)
		case len(name) >= len(cloud.Prefix) && name[:len(cloud.Prefix)] == cloud.Prefix:
			return cliutil.Usagef("--volume-name: %q would look like a temporary dosvob volume", name)
		case region == "":
			return cliutil.Usagef("--restore needs --region")
		case !regionRe.MatchString(region):
			return cliutil.Usagef("--region: invalid region slug %q (want e.g. \"fra1\")", region)
		case size <= 0:
			return cliutil.Usagef("--restore needs --size-gib (a positive number)")
		}
		p.Restore = &cloud.RestoreSpec{Name: name, Region: region, SizeGiB: size}
	}

	if c.Bool("dry-run") {
		return dryRun(c, p, token)
	}

	if p.HashBinary, err = binary(c, "hash-binary", "dosvob-hash", true); err != nil {
		return err
	}
	if p.PatchBinary, err = binary(c, "patch-binary", "dosvob-patch", restore); err != nil {
		return err
	}

	if c.IsSet("owner-lock-fd") {
		if p.OwnerLock, err = ownerLock(c.Int("owner-lock-fd")); err != nil {
			return err
		}
	}
	p.RunIDFile = c.String("run-id-file")
	if k := os.Getenv("DOSVOB_TEST_KILL_AFTER_STEP"); k != "" {
		// For crash tests only: die by SIGKILL right after the n-th state
		// save, as a power cut or the OOM killer would.
		n, _ := strconv.Atoi(k)
		store.AfterSave = func(i int) {
			if i == n {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				time.Sleep(time.Minute)
			}
		}
	}

	r, err := p.Provision(c.Context)
	if err != nil {
		return cloud.ExitError(err, token, cloud.TeardownFlagsOf(c)...)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return err
	}
	lg.logf("run %s is ready: %d volume(s) on %d droplet(s); delete it with: %s --run %s", r.RunID, len(r.Volumes), len(r.Droplets), cloud.TeardownCommand(cloud.TeardownFlagsOf(c)), r.RunID)
	return nil
}

func dryRun(c *cli.Context, p *cloud.Provisioner, token string) error {
	hours := c.Float64("estimate-hours")
	if hours <= 0 {
		return cliutil.Usagef("--estimate-hours: must be positive")
	}
	sv, err := p.Survey(c.Context)
	if err != nil {
		return cloud.ExitError(err, token, cloud.TeardownFlagsOf(c)...)
	}
	plan, err := p.Plan(c.Context, hours)
	if err != nil {
		return cloud.ExitError(err, token, cloud.TeardownFlagsOf(c)...)
	}
	plan.Print(os.Stdout)
	if stale := sv.Stale(); len(stale) > 0 {
		fmt.Fprintf(os.Stdout, "\nnote: %v\n", &cloud.StaleError{Stale: stale})
	}
	for _, r := range sv.Live() {
		fmt.Fprintf(os.Stdout, "note: %v (left alone)\n", r)
	}
	fmt.Fprintln(os.Stdout, "\ndry run: nothing was created")
	return nil
}

// ownerLock opens the caller's lock file, inherited as descriptor fd.
func ownerLock(fd int) (*os.File, error) {
	if fd < 3 {
		return nil, cliutil.Usagef("--owner-lock-fd: %d is not a lock file's descriptor (want 3 or more)", fd)
	}
	name, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return nil, cliutil.Usagef("--owner-lock-fd: descriptor %d is not open", fd)
	}
	f := os.NewFile(uintptr(fd), name)
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() || !filepath.IsAbs(name) {
		return nil, cliutil.Usagef("--owner-lock-fd: descriptor %d (%q) is not a regular file", fd, name)
	}
	// The hooks must not inherit it: a background process that a hook
	// leaves would hold the lock after the run.
	syscall.CloseOnExec(fd)
	return f, nil
}

// closeInheritedOnExec marks every descriptor beyond stdin, stdout and
// stderr close-on-exec, the ones this process inherited too (Go opens its
// own so): the snapshot hooks it runs get none of them. Among them may be
// a lock of the caller's (the owner's lock, or one that flock(1) holds
// around this command), which a background process left by a hook would
// otherwise hold on to after the run, keeping the next run out and this
// run alive for good.
func closeInheritedOnExec() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

// binary finds a binary to upload: the flag's value, else name beside this
// program.
func binary(c *cli.Context, flag, name string, required bool) (string, error) {
	if p := c.String(flag); p != "" {
		st, err := os.Stat(p)
		if err != nil {
			return "", cliutil.Usagef("--%s %q: %v", flag, p, cliutil.PathCause(err))
		}
		if !st.Mode().IsRegular() {
			return "", cliutil.Usagef("--%s %q is not a regular file", flag, p)
		}
		return p, nil
	}
	exe, err := os.Executable()
	if err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if required {
		return "", cliutil.WithHint(cliutil.Usagef("no %s beside dosvob-provision", name),
			fmt.Sprintf("build it with CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build ./cmd/%s, or pass --%s", name, flag))
	}
	return "", nil
}

var regionRe = regexp.MustCompile(`^[a-z]{3}[0-9]$`)

func validVolumeName(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
