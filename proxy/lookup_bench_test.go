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
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"

	"github.com/lethe-project/lethe/tombstones"
)

// lookupBenchBlockSpan is the time range of one benchmark block: 2h.
const lookupBenchBlockSpan = 7_200_000

// lookupBenchBlocks writes n consecutive 2h blocks of 100,000 series (200 instances of 500
// series, 74 of them of the tenant t-del; 64 node_cpu_seconds_total series per instance, one of
// them per CPU of mode "steal"), a sample every 10 minutes, and opens them.
func lookupBenchBlocks(b *testing.B, n int) []*tsdb.Block {
	b.Helper()
	dir := b.TempDir()
	var out []*tsdb.Block
	for blk := 0; blk < n; blk++ {
		base := int64(blk) * lookupBenchBlockSpan
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
				for ts := base; ts < base+lookupBenchBlockSpan; ts += 600_000 {
					smp = append(smp, floatSample{t: ts, f: float64(ts)})
				}
				ss = append(ss, storage.NewListSeries(labels.FromStrings(kv...), smp))
			}
		}
		bdir, err := tsdb.CreateBlock(ss, dir, 4*lookupBenchBlockSpan, slog.New(slog.DiscardHandler))
		testutil.Ok(b, err)
		bl, err := tsdb.OpenBlock(slog.New(slog.DiscardHandler), bdir, chunkenc.NewPool(), nil)
		testutil.Ok(b, err)
		b.Cleanup(func() { _ = bl.Close() })
		out = append(out, bl)
	}
	return out
}

// lookupBenchSnapshot holds the tombstones over a window ending at end: {tenant="t-del"}
// over all time, node_cpu_seconds_total{mode="steal"} over [end-1h, end-30m], and 10,000 on
// instances with no series.
func lookupBenchSnapshot(b *testing.B, end int64) *Snapshot {
	b.Helper()
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(end) }))
	specs := []tombstones.Spec{
		{Selectors: []string{`{tenant="t-del"}`}, Start: ptr(math.MinInt64), End: ptr(end + 10_000_000)},
		{Selectors: []string{`node_cpu_seconds_total{mode="steal"}`}, Start: ptr(end - 3_600_000), End: ptr(end - 1_800_000)},
	}
	for i := 0; i < 10_000; i++ {
		specs = append(specs, tombstones.Spec{Selectors: []string{fmt.Sprintf(`{instance="gone-%05d"}`, i)}, Start: ptr(math.MinInt64), End: ptr(end)})
	}
	var ts []*tombstones.Tombstone
	for _, sp := range specs {
		tb, err := store.Build(sp)
		testutil.Ok(b, err)
		ts = append(ts, tb)
	}
	ix, err := tombstones.NewIndex(ts, nil)
	testutil.Ok(b, err)
	return &Snapshot{index: ix, live: ts, sels: newSelectorIndex(ts), hits: &hits{}, metrics: &maskMetrics{
		seriesMasked: prometheus.NewCounter(prometheus.CounterOpts{Name: "masked"}),
		seriesHidden: prometheus.NewCounter(prometheus.CounterOpts{Name: "hidden"}),
	}}
}

// BenchmarkLookupBlocks times the masked look-ups over 1 and 12 such blocks, against the blocks'
// own look-ups (unmasked: a merge of the block queriers), in the two arrangements of the modes:
//
//	bucket       the blocks served as BucketBlocks does: one masked querier per block, merged,
//	             each block remembering its masked look-ups (one look-up before timing fills them)
//	bucket-cold  the same with nothing remembered: the first look-up after the blocks loaded
//	index        one masked querier over the merged blocks, reading samples as series (no chunk
//	             metadata), as in front of an upstream: its cost is the upstream's index work
func BenchmarkLookupBlocks(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1, 12} {
		blocks := lookupBenchBlocks(b, n)
		mint, maxt := int64(0), int64(n)*lookupBenchBlockSpan-1
		snap := lookupBenchSnapshot(b, maxt)
		bb := &BucketBlocks{blocks: map[ulid.ULID]*localBlock{}}
		for _, bl := range blocks {
			bb.blocks[bl.Meta().ULID] = &localBlock{b: bl, ext: labels.EmptyLabels(), lookups: newLookupCache()}
		}
		merged := func() storage.Querier {
			var qs []storage.Querier
			for _, bl := range blocks {
				q, err := tsdb.NewBlockQuerier(bl, mint, maxt)
				testutil.Ok(b, err)
				qs = append(qs, q)
			}
			return storage.NewMergeQuerier(qs, nil, storage.ChainedSeriesMerge)
		}
		arrangements := []struct {
			name    string
			querier func() storage.Querier
		}{
			{"direct", merged},
			{"bucket", func() storage.Querier {
				q, err := bb.Querier(snap, mint, maxt)
				testutil.Ok(b, err)
				return q
			}},
			{"bucket-cold", func() storage.Querier {
				// As the first look-up after the blocks were loaded: nothing remembered yet.
				cold := &BucketBlocks{blocks: map[ulid.ULID]*localBlock{}}
				for id, lb := range bb.blocks {
					cold.blocks[id] = &localBlock{b: lb.b, ext: lb.ext, lookups: newLookupCache()}
				}
				q, err := cold.Querier(snap, mint, maxt)
				testutil.Ok(b, err)
				return q
			}},
			{"index", func() storage.Querier { return newMaskedQuerier(merged(), snap, labels.EmptyLabels(), mint, maxt) }},
		}
		for _, c := range []struct {
			name string
			do   func(q storage.Querier) (int, error)
		}{
			{"labels", func(q storage.Querier) (int, error) { v, _, err := q.LabelNames(ctx, nil); return len(v), err }},
			{"metric-names", func(q storage.Querier) (int, error) {
				v, _, err := q.LabelValues(ctx, "__name__", nil)
				return len(v), err
			}},
			{"instances", func(q storage.Querier) (int, error) {
				v, _, err := q.LabelValues(ctx, "instance", nil)
				return len(v), err
			}},
		} {
			for _, a := range arrangements {
				b.Run(fmt.Sprintf("blocks=%d/%s/%s", n, c.name, a.name), func(b *testing.B) {
					// One look-up before timing, as a dashboard's earlier loads.
					q := a.querier()
					_, err := c.do(q)
					testutil.Ok(b, err)
					testutil.Ok(b, q.Close())
					for b.Loop() {
						q := a.querier()
						got, err := c.do(q)
						testutil.Ok(b, err)
						testutil.Ok(b, q.Close())
						if c.name == "instances" && a.name != "direct" {
							testutil.Equals(b, 200-74, got)
						}
					}
				})
			}
		}
	}
}
