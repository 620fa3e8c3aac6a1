package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"

	"github.com/lethe-project/lethe/tombstones"
)

// BenchmarkLookupBlock times the masked look-ups over one block of 100,000 series (200 instances,
// 74 of them of a deleted tenant) with the tombstones of issue 17 and 10,000 on absent instances,
// against the block querier's own look-ups.
func BenchmarkLookupBlock(b *testing.B) {
	var ss []storage.Series
	for i := 0; i < 200; i++ {
		tenant := "t-" + strconv.Itoa(i%4)
		if i < 74 {
			tenant = "t-del"
		}
		for k := 0; k < 500; k++ {
			kv := []string{"__name__", fmt.Sprintf("node_metric_%03d", k%300), "instance", fmt.Sprintf("host-%03d", i), "tenant", tenant, "k", strconv.Itoa(k)}
			if k < 64 {
				kv = []string{"__name__", "node_cpu_seconds_total", "instance", fmt.Sprintf("host-%03d", i), "tenant", tenant, "cpu", strconv.Itoa(k / 8), "mode", []string{"idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice"}[k%8]}
			}
			var smp []chunks.Sample
			for ts := int64(0); ts < 7_200_000; ts += 600_000 {
				smp = append(smp, floatSample{t: ts, f: float64(ts)})
			}
			ss = append(ss, storage.NewListSeries(labels.FromStrings(kv...), smp))
		}
	}
	dir, err := tsdb.CreateBlock(ss, b.TempDir(), 4*7_200_000, slog.New(slog.DiscardHandler))
	testutil.Ok(b, err)
	blk, err := tsdb.OpenBlock(slog.New(slog.DiscardHandler), dir, chunkenc.NewPool(), nil)
	testutil.Ok(b, err)
	defer blk.Close()
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(7_200_000) }))
	specs := []tombstones.Spec{
		{Selectors: []string{`{tenant="t-del"}`}, Start: ptr(math.MinInt64), End: ptr(10_000_000)},
		{Selectors: []string{`node_cpu_seconds_total{mode="steal"}`}, Start: ptr(3_600_000), End: ptr(5_400_000)},
	}
	for i := 0; i < 10_000; i++ {
		specs = append(specs, tombstones.Spec{Selectors: []string{fmt.Sprintf(`{instance="gone-%05d"}`, i)}, Start: ptr(math.MinInt64), End: ptr(10_000_000)})
	}
	var ts []*tombstones.Tombstone
	for _, sp := range specs {
		tb, err := store.Build(sp)
		testutil.Ok(b, err)
		ts = append(ts, tb)
	}
	ix, err := tombstones.NewIndex(ts, nil)
	testutil.Ok(b, err)
	snap := &Snapshot{index: ix, live: ts, sels: newSelectorIndex(ts), metrics: &maskMetrics{
		seriesMasked: prometheus.NewCounter(prometheus.CounterOpts{Name: "masked"}),
		seriesHidden: prometheus.NewCounter(prometheus.CounterOpts{Name: "hidden"}),
	}}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		do   func(q storage.Querier) error
	}{
		{"labels", func(q storage.Querier) error { _, _, err := q.LabelNames(ctx, nil); return err }},
		{"metric-names", func(q storage.Querier) error { _, _, err := q.LabelValues(ctx, "__name__", nil); return err }},
		{"instances", func(q storage.Querier) error { _, _, err := q.LabelValues(ctx, "instance", nil); return err }},
	} {
		for _, masked := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/masked=%v", c.name, masked), func(b *testing.B) {
				for b.Loop() {
					inner, err := tsdb.NewBlockQuerier(blk, 0, 7_199_999)
					testutil.Ok(b, err)
					var q storage.Querier = inner
					if masked {
						mq := newMaskedQuerier(inner, snap, labels.EmptyLabels(), 0, 7_199_999)
						mq.chunks, err = tsdb.NewBlockChunkQuerier(blk, 0, 7_199_999)
						testutil.Ok(b, err)
						q = mq
					}
					testutil.Ok(b, c.do(q))
					testutil.Ok(b, q.Close())
				}
			})
		}
	}
}
