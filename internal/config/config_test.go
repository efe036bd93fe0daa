package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, data string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask must not hide the mode under test
		t.Fatal(err)
	}
	return p
}

func noenv(string) string { return "" }

func TestOriginalConfJSON(t *testing.T) {
	// The original dosvob conf.json: exactly these two fields.
	p := writeFile(t, "conf.json", `{"do_token": "dop_v1_abc", "region": "fra1"}`, 0o600)
	c, err := Load(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RegionList(); len(got) != 1 || got[0] != "fra1" {
		t.Errorf("regions = %v", got)
	}
	tok, err := c.Token(noenv)
	if err != nil || tok.Reveal() != "dop_v1_abc" {
		t.Errorf("token = %q, %v", tok.Reveal(), err)
	}
	if c.Image() != DefaultImage || c.Port() != 22 || c.SSHTimeout() != 5*time.Minute || c.API() != DefaultAPIURL {
		t.Errorf("defaults wrong: %q %d %v %q", c.Image(), c.Port(), c.SSHTimeout(), c.API())
	}
}

func TestFullConfig(t *testing.T) {
	tokPath := writeFile(t, "token", "dop_v1_fromfile\n", 0o600)
	p := writeFile(t, "conf.json", fmt.Sprintf(`{
		"token_file": %q,
		"regions": ["fra1", "ams3"],
		"include": ["db-*"], "exclude": ["*-scratch"],
		"include_tags": ["backup"], "exclude_tags": ["nobackup"],
		"droplet_size": "s-1vcpu-1gb", "droplet_image": "ubuntu-22-04-x64",
		"api_url": "http://127.0.0.1:8080",
		"state_dir": "/var/lib/dosvob",
		"ssh_port": 2222, "ssh_wait": "90s", "action_wait": "3m",
		"hooks": {"pre_snapshot": "echo pre", "post_snapshot": "echo post", "timeout": "30s"}
	}`, tokPath), 0o600)
	c, err := Load(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if c.API() != "http://127.0.0.1:8080/" || c.State() != "/var/lib/dosvob" || c.Port() != 2222 ||
		c.SSHTimeout() != 90*time.Second || c.ActionTimeout() != 3*time.Minute || c.HookTimeout() != 30*time.Second {
		t.Errorf("parsed wrong: %+v", c)
	}
	tok, err := c.Token(noenv)
	if err != nil || tok.Reveal() != "dop_v1_fromfile" {
		t.Errorf("token = %q, %v", tok.Reveal(), err)
	}
}

func TestTokenPrecedence(t *testing.T) {
	c := &Config{DoToken: "conf"}
	env := map[string]string{"DIGITALOCEAN_TOKEN": "second", "DIGITALOCEAN_ACCESS_TOKEN": "first"}
	if tok, _ := c.Token(func(k string) string { return env[k] }); tok.Reveal() != "first" {
		t.Errorf("got %q, want DIGITALOCEAN_ACCESS_TOKEN", tok.Reveal())
	}
	delete(env, "DIGITALOCEAN_ACCESS_TOKEN")
	if tok, _ := c.Token(func(k string) string { return env[k] }); tok.Reveal() != "second" {
		t.Errorf("got %q, want DIGITALOCEAN_TOKEN", tok.Reveal())
	}
	if tok, _ := c.Token(noenv); tok.Reveal() != "conf" {
		t.Errorf("got %q, want do_token", tok.Reveal())
	}
	if _, err := (&Config{}).Token(noenv); !errors.Is(err, ErrNoToken) {
		t.Errorf("no token: err = %v", err)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	c := &Config{DoToken: "dop_v1_supersecret"}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%s %q %v", c.DoToken, c.DoToken, c.DoToken)} {
		if strings.Contains(s, "supersecret") {
			t.Errorf("token printed: %s", s)
		}
	}
}

func TestInsecureFilesRefused(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602} {
		p := writeFile(t, "conf.json", `{"region": "fra1"}`, mode)
		_, err := Load(p, true)
		if !errors.Is(err, ErrInsecure) {
			t.Errorf("mode %04o: err = %v, want ErrInsecure", mode, err)
		}
		tp := writeFile(t, "token", "tok", mode)
		c := &Config{TokenFile: tp}
		_, err = c.Token(noenv)
		var fe *FieldError
		if !errors.Is(err, ErrInsecure) || !errors.As(err, &fe) || fe.Field != "token_file" {
			t.Errorf("token file mode %04o: err = %v", mode, err)
		}
	}
	p := writeFile(t, "conf.json", `{"region": "fra1"}`, 0o400)
	if _, err := Load(p, true); err != nil {
		t.Errorf("mode 0400 refused: %v", err)
	}
}

func TestMissingConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.json")
	if _, err := Load(p, false); err != nil {
		t.Errorf("default path missing should be fine: %v", err)
	}
	_, err := Load(p, true)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("explicit path missing: err = %v", err)
	}
	if want := fmt.Sprintf("config %q: no such file or directory", p); err == nil || err.Error() != want {
		t.Errorf("explicit path missing: got %v, want %s", err, want)
	}
}

// Every bad config is one error that names the offending field.
func TestErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ doc, field string }{
		{`{"region": "Frankfurt"}`, "region"},
		{`{"region": 7}`, "region"},
		{`{"regions": ["fra1", "x"]}`, "regions"},
		{`{"regions": "fra1"}`, "regions"},
		{`{"region": "fra1", "regions": ["ams3"]}`, "regions"},
		{`{"regoin": "fra1"}`, "regoin"},
		{`{"include": ["[a-"]}`, "include"},
		{`{"exclude": [""]}`, "exclude"},
		{`{"include_tags": ["a b"]}`, "include_tags"},
		{`{"droplet_size": "S 1"}`, "droplet_size"},
		{`{"droplet_image": "../x"}`, "droplet_image"},
		{`{"api_url": "ftp://x"}`, "api_url"},
		{`{"api_url": "https://user:pw@host/"}`, "api_url"},
		{`{"state_dir": "relative/dir"}`, "state_dir"},
		{`{"ssh_port": 70000}`, "ssh_port"},
		{`{"ssh_wait": "soon"}`, "ssh_wait"},
		{`{"action_wait": "-1s"}`, "action_wait"},
		{`{"hooks": {"timeout": "x"}}`, "hooks.timeout"},
		{`{"hooks": {"pre_snapshot": 1}}`, "hooks.pre_snapshot"},
		{`{"hooks": {"pre": "x"}}`, "hooks.pre"},
		{`{"regions": ["fra1", 7]}`, "regions"},
		{`{"ssh_port": 1.5}`, "ssh_port"},
		{`{"region": "fra1", "region": "ams3"}`, "region"},
		{`{"token_file": "token"}`, "token_file"},
		{`{"do_token": "a b"}`, "do_token"},
	} {
		_, err := Parse([]byte(tc.doc))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: err = %v, want field %q", tc.doc, err, tc.field)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.field)) {
			t.Errorf("%s: message %q does not name the field", tc.doc, err)
		}
	}
	for _, doc := range []string{``, `{`, `[]`, `{} {}`} {
		var fe *FieldError
		if _, err := Parse([]byte(doc)); !errors.As(err, &fe) {
			t.Errorf("%q: err = %v, want a FieldError", doc, err)
		}
	}
}

// Field names match exactly, as docs/CONFIG.md says: encoding/json would
// take "DO_TOKEN" for "do_token". A wrongly cased name is an unknown field,
// named with the file, and the message points at the right spelling.
func TestFieldNamesMatchExactly(t *testing.T) {
	for _, tc := range []struct{ doc, field, want string }{
		{`{"DO_TOKEN": "dop_v1_abc"}`, "DO_TOKEN", "do_token"},
		{`{"Region": "fra1"}`, "Region", "region"},
		{`{"region": "fra1", "SSH_Port": 22}`, "SSH_Port", "ssh_port"},
		{`{"Hooks": {"pre_snapshot": "true"}}`, "Hooks", "hooks"},
		{`{"hooks": {"Pre_Snapshot": "true"}}`, "hooks.Pre_Snapshot", "pre_snapshot"},
	} {
		p := writeFile(t, "conf.json", tc.doc, 0o600)
		_, err := Load(p, true)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || fe.File != p {
			t.Errorf("%s: err = %v, want an unknown field %q in %q", tc.doc, err, tc.field, p)
			continue
		}
		want := fmt.Sprintf("config %q: field %q: unknown field (did you mean %q?)", p, tc.field, tc.want)
		if err.Error() != want {
			t.Errorf("%s:\n got %s\nwant %s", tc.doc, err, want)
		}
	}
}

// A token with whitespace in the environment is the user's configuration
// mistake (a *FieldError, exit 2), named by its variable, never printed.
func TestEnvTokenWithWhitespace(t *testing.T) {
	env := map[string]string{"DIGITALOCEAN_TOKEN": "dop_v1_ab cd"}
	_, err := (&Config{}).Token(func(k string) string { return env[k] })
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Env != "DIGITALOCEAN_TOKEN" {
		t.Fatalf("err = %v, want a FieldError naming DIGITALOCEAN_TOKEN", err)
	}
	if strings.Contains(err.Error(), "ab cd") {
		t.Errorf("the token is in the message: %v", err)
	}
}

func TestDefaultPaths(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", "/cfg")
	t.Setenv("XDG_STATE_HOME", "/st")
	if DefaultPath() != "/cfg/dosvob/conf.json" || DefaultStateDir() != "/st/dosvob" {
		t.Errorf("xdg: %q %q", DefaultPath(), DefaultStateDir())
	}
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if DefaultPath() != "/home/u/.config/dosvob/conf.json" || DefaultStateDir() != "/home/u/.local/state/dosvob" {
		t.Errorf("home: %q %q", DefaultPath(), DefaultStateDir())
	}
}

// A token with a byte that cannot be sent in an HTTP header (a control
// character, DEL) is refused at once from every source, as a *FieldError
// (exit 2) naming the field or variable and never the token; net/http
// would refuse every request and godo retry it for minutes. A byte that
// may appear in a header (printable ASCII, and the bytes of UTF-8) passes.
func TestTokenControlCharacters(t *testing.T) {
	for _, b := range []byte{0x00, 0x01, 0x0b, 0x0c, 0x1b, 0x1f, 0x7f} {
		tok := "dop_v1_SECRET" + string([]byte{b}) + "DDD"
		wantMsg := fmt.Sprintf("control character %#02x", b)
		// The config's do_token, as JSON escapes it.
		p := writeFile(t, "conf.json", fmt.Sprintf(`{"do_token": "dop_v1_SECRET\u%04xDDD"}`, b), 0o600)
		_, err := Load(p, true)
		var fe *FieldError
		leaks := func(err error) bool { return err != nil && strings.Contains(err.Error(), "SECRET") }
		if leaks(err) || !errors.As(err, &fe) || fe.Field != "do_token" || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("do_token with byte %#02x: err = %v, want a FieldError for do_token without the token", b, err)
		}
		// The token file.
		tp := writeFile(t, "token", tok+"\n", 0o600)
		_, err = (&Config{TokenFile: tp}).Token(noenv)
		if leaks(err) || !errors.As(err, &fe) || fe.Field != "token_file" || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("token file with byte %#02x: err = %v, want a FieldError for token_file without the token", b, err)
		}
		// Both environment variables.
		for _, k := range TokenEnv {
			_, err = (&Config{DoToken: "conf"}).Token(func(v string) string {
				if v == k {
					return tok
				}
				return ""
			})
			if leaks(err) || !errors.As(err, &fe) || fe.Env != k || !strings.Contains(err.Error(), wantMsg) {
				t.Errorf("%s with byte %#02x: err = %v, want a FieldError naming it, without the token", k, b, err)
			}
		}
	}
	if got := fmt.Sprintf("%#02x", byte(1)); got != "0x01" {
		t.Fatalf("%%#02x gives %q", got)
	}
	for _, ok := range []string{"dop_v1_0123456789abcdef", "dop_v1_~!@#$%^&*()_+={}[]|:;'<>,.?/", "dop_v1_é"} {
		p := writeFile(t, "conf.json", fmt.Sprintf(`{"do_token": %q}`, ok), 0o600)
		c, err := Load(p, true)
		if err != nil {
			t.Errorf("%q refused: %v", ok, err)
			continue
		}
		if tok, err := c.Token(noenv); err != nil || tok.Reveal() != ok {
			t.Errorf("%q: token %q, %v", ok, tok.Reveal(), err)
		}
	}
}
