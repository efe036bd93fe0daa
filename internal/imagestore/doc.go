// Package imagestore keeps a dosvob backup image and its state, and makes
// every change to the image atomic.
//
// Beside each image IMAGE lives a state directory IMAGE.dosvob/ with the
// manifest (what the image is a backup of, its digests, its kept versions),
// the locks, the undo journal of a run in progress, the partial image of an
// unfinished first backup, the records of signing runs and the
// per-block hashes of the image (the hash cache: with a version 2 delta,
// dosvob-patch keeps the device's hashes under the signature's next seed,
// so that the next dosvob-hash signs without reading the image). docs/MANIFEST.md describes the layout and
// docs/CRASH-SAFETY.md the argument why a run that stops at any point leaves
// the image exactly the previous backup or exactly the new one.
//
// The two ends of the pipe use it like this:
//
//	// dosvob-hash IMAGE
//	s, err := imagestore.Open(path, imagestore.Options{Backup: true, Logf: logf}) // recovers first; creates nothing
//	r, size, err := s.Content()         // the image, or the partial image
//	cache, why := s.HashCache()         // per-block hashes to sign from, or nil and why not
//	g, err := s.BeginSigning(hdr)       // before the signature header; makes IMAGE.dosvob/ if missing
//	g.Add(hash) ...                     // per block, from the cache or from reading r
//	ch := g.Found(d.Sum64())            // read: d from s.ContentDigester(); nil, or what a change outside dosvob cut off
//	g.Finish(sigWriter.Digest())        // before the signature trailer
//
//	// dosvob-patch IMAGE
//	s, err := imagestore.Open(path, imagestore.Options{Writer: true, Backup: true, Logf: logf})
//	res, err := s.Patch(ctx, stdin, imagestore.PatchOptions{...})
//
// A command that only reads (the scrub, versions, restore-version, the
// --delta IMAGE of a restore) opens without Backup: it still finishes or
// undoes an interrupted run, but deletes nothing of the image's history.
//
// Open, Begin and friends return errors wrapping the sentinels ErrLocked,
// ErrNotOurs, ErrOtherVolume, ErrUnknownVersion, ErrStateDamaged, ErrBase, ErrCorrupt,
// ErrNoVersion, ErrVersionLost, ErrImageChanged and ErrExists, which the commands map to exit
// codes.
package imagestore
