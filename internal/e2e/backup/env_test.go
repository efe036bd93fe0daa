// Package backup tests scripts/backup-all.sh and scripts/restore.sh end to
// end: the real binaries, built static as for the droplets, against the
// DigitalOcean API emulator, whose droplets answer through real OpenSSH sshd
// on loopback addresses and read their volumes from loop devices, with the
// real ssh client in between.
//
// These tests need root (sshd, loop devices), sshd, ssh, jq and pv. Without
// them they skip, unless CI=true, where they fail.
package backup

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/dosvob/dosvob/internal/doemu"
	"github.com/dosvob/dosvob/internal/testenv"
)

const (
	token   = "dop_v1_e2e0000000000000000000000000000000000000000000000000000000000"
	sshPort = 2223 // the demo's emulator uses 2222
	gib     = int64(1) << 30
)

// requireEnv skips (or, with CI=true, fails) when the machine cannot run
// the end-to-end tests.
func requireEnv(t *testing.T) {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (for sshd and loop devices)")
	}
	for _, tool := range []string{"/usr/sbin/sshd", "ssh", "jq", "pv", "flock", "losetup", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	testenv.SkipOrFail(t, "end-to-end backup tests need %s (apt-get install openssh-server openssh-client jq pv util-linux)",
		strings.Join(missing, ", "))
}

func repoRoot(t *testing.T) string { return testenv.RepoRoot(t) }

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binDir builds every command once per test process, static and for
// linux/amd64 as dosvob-provision uploads them to droplets.
func binDir(t *testing.T) string {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "dosvob-e2e-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir, "./cmd/...")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/...: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	for _, b := range []string{"dosvob-hash", "dosvob-patch", "dosvob-provision", "dosvob-teardown"} {
		if _, err := os.Stat(filepath.Join(buildDir, b)); err != nil {
			t.Fatalf("%s was not built: %v", b, err)
		}
	}
	return buildDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// env is one emulated account with its config, a backup directory and the
// state it started with.
type env struct {
	t       *testing.T
	dir     string
	emu     *doemu.Emulator
	bin     string
	conf    string
	backups string
	initial doemu.State
	ids     map[string]string // "region/name" -> volume id
	log     bytes.Buffer      // emulator log, shown on failure
	logMu   sync.Mutex
}

// sourceVolumes are the volumes the config selects; "fra1/scratch" is
// excluded by the config and must never be touched.
var sourceVolumes = []string{"fra1/db", "nyc1/web"}

func seedAccount() *doemu.Account {
	return &doemu.Account{
		Tags:    []string{"production"},
		SSHKeys: []doemu.SeedKey{{Name: "laptop", PublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl laptop"}},
		Volumes: []doemu.SeedVolume{
			{Name: "db", Region: "fra1", SizeGigabytes: 1, Tags: []string{"production"},
				Content: &doemu.Content{Seed: 1, Bytes: 3 << 20, Offset: 1 << 20}},
			{Name: "web", Region: "nyc1", SizeGigabytes: 1,
				Content: &doemu.Content{Seed: 2, Bytes: 2 << 20, Offset: 200 << 20}},
			{Name: "scratch", Region: "fra1", SizeGigabytes: 1,
				Content: &doemu.Content{Pattern: "text", Text: "scratch ", Bytes: 1 << 20}},
		},
		Snapshots: []doemu.SeedSnapshot{{Name: "db-before-upgrade", Volume: "db", Region: "fra1"}},
		Droplets: []doemu.SeedDroplet{{Name: "app-1", Region: "fra1", Size: "s-1vcpu-1gb",
			Tags: []string{"production"}, Volumes: []string{"db"}, SSHKeys: []string{"laptop"}}},
	}
}

// newEnv starts an emulated account. With loop, attached volumes are loop
// block devices, as on a real droplet; without, they are their backing
// files, which read several times faster (reading a sparse 1 GiB volume
// through a loop device dominates a run's time on a small machine).
func newEnv(t *testing.T, loop bool) *env {
	requireEnv(t)
	e := &env{t: t, dir: t.TempDir(), bin: binDir(t), ids: map[string]string{}}
	emu, err := doemu.New(doemu.Options{
		Token:            token,
		ActionDelay:      20 * time.Millisecond,
		DetachDelay:      20 * time.Millisecond,
		SnapshotInterval: -1, // the runs follow each other within seconds
		KeyListLimit:     -1, // and list the account's keys more than 10 times a minute
		BurstLimit:       -1, // and poll faster than a real run
		Account:          seedAccount(),
		DataDir:          filepath.Join(e.dir, "emulator"),
		SSH:              true,
		SSHPort:          sshPort,
		NoLoopDevices:    !loop,
		Logf: func(format string, args ...any) {
			e.logMu.Lock()
			defer e.logMu.Unlock()
			fmt.Fprintf(&e.log, format+"\n", args...)
		},
	})
	if err != nil {
		t.Fatalf("start the emulator: %v", err)
	}
	e.emu = emu
	t.Cleanup(func() {
		if err := emu.Close(); err != nil {
			t.Errorf("close the emulator: %v", err)
		}
		if t.Failed() {
			e.logMu.Lock()
			t.Logf("emulator log (last 8 KiB):\n%s", tail(e.log.String(), 8<<10))
			e.logMu.Unlock()
		}
	})
	e.initial = emu.State()
	for _, v := range e.initial.Volumes {
		e.ids[v.Region+"/"+v.Name] = v.ID
	}

	tokenFile := filepath.Join(e.dir, "token")
	writeFile(t, tokenFile, token+"\n", 0o600)
	conf := map[string]any{
		"token_file":  tokenFile,
		"api_url":     emu.URL(),
		"state_dir":   filepath.Join(e.dir, "state"),
		"exclude":     []string{"scratch"},
		"ssh_port":    sshPort,
		"ssh_wait":    "30s",
		"action_wait": "30s",
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	e.conf = filepath.Join(e.dir, "conf.json")
	writeFile(t, e.conf, string(b), 0o600)
	e.backups = filepath.Join(e.dir, "backups")
	return e
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func writeFile(t *testing.T, name, data string, mode os.FileMode) {
	if err := os.WriteFile(name, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil {
		t.Fatal(err)
	}
}

// image is the backup image of a "region/name" volume.
func (e *env) image(vol string) string {
	return filepath.Join(e.backups, filepath.FromSlash(vol)+".img")
}

// sourceFile is the emulator's backing file of a "region/name" volume.
func (e *env) sourceFile(vol string) string {
	f := e.emu.VolumeFile(e.ids[vol])
	if f == "" {
		e.t.Fatalf("no backing file for %s", vol)
	}
	return f
}

// change overwrites n random 4 KiB blocks of a source volume (within its
// first 256 MiB, where its data is), as an application on it would.
func (e *env) change(vol string, n int) {
	f, err := os.OpenFile(e.sourceFile(vol), os.O_WRONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for i := 0; i < n; i++ {
		rand.Read(buf)
		var off [8]byte
		rand.Read(off[:])
		block := int64(uint64(off[0])|uint64(off[1])<<8) % (256 << 20 >> 12)
		if _, err := f.WriteAt(buf, block<<12); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		e.t.Fatal(err)
	}
}

// result is one finished script run.
type result struct {
	code   int
	stdout string
	stderr string
	dur    time.Duration
}

// script prepares scripts/NAME with args, the built binaries and this
// env's config. The caller starts it.
func (e *env) script(name string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(e.t), "scripts", name)}, args...)...)
	cmd.Env = append(os.Environ(), "DOSVOB_BIN="+e.bin, "TMPDIR="+e.dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return cmd, &stdout, &stderr
}

func wait(cmd *exec.Cmd, stdout, stderr *bytes.Buffer, start time.Time) result {
	err := cmd.Wait()
	r := result{stdout: stdout.String(), stderr: stderr.String(), dur: time.Since(start)}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				r.code = 128 + int(ws.Signal())
			}
		} else {
			r.code = -1
			r.stderr += "\n(start: " + err.Error() + ")"
		}
	}
	return r
}

// start starts a command from script; its result arrives on the channel
// when it ends.
func (e *env) start(cmd *exec.Cmd, stdout, stderr *bytes.Buffer) <-chan result {
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan result, 1)
	go func() { done <- wait(cmd, stdout, stderr, start) }()
	return done
}

// backup runs backup-all.sh to completion with extra options.
func (e *env) backup(opts ...string) result {
	args := append([]string{"--config", e.conf, "--keep", "3"}, opts...)
	cmd, stdout, stderr := e.script("backup-all.sh", append(args, e.backups)...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	return wait(cmd, stdout, stderr, start)
}

func (e *env) mustBackup(opts ...string) result {
	r := e.backup(opts...)
	if r.code != 0 {
		e.t.Fatalf("backup-all.sh exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
	}
	return r
}

// slowSSH writes an ssh wrapper that throttles the delta stream to rate
// bytes per second, so that a test can act while a transfer is under way.
func (e *env) slowSSH(rate string) string {
	p := filepath.Join(e.dir, "slow-ssh")
	writeFile(e.t, p, "#!/bin/bash\nset -o pipefail\nssh \"$@\" | pv -q -L "+rate+"\n", 0o755)
	return p
}

// checkImages asserts that every selected volume's image is byte-identical
// to its source volume (the snapshot was taken from it, and nothing changed
// since), and that the excluded volume has no image.
func (e *env) checkImages() {
	for _, v := range sourceVolumes {
		if a, b := digest(e.t, e.image(v)), digest(e.t, e.sourceFile(v)); a != b {
			e.t.Errorf("image of %s differs from the volume: xxhash %s, want %s", v, a, b)
		}
	}
	if _, err := os.Stat(e.image("fra1/scratch")); err == nil {
		e.t.Errorf("the excluded volume fra1/scratch was backed up")
	}
}

// digests returns the digest of every selected volume's image ("" when it
// does not exist).
func (e *env) digests() map[string]string {
	m := map[string]string{}
	for _, v := range sourceVolumes {
		if _, err := os.Stat(e.image(v)); err == nil {
			m[v] = digest(e.t, e.image(v))
		}
	}
	return m
}

func digest(t *testing.T, name string) string {
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// xxhash: these are 1 GiB images compared many times, and equality
	// between our own files needs no cryptographic hash.
	h := xxhash.New()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(h, f, buf); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

// checkNothingLeft asserts that the account holds exactly what it held
// before dosvob ran, plus the resources in extra (a restored volume), and
// that nothing of a run is left in the state directory's key files.
func (e *env) checkNothingLeft(extraVolumes ...string) {
	// Teardown waits for detaches; give the emulator's asynchronous
	// completions a moment to settle before comparing.
	var got doemu.State
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = e.emu.State()
		if e.sameAsInitial(got, extraVolumes) == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if diff := e.sameAsInitial(got, extraVolumes); diff != "" {
		e.t.Errorf("the account is not as before the run: %s", diff)
	}
}

// sameAsInitial compares a state with the initial one; it returns "" when
// they match, else what differs. Volumes named in extra may be new, but
// must be detached. The tag list may have gained dosvob's own tags (a tag
// is no resource and costs nothing), never lost one.
func (e *env) sameAsInitial(got doemu.State, extra []string) string {
	var diffs []string
	var vols []doemu.Volume
	for _, v := range got.Volumes {
		if slices.Contains(extra, v.Region+"/"+v.Name) {
			if len(v.DropletIDs) != 0 {
				diffs = append(diffs, fmt.Sprintf("restored volume %s is still attached to %v", v.Name, v.DropletIDs))
			}
			continue
		}
		vols = append(vols, v)
	}
	if !reflect.DeepEqual(vols, e.initial.Volumes) {
		diffs = append(diffs, fmt.Sprintf("volumes %s, want %s", volNames(vols), volNames(e.initial.Volumes)))
	}
	if !reflect.DeepEqual(got.Snapshots, e.initial.Snapshots) {
		diffs = append(diffs, fmt.Sprintf("snapshots %+v, want %+v", got.Snapshots, e.initial.Snapshots))
	}
	if !reflect.DeepEqual(got.Droplets, e.initial.Droplets) {
		var names []string
		for _, d := range got.Droplets {
			names = append(names, d.Name+"("+d.Status+")")
		}
		diffs = append(diffs, fmt.Sprintf("droplets %v, want %d droplets as seeded", names, len(e.initial.Droplets)))
	}
	if !reflect.DeepEqual(got.Keys, e.initial.Keys) {
		diffs = append(diffs, fmt.Sprintf("ssh keys %+v, want %+v", got.Keys, e.initial.Keys))
	}
	for _, tag := range e.initial.Tags {
		if !slices.Contains(got.Tags, tag) {
			diffs = append(diffs, fmt.Sprintf("the user's tag %q is gone", tag))
		}
	}
	for _, tag := range got.Tags {
		if !slices.Contains(e.initial.Tags, tag) && !strings.HasPrefix(tag, "dosvob-") {
			diffs = append(diffs, fmt.Sprintf("unexpected tag %q", tag))
		}
	}
	return strings.Join(diffs, "; ")
}

func volNames(vs []doemu.Volume) string {
	var s []string
	for _, v := range vs {
		s = append(s, fmt.Sprintf("%s/%s(%s, attached %v)", v.Region, v.Name, v.ID, v.DropletIDs))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// descendants lists the processes below pid whose command name is comm.
func descendants(pid int, comm string) []int {
	parent := map[int]int{}
	name := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		p, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[p] = pp
		name[p] = s[open+1 : close]
	}
	var out []int
	for p := range parent {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				if comm == "" || name[p] == comm {
					out = append(out, p)
				}
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// waitFor polls until descendants of pid named comm exist, and returns
// them; it fails the test after timeout.
func (e *env) waitFor(pid int, comm string, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ps := descendants(pid, comm); len(ps) > 0 {
			return ps
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("no %s process below pid %d after %v", comm, pid, timeout)
	return nil
}

// manifest reads an image's manifest.
func manifest(t *testing.T, img string) map[string]any {
	b, err := os.ReadFile(img + ".dosvob/manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func versions(t *testing.T, img string) []any {
	v, _ := manifest(t, img)["versions"].([]any)
	return v
}
