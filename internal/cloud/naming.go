package cloud

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// The two marks of a dosvob resource. A volume, snapshot or droplet is
// dosvob's only when its name starts with Prefix AND it carries Tag. SSH keys
// take no tags: a key is dosvob's when its name is Prefix followed by a run
// id and nothing else.
const (
	Prefix    = "dosvob-ephemeral-"
	Tag       = "dosvob-ephemeral"
	RunTagPfx = "dosvob-run-"
)

// MaxVolumesPerDroplet is DigitalOcean's limit of volumes attached to one
// droplet. A region with more selected volumes gets more droplets.
const MaxVolumesPerDroplet = 15

// A run id is the UTC start time and 6 random hex digits:
// "20260102-150405-a1b2c3". It sorts by time, fits in every name, and two
// runs started in the same second still differ.
var runIDRe = regexp.MustCompile(`^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$`)

// keyNameRe matches the name of a run's account SSH key.
var keyNameRe = regexp.MustCompile(`^` + regexp.QuoteMeta(Prefix) + `[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$`)

// NewRunID returns a fresh run id for a run started at now.
func NewRunID(now time.Time) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// ValidRunID reports whether id has the form NewRunID makes.
func ValidRunID(id string) bool { return runIDRe.MatchString(id) }

// RunTime returns the UTC start time that a run id encodes.
func RunTime(id string) (time.Time, bool) {
	if !ValidRunID(id) {
		return time.Time{}, false
	}
	t, err := time.Parse("20060102-150405", id[:15])
	return t, err == nil
}

// RunTag is the tag that marks every resource of one run.
func RunTag(runID string) string { return RunTagPfx + runID }

// KeyName is the name of the run's account SSH key.
func KeyName(runID string) string { return Prefix + runID }

// CopyName is the name of the volume copied from the i-th selected volume
// (and of the snapshot it is made from). DigitalOcean volume names must
// match ^[a-z][a-z0-9-]{0,63}$; this one is at most 45 characters.
func CopyName(runID string, i int) string { return fmt.Sprintf("%s%s-%d", Prefix, runID, i) }

// DropletName is the name of the k-th droplet of the run in region.
func DropletName(runID, region string, k int) string {
	return fmt.Sprintf("%s%s-%s-%d", Prefix, runID, region, k)
}

// IsOurs reports whether a volume, snapshot or droplet carries both marks.
// Tags compare case-insensitively, as DigitalOcean treats them.
func IsOurs(name string, tags []string) bool {
	return strings.HasPrefix(name, Prefix) && HasTag(tags, Tag)
}

// HasTag reports whether tags hold tag, compared as DigitalOcean does
// (case-insensitively).
func HasTag(tags []string, tag string) bool {
	return slices.ContainsFunc(tags, func(t string) bool { return strings.EqualFold(t, tag) })
}

// IsOurKey reports whether an account key's name marks it as a run's key.
func IsOurKey(name string) bool { return keyNameRe.MatchString(name) }

// KeyRunID returns the run id in a run key's name.
func KeyRunID(name string) string { return strings.TrimPrefix(name, Prefix) }

// RunOf returns the run id that a resource's tags name, or "".
func RunOf(tags []string) string {
	for _, t := range tags {
		if len(t) > len(RunTagPfx) && strings.EqualFold(t[:len(RunTagPfx)], RunTagPfx) {
			if id := strings.ToLower(t[len(RunTagPfx):]); ValidRunID(id) {
				return id
			}
		}
	}
	return ""
}

// Tags are the tags put on every resource of the run.
func Tags(runID string) []string { return []string{Tag, RunTag(runID)} }
