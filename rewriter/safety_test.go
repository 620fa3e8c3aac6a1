package rewriter

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/objfault"
	"github.com/lethe-project/lethe/tombstones"
)

// withoutSamples returns the samples of before less those of the series whose labels contain
// match, from mint to maxt.
func withoutSamples(before map[string][]int64, match string, mint, maxt int64) map[string][]int64 {
	out := map[string][]int64{}
	for s, ts := range before {
		for _, x := range ts {
			if strings.Contains(s, match) && x >= mint && x <= maxt {
				continue
			}
			out[s] = append(out[s], x)
		}
	}
	return out
}

// TestRunDoesNotFinishWithAWithdrawnChild: the new block of a job was withdrawn (marked as the
// duplicate of another rewrite), and its source is live again. The next run must not take the
// marked block for "already uploaded" and mark the source with it: every sample would be gone.
func TestRunDoesNotFinishWithAWithdrawnChild(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	before := samples(t, f.bkt)
	tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	rep, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Rewritten))
	// As two workers with different tombstone sets left it: each withdrew its own child.
	for _, src := range f.ids {
		testutil.Ok(t, f.bkt.Delete(ctx, path.Join(src.String(), block.DeletionMarkFilename)))
		child := ChildID(src, []ulid.ULID{tb.ID})
		testutil.Ok(t, block.MarkForDeletion(ctx, f.bkt, child, f.now, "lethe-rewriter: duplicate child of "+src.String()))
	}
	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(l.Blocks))

	_, err = f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	l, err = block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(l.Blocks), "live blocks after the run")
	checkReplacements(t, f.bkt)
	testutil.Equals(t, withoutSamples(before, `user_id="1"`, tombstones.BeginningOfTime, t0+10*3_600_000), samples(t, f.bkt))
}

// TestRunKeepsUploadsOfOtherWorkers: a partial upload whose worker still holds its lease (another
// --shard, a retried pod) is not this run's to clean; once its lease is gone and it is older than
// the bound, it is.
func TestRunKeepsUploadsOfOtherWorkers(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	other := ChildID(f.ids[0], []ulid.ULID{ulid.MustParse("01M86065CWNBFDYWAT4K034EY4")})
	partial := []string{path.Join(other.String(), "chunks", "000001"), path.Join(other.String(), block.IndexFilename)}
	for _, n := range partial {
		testutil.Ok(t, f.bkt.Upload(ctx, n, strings.NewReader("being uploaded")))
	}
	rec, err := json.Marshal(map[string]any{"block": other, "source": f.ids[0], "started": f.now.Add(-time.Minute)})
	testutil.Ok(t, err)
	testutil.Ok(t, f.bkt.Upload(ctx, uploadRecord(other), strings.NewReader(string(rec))))
	lease, err := json.Marshal(lease{Owner: "other-pod", Expires: f.now.Add(5 * time.Minute)})
	testutil.Ok(t, err)
	testutil.Ok(t, f.bkt.Upload(ctx, leaseName(f.ids[0]), strings.NewReader(string(lease))))

	rep, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, []ulid.ULID{f.ids[0]}, rep.Leased)
	for _, n := range append(partial, uploadRecord(other)) {
		ok, err := f.bkt.Exists(ctx, n)
		testutil.Ok(t, err)
		testutil.Assert(t, ok, "%s of a live worker's upload was deleted", n)
	}

	// An hour later the lease has expired: the upload is stale and goes.
	f.now = f.now.Add(time.Hour)
	_, err = f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	for _, n := range append(partial, uploadRecord(other)) {
		ok, err := f.bkt.Exists(ctx, n)
		testutil.Ok(t, err)
		testutil.Assert(t, !ok, "%s of a stale upload was left", n)
	}
}

// TestRunRechecksCancellationsBeforeTheMark: a cancellation that becomes visible while a job runs
// (written inside the undelete window by a slow or skewed client) stops the job before it marks
// its source: the cancelled tombstone is never applied.
func TestRunRechecksCancellationsBeforeTheMark(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	before := samples(t, f.bkt)
	tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	fb := objfault.New(f.bkt)
	p := fb.Add(objfault.Fault{Op: objfault.OpUpload, Name: regexp.MustCompile(`^[0-9A-Z]{26}/meta\.json$`), Nth: 1, Kind: objfault.KindPause, After: true})
	r := NewRunner(fb, f.store, slog.New(slog.DiscardHandler), nil, withDefaults(t, Config{Threshold: 0.05}))
	type result struct {
		rep *Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := r.Run(ctx)
		done <- result{rep, err}
	}()
	select {
	case <-p.Reached():
	case res := <-done:
		t.Fatalf("the run ended before its first upload: %v", res.err)
	case <-time.After(time.Minute):
		t.Fatal("the run never uploaded a new block")
	}
	inWindow := tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return f.now.Add(-24 * time.Hour).Add(30 * time.Minute) }))
	_, err := inWindow.Cancel(ctx, tb.ID, "undo", "test")
	testutil.Ok(t, err)
	p.Resume()
	var res result
	select {
	case res = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the run did not end")
	}
	testutil.Ok(t, res.err)
	testutil.Equals(t, 0, len(res.rep.Rewritten))
	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	for _, id := range f.ids {
		ok, err := f.bkt.Exists(ctx, path.Join(id.String(), block.DeletionMarkFilename))
		testutil.Ok(t, err)
		testutil.Assert(t, !ok, "source %s was marked for a cancelled tombstone", id)
	}
	testutil.Equals(t, f.ids, []ulid.ULID{l.Blocks[0].ULID, l.Blocks[1].ULID})
	testutil.Equals(t, before, samples(t, f.bkt))
	set, err := f.store.Sync(ctx)
	testutil.Ok(t, err)
	e, _ := set.Get(tb.ID)
	testutil.Equals(t, tombstones.StateCancelled, e.State(f.now))
	testutil.Assert(t, e.Applied == nil, "a cancelled tombstone was recorded applied")
}

// TestRunDoesNotRecordAppliedPastAnUnreadableMark: a replaced block whose deletion mark cannot be
// read may still be there; its tombstone is not recorded applied, and the run says so. A mark
// that does not decode (cut short on a bucket whose uploads are not atomic) is written again,
// naming the block's live rewrite, and the tombstone waits until that block is gone too.
func TestRunDoesNotRecordAppliedPastAnUnreadableMark(t *testing.T) {
	for _, corrupt := range []bool{false, true} {
		t.Run(fmt.Sprintf("mark cut short: %v", corrupt), func(t *testing.T) {
			f := newFixture(t, 4)
			ctx := context.Background()
			tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
			rep, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
			testutil.Ok(t, err)
			mark := path.Join(f.ids[0].String(), block.DeletionMarkFilename)
			var bkt objstore.Bucket = f.bkt
			if corrupt {
				testutil.Ok(t, f.bkt.Upload(ctx, mark, strings.NewReader("{not json")))
			} else {
				fb := objfault.New(f.bkt)
				fb.Add(objfault.Fault{Op: objfault.OpGet, Name: regexp.MustCompile("^" + regexp.QuoteMeta(mark) + "$"), Kind: objfault.KindError})
				bkt = fb
			}
			f.now = f.now.Add(49 * time.Hour)
			rep, err = NewRunner(bkt, f.store, slog.New(slog.DiscardHandler), nil, withDefaults(t, Config{Threshold: 0.05, DeleteDelay: 48 * time.Hour, RetryBackoff: time.Millisecond})).Run(ctx)
			if corrupt {
				testutil.Ok(t, err)
				m, err := block.ReadDeletionMark(ctx, f.bkt, f.ids[0])
				testutil.Ok(t, err)
				testutil.Equals(t, markDetails(ChildID(f.ids[0], []ulid.ULID{tb.ID}).String(), []ulid.ULID{tb.ID}), m.Details)
			} else {
				testutil.NotOk(t, err, "an unreadable deletion mark was skipped")
				testutil.Assert(t, strings.Contains(err.Error(), f.ids[0].String()), "the error does not name the block: %v", err)
			}
			if rep != nil {
				testutil.Equals(t, 0, len(rep.Applied))
			}
			set, err := f.store.Sync(ctx)
			testutil.Ok(t, err)
			e, _ := set.Get(tb.ID)
			testutil.Equals(t, tombstones.StateDue, e.State(f.now))
			checkReplacements(t, f.bkt)
		})
	}
}

// checkReplacements fails the test if a block lethe marked has no complete live replacement: its
// deletion mark names a block that is live and whole (every file of its meta.json in the bucket,
// at its size), or one that was itself replaced so, or says that nothing survived.
func checkReplacements(t *testing.T, bkt objstore.Bucket) {
	t.Helper()
	checkReplacementsOf(t, bkt, false)
}

// checkReplacementsOf is checkReplacements; with partialMarks, a mark that does not decode (an
// injected partial upload) passes if a live, whole rewrite of its block exists.
func checkReplacementsOf(t *testing.T, bkt objstore.Bucket, partialMarks bool) {
	t.Helper()
	ctx := context.Background()
	l, err := block.List(ctx, bkt)
	testutil.Ok(t, err)
	for _, id := range l.Marked {
		m, err := block.ReadDeletionMark(ctx, bkt, id)
		if err != nil && partialMarks && !bkt.IsObjNotFoundErr(errors.Cause(err)) {
			found := false
			for _, b := range l.Blocks {
				found = found || (rewrittenFrom(b, id) && complete(ctx, bkt, b) == nil)
			}
			testutil.Assert(t, found, "block %s has a mark that does not decode and no whole rewrite: %v", id, err)
			continue
		}
		testutil.Ok(t, err)
		if strings.HasPrefix(m.Details, "lethe-rewriter: duplicate") || strings.HasPrefix(m.Details, "lethe-rewriter: withdrawn") {
			continue
		}
		cur := id
		for depth := 0; ; depth++ {
			testutil.Assert(t, depth < 10, "the replacements of %s do not end", id)
			m, err := block.ReadDeletionMark(ctx, bkt, cur)
			if bkt.IsObjNotFoundErr(err) {
				meta, err := block.ReadMeta(ctx, bkt, cur)
				testutil.Ok(t, err, "block %s replaced by %s, which is not a block", id, cur)
				testutil.Ok(t, complete(ctx, bkt, meta), "block %s replaced by %s", id, cur)
				break
			}
			testutil.Ok(t, err)
			next, ok := replacement(m)
			testutil.Assert(t, ok, "block %s marked without a replacement: %q", cur, m.Details)
			if next == (ulid.ULID{}) {
				break // Nothing survived the tombstones.
			}
			cur = next
		}
	}
}

// TestRunWithdrawsRewritesOfCancelledTombstones: a worker uploaded its new blocks and died before
// the marks; then the tombstone was cancelled. No job plans the sources again (nothing is due),
// so the next run itself withdraws the new blocks, which would otherwise stay beside their
// sources, holding the same series.
func TestRunWithdrawsRewritesOfCancelledTombstones(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	before := samples(t, f.bkt)
	tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	fb := objfault.New(f.bkt)
	fb.Add(objfault.Fault{Op: objfault.OpUpload, Name: deletionMarkObject, Kind: objfault.KindError})
	rep, err := NewRunner(fb, f.store, slog.New(slog.DiscardHandler), nil, withDefaults(t, Config{Threshold: 0.05, Retries: 1})).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Bad))
	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 4, len(l.Blocks), "the new blocks are uploaded beside their sources")

	inWindow := tombstones.NewStore(f.bkt, nil, tombstones.WithClock(func() time.Time { return f.now.Add(-24 * time.Hour).Add(30 * time.Minute) }))
	_, err = inWindow.Cancel(ctx, tb.ID, "undo", "test")
	testutil.Ok(t, err)
	_, err = f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	l, err = block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, f.ids, []ulid.ULID{l.Blocks[0].ULID, l.Blocks[1].ULID})
	testutil.Equals(t, 2, len(l.Blocks))
	checkNoOverlap(t, f.bkt)
	testutil.Equals(t, before, samples(t, f.bkt))
}

// TestRunRepairsAMarkNamingAWithdrawnBlock: a source's mark names a new block that was withdrawn
// since (two workers wrote the mark at the same moment, each read back its own). The source's
// data would go with the delete delay; the next run removes the mark and replaces the source
// again.
func TestRunRepairsAMarkNamingAWithdrawnBlock(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	before := samples(t, f.bkt)
	tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	_, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	child := ChildID(f.ids[0], []ulid.ULID{tb.ID})
	testutil.Ok(t, block.MarkForDeletion(ctx, f.bkt, child, f.now, withdrawnPrefix+"duplicate child of "+f.ids[0].String()))

	_, err = f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	checkReplacements(t, f.bkt)
	checkNoOverlap(t, f.bkt)
	testutil.Equals(t, withoutSamples(before, `user_id="1"`, tombstones.BeginningOfTime, t0+10*3_600_000), samples(t, f.bkt))
}

// TestRunPrefersTheRewriteThatAppliedTheMost: a block that is itself a rewrite (it applied two
// tombstones) has a live child a dead worker left unmarked, which applied a third tombstone; a
// fourth is due since. The run's own rewrite applies the third and the fourth, and must win over
// the dead worker's child, which counts four tombstones with the two its source applied but
// lacks the fourth: the fourth's samples would stay live after a run that exits cleanly.
func TestRunPrefersTheRewriteThatAppliedTheMost(t *testing.T) {
	f := newFixture(t, 6)
	ctx := context.Background()
	before := samples(t, f.bkt)
	end := t0 + 10*3_600_000
	f.tombstone(t, `{user_id="0"}`, tombstones.BeginningOfTime, end, true)
	f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, end, true)
	_, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)

	// A worker that uploads its rewrites and dies before it marks their sources.
	f.tombstone(t, `{user_id="2"}`, tombstones.BeginningOfTime, end, true)
	fb := objfault.New(f.bkt)
	fb.Add(objfault.Fault{Op: objfault.OpUpload, Name: deletionMarkObject, Kind: objfault.KindError})
	rep, err := NewRunner(fb, f.store, slog.New(slog.DiscardHandler), nil, withDefaults(t, Config{Threshold: 0.05, Retries: 1})).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 2, len(rep.Bad))
	l, err := block.List(ctx, f.bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 4, len(l.Blocks), "the dead worker's new blocks beside their sources")

	f.tombstone(t, `{user_id="3"}`, tombstones.BeginningOfTime, end, true)
	_, err = f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	want := before
	for _, u := range []string{"0", "1", "2", "3"} {
		want = withoutSamples(want, `user_id="`+u+`"`, tombstones.BeginningOfTime, end)
	}
	testutil.Equals(t, want, samples(t, f.bkt), "after one run, every due tombstone is applied:\n%s", describeBucket(f.bkt))
	checkReplacements(t, f.bkt)
	checkNoOverlap(t, f.bkt)
}

// TestRunRemovesPartialUploadsOfGoneWorkers: a worker whose upload failed or that was killed
// holds no lease; when its owner is known gone (a process of this host that no longer runs), its
// partial upload goes at once, without waiting out the age bound; a live owner's stays.
func TestRunRemovesPartialUploadsOfGoneWorkers(t *testing.T) {
	for _, gone := range []bool{false, true} {
		t.Run(fmt.Sprintf("owner gone: %v", gone), func(t *testing.T) {
			f := newFixture(t, 4)
			ctx := context.Background()
			f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
			other := ChildID(f.ids[0], []ulid.ULID{ulid.MustParse("01M86065CWNBFDYWAT4K034EY4")})
			partial := path.Join(other.String(), block.IndexFilename)
			testutil.Ok(t, f.bkt.Upload(ctx, partial, strings.NewReader("being uploaded")))
			rec, err := json.Marshal(uploadRecordBody{Block: other, Source: f.ids[0], Started: f.now.Add(-time.Second), Owner: "host/4242"})
			testutil.Ok(t, err)
			testutil.Ok(t, f.bkt.Upload(ctx, uploadRecord(other), strings.NewReader(string(rec))))

			_, err = f.runner(t, Config{Threshold: 0.05, OwnerGone: func(o string) bool { return gone && o == "host/4242" }}).Run(ctx)
			testutil.Ok(t, err)
			for _, n := range []string{partial, uploadRecord(other)} {
				ok, err := f.bkt.Exists(ctx, n)
				testutil.Ok(t, err)
				testutil.Equals(t, !gone, ok, "%s after the run", n)
			}
		})
	}
}

// TestRunRepairsAMarkCutShortThatAnotherMarkNames: a worker killed while it wrote a new block's
// deletion mark (a FILESYSTEM upload is not atomic) leaves it empty, and the source's mark names
// that block. Checking the source's mark first read the empty one and failed every run; the cut
// mark is set right first, whatever the order of the listing.
func TestRunRepairsAMarkCutShortThatAnotherMarkNames(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	before := samples(t, f.bkt)
	tb := f.tombstone(t, `{user_id="1"}`, tombstones.BeginningOfTime, t0+10*3_600_000, true)
	_, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	child := ChildID(f.ids[0], []ulid.ULID{tb.ID})
	testutil.Ok(t, f.bkt.Upload(ctx, path.Join(child.String(), block.DeletionMarkFilename), strings.NewReader("")))

	r := f.runner(t, Config{Threshold: 0.05})
	testutil.Ok(t, r.repairMarks(ctx, &block.Listing{Marked: []ulid.ULID{f.ids[0], child}}))
	ok, err := f.bkt.Exists(ctx, path.Join(child.String(), block.DeletionMarkFilename))
	testutil.Ok(t, err)
	testutil.Assert(t, !ok, "the cut-short mark of %s is still there", child)

	rep, err := f.runner(t, Config{Threshold: 0.05}).Run(ctx)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(rep.Bad), "bad blocks: %v", rep.Bad)
	checkReplacements(t, f.bkt)
	checkNoOverlap(t, f.bkt)
	testutil.Equals(t, withoutSamples(before, `user_id="1"`, tombstones.BeginningOfTime, t0+10*3_600_000), samples(t, f.bkt))
}
