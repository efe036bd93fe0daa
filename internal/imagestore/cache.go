package imagestore

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dosvob/dosvob/internal/format"
)

// HashCache is the per-block hashes of the image that the run which made it
// (or the latest scrub) recorded in hashes-<generation> in the state
// directory: xxhash64 with Seed of each block of BlockSize, little-endian,
// in block order. With it dosvob-hash signs without reading the image.
type HashCache struct {
	Seed      uint64
	BlockSize uint32
	Blocks    uint64
	r         *bufio.Reader
	buf       [8]byte
}

// cacheChunk is how many bytes of hashes the cache is read in at a time.
const cacheChunk = 256 << 10

// HashCache returns the image's per-block hashes when dosvob-hash may sign
// from them, or nil and the reason why not. They are trusted only when all
// of this holds:
//
//   - the manifest marks them fresh: their seed is the next seed of the run
//     that committed the image (or a scrub's new seed) and no comparison
//     has used it yet, so a colliding pair of blocks cannot hide behind it;
//   - the hash file is the one the manifest names for its generation
//     (hashes-<generation>, or hashes-<generation>-<seed> from a scrub),
//     written and renamed before the manifest that
//     names it was committed, and its contents have the manifest's
//     BlockDigest (so a stale, torn or foreign file is refused);
//   - the current content is the committed image: its image id,
//     generation and size are the manifest's, and its size and
//     modification time are what the commit (or scrub) left, so that a
//     change outside dosvob is noticed.
//
// The cache is closed by Close.
func (s *Store) HashCache() (*HashCache, string) {
	m := s.manifest
	switch {
	case m == nil:
		return nil, "no manifest"
	case s.content != s.path:
		return nil, "partial image"
	case !m.HashesFresh:
		return nil, "no fresh per-block hashes (made by an older dosvob or a version 1 delta)"
	case !ofGeneration(m.Hashes, m.Generation) || !format.ValidBlockSize(uint32(m.BlockSize)) || m.ImageMtime == 0:
		return nil, "manifest does not name per-block hashes of its generation"
	case s.base != format.Base{ImageID: m.ImageID, Generation: m.Generation, Size: uint64(m.DeviceSize)}:
		return nil, "image is not the one the manifest describes"
	}
	fi, err := os.Stat(s.path)
	if err != nil || fi.Size() != m.DeviceSize || fi.ModTime().UnixNano() != m.ImageMtime {
		return nil, "image changed since the last commit (size or modification time)"
	}
	f, err := os.Open(s.join(m.Hashes))
	if err != nil {
		return nil, "per-block hashes missing"
	}
	blocks := format.BlockCount(uint64(m.DeviceSize), uint32(m.BlockSize))
	if hf, err := f.Stat(); err != nil || hf.Size() != int64(blocks)*8 {
		f.Close()
		return nil, "per-block hashes have the wrong length"
	}
	// The whole file is read and digested in large reads before a single
	// hash is handed out, then read again from the start.
	d := format.NewBlockDigester()
	n, err := io.CopyBuffer(d, io.LimitReader(f, int64(blocks)*8), make([]byte, cacheChunk))
	if err != nil || n != int64(blocks)*8 {
		f.Close()
		return nil, "per-block hashes unreadable"
	}
	if Digest(d.Sum64()) != m.BlockDigest {
		f.Close()
		return nil, "per-block hashes do not match the manifest's digest"
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, "per-block hashes unreadable"
	}
	s.open = append(s.open, f)
	c := &HashCache{Seed: uint64(m.HashSeed), BlockSize: uint32(m.BlockSize), Blocks: blocks,
		r: bufio.NewReaderSize(io.LimitReader(f, int64(blocks)*8), cacheChunk)}
	return c, ""
}

// Read reads the next hashes as raw little-endian uint64s, in block order
// (an io.Reader of the hash file, Blocks*8 bytes; a read may end within a
// hash). A p of at least 256 KiB is read into directly.
func (c *HashCache) Read(p []byte) (int, error) { return c.r.Read(p) }

// Next returns the hash of the next block; io.EOF after the last.
func (c *HashCache) Next() (uint64, error) {
	if _, err := io.ReadFull(c.r, c.buf[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(c.buf[:]), nil
}

// ofGeneration reports whether name is a hash file of generation gen.
func ofGeneration(name string, gen uint64) bool {
	p := fmt.Sprintf("hashes-%d", gen)
	return name == p || strings.HasPrefix(name, p+"-")
}

// mtimeTick is the coarsest timestamp granularity dosvob allows for: two
// seconds (FAT's; a second on ext4 with 128-byte inodes and on ext3).
const mtimeTick = 2 * time.Second

// stampMtime gives img, just written and synced, a modification time that
// no later write can give it, and returns it as the file system stored it
// (0 if it cannot be read): a whole second at least mtimeTick before now.
// A write stamps a file with the current time at the file system's
// granularity, so one that came within the same tick as the commit would
// leave the mtime the commit recorded, and the hash cache would be trusted
// for content it does not describe. Where the file system does not let
// the time be set, the mtime is recorded as it is.
func stampMtime(img file, now time.Time) int64 {
	_ = img.SetModTime(now.Truncate(time.Second).Add(-mtimeTick))
	fi, err := img.Stat()
	if err != nil {
		return 0
	}
	return fi.ModTime().UnixNano()
}
