package rewriter

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/tombstones"
)

// TestPendingShowsWhenAndWhere: each pending tombstone comes with when it becomes due, its
// deadline and the blocks that hold samples it covers; due and cancelled ones are not pending.
func TestPendingShowsWhenAndWhere(t *testing.T) {
	f := newFixture(t, 10)
	ctx := context.Background()
	add := func(sel string, start, end int64) *tombstones.Tombstone {
		window, wait := 24*time.Hour, 14*24*time.Hour
		tb, err := f.store.Add(ctx, tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end, UndeleteWindow: &window, MaxWait: &wait, Force: true})
		testutil.Ok(t, err)
		return tb
	}
	both := add(`{user_id="1"}`, math.MinInt64, math.MaxInt64)
	first := add(`{user_id="2"}`, t0, t0+3_600_000)
	otherCluster := add(`{user_id="1",cluster="us1"}`, math.MinInt64, math.MaxInt64)
	nobody := add(`{user_id="nobody"}`, math.MinInt64, math.MaxInt64)
	cancelled := add(`{user_id="3"}`, math.MinInt64, math.MaxInt64)
	_, err := f.store.Cancel(ctx, cancelled.ID, "wrong user", "test")
	testutil.Ok(t, err)
	due := f.tombstone(t, `{user_id="4"}`, math.MinInt64, math.MaxInt64, false)

	set, err := f.store.Sync(ctx)
	testutil.Ok(t, err)
	planner := NewPlanner(f.bkt, slog.New(slog.DiscardHandler), 0.05, nil)
	pending, problems, err := planner.Pending(ctx, set)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{}, problems)
	dueAt, deadline := f.now.Add(24*time.Hour).UTC(), f.now.Add(14*24*time.Hour).UTC()
	want := []Pending{
		{Tombstone: both.ID, Blocks: slices.SortedFunc(slices.Values(f.ids), ulid.ULID.Compare)},
		{Tombstone: first.ID, Blocks: []ulid.ULID{f.ids[0]}},
		{Tombstone: otherCluster.ID, Blocks: []ulid.ULID{}},
		{Tombstone: nobody.ID, Blocks: []ulid.ULID{}},
	}
	slices.SortFunc(want, func(a, b Pending) int { return a.Tombstone.Compare(b.Tombstone) })
	testutil.Equals(t, len(want), len(pending), "%+v", pending)
	for i, w := range want {
		testutil.Equals(t, w.Tombstone, pending[i].Tombstone)
		testutil.Equals(t, w.Blocks, pending[i].Blocks, "blocks of %s", w.Tombstone)
		testutil.Assert(t, pending[i].DueAt.Equal(dueAt), "due at %v, want %v", pending[i].DueAt, dueAt)
		testutil.Assert(t, pending[i].Deadline.Equal(deadline), "deadline %v, want %v", pending[i].Deadline, deadline)
	}

	// The due tombstone is the plan's, as before.
	p, err := planner.Plan(ctx, set)
	testutil.Ok(t, err)
	testutil.Equals(t, []ulid.ULID{due.ID}, p.Due)

	// Once the undelete window has ended, nothing is pending any more.
	f.now = f.now.Add(25 * time.Hour)
	set, err = f.store.Sync(ctx)
	testutil.Ok(t, err)
	pending, _, err = planner.Pending(ctx, set)
	testutil.Ok(t, err)
	testutil.Equals(t, []Pending{}, pending)
}
