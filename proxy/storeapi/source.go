package storeapi

import (
	"context"
	"io"
	"slices"
	"strconv"
	"sync"

	"github.com/efficientgo/core/errors"
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
// deduplicated series, except for tombstones that name a replica label: those mask each replica's
// series before the replicas are merged, as Prometheus' delete_series on that replica would (see
// proxy.Snapshot.SplitNaming).
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

// ReadsDownsampled says that the source reads Thanos' downsampled aggregates where a request's
// max_source_resolution allows, as Thanos Query does.
func (s *Source) ReadsDownsampled() bool { return true }

// Querier returns a querier over [mint, maxt] masked with snap. The stores' series carry their
// external labels, so tombstones match those as series labels.
func (s *Source) Querier(snap *proxy.Snapshot, mint, maxt int64) (storage.Querier, error) {
	naming, others, err := snap.SplitNaming(s.replicaLabels)
	if err != nil {
		return nil, err
	}
	inner := &sourceQuerier{src: s, naming: naming, others: others, mint: mint, maxt: maxt}
	masked := proxy.MaskQuerier(inner, others, labels.EmptyLabels(), mint, maxt)
	return &replicaLookups{Querier: masked, inner: inner, snap: snap}, nil
}

// replicaLookups answers the values of a replica label itself: Thanos Query's look-ups keep the
// replica labels while its series are deduplicated without them, so the proxy's masking, which
// reads the deduplicated series, cannot tell which replica's samples survive.
type replicaLookups struct {
	storage.Querier
	inner *sourceQuerier
	snap  *proxy.Snapshot
}

func (q *replicaLookups) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	o, err := q.inner.options(ctx)
	if err != nil {
		return nil, nil, err
	}
	sel := append(slices.Clone(ms), labels.MustNewMatcher(labels.MatchNotEqual, name, ""))
	if !o.dedup || !slices.Contains(o.replicaLabels, name) || !q.snap.MayMatch(sel, labels.EmptyLabels(), q.inner.mint, q.inner.maxt) {
		return q.Querier.LabelValues(ctx, name, hints, ms...)
	}
	return q.inner.survivingLabels(ctx, o, hints, sel, q.snap, func(ls labels.Labels, add func(string)) { add(ls.Get(name)) })
}

type sourceQuerier struct {
	src *Source
	// naming are the live tombstones that name a replica label, applied to each replica's series
	// before the replicas are merged; nil when there are none.
	naming *proxy.Snapshot
	// others are the rest: the proxy masks the merged series with them, and they are cut from
	// the replicas' chunks before deduplication too (see sourceSeriesSet.premask).
	others     *proxy.Snapshot
	mint, maxt int64

	mu      sync.Mutex // Look-ups select concurrently.
	cancels []context.CancelFunc
}

// readOptions are the request's Thanos Query parameters as they apply to one read.
type readOptions struct {
	dedup         bool
	replicaLabels []string
	strategy      storepb.PartialResponseStrategy
	// resolution is the request's max_source_resolution in milliseconds (0: raw).
	resolution int64
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
		if err := proxy.ReplicaLabelsAllowed(ctx, q.src.replicaLabels); err != nil {
			return o, err
		}
		o.replicaLabels = v
	}
	res, err := proxy.SourceResolution(ctx)
	if err != nil {
		return o, err
	}
	o.resolution = res.Milliseconds()
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
	var limit, rng int64
	if hints != nil {
		mint, maxt, fn, limit, rng = hints.Start, hints.End, hints.Func, int64(hints.Limit), hints.Range
	}
	o.resolution = resolutionWindow(o.resolution, rng, fn)
	return q.read(ctx, o, q.naming, mint, maxt, fn, limit, ms)
}

// read streams the stores' series in [mint, maxt] that the matchers select; fn is the PromQL
// function the series are read for ("series" for look-ups: no samples read). Where o allows a
// resolution, the stores send downsampled aggregates, those Thanos Query reads for fn.
// Tombstones of mask (nil: none) are applied to each replica's series before the merge.
func (q *sourceQuerier) read(ctx context.Context, o readOptions, mask *proxy.Snapshot, mint, maxt int64, fn string, limit int64, ms []*labels.Matcher) storage.SeriesSet {
	var aggrs []storepb.Aggr
	if fn == "series" {
		o.resolution = 0
	} else if o.resolution > 0 {
		aggrs = aggregatesFor(fn)
	}
	req := &storepb.SeriesRequest{
		MinTime:                 mint,
		MaxTime:                 maxt,
		Matchers:                storeMatchers(ms),
		MaxResolutionWindow:     o.resolution,
		Aggregates:              requestedAggregates(aggrs),
		PartialResponseStrategy: o.strategy,
		SkipChunks:              fn == "series",
		WithoutReplicaLabels:    o.replicaLabels,
		Limit:                   limit,
	}
	set := &sourceSeriesSet{
		drop: o.replicaLabels, dedup: o.dedup, counter: counterFunc(fn), series: fn == "series",
		mint: mint, maxt: maxt, partial: o.partial(), resolution: o.resolution, aggrs: aggrs,
	}
	// Aggregates are cut by their windows here: the proxy's masking, after this, sees only
	// their stamps. One stamped in [mint, maxt] holds samples from its window's start on.
	from := readFrom(mint, o.resolution)
	if (o.dedup || o.resolution > 0) && q.others.MayMatch(ms, labels.EmptyLabels(), from, maxt) {
		set.premask = q.others
	}
	if mask != nil && mask.MayMatch(ms, labels.EmptyLabels(), from, maxt) {
		// Each replica is masked with its replica labels, so the stores must send them; the
		// limit counts series after the merge, so it is applied here.
		set.naming, set.limit = mask, limit
		req.WithoutReplicaLabels, req.SkipChunks, req.Limit = nil, false, 0
		set.resort = len(o.replicaLabels) > 0
	}
	ctx, cancel := context.WithCancel(ctx)
	q.mu.Lock()
	q.cancels = append(q.cancels, cancel)
	q.mu.Unlock()
	set.cancel = cancel
	for _, st := range q.src.stores {
		recv, err := openSeries(ctx, st, req)
		if err != nil {
			if !set.failed(st.Name, err) {
				return storage.ErrSeriesSet(set.err)
			}
			continue
		}
		c := &storeCursor{name: st.Name, frames: receive(ctx, recv)}
		if set.resort {
			set.drain(c)
		}
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
// ends or ctx is done. Frames are taken off the wire as they are and decoded by hand
// (decodeSeriesResponse).
func receive(ctx context.Context, recv func(*wireFrame) error) <-chan received {
	out := make(chan received, framesAhead)
	go func() {
		defer close(out)
		var f wireFrame
		defer f.reset()
		for {
			var r *storepb.SeriesResponse
			err := recv(&f)
			if err == nil {
				r, err = decodeSeriesResponse(f.bytes())
				f.reset()
			}
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
	// sorted holds the whole stream, sorted without the replica labels, once drained (see
	// sourceSeriesSet.drain); advance then reads it instead of the stream.
	sorted  []sortedSeries
	drained bool
}

// sortedSeries is one series of a drained stream, with its labels without the replica labels.
type sortedSeries struct {
	lset   labels.Labels
	series *storepb.Series
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
	// series is a series look-up: the series' samples are not read, only whether one is left.
	series bool
	// resolution is the request's max_resolution_window; aggrs the aggregates read (none: raw).
	resolution int64
	aggrs      []storepb.Aggr
	// naming masks each replica's series before the merge (see sourceQuerier.naming); resort
	// says the stores send the replicas with their replica labels, so each stream is drained and
	// sorted without them.
	naming *proxy.Snapshot
	resort bool
	// limit is the most series Next returns, when the stores were not told (0: no limit).
	limit, returned int64
	// premask removes what the tombstones that name no replica label delete from the replicas'
	// chunks before they are deduplicated, as if Prometheus had deleted it on every replica:
	// where both replicas lack samples, which one the penalty rule takes next depends on it.
	premask *proxy.Snapshot

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

// receiveSeries returns c's next series from its stream; false when c has no more (or failed).
func (s *sourceSeriesSet) receiveSeries(c *storeCursor) (*storepb.Series, bool) {
	for len(c.pending) == 0 {
		f, ok := <-c.frames
		if !ok {
			// The query was cancelled or closed before the stream ended.
			s.failed(c.name, errors.New("stream ended before its end"))
			return nil, false
		}
		r, err := f.r, f.err
		if errors.Is(err, io.EOF) {
			return nil, false
		}
		if err != nil {
			s.failed(c.name, err)
			return nil, false
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
	var head *storepb.Series
	head, c.pending = c.pending[0], c.pending[1:]
	return head, true
}

// nextSeries returns c's next series from its stream with what s.naming deletes of it removed,
// skipping series with nothing left.
func (s *sourceSeriesSet) nextSeries(c *storeCursor) (*storepb.Series, bool) {
	for {
		head, ok := s.receiveSeries(c)
		if !ok || s.naming == nil {
			return head, ok
		}
		head, err := s.maskReplica(head)
		if err != nil {
			s.err = errors.Wrapf(err, "store %s", c.name)
			return nil, false
		}
		if head != nil {
			return head, true
		}
	}
}

// maskReplica returns the series, with its replica labels, without the samples s.naming deletes
// of it; nil when none is left in the window.
func (s *sourceSeriesSet) maskReplica(series *storepb.Series) (*storepb.Series, error) {
	ivs := s.naming.Intervals(zLabelsToProm(series.Labels), labels.EmptyLabels(), nil)
	if len(ivs) == 0 {
		return series, nil
	}
	if s.series {
		ok, err := survives(series.Chunks, ivs, s.mint, s.maxt, 0)
		if err != nil || !ok {
			return nil, err
		}
		return series, nil
	}
	chks, err := cutSeries(series.Chunks, ivs, s.resolution, s.mint, s.maxt)
	if err != nil || chks == nil {
		return nil, err
	}
	return &storepb.Series{Labels: series.Labels, Chunks: chks}, nil
}

// withoutDropped returns the series' labels without the replica labels s drops.
func (s *sourceSeriesSet) withoutDropped(series *storepb.Series) labels.Labels {
	s.builder.Reset()
	for _, l := range series.Labels {
		if !slices.Contains(s.drop, l.Name) {
			s.builder.Add(l.Name, l.Value)
		}
	}
	s.builder.Sort()
	return s.builder.Labels()
}

// drain reads c's whole stream and sorts it by the labels without the replica labels, as Thanos'
// proxy does for stores that cannot sort without them: the replicas of a series meet again. It
// holds the stream's chunks in memory, so it serves only the queries a tombstone on a replica
// label may meet.
func (s *sourceSeriesSet) drain(c *storeCursor) {
	for {
		series, ok := s.nextSeries(c)
		if !ok {
			break
		}
		c.sorted = append(c.sorted, sortedSeries{lset: s.withoutDropped(series), series: series})
	}
	slices.SortStableFunc(c.sorted, func(a, b sortedSeries) int { return labels.Compare(a.lset, b.lset) })
	c.drained = true
}

// advance reads c's next series into its head; false when c has no more (or failed).
func (s *sourceSeriesSet) advance(c *storeCursor) bool {
	if c.drained {
		if len(c.sorted) == 0 || s.err != nil {
			return false
		}
		c.head, c.lset = c.sorted[0].series, c.sorted[0].lset
		c.sorted = c.sorted[1:]
		return true
	}
	head, ok := s.nextSeries(c)
	if !ok {
		return false
	}
	c.head = head
	c.prev, c.lset = c.lset, s.withoutDropped(head)
	if labels.Compare(c.lset, c.prev) < 0 {
		s.err = errors.Newf("store %s sends series out of label order without the replica labels %v (it does not support without_replica_labels): use it without --upstream.replica-label, or behind Thanos Query", c.name, s.drop)
		return false
	}
	return true
}

func (s *sourceSeriesSet) Next() bool {
	for {
		if s.err != nil || len(s.cursors) == 0 || (s.limit > 0 && s.returned >= s.limit) {
			s.cancel()
			return false
		}
		lset, chks := s.merge()
		if s.err != nil {
			s.cancel()
			return false
		}
		if s.premask != nil && len(chks) > 0 {
			if ivs := s.premask.Intervals(lset, labels.EmptyLabels(), nil); len(ivs) > 0 {
				var err error
				if chks, err = cutSeries(chks, ivs, s.resolution, s.mint, s.maxt); err != nil {
					s.err = err
					continue
				}
				if chks == nil {
					continue // Deleted on every replica.
				}
			}
		}
		s.returned++
		s.cur = &sourceSeries{lset: lset, chks: sortChunks(chks), mint: s.mint, maxt: s.maxt, dedup: s.dedup, counter: s.counter, aggrs: s.aggrs}
		return true
	}
}

// merge takes the next series in label order from every cursor that holds it, and returns its
// labels and all their chunks.
func (s *sourceSeriesSet) merge() (labels.Labels, []*storepb.AggrChunk) {
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
			return lset, nil
		}
		if alive {
			open = append(open, c)
		}
	}
	s.cursors = open
	return lset, chks
}

func (s *sourceSeriesSet) At() storage.Series                { return s.cur }
func (s *sourceSeriesSet) Err() error                        { return s.err }
func (s *sourceSeriesSet) Warnings() annotations.Annotations { return s.ws }

// sourceSeries is one series' chunks, read in [mint, maxt]: raw, or the aggregates aggrs.
type sourceSeries struct {
	lset       labels.Labels
	chks       []*storepb.AggrChunk
	mint, maxt int64
	dedup      bool
	counter    bool
	aggrs      []storepb.Aggr
}

func (s *sourceSeries) Labels() labels.Labels { return s.lset }

func (s *sourceSeries) Iterator(chunkenc.Iterator) chunkenc.Iterator {
	if len(s.chks) == 0 {
		return chunkenc.NewNopIterator()
	}
	if !s.dedup {
		return replicaSamples(s.chks, s.mint, s.maxt, s.counter, s.aggrs)
	}
	return dedupIterator(s.chks, s.mint, s.maxt, s.counter, s.aggrs)
}

// LabelValues and LabelNames answer as Thanos Query's HTTP API does: its answers keep the replica
// labels and their values, deduplicated or not.
func (q *sourceQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	o, err := q.options(ctx)
	if err != nil {
		return nil, nil, err
	}
	if sel := append(slices.Clone(ms), labels.MustNewMatcher(labels.MatchNotEqual, name, "")); q.naming != nil && q.naming.MayMatch(sel, labels.EmptyLabels(), q.mint, q.maxt) {
		return q.survivingLabels(ctx, o, hints, sel, q.naming, func(ls labels.Labels, add func(string)) {
			if v := ls.Get(name); v != "" {
				add(v)
			}
		})
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
	if q.naming != nil && q.naming.MayMatch(ms, labels.EmptyLabels(), q.mint, q.maxt) {
		return q.survivingLabels(ctx, o, hints, ms, q.naming, func(ls labels.Labels, add func(string)) {
			ls.Range(func(l labels.Label) { add(l.Name) })
		})
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

// survivingLabels answers a look-up from the series themselves, each replica masked with mask
// before the merge: a label name or value carried only by one replica's deleted samples never
// appears. collect adds what a surviving series carries.
func (q *sourceQuerier) survivingLabels(ctx context.Context, o readOptions, hints *storage.LabelHints, ms []*labels.Matcher, mask *proxy.Snapshot, collect func(labels.Labels, func(string))) ([]string, annotations.Annotations, error) {
	// Thanos Query's look-ups keep the replica labels: every replica is read as its own series.
	o.dedup, o.replicaLabels = false, nil
	// Stores select no series by external labels alone (a store gateway answers "no matchers
	// specified"): every series has a name.
	ms = append(slices.Clone(ms), labels.MustNewMatcher(labels.MatchRegexp, labels.MetricName, ".+"))
	set := q.read(ctx, o, mask, q.mint, q.maxt, "series", 0, ms)
	found := map[string]struct{}{}
	add := func(v string) { found[v] = struct{}{} }
	for set.Next() {
		collect(set.At().Labels(), add)
	}
	if err := set.Err(); err != nil {
		return nil, nil, err
	}
	return sortedLimit(found, labelLimit(hints)), set.Warnings(), nil
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
	return sortedLimit(set, labelLimit(hints)), ws, nil
}

func (q *sourceQuerier) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, c := range q.cancels {
		c()
	}
	return nil
}

// AnySeries reports whether the stores hold a series the matchers select in the window, by a
// series read without samples that the stores end at the first (proxy.SeriesExistence).
func (q *sourceQuerier) AnySeries(ctx context.Context, ms []*labels.Matcher) (bool, error) {
	set := q.Select(ctx, false, &storage.SelectHints{Start: q.mint, End: q.maxt, Func: "series", Limit: 1}, ms...)
	found := false
	// The stores end their streams at the limit: read them to their end, so that none is
	// cancelled; one that sends more is cut short when the querier closes.
	for range maxExistenceDrain {
		if !set.Next() {
			break
		}
		found = true
	}
	return found, set.Err()
}

var _ proxy.SeriesExistence = (*sourceQuerier)(nil)
