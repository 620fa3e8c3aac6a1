package storeapi

import (
	"bytes"
	"context"
	"slices"
	"sort"
	"sync"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/annotations"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/proxy"
)

// A label look-up that a tombstone may meet is answered by the proxy's own masked look-up
// (proxy.MaskQuerier, see proxy/lookup.go) over storesQuerier: the stores' own LabelNames and
// LabelValues, asked with matchers, answer everything the tombstones cannot meet, and only the
// series the tombstones' selectors match are read, with their chunks, over the part of the window
// their tombstone leaves. A look-up costs the stores' index answers plus work proportional to what
// the tombstones can cover, never a listing of every series the request selects.

// storesQuerier is a storage.Querier over the server's stores, for one look-up request: its
// window, its partial-response rule. The stores' series carry their external labels, so
// tombstones match those as series labels. It keeps no replica label out: the masking needs them
// to match tombstones, and the server leaves them out of its answer.
type storesQuerier struct {
	s          *Server
	mint, maxt int64
	prDisabled bool
	strategy   storepb.PartialResponseStrategy

	mu sync.Mutex // The masking asks concurrently.
	// ws are the warnings of the series reads, which the masking does not pass on.
	ws      annotations.Annotations
	cancels []context.CancelFunc
}

func (s *Server) storesQuerier(mint, maxt int64, prDisabled bool, strategy storepb.PartialResponseStrategy) *storesQuerier {
	return &storesQuerier{s: s, mint: mint, maxt: maxt, prDisabled: prDisabled, strategy: strategy}
}

func (q *storesQuerier) partial() bool { return partialResponse(q.prDisabled, q.strategy) }

func (q *storesQuerier) warn(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ws = q.ws.Add(err)
}

// warnings returns the warnings of the series reads.
func (q *storesQuerier) warnings() annotations.Annotations {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out annotations.Annotations
	out.Merge(q.ws)
	return out
}

func (q *storesQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	req := &storepb.LabelValuesRequest{
		Label: name, Start: q.mint, End: q.maxt, Matchers: storeMatchers(ms), Limit: labelLimit(hints),
		PartialResponseDisabled: q.prDisabled, PartialResponseStrategy: q.strategy,
	}
	return q.ask(ctx, "LabelValues", hints, func(ctx context.Context, st Store) ([]string, []string, error) {
		r, err := st.Store.LabelValues(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		return r.Values, r.Warnings, nil
	})
}

func (q *storesQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	req := &storepb.LabelNamesRequest{
		Start: q.mint, End: q.maxt, Matchers: storeMatchers(ms), Limit: labelLimit(hints),
		PartialResponseDisabled: q.prDisabled, PartialResponseStrategy: q.strategy,
	}
	return q.ask(ctx, "LabelNames", hints, func(ctx context.Context, st Store) ([]string, []string, error) {
		r, err := st.Store.LabelNames(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		return r.Names, r.Warnings, nil
	})
}

// ask asks every store at once and returns the union of their answers, sorted and limited. A
// store that fails is a warning with partial responses, and fails the look-up otherwise.
func (q *storesQuerier) ask(ctx context.Context, method string, hints *storage.LabelHints, call func(context.Context, Store) ([]string, []string, error)) ([]string, annotations.Annotations, error) {
	type answer struct {
		vals, warnings []string
		err            error
	}
	answers := make([]answer, len(q.s.stores))
	var wg sync.WaitGroup
	for i, st := range q.s.stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vals, ws, err := call(ctx, st)
			answers[i] = answer{vals, ws, err}
		}()
	}
	wg.Wait()
	var ws annotations.Annotations
	set := map[string]struct{}{}
	for i, a := range answers {
		st := q.s.stores[i]
		if a.err != nil {
			q.s.storeErrors.WithLabelValues(st.Name, method).Inc()
			if !q.partial() {
				return nil, nil, storeError(st, a.err)
			}
			ws.Add(errors.Wrapf(a.err, "store %s", st.Name))
			continue
		}
		for _, w := range a.warnings {
			ws.Add(errors.New(w))
		}
		for _, v := range a.vals {
			set[v] = struct{}{}
		}
	}
	return sortedLimit(set, labelLimit(hints)), ws, nil
}

// Select streams the stores' series in the hints' window (the querier's without hints), merged
// in label order, with their raw chunks (none for a series look-up). Series of equal labels from
// several stores come as one series each: each is read on its own chunks.
func (q *storesQuerier) Select(ctx context.Context, _ bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	return q.selectSeries(ctx, hints, ms)
}

// AnySeries reports whether a store holds a series the matchers select in the window, by a
// Series call without chunks that ends at the first series (proxy.SeriesExistence).
func (q *storesQuerier) AnySeries(ctx context.Context, ms []*labels.Matcher) (bool, error) {
	set := q.selectSeries(ctx, &storage.SelectHints{Start: q.mint, End: q.maxt, Func: "series", Limit: 1}, ms)
	defer set.cancel()
	if !set.Next() {
		return false, set.Err()
	}
	// The stores end their streams at the limit: read them to their end, so that no stream is
	// cancelled (which counts and logs as a store's error). A store that sends more is cut short.
	for range maxExistenceDrain {
		if !set.Next() {
			break
		}
	}
	return true, nil
}

// maxExistenceDrain is how many series past the first AnySeries reads before it cancels the
// stores' streams: one more from each store that holds one.
const maxExistenceDrain = 64

func (q *storesQuerier) selectSeries(ctx context.Context, hints *storage.SelectHints, ms []*labels.Matcher) *storesSeriesSet {
	mint, maxt := q.mint, q.maxt
	skipChunks := false
	var limit int64
	if hints != nil {
		mint, maxt, skipChunks, limit = hints.Start, hints.End, hints.Func == "series", int64(hints.Limit)
	}
	if !slices.ContainsFunc(ms, func(m *labels.Matcher) bool { return m.Name == labels.MetricName }) {
		// A store gateway selects no series by external labels alone; every series has a name.
		ms = append(slices.Clone(ms), labels.MustNewMatcher(labels.MatchRegexp, labels.MetricName, ".+"))
	}
	req := &storepb.SeriesRequest{
		MinTime: mint, MaxTime: maxt, Matchers: storeMatchers(ms), SkipChunks: skipChunks, Limit: limit,
		// The raw samples tell exactly which survive.
		MaxResolutionWindow:     0,
		PartialResponseDisabled: q.prDisabled, PartialResponseStrategy: q.strategy,
	}
	ctx, cancel := context.WithCancel(ctx)
	q.mu.Lock()
	q.cancels = append(q.cancels, cancel)
	q.mu.Unlock()

	set := &storesSeriesSet{series: make(chan storage.Series, streamBuffer), cancel: cancel, mint: mint, maxt: maxt}
	go func() {
		defer close(set.series)
		pass := func(series []byte, _ labels.Labels) ([]byte, error) { return series, nil }
		one := func(b []byte) error {
			// The frame's bytes are the merge's: the series keeps a copy.
			s, err := decodeSeries(bytes.Clone(b))
			if err != nil {
				return err
			}
			series := &chunkSeries{lset: zLabelsToProm(s.Labels), chks: sortChunks(s.Chunks), mint: mint, maxt: maxt}
			select {
			case set.series <- series:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		set.err = q.s.merge(ctx, req, q.partial(), true, pass, func(f frame) error {
			if err := ctx.Err(); err != nil {
				return err // Closed: what comes after, a cancelled store's warning included, is no one's.
			}
			if f.series != nil {
				return one(f.series)
			}
			// A store's message passed on whole: series, a batch of them, or a warning.
			w, err := eachWireSeries(f.other.bytes(), one)
			if w != "" {
				q.warn(errors.New(w))
			}
			return err
		})
	}()
	return set
}

func (q *storesQuerier) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, c := range q.cancels {
		c()
	}
	return nil
}

// storesSeriesSet reads the series a merge goroutine decodes.
type storesSeriesSet struct {
	series     chan storage.Series
	cancel     context.CancelFunc
	mint, maxt int64
	cur        storage.Series
	// err is set by the merge goroutine before it closes series.
	err  error
	done bool
}

func (s *storesSeriesSet) Next() bool {
	if s.done {
		return false
	}
	series, ok := <-s.series
	if !ok {
		s.done = true
		s.cancel()
		return false
	}
	s.cur = series
	return true
}

func (s *storesSeriesSet) At() storage.Series { return s.cur }

func (s *storesSeriesSet) Err() error {
	if !s.done {
		return nil
	}
	return s.err
}

func (s *storesSeriesSet) Warnings() annotations.Annotations { return nil }

// chunkSeries is one store's series: its raw chunks, read in [mint, maxt].
type chunkSeries struct {
	lset       labels.Labels
	chks       []*storepb.AggrChunk
	mint, maxt int64
}

func (s *chunkSeries) Labels() labels.Labels { return s.lset }

// Iterator reads the chunks in time order; where they overlap (a store that serves overlapping
// blocks), they are merged sample by sample.
func (s *chunkSeries) Iterator(chunkenc.Iterator) chunkenc.Iterator {
	if len(s.chks) == 0 {
		return chunkenc.NewNopIterator()
	}
	end := s.chks[0].MaxTime
	overlap := false
	for _, c := range s.chks[1:] {
		if c.MinTime <= end {
			overlap = true
			break
		}
		end = max(end, c.MaxTime)
	}
	if !overlap {
		return newChunksIterator(s.chks, nil, s.mint, s.maxt)
	}
	its := make([]chunkenc.Iterator, len(s.chks))
	for i, c := range s.chks {
		its[i] = newChunksIterator([]*storepb.AggrChunk{c}, nil, s.mint, s.maxt)
	}
	return storage.ChainSampleIteratorFromIterators(nil, its)
}

// maskedLookup answers a look-up that a tombstone may meet: ask runs it over the stores, masked
// with snap in [mint, maxt]. The warnings are the stores', those of the series the masking read
// included, sorted.
func (s *Server) maskedLookup(ctx context.Context, snap *proxy.Snapshot, mint, maxt int64, prDisabled bool, strategy storepb.PartialResponseStrategy, ask func(storage.Querier) ([]string, annotations.Annotations, error)) (vals, warnings []string, err error) {
	inner := s.storesQuerier(mint, maxt, prDisabled, strategy)
	q := proxy.MaskQuerier(inner, snap, labels.EmptyLabels(), mint, maxt)
	defer func() {
		if cerr := q.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	vals, ws, err := ask(q)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, nil, err
		}
		if ctx.Err() != nil {
			return nil, nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, nil, status.Error(codes.Internal, err.Error())
	}
	ws.Merge(inner.warnings())
	for _, w := range ws {
		warnings = append(warnings, w.Error())
	}
	sort.Strings(warnings)
	return vals, warnings, nil
}

var _ proxy.SeriesExistence = (*storesQuerier)(nil)
