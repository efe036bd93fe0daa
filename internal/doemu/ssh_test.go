package doemu

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/godo"
	"golang.org/x/crypto/ssh"
)

// hostKey is a host key pair as dosvob hands it to a droplet.
type hostKey struct {
	privPEM string
	pubLine string // "ssh-ed25519 AAAA..."
}

func newHostKey(t *testing.T) hostKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return hostKey{string(pem.EncodeToMemory(block)), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))}
}

func (h hostKey) userData() string {
	indent := func(s string) string {
		return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ")
	}
	return "#cloud-config\nssh_keys:\n  ed25519_private: |\n" + indent(h.privPEM) + "\n  ed25519_public: " + h.pubLine + "\n"
}

// sshRun runs a command on root@addr with the real OpenSSH client, pinning
// the host key in a known_hosts file.
func sshRun(t *testing.T, dir, keyFile, addr string, port int, knownHost, command string) (string, error) {
	kh := filepath.Join(dir, "known_hosts")
	host := addr
	if port != 22 {
		host = fmt.Sprintf("[%s]:%d", addr, port)
	}
	if err := os.WriteFile(kh, []byte(host+" "+knownHost+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ssh", "-F", "/dev/null",
		"-i", keyFile, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile="+kh, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "-p", fmt.Sprint(port),
		"root@"+addr, command)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%v: %s", err, errb.String())
	}
	return out.String(), nil
}

func TestDropletAnswersSSH(t *testing.T) {
	requireRoot(t, "sshd", "loop")
	e := newEmu(t, Options{SSH: true, SnapshotInterval: -1})
	c := client(t, e, testToken)
	dir := t.TempDir()

	// The run's key and the pinned host key.
	pub, priv := newPubKey(t)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	k, _, err := c.Keys.Create(ctx(t), &godo.KeyCreateRequest{Name: "dosvob-ephemeral-run", PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	hk := newHostKey(t)

	// A user's volume with data, its snapshot, a volume made from it.
	src, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "nyc1", SizeGigaBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	writeAt(t, e.VolumeFile(src.ID), 1<<20, data)
	snap, _, err := c.Storage.CreateSnapshot(ctx(t), &godo.SnapshotCreateRequest{VolumeID: src.ID, Name: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, e.VolumeFile(src.ID), 1<<20, []byte("after the snapshot"))
	cp, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "dosvob-ephemeral-data", SnapshotID: snap.ID})
	if err != nil {
		t.Fatal(err)
	}

	d, _, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{
		Name: "dosvob-ephemeral-nyc1", Region: "nyc1", Size: "s-1vcpu-512mb-10gb",
		Image:    godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"},
		SSHKeys:  []godo.DropletCreateSSHKey{{ID: k.ID}},
		UserData: hk.userData(),
	})
	if err != nil {
		t.Fatal(err)
	}
	d = waitActive(t, c, d.ID)
	a, _, err := c.StorageActions.Attach(ctx(t), cp.ID, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if a := waitAction(t, c, a.ID); a.Status != "completed" {
		t.Fatalf("attach %s", a.Status)
	}
	addr, _ := d.PublicIPv4()
	st := e.State()
	if st.Droplets[0].SSHPort != DefaultSSHPort || st.Droplets[0].IPv4 != addr || !strings.HasPrefix(addr, "127.") {
		t.Fatalf("droplet address %s port %d", addr, st.Droplets[0].SSHPort)
	}

	// The attached volume reads back the snapshot's bytes at the device
	// path the tool resolves in both worlds.
	want := sha256.Sum256(readAt(t, e.SnapshotFile(snap.ID), 0, 8<<20))
	dev := `"${DOSVOB_ROOT}/dev/disk/by-id/scsi-0DO_Volume_dosvob-ephemeral-data"`
	out, err := sshRun(t, dir, keyFile, addr, DefaultSSHPort, hk.pubLine,
		"head -c 8388608 "+dev+" | sha256sum && readlink -f "+dev+" && blockdev --getsize64 "+dev+
			` && mkdir -p "${DOSVOB_ROOT}/opt/dosvob/run-1" && echo made && echo "$DOSVOB_ROOT"`)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(out)
	if len(lines) != 6 || lines[0] != hex.EncodeToString(want[:]) {
		t.Fatalf("device over ssh: %q, want sha256 %x", out, want)
	}
	if !strings.HasPrefix(lines[2], "/dev/loop") || lines[3] != fmt.Sprint(1<<30) || lines[4] != "made" {
		t.Fatalf("device is %q, size %q, mkdir %q", lines[2], lines[3], lines[4])
	}
	if lines[5] != st.Droplets[0].Root {
		t.Fatalf("DOSVOB_ROOT is %q, want %q", lines[5], st.Droplets[0].Root)
	}
	loop := lines[2]
	if _, err := os.Stat(filepath.Join(st.Droplets[0].Root, "opt/dosvob/run-1")); err != nil {
		t.Fatal(err)
	}

	// A wrong host key is refused.
	other := newHostKey(t)
	if _, err := sshRun(t, dir, keyFile, addr, DefaultSSHPort, other.pubLine, "true"); err == nil ||
		!strings.Contains(err.Error(), "Host key verification failed") {
		t.Fatalf("wrong host key accepted: %v", err)
	}
	// A key that is not the account's is refused.
	_, stranger := newPubKey(t)
	sb, _ := ssh.MarshalPrivateKey(stranger, "")
	strangerFile := filepath.Join(dir, "stranger")
	os.WriteFile(strangerFile, pem.EncodeToMemory(sb), 0o600)
	if _, err := sshRun(t, dir, strangerFile, addr, DefaultSSHPort, hk.pubLine, "true"); err == nil ||
		!strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("unknown client key accepted: %v", err)
	}

	// A reboot restarts sshd on the same address with the same host key.
	rb, _, err := c.DropletActions.Reboot(ctx(t), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if a := waitAction(t, c, rb.ID); a.Status != "completed" {
		t.Fatalf("reboot %s", a.Status)
	}
	if out, err := sshRun(t, dir, keyFile, addr, DefaultSSHPort, hk.pubLine, "echo up"); err != nil || strings.TrimSpace(out) != "up" {
		t.Fatalf("after reboot: %q %v", out, err)
	}

	// Detach removes the device and frees the loop device.
	da, _, err := c.StorageActions.DetachByDropletID(ctx(t), cp.ID, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	waitAction(t, c, da.ID)
	if out, err := sshRun(t, dir, keyFile, addr, DefaultSSHPort, hk.pubLine, "test -e "+dev+" || echo gone"); err != nil || strings.TrimSpace(out) != "gone" {
		t.Fatalf("device after detach: %q %v", out, err)
	}
	if loopBackedBy(t, loop) == e.VolumeFile(cp.ID) {
		t.Fatalf("%s still backed by the volume after detach", loop)
	}

	// Deleting the droplet stops its sshd.
	if _, err := c.Droplets.Delete(ctx(t), d.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "22"), time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("sshd still answers after droplet delete")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loopBackedBy returns the backing file of a loop device ("" if unused).
func loopBackedBy(t *testing.T, loop string) string {
	b, err := os.ReadFile("/sys/block/" + filepath.Base(loop) + "/loop/backing_file")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// TestCloseStopsEverything: Close stops every sshd and frees every loop
// device, also of droplets still running and with volumes attached.
func TestCloseStopsEverything(t *testing.T) {
	requireRoot(t, "sshd", "loop")
	e, err := New(Options{Token: testToken, ActionDelay: 5 * time.Millisecond, SSH: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c := client(t, e, testToken)
	v, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "sfo3", SizeGigaBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{
		Name: "w", Region: "sfo3", Size: "s-1vcpu-1gb", Image: godo.DropletCreateImage{Slug: "ubuntu-22-04-x64"},
		Volumes: []godo.DropletCreateVolume{{ID: v.ID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d = waitActive(t, c, d.ID)
	addr, _ := d.PublicIPv4()
	link := e.DevicePath(d.ID, "data")
	loop, err := os.Readlink(link)
	if err != nil || !strings.HasPrefix(loop, "/dev/loop") {
		t.Fatalf("device %s -> %q %v", link, loop, err)
	}
	file := e.VolumeFile(v.ID)

	// A resize while attached: the loop device grows too.
	ra, _, err := c.StorageActions.Resize(ctx(t), v.ID, 2, "sfo3")
	if err != nil {
		t.Fatal(err)
	}
	if a := waitAction(t, c, ra.ID); a.Status != "completed" {
		t.Fatalf("resize %s", a.Status)
	}
	if b, err := os.ReadFile("/sys/block/" + filepath.Base(loop) + "/size"); err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(2<<30/512) {
		t.Fatalf("%s has %q sectors after the resize to 2 GiB (%v)", loop, b, err)
	}

	// A second droplet, deleted just before Close: its sshd must not
	// outlive the emulator either.
	d2, _, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{
		Name: "w2", Region: "sfo3", Size: "s-1vcpu-1gb", Image: godo.DropletCreateImage{Slug: "ubuntu-22-04-x64"},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitActive(t, c, d2.ID)
	sshdPid := func(id int) int {
		e.mu.Lock()
		dr := e.droplets[id]
		e.mu.Unlock()
		dr.devMu.Lock()
		defer dr.devMu.Unlock()
		return dr.sshd.cmd.Process.Pid
	}
	pid, pid2 := sshdPid(d.ID), sshdPid(d2.ID)
	if _, err := c.Droplets.Delete(ctx(t), d2.ID); err != nil {
		t.Fatal(err)
	}

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid2)); err == nil && !isZombie(pid2) {
		t.Fatalf("sshd %d of a deleted droplet still runs after Close", pid2)
	}
	if conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "22"), time.Second); err == nil {
		conn.Close()
		t.Fatal("sshd answers after Close")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil && !isZombie(pid) {
		t.Fatalf("sshd %d still runs after Close", pid)
	}
	if b := loopBackedBy(t, loop); b == file {
		t.Fatalf("%s still backed by %s after Close", loop, b)
	}
	if _, err := os.Stat(e.DataDir()); !os.IsNotExist(err) {
		t.Fatalf("temporary data dir left: %v", err)
	}
}

// TestCloseKeepsDataDir: with a DataDir of its own, Close leaves the
// volumes' backing files but removes the droplets' directories, which hold
// host keys.
func TestCloseKeepsDataDir(t *testing.T) {
	dir := t.TempDir()
	e, err := New(Options{Token: testToken, ActionDelay: -1, DataDir: dir, NoLoopDevices: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c := client(t, e, testToken)
	v, _, err := c.Storage.CreateVolume(ctx(t), &godo.VolumeCreateRequest{Name: "data", Region: "nyc1", SizeGigaBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	hk := newHostKey(t)
	d, _, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{Name: "w", Region: "nyc1", Size: "s-1vcpu-1gb",
		Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"}, UserData: hk.userData()})
	if err != nil {
		t.Fatal(err)
	}
	waitActive(t, c, d.ID)
	root := e.State().Droplets[0].Root
	if !strings.HasPrefix(root, dir) {
		t.Fatalf("droplet directory %s outside the data dir %s", root, dir)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "volumes", v.ID+".img")); err != nil {
		t.Fatalf("backing file gone: %v", err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("droplet directory (with its host keys) left: %v", err)
	}
}

// TestSSHAddressTaken: a droplet skips a loopback address whose SSH port
// another process already holds.
func TestSSHAddressTaken(t *testing.T) {
	requireRoot(t, "sshd")
	const port = 2222
	next, err := reserveAddr(port)
	if err != nil {
		t.Fatal(err)
	}
	releaseAddr(next)
	ln, err := net.Listen("tcp", net.JoinHostPort(next, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	e := newEmu(t, Options{SSH: true, SSHPort: port, NoLoopDevices: true})
	c := client(t, e, testToken)
	d := createDroplet(t, c, "w", "ams3", nil)
	d = waitActive(t, c, d.ID)
	ip, _ := d.PublicIPv4()
	if ip == next || ip == "" {
		t.Fatalf("droplet got %q although %s:%d is taken", ip, next, port)
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip, fmt.Sprint(port)), time.Second)
	if err != nil {
		t.Fatalf("droplet's sshd does not answer on %s: %v", ip, err)
	}
	banner := make([]byte, 8)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := conn.Read(banner)
	conn.Close()
	if string(banner[:n]) != "SSH-2.0-" {
		t.Fatalf("banner %q", banner[:n])
	}
}

// TestSSHPortTakenEverywhere: when the SSH port is taken on address after
// address, the droplet's create action errors instead of probing 65000
// addresses.
func TestSSHPortTakenEverywhere(t *testing.T) {
	requireRoot(t, "sshd")
	const port = 2223
	for n := 2; n < 2+maxTakenAddrs+8; n++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", n, port))
		if err != nil {
			continue // already taken: just as good
		}
		defer ln.Close()
	}
	var mu sync.Mutex
	var logs strings.Builder
	e := newEmu(t, Options{SSH: true, SSHPort: port, NoLoopDevices: true, Logf: func(f string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&logs, f+"\n", a...)
	}})
	c := client(t, e, testToken)
	_, resp, err := c.Droplets.Create(ctx(t), &godo.DropletCreateRequest{Name: "w", Region: "nyc1", Size: "s-1vcpu-1gb", Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"}})
	if err != nil {
		t.Fatal(err)
	}
	if a := waitAction(t, c, resp.Links.Actions[0].ID); a.Status != "errored" {
		t.Fatalf("create action %s", a.Status)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), fmt.Sprintf("port %d is taken on %d loopback addresses in a row", port, maxTakenAddrs)) {
		t.Fatalf("log does not say why:\n%s", logs.String())
	}
}

// TestSSHNeedsSSHD: with SSH, an emulator without OpenSSH's sshd at its
// path fails at New, saying so, instead of at the first droplet's boot.
func TestSSHNeedsSSHD(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "sshd")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for sshd, want := range map[string]string{
		filepath.Join(dir, "none"): `doemu: SSH needs OpenSSH's sshd at "` + filepath.Join(dir, "none") + `": no such file or directory`,
		notExec:                    `doemu: SSH needs OpenSSH's sshd at "` + notExec + `": not an executable file`,
		dir:                        `doemu: SSH needs OpenSSH's sshd at "` + dir + `": not an executable file`,
	} {
		e, err := New(Options{Token: testToken, SSH: true, SSHD: sshd})
		if err == nil {
			e.Close()
			t.Errorf("New with SSHD %s: no error", sshd)
			continue
		}
		if err.Error() != want {
			t.Errorf("New with SSHD %s:\n got %v\nwant %s", sshd, err, want)
		}
	}
}
