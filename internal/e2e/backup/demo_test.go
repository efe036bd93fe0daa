package backup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dosvob/dosvob/internal/testenv"
)

// TestDemo runs scripts/demo.sh, the README's first command, exactly as a
// newcomer would, building the binaries itself (from the build cache that
// the other tests warmed): the standalone emulator with loop-device
// volumes, two backups, the changed files read back from the image,
// versions, scrub, and an untouched account at the end.
func TestDemo(t *testing.T) {
	t.Parallel()
	requireEnv(t)
	testenv.RequireCommand(t, "debugfs", "curl", "go")
	binDir(t) // warm the build cache
	work := filepath.Join(t.TempDir(), "demo")
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "demo.sh"), "--workdir", work)
	cmd.Env = withoutEnv(os.Environ(), "DOSVOB_BIN")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("demo.sh took %v", time.Since(start))
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	for _, want := range []string{
		"Winter sale",   // the changed file, read from the backup image
		"3,carol,99.90", // the other volume's change
		"20261",         // a kept version is listed
		"is intact",     // the scrub
		"the account is exactly as before",
		"nothing to delete", // teardown --all --dry-run finds nothing of dosvob's
		"was not backed up", // the excluded volume
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(work); err == nil {
		t.Errorf("the demo left its work directory %s", work)
	}
}

// withoutEnv returns env without the variable key.
func withoutEnv(env []string, key string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}
