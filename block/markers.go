package block

import (
	"bytes"
	"context"
	"encoding/json"
	"path"
	"slices"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/thanos-io/objstore"
)

// NoDownsampleMarkFilename keeps Thanos' compactor from downsampling a block.
const NoDownsampleMarkFilename = "no-downsample-mark.json"

// DeletionMark is Thanos' deletion-mark.json: the block is deleted after the delete delay.
type DeletionMark struct {
	ID           ulid.ULID `json:"id"`
	DeletionTime int64     `json:"deletion_time"`
	Version      int       `json:"version"`
	Details      string    `json:"details,omitempty"`
}

// NoCompactMark is Thanos' no-compact-mark.json; NoDownsampleMark its no-downsample-mark.json.
type NoCompactMark struct {
	ID            ulid.ULID `json:"id"`
	Version       int       `json:"version"`
	Details       string    `json:"details,omitempty"`
	NoCompactTime int64     `json:"no_compact_time"`
	Reason        string    `json:"reason"`
}

// NoDownsampleMark is Thanos' no-downsample-mark.json.
type NoDownsampleMark struct {
	ID               ulid.ULID `json:"id"`
	Version          int       `json:"version"`
	Details          string    `json:"details,omitempty"`
	NoDownsampleTime int64     `json:"no_downsample_time"`
	Reason           string    `json:"reason"`
}

// WriteMarker uploads a marker into a block's folder.
func WriteMarker(ctx context.Context, bkt objstore.Bucket, id ulid.ULID, name string, marker any) error {
	b, err := json.MarshalIndent(marker, "", "\t")
	if err != nil {
		return errors.Wrapf(err, "encode %s of %s", name, id)
	}
	if err := bkt.Upload(ctx, path.Join(id.String(), name), bytes.NewReader(b)); err != nil {
		return errors.Wrapf(err, "upload %s of %s", name, id)
	}
	return nil
}

// MarkForDeletion writes Thanos' deletion mark, unless the block already has one.
func MarkForDeletion(ctx context.Context, bkt objstore.Bucket, id ulid.ULID, now time.Time, details string) error {
	ok, err := bkt.Exists(ctx, path.Join(id.String(), DeletionMarkFilename))
	if err != nil || ok {
		return err
	}
	return WriteMarker(ctx, bkt, id, DeletionMarkFilename, DeletionMark{ID: id, DeletionTime: now.Unix(), Version: 1, Details: details})
}

// ReadDeletionMark reads a block's deletion mark.
func ReadDeletionMark(ctx context.Context, bkt objstore.BucketReader, id ulid.ULID) (*DeletionMark, error) {
	rc, err := bkt.Get(ctx, path.Join(id.String(), DeletionMarkFilename))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	m := &DeletionMark{}
	if err := json.NewDecoder(rc).Decode(m); err != nil {
		return nil, errors.Wrapf(err, "decode deletion mark of %s", id)
	}
	return m, nil
}

// Delete removes a block as Thanos does: meta.json first, so that a crash midway leaves a folder
// no reader takes for a block, then every other object, the deletion mark last.
func Delete(ctx context.Context, bkt objstore.Bucket, id ulid.ULID) error {
	if err := bkt.Delete(ctx, path.Join(id.String(), MetaFilename)); err != nil && !bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return errors.Wrapf(err, "delete meta.json of %s", id)
	}
	names, err := objects(ctx, bkt, id)
	if err != nil {
		return err
	}
	mark := path.Join(id.String(), DeletionMarkFilename)
	for _, n := range append(slices.DeleteFunc(names, func(n string) bool { return n == mark }), mark) {
		if err := bkt.Delete(ctx, n); err != nil && !bkt.IsObjNotFoundErr(errors.Cause(err)) {
			return errors.Wrapf(err, "delete %s", n)
		}
	}
	return nil
}
