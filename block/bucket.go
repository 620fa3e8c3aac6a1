package block

import (
	"context"
	"path"
	"sort"
	"strings"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/thanos-io/objstore"
)

// Problem is a block that could not be used. Readers report it and go on with the others.
type Problem struct {
	Block ulid.ULID
	Err   error
}

// Listing is what the bucket holds at one look.
type Listing struct {
	// Blocks are the live blocks (no deletion mark), sorted by MinTime then ULID.
	Blocks []*Meta
	// Marked are blocks with a deletion mark; queries must not see them.
	Marked []ulid.ULID
	// Partial are folders with no meta.json: uploads in progress, or left by a crash. They are
	// not blocks yet and not errors: Thanos' compactor cleans old ones, and so does lethe's
	// rewriter for its own.
	Partial []ulid.ULID
	// Problems are blocks whose meta.json is unreadable.
	Problems []Problem
}

// List reads the meta.json of every block in the bucket. Folders whose name is not a ULID (such as
// tombstones/ and lethe/) are not blocks and are ignored. Only a failure to list the bucket is an
// error; a bad block becomes a Problem.
func List(ctx context.Context, bkt objstore.BucketReader) (*Listing, error) {
	var ids []ulid.ULID
	if err := bkt.Iter(ctx, "", func(name string) error {
		id, err := ulid.ParseStrict(strings.TrimSuffix(name, "/"))
		if err == nil && strings.HasSuffix(name, "/") {
			ids = append(ids, id)
		}
		return nil
	}); err != nil {
		return nil, errors.Wrap(err, "list blocks")
	}
	l := &Listing{}
	for _, id := range ids {
		marked, err := bkt.Exists(ctx, path.Join(id.String(), DeletionMarkFilename))
		if err != nil {
			return nil, errors.Wrapf(err, "check deletion mark of %s", id)
		}
		if marked {
			l.Marked = append(l.Marked, id)
			continue
		}
		m, err := ReadMeta(ctx, bkt, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if bkt.IsObjNotFoundErr(errors.Cause(err)) {
				l.Partial = append(l.Partial, id)
				continue
			}
			l.Problems = append(l.Problems, Problem{Block: id, Err: err})
			continue
		}
		l.Blocks = append(l.Blocks, m)
	}
	sort.Slice(l.Blocks, func(i, j int) bool {
		if l.Blocks[i].MinTime != l.Blocks[j].MinTime {
			return l.Blocks[i].MinTime < l.Blocks[j].MinTime
		}
		return l.Blocks[i].ULID.Compare(l.Blocks[j].ULID) < 0
	})
	return l, nil
}
