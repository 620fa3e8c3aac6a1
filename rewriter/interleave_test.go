package rewriter

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/objfault"
	"github.com/lethe-project/lethe/tombstones"
)

// newMemFixture is newFixture over an in-memory bucket, with no token series.
func newMemFixture(t *testing.T, users int) *fixture {
	t.Helper()
	return fixtureOver(t, objstore.NewInMemBucket(), userSeries(users))
}

// pausePoint is where a worker waits: a bucket call of its run.
type pausePoint struct {
	name  string
	fault objfault.Fault
}

// pausePoints are the points of a run where another worker may come in between.
var pausePoints = []pausePoint{
	// The plan is made; the first call after it lists the upload records.
	{"after the plan", objfault.Fault{Op: objfault.OpIter, Name: regexp.MustCompile(`^lethe/uploads/$`), Nth: 1, Kind: objfault.KindPause}},
	{"after the lease check", objfault.Fault{Op: objfault.OpUpload, Name: regexp.MustCompile(`^lethe/leases/`), Nth: 1, Kind: objfault.KindPause, After: true}},
	// Chunks are uploaded, the index is next.
	{"during the upload", objfault.Fault{Op: objfault.OpUpload, Name: regexp.MustCompile(`^[0-9A-Z]{26}/index$`), Nth: 1, Kind: objfault.KindPause}},
	{"after the upload", objfault.Fault{Op: objfault.OpUpload, Name: regexp.MustCompile(`^[0-9A-Z]{26}/meta\.json$`), Nth: 1, Kind: objfault.KindPause, After: true}},
	{"before the mark", objfault.Fault{Op: objfault.OpUpload, Name: regexp.MustCompile(`^[0-9A-Z]{26}/deletion-mark\.json$`), Nth: 1, Kind: objfault.KindPause}},
}

// worker is a Runner run in its own goroutine.
type worker struct {
	done chan struct{}
	rep  *Report
	err  error
}

func start(ctx context.Context, r *Runner) *worker {
	w := &worker{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.rep, w.err = r.Run(ctx)
	}()
	return w
}

// reach waits until the worker reaches its pause or ends; it reports whether it paused.
func (w *worker) reach(t *testing.T, p *objfault.Pause) bool {
	t.Helper()
	if p == nil {
		w.wait(t)
		return false
	}
	select {
	case <-p.Reached():
		return true
	case <-w.done:
		return false
	case <-time.After(time.Minute):
		t.Fatal("a worker neither paused nor ended within a minute")
		return false
	}
}

func (w *worker) wait(t *testing.T) {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(time.Minute):
		t.Fatal("a worker did not end within a minute")
	}
}

// TestRunInterleavings runs two workers on one bucket, worker A paused at each point of its run
// while worker B runs to each point of its own (or to its end), then A finishes, then B; with
// the same tombstones, with a tombstone added between their plans, and with one cancelled
// between them; with B honouring A's lease, and with B taking A for gone. After one more clean
// run: no source is marked without a whole, live replacement, no two live blocks hold the same
// series over the same time, and the samples are exactly those no effective tombstone covers.
func TestRunInterleavings(t *testing.T) {
	ctx := context.Background()
	bPoints := append(slices.Clone(pausePoints), pausePoint{name: "the end"})
	var ran, paused int
	// Every fixture holds the same samples.
	before := samples(t, newMemFixture(t, 4).bkt)
	for _, tombs := range []string{"same tombstones", "a tombstone added between the plans", "a tombstone cancelled between the plans"} {
		for _, leaseGone := range []bool{false, true} {
			if testing.Short() && !leaseGone {
				continue // -short: only the worker that takes the other for gone, where races are.
			}
			for _, pa := range pausePoints {
				for _, pb := range bPoints {
					name := fmt.Sprintf("%s/B takes A for gone: %v/A %s/B to %s", tombs, leaseGone, pa.name, pb.name)
					t.Run(name, func(t *testing.T) {
						f := newMemFixture(t, 4)
						all := tombstones.BeginningOfTime
						f.tombstone(t, `{user_id="1"}`, all, t0+10*3_600_000, true)
						want := withoutSamples(before, `user_id="1"`, all, t0+10*3_600_000)
						var second *tombstones.Tombstone
						if strings.Contains(tombs, "cancelled") {
							second = f.tombstone(t, `{user_id="2"}`, all, t0+10*3_600_000, true)
						}

						fa := objfault.New(f.bkt)
						pauseA := fa.Add(pa.fault)
						var la, lb bytes.Buffer
						a := NewRunner(fa, tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return f.now })), slog.New(slog.NewTextHandler(&la, nil)), nil,
							Config{Threshold: 0.05, TmpDir: t.TempDir(), Owner: "A", Retries: 1})
						fb := objfault.New(f.bkt)
						var pauseB *objfault.Pause
						if pb.fault.Op != "" {
							pauseB = fb.Add(pb.fault)
						}
						b := NewRunner(fb, tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return f.now })), slog.New(slog.NewTextHandler(&lb, nil)), nil,
							Config{Threshold: 0.05, TmpDir: t.TempDir(), Owner: "B", Retries: 1, OwnerGone: func(o string) bool { return leaseGone && o == "A" }})

						t.Cleanup(func() {
							if t.Failed() {
								t.Logf("bucket:\n%s\nA's log:\n%s\nB's log:\n%s", describeBucket(f.bkt), la.String(), lb.String())
							}
						})
						wa := start(ctx, a)
						testutil.Assert(t, wa.reach(t, pauseA), "A ended before %s: %v", pa.name, wa.err)
						switch {
						case strings.Contains(tombs, "added"):
							f.tombstone(t, `{user_id="2"}`, all, t0+10*3_600_000, true)
							want = withoutSamples(want, `user_id="2"`, all, t0+10*3_600_000)
						case second != nil:
							inWindow := tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return f.now.Add(-24 * time.Hour).Add(30 * time.Minute) }))
							_, err := inWindow.Cancel(ctx, second.ID, "undo", "test")
							testutil.Ok(t, err)
						}
						wb := start(ctx, b)
						if wb.reach(t, pauseB) {
							paused++
						}
						pauseA.Resume()
						wa.wait(t)
						if pauseB != nil {
							pauseB.Resume()
						}
						wb.wait(t)
						if wa.err != nil || wb.err != nil {
							t.Logf("A: %v; B: %v", wa.err, wb.err)
						}
						checkReplacements(t, f.bkt)

						rep, err := f.runner(t, Config{Threshold: 0.05, Owner: "final"}).Run(ctx)
						testutil.Ok(t, err)
						testutil.Equals(t, 0, len(rep.Bad), "bad blocks: %v", rep.Bad)
						checkReplacements(t, f.bkt)
						checkNoOverlap(t, f.bkt)
						testutil.Equals(t, want, samples(t, f.bkt))
						ran++
					})
				}
			}
		}
	}
	t.Logf("interleavings run: %d (B paused at its point in %d of them)", ran, paused)
}

// checkNoOverlap fails the test if two live blocks hold one series over a common time range.
func checkNoOverlap(t *testing.T, bkt objstore.Bucket) {
	t.Helper()
	l, err := block.List(context.Background(), bkt)
	testutil.Ok(t, err)
	series := map[ulid.ULID]map[string]bool{}
	for _, m := range l.Blocks {
		series[m.ULID] = map[string]bool{}
		for s := range blockSamples(t, bkt, m.ULID) {
			series[m.ULID][s] = true
		}
	}
	for i, x := range l.Blocks {
		for _, y := range l.Blocks[i+1:] {
			if !x.Overlaps(y.MinTime, y.MaxTime-1) {
				continue
			}
			for s := range series[x.ULID] {
				testutil.Assert(t, !series[y.ULID][s], "live blocks %s and %s both hold %s over a common time range", x.ULID, y.ULID, s)
			}
		}
	}
}

// describeBucket lists the blocks, their parents and deletion marks, for a failed test's log.
func describeBucket(bkt objstore.Bucket) string {
	ctx := context.Background()
	l, err := block.List(ctx, bkt)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, m := range l.Blocks {
		fmt.Fprintf(&b, "live %s [%d, %d) parents %v\n", m.ULID, m.MinTime, m.MaxTime, m.Compaction.Parents)
	}
	for _, id := range l.Marked {
		dm, err := block.ReadDeletionMark(ctx, bkt, id)
		if err != nil {
			fmt.Fprintf(&b, "marked %s: %v\n", id, err)
			continue
		}
		fmt.Fprintf(&b, "marked %s: %s\n", id, dm.Details)
	}
	fmt.Fprintf(&b, "partial %v problems %v\n", l.Partial, l.Problems)
	return b.String()
}
