package proxy

import (
	"context"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/lethe-project/lethe/tombstones"
)

// maskMetrics count what masking hides.
type maskMetrics struct {
	seriesMasked prometheus.Counter
	seriesHidden prometheus.Counter
}

// maskedQuerier hides from an inner querier every sample that a tombstone covers. ext are the
// external labels of the inner querier's series: tombstones match them too (overriding series
// labels of the same name, as in Thanos), whether or not the series carry them.
type maskedQuerier struct {
	inner storage.Querier
	// chunks, when set, reads the same series as inner with their chunks' time ranges, so that
	// look-ups decide survival without decoding where those suffice.
	chunks     storage.ChunkQuerier
	snap       *Snapshot
	ext        labels.Labels
	mint, maxt int64
}

func newMaskedQuerier(inner storage.Querier, snap *Snapshot, ext labels.Labels, mint, maxt int64) *maskedQuerier {
	return &maskedQuerier{inner: inner, snap: snap, ext: ext, mint: mint, maxt: maxt}
}

func (q *maskedQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	mint, maxt := q.mint, q.maxt
	if hints != nil {
		mint, maxt = hints.Start, hints.End
	}
	if !q.snap.MayMatch(ms, q.ext, mint, maxt) {
		return q.inner.Select(ctx, sortSeries, hints, ms...)
	}
	// Series lookups carry no samples, so a series' survival must be decided on its samples.
	var inner storage.SeriesSet
	if hints != nil && hints.Func == "series" {
		if set, ok := q.seriesLookup(ctx, hints, mint, maxt, ms); ok {
			return set
		}
		h := *hints
		h.Func = ""
		h.Start, h.End = clampWindow(h.Start, h.End)
		inner = q.inner.Select(ctx, sortSeries, &h, ms...)
	} else {
		inner = q.inner.Select(ctx, sortSeries, hints, ms...)
	}
	return &maskedSeriesSet{SeriesSet: inner, q: q, mint: mint, maxt: maxt}
}

// maxSeriesLookupSelects bounds the selects a series look-up is split into.
const maxSeriesLookupSelects = 16

// seriesLookup answers a series look-up that a tombstone may meet in parts, as the label look-ups
// do: the series none of the meeting tombstones' selectors select come from the inner querier's
// own look-up (labels only); only those a selector selects are read, with their samples, and kept
// if a sample outside the tombstones is left; those of a selector whose tombstone covers the
// whole window are not read at all. false when the selectors would take too many selects.
func (q *maskedQuerier) seriesLookup(ctx context.Context, hints *storage.SelectHints, mint, maxt int64, ms []*labels.Matcher) (storage.SeriesSet, bool) {
	sels, err := q.meetingSelectors(ctx, ms, ms)
	if err != nil {
		return storage.ErrSeriesSet(err), true
	}
	sels = relax(sels)
	outside := complement(sels)
	var read []lookupSelector
	for _, s := range sels {
		if !s.exact || !s.wholeWindow(mint, maxt) {
			read = append(read, s)
		}
	}
	if len(outside)+len(read) > maxSeriesLookupSelects {
		return nil, false
	}
	sets := make([]storage.SeriesSet, 0, len(outside)+len(read))
	for _, c := range outside {
		sets = append(sets, q.inner.Select(ctx, true, hints, selectable(append(slices.Clone(ms), c...))...))
	}
	h := *hints
	// The limit counts the series left: a read part is not cut short before its series are judged.
	h.Func, h.Limit = "", 0
	h.Start, h.End = clampWindow(h.Start, h.End)
	for _, s := range read {
		inner := q.inner.Select(ctx, true, &h, selectable(append(slices.Clone(ms), s.send...))...)
		sets = append(sets, &maskedSeriesSet{SeriesSet: inner, q: q, mint: mint, maxt: maxt})
	}
	if len(sets) == 0 {
		return storage.EmptySeriesSet(), true
	}
	return storage.NewMergeSeriesSet(sets, 0, storage.ChainedSeriesMerge), true
}

// LabelValues answers from the inner querier's index, leaving out the values that only series
// the tombstones cover in the whole window carry (see lookup.go): a value carried only by deleted
// samples never appears.
func (q *maskedQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	sel := append(slices.Clone(ms), labels.MustNewMatcher(labels.MatchNotEqual, name, ""))
	if !q.snap.MayMatch(sel, q.ext, q.mint, q.maxt) {
		return q.inner.LabelValues(ctx, name, hints, ms...)
	}
	return q.maskedLabels(ctx, valuesIndex(q.inner, name), hints, ms, sel)
}

// LabelNames works as LabelValues.
func (q *maskedQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	sel := ms
	if len(sel) == 0 {
		sel = []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, ".+")}
	}
	if !q.snap.MayMatch(sel, q.ext, q.mint, q.maxt) {
		return q.inner.LabelNames(ctx, hints, ms...)
	}
	return q.maskedLabels(ctx, namesIndex(q.inner), hints, ms, sel)
}

func (q *maskedQuerier) Close() error {
	if q.chunks != nil {
		if err := q.chunks.Close(); err != nil {
			_ = q.inner.Close()
			return err
		}
	}
	return q.inner.Close()
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func limit(vals []string, hints *storage.LabelHints) []string {
	if hints != nil && hints.Limit > 0 && len(vals) > hints.Limit {
		return vals[:hints.Limit]
	}
	return vals
}

// maskedSeriesSet wraps the series that tombstones cover, and leaves out those of them that keep
// no sample in [mint, maxt]: as after Prometheus' clean_tombstones, such a series is not there
// (it would count in a query's stats, and be listed by a series look-up). Only the series a
// tombstone meets in the range are read for it.
type maskedSeriesSet struct {
	storage.SeriesSet
	q          *maskedQuerier
	mint, maxt int64
	cur        storage.Series
	ivs        tombstones.Intervals
	err        error
}

func (s *maskedSeriesSet) Err() error {
	if s.err != nil {
		return s.err
	}
	return s.SeriesSet.Err()
}

func (s *maskedSeriesSet) Next() bool {
	for s.SeriesSet.Next() {
		series := s.SeriesSet.At()
		s.ivs = s.q.snap.Intervals(series.Labels(), s.q.ext, s.ivs[:0])
		if !s.ivs.Overlaps(s.mint, s.maxt) {
			s.cur = series
			return true
		}
		masked := &maskedSeries{Series: series, ivs: slices.Clone(s.ivs)}
		s.q.snap.metrics.seriesMasked.Inc()
		s.q.snap.hits.add(series.Labels(), s.q.ext, s.q.snap.index)
		keeps := false
		if !s.ivs.CoversRange(s.mint, s.maxt) {
			var err error
			if keeps, err = masked.hasSampleIn(s.mint, s.maxt); err != nil {
				s.err = err
				return false
			}
		}
		if !keeps {
			s.q.snap.metrics.seriesHidden.Inc()
			continue
		}
		s.cur = masked
		return true
	}
	return false
}

func (s *maskedSeriesSet) At() storage.Series { return s.cur }

// maskedSeries iterates its samples without the deleted ones.
type maskedSeries struct {
	storage.Series
	ivs tombstones.Intervals
}

func (s *maskedSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	if d, ok := it.(*tombstones.Iterator); ok {
		d.Reset(s.Series.Iterator(d.Inner()), s.ivs)
		return d
	}
	return tombstones.NewIterator(s.Series.Iterator(nil), s.ivs)
}

func (s *maskedSeries) hasSampleIn(mint, maxt int64) (bool, error) {
	return sampleOutside(s.Series.Iterator(nil), mint, maxt, s.ivs)
}
