package imagestore

import (
	"context"
	"fmt"
	"io"

	"github.com/dosvob/dosvob/internal/format"
)

// PatchOptions configure Patch.
type PatchOptions struct {
	TxOptions
	// Progress, if set, is called now and then with the blocks handled so
	// far, the device's block count and the bytes received in data records.
	Progress func(done, total uint64, bytes int64)
}

// Patch reads a delta stream from r and applies it to the image in one
// transaction: the header is checked against the image before anything is
// written, the records are applied as they arrive (journaled), and the run
// commits only after the End record has been read and verified. On any
// error the image stays the previous backup (or, for a first backup, the
// partial image stays for the next run to resume).
func (s *Store) Patch(ctx context.Context, r io.Reader, opts PatchOptions) (*Result, error) {
	dr, err := format.NewDeltaReader(r)
	if err != nil {
		return nil, err
	}
	defer dr.Close()
	tx, err := s.Begin(dr.Header(), opts.TxOptions)
	if err != nil {
		return nil, err
	}
	total := dr.Header().Blocks()
	var bytes int64
	for n := uint64(0); ; n++ {
		if n%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, abortWith(tx, err)
			}
		}
		rec, err := dr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, abortWith(tx, err)
		}
		switch rec.Type {
		case format.RecordData:
			err = tx.WriteBlock(rec.Index, rec.Bytes)
			bytes += int64(len(rec.Bytes))
		case format.RecordZero:
			err = tx.ZeroBlock(rec.Index)
		case format.RecordHashes:
			err = tx.KeepHashes(rec.Index, rec.Hashes)
		default:
			err = fmt.Errorf("unexpected %s record", rec.Type)
		}
		if err != nil {
			return nil, abortWith(tx, err)
		}
		if opts.Progress != nil && n%64 == 0 {
			opts.Progress(rec.Index+1, total, bytes)
		}
	}
	end, _ := dr.End()
	res, err := tx.Commit(end)
	if err != nil {
		return nil, err
	}
	if opts.Progress != nil {
		opts.Progress(total, total, bytes)
	}
	return res, nil
}

func abortWith(tx *Tx, err error) error {
	if aerr := tx.Abort(); aerr != nil {
		return fmt.Errorf("%w (and undoing the run failed: %v)", err, aerr)
	}
	return err
}
