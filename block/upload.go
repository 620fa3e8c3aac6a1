package block

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"sort"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/thanos-io/objstore"
	"golang.org/x/sync/errgroup"
)

// transferConcurrency is how many objects of a block move at once.
const transferConcurrency = 4

// Upload copies a block directory to the bucket: chunk files first, then the index, and meta.json
// last, so that a reader that sees meta.json sees a whole block (Thanos' rule). meta is written as
// given, not read from dir.
func Upload(ctx context.Context, bkt objstore.Bucket, dir string, meta *Meta) error {
	id := meta.ULID.String()
	chunkFiles, err := os.ReadDir(filepath.Join(dir, ChunksDirname))
	if err != nil {
		return errors.Wrapf(err, "block %s: read chunks dir", id)
	}
	names := make([]string, 0, len(chunkFiles)+1)
	for _, f := range chunkFiles {
		names = append(names, path.Join(ChunksDirname, f.Name()))
	}
	sort.Strings(names)
	names = append(names, IndexFilename)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(transferConcurrency)
	for _, n := range names {
		g.Go(func() error {
			return errors.Wrapf(uploadFile(gctx, bkt, filepath.Join(dir, filepath.FromSlash(n)), path.Join(id, n)), "block %s", id)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	b, err := EncodeMeta(meta)
	if err != nil {
		return err
	}
	if err := bkt.Upload(ctx, path.Join(id, MetaFilename), bytes.NewReader(b)); err != nil {
		return errors.Wrapf(err, "block %s: upload meta.json", id)
	}
	return nil
}

func uploadFile(ctx context.Context, bkt objstore.Bucket, src, dst string) (err error) {
	f, err := os.Open(src)
	if err != nil {
		return errors.Wrapf(err, "open %s", src)
	}
	defer errcapture.Do(&err, f.Close, "close %s", src)
	if err := bkt.Upload(ctx, dst, f); err != nil {
		return errors.Wrapf(err, "upload %s", dst)
	}
	return nil
}
