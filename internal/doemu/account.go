package doemu

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Account is the seed of an emulated account: the catalog (regions, sizes,
// images) and the user's own resources that exist before anything runs. The
// file format is documented in docs/EMULATOR.md; JSON works as well as YAML.
type Account struct {
	Account   AccountInfo    `yaml:"account" json:"account"`
	Regions   []Region       `yaml:"regions" json:"regions"`
	Sizes     []Size         `yaml:"sizes" json:"sizes"`
	Images    []Image        `yaml:"images" json:"images"`
	Tags      []string       `yaml:"tags" json:"tags"`
	SSHKeys   []SeedKey      `yaml:"ssh_keys" json:"ssh_keys"`
	Volumes   []SeedVolume   `yaml:"volumes" json:"volumes"`
	Snapshots []SeedSnapshot `yaml:"snapshots" json:"snapshots"`
	Droplets  []SeedDroplet  `yaml:"droplets" json:"droplets"`

	// Dir resolves relative file paths (LoadAccount sets it to the seed
	// file's directory).
	Dir string `yaml:"-" json:"-"`
}

// SeedKey is an account SSH key.
type SeedKey struct {
	Name          string `yaml:"name" json:"name"`
	PublicKey     string `yaml:"public_key" json:"public_key"`
	PublicKeyFile string `yaml:"public_key_file" json:"public_key_file"`
}

// SeedVolume is an existing volume. Its content is a copy of File (a raw
// image, at most the volume's size), or made by Content, or a new ext4 file
// system holding Files (Filesystem "ext4"); else it is empty.
type SeedVolume struct {
	Name          string   `yaml:"name" json:"name"`
	Region        string   `yaml:"region" json:"region"`
	SizeGigabytes int64    `yaml:"size_gigabytes" json:"size_gigabytes"`
	Description   string   `yaml:"description" json:"description"`
	Tags          []string `yaml:"tags" json:"tags"`
	File          string   `yaml:"file" json:"file"`
	Content       *Content `yaml:"content" json:"content"`
	// Filesystem "ext4" formats the volume with mkfs.ext4, filled with
	// Files: path (relative, "/" separated) -> text.
	Filesystem string            `yaml:"filesystem" json:"filesystem"`
	Files      map[string]string `yaml:"files" json:"files"`
}

// Content generates volume data: Bytes bytes at Offset, either
// pseudo-random from Seed ("random", the default), or a repeated Text.
type Content struct {
	Pattern string `yaml:"pattern" json:"pattern"`
	Seed    uint64 `yaml:"seed" json:"seed"`
	Text    string `yaml:"text" json:"text"`
	Bytes   int64  `yaml:"bytes" json:"bytes"`
	Offset  int64  `yaml:"offset" json:"offset"`
}

// SeedSnapshot is an existing snapshot of a seeded volume (named by Volume;
// Region picks among volumes of the same name).
type SeedSnapshot struct {
	Name   string   `yaml:"name" json:"name"`
	Volume string   `yaml:"volume" json:"volume"`
	Region string   `yaml:"region" json:"region"`
	Tags   []string `yaml:"tags" json:"tags"`
}

// SeedDroplet is an existing, active droplet. Volumes names seeded volumes
// of its region to attach; SSHKeys names seeded keys.
type SeedDroplet struct {
	Name     string   `yaml:"name" json:"name"`
	Region   string   `yaml:"region" json:"region"`
	Size     string   `yaml:"size" json:"size"`
	Image    string   `yaml:"image" json:"image"`
	Tags     []string `yaml:"tags" json:"tags"`
	Volumes  []string `yaml:"volumes" json:"volumes"`
	SSHKeys  []string `yaml:"ssh_keys" json:"ssh_keys"`
	UserData string   `yaml:"user_data" json:"user_data"`
}

// LoadAccount reads a YAML or JSON seed file. Unknown fields are errors.
func LoadAccount(path string) (*Account, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var a Account
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("account file %q: %w", path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	a.Dir = dir
	return &a, nil
}

func (a *Account) path(p string) string {
	if filepath.IsAbs(p) || a.Dir == "" {
		return p
	}
	return filepath.Join(a.Dir, p)
}

// seed fills a new emulator from a (nil: defaults only).
func (e *Emulator) seed(a *Account) error {
	if a == nil {
		a = &Account{}
	}
	e.regions = slices.Clone(a.Regions)
	if len(e.regions) == 0 {
		e.regions = DefaultRegions()
	}
	e.sizes = slices.Clone(a.Sizes)
	if len(e.sizes) == 0 {
		e.sizes = DefaultSizes()
	}
	e.images = slices.Clone(a.Images)
	if len(e.images) == 0 {
		e.images = DefaultImages()
	}
	for i := range e.regions {
		r := &e.regions[i]
		if r.Name == "" {
			r.Name = r.Slug
		}
		if len(r.Sizes) == 0 {
			r.Sizes = []string{}
			for _, s := range e.sizes {
				if slices.Contains(s.Regions, r.Slug) {
					r.Sizes = append(r.Sizes, s.Slug)
				}
			}
		}
	}
	e.account = a.Account
	if e.account.Email == "" {
		e.account.Email = "sammy@example.com"
	}
	if e.account.UUID == "" {
		e.account.UUID = strings.ReplaceAll(newUUID(), "-", "")
	}
	if e.account.DropletLimit == 0 {
		e.account.DropletLimit = 25
	}
	if e.account.VolumeLimit == 0 {
		e.account.VolumeLimit = 100
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now().Add(-time.Hour) // seeded resources are older than anything made later
	if err := checkTagNames(a.Tags); err != nil {
		return fmt.Errorf("seed tags: %v", err)
	}
	e.useTags(a.Tags)
	keyIDs := map[string]int{}
	for _, k := range a.SSHKeys {
		pub := k.PublicKey
		if k.PublicKeyFile != "" {
			b, err := os.ReadFile(a.path(k.PublicKeyFile))
			if err != nil {
				return fmt.Errorf("seed key %q: %w", k.Name, err)
			}
			pub = string(b)
		}
		nk, err := e.newKey(keyRequest{Name: k.Name, PublicKey: pub})
		if err != nil {
			return fmt.Errorf("seed key %q: %v", k.Name, err)
		}
		keyIDs[k.Name] = nk.ID
	}
	for _, sv := range a.Volumes {
		v, err := e.newVolume(volumeCreate{
			Name: sv.Name, Region: sv.Region, SizeGigabytes: sv.SizeGigabytes,
			Description: sv.Description, Tags: sv.Tags,
		}, now)
		if err != nil {
			return fmt.Errorf("seed volume %q: %v", sv.Name, err)
		}
		if err := fillVolume(v, a, sv); err != nil {
			return fmt.Errorf("seed volume %q: %v", sv.Name, err)
		}
	}
	for _, ss := range a.Snapshots {
		var src *volume
		for _, v := range e.sortedVolumes() {
			if v.Name == ss.Volume && (ss.Region == "" || v.Region == ss.Region) {
				src = v
				break
			}
		}
		if src == nil {
			return fmt.Errorf("seed snapshot %q: no seeded volume %q", ss.Name, ss.Volume)
		}
		if _, err := e.newSnapshot(src, snapshotCreate{Name: ss.Name, Tags: ss.Tags}, now, false); err != nil {
			return fmt.Errorf("seed snapshot %q: %v", ss.Name, err)
		}
	}
	for _, sd := range a.Droplets {
		req := dropletCreate{
			Name: sd.Name, Region: sd.Region, Size: sd.Size, Tags: sd.Tags, UserData: sd.UserData,
		}
		img := sd.Image
		if img == "" {
			img = e.images[0].Slug
		}
		req.Image = []byte(fmt.Sprintf("%q", img))
		for _, kn := range sd.SSHKeys {
			id, ok := keyIDs[kn]
			if !ok {
				return fmt.Errorf("seed droplet %q: no seeded key %q", sd.Name, kn)
			}
			req.SSHKeys = append(req.SSHKeys, []byte(itoa(id)))
		}
		for _, vn := range sd.Volumes {
			req.Volumes = append(req.Volumes, []byte(fmt.Sprintf("%q", vn)))
		}
		if _, err := e.createDropletNow(req, now); err != nil {
			return fmt.Errorf("seed droplet %q: %v", sd.Name, err)
		}
	}
	return nil
}

// fillVolume writes a seeded volume's content into its backing file.
func fillVolume(v *volume, a *Account, sv SeedVolume) error {
	size := v.SizeGigabytes * gib
	n := 0
	for _, set := range []bool{sv.File != "", sv.Content != nil, sv.Filesystem != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("give only one of file, content and filesystem")
	}
	if len(sv.Files) > 0 && sv.Filesystem == "" {
		return fmt.Errorf("files need a filesystem (ext4)")
	}
	if sv.Filesystem != "" {
		if sv.Filesystem != "ext4" {
			return fmt.Errorf("filesystem %q: only ext4 is supported", sv.Filesystem)
		}
		if err := mkfsExt4(v.File, v.Name, sv.Files); err != nil {
			return err
		}
		v.FilesystemType = "ext4"
		return nil
	}
	if sv.File != "" {
		src := a.path(sv.File)
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		if fi.Size() > size {
			return fmt.Errorf("file %s is larger than %d GiB", src, v.SizeGigabytes)
		}
		os.Remove(v.File)
		if err := copySparse(src, v.File); err != nil {
			return err
		}
		return os.Truncate(v.File, size)
	}
	c := sv.Content
	if c == nil {
		return nil
	}
	if c.Offset < 0 || c.Bytes < 0 || c.Offset+c.Bytes > size {
		return fmt.Errorf("content does not fit in %d GiB", v.SizeGigabytes)
	}
	f, err := os.OpenFile(v.File, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(c.Seed, c.Seed^0x9e3779b97f4a7c15))
	for off := int64(0); off < c.Bytes; {
		n := min(int64(len(buf)), c.Bytes-off)
		b := buf[:n]
		switch c.Pattern {
		case "", "random":
			for i := 0; i+8 <= len(b); i += 8 {
				x := rng.Uint64()
				for j := 0; j < 8; j++ {
					b[i+j] = byte(x >> (8 * j))
				}
			}
			for i := len(b) &^ 7; i < len(b); i++ {
				b[i] = byte(rng.Uint32())
			}
		case "text":
			if c.Text == "" {
				return fmt.Errorf("content pattern text needs text")
			}
			for i := range b {
				b[i] = c.Text[int((off+int64(i))%int64(len(c.Text)))]
			}
		default:
			return fmt.Errorf("unknown content pattern %q (random or text)", c.Pattern)
		}
		if _, err := f.WriteAt(b, c.Offset+off); err != nil {
			return err
		}
		off += n
	}
	return f.Close()
}

// mkfsExt4 formats file as ext4 (labelled with the volume's name, cut to
// ext4's 16 bytes) holding files, with mke2fs -d: no mount, no root needed.
// The result stays sparse.
func mkfsExt4(file, label string, files map[string]string) error {
	dir, err := os.MkdirTemp("", "doemu-mkfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for p, text := range files {
		clean := filepath.Clean(filepath.FromSlash(p))
		if clean == "." || filepath.IsAbs(clean) || strings.HasPrefix(clean, "..") {
			return fmt.Errorf("file path %q must be relative and stay inside the volume", p)
		}
		full := filepath.Join(dir, clean)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(text), 0o644); err != nil {
			return err
		}
	}
	if len(label) > 16 {
		label = label[:16]
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		mkfs = "/usr/sbin/mkfs.ext4"
	}
	cmd := exec.Command(mkfs, "-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", "-d", dir, file)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mkfsXFS formats file as XFS. Without mkfs.xfs (xfsprogs) it fails: an
// emulator that silently left the volume blank would hide a bug.
func mkfsXFS(file, label string) error {
	mkfs, err := exec.LookPath("mkfs.xfs")
	if err != nil {
		return fmt.Errorf("filesystem_type xfs needs mkfs.xfs (xfsprogs): %w", err)
	}
	args := []string{"-q", "-f"}
	if label != "" {
		args = append(args, "-L", label)
	}
	if out, err := exec.Command(mkfs, append(args, file)...).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.xfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
