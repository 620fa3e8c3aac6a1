package rewriter

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
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

// The planner's pass 1, decided from chunk metadata, is pass 1: the rewrite that takes it writes
// the same bytes as one that finds it itself. A series whose chunk has both ends deleted but not
// its middle needs a chunk read, and leaves pass 1 to the rewrite.
func TestPlannersPass1IsPass1(t *testing.T) {
	ctx := context.Background()
	meta, _, bkt := uploadedRequestsBlock(t)
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(t0) }))
	build := func(sel string, start, end int64) *tombstones.Tombstone {
		tb, err := store.Build(tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end})
		testutil.Ok(t, err)
		return tb
	}
	whole := build(`{user_id=~"1[0-9]|5."}`, tombstones.BeginningOfTime, t0+7_200_000)
	part := build(`{status="204"}`, t0+1_800_000, t0+4_800_000)
	// The chunks hold 30 minutes each: these two delete all of a series but the middle of its
	// chunk from 00:30, whose first and last samples they delete.
	head := build(`{status="201"}`, tombstones.BeginningOfTime, t0+2_400_000)
	tail := build(`{status="201"}`, t0+3_000_000, t0+7_200_000)

	for _, tc := range []struct {
		name    string
		applied []*tombstones.Tombstone
		decided bool
	}{{"decided by metadata", []*tombstones.Tombstone{whole, part}, true}, {"a chunk to read", []*tombstones.Tombstone{whole, part, head, tail}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			ix, err := tombstones.NewIndex(tc.applied, nil)
			testutil.Ok(t, err)
			p := &Planner{bkt: bkt, logger: slog.New(slog.DiscardHandler), indexDir: t.TempDir()}
			job, err := p.planBlock(ctx, meta, tc.applied, ix)
			testutil.Ok(t, err)
			testutil.Assert(t, job != nil && job.index != "")
			testutil.Equals(t, tc.decided, job.found != nil)
			if !tc.decided {
				return
			}
			testutil.Assert(t, len(job.found.dropped) > 0 && len(job.found.affected.refs) > 0, "series dropped and cut")
			segments, err := chunkObjects(ctx, bkt, meta.ULID)
			testutil.Ok(t, err)
			var outs []string
			var sts []stats
			for _, found := range []*pass1{nil, job.found} {
				d := &deleter{logger: slog.New(slog.DiscardHandler), limits: Limits{BatchSeries: 100}, ix: ix, applied: tc.applied,
					ext: meta.ExternalLabels(), progress: func(int, int64) {}, found: found}
				out := filepath.Join(t.TempDir(), "out")
				st, _, err := d.rewriteFrom(ctx, bucketSource(ctx, bkt, job.index, segments), out, nil)
				testutil.Ok(t, err)
				outs, sts = append(outs, out), append(sts, st)
			}
			testutil.Equals(t, sts[0], sts[1])
			testutil.Assert(t, sts[0].seriesDropped > 0 && sts[0].chunksRewritten > 0, "%+v", sts[0])
			sameFiles(t, outs[0], outs[1])
		})
	}
}
