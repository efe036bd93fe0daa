package backup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// binWith makes a directory with the built binaries (symlinks), in which
// each binary named in bodies is a bash script instead: its body, with
// $REAL the real binary. The scripts take it with --bin.
func (e *env) binWith(bodies map[string]string) string {
	dir, err := os.MkdirTemp(e.dir, "bin-")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, b := range []string{"dosvob-hash", "dosvob-patch", "dosvob-provision", "dosvob-teardown"} {
		real := filepath.Join(e.bin, b)
		if body, ok := bodies[b]; ok {
			writeFile(e.t, filepath.Join(dir, b), "#!/bin/bash\nREAL="+real+"\n"+body+"\n", 0o755)
		} else if err := os.Symlink(real, filepath.Join(dir, b)); err != nil {
			e.t.Fatal(err)
		}
	}
	return dir
}

// TestProvisionCrash: a dosvob-provision that dies after its run began
// exits with whatever code its crash gives (a Go panic exits 2, as a
// refused config does; 6 is a lock's). The scripts must not read "nothing
// was created" into that code: the run id that provision wrote before it
// created anything says a run exists, so they tear it down, exit 7, and
// the account is as before (but for a restore's new volume, which is
// kept). The crash is stood in for by a wrapper that lets the real
// dosvob-provision make the whole run, drops its JSON and exits the code.
func TestProvisionCrash(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	img := filepath.Join(e.dir, "loose", "some.img")
	if err := os.Mkdir(filepath.Dir(img), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, img, strings.Repeat("dosvob restore ", 4096), 0o600)
	var kept []string // the restores' new volumes
	for _, code := range []string{"2", "6"} {
		bin := e.binWith(map[string]string{"dosvob-provision": `"$REAL" "$@" >/dev/null; exit ` + code})
		check := func(t *testing.T, prog string, r result) {
			if !strings.Contains(r.stderr, "is ready") {
				t.Fatalf("dosvob-provision made no run: the test proves nothing\nstderr:\n%s", r.stderr)
			}
			if r.code != 7 {
				t.Errorf("%s exited %d after dosvob-provision exited %s with a run, want 7\nstderr:\n%s", prog, r.code, code, r.stderr)
			}
			if !strings.Contains(r.stderr, "provisioning failed (dosvob-provision exit "+code+") after it had started run ") ||
				!strings.Contains(r.stderr, "(provisioning did not finish") {
				t.Errorf("%s does not say that it tears down the run that provision started:\n%s", prog, r.stderr)
			}
			if strings.Contains(r.stderr, "nothing was created") || strings.Contains(r.stderr, "nothing to tear down") {
				t.Errorf("%s claims that nothing was created:\n%s", prog, r.stderr)
			}
			checkNoTeardownAll(t, prog, r.stderr)
			e.checkNothingLeft(kept...)
		}
		t.Run("backup-all exit "+code, func(t *testing.T) {
			e.t = t
			check(t, "backup-all.sh", e.backup("--bin", bin))
		})
		t.Run("restore exit "+code, func(t *testing.T) {
			e.t = t
			name := "crashed-" + code
			kept = append(kept, "fra1/"+name)
			check(t, "restore.sh", e.restore("--bin", bin, "--volume-name", name, "--region", "fra1", img))
		})
	}
}
