package storeapi

import (
	"math"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/lethe-project/lethe/block/chunkcut"
	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/tombstones"
)

// Thanos' downsampling resolutions, in milliseconds.
const (
	resolution5m = int64(5 * 60 * 1000)
	resolution1h = int64(60 * 60 * 1000)
)

// cutSeries returns the series' chunks without the samples the intervals delete, or nil when no
// chunk is left. Raw chunks crossing a deleted range are re-encoded without its samples; a
// downsampled aggregate chunk loses the windows a deleted range meets (one that cannot be cut goes
// whole). maxResolution is the request's max_resolution_window, which bounds the resolution of
// the aggregates a store may send. A piece left outside the request's [mint, maxt] is dropped: a
// store sends only chunks that meet the range, and Thanos' deduplication, which splits a series'
// chunks into replicas by their overlaps, would read an extra one differently.
func cutSeries(chks []*storepb.AggrChunk, ivs tombstones.Intervals, maxResolution, mint, maxt int64) ([]*storepb.AggrChunk, error) {
	out := make([]*storepb.AggrChunk, 0, len(chks))
	keep := func(orig, c *storepb.AggrChunk) {
		// An untouched chunk goes as the store sent it.
		if c == orig || (c.MaxTime >= mint && c.MinTime <= maxt) {
			out = append(out, c)
		}
	}
	for _, c := range chks {
		if c.Raw != nil {
			cut, err := cutRawChunk(c, ivs)
			if err != nil {
				return nil, err
			}
			for _, p := range cut {
				keep(c, p)
			}
			continue
		}
		cut, err := cutAggrChunk(c, ivs, maxResolution)
		if err != nil {
			return nil, err
		}
		if cut != nil {
			keep(c, cut)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// survives reports whether a sample of the chunks outside the intervals lies in [mint, maxt].
func survives(chks []*storepb.AggrChunk, ivs tombstones.Intervals, mint, maxt, maxResolution int64) (bool, error) {
	outside := append(tombstones.Intervals(nil), ivs...)
	if mint > math.MinInt64 {
		outside = outside.Add(tombstones.Interval{Mint: math.MinInt64, Maxt: mint - 1})
	}
	if maxt < math.MaxInt64 {
		outside = outside.Add(tombstones.Interval{Mint: maxt + 1, Maxt: math.MaxInt64})
	}
	left, err := cutSeries(chks, outside, maxResolution, math.MinInt64, math.MaxInt64)
	return len(left) > 0, err
}

func cutRawChunk(c *storepb.AggrChunk, ivs tombstones.Intervals) ([]*storepb.AggrChunk, error) {
	if !ivs.Overlaps(c.MinTime, c.MaxTime) {
		return []*storepb.AggrChunk{c}, nil
	}
	if ivs.CoversRange(c.MinTime, c.MaxTime) {
		return nil, nil
	}
	chk, err := decodeChunk(c.Raw)
	if err != nil {
		return nil, err
	}
	metas, err := chunkcut.Raw(chk, ivs)
	if err != nil {
		return nil, errors.Wrap(err, "cut raw chunk")
	}
	out := make([]*storepb.AggrChunk, 0, len(metas))
	for _, m := range metas {
		raw, err := encodeChunk(m.Chunk)
		if err != nil {
			return nil, err
		}
		out = append(out, &storepb.AggrChunk{MinTime: m.MinTime, MaxTime: m.MaxTime, Raw: raw})
	}
	return out, nil
}

func cutAggrChunk(c *storepb.AggrChunk, ivs tombstones.Intervals, maxResolution int64) (*storepb.AggrChunk, error) {
	var aggrs chunkcut.Aggregates
	for i, a := range []*storepb.Chunk{c.Count, c.Sum, c.Min, c.Max, c.Counter} {
		if a == nil {
			continue
		}
		chk, err := decodeChunk(a)
		if err != nil {
			return nil, errors.Wrapf(err, "aggregate %d", i)
		}
		aggrs[i] = chk
	}
	res, err := resolution(aggrs, maxResolution)
	if err != nil {
		return nil, err
	}
	if !ivs.Overlaps(chunkcut.WindowStart(c.MinTime, res), c.MaxTime) {
		return c, nil
	}
	if ivs.CoversRange(chunkcut.WindowStart(c.MinTime, res), c.MaxTime) {
		return nil, nil
	}
	out, mint, maxt, cut, ok, err := chunkcut.CutAggregates(aggrs, ivs, res)
	switch {
	case err != nil:
		return nil, errors.Wrap(err, "cut aggregate chunk")
	case !ok:
		// Deleted data never survives in an aggregate: one that cannot be cut goes whole.
		return nil, nil
	case !cut:
		return c, nil
	}
	ac := &storepb.AggrChunk{MinTime: mint, MaxTime: maxt}
	for i, dst := range []**storepb.Chunk{&ac.Count, &ac.Sum, &ac.Min, &ac.Max, &ac.Counter} {
		if out[i] == nil {
			continue
		}
		if *dst, err = encodeChunk(out[i]); err != nil {
			return nil, err
		}
	}
	if ac.Count == nil && ac.Sum == nil && ac.Min == nil && ac.Max == nil {
		return nil, nil
	}
	return ac, nil
}

// resolution tells the window of an aggregate chunk. The store picks blocks of resolution up to
// the request's max_resolution_window, so below 1h the chunk is a 5m one. Above, it is taken as
// 1h unless two of its windows fall into one hour: taking a 5m chunk for a 1h one cuts whole hours
// where 5 minutes would do, which hides more than deleted, never less.
func resolution(aggrs chunkcut.Aggregates, maxResolution int64) (int64, error) {
	if maxResolution < resolution1h {
		return resolution5m, nil
	}
	for _, a := range aggrs[:chunkcut.AggrCounter] {
		if a == nil {
			continue
		}
		it := a.Iterator(nil)
		prev := int64(math.MinInt64)
		for it.Next() != chunkenc.ValNone {
			w := chunkcut.WindowStart(it.AtT(), resolution1h)
			if w == prev {
				return resolution5m, nil
			}
			prev = w
		}
		return resolution1h, errors.Wrap(it.Err(), "read aggregate chunk")
	}
	return resolution1h, nil
}

func decodeChunk(c *storepb.Chunk) (chunkenc.Chunk, error) {
	var enc chunkenc.Encoding
	switch c.Type {
	case storepb.Chunk_XOR:
		enc = chunkenc.EncXOR
	case storepb.Chunk_HISTOGRAM:
		enc = chunkenc.EncHistogram
	case storepb.Chunk_FLOAT_HISTOGRAM:
		enc = chunkenc.EncFloatHistogram
	default:
		return nil, errors.Newf("unknown chunk encoding %d", c.Type)
	}
	chk, err := chunkenc.FromData(enc, c.Data)
	return chk, errors.Wrap(err, "decode chunk")
}

func encodeChunk(c chunkenc.Chunk) (*storepb.Chunk, error) {
	var t storepb.Chunk_Encoding
	switch c.Encoding() {
	case chunkenc.EncXOR:
		t = storepb.Chunk_XOR
	case chunkenc.EncHistogram:
		t = storepb.Chunk_HISTOGRAM
	case chunkenc.EncFloatHistogram:
		t = storepb.Chunk_FLOAT_HISTOGRAM
	default:
		return nil, errors.Newf("chunk encoding %s has no StoreAPI type", c.Encoding())
	}
	return &storepb.Chunk{Type: t, Data: c.Bytes()}, nil
}

// cutWireSeries is cutSeries over an encoded Series: it returns the series without the samples
// the intervals delete, or nil when no chunk is left, and whether a chunk changed. A chunk whose
// time range (an aggregate's from the start of its hour) no interval meets is copied as encoded;
// only the others are decoded and cut. A series nothing changes in comes back as it is.
func cutWireSeries(series []byte, ivs tombstones.Intervals, maxResolution, mint, maxt int64) ([]byte, bool, error) {
	var (
		out  []byte // the new encoding, once a chunk changes
		kept int
	)
	for pos := 0; pos < len(series); {
		num, typ, n := protowire.ConsumeTag(series[pos:])
		if n < 0 {
			return nil, false, errWire
		}
		var payload []byte
		m := 0
		if typ == protowire.BytesType {
			payload, m = protowire.ConsumeBytes(series[pos+n:])
		} else {
			m = protowire.ConsumeFieldValue(num, typ, series[pos+n:])
		}
		if m < 0 {
			return nil, false, errWire
		}
		start, whole := pos, series[pos:pos+n+m]
		pos += n + m
		if num != fieldSeriesChunks || typ != protowire.BytesType {
			if out != nil {
				out = append(out, whole...)
			}
			continue
		}
		cmint, cmaxt, raw, err := wireChunkRange(payload)
		if err != nil {
			return nil, false, err
		}
		from := cmint
		if !raw {
			// Any resolution's window starts at or after the hour's.
			from = chunkcut.WindowStart(cmint, resolution1h)
		}
		if !ivs.Overlaps(from, cmaxt) {
			kept++
			if out != nil {
				out = append(out, whole...)
			}
			continue
		}
		c := &storepb.AggrChunk{}
		if err := proto.Unmarshal(payload, c); err != nil {
			return nil, false, err
		}
		pieces, err := cutSeries([]*storepb.AggrChunk{c}, ivs, maxResolution, mint, maxt)
		if err != nil {
			return nil, false, err
		}
		if len(pieces) == 1 && pieces[0] == c {
			kept++
			if out != nil {
				out = append(out, whole...)
			}
			continue
		}
		if out == nil {
			out = append(make([]byte, 0, len(series)), series[:start]...)
		}
		for _, p := range pieces {
			b, err := proto.Marshal(p)
			if err != nil {
				return nil, false, err
			}
			out = appendBytesField(out, fieldSeriesChunks, b)
			kept++
		}
	}
	switch {
	case kept == 0:
		return nil, false, nil
	case out == nil:
		return series, false, nil
	}
	return out, true, nil
}
