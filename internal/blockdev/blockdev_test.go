package blockdev

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
	"golang.org/x/sys/unix"
)

// made is a file with a real signature written by the tool that makes it.
type made struct {
	name, tool string
	size       int64
	make       func(t *testing.T, path string) // runs the tool on path
	kind       string                          // what Identify must say
	idKey      string                          // the blkid -p field its ID shows
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	p, err := testenv.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command(p, args...)
	c.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1")
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
}

func sfdisk(script string) func(*testing.T, string) {
	return func(t *testing.T, path string) {
		t.Helper()
		c := exec.Command("sfdisk", "--quiet", path)
		c.Stdin = strings.NewReader(script)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("sfdisk: %v\n%s", err, out)
		}
	}
}

var kinds = []made{
	{"ext4", "mkfs.ext4", 32 << 20, func(t *testing.T, p string) { run(t, "mkfs.ext4", "-q", "-F", p) }, "an ext4 file system", "UUID"},
	{"ext2", "mkfs.ext4", 32 << 20, func(t *testing.T, p string) { run(t, "mkfs.ext4", "-q", "-F", "-t", "ext2", p) }, "an ext2 file system", "UUID"},
	{"ext3", "mkfs.ext4", 32 << 20, func(t *testing.T, p string) { run(t, "mkfs.ext4", "-q", "-F", "-t", "ext3", p) }, "an ext3 file system", "UUID"},
	{"xfs", "mkfs.xfs", 320 << 20, func(t *testing.T, p string) { run(t, "mkfs.xfs", "-q", p) }, "an xfs file system", "UUID"},
	{"btrfs", "mkfs.btrfs", 128 << 20, func(t *testing.T, p string) { run(t, "mkfs.btrfs", "-q", p) }, "a btrfs file system", "UUID"},
	{"swap", "mkswap", 16 << 20, func(t *testing.T, p string) { run(t, "mkswap", "-q", p) }, "a swap area", "UUID"},
	{"luks", "cryptsetup", 32 << 20, func(t *testing.T, p string) {
		key := filepath.Join(t.TempDir(), "key")
		os.WriteFile(key, []byte("not a secret"), 0o600)
		run(t, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, p)
	}, "a LUKS encrypted volume", "UUID"},
	{"lvm", "pvcreate", 16 << 20, func(t *testing.T, p string) {
		run(t, "pvcreate", "-q", "-y", "-ff", testenv.LoopDevice(t, p))
	}, "an LVM2 physical volume", "UUID"},
	{"gpt", "sfdisk", 16 << 20, sfdisk("label: gpt\n,4M,L\n,,L\n"), "a GPT partition table", "PTUUID"},
	{"mbr", "sfdisk", 16 << 20, sfdisk("label: dos\n,4M,L\n,,L\n"), "an MBR partition table or boot sector", "PTUUID"},
}

// sparse makes a file of size zero bytes at p, and returns p.
func sparse(t *testing.T, p string, size int64) string {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// blkid returns the fields of blkid -p -o export for path.
func blkid(t *testing.T, path string) map[string]string {
	t.Helper()
	p, err := testenv.LookPath("blkid")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(p, "-p", "-o", "export", path).Output()
	if err != nil {
		t.Fatalf("blkid -p %s: %v", path, err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

func head(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, HeadSize)
	n, _ := f.ReadAt(b, 0)
	return b[:n]
}

// TestIdentify makes each kind twice with its own tool and checks that
// Identify names it, shows the identity blkid shows, tells the two apart,
// and still knows the first after its data (past the signature) changed.
func TestIdentify(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			testenv.RequireCommand(t, k.tool, "blkid")
			dir := t.TempDir()
			var sigs []*Signature
			for i := range 2 {
				p := sparse(t, filepath.Join(dir, k.name+string(rune('a'+i))), k.size)
				k.make(t, p)
				s := Identify(head(t, p))
				if s == nil {
					t.Fatalf("%s made by %s: Identify found nothing", k.name, k.tool)
				}
				if s.Kind != k.kind {
					t.Errorf("kind %q, want %q", s.Kind, k.kind)
				}
				want := strings.ToLower(blkid(t, p)[k.idKey])
				if want == "" || !strings.Contains(strings.ToLower(s.ID), want) {
					t.Errorf("identity %q, blkid says %s=%q", s.ID, k.idKey, want)
				}
				t.Logf("%s", s)
				sigs = append(sigs, s)

				// Data past the signatures changes, as between two backups.
				f, err := os.OpenFile(p, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteAt(bytes.Repeat([]byte{0xa5}, 64<<10), k.size-(1<<20))
				f.Close()
				if again := Identify(head(t, p)); !s.Same(again) {
					t.Errorf("after a change past its signature: %v, want the same as %v", again, s)
				}
			}
			if sigs[0].Same(sigs[1]) {
				t.Errorf("two made one after the other are the same: %v and %v", sigs[0], sigs[1])
			}
		})
	}
}

// TestIdentifyNothing: a new volume (zeros) and data in no known format
// have no signature, and a nil signature is the same only as nil.
func TestIdentifyNothing(t *testing.T) {
	if s := Identify(make([]byte, HeadSize)); s != nil {
		t.Errorf("zeros: %v", s)
	}
	b := make([]byte, HeadSize)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	b[510], b[511] = 0, 0
	if s := Identify(b); s != nil {
		t.Errorf("random data: %v", s)
	}
	if Identify(b[:100]) != nil || Identify(nil) != nil {
		t.Error("a short head gave a signature")
	}
	var none *Signature
	if !none.Same(nil) || none.Same(&Signature{Kind: "x"}) || (&Signature{Kind: "x"}).Same(nil) {
		t.Error("Same with nil is wrong")
	}
}

// TestOpenBusy: a block device that is mounted (read-only, too) or open
// exclusively elsewhere is refused with a BusyError that says so; free
// again, it opens, and regular files open as they are.
func TestOpenBusy(t *testing.T) {
	testenv.RequireCommand(t, "mkfs.ext4")
	file := sparse(t, filepath.Join(t.TempDir(), "disk"), 16<<20)
	run(t, "mkfs.ext4", "-q", "-F", file)
	dev := testenv.LoopDevice(t, file)
	if !IsBlock(dev) || IsBlock(file) {
		t.Fatalf("IsBlock(%s) = %v, IsBlock(%s) = %v", dev, IsBlock(dev), file, IsBlock(file))
	}

	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		testenv.SkipOrFail(t, "mount %s read-only: %v", dev, err)
	}
	_, err := Open(dev, os.O_RDWR)
	if err2 := unix.Unmount(mnt, 0); err2 != nil {
		t.Fatalf("unmount %s: %v", mnt, err2)
	}
	var be *BusyError
	if !errors.As(err, &be) || !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "mounted on "+mnt) {
		t.Fatalf("open of a device mounted read-only: %v, want a BusyError naming %s", err, mnt)
	}
	t.Log(err)

	f, err := Open(dev, os.O_RDWR)
	if err != nil {
		t.Fatalf("open of the unmounted device: %v", err)
	}
	_, err = Open(dev, os.O_RDONLY)
	if !errors.As(err, &be) || len(be.Uses) != 0 || !strings.Contains(err.Error(), "another program holds it") {
		t.Fatalf("open of a device open exclusively elsewhere: %v", err)
	}
	t.Log(err)
	// While it is held, nothing can mount it.
	if err := unix.Mount(dev, mnt, "ext4", unix.MS_RDONLY, ""); err == nil {
		unix.Unmount(mnt, 0)
		t.Fatal("the device was mounted while Open held it")
	}
	f.Close()

	g, err := Open(file, os.O_RDWR)
	if err != nil {
		t.Fatalf("a regular file: %v", err)
	}
	g.Close()
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/mnt/a\040b`: "/mnt/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `/end\04`: `/end\04`} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
