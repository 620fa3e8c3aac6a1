package storeapi

import (
	"context"
	"io"
	"math"
	"slices"
	"strconv"
	"sync"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/proxy"
)

// Source is a proxy.Source that reads raw series through Thanos' gRPC StoreAPI (Thanos Query's
// own, or store gateways, sidecars and receivers directly), streamed: a series is decoded when
// the query reaches it, and its chunks when its samples are read. Replicas are deduplicated as
// Thanos Query does: the replica labels are dropped and the replicas' samples merged by the
// penalty rule (see dedup.go). Masking is the proxy's own (proxy.MaskQuerier), over the
// deduplicated series.
//
// Thanos Query's request parameters keep their meaning where the proxy passes them on:
// dedup=false reads every replica as its own series, replicaLabels[] replaces the replica labels,
// partial_response=true turns a store's failure into a warning.
type Source struct {
	stores        []Store
	replicaLabels []string
	partial       bool
}

// NewSource reads from the stores; replicaLabels are Thanos Query's --query.replica-label.
// partial is the default of partial_response (Thanos Query's --query.partial-response).
func NewSource(stores []Store, replicaLabels []string, partial bool) *Source {
	return &Source{stores: stores, replicaLabels: replicaLabels, partial: partial}
}

// Querier returns a querier over [mint, maxt] masked with snap. The stores' series carry their
// external labels, so tombstones match those as series labels.
func (s *Source) Querier(snap *proxy.Snapshot, mint, maxt int64) (storage.Querier, error) {
	return proxy.MaskQuerier(&sourceQuerier{src: s, mint: mint, maxt: maxt}, snap, labels.EmptyLabels(), mint, maxt), nil
}

type sourceQuerier struct {
	src        *Source
	mint, maxt int64

	mu      sync.Mutex // Look-ups select concurrently.
	cancels []context.CancelFunc
}

// readOptions are the request's Thanos Query parameters as they apply to one read.
type readOptions struct {
	dedup         bool
	replicaLabels []string
	strategy      storepb.PartialResponseStrategy
	// rawOnly is the max_source_resolution asked for that raw data answers instead.
	rawOnly string
}

func (q *sourceQuerier) options(ctx context.Context) (readOptions, error) {
	pt := proxy.PassThrough(ctx)
	o := readOptions{dedup: true, replicaLabels: q.src.replicaLabels, strategy: storepb.PartialResponseStrategy_ABORT}
	if q.src.partial {
		o.strategy = storepb.PartialResponseStrategy_WARN
	}
	if v := pt.Get("dedup"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, errors.Newf("dedup %q: want true or false", v)
		}
		o.dedup = b
	}
	if v := pt.Get("partial_response"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, errors.Newf("partial_response %q: want true or false", v)
		}
		o.strategy = storepb.PartialResponseStrategy_ABORT
		if b {
			o.strategy = storepb.PartialResponseStrategy_WARN
		}
	}
	if v := pt["replicaLabels[]"]; len(v) > 0 {
		o.replicaLabels = v
	}
	if v := pt.Get("max_source_resolution"); v != "" && v != "0" && v != "0s" && v != "raw" {
		if d, err := model.ParseDuration(v); err != nil && v != "auto" {
			return o, errors.Newf("max_source_resolution %q: want a duration, raw or auto", v)
		} else if v == "auto" || d > 0 {
			// Raw data is read, never downsampled aggregates: the answer is exact, and says so.
			o.rawOnly = v
		}
	}
	if !o.dedup {
		o.replicaLabels = nil
	}
	return o, nil
}

func (o readOptions) partial() bool { return o.strategy == storepb.PartialResponseStrategy_WARN }

func storeMatchers(ms []*labels.Matcher) []*storepb.LabelMatcher {
	out := make([]*storepb.LabelMatcher, 0, len(ms))
	for _, m := range ms {
		var t storepb.LabelMatcher_Type
		switch m.Type {
		case labels.MatchEqual:
			t = storepb.LabelMatcher_EQ
		case labels.MatchNotEqual:
			t = storepb.LabelMatcher_NEQ
		case labels.MatchRegexp:
			t = storepb.LabelMatcher_RE
		case labels.MatchNotRegexp:
			t = storepb.LabelMatcher_NRE
		}
		out = append(out, &storepb.LabelMatcher{Type: t, Name: m.Name, Value: m.Value})
	}
	return out
}

func (q *sourceQuerier) Select(ctx context.Context, _ bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	o, err := q.options(ctx)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	mint, maxt := q.mint, q.maxt
	var fn string
	var limit int64
	if hints != nil {
		mint, maxt, fn, limit = hints.Start, hints.End, hints.Func, int64(hints.Limit)
	}
	req := &storepb.SeriesRequest{
		MinTime:                 mint,
		MaxTime:                 maxt,
		Matchers:                storeMatchers(ms),
		MaxResolutionWindow:     0, // Raw data only.
		PartialResponseStrategy: o.strategy,
		SkipChunks:              fn == "series",
		WithoutReplicaLabels:    o.replicaLabels,
		Limit:                   limit,
	}
	ctx, cancel := context.WithCancel(ctx)
	q.mu.Lock()
	q.cancels = append(q.cancels, cancel)
	q.mu.Unlock()
	set := &sourceSeriesSet{
		drop: o.replicaLabels, dedup: o.dedup, counter: counterFunc(fn),
		mint: mint, maxt: maxt, partial: o.partial(), cancel: cancel,
	}
	if o.rawOnly != "" {
		set.ws.Add(errors.Newf("lethe-proxy reads raw data through the StoreAPI: max_source_resolution=%s is answered from raw samples", o.rawOnly))
	}
	for _, st := range q.src.stores {
		cl, err := st.Store.Series(ctx, req)
		if err != nil {
			if !set.failed(st.Name, err) {
				return storage.ErrSeriesSet(set.err)
			}
			continue
		}
		c := &storeCursor{name: st.Name, frames: receive(ctx, cl)}
		if set.advance(c) {
			set.cursors = append(set.cursors, c)
		}
		if set.err != nil {
			return storage.ErrSeriesSet(set.err)
		}
	}
	return set
}

// framesAhead is how many frames of a store's stream are received ahead of the query's reading:
// the store streams on while the query decodes, in bounded memory.
const framesAhead = 64

// received is one frame of a store's stream, or the error that ended it (io.EOF at its end).
type received struct {
	r   *storepb.SeriesResponse
	err error
}

// receive reads the stream into the returned channel, at most framesAhead frames ahead, until it
// ends or ctx is done.
func receive(ctx context.Context, cl storepb.Store_SeriesClient) <-chan received {
	out := make(chan received, framesAhead)
	go func() {
		defer close(out)
		for {
			r, err := cl.Recv()
			select {
			case out <- received{r: r, err: err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// storeCursor is one store's Series stream, one series ahead.
type storeCursor struct {
	name    string
	frames  <-chan received
	pending []*storepb.Series
	head    *storepb.Series
	lset    labels.Labels
	// prev is the labels of the series before head: a stream out of label order (a store that
	// does not sort without the replica labels) would deduplicate wrongly, so it fails.
	prev labels.Labels
}

// sourceSeriesSet merges the stores' streams in label order; series of equal labels (replica
// labels dropped), from one store or several, become one series.
type sourceSeriesSet struct {
	cursors    []*storeCursor
	drop       []string
	dedup      bool
	counter    bool
	mint, maxt int64
	partial    bool
	cancel     context.CancelFunc

	builder labels.ScratchBuilder
	cur     storage.Series
	ws      annotations.Annotations
	err     error
}

// failed records a store's failure: a warning with partial responses (true), else the set's
// error (false).
func (s *sourceSeriesSet) failed(store string, err error) bool {
	err = errors.Wrapf(err, "store %s", store)
	if s.partial {
		s.ws.Add(err)
		return true
	}
	s.err = err
	return false
}

// advance reads c's next series into its head; false when c has no more (or failed).
func (s *sourceSeriesSet) advance(c *storeCursor) bool {
	for len(c.pending) == 0 {
		f, ok := <-c.frames
		if !ok {
			// The query was cancelled or closed before the stream ended.
			s.failed(c.name, errors.New("stream ended before its end"))
			return false
		}
		r, err := f.r, f.err
		if errors.Is(err, io.EOF) {
			return false
		}
		if err != nil {
			s.failed(c.name, err)
			return false
		}
		switch v := r.Result.(type) {
		case *storepb.SeriesResponse_Series:
			c.pending = append(c.pending, v.Series)
		case *storepb.SeriesResponse_Batch:
			c.pending = append(c.pending, v.Batch.Series...)
		case *storepb.SeriesResponse_Warning:
			s.ws.Add(errors.Newf("store %s: %s", c.name, v.Warning))
		}
	}
	c.head, c.pending = c.pending[0], c.pending[1:]
	s.builder.Reset()
	for _, l := range c.head.Labels {
		if !slices.Contains(s.drop, l.Name) {
			s.builder.Add(l.Name, l.Value)
		}
	}
	s.builder.Sort()
	c.prev, c.lset = c.lset, s.builder.Labels()
	if labels.Compare(c.lset, c.prev) < 0 {
		s.err = errors.Newf("store %s sends series out of label order without the replica labels %v (it does not support without_replica_labels): use it without --upstream.replica-label, or behind Thanos Query", c.name, s.drop)
		return false
	}
	return true
}

func (s *sourceSeriesSet) Next() bool {
	if s.err != nil || len(s.cursors) == 0 {
		s.cancel()
		return false
	}
	lset := s.cursors[0].lset
	for _, c := range s.cursors[1:] {
		if labels.Compare(c.lset, lset) < 0 {
			lset = c.lset
		}
	}
	var chks []*storepb.AggrChunk
	open := s.cursors[:0]
	for _, c := range s.cursors {
		alive := true
		for alive && labels.Equal(c.lset, lset) {
			chks = append(chks, c.head.Chunks...)
			alive = s.advance(c)
		}
		if s.err != nil {
			s.cancel()
			return false
		}
		if alive {
			open = append(open, c)
		}
	}
	s.cursors = open
	// Stores send a series' chunks sorted; the replicas' and the stores' are sorted together.
	slices.SortStableFunc(chks, func(a, b *storepb.AggrChunk) int {
		if a.MinTime != b.MinTime {
			if a.MinTime < b.MinTime {
				return -1
			}
			return 1
		}
		return 0
	})
	s.cur = &sourceSeries{lset: lset, chks: chks, mint: s.mint, maxt: s.maxt, dedup: s.dedup, counter: s.counter}
	return true
}

func (s *sourceSeriesSet) At() storage.Series                { return s.cur }
func (s *sourceSeriesSet) Err() error                        { return s.err }
func (s *sourceSeriesSet) Warnings() annotations.Annotations { return s.ws }

// sourceSeries is one series' raw chunks, read in [mint, maxt].
type sourceSeries struct {
	lset       labels.Labels
	chks       []*storepb.AggrChunk
	mint, maxt int64
	dedup      bool
	counter    bool
}

func (s *sourceSeries) Labels() labels.Labels { return s.lset }

func (s *sourceSeries) Iterator(chunkenc.Iterator) chunkenc.Iterator {
	if len(s.chks) == 0 {
		return chunkenc.NewNopIterator()
	}
	if !s.dedup {
		return replicaSamples(s.chks, s.mint, s.maxt, s.counter)
	}
	return dedupIterator(s.chks, s.mint, s.maxt, s.counter)
}

// LabelValues and LabelNames answer as Thanos Query's HTTP API does: its answers keep the replica
// labels and their values, deduplicated or not.
func (q *sourceQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	o, err := q.options(ctx)
	if err != nil {
		return nil, nil, err
	}
	req := &storepb.LabelValuesRequest{
		Label: name, PartialResponseStrategy: o.strategy, Start: q.mint, End: q.maxt,
		Matchers: storeMatchers(ms), Limit: labelLimit(hints),
	}
	return q.labels(o, hints, func(st Store) ([]string, []string, error) {
		r, err := st.Store.LabelValues(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		return r.Values, r.Warnings, nil
	})
}

func (q *sourceQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	o, err := q.options(ctx)
	if err != nil {
		return nil, nil, err
	}
	req := &storepb.LabelNamesRequest{
		PartialResponseStrategy: o.strategy, Start: q.mint, End: q.maxt,
		Matchers: storeMatchers(ms), Limit: labelLimit(hints),
	}
	return q.labels(o, hints, func(st Store) ([]string, []string, error) {
		r, err := st.Store.LabelNames(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		return r.Names, r.Warnings, nil
	})
}

func labelLimit(hints *storage.LabelHints) int64 {
	if hints == nil {
		return 0
	}
	return int64(hints.Limit)
}

// labels asks every store and returns the union of their answers, sorted.
func (q *sourceQuerier) labels(o readOptions, hints *storage.LabelHints, ask func(Store) ([]string, []string, error)) ([]string, annotations.Annotations, error) {
	var ws annotations.Annotations
	set := map[string]struct{}{}
	for _, st := range q.src.stores {
		vals, warnings, err := ask(st)
		if err != nil {
			err = errors.Wrapf(err, "store %s", st.Name)
			if !o.partial() {
				return nil, nil, err
			}
			ws.Add(err)
			continue
		}
		for _, w := range warnings {
			ws.Add(errors.Newf("store %s: %s", st.Name, w))
		}
		for _, v := range vals {
			set[v] = struct{}{}
		}
	}
	limit := int64(math.MaxInt64)
	if l := labelLimit(hints); l > 0 {
		limit = l
	}
	return sortedLimit(set, limit), ws, nil
}

func (q *sourceQuerier) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, c := range q.cancels {
		c()
	}
	return nil
}
