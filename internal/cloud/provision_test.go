package cloud

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/doemu"
	"github.com/dosvob/dosvob/internal/sshx"
)

func addUserKeys(t *testing.T, a *doemu.Account) {
	for _, name := range []string{"laptop", "dosvob-ephemeral-laptop", "dosvob-ephemeral-20260101-000000-zzzzzz"} {
		k, err := sshx.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		a.SSHKeys = append(a.SSHKeys, doemu.SeedKey{Name: name, PublicKey: k.AuthorizedKey()})
	}
	a.Droplets = append(a.Droplets, doemu.SeedDroplet{Name: "db", Region: "nyc1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64",
		Volumes: []string{"dosvob-ephemeral-data"}, SSHKeys: []string{"laptop"}})
}

func fileSHA(t *testing.T, p string) string { return prefixSHA(t, p, 1<<62) }

func prefixSHA(t *testing.T, p string, n int64) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// The whole run: 17 volumes in fra1 (more than one droplet may attach) and
// 2 in ams3; the JSON matches the account; the real ssh client gets in with
// the printed key and known_hosts; every device holds the snapshot's bytes;
// teardown leaves exactly the user's resources.
func TestProvisionFullRun(t *testing.T) {
	acct := userAccount(17, 2)
	addUserKeys(t, acct)
	v := newEnv(t, envOpts{account: acct, ssh: true})
	sshBin := sshClient(t)
	ctx := context.Background()
	before := v.emu.State()

	p := v.provisioner(func(p *Provisioner) {
		p.Filter = Filter{Exclude: []string{"dosvob-*", "tagged-*"}}
		p.PatchBinary = v.bin
	})
	run, err := p.Provision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(run, "", "  ")
	noToken(t, string(out))

	if run.Mode != ModeBackup || !ValidRunID(run.RunID) || len(run.Volumes) != 19 {
		t.Fatalf("run: %s", out)
	}
	// Droplets: two in fra1 (15 + 2 volumes), one in ams3, sizes as chosen.
	st := v.emu.State()
	regions := map[string]int{}
	for _, d := range run.Droplets {
		regions[d.Region]++
	}
	if regions["fra1"] != 2 || regions["ams3"] != 1 || len(run.Droplets) != 3 {
		t.Fatalf("droplets per region: %v", regions)
	}
	emuDroplets := map[int]doemu.Droplet{}
	for _, d := range st.Droplets {
		emuDroplets[d.ID] = d
	}
	for _, d := range run.Droplets {
		ed, ok := emuDroplets[d.ID]
		if !ok {
			t.Fatalf("droplet %d of the JSON does not exist", d.ID)
		}
		if ed.Name != d.Name || ed.IPv4 != d.Address || ed.Region != d.Region || !IsOurs(ed.Name, ed.Tags) || !HasTag(ed.Tags, RunTag(run.RunID)) {
			t.Errorf("droplet %d: JSON %+v, account %+v", d.ID, d, ed)
		}
		wantSize := map[string]string{"fra1": "s-1vcpu-512mb-10gb", "ams3": "s-1vcpu-1gb"}[d.Region]
		if ed.Size != wantSize {
			t.Errorf("droplet %s has size %s, want the region's cheapest %s", d.Name, ed.Size, wantSize)
		}
		if len(ed.VolumeIDs) > MaxVolumesPerDroplet {
			t.Errorf("droplet %s has %d volumes", d.Name, len(ed.VolumeIDs))
		}
		if !strings.HasSuffix(d.RemoteHashPath, "/opt/dosvob/"+run.RunID+"/dosvob-hash") ||
			!strings.HasSuffix(d.RemotePatchPath, "/opt/dosvob/"+run.RunID+"/dosvob-patch") {
			t.Errorf("remote paths %q %q", d.RemoteHashPath, d.RemotePatchPath)
		}
	}
	// Volumes: each copy exists, attached where the JSON says, tagged;
	// the snapshots are gone.
	emuVols := map[string]doemu.Volume{}
	for _, ev := range st.Volumes {
		emuVols[ev.ID] = ev
	}
	for _, rv := range run.Volumes {
		ev, ok := emuVols[rv.CopyID]
		if !ok {
			t.Fatalf("copy %s of the JSON does not exist", rv.CopyID)
		}
		src := emuVols[rv.SourceID]
		if ev.Name != rv.CopyName || !IsOurs(ev.Name, ev.Tags) || !slices.Equal(ev.DropletIDs, []int{rv.DropletID}) ||
			ev.FilesystemType != "" || src.Name != rv.SourceName || rv.SizeBytes != src.SizeGigabytes<<30 || rv.SnapshotID != "" ||
			rv.SnapshotCreatedAt.IsZero() {
			t.Errorf("volume: JSON %+v, account %+v (source %+v)", rv, ev, src)
		}
	}
	for _, s := range st.Snapshots {
		if IsOurs(s.Name, s.Tags) {
			t.Errorf("snapshot %s left after its copy was made", s.Name)
		}
	}
	keyFile, err := os.Stat(run.PrivateKeyPath)
	if err != nil || keyFile.Mode().Perm() != 0o600 {
		t.Fatalf("private key file: %v %v", keyFile, err)
	}

	// The real OpenSSH client, with nothing but the run's key and
	// known_hosts, reads every device: it holds the snapshot's bytes
	// (the source volume has not changed since).
	drop := map[int]RunDroplet{}
	for _, d := range run.Droplets {
		drop[d.ID] = d
	}
	for _, d := range run.Droplets {
		// One connection per droplet: hash the first 20 MiB of each of its
		// devices (the seeded data lies within the first 17 MiB).
		script := "set -e; test -x " + sshx.Quote(d.RemoteHashPath)
		var want []string
		for _, rv := range run.Volumes {
			if rv.DropletID == d.ID {
				script += "; head -c 20971520 " + sshx.Quote(rv.DevicePath) + " | sha256sum"
				want = append(want, prefixSHA(t, v.emu.VolumeFile(rv.SourceID), 20<<20))
			}
		}
		cmd := exec.Command(sshBin, "-F", "none", "-i", run.PrivateKeyPath,
			"-o", "UserKnownHostsFile="+run.KnownHostsPath, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
			"-o", "GlobalKnownHostsFile=/dev/null", "-p", strconv.Itoa(d.Port), d.User+"@"+d.Address, script)
		got, err := cmd.Output()
		if err != nil {
			t.Fatalf("ssh to %s: %v", d.Address, err)
		}
		lines := strings.Split(strings.TrimSpace(string(got)), "\n")
		if len(lines) != len(want) {
			t.Fatalf("droplet %s: %d hashes, want %d", d.Name, len(lines), len(want))
		}
		for i := range want {
			if !strings.HasPrefix(lines[i], want[i]) {
				t.Errorf("droplet %s device %d: sha256 %q, want %s", d.Name, i, lines[i], want[i])
			}
		}
	}
	if fileSHA(t, drop[run.Volumes[0].DropletID].RemoteHashPath) != fileSHA(t, v.bin) {
		// The emulated droplet's root is a local directory.
		t.Error("uploaded dosvob-hash differs from the local binary")
	}

	// The state file describes the same run.
	s, err := v.store().Load(run.RunID)
	if err != nil || s.Status != "ready" {
		t.Fatalf("state: %+v %v", s, err)
	}
	if r2 := s.Run(v.store()); !jsonEqual(t, r2, *run) {
		t.Error("state and printed JSON differ")
	}

	// Another provision leaves this run alone: made by a provision that
	// finished, it cannot be proven dead until it is older than the
	// stale-after bound; then it is stale.
	for _, c := range []struct {
		later time.Duration
		stale bool
	}{{time.Hour, false}, {DefaultStaleAfter + time.Hour, true}} {
		sv, err := v.provisioner(func(p *Provisioner) { p.Now = func() time.Time { return run.CreatedAt.Add(c.later) } }).Survey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(sv.Runs) != 1 || sv.Runs[0].ID != run.RunID || sv.Runs[0].Stale != c.stale || !sv.Runs[0].Local {
			t.Fatalf("survey %v after the run: %+v", c.later, sv.Runs)
		}
	}

	if err := v.api.Teardown(ctx, Scope{RunID: run.RunID, State: s}, TeardownOptions{Logf: v.log.logf}); err != nil {
		t.Fatal(err)
	}
	assertUserStateUnchanged(t, before, v.emu.State())
}

func jsonEqual(t *testing.T, a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// A restore makes a new volume, never tagged or named as dosvob's, that
// teardown detaches but keeps; an existing name is refused.
func TestProvisionRestore(t *testing.T) {
	acct := userAccount(1, 0)
	v := newEnv(t, envOpts{account: acct, ssh: true, loop: true})
	ctx := context.Background()
	before := v.emu.State()

	_, err := v.provisioner(func(p *Provisioner) {
		p.PatchBinary = v.bin
		p.Restore = &RestoreSpec{Name: "data-00", Region: "fra1", SizeGiB: 1}
	}).Provision(ctx)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("restore onto an existing name: %v", err)
	}
	if !reflect_DeepEqual(before, v.emu.State()) {
		t.Fatal("a refused restore changed the account")
	}

	run, err := v.provisioner(func(p *Provisioner) {
		p.PatchBinary = v.bin
		p.Restore = &RestoreSpec{Name: "data-restored", Region: "fra1", SizeGiB: 2}
	}).Provision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if run.Mode != ModeRestore || len(run.Volumes) != 1 || len(run.Droplets) != 1 || !run.Volumes[0].Kept ||
		run.Volumes[0].SizeBytes != 2<<30 || run.Droplets[0].RemotePatchPath == "" {
		t.Fatalf("restore run: %+v", run)
	}
	nv := run.Volumes[0]
	// With loop devices the device is a block device: its size came from
	// blockdev, and it must be the new volume's.
	t.Logf("restore device: %s", nv.DevicePath)
	s, _ := v.store().Load(run.RunID)
	if err := v.api.Teardown(ctx, Scope{RunID: run.RunID, State: s}, TeardownOptions{Logf: v.log.logf}); err != nil {
		t.Fatal(err)
	}
	// Everything as before, plus the new volume, detached and untagged.
	after := v.emu.State()
	var kept *doemu.Volume
	var rest []doemu.Volume
	for i := range after.Volumes {
		if after.Volumes[i].ID == nv.CopyID {
			kept = &after.Volumes[i]
		} else {
			rest = append(rest, after.Volumes[i])
		}
	}
	if kept == nil || kept.Name != "data-restored" || len(kept.Tags) != 0 || len(kept.DropletIDs) != 0 || kept.SizeGigabytes != 2 {
		t.Fatalf("restored volume: %+v", kept)
	}
	after.Volumes = rest
	assertUserStateUnchanged(t, before, after)
	// A teardown --all later still keeps it.
	if err := v.teardownAll(ctx); err != nil {
		t.Fatal(err)
	}
	if len(v.emu.State().Volumes) != len(before.Volumes)+1 {
		t.Fatal("teardown --all deleted the restored volume")
	}
}

func reflect_DeepEqual(a, b doemu.State) bool { return jsonEqualNoT(a, b) }

func jsonEqualNoT(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// Dry run and planning create nothing.
func TestPlanCreatesNothing(t *testing.T) {
	v := newEnv(t, envOpts{account: userAccount(17, 2)})
	before := v.emu.State()
	p := v.provisioner(func(p *Provisioner) { p.Filter = Filter{Regions: []string{"fra1"}, Exclude: []string{"data-1*"}} })
	plan, err := p.Plan(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if plan.VolumeCount() != 10 || len(plan.Regions) != 1 || plan.Regions[0].Droplets != 1 || plan.Regions[0].Size.Slug != "s-1vcpu-512mb-10gb" {
		t.Fatalf("plan: %+v", plan)
	}
	// 1 droplet * 0.00595 $/h * 2 h + 10 GiB * 0.10/672 * 2 + 10 GiB * 0.06/672
	want := 0.00595*2 + 10*0.10/672*2 + 10*0.06/672
	if d := plan.Total() - want; d > 1e-9 || d < -1e-9 {
		t.Errorf("total %.6f, want %.6f", plan.Total(), want)
	}
	var b strings.Builder
	plan.Print(&b)
	if !strings.Contains(b.String(), "data-00") || !strings.Contains(b.String(), "total") {
		t.Errorf("plan text:\n%s", b.String())
	}
	if _, err := p.Survey(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !reflect_DeepEqual(before, v.emu.State()) {
		t.Fatal("planning changed the account")
	}
	entries, _ := os.ReadDir(filepath.Join(v.root, "runs"))
	if len(entries) != 0 {
		t.Fatal("planning wrote run state")
	}
	_, err = v.provisioner(func(p *Provisioner) { p.Filter = Filter{Include: []string{"nothing-*"}} }).Plan(context.Background(), 1)
	if !errors.Is(err, ErrNothingSelected) {
		t.Errorf("empty selection: %v", err)
	}
}
