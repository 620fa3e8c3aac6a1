package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/rewriter"
	"github.com/lethe-project/lethe/tombstones"
)

// promtoolPath returns the pinned promtool binary (toolPath).
func promtoolPath(t *testing.T) string { return toolPath(t, "promtool", "LETHE_PROMTOOL") }

// TestPromtoolReadsRewrittenBlocks: promtool's analysis of a rewritten block runs clean and counts
// what the rewriter left.
func TestPromtoolReadsRewrittenBlocks(t *testing.T) {
	ctx := context.Background()
	bkt, err := filesystem.NewBucket(t.TempDir())
	testutil.Ok(t, err)
	var series []labels.Labels
	for u := 0; u < 10; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "user_id", fmt.Sprint(u)))
	}
	_, err = synth.Upload(ctx, bkt, t.TempDir(), synth.Block{Series: series, MinTime: blockStart, MaxTime: blockStart + 7_200_000, Step: 15_000,
		External: map[string]string{"cluster": "eu1"}})
	testutil.Ok(t, err)
	created := time.UnixMilli(blockStart + 24*3_600_000)
	store := tombstones.NewStore(bkt, nil, tombstones.WithClock(func() time.Time { return created }))
	zero := time.Duration(0)
	start, end := blockStart+1_800_000, blockStart+3_600_000
	_, err = store.Add(ctx, tombstones.Spec{Selectors: []string{`{user_id=~"[0-4]"}`}, Start: &start, End: &end, UndeleteWindow: &zero, MaxWait: &zero})
	testutil.Ok(t, err)
	_, err = store.Add(ctx, tombstones.Spec{Selectors: []string{`{user_id="9"}`}, UndeleteWindow: &zero, MaxWait: &zero})
	testutil.Ok(t, err)

	rep, err := rewriter.NewRunner(bkt, store, slog.New(slog.DiscardHandler), nil, rewriter.Config{Threshold: 0.05, TmpDir: t.TempDir(), Owner: "e2e"}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(rep.Rewritten))

	db := t.TempDir()
	child := rep.Rewritten[0].Block
	testutil.Ok(t, block.Download(ctx, bkt, child, filepath.Join(db, child.String())))
	out, err := exec.Command(promtoolPath(t), "tsdb", "analyze", db, child.String()).CombinedOutput()
	testutil.Ok(t, err, string(out))
	// Nine users left; user 9 and its label value are gone.
	testutil.Assert(t, strings.Contains(string(out), "Total Series: 9"), string(out))
	testutil.Assert(t, !strings.Contains(string(out), `user_id=9`), string(out))
	out, err = exec.Command(promtoolPath(t), "tsdb", "list", db).CombinedOutput()
	testutil.Ok(t, err, string(out))
	testutil.Assert(t, strings.Contains(string(out), child.String()), string(out))
}
