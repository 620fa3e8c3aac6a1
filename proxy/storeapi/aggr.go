package storeapi

import (
	"math"
	"strings"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/block/chunkcut"
	"github.com/lethe-project/lethe/internal/storepb"
)

// Downsampled reads, as Thanos Query makes them (its pkg/query, read, not imported): a request's
// max_source_resolution lets the stores answer from 5m and 1h blocks, whose chunks hold
// aggregates of each window (count, sum, min, max, counter) stamped at the window's last sample.
// Which aggregate a series is read as follows the PromQL function it is read for; the resolution
// is halved for the functions that need two samples in their range.

// aggregatesFor returns the aggregates Thanos Query reads for PromQL's function f.
func aggregatesFor(f string) []storepb.Aggr {
	switch {
	case f == "min" || strings.HasPrefix(f, "min_"):
		return []storepb.Aggr{storepb.Aggr_MIN}
	case f == "max" || strings.HasPrefix(f, "max_"):
		return []storepb.Aggr{storepb.Aggr_MAX}
	case f == "count" || strings.HasPrefix(f, "count_"):
		return []storepb.Aggr{storepb.Aggr_COUNT}
	case strings.HasPrefix(f, "sum_"): // sum itself wants the samples: their average.
		return []storepb.Aggr{storepb.Aggr_SUM}
	case counterFunc(f):
		return []storepb.Aggr{storepb.Aggr_COUNTER}
	}
	return []storepb.Aggr{storepb.Aggr_COUNT, storepb.Aggr_SUM}
}

// requestedAggregates returns the aggregates to ask the stores for, to read aggrs: a counter with
// the count too. A counter alone cannot be cut, as its windows are read off another aggregate
// (see chunkcut.CutAggregates): cut, it would go whole. Native histograms have no max.
func requestedAggregates(aggrs []storepb.Aggr) []storepb.Aggr {
	if len(aggrs) == 1 && aggrs[0] == storepb.Aggr_COUNTER {
		return []storepb.Aggr{storepb.Aggr_COUNTER, storepb.Aggr_COUNT}
	}
	return aggrs
}

// twoSampleFuncs are the functions that need two samples in their range: Thanos reads them at
// most at half the range's resolution.
var twoSampleFuncs = map[string]bool{
	"rate": true, "irate": true, "increase": true, "delta": true, "idelta": true, "deriv": true,
	"predict_linear": true, "holt_winters": true, "double_exponential_smoothing": true,
}

// resolutionWindow returns the max_resolution_window a read of function f over a range of rng
// milliseconds asks for, the request allowing res.
func resolutionWindow(res, rng int64, f string) int64 {
	if rng > 0 && twoSampleFuncs[f] {
		return min(res, rng/2)
	}
	return res
}

// readFrom returns the first time whose samples a read from mint at max_resolution_window res
// may return: an aggregate stamped at or after mint holds the samples of its whole window.
func readFrom(mint, res int64) int64 {
	switch {
	case res <= 0 || mint == math.MinInt64:
		return mint
	case res >= resolution1h:
		return chunkcut.WindowStart(mint, resolution1h)
	}
	return chunkcut.WindowStart(mint, resolution5m)
}

// aggrIterator returns an iterator over a chunk's raw samples, or over the aggregates aggrs of a
// downsampled one: one of them as it is, or count and sum as their average.
func aggrIterator(c *storepb.AggrChunk, aggrs []storepb.Aggr, reuse chunkenc.Iterator) (chunkenc.Iterator, error) {
	if c.Raw != nil {
		chk, err := decodeChunk(c.Raw)
		if err != nil {
			return nil, err
		}
		return chk.Iterator(reuse), nil
	}
	decode := func(a storepb.Aggr) (chunkenc.Iterator, error) {
		var d *storepb.Chunk
		switch a {
		case storepb.Aggr_COUNT:
			d = c.Count
		case storepb.Aggr_SUM:
			d = c.Sum
		case storepb.Aggr_MIN:
			d = c.Min
		case storepb.Aggr_MAX:
			d = c.Max
		case storepb.Aggr_COUNTER:
			d = c.Counter
		}
		if d == nil {
			return nil, errors.Newf("chunk [%d, %d] has neither raw data nor the %s aggregate", c.MinTime, c.MaxTime, a)
		}
		chk, err := decodeChunk(d)
		if err != nil {
			return nil, errors.Wrapf(err, "%s aggregate", a)
		}
		return chk.Iterator(nil), nil
	}
	switch len(aggrs) {
	case 1:
		return decode(aggrs[0])
	case 2:
		cnt, err := decode(storepb.Aggr_COUNT)
		if err != nil {
			return nil, err
		}
		sum, err := decode(storepb.Aggr_SUM)
		if err != nil {
			return nil, err
		}
		return &averageIterator{cnt: cnt, sum: sum}, nil
	}
	return nil, errors.Newf("chunk [%d, %d] has no raw data", c.MinTime, c.MaxTime)
}

// averageIterator reads a downsampled chunk's windows as their averages: sum over count.
type averageIterator struct {
	cnt, sum chunkenc.Iterator
	typ      chunkenc.ValueType
	started  bool
	t        int64
	v        float64
	fh       *histogram.FloatHistogram
	err      error
}

func (it *averageIterator) Next() chunkenc.ValueType {
	it.started = true
	ct, st := it.cnt.Next(), it.sum.Next()
	switch {
	case ct == chunkenc.ValNone && st == chunkenc.ValNone:
		it.typ = chunkenc.ValNone
		return it.typ
	case ct == chunkenc.ValNone || st == chunkenc.ValNone:
		return it.fail(errors.New("sum and count aggregates hold different windows"))
	case it.cnt.AtT() != it.sum.AtT():
		return it.fail(errors.Newf("sum and count aggregates stamped %d and %d", it.sum.AtT(), it.cnt.AtT()))
	}
	var n float64
	it.t, n = it.cnt.At()
	it.fh = nil
	if st == chunkenc.ValHistogram || st == chunkenc.ValFloatHistogram {
		_, sum := it.sum.AtFloatHistogram(nil)
		it.fh, it.typ = sum.Div(n), chunkenc.ValFloatHistogram
		return it.typ
	}
	_, sum := it.sum.At()
	it.v, it.typ = sum/n, chunkenc.ValFloat
	return it.typ
}

func (it *averageIterator) fail(err error) chunkenc.ValueType {
	it.err, it.typ = err, chunkenc.ValNone
	return it.typ
}

func (it *averageIterator) Seek(t int64) chunkenc.ValueType {
	for !it.started || (it.typ != chunkenc.ValNone && it.t < t) {
		if it.Next() == chunkenc.ValNone {
			return chunkenc.ValNone
		}
	}
	return it.typ
}

func (it *averageIterator) At() (int64, float64) { return it.t, it.v }

func (it *averageIterator) AtHistogram(*histogram.Histogram) (int64, *histogram.Histogram) {
	return it.t, nil // An average is a float histogram.
}

func (it *averageIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	if fh == nil {
		return it.t, it.fh.Copy()
	}
	it.fh.CopyTo(fh)
	return it.t, fh
}

func (it *averageIterator) AtT() int64  { return it.t }
func (it *averageIterator) AtST() int64 { return 0 }

func (it *averageIterator) Err() error {
	if it.err != nil {
		return it.err
	}
	if err := it.cnt.Err(); err != nil {
		return err
	}
	return it.sum.Err()
}

// concatIterator reads chunks one after the other, every sample as its chunk holds it: the
// counter resets after it see a counter aggregate's repeated last sample, and samples where
// chunks overlap.
type concatIterator struct {
	chks  []*storepb.AggrChunk
	aggrs []storepb.Aggr
	i     int
	cur   chunkenc.Iterator
	typ   chunkenc.ValueType
	err   error
}

func (it *concatIterator) Next() chunkenc.ValueType {
	for it.err == nil {
		if it.cur == nil {
			if it.i >= len(it.chks) {
				break
			}
			it.cur, it.err = aggrIterator(it.chks[it.i], it.aggrs, nil)
			it.i++
			continue
		}
		if it.typ = it.cur.Next(); it.typ != chunkenc.ValNone {
			return it.typ
		}
		if it.err = it.cur.Err(); it.err == nil {
			it.cur = nil
		}
	}
	it.typ = chunkenc.ValNone
	return it.typ
}

func (it *concatIterator) Seek(t int64) chunkenc.ValueType {
	for it.cur == nil || (it.typ != chunkenc.ValNone && it.cur.AtT() < t) {
		if it.Next() == chunkenc.ValNone {
			return chunkenc.ValNone
		}
	}
	return it.typ
}

func (it *concatIterator) At() (int64, float64) { return it.cur.At() }

func (it *concatIterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	return it.cur.AtHistogram(h)
}

func (it *concatIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return it.cur.AtFloatHistogram(fh)
}

func (it *concatIterator) AtT() int64 { return it.cur.AtT() }

func (it *concatIterator) AtST() int64 { return it.cur.AtST() }

func (it *concatIterator) Err() error { return it.err }
