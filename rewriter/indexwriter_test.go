package rewriter

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// prometheusIndex writes, with Prometheus' own index.Writer, the index of the series the index at
// path holds: their labels and chunk references as Prometheus' reader reads them, the symbols
// those labels use and the empty string. An index that differs from it byte for byte has other symbols, series
// entries, postings or tables than Prometheus would write for the same block.
func prometheusIndex(t *testing.T, path string) []byte {
	t.Helper()
	ctx := context.Background()
	ir, err := index.NewFileReader(path, index.DecodePostingsRaw)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, ir.Close()) }()
	type series struct {
		lset  labels.Labels
		metas []chunks.Meta
	}
	var (
		all []series
		// Every index Prometheus writes has the empty string among its symbols (its head's
		// all-postings key), and so does every block compacted from those.
		symbols = map[string]struct{}{"": {}}
		builder labels.ScratchBuilder
	)
	k, v := index.AllPostingsKey()
	p, err := ir.Postings(ctx, k, v)
	testutil.Ok(t, err)
	for p.Next() {
		var metas []chunks.Meta
		testutil.Ok(t, ir.Series(p.At(), &builder, &metas))
		lset := builder.Labels()
		lset.Range(func(l labels.Label) {
			symbols[l.Name], symbols[l.Value] = struct{}{}, struct{}{}
		})
		all = append(all, series{lset, metas})
	}
	testutil.Ok(t, p.Err())

	want := filepath.Join(t.TempDir(), "index")
	iw, err := index.NewWriter(ctx, want)
	testutil.Ok(t, err)
	sorted := make([]string, 0, len(symbols))
	for s := range symbols {
		sorted = append(sorted, s)
	}
	slices.Sort(sorted)
	for _, s := range sorted {
		testutil.Ok(t, iw.AddSymbol(s))
	}
	for i, s := range all {
		testutil.Ok(t, iw.AddSeries(storage.SeriesRef(i+1), s.lset, s.metas...))
	}
	testutil.Ok(t, iw.Close())
	b, err := os.ReadFile(want)
	testutil.Ok(t, err)
	return b
}

// TestIndexIsPrometheusIndex rewrites blocks of floats and native histograms with deletions that
// drop whole series (and with them label values, whole label names and symbols), cut series in
// time, and delete nothing, and compares each new index with the one Prometheus' writer makes for
// the same series.
func TestIndexIsPrometheusIndex(t *testing.T) {
	var floats, hists []labels.Labels
	for i := 0; i < 300; i++ {
		floats = append(floats, labels.FromStrings("__name__", "http_requests_total", "job", "api",
			"instance", fmt.Sprintf("i-%d", i%7), "user_id", fmt.Sprint(i/7), "status", fmt.Sprint(200+i%5)))
	}
	// A label name only the deleted series have, and a value that is also another series' name.
	floats = append(floats, labels.FromStrings("__name__", "http_requests_total", "job", "api", "token", "s3cr3t"),
		labels.FromStrings("__name__", "up", "job", "s3cr3t-job", "instance", "i-1"),
		labels.FromStrings("__name__", "user_id", "job", "api"))
	for i := 0; i < 40; i++ {
		hists = append(hists, labels.FromStrings("__name__", "rpc_seconds", "job", "api", "user_id", fmt.Sprint(i)))
	}
	dir := t.TempDir()
	meta, src, err := synth.Write(context.Background(), dir, synth.Block{Series: floats, Histograms: hists, MinTime: t0, MaxTime: t0 + 7_200_000, Step: 30_000})
	testutil.Ok(t, err)

	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(t0) }))
	whole := func(sel string) tombstones.Spec {
		s, e := int64(tombstones.BeginningOfTime), t0+7_200_000
		return tombstones.Spec{Selectors: []string{sel}, Start: &s, End: &e}
	}
	part := func(sel string) tombstones.Spec {
		s, e := t0+1_800_000, t0+4_800_000
		return tombstones.Spec{Selectors: []string{sel}, Start: &s, End: &e}
	}
	for _, tc := range []struct {
		name  string
		specs []tombstones.Spec
	}{
		{"nothing deleted", nil},
		{"whole series and their symbols", []tombstones.Spec{whole(`{token="s3cr3t"}`), whole(`{job="s3cr3t-job"}`), whole(`{user_id=~"1.|2"}`)}},
		{"a label value left in one name only", []tombstones.Spec{whole(`{__name__="user_id"}`)}},
		{"time ranges", []tombstones.Spec{part(`{status="204"}`), part(`rpc_seconds`)}},
		{"everything but one series", []tombstones.Spec{whole(`{job=~".+", instance!="i-3"}`)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var applied []*tombstones.Tombstone
			for _, s := range tc.specs {
				tb, err := store.Build(s)
				testutil.Ok(t, err)
				applied = append(applied, tb)
			}
			st, out := rewriteDir(t, src, meta.ExternalLabels(), applied, 50)
			testutil.Assert(t, st.seriesOut > 0)
			got, err := os.ReadFile(filepath.Join(out, "index"))
			testutil.Ok(t, err)
			want := prometheusIndex(t, filepath.Join(out, "index"))
			if !bytes.Equal(got, want) {
				t.Fatalf("index differs from Prometheus' writer's: %d bytes vs %d, first difference at byte %d", len(got), len(want), firstDiff(got, want))
			}
			if tc.specs == nil {
				source, err := os.ReadFile(filepath.Join(src, "index"))
				testutil.Ok(t, err)
				testutil.Equals(t, len(source), len(got), "nothing deleted: the index keeps its size")
			}
		})
	}
}

// rewriteDir rewrites the block in src without what applied deletes, in batches of batch series,
// into a new directory, which it returns with the stats.
func rewriteDir(t *testing.T, src string, ext labels.Labels, applied []*tombstones.Tombstone, batch int) (stats, string) {
	t.Helper()
	ix, err := tombstones.NewIndex(applied, nil)
	testutil.Ok(t, err)
	out := filepath.Join(t.TempDir(), "out")
	d := &deleter{logger: slog.New(slog.DiscardHandler), limits: Limits{BatchSeries: batch}, ix: ix, applied: applied,
		ext: ext, progress: func(int, int64) {}}
	st, _, err := d.rewrite(context.Background(), src, out, nil)
	testutil.Ok(t, err)
	return st, out
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestIndexIsPrometheusIndexRandom: random series (label names and values drawn from small sets,
// so that names, values and series come and go together) and random deletions, whole and in
// time; every new index must be the one Prometheus' writer makes for the same series.
func TestIndexIsPrometheusIndexRandom(t *testing.T) {
	names := []string{"a", "b", "c", "job", "zone"}
	for seed := uint64(1); seed <= 12; seed++ {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 20261124))
			seen := map[string]bool{}
			var series []labels.Labels
			for n := 40 + rng.IntN(200); len(series) < n; {
				b := labels.NewScratchBuilder(0)
				b.Add("__name__", fmt.Sprint("m", rng.IntN(4)))
				for _, n := range names {
					if rng.IntN(3) > 0 {
						b.Add(n, fmt.Sprint("v", rng.IntN(1+rng.IntN(30))))
					}
				}
				b.Sort()
				lset := b.Labels()
				if !seen[lset.String()] {
					seen[lset.String()] = true
					series = append(series, lset)
				}
			}
			meta, src, err := synth.Write(context.Background(), t.TempDir(), synth.Block{Series: series, MinTime: t0, MaxTime: t0 + 7_200_000, Step: 60_000})
			testutil.Ok(t, err)
			store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(t0) }))
			var applied []*tombstones.Tombstone
			for i := 0; i < 1+rng.IntN(4); i++ {
				sel := fmt.Sprintf(`{%s="v%d"}`, names[rng.IntN(len(names))], rng.IntN(8))
				start, end := int64(tombstones.BeginningOfTime), t0+7_200_000
				if rng.IntN(2) == 0 {
					start = t0 + rng.Int64N(7_200_000)
					end = start + rng.Int64N(3_600_000)
				}
				tb, err := store.Build(tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end})
				testutil.Ok(t, err)
				applied = append(applied, tb)
			}
			st, out := rewriteDir(t, src, meta.ExternalLabels(), applied, 7)
			t.Logf("%d series: %d dropped, %d chunks re-encoded, %d dropped", len(series), st.seriesDropped, st.chunksRewritten, st.chunksGone)
			if st.seriesOut == 0 {
				return // The runner handles a block left empty (TestRunBlockLeftEmpty).
			}
			got, err := os.ReadFile(filepath.Join(out, "index"))
			testutil.Ok(t, err)
			want := prometheusIndex(t, filepath.Join(out, "index"))
			if !bytes.Equal(got, want) {
				t.Fatalf("%d series, %d dropped: index differs from Prometheus' writer's: %d bytes vs %d, first difference at byte %d",
					len(series), st.seriesDropped, len(got), len(want), firstDiff(got, want))
			}
		})
	}
}
