package main

import (
	"os"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/dosvob/dosvob/internal/clitest"
	"github.com/dosvob/dosvob/internal/cliutil"
	"github.com/dosvob/dosvob/internal/doemu"
)

const scriptToken = "dop_v1_script-token-9d1c0b7e55aa"

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"dosvob-provision": func() { os.Exit(cliutil.RunArgs(app(), os.Args, os.Stderr)) },
	})
}

// TestScripts runs testdata/*.txt. Each script gets its own emulator
// (no sshd: the scripts cover the CLI, not the droplets), reached through
// DOSVOB_API_URL, with the token in DIGITALOCEAN_ACCESS_TOKEN, and a
// state directory in $WORK/state.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:  "testdata",
		Cmds: clitest.Cmds(nil),
		Setup: func(env *testscript.Env) error {
			acct := &doemu.Account{Volumes: []doemu.SeedVolume{
				{Name: "pgdata", Region: "fra1", SizeGigabytes: 10},
				{Name: "media", Region: "ams3", SizeGigabytes: 100, Tags: []string{"bulk"}},
				{Name: "dosvob-ephemeral-data", Region: "fra1", SizeGigabytes: 1},
			}}
			e, err := doemu.New(doemu.Options{KeyListLimit: -1, BurstLimit: -1, Token: scriptToken, ActionDelay: 10 * time.Millisecond, Account: acct, DataDir: env.WorkDir + "/.emu"})
			if err != nil {
				return err
			}
			env.Defer(func() { e.Close() })
			env.Setenv("DOSVOB_API_URL", e.URL())
			env.Setenv("DIGITALOCEAN_ACCESS_TOKEN", scriptToken)
			env.Setenv("TOKEN", scriptToken)
			env.Setenv("DOSVOB_STATE_DIR", env.WorkDir+"/state")
			return nil
		},
	})
}
