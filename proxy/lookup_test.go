package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/tombstones"
)

// lookupSeries is a test series: its labels and sample timestamps.
type lookupSeries struct {
	lset labels.Labels
	ts   []int64
}

// openLookupBlock writes the series into a TSDB block (120 samples a chunk at most, so that a
// long series spans several chunks) and opens it.
func openLookupBlock(t *testing.T, series []lookupSeries) *tsdb.Block {
	t.Helper()
	var ss []storage.Series
	for _, s := range series {
		var smp []chunks.Sample
		for _, ts := range s.ts {
			smp = append(smp, floatSample{t: ts, f: float64(ts)})
		}
		ss = append(ss, storage.NewListSeries(s.lset, smp))
	}
	dir, err := tsdb.CreateBlock(ss, t.TempDir(), 0, slog.New(slog.DiscardHandler))
	testutil.Ok(t, err)
	b, err := tsdb.OpenBlock(slog.New(slog.DiscardHandler), dir, chunkenc.NewPool(), nil)
	testutil.Ok(t, err)
	t.Cleanup(func() { testutil.Ok(t, b.Close()) })
	return b
}

// lookupSnapshot builds a snapshot of the given tombstones (selector, start, end).
func lookupSnapshot(t *testing.T, store *tombstones.Store, specs []tombstones.Spec) *Snapshot {
	t.Helper()
	var ts []*tombstones.Tombstone
	for _, sp := range specs {
		sp.Force = true
		tb, err := store.Build(sp)
		testutil.Ok(t, err)
		ts = append(ts, tb)
	}
	ix, err := tombstones.NewIndex(ts, store.RedactionKey())
	testutil.Ok(t, err)
	return &Snapshot{index: ix, live: ts, sels: newSelectorIndex(ts), metrics: &maskMetrics{
		seriesMasked: prometheus.NewCounter(prometheus.CounterOpts{Name: "masked"}),
		seriesHidden: prometheus.NewCounter(prometheus.CounterOpts{Name: "hidden"}),
	}}
}

// lookupQuerier returns a masked querier over the block for [mint, maxt]; withChunks decides
// survival from chunk time ranges (bucket mode), otherwise from samples (an upstream).
func lookupQuerier(t *testing.T, b *tsdb.Block, snap *Snapshot, ext labels.Labels, mint, maxt int64, withChunks bool) *maskedQuerier {
	t.Helper()
	q, err := tsdb.NewBlockQuerier(b, mint, maxt)
	testutil.Ok(t, err)
	mq := newMaskedQuerier(q, snap, ext, mint, maxt)
	if withChunks {
		cq, err := tsdb.NewBlockChunkQuerier(b, mint, maxt)
		testutil.Ok(t, err)
		mq.chunks = cq
	}
	t.Cleanup(func() { testutil.Ok(t, mq.Close()) })
	return mq
}

// wantLookup is the brute-force answer: the values (name != "") or label names of the series
// matching ms that keep a sample in [mint, maxt] outside their deleted intervals, or that no
// tombstone touches in the window at all (those the index answers for, with or without samples
// in the window).
func wantLookup(series []lookupSeries, snap *Snapshot, ext labels.Labels, ms []*labels.Matcher, name string, mint, maxt int64) []string {
	strict, _ := lookupBounds(series, snap, ext, ms, name, mint, maxt)
	return strict
}

// lookupBounds returns the brute-force answer (as wantLookup, without limit) and the part of it
// that series with a sample in the window carry: over an upstream, a selector the proxy cannot
// send exactly (redacted, or relaxed) may leave out a value that only untouched series with no
// sample in the window carry.
func lookupBounds(series []lookupSeries, snap *Snapshot, ext labels.Labels, ms []*labels.Matcher, name string, mint, maxt int64) (strict, sampled []string) {
	all, inWindow := map[string]struct{}{}, map[string]struct{}{}
	for _, s := range series {
		if len(s.ts) == 0 {
			continue
		}
		matches := true
		for _, m := range ms {
			matches = matches && m.Matches(s.lset.Get(m.Name))
		}
		if !matches || (name != "" && s.lset.Get(name) == "") {
			continue
		}
		ivs := snap.Intervals(s.lset, ext, nil)
		kept := false
		for _, ts := range s.ts {
			kept = kept || (ts >= mint && ts <= maxt && !ivs.Covers(ts))
		}
		if !kept && ivs.Overlaps(mint, maxt) {
			continue
		}
		add := func(set map[string]struct{}) {
			if name != "" {
				set[s.lset.Get(name)] = struct{}{}
				return
			}
			s.lset.Range(func(l labels.Label) { set[l.Name] = struct{}{} })
		}
		add(all)
		if kept {
			add(inWindow)
		}
	}
	return sortedKeys(all), sortedKeys(inWindow)
}

// between checks an answer against the bounds: no value outside strict, every value of sampled,
// and with a limit (which, as Prometheus' index, keeps any of the values) as many as it allows.
func between(t *testing.T, got, strict, sampled []string, limit int, msg string, args ...any) {
	t.Helper()
	fail := func(format string, a ...any) { t.Fatalf(format+"; "+msg, append(a, args...)...) }
	seen := map[string]bool{}
	for _, v := range got {
		if !slices.Contains(strict, v) || seen[v] {
			fail("%q is not in %v or twice in %v", v, strict, got)
		}
		seen[v] = true
	}
	if limit > 0 {
		if len(got) > limit || len(got) < min(limit, len(sampled)) {
			fail("%v is not %d of %v (at least of %v)", got, limit, strict, sampled)
		}
		return
	}
	for _, v := range sampled {
		if !seen[v] {
			fail("%q is missing from %v", v, got)
		}
	}
}

func lookup(t *testing.T, q *maskedQuerier, name string, limit int, ms ...*labels.Matcher) []string {
	t.Helper()
	var hints *storage.LabelHints
	if limit > 0 {
		hints = &storage.LabelHints{Limit: limit}
	}
	var vals []string
	var err error
	if name == "" {
		vals, _, err = q.LabelNames(context.Background(), hints, ms...)
	} else {
		vals, _, err = q.LabelValues(context.Background(), name, hints, ms...)
	}
	testutil.Ok(t, err)
	if vals == nil {
		vals = []string{}
	}
	return vals
}

func span(from, to, step int64) []int64 {
	var out []int64
	for ts := from; ts <= to; ts += step {
		out = append(out, ts)
	}
	return out
}

func ptr(v int64) *int64 { return &v }

// TestLookupDecisions checks the cases one by one, in both modes: a value whose only series a
// tombstone covers in the window goes, one it covers in part stays, a value shared by a covered
// and a surviving series stays, and the limit counts what is left after masking.
func TestLookupDecisions(t *testing.T) {
	series := []lookupSeries{
		// Covered whole by {user="gone"} over all time.
		{labels.FromStrings("__name__", "req", "user", "gone", "only", "gone"), span(0, 990, 2)},
		// Covered by {user="half"} over [0, 499] only: samples after it survive.
		{labels.FromStrings("__name__", "req", "user", "half"), span(0, 990, 2)},
		// Samples only inside {user="inside"}'s interval [200, 600]: covered in every window.
		{labels.FromStrings("__name__", "req", "user", "inside", "tag", "inside-only"), span(300, 500, 2)},
		// A value shared by a covered series and a surviving one.
		{labels.FromStrings("__name__", "req", "user", "gone", "shard", "s1"), span(0, 990, 2)},
		{labels.FromStrings("__name__", "req", "user", "kept", "shard", "s1"), span(0, 990, 2)},
		// Metric names: one only the covered user has.
		{labels.FromStrings("__name__", "gone_total", "user", "gone"), span(0, 990, 2)},
		{labels.FromStrings("__name__", "up", "user", "kept"), span(0, 990, 2)},
	}
	b := openLookupBlock(t, series)
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(1000) }))
	snap := lookupSnapshot(t, store, []tombstones.Spec{
		{Selectors: []string{`{user="gone"}`}, Start: ptr(math.MinInt64), End: ptr(10_000)},
		{Selectors: []string{`{user="half"}`}, Start: ptr(0), End: ptr(499)},
		{Selectors: []string{`{user="inside"}`}, Start: ptr(200), End: ptr(600)},
	})
	user := labels.MustNewMatcher(labels.MatchEqual, "user", "half")
	for _, c := range []struct {
		name       string
		label      string
		mint, maxt int64
		limit      int
		ms         []*labels.Matcher
		want       []string
	}{
		{"fully covered user goes, partly covered stays", "user", 0, 990, 0, nil, []string{"half", "kept"}},
		{"partly covered user goes where its window is all deleted", "user", 0, 400, 0, nil, []string{"kept"}},
		{"partly covered user over a window reaching past the interval", "user", 400, 500, 0, []*labels.Matcher{user}, []string{"half"}},
		{"value shared by a covered and a surviving series", "shard", 0, 990, 0, nil, []string{"s1"}},
		{"label only covered series carry", "only", 0, 990, 0, nil, []string{}},
		{"series whose samples all lie inside the interval", "tag", 0, 990, 0, nil, []string{}},
		{"metric name only a covered series carries", "__name__", 0, 990, 0, nil, []string{"req", "up"}},
		{"label names", "", 0, 990, 0, nil, []string{"__name__", "shard", "user"}},
		// With a limit, any of the values may come, as from Prometheus' index, but as many as the
		// limit allows of those that survive.
		{"limit after masking", "user", 0, 990, 1, nil, []string{"half", "kept"}},
		{"limit after masking, all but the covered", "user", 0, 990, 2, nil, []string{"half", "kept"}},
		{"limit after masking, names", "", 0, 990, 2, nil, []string{"__name__", "shard", "user"}},
	} {
		for _, withChunks := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/chunks=%v", c.name, withChunks), func(t *testing.T) {
				q := lookupQuerier(t, b, snap, labels.EmptyLabels(), c.mint, c.maxt, withChunks)
				got := lookup(t, q, c.label, c.limit, c.ms...)
				want := wantLookup(series, snap, labels.EmptyLabels(), c.ms, c.label, c.mint, c.maxt)
				if c.limit == 0 {
					testutil.Equals(t, c.want, got)
					testutil.Equals(t, want, got)
					return
				}
				between(t, got, c.want, c.want, c.limit, "limit %d", c.limit)
			})
		}
	}
}

// TestLookupAgreesWithSamples compares the look-ups with a brute-force reading of every sample, on
// random series, tombstones (partial, whole, on external labels, redacted, many on absent
// instances), windows, matchers and limits, in both modes.
func TestLookupAgreesWithSamples(t *testing.T) {
	rng := rand.New(rand.NewSource(17))
	pick := func(vals ...string) string { return vals[rng.Intn(len(vals))] }
	key, err := tombstones.NewRedactionKey([]byte("lookup-test-redaction-key-0123456789"))
	testutil.Ok(t, err)
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(1000) }), tombstones.WithRedactionKey(key))
	ext := labels.FromStrings("cluster", "eu1")
	parse := func(s string) []*labels.Matcher {
		ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(s)
		testutil.Ok(t, err)
		return ms
	}
	for round := 0; round < 12; round++ {
		var series []lookupSeries
		seen := map[string]bool{}
		// Every other round, more instances than a look-up over Thanos asks one by one.
		instN := 4
		if round%2 == 1 {
			instN = 12
		}
		for i := 0; i < 40; i++ {
			kv := []string{"__name__", pick("a", "b", "c"), "job", pick("x", "y"), "inst", fmt.Sprint(rng.Intn(instN))}
			if rng.Intn(3) == 0 {
				kv = append(kv, "extra", pick("e1", "e2"))
			}
			ls := labels.FromStrings(kv...)
			if seen[ls.String()] {
				continue
			}
			seen[ls.String()] = true
			from := int64(rng.Intn(60)) * 10
			to := from + int64(rng.Intn(60))*10
			series = append(series, lookupSeries{ls, span(from, to, int64(1+rng.Intn(3)))})
		}
		b := openLookupBlock(t, series)
		up := newBlockUpstream(t, b, ext)
		var specs []tombstones.Spec
		for i := 0; i < 1+rng.Intn(5); i++ {
			start, end := int64(rng.Intn(80))*10-100, int64(0)
			end = start + int64(rng.Intn(50))*10
			if rng.Intn(4) == 0 {
				start = math.MinInt64
			}
			sp := tombstones.Spec{Start: &start, End: &end}
			switch rng.Intn(6) {
			case 0:
				sp.Selectors = []string{fmt.Sprintf(`{inst=%q}`, fmt.Sprint(rng.Intn(4)))}
			case 1:
				sp.Selectors = []string{fmt.Sprintf(`%s{job=%q}`, pick("a", "b", "c"), pick("x", "y"))}
			case 2:
				sp.Selectors = []string{fmt.Sprintf(`{extra=%q}`, pick("e1", "e2")), fmt.Sprintf(`{__name__=~%q}`, pick("a|b", "c"))}
			case 3:
				sp.Selectors = []string{fmt.Sprintf(`{cluster=%q, job=%q}`, pick("eu1", "us1"), pick("x", "y"))}
			case 4:
				sp.Selectors = []string{fmt.Sprintf(`%s{inst=%q, job=%q}`, pick("a", "b", "c"), fmt.Sprint(rng.Intn(4)), pick("x", "y"))}
				sp.Redact = true
			default:
				sp.Selectors = []string{fmt.Sprintf(`{inst!=%q, job=~%q}`, fmt.Sprint(rng.Intn(4)), pick("x", "y|x"))}
			}
			specs = append(specs, sp)
		}
		if round%4 == 1 {
			// More tombstones meeting one look-up than the selectors' complement can express:
			// they are relaxed, and their series are read over the whole window.
			// Together they delete one instance and job from 0 to 679, in stretches of 40.
			inst, job := fmt.Sprint(rng.Intn(4)), pick("x", "y")
			for i := 0; i < 1+maxComplementQueries; i++ {
				start := int64(i) * 40
				end := start + 39
				specs = append(specs, tombstones.Spec{Selectors: []string{fmt.Sprintf(`{inst=%q, job=%q}`, inst, job)}, Start: &start, End: &end, Redact: rng.Intn(2) == 0})
			}
		}
		if round%3 == 0 {
			// Many tombstones on instances that have no series: ruled out by one look-up.
			for i := 0; i < 30; i++ {
				specs = append(specs, tombstones.Spec{Selectors: []string{fmt.Sprintf(`{inst="absent-%d"}`, i)}, Start: ptr(math.MinInt64), End: ptr(10_000)})
			}
		}
		// The block's look-up cache lives through the round, across two tombstone sets: all of
		// them, and the first half (the others cancelled), taken in turn.
		full, half := lookupSnapshot(t, store, specs), lookupSnapshot(t, store, specs[:len(specs)/2])
		cache := newLookupCache()
		for c := 0; c < 25; c++ {
			snap := full
			if rng.Intn(2) == 0 {
				snap = half
			}
			mint := int64(rng.Intn(70))*10 - 50
			maxt := mint + int64(rng.Intn(40))*10
			ms := parse(pick(`{__name__=~".+"}`, `a`, `{job="x"}`, `{inst=~"1|2"}`, `b{extra="e1"}`))
			if rng.Intn(3) == 0 {
				ms = nil
			}
			name := pick("", "__name__", "job", "inst", "extra")
			lim := 0
			if rng.Intn(4) == 0 {
				lim = 1 + rng.Intn(3)
			}
			strict, sampled := lookupBounds(series, snap, ext, ms, name, mint, maxt)
			for _, mode := range []string{"chunks", "cached", "cached-again", "samples", "query-api", "store-like"} {
				var q *maskedQuerier
				switch mode {
				case "store-like":
					inner, err := tsdb.NewBlockQuerier(b, mint, maxt)
					testutil.Ok(t, err)
					q = newMaskedQuerier(&storeLikeQuerier{Querier: inner}, snap, ext, mint, maxt)
					t.Cleanup(func() { testutil.Ok(t, q.Close()) })
				case "query-api":
					uq, err := up.Querier(snap, mint, maxt)
					testutil.Ok(t, err)
					q = uq.(*maskedQuerier)
				case "cached", "cached-again":
					q = lookupQuerier(t, b, snap, ext, mint, maxt, true)
					q.inner = &cachedBlockQuerier{Querier: q.inner, cache: cache}
				default:
					q = lookupQuerier(t, b, snap, ext, mint, maxt, mode == "chunks")
				}
				got := lookup(t, q, name, lim, ms...)
				msg, args := "round %d: %q of %v over [%d, %d] limit %d mode %s; tombstones %s", []any{round, name, ms, mint, maxt, lim, mode, describeSpecs(specs)}
				if mode != "samples" && mode != "query-api" && mode != "store-like" {
					between(t, got, strict, strict, lim, msg, args...)
					continue
				}
				between(t, got, strict, sampled, lim, msg, args...)
			}
			// The same look-up under the other tombstone set: what the cache holds for this one
			// must not answer it.
			other := half
			if snap == half {
				other = full
			}
			strict, _ = lookupBounds(series, other, ext, ms, name, mint, maxt)
			q := lookupQuerier(t, b, other, ext, mint, maxt, true)
			q.inner = &cachedBlockQuerier{Querier: q.inner, cache: cache}
			between(t, lookup(t, q, name, lim, ms...), strict, strict, lim, "round %d: %q of %v over [%d, %d] limit %d, cached, the other tombstone set; tombstones %s", round, name, ms, mint, maxt, lim, describeSpecs(specs))
		}
	}
}

// TestSeriesLookupSkipsCoveredSeries checks that a series look-up leaves out a series a tombstone
// covers over the whole window and keeps one it covers in part.
func TestSeriesLookupSkipsCoveredSeries(t *testing.T) {
	series := []lookupSeries{
		{labels.FromStrings("__name__", "req", "user", "gone"), span(0, 990, 2)},
		{labels.FromStrings("__name__", "req", "user", "half"), span(0, 990, 2)},
		{labels.FromStrings("__name__", "req", "user", "kept"), span(0, 990, 2)},
	}
	b := openLookupBlock(t, series)
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(1000) }))
	snap := lookupSnapshot(t, store, []tombstones.Spec{
		{Selectors: []string{`{user="gone"}`}, Start: ptr(math.MinInt64), End: ptr(10_000)},
		{Selectors: []string{`{user="half"}`}, Start: ptr(0), End: ptr(499)},
	})
	for _, c := range []struct {
		mint, maxt int64
		want       []string
	}{{0, 990, []string{"half", "kept"}}, {0, 499, []string{"kept"}}, {495, 505, []string{"half", "kept"}}} {
		q := lookupQuerier(t, b, snap, labels.EmptyLabels(), c.mint, c.maxt, false)
		ss := q.Select(context.Background(), true, &storage.SelectHints{Start: c.mint, End: c.maxt, Func: "series"}, labels.MustNewMatcher(labels.MatchEqual, "__name__", "req"))
		var got []string
		for ss.Next() {
			got = append(got, ss.At().Labels().Get("user"))
		}
		testutil.Ok(t, ss.Err())
		testutil.Equals(t, c.want, got, "[%d, %d]", c.mint, c.maxt)
	}
}

// blockSource serves a block unmasked.
type blockSource struct{ b *tsdb.Block }

func (s blockSource) Querier(_ *Snapshot, mint, maxt int64) (storage.Querier, error) {
	return tsdb.NewBlockQuerier(s.b, mint, maxt)
}

// newBlockUpstream returns an upstream read through its query API (as lethe-proxy reads Thanos
// Query): a lethe-proxy with no tombstones over the block, which answers with Prometheus' own API
// code. ext are the upstream's external labels, which its series do not carry.
func newBlockUpstream(t *testing.T, b *tsdb.Block, ext labels.Labels) *Upstream {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	plain := NewMask(tombstones.NewStore(objstore.NewInMemBucket(), nil), logger, prometheus.NewRegistry(), time.Hour)
	testutil.Ok(t, plain.Refresh(ctx))
	srv := httptest.NewServer(New(plain, blockSource{b}, logger, prometheus.NewRegistry(), Config{}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	testutil.Ok(t, err)
	up, err := NewUpstream(ctx, UpstreamConfig{URL: u, Read: ReadQueryAPI, ExternalLabels: &ext, LookbackDelta: 5 * time.Minute}, logger, prometheus.NewRegistry())
	testutil.Ok(t, err)
	return up
}

func describeSpecs(specs []tombstones.Spec) string {
	var out []string
	for _, sp := range specs {
		out = append(out, fmt.Sprintf("%v [%d, %d] redact=%v", sp.Selectors, *sp.Start, *sp.End, sp.Redact))
	}
	return strings.Join(out, "; ")
}

// TestLookupLimitWarnsOnlyWhenMaskedAnswerIsCut checks that a label look-up with a limit, over an
// upstream whose unmasked answer the limit cuts, carries no truncation warning when the masked
// answer fits the limit: the warning would tell that deleted values exist.
func TestLookupLimitWarnsOnlyWhenMaskedAnswerIsCut(t *testing.T) {
	var series []lookupSeries
	for _, u := range []string{"u1", "u2", "u3", "u4", "u5"} {
		series = append(series, lookupSeries{labels.FromStrings("__name__", "req", "user", u), span(0, 990, 10)})
	}
	b := openLookupBlock(t, series)
	up := newBlockUpstream(t, b, labels.EmptyLabels())
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(1000) }))
	snap := lookupSnapshot(t, store, []tombstones.Spec{
		{Selectors: []string{`{user=~"u3|u4|u5"}`}, Start: ptr(math.MinInt64), End: ptr(10_000)},
	})
	for _, c := range []struct {
		hintLimit int // the API's limit plus one, as Prometheus' API asks its querier.
		want      []string
	}{{3, []string{"u1", "u2"}}, {2, []string{"u1", "u2"}}} {
		q, err := up.Querier(snap, 0, 990)
		testutil.Ok(t, err)
		vals, ws, err := q.LabelValues(context.Background(), "user", &storage.LabelHints{Limit: c.hintLimit})
		testutil.Ok(t, err)
		testutil.Equals(t, c.want, vals)
		names, nws, err := q.LabelNames(context.Background(), &storage.LabelHints{Limit: c.hintLimit}, labels.MustNewMatcher(labels.MatchEqual, "user", "u3"))
		testutil.Ok(t, err)
		testutil.Equals(t, 0, len(names), "names %v", names)
		testutil.Equals(t, 0, len(ws)+len(nws), "limit %d: warnings %v %v", c.hintLimit, ws.AsErrors(), nws.AsErrors())
	}
}

// TestSelectDropsSeriesWithoutSurvivingSamples checks that a query's select leaves out a series
// that keeps no sample in the selected range (it would count in stats' seriesTouched, telling how
// many deleted series a selector matches), and keeps one that keeps a sample there.
func TestSelectDropsSeriesWithoutSurvivingSamples(t *testing.T) {
	series := []lookupSeries{
		{labels.FromStrings("__name__", "req", "user", "gone"), span(0, 990, 10)},
		{labels.FromStrings("__name__", "req", "user", "half"), span(0, 990, 10)},
		{labels.FromStrings("__name__", "req", "user", "inside"), span(300, 500, 10)},
		{labels.FromStrings("__name__", "req", "user", "kept"), span(0, 990, 10)},
	}
	b := openLookupBlock(t, series)
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(1000) }))
	snap := lookupSnapshot(t, store, []tombstones.Spec{
		{Selectors: []string{`{user="gone"}`}, Start: ptr(math.MinInt64), End: ptr(10_000)},
		{Selectors: []string{`{user="half"}`}, Start: ptr(0), End: ptr(499)},
		{Selectors: []string{`{user="inside"}`}, Start: ptr(200), End: ptr(600)},
	})
	up := newBlockUpstream(t, b, labels.EmptyLabels())
	for _, c := range []struct {
		mint, maxt int64
		want       []string
	}{{0, 990, []string{"half", "kept"}}, {0, 499, []string{"kept"}}, {495, 505, []string{"half", "kept"}}, {250, 350, []string{"kept"}}} {
		for _, mode := range []string{"block", "query-api"} {
			var q storage.Querier = lookupQuerier(t, b, snap, labels.EmptyLabels(), c.mint, c.maxt, false)
			if mode == "query-api" {
				var err error
				q, err = up.Querier(snap, c.mint, c.maxt)
				testutil.Ok(t, err)
			}
			ss := q.Select(context.Background(), true, &storage.SelectHints{Start: c.mint, End: c.maxt}, labels.MustNewMatcher(labels.MatchEqual, "__name__", "req"))
			var got []string
			for ss.Next() {
				got = append(got, ss.At().Labels().Get("user"))
			}
			testutil.Ok(t, ss.Err())
			testutil.Equals(t, c.want, got, "%s [%d, %d]", mode, c.mint, c.maxt)
		}
	}
}

// queryableFunc is a storage.Queryable of a function.
type queryableFunc func(mint, maxt int64) (storage.Querier, error)

func (f queryableFunc) Querier(mint, maxt int64) (storage.Querier, error) { return f(mint, maxt) }

// TestUpstreamSelectOrdersMatchersAsTSDB checks that absent() of a selector with several matchers
// on one label has the same labels over an upstream as over a block: Prometheus' TSDB reorders the
// selector's own matchers when it selects (those that select series first), and absent() reads
// its labels from them afterwards.
func TestUpstreamSelectOrdersMatchersAsTSDB(t *testing.T) {
	series := []lookupSeries{{labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", "u3"), span(0, 990_000, 10_000)}}
	b := openLookupBlock(t, series)
	up := newBlockUpstream(t, b, labels.EmptyLabels())
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(1000) }))
	snap := lookupSnapshot(t, store, []tombstones.Spec{{Selectors: []string{`{job="api",user_id="u3"}`}, Start: ptr(math.MinInt64), End: ptr(10_000)}})
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	for _, c := range []struct{ query, want string }{
		{`absent(http_requests_total{room!="[ab]",room=~"b",room="b"})`, `{}`},
		{`absent(http_requests_total{room!="a",room="b"})`, `{}`},
		{`absent(http_requests_total{job!="x",room="b"})`, `{room="b"}`},
		{`absent(nothing{job="x",job="y"})`, `{}`},
	} {
		for _, mode := range []string{"block", "query-api"} {
			qa := queryableFunc(func(mint, maxt int64) (storage.Querier, error) {
				if mode == "query-api" {
					return up.Querier(snap, mint, maxt)
				}
				q, err := tsdb.NewBlockQuerier(b, mint, maxt)
				return newMaskedQuerier(q, snap, labels.EmptyLabels(), mint, maxt), err
			})
			q, err := engine.NewInstantQuery(context.Background(), qa, nil, c.query, time.UnixMilli(500_000))
			testutil.Ok(t, err)
			r := q.Exec(context.Background())
			testutil.Ok(t, r.Err)
			v, err := r.Vector()
			testutil.Ok(t, err)
			testutil.Equals(t, 1, len(v), "%s %s", mode, c.query)
			testutil.Equals(t, c.want, v[0].Metric.String(), "%s %s", mode, c.query)
		}
	}
}

// TestWindowPartsCoverTheWindowAtBlockBoundaries checks that a long window is cut into parts that
// follow each other without gap or overlap, cover it, and begin where a 2h block begins.
func TestWindowPartsCoverTheWindowAtBlockBoundaries(t *testing.T) {
	const h = int64(3600 * 1000)
	for _, c := range []struct {
		mint, maxt int64
		parts      int
	}{
		{0, 12*h - 1, 2},
		{1_700_000_000_000, 1_700_000_000_000 + 24*h - 1, 4},
		{1_700_000_123_456, 1_700_000_123_456 + 30*24*h, 4},
		{5 * h, 16 * h, 0},
		{-24 * h, 0, 0},
		{math.MinInt64, math.MaxInt64, 0},
	} {
		q := &upstreamQuerier{mint: c.mint, maxt: c.maxt}
		parts := q.windowParts()
		testutil.Equals(t, c.parts, len(parts), "window [%d, %d]", c.mint, c.maxt)
		next := c.mint
		for i, p := range parts {
			pq := p.(*upstreamQuerier)
			testutil.Equals(t, next, pq.mint, "part %d of [%d, %d]", i, c.mint, c.maxt)
			testutil.Assert(t, pq.maxt >= pq.mint, "part %d of [%d, %d] is empty", i, c.mint, c.maxt)
			if i < len(parts)-1 {
				testutil.Equals(t, int64(0), (pq.maxt+1)%(2*h), "part %d of [%d, %d] ends at %d", i, c.mint, c.maxt, pq.maxt)
			}
			next = pq.maxt + 1
		}
		if len(parts) > 0 {
			testutil.Equals(t, c.maxt+1, next, "parts of [%d, %d] end at the window's end", c.mint, c.maxt)
		}
	}
}

// TestLookupCacheForgetsTheOldest checks that a block's look-up cache holds at most
// maxCachedLookups entries, forgetting the oldest first, and keeps the first answer given a key.
func TestLookupCacheForgetsTheOldest(t *testing.T) {
	c := newLookupCache()
	for i := 0; i <= maxCachedLookups; i++ {
		c.put(fmt.Sprint(i), []string{fmt.Sprint(i)})
	}
	_, ok := c.get("0")
	testutil.Assert(t, !ok, "the oldest entry is still held")
	for i := 1; i <= maxCachedLookups; i++ {
		v, ok := c.get(fmt.Sprint(i))
		testutil.Assert(t, ok, "entry %d is gone", i)
		testutil.Equals(t, []string{fmt.Sprint(i)}, v)
	}
	c.put("1", []string{"other"})
	v, _ := c.get("1")
	testutil.Equals(t, []string{"1"}, v)
	testutil.Equals(t, maxCachedLookups, len(c.entries))
}

// storeLikeQuerier is an inner querier as Thanos is one to the masking, over a block: it tells
// whether a series exists (SeriesExistence) and lists series up to a limit, and it counts what it
// is asked: label look-ups with matchers (which Thanos' store answers by reading every series
// they select), series listed without samples, and series read with their samples.
type storeLikeQuerier struct {
	storage.Querier
	mu                                   sync.Mutex
	lookupsWithMatchers, listed, sampled int
}

func (s *storeLikeQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	set := &limitedSeriesSet{SeriesSet: s.Querier.Select(ctx, sortSeries, hints, ms...), q: s}
	if hints != nil && hints.Func == "series" {
		set.limit, set.listing = hints.Limit, true
	}
	return set
}

func (s *storeLikeQuerier) AnySeries(ctx context.Context, ms []*labels.Matcher) (bool, error) {
	set := s.Select(ctx, false, &storage.SelectHints{Start: math.MinInt64, End: math.MaxInt64, Func: "series", Limit: 1}, ms...)
	found := set.Next()
	return found, set.Err()
}

func (s *storeLikeQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	s.count(len(ms))
	return s.Querier.LabelValues(ctx, name, hints, ms...)
}

func (s *storeLikeQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	s.count(len(ms))
	return s.Querier.LabelNames(ctx, hints, ms...)
}

func (s *storeLikeQuerier) count(matchers int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if matchers > 0 {
		s.lookupsWithMatchers++
	}
}

func (s *storeLikeQuerier) reset() (lookups, listed, sampled int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lookups, listed, sampled = s.lookupsWithMatchers, s.listed, s.sampled
	s.lookupsWithMatchers, s.listed, s.sampled = 0, 0, 0
	return lookups, listed, sampled
}

// limitedSeriesSet ends a series set at its limit (0: none), as a store does, counting the series.
type limitedSeriesSet struct {
	storage.SeriesSet
	q       *storeLikeQuerier
	limit   int
	listing bool
	n       int
}

func (s *limitedSeriesSet) Next() bool {
	if s.limit > 0 && s.n >= s.limit || !s.SeriesSet.Next() {
		return false
	}
	s.n++
	s.q.mu.Lock()
	defer s.q.mu.Unlock()
	if s.listing {
		s.q.listed++
	} else {
		s.q.sampled++
	}
	return true
}

var _ SeriesExistence = (*storeLikeQuerier)(nil)

// TestLookupThroughThanosAsksWitnesses checks the look-ups over an inner querier like Thanos: the
// answers are the samples' (in windows where a tombstone's deleted and surviving samples meet, to
// the millisecond), and they are learnt from a few rounds of listed series and existence checks,
// not from label look-ups with matchers (which Thanos' store pays for with every series they
// select) nor from reading samples beyond the partly deleted series.
func TestLookupThroughThanosAsksWitnesses(t *testing.T) {
	const instances, deleted, metrics = 30, 10, 100
	var series []lookupSeries
	for i := range instances {
		tenant := "t-live"
		if i < deleted {
			tenant = "t-del"
		}
		inst := fmt.Sprintf("i%02d", i)
		for m := range metrics {
			series = append(series, lookupSeries{labels.FromStrings("__name__", fmt.Sprintf("m%03d", m), "instance", inst, "tenant", tenant), span(0, 990, 10)})
		}
		for _, mode := range []string{"idle", "steal"} {
			series = append(series, lookupSeries{labels.FromStrings("__name__", "cpu", "instance", inst, "mode", mode, "tenant", tenant), span(0, 990, 10)})
		}
		if tenant == "t-del" {
			series = append(series, lookupSeries{labels.FromStrings("__name__", "billing", "customer", "c"+inst, "instance", inst, "tenant", tenant), span(0, 990, 10)})
		}
	}
	// One instance's steal series only: deleted over [300, 699], the rest of its steal and
	// idle series elsewhere.
	series = append(series, lookupSeries{labels.FromStrings("__name__", "cpu", "instance", "steal-only", "mode", "steal", "zone", "z1"), span(0, 990, 10)})
	b := openLookupBlock(t, series)
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(1000) }))
	snap := lookupSnapshot(t, store, []tombstones.Spec{
		{Selectors: []string{`{tenant="t-del"}`}, Start: ptr(math.MinInt64), End: ptr(10_000)},
		{Selectors: []string{`cpu{mode="steal"}`}, Start: ptr(300), End: ptr(699)},
	})
	windows := [][2]int64{
		{0, 990},
		{300, 699}, // The steal series deleted over the whole window.
		{301, 698},
		{290, 300}, // Their last surviving sample, and the first deleted.
		{699, 700}, // The last deleted, and the first surviving after.
		{691, 699},
	}
	for _, w := range windows {
		for _, name := range []string{"instance", "__name__", "zone", "customer", "mode", ""} {
			inner, err := tsdb.NewBlockQuerier(b, w[0], w[1])
			testutil.Ok(t, err)
			sl := &storeLikeQuerier{Querier: inner}
			q := newMaskedQuerier(sl, snap, labels.EmptyLabels(), w[0], w[1])
			testutil.Assert(t, q.seriesListing() != nil, "a querier telling series existence is asked witnesses")
			got := lookup(t, q, name, 0)
			testutil.Ok(t, q.Close())
			testutil.Equals(t, wantLookup(series, snap, labels.EmptyLabels(), nil, name, w[0], w[1]), got, "%q over %v", name, w)
			lookups, listed, sampled := sl.reset()
			// The metric names: one look-up of the series that share an instance, where the
			// witnesses of the first round are one metric's.
			testutil.Assert(t, lookups <= 1, "%q over %v: %d label look-ups with matchers", name, w, lookups)
			testutil.Assert(t, listed <= 3*witnessLimit, "%q over %v: %d series listed of %d", name, w, listed, len(series))
			// The steal series are read with their samples, outside the tombstone's interval.
			testutil.Assert(t, sampled <= 2*(instances-deleted+1), "%q over %v: %d series read with samples", name, w, sampled)
		}
	}
}

// TestWitnessRounds checks the rounds of witnesses on their own, with a limit small enough that a
// round cannot list every series: each round is narrowed to what is still unproven, a round that
// lists fewer series than its limit proves that nothing else is carried, and the pivot asks the
// series of one instance once when the witnesses are one metric's.
func TestWitnessRounds(t *testing.T) {
	var series []lookupSeries
	for i := range 12 {
		for m := range 20 {
			series = append(series, lookupSeries{labels.FromStrings("__name__", fmt.Sprintf("m%02d", m), "instance", fmt.Sprintf("i%02d", i), "job", "node"), span(0, 100, 10)})
		}
	}
	b := openLookupBlock(t, series)
	inner, err := tsdb.NewBlockQuerier(b, 0, 100)
	testutil.Ok(t, err)
	sl := &storeLikeQuerier{Querier: inner}
	q := newMaskedQuerier(sl, lookupSnapshot(t, tombstones.NewStore(nil, nil), nil), labels.EmptyLabels(), 0, 100)
	t.Cleanup(func() { testutil.Ok(t, q.Close()) })
	ask := func(ix labelIndex) askFunc {
		return func(ctx context.Context, hints *storage.LabelHints, extra ...[]*labels.Matcher) ([]string, error) {
			var all []*labels.Matcher
			for _, e := range extra {
				all = append(all, e...)
			}
			vals, _, err := ix.ask(ctx, hints, selectable(all))
			return vals, err
		}
	}
	list := q.seriesListing()
	ctx := context.Background()
	notI00 := [][]*labels.Matcher{{labels.MustNewMatcher(labels.MatchNotEqual, "instance", "i00")}}

	// Instances: the first 10 series (m00 of i01..i10: i00 is left out) prove 10 of the 13 asked;
	// the next round, narrowed to i11 and the absent value, lists i11's first 10 series; the
	// third, narrowed to the absent value, lists none: fewer than the limit, so none carries it.
	ix := valuesIndex(sl, "instance")
	vals := []string{"absent", "i00", "i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "i09", "i10", "i11"}
	found, err := q.witnessed(ctx, ix, ask(ix), list, 10, nil, notI00, vals)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "i09", "i10", "i11"}, sortedKeys(found))
	lookups, listed, _ := sl.reset()
	testutil.Equals(t, 0, lookups)
	testutil.Equals(t, 10+10+0, listed)

	// Metric names: the first round's 10 series are all m00's (one proven of 21): the pivot asks
	// the names of i01's series once; the round after lists none of the absent name's.
	ix = valuesIndex(sl, "__name__")
	vals = []string{"absent"}
	for m := range 20 {
		vals = append(vals, fmt.Sprintf("m%02d", m))
	}
	found, err = q.witnessed(ctx, ix, ask(ix), list, 10, nil, notI00, vals)
	testutil.Ok(t, err)
	testutil.Equals(t, vals[1:], sortedKeys(found))
	lookups, listed, _ = sl.reset()
	testutil.Equals(t, 1, lookups, "the pivot")
	testutil.Equals(t, 10, listed)
}

// TestWitnessRoundsWithoutPivot checks that where label look-ups with matchers come from
// postings (a Prometheus by remote read), witnesses that cluster on one metric give way after one
// round: the rest is left to one look-up of the set's series.
func TestWitnessRoundsWithoutPivot(t *testing.T) {
	var series []lookupSeries
	for i := range 12 {
		for m := range 20 {
			series = append(series, lookupSeries{labels.FromStrings("__name__", fmt.Sprintf("m%02d", m), "instance", fmt.Sprintf("i%02d", i)), span(0, 100, 10)})
		}
	}
	b := openLookupBlock(t, series)
	inner, err := tsdb.NewBlockQuerier(b, 0, 100)
	testutil.Ok(t, err)
	sl := &storeLikeQuerier{Querier: inner}
	q := newMaskedQuerier(sl, lookupSnapshot(t, tombstones.NewStore(nil, nil), nil), labels.EmptyLabels(), 0, 100)
	t.Cleanup(func() { testutil.Ok(t, q.Close()) })
	ix := valuesIndex(sl, "__name__")
	pending, found := map[string]struct{}{}, map[string]struct{}{}
	for m := range 20 {
		pending[fmt.Sprintf("m%02d", m)] = struct{}{}
	}
	noAsk := func(context.Context, *storage.LabelHints, ...[]*labels.Matcher) ([]string, error) {
		t.Fatal("no look-up is asked without pivot")
		return nil, nil
	}
	set := []*labels.Matcher{labels.MustNewMatcher(labels.MatchNotEqual, "instance", "i00")}
	exhausted, clustered, err := witnessIn(context.Background(), ix, noAsk, q.seriesListing(), 10, false, nil, set, pending, found)
	testutil.Ok(t, err)
	testutil.Equals(t, false, exhausted)
	testutil.Equals(t, true, clustered)
	testutil.Equals(t, []string{"m00"}, sortedKeys(found))
	testutil.Equals(t, 19, len(pending))
	_, listed, _ := sl.reset()
	testutil.Equals(t, 10, listed, "one round")
}
