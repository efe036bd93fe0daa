package pipe

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/testenv"
)

// sshd is a private OpenSSH server on 127.0.0.1 that accepts one key.
type sshd struct {
	args []string // ssh arguments up to and including the destination
}

// startSSHD starts sshd on a free loopback port with a temporary host key
// and authorized key, pinned on the client side; it stops with the test.
func startSSHD(t *testing.T) sshd {
	t.Helper()
	testenv.RequireSSHD(t)
	daemon, _ := testenv.LookPath("sshd")
	dir := t.TempDir()
	for _, k := range []string{"host_key", "client_key"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s/host_key
AuthorizedKeysFile %s/authorized_keys
PidFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
`, port, dir, dir)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	known := fmt.Sprintf("[127.0.0.1]:%d %s", port, hostPub)
	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(known), 0o600); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	cmd := exec.Command(daemon, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var log strings.Builder
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	s := sshd{args: []string{
		"-p", fmt.Sprint(port), "-i", filepath.Join(dir, "client_key"),
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "UserKnownHostsFile=" + filepath.Join(dir, "known_hosts"), "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-F", "none",
		"root@127.0.0.1",
	}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := exec.Command("ssh", append(s.args, "true")...).Run()
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("cannot reach the private sshd: %v\n%s", err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPipeOverSSH runs the pipe as scripts/backup-all.sh does, with the
// delta side behind ssh:
//
//	dosvob-hash IMG | ssh root@host dosvob-hash --delta DEV | dosvob-patch IMG
func TestPipeOverSSH(t *testing.T) {
	s := startSSHD(t)
	rng := rand.New(rand.NewPCG(31, 32))
	size := 6<<20 + 1000
	dev := newFile(t, content(rng, size, 0.3, 256<<10))
	img := filepath.Join(t.TempDir(), "backup.img")
	remote := func() *exec.Cmd {
		return exec.Command("ssh", append(s.args, filepath.Join(bin, "dosvob-hash"), "--delta", dev.Path())...)
	}
	if r := runPipeVia(t, img, remote()); !r.ok() {
		t.Fatalf("first sync over ssh: %v", r)
	}
	sameContent(t, img, dev.Path())
	for range 10 {
		buf := content(rng, 4096, 1, 4096)
		buf[0] |= 1
		dev.Write(t, int64(rng.IntN(size/4096))*4096, buf)
	}
	r := runPipeVia(t, img, remote())
	if !r.ok() {
		t.Fatalf("incremental over ssh: %v", r)
	}
	sameContent(t, img, dev.Path())
	if data, zero := r.records(t); data == 0 || data > 10 || zero != 0 {
		t.Errorf("10 writes of 4 KiB: %d data and %d zero records", data, zero)
	}
	if !strings.Contains(r.stderr[1], "delta of "+dev.Path()) {
		t.Errorf("the remote summary line did not come back over ssh: %q", r.stderr[1])
	}
}
