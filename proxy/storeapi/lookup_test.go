package storeapi

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lethe-project/lethe/internal/storepb"
)

// lookupStores are two stores (replicas r0, r1) of many live series, a deleted tenant's few,
// and two "steal" series each deleted over a stretch of the hour.
func lookupStores(live int) []*testStore {
	var stores []*testStore
	for _, replica := range []string{"r0", "r1"} {
		var series []labels.Labels
		for i := range live {
			series = append(series, labels.FromStrings("__name__", "node_load1", "instance", fmt.Sprintf("i%03d", i), "replica", replica, "tenant", "t-live"))
		}
		for i := range 3 {
			series = append(series, labels.FromStrings("__name__", "node_load1", "instance", fmt.Sprintf("d%d", i), "replica", replica, "secret", "x", "tenant", "t-del"))
		}
		for _, inst := range []string{"s1", "s2"} {
			series = append(series, labels.FromStrings("__name__", "node_cpu_seconds_total", "instance", inst, "mode", "steal", "replica", replica))
		}
		sort.Slice(series, func(i, j int) bool { return labels.Compare(series[i], series[j]) < 0 })
		stores = append(stores, &testStore{series: series})
	}
	return stores
}

var lookupDeletions = []deletion{
	{`{tenant="t-del"}`, t0 - 3_600_000, t0 + 7_200_000},
	{`node_cpu_seconds_total{instance="s1"}`, t0 + 10*60_000, t0 + 20*60_000 - 1},
	{`node_cpu_seconds_total{instance="s2",replica="r1"}`, t0 + 30*60_000, t0 + 7_200_000},
	{`node_cpu_seconds_total{instance="s2",replica="r0"}`, t0 + 40*60_000, t0 + 7_200_000},
}

// survivingLookup is the oracle: what the series keeping a sample of the stores' (one a minute
// in [t0, t0+1h)) in [mint, maxt] outside the deletions carry.
func survivingLookup(t *testing.T, stores []*testStore, dels []deletion, mint, maxt int64, carried func(labels.Labels, func(string))) []string {
	t.Helper()
	set := map[string]struct{}{}
	for _, st := range stores {
		for _, ls := range st.series {
			for ts := t0; ts < t0+3_600_000; ts += 60_000 {
				if ts < mint || ts > maxt || deleted(t, dels, ls, ts) {
					continue
				}
				carried(ls, func(v string) { set[v] = struct{}{} })
				break
			}
		}
	}
	return sortedLimit(set, 0)
}

func deleted(t *testing.T, dels []deletion, ls labels.Labels, ts int64) bool {
	for _, d := range dels {
		ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(d.selector)
		testutil.Ok(t, err)
		if ts < d.start || ts > d.end {
			continue
		}
		if !matchesAll(ms, ls) {
			continue
		}
		return true
	}
	return false
}

func matchesAll(ms []*labels.Matcher, ls labels.Labels) bool {
	for _, m := range ms {
		if !m.Matches(ls.Get(m.Name)) {
			return false
		}
	}
	return true
}

func TestLabelLookUpsAskTheIndexAndReadOnlyWhatTombstonesMeet(t *testing.T) {
	const live = 2000
	stores := lookupStores(live)
	f := newFixture(t, stores, lookupDeletions...)
	ctx := context.Background()
	sent := func() int64 {
		var n int64
		for _, st := range stores {
			n += st.sent.Load()
		}
		return n
	}
	all := int64(0)
	for _, st := range stores {
		all += int64(len(st.series))
	}

	// Windows where the steal series' deleted and surviving samples meet, to the millisecond. (A
	// window with no sample of any series is answered as the stores' index answers it.)
	windows := [][2]int64{
		{t0, t0 + 3_600_000},
		{t0 + 11*60_000, t0 + 19*60_000},         // s1 deleted over the whole window.
		{t0 + 19*60_000, t0 + 25*60_000},         // s1's first sample after its deletion.
		{t0 + 10*60_000 + 1, t0 + 20*60_000 - 1}, // Inside s1's deletion, to the millisecond.
		{t0 + 29*60_000, t0 + 50*60_000},         // s2 at r1 keeps 29m.
		{t0 + 29*60_000 + 1, t0 + 50*60_000},     // s2 keeps 30m..39m at r0.
		{t0 + 40*60_000, t0 + 3_600_000},         // s2 deleted on both replicas.
	}
	for _, w := range windows {
		name := fmt.Sprintf("[%d,%d]", w[0]-t0, w[1]-t0)
		before := sent()
		vals, err := f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "instance", Start: w[0], End: w[1]})
		testutil.Ok(t, err)
		testutil.Equals(t, survivingLookup(t, stores, lookupDeletions, w[0], w[1], func(ls labels.Labels, add func(string)) { add(ls.Get("instance")) }), vals.Values, name)
		read := sent() - before
		// One round of witnesses (a series listing with a limit, for what the series outside the
		// tombstones carry), then the steal series: far fewer than the stores hold.
		testutil.Assert(t, 4*read < all, "%s: the look-up read %d series of the stores' %d: only a round of witnesses and the steal series need reading", name, read, all)

		before = sent()
		names, err := f.client.LabelNames(ctx, &storepb.LabelNamesRequest{Start: w[0], End: w[1]})
		testutil.Ok(t, err)
		testutil.Equals(t, survivingLookup(t, stores, lookupDeletions, w[0], w[1], func(ls labels.Labels, add func(string)) {
			ls.Range(func(l labels.Label) { add(l.Name) })
		}), names.Names, name)
		// Names: the steal series, and one series per name asked whether it exists outside the
		// deleted tenant.
		testutil.Assert(t, sent()-before <= 8+2*6, "%s: names read %d series of the stores' %d", name, sent()-before, all)
	}

	// The deleted tenant's value and its own label name are gone, from the index alone.
	before := sent()
	vals, err := f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "tenant", Start: t0, End: t0 + 3_600_000})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"t-live"}, vals.Values)
	testutil.Assert(t, sent()-before <= int64(len(stores)), "a tenant deleted over the whole window needs one series per store read, whether another tenant has one: read %d", sent()-before)

	// The limit holds after masking: d0..d2 sort first and are deleted.
	vals, err = f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "instance", Start: t0, End: t0 + 3_600_000, Limit: 3})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"i000", "i001", "i002"}, vals.Values)
	names, err := f.client.LabelNames(ctx, &storepb.LabelNamesRequest{Start: t0, End: t0 + 3_600_000, Limit: 2, WithoutReplicaLabels: []string{"replica"}})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"__name__", "instance"}, names.Names)
	names, err = f.client.LabelNames(ctx, &storepb.LabelNamesRequest{Start: t0, End: t0 + 3_600_000, WithoutReplicaLabels: []string{"replica"}})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"__name__", "instance", "mode", "tenant"}, names.Names, "the replica labels left out after masking")
	vals, err = f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "replica", Start: t0, End: t0 + 3_600_000, WithoutReplicaLabels: []string{"replica"}})
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(vals.Values))

	// Request matchers narrow the masked look-up as they narrow the stores'.
	vals, err = f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "instance", Start: t0 + 40*60_000, End: t0 + 3_600_000,
		Matchers: []*storepb.LabelMatcher{{Type: storepb.LabelMatcher_EQ, Name: "mode", Value: "steal"}}})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"s1"}, vals.Values)
}

func TestMaskedLabelLookUpsPartialResponse(t *testing.T) {
	stores := lookupStores(5)
	stores = append(stores, &testStore{err: status.Error(codes.ResourceExhausted, "store c is out of memory")})
	f := newFixture(t, stores, lookupDeletions...)
	ctx := context.Background()

	vals, err := f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "instance", Start: t0 + 40*60_000, End: t0 + 3_600_000})
	testutil.Ok(t, err)
	testutil.Equals(t, survivingLookup(t, stores[:2], lookupDeletions, t0+40*60_000, t0+3_600_000, func(ls labels.Labels, add func(string)) { add(ls.Get("instance")) }), vals.Values)
	failing := 0
	for _, w := range vals.Warnings {
		if strings.Contains(w, "store c") {
			failing++
		}
	}
	testutil.Equals(t, 1, failing, "the failing store is one warning: %q", vals.Warnings)

	_, err = f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "instance", Start: t0, End: t0 + 3_600_000, PartialResponseStrategy: storepb.PartialResponseStrategy_ABORT})
	testutil.Equals(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	_, err = f.client.LabelNames(ctx, &storepb.LabelNamesRequest{Start: t0, End: t0 + 3_600_000, PartialResponseDisabled: true})
	testutil.Equals(t, codes.ResourceExhausted, status.Code(err), "%v", err)
}

// A store serving overlapping blocks sends a series' chunks overlapping: the look-up's reads see
// every sample of them, in time order, each once.
func TestChunkSeriesReadsOverlappingChunks(t *testing.T) {
	chunk := func(ts ...int64) *storepb.AggrChunk {
		c := chunkenc.NewXORChunk()
		app, err := c.Appender()
		testutil.Ok(t, err)
		for _, t := range ts {
			app.Append(0, t, float64(t))
		}
		return &storepb.AggrChunk{MinTime: ts[0], MaxTime: ts[len(ts)-1], Raw: &storepb.Chunk{Type: storepb.Chunk_XOR, Data: c.Bytes()}}
	}
	read := func(s *chunkSeries) []int64 {
		var out []int64
		it := s.Iterator(nil)
		for it.Next() != chunkenc.ValNone {
			out = append(out, it.AtT())
		}
		testutil.Ok(t, it.Err())
		return out
	}
	overlapping := &chunkSeries{chks: sortChunks([]*storepb.AggrChunk{chunk(10, 200), chunk(50, 60), chunk(60, 300)}), mint: 0, maxt: 250}
	testutil.Equals(t, []int64{10, 50, 60, 200}, read(overlapping))
	it := overlapping.Iterator(nil)
	testutil.Equals(t, chunkenc.ValFloat, it.Seek(21))
	testutil.Equals(t, int64(50), it.AtT(), "a seek past the first chunk's first sample finds the other chunk's")

	apart := &chunkSeries{chks: []*storepb.AggrChunk{chunk(10, 20), chunk(30, 40)}, mint: 15, maxt: 35}
	testutil.Equals(t, []int64{20, 30}, read(apart))
}
