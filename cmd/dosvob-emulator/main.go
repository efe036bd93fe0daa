// Command dosvob-emulator runs the DigitalOcean API emulator on a loopback
// address, for the demo and for trying dosvob by hand without a
// DigitalOcean account.
//
//	dosvob-emulator --token-file token --account account.yaml --ssh
//
// It prints its base URL (for --api-url or DOSVOB_API_URL) on standard
// output, logs to standard error, and on SIGINT or SIGTERM stops every
// emulated droplet's sshd, detaches its loop devices and exits 0. The
// emulator itself is internal/doemu; docs/EMULATOR.md describes it and the
// account file.
package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/doemu"
)

const name = "dosvob-emulator"

func main() { cliutil.Run(newApp(os.Stdout, os.Stderr)) }

// run is main for the CLI tests: it returns the exit code.
func run() int { return cliutil.RunArgs(newApp(os.Stdout, os.Stderr), os.Args, os.Stderr) }

const description = `Emulates the part of DigitalOcean's API v2 that dosvob uses: volumes,
volume snapshots, volume actions, droplets, droplet actions, actions, SSH
keys, tags, regions, sizes and the account, with DigitalOcean's shapes,
validation rules, error bodies, pagination and rate limits.

The account starts from --account (a YAML or JSON file with regions, sizes,
and the user's own volumes, snapshots, droplets, keys and tags; see
docs/EMULATOR.md), or empty with default regions and sizes. Volumes are
sparse files in --data (a temporary directory, removed at exit, by default).

With --ssh (as root) every active droplet gets its own address 127.0.0.2,
127.0.0.3, ... and a real OpenSSH sshd there, keyed from the cloud-config
ssh_keys of its user data; attached volumes appear to SSH logins at
"${DOSVOB_ROOT}/dev/disk/by-id/scsi-0DO_Volume_<name>".

Every request needs "Authorization: Bearer <token>", the token read from
--token-file (which others must not be able to read) or from
DIGITALOCEAN_ACCESS_TOKEN. The emulator's own endpoints, GET /emulator/state
and POST/DELETE /emulator/faults, report every resource and inject faults.

Standard output carries the base URL only. Exit codes: 0 stopped by SIGINT
or SIGTERM; 1 failure; 2 usage (bad flag, unreadable or bad account file,
no token, --ssh without root or /usr/sbin/sshd).`

const examples = `
EXAMPLES:
   # a token only you can read, then the sample account with droplets that
   # answer SSH (as root; it runs until Ctrl-C):
   umask 077; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > emulator.token
   dosvob-emulator --token-file emulator.token --account internal/doemu/testdata/sample-account.yaml \
        --ssh --action-delay 100ms --snapshot-interval 0 --url-file emulator.url

   # without root: the API only, volumes as plain files:
   dosvob-emulator --token-file emulator.token --account internal/doemu/testdata/sample-account.yaml \
        --no-loop --url-file emulator.url

   # from another shell: point dosvob at it, and look at everything it holds:
   DIGITALOCEAN_ACCESS_TOKEN="$(cat emulator.token)" dosvob-provision --api-url "$(cat emulator.url)" --dry-run
   curl -H "Authorization: Bearer $(cat emulator.token)" "$(cat emulator.url)emulator/state"
`

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:                  name,
		Usage:                 "run the DigitalOcean API emulator",
		UsageText:             name + " [flags]",
		Description:           description,
		CustomAppHelpTemplate: cli.AppHelpTemplate + examples,
		HideHelpCommand:       true,
		Writer:                stdout,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:0", Usage: "loopback `ADDRESS:PORT` to listen on (port 0: any free port)"},
			&cli.StringFlag{Name: "account", Usage: "seed the account from this YAML or JSON `FILE`"},
			&cli.StringFlag{Name: "data", Usage: "keep backing files and droplet directories in `DIR` (default: a temporary directory)"},
			&cli.StringFlag{Name: "token-file", Usage: "read the API token from `FILE` (default: $DIGITALOCEAN_ACCESS_TOKEN)"},
			&cli.StringFlag{Name: "url-file", Usage: "also write the base URL to `FILE` once listening"},
			&cli.BoolFlag{Name: "ssh", Usage: "start a real sshd for every active droplet (needs root and /usr/sbin/sshd)"},
			&cli.IntFlag{Name: "ssh-port", Value: doemu.DefaultSSHPort, Usage: "`PORT` of the droplets' sshd"},
			&cli.BoolFlag{Name: "no-loop", Usage: "attach volumes as their backing files, not loop devices"},
			&cli.DurationFlag{Name: "action-delay", Value: doemu.DefaultActionDelay, Usage: "how long actions stay in progress"},
			&cli.DurationFlag{Name: "detach-delay", Usage: "how long a deleted droplet's volumes stay attached (0: not at all)", DefaultText: "--action-delay"},
			&cli.DurationFlag{Name: "snapshot-interval", Value: doemu.DefaultSnapshotInterval, Usage: "minimum time between two snapshots of a volume (negative: none)"},
			&cli.IntFlag{Name: "rate-limit", Value: doemu.DefaultRequestLimit, Usage: "requests allowed per --rate-window"},
			&cli.DurationFlag{Name: "rate-window", Value: doemu.DefaultRateWindow, Usage: "rate limit window"},
			&cli.IntFlag{Name: "burst-limit", Value: doemu.DefaultBurstLimit, Usage: "requests allowed per minute (0: no limit)"},
			&cli.IntFlag{Name: "key-list-limit", Value: doemu.DefaultKeyListLimit, Usage: "GET /v2/account/keys allowed per minute (0: no limit)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "log only start, stop and errors, not every request"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cliutil.Usagef("unexpected argument %q", c.Args().First())
			}
			if err := checkListen(c.String("listen")); err != nil {
				return err
			}
			if err := checkLimits(c); err != nil {
				return err
			}
			if c.Bool("ssh") {
				if err := doemu.CheckSSH(doemu.DefaultSSHD); err != nil {
					return cliutil.WithHint(cliutil.Usagef("--ssh %v", err),
						"run it as root with OpenSSH's server installed (openssh-server), or without --ssh for the API alone")
				}
			}
			token, err := readToken(c.String("token-file"))
			if err != nil {
				return err
			}
			var acct *doemu.Account
			if p := c.String("account"); p != "" {
				if acct, err = doemu.LoadAccount(p); err != nil {
					var pe *fs.PathError
					if errors.As(err, &pe) {
						err = fmt.Errorf("account file %q: %w", p, pe.Err)
					}
					return cliutil.Exit(cliutil.ExitUsage, err)
				}
			}
			logger := log.New(stderr, name+": ", log.LstdFlags|log.Lmsgprefix)
			quiet := c.Bool("quiet")
			logf := func(format string, args ...any) {
				msg := fmt.Sprintf(format, args...)
				if quiet && isRequestLog(msg) {
					return
				}
				logger.Print(msg)
			}
			e, err := doemu.New(doemu.Options{
				Token:            token,
				Listen:           c.String("listen"),
				ActionDelay:      nonZero(c.Duration("action-delay")),
				DetachDelay:      detachDelay(c),
				Account:          acct,
				DataDir:          c.String("data"),
				SnapshotInterval: nonZero(c.Duration("snapshot-interval")),
				RequestLimit:     c.Int("rate-limit"),
				RateWindow:       c.Duration("rate-window"),
				BurstLimit:       noLimitIfZero(c.Int("burst-limit")),
				KeyListLimit:     noLimitIfZero(c.Int("key-list-limit")),
				SSH:              c.Bool("ssh"),
				SSHPort:          c.Int("ssh-port"),
				NoLoopDevices:    c.Bool("no-loop"),
				Logf:             logf,
			})
			if err != nil {
				return err
			}
			defer e.Close()
			if p := c.String("url-file"); p != "" {
				if err := writeAtomic(p, e.URL()+"\n"); err != nil {
					return fmt.Errorf("--url-file %q: %w", p, cliutil.PathCause(err))
				}
			}
			fmt.Fprintln(stdout, e.URL())
			<-c.Context.Done()
			logger.Print("stopping: stopping droplets and freeing loop devices")
			if err := e.Close(); err != nil {
				return err
			}
			logger.Print("stopped")
			return nil
		},
	}
}

// nonZero maps a zero duration (a flag set to 0) to "none at all", which
// doemu spells as a negative duration.
func nonZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// detachDelay is --detach-delay for the Options, where 0 means "as the
// action delay": so only when it is not given.
func detachDelay(c *cli.Context) time.Duration {
	if !c.IsSet("detach-delay") {
		return 0
	}
	return nonZero(c.Duration("detach-delay"))
}

// noLimitIfZero maps a flag's 0 ("no limit") to the Options' -1.
func noLimitIfZero(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

func isRequestLog(msg string) bool {
	for _, m := range []string{"GET ", "POST ", "PUT ", "DELETE "} {
		if strings.HasPrefix(msg, m) {
			return true
		}
	}
	return strings.Contains(msg, " sshd: ")
}

// readToken reads the token from a file that only its owner can read, or
// from the environment.
func readToken(path string) (string, error) {
	if path == "" {
		if t := strings.TrimSpace(os.Getenv("DIGITALOCEAN_ACCESS_TOKEN")); t != "" {
			return t, nil
		}
		return "", cliutil.WithHint(cliutil.Usagef("no API token"),
			"give --token-file FILE (mode 0600) or set DIGITALOCEAN_ACCESS_TOKEN")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", cliutil.Usagef("token file %q: %v", path, cliutil.PathCause(err))
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", cliutil.WithHint(cliutil.Usagef("token file %q can be read by others (mode %04o)", path, fi.Mode().Perm()),
			fmt.Sprintf("chmod 600 %s", path))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", cliutil.Usagef("token file %q: %v", path, cliutil.PathCause(err))
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", cliutil.Usagef("token file %q is empty", path)
	}
	return t, nil
}

// writeAtomic writes a file so that a reader never sees it half written.
func writeAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".url-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// checkLimits refuses the values of --rate-limit, --rate-window and
// --ssh-port that the emulator would otherwise take for their defaults.
func checkLimits(c *cli.Context) error {
	if n := c.Int("rate-limit"); n < 1 {
		return cliutil.Usagef("--rate-limit %q: want at least 1 request", strconv.Itoa(n))
	}
	if d := c.Duration("rate-window"); d <= 0 {
		return cliutil.Usagef("--rate-window %q: want a positive duration", d.String())
	}
	if p := c.Int("ssh-port"); p < 1 || p > 65535 {
		return cliutil.Usagef("--ssh-port %q: want a port from 1 to 65535", strconv.Itoa(p))
	}
	return nil
}

// checkListen accepts loopback addresses only: the emulator trusts whoever
// has the token with running commands on this machine as root (over its
// droplets' SSH), so it must not be reachable from elsewhere.
func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return cliutil.Usagef("bad --listen address %q: want HOST:PORT", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return cliutil.Usagef("bad --listen port %q", port)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return cliutil.WithHint(cliutil.Usagef("--listen address %q is not a loopback address", addr),
			"use 127.0.0.1:PORT")
	}
	return nil
}
