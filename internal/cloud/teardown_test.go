package cloud

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/doemu"
)

const tdRun = "20260101-000000-abcdef"

// ids finds the emulator's ids of a droplet and a volume by name.
func ids(t *testing.T, s doemu.State, droplet, volume string) (int, string) {
	t.Helper()
	var did int
	var vid string
	for _, d := range s.Droplets {
		if d.Name == droplet {
			did = d.ID
		}
	}
	for _, v := range s.Volumes {
		if v.Name == volume {
			vid = v.ID
		}
	}
	if did == 0 || vid == "" {
		t.Fatalf("no droplet %q or volume %q in %+v", droplet, volume, s)
	}
	return did, vid
}

// A restore's kept volume becomes the user's: once the user has attached
// it to a droplet of theirs, a teardown of the restore run neither waits
// for it, nor detaches it, nor fails because of it; it deletes the run's
// own droplet and returns at once.
func TestTeardownKeptVolumeOnUsersDroplet(t *testing.T) {
	acct := &doemu.Account{
		Volumes: []doemu.SeedVolume{{Name: "restored", Region: "fra1", SizeGigabytes: 1}},
		Droplets: []doemu.SeedDroplet{
			{Name: "app", Region: "fra1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64", Volumes: []string{"restored"}},
			{Name: DropletName(tdRun, "fra1", 0), Region: "fra1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64", Tags: Tags(tdRun)},
		},
	}
	v := newEnv(t, envOpts{account: acct})
	s := v.emu.State()
	app, restored := ids(t, s, "app", "restored")
	runDroplet, _ := ids(t, s, DropletName(tdRun, "fra1", 0), "restored")
	st := &State{RunID: tdRun, Mode: ModeRestore,
		Droplets: []DropletState{{RunDroplet: RunDroplet{ID: runDroplet, Name: DropletName(tdRun, "fra1", 0)}}},
		Volumes:  []VolumeState{{RunVolume: RunVolume{CopyName: "restored", CopyID: restored, Kept: true, Region: "fra1"}}}}

	start := time.Now()
	err := v.api.Teardown(context.Background(), Scope{RunID: tdRun, State: st},
		TeardownOptions{DetachWait: 4 * time.Second, ActionWait: 30 * time.Second, Logf: v.log.logf})
	if err != nil {
		t.Fatalf("teardown of the restore run: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("teardown took %v: it waited for the user's attachment", d)
	}
	after := v.emu.State()
	for _, vol := range after.Volumes {
		if vol.ID == restored && !slices.Equal(vol.DropletIDs, []int{app}) {
			t.Errorf("the kept volume is attached to %v, want the user's droplet %d", vol.DropletIDs, app)
		}
	}
	if len(after.Droplets) != 1 || after.Droplets[0].ID != app {
		t.Errorf("droplets after teardown: %+v, want only the user's app", after.Droplets)
	}
}

// --detach-wait bounds the whole wait for detaches: here a copy stays
// attached to the run's deleted droplet for 20 s and the detach dosvob
// sends fails, yet a teardown told to wait 2 s returns within about that,
// listing the copy as left.
func TestTeardownDetachWaitBound(t *testing.T) {
	copyName := CopyName(tdRun, 0)
	acct := &doemu.Account{
		Volumes: []doemu.SeedVolume{{Name: copyName, Region: "fra1", SizeGigabytes: 1, Tags: Tags(tdRun)}},
		Droplets: []doemu.SeedDroplet{{Name: DropletName(tdRun, "fra1", 0), Region: "fra1", Size: "s-1vcpu-1gb",
			Image: "ubuntu-24-04-x64", Tags: Tags(tdRun), Volumes: []string{copyName}}},
	}
	v := newEnv(t, envOpts{account: acct})
	v.emu.InjectFault(doemu.Fault{Method: "DELETE", Path: `/v2/droplets/[0-9]+`, LingerDetach: 20 * time.Second})
	v.emu.InjectFault(doemu.Fault{Method: "POST", Path: `/v2/volumes/[^/]+/actions`, ActionErrored: true, Times: 100})
	start := time.Now()
	err := v.api.Teardown(context.Background(), Scope{RunID: tdRun},
		TeardownOptions{DetachWait: 2 * time.Second, ActionWait: 30 * time.Second, Logf: v.log.logf})
	d := time.Since(start)
	var ie *IncompleteError
	if !errors.As(err, &ie) || len(ie.Left) != 1 || ie.Left[0].Name != copyName {
		t.Fatalf("teardown: %v, want the copy listed as left", err)
	}
	if d > 4*time.Second {
		t.Errorf("teardown with a detach wait of 2s took %v", d)
	}
}
