package storeapi

import (
	"math"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/internal/synth"
)

type testSample struct {
	t int64
	v float64
}

// xorChunk encodes the samples as one raw XOR chunk.
func xorChunk(t *testing.T, samples []testSample) *storepb.AggrChunk {
	t.Helper()
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	testutil.Ok(t, err)
	for _, s := range samples {
		app.Append(0, s.t, s.v)
	}
	return &storepb.AggrChunk{MinTime: samples[0].t, MaxTime: samples[len(samples)-1].t, Raw: &storepb.Chunk{Type: storepb.Chunk_XOR, Data: c.Bytes()}}
}

// every returns samples at from, from+step, ... up to to, valued by v.
func every(from, to, step int64, v func(int64) float64) []testSample {
	var out []testSample
	for ts := from; ts <= to; ts += step {
		out = append(out, testSample{ts, v(ts)})
	}
	return out
}

func readAll(t *testing.T, it chunkenc.Iterator) []testSample {
	t.Helper()
	var out []testSample
	for n := 0; it.Next() == chunkenc.ValFloat; n++ {
		testutil.Assert(t, n < 10_000, "iterator does not end")
		ts, v := it.At()
		out = append(out, testSample{ts, v})
	}
	testutil.Ok(t, it.Err())
	return out
}

func TestSplitReplicas(t *testing.T) {
	a := &storepb.AggrChunk{MinTime: 0, MaxTime: 99}
	b := &storepb.AggrChunk{MinTime: 0, MaxTime: 99}
	c := &storepb.AggrChunk{MinTime: 100, MaxTime: 199}
	d := &storepb.AggrChunk{MinTime: 50, MaxTime: 150}
	// Sorted by MinTime: a, b, d, c. d overlaps a and b: a third group; c follows a.
	got := splitReplicas([]*storepb.AggrChunk{a, b, d, c})
	testutil.Equals(t, [][]*storepb.AggrChunk{{a, c}, {b}, {d}}, got)
	testutil.Equals(t, [][]*storepb.AggrChunk{{a, c}}, splitReplicas([]*storepb.AggrChunk{a, c}))
}

func TestChunksIteratorSkipsOverlapAndBounds(t *testing.T) {
	v := func(ts int64) float64 { return float64(ts) / 1000 }
	first := xorChunk(t, every(0, 60_000, 15_000, v))
	second := xorChunk(t, every(45_000, 120_000, 15_000, v))
	got := readAll(t, newChunksIterator([]*storepb.AggrChunk{first, second}, nil, math.MinInt64, math.MaxInt64))
	testutil.Equals(t, every(0, 120_000, 15_000, v), got)

	got = readAll(t, newChunksIterator([]*storepb.AggrChunk{first, second}, nil, 20_000, 100_000))
	testutil.Equals(t, every(30_000, 90_000, 15_000, v), got)

	it := newChunksIterator([]*storepb.AggrChunk{first, second}, nil, math.MinInt64, math.MaxInt64)
	testutil.Equals(t, chunkenc.ValFloat, it.Seek(70_000))
	testutil.Equals(t, int64(75_000), it.AtT())
	testutil.Equals(t, chunkenc.ValFloat, it.Seek(10_000)) // Seek never goes back.
	testutil.Equals(t, int64(75_000), it.AtT())
	testutil.Equals(t, chunkenc.ValNone, it.Seek(130_000))
}

func TestChunksIteratorReadsNativeHistograms(t *testing.T) {
	c := chunkenc.NewHistogramChunk()
	app, err := c.Appender()
	testutil.Ok(t, err)
	var want []*histogram.Histogram
	for i := int64(0); i < 5; i++ {
		h := synth.DefaultHistogram(0, i)
		want = append(want, h.Copy())
		_, _, app, err = app.AppendHistogram(nil, 0, i*15_000, h, false)
		testutil.Ok(t, err)
	}
	chk := &storepb.AggrChunk{MinTime: 0, MaxTime: 60_000, Raw: &storepb.Chunk{Type: storepb.Chunk_HISTOGRAM, Data: c.Bytes()}}
	// Both replicas hold the same chunk: deduplicated, each sample once.
	it := dedupIterator([]*storepb.AggrChunk{chk, chk}, math.MinInt64, math.MaxInt64, false, nil)
	var got []*histogram.Histogram
	for it.Next() == chunkenc.ValHistogram {
		_, h := it.AtHistogram(nil)
		got = append(got, h)
	}
	testutil.Ok(t, it.Err())
	testutil.Equals(t, len(want), len(got))
	for i := range want {
		testutil.Equals(t, want[i].Count, got[i].Count)
		testutil.Equals(t, want[i].Sum, got[i].Sum)
		testutil.Equals(t, want[i].PositiveBuckets, got[i].PositiveBuckets)
	}
}

func TestDedupIdenticalReplicas(t *testing.T) {
	samples := every(0, 300_000, 15_000, func(ts int64) float64 { return float64(ts) })
	got := readAll(t, dedupIterator([]*storepb.AggrChunk{xorChunk(t, samples), xorChunk(t, samples)}, math.MinInt64, math.MaxInt64, false, nil))
	testutil.Equals(t, samples, got)
}

// TestDedupPenalty: replica a stops for a while; b, sampled 5s later, fills the gap, and from then
// on b is kept: a, which now lags, must skip twice the last gap each time, and never wins again.
func TestDedupPenalty(t *testing.T) {
	v := func(ts int64) float64 { return float64(ts) / 1000 }
	a := append(every(0, 60_000, 15_000, v), every(135_000, 300_000, 15_000, v)...)
	b := every(5_000, 305_000, 15_000, v)
	got := readAll(t, dedupIterator([]*storepb.AggrChunk{xorChunk(t, a), xorChunk(t, b)}, math.MinInt64, math.MaxInt64, false, nil))
	want := append(every(0, 60_000, 15_000, v), every(95_000, 305_000, 15_000, v)...)
	testutil.Equals(t, want, got)
	// The merged sampling is never denser than the replicas'.
	for i := 1; i < len(got); i++ {
		testutil.Assert(t, got[i].t-got[i-1].t >= 15_000, "samples %v and %v closer than a replica's interval", got[i-1], got[i])
	}
}

// TestDedupCounterSwitch: b's counter runs 100 lower than a's (it restarted). Switching to b in a's
// gap reads as a reset for gauges; for counter functions b is lifted so nothing drops.
func TestDedupCounterSwitch(t *testing.T) {
	a := append(every(0, 60_000, 15_000, func(ts int64) float64 { return 100 + float64(ts)/1000 }), every(135_000, 300_000, 15_000, func(ts int64) float64 { return 100 + float64(ts)/1000 })...)
	b := every(5_000, 305_000, 15_000, func(ts int64) float64 { return float64(ts) / 1000 })
	chks := func() []*storepb.AggrChunk { return []*storepb.AggrChunk{xorChunk(t, a), xorChunk(t, b)} }

	drops := func(s []testSample) int {
		n := 0
		for i := 1; i < len(s); i++ {
			if s[i].v < s[i-1].v {
				n++
			}
		}
		return n
	}
	testutil.Equals(t, 1, drops(readAll(t, dedupIterator(chks(), math.MinInt64, math.MaxInt64, false, nil))))
	got := readAll(t, dedupIterator(chks(), math.MinInt64, math.MaxInt64, true, nil))
	testutil.Equals(t, 0, drops(got))
	// At the switch b's 95 is lifted to the last value taken from a, 160.
	testutil.Equals(t, testSample{95_000, 160}, got[5])
}

// TestCounterResets: a raw counter read for a counter function is made monotonic from the first
// sample, as Thanos Query reads it; stale markers are left out.
func TestCounterResets(t *testing.T) {
	raw := []testSample{{0, 10}, {15_000, 20}, {30_000, 5}, {45_000, math.Float64frombits(0x7ff0000000000002)}, {60_000, 15}}
	got := readAll(t, replicaSamples([]*storepb.AggrChunk{xorChunk(t, raw)}, math.MinInt64, math.MaxInt64, true, nil))
	testutil.Equals(t, []testSample{{0, 10}, {15_000, 20}, {30_000, 25}, {60_000, 35}}, got)

	// Bounded after: the accumulation starts at the chunk's first sample, not at the window's.
	got = readAll(t, replicaSamples([]*storepb.AggrChunk{xorChunk(t, raw)}, 20_000, 60_000, true, nil))
	testutil.Equals(t, []testSample{{30_000, 25}, {60_000, 35}}, got)
}
