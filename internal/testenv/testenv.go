// Package testenv decides, in one place, whether a test that needs something
// from the machine (root, loop devices, OpenSSH's sshd, a command) can run.
//
// The rule: on a developer's machine that lacks it, the test skips with a
// message saying what is missing; when CI=true, it fails instead, because CI
// must run every test. Tests call Require* at their start.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run in CI (CI=true), where nothing may skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips t with the formatted reason, or fails it when InCI.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true, so not skipping: "+format, args...)
		return
	}
	t.Skipf(format, args...)
}

// RequireRoot needs the test to run as root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "%s: needs root", why)
	}
}

// RequireCommand needs each named program on PATH (or in /usr/sbin, /sbin).
func RequireCommand(t testing.TB, names ...string) {
	t.Helper()
	var missing []string
	for _, n := range names {
		if _, err := LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		SkipOrFail(t, "needs %s on PATH", strings.Join(missing, ", "))
	}
}

// LookPath is exec.LookPath that also searches /usr/sbin and /sbin, where
// Debian puts sshd and losetup but a non-root PATH may not reach.
func LookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

// RequireSSHD needs root and OpenSSH's server, as the emulator's droplets
// and the loopback ssh tests do.
func RequireSSHD(t testing.TB) {
	t.Helper()
	RequireRoot(t, "sshd on loopback addresses")
	RequireCommand(t, "sshd", "ssh", "ssh-keygen")
}

// LoopDevice attaches a loop device to the file at path and detaches it
// when the test ends. It needs root and losetup.
func LoopDevice(t testing.TB, path string) string {
	t.Helper()
	RequireRoot(t, "loop devices")
	RequireCommand(t, "losetup")
	out, err := exec.Command("losetup", "--find", "--show", path).CombinedOutput()
	if err != nil {
		SkipOrFail(t, "losetup --find --show %s: %v: %s", path, err, strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// SmallFS mounts a tmpfs of size bytes on a new directory, which it
// returns, and unmounts it when the test ends: a file system that fills up
// for real. It needs root.
func SmallFS(t testing.TB, size int64) string {
	t.Helper()
	RequireRoot(t, "mounting a small tmpfs")
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		SkipOrFail(t, "mount a %d-byte tmpfs on %s: %v", size, dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// ReadOnlyBind mounts dir read-only on a new directory, which it returns,
// and unmounts it when the test ends: the same files, seen through a
// read-only mount. It needs root.
func ReadOnlyBind(t testing.TB, dir string) string {
	t.Helper()
	RequireRoot(t, "a read-only bind mount")
	ro := t.TempDir()
	if err := unix.Mount(dir, ro, "", unix.MS_BIND, ""); err != nil {
		SkipOrFail(t, "bind mount %s on %s: %v", dir, ro, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(ro, 0); err != nil {
			t.Errorf("unmount %s: %v", ro, err)
		}
	})
	if err := unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", ro, err)
	}
	return ro
}

// RepoRoot returns the directory of the module's go.mod, found by walking up
// from the test's working directory (its package directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// Rot flips one bit of the file at path at offset off and gives the file
// its modification time back, as bit rot on a disk does: nothing but the
// content tells.
func Rot(t testing.TB, path string, off int64) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
}
