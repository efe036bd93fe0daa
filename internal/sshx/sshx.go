// Package sshx is dosvob's SSH client for the ephemeral droplets: it makes
// the keys of a run, connects with a pinned host key (never trust on first
// use), waits until a new droplet's SSH answers, runs commands and uploads
// files over a plain exec channel ("cat > file"), so the droplet needs neither
// scp nor sftp.
package sshx

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Key is an ed25519 key pair.
type Key struct {
	Signer ssh.Signer
	// PrivatePEM is the private key in OpenSSH format, as ssh-keygen
	// writes it. It is a secret: write it only to a 0600 file.
	PrivatePEM []byte
}

// NewKey generates a fresh ed25519 key pair.
func NewKey() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	return &Key{Signer: signer, PrivatePEM: pem.EncodeToMemory(block)}, nil
}

// ParseKey reads a private key in OpenSSH format.
func ParseKey(privatePEM []byte) (*Key, error) {
	s, err := ssh.ParsePrivateKey(privatePEM)
	if err != nil {
		return nil, err
	}
	return &Key{Signer: s, PrivatePEM: privatePEM}, nil
}

// Public returns the public key.
func (k *Key) Public() ssh.PublicKey { return k.Signer.PublicKey() }

// AuthorizedKey returns the public key in authorized_keys format, without a
// trailing newline: "ssh-ed25519 AAAA...".
func (k *Key) AuthorizedKey() string { return AuthorizedKey(k.Public()) }

// AuthorizedKey formats a public key as one authorized_keys line without
// the newline.
func AuthorizedKey(pub ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
}

// CloudConfig returns cloud-init user data that installs k as the droplet's
// ed25519 host key, exactly as cloud-init's ssh_keys module reads it.
func (k *Key) CloudConfig() string {
	var b strings.Builder
	b.WriteString("#cloud-config\nssh_keys:\n  ed25519_private: |\n")
	for _, line := range strings.Split(strings.TrimRight(string(k.PrivatePEM), "\n"), "\n") {
		b.WriteString("    ")
		b.WriteString(line)
		b.WriteString("\n")
	}
	b.WriteString("  ed25519_public: ")
	b.WriteString(k.AuthorizedKey())
	b.WriteString("\n")
	return b.String()
}

// KnownHostsLine returns the known_hosts line pinning key for host:port.
func KnownHostsLine(host string, port int, key ssh.PublicKey) string {
	return knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(host, strconv.Itoa(port)))}, key)
}

// Target says where and how to connect.
type Target struct {
	Host    string
	Port    int
	User    string
	HostKey ssh.PublicKey // pinned: any other key is refused
	Signer  ssh.Signer    // the client's key
}

func (t Target) addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// ErrHostKeyMismatch is wrapped by the error of a connection whose server
// presented a key other than the pinned one.
var ErrHostKeyMismatch = errors.New("host key does not match the pinned key")

// Client is a connected SSH client.
type Client struct {
	c      *ssh.Client
	target Target
}

// Dial connects to t, checking the host key against the pinned one.
func Dial(ctx context.Context, t Target) (*Client, error) {
	if t.HostKey == nil || t.Signer == nil {
		return nil, errors.New("sshx: a pinned host key and a client key are required")
	}
	pinned := ssh.FixedHostKey(t.HostKey)
	cfg := &ssh.ClientConfig{
		User: t.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(t.Signer)},
		HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
			if err := pinned(host, remote, key); err != nil {
				return fmt.Errorf("%w: got %s", ErrHostKeyMismatch, ssh.FingerprintSHA256(key))
			}
			return nil
		},
		HostKeyAlgorithms: []string{t.HostKey.Type()},
		Timeout:           20 * time.Second,
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", t.addr())
	if err != nil {
		return nil, err
	}
	// The handshake must not outlive the context either.
	deadline, _ := dctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(conn, t.addr(), cfg)
	stop()
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return &Client{c: ssh.NewClient(sc, chans, reqs), target: t}, nil
}

// WaitReady dials t until it answers and runs a trivial command, or until
// timeout passes. A new droplet refuses connections while it boots, and
// its sshd may briefly present a key that cloud-init has not yet replaced:
// both are retried, never accepted. The last error is returned on timeout.
func WaitReady(ctx context.Context, t Target, timeout time.Duration, logf func(string, ...any)) (*Client, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 250 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		c, err := Dial(ctx, t)
		if err == nil {
			_, err = c.Run(ctx, "true", nil)
			if err == nil {
				return c, nil
			}
			c.Close()
		}
		if last == nil || ctx.Err() == nil {
			// An attempt cut short by the wait's own end says nothing
			// new: the error before it is the one to report.
			last = err
		}
		if logf != nil && attempt%8 == 0 {
			logf("still waiting for ssh on %s: %v", t.addr(), err)
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, fmt.Errorf("ssh on %s did not answer within %v: %w", t.addr(), timeout, last)
			}
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		if delay < 5*time.Second {
			delay *= 2
		}
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// RemoteError is a command that ran but exited non-zero.
type RemoteError struct {
	Cmd    string
	Status int
	Stderr string
}

func (e *RemoteError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	if msg == "" {
		return fmt.Sprintf("remote command exited with status %d", e.Status)
	}
	return fmt.Sprintf("remote command exited with status %d: %s", e.Status, msg)
}

// Run runs cmd through the remote user's shell with stdin (may be nil) and
// returns its stdout. A non-zero exit is a *RemoteError carrying stderr.
// Cancelling ctx closes the channel.
func (c *Client) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	s, err := c.c.NewSession()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdout = &stdout
	s.Stderr = &stderr
	s.Stdin = stdin
	done := make(chan error, 1)
	go func() { done <- s.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// Ask the remote side to stop, and do not wait for it: a
		// remote process may ignore the closed channel for a long time.
		s.Signal(ssh.SIGKILL)
		s.Close()
		return nil, ctx.Err()
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return stdout.Bytes(), &RemoteError{Cmd: cmd, Status: ee.ExitStatus(), Stderr: stderr.String()}
	}
	if err != nil {
		return nil, err
	}
	return stdout.Bytes(), nil
}

// Quote quotes s for a POSIX shell.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Upload copies the local file to remotePath with the given mode, creating
// the parent directories. The file is written under a temporary name,
// checked against the local SHA-256, and renamed into place, so a
// remotePath that exists is always complete.
func (c *Client) Upload(ctx context.Context, localPath, remotePath string, mode os.FileMode) error {
	f, err := os.Open(localPath)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	tmp := remotePath + ".part"
	script := fmt.Sprintf(`set -e
umask 077
mkdir -p %[1]s
cat > %[2]s
sum=$(sha256sum %[2]s | cut -d' ' -f1)
if [ "$sum" != %[3]s ]; then rm -f %[2]s; echo "checksum mismatch after upload" >&2; exit 1; fi
chmod %[4]o %[2]s
mv -f %[2]s %[5]s`, Quote(path.Dir(remotePath)), Quote(tmp), Quote(sum), mode.Perm(), Quote(remotePath))
	if _, err := c.Run(ctx, script, f); err != nil {
		return fmt.Errorf("upload %s to %s: %w", path.Base(localPath), remotePath, err)
	}
	return nil
}
