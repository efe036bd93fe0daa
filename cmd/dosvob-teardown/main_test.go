package main

import (
	"os"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/dosvob/dosvob/internal/clitest"
	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/doemu"
	"github.com/dosvob/dosvob/internal/sshx"
)

const scriptToken = "dop_v1_teardown-script-7b3e91c2"

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"dosvob-teardown": func() { os.Exit(cliutil.RunArgs(app(), os.Args, os.Stderr)) },
	})
}

// Two crashed runs' leftovers, and the user's look-alikes.
const (
	runA = "20260101-000000-aaaaaa"
	runB = "20260102-000000-bbbbbb"
)

func account() (*doemu.Account, error) {
	ours := func(run string) []string { return []string{"dosvob-ephemeral", "dosvob-run-" + run} }
	a := &doemu.Account{
		Volumes: []doemu.SeedVolume{
			{Name: "pgdata", Region: "fra1", SizeGigabytes: 1},
			{Name: "dosvob-ephemeral-data", Region: "fra1", SizeGigabytes: 1},                             // the user's: no tag
			{Name: "tagged", Region: "fra1", SizeGigabytes: 1, Tags: []string{"dosvob-ephemeral"}},        // the user's: no prefix
			{Name: "dosvob-ephemeral-" + runA + "-0", Region: "fra1", SizeGigabytes: 1, Tags: ours(runA)}, // run A
			{Name: "dosvob-ephemeral-" + runA + "-1", Region: "ams3", SizeGigabytes: 1, Tags: ours(runA)}, // run A
			{Name: "dosvob-ephemeral-" + runB + "-0", Region: "fra1", SizeGigabytes: 1, Tags: ours(runB)}, // run B
		},
		Snapshots: []doemu.SeedSnapshot{
			{Name: "dosvob-ephemeral-" + runB + "-1", Volume: "pgdata", Region: "fra1", Tags: ours(runB)},
			{Name: "nightly", Volume: "pgdata", Region: "fra1", Tags: []string{"dosvob-ephemeral"}},
		},
		Droplets: []doemu.SeedDroplet{
			{Name: "dosvob-ephemeral-" + runA + "-fra1-0", Region: "fra1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64", Tags: ours(runA),
				Volumes: []string{"dosvob-ephemeral-" + runA + "-0"}},
			{Name: "web", Region: "fra1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64", Tags: []string{"dosvob-ephemeral"}},
		},
	}
	for _, name := range []string{"dosvob-ephemeral-" + runA, "dosvob-ephemeral-" + runB, "dosvob-ephemeral-laptop"} {
		k, err := sshx.NewKey()
		if err != nil {
			return nil, err
		}
		a.SSHKeys = append(a.SSHKeys, doemu.SeedKey{Name: name, PublicKey: k.AuthorizedKey()})
	}
	return a, nil
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(env *testscript.Env) error {
			acct, err := account()
			if err != nil {
				return err
			}
			e, err := doemu.New(doemu.Options{KeyListLimit: -1, BurstLimit: -1, Token: scriptToken, ActionDelay: 10 * time.Millisecond, Account: acct, DataDir: env.WorkDir + "/.emu"})
			if err != nil {
				return err
			}
			env.Defer(func() { e.Close() })
			env.Values[emuKey{}] = e
			env.Setenv("DOSVOB_API_URL", e.URL())
			env.Setenv("DIGITALOCEAN_ACCESS_TOKEN", scriptToken)
			env.Setenv("TOKEN", scriptToken)
			env.Setenv("DOSVOB_STATE_DIR", env.WorkDir+"/state")
			env.Setenv("RUN_A", runA)
			env.Setenv("RUN_B", runB)
			return nil
		},
		Cmds: clitest.Cmds(map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// hang METHOD PATH: the emulator's next such call never answers.
			"hang": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 2 {
					ts.Fatalf("usage: hang METHOD PATH")
				}
				ts.Value(emuKey{}).(*doemu.Emulator).InjectFault(doemu.Fault{Method: args[0], Path: args[1], Hang: true})
			},
		}),
	})
}

// emuKey finds a script's emulator in its testscript values.
type emuKey struct{}
