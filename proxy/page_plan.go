package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/lethe-project/lethe/rewriter"
	"github.com/lethe-project/lethe/tombstones"
)

// planThreshold is lethe-rewriter's default --threshold; the proxy does not know the one its
// rewriter runs with.
const planThreshold = 0.05

// tombstonePlan is what the rewriter's planner says about one tombstone.
type tombstonePlan struct {
	// Unavailable says why there is no plan.
	Unavailable string
	// AsOf is the clock the plan was made at: now, or the end of the undelete window for a
	// tombstone that is still pending.
	AsOf      time.Time
	Pending   bool
	Threshold float64
	Jobs      []*rewriter.Job
	Problems  []string
}

// plan asks the rewriter's planner what it would do about this tombstone alone. It reads every
// block's meta.json and the index of each block the tombstone may cover, so the page asks for it
// only on request. Only a proxy over the bucket's blocks has them; an upstream's blocks are
// wherever its own bucket is.
func (pg *page) plan(r *http.Request, set *tombstones.Set, e *tombstones.Entry) *tombstonePlan {
	tp := &tombstonePlan{AsOf: set.At, Threshold: planThreshold}
	blocks, ok := pg.p.source.(*BucketBlocks)
	if !ok {
		tp.Unavailable = "this proxy reads an upstream, not the bucket's blocks: run lethe-rewriter plan against the bucket instead."
		return tp
	}
	switch e.State(set.At) {
	case tombstones.StateCancelled:
		tp.Unavailable = "cancelled: the rewriter never applies it."
		return tp
	case tombstones.StateApplied:
		tp.Unavailable = "applied: the rewriter has nothing left to do for it."
		return tp
	case tombstones.StatePending:
		// Planned as it will be once due, over the blocks as they are now.
		tp.AsOf, tp.Pending = e.UndeleteUntil, true
	}
	ctx, cancel := context.WithTimeout(r.Context(), pg.p.cfg.QueryTimeout)
	defer cancel()
	planner := rewriter.NewPlanner(blocks.bkt, pg.p.logger, planThreshold, pg.p.mask.store.RedactionKey())
	plan, err := planner.Plan(ctx, &tombstones.Set{Entries: []*tombstones.Entry{e}, At: tp.AsOf})
	if err != nil {
		tp.Unavailable = "the planner failed: " + err.Error()
		return tp
	}
	tp.Jobs, tp.Problems = plan.Jobs, plan.Problems
	return tp
}
