// Package blockdev keeps a raw write from destroying a disk that is not the
// one meant. Open claims a block device exclusively, which Linux refuses for
// a device that is mounted or otherwise in use; Identify reads the
// signatures at a device's start (file systems, partition tables, LVM,
// LUKS, swap), so that a write can tell an empty device, or an earlier
// restore of the same file system, from someone's disk.
package blockdev

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBusy reports a block device that the kernel would not hand out
// exclusively: it is mounted, held by LVM, RAID, device-mapper or active
// swap, or opened exclusively by another program.
var ErrBusy = errors.New("device is in use")

// BusyError names the device and what is known to use it.
type BusyError struct {
	Path string
	// Uses says what holds it, as far as /proc and /sys tell: "mounted on
	// /srv", "its partition sdb1 is mounted on /data", "held by dm-0".
	// Empty when nothing there says (another program's exclusive open).
	Uses []string
}

func (e *BusyError) Error() string {
	if len(e.Uses) == 0 {
		return fmt.Sprintf("%q is in use: the kernel refused to open it exclusively (another program holds it, or it is mounted or part of LVM, RAID or swap)", e.Path)
	}
	return fmt.Sprintf("%q is in use: %s", e.Path, strings.Join(e.Uses, ", "))
}

func (e *BusyError) Unwrap() error { return ErrBusy }

// Open opens the file at path with flag; a block device is opened with
// O_EXCL as well. Linux refuses that (EBUSY, returned as a *BusyError) for
// a device that is mounted, even read-only, or has a mounted partition, or
// is part of LVM, RAID, device-mapper or active swap, or is open with
// O_EXCL elsewhere; and while the file stays open nothing can mount or
// claim the device. Other files are opened as they are.
func Open(path string, flag int) (*os.File, error) {
	if isBlock(path, os.Stat) {
		flag |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flag, 0)
	if errors.Is(err, unix.EBUSY) && flag&unix.O_EXCL != 0 {
		return nil, &BusyError{Path: path, Uses: uses(path)}
	}
	if err != nil {
		return nil, err
	}
	if flag&unix.O_EXCL == 0 && isBlock(path, func(string) (os.FileInfo, error) { return f.Stat() }) {
		// It became a device between the two looks: claim it after all.
		f.Close()
		return Open(path, flag|unix.O_EXCL)
	}
	return f, nil
}

// IsBlock reports whether path is a block device.
func IsBlock(path string) bool { return isBlock(path, os.Stat) }

func isBlock(path string, stat func(string) (os.FileInfo, error)) bool {
	fi, err := stat(path)
	return err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
}

// uses says what holds the block device at path: its mount points and
// those of its partitions, and its holders (device-mapper, RAID).
func uses(path string) []string {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return nil
	}
	id := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	mounts := mountPoints()
	var out []string
	for _, m := range mounts[id] {
		out = append(out, "mounted on "+m)
	}
	sys := filepath.Join("/sys/dev/block", id)
	parts, _ := filepath.Glob(filepath.Join(sys, "*", "partition"))
	for _, p := range parts {
		dir := filepath.Dir(p)
		b, err := os.ReadFile(filepath.Join(dir, "dev"))
		if err != nil {
			continue
		}
		for _, m := range mounts[strings.TrimSpace(string(b))] {
			out = append(out, "its partition "+filepath.Base(dir)+" is mounted on "+m)
		}
	}
	holders, _ := os.ReadDir(filepath.Join(sys, "holders"))
	for _, h := range holders {
		out = append(out, "held by "+h.Name())
	}
	return out
}

// mountPoints maps "major:minor" to the mount points of that device, from
// /proc/self/mountinfo.
func mountPoints() map[string][]string {
	m := map[string][]string{}
	mountinfo(func(dev, point string) { m[dev] = append(m[dev], point) })
	return m
}

// MountPointOf returns the mount point under which path lies (the longest
// one that holds it, so a bind mount counts), "" if it cannot tell.
func MountPointOf(path string) string {
	p, err := filepath.Abs(path)
	if err != nil {
		return ""
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	best := ""
	mountinfo(func(_, point string) {
		if (point == "/" || p == point || strings.HasPrefix(p, point+"/")) && len(point) >= len(best) {
			best = point
		}
	})
	return best
}

// mountinfo calls fn with the device ("major:minor") and mount point of
// each line of /proc/self/mountinfo, in order.
func mountinfo(fn func(dev, point string)) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mount-point options ...
		if fs := strings.Fields(sc.Text()); len(fs) > 4 {
			fn(fs[2], unescape(fs[4]))
		}
	}
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
