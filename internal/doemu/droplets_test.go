package doemu

import (
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/digitalocean/godo"
)

func createDroplet(t *testing.T, c *godo.Client, name, region string, tags []string, keys ...godo.DropletCreateSSHKey) *godo.Droplet {
	d, resp, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{
		Name:    name,
		Region:  region,
		Size:    "s-1vcpu-1gb",
		Image:   godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"},
		Tags:    tags,
		SSHKeys: keys,
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("create status %d", resp.StatusCode)
	}
	return d
}

func TestDropletLifecycle(t *testing.T) {
	e := newEmu(t, Options{ActionDelay: 50 * time.Millisecond})
	c := client(t, e, testToken)
	pub, _ := newPubKey(t)
	k, _, err := c.Keys.Create(ctx(t), &godo.KeyCreateRequest{Name: "run-key", PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}

	d, resp, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{
		Name: "worker-1", Region: "fra1", Size: "s-1vcpu-512mb-10gb",
		Image:    godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"},
		SSHKeys:  []godo.DropletCreateSSHKey{{Fingerprint: k.Fingerprint}},
		Tags:     []string{"dosvob-ephemeral", "run-1"},
		UserData: "#cloud-config\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != "new" || len(d.Networks.V4) != 0 {
		t.Fatalf("fresh droplet %s with networks %+v", d.Status, d.Networks)
	}
	if len(resp.Links.Actions) != 1 || resp.Links.Actions[0].Rel != "create" {
		t.Fatalf("links %+v", resp.Links)
	}
	create, _, err := c.Actions.Get(ctx(t), resp.Links.Actions[0].ID)
	if err != nil || create.Status != "in-progress" || create.ResourceID != d.ID || create.Type != "create" {
		t.Fatalf("create action %+v %v", create, err)
	}
	if a := waitAction(t, c, create.ID); a.Status != "completed" || a.CompletedAt == nil {
		t.Fatalf("create action ended %+v", a)
	}
	d = waitActive(t, c, d.ID)
	ip, err := d.PublicIPv4()
	if err != nil || ip == "" {
		t.Fatalf("active droplet has no public IPv4: %v", err)
	}
	if d.Size.Slug != "s-1vcpu-512mb-10gb" || d.Memory != 512 || d.Image.Slug != "ubuntu-24-04-x64" || d.Region.Slug != "fra1" {
		t.Fatalf("droplet %+v", d)
	}
	st := e.State()
	if len(st.Droplets) != 1 || !reflect.DeepEqual(st.Droplets[0].SSHKeyIDs, []int{k.ID}) || st.Droplets[0].IPv4 != ip {
		t.Fatalf("state %+v", st.Droplets)
	}

	// Listing, also by tag; a second droplet without the tag.
	other := createDroplet(t, c, "other", "fra1", []string{"web"})
	all, _, err := c.Droplets.List(ctx(t), nil)
	if err != nil || len(all) != 2 {
		t.Fatalf("list %d %v", len(all), err)
	}
	tagged, _, err := c.Droplets.ListByTag(ctx(t), "run-1", nil)
	if err != nil || len(tagged) != 1 || tagged[0].ID != d.ID {
		t.Fatalf("by tag %+v %v", tagged, err)
	}

	// Droplet actions.
	off, _, err := c.DropletActions.PowerOff(ctx(t), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	waitAction(t, c, off.ID)
	if got, _, _ := c.Droplets.Get(ctx(t), d.ID); got.Status != "off" {
		t.Fatalf("after power_off: %s", got.Status)
	}
	on, _, err := c.DropletActions.PowerOn(ctx(t), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if a, _, err := c.DropletActions.Get(ctx(t), d.ID, on.ID); err != nil || a.ID != on.ID {
		t.Fatalf("droplet action get %+v %v", a, err)
	}
	waitAction(t, c, on.ID)
	acts, _, err := c.Droplets.Actions(ctx(t), d.ID, nil)
	if err != nil || len(acts) != 3 {
		t.Fatalf("droplet actions %d %v", len(acts), err)
	}

	// Delete by tag leaves the other droplet.
	if _, err := c.Droplets.DeleteByTag(ctx(t), "run-1"); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Droplets.Get(ctx(t), d.ID)
	apiErr(t, err, http.StatusNotFound, "could not be found")
	if _, err := c.Droplets.Delete(ctx(t), other.ID); err != nil {
		t.Fatal(err)
	}
	_, err = c.Droplets.Delete(ctx(t), other.ID)
	apiErr(t, err, http.StatusNotFound, "could not be found")
	if st := e.State(); len(st.Droplets) != 0 {
		t.Fatalf("droplets left %+v", st.Droplets)
	}
}

func TestDropletValidation(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	base := godo.DropletCreateRequest{Name: "ok", Region: "nyc1", Size: "s-1vcpu-1gb", Image: godo.DropletCreateImage{Slug: "ubuntu-22-04-x64"}}
	for _, tc := range []struct {
		mod func(*godo.DropletCreateRequest)
		msg string
	}{
		{func(r *godo.DropletCreateRequest) { r.Name = "bad name" }, "Only valid hostname characters"},
		{func(r *godo.DropletCreateRequest) { r.Region = "mars1" }, "invalid region"},
		{func(r *godo.DropletCreateRequest) { r.Size = "huge" }, "invalid size"},
		{func(r *godo.DropletCreateRequest) { r.Region, r.Size = "nyc3", "s-1vcpu-512mb-10gb" }, "not available in this region"},
		{func(r *godo.DropletCreateRequest) { r.Image = godo.DropletCreateImage{Slug: "windows"} }, "invalid image"},
		{func(r *godo.DropletCreateRequest) { r.SSHKeys = []godo.DropletCreateSSHKey{{ID: 12345}} }, "SSH key"},
		{func(r *godo.DropletCreateRequest) { r.Tags = []string{"bad tag"} }, "tag"},
	} {
		req := base
		tc.mod(&req)
		_, _, err := c.Droplets.Create(ctx(t), &req)
		apiErr(t, err, http.StatusUnprocessableEntity, tc.msg)
	}
	if st := e.State(); len(st.Droplets) != 0 {
		t.Fatalf("a rejected create left %+v", st.Droplets)
	}
}

func TestAttachDetach(t *testing.T) {
	e := newEmu(t, Options{NoLoopDevices: true, DetachDelay: 100 * time.Millisecond})
	c := client(t, e, testToken)
	d := createDroplet(t, c, "worker", "nyc1", nil)
	far := createDroplet(t, c, "far", "sfo3", nil)
	waitActive(t, c, d.ID)
	v, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "nyc1", SizeGigaBytes: 1})
	if err != nil {
		t.Fatal(err)
	}

	_, _, err = c.StorageActions.Attach(ctx(t), v.ID, far.ID)
	apiErr(t, err, http.StatusUnprocessableEntity, "same region")

	a, resp, err := c.StorageActions.Attach(ctx(t), v.ID, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusAccepted || a.Status != "in-progress" || a.Type != "attach_volume" {
		t.Fatalf("attach %d %+v", resp.StatusCode, a)
	}
	if got, _, _ := c.StorageActions.Get(ctx(t), v.ID, a.ID); got.ID != a.ID {
		t.Fatalf("volume action get %+v", got)
	}
	if a := waitAction(t, c, a.ID); a.Status != "completed" {
		t.Fatalf("attach ended %s", a.Status)
	}
	got, _, _ := c.Storage.GetVolume(ctx(t), v.ID)
	if !reflect.DeepEqual(got.DropletIDs, []int{d.ID}) {
		t.Fatalf("volume droplet_ids %v", got.DropletIDs)
	}
	gd, _, _ := c.Droplets.Get(ctx(t), d.ID)
	if !reflect.DeepEqual(gd.VolumeIDs, []string{v.ID}) {
		t.Fatalf("droplet volume_ids %v", gd.VolumeIDs)
	}
	// The device path contract: $DOSVOB_ROOT/dev/disk/by-id/scsi-0DO_Volume_<name>.
	dev := e.DevicePath(d.ID, "data")
	if dev != filepath.Join(e.State().Droplets[0].Root, "/dev/disk/by-id/scsi-0DO_Volume_data") {
		t.Fatalf("device path %s", dev)
	}
	if target, err := os.Readlink(dev); err != nil || target != e.VolumeFile(v.ID) {
		t.Fatalf("device %s -> %s %v", dev, target, err)
	}

	_, err = c.Storage.DeleteVolume(ctx(t), v.ID)
	apiErr(t, err, http.StatusConflict, "A volume that's attached to a Droplet cannot be deleted")
	_, _, err = c.StorageActions.Attach(ctx(t), v.ID, d.ID)
	apiErr(t, err, http.StatusUnprocessableEntity, "already attached")

	// Detach by name.
	_, _, err = c.StorageActions.DetachByDropletID(ctx(t), v.ID, far.ID)
	apiErr(t, err, http.StatusUnprocessableEntity, "Attachment not found")
	da, _, err := c.StorageActions.DetachByDropletID(ctx(t), v.ID, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	waitAction(t, c, da.ID)
	if _, err := os.Lstat(dev); !os.IsNotExist(err) {
		t.Fatalf("device still there after detach: %v", err)
	}
	acts, _, err := c.StorageActions.List(ctx(t), v.ID, nil)
	if err != nil || len(acts) != 2 {
		t.Fatalf("volume actions %d %v", len(acts), err)
	}

	// Resize grows the backing file.
	ra, _, err := c.StorageActions.Resize(ctx(t), v.ID, 2, "nyc1")
	if err != nil {
		t.Fatal(err)
	}
	waitAction(t, c, ra.ID)
	if fi, _ := os.Stat(e.VolumeFile(v.ID)); fi.Size() != 2<<30 {
		t.Fatalf("resized file %d", fi.Size())
	}
	_, _, err = c.StorageActions.Resize(ctx(t), v.ID, 1, "nyc1")
	apiErr(t, err, http.StatusUnprocessableEntity, "greater than")

	// Attach by name, delete the droplet: the volume stays attached for the
	// detach delay, then is free; the volume survives.
	req, _ := c.NewRequest(ctx(t), http.MethodPost, "v2/volumes/actions", map[string]any{
		"type": "attach", "volume_name": "data", "region": "nyc1", "droplet_id": d.ID, "tags": []string{"attached"},
	})
	var body struct{ Action godo.Action }
	if _, err := c.Do(ctx(t), req, &body); err != nil {
		t.Fatal(err)
	}
	waitAction(t, c, body.Action.ID)
	if got, _, _ := c.Storage.GetVolume(ctx(t), v.ID); !reflect.DeepEqual(got.Tags, []string{"attached"}) {
		t.Fatalf("tags after an attach with tags: %v", got.Tags)
	}
	if _, err := c.Droplets.Delete(ctx(t), d.ID); err != nil {
		t.Fatal(err)
	}
	got, _, _ = c.Storage.GetVolume(ctx(t), v.ID)
	if !reflect.DeepEqual(got.DropletIDs, []int{d.ID}) {
		t.Fatalf("right after droplet delete: droplet_ids %v", got.DropletIDs)
	}
	_, err = c.Storage.DeleteVolume(ctx(t), v.ID)
	apiErr(t, err, http.StatusConflict, "cannot be deleted")
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _, _ = c.Storage.GetVolume(ctx(t), v.ID)
		if len(got.DropletIDs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("volume never detached from the deleted droplet")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Storage.DeleteVolume(ctx(t), v.ID); err != nil {
		t.Fatal(err)
	}
}

func TestAttachLimit(t *testing.T) {
	e := newEmu(t, Options{NoLoopDevices: true, ActionDelay: -1})
	c := client(t, e, testToken)
	d := createDroplet(t, c, "worker", "nyc3", nil)
	for i := 0; i <= MaxVolumesPerDroplet; i++ {
		v, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "v" + itoa(i), Region: "nyc3", SizeGigaBytes: 1})
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.StorageActions.Attach(ctx(t), v.ID, d.ID)
		if i < MaxVolumesPerDroplet && err != nil {
			t.Fatalf("attach %d: %v", i, err)
		}
		if i == MaxVolumesPerDroplet {
			apiErr(t, err, http.StatusUnprocessableEntity, "maximum of 15 volumes")
		}
	}
	if got, _, _ := c.Droplets.Get(ctx(t), d.ID); len(got.VolumeIDs) != MaxVolumesPerDroplet {
		t.Fatalf("%d volumes attached", len(got.VolumeIDs))
	}
}

func TestKeys(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	pub, _ := newPubKey(t)
	k, resp, err := c.Keys.Create(ctx(t), &godo.KeyCreateRequest{Name: "laptop", PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || k.Fingerprint == "" || k.PublicKey != pub {
		t.Fatalf("key %+v", k)
	}
	_, _, err = c.Keys.Create(ctx(t), &godo.KeyCreateRequest{Name: "again", PublicKey: pub})
	apiErr(t, err, http.StatusUnprocessableEntity, "already in use")
	_, _, err = c.Keys.Create(ctx(t), &godo.KeyCreateRequest{Name: "junk", PublicKey: "ssh-ed25519 nonsense"})
	apiErr(t, err, http.StatusUnprocessableEntity, "Key invalid")
	if g, _, err := c.Keys.GetByFingerprint(ctx(t), k.Fingerprint); err != nil || g.ID != k.ID {
		t.Fatalf("by fingerprint %+v %v", g, err)
	}
	if g, _, err := c.Keys.UpdateByID(ctx(t), k.ID, &godo.KeyUpdateRequest{Name: "renamed"}); err != nil || g.Name != "renamed" {
		t.Fatalf("update %+v %v", g, err)
	}
	ks, _, err := c.Keys.List(ctx(t), nil)
	if err != nil || len(ks) != 1 || ks[0].Name != "renamed" {
		t.Fatalf("list %+v %v", ks, err)
	}
	if _, err := c.Keys.DeleteByFingerprint(ctx(t), k.Fingerprint); err != nil {
		t.Fatal(err)
	}
	_, err = c.Keys.DeleteByID(ctx(t), k.ID)
	apiErr(t, err, http.StatusNotFound, "could not be found")
}

func TestTags(t *testing.T) {
	e := newEmu(t, Options{})
	c := client(t, e, testToken)
	tag, resp, err := c.Tags.Create(ctx(t), &godo.TagCreateRequest{Name: "dosvob-ephemeral"})
	if err != nil || resp.StatusCode != http.StatusCreated || tag.Name != "dosvob-ephemeral" {
		t.Fatalf("create %+v %v", tag, err)
	}
	_, _, err = c.Tags.Create(ctx(t), &godo.TagCreateRequest{Name: "no spaces"})
	apiErr(t, err, http.StatusUnprocessableEntity, "tag names")
	v, _, _ := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "nyc1", SizeGigaBytes: 1})
	d := createDroplet(t, c, "w", "nyc1", []string{"web"})
	if _, err := c.Tags.TagResources(ctx(t), "dosvob-ephemeral", &godo.TagResourcesRequest{Resources: []godo.Resource{
		{ID: v.ID, Type: godo.VolumeResourceType}, {ID: itoa(d.ID), Type: godo.DropletResourceType},
	}}); err != nil {
		t.Fatal(err)
	}
	got, _, err := c.Tags.Get(ctx(t), "dosvob-ephemeral")
	if err != nil || got.Resources.Count != 2 || got.Resources.Droplets.Count != 1 || got.Resources.Volumes.Count != 1 {
		t.Fatalf("tag %+v %v", got.Resources, err)
	}
	gv, _, _ := c.Storage.GetVolume(ctx(t), v.ID)
	if !slices.Contains(gv.Tags, "dosvob-ephemeral") {
		t.Fatalf("volume tags %v", gv.Tags)
	}
	if _, err := c.Tags.UntagResources(ctx(t), "dosvob-ephemeral", &godo.UntagResourcesRequest{Resources: []godo.Resource{
		{ID: v.ID, Type: godo.VolumeResourceType},
	}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Tags.TagResources(ctx(t), "dosvob-ephemeral", &godo.TagResourcesRequest{Resources: []godo.Resource{{ID: "nope", Type: godo.VolumeResourceType}}})
	apiErr(t, err, http.StatusUnprocessableEntity, "not found")
	tags, _, err := c.Tags.List(ctx(t), nil)
	if err != nil || len(tags) != 2 {
		t.Fatalf("list %+v %v", tags, err)
	}
	if _, err := c.Tags.Delete(ctx(t), "web"); err != nil {
		t.Fatal(err)
	}
	gd, _, _ := c.Droplets.Get(ctx(t), d.ID)
	if !reflect.DeepEqual(gd.Tags, []string{"dosvob-ephemeral"}) {
		t.Fatalf("droplet tags after tag delete %v", gd.Tags)
	}
	_, _, err = c.Tags.Get(ctx(t), "web")
	apiErr(t, err, http.StatusNotFound, "could not be found")
}
