package rewriter

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"

	"github.com/lethe-project/lethe/tombstones"
)

// TestRunConcurrentWorkers runs three workers at once on one bucket, seeded rounds of them: some
// take the others' leases for gone, some are shards, a tombstone may be added or cancelled
// while they run. After one more clean run the invariants of TestRunInterleavings hold.
func TestRunConcurrentWorkers(t *testing.T) {
	ctx := context.Background()
	before := samples(t, newMemFixture(t, 4).bkt)
	rounds := 24
	if testing.Short() {
		rounds = 6
	}
	for seed := int64(1); seed <= int64(rounds); seed++ {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewSource(seed))
			f := newMemFixture(t, 4)
			all := tombstones.BeginningOfTime
			f.tombstone(t, `{user_id="1"}`, all, t0+10*3_600_000, true)
			want := withoutSamples(before, `user_id="1"`, all, t0+10*3_600_000)
			second := f.tombstone(t, `{user_id="2"}`, all, t0+10*3_600_000, true)
			change := rnd.Intn(3) // 0: nothing; 1: the second tombstone is cancelled; 2: a third is added.
			if change != 1 {
				want = withoutSamples(want, `user_id="2"`, all, t0+10*3_600_000)
			}
			if change == 2 {
				want = withoutSamples(want, `user_id="3"`, all, t0+10*3_600_000)
			}
			var wg sync.WaitGroup
			logs := make([]bytes.Buffer, 3)
			for w := 0; w < 3; w++ {
				cfg := Config{Threshold: 0.05, TmpDir: t.TempDir(), Owner: fmt.Sprintf("w%d", w), Retries: 1}
				if rnd.Intn(2) == 0 {
					cfg.OwnerGone = func(string) bool { return true }
				}
				if rnd.Intn(3) == 0 {
					cfg.Shards, cfg.Shard = 2, rnd.Intn(2)
				}
				r := NewRunner(f.bkt, tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return f.now })), slog.New(slog.NewTextHandler(&logs[w], &slog.HandlerOptions{Level: slog.LevelDebug})), nil, cfg)
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = r.Run(ctx) // A worker may fail; the invariants below may not.
				}()
			}
			switch change {
			case 1:
				inWindow := tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return f.now.Add(-24 * time.Hour).Add(30 * time.Minute) }))
				_, err := inWindow.Cancel(ctx, second.ID, "undo", "test")
				testutil.Ok(t, err)
			case 2:
				f.tombstone(t, `{user_id="3"}`, all, t0+10*3_600_000, true)
			}
			wg.Wait()
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("bucket:\n%s", describeBucket(f.bkt))
					for w := range logs {
						t.Logf("worker %d:\n%s", w, logs[w].String())
					}
				}
			})
			checkReplacements(t, f.bkt)
			rep, err := f.runner(t, Config{Threshold: 0.05, Owner: "final"}).Run(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 0, len(rep.Bad), "bad blocks: %v", rep.Bad)
			checkReplacements(t, f.bkt)
			checkNoOverlap(t, f.bkt)
			if change == 1 {
				// A cancellation written while a worker had already marked its source (after
				// its last read of the tombstones) comes too late: the samples may be gone.
				got := samples(t, f.bkt)
				for s, ts := range want {
					if s == `{__name__="http_requests_total", job="api", user_id="2"}` {
						continue
					}
					testutil.Equals(t, ts, got[s], "samples of %s", s)
				}
				return
			}
			testutil.Equals(t, want, samples(t, f.bkt))
		})
	}
}
