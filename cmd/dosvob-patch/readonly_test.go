package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dosvob/dosvob/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestReadOnlyBackupDisk runs every command that reads a backup on a real
// ext4 backup disk mounted read-only, where a write is needed first: an
// interrupted run's journal to roll back, and lock files that a copy tool
// left out. Each exits 1 with one line that says so and a hint that names
// the remount; remounted read-write, the same commands work, roll back or
// make the lock files, and say so.
func TestReadOnlyBackupDisk(t *testing.T) {
	bin, hash := buildBinary(t), buildHash(t)
	disk, _ := mkfs(t, t.TempDir(), "disk", 64<<20)
	dev := testenv.LoopDevice(t, disk)
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		testenv.SkipOrFail(t, "mount %s: %v", dev, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	remount := func(flags uintptr) {
		t.Helper()
		if err := unix.Mount("", mnt, "", unix.MS_REMOUNT|flags, ""); err != nil {
			t.Fatalf("remount %s: %v", mnt, err)
		}
	}

	img := filepath.Join(mnt, "vol.img")
	state := img + ".dosvob"
	r := rand.New(rand.NewPCG(71, 72))
	patch := func(dev []byte, crashAt int) error {
		d, err := makeDelta(img, dev, 4096)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--keep", "2", "--quiet", img)
		cmd.Stdin = bytes.NewReader(d)
		if crashAt > 0 {
			cmd.Env = append(os.Environ(), "DOSVOB_TEST_CRASH_AT="+strconv.Itoa(crashAt))
		}
		out, err := cmd.CombinedOutput()
		if err != nil && crashAt == 0 {
			t.Fatalf("patch: %v\n%s", err, out)
		}
		return err
	}
	v1 := device(r, 4<<20)
	patch(v1, 0)
	v2 := mutate(r, v1, 60)
	patch(v2, 0)
	for k := 5; !exists(filepath.Join(state, "journal")); k += 2 {
		if k > 300 || patch(mutate(r, v2, 300), k) == nil {
			t.Fatal("no crash left a journal")
		}
	}

	out := t.TempDir()
	target := filepath.Join(out, "target")
	commands := []struct{ name, who, script string }{
		{"versions", "dosvob-patch", `"$2" versions "$3"`},
		{"restore-version", "dosvob-patch", `"$2" restore-version --version latest -o "$4.old" "$3"`},
		{"verify", "dosvob-hash", `"$1" --verify "$3"`},
		{"restore pipe", "dosvob-hash", `"$1" --raw "$4" | "$1" --delta "$3" | "$2" --raw "$4"`},
	}
	// expect runs every command on the read-only disk and wants exit 1,
	// the line and the hint from the command that failed.
	expect := func(line, hint string) {
		t.Helper()
		for _, c := range commands {
			os.WriteFile(target, make([]byte, len(v2)), 0o600)
			res, code := runExit(t, hash, bin, img, target, c.script)
			want := 1
			if c.name == "restore pipe" {
				want = 3 // the delta stage fails; dosvob-patch --raw gets no stream
			}
			if code != want || !bytes.Equal(readAll(t, target), make([]byte, len(v2))) {
				t.Errorf("%s on a read-only disk: exit %d, want %d and nothing written\n%s", c.name, code, want, res)
			}
			if !strings.Contains(res, c.who+": "+line+"\n") || !strings.Contains(res, c.who+": hint: "+hint) {
				t.Errorf("%s: want the line\n%s\nand the hint\n%s\ngot:\n%s", c.name, line, hint, res)
			}
			if strings.Contains(res, "read-only file system\n") {
				t.Errorf("%s: a bare system error:\n%s", c.name, res)
			}
		}
	}
	imgBefore := readAll(t, img)
	remount(unix.MS_RDONLY)
	expect(`"`+img+`" holds an interrupted run that must be rolled back (or finished) before the image can be read, and its file system is read-only`,
		"remount its disk read-write (mount -o remount,rw "+mnt+") and run this again, which rolls the run back; or copy")
	if !bytes.Equal(readAll(t, img), imgBefore) {
		t.Fatal("the image changed on a read-only disk")
	}
	remount(0)
	res, code := runExit(t, hash, bin, img, target, `"$2" versions "$3"`)
	if code != 0 || !strings.Contains(res, "recovery: rolled back an interrupted run") {
		t.Fatalf("versions after the remount read-write: exit %d, want 0 and a rollback\n%s", code, res)
	}
	mustEqualFile(t, img, v2)

	// A copy tool that skips empty files: no lock files.
	for _, l := range []string{"lock", "state.lock"} {
		if err := os.Remove(filepath.Join(state, l)); err != nil {
			t.Fatal(err)
		}
	}
	remount(unix.MS_RDONLY)
	expect(`"`+filepath.Join(state, "state.lock")+`" is missing, and it cannot be made again: the file system of "`+img+`" is read-only (dosvob locks the image through that empty file)`,
		"remount its disk read-write (mount -o remount,rw "+mnt+") and run this again, which makes the file; or copy")
	remount(0)
	for _, c := range commands {
		os.Remove(target + ".old")
		os.WriteFile(target, make([]byte, len(v2)), 0o600)
		if res, code := runExit(t, hash, bin, img, target, c.script); code != 0 {
			t.Errorf("%s on the disk read-write again: exit %d\n%s", c.name, code, res)
		}
	}
	mustEqualFile(t, target, v2)
	for _, l := range []string{"lock", "state.lock"} {
		if !exists(filepath.Join(state, l)) {
			t.Errorf("%s was not made again", l)
		}
	}
}
