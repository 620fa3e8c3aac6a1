package block

import (
	"context"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/thanos-io/objstore"
	"golang.org/x/sync/errgroup"
)

// Download copies a block's index, chunks and meta.json into dst, through a temporary directory
// renamed into place at the end, so that a crash never leaves a local copy that looks complete and
// is not. Markers are not copied.
func Download(ctx context.Context, bkt objstore.BucketReader, id ulid.ULID, dst string) error {
	tmp := dst + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	names, err := objects(ctx, bkt, id)
	if err != nil {
		return err
	}
	var meta bool
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(transferConcurrency)
	for _, n := range names {
		rel := strings.TrimPrefix(n, id.String()+"/")
		switch {
		case rel == MetaFilename:
			meta = true
			continue // Last.
		case rel == IndexFilename, strings.HasPrefix(rel, ChunksDirname+"/"):
		default:
			continue
		}
		g.Go(func() error { return copyObject(gctx, bkt, n, filepath.Join(tmp, filepath.FromSlash(rel))) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if !meta {
		return errors.Newf("block %s has no meta.json", id)
	}
	if err := copyObject(ctx, bkt, path.Join(id.String(), MetaFilename), filepath.Join(tmp, MetaFilename)); err != nil {
		return err
	}
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	return errors.Wrapf(os.Rename(tmp, dst), "place block %s", id)
}

// objects lists every object of a block.
func objects(ctx context.Context, bkt objstore.BucketReader, id ulid.ULID) ([]string, error) {
	var names []string
	if err := bkt.Iter(ctx, id.String(), func(name string) error {
		names = append(names, name)
		return nil
	}, objstore.WithRecursiveIter()); err != nil {
		return nil, errors.Wrapf(err, "list block %s", id)
	}
	return names, nil
}

func copyObject(ctx context.Context, bkt objstore.BucketReader, name, dst string) (err error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	rc, err := bkt.Get(ctx, name)
	if err != nil {
		return errors.Wrapf(err, "get %s", name)
	}
	defer errcapture.Do(&err, rc.Close, "close %s", name)
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer errcapture.Do(&err, f.Close, "close %s", dst)
	if _, err := io.Copy(f, rc); err != nil {
		return errors.Wrapf(err, "download %s", name)
	}
	return nil
}

// DownloadIndex copies a block's index to the file dst, through a temporary file renamed into
// place at the end: a reader that streams the chunks from the bucket needs only the index here.
func DownloadIndex(ctx context.Context, bkt objstore.BucketReader, id ulid.ULID, dst string) error {
	tmp := dst + ".tmp"
	if err := copyObject(ctx, bkt, path.Join(id.String(), IndexFilename), tmp); err != nil {
		return err
	}
	return errors.Wrapf(os.Rename(tmp, dst), "place the index of block %s", id)
}
