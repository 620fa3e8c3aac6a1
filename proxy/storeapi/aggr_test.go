package storeapi

import (
	"math"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/internal/storepb"
)

// aggrChunk is a downsampled chunk with the given aggregates (nil: absent), in the order
// count, sum, min, max, counter.
func aggrChunk(t *testing.T, count, sum, minimum, maximum, counter []testSample) *storepb.AggrChunk {
	t.Helper()
	c := &storepb.AggrChunk{MinTime: math.MaxInt64, MaxTime: math.MinInt64}
	for i, samples := range [][]testSample{count, sum, minimum, maximum, counter} {
		if samples == nil {
			continue
		}
		x := xorChunk(t, samples)
		c.MinTime, c.MaxTime = min(c.MinTime, x.MinTime), max(c.MaxTime, x.MaxTime)
		*[]**storepb.Chunk{&c.Count, &c.Sum, &c.Min, &c.Max, &c.Counter}[i] = x.Raw
	}
	return c
}

// TestAggregateReadsAsThanosQuery: a downsampled series is read as Thanos Query reads it for
// each function: one aggregate as it is, count and sum as their average, the counter made
// monotonic across chunks, its repeated last raw value telling a reset between chunks from none.
func TestAggregateReadsAsThanosQuery(t *testing.T) {
	const w = 300_000
	cnt := []testSample{{w - 1, 5}, {2*w - 1, 4}}
	sum := []testSample{{w - 1, 10}, {2*w - 1, 6}}
	mn := []testSample{{w - 1, 1}, {2*w - 1, 0.5}}
	mx := []testSample{{w - 1, 3}, {2*w - 1, 2}}
	first := aggrChunk(t, cnt, sum, mn, mx, []testSample{{0, 100}, {w - 1, 110}, {2*w - 1, 130}, {2*w - 1, 30}})
	// The next chunk's first raw value, 35, is above the last raw value 30: no reset.
	second := aggrChunk(t, []testSample{{3*w - 1, 5}}, []testSample{{3*w - 1, 5}}, []testSample{{3*w - 1, 1}}, []testSample{{3*w - 1, 1}},
		[]testSample{{2 * w, 35}, {3*w - 1, 40}, {3*w - 1, 40}})
	// A third whose first raw value, 2, is below: a reset.
	third := aggrChunk(t, []testSample{{4*w - 1, 5}}, []testSample{{4*w - 1, 5}}, []testSample{{4*w - 1, 1}}, []testSample{{4*w - 1, 1}},
		[]testSample{{3 * w, 2}, {4*w - 1, 7}, {4*w - 1, 7}})
	chks := []*storepb.AggrChunk{first, second, third}
	all := int64(math.MaxInt64)

	read := func(fn string) []testSample {
		return readAll(t, replicaSamples(chks, math.MinInt64, all, counterFunc(fn), aggregatesFor(fn)))
	}
	testutil.Equals(t, []testSample{{w - 1, 1}, {2*w - 1, 0.5}, {3*w - 1, 1}, {4*w - 1, 1}}, read("min_over_time"))
	testutil.Equals(t, []testSample{{w - 1, 3}, {2*w - 1, 2}, {3*w - 1, 1}, {4*w - 1, 1}}, read("max_over_time"))
	testutil.Equals(t, []testSample{{w - 1, 5}, {2*w - 1, 4}, {3*w - 1, 5}, {4*w - 1, 5}}, read("count_over_time"))
	testutil.Equals(t, []testSample{{w - 1, 10}, {2*w - 1, 6}, {3*w - 1, 5}, {4*w - 1, 5}}, read("sum_over_time"))
	testutil.Equals(t, []testSample{{w - 1, 2}, {2*w - 1, 1.5}, {3*w - 1, 1}, {4*w - 1, 1}}, read(""))
	// 100, 110, 130; then 35 follows the last raw 30 (+5), 40 (+5); then 2 is a reset (+2), 7 (+5).
	testutil.Equals(t, []testSample{{0, 100}, {w - 1, 110}, {2*w - 1, 130}, {2 * w, 135}, {3*w - 1, 140}, {3 * w, 142}, {4*w - 1, 147}}, read("rate"))
	// Bounded to a window, the counter still counts from the series' start.
	testutil.Equals(t, []testSample{{3*w - 1, 140}, {3 * w, 142}}, readAll(t, replicaSamples(chks, 2*w+1, 3*w, true, aggregatesFor("rate"))))

	// A chunk without the aggregate a function reads fails the read, never reads another.
	noMax := aggrChunk(t, cnt, sum, nil, nil, nil)
	it := replicaSamples([]*storepb.AggrChunk{noMax}, math.MinInt64, all, false, aggregatesFor("max_over_time"))
	testutil.Equals(t, chunkenc.ValNone, it.Next())
	testutil.NotOk(t, it.Err())

	testutil.Equals(t, []storepb.Aggr{storepb.Aggr_COUNTER, storepb.Aggr_COUNT}, requestedAggregates(aggregatesFor("increase")))
	testutil.Equals(t, []storepb.Aggr{storepb.Aggr_COUNT, storepb.Aggr_SUM}, requestedAggregates(aggregatesFor("sum")))
	testutil.Equals(t, int64(150_000), resolutionWindow(w, 300_000, "rate"))
	testutil.Equals(t, int64(w), resolutionWindow(w, 300_000, "max_over_time"))
	testutil.Equals(t, int64(w), resolutionWindow(w, 3_600_000, "rate"))
}
