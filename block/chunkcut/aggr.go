package chunkcut

import (
	"encoding/binary"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/tombstones"
)

// Thanos' downsampled blocks hold aggregate chunks (pkg/compact/downsample/aggr.go): encoding
// 0xff, then for each of count, sum, min, max and counter, in that order, the uvarint length of
// a chunk's bytes (0: the aggregate is absent), its encoding byte and its bytes. Each aggregate
// has one sample per window, stamped at the window's end (or at the last raw sample's timestamp,
// if earlier). The counter aggregate also starts with the first raw sample and ends with the last
// raw value, stamped again at the last window's timestamp: Thanos' ApplyCounterResetsSeriesIterator
// compares that value with the next chunk's first to find counter resets between chunks.
const AggrEncoding = chunkenc.Encoding(0xff)

// The aggregates of a downsampled chunk, in the order Thanos encodes them.
const (
	AggrCount = iota
	AggrSum
	AggrMin
	AggrMax
	AggrCounter
	AggrTypes
)

// Aggregates are the chunks of one downsampled chunk, indexed by AggrCount..AggrCounter; an absent
// aggregate is nil.
type Aggregates [AggrTypes]chunkenc.Chunk

// parseAggr splits an aggregate chunk into its chunks; an absent aggregate is nil.
func parseAggr(b []byte) (Aggregates, error) {
	var out Aggregates
	for i := range out {
		l, n := binary.Uvarint(b)
		if n <= 0 || (l > 0 && (len(b)-n < 1 || l > uint64(len(b)-n-1))) {
			return out, errors.Newf("aggregate chunk: bad length of aggregate %d", i)
		}
		b = b[n:]
		if l == 0 {
			continue
		}
		c, err := chunkenc.FromData(chunkenc.Encoding(b[0]), b[1:1+l])
		if err != nil {
			return out, errors.Wrapf(err, "aggregate chunk: aggregate %d", i)
		}
		out[i] = c
		b = b[1+l:]
	}
	if len(b) != 0 {
		return out, errors.Newf("aggregate chunk: %d bytes after the aggregates", len(b))
	}
	return out, nil
}

// encodeAggr is the inverse of parseAggr.
func encodeAggr(cs Aggregates) []byte {
	var b []byte
	for _, c := range cs {
		if c == nil {
			b = binary.AppendUvarint(b, 0)
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(c.Bytes())))
		b = append(b, byte(c.Encoding()))
		b = append(b, c.Bytes()...)
	}
	return b
}

// Aggr returns an aggregate chunk (AggrEncoding's bytes) without the windows that a deleted range
// meets, as CutAggregates does; nil if no window is left. ok is false for a chunk it cannot cut,
// which the caller drops whole.
func Aggr(data []byte, ivs tombstones.Intervals, resolution int64) (chk []byte, mint, maxt int64, ok bool, err error) {
	aggrs, err := parseAggr(data)
	if err != nil {
		return nil, 0, 0, false, err
	}
	out, mint, maxt, cut, ok, err := CutAggregates(aggrs, ivs, resolution)
	switch {
	case err != nil || !ok:
		return nil, 0, 0, false, err
	case !cut:
		return data, mint, maxt, true, nil
	case aggrFirst(out) < 0:
		return nil, 0, 0, true, nil
	}
	return encodeAggr(out), mint, maxt, true, nil
}

// CutAggregates returns the aggregates without the windows that a deleted range meets, and the
// timestamps of the first and last window left. Count, sum, min and max lose the samples of those
// windows and keep the others. The counter aggregate is a running total from the chunk's first raw
// sample on, so each of its values after a deleted window depends on the deleted samples (for a
// gauge, or a counter reset there, it would give them away): it keeps only the windows before the
// first one that goes. Its last raw value (which Thanos compares with the next chunk's first value
// to find counter resets) becomes the maximum of the last window it keeps, the last value of a
// window without a reset. Native histogram aggregates (count, sum and counter, one sample per
// window) are cut the same way. cut is false if no window goes (out is then aggrs); with no window
// left, every aggregate of out is nil. ok is false for aggregates it cannot cut (none it knows, or
// samples that no longer fit one chunk), which the caller drops whole.
func CutAggregates(aggrs Aggregates, ivs tombstones.Intervals, resolution int64) (out Aggregates, mint, maxt int64, cut, ok bool, err error) {
	first := aggrFirst(aggrs)
	if first < 0 {
		return out, 0, 0, false, false, nil
	}
	kept := func(t int64) bool { return !ivs.Overlaps(WindowStart(t, resolution), t) }
	windows, cutAt, cut, ok, err := filterChunk(aggrs[first], kept, &out[first])
	if err != nil || !ok {
		return Aggregates{}, 0, 0, false, false, errors.Wrapf(err, "aggregate %d", first)
	}
	if len(windows) == 0 {
		return Aggregates{}, 0, 0, true, true, nil
	}
	if !cut {
		return aggrs, windows[0], windows[len(windows)-1], false, true, nil
	}
	for i, c := range aggrs {
		if c == nil || i == first {
			continue
		}
		keep := kept
		if i == AggrCounter {
			keep = func(t int64) bool { return t < cutAt && kept(t) }
		}
		if _, _, _, ok, err := filterChunk(c, keep, &out[i]); err != nil || !ok {
			return Aggregates{}, 0, 0, false, false, errors.Wrapf(err, "aggregate %d", i)
		}
	}
	if err := closeCounter(out[AggrCounter], aggrs[AggrMax], cutAt); err != nil {
		return Aggregates{}, 0, 0, false, false, err
	}
	return out, windows[0], windows[len(windows)-1], true, true, nil
}

// closeCounter ends a float counter aggregate cut before cutAt with its last raw value, the
// maximum of its last window (max, the max aggregate, before the cut). Without a max aggregate,
// or with no window left, it adds nothing.
func closeCounter(counter, max chunkenc.Chunk, cutAt int64) error {
	if counter == nil || counter.Encoding() != chunkenc.EncXOR || max == nil || counter.NumSamples() == 0 {
		return nil
	}
	var (
		last int64
		it   = counter.Iterator(nil)
	)
	for it.Next() == chunkenc.ValFloat {
		last = it.AtT()
	}
	if err := it.Err(); err != nil {
		return errors.Wrap(err, "counter aggregate")
	}
	it = max.Iterator(nil)
	for it.Next() == chunkenc.ValFloat {
		if t, v := it.At(); t == last && t < cutAt {
			app, err := counter.Appender()
			if err != nil {
				return err
			}
			app.Append(0, t, v)
			return nil
		}
	}
	return errors.Wrap(it.Err(), "max aggregate")
}

// filterChunk sets *out to a chunk of c's encoding with the samples of c whose timestamps keep
// accepts, and returns their timestamps, the timestamp of the first sample left out, and whether
// any was. ok is false if the samples kept do not fit one chunk.
func filterChunk(c chunkenc.Chunk, keep func(int64) bool, out *chunkenc.Chunk) (ts []int64, firstOut int64, cut, ok bool, err error) {
	nc, err := chunkenc.NewEmptyChunk(c.Encoding())
	if err != nil {
		return nil, 0, false, false, err
	}
	app, err := nc.Appender()
	if err != nil {
		return nil, 0, false, false, err
	}
	it := c.Iterator(nil)
	for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
		t := it.AtT()
		if !keep(t) {
			if !cut {
				firstOut, cut = t, true
			}
			continue
		}
		var next chunkenc.Chunk
		recoded := false
		switch vt {
		case chunkenc.ValFloat:
			_, v := it.At()
			app.Append(0, t, v)
		case chunkenc.ValFloatHistogram:
			_, fh := it.AtFloatHistogram(nil)
			if len(ts) == 0 && fh.CounterResetHint == histogram.NotCounterReset {
				// Its predecessor may be gone: nothing is known of a reset before it.
				fh.CounterResetHint = histogram.UnknownCounterReset
			}
			next, recoded, app, err = app.AppendFloatHistogram(nil, 0, t, fh, false)
		case chunkenc.ValHistogram:
			_, h := it.AtHistogram(nil)
			if len(ts) == 0 && h.CounterResetHint == histogram.NotCounterReset {
				h.CounterResetHint = histogram.UnknownCounterReset
			}
			next, recoded, app, err = app.AppendHistogram(nil, 0, t, h, false)
		}
		if err != nil {
			return nil, 0, false, false, err
		}
		switch {
		case next != nil && recoded:
			nc = next
		case next != nil:
			return nil, 0, false, false, nil
		}
		ts = append(ts, t)
	}
	*out = nc
	return ts, firstOut, cut, true, it.Err()
}

// aggrFirst is the first aggregate present other than the counter: its samples are the windows.
func aggrFirst(aggrs Aggregates) int {
	for i := AggrCount; i < AggrCounter; i++ {
		if aggrs[i] != nil {
			return i
		}
	}
	return -1
}
