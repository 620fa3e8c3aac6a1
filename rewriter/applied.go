package rewriter

import (
	"context"
	"strings"

	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

// markDetails records in the deletion mark what replaced the block and why.
func markDetails(replacement string, applied []ulid.ULID) string {
	return "lethe-rewriter: replaced by " + replacement + " applying " + strings.Join(ulidStrings(applied), ",")
}

// recordApplied writes the applied record of every due tombstone that no live block holds data of
// any more and whose replaced blocks are gone.
func (r *Runner) recordApplied(ctx context.Context, set *tombstones.Set, first *Plan, rep *Report) ([]ulid.ULID, error) {
	if len(first.Problems) > 0 {
		return nil, nil // A block we cannot read may hold the data.
	}
	// What this run did not finish still holds data.
	done := map[ulid.ULID]bool{}
	children := map[ulid.ULID]bool{}
	for _, rw := range rep.Rewritten {
		done[rw.Source] = true
		children[rw.Block] = true
	}
	pending := map[ulid.ULID]bool{}
	for _, j := range first.Jobs {
		if done[j.Block] {
			continue
		}
		for _, id := range j.Tombstones {
			pending[id] = true
		}
	}
	// Blocks that appeared during the run (a compactor's output, say) are planned too; the
	// blocks the first plan read and this run's own new blocks are not read again.
	later, err := NewPlanner(r.bkt, r.logger, r.cfg.Threshold, r.store.RedactionKey()).plan(ctx, set, func(m *block.Meta) bool {
		return !first.seen[m.ULID] && !children[m.ULID]
	})
	if err != nil {
		return nil, err
	}
	if len(later.Problems) > 0 {
		return nil, nil
	}
	for _, j := range later.Jobs {
		for _, id := range j.Tombstones {
			pending[id] = true
		}
	}
	plan := first
	replaced, err := r.replacedBlocks(ctx)
	if err != nil {
		return nil, err
	}
	var applied []ulid.ULID
	for _, id := range plan.Due {
		if pending[id] {
			continue
		}
		blocks, waiting := replaced[id]
		if waiting && blocks.stillThere {
			continue
		}
		if _, err := r.store.MarkApplied(ctx, id, blocks.ids); err != nil {
			return applied, err
		}
		applied = append(applied, id)
	}
	return applied, nil
}

type replacedSet struct {
	ids        []ulid.ULID
	stillThere bool
}

// replacedBlocks maps each tombstone to the marked blocks lethe replaced applying it.
func (r *Runner) replacedBlocks(ctx context.Context) (map[ulid.ULID]replacedSet, error) {
	l, err := block.List(ctx, r.bkt)
	if err != nil {
		return nil, err
	}
	out := map[ulid.ULID]replacedSet{}
	for _, id := range l.Marked {
		m, err := r.deletionMark(ctx, id)
		if err != nil {
			// It may be a block lethe replaced: its tombstones wait for the next run.
			return nil, err
		}
		if m == nil {
			continue // Deleted since the listing.
		}
		_, list, ok := strings.Cut(m.Details, " applying ")
		if !ok || !strings.HasPrefix(m.Details, "lethe-rewriter:") {
			continue
		}
		for _, s := range strings.Split(list, ",") {
			t, err := ulid.ParseStrict(s)
			if err != nil {
				continue
			}
			rs := out[t]
			rs.ids = append(rs.ids, id)
			rs.stillThere = true
			out[t] = rs
		}
	}
	return out, nil
}
