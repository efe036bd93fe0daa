package cloud

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/digitalocean/godo"

	"github.com/dosvob/dosvob/internal/doemu"
	"github.com/dosvob/dosvob/internal/sshx"
)

// randomAccount makes a user's account: volumes, snapshots, droplets and
// keys, some with names or tags that merely resemble dosvob's.
func randomAccount(t *testing.T, r *rand.Rand) *doemu.Account {
	a := &doemu.Account{}
	regions := []string{"fra1", "ams3", "nyc1"}
	lookAlikeNames := []string{"dosvob-ephemeral-data", "dosvob-ephemeral", "dosvob-ephemeralx", "data-dosvob-ephemeral-1", "dosvob-run-1"}
	lookAlikeTags := [][]string{nil, {"dosvob-ephemeral"}, {"DOSVOB-RUN-20260101-000000-abcdef"}, {"dosvob-ephemeral-x"}, {"prod", "dosvob"}}
	nv := 1 + r.IntN(6)
	for i := 0; i < nv; i++ {
		name := fmt.Sprintf("vol-%d", i)
		var tags []string
		switch r.IntN(4) {
		case 0: // a name like ours, never our tag
			name = lookAlikeNames[r.IntN(len(lookAlikeNames))] + "-" + strconv.Itoa(i)
			tags = []string{"prod"}
		case 1: // our tag, never our prefix
			tags = lookAlikeTags[r.IntN(len(lookAlikeTags))]
		}
		a.Volumes = append(a.Volumes, doemu.SeedVolume{Name: name, Region: regions[r.IntN(len(regions))], SizeGigabytes: int64(1 + r.IntN(3)), Tags: tags})
	}
	for i := 0; i < r.IntN(4); i++ {
		src := a.Volumes[r.IntN(len(a.Volumes))]
		name := fmt.Sprintf("snap-%d", i)
		if r.IntN(2) == 0 {
			name = "dosvob-ephemeral-snap-" + strconv.Itoa(i) // prefix, but no tag
		}
		tags := []string{}
		if r.IntN(2) == 0 && name[:4] == "snap" {
			tags = []string{"dosvob-ephemeral"} // tag, but no prefix
		}
		a.Snapshots = append(a.Snapshots, doemu.SeedSnapshot{Name: name, Volume: src.Name, Region: src.Region, Tags: tags})
	}
	keyNames := []string{"laptop", "dosvob-ephemeral-laptop", "dosvob-ephemeral-20260101-000000-ABCDEF", "dosvob-ephemeral-20260101-000000-abcdef-old", "ci"}
	for i := 0; i < r.IntN(4); i++ {
		k, err := sshx.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		a.SSHKeys = append(a.SSHKeys, doemu.SeedKey{Name: keyNames[i], PublicKey: k.AuthorizedKey()})
	}
	for i := 0; i < r.IntN(3); i++ {
		d := doemu.SeedDroplet{Name: fmt.Sprintf("web-%d", i), Region: regions[r.IntN(len(regions))], Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64"}
		switch r.IntN(3) {
		case 0:
			d.Name = "dosvob-ephemeral-web-" + strconv.Itoa(i)
		case 1:
			d.Tags = []string{"dosvob-ephemeral", "web"}
		}
		for _, v := range a.Volumes {
			if v.Region == d.Region && r.IntN(3) == 0 && !attachedSomewhere(a, v.Name, v.Region) {
				d.Volumes = append(d.Volumes, v.Name)
			}
		}
		a.Droplets = append(a.Droplets, d)
	}
	return a
}

func attachedSomewhere(a *doemu.Account, name, region string) bool {
	for _, d := range a.Droplets {
		if d.Region != region {
			continue
		}
		for _, v := range d.Volumes {
			if v == name {
				return true
			}
		}
	}
	return false
}

// leaveCrashedRun makes what a run killed at a random point leaves:
// dosvob-marked volumes, snapshots, droplets (with attachments) and a key,
// created straight through the API.
func leaveCrashedRun(t *testing.T, v *env, r *rand.Rand, now time.Time) {
	ctx := context.Background()
	g := v.api.Godo()
	runID := NewRunID(now)
	tags := Tags(runID)
	if r.IntN(2) == 0 {
		tags = []string{"DOSVOB-EPHEMERAL", RunTag(runID)} // tags compare case-insensitively
	}
	var keyID int
	{ // the first thing a run makes
		k, _ := sshx.NewKey()
		gk, _, err := g.Keys.Create(ctx, &godo.KeyCreateRequest{Name: KeyName(runID), PublicKey: k.AuthorizedKey()})
		if err != nil {
			t.Fatal(err)
		}
		keyID = gk.ID
	}
	var droplet *godo.Droplet
	if r.IntN(3) > 0 {
		req := &godo.DropletCreateRequest{Name: DropletName(runID, "fra1", 0), Region: "fra1", Size: "s-1vcpu-512mb-10gb",
			Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"}, Tags: tags}
		if keyID != 0 {
			req.SSHKeys = []godo.DropletCreateSSHKey{{ID: keyID}}
		}
		d, _, err := g.Droplets.Create(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		droplet = d
		if _, err := v.api.WaitDropletActive(ctx, d.ID, 0, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	vols, _, err := g.Storage.ListVolumes(ctx, &godo.ListVolumeParams{Region: "fra1"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < r.IntN(3); i++ {
		v0 := godo.Volume{ID: ""}
		for _, x := range vols {
			if !IsOurs(x.Name, x.Tags) {
				v0 = x
				break
			}
		}
		name := CopyName(runID, i)
		var snapID string
		if v0.ID != "" && r.IntN(2) == 0 {
			s, _, err := g.Storage.CreateSnapshot(ctx, &godo.SnapshotCreateRequest{VolumeID: v0.ID, Name: name, Tags: tags})
			if err != nil {
				t.Fatal(err)
			}
			snapID = s.ID
		}
		if r.IntN(3) == 0 {
			continue // the run died after the snapshot
		}
		req := volumeCreate{Name: name, Region: "fra1", SizeGigaBytes: 1, Tags: tags}
		if snapID != "" {
			req.SizeGigaBytes = v0.SizeGigaBytes
			req.SnapshotID = snapID
		}
		cv, err := v.api.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if droplet != nil && r.IntN(2) == 0 {
			if err := v.api.Attach(ctx, cv.ID, droplet.ID, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Property: for many random accounts with leftovers of crashed runs, under
// injected API faults, teardown --all (repeated until it succeeds) leaves
// exactly the user's resources, unchanged. Seeds are reproducible:
// DOSVOB_PROPERTY_SEED=n runs one, DOSVOB_PROPERTY_N sets how many.
func TestTeardownProperty(t *testing.T) {
	n := 40
	if s := os.Getenv("DOSVOB_PROPERTY_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	first := 1
	if s := os.Getenv("DOSVOB_PROPERTY_SEED"); s != "" {
		first, _ = strconv.Atoi(s)
		n = 1
	}
	paths := []struct{ method, path string }{
		{"DELETE", `/v2/droplets/[0-9]+`}, {"DELETE", `/v2/volumes/[^/]+`}, {"DELETE", `/v2/snapshots/[^/]+`},
		{"DELETE", `/v2/account/keys/[0-9]+`}, {"GET", `/v2/volumes`}, {"GET", `/v2/droplets`}, {"GET", `/v2/volumes/[^/]+`},
		{"GET", `/v2/snapshots`}, {"GET", `/v2/account/keys`}, {"POST", `/v2/volumes/[^/]+/actions`},
	}
	for seed := first; seed < first+n; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
			v := newEnv(t, envOpts{account: randomAccount(t, r)})
			before := v.emu.State()
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for i := 0; i < 1+r.IntN(3); i++ {
				leaveCrashedRun(t, v, r, now.Add(time.Duration(i)*time.Hour))
			}
			vols, snaps, drops, keys := ourCounts(v.emu.State())
			if keys == 0 {
				t.Fatal("no leftovers were made: the test would prove nothing")
			}
			t.Logf("leftovers: %d volumes, %d snapshots, %d droplets, %d keys", vols, snaps, drops, keys)
			for i := 0; i < 1+r.IntN(4); i++ {
				p := paths[r.IntN(len(paths))]
				f := doemu.Fault{Method: p.method, Path: p.path, Nth: 1 + r.IntN(3)}
				switch r.IntN(5) {
				case 0:
					f.Status = 500
				case 1:
					f.Status, f.AfterCommit = 500, true
				case 2:
					f.Status, f.RetryAfter = 429, "0"
				case 3:
					f.Status, f.Times = 503, 2+r.IntN(8)
				case 4:
					f = doemu.Fault{Method: "DELETE", Path: `/v2/droplets/[0-9]+`, LingerDetach: time.Duration(200+r.IntN(800)) * time.Millisecond}
				}
				v.emu.InjectFault(f)
			}
			teardownUntilClean(t, v)
			assertUserStateUnchanged(t, before, v.emu.State())
			if vols, snaps, drops, keys := ourCounts(v.emu.State()); vols+snaps+drops+keys != 0 {
				t.Fatalf("left: %d volumes, %d snapshots, %d droplets, %d keys", vols, snaps, drops, keys)
			}
		})
	}
}
