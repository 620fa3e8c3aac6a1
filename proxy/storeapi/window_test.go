package storeapi

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/proxy"
)

// requestContext is the context the proxy gives its source for a query_range request with form.
func requestContext(t *testing.T, form url.Values) context.Context {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, "/api/v1/query_range?"+form.Encode(), nil)
	testutil.Ok(t, err)
	testutil.Ok(t, r.ParseForm())
	return proxy.RequestContext(context.Background(), r, "/api/v1/query_range")
}

// A 5m aggregate is stamped at its window's last sample: one stamped inside a read's range holds
// samples from before the range, which a tombstone may delete though it ends before the range
// starts. Both the source and the filter cut such a window.
func TestAggregateWindowsStartingBeforeTheRangeAreCut(t *testing.T) {
	const w = 300_000
	st := t0 - t0%w
	// One window [st, st+5m), stamped at st+4m, its max 100 from a sample at st+1m.
	chk := aggrChunk(t, []testSample{{st + 240_000, 5}}, []testSample{{st + 240_000, 110}},
		[]testSample{{st + 240_000, 1}}, []testSample{{st + 240_000, 100}}, []testSample{{st, 1}, {st + 240_000, 9}, {st + 240_000, 9}})
	store := &testStore{series: []labels.Labels{labels.FromStrings("__name__", "load", "replica", "r0")}, downsampled: chk}
	del := deletion{`load`, st + 60_000, st + 90_000}

	src, snap := sourceOver(t, false, []*testStore{store}, del)
	q, err := src.Querier(snap, math.MinInt64, math.MaxInt64)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, q.Close()) }()
	ctx := requestContext(t, url.Values{"max_source_resolution": {"5m"}, "step": {"60"}})
	for _, start := range []int64{st, st + 120_000, st + 240_000} {
		ss := q.Select(ctx, true, &storage.SelectHints{Start: start, End: st + 600_000, Func: "max_over_time", Range: 600_000}, labels.MustNewMatcher(labels.MatchEqual, "__name__", "load"))
		for ss.Next() {
			it := ss.At().Iterator(nil)
			for it.Next() == chunkenc.ValFloat {
				ts, v := it.At()
				t.Errorf("read from %+ds: the window holding the deleted sample is read: %v at %+ds", (start-st)/1000, v, (ts-st)/1000)
			}
		}
		testutil.Ok(t, ss.Err())
	}

	f := newFixture(t, []*testStore{store}, del)
	for _, start := range []int64{st, st + 120_000, st + 240_000} {
		cl, err := f.client.Series(context.Background(), &storepb.SeriesRequest{
			MinTime: start, MaxTime: st + 600_000, MaxResolutionWindow: w, Aggregates: []storepb.Aggr{storepb.Aggr_MAX},
			Matchers: []*storepb.LabelMatcher{{Type: storepb.LabelMatcher_EQ, Name: "__name__", Value: "load"}},
		})
		testutil.Ok(t, err)
		for {
			r, err := cl.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			testutil.Ok(t, err)
			for _, s := range append(r.GetBatch().GetSeries(), r.GetSeries()) {
				for _, c := range s.GetChunks() {
					t.Errorf("filtered from %+ds: a chunk of the window holding the deleted sample is sent: [%d, %d]", (start-st)/1000, c.MinTime-st, c.MaxTime-st)
				}
			}
		}
	}
}

// A request's replicaLabels[] names only lethe's own replica labels: tombstones naming a replica
// label are applied before the replicas merge, so another label the stores were told to drop
// would take its series out of every tombstone's reach.
func TestReplicaLabelsOfTheRequestAreLethes(t *testing.T) {
	store := &testStore{series: []labels.Labels{labels.FromStrings("__name__", "up", "replica", "r0", "user_id", "5")}}
	src, snap := sourceOver(t, false, []*testStore{store}, deletion{`up{user_id="5"}`, t0, t0 + 3_600_000})
	q, err := src.Querier(snap, math.MinInt64, math.MaxInt64)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, q.Close()) }()
	read := func(form url.Values) (int, error) {
		ss := q.Select(requestContext(t, form), true, &storage.SelectHints{Start: t0, End: t0 + 3_600_000}, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
		n := 0
		for ss.Next() {
			for it := ss.At().Iterator(nil); it.Next() == chunkenc.ValFloat; {
				n++
			}
		}
		return n, ss.Err()
	}
	n, err := read(url.Values{"replicaLabels[]": {"replica"}})
	testutil.Ok(t, err)
	testutil.Equals(t, 0, n)
	_, err = read(url.Values{"replicaLabels[]": {"user_id"}})
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), "replicaLabels[]=user_id"), "%v", err)
}
