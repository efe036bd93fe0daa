package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/dosvob/dosvob/internal/blockdev"
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

// RawOptions configure PatchRaw.
type RawOptions struct {
	// Force writes over a file system, partition table or other signature
	// at the target's start that is not the one the delta leaves there.
	Force bool
	// Progress, if set, is called now and then with the blocks done, of
	// total, and the bytes written.
	Progress func(done, total uint64, bytes int64)
}

// ErrForeign reports a raw target that holds a file system, partition
// table or other signature that the delta would replace by another (or by
// none): not a new volume, nor an earlier restore of the same image.
var ErrForeign = errors.New("the target holds other data")

// ForeignError says what the target holds and what the delta would leave.
type ForeignError struct {
	Target   string
	Has, Got *blockdev.Signature // Got is nil when the delta leaves none
}

func (e *ForeignError) Error() string {
	got := "no signature there"
	if e.Got != nil {
		got = e.Got.String()
	}
	return fmt.Sprintf("%q holds %s, and the image would leave %s: it is not a new volume, nor an earlier restore of this image; nothing written",
		e.Target, e.Has, got)
}

func (e *ForeignError) Unwrap() error { return ErrForeign }

// TooSmallError reports a target device smaller than the image that the
// delta holds: a device is never grown. It is an ErrBase.
type TooSmallError struct {
	Target    string
	Need, Has uint64 // bytes
}

func (e *TooSmallError) Error() string {
	return fmt.Sprintf("the image is %d bytes, device %q has only %d: %v", e.Need, e.Target, e.Has, ErrBase)
}

func (e *TooSmallError) Unwrap() error { return ErrBase }

// PatchRaw applies a delta stream straight onto target, a block device or
// an existing regular file, with no state directory: no manifest, journal or
// versions. It is the restore direction of the pipe (dosvob-hash --raw
// DEVICE | dosvob-hash --delta IMAGE | dosvob-patch --raw DEVICE), where
// the target is a new volume that holds nothing to protect, or an earlier
// restore of the same image that the run brings up to date.
//
// Before writing it makes sure of that. A block device is opened
// exclusively: one that is mounted (also read-only) or otherwise in use is
// refused with a *blockdev.BusyError (blockdev.ErrBusy), and while the run
// holds it nothing can mount it. A target whose start holds a file system,
// partition table, LVM, LUKS or swap signature (blockdev.Identify) must
// hold the same one (the same UUID) once the delta is applied, as an
// earlier restore of this image does; otherwise it is refused with a
// *ForeignError (ErrForeign), unless opts.Force. Zeros (a new volume) and
// data of no known format are written over.
//
// It checks that the delta was made against a raw signature of a target
// of this size (Base with no image id, Size = the target's size). A block
// device is never resized: the delta's device may be smaller (a volume
// rounded up to whole GiB), and the bytes past it are left alone. A
// regular file is cut or grown to the delta's size. At the end the target
// is fsynced and read back: the per-block hashes and the whole content
// must match the End record's BlockDigest and DeviceDigest.
func PatchRaw(ctx context.Context, target string, r io.Reader, opts RawOptions) (*RawResult, error) {
	f, err := blockdev.Open(target, os.O_RDWR)
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
		return nil, &TooSmallError{Target: target, Need: h.DeviceSize, Has: uint64(size)}
	}
	next := dr.Next
	if !opts.Force {
		if next, err = checkHead(f, target, isDev, size, dr); err != nil {
			return nil, err
		}
	}
	res, err := applyRaw(ctx, f, isDev, target, dr, next, opts.Progress)
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

// applyRaw writes the records of dr, as next yields them, onto f and reads
// f back against the End record's digests.
func applyRaw(ctx context.Context, f *os.File, isDev bool, target string, dr *format.DeltaReader, next func() (format.Record, error), progress func(done, total uint64, bytes int64)) (*RawResult, error) {
	h := dr.Header()
	res := &RawResult{Header: h}
	zero := make([]byte, h.BlockSize)
	total := h.Blocks()
	for n := uint64(0); ; n++ {
		if n%64 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rec, err := next()
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

// checkHead refuses a target whose start holds a signature (a file system,
// a partition table, ...) that the delta would not leave as it is: the
// same kind with the same identity. The records that reach into the
// target's first blockdev.HeadSize bytes are read ahead (at most that
// much, or one block) to see what the start will hold; the returned
// function gives them, then the rest of dr's records.
func checkHead(f *os.File, target string, isDev bool, size int64, dr *format.DeltaReader) (func() (format.Record, error), error) {
	head := make([]byte, min(int64(blockdev.HeadSize), size))
	if _, err := f.ReadAt(head, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("read %s: %w", target, err)
	}
	has := blockdev.Identify(head)
	if has == nil {
		return dr.Next, nil // a new volume, or data of no known format
	}
	// What the start will hold: a device keeps its size, a file is cut or
	// grown to the delta's.
	h := dr.Header()
	n := int64(len(head))
	if !isDev {
		n = min(int64(blockdev.HeadSize), int64(h.DeviceSize))
	}
	after := make([]byte, n)
	copy(after, head)
	var ahead []format.Record
	var stop error // what ended the read-ahead: a record past the head, io.EOF or an error
	for {
		rec, err := dr.Next()
		if err != nil {
			stop = err
			break
		}
		off := int64(rec.Index) * int64(h.BlockSize)
		if rec.Type == format.RecordData || rec.Type == format.RecordZero {
			if off >= int64(len(after)) {
				ahead = append(ahead, copyRecord(rec))
				break
			}
			if rec.Type == format.RecordData {
				copy(after[off:], rec.Bytes)
			} else {
				clear(after[off:min(off+int64(h.BlockLen(rec.Index)), int64(len(after)))])
			}
		}
		ahead = append(ahead, copyRecord(rec))
	}
	if stop != nil && stop != io.EOF {
		return nil, stop // a bad stream: nothing written
	}
	if got := blockdev.Identify(after); !has.Same(got) {
		return nil, &ForeignError{Target: target, Has: has, Got: got}
	}
	return func() (format.Record, error) {
		if len(ahead) > 0 {
			rec := ahead[0]
			ahead = ahead[1:]
			return rec, nil
		}
		if stop != nil {
			return format.Record{}, stop
		}
		return dr.Next()
	}, nil
}

// copyRecord copies rec out of the reader's buffer.
func copyRecord(rec format.Record) format.Record {
	rec.Bytes = append([]byte(nil), rec.Bytes...)
	return rec
}
