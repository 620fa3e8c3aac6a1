package storeapi

import (
	"context"
	"math"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/tombstones"
)

// TestSourceMasksEachReplicaBeforeTheMerge: a tombstone naming the replica label deletes that
// replica's samples only, and the other replica's answer in their place; one naming both
// replicas deletes the range from the merged series. Both are invisible once the replica label
// is dropped, so they must be applied before the merge.
func TestSourceMasksEachReplicaBeforeTheMerge(t *testing.T) {
	replica := func(r string) *testStore {
		return &testStore{series: []labels.Labels{
			labels.FromStrings("__name__", "up", "job", "a", "replica", r),
			labels.FromStrings("__name__", "up", "job", "b", "replica", r),
			labels.FromStrings("__name__", "up", "job", "c", "replica", r),
		}}
	}
	src, snap := sourceOver(t, false, []*testStore{replica("r0"), replica("r1")},
		deletion{`up{job="a",replica="r0"}`, t0, t0 + 3_600_000},
		deletion{`up{job="b",replica=~"r0|r1"}`, t0 + 10*60_000, t0 + 19*60_000},
		deletion{`up{job="c",replica!="r1"}`, t0, t0 + 3_600_000},
		deletion{`up{job="c",replica="r1"}`, t0 + 30*60_000, t0 + 3_600_000},
	)
	got, _, err := selectAll(t, src, snap, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	testutil.Ok(t, err)
	testutil.Equals(t, 3, len(got))
	testutil.Equals(t, labels.FromStrings("__name__", "up", "job", "a"), got[0].lset)
	testutil.Equals(t, minutes(0, 60), got[0].ts, "r1 answers where r0 is deleted")
	testutil.Equals(t, append(minutes(0, 10), minutes(20, 60)...), got[1].ts, "deleted on both replicas")
	testutil.Equals(t, minutes(0, 30), got[2].ts, "r0 deleted whole, r1 from minute 30")
}

// TestSourceSortsReplicasNamedByATombstone: a store that cannot sort without the replica labels
// is read whole and sorted when a tombstone names a replica label, so the replicas meet again.
func TestSourceSortsReplicasNamedByATombstone(t *testing.T) {
	st := &testStore{series: []labels.Labels{
		labels.FromStrings("__name__", "up", "replica", "r0", "x", "1"),
		labels.FromStrings("__name__", "up", "replica", "r0", "x", "2"),
		labels.FromStrings("__name__", "up", "replica", "r1", "x", "1"),
		labels.FromStrings("__name__", "up", "replica", "r1", "x", "2"),
	}}
	src, snap := sourceOver(t, false, []*testStore{st}, deletion{`up{replica="r1",x="2"}`, t0, t0 + 30*60_000})
	got, _, err := selectAll(t, src, snap, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(got))
	testutil.Equals(t, labels.FromStrings("__name__", "up", "x", "1"), got[0].lset)
	testutil.Equals(t, minutes(0, 60), got[0].ts)
	testutil.Equals(t, labels.FromStrings("__name__", "up", "x", "2"), got[1].lset)
	testutil.Equals(t, minutes(0, 60), got[1].ts, "r0 answers where r1 is deleted")
}

// TestSourceLookupsMaskEachReplica: a label value carried only by samples that tombstones on
// each replica delete never appears, while the stores' own look-ups still list it.
func TestSourceLookupsMaskEachReplica(t *testing.T) {
	replica := func(r string) *testStore {
		return &testStore{series: []labels.Labels{
			labels.FromStrings("__name__", "up", "replica", r, "token", "public"),
			labels.FromStrings("__name__", "up", "replica", r, "token", "secret", "user", "42"),
		}, names: []string{"__name__", "replica", "token", "user"}}
	}
	src, snap := sourceOver(t, false, []*testStore{replica("r0"), replica("r1")},
		deletion{`{replica="r0",token="secret"}`, math.MinInt64, math.MaxInt64},
		deletion{`{replica="r1",token="secret"}`, math.MinInt64, math.MaxInt64},
	)
	q, err := src.Querier(snap, t0, t0+3_600_000)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, q.Close()) }()
	vals, _, err := q.LabelValues(context.Background(), "token", nil)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"public"}, vals)
	names, _, err := q.LabelNames(context.Background(), nil)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"__name__", "replica", "token"}, names)
	vals, _, err = q.LabelValues(context.Background(), "replica", nil)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"r0", "r1"}, vals)
}

// TestCutSeriesKeepsOnlyChunksInTheRequestWindow: a chunk that meets the request's range but
// whose part left after a cut does not is dropped, as a store would not have sent it; an untouched
// chunk goes as it came.
func TestCutSeriesKeepsOnlyChunksInTheRequestWindow(t *testing.T) {
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	testutil.Ok(t, err)
	for ts := t0; ts < t0+3_600_000; ts += 60_000 {
		app.Append(0, ts, float64(ts-t0))
	}
	chk := &storepb.AggrChunk{MinTime: t0, MaxTime: t0 + 3_540_000, Raw: &storepb.Chunk{Type: storepb.Chunk_XOR, Data: c.Bytes()}}
	// The first 40 minutes deleted: what is left starts after a window that ends at minute 35.
	ivs := tombstones.Intervals{{Mint: t0, Maxt: t0 + 40*60_000}}
	got, err := cutSeries([]*storepb.AggrChunk{chk}, ivs, 0, t0+20*60_000, t0+35*60_000)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(got), "the piece after the deleted range lies outside the window: %v", got)

	got, err = cutSeries([]*storepb.AggrChunk{chk}, ivs, 0, t0, t0+3_600_000)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(got))
	testutil.Equals(t, [2]int64{t0 + 41*60_000, t0 + 59*60_000}, [2]int64{got[0].MinTime, got[0].MaxTime})

	untouched := tombstones.Intervals{{Mint: t0 + 7_200_000, Maxt: t0 + 7_300_000}}
	got, err = cutSeries([]*storepb.AggrChunk{chk}, untouched, 0, t0+20*60_000, t0+35*60_000)
	testutil.Ok(t, err)
	testutil.Equals(t, []*storepb.AggrChunk{chk}, got)
}
