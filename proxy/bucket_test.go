package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/internal/synth"
)

// TestBucketBlocksRunFollowsTheBucket checks that Run picks up a block uploaded after the start,
// keeps running through a failing bucket, and returns when its context ends.
func TestBucketBlocksRunFollowsTheBucket(t *testing.T) {
	ctx := context.Background()
	bkt := &flakyBucket{Bucket: objstore.NewInMemBucket()}
	blocks := NewBucketBlocks(bkt, t.TempDir(), slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	t.Cleanup(func() { testutil.Ok(t, blocks.Close()) })
	served := func() int {
		blocks.mu.RLock()
		defer blocks.mu.RUnlock()
		return len(blocks.blocks)
	}
	// waitServed polls, bounded in count, until the blocks served are want.
	waitServed := func(want int) {
		t.Helper()
		for i := 0; i < 2000 && served() != want; i++ {
			time.Sleep(5 * time.Millisecond)
		}
		testutil.Equals(t, want, served())
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- blocks.Run(runCtx, 10*time.Millisecond) }()

	upload := func(i int64) {
		_, err := synth.Upload(ctx, bkt, t.TempDir(), synth.Block{
			Series:  []labels.Labels{labels.FromStrings("__name__", "up", "job", fmt.Sprint(i))},
			MinTime: t0 + i*7_200_000, MaxTime: t0 + (i+1)*7_200_000, Step: 60_000,
			Value: func(int, int64) float64 { return 1 },
		})
		testutil.Ok(t, err)
	}
	upload(0)
	waitServed(1)

	// A bucket that fails keeps the blocks served; when it is back, the next block comes.
	bkt.down.Store(true)
	upload(1)
	for i := 0; i < 5; i++ {
		time.Sleep(10 * time.Millisecond)
		testutil.Equals(t, 1, served())
	}
	bkt.down.Store(false)
	waitServed(2)

	cancel()
	testutil.Ok(t, <-done)
}
