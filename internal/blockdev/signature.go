package blockdev

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// HeadSize is how much of a device's start Identify looks at: it holds the
// primary signature of every kind it knows (btrfs's lies at 64 KiB).
const HeadSize = 128 << 10

// Signature is what a device's start says it holds.
type Signature struct {
	Kind string // "an ext4 file system", "a GPT partition table", ...
	ID   string // its identity as blkid shows it (a UUID), or "" if it has none
	// key is what tells two of a kind apart: the UUID's bytes, or for an
	// MBR or boot sector the whole sector.
	key string
}

// String says what the signature is, for a message: "an ext4 file system
// (UUID 0b5c…)".
func (s *Signature) String() string {
	if s.ID == "" {
		return s.Kind
	}
	return fmt.Sprintf("%s (%s)", s.Kind, s.ID)
}

// Same reports whether s and t are the same file system, partition table or
// volume: the same kind with the same identity. Two nil signatures are the
// same.
func (s *Signature) Same(t *Signature) bool {
	if s == nil || t == nil {
		return s == t
	}
	return s.Kind == t.Kind && s.key == t.key
}

// Identify returns the signature at the start of a device or image, whose
// first bytes (HeadSize, or all of a smaller device) are head; nil when it
// holds none that Identify knows: all zeros (a new volume), or data in no
// format it knows. It checks, in this order: LUKS, XFS, ext2/3/4, btrfs,
// an LVM2 physical volume, swap, a GPT partition table and an MBR (a
// partition table or any other boot sector with the 0x55AA mark).
func Identify(head []byte) *Signature {
	at := func(off int, magic string) bool {
		return off+len(magic) <= len(head) && string(head[off:off+len(magic)]) == magic
	}
	uuid := func(kind string, off int) *Signature {
		if off+16 > len(head) {
			return &Signature{Kind: kind}
		}
		b := head[off : off+16]
		return &Signature{Kind: kind, ID: "UUID " + formatUUID(b), key: string(b)}
	}
	text := func(kind string, off, n int) *Signature {
		if off+n > len(head) {
			return &Signature{Kind: kind}
		}
		s := strings.TrimRight(string(head[off:off+n]), "\x00")
		return &Signature{Kind: kind, ID: "UUID " + s, key: s}
	}
	switch {
	case at(0, "LUKS\xba\xbe"):
		return text("a LUKS encrypted volume", 168, 40)
	case at(0, "XFSB"):
		return uuid("an xfs file system", 32)
	case at(1024+0x38, "\x53\xef"):
		return uuid(extKind(head[1024:]), 1024+0x68)
	case at(0x10000+0x40, "_BHRfS_M"):
		return uuid("a btrfs file system", 0x10000+0x20)
	}
	for sector := 0; sector < 4; sector++ {
		if off := sector * 512; at(off, "LABELONE") && at(off+24, "LVM2 001") {
			s := text("an LVM2 physical volume", off+32, 32)
			s.ID = "UUID " + lvmUUID(s.key)
			return s
		}
	}
	for _, page := range []int{4096, 8192, 16384, 65536} {
		if at(page-10, "SWAPSPACE2") {
			return uuid("a swap area", 1024+12)
		}
		if at(page-10, "SWAP-SPACE") {
			return &Signature{Kind: "a swap area"}
		}
	}
	for _, sector := range []int{512, 4096} {
		if at(sector, "EFI PART") && sector+72 <= len(head) {
			g := head[sector+56 : sector+72]
			return &Signature{Kind: "a GPT partition table", ID: "disk GUID " + formatGUID(g), key: string(g)}
		}
	}
	if at(510, "\x55\xaa") {
		id := binary.LittleEndian.Uint32(head[440:])
		return &Signature{Kind: "an MBR partition table or boot sector", ID: fmt.Sprintf("disk identifier 0x%08x", id), key: string(head[:512])}
	}
	return nil
}

// extKind tells ext4 from ext3 and ext2 by the superblock's feature flags
// (sb is the superblock, at byte 1024 of the device).
func extKind(sb []byte) string {
	if len(sb) < 0x68 {
		return "an ext2/3/4 file system"
	}
	compat := binary.LittleEndian.Uint32(sb[0x5c:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	rocompat := binary.LittleEndian.Uint32(sb[0x64:])
	const (
		hasJournal   = 0x4
		ext3Incompat = 0x2 | 0x4 | 0x8 | 0x10 // filetype, recover, journal_dev, meta_bg
		ext3RO       = 0x1 | 0x2 | 0x4        // sparse_super, large_file, btree_dir
	)
	switch {
	case incompat&^ext3Incompat != 0 || rocompat&^ext3RO != 0:
		return "an ext4 file system"
	case compat&hasJournal != 0:
		return "an ext3 file system"
	}
	return "an ext2 file system"
}

// lvmUUID writes an LVM2 UUID in the groups that pvs and blkid show.
func lvmUUID(s string) string {
	if len(s) != 32 {
		return s
	}
	var parts []string
	for _, n := range []int{6, 4, 4, 4, 4, 4, 6} {
		parts, s = append(parts, s[:n]), s[n:]
	}
	return strings.Join(parts, "-")
}

// formatUUID writes 16 bytes as a UUID, as blkid shows them.
func formatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// formatGUID writes a GPT GUID (its first three fields little-endian), as
// sfdisk and blkid show it.
func formatGUID(b []byte) string {
	var g [16]byte
	copy(g[:], b)
	rev := func(s []byte) {
		for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
			s[i], s[j] = s[j], s[i]
		}
	}
	rev(g[0:4])
	rev(g[4:6])
	rev(g[6:8])
	return strings.ToUpper(formatUUID(g[:]))
}
