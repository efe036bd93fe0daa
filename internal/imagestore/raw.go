package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/dosvob/dosvob/internal/format"
)

// RawResult describes a PatchRaw run.
type RawResult struct {
	Header     format.DeltaHeader
	End        format.End
	DataBlocks uint64
	ZeroBlocks uint64
	Bytes      int64
}

// PatchRaw applies a delta stream straight onto target, a block device or
// an existing regular file, with no state directory: no manifest, journal or
// versions. It is the restore direction of the pipe (dosvob-hash --raw
// DEVICE | dosvob-hash --delta IMAGE | dosvob-patch --raw DEVICE), where
// the target is a new volume that holds nothing to protect.
//
// Before writing it checks that the delta was made against a raw signature
// of a target of this size (Base with no image id, Size = the target's
// size). A block device is never resized: the delta's device may be
// smaller (a volume rounded up to whole GiB), and the bytes past it are
// left alone. A regular file is cut or grown to the delta's size. At the
// end the target is fsynced and read back: the per-block hashes and the
// whole content must match the End record's BlockDigest and DeviceDigest.
func PatchRaw(ctx context.Context, target string, r io.Reader, progress func(done, total uint64, bytes int64)) (*RawResult, error) {
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	isDev := fi.Mode()&os.ModeDevice != 0
	if !isDev && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%q is neither a block device nor a regular file", target)
	}
	// A backup: writing it with no journal would break its crash safety,
	// and leave its manifest and versions describing other content. It may
	// be reached through a symbolic link, or be a hard link of one.
	if HasState(target) {
		return nil, fmt.Errorf("%q has a dosvob state directory: it is a backup image, not a new volume: %w", target, ErrIsImage)
	}
	if real, err := filepath.EvalSymlinks(target); err == nil && HasState(real) {
		return nil, fmt.Errorf("%q leads to %q, which has a dosvob state directory: it is a backup image, not a new volume: %w", target, real, ErrIsImage)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && !isDev && st.Nlink > 1 {
		return nil, fmt.Errorf("%q has %d hard links, and one of them may be a backup image: --raw writes only to a file with a single name: %w", target, st.Nlink, ErrIsImage)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	dr, err := format.NewDeltaReader(r)
	if err != nil {
		return nil, err
	}
	defer dr.Close()
	h := dr.Header()
	if h.Base.ImageID != (ID{}) || h.Base.Generation != 0 {
		return nil, baseError("the delta was made against image %s generation %d, not against a raw signature of %s", ID(h.Base.ImageID), h.Base.Generation, target)
	}
	if h.Base.Size != uint64(size) {
		return nil, baseError("the delta was made against %d bytes, %s has %d", h.Base.Size, target, size)
	}
	if isDev && h.DeviceSize > uint64(size) {
		return nil, baseError("the delta holds %d bytes, device %s has only %d", h.DeviceSize, target, size)
	}
	res, err := applyRaw(ctx, f, isDev, target, dr, progress)
	if err != nil {
		return nil, rawIncomplete{err}
	}
	return res, nil
}

// ErrRawIncomplete marks a PatchRaw that failed once it had begun to write:
// the target may hold part of the delta, and is neither what it was nor
// the device the delta describes.
var ErrRawIncomplete = errors.New("the target is incomplete")

type rawIncomplete struct{ err error }

func (e rawIncomplete) Error() string   { return e.err.Error() }
func (e rawIncomplete) Unwrap() []error { return []error{e.err, ErrRawIncomplete} }

// applyRaw writes the records of dr onto f and reads f back against the
// End record's digests.
func applyRaw(ctx context.Context, f *os.File, isDev bool, target string, dr *format.DeltaReader, progress func(done, total uint64, bytes int64)) (*RawResult, error) {
	h := dr.Header()
	res := &RawResult{Header: h}
	zero := make([]byte, h.BlockSize)
	total := h.Blocks()
	for n := uint64(0); ; n++ {
		if n%64 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rec, err := dr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		off := int64(rec.Index) * int64(h.BlockSize)
		switch rec.Type {
		case format.RecordData:
			_, err = f.WriteAt(rec.Bytes, off)
			res.DataBlocks++
			res.Bytes += int64(len(rec.Bytes))
		case format.RecordZero:
			l := h.BlockLen(rec.Index)
			if isDev {
				_, err = f.WriteAt(zero[:l], off)
			} else {
				err = punch(f, off, int64(l))
			}
			res.ZeroBlocks++
		}
		if err != nil {
			return nil, err
		}
		if progress != nil && n%64 == 0 {
			progress(rec.Index, total, res.Bytes)
		}
	}
	res.End, _ = dr.End()
	if !isDev {
		if err := f.Truncate(int64(h.DeviceSize)); err != nil {
			return nil, err
		}
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	// Read it back: the target must now be the device the delta describes.
	hasher := format.NewHasher(h.Seed)
	bd := format.NewBlockDigester()
	dd := format.NewDeviceDigester(h.V(), h.BlockSize)
	buf := make([]byte, h.BlockSize)
	for i := range total {
		if i%64 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		b := buf[:h.BlockLen(i)]
		if _, err := f.ReadAt(b, int64(i)*int64(h.BlockSize)); err != nil {
			return nil, fmt.Errorf("read back %s: %w", target, err)
		}
		bd.Add(hasher.Sum(b))
		dd.Write(b)
	}
	if bd.Sum64() != res.End.BlockDigest || dd.Sum64() != res.End.DeviceDigest {
		return nil, baseError("%s does not match the stream's digests after patching (block digest %s, want %s); it changed since it was signed",
			target, Digest(bd.Sum64()), Digest(res.End.BlockDigest))
	}
	if progress != nil {
		progress(total, total, res.Bytes)
	}
	return res, nil
}
