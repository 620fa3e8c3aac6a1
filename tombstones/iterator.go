package tombstones

import (
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// Iterator drops the samples of a series that the intervals delete. Prometheus' DeletedIterator
// does the same but keeps each histogram's counter-reset hint, and a chunk hints "no reset" for
// every sample after its first: when a deleted stretch held the reset (a reset always starts a
// chunk), the first surviving sample would wrongly promise there was none, and rate() would
// subtract across it. Here the first histogram after deleted samples says "unknown", so PromQL
// and chunk appenders compare the values themselves, as they do after Prometheus' own
// clean_tombstones.
type Iterator struct {
	it   chunkenc.Iterator
	ivs  Intervals
	cur  chunkenc.ValueType
	gap  bool
	init bool
}

// NewIterator wraps it; ivs must not change while the iterator is used.
func NewIterator(it chunkenc.Iterator, ivs Intervals) *Iterator {
	return &Iterator{it: it, ivs: ivs}
}

// Reset reuses the iterator for another series.
func (d *Iterator) Reset(it chunkenc.Iterator, ivs Intervals) {
	*d = Iterator{it: it, ivs: ivs}
}

// Inner returns the wrapped iterator, for reuse.
func (d *Iterator) Inner() chunkenc.Iterator { return d.it }

// skip moves past deleted samples from the current one on.
func (d *Iterator) skip(vt chunkenc.ValueType) chunkenc.ValueType {
	for vt != chunkenc.ValNone && d.ivs.Covers(d.it.AtT()) {
		d.gap = true
		vt = d.it.Next()
	}
	d.cur, d.init = vt, true
	return vt
}

func (d *Iterator) Next() chunkenc.ValueType {
	d.gap = false
	return d.skip(d.it.Next())
}

func (d *Iterator) Seek(t int64) chunkenc.ValueType {
	if d.init && (d.cur == chunkenc.ValNone || d.it.AtT() >= t) {
		return d.cur // Seek does not move backwards.
	}
	d.gap = false
	return d.skip(d.it.Seek(t))
}

func (d *Iterator) At() (int64, float64) { return d.it.At() }

func (d *Iterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	t, h := d.it.AtHistogram(h)
	if d.gap && h.CounterResetHint == histogram.NotCounterReset {
		h.CounterResetHint = histogram.UnknownCounterReset
	}
	return t, h
}

func (d *Iterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	t, fh := d.it.AtFloatHistogram(fh)
	if d.gap && fh.CounterResetHint == histogram.NotCounterReset {
		fh.CounterResetHint = histogram.UnknownCounterReset
	}
	return t, fh
}

func (d *Iterator) AtT() int64  { return d.it.AtT() }
func (d *Iterator) AtST() int64 { return d.it.AtST() }
func (d *Iterator) Err() error  { return d.it.Err() }
