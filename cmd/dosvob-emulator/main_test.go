package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/dosvob/dosvob/internal/clitest"
	"github.com/dosvob/dosvob/internal/testenv"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){name: func() { os.Exit(run()) }})
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(env *testscript.Env) error {
			// The account file every script may use.
			b, err := os.ReadFile("../../internal/doemu/testdata/sample-account.yaml")
			if err != nil {
				return err
			}
			return os.WriteFile(env.WorkDir+"/account.yaml", b, 0o644)
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "sshd":
				// Root, sshd and loop devices; CI must have them.
				ok := os.Geteuid() == 0
				if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
					ok = false
				}
				if _, err := exec.LookPath("losetup"); err != nil {
					ok = false
				}
				if !ok && testenv.InCI() {
					return false, fmt.Errorf("CI=true but root, /usr/sbin/sshd or losetup is missing")
				}
				return ok, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: clitest.Cmds(map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitfile": cmdWaitfile,
			"api":      cmdAPI,
			"sshup":    cmdSSHUp,
		}),
	})
}

// waitfile FILE: waits (up to 20s) until FILE exists and is not empty.
func cmdWaitfile(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: waitfile FILE")
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(ts.MkAbs(args[0])); err == nil && fi.Size() > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	ts.Fatalf("%s did not appear", args[0])
}

// api METHOD PATH [JSON]: calls the emulator whose URL is in the file url
// with the token in the file token; prints the status on the first line of
// stdout and the body after it.
func cmdAPI(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: api METHOD PATH [JSON]")
	}
	base := strings.TrimSpace(ts.ReadFile("url"))
	token := strings.TrimSpace(ts.ReadFile("token"))
	var body io.Reader
	if len(args) == 3 {
		body = strings.NewReader(args[2])
	}
	req, err := http.NewRequest(args[0], base+strings.TrimPrefix(args[1], "/"), body)
	ts.Check(err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	ts.Check(err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	ts.Check(err)
	fmt.Fprintf(ts.Stdout(), "%d\n%s\n", resp.StatusCode, b)
	if (resp.StatusCode >= 300) != neg {
		ts.Fatalf("%s %s: status %d", args[0], args[1], resp.StatusCode)
	}
}

// sshup STATE: every droplet in the state (the output of "api GET
// /emulator/state") accepts connections on its SSH address and has its attached
// volumes on loop devices. "! sshup" checks that none does any more, that
// no loop device is backed by a file of the emulator, and that its
// temporary data directory is gone.
func cmdSSHUp(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: sshup STATE.json")
	}
	var st struct {
		Droplets []struct {
			IPv4      string   `json:"ipv4"`
			SSHPort   int      `json:"ssh_port"`
			Root      string   `json:"root"`
			VolumeIDs []string `json:"volume_ids"`
		}
	}
	b, err := os.ReadFile(ts.MkAbs(args[0])) // not ts.ReadFile: it rewrites paths to $WORK
	ts.Check(err)
	_, body, _ := strings.Cut(string(b), "\n") // the api command's status line
	ts.Check(json.Unmarshal([]byte(body), &st))
	if len(st.Droplets) == 0 {
		ts.Fatalf("no droplets in %s", args[0])
	}
	var dataDir string
	for _, d := range st.Droplets {
		addr := net.JoinHostPort(d.IPv4, strconv.Itoa(d.SSHPort))
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		if (err == nil) == neg {
			ts.Fatalf("droplet at %s: dial: %v", addr, err)
		}
		dataDir = filepath.Dir(filepath.Dir(d.Root))
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var ours []string
	for _, l := range loops {
		b, err := os.ReadFile(l)
		if err == nil && strings.HasPrefix(string(b), dataDir+"/") {
			ours = append(ours, strings.TrimSpace(string(b)))
		}
	}
	if neg && len(ours) > 0 {
		ts.Fatalf("loop devices still backed by %v", ours)
	}
	if !neg && len(ours) == 0 {
		ts.Fatalf("no loop device backed by a file in %s", dataDir)
	}
	if _, err := os.Stat(dataDir); neg && err == nil {
		ts.Fatalf("temporary data directory %s left behind", dataDir)
	}
}

// --ssh as another user than root fails at once, with exit 2 and a line
// that says why, before it listens or seeds anything: not late, with a
// cause that misleads ("port 22 is taken"), or not at all until the first
// droplet boots.
func TestSSHNeedsRoot(t *testing.T) {
	testenv.RequireRoot(t, "running the emulator as user nobody")
	testenv.RequireCommand(t, "setpriv")
	// A directory that nobody can enter, with the binary and the account.
	dir, err := os.MkdirTemp("", "dosvob-emulator-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	acct, err := os.ReadFile("../../internal/doemu/testdata/sample-account.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "account.yaml"), acct, 0o644); err != nil {
		t.Fatal(err)
	}
	want := name + ": --ssh needs root (running as uid 65534)\n" +
		name + ": hint: run it as root with OpenSSH's server installed (openssh-server), or without --ssh for the API alone\n"
	for _, args := range [][]string{{"--ssh"}, {"--ssh", "--account", "account.yaml", "--no-loop"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, "setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", bin}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "DIGITALOCEAN_ACCESS_TOKEN=nobody-token")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		cancel()
		code := cmd.ProcessState.ExitCode()
		if code != 2 || stderr.String() != want || stdout.Len() != 0 {
			t.Errorf("%s as nobody: exit %d (%v) after %v\nstdout: %q\nstderr:\n%s\nwant exit 2 and stderr:\n%s",
				strings.Join(args, " "), code, err, time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String(), want)
		}
	}
}
