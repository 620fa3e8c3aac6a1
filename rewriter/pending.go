package rewriter

import (
	"context"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

// Pending is a tombstone still inside its undelete window, which no run applies yet, and the
// blocks it will touch once due.
type Pending struct {
	Tombstone ulid.ULID `json:"tombstone"`
	// DueAt is when its undelete window ends: from then on a run applies it where a block's
	// deleted share reaches the threshold.
	DueAt time.Time `json:"due_at"`
	// Deadline is when a run applies it whatever the threshold.
	Deadline time.Time `json:"deadline"`
	// Blocks are the live blocks holding samples it covers today, sorted. Compactions and new
	// uploads before it is due may change them.
	Blocks []ulid.ULID `json:"blocks"`
}

// Pending returns the pending tombstones of set, sorted by id, each with the live blocks that
// hold samples it covers, found as Plan finds a due tombstone's blocks. Problems are blocks that
// could not be read.
func (p *Planner) Pending(ctx context.Context, set *tombstones.Set) ([]Pending, []string, error) {
	var tombs []*tombstones.Tombstone
	out := []Pending{}
	for _, e := range set.Entries {
		if e.State(set.At) != tombstones.StatePending {
			continue
		}
		tombs = append(tombs, e.Tombstone)
		out = append(out, Pending{Tombstone: e.ID, DueAt: e.UndeleteUntil, Deadline: e.Deadline, Blocks: []ulid.ULID{}})
	}
	problems := []string{}
	if len(tombs) == 0 {
		return out, problems, nil
	}
	slices.SortFunc(out, func(a, b Pending) int { return a.Tombstone.Compare(b.Tombstone) })
	byID := map[ulid.ULID]*Pending{}
	for i := range out {
		byID[out[i].Tombstone] = &out[i]
	}
	ix, err := tombstones.NewIndex(tombs, p.key)
	if err != nil {
		return nil, nil, err
	}
	listing, err := block.List(ctx, p.bkt)
	if err != nil {
		return nil, nil, err
	}
	for _, pr := range listing.Problems {
		problems = append(problems, pr.Err.Error())
	}
	for _, meta := range listing.Blocks {
		cands := candidates(tombs, meta, ix)
		if len(cands) == 0 {
			continue
		}
		job, err := p.planBlock(ctx, meta, cands, ix)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			problems = append(problems, err.Error())
			p.logger.Warn("cannot plan block for pending tombstones", "block", meta.ULID.String(), "err", err)
			continue
		}
		if job == nil {
			continue
		}
		for _, id := range job.Tombstones {
			byID[id].Blocks = append(byID[id].Blocks, meta.ULID)
		}
	}
	for i := range out {
		slices.SortFunc(out[i].Blocks, func(a, b ulid.ULID) int { return a.Compare(b) })
	}
	return out, problems, nil
}
