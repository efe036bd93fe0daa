// Package config loads dosvob's configuration file and the DigitalOcean API
// token.
//
// The file is JSON. It reads the original dosvob conf.json unchanged (the
// fields do_token and region) and adds region lists, volume filters, droplet
// size and image, hooks, an API URL and a state directory; docs/CONFIG.md is
// the reference. Every mistake is reported as one *FieldError naming the
// field, so a user can fix a config without guessing.
//
// Field names match exactly: encoding/json would take "DO_TOKEN" or
// "Region" for "do_token" and "region", so the file is decoded with
// github.com/go-json-experiment/json, the mirror of encoding/json/v2 (in the
// standard library from Go 1.27), which matches names case-sensitively and
// also rejects a field given twice.
//
// Both the config file and a token file hold or lead to the account's keys:
// Load refuses either when its mode lets other users read or write it.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Defaults used when the config leaves a field out.
const (
	DefaultImage       = "ubuntu-24-04-x64" // an Ubuntu LTS image slug
	DefaultAPIURL      = "https://api.digitalocean.com/"
	DefaultSSHPort     = 22
	DefaultSSHWait     = 5 * time.Minute
	DefaultHookTimeout = 5 * time.Minute
	DefaultActionWait  = 10 * time.Minute
)

// Environment variables that hold the API token, in the order they are
// consulted. They win over token_file and do_token.
var TokenEnv = []string{"DIGITALOCEAN_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN"}

// Secret is a string that never prints itself: fmt and encoding/json see
// "[redacted]", so a Config can be logged without leaking the token.
type Secret string

func (Secret) String() string                 { return "[redacted]" }
func (Secret) GoString() string               { return "[redacted]" }
func (Secret) MarshalJSON() ([]byte, error)   { return []byte(`"[redacted]"`), nil }
func (s Secret) Reveal() string               { return string(s) }
func (s Secret) Format(f fmt.State, _ rune)   { io.WriteString(f, "[redacted]") }
func (s Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Hooks are shell commands run locally around each volume's snapshot.
type Hooks struct {
	PreSnapshot  string `json:"pre_snapshot"`
	PostSnapshot string `json:"post_snapshot"`
	Timeout      string `json:"timeout"`
}

// Config is the parsed configuration file. Zero values mean "default".
type Config struct {
	// DoToken is the original conf.json's token field. Prefer the
	// environment or token_file.
	DoToken   Secret `json:"do_token"`
	TokenFile string `json:"token_file"`

	// Region is the original single-region field; Regions lists several.
	// Both empty: every region that holds a selected volume.
	Region  string   `json:"region"`
	Regions []string `json:"regions"`

	// Volume filters. A volume is selected when its name matches one of
	// Include (or Include is empty), it carries one of IncludeTags (or
	// IncludeTags is empty), and it matches neither Exclude nor
	// ExcludeTags.
	Include     []string `json:"include"`
	Exclude     []string `json:"exclude"`
	IncludeTags []string `json:"include_tags"`
	ExcludeTags []string `json:"exclude_tags"`

	DropletSize  string `json:"droplet_size"`  // default: the cheapest size in the region
	DropletImage string `json:"droplet_image"` // default: DefaultImage

	APIURL   string `json:"api_url"`
	StateDir string `json:"state_dir"`

	SSHPort    int    `json:"ssh_port"`
	SSHWait    string `json:"ssh_wait"`    // Go duration, default "5m"
	ActionWait string `json:"action_wait"` // Go duration, default "10m"

	Hooks Hooks `json:"hooks"`

	// Path is the file the config was read from ("" when none).
	Path string `json:"-"`

	sshWait, actionWait, hookTimeout time.Duration
}

// FieldError is a configuration mistake. Field is the JSON field name (or
// "" for the file as a whole); Env, when set, is the environment variable
// the bad value came from instead of the file.
type FieldError struct {
	File  string
	Field string
	Env   string
	Err   error
}

func (e *FieldError) Error() string {
	if e.Env != "" {
		return fmt.Sprintf("environment variable %s: %v", e.Env, e.Err)
	}
	where := "config"
	if e.File != "" {
		where = fmt.Sprintf("config %q", e.File)
	}
	if e.Field == "" {
		return fmt.Sprintf("%s: %v", where, e.Err)
	}
	return fmt.Sprintf("%s: field %q: %v", where, e.Field, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

// ErrNoToken is returned by Token when no source holds a token.
var ErrNoToken = errors.New("no DigitalOcean API token: set DIGITALOCEAN_ACCESS_TOKEN, or token_file or do_token in the config")

// ErrInsecure is wrapped by errors about a file that other users may read.
var ErrInsecure = errors.New("readable or writable by other users")

// DefaultPath is the config file used when --config is not given:
// $XDG_CONFIG_HOME/dosvob/conf.json, else ~/.config/dosvob/conf.json.
func DefaultPath() string {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "dosvob", "conf.json")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".config", "dosvob", "conf.json")
}

// DefaultStateDir is the state directory used when neither a flag nor the
// config names one: $XDG_STATE_HOME/dosvob, else ~/.local/state/dosvob.
func DefaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "dosvob")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".local", "state", "dosvob")
}

// Load reads the config at p. When explicit is false and p does not exist,
// Load returns the defaults: a user may configure dosvob entirely through
// the environment.
func Load(p string, explicit bool) (*Config, error) {
	if p == "" {
		if explicit {
			return nil, &FieldError{Err: errors.New("empty config path")}
		}
		c := &Config{}
		return c, c.validate()
	}
	data, err := readPrivate(p)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			c := &Config{}
			return c, c.validate()
		}
		return nil, &FieldError{File: p, Err: err}
	}
	c, err := Parse(data)
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.File = p
		}
		return nil, err
	}
	c.Path = p
	return c, nil
}

// bare drops the "open FILE: " of an *fs.PathError: the callers name the
// file themselves, quoted.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readPrivate reads a file that must not be readable or writable by group
// or others. Its errors do not name the file: the callers do.
func readPrivate(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, bare(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, bare(err)
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if perm := st.Mode().Perm(); perm&0o066 != 0 {
		return nil, fmt.Errorf("has mode %04o: %w (run: chmod 600 %q)", perm, ErrInsecure, p)
	}
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

var (
	regionRe = regexp.MustCompile(`^[a-z]{3}[0-9]$`)
	slugRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,99}$`)
)

// Parse decodes and validates a config document. Field names match
// exactly; an unknown one (also a wrongly cased one) is an error.
func Parse(data []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(data, &c, json.RejectUnknownMembers(true)); err != nil {
		return nil, decodeError(data, err)
	}
	return &c, c.validate()
}

// decodeError turns a decoding error into a *FieldError that names the
// field and says what was wrong in words.
func decodeError(data []byte, err error) error {
	var se *json.SemanticError
	if errors.As(err, &se) {
		if errors.Is(se.Err, json.ErrUnknownName) {
			name := se.JSONPointer.LastToken()
			fe := &FieldError{Field: fieldName(se.JSONPointer, true), Err: errors.New("unknown field")}
			for _, known := range fieldNames(se.GoType) {
				if strings.EqualFold(known, name) {
					fe.Err = fmt.Errorf("unknown field (did you mean %q?)", known)
				}
			}
			return fe
		}
		got := kindName(se.JSONKind)
		if len(se.JSONValue) > 0 && se.JSONKind == '0' {
			got = string(se.JSONValue)
		}
		return &FieldError{Field: fieldName(se.JSONPointer, false), Err: fmt.Errorf("want %s, got %s", typeName(se.GoType), got)}
	}
	var sy *jsontext.SyntacticError
	if errors.As(err, &sy) {
		switch {
		case errors.Is(sy.Err, io.ErrUnexpectedEOF) && len(strings.TrimSpace(string(data))) == 0:
			return &FieldError{Err: errors.New("empty file")}
		case errors.Is(sy.Err, jsontext.ErrDuplicateName):
			return &FieldError{Field: fieldName(sy.JSONPointer, true), Err: errors.New("given more than once")}
		}
		return &FieldError{Field: fieldName(sy.JSONPointer, false), Err: fmt.Errorf("invalid JSON at byte %d: %v", sy.ByteOffset, sy.Err)}
	}
	return &FieldError{Err: err}
}

// fieldName spells a JSON pointer as a field name: "/hooks/timeout" is
// "hooks.timeout". An array index names its array ("/regions/1" is
// "regions"), unless last is set: then the last token is a member's name.
func fieldName(p jsontext.Pointer, last bool) string {
	var names []string
	toks := slices.Collect(p.Tokens())
	for i, t := range toks {
		if t == "" || (!(last && i == len(toks)-1) && strings.Trim(t, "0123456789") == "") {
			continue
		}
		names = append(names, t)
	}
	return strings.Join(names, ".")
}

// fieldNames lists the JSON names of struct type t's fields.
func fieldNames(t reflect.Type) []string {
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var names []string
	for i := range t.NumField() {
		if n, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); n != "" && n != "-" {
			names = append(names, n)
		}
	}
	return names
}

// typeName says in words what a Go type wants in JSON.
func typeName(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int:
		return "an integer"
	case reflect.Slice:
		return "an array of strings"
	case reflect.Struct:
		return "an object"
	}
	return t.String()
}

// kindName names a JSON kind.
func kindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "something else"
}

func (c *Config) validate() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
	}
	if c.Region != "" && !regionRe.MatchString(c.Region) {
		return bad("region", "invalid region slug %q (want e.g. \"fra1\")", c.Region)
	}
	for _, r := range c.Regions {
		if !regionRe.MatchString(r) {
			return bad("regions", "invalid region slug %q (want e.g. \"fra1\")", r)
		}
	}
	if c.Region != "" && len(c.Regions) > 0 {
		return bad("regions", "set either region or regions, not both")
	}
	for field, globs := range map[string][]string{"include": c.Include, "exclude": c.Exclude} {
		for _, g := range globs {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				return bad(field, "invalid name pattern %q", g)
			}
		}
	}
	for field, tags := range map[string][]string{"include_tags": c.IncludeTags, "exclude_tags": c.ExcludeTags} {
		for _, t := range tags {
			if t == "" || strings.ContainsAny(t, " \t\n") {
				return bad(field, "invalid tag %q", t)
			}
		}
	}
	if c.DropletSize != "" && !slugRe.MatchString(c.DropletSize) {
		return bad("droplet_size", "invalid size slug %q", c.DropletSize)
	}
	if c.DropletImage != "" && !slugRe.MatchString(c.DropletImage) {
		return bad("droplet_image", "invalid image slug %q", c.DropletImage)
	}
	if c.APIURL != "" {
		u, err := url.Parse(c.APIURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			return bad("api_url", "invalid URL %q (want e.g. \"https://api.digitalocean.com/\")", c.APIURL)
		}
	}
	if c.StateDir != "" && !filepath.IsAbs(expandHome(c.StateDir)) {
		return bad("state_dir", "%q is not an absolute path", c.StateDir)
	}
	if c.SSHPort < 0 || c.SSHPort > 65535 {
		return bad("ssh_port", "invalid port %d", c.SSHPort)
	}
	if c.TokenFile != "" && !filepath.IsAbs(expandHome(c.TokenFile)) {
		return bad("token_file", "%q is not an absolute path", c.TokenFile)
	}
	for _, d := range []struct {
		field string
		s     string
		v     *time.Duration
	}{{"ssh_wait", c.SSHWait, &c.sshWait}, {"action_wait", c.ActionWait, &c.actionWait}, {"hooks.timeout", c.Hooks.Timeout, &c.hookTimeout}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v <= 0 {
			return bad(d.field, "invalid duration %q (want e.g. \"5m\")", d.s)
		}
		*d.v = v
	}
	if fault := tokenFault(string(c.DoToken)); fault != "" {
		return bad("do_token", "%s", fault)
	}
	return nil
}

// tokenFault says why s cannot be an API token, "" if it can. The token is
// sent in the Authorization header: whitespace (a pasted line break, two
// tokens on a line) or any other control character (which net/http refuses
// to send, so that every request would fail and be retried) is the
// configuration's mistake. The message names the kind of byte, never the
// token.
func tokenFault(s string) string {
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b == ' ' || b == '\t' || b == '\r' || b == '\n':
			return "contains whitespace"
		case b < 0x20 || b == 0x7f:
			return fmt.Sprintf("contains the control character %#02x, which cannot be sent in an HTTP header", b)
		}
	}
	return ""
}

func expandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	return p
}

// RegionList returns the regions to work in; nil means every region that
// holds a selected volume.
func (c *Config) RegionList() []string {
	if c.Region != "" {
		return []string{c.Region}
	}
	return c.Regions
}

// Image returns the droplet image slug.
func (c *Config) Image() string {
	if c.DropletImage != "" {
		return c.DropletImage
	}
	return DefaultImage
}

// API returns the API base URL, ending in "/".
func (c *Config) API() string {
	u := c.APIURL
	if u == "" {
		u = DefaultAPIURL
	}
	if !strings.HasSuffix(u, "/") {
		u += "/"
	}
	return u
}

// State returns the state directory: the config's, else the default.
func (c *Config) State() string {
	if c.StateDir != "" {
		return expandHome(c.StateDir)
	}
	return DefaultStateDir()
}

// Port returns the droplets' SSH port.
func (c *Config) Port() int {
	if c.SSHPort != 0 {
		return c.SSHPort
	}
	return DefaultSSHPort
}

// SSHTimeout is how long to wait for a droplet's SSH to answer.
func (c *Config) SSHTimeout() time.Duration {
	if c.sshWait > 0 {
		return c.sshWait
	}
	return DefaultSSHWait
}

// ActionTimeout bounds the wait for one asynchronous DigitalOcean action.
func (c *Config) ActionTimeout() time.Duration {
	if c.actionWait > 0 {
		return c.actionWait
	}
	return DefaultActionWait
}

// HookTimeout bounds each hook.
func (c *Config) HookTimeout() time.Duration {
	if c.hookTimeout > 0 {
		return c.hookTimeout
	}
	return DefaultHookTimeout
}

// TokenSource says where Token takes the token from, for a message: the
// environment variable, the token_file or the config's do_token ("" when
// there is none).
func (c *Config) TokenSource(getenv func(string) string) string {
	for _, k := range TokenEnv {
		if strings.TrimSpace(getenv(k)) != "" {
			return "the environment variable " + k
		}
	}
	switch {
	case c.TokenFile != "":
		return fmt.Sprintf("token_file %q", expandHome(c.TokenFile))
	case c.DoToken != "":
		return fmt.Sprintf("do_token in %q", c.Path)
	}
	return ""
}

// Token returns the API token from, in order: DIGITALOCEAN_ACCESS_TOKEN,
// DIGITALOCEAN_TOKEN, the token_file, do_token. getenv is os.Getenv in
// production.
func (c *Config) Token(getenv func(string) string) (Secret, error) {
	for _, k := range TokenEnv {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			if fault := tokenFault(v); fault != "" {
				return "", &FieldError{Env: k, Err: errors.New("the token " + fault)}
			}
			return Secret(v), nil
		}
	}
	if c.TokenFile != "" {
		p := expandHome(c.TokenFile)
		data, err := readPrivate(p)
		if err != nil {
			return "", &FieldError{File: c.Path, Field: "token_file", Err: fmt.Errorf("%q: %w", p, err)}
		}
		v := strings.TrimSpace(string(data))
		if v == "" || strings.ContainsAny(v, " \t\r\n") {
			return "", &FieldError{File: c.Path, Field: "token_file", Err: fmt.Errorf("%q does not hold exactly one token", p)}
		}
		if fault := tokenFault(v); fault != "" {
			return "", &FieldError{File: c.Path, Field: "token_file", Err: fmt.Errorf("%q: the token %s", p, fault)}
		}
		return Secret(v), nil
	}
	if c.DoToken != "" {
		return c.DoToken, nil
	}
	return "", ErrNoToken
}
