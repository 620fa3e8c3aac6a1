package rewriter

import (
	"encoding/binary"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"

	"github.com/lethe-project/lethe/tombstones"
)

// Thanos' downsampled blocks hold aggregate chunks (pkg/compact/downsample/aggr.go): encoding
// 0xff, then for each of count, sum, min, max and counter, in that order, the uvarint length of
// a chunk's bytes (0: the aggregate is absent), its encoding byte and its bytes. Each aggregate
// has one sample per window, stamped at the window's end (or at the last raw sample's timestamp,
// if earlier). The counter aggregate also starts with the first raw sample and ends with the last
// raw value, stamped again at the last window's timestamp: Thanos' ApplyCounterResetsSeriesIterator
// compares that value with the next chunk's first to find counter resets between chunks.
const aggrEncoding = chunkenc.Encoding(0xff)

const (
	aggrCount = iota
	aggrSum
	aggrMin
	aggrMax
	aggrCounter
	aggrTypes
)

// parseAggr splits an aggregate chunk into its chunks; an absent aggregate is nil.
func parseAggr(b []byte) ([aggrTypes]chunkenc.Chunk, error) {
	var out [aggrTypes]chunkenc.Chunk
	for i := range out {
		l, n := binary.Uvarint(b)
		if n <= 0 || (l > 0 && uint64(len(b)-n) < l+1) {
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
func encodeAggr(cs [aggrTypes]chunkenc.Chunk) []byte {
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

// cutAggr returns an aggregate chunk of floats without the windows that a deleted range meets:
// every aggregate loses its samples of those windows, and so does the counter aggregate, whose
// first raw sample lies in the first window and whose last raw value is stamped in the last.
// When the last window goes, the new last window's maximum stands in for the last raw value (for
// a counter, the last value of a window without a reset), so that Thanos still finds the resets
// between this chunk and the next. It returns ok false for aggregates it cannot cut (native
// histogram aggregates), which the caller drops whole, and a nil chunk if no window is left.
func cutAggr(data []byte, ivs tombstones.Intervals, resolution int64) (chk []byte, mint, maxt int64, ok bool, err error) {
	aggrs, err := parseAggr(data)
	if err != nil {
		return nil, 0, 0, false, err
	}
	for _, c := range aggrs {
		if c != nil && c.Encoding() != chunkenc.EncXOR {
			return nil, 0, 0, false, nil
		}
	}
	kept := func(t int64) bool { return !ivs.Overlaps(windowStart(t, resolution), t) }
	var (
		out           [aggrTypes]chunkenc.Chunk
		lastKept      = int64(-1) << 62
		lastDropped   bool
		windows       int
		maxAtLastKept float64
		haveMax       bool
	)
	mint, maxt = int64(1)<<62, int64(-1)<<62
	for i, c := range aggrs {
		if c == nil || i == aggrCounter {
			continue
		}
		nc := chunkenc.NewXORChunk()
		app, err := nc.Appender()
		if err != nil {
			return nil, 0, 0, false, err
		}
		it := c.Iterator(nil)
		n := 0
		for it.Next() == chunkenc.ValFloat {
			t, v := it.At()
			if !kept(t) {
				if i == aggrFirst(aggrs) {
					lastDropped = true
				}
				continue
			}
			app.Append(0, t, v)
			n++
			if i == aggrFirst(aggrs) {
				mint, maxt, lastKept, lastDropped = min(mint, t), max(maxt, t), t, false
			}
			if i == aggrMax && t == lastKept {
				maxAtLastKept, haveMax = v, true
			}
		}
		if err := it.Err(); err != nil {
			return nil, 0, 0, false, errors.Wrapf(err, "aggregate %d", i)
		}
		if i == aggrFirst(aggrs) {
			windows = n
		}
		out[i] = nc
	}
	if windows == 0 {
		return nil, 0, 0, true, nil
	}
	if c := aggrs[aggrCounter]; c != nil {
		nc := chunkenc.NewXORChunk()
		app, err := nc.Appender()
		if err != nil {
			return nil, 0, 0, false, err
		}
		it := c.Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			if t, v := it.At(); kept(t) {
				app.Append(0, t, v)
			}
		}
		if err := it.Err(); err != nil {
			return nil, 0, 0, false, errors.Wrap(err, "counter aggregate")
		}
		if lastDropped && haveMax {
			app.Append(0, lastKept, maxAtLastKept)
		}
		out[aggrCounter] = nc
	}
	return encodeAggr(out), mint, maxt, true, nil
}

// aggrFirst is the first aggregate present other than the counter: its samples are the windows.
func aggrFirst(aggrs [aggrTypes]chunkenc.Chunk) int {
	for i := aggrCount; i < aggrCounter; i++ {
		if aggrs[i] != nil {
			return i
		}
	}
	return -1
}

// cutAggrMeta applies cutAggr to a chunk read as raw bytes; ok is false if it cannot cut it.
func cutAggrMeta(c chunkenc.Chunk, ivs tombstones.Intervals, resolution int64) (m *chunks.Meta, ok bool, err error) {
	b, mint, maxt, ok, err := cutAggr(c.Bytes(), ivs, resolution)
	if err != nil || !ok || b == nil {
		return nil, ok, err
	}
	return &chunks.Meta{Chunk: &rawChunk{enc: aggrEncoding, b: b}, MinTime: mint, MaxTime: maxt}, true, nil
}
