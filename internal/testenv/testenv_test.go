package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeTB records what a Require* call did to a test.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = true
	f.msg = format
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = format
}

func TestSkipOrFail(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		f := &fakeTB{TB: t}
		SkipOrFail(f, "no %s", "thing")
		if ci == "true" && (!f.failed || f.skipped) {
			t.Errorf("CI=true: want a failure, got skipped=%v failed=%v", f.skipped, f.failed)
		}
		if ci == "" && (!f.skipped || f.failed) {
			t.Errorf("CI unset: want a skip, got skipped=%v failed=%v", f.skipped, f.failed)
		}
	}
}

func TestRequireCommand(t *testing.T) {
	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	RequireCommand(f, "sh")
	if f.skipped || f.failed {
		t.Fatalf("sh is on every machine, but RequireCommand skipped=%v failed=%v", f.skipped, f.failed)
	}
	f = &fakeTB{TB: t}
	RequireCommand(f, "no-such-command-dosvob")
	if !f.skipped {
		t.Fatal("a missing command did not skip")
	}
}

func TestLoopDevice(t *testing.T) {
	p := filepath.Join(t.TempDir(), "backing")
	want := []byte("dosvob loop device test\n")
	if err := os.WriteFile(p, append(want, make([]byte, 1<<20-len(want))...), 0o644); err != nil {
		t.Fatal(err)
	}
	dev := LoopDevice(t, p)
	got := make([]byte, len(want))
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("loop device %s reads %q, want %q", dev, got, want)
	}
}
