package backup

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestTokenOnlyWhereNeeded: with the API token in DIGITALOCEAN_ACCESS_TOKEN
// (the config has no token), a backup and a restore work, and only
// dosvob-provision and dosvob-teardown get the token in their environment:
// not ssh, dosvob-hash, dosvob-patch, jq, tail, sleep, curl (the pings) or
// the hook. Each is stood in for by a spy that notes whether it got the
// token, then runs the real program.
func TestTokenOnlyWhereNeeded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	var conf map[string]any
	b, err := os.ReadFile(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	delete(conf, "token_file")
	b, _ = json.Marshal(conf)
	e.conf = filepath.Join(e.dir, "conf-env-token.json")
	writeFile(t, e.conf, string(b), 0o600)

	spyLog := filepath.Join(e.dir, "spy.log")
	spy := func(name string) string {
		return `if [[ -n "${DIGITALOCEAN_ACCESS_TOKEN-}${DIGITALOCEAN_TOKEN-}" ]]; then echo "` + name + ` token"; else echo "` + name + ` none"; fi >>` + spyLog
	}
	bodies := map[string]string{}
	for _, b := range []string{"dosvob-hash", "dosvob-patch", "dosvob-provision", "dosvob-teardown"} {
		bodies[b] = spy(b) + "\nexec \"$REAL\" \"$@\""
	}
	bin := e.binWith(bodies)
	spyPath := filepath.Join(e.dir, "spy-path")
	if err := os.Mkdir(spyPath, 0o700); err != nil {
		t.Fatal(err)
	}
	tools := []string{"ssh", "jq", "tail", "sleep", "curl"}
	for _, tool := range tools {
		real, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(spyPath, tool), "#!/bin/bash\n"+spy(tool)+"\nexec "+real+` "$@"`+"\n", 0o755)
	}
	run := func(name string, args ...string) result {
		cmd, stdout, stderr := e.script(name, append([]string{"--config", e.conf, "--bin", bin}, args...)...)
		cmd.Env = append(cmd.Env, "PATH="+spyPath+":"+os.Getenv("PATH"), "DIGITALOCEAN_ACCESS_TOKEN="+token)
		return <-e.start(cmd, stdout, stderr)
	}

	p := newPings(t)
	hookEnv := filepath.Join(e.dir, "hook.env")
	r := run("backup-all.sh", "--keep", "3", "--ping-url", p.srv.URL+"/uuid", "--hook", "env >"+hookEnv, e.backups)
	if r.code != 0 {
		t.Fatalf("backup-all.sh with the token in the environment exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
	}
	e.checkImages()
	checkPings(t, p, "uuid", true)
	r = run("restore.sh", "--volume-name", "db-env-token", "--region", "fra1", e.image("fra1/db"))
	if r.code != 0 {
		t.Fatalf("restore.sh with the token in the environment exited %d, want 0\nstderr:\n%s", r.code, r.stderr)
	}
	e.checkNothingLeft("fra1/db-env-token")

	if b, err := os.ReadFile(hookEnv); err != nil {
		t.Fatalf("the hook did not run: %v", err)
	} else if strings.Contains(string(b), "DIGITALOCEAN") || strings.Contains(string(b), token) {
		t.Errorf("the hook got the token in its environment")
	}
	b, err = os.ReadFile(spyLog)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, name := range append(tools, "dosvob-hash", "dosvob-patch", "dosvob-provision", "dosvob-teardown") {
		want := name + " none"
		if name == "dosvob-provision" || name == "dosvob-teardown" {
			want = name + " token"
		}
		if !slices.Contains(lines, want) {
			t.Errorf("no %q among what the spies saw: the test proves nothing for %s", want, name)
		}
		for _, l := range lines {
			if strings.HasPrefix(l, name+" ") && l != want {
				t.Errorf("%s: got %q, want %q", name, l, want)
				break
			}
		}
	}
}
