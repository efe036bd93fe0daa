package doemu

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

// CheckSSH says why droplets that answer SSH cannot work here, or nil: it
// takes root (an sshd that logs in as root, loopback addresses, loop
// devices) and OpenSSH's sshd at the path sshd. Its error reads after
// "SSH " or "--ssh ": "needs root (running as uid 1000)".
func CheckSSH(sshd string) error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("needs root (running as uid %d)", uid)
	}
	fi, err := os.Stat(sshd)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("needs OpenSSH's sshd at %q: %w", sshd, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("needs OpenSSH's sshd at %q: not an executable file", sshd)
	}
	return nil
}

// sshdProc is a running sshd of one droplet.
type sshdProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// Loopback addresses handed to droplets, shared by every emulator in the
// process so that two emulators never give out the same address.
var addrs = struct {
	sync.Mutex
	used map[string]bool
}{used: map[string]bool{}}

const maxTakenAddrs = 64

// reserveAddr reserves the next free loopback address 127.0.0.2, .3, ...
// With port > 0 it skips addresses where that port is taken (by another
// process, for instance).
func reserveAddr(port int) (string, error) {
	addrs.Lock()
	defer addrs.Unlock()
	taken := 0
	for n := 2; n < 1<<16; n++ {
		if n&0xff == 0 || n&0xff == 0xff {
			continue
		}
		a := fmt.Sprintf("127.0.%d.%d", n>>8, n&0xff)
		if addrs.used[a] {
			continue
		}
		if port > 0 {
			ln, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				// A server listening on every address (0.0.0.0:port) takes
				// the port on all of them: give up instead of trying 65000.
				if taken++; taken >= maxTakenAddrs {
					return "", fmt.Errorf("port %d is taken on %d loopback addresses in a row (does a server listen on 0.0.0.0:%d?); choose another SSH port", port, taken, port)
				}
				continue
			}
			ln.Close()
		}
		addrs.used[a] = true
		return a, nil
	}
	return "", errors.New("no free loopback address")
}

func releaseAddr(a string) {
	addrs.Lock()
	defer addrs.Unlock()
	delete(addrs.used, a)
}

// cloudConfig is the part of a cloud-init user-data document the emulator
// reads: the host keys ("ssh_keys") and extra authorized keys.
type cloudConfig struct {
	SSHKeys           map[string]string `yaml:"ssh_keys"`
	SSHAuthorizedKeys []string          `yaml:"ssh_authorized_keys"`
}

// hostKeyTypes are the key types cloud-init accepts in ssh_keys.
var hostKeyTypes = []string{"rsa", "ecdsa", "ed25519"}

// boot brings a droplet up: an address and, with Options.SSH, its sshd.
func (e *Emulator) boot(d *droplet) error {
	d.devMu.Lock()
	defer d.devMu.Unlock()
	if d.stopped {
		return nil
	}
	if !e.opts.SSH {
		a, err := reserveAddr(0)
		if err != nil {
			return err
		}
		d.addr = a
		return nil
	}
	if err := e.writeSSHFiles(d); err != nil {
		return err
	}
	return e.startSSHDLocked(d)
}

// writeSSHFiles writes the droplet's host keys (from its user data, as
// cloud-init does; generated when it has none) and root's authorized_keys.
func (e *Emulator) writeSSHFiles(d *droplet) error {
	var cc cloudConfig
	if strings.HasPrefix(d.UserData, "#cloud-config") {
		if err := yaml.Unmarshal([]byte(d.UserData), &cc); err != nil {
			e.logf("droplet %d: user data is not valid cloud-config: %v", d.ID, err)
		}
	}
	etc := filepath.Join(d.Root, "etc/ssh")
	n := 0
	for _, t := range hostKeyTypes {
		priv := cc.SSHKeys[t+"_private"]
		if priv == "" {
			continue
		}
		if _, err := ssh.ParsePrivateKey([]byte(priv)); err != nil {
			return fmt.Errorf("droplet %d: user data ssh_keys %s_private: %w", d.ID, t, err)
		}
		path := filepath.Join(etc, "ssh_host_"+t+"_key")
		if err := os.WriteFile(path, []byte(ensureNewline(priv)), 0o600); err != nil {
			return err
		}
		if pub := cc.SSHKeys[t+"_public"]; pub != "" {
			if err := os.WriteFile(path+".pub", []byte(ensureNewline(pub)), 0o644); err != nil {
				return err
			}
		}
		n++
	}
	if n == 0 {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		block, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(etc, "ssh_host_ed25519_key"), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	keys := append(append([]string{}, d.authorized...), cc.SSHAuthorizedKeys...)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(strings.TrimSpace(k) + "\n")
	}
	return os.WriteFile(filepath.Join(d.Root, "root/.ssh/authorized_keys"), []byte(b.String()), 0o600)
}

func ensureNewline(s string) string {
	if strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
}

// sshdConfig is the droplet's sshd_config.
func (e *Emulator) sshdConfig(d *droplet, addr string) (string, error) {
	etc := filepath.Join(d.Root, "etc/ssh")
	keys, err := filepath.Glob(filepath.Join(etc, "ssh_host_*_key"))
	if err != nil {
		return "", err
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "# sshd of emulated droplet %d (%s)\n", d.ID, d.Name)
	fmt.Fprintf(&b, "ListenAddress %s\n", net.JoinHostPort(addr, strconv.Itoa(e.opts.SSHPort)))
	for _, k := range keys {
		fmt.Fprintf(&b, "HostKey %s\n", k)
	}
	fmt.Fprintf(&b, "AuthorizedKeysFile %s\n", filepath.Join(d.Root, "root/.ssh/authorized_keys"))
	b.WriteString("PermitRootLogin prohibit-password\n")
	b.WriteString("AllowUsers root\n")
	b.WriteString("PubkeyAuthentication yes\n")
	b.WriteString("PasswordAuthentication no\n")
	b.WriteString("KbdInteractiveAuthentication no\n")
	b.WriteString("StrictModes no\n")
	b.WriteString("UsePAM no\n")
	b.WriteString("PidFile none\n")
	b.WriteString("PrintMotd no\n")
	b.WriteString("MaxStartups 100\n")
	b.WriteString("Subsystem sftp internal-sftp\n")
	// HOME is the droplet's own /root, so that a login does not run the
	// host's ~/.bashrc (bash reads it when sshd starts it) and sees a fresh
	// droplet's home.
	fmt.Fprintf(&b, "SetEnv DOSVOB_ROOT=%s HOME=%s\n", d.Root, filepath.Join(d.Root, "root"))
	path := filepath.Join(etc, "sshd_config")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// startSSHDLocked starts the droplet's sshd on its address (reserving one
// first) and waits until it listens. Call with d.devMu held.
func (e *Emulator) startSSHDLocked(d *droplet) error {
	if d.stopped || d.sshd != nil || !e.opts.SSH {
		return nil
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return fmt.Errorf("privilege separation directory: %w", err)
	}
	var lastErr error
	for try := 0; try < 10; try++ {
		addr := d.addr
		if addr == "" {
			a, err := reserveAddr(e.opts.SSHPort)
			if err != nil {
				return err
			}
			addr = a
		}
		p, err := e.runSSHD(d, addr)
		if err == nil {
			d.addr, d.sshd = addr, p
			return nil
		}
		lastErr = err
		if d.addr != "" {
			break // the droplet keeps its address: do not move it
		}
		// Leave the address reserved: something else holds it.
		e.logf("droplet %d: sshd on %s: %v; trying another address", d.ID, addr, err)
	}
	return fmt.Errorf("droplet %d: sshd: %w", d.ID, lastErr)
}

// runSSHD starts sshd for addr and waits for "Server listening".
func (e *Emulator) runSSHD(d *droplet, addr string) (*sshdProc, error) {
	cfg, err := e.sshdConfig(d, addr)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.opts.SSHD, "-D", "-e", "-f", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &sshdProc{cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	var tail []string
	var tailMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			e.logf("droplet %d sshd: %s", d.ID, line)
			tailMu.Lock()
			tail = append(tail, line)
			if len(tail) > 5 {
				tail = tail[1:]
			}
			tailMu.Unlock()
			if !signalled && strings.Contains(line, "Server listening on") {
				signalled = true
				close(ready)
			}
		}
		cmd.Wait()
		close(p.done)
	}()
	select {
	case <-ready:
		return p, nil
	case <-p.done:
		tailMu.Lock()
		defer tailMu.Unlock()
		return nil, fmt.Errorf("sshd exited: %s", strings.Join(tail, "; "))
	case <-time.After(10 * time.Second):
		killTree(cmd.Process.Pid)
		<-p.done
		return nil, errors.New("sshd did not start listening within 10s")
	}
}

// stopSSHD stops the droplet's sshd and every login it serves. Call with
// d.devMu held.
func (e *Emulator) stopSSHD(d *droplet) {
	p := d.sshd
	if p == nil {
		return
	}
	d.sshd = nil
	killTree(p.cmd.Process.Pid)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		e.logf("droplet %d: sshd %d did not exit", d.ID, p.cmd.Process.Pid)
	}
}

// killTree terminates pid and all its descendants (sshd puts each
// connection in a process group of its own (setsid), so killing its group is
// not enough): SIGTERM first, SIGKILL for whatever is left after a moment.
func killTree(pid int) {
	pids := append(descendants(pid), pid)
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		alive := false
		for _, p := range pids {
			if syscall.Kill(p, 0) == nil && !isZombie(p) {
				alive = true
				break
			}
		}
		if !alive {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// descendants lists the processes below pid, from /proc.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		p, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		if pp := parentOf(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// procStat returns the fields of /proc/pid/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func parentOf(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}

func isZombie(pid int) bool {
	f := procStat(pid)
	return len(f) == 0 || f[0] == "Z"
}
