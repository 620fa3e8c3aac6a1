package rewriter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// t0 is 2026-11-01T00:00:00Z; the test blocks are 2h long from there.
const t0 = int64(1793491200000)

type fixture struct {
	bkt   objstore.Bucket
	store *tombstones.Store
	now   time.Time
	ids   []ulid.ULID
}

// newFixture is two 2h blocks in a FILESYSTEM bucket of one series a user and one series with a
// leaked token.
func newFixture(t *testing.T, users int) *fixture {
	t.Helper()
	bkt, err := filesystem.NewBucket(t.TempDir())
	testutil.Ok(t, err)
	series := append(userSeries(users), labels.FromStrings("__name__", "http_requests_total", "job", "api", "token", "s3cr3t-leaked"))
	return fixtureOver(t, bkt, series)
}

// userSeries is one http_requests_total series a user, user_id 0 to users-1.
func userSeries(users int) []labels.Labels {
	series := make([]labels.Labels, 0, users+1)
	for u := 0; u < users; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
	}
	return series
}

// fixtureOver uploads two 2h blocks of series from t0 into bkt, with a tombstone store whose
// clock is the fixture's now, 30 days after t0.
func fixtureOver(t *testing.T, bkt objstore.Bucket, series []labels.Labels) *fixture {
	t.Helper()
	f := &fixture{bkt: bkt, now: time.UnixMilli(t0 + 30*24*3_600_000)}
	f.store = tombstones.NewStore(bkt, nil, tombstones.WithClock(func() time.Time { return f.now }))
	for i := int64(0); i < 2; i++ {
		id, err := synth.Upload(context.Background(), bkt, t.TempDir(), synth.Block{
			Series: series, MinTime: t0 + i*7_200_000, MaxTime: t0 + (i+1)*7_200_000, Step: 60_000,
			External: map[string]string{"cluster": "eu1"},
		})
		testutil.Ok(t, err)
		f.ids = append(f.ids, id)
	}
	return f
}

// tombstone registers a tombstone created a day before now: past its undelete window, before
// its deadline unless overdue is set.
func (f *fixture) tombstone(t *testing.T, sel string, start, end int64, overdue bool) *tombstones.Tombstone {
	t.Helper()
	created := f.now.Add(-24 * time.Hour)
	store := tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return created }))
	undelete, wait := time.Hour, 14*24*time.Hour
	if overdue {
		wait = 2 * time.Hour
	}
	tb, err := store.Add(context.Background(), tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end, UndeleteWindow: &undelete, MaxWait: &wait})
	testutil.Ok(t, err)
	return tb
}

func (f *fixture) runner(t *testing.T, cfg Config) *Runner {
	t.Helper()
	if cfg.TmpDir == "" {
		cfg.TmpDir = t.TempDir()
	}
	if cfg.Owner == "" {
		cfg.Owner = "test"
	}
	return NewRunner(f.bkt, f.store, slog.New(slog.DiscardHandler), nil, cfg)
}

// samples reads every live block of the bucket with Prometheus' tsdb package and returns, per
// series, its sample timestamps.
func samples(t *testing.T, bkt objstore.Bucket) map[string][]int64 {
	t.Helper()
	l, err := block.List(context.Background(), bkt)
	testutil.Ok(t, err)
	out := map[string][]int64{}
	for _, m := range l.Blocks {
		for s, ts := range blockSamples(t, bkt, m.ULID) {
			out[s] = append(out[s], ts...)
		}
	}
	return out
}

// blockSamples reads one block with Prometheus' tsdb package and returns, per series, its sample
// timestamps.
func blockSamples(t *testing.T, bkt objstore.Bucket, id ulid.ULID) map[string][]int64 {
	t.Helper()
	out := map[string][]int64{}
	dir := filepath.Join(t.TempDir(), id.String())
	testutil.Ok(t, block.Download(context.Background(), bkt, id, dir))
	b, err := tsdb.OpenBlock(slog.New(slog.DiscardHandler), dir, nil, nil)
	testutil.Ok(t, err)
	q, err := tsdb.NewBlockQuerier(b, math.MinInt64, math.MaxInt64)
	testutil.Ok(t, err)
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	var it chunkenc.Iterator
	for ss.Next() {
		s := ss.At()
		it = s.Iterator(it)
		for it.Next() != chunkenc.ValNone {
			out[s.Labels().String()] = append(out[s.Labels().String()], it.AtT())
		}
		testutil.Ok(t, it.Err())
	}
	testutil.Ok(t, ss.Err())
	testutil.Ok(t, q.Close())
	testutil.Ok(t, b.Close())
	return out
}

func TestPlanDecisions(t *testing.T) {
	f := newFixture(t, 40)
	ctx := context.Background()
	// 1 user of 41 series over one hour of the first block: about 1.2% of it.
	small := f.tombstone(t, `{user_id="1"}`, t0, t0+3_600_000-1, false)
	p, err := f.runner(t, Config{Threshold: 0.05}).PlanOnly(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(p.Jobs))
	j := p.Jobs[0]
	testutil.Equals(t, f.ids[0], j.Block)
	testutil.Equals(t, DecisionSkip, j.Decision)
	testutil.Equals(t, []ulid.ULID{small.ID}, j.Tombstones)
	testutil.Equals(t, 1, j.SeriesAffected)
	testutil.Equals(t, uint64(41), j.Series)
	testutil.Assert(t, j.DeletedShare > 0.011 && j.DeletedShare < 0.013, "share %v", j.DeletedShare)

	// With a lower threshold it is rewritten.
	p, err = f.runner(t, Config{Threshold: 0.01}).PlanOnly(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, DecisionRewrite, p.Jobs[0].Decision)

	// An overdue tombstone forces the rewrite of every block it has data in.
	over := f.tombstone(t, `{user_id="2"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	p, err = f.runner(t, Config{Threshold: 0.05}).PlanOnly(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(p.Jobs))
	for _, j := range p.Jobs {
		testutil.Equals(t, DecisionRewrite, j.Decision, j.Reason)
		testutil.Assert(t, j.Overdue)
	}
	both := []ulid.ULID{small.ID, over.ID}
	slices.SortFunc(both, func(a, b ulid.ULID) int { return a.Compare(b) }) // Same ms: random order.
	testutil.Equals(t, both, p.Jobs[0].Tombstones)
	testutil.Equals(t, []ulid.ULID{over.ID}, p.Jobs[1].Tombstones)

	// Pending tombstones, cancelled ones and ones whose external labels rule the blocks out plan
	// nothing.
	g := newFixture(t, 4)
	undelete := 48 * time.Hour
	start, end := tombstones.BeginningOfTime, t0+10*3_600_000
	_, err = g.store.Add(ctx, tombstones.Spec{Selectors: []string{`{user_id="1"}`}, Start: &start, End: &end, UndeleteWindow: &undelete})
	testutil.Ok(t, err)
	g.tombstone(t, `{cluster="us1", user_id="2"}`, start, end, true)
	p, err = g.runner(t, Config{Threshold: 0}).PlanOnly(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(p.Jobs))
	testutil.Equals(t, 1, len(p.Due))
}

func TestRunRemovesDeletedSamplesOnly(t *testing.T) {
	f := newFixture(t, 8)
	ctx := context.Background()
	before := samples(t, f.bkt)
	// User 3 from 01:00 to 02:59:59.999 (across the block boundary); the token series entirely.
	f.tombstone(t, `{user_id="3"}`, t0+3_600_000, t0+3*3_600_000-1, true)
	f.tombstone(t, `{token="s3cr3t-leaked"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)

	rep, err := f.runner(t, Config{Threshold: 0.05, Limits: Limits{BatchSeries: 3}}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Rewritten))
	testutil.Equals(t, 0, len(rep.Bad))
	testutil.Assert(t, !rep.Stopped)

	// Exactly the deleted samples are gone: compare with the samples before, filtered by hand.
	want := map[string][]int64{}
	for s, ts := range before {
		if strings.Contains(s, "s3cr3t") {
			continue
		}
		for _, x := range ts {
			if strings.Contains(s, `user_id="3"`) && x >= t0+3_600_000 && x <= t0+3*3_600_000-1 {
				continue
			}
			want[s] = append(want[s], x)
		}
	}
	testutil.Equals(t, want, samples(t, f.bkt))

	// The replaced blocks are marked; the new ones carry the contract's meta.json.
	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, f.ids, l.Marked)
	testutil.Equals(t, 2, len(l.Blocks))
	for i, m := range l.Blocks {
		src := f.ids[i]
		testutil.Equals(t, map[string]string{"cluster": "eu1"}, m.Thanos.Labels)
		testutil.Equals(t, int64(0), m.Resolution())
		testutil.Equals(t, RewrittenSources([]ulid.ULID{src}), m.Compaction.Sources)
		testutil.Equals(t, 2, len(m.Compaction.Sources))
		testutil.Equals(t, src, m.Compaction.Sources[0])
		testutil.Equals(t, src, m.Compaction.Parents[0].ULID)
		testutil.Equals(t, rep.Rewritten[i].Block, m.ULID)
		rw := string(m.Thanos.Rewrites)
		testutil.Assert(t, strings.Contains(rw, src.String()) && strings.Contains(rw, "lethe-tombstone-"), rw)
		testutil.Assert(t, !strings.Contains(rw, "user_id") && !strings.Contains(rw, "s3cr3t"), "matchers leaked into meta.json: %s", rw)
		testutil.Equals(t, uint64(8), m.Stats.NumSeries)

		// No byte of the deleted label value survives in any object of the new block.
		testutil.Ok(t, f.bkt.Iter(ctx, m.ULID.String(), func(name string) error {
			rc, err := f.bkt.Get(ctx, name)
			testutil.Ok(t, err)
			b, err := io.ReadAll(rc)
			testutil.Ok(t, err)
			testutil.Ok(t, rc.Close())
			testutil.Assert(t, !bytes.Contains(b, []byte("s3cr3t-leaked")), "%s holds the deleted value", name)
			return nil
		}, objstore.WithRecursiveIter()))
	}

	// A second run has nothing to do; once the delete delay passed, the replaced blocks go and
	// the tombstones are recorded as applied.
	rep, err = f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(rep.Plan.Jobs))
	testutil.Equals(t, 0, len(rep.Applied), "replaced blocks still exist")
	f.now = f.now.Add(49 * time.Hour)
	rep, err = f.runner(t, Config{Threshold: 0.05, DeleteDelay: 48 * time.Hour}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, f.ids, rep.Deleted)
	testutil.Equals(t, 2, len(rep.Applied))
	set, err := f.store.Sync(ctx)
	testutil.Ok(t, err)
	for _, e := range set.Entries {
		testutil.Equals(t, tombstones.StateApplied, e.State(f.now))
	}
	testutil.Equals(t, want, samples(t, f.bkt))
}

func TestRunIsIdempotentAndResumes(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	child := ChildID(f.ids[0], []ulid.ULID{tb.ID})
	testutil.Equals(t, child, ChildID(f.ids[0], []ulid.ULID{tb.ID}))
	testutil.Assert(t, child != ChildID(f.ids[1], []ulid.ULID{tb.ID}))

	// A crash after the upload, before the mark: the child exists, the source is unmarked. The
	// next run finds the child and only marks the source.
	r := f.runner(t, Config{Threshold: 0.05})
	testutil.Ok(t, r.bkt.Upload(ctx, leaseName(f.ids[1]), strings.NewReader(`{"owner":"other","expires":"2099-01-01T00:00:00Z"}`)))
	rep, err := r.Run(ctx)
	testutil.Ok(t, err)
	// The second block was leased by another live worker and left alone.
	testutil.Equals(t, 1, len(rep.Rewritten))
	testutil.Ok(t, f.bkt.Delete(ctx, path.Join(f.ids[0].String(), block.DeletionMarkFilename)))
	testutil.Ok(t, f.bkt.Delete(ctx, leaseName(f.ids[1])))
	metaBefore := readObject(t, f.bkt, path.Join(child.String(), block.MetaFilename))

	rep, err = f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Rewritten))
	testutil.Equals(t, metaBefore, readObject(t, f.bkt, path.Join(child.String(), block.MetaFilename)))
	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(l.Blocks))
	testutil.Equals(t, 2, len(l.Marked))

	// A half-uploaded child (no meta.json) of a failed earlier attempt is overwritten, not
	// duplicated, and an expired lease does not stop the work.
	g := newFixture(t, 4)
	tb = g.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	child = ChildID(g.ids[0], []ulid.ULID{tb.ID})
	testutil.Ok(t, g.bkt.Upload(ctx, path.Join(child.String(), "index"), strings.NewReader("partial")))
	testutil.Ok(t, g.bkt.Upload(ctx, leaseName(g.ids[0]), strings.NewReader(`{"owner":"dead","expires":"2020-01-01T00:00:00Z"}`)))
	rep, err = g.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Rewritten))
	got := samples(t, g.bkt)
	testutil.Equals(t, 4, len(got)) // Users 0, 2, 3 and the token series; user 1 is gone.
	for s := range got {
		testutil.Assert(t, !strings.Contains(s, `user_id="1"`), s)
	}
	l, err = block.List(ctx, g.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(l.Blocks))
	testutil.Equals(t, 0, len(l.Problems))
}

func readObject(t *testing.T, bkt objstore.Bucket, name string) string {
	t.Helper()
	rc, err := bkt.Get(context.Background(), name)
	testutil.Ok(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	testutil.Ok(t, err)
	return string(b)
}

func TestRunStopsAtTheTimeBudget(t *testing.T) {
	f := newFixture(t, 4)
	f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	rep, err := f.runner(t, Config{Threshold: 0.05, Limits: Limits{Deadline: time.Now().Add(-time.Second)}}).Run(context.Background())
	testutil.Ok(t, err)
	testutil.Assert(t, rep.Stopped)
	testutil.Equals(t, 0, len(rep.Rewritten))
	// Nothing was touched.
	l, err := block.List(context.Background(), f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(l.Marked))

	// Rate limits slow the stream: 5 series at 50 series/s take about 0.1s.
	rep, err = f.runner(t, Config{Threshold: 0.05, Limits: Limits{BatchSeries: 1, SeriesPerSecond: 50}}).Run(context.Background())
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Rewritten))
	testutil.Assert(t, rep.Rewritten[0].Seconds >= 0.08, "rewrite took %vs", rep.Rewritten[0].Seconds)
}

func TestRunSkipsBadBlocks(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	// Corrupt the first block's index; the second is rewritten, the first left as it was.
	idx := path.Join(f.ids[0].String(), block.IndexFilename)
	testutil.Ok(t, f.bkt.Upload(ctx, idx, strings.NewReader("garbage")))
	rep, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(rep.Rewritten))
	testutil.Equals(t, 1, len(rep.Bad))
	testutil.Assert(t, strings.Contains(rep.Bad[0], f.ids[0].String()), rep.Bad[0])
	testutil.Equals(t, "garbage", readObject(t, f.bkt, idx))
	exists, err := f.bkt.Exists(ctx, path.Join(f.ids[0].String(), block.DeletionMarkFilename))
	testutil.Ok(t, err)
	testutil.Assert(t, !exists)
}

// copyBucket copies a FILESYSTEM bucket's directory, so that two runs start from the same bytes.
func copyBucket(t *testing.T, from objstore.Bucket) objstore.Bucket {
	t.Helper()
	to, err := filesystem.NewBucket(t.TempDir())
	testutil.Ok(t, err)
	testutil.Ok(t, from.Iter(context.Background(), "", func(name string) error {
		return to.Upload(context.Background(), name, strings.NewReader(readObject(t, from, name)))
	}, objstore.WithRecursiveIter()))
	return to
}

// resumeFixtures returns two buckets with the same 60-user blocks and a tombstone that cuts
// every chunk of some users, the first one already rewritten in one uninterrupted run (whole).
func resumeFixtures(t *testing.T) (f, g *fixture, whole *Report) {
	t.Helper()
	f = newFixture(t, 60)
	f.tombstone(t, `{user_id=~"1.*"}`, t0+1_800_000, t0+3*3_600_000, true)
	g = &fixture{bkt: copyBucket(t, f.bkt), now: f.now, ids: f.ids}
	g.store = tombstones.NewStore(g.bkt, nil, tombstones.WithClock(func() time.Time { return g.now }))
	whole, err := f.runner(t, Config{Threshold: 0.05, Limits: Limits{BatchSeries: 4}}).Run(context.Background())
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(whole.Rewritten))
	return f, g, whole
}

// sameOutput checks that g's rewrite wrote the same objects as f's uninterrupted one.
func sameOutput(t *testing.T, f, g *fixture, whole *Report) {
	t.Helper()
	for _, r := range whole.Rewritten {
		var names []string
		testutil.Ok(t, f.bkt.Iter(context.Background(), r.Block.String(), func(n string) error {
			names = append(names, n)
			return nil
		}, objstore.WithRecursiveIter()))
		testutil.Assert(t, len(names) >= 3)
		for _, n := range names {
			testutil.Equals(t, readObject(t, f.bkt, n), readObject(t, g.bkt, n), "object %s differs", n)
		}
	}
	testutil.Equals(t, samples(t, f.bkt), samples(t, g.bkt))
}

func TestRunResumesInsideABlock(t *testing.T) {
	f, g, whole := resumeFixtures(t)
	ctx := context.Background()

	// Runs with a budget far shorter than one block: each stops inside it and checkpoints.
	var runs, stops int
	for runs = 1; runs <= 60; runs++ {
		rep, err := g.runner(t, Config{Threshold: 0.05, Limits: Limits{BatchSeries: 4, SeriesPerSecond: 200, Deadline: time.Now().Add(60 * time.Millisecond)}}).Run(ctx)
		testutil.Ok(t, err)
		if !rep.Stopped {
			break
		}
		stops++
	}
	testutil.Assert(t, stops >= 2, "only %d runs stopped inside a block", stops)
	testutil.Assert(t, runs <= 60, "did not finish in 60 runs")

	sameOutput(t, f, g, whole)
	// Checkpoints are gone once the jobs are done.
	var state []string
	testutil.Ok(t, g.bkt.Iter(ctx, StatePrefix, func(n string) error {
		state = append(state, n)
		return nil
	}, objstore.WithRecursiveIter()))
	testutil.Equals(t, []string(nil), state)
}

func TestRunCleansPartialUploadsAndDeadLeases(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	// A crashed run of another tombstone set left a half-uploaded child and its record, and a
	// lease of a process that is gone.
	orphan := ChildID(f.ids[0], []ulid.ULID{ulid.MustParse("01M86065CWNBFDYWAT4K034EY4")})
	testutil.Ok(t, f.bkt.Upload(ctx, path.Join(orphan.String(), "index"), strings.NewReader("half")))
	testutil.Ok(t, f.bkt.Upload(ctx, path.Join(orphan.String(), "chunks", "000001"), strings.NewReader("half")))
	testutil.Ok(t, f.bkt.Upload(ctx, uploadRecord(orphan), strings.NewReader(`{}`)))
	testutil.Ok(t, f.bkt.Upload(ctx, leaseName(f.ids[0]), strings.NewReader(`{"owner":"dead-host/42","expires":"2099-01-01T00:00:00Z"}`)))

	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, []ulid.ULID{orphan}, l.Partial)

	r := f.runner(t, Config{Threshold: 0.05, OwnerGone: func(owner string) bool { return owner == "dead-host/42" }})
	rep, err := r.Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Rewritten))
	testutil.Equals(t, 0, len(rep.Bad))
	testutil.Equals(t, 0, len(rep.Leased))
	l, err = block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(l.Partial))
	var state []string
	testutil.Ok(t, f.bkt.Iter(ctx, StatePrefix, func(n string) error {
		state = append(state, n)
		return nil
	}, objstore.WithRecursiveIter()))
	testutil.Equals(t, []string(nil), state)
}

func TestRunBlockLeftEmpty(t *testing.T) {
	f := newFixture(t, 2)
	ctx := context.Background()
	// Everything in the first block goes; the second keeps its samples after 02:00.
	created := f.now.Add(-24 * time.Hour)
	store := tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return created }))
	zero := time.Duration(0)
	start, end := tombstones.BeginningOfTime, t0+7_200_000-1
	_, err := store.Add(ctx, tombstones.Spec{Selectors: []string{`{__name__=~".+"}`}, Force: true, Start: &start, End: &end, UndeleteWindow: &zero, MaxWait: &zero})
	testutil.Ok(t, err)
	rep, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 1, len(rep.Rewritten))
	testutil.Equals(t, 0, rep.Rewritten[0].SeriesOut)
	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	// No empty block is uploaded: the source is only marked.
	testutil.Equals(t, []ulid.ULID{f.ids[1]}, []ulid.ULID{l.Blocks[0].ULID})
	testutil.Equals(t, 1, len(l.Blocks))
	testutil.Equals(t, []ulid.ULID{f.ids[0]}, l.Marked)
	for s, ts := range samples(t, f.bkt) {
		testutil.Assert(t, ts[0] >= t0+7_200_000, "%s kept a sample at %d", s, ts[0])
	}
}

// crashAfterCheckpoint is a bucket whose run "crashes" (its context is cancelled) right after the
// first checkpoint of a job reached the bucket.
type crashAfterCheckpoint struct {
	objstore.Bucket
	cancel context.CancelFunc
	saved  int
}

func (b *crashAfterCheckpoint) Upload(ctx context.Context, name string, r io.Reader, opts ...objstore.ObjectUploadOption) error {
	if err := b.Bucket.Upload(ctx, name, r, opts...); err != nil {
		return err
	}
	if strings.HasSuffix(name, "/checkpoint.json") {
		b.saved++
		b.cancel()
	}
	return nil
}

// TestRunSavesCheckpointsOnTheWay: with --checkpoint.interval, a job saves checkpoints while it
// streams a block, with no time budget; a run that dies after one leaves it for the next, which
// goes on from there and uploads the bytes of an uninterrupted run.
func TestRunSavesCheckpointsOnTheWay(t *testing.T) {
	for _, tc := range []struct {
		name string
		// tamper, if set, changes the first of the checkpoint's objects that object accepts
		// before the rerun.
		object  func(name string) bool
		tamper  func(t *testing.T, b []byte) []byte
		wantLog string
	}{
		{name: "the next run resumes", wantLog: "resuming from a checkpoint"},
		{
			// As after a race of two workers on one job: the index another worker uploaded is
			// shorter than this checkpoint says. It must not be padded with zeros.
			name:    "a checkpoint whose index is short is ignored",
			object:  func(n string) bool { return strings.HasPrefix(path.Base(n), block.IndexFilename+".") },
			tamper:  func(t *testing.T, b []byte) []byte { return b[:len(b)/2] },
			wantLog: "shorter than it says",
		},
		{
			// A run killed while uploading checkpoint.json to a bucket whose uploads are not
			// atomic (FILESYSTEM) leaves it cut short.
			name:    "a checkpoint cut short is ignored",
			object:  func(n string) bool { return path.Base(n) == "checkpoint.json" },
			tamper:  func(t *testing.T, b []byte) []byte { return b[:len(b)/3] },
			wantLog: "ignoring an unreadable checkpoint",
		},
		{
			// A checkpoint.json whose parts stop short of its files' sizes.
			name:   "a checkpoint whose parts do not cover its files is ignored",
			object: func(n string) bool { return path.Base(n) == "checkpoint.json" },
			tamper: func(t *testing.T, b []byte) []byte {
				var cp checkpoint
				testutil.Ok(t, json.Unmarshal(b, &cp))
				testutil.Assert(t, len(cp.Parts) > 0)
				cp.Parts = cp.Parts[:len(cp.Parts)-1]
				b, err := json.Marshal(cp)
				testutil.Ok(t, err)
				return b
			},
			wantLog: "parts do not cover its files",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, g, whole := resumeFixtures(t)
			ctx := context.Background()

			crashCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			crash := &crashAfterCheckpoint{Bucket: g.bkt, cancel: cancel}
			cfg := Config{Threshold: 0.05, Limits: Limits{BatchSeries: 4}, CheckpointEvery: time.Nanosecond, Concurrency: 1}
			_, err := NewRunner(crash, g.store, slog.New(slog.DiscardHandler), nil, withDefaults(t, cfg)).Run(crashCtx)
			testutil.NotOk(t, err, "the run was to die after its first checkpoint")
			testutil.Equals(t, 1, crash.saved)
			l, err := block.List(ctx, g.bkt)
			testutil.Ok(t, err)
			testutil.Equals(t, 2, len(l.Blocks), "a run that died inside its first block left a new block behind")
			var objects []string
			testutil.Ok(t, g.bkt.Iter(ctx, StatePrefix+"jobs/", func(n string) error {
				objects = append(objects, n)
				return nil
			}, objstore.WithRecursiveIter()))
			testutil.Assert(t, slices.ContainsFunc(objects, func(n string) bool { return path.Base(n) == "checkpoint.json" }), "checkpoint objects: %v", objects)
			if tc.tamper != nil {
				i := slices.IndexFunc(objects, tc.object)
				testutil.Assert(t, i >= 0, "no object to tamper with among %v", objects)
				b := tc.tamper(t, []byte(readObject(t, g.bkt, objects[i])))
				testutil.Ok(t, g.bkt.Upload(ctx, objects[i], bytes.NewReader(b)))
			}

			var logs bytes.Buffer
			counted := &countingBucket{Bucket: g.bkt, prefix: StatePrefix + "jobs/"}
			rep, err := NewRunner(counted, g.store, slog.New(slog.NewTextHandler(&logs, nil)), nil, withDefaults(t, cfg)).Run(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 2, len(rep.Rewritten))
			// Each checkpoint uploads what it adds: all of them together hold about one copy of
			// the new blocks' chunks and index, not one per checkpoint.
			var output int64
			for _, r := range rep.Rewritten {
				testutil.Ok(t, g.bkt.Iter(ctx, r.Block.String(), func(n string) error {
					if path.Base(n) != block.MetaFilename {
						output += int64(len(readObject(t, g.bkt, n)))
					}
					return nil
				}, objstore.WithRecursiveIter()))
			}
			t.Logf("checkpoints uploaded %d bytes of parts for %d bytes of new blocks", counted.bytes, output)
			testutil.Assert(t, counted.bytes <= output, "checkpoints uploaded %d bytes for %d bytes of output", counted.bytes, output)
			testutil.Assert(t, strings.Contains(logs.String(), tc.wantLog), "the second run did not log %q:\n%s", tc.wantLog, logs.String())
			testutil.Assert(t, strings.Count(logs.String(), "checkpoint saved") >= 10, "a checkpoint per batch was asked for:\n%s", logs.String())
			sameOutput(t, f, g, whole)
		})
	}
}

// countingBucket counts the bytes uploaded under prefix, checkpoint objects aside.
type countingBucket struct {
	objstore.Bucket
	prefix string
	bytes  int64
}

func (b *countingBucket) Upload(ctx context.Context, name string, r io.Reader, opts ...objstore.ObjectUploadOption) error {
	if strings.HasPrefix(name, b.prefix) && !strings.HasSuffix(name, "/checkpoint.json") {
		raw, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		b.bytes += int64(len(raw))
		r = bytes.NewReader(raw)
	}
	return b.Bucket.Upload(ctx, name, r, opts...)
}

func withDefaults(t *testing.T, cfg Config) Config {
	cfg.TmpDir, cfg.Owner = t.TempDir(), "test"
	return cfg
}

// TestRunLeavesRewrittenBlocksAlone: a deletion in the middle of every chunk leaves chunks whose
// time range spans the hole (as Prometheus' clean_tombstones does, whose series API the oracle
// tests hold lethe to), which chunk metadata alone cannot tell from chunks still holding the
// deleted samples. Once applied, the tombstone must not plan the new blocks again: a second run,
// and a third, rewrite nothing.
func TestRunLeavesRewrittenBlocksAlone(t *testing.T) {
	for _, plain := range []bool{false, true} {
		t.Run(fmt.Sprintf("plain Prometheus blocks: %v", plain), func(t *testing.T) {
			f := newFixture(t, 10)
			ctx := context.Background()
			if plain {
				// Blocks without a thanos section in meta.json, as Prometheus writes them.
				for _, id := range f.ids {
					name := path.Join(id.String(), block.MetaFilename)
					m, err := block.DecodeMeta([]byte(readObject(t, f.bkt, name)))
					testutil.Ok(t, err)
					m.Thanos = nil
					b, err := block.EncodeMeta(m)
					testutil.Ok(t, err)
					testutil.Ok(t, f.bkt.Upload(ctx, name, bytes.NewReader(b)))
				}
			}
			// 2h blocks sampled every minute: one chunk per series and block; cut 30 minutes from each.
			t1 := f.tombstone(t, `{job="api"}`, t0+1_800_000, t0+3_600_000, true)
			t2 := f.tombstone(t, `{job="api"}`, t0+9_000_000, t0+10_800_000, true)
			rep, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
			testutil.Ok(t, err)
			testutil.Equals(t, 2, len(rep.Rewritten))
			after := samples(t, f.bkt)
			for s, ts := range after {
				testutil.Equals(t, 2*120-2*31, len(ts), "samples of %s (two blocks of 120, less two inclusive half hours)", s)
			}
			if plain {
				for _, r := range rep.Rewritten {
					m, err := block.ReadMeta(ctx, f.bkt, r.Block)
					testutil.Ok(t, err)
					testutil.Assert(t, m.Thanos == nil, "a plain block's child got a thanos section")
					testutil.Assert(t, m.Lethe != nil, "no lethe section in %s", r.Block)
					testutil.Equals(t, 1, len(r.Tombstones))
					testutil.Assert(t, r.Tombstones[0] == t1.ID || r.Tombstones[0] == t2.ID)
					testutil.Equals(t, r.Tombstones, m.Lethe.TombstonesApplied)
				}
			}
			for i := 0; i < 2; i++ {
				rep, err = f.runner(t, Config{Threshold: 0}).Run(ctx)
				testutil.Ok(t, err)
				testutil.Equals(t, 0, len(rep.Rewritten), "run %d after the rewrite rewrote %v", i+2, rep.Rewritten)
				for _, j := range rep.Plan.Jobs {
					t.Errorf("run %d planned block %s again: %s (%s)", i+2, j.Block, j.Decision, j.Reason)
				}
			}
			testutil.Equals(t, after, samples(t, f.bkt))
		})
	}
}
