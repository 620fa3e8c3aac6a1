package rewriter

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// BenchmarkDeleter streams a 10,000-series block (2h at 15s) through the deleter with 5% of its
// series deleted whole and 10% for 50 minutes: the cost of one job without the bucket transfers.
func BenchmarkDeleter(b *testing.B) {
	var series []labels.Labels
	for i := 0; i < 10_000; i++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api",
			"instance", fmt.Sprintf("i-%d", i%50), "user_id", fmt.Sprint(i/50), "status", fmt.Sprint(200+i%10)))
	}
	meta, src, err := synth.Write(context.Background(), b.TempDir(), synth.Block{Series: series, MinTime: t0, MaxTime: t0 + 7_200_000, Step: 15_000})
	testutil.Ok(b, err)
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(t0) }))
	s1, e1 := int64(tombstones.BeginningOfTime), t0+7_200_000
	whole, err := store.Build(tombstones.Spec{Selectors: []string{`{user_id=~"1[0-9]"}`}, Start: &s1, End: &e1})
	testutil.Ok(b, err)
	s2, e2 := t0+1_800_000, t0+4_800_000
	part, err := store.Build(tombstones.Spec{Selectors: []string{`{status="204"}`}, Start: &s2, End: &e2})
	testutil.Ok(b, err)
	applied := []*tombstones.Tombstone{whole, part}
	ix, err := tombstones.NewIndex(applied, nil)
	testutil.Ok(b, err)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		work := b.TempDir()
		d := &deleter{logger: slog.New(slog.DiscardHandler), limits: Limits{BatchSeries: 1000}, ix: ix, applied: applied,
			ext: meta.ExternalLabels(), progress: func(int, int64) {}}
		st, _, err := d.rewrite(context.Background(), src, filepath.Join(work, "out"), nil)
		testutil.Ok(b, err)
		if st.seriesOut != 9_500 {
			b.Fatalf("series out %d", st.seriesOut)
		}
	}
}

// BenchmarkRun runs a whole job in process, as `lethe-rewriter run --threshold=0
// --batch.series=10000` does, on a fresh copy (not timed) of the FILESYSTEM bucket in the
// directory LETHE_REWRITER_BENCH_BUCKET, such as a template the e2e BenchmarkRewrite keeps under
// LETHE_REWRITE_BENCH_CACHE: the way to profile the rewriter on issue 16's blocks with -cpuprofile
// (the run's samples carry the label phase=run, for pprof's -tagfocus, which leaves the copies
// out). Without the variable it is skipped.
func BenchmarkRun(b *testing.B) {
	tmpl := os.Getenv("LETHE_REWRITER_BENCH_BUCKET")
	if tmpl == "" {
		b.Skip("LETHE_REWRITER_BENCH_BUCKET is not set")
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		testutil.Ok(b, os.CopyFS(filepath.Join(dir, "bucket"), os.DirFS(tmpl)))
		testutil.Ok(b, os.Mkdir(filepath.Join(dir, "tmp"), 0o755))
		syscall.Sync()
		bkt, err := filesystem.NewBucket(filepath.Join(dir, "bucket"))
		testutil.Ok(b, err)
		r := NewRunner(bkt, tombstones.NewStore(bkt, nil), slog.New(slog.DiscardHandler), nil, Config{
			Limits: Limits{BatchSeries: 10_000}, TmpDir: filepath.Join(dir, "tmp"), Owner: "bench", LeaseTTL: 10 * time.Minute,
			CheckpointEvery: 5 * time.Minute, DeleteDelay: 48 * time.Hour,
		})
		b.StartTimer()
		var rep *Report
		pprof.Do(context.Background(), pprof.Labels("phase", "run"), func(ctx context.Context) {
			rep, err = r.Run(ctx)
		})
		testutil.Ok(b, err)
		if len(rep.Rewritten) != 1 {
			b.Fatalf("rewrote %d blocks, want 1", len(rep.Rewritten))
		}
	}
}
