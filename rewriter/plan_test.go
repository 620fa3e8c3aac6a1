package rewriter

import (
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
)

// indexReads counts, per index object, its whole reads (Get) and its ranged reads.
type indexReads struct {
	objstore.Bucket
	mu            sync.Mutex
	whole, ranged map[string]int
}

func (b *indexReads) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	b.count(name, b.whole)
	return b.Bucket.Get(ctx, name)
}

func (b *indexReads) GetRange(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	b.count(name, b.ranged)
	return b.Bucket.GetRange(ctx, name, off, length)
}

func (b *indexReads) count(name string, m map[string]int) {
	if !strings.HasSuffix(name, "/"+block.IndexFilename) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	m[name]++
}

// A run downloads the index of a block whose tombstones select many of its series once: the
// planner reads it whole and the rewrite takes its copy. Only the first ranged reads, which find
// the series selected, come before. A plan alone reads by ranges only, and the run leaves no copy
// behind in the tmp dir.
func TestPlanAndRewriteShareOneIndexDownload(t *testing.T) {
	fs, err := filesystem.NewBucket(t.TempDir())
	testutil.Ok(t, err)
	bkt := &indexReads{Bucket: fs, whole: map[string]int{}, ranged: map[string]int{}}
	f := fixtureOver(t, bkt, userSeries(8))
	f.tombstone(t, `{user_id="3"}`, t0+3_600_000, t0+3*3_600_000-1, true)

	plan, err := f.runner(t, Config{}).PlanOnly(context.Background())
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(plan.Jobs))
	testutil.Equals(t, 0, len(bkt.whole))
	testutil.Equals(t, 2, len(bkt.ranged))

	tmp := t.TempDir()
	rep, err := f.runner(t, Config{Threshold: 0.05, TmpDir: tmp}).Run(context.Background())
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Rewritten))
	for _, id := range f.ids {
		testutil.Equals(t, 1, bkt.whole[id.String()+"/"+block.IndexFilename], "whole reads of the index of %s", id)
	}
	left, err := os.ReadDir(tmp)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(left))
}

func TestWholeIndexPays(t *testing.T) {
	for _, tc := range []struct {
		selected int
		series   uint64
		want     bool
	}{
		{0, 100, false},
		{1, 100, true},
		{1, 256, true},
		{1, 257, false},
		{391, 100_000, true},
		{390, 100_000, false},
		{100, 100_000, false},
	} {
		testutil.Equals(t, tc.want, wholeIndexPays(tc.selected, tc.series), "%d of %d", tc.selected, tc.series)
	}
}
