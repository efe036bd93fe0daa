package cloud

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Hooks are the user's commands run locally, through /bin/sh, just before
// and just after each volume's snapshot (e.g. to fsfreeze its filesystem).
// A post-snapshot hook runs whenever the pre-snapshot hook was started,
// also when it failed, timed out or was interrupted, and when the snapshot
// failed: so a frozen filesystem is always thawed.
type Hooks struct {
	PreSnapshot  string
	PostSnapshot string
	Timeout      time.Duration
}

// HookEnv is what a hook learns about the volume, as environment
// variables.
type HookEnv struct {
	Hook     string // "pre_snapshot" or "post_snapshot"
	RunID    string
	Volume   string // the source volume's name
	VolumeID string
	Region   string
	Result   string // post_snapshot only: "ok", "failed", or "skipped" (the pre hook did not succeed)
}

// RunHook runs one hook command. Its output goes to stderr, and the
// environment it inherits is cleared of the API token variables.
func RunHook(ctx context.Context, command string, env HookEnv, timeout time.Duration, stderr *os.File) error {
	if command == "" {
		return nil
	}
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var vars []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "DIGITALOCEAN_ACCESS_TOKEN" || k == "DIGITALOCEAN_TOKEN" || strings.HasPrefix(k, "DOSVOB_") {
			continue
		}
		vars = append(vars, kv)
	}
	vars = append(vars,
		"DOSVOB_HOOK="+env.Hook,
		"DOSVOB_RUN_ID="+env.RunID,
		"DOSVOB_VOLUME_NAME="+env.Volume,
		"DOSVOB_VOLUME_ID="+env.VolumeID,
		"DOSVOB_VOLUME_REGION="+env.Region,
	)
	if env.Result != "" {
		vars = append(vars, "DOSVOB_SNAPSHOT_RESULT="+env.Result)
	}
	cmd.Env = vars
	cmd.Stdout = stderr // stdout carries the run JSON: hooks write to stderr
	var errBuf bytes.Buffer
	if stderr != nil {
		cmd.Stderr = stderr
	} else {
		cmd.Stderr = &errBuf
	}
	if err := cmd.Run(); err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("%s hook for volume %q did not finish within %v", env.Hook, env.Volume, timeout)
		}
		return fmt.Errorf("%s hook for volume %q failed: %v", env.Hook, env.Volume, err)
	}
	return nil
}
