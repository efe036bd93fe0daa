package imagestore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"unicode/utf8"
)

// The manifest's own checksum. A bit flipped in manifest.json mostly
// leaves valid JSON that says something else: another digest (and the
// scrub would call an intact image corrupt), another generation or image
// id (and no kept version would fit), another version file (and its real
// file would look unlisted). So every commit writes the checksum of the
// manifest's content into it, and every reader checks it first.
//
// The checksum is "sha256:" and the SHA-256 (lowercase hex) of the
// manifest's canonical form: the JSON value of the file without its
// "checksum" member, its object members sorted by name at every level, no
// white space, numbers as the file writes them, strings as Go's
// encoding/json encodes them. It depends on the values only, not on the
// layout or on the fields a build knows: a manifest that a later dosvob
// wrote with fields this one does not know checks out just the same.
const (
	checksumMember = "checksum"
	checksumPrefix = "sha256:"
)

// errChecksum is the damage of a manifest whose content does not match its
// checksum.
var errChecksum = errors.New("its content does not match its checksum (it was changed after dosvob wrote it)")

// marshalManifest returns the file content of m, with its checksum.
func marshalManifest(m *Manifest) ([]byte, error) {
	c := *m
	c.Checksum = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	doc, err := decodeObject(b)
	if err != nil {
		return nil, err
	}
	if c.Checksum, err = manifestChecksum(doc); err != nil {
		return nil, err
	}
	if b, err = json.MarshalIndent(&c, "", "  "); err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// writeManifest writes m as name through writeFileAtomic, with its
// checksum.
func writeManifest(fs fsys, name string, m *Manifest) error {
	b, err := marshalManifest(m)
	if err != nil {
		return err
	}
	return writeFileAtomic(fs, name, b)
}

// decodeObject decodes b, which must hold one JSON object and nothing else
// but white space, keeping numbers as written.
func decodeObject(b []byte) (map[string]any, error) {
	if err := json.Unmarshal(b, new(json.RawMessage)); err != nil {
		return nil, err // also for anything after the value
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	if doc == nil {
		return nil, errors.New("it holds no JSON object")
	}
	return doc, nil
}

// manifestChecksum is the checksum of the manifest doc (decodeObject's).
func manifestChecksum(doc map[string]any) (string, error) {
	c := maps.Clone(doc)
	delete(c, checksumMember)
	canon, err := json.Marshal(c) // members sorted by name, no white space
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(canon)
	return checksumPrefix + hex.EncodeToString(sum[:]), nil
}

// checkManifest checks the manifest doc against its checksum. A manifest
// without one was written by a dosvob before the checksum, and passes;
// unless a member's name is one character off "checksum": that is the
// checksum's own name damaged. A checksum this build cannot read is damage
// when the manifest has this build's version; with another version it may
// be a later dosvob's, and the version check refuses the manifest instead.
func checkManifest(doc map[string]any) error {
	v, ok := doc[checksumMember]
	if !ok {
		for k := range doc {
			if oneOff(k, checksumMember) {
				return fmt.Errorf("it has a member %q where its checksum belongs", k)
			}
		}
		return nil
	}
	sum, ok := v.(string)
	if !ok || !strings.HasPrefix(sum, checksumPrefix) {
		if n, _ := doc["manifest_version"].(json.Number); n.String() != fmt.Sprint(ManifestVersion) {
			return nil
		}
		return fmt.Errorf("its checksum %s is not %s followed by 64 hex digits", jsonText(v), checksumPrefix)
	}
	want, err := manifestChecksum(doc)
	if err != nil {
		return err
	}
	if sum != want {
		return errChecksum
	}
	return nil
}

// oneOff reports whether a and b have as many characters and differ in
// exactly one of them.
func oneOff(a, b string) bool {
	if a == b || utf8.RuneCountInString(a) != utf8.RuneCountInString(b) {
		return false
	}
	ra, rb := []rune(a), []rune(b)
	diff := 0
	for i := range ra {
		if ra[i] != rb[i] {
			diff++
		}
	}
	return diff == 1
}

// jsonText is v as JSON, for a message.
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// damagedContent is what the manifest b, which fails its checksum, says: as
// much as the scrub needs to compare the image with it (size, block size,
// format version, digest) when not all of it parses; nil when not even that
// does.
func damagedContent(b []byte) *Manifest {
	var m Manifest
	if json.Unmarshal(b, &m) == nil {
		return &m
	}
	var part struct {
		FormatVersion int    `json:"format_version"`
		DeviceSize    int64  `json:"device_size"`
		BlockSize     int    `json:"block_size"`
		DeviceDigest  Digest `json:"device_digest"`
	}
	if json.Unmarshal(b, &part) != nil {
		return nil
	}
	return &Manifest{FormatVersion: part.FormatVersion, DeviceSize: part.DeviceSize, BlockSize: part.BlockSize, DeviceDigest: part.DeviceDigest}
}
