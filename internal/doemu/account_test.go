package doemu

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"
)

func TestSampleAccount(t *testing.T) {
	acct, err := LoadAccount("testdata/sample-account.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := newEmu(t, Options{Account: acct, NoLoopDevices: true})
	c := client(t, e, testToken)
	st := e.State()

	if len(st.Volumes) != 4 || len(st.Snapshots) != 1 || len(st.Droplets) != 1 || len(st.Keys) != 1 {
		t.Fatalf("state %+v", st)
	}
	if !reflect.DeepEqual(st.Tags, []string{"prod", "web"}) {
		t.Fatalf("tags %v", st.Tags)
	}
	// Sorted by region, then name.
	var names []string
	for _, v := range st.Volumes {
		names = append(names, v.Region+"/"+v.Name)
	}
	if !reflect.DeepEqual(names, []string{"fra1/dosvob-ephemeral-data", "fra1/pgdata", "nyc1/media", "nyc1/pgdata"}) {
		t.Fatalf("volumes %v", names)
	}
	pg, media := st.Volumes[3], st.Volumes[2]

	// Content: 4 MiB of seeded random data; text at an offset.
	got := readAt(t, e.VolumeFile(pg.ID), 0, 4<<20+16)
	if bytes.Count(got[:4<<20], []byte{0}) > 4<<20/100 || !bytes.Equal(got[4<<20:], make([]byte, 16)) {
		t.Fatal("pgdata does not hold 4 MiB of random data followed by zeros")
	}
	if got := debugfsCat(t, e.VolumeFile(media.ID), "/photos/2026/beach.txt"); got != "a photo of a beach\n" {
		t.Fatalf("media's beach.txt holds %q", got)
	}
	if media.FilesystemType != "ext4" {
		t.Fatalf("media filesystem_type %q", media.FilesystemType)
	}
	if n, _ := allocatedBytes(e.VolumeFile(media.ID)); n > 128<<20 {
		t.Fatalf("the ext4 volume occupies %d bytes: not sparse", n)
	}
	// The same seed gives the same bytes every time (the demo relies on it).
	e2 := newEmu(t, Options{Account: acct, NoLoopDevices: true})
	if !bytes.Equal(readAt(t, e2.VolumeFile(e2.State().Volumes[3].ID), 0, 4<<20), got[:4<<20]) {
		t.Fatal("seeded content differs between two emulators")
	}

	// The snapshot is of nyc1's pgdata and holds its content.
	s := st.Snapshots[0]
	if s.ResourceID != pg.ID || s.Region != "nyc1" || s.MinDiskSize != 1 || !reflect.DeepEqual(s.Tags, []string{"prod"}) {
		t.Fatalf("snapshot %+v", s)
	}
	if !bytes.Equal(readAt(t, e.SnapshotFile(s.ID), 0, 4<<20), readAt(t, e.VolumeFile(pg.ID), 0, 4<<20)) {
		t.Fatal("snapshot content differs from its volume")
	}

	// The droplet is active at once, with media attached and its device.
	d := st.Droplets[0]
	if d.Status != "active" || d.IPv4 == "" || !reflect.DeepEqual(d.VolumeIDs, []string{media.ID}) ||
		!reflect.DeepEqual(d.SSHKeyIDs, []int{st.Keys[0].ID}) || !reflect.DeepEqual(media.DropletIDs, []int{d.ID}) {
		t.Fatalf("droplet %+v, media %+v", d, media)
	}
	if target, err := os.Readlink(e.DevicePath(d.ID, "media")); err != nil || target != e.VolumeFile(media.ID) {
		t.Fatalf("media device -> %q %v", target, err)
	}

	// Seeded resources are older than anything made later, and the API
	// shows the same.
	if !pg.CreatedAt.Before(time.Now().Add(-30 * time.Minute)) {
		t.Fatalf("seeded volume created at %v", pg.CreatedAt)
	}
	vols, _, err := c.Storage.ListVolumes(ctx(t), &godo.ListVolumeParams{Name: "pgdata"})
	if err != nil || len(vols) != 2 {
		t.Fatalf("pgdata volumes %d %v", len(vols), err)
	}
	if _, _, err := c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: pg.ID, Name: "now"}); err != nil {
		t.Fatalf("a seeded snapshot an hour old rate-limited a new one: %v", err)
	}

	// State is a deep copy: changing it changes nothing.
	st.Volumes[0].Tags = append(st.Volumes[0].Tags, "x")
	st.Droplets[0].VolumeIDs[0] = "x"
	again := e.State()
	if reflect.DeepEqual(again.Droplets[0].VolumeIDs, []string{"x"}) || len(again.Volumes[0].Tags) != 0 {
		t.Fatal("State shares memory with the emulator")
	}
}

// debugfsCat reads a file out of an ext4 image without mounting it.
func debugfsCat(t *testing.T, image, path string) string {
	out, err := exec.Command("debugfs", "-R", "cat "+path, image).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

func TestLoadAccountErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := LoadAccount(write("typo.yaml", "volumes:\n  - name: a\n    regoin: nyc1\n")); err == nil || !strings.Contains(err.Error(), "regoin") {
		t.Fatalf("unknown field: %v", err)
	}
	for _, tc := range []struct{ seed, msg string }{
		{"volumes:\n  - {name: Bad, region: nyc1, size_gigabytes: 1}\n", `seed volume "Bad"`},
		{"volumes:\n  - {name: a, region: nyc1, size_gigabytes: 1, file: missing.img}\n", "missing.img"},
		{"snapshots:\n  - {name: s, volume: nope}\n", `no seeded volume "nope"`},
		{"droplets:\n  - {name: d, region: nyc1, size: s-1vcpu-1gb, ssh_keys: [nope]}\n", `no seeded key "nope"`},
		{"droplets:\n  - {name: d, region: nyc1, size: s-1vcpu-1gb, volumes: [nope]}\n", "Invalid volume allocations"},
		{"ssh_keys:\n  - {name: k, public_key: junk}\n", "Key invalid"},
		{"volumes:\n  - {name: a, region: nyc1, size_gigabytes: 1, filesystem: btrfs}\n", "only ext4"},
		{"volumes:\n  - {name: a, region: nyc1, size_gigabytes: 1, files: {a: b}}\n", "files need a filesystem"},
		{"volumes:\n  - {name: a, region: nyc1, size_gigabytes: 1, filesystem: ext4, files: {../x: b}}\n", "stay inside"},
		{"volumes:\n  - {name: a, region: nyc1, size_gigabytes: 1, filesystem: ext4, content: {bytes: 1}}\n", "only one of"},
	} {
		a, err := LoadAccount(write("seed.yaml", tc.seed))
		if err != nil {
			t.Fatal(err)
		}
		_, err = New(Options{Token: testToken, Account: a})
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("seed %q: got %v, want %q", tc.seed, err, tc.msg)
		}
	}

	// JSON works as well, and file: copies a raw image relative to the seed.
	img := make([]byte, 1<<20)
	copy(img[4096:], "hello from a file")
	if err := os.WriteFile(filepath.Join(dir, "disk.img"), img, 0o600); err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(map[string]any{"volumes": []any{map[string]any{"name": "f", "region": "sfo3", "size_gigabytes": 1, "file": "disk.img"}}})
	a, err := LoadAccount(write("seed.json", string(js)))
	if err != nil {
		t.Fatal(err)
	}
	e := newEmu(t, Options{Account: a})
	v := e.State().Volumes[0]
	if got := readAt(t, e.VolumeFile(v.ID), 4096, 17); string(got) != "hello from a file" {
		t.Fatalf("file-backed volume holds %q", got)
	}
	if fi, _ := os.Stat(e.VolumeFile(v.ID)); fi.Size() != 1<<30 {
		t.Fatalf("file-backed volume is %d bytes", fi.Size())
	}
}

func TestControlEndpoints(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	if _, _, err := c.Tags.Create(ctx(t), &godo.TagCreateRequest{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	var st State
	if resp := rawGet(t, e, "/emulator/state", &st); resp.StatusCode != 200 || !reflect.DeepEqual(st.Tags, []string{"x"}) {
		t.Fatalf("state %d %+v", resp.StatusCode, st)
	}
	var calls struct{ Calls []Call }
	rawGet(t, e, "/emulator/calls", &calls)
	if len(calls.Calls) != 1 || calls.Calls[0].Path != "/v2/tags" || calls.Calls[0].Status != 201 {
		t.Fatalf("calls %+v", calls.Calls)
	}
	req, _ := c.NewRequest(ctx(t), http.MethodPost, "emulator/faults", FaultSpec{Path: "/v2/tags", Status: 500, Delay: "10ms"})
	if _, err := c.Do(ctx(t), req, nil); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Tags.List(ctx(t), nil)
	apiErr(t, err, http.StatusInternalServerError, "Server Error")
	req, _ = c.NewRequest(ctx(t), http.MethodPost, "emulator/faults", FaultSpec{Path: "/v2/tags", Delay: "soon"})
	_, err = c.Do(ctx(t), req, nil)
	apiErr(t, err, http.StatusUnprocessableEntity, "delay")
	req, _ = c.NewRequest(ctx(t), http.MethodPost, "emulator/faults", FaultSpec{Path: "/v2/tags", Status: 503})
	if _, err := c.Do(ctx(t), req, nil); err != nil {
		t.Fatal(err)
	}
	req, _ = c.NewRequest(ctx(t), http.MethodDelete, "emulator/faults", nil)
	if _, err := c.Do(ctx(t), req, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Tags.List(ctx(t), nil); err != nil {
		t.Fatalf("fault survived DELETE /emulator/faults: %v", err)
	}
	// The control endpoints need the token too.
	_, err = client(t, e, "nope").Do(ctx(t), req, nil)
	apiErr(t, err, http.StatusUnauthorized, "")
}
