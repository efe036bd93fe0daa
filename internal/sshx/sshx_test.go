package sshx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/testenv"
)

// needSSHD skips (or, under CI=true, fails) when a real sshd cannot run.
func needSSHD(t *testing.T) string {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		for _, p := range []string{"/usr/sbin/sshd", "/sbin/sshd"} {
			if _, e := os.Stat(p); e == nil {
				sshd, err = p, nil
			}
		}
	}
	if err != nil {
		testenv.SkipOrFail(t, "sshd not installed (apt-get install openssh-server)")
	}
	testenv.RequireRoot(t, "sshd tests")
	return sshd
}

// server is a real OpenSSH sshd on a loopback port, keyed with hostKey and
// accepting clientKey for the current user.
type server struct {
	host string
	port int
}

func startSSHD(t *testing.T, hostKey, clientKey *Key) server {
	t.Helper()
	sshd := needSSHD(t)
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation directory
		t.Fatal(err)
	}
	dir := t.TempDir()
	hk := filepath.Join(dir, "host_ed25519")
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(hk, hostKey.PrivatePEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ak, []byte(clientKey.AuthorizedKey()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := filepath.Join(dir, "sshd_config")
	conf := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile none
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
`, port, hk, ak)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", log.String())
		}
	})
	return server{host: "127.0.0.1", port: port}
}

func keys(t *testing.T) (host, client *Key) {
	t.Helper()
	h, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return h, c
}

func currentUser(t *testing.T) string {
	out, err := exec.Command("id", "-un").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestKeyFormats(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(k.PrivatePEM, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n")) {
		t.Errorf("private key not in OpenSSH format:\n%s", k.PrivatePEM)
	}
	back, err := ParseKey(k.PrivatePEM)
	if err != nil || !bytes.Equal(back.Public().Marshal(), k.Public().Marshal()) {
		t.Fatalf("round trip: %v", err)
	}
	if !strings.HasPrefix(k.AuthorizedKey(), "ssh-ed25519 AAAA") || strings.Contains(k.AuthorizedKey(), "\n") {
		t.Errorf("authorized key %q", k.AuthorizedKey())
	}
	cc := k.CloudConfig()
	want := "#cloud-config\nssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n"
	if !strings.HasPrefix(cc, want) || !strings.HasSuffix(cc, "  ed25519_public: "+k.AuthorizedKey()+"\n") {
		t.Errorf("cloud-config:\n%s", cc)
	}
	// ssh-keygen must accept what we write as a private key file.
	if kg, err := exec.LookPath("ssh-keygen"); err == nil {
		p := filepath.Join(t.TempDir(), "id")
		os.WriteFile(p, k.PrivatePEM, 0o600)
		out, err := exec.Command(kg, "-y", "-f", p).Output()
		if err != nil || strings.TrimSpace(string(out)) != k.AuthorizedKey() {
			t.Errorf("ssh-keygen -y: %q, %v", out, err)
		}
	}
	if got := KnownHostsLine("127.0.0.2", 22, k.Public()); got != "127.0.0.2 "+k.AuthorizedKey() {
		t.Errorf("known_hosts port 22: %q", got)
	}
	if got := KnownHostsLine("127.0.0.2", 2222, k.Public()); got != "[127.0.0.2]:2222 "+k.AuthorizedKey() {
		t.Errorf("known_hosts port 2222: %q", got)
	}
}

func TestQuote(t *testing.T) {
	for _, s := range []string{"plain", "it's", "a b", "$(rm -rf /)", "'"} {
		out, err := exec.Command("sh", "-c", "printf %s "+Quote(s)).Output()
		if err != nil || string(out) != s {
			t.Errorf("Quote(%q): shell gave %q, %v", s, out, err)
		}
	}
}

func TestRunUploadAndPinning(t *testing.T) {
	hostKey, clientKey := keys(t)
	srv := startSSHD(t, hostKey, clientKey)
	ctx := context.Background()
	target := Target{Host: srv.host, Port: srv.port, User: currentUser(t), HostKey: hostKey.Public(), Signer: clientKey.Signer}

	c, err := WaitReady(ctx, target, 20*time.Second, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	out, err := c.Run(ctx, "echo hello; echo oops >&2", nil)
	if err != nil || string(out) != "hello\n" {
		t.Errorf("run: %q, %v", out, err)
	}
	out, err = c.Run(ctx, "cat", strings.NewReader("piped"))
	if err != nil || string(out) != "piped" {
		t.Errorf("stdin: %q, %v", out, err)
	}
	_, err = c.Run(ctx, "echo broken >&2; exit 3", nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Status != 3 || !strings.Contains(re.Error(), "broken") {
		t.Errorf("failing command: %v", err)
	}

	// Upload a 3 MiB file into a directory that does not exist yet.
	dir := t.TempDir()
	local := filepath.Join(dir, "bin")
	data := bytes.Repeat([]byte("0123456789abcdef"), 3<<16)
	os.WriteFile(local, data, 0o644)
	remote := filepath.Join(dir, "remote", "run-1", "dosvob-hash")
	if err := c.Upload(ctx, local, remote, 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(remote)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("uploaded file differs (%d bytes, %v)", len(got), err)
	}
	if st, _ := os.Stat(remote); st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v", st.Mode())
	}
	if _, err := os.Stat(remote + ".part"); !os.IsNotExist(err) {
		t.Errorf("temporary file left: %v", err)
	}

	// A cancelled context stops a running command promptly.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Run(cctx, "sleep 30", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled run: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("cancel took %v", time.Since(start))
	}

	// Any other host key is refused, also while waiting.
	other, _ := NewKey()
	bad := target
	bad.HostKey = other.Public()
	if _, err := Dial(ctx, bad); !errors.Is(err, ErrHostKeyMismatch) {
		t.Errorf("wrong host key accepted or odd error: %v", err)
	}
	// WaitReady retries a mismatch (cloud-init may not have set the key
	// yet) and reports it when the wait ends, even when the last attempt
	// was still in its handshake then (as on a loaded machine).
	if _, err := WaitReady(ctx, bad, 5*time.Second, nil); !errors.Is(err, ErrHostKeyMismatch) {
		t.Errorf("WaitReady with wrong host key: %v", err)
	}
	// A client key the server does not know is refused.
	wrong := target
	wrong.Signer = other.Signer
	if _, err := Dial(ctx, wrong); err == nil {
		t.Error("unknown client key accepted")
	}
}

func TestWaitReadyTimesOut(t *testing.T) {
	hostKey, clientKey := keys(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens: connection refused every time
	start := time.Now()
	_, err = WaitReady(context.Background(), Target{Host: "127.0.0.1", Port: port, User: "root", HostKey: hostKey.Public(), Signer: clientKey.Signer}, 1500*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "did not answer within") {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d < time.Second || d > 10*time.Second {
		t.Errorf("waited %v", d)
	}
}
