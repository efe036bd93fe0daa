package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/cloud"
	"github.com/dosvob/dosvob/internal/doemu"
	"github.com/dosvob/dosvob/internal/testenv"
)

const killToken = "dop_v1_killtest-4e8a0c6d2b19"

func needRoot(t *testing.T) {
	t.Helper()
	testenv.RequireSSHD(t)
}

// buildBinaries builds the four binaries, static, into one directory (so
// dosvob-provision finds dosvob-hash and dosvob-patch beside itself).
func buildBinaries(t *testing.T) (provision, teardown string) {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"dosvob-provision", "dosvob-teardown", "dosvob-hash", "dosvob-patch"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "dosvob-provision"), filepath.Join(dir, "dosvob-teardown")
}

// sshEmulator starts an emulator of acct whose droplets answer SSH, closed
// when the test ends.
func sshEmulator(t *testing.T, acct *doemu.Account) *doemu.Emulator {
	t.Helper()
	e, err := doemu.New(doemu.Options{KeyListLimit: -1, BurstLimit: -1, Token: killToken, ActionDelay: 10 * time.Millisecond, Account: acct,
		DataDir: t.TempDir(), SSH: true, NoLoopDevices: true, SnapshotInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

type result struct {
	code           int
	signal         syscall.Signal
	stdout, stderr string
}

// allOutput collects everything every command printed, to check that the
// token never appears.
var allOutput bytes.Buffer

func runBin(t *testing.T, bin string, env []string, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	allOutput.WriteString(r.stdout + r.stderr)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.signal = ws.Signal()
		}
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func userView(s doemu.State) doemu.State {
	var tags []string
	for _, tg := range s.Tags {
		if !strings.EqualFold(tg, cloud.Tag) {
			tags = append(tags, tg)
		}
	}
	s.Tags = tags
	return s
}

// SIGKILL of the real binary after every few steps (state saves): the
// state on disk names the run, a new provision refuses to start (exit 6),
// and teardown — by run id, or by a provision with --cleanup-stale —
// leaves exactly the user's resources.
func TestKillBetweenSteps(t *testing.T) {
	needRoot(t)
	provision, teardown := buildBinaries(t)
	allOutput.Reset()
	hashBin := filepath.Join(filepath.Dir(provision), "dosvob-hash")
	sshBin, sshErr := exec.LookPath("ssh")
	if sshErr != nil {
		t.Fatal("ssh client not installed")
	}

	for i, k := range []int{1, 2, 3, 5, 8, 12, 16, 20, 23, 26, 28, 30} {
		t.Run(fmt.Sprintf("after-step-%d", k), func(t *testing.T) {
			acct := &doemu.Account{Volumes: []doemu.SeedVolume{
				{Name: "pgdata", Region: "fra1", SizeGigabytes: 1, Content: &doemu.Content{Seed: 1, Bytes: 4096}},
				{Name: "logs", Region: "fra1", SizeGigabytes: 1},
				{Name: "media", Region: "ams3", SizeGigabytes: 1},
				{Name: "dosvob-ephemeral-keep", Region: "nyc1", SizeGigabytes: 1},
			}}
			e := sshEmulator(t, acct)
			before := e.State()
			state := t.TempDir()
			env := []string{"DIGITALOCEAN_ACCESS_TOKEN=" + killToken, "DOSVOB_API_URL=" + e.URL(), "DOSVOB_STATE_DIR=" + state,
				"XDG_CONFIG_HOME=" + t.TempDir()}
			fast := []string{"--poll-interval", "10ms", "--retry-backoff", "5ms", "--request-timeout", "3s"}
			pargs := fast
			if i%3 == 0 {
				pargs = append([]string{"--hash-binary", hashBin}, fast...) // else found beside dosvob-provision
			}
			pargs = append(pargs, "--ssh-wait", "20s", "--action-wait", "5s")

			r := runBin(t, provision, append(env, fmt.Sprintf("DOSVOB_TEST_KILL_AFTER_STEP=%d", k)), nil, pargs...)
			if r.signal != syscall.SIGKILL {
				t.Fatalf("provision was not killed (exit %d):\n%s", r.code, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("a killed provision printed: %q", r.stdout)
			}
			runs, _ := filepath.Glob(filepath.Join(state, "runs", "*", "state.json"))
			if len(runs) != 1 {
				t.Fatalf("run state after the kill: %v", runs)
			}
			runID := filepath.Base(filepath.Dir(runs[0]))

			// The next provision refuses: another run's state exists.
			r = runBin(t, provision, env, nil, pargs...)
			if r.code != 6 || !strings.Contains(r.stderr, runID) || !strings.Contains(r.stderr, "hint: ") {
				t.Fatalf("second provision: exit %d\n%s", r.code, r.stderr)
			}

			if i%2 == 0 {
				r = runBin(t, teardown, env, nil, append([]string{"--run", runID}, fast...)...)
				if r.code != 0 {
					t.Fatalf("teardown --run: exit %d\n%s", r.code, r.stderr)
				}
			} else {
				// As backup-all.sh does: clean up and start afresh, then
				// tear down the new run from its JSON on stdin.
				r = runBin(t, provision, env, nil, append(pargs, "--cleanup-stale")...)
				if r.code != 0 {
					t.Fatalf("provision --cleanup-stale: exit %d\n%s", r.code, r.stderr)
				}
				var run cloud.Run
				if err := json.Unmarshal([]byte(r.stdout), &run); err != nil || len(run.Volumes) != 4 {
					t.Fatalf("run JSON: %v\n%s", err, r.stdout)
				}
				// The JSON is all a script needs: the first stage of a
				// backup, through the real ssh with the run's key and
				// known_hosts, into the uploaded dosvob-hash (once: it
				// reads a whole 1 GiB device).
				if i == 1 {
					checkPipe(t, run, hashBin, sshBin)
				}
				r = runBin(t, teardown, env, []byte(r.stdout), fast...)
				if r.code != 0 {
					t.Fatalf("teardown < run.json: exit %d\n%s", r.code, r.stderr)
				}
			}
			if after := e.State(); !reflect.DeepEqual(userView(before), userView(after)) {
				t.Fatalf("account differs after teardown:\nbefore %+v\nafter  %+v", userView(before), userView(after))
			}
			if left, _ := filepath.Glob(filepath.Join(state, "runs", "*")); len(left) != 0 {
				t.Errorf("local run state left: %v", left)
			}
		})
	}
	if strings.Contains(allOutput.String(), killToken) {
		t.Fatal("the token appears in the output of a command")
	}
}

// SIGINT while provision waits for SSH: exit 130, the state says
// "interrupted", the message says how to tear down, and teardown does.
func TestInterrupt(t *testing.T) {
	provision, teardown := buildBinaries(t)
	acct := &doemu.Account{Volumes: []doemu.SeedVolume{{Name: "pgdata", Region: "fra1", SizeGigabytes: 1}}}
	// No sshd: the droplet never answers, so provision is sure to be
	// waiting when the signal comes.
	e, err := doemu.New(doemu.Options{KeyListLimit: -1, BurstLimit: -1, Token: killToken, ActionDelay: 10 * time.Millisecond, Account: acct, DataDir: t.TempDir(), SnapshotInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	before := e.State()
	state := t.TempDir()
	env := append(os.Environ(), "DIGITALOCEAN_ACCESS_TOKEN="+killToken, "DOSVOB_API_URL="+e.URL(), "DOSVOB_STATE_DIR="+state,
		"XDG_CONFIG_HOME="+t.TempDir())
	cmd := exec.Command(provision, "--hash-binary", provision, "--poll-interval", "10ms", "--retry-backoff", "5ms", "--ssh-wait", "60s")
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(state, "runs", "*", "state.json"))
		if len(files) == 1 {
			if b, _ := os.ReadFile(files[0]); bytes.Contains(b, []byte(`"address": "127.`)) {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("provision never reached the ssh wait:\n%s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGINT)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("exit: %v\n%s", err, errb.String())
	}
	files, _ := filepath.Glob(filepath.Join(state, "runs", "*", "state.json"))
	if len(files) != 1 {
		t.Fatalf("state files: %v", files)
	}
	runID := filepath.Base(filepath.Dir(files[0]))
	b, _ := os.ReadFile(files[0])
	if !bytes.Contains(b, []byte(`"status": "interrupted"`)) {
		t.Errorf("state:\n%s", b)
	}
	if out.Len() != 0 || !strings.Contains(errb.String(), "interrupted") || !strings.Contains(errb.String(), "hint: delete what the run left with: dosvob-teardown --run "+runID) {
		t.Errorf("stdout %q\nstderr:\n%s", out.String(), errb.String())
	}
	allText := out.String() + errb.String()
	r := runBin(t, teardown, []string{"DIGITALOCEAN_ACCESS_TOKEN=" + killToken, "DOSVOB_API_URL=" + e.URL(), "DOSVOB_STATE_DIR=" + state,
		"XDG_CONFIG_HOME=" + t.TempDir()}, nil, "--run", runID, "--poll-interval", "10ms")
	if r.code != 0 {
		t.Fatalf("teardown: %d\n%s", r.code, r.stderr)
	}
	if !reflect.DeepEqual(userView(before), userView(e.State())) {
		t.Fatal("account differs after teardown")
	}
	if strings.Contains(allText+r.stdout+r.stderr, killToken) {
		t.Fatal("token in output")
	}
}

// checkPipe runs the first stage of a backup with nothing but the run JSON:
// local dosvob-hash signs a new (empty) image, the real ssh client with the
// run's key and known_hosts carries it to the uploaded dosvob-hash --delta,
// which reads the device.
func checkPipe(t *testing.T, run cloud.Run, hashBin, sshBin string) {
	t.Helper()
	var vol cloud.RunVolume
	for _, x := range run.Volumes {
		if x.SourceName == "pgdata" {
			vol = x
		}
	}
	var d cloud.RunDroplet
	for _, x := range run.Droplets {
		if x.ID == vol.DropletID {
			d = x
		}
	}
	pipe := fmt.Sprintf("%s %s | %s -F none -i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes -p %d %s@%s %s --delta %s | wc -c",
		hashBin, filepath.Join(t.TempDir(), "new.img"), sshBin, run.PrivateKeyPath, run.KnownHostsPath, d.Port, d.User, d.Address, d.RemoteHashPath, vol.DevicePath)
	pc := exec.Command("bash", "-o", "pipefail", "-c", pipe)
	var perr bytes.Buffer
	pc.Stderr = &perr
	out, err := pc.Output()
	if err != nil {
		t.Fatalf("sign | ssh dosvob-hash --delta: %v\n%s", err, perr.String())
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(out))); n < 4096 {
		t.Errorf("delta of %s bytes, want at least the 4 KiB of data", out)
	}
}

// A snapshot hook that leaves a background process behind (as an ssh
// ControlPersist master does) must not keep the caller's lock: the real
// binary is started as backup-all.sh starts it, its lock as fd 8, and with
// another lock the caller holds (as flock(1) would pass one) as fd 7. The
// hook lists its descriptors: none of them is a lock or a file of the state
// directory, and once the caller is gone both locks are free, while the
// hook's background process still runs.
func TestHookInheritsNoLock(t *testing.T) {
	needRoot(t)
	provision, teardown := buildBinaries(t)
	acct := &doemu.Account{Volumes: []doemu.SeedVolume{{Name: "pgdata", Region: "fra1", SizeGigabytes: 1}}}
	e := sshEmulator(t, acct)
	before := e.State()

	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	lock, other := filepath.Join(dir, "b.lock"), filepath.Join(dir, "other.lock")
	fds, pidFile := filepath.Join(dir, "hook.fds"), filepath.Join(dir, "hook.pid")
	conf := filepath.Join(dir, "conf.json")
	hook := `ls -l /proc/$$/fd > ` + fds + `; (exec sleep 120 </dev/null >/dev/null 2>&1 & echo $! > ` + pidFile + `)`
	if err := os.WriteFile(conf, []byte(`{"hooks": {"post_snapshot": "`+strings.ReplaceAll(hook, `"`, `\"`)+`"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})

	// As backup-all.sh: fd 9 holds the lock, dosvob-provision gets a copy
	// as fd 8 and not fd 9.
	script := `exec 9>>"$LOCK" 7>>"$OTHER"
flock -n 9 && flock -n 7 || exit 99
"$PROVISION" --config "$CONF" --owner-lock-fd 8 --hash-binary "$HASH" --poll-interval 10ms --retry-backoff 5ms \
	--ssh-wait 20s --action-wait 5s >"$RUN" </dev/null 8>&9 9>&-`
	run := filepath.Join(dir, "run.json")
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "DIGITALOCEAN_ACCESS_TOKEN="+killToken, "DOSVOB_API_URL="+e.URL(), "DOSVOB_STATE_DIR="+state,
		"LOCK="+lock, "OTHER="+other, "PROVISION="+provision, "CONF="+conf, "RUN="+run,
		"HASH="+filepath.Join(filepath.Dir(provision), "dosvob-hash"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("provision: %v\n%s", err, out)
	}
	r := runBin(t, teardown, []string{"DIGITALOCEAN_ACCESS_TOKEN=" + killToken, "DOSVOB_API_URL=" + e.URL(), "DOSVOB_STATE_DIR=" + state,
		"XDG_CONFIG_HOME=" + t.TempDir()}, nil, "--poll-interval", "10ms", run)
	if r.code != 0 {
		t.Fatalf("teardown: exit %d\n%s", r.code, r.stderr)
	}
	if !reflect.DeepEqual(userView(before), userView(e.State())) {
		t.Fatal("account differs after teardown")
	}

	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the hook left no background process: %v\n%s", err, out)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 1 || syscall.Kill(pid, 0) != nil {
		t.Fatalf("the hook's background process %q is not running: the test proves nothing", b)
	}
	listing, err := os.ReadFile(fds)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{lock, other, state} {
		if strings.Contains(string(listing), bad) {
			t.Errorf("the hook inherited a descriptor of %s:\n%s", bad, listing)
		}
	}
	for _, l := range []string{lock, other} {
		if held, err := cloud.LockHeld(l); err != nil || held {
			t.Errorf("the lock %s is held after the run (%v), by the hook's background process", l, err)
		}
	}
}
