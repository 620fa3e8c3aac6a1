package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/lethe-project/lethe/tombstones"
)

// planThreshold is lethe-rewriter's default --threshold; the proxy does not know the one its
// rewriter runs with.
const planThreshold = 0.05

// PlannedJob is one block's line of lethe-rewriter's plan, as the page shows it.
type PlannedJob struct {
	Block          string
	Series         uint64
	SeriesAffected int
	DeletedShare   float64
	Decision       string
	Reason         string
}

// PlanFunc asks lethe-rewriter's planner, at the given threshold, what it would do about the
// tombstones of set over the bucket's blocks: the jobs and the problems it met.
type PlanFunc func(ctx context.Context, set *tombstones.Set, threshold float64) ([]PlannedJob, []string, error)

// tombstonePlan is what the rewriter's planner says about one tombstone.
type tombstonePlan struct {
	// Unavailable says why there is no plan.
	Unavailable string
	// AsOf is the clock the plan was made at: now, or the end of the undelete window for a
	// tombstone that is still pending.
	AsOf      time.Time
	Pending   bool
	Threshold float64
	Jobs      []PlannedJob
	Problems  []string
}

// plan asks the rewriter's planner what it would do about this tombstone alone. It reads every
// block's meta.json and the index of each block the tombstone may cover, so the page asks for it
// only on request. Only a proxy given a planner (Config.Plan, over the bucket's blocks) has one;
// an upstream's blocks are wherever its own bucket is.
func (pg *page) plan(r *http.Request, set *tombstones.Set, e *tombstones.Entry) *tombstonePlan {
	tp := &tombstonePlan{AsOf: set.At, Threshold: planThreshold}
	if pg.p.cfg.Plan == nil {
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
	jobs, problems, err := pg.p.cfg.Plan(ctx, &tombstones.Set{Entries: []*tombstones.Entry{e}, At: tp.AsOf}, planThreshold)
	if err != nil {
		tp.Unavailable = "the planner failed: " + err.Error()
		return tp
	}
	tp.Jobs, tp.Problems = jobs, problems
	return tp
}
