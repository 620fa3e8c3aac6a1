package rewriter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/thanos-io/objstore"
)

func checkpointPrefix(child ulid.ULID) string { return StatePrefix + "jobs/" + child.String() + "/" }

// loadCheckpoint fetches the checkpoint of the job and its output files, if a run left one.
func (r *Runner) loadCheckpoint(ctx context.Context, j *Job, child ulid.ULID, dst string) (*checkpoint, error) {
	rc, err := r.bkt.Get(ctx, checkpointPrefix(child)+"checkpoint.json")
	if r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return nil, nil
	}
	if err != nil {
		return nil, errors.Wrap(err, "read checkpoint")
	}
	cp := &checkpoint{}
	derr := json.NewDecoder(rc).Decode(cp)
	if err := rc.Close(); err != nil {
		return nil, errors.Wrap(err, "read checkpoint")
	}
	if derr != nil {
		// A run killed while uploading it, to a bucket whose uploads are not atomic (a
		// FILESYSTEM bucket): starting over writes the same bytes.
		r.logger.Warn("ignoring an unreadable checkpoint; the job starts over", "block", j.Block.String(), "err", derr)
		return nil, nil
	}
	if cp.Source != j.Block || cp.Block != child || !slices.Equal(cp.Tombstones, j.Tombstones) {
		r.logger.Warn("ignoring a checkpoint of another job", "block", j.Block.String())
		return nil, nil
	}
	if cp.Format != checkpointFormat {
		// Written by another version: starting over writes the same bytes.
		r.logger.Warn("ignoring a checkpoint of another format; the job starts over", "block", j.Block.String(), "format", cp.Format)
		return nil, nil
	}
	// Two workers on one job can race (leases are not atomic): a part missing, or shorter than
	// the checkpoint says, belongs to another worker's checkpoint. Starting over writes the same
	// bytes.
	for _, p := range cp.Parts {
		err := downloadPart(ctx, r.bkt, checkpointPrefix(child)+p.Object, filepath.Join(dst, filepath.FromSlash(p.File)), p.Offset, p.Size)
		if errors.Is(err, errShortPart) || r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
			r.logger.Warn("ignoring a checkpoint whose files are shorter than it says; the job starts over", "block", j.Block.String(), "part", p.Object, "err", err)
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	// Each part was checked as it came down; together they must cover every file.
	covered := cp.covered()
	for _, f := range cp.files() {
		if covered[f.Name] < f.Size {
			r.logger.Warn("ignoring a checkpoint whose parts do not cover its files; the job starts over", "block", j.Block.String(), "file", f.Name)
			return nil, nil
		}
	}
	return cp, nil
}

// saveCheckpoint uploads what the output files gained since the previous checkpoint, each new
// range as an object of its own (a checkpoint costs what it adds, not the whole output so far),
// then the checkpoint itself, last.
func (r *Runner) saveCheckpoint(ctx context.Context, cp, prev *checkpoint, dst string) error {
	var had map[string]int64
	if prev != nil {
		cp.Parts = slices.Clone(prev.Parts)
		had = prev.covered()
	}
	for _, f := range cp.files() {
		from := had[f.Name]
		if f.Size <= from {
			continue
		}
		p := checkpointPart{File: f.Name, Offset: from, Size: f.Size - from, Object: fmt.Sprintf("parts/%s.%020d", f.Name, from)}
		if err := uploadPart(ctx, r.bkt, filepath.Join(dst, filepath.FromSlash(f.Name)), p.Offset, p.Size, checkpointPrefix(cp.Block)+p.Object); err != nil {
			return err
		}
		cp.Parts = append(cp.Parts, p)
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	return errors.Wrap(r.bkt.Upload(ctx, checkpointPrefix(cp.Block)+"checkpoint.json", bytes.NewReader(b)), "upload checkpoint")
}

// uploadPart uploads size bytes of the file at path from off.
func uploadPart(ctx context.Context, bkt objstore.Bucket, path string, off, size int64, name string) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer errcapture.Do(&err, f.Close, "close %s", path)
	return errors.Wrapf(bkt.Upload(ctx, name, io.NewSectionReader(f, off, size)), "upload %s", name)
}

// downloadPart writes the object, size bytes, into the file at path from off.
func downloadPart(ctx context.Context, bkt objstore.BucketReader, name, path string, off, size int64) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	rc, err := bkt.Get(ctx, name)
	if err != nil {
		return errors.Wrapf(err, "get %s", name)
	}
	defer errcapture.Do(&err, rc.Close, "close %s", name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer errcapture.Do(&err, f.Close, "close %s", path)
	n, err := io.Copy(io.NewOffsetWriter(f, off), rc)
	if err != nil {
		return errors.Wrapf(err, "download %s", name)
	}
	if n != size {
		return errors.Wrapf(errShortPart, "%s holds %d bytes, its checkpoint %d", name, n, size)
	}
	return nil
}

var errShortPart = errors.New("checkpoint part of another size")

// dropCheckpoint removes a finished job's checkpoint, the checkpoint object first.
func (r *Runner) dropCheckpoint(ctx context.Context, child ulid.ULID) error {
	p := checkpointPrefix(child)
	if err := r.bkt.Delete(ctx, p+"checkpoint.json"); err != nil && !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return err
	}
	return r.bkt.Iter(ctx, p, func(name string) error {
		return r.bkt.Delete(ctx, name)
	}, objstore.WithRecursiveIter())
}
