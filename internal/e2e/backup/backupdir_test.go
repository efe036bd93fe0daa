package backup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupDirParentMissing: backup-all.sh makes the backup directory's
// last component only. A parent that does not exist (a backup disk that is
// not mounted) is a set-up error, exit 2, with one line that says so:
// nothing is made on the local disk, nothing in the account, and no work
// directory is left. Before, it ran mkdir -p on the whole path and backed up
// onto the root file system.
func TestBackupDirParentMissing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	missing := filepath.Join(e.dir, "not-mounted")
	e.backups = filepath.Join(missing, "dosvob", "images")
	r := e.backup()
	if r.code != 2 {
		t.Fatalf("backup-all.sh into %s exited %d, want 2\nstderr:\n%s", e.backups, r.code, r.stderr)
	}
	want := `backup-all: cannot create the backup directory "` + e.backups + `": its parent "` +
		filepath.Dir(e.backups) + `" does not exist (is the backup disk mounted?)`
	if !strings.Contains(r.stderr, want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("want one line %q, got:\n%s", want, r.stderr)
	}
	if _, err := os.Lstat(missing); !os.IsNotExist(err) {
		t.Errorf("%s was made (%v): want nothing made", missing, err)
	}
	if dirs := workDirs(t, e.dir); len(dirs) != 0 {
		t.Errorf("work directories left: %v", dirs)
	}
	e.checkNothingLeft()
}
