package imagestore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenTempNotALeftover: a symbolic link or a FIFO by the temporary
// file's name is no leftover of dosvob: it is refused, and what a link
// points to is not touched.
func TestOpenTempNotALeftover(t *testing.T) {
	dir := t.TempDir()
	precious := filepath.Join(dir, "precious")
	if err := os.WriteFile(precious, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.img")
	if err := os.Symlink(precious, out+tempSuffix); err != nil {
		t.Fatal(err)
	}
	if f, err := openTemp(out, t.Logf); !errors.Is(err, ErrExists) {
		f.Close()
		t.Fatalf("a symbolic link: %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(precious); string(b) != "keep me" {
		t.Fatalf("the link's target changed: %q", b)
	}
	out = filepath.Join(dir, "fifo.img")
	if err := unix.Mkfifo(out+tempSuffix, 0o600); err != nil {
		t.Fatal(err)
	}
	if f, err := openTemp(out, t.Logf); !errors.Is(err, ErrExists) {
		f.Close()
		t.Fatalf("a FIFO: %v, want ErrExists", err)
	}
}
