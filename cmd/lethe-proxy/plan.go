package main

import (
	"context"
	"log/slog"

	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/proxy"
	"github.com/lethe-project/lethe/rewriter"
	"github.com/lethe-project/lethe/tombstones"
)

// bucketPlanner lets the deletions page ask lethe-rewriter's planner about a tombstone, over the
// bucket's blocks; main wires it so that the proxy itself does not depend on the rewriter.
func bucketPlanner(bkt objstore.BucketReader, logger *slog.Logger, key *tombstones.RedactionKey) proxy.PlanFunc {
	return func(ctx context.Context, set *tombstones.Set, threshold float64) ([]proxy.PlannedJob, []string, error) {
		plan, err := rewriter.NewPlanner(bkt, logger, threshold, key).Plan(ctx, set)
		if err != nil {
			return nil, nil, err
		}
		return plannedJobs(plan.Jobs), plan.Problems, nil
	}
}

// plannedJobs are the planner's jobs as the page shows them.
func plannedJobs(jobs []*rewriter.Job) []proxy.PlannedJob {
	out := make([]proxy.PlannedJob, 0, len(jobs))
	for _, j := range jobs {
		out = append(out, proxy.PlannedJob{Block: j.Block.String(), Series: j.Series, SeriesAffected: j.SeriesAffected,
			DeletedShare: j.DeletedShare, Decision: j.Decision, Reason: j.Reason})
	}
	return out
}
