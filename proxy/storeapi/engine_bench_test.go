package storeapi

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
)

// BenchmarkSourceQuery evaluates the dashboard's heaviest query, sum by (job) (rate(...[5m])),
// with Prometheus' engine over the Source of BenchmarkSource (3,200 series of two replicas),
// untouched and masked: lethe-proxy --upstream.store's work for a query, the HTTP API aside.
func BenchmarkSourceQuery(b *testing.B) {
	stores := replicaBenchStores()
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: math.MaxInt32, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	for _, c := range []struct {
		name string
		del  deletion
	}{
		{"untouched", deletion{`other{job="x"}`, t0, t0 + 60_000}},
		{"masked", deletion{`node_cpu_seconds_total{instance="i-3"}`, t0 + 20*60_000, t0 + 40*60_000 - 1}},
	} {
		src, snap := sourceOver(b, false, stores, c.del)
		q := storage.QueryableFunc(func(mint, maxt int64) (storage.Querier, error) { return src.Querier(snap, mint, maxt) })
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				qry, err := engine.NewRangeQuery(context.Background(), q, nil, `sum by (job) (rate(node_cpu_seconds_total[5m]))`,
					time.UnixMilli(t0+5*60_000), time.UnixMilli(t0+3_600_000), 15*time.Second)
				testutil.Ok(b, err)
				res := qry.Exec(context.Background())
				testutil.Ok(b, res.Err)
				m, err := res.Matrix()
				testutil.Ok(b, err)
				testutil.Equals(b, 1, len(m))
				qry.Close()
			}
		})
	}
}
