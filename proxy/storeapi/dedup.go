package storeapi

import (
	"bytes"
	"cmp"
	"math"
	"slices"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/internal/storepb"
)

// Deduplication of replicas, as Thanos Query does it (its pkg/dedup, read, not imported): the
// chunks of one series (replica labels dropped, so both replicas' chunks arrive together) are
// split into groups that do not overlap in time, each read as one replica; the replicas are then
// merged by the penalty rule: the replica with the earliest next sample is taken, and the one not
// taken must skip twice the gap to the last taken sample, so switching replicas never raises the
// sampling rate. For counter functions a switch to a replica whose value is lower than the last
// taken one adds the difference to that replica, so that a switch is not read as a reset.

// initialPenalty is how far (in milliseconds) the replica not taken first must skip: samples are
// typically seconds apart.
const initialPenalty = 5000

// counterFunc reports whether PromQL's function f reads counters, whose replicas' values are
// adjusted at a switch.
func counterFunc(f string) bool {
	return f == "rate" || f == "increase" || f == "irate" || f == "resets"
}

// sortChunks orders the chunks of one series from several replicas or stores as Thanos' proxy
// does before deduplication: by MinTime, then MaxTime, then encoding and, last, bytes in
// descending order; chunks identical to one before them are left out. The order decides which
// replica a group of overlapping chunks is read as, and so which replica's samples the penalty
// rule takes where replicas differ.
func sortChunks(chks []*storepb.AggrChunk) []*storepb.AggrChunk {
	slices.SortStableFunc(chks, compareChunks)
	return slices.CompactFunc(chks, func(a, b *storepb.AggrChunk) bool { return compareChunks(a, b) == 0 })
}

func compareChunks(a, b *storepb.AggrChunk) int {
	if c := cmp.Compare(a.MinTime, b.MinTime); c != 0 {
		return c
	}
	if c := cmp.Compare(a.MaxTime, b.MaxTime); c != 0 {
		return c
	}
	for _, f := range []func(*storepb.AggrChunk) *storepb.Chunk{
		(*storepb.AggrChunk).GetRaw, (*storepb.AggrChunk).GetCount, (*storepb.AggrChunk).GetSum,
		(*storepb.AggrChunk).GetMin, (*storepb.AggrChunk).GetMax, (*storepb.AggrChunk).GetCounter,
	} {
		if c := compareChunk(f(a), f(b)); c != 0 {
			return c
		}
	}
	return 0
}

// compareChunk orders a missing chunk after a present one, then by encoding, then by bytes in
// descending order.
func compareChunk(a, b *storepb.Chunk) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	if c := cmp.Compare(a.Type, b.Type); c != 0 {
		return c
	}
	return bytes.Compare(b.Data, a.Data)
}

// splitReplicas splits time-sorted chunks into groups of chunks that do not overlap, in order:
// each chunk joins the first group whose last chunk ends before it starts.
func splitReplicas(chks []*storepb.AggrChunk) [][]*storepb.AggrChunk {
	var groups [][]*storepb.AggrChunk
next:
	for _, c := range chks {
		for i, g := range groups {
			if g[len(g)-1].MaxTime < c.MinTime {
				groups[i] = append(g, c)
				continue next
			}
		}
		groups = append(groups, []*storepb.AggrChunk{c})
	}
	return groups
}

// chunksIterator reads time-sorted chunks' samples in [mint, maxt], each chunk decoded only
// when reached, skipping samples not after the last one read (where chunks overlap): their raw
// samples, or those of the aggregates aggrs (see aggrIterator).
type chunksIterator struct {
	chks       []*storepb.AggrChunk
	aggrs      []storepb.Aggr
	mint, maxt int64

	i       int
	cur     chunkenc.Iterator
	reuse   chunkenc.Iterator
	lastT   int64
	typ     chunkenc.ValueType
	started bool
	done    bool
	err     error
}

func newChunksIterator(chks []*storepb.AggrChunk, aggrs []storepb.Aggr, mint, maxt int64) *chunksIterator {
	return &chunksIterator{chks: chks, aggrs: aggrs, mint: mint, maxt: maxt, i: -1, lastT: math.MinInt64}
}

// advance moves to the first sample at or after from (and after the last one read).
func (it *chunksIterator) advance(from int64) chunkenc.ValueType {
	it.started = true
	if it.done {
		return chunkenc.ValNone
	}
	from = max(from, it.mint)
	if it.lastT != math.MinInt64 {
		from = max(from, it.lastT+1)
	}
	for {
		if it.cur == nil {
			it.i++
			if it.i >= len(it.chks) {
				return it.finish(nil)
			}
			c := it.chks[it.i]
			if c.MaxTime < from {
				continue
			}
			if c.MinTime > it.maxt {
				return it.finish(nil)
			}
			cur, err := aggrIterator(c, it.aggrs, it.reuse)
			if err != nil {
				return it.finish(err)
			}
			it.cur = cur
		}
		typ := it.cur.Seek(from)
		if typ == chunkenc.ValNone {
			if err := it.cur.Err(); err != nil {
				return it.finish(errors.Wrapf(err, "read chunk [%d, %d]", it.chks[it.i].MinTime, it.chks[it.i].MaxTime))
			}
			it.reuse, it.cur = it.cur, nil
			continue
		}
		t := it.cur.AtT()
		if t > it.maxt {
			return it.finish(nil)
		}
		it.lastT, it.typ = t, typ
		return typ
	}
}

func (it *chunksIterator) finish(err error) chunkenc.ValueType {
	it.done, it.err, it.typ = true, err, chunkenc.ValNone
	return chunkenc.ValNone
}

func (it *chunksIterator) Next() chunkenc.ValueType { return it.advance(math.MinInt64) }

func (it *chunksIterator) Seek(t int64) chunkenc.ValueType {
	if it.started && it.typ != chunkenc.ValNone && it.lastT >= t {
		return it.typ
	}
	return it.advance(t)
}

func (it *chunksIterator) At() (int64, float64) { return it.cur.At() }

func (it *chunksIterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	return it.cur.AtHistogram(h)
}

func (it *chunksIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return it.cur.AtFloatHistogram(fh)
}

func (it *chunksIterator) AtT() int64 {
	if it.cur == nil {
		return it.lastT
	}
	return it.cur.AtT()
}

// AtST returns the current sample's start time, as its chunk has it.
func (it *chunksIterator) AtST() int64 {
	if it.cur == nil {
		return 0
	}
	return it.cur.AtST()
}

func (it *chunksIterator) Err() error { return it.err }

// replicaIterator is one replica in a merge: offset is what counter adjustment adds to its float
// values.
type replicaIterator interface {
	chunkenc.Iterator
	// adjust takes the last float value taken before the merge switched to this replica.
	adjust(last float64)
}

// counterReplica adds an offset to its floats that hides the drop a switch of replicas shows.
type counterReplica struct {
	chunkenc.Iterator
	counter bool
	offset  float64
}

func (it *counterReplica) At() (int64, float64) {
	t, v := it.Iterator.At()
	return t, v + it.offset
}

func (it *counterReplica) adjust(last float64) {
	if !it.counter {
		return
	}
	if _, v := it.At(); last > v {
		it.offset += last - v
	}
}

// penaltyMerge merges two replicas by the penalty rule (see above).
type penaltyMerge struct {
	a, b       replicaIterator
	aTyp, bTyp chunkenc.ValueType
	penA, penB int64
	lastT      int64
	useA       bool
	typ        chunkenc.ValueType
	started    bool
}

func newPenaltyMerge(a, b replicaIterator) *penaltyMerge {
	return &penaltyMerge{a: a, b: b, aTyp: a.Next(), bTyp: b.Next(), lastT: math.MinInt64, useA: true}
}

// chosen is the replica the last sample came from.
func (m *penaltyMerge) chosen() replicaIterator {
	if m.useA {
		return m.a
	}
	return m.b
}

func (m *penaltyMerge) Next() chunkenc.ValueType {
	// The last float taken, for counter adjustment at a switch.
	var last float64
	lastFloat := m.started && m.typ == chunkenc.ValFloat
	if lastFloat {
		_, last = m.chosen().At()
	}
	wasA := m.useA
	m.started = true
	m.typ = m.pick()
	if lastFloat && m.useA != wasA {
		m.adjust(last)
	}
	return m.typ
}

func (m *penaltyMerge) pick() chunkenc.ValueType {
	next := func(pen int64) int64 {
		if m.lastT == math.MinInt64 {
			return math.MinInt64
		}
		return m.lastT + 1 + pen
	}
	if m.aTyp != chunkenc.ValNone {
		m.aTyp = m.a.Seek(next(m.penA))
	}
	if m.bTyp != chunkenc.ValNone {
		m.bTyp = m.b.Seek(next(m.penB))
	}
	switch {
	case m.aTyp == chunkenc.ValNone && m.bTyp == chunkenc.ValNone:
		return chunkenc.ValNone
	case m.aTyp == chunkenc.ValNone:
		m.useA, m.penB, m.lastT = false, 0, m.b.AtT()
		return m.bTyp
	case m.bTyp == chunkenc.ValNone:
		m.useA, m.penA, m.lastT = true, 0, m.a.AtT()
		return m.aTyp
	}
	ta, tb := m.a.AtT(), m.b.AtT()
	m.useA = ta <= tb
	t := tb
	if m.useA {
		t = ta
	}
	pen := int64(initialPenalty)
	if m.lastT != math.MinInt64 {
		pen = 2 * (t - m.lastT)
	}
	if m.useA {
		m.penA, m.penB = 0, pen
	} else {
		m.penA, m.penB = pen, 0
	}
	m.lastT = t
	if m.useA {
		return m.aTyp
	}
	return m.bTyp
}

func (m *penaltyMerge) adjust(last float64) {
	if m.aTyp == chunkenc.ValFloat {
		m.a.adjust(last)
	}
	if m.bTyp == chunkenc.ValFloat {
		m.b.adjust(last)
	}
}

func (m *penaltyMerge) Seek(t int64) chunkenc.ValueType {
	if !m.started && m.Next() == chunkenc.ValNone {
		return chunkenc.ValNone
	}
	for m.typ != chunkenc.ValNone && m.AtT() < t {
		m.Next()
	}
	return m.typ
}

func (m *penaltyMerge) At() (int64, float64) { return m.chosen().At() }

func (m *penaltyMerge) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	return m.chosen().AtHistogram(h)
}

func (m *penaltyMerge) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return m.chosen().AtFloatHistogram(fh)
}

func (m *penaltyMerge) AtT() int64 { return m.chosen().AtT() }

func (m *penaltyMerge) AtST() int64 { return m.chosen().AtST() }

func (m *penaltyMerge) Err() error {
	if err := m.a.Err(); err != nil {
		return err
	}
	return m.b.Err()
}

// counterResets reads a counter as Thanos Query reads raw data for counter functions (rate,
// increase, irate, resets: its COUNTER aggregate): every drop is taken as a reset and the values
// made monotonic from the first sample on, NaN (stale markers included) left out. resets() is
// then 0 through Thanos; rate() and increase() equal Prometheus' own up to rounding, which this
// reproduces. Histograms pass as they are.
type counterResets struct {
	it      chunkenc.Iterator
	typ     chunkenc.ValueType
	n       int
	lastT   int64
	lastV   float64
	total   float64
	started bool
}

func (c *counterResets) Next() chunkenc.ValueType {
	c.started = true
	for {
		c.typ = c.it.Next()
		if c.typ == chunkenc.ValNone {
			return c.typ
		}
		if c.typ != chunkenc.ValFloat {
			c.lastT = c.it.AtT()
			return c.typ
		}
		t, v := c.it.At()
		switch {
		case math.IsNaN(v):
			continue
		case c.n == 0:
			c.total = v
		case t <= c.lastT:
			if t == c.lastT {
				c.lastV = v
			}
			continue
		case v >= c.lastV:
			c.total += v - c.lastV
		default:
			c.total += v
		}
		c.n++
		c.lastT, c.lastV = t, v
		return c.typ
	}
}

func (c *counterResets) Seek(t int64) chunkenc.ValueType {
	for !c.started || (c.typ != chunkenc.ValNone && c.lastT < t) {
		if c.Next() == chunkenc.ValNone {
			return chunkenc.ValNone
		}
	}
	return c.typ
}

func (c *counterResets) At() (int64, float64) { return c.lastT, c.total }

func (c *counterResets) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	return c.it.AtHistogram(h)
}

func (c *counterResets) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return c.it.AtFloatHistogram(fh)
}

func (c *counterResets) AtT() int64  { return c.lastT }
func (c *counterResets) AtST() int64 { return c.it.AtST() }
func (c *counterResets) Err() error  { return c.it.Err() }

// bounded reads it's samples in [mint, maxt] only.
type bounded struct {
	chunkenc.Iterator
	mint, maxt int64
}

func (b *bounded) Next() chunkenc.ValueType {
	typ := b.Iterator.Next()
	if typ == chunkenc.ValNone {
		return typ
	}
	if b.Iterator.AtT() < b.mint {
		if typ = b.Iterator.Seek(b.mint); typ == chunkenc.ValNone {
			return typ
		}
	}
	if b.Iterator.AtT() > b.maxt {
		return chunkenc.ValNone
	}
	return typ
}

func (b *bounded) Seek(t int64) chunkenc.ValueType {
	if t > b.maxt {
		return chunkenc.ValNone
	}
	typ := b.Iterator.Seek(max(t, b.mint))
	if typ != chunkenc.ValNone && b.Iterator.AtT() > b.maxt {
		return chunkenc.ValNone
	}
	return typ
}

// replicaSamples reads one replica's chunks in [mint, maxt] (raw, or the aggregates aggrs), as
// counters where counter is set.
func replicaSamples(chks []*storepb.AggrChunk, mint, maxt int64, counter bool, aggrs []storepb.Aggr) chunkenc.Iterator {
	if !counter {
		return newChunksIterator(chks, aggrs, mint, maxt)
	}
	// Thanos makes the whole chunks monotonic first, then bounds them. A counter aggregate ends
	// with its last raw value again at its last sample's time, which the resets must see.
	var it chunkenc.Iterator = newChunksIterator(chks, nil, math.MinInt64, math.MaxInt64)
	if len(aggrs) > 0 {
		it = &concatIterator{chks: chks, aggrs: aggrs}
	}
	return &bounded{Iterator: &counterResets{it: it}, mint: mint, maxt: maxt}
}

// dedupIterator reads a series' chunks as its replicas merged; with one replica it reads them
// as they are.
func dedupIterator(chks []*storepb.AggrChunk, mint, maxt int64, counter bool, aggrs []storepb.Aggr) chunkenc.Iterator {
	groups := splitReplicas(chks)
	if len(groups) == 1 {
		return replicaSamples(groups[0], mint, maxt, counter, aggrs)
	}
	var it replicaIterator = &counterReplica{Iterator: replicaSamples(groups[0], mint, maxt, counter, aggrs), counter: counter}
	for _, g := range groups[1:] {
		it = newPenaltyMerge(it, &counterReplica{Iterator: replicaSamples(g, mint, maxt, counter, aggrs), counter: counter})
	}
	return it
}
