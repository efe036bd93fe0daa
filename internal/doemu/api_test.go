package doemu

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/godo"
	"golang.org/x/crypto/ssh"
)

func newPubKey(t *testing.T) (string, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " test@example", priv
}

func TestUnauthorized(t *testing.T) {
	e := newEmu(t, Options{})
	_, _, err := client(t, e, "wrong-token").Account.Get(ctx(t))
	apiErr(t, err, http.StatusUnauthorized, "Unable to authenticate you")
	_, _, err = client(t, e, "").Storage.ListVolumes(ctx(t), nil)
	apiErr(t, err, http.StatusUnauthorized, "Unable to authenticate you")
}

func TestCatalog(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	acct, _, err := c.Account.Get(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if acct.Status != "active" || acct.DropletLimit != 25 || acct.Email == "" {
		t.Fatalf("account %+v", acct)
	}
	regions, _, err := c.Regions.List(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var slugs []string
	for _, r := range regions {
		slugs = append(slugs, r.Slug)
		if !r.Available || len(r.Sizes) == 0 {
			t.Errorf("region %+v", r)
		}
	}
	if !reflect.DeepEqual(slugs, []string{"nyc1", "nyc3", "ams3", "fra1", "sfo3"}) {
		t.Fatalf("regions %v", slugs)
	}
	sizes, _, err := c.Sizes.List(ctx(t), &godo.ListOptions{PerPage: 200})
	if err != nil {
		t.Fatal(err)
	}
	if sizes[0].Slug != "s-1vcpu-512mb-10gb" || sizes[0].PriceMonthly != 4 || sizes[1].PriceMonthly != 6 {
		t.Fatalf("sizes %+v", sizes[:2])
	}
	// The $4 size is not offered in nyc3.
	for _, r := range regions {
		if r.Slug == "nyc3" && slices.Contains(r.Sizes, "s-1vcpu-512mb-10gb") {
			t.Fatal("nyc3 offers the $4 size")
		}
	}
}

func TestVolumes(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	v, resp, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{
		Name: "data", Region: "nyc1", SizeGigaBytes: 1, Description: "my data", Tags: []string{"prod"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || v.Name != "data" || v.Region.Slug != "nyc1" ||
		v.SizeGigaBytes != 1 || !reflect.DeepEqual(v.Tags, []string{"prod"}) || len(v.DropletIDs) != 0 {
		t.Fatalf("created %d %+v", resp.StatusCode, v)
	}
	if resp.Rate.Limit != DefaultRequestLimit || resp.Rate.Remaining != DefaultRequestLimit-1 || resp.Rate.Reset.IsZero() {
		t.Fatalf("rate %+v", resp.Rate)
	}
	fi, err := os.Stat(e.VolumeFile(v.ID))
	if err != nil || fi.Size() != 1<<30 {
		t.Fatalf("backing file %v %v", fi, err)
	}
	got, _, err := c.Storage.GetVolume(ctx(t), v.ID)
	if err != nil || got.ID != v.ID || got.Description != "my data" {
		t.Fatalf("get %+v %v", got, err)
	}

	// Same name in the same region: conflict; in another region: fine.
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "nyc1", SizeGigaBytes: 1})
	apiErr(t, err, http.StatusConflict, "already exists")
	if _, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "fra1", SizeGigaBytes: 2}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"Data", "1data", "", "data_x", strings.Repeat("a", 65)} {
		_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: bad, Region: "nyc1", SizeGigaBytes: 1})
		apiErr(t, err, http.StatusUnprocessableEntity, "name")
	}
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "x", Region: "nowhere", SizeGigaBytes: 1})
	apiErr(t, err, http.StatusUnprocessableEntity, "region")
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "x", Region: "nyc1", SizeGigaBytes: 0})
	apiErr(t, err, http.StatusUnprocessableEntity, "size_gigabytes")

	// A new volume with filesystem_type is formatted, as on DigitalOcean.
	fs, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{
		Name: "formatted", Region: "sfo3", SizeGigaBytes: 1, FilesystemType: "ext4", FilesystemLabel: "mylabel",
	})
	if err != nil {
		t.Fatal(err)
	}
	if fs.FilesystemType != "ext4" || fs.FilesystemLabel != "mylabel" {
		t.Fatalf("formatted volume %+v", fs)
	}
	if out, err := exec.Command("dumpe2fs", "-h", e.VolumeFile(fs.ID)).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "Filesystem volume name:   mylabel") {
		t.Fatalf("not an ext4 file system labelled mylabel: %v\n%s", err, out)
	}
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "x", Region: "sfo3", SizeGigaBytes: 1, FilesystemType: "ext4", FilesystemLabel: strings.Repeat("l", 17)})
	apiErr(t, err, http.StatusUnprocessableEntity, "filesystem_label")
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "x", Region: "sfo3", SizeGigaBytes: 1, FilesystemType: "btrfs"})
	apiErr(t, err, http.StatusUnprocessableEntity, "filesystem_type")
	if _, err := c.Storage.DeleteVolume(ctx(t), fs.ID); err != nil {
		t.Fatal(err)
	}

	all, _, err := c.Storage.ListVolumes(ctx(t), nil)
	if err != nil || len(all) != 2 {
		t.Fatalf("list %d %v", len(all), err)
	}
	byRegion, _, err := c.Storage.ListVolumes(ctx(t), &godo.ListVolumeParams{Region: "fra1"})
	if err != nil || len(byRegion) != 1 || byRegion[0].Region.Slug != "fra1" {
		t.Fatalf("by region %+v %v", byRegion, err)
	}
	byName, _, err := c.Storage.ListVolumes(ctx(t), &godo.ListVolumeParams{Name: "data", Region: "nyc1"})
	if err != nil || len(byName) != 1 || byName[0].ID != v.ID {
		t.Fatalf("by name %+v %v", byName, err)
	}

	if _, err := c.Storage.DeleteVolume(ctx(t), v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.VolumeFile(v.ID)); e.VolumeFile(v.ID) != "" || err == nil {
		t.Fatal("backing file left behind")
	}
	_, _, err = c.Storage.GetVolume(ctx(t), v.ID)
	apiErr(t, err, http.StatusNotFound, "could not be found")
	_, err = c.Storage.DeleteVolume(ctx(t), v.ID)
	apiErr(t, err, http.StatusNotFound, "could not be found")
}

func TestSnapshots(t *testing.T) {
	e := newEmu(t, Options{SnapshotInterval: 300 * time.Millisecond})
	c := client(t, e, testToken)
	v, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "ams3", SizeGigaBytes: 2})
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("dosvob!\n"), 4096)
	writeAt(t, e.VolumeFile(v.ID), 5<<20, content)

	s, resp, err := c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: "snap-1", Tags: []string{"keep"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || s.ResourceID != v.ID || s.ResourceType != "volume" ||
		s.MinDiskSize != 2 || !reflect.DeepEqual(s.Regions, []string{"ams3"}) || s.SizeGigaBytes <= 0 {
		t.Fatalf("snapshot %d %+v", resp.StatusCode, s)
	}
	// The snapshot froze the volume: later writes do not reach it.
	writeAt(t, e.VolumeFile(v.ID), 5<<20, []byte("changed"))
	if got := readAt(t, e.SnapshotFile(s.ID), 5<<20, len(content)); !bytes.Equal(got, content) {
		t.Fatal("snapshot content changed with the volume")
	}
	// Sparse: a 2 GiB volume with 32 KiB of data costs little.
	if n, _ := allocatedBytes(e.SnapshotFile(s.ID)); n > 1<<20 {
		t.Fatalf("snapshot file occupies %d bytes", n)
	}

	// One snapshot per volume per interval.
	_, _, err = c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: "snap-2"})
	apiErr(t, err, http.StatusTooManyRequests, "this operation is rate-limited")

	for _, get := range []func(string) (*godo.Snapshot, *godo.Response, error){
		func(id string) (*godo.Snapshot, *godo.Response, error) { return c.Storage.GetSnapshot(ctx(t), id) },
		func(id string) (*godo.Snapshot, *godo.Response, error) { return c.Snapshots.Get(ctx(t), id) },
	} {
		g, _, err := get(s.ID)
		if err != nil || g.ID != s.ID || g.Name != "snap-1" || !reflect.DeepEqual(g.Tags, []string{"keep"}) {
			t.Fatalf("get %+v %v", g, err)
		}
	}
	perVol, _, err := c.Storage.ListSnapshots(ctx(t), v.ID, nil)
	if err != nil || len(perVol) != 1 {
		t.Fatalf("per volume %v %v", perVol, err)
	}
	vs, _, err := c.Snapshots.ListVolume(ctx(t), nil)
	if err != nil || len(vs) != 1 {
		t.Fatalf("resource_type=volume %v %v", vs, err)
	}
	ds, _, err := c.Snapshots.ListDroplet(ctx(t), nil)
	if err != nil || len(ds) != 0 {
		t.Fatalf("resource_type=droplet %v %v", ds, err)
	}

	// A volume from the snapshot: region and size from it, content a copy.
	nv, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "copy", SnapshotID: s.ID})
	if err != nil {
		t.Fatal(err)
	}
	if nv.Region.Slug != "ams3" || nv.SizeGigaBytes != 2 {
		t.Fatalf("from snapshot %+v", nv)
	}
	if got := readAt(t, e.VolumeFile(nv.ID), 5<<20, len(content)); !bytes.Equal(got, content) {
		t.Fatal("volume from snapshot does not hold the snapshot's content")
	}
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "small", SnapshotID: s.ID, SizeGigaBytes: 1})
	apiErr(t, err, http.StatusUnprocessableEntity, "min_disk_size")
	_, _, err = c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "elsewhere", SnapshotID: s.ID, Region: "nyc1"})
	apiErr(t, err, http.StatusUnprocessableEntity, "not available in region")

	// After the interval a second snapshot is allowed; deleting through both
	// paths works.
	time.Sleep(300 * time.Millisecond)
	s2, _, err := c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: "snap-2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Storage.DeleteSnapshot(ctx(t), s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Snapshots.Delete(ctx(t), s2.ID); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Snapshots.Get(ctx(t), s.ID)
	apiErr(t, err, http.StatusNotFound, "could not be found")
	if st := e.State(); len(st.Snapshots) != 0 {
		t.Fatalf("snapshots left %+v", st.Snapshots)
	}
}

func TestSnapshotLimit(t *testing.T) {
	e := newEmu(t, Options{SnapshotInterval: -1})
	c := client(t, e, testToken)
	v, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "nyc1", SizeGigaBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxSnapshotsPerVolume; i++ {
		if _, _, err := c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: "s" + itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err = c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: v.ID, Name: "one-too-many"})
	apiErr(t, err, http.StatusUnprocessableEntity, "maximum of 25 snapshots")
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}
