package storeapi

import (
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/grpc"

	"github.com/lethe-project/lethe/internal/storepb"
)

// BenchmarkSeries streams 10,000 series of one 60-sample chunk from a store, asked directly and
// through lethe: untouched (no tombstone can meet the request), masked (every series loses 10
// of its 60 minutes, so every chunk is re-encoded), and masked-one (a tombstone meets the request
// but one series only: every series' labels are read, one chunk is cut).
func BenchmarkSeries(b *testing.B) {
	var series []labels.Labels
	for i := range 10_000 {
		series = append(series, labels.FromStrings("__name__", "up", "instance", strconv.Itoa(100_000+i), "job", "node"))
	}
	store := &testStore{series: series}
	direct := storepb.NewStoreClient(serve(b, func(g *grpc.Server) { storepb.RegisterStoreServer(g, store) }))
	untouched := newFixture(b, []*testStore{store}, deletion{`other{job="x"}`, t0, t0 + 60_000})
	masked := newFixture(b, []*testStore{store}, deletion{`up{job="node"}`, t0 + 20*60_000, t0 + 30*60_000 - 1})
	maskedOne := newFixture(b, []*testStore{store}, deletion{`up{instance="100003"}`, t0 + 20*60_000, t0 + 30*60_000 - 1})

	req := upRequest(storepb.PartialResponseStrategy_WARN)
	for _, c := range []struct {
		name   string
		client storepb.StoreClient
	}{{"direct", direct}, {"lethe-untouched", untouched.client}, {"lethe-masked", masked.client}, {"lethe-masked-one", maskedOne.client}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				cl, err := c.client.Series(context.Background(), req)
				testutil.Ok(b, err)
				n := 0
				for {
					r, err := cl.Recv()
					if errors.Is(err, io.EOF) {
						break
					}
					testutil.Ok(b, err)
					if r.GetSeries() != nil {
						n++
					}
				}
				testutil.Equals(b, len(series), n)
			}
		})
	}
}

// BenchmarkSource reads 3,200 series of two replicas (two stores) through the Source that serves
// lethe-proxy --upstream.store: replicas deduplicated, every sample read, untouched (a tombstone
// of another metric) and masked (a tombstone of one instance's 20 minutes, which the replicas'
// chunks are cut by before the merge).
func BenchmarkSource(b *testing.B) {
	stores := replicaBenchStores()
	for _, c := range []struct {
		name string
		del  deletion
	}{
		{"untouched", deletion{`other{job="x"}`, t0, t0 + 60_000}},
		{"masked", deletion{`node_cpu_seconds_total{instance="i-3"}`, t0 + 20*60_000, t0 + 40*60_000 - 1}},
	} {
		src, snap := sourceOver(b, false, stores, c.del)
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				got, _, err := selectAll(b, src, snap, labels.MustNewMatcher(labels.MatchEqual, "__name__", "node_cpu_seconds_total"))
				testutil.Ok(b, err)
				testutil.Equals(b, 3_200, len(got))
			}
		})
	}
}

// replicaBenchStores are two replicas' stores of 3,200 node-exporter-like series each.
func replicaBenchStores() []*testStore {
	var stores []*testStore
	for _, r := range []string{"r0", "r1"} {
		var series []labels.Labels
		for i := range 3_200 {
			series = append(series, labels.FromStrings("__name__", "node_cpu_seconds_total", "cpu", strconv.Itoa(i%8), "instance", "i-"+strconv.Itoa(i/32),
				"job", "node", "mode", strconv.Itoa(i/8%4), "replica", r))
		}
		slices.SortFunc(series, labels.Compare)
		stores = append(stores, &testStore{series: series})
	}
	return stores
}
