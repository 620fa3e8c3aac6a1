package proxy

import (
	"context"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
	"golang.org/x/sync/errgroup"

	"github.com/lethe-project/lethe/tombstones"
)

// Label look-ups (label names, label values) through the mask cost what the inner querier's own
// look-ups cost, plus work proportional to what the live tombstones can cover in the window:
//
//   - the inner querier's index answers everything; masking can only take values out of it;
//   - a value can only be taken out if a series that some live tombstone selector matches carries
//     it (the candidates, asked of the index with the request's matchers and the selector's; for
//     label names, which are few, every name of the answer);
//   - a candidate that a series no selector matches also carries survives (asked of the index with
//     the request's matchers and the selectors' complement, where a few queries express it);
//   - the remaining candidates are decided on the samples of the series that the selectors match,
//     read only outside the tombstone's own interval: a series whose window a tombstone covers
//     whole is covered without reading anything.

// maxComplementQueries bounds the index queries that express "matched by none of the selectors"
// (a union of one negated matcher per selector, multiplied out).
const maxComplementQueries = 16

// maxNarrowValues is how many candidate values a look-up of the selectors' complement names, so
// that the index checks only those.
const maxNarrowValues = 500

// maxPerValueChecks is how many values of the index's answer a look-up over a block checks one
// by one against the whole-window tombstones: each check costs a select, so past a few hundred
// (BenchmarkLookups' metric names) learning the tombstones' values from the index costs less.
const maxPerValueChecks = 256

// probeStretch is how much of the window next to a tombstone's interval is read first to find the
// series that keep samples.
const probeStretch = 10 * 60 * 1000

// pruneGroupAbove is how many values of one label keying selectors make it worth one index query
// to learn which of them exist at all.
const pruneGroupAbove = 8

// lookupSelector is a live tombstone selector that can meet a look-up.
type lookupSelector struct {
	t *tombstones.Tombstone
	// send are the selector's matchers as the inner querier can apply them: matchers on external
	// labels are decided (they hold for every series of the store) and left out, and redacted
	// equality matchers, whose values are digests, are relaxed to "the label is set". They select a
	// superset of the selector's series; exact says whether they select exactly those.
	send  []*labels.Matcher
	exact bool
	// key is an equality matcher of send: the one relax keeps.
	key *labels.Matcher
}

// wholeWindow reports whether the tombstone deletes every sample of its series in [mint, maxt].
func (s lookupSelector) wholeWindow(mint, maxt int64) bool {
	return s.t.Start <= mint && s.t.End >= maxt
}

// meetingSelectors returns the live tombstone selectors that can cover a sample of a series
// selected by sel in the querier's window. Selectors filed under a label with more than a few
// values are looked up by the values that series selected by ms (the request's matchers) carry,
// one index query: 10,000 tombstones on instances with no series cost that query, not 10,000
// checks.
func (q *maskedQuerier) meetingSelectors(ctx context.Context, sel, ms []*labels.Matcher) ([]lookupSelector, error) {
	si := q.snap.selectors()
	var out []lookupSelector
	collect := func(refs []selectorRef) {
		for _, r := range refs {
			if !r.t.Overlaps(q.mint, q.maxt) || disjoint(sel, r.sel, r.t, q.ext, q.snap.index) {
				continue
			}
			out = append(out, newLookupSelector(r, q.ext))
		}
	}
	collect(si.unkeyed)
	for name, byValue := range si.byKey {
		if v, pinned := pinnedValue(sel, q.ext, name); pinned {
			collect(byValue[v])
			continue
		}
		if len(byValue) <= pruneGroupAbove {
			for _, refs := range byValue {
				collect(refs)
			}
			continue
		}
		vals, err := q.keyValues(ctx, name, ms)
		if err != nil {
			return nil, err
		}
		for _, v := range vals {
			collect(byValue[v])
		}
	}
	return out, nil
}

func newLookupSelector(r selectorRef, ext labels.Labels) lookupSelector {
	ls := lookupSelector{t: r.t, exact: true}
	for _, m := range r.sel {
		if ext.Has(m.Name) {
			continue // disjoint has checked it against the external label's value.
		}
		if r.t.Redacted() && m.Type == labels.MatchEqual && m.Name != model.MetricNameLabel && m.Value != "" {
			ls.send = append(ls.send, labels.MustNewMatcher(labels.MatchNotEqual, m.Name, ""))
			ls.exact = false
			continue
		}
		ls.send = append(ls.send, m)
		if ls.key == nil && m.Type == labels.MatchEqual && m.Value != "" {
			ls.key = m
		}
	}
	return ls
}

// labelIndex is one kind of label look-up: the values of one label name, or the label names.
type labelIndex struct {
	// name names the look-up: the label whose values it asks, or none for the label names.
	name string
	// label is the label whose values it asks; empty for the label names.
	label string
	// ask asks the inner querier's index.
	ask func(ctx context.Context, hints *storage.LabelHints, ms []*labels.Matcher) ([]string, annotations.Annotations, error)
	// carried calls fn with what a series' labels contribute to the answer.
	carried func(ls labels.Labels, fn func(string))
	// restrict returns matcher sets that together select the series carrying any of vals.
	restrict func(vals []string) [][]*labels.Matcher
	// narrow, for label values, is restrict's one matcher: a look-up given it only considers vals.
	narrow bool
	// over returns the same look-up asked of another querier.
	over func(q storage.LabelQuerier) labelIndex
	// askParts, set by maskedLabels over an upstream, asks the look-up with the request's
	// matchers and extra over parts of a long window at once (see windowParts); ok is false
	// where the window is not cut.
	askParts func(ctx context.Context, extra ...[]*labels.Matcher) (vals []string, ok bool, err error)
}

func valuesIndex(q storage.LabelQuerier, name string) labelIndex {
	return labelIndex{
		name:  "values of " + name,
		label: name,
		ask: func(ctx context.Context, hints *storage.LabelHints, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
			return q.LabelValues(ctx, name, hints, ms...)
		},
		carried: func(ls labels.Labels, fn func(string)) {
			if v := ls.Get(name); v != "" {
				fn(v)
			}
		},
		restrict: func(vals []string) [][]*labels.Matcher {
			quoted := make([]string, len(vals))
			for i, v := range vals {
				quoted[i] = regexp.QuoteMeta(v)
			}
			return [][]*labels.Matcher{{labels.MustNewMatcher(labels.MatchRegexp, name, strings.Join(quoted, "|"))}}
		},
		narrow: true,
		over:   func(q storage.LabelQuerier) labelIndex { return valuesIndex(q, name) },
	}
}

func namesIndex(q storage.LabelQuerier) labelIndex {
	return labelIndex{
		name: "names",
		ask: func(ctx context.Context, hints *storage.LabelHints, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
			return q.LabelNames(ctx, hints, ms...)
		},
		carried: func(ls labels.Labels, fn func(string)) { ls.Range(func(l labels.Label) { fn(l.Name) }) },
		// Any series may carry a name: one read of them all.
		restrict: func([]string) [][]*labels.Matcher { return [][]*labels.Matcher{nil} },
		over:     namesIndex,
	}
}

// gathered holds the annotations gathered by concurrent index queries.
type gathered struct {
	mu sync.Mutex
	ws annotations.Annotations
}

func (g *gathered) add(ws annotations.Annotations) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ws.Merge(ws)
}

// maskedLabels answers a label look-up for the request's matchers ms, which select the series
// sel selects.
func (q *maskedQuerier) maskedLabels(ctx context.Context, ix labelIndex, hints *storage.LabelHints, ms, sel []*labels.Matcher) ([]string, annotations.Annotations, error) {
	var ws gathered
	ask := func(ctx context.Context, hints *storage.LabelHints, extra ...[]*labels.Matcher) ([]string, error) {
		all := slices.Clone(ms)
		for _, e := range extra {
			all = append(all, e...)
		}
		if len(extra) > 0 {
			all = selectable(all)
		}
		vals, w, err := ix.ask(ctx, hints, all)
		ws.add(w)
		return vals, err
	}
	if up, ok := q.inner.(*upstreamQuerier); ok {
		ix.askParts = func(ctx context.Context, extra ...[]*labels.Matcher) ([]string, bool, error) {
			parts := up.windowParts()
			if parts == nil {
				return nil, false, nil
			}
			all := slices.Clone(ms)
			for _, e := range extra {
				all = append(all, e...)
			}
			all = selectable(all)
			found := make([][]string, len(parts))
			g, gctx := errgroup.WithContext(ctx)
			for i, p := range parts {
				g.Go(func() error {
					vals, w, err := ix.over(p).ask(gctx, nil, all)
					ws.add(w)
					found[i] = vals
					return err
				})
			}
			if err := g.Wait(); err != nil {
				return nil, true, err
			}
			set := map[string]struct{}{}
			for _, vs := range found {
				for _, v := range vs {
					set[v] = struct{}{}
				}
			}
			return sortedKeys(set), true, nil
		}
	}

	// The index's own answer, asked while the selectors are looked up. Label names are few: their
	// whole answer is asked, and is the candidates (a name no series outside the selectors
	// carries is carried by the selectors' series), so that no look-up reads the series the
	// selectors match.
	var answer []string
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		if ix.narrow {
			answer, err = ask(gctx, hints)
		} else {
			answer, err = ask(gctx, nil)
		}
		return err
	})
	var dropped map[string]struct{}
	sels, err := q.meetingSelectors(gctx, sel, ms)
	if err == nil && len(sels) > 0 {
		if ix.narrow && hints != nil && hints.Limit > 0 {
			dropped, err = q.droppedValues(gctx, ix, ms, sels, ask, nil)
		} else if err = g.Wait(); err == nil {
			dropped, err = q.cachedDropped(ctx, ix, ms, sels, ask, answer)
		}
	}
	if gerr := g.Wait(); err == nil {
		err = gerr
	}
	if err != nil {
		return nil, ws.ws, err
	}
	if hints != nil && hints.Limit > 0 {
		// The inner answer's truncation warning is about the unmasked values; Prometheus' API
		// warns itself when the masked answer holds more than the limit.
		ws.ws = withoutTruncation(ws.ws)
	}
	if len(dropped) == 0 {
		if !ix.narrow {
			answer = limit(answer, hints)
		}
		return answer, ws.ws, nil
	}
	if ix.narrow && hints != nil && hints.Limit > 0 && len(answer) >= hints.Limit {
		// The limit cut the answer: ask again for enough values to fill it after masking.
		h := *hints
		h.Limit += len(dropped)
		if answer, err = ask(ctx, &h); err != nil {
			return nil, ws.ws, err
		}
	}
	out := answer[:0:0]
	for _, v := range answer {
		if _, gone := dropped[v]; !gone {
			out = append(out, v)
		}
	}
	return limit(out, hints), ws.ws, nil
}

// truncatedWarning is the warning Prometheus' API gives when a limit cuts an answer.
const truncatedWarning = "results truncated due to limit"

// withoutTruncation returns the annotations without the truncation warning.
func withoutTruncation(ws annotations.Annotations) annotations.Annotations {
	var out annotations.Annotations
	for k, err := range ws {
		if err.Error() != truncatedWarning {
			if out == nil {
				out = annotations.Annotations{}
			}
			out[k] = err
		}
	}
	return out
}

type askFunc func(ctx context.Context, hints *storage.LabelHints, extra ...[]*labels.Matcher) ([]string, error)

// droppedValues returns the values of the index's answer that only fully covered series carry.
// The selectors split in two: those whose tombstone deletes the whole window of exactly their
// series (a deleted tenant: their series cannot survive, and are many), and the others (a
// stretch of one metric: their series are read, only where their tombstone leaves samples).
//
//   - A value no selector's series carries stays (it is no candidate).
//   - A value the first kind's series carry stays only if a series outside them carries it: one
//     look-up of their complement, narrowed to those values.
//   - A value the other kind's series carry, and that a series outside the first kind carries,
//     stays if one of those series keeps a sample in the window (read first), or else if a series
//     outside every selector carries it (a look-up of all the selectors' complement, narrowed).
//
// The label names (candidates: the whole answer, they are few) are not narrowed.
func (q *maskedQuerier) droppedValues(ctx context.Context, ix labelIndex, ms []*labels.Matcher, sels []lookupSelector, ask askFunc, candidates []string) (map[string]struct{}, error) {
	sels = relax(sels)
	// Not label names, except over Thanos: a names look-up with matchers reads every series they
	// select, and a selector taken by its key matcher alone selects many more; witnesses (see
	// witnessed) ask no names look-up.
	if candidates != nil && q.chunks == nil && (ix.narrow || q.seriesListing() != nil && !q.postingsLookups()) {
		return q.droppedOutside(ctx, ix, ms, sels, ask, candidates)
	}
	var whole, rest []lookupSelector
	for _, s := range sels {
		if s.exact && s.wholeWindow(q.mint, q.maxt) {
			whole = append(whole, s)
		} else {
			rest = append(rest, s)
		}
	}

	// The candidates of each kind. For label names the first kind's are the whole answer: their
	// series are many, the other kind's few.
	candsOf := func(ctx context.Context, sels []lookupSelector, first bool) (map[string]struct{}, error) {
		out := map[string]struct{}{}
		if len(sels) == 0 {
			return out, nil
		}
		if candidates != nil && first {
			for _, v := range candidates {
				out[v] = struct{}{}
			}
			return out, nil
		}
		vals := make([][]string, len(sels))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4)
		for i, s := range sels {
			g.Go(func() (err error) {
				vals[i], err = ask(gctx, nil, s.send)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		for _, vs := range vals {
			for _, v := range vs {
				out[v] = struct{}{}
			}
		}
		return out, nil
	}
	var wholeCands, restCands map[string]struct{}
	// Over a block, with the index's whole answer in hand, each of its values is asked whether a
	// series outside the first kind carries it, stopping at the first: cheaper than learning
	// which values the first kind's series carry, which walks every value's postings.
	var wholeKept map[string]struct{}
	perValue := ix.narrow && candidates != nil && len(whole) > 0 && len(candidates) <= maxPerValueChecks && q.chunks != nil
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		if perValue {
			wholeKept, err = q.valuesOutside(gctx, ix, ms, whole, candidates)
			return err
		}
		wholeCands, err = candsOf(gctx, whole, true)
		return err
	})
	g.Go(func() (err error) {
		restCands, err = candsOf(gctx, rest, false)
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	dropped := map[string]struct{}{}
	// outside holds the candidates a series outside the first kind carries.
	outside := map[string]struct{}{}
	for v := range restCands {
		if _, ok := wholeCands[v]; !ok {
			outside[v] = struct{}{} // Carried by the other kind's series, which are outside.
		}
	}
	if perValue {
		for _, v := range candidates {
			if _, ok := wholeKept[v]; ok {
				outside[v] = struct{}{}
			} else {
				dropped[v] = struct{}{}
			}
		}
	} else if len(wholeCands) > 0 {
		vals, err := q.askComplement(ctx, ix, ask, ms, whole, wholeCands)
		if err != nil {
			return nil, err
		}
		for v := range wholeCands {
			if _, ok := vals[v]; ok {
				outside[v] = struct{}{}
			} else {
				dropped[v] = struct{}{}
			}
		}
	}
	// Of what a series outside the first kind carries, the other kind's candidates are in doubt.
	doubt := map[string]struct{}{}
	for v := range outside {
		if _, ok := restCands[v]; ok {
			doubt[v] = struct{}{}
		}
	}
	if len(doubt) == 0 {
		return dropped, nil
	}
	if err := q.surviveSelected(ctx, ix, ms, whole, rest, doubt); err != nil {
		return nil, err
	}
	if len(doubt) > 0 {
		vals, err := q.askComplement(ctx, ix, ask, ms, sels, doubt)
		if err != nil {
			return nil, err
		}
		for v := range doubt {
			if _, ok := vals[v]; !ok {
				dropped[v] = struct{}{}
			}
		}
	}
	return dropped, nil
}

// valuesOutside returns the values of vals that a series selected by ms and by none of the
// selectors carries, asking per value whether such a series exists (at the cost of finding the
// first).
func (q *maskedQuerier) valuesOutside(ctx context.Context, ix labelIndex, ms []*labels.Matcher, sels []lookupSelector, vals []string) (map[string]struct{}, error) {
	return withSeries(ctx, q.seriesExistence(), vals, complement(sels), 2, func(v string, c []*labels.Matcher) []*labels.Matcher {
		return selectable(append(append(slices.Clone(ms), ix.restrict([]string{v})[0]...), c...))
	})
}

// askComplement returns what the series that none of the selectors select carry, of vals (all of
// it, for label names).
func (q *maskedQuerier) askComplement(ctx context.Context, ix labelIndex, ask askFunc, ms []*labels.Matcher, sels []lookupSelector, vals map[string]struct{}) (map[string]struct{}, error) {
	combos := complement(sels)
	if !ix.narrow {
		if exists := q.seriesExistence(); exists != nil {
			return namesOutside(ctx, exists, ms, combos, vals)
		}
	}
	var only []*labels.Matcher
	if ix.narrow && len(vals) <= maxNarrowValues {
		only = ix.restrict(sortedKeys(vals))[0]
	}
	return askUnion(ctx, ask, combos, only)
}

// SeriesExistence is implemented by an inner querier of MaskQuerier that can tell whether any
// series matches in its window at the cost of finding the first (a StoreAPI Series call with
// limit 1): a masked look-up of label names then asks per name whether a series outside the
// tombstones carries it, instead of asking the names of all those series, which a store that
// reads every selected series to answer (Thanos' store gateway) pays for each one.
type SeriesExistence interface {
	AnySeries(ctx context.Context, ms []*labels.Matcher) (bool, error)
}

// seriesExistence returns how to ask whether any series matches, at the cost of finding the
// first: over a block's index a series set is read lazily; an upstream answers its series
// endpoint with limit=1. Nil where there is no such way.
func (q *maskedQuerier) seriesExistence() func(ctx context.Context, ms []*labels.Matcher) (bool, error) {
	if up, ok := q.inner.(*upstreamQuerier); ok {
		return up.anySeries
	}
	if e, ok := q.inner.(SeriesExistence); ok {
		return e.AnySeries
	}
	if q.chunks == nil {
		return nil
	}
	return func(ctx context.Context, ms []*labels.Matcher) (bool, error) {
		ss := q.inner.Select(ctx, false, &storage.SelectHints{Start: math.MinInt64, End: math.MaxInt64, Func: "series"}, ms...)
		found := ss.Next()
		return found, ss.Err()
	}
}

// namesOutside returns the names that a series selected by ms and one of the combos carries,
// asking per name whether such a series exists: a look-up of label names reads every series its
// matchers select, and those outside the tombstones are most.
func namesOutside(ctx context.Context, exists func(context.Context, []*labels.Matcher) (bool, error), ms []*labels.Matcher, combos [][]*labels.Matcher, names map[string]struct{}) (map[string]struct{}, error) {
	return withSeries(ctx, exists, slices.Collect(maps.Keys(names)), combos, 4, func(n string, c []*labels.Matcher) []*labels.Matcher {
		return append(append(slices.Clone(ms), c...), labels.MustNewMatcher(labels.MatchNotEqual, n, ""))
	})
}

// withSeries returns the keys for which exists finds a series selected by sel(key, combo) for one
// of the combos, stopping at the first per key; at most par keys are asked at once.
func withSeries(ctx context.Context, exists func(context.Context, []*labels.Matcher) (bool, error), keys []string, combos [][]*labels.Matcher, par int, sel func(key string, combo []*labels.Matcher) []*labels.Matcher) (map[string]struct{}, error) {
	var mu sync.Mutex
	out := map[string]struct{}{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	for _, k := range keys {
		g.Go(func() error {
			for _, c := range combos {
				found, err := exists(gctx, sel(k, c))
				if err != nil {
					return err
				}
				if found {
					mu.Lock()
					out[k] = struct{}{}
					mu.Unlock()
					return nil
				}
			}
			return nil
		})
	}
	return out, g.Wait()
}

// relax keeps the selectors' complement within maxComplementQueries index queries: while the
// product of their matcher counts is above it, the selector with the most matchers keeps only its
// key matcher (or its first). A relaxed selector selects more series than its tombstone covers;
// those series are then checked on their samples like the rest.
func relax(sels []lookupSelector) []lookupSelector {
	product := func() int {
		n := 1
		for _, s := range sels {
			n *= len(s.send)
			if n == 0 || n > maxComplementQueries {
				return n
			}
		}
		return n
	}
	sels = slices.Clone(sels)
	for product() > maxComplementQueries {
		widest := 0
		for i, s := range sels {
			if len(s.send) > len(sels[widest].send) {
				widest = i
			}
		}
		s := &sels[widest]
		keep := s.send[0]
		if s.key != nil {
			keep = s.key
		}
		s.send, s.exact = []*labels.Matcher{keep}, false
	}
	return sels
}

// complement returns matcher sets whose union selects exactly the series that none of the
// selectors' sent matchers select, multiplied out: one negated matcher per selector. No set means
// no series escapes the selectors.
func complement(sels []lookupSelector) [][]*labels.Matcher {
	combos := [][]*labels.Matcher{nil}
	for _, s := range sels {
		next := make([][]*labels.Matcher, 0, len(combos)*len(s.send))
		for _, c := range combos {
			for _, m := range s.send {
				next = append(next, append(slices.Clone(c), negate(m)))
			}
		}
		combos = next
	}
	return combos
}

// selectable adds {__name__=~".+"} to matchers that all match the empty value, which Prometheus
// refuses as a selector: every series has a name, so it selects the same series.
func selectable(ms []*labels.Matcher) []*labels.Matcher {
	for _, m := range ms {
		if !m.Matches("") {
			return ms
		}
	}
	return append(ms, labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, ".+"))
}

// negate returns the matcher that accepts exactly the values m refuses.
func negate(m *labels.Matcher) *labels.Matcher {
	t := map[labels.MatchType]labels.MatchType{
		labels.MatchEqual:     labels.MatchNotEqual,
		labels.MatchNotEqual:  labels.MatchEqual,
		labels.MatchRegexp:    labels.MatchNotRegexp,
		labels.MatchNotRegexp: labels.MatchRegexp,
	}[m.Type]
	return labels.MustNewMatcher(t, m.Name, m.Value)
}

// surviveSelected removes from pending what a series that the other kind of selectors (rest)
// match carries while it keeps a sample in the window, leaving out the series of the first kind
// (whole) where one matcher expresses them. A series of an exact selector can only keep a sample
// outside the tombstone's interval, so only that part of the window is read: first the stretch
// next to the interval (where a series that keeps samples has them), then the rest.
func (q *maskedQuerier) surviveSelected(ctx context.Context, ix labelIndex, ms []*labels.Matcher, whole, rest []lookupSelector, pending map[string]struct{}) error {
	var exclude []*labels.Matcher
	for _, s := range whole {
		if len(s.send) == 1 {
			exclude = append(exclude, negate(s.send[0]))
		}
	}
	for _, near := range []bool{true, false} {
		for _, s := range rest {
			var ranges [][2]int64
			switch {
			case !s.exact:
				if near {
					continue
				}
				ranges = [][2]int64{{q.mint, q.maxt}}
			default:
				if s.t.Start > q.mint {
					lo := q.mint
					if near && s.t.Start-q.mint > probeStretch {
						lo = s.t.Start - probeStretch
					}
					ranges = append(ranges, [2]int64{lo, s.t.Start - 1})
				}
				if s.t.End < q.maxt {
					hi := q.maxt
					if near && q.maxt-s.t.End > probeStretch {
						hi = s.t.End + probeStretch
					}
					ranges = append(ranges, [2]int64{s.t.End + 1, hi})
				}
			}
			for _, r := range ranges {
				if len(pending) == 0 {
					return nil
				}
				sel := append(append(slices.Clone(ms), s.send...), exclude...)
				if err := q.survive(ctx, ix, sel, r[0], r[1], !s.exact, pending); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// survive reads the series selected by ms that carry a pending value, over [lo, hi] only, and
// removes from pending what those keeping a sample there (outside their deleted intervals) carry,
// and what those no tombstone touches in the window carry. With wide, ms may select series that
// no tombstone touches, which the index answer shows even with no sample in the window: the chunk
// querier (in bucket mode) then lists them all, by their chunks' time ranges, without decoding;
// over an upstream only those with samples in the window are seen.
func (q *maskedQuerier) survive(ctx context.Context, ix labelIndex, ms []*labels.Matcher, lo, hi int64, wide bool, pending map[string]struct{}) error {
	var ivs tombstones.Intervals
	for _, restrict := range ix.restrict(sortedKeys(pending)) {
		if len(pending) == 0 {
			return nil
		}
		sel := selectable(append(slices.Clone(ms), restrict...))
		err := q.scan(ctx, sel, lo, hi, wide, func(ls labels.Labels, keeps func(ivs tombstones.Intervals) bool) {
			carries := false
			ix.carried(ls, func(v string) {
				if _, ok := pending[v]; ok {
					carries = true
				}
			})
			if !carries {
				return
			}
			ivs = q.snap.Intervals(ls, q.ext, ivs[:0])
			if ivs.Overlaps(q.mint, q.maxt) && (ivs.CoversRange(lo, hi) || !keeps(ivs)) {
				return
			}
			ix.carried(ls, func(v string) { delete(pending, v) })
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// scan calls fn for every series selected by ms with data in [lo, hi] (with wide and a chunk
// querier: with data at all), with a function that reports whether the series has a sample in
// [lo, hi] outside the given intervals. With a chunk querier it decides from chunk time ranges
// where they suffice and decodes a chunk only where a gap in the intervals falls inside it.
func (q *maskedQuerier) scan(ctx context.Context, ms []*labels.Matcher, lo, hi int64, wide bool, fn func(labels.Labels, func(tombstones.Intervals) bool)) error {
	if q.chunks != nil {
		h := &storage.SelectHints{Start: lo, End: hi, DisableTrimming: true}
		if wide {
			h.Start, h.End = math.MinInt64, math.MaxInt64
		}
		css := q.chunks.Select(ctx, false, h, ms...)
		var it chunkScan
		for css.Next() {
			s := css.At()
			fn(s.Labels(), func(ivs tombstones.Intervals) bool { return it.keeps(s, lo, hi, ivs) })
			if it.err != nil {
				return it.err
			}
		}
		return css.Err()
	}
	start, end := clampWindow(lo, hi)
	ss := q.inner.Select(ctx, false, &storage.SelectHints{Start: start, End: end}, ms...)
	var it chunkenc.Iterator
	var err error
	for ss.Next() {
		s := ss.At()
		fn(s.Labels(), func(ivs tombstones.Intervals) bool {
			it = s.Iterator(it)
			var keeps bool
			keeps, err = sampleOutside(it, lo, hi, ivs)
			return keeps
		})
		if err != nil {
			return err
		}
	}
	return ss.Err()
}

// sampleSpan is the widest window the query API's range selector can express (its duration in
// nanoseconds must fit 64 bits): about 292 years. A look-up with no start or end asks from the
// year -292277 to the year 292277; sample reads ask for the part of that from 1897 to 2189.
const sampleSpan = math.MaxInt64 / int64(time.Millisecond)

// clampWindow returns the part of [lo, hi] that a sample read asks for.
func clampWindow(lo, hi int64) (int64, int64) {
	return max(lo, -sampleSpan/4), min(hi, sampleSpan/4*3-1)
}

// sampleOutside reports whether the iterator has a sample in [lo, hi] that no interval covers,
// seeking past each covered stretch instead of reading it.
func sampleOutside(it chunkenc.Iterator, lo, hi int64, ivs tombstones.Intervals) (bool, error) {
	t := lo
	for t <= hi {
		if it.Seek(t) == chunkenc.ValNone {
			return false, it.Err()
		}
		ts := it.AtT()
		if ts > hi {
			return false, nil
		}
		iv, covered := ivs.Covering(ts)
		if !covered {
			return true, nil
		}
		if iv.Maxt == math.MaxInt64 {
			return false, nil
		}
		t = iv.Maxt + 1
	}
	return false, nil
}

// chunkScan decides from a chunk series' chunk time ranges whether it keeps a sample in a range
// outside deleted intervals: a chunk's first and last timestamps are samples, so a chunk decides
// without decoding when one of them survives, or when the intervals cover its whole stretch.
type chunkScan struct {
	chks chunks.Iterator
	smp  chunkenc.Iterator
	err  error
}

func (c *chunkScan) keeps(s storage.ChunkSeries, lo, hi int64, ivs tombstones.Intervals) bool {
	c.chks = s.Iterator(c.chks)
	for c.chks.Next() {
		m := c.chks.At()
		a, b := max(m.MinTime, lo), min(m.MaxTime, hi)
		if a > b {
			continue
		}
		if (m.MinTime >= lo && !ivs.Covers(m.MinTime)) || (m.MaxTime <= hi && !ivs.Covers(m.MaxTime)) {
			return true
		}
		if ivs.CoversRange(a, b) {
			continue
		}
		c.smp = m.Chunk.Iterator(c.smp)
		keeps, err := sampleOutside(c.smp, a, b, ivs)
		if err != nil {
			c.err = err
			return false
		}
		if keeps {
			return true
		}
	}
	c.err = c.chks.Err()
	return false
}

// droppedOutside returns the values (or label names) of the index's answer (candidates) that only
// fully covered series carry, starting from what the series outside the selectors carry: over an
// upstream,
// whose index work is all a look-up costs, that is the fewest and cheapest questions when the
// tombstones delete a few of many series. Asking which values a deleted tenant's series carry
// costs the upstream more (its series are many) than asking which ones the others carry, and a
// question narrowed to a few values costs little only with a matcher that selects few series.
//
// The first kind of selectors (deleting their series' whole window) are taken as they are, the
// others (the second kind) by their key matcher alone (relaxed: the series they select and more),
// so that their complement is one matcher set and one question.
//
//   - A value a series outside the relaxed selectors carries stays.
//   - Of the others, a value that no series of a relaxed selector of the second kind carries
//     outside the first kind is carried only by series the first kind covers whole: it goes (one
//     question per selector of the second kind, narrowed to those values).
//   - The rest stay if a series outside the selectors themselves carries them (questions of
//     their complement, narrowed to those values), or one of their series keeps a sample in the
//     window, read only outside its tombstone's interval, next to it first; the others go.
func (q *maskedQuerier) droppedOutside(ctx context.Context, ix labelIndex, ms []*labels.Matcher, sels []lookupSelector, ask askFunc, candidates []string) (map[string]struct{}, error) {
	var whole, rest, relaxed []lookupSelector
	for _, s := range sels {
		if s.exact && s.wholeWindow(q.mint, q.maxt) {
			whole = append(whole, s)
			continue
		}
		rest = append(rest, s)
		r := s
		if len(r.send) > 1 {
			keep := r.send[0]
			if r.key != nil {
				keep = r.key
			}
			r.send, r.exact = []*labels.Matcher{keep}, false
		}
		relaxed = append(relaxed, r)
	}
	// Where series can be listed, each question is asked of witnesses (see witnessed).
	list := q.seriesListing()
	outsideSets := complement(append(slices.Clone(whole), relaxed...))
	var outside map[string]struct{}
	var err error
	if list != nil {
		outside, err = q.witnessed(ctx, ix, ask, list, witnessLimit, ms, outsideSets, candidates)
	} else {
		outside, err = q.carriedOutside(ctx, ix, ask, ms, outsideSets, candidates, false)
	}
	if err != nil {
		return nil, err
	}
	var remaining []string
	for _, v := range candidates {
		if _, ok := outside[v]; !ok {
			remaining = append(remaining, v)
		}
	}
	dropped := map[string]struct{}{}
	if len(remaining) == 0 {
		return dropped, nil
	}
	// The second kind's series outside the first kind, where one matcher expresses it.
	var exclude []*labels.Matcher
	for _, s := range whole {
		if len(s.send) == 1 {
			exclude = append(exclude, negate(s.send[0]))
		}
	}
	only := func(vals []string) []*labels.Matcher {
		if len(vals) > maxNarrowValues {
			return nil
		}
		return ix.restrict(vals)[0]
	}
	var sets [][]*labels.Matcher
	for _, r := range relaxed {
		sets = append(sets, append(slices.Clone(r.send), exclude...))
	}
	var carried map[string]struct{}
	if list != nil {
		carried, err = q.witnessed(ctx, ix, ask, list, witnessLimit, ms, sets, remaining)
	} else {
		carried, err = askUnion(ctx, ask, sets, only(remaining))
	}
	if err != nil {
		return nil, err
	}
	var doubt []string
	for _, v := range remaining {
		if _, ok := carried[v]; ok {
			doubt = append(doubt, v)
		} else {
			dropped[v] = struct{}{}
		}
	}
	if len(doubt) == 0 {
		return dropped, nil
	}
	var kept map[string]struct{}
	if list != nil {
		kept, err = q.witnessed(ctx, ix, ask, list, witnessLimit, ms, complement(sels), doubt)
	} else {
		kept, err = q.carriedOutside(ctx, ix, ask, ms, complement(sels), doubt, true)
	}
	if err != nil {
		return nil, err
	}
	pending := map[string]struct{}{}
	for _, v := range doubt {
		if _, ok := kept[v]; !ok {
			pending[v] = struct{}{}
		}
	}
	if len(pending) == 0 {
		return dropped, nil
	}
	if err := q.surviveSelected(ctx, ix, ms, whole, rest, pending); err != nil {
		return nil, err
	}
	for v := range pending {
		dropped[v] = struct{}{}
	}
	return dropped, nil
}

// carriedOutside returns what the series selected by ms and one of the matcher sets carry, of
// vals: label values asked of the index (narrowed to vals with narrow), label names asked per
// name where a series' existence can be asked (see namesOutside).
func (q *maskedQuerier) carriedOutside(ctx context.Context, ix labelIndex, ask askFunc, ms []*labels.Matcher, sets [][]*labels.Matcher, vals []string, narrow bool) (map[string]struct{}, error) {
	if !ix.narrow {
		if exists := q.seriesExistence(); exists != nil {
			names := map[string]struct{}{}
			for _, v := range vals {
				names[v] = struct{}{}
			}
			return namesOutside(ctx, exists, ms, sets, names)
		}
	}
	var only []*labels.Matcher
	if narrow && ix.narrow && len(vals) <= maxNarrowValues {
		only = ix.restrict(vals)[0]
	}
	if only == nil && ix.askParts != nil {
		// Not narrowed: the question walks every value's postings, in every block.
		return askUnion(ctx, func(ctx context.Context, hints *storage.LabelHints, extra ...[]*labels.Matcher) ([]string, error) {
			vals, cut, err := ix.askParts(ctx, extra...)
			if cut || err != nil {
				return vals, err
			}
			return ask(ctx, hints, extra...)
		}, sets, nil)
	}
	return askUnion(ctx, ask, sets, only)
}

// askUnion asks the index once per matcher set, with only, and returns the union of the answers.
func askUnion(ctx context.Context, ask askFunc, sets [][]*labels.Matcher, only []*labels.Matcher) (map[string]struct{}, error) {
	found := make([][]string, len(sets))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i, set := range sets {
		g.Go(func() (err error) {
			found[i], err = ask(gctx, nil, set, only)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := map[string]struct{}{}
	for _, vs := range found {
		for _, v := range vs {
			out[v] = struct{}{}
		}
	}
	return out, nil
}

// Thanos' store gateway answers a label look-up with matchers by reading every series they select,
// so over Thanos a question about the series outside the tombstones (most of the series) costs
// what reading them costs, while a series look-up with a limit stops at the limit. There, what the
// series outside the tombstones carry is learnt from witnesses instead: series listed a few hundred
// at a time, each proving the values it carries, narrowed at every round to the values still
// unproven, so that a round that finds fewer series than its limit proves that no other series
// carries the rest.

// witnessLimit is how many series one round of witnesses lists.
const witnessLimit = 256

// maxWitnessRounds bounds the rounds of witnesses per matcher set; what they leave unproven is
// asked per value.
const maxWitnessRounds = 4

// minWitnessed is how many values make witnesses worth listing: fewer are asked one by one, each
// at the cost of its first series.
const minWitnessed = 8

// postingsLookups reports whether the inner querier answers a label look-up with matchers from
// its postings (a Prometheus read by remote read), at a cost that does not grow with the series
// the matchers select: there, witnesses that cluster on a few values give way to that look-up.
func (q *maskedQuerier) postingsLookups() bool {
	up, ok := q.inner.(*upstreamQuerier)
	return ok && up.u.remoteRead
}

// seriesListing returns how to list up to n series that matchers select in the querier's window,
// where the inner querier lists them at the cost of the series listed (an upstream's series
// endpoint with limit, a StoreAPI); nil elsewhere: a block is read from its index.
func (q *maskedQuerier) seriesListing() func(ctx context.Context, ms []*labels.Matcher, n int) ([]labels.Labels, error) {
	if q.chunks != nil {
		return nil
	}
	if up, ok := q.inner.(*upstreamQuerier); ok {
		return up.listSeries
	}
	if _, ok := q.inner.(SeriesExistence); !ok {
		return nil
	}
	return func(ctx context.Context, ms []*labels.Matcher, n int) ([]labels.Labels, error) {
		ss := q.inner.Select(ctx, false, &storage.SelectHints{Start: q.mint, End: q.maxt, Func: "series", Limit: n}, ms...)
		var out []labels.Labels
		for ss.Next() {
			out = append(out, ss.At().Labels())
		}
		return out, ss.Err()
	}
}

// witnessed returns what of vals a series selected by ms and one of the matcher sets carries,
// from witnesses (see witnessIn); what the rounds leave unproven in a set, or fewer than
// minWitnessed values, is asked per value.
func (q *maskedQuerier) witnessed(ctx context.Context, ix labelIndex, ask askFunc, list func(context.Context, []*labels.Matcher, int) ([]labels.Labels, error), limit int, ms []*labels.Matcher, sets [][]*labels.Matcher, vals []string) (map[string]struct{}, error) {
	found := map[string]struct{}{}
	pending := map[string]struct{}{}
	for _, v := range vals {
		pending[v] = struct{}{}
	}
	for _, set := range sets {
		if len(pending) == 0 {
			break
		}
		// Series are listed in label order, the metric name first: without pivot, witnesses of
		// metric names would cluster on the first few.
		pivot := !q.postingsLookups()
		exhausted, clustered := false, !pivot && ix.label == model.MetricNameLabel
		if len(pending) >= minWitnessed && !clustered {
			var err error
			if exhausted, clustered, err = witnessIn(ctx, ix, ask, list, limit, pivot, ms, set, pending, found); err != nil {
				return nil, err
			}
		}
		if exhausted || len(pending) == 0 {
			continue
		}
		combo := [][]*labels.Matcher{set}
		var kept map[string]struct{}
		var err error
		switch {
		case clustered:
			// Not narrowed: over a long window the question is asked of its parts at once.
			kept, err = q.carriedOutside(ctx, ix, ask, ms, combo, sortedKeys(pending), false)
		case ix.narrow:
			kept, err = withSeries(ctx, q.seriesExistence(), sortedKeys(pending), combo, 4, func(v string, c []*labels.Matcher) []*labels.Matcher {
				return selectable(append(append(slices.Clone(ms), ix.restrict([]string{v})[0]...), c...))
			})
		default:
			kept, err = namesOutside(ctx, q.seriesExistence(), ms, combo, pending)
		}
		if err != nil {
			return nil, err
		}
		for v := range kept {
			delete(pending, v)
			found[v] = struct{}{}
		}
	}
	return found, nil
}

// witnessIn moves from pending to found what the series selected by ms and set carry, listing
// them in rounds narrowed to what is still pending, and reports whether a round listed them all
// (then no series of the set carries what is left), limit series a round. Label names are not
// narrowed: one round.
//
// A store lists series in label order, so a round may find the same few values many times over
// (the series of one metric name, for the metric names): when a round proves less than a quarter
// of what is pending, the values are asked once of the series that share the first witness' value
// of the label the witnesses vary most in (one instance's series, which carry most metric names);
// without pivot, witnessIn reports the witnesses clustered instead, and leaves the rest.
func witnessIn(ctx context.Context, ix labelIndex, ask askFunc, list func(context.Context, []*labels.Matcher, int) ([]labels.Labels, error), limit int, pivot bool, ms, set []*labels.Matcher, pending, found map[string]struct{}) (exhausted, clustered bool, err error) {
	pivoted := false
	for range maxWitnessRounds {
		if len(pending) == 0 {
			return true, false, nil
		}
		var narrow []*labels.Matcher
		if ix.narrow {
			narrow = pendingMatcher(ix, pending)
		}
		sel := selectable(append(append(slices.Clone(ms), set...), narrow...))
		series, err := list(ctx, sel, limit)
		if err != nil {
			return false, false, err
		}
		before := len(pending)
		for _, ls := range series {
			ix.carried(ls, func(v string) {
				if _, ok := pending[v]; ok {
					delete(pending, v)
					found[v] = struct{}{}
				}
			})
		}
		if len(series) < limit {
			return true, false, nil
		}
		if !ix.narrow {
			return false, false, nil
		}
		if pivoted || len(pending) == 0 || (before-len(pending))*4 >= before {
			continue
		}
		if !pivot {
			return false, true, nil
		}
		pivoted = true
		pivot := pivotMatcher(ix, series)
		if pivot == nil {
			continue
		}
		vals, err := ask(ctx, nil, set, narrow, []*labels.Matcher{pivot})
		if err != nil {
			return false, false, err
		}
		for _, v := range vals {
			if _, ok := pending[v]; ok {
				delete(pending, v)
				found[v] = struct{}{}
			}
		}
	}
	return false, false, nil
}

// pendingMatcher returns the matcher that selects the series carrying a pending value: the values
// themselves where they are few enough to name, else the label being set.
func pendingMatcher(ix labelIndex, pending map[string]struct{}) []*labels.Matcher {
	if len(pending) <= maxNarrowValues {
		return ix.restrict(sortedKeys(pending))[0]
	}
	return []*labels.Matcher{labels.MustNewMatcher(labels.MatchNotEqual, ix.label, "")}
}

// pivotMatcher returns an equality matcher on the first witness' value of the label (other than
// the look-up's) that takes the most values among the witnesses; nil where none takes two.
func pivotMatcher(ix labelIndex, series []labels.Labels) *labels.Matcher {
	distinct := map[string]map[string]struct{}{}
	series[0].Range(func(l labels.Label) {
		distinct[l.Name] = map[string]struct{}{}
	})
	for _, ls := range series {
		ls.Range(func(l labels.Label) {
			if d, ok := distinct[l.Name]; ok {
				d[l.Value] = struct{}{}
			}
		})
	}
	best, most := "", 1
	for _, name := range slices.Sorted(maps.Keys(distinct)) {
		if name == ix.label {
			continue
		}
		if n := len(distinct[name]); n > most {
			best, most = name, n
		}
	}
	if best == "" {
		return nil
	}
	return labels.MustNewMatcher(labels.MatchEqual, best, series[0].Get(best))
}
