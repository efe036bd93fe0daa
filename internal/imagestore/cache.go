package imagestore

import (
	"bufio"
	"encoding/binary"
	"io"
	"os"

	"github.com/dosvob/dosvob/internal/format"
)

// HashCache is the per-block hashes of the image as the run that made it
// recorded them (hashes-<generation> in the state directory): xxhash64 with
// Seed of each block of BlockSize, little-endian, in block order. With it a
// signature can be produced without reading the image.
type HashCache struct {
	Seed      uint64
	BlockSize uint32
	Blocks    uint64
	f         *os.File
	r         *bufio.Reader
}

// HashCache returns the image's per-block hashes, or nil when they cannot
// be trusted: no manifest, a partial image, a missing or short hash file,
// or an image whose size or modification time is not what the last commit
// left (it was changed outside dosvob). The cache is closed by Close.
func (s *Store) HashCache() *HashCache {
	m := s.manifest
	if m == nil || s.content != s.path || m.Hashes == "" || m.ImageMtime == 0 || !format.ValidBlockSize(uint32(m.BlockSize)) {
		return nil
	}
	fi, err := os.Stat(s.path)
	if err != nil || fi.Size() != m.DeviceSize || fi.ModTime().UnixNano() != m.ImageMtime {
		return nil
	}
	f, err := os.Open(s.join(m.Hashes))
	if err != nil {
		return nil
	}
	blocks := format.BlockCount(uint64(m.DeviceSize), uint32(m.BlockSize))
	if hf, err := f.Stat(); err != nil || hf.Size() != int64(blocks)*8 {
		f.Close()
		return nil
	}
	s.open = append(s.open, f)
	return &HashCache{Seed: uint64(m.HashSeed), BlockSize: uint32(m.BlockSize), Blocks: blocks, f: f, r: bufio.NewReaderSize(f, 64<<10)}
}

// Next returns the hash of the next block; io.EOF after the last.
func (c *HashCache) Next() (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(c.r, b[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}
