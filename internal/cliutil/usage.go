package cliutil

import (
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"
)

// The messages of Go's flag package, which urfave/cli passes on, and
// urfave/cli's own for required flags and values from the environment.
var (
	unknownFlagRe  = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
	needsValueRe   = regexp.MustCompile(`^flag needs an argument: -+(.*)$`)
	invalidValueRe = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-+([^:]*): `)
	envValueRe     = regexp.MustCompile(`^could not parse (".*") as \S+ value from (?:environment variable|file) "?([^"]*)"? for flag ([^:]*): `)
	badSyntaxRe    = regexp.MustCompile(`^bad flag syntax: (.*)$`)
	requiredRe     = regexp.MustCompile(`^Required flags? "(.*)" not set$`)
)

// usageError rewrites an error of urfave/cli's flag parsing in dosvob's
// style: one lowercase line that quotes the bad value ("unknown flag
// \"--bogus\"", "--level \"x\" is not an integer"), with the usage exit
// code and a hint to helpName's --help. flags are the command's flags,
// args its command line (to show a flag as it was typed). An error it does
// not know keeps its text.
func usageError(helpName string, flags []cli.Flag, args []string, err error) error {
	msg := err.Error()
	var out error
	if m := unknownFlagRe.FindStringSubmatch(msg); m != nil {
		out = Usagef("unknown flag %q", typed(args, m[1]))
	} else if m := needsValueRe.FindStringSubmatch(msg); m != nil {
		out = Usagef("%s needs a value", typed(args, m[1]))
	} else if m := invalidValueRe.FindStringSubmatch(msg); m != nil {
		out = Usagef("%s %s is not %s", typed(args, m[2]), m[1], want(flags, m[2]))
	} else if m := envValueRe.FindStringSubmatch(msg); m != nil {
		out = Usagef("%s %s (from %s) is not %s", dashed(m[3]), m[1], m[2], want(flags, m[3]))
	} else if m := badSyntaxRe.FindStringSubmatch(msg); m != nil {
		out = Usagef("bad flag syntax %q", m[1])
	} else if m := requiredRe.FindStringSubmatch(msg); m != nil {
		out = Usagef("missing %s", dashedList(strings.Split(m[1], ", ")))
	} else {
		out = Exit(ExitUsage, err)
	}
	return WithHint(out, helpHint(helpName))
}

func helpHint(helpName string) string {
	return "run '" + helpName + " --help' for usage"
}

// dashed spells a flag's name as on a command line: "-q", "--level".
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// dashedList spells names as "--a", "--a and --b", "--a, --b and --c".
func dashedList(names []string) string {
	d := make([]string, len(names))
	for i, n := range names {
		d[i] = dashed(n)
	}
	if len(d) == 1 {
		return d[0]
	}
	return strings.Join(d[:len(d)-1], ", ") + " and " + d[len(d)-1]
}

// typed returns the flag name as the command line has it ("-x",
// "--bogus"), for a message the user recognises.
func typed(args []string, name string) string {
	for _, a := range args {
		if a == "--" {
			break
		}
		flag, _, _ := strings.Cut(a, "=")
		if strings.HasPrefix(flag, "-") && strings.TrimLeft(flag, "-") == name {
			return flag
		}
	}
	return dashed(name)
}

// want says what the flag called name takes.
func want(flags []cli.Flag, name string) string {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			switch f.(type) {
			case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag:
				return "an integer"
			case *cli.Float64Flag:
				return "a number"
			case *cli.DurationFlag:
				return "a duration (like 90s or 5m)"
			case *cli.BoolFlag:
				return "true or false"
			}
		}
	}
	return "a valid value"
}

// Need returns a usage error unless every flag in names was given:
// "restore-version needs --version and --output". Use it instead of
// urfave/cli's Required, whose error dumps the whole help.
func Need(c *cli.Context, names ...string) error {
	var missing []string
	for _, n := range names {
		if !c.IsSet(n) {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return WithHint(Usagef("%s needs %s", c.Command.Name, dashedList(missing)), helpHint(c.Command.HelpName))
}

// houseStyle makes app and its commands report flag errors through
// usageError instead of urfave/cli's text and help dump.
func houseStyle(app *cli.App, args []string) {
	if app.OnUsageError == nil {
		app.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return usageError(app.Name, app.Flags, args, err)
		}
	}
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, cmd := range cmds {
			name := prefix + " " + cmd.Name
			if cmd.OnUsageError == nil {
				flags := cmd.Flags
				cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
					return usageError(name, flags, args, err)
				}
			}
			walk(name, cmd.Subcommands)
		}
	}
	walk(app.Name, app.Commands)
}

// isUsageError recognises the plain errors urfave/cli returns for bad
// flags outside OnUsageError (a required flag that is missing).
func isUsageError(err error) bool {
	return requiredRe.MatchString(err.Error())
}
