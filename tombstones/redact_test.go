package tombstones

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/thanos-io/objstore"
)

func TestReaderKey(t *testing.T) {
	ctx := context.Background()
	bkt := objstore.NewInMemBucket()

	// A bucket without a key and no key file: no key, no error, nothing written.
	k, err := ReaderKey(ctx, bkt, "")
	testutil.Ok(t, err)
	testutil.Assert(t, k == nil, "no key expected, got %v", k)
	testutil.Equals(t, 0, len(bkt.Objects()))

	stored, err := LoadOrCreateBucketKey(ctx, bkt)
	testutil.Ok(t, err)
	k, err = ReaderKey(ctx, bkt, "")
	testutil.Ok(t, err)
	testutil.Equals(t, stored.ID(), k.ID())

	// The key file wins over the bucket's key.
	f := filepath.Join(t.TempDir(), "key")
	testutil.Ok(t, os.WriteFile(f, []byte("a key file of enough length"), 0o600))
	k, err = ReaderKey(ctx, bkt, f)
	testutil.Ok(t, err)
	testutil.Assert(t, k.ID() != stored.ID(), "the file's key is used")

	// A key file that does not exist is an error, not a silent fall-back to the bucket's key.
	_, err = ReaderKey(ctx, bkt, filepath.Join(t.TempDir(), "missing"))
	testutil.NotOk(t, err)

	// A bucket key that does not decode is an error too.
	testutil.Ok(t, bkt.Upload(ctx, RedactionKeyObject, strings.NewReader("short")))
	_, err = ReaderKey(ctx, bkt, "")
	testutil.NotOk(t, err)
}
