package rewriter

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path"
	"slices"
	"strings"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

// replacedByPrefix starts the details of the deletion mark of a block lethe replaced; the
// replacement's ULID, or nothingReplaced, follows.
const replacedByPrefix = "lethe-rewriter: replaced by "

// nothingReplaced is the replacement of a block whose every sample was deleted.
const nothingReplaced = "nothing (every sample deleted)"

// replacement returns the block a deletion mark says replaced its block: the zero ULID when
// nothing survived; false when lethe did not write the mark as a replacement.
func replacement(m *block.DeletionMark) (ulid.ULID, bool) {
	rest, ok := strings.CutPrefix(m.Details, replacedByPrefix)
	if !ok {
		return ulid.ULID{}, false
	}
	if strings.HasPrefix(rest, nothingReplaced) {
		return ulid.ULID{}, true
	}
	id, _, _ := strings.Cut(rest, " ")
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return ulid.ULID{}, false
	}
	return u, true
}

// errCancelled is a job one of whose tombstones was cancelled while it ran.
var errCancelled = errors.New("tombstone cancelled")

// withdrawnPrefix starts the details of the deletion mark of a new block that replaces nothing:
// another worker's replaced its source, or a tombstone it applied was cancelled.
const withdrawnPrefix = "lethe-rewriter: withdrawn: "

// withdrawn reports whether the mark withdrew a new block (or was written so by an earlier
// version of lethe).
func withdrawn(m *block.DeletionMark) bool {
	return strings.HasPrefix(m.Details, withdrawnPrefix) || strings.HasPrefix(m.Details, "lethe-rewriter: duplicate child of ")
}

// deletionMark reads a block's deletion mark; nil if it has none. An unreadable mark is an error.
func (r *Runner) deletionMark(ctx context.Context, id ulid.ULID) (*block.DeletionMark, error) {
	m, err := block.ReadDeletionMark(ctx, r.bkt, id)
	if r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return nil, nil
	}
	if err != nil {
		return nil, errors.Wrapf(err, "read deletion mark of %s", id)
	}
	return m, nil
}

// liveWhole reports whether the block is live and complete, or was replaced so in turn.
func (r *Runner) liveWhole(ctx context.Context, id ulid.ULID) (bool, error) {
	for depth := 0; depth < maxGenerations; depth++ {
		m, err := r.deletionMark(ctx, id)
		if err != nil {
			return false, err
		}
		if m != nil {
			next, ok := replacement(m)
			if !ok {
				return false, nil
			}
			if next == (ulid.ULID{}) {
				return true, nil // Nothing survived its tombstones.
			}
			id = next
			continue
		}
		return r.uploaded(ctx, id)
	}
	return false, nil
}

// replacedWell reports whether the block is marked and its data lives on: the mark names a
// replacement that is live and whole (or replaced so in turn), says that nothing survived, or
// was not written by lethe (a Thanos compactor's, which answers for its output).
func (r *Runner) replacedWell(ctx context.Context, id ulid.ULID) (bool, error) {
	m, err := r.deletionMark(ctx, id)
	if err != nil || m == nil {
		return false, err
	}
	next, ok := replacement(m)
	if !ok {
		// A withdrawn rewrite's data lives on in its source or its source's replacement; a
		// block some other tool marked is that tool's to answer for.
		return withdrawn(m) || !strings.HasPrefix(m.Details, "lethe-rewriter:"), nil
	}
	if next == (ulid.ULID{}) {
		return true, nil
	}
	return r.liveWhole(ctx, next)
}

// child is a live, whole rewrite of a source.
type child struct {
	id      ulid.ULID
	applied []ulid.ULID
}

// children returns the live, whole blocks lethe rewrote from source (their only parent), whose
// tombstones are none of them cancelled in set.
func (r *Runner) children(ctx context.Context, source ulid.ULID, set *tombstones.Set) ([]child, error) {
	l, err := block.List(ctx, r.bkt)
	if err != nil {
		return nil, err
	}
	return r.childrenIn(ctx, l, source, set)
}

// childrenIn is children of the blocks of a listing already made.
func (r *Runner) childrenIn(ctx context.Context, l *block.Listing, source ulid.ULID, set *tombstones.Set) ([]child, error) {
	var out []child
	for _, m := range l.Blocks {
		if !rewrittenFrom(m, source) {
			continue
		}
		applied, err := appliedTo(m)
		if err != nil {
			continue // Not a rewrite lethe can read: not a candidate.
		}
		ok := true
		ids := make([]ulid.ULID, 0, len(applied))
		for id := range applied {
			if e, found := set.Get(id); !found || e.State(set.At) == tombstones.StateCancelled {
				ok = false
			}
			ids = append(ids, id)
		}
		if !ok {
			continue
		}
		if err := complete(ctx, r.bkt, m); err != nil {
			if !errors.Is(err, errIncomplete) {
				return nil, err
			}
			continue
		}
		slices.SortFunc(ids, func(a, b ulid.ULID) int { return a.Compare(b) })
		out = append(out, child{id: m.ULID, applied: ids})
	}
	return out, nil
}

// cancelledOf returns the first of ids cancelled (or gone) in a fresh read of the tombstones.
func (r *Runner) cancelledOf(ctx context.Context, ids []ulid.ULID) (*tombstones.Set, ulid.ULID, error) {
	set, err := r.store.Sync(ctx)
	if err != nil {
		return nil, ulid.ULID{}, errors.Wrap(err, "read tombstones again")
	}
	for _, id := range ids {
		if e, ok := set.Get(id); !ok || e.State(set.At) == tombstones.StateCancelled {
			return set, id, nil
		}
	}
	return set, ulid.ULID{}, nil
}

// replace makes repl (the zero ULID: nothing) the replacement of the job's block and marks the
// block for deletion, unless another worker's replacement wins; it reports whether repl did. It
// never marks the block before repl is whole and live, nor for a tombstone cancelled meanwhile.
//
// Two workers that planned different tombstone sets for one block may both get here. With no
// conditional writes in object storage, each reads the block's mark again after writing it; the
// one whose replacement the mark does not name withdraws its own, and the block's mark only ever
// names a replacement that is live and whole: a withdrawn block is never named, and a named one
// never withdrawn.
func (r *Runner) replace(ctx context.Context, j *Job, repl ulid.ULID, log *slog.Logger) (bool, error) {
	nothing := repl == (ulid.ULID{})
	if !nothing {
		ok, err := r.uploaded(ctx, repl)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, errors.Newf("new block %s is not whole in the bucket; the next run uploads it again", repl)
		}
		m, err := r.deletionMark(ctx, repl)
		if err != nil {
			return false, err
		}
		if m != nil {
			return false, errors.Newf("new block %s was withdrawn meanwhile (%s); the next run starts over", repl, m.Details)
		}
	}
	set, cancelled, err := r.cancelledOf(ctx, j.Tombstones)
	if err != nil {
		return false, err
	}
	if cancelled != (ulid.ULID{}) {
		return false, r.withdrawCancelled(ctx, j, repl, cancelled, log)
	}
	replDetails := markDetails(replName(repl), j.Tombstones)
	for attempt := 0; attempt < 3; attempt++ {
		m, err := r.deletionMark(ctx, j.Block)
		if err != nil {
			return false, err
		}
		if m == nil {
			winner, details, err := r.winner(ctx, j, repl, set)
			if err != nil {
				return false, err
			}
			if err := block.MarkForDeletion(ctx, r.bkt, j.Block, r.now(), details); err != nil {
				return false, err
			}
			log.Debug("marked the block for deletion", "replacement", replName(winner))
			continue // Read the mark again: another worker may have written it at the same time.
		}
		if named, ok := replacement(m); ok && named == repl {
			// Ours, unless another worker withdrew repl before this one's mark overwrote its own.
			if !nothing {
				rm, err := r.deletionMark(ctx, repl)
				if err != nil {
					return false, err
				}
				if rm != nil {
					return false, r.adoptedWithdrawn(ctx, j, repl, set, log)
				}
			}
			// A cancellation that arrived while the mark was written undoes it.
			_, cancelled, err := r.cancelledOf(ctx, j.Tombstones)
			if err != nil {
				log.Warn("cannot read the tombstones again after the mark; keeping it", "err", err)
				return true, r.withdrawSiblings(ctx, j, repl, set, log)
			}
			if cancelled == (ulid.ULID{}) {
				return true, r.withdrawSiblings(ctx, j, repl, set, log)
			}
			if err := r.bkt.Delete(ctx, path.Join(j.Block.String(), block.DeletionMarkFilename)); err != nil {
				return false, errors.Wrapf(err, "undo the deletion mark of %s", j.Block)
			}
			return false, r.withdrawCancelled(ctx, j, repl, cancelled, log)
		}
		well, err := r.replacedWell(ctx, j.Block)
		if err != nil {
			return false, err
		}
		if well {
			if !nothing {
				log.Warn("another rewrite of this block replaced it; withdrawing this one", "other", m.Details)
				if err := block.MarkForDeletion(ctx, r.bkt, repl, r.now(), withdrawnPrefix+"duplicate child of "+j.Block.String()); err != nil {
					return false, err
				}
			}
			return false, nil
		}
		// The mark names a replacement that is gone or withdrawn: repl takes its place.
		log.Warn("the block's deletion mark names a replacement that is not live; this one takes its place", "mark", m.Details)
		if err := block.WriteMarker(ctx, r.bkt, j.Block, block.DeletionMarkFilename, block.DeletionMark{
			ID: j.Block, DeletionTime: m.DeletionTime, Version: 1, Details: replDetails,
		}); err != nil {
			return false, err
		}
	}
	return false, errors.Newf("block %s: its deletion mark keeps changing; the next run checks it again", j.Block)
}

// winner returns the replacement the block's mark is to name, and the mark's details: among repl
// and the other live, whole rewrites of the block, the one that applied the most tombstones (the
// smallest ULID of those), so that two workers that see the same blocks choose the same. Each
// counts every tombstone its meta.json records, those its source applied included: the job's own
// list alone would lose to a sibling that applied fewer of the due ones.
func (r *Runner) winner(ctx context.Context, j *Job, repl ulid.ULID, set *tombstones.Set) (ulid.ULID, string, error) {
	if repl == (ulid.ULID{}) {
		// Nothing survives this job's tombstones: no other rewrite can hold more than nothing.
		return repl, markDetails(replName(repl), j.Tombstones), nil
	}
	cs, err := r.children(ctx, j.Block, set)
	if err != nil {
		return ulid.ULID{}, "", err
	}
	if !slices.ContainsFunc(cs, func(c child) bool { return c.id == repl }) {
		return ulid.ULID{}, "", errors.Newf("new block %s is not a live, whole rewrite of %s any more; the next run checks it again", repl, j.Block)
	}
	best := mostApplied(cs)
	return best.id, markDetails(replName(best.id), best.applied), nil
}

// mostApplied returns the rewrite that applied the most tombstones, the smallest ULID of those.
func mostApplied(cs []child) child {
	best := cs[0]
	for _, c := range cs[1:] {
		if len(c.applied) > len(best.applied) || (len(c.applied) == len(best.applied) && c.id.Compare(best.id) < 0) {
			best = c
		}
	}
	return best
}

// withdrawSiblings withdraws the other live rewrites of the job's block that rank below repl
// (mostApplied), once the block's mark names repl: a dead worker's upload it never adopted, or a
// rewrite of an older plan, would otherwise stay live beside repl until the next run, holding the
// same series and what repl deleted since. A sibling that ranks above repl (uploaded after this
// job chose its winner) is left: its own job names it and withdraws repl. Both workers apply the
// same rule, so they never withdraw each other's. When nothing survives (repl is zero), every
// other rewrite goes.
func (r *Runner) withdrawSiblings(ctx context.Context, j *Job, repl ulid.ULID, set *tombstones.Set, log *slog.Logger) error {
	l, err := block.List(ctx, r.bkt)
	if err != nil {
		return err
	}
	cs, err := r.childrenIn(ctx, l, j.Block, set)
	if err != nil {
		return err
	}
	mine := child{id: repl}
	if i := slices.IndexFunc(cs, func(c child) bool { return c.id == repl }); i >= 0 {
		mine = cs[i]
	}
	for _, m := range l.Blocks {
		if m.ULID == repl || !rewrittenFrom(m, j.Block) {
			continue
		}
		// A live, whole sibling that outranks repl stays; when nothing survives the job's
		// tombstones, none does.
		if i := slices.IndexFunc(cs, func(c child) bool { return c.id == m.ULID }); i >= 0 && repl != (ulid.ULID{}) && mostApplied([]child{mine, cs[i]}).id != repl {
			continue
		}
		log.Info("withdrawing another rewrite of the block, left unadopted", "other", m.ULID.String())
		if err := block.MarkForDeletion(ctx, r.bkt, m.ULID, r.now(), withdrawnPrefix+"duplicate child of "+j.Block.String()); err != nil {
			return err
		}
	}
	return nil
}

// adoptedWithdrawn undoes the block's mark, which names repl, when repl was withdrawn meanwhile:
// a worker that took this one for gone replaced the block with its own rewrite, withdrew repl,
// and this one's mark, written late, overwrote that worker's. The mark names the best live, whole
// rewrite again, or goes when there is none: the block is live again, and the next run decides.
func (r *Runner) adoptedWithdrawn(ctx context.Context, j *Job, repl ulid.ULID, set *tombstones.Set, log *slog.Logger) error {
	cs, err := r.children(ctx, j.Block, set)
	if err != nil {
		return err
	}
	if len(cs) == 0 {
		log.Warn("the new block was withdrawn after this job marked its source; the source is live again")
		if err := r.bkt.Delete(ctx, path.Join(j.Block.String(), block.DeletionMarkFilename)); err != nil && !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
			return errors.Wrapf(err, "undo the deletion mark of %s", j.Block)
		}
		return errors.Newf("new block %s was withdrawn after the mark; the next run starts over", repl)
	}
	best := mostApplied(cs)
	log.Warn("the new block was withdrawn after this job marked its source; naming another worker's rewrite", "replacement", best.id.String())
	return block.WriteMarker(ctx, r.bkt, j.Block, block.DeletionMarkFilename, block.DeletionMark{
		ID: j.Block, DeletionTime: r.now().Unix(), Version: 1, Details: markDetails(best.id.String(), best.applied),
	})
}

// withdrawCancelled marks repl, which applied a cancelled tombstone, as replacing nothing; unless
// another worker of the same job marked the block for it already, before the cancellation
// reached it: then the cancellation came too late, and repl stays.
func (r *Runner) withdrawCancelled(ctx context.Context, j *Job, repl, cancelled ulid.ULID, log *slog.Logger) error {
	if repl != (ulid.ULID{}) {
		m, err := r.deletionMark(ctx, j.Block)
		if err != nil {
			return err
		}
		if m != nil {
			if named, ok := replacement(m); ok && named == repl {
				log.Warn("a tombstone of this job was cancelled after another worker had applied it; keeping the new block", "cancelled", cancelled.String())
				return errors.Wrapf(errCancelled, "tombstone %s", cancelled)
			}
		}
		log.Warn("a tombstone of this job was cancelled; the block stays and the new one is withdrawn", "cancelled", cancelled.String())
		if err := block.MarkForDeletion(ctx, r.bkt, repl, r.now(), withdrawnPrefix+"tombstone "+cancelled.String()+" was cancelled"); err != nil {
			return err
		}
	}
	return errors.Wrapf(errCancelled, "tombstone %s", cancelled)
}

// replName is how a deletion mark names a replacement.
func replName(id ulid.ULID) string {
	if id == (ulid.ULID{}) {
		return nothingReplaced
	}
	return id.String()
}

// withdrawOrphans withdraws live rewrites of marked blocks whose mark names another replacement
// that is live and whole: two workers that wrote the mark at the same time each saw their own.
func (r *Runner) withdrawOrphans(ctx context.Context, l *block.Listing) error {
	var err error
	marked, live := map[ulid.ULID]bool{}, map[ulid.ULID]bool{}
	for _, id := range l.Marked {
		marked[id] = true
	}
	for _, m := range l.Blocks {
		live[m.ULID] = true
	}
	var set *tombstones.Set
	for _, m := range l.Blocks {
		if len(m.Compaction.Parents) != 1 {
			continue
		}
		parent := m.Compaction.Parents[0].ULID
		if !rewrittenFrom(m, parent) {
			continue
		}
		if live[parent] {
			// Not adopted (yet): withdrawn if it applied a tombstone cancelled since, as its
			// worker, gone before the mark, would have done.
			if set == nil {
				if set, err = r.store.Sync(ctx); err != nil {
					return err
				}
			}
			applied, err := appliedTo(m)
			if err != nil {
				continue
			}
			for id := range applied {
				if e, ok := set.Get(id); ok && e.State(set.At) == tombstones.StateCancelled {
					// The listing may be stale: a worker may have marked the source for this
					// block since, before the cancellation reached it. Then it stays.
					pm, err := r.deletionMark(ctx, parent)
					if err != nil {
						return err
					}
					if pm != nil {
						break
					}
					r.logger.Warn("withdrawing a rewrite that applied a cancelled tombstone", "block", m.ULID.String(), "source", parent.String(), "tombstone", id.String())
					if err := block.MarkForDeletion(ctx, r.bkt, m.ULID, r.now(), withdrawnPrefix+"tombstone "+id.String()+" was cancelled"); err != nil {
						return err
					}
					break
				}
			}
			continue
		}
		if !marked[parent] {
			continue
		}
		pm, err := r.deletionMark(ctx, parent)
		if err != nil {
			return err
		}
		if pm == nil {
			continue
		}
		named, ok := replacement(pm)
		if (!ok && !withdrawn(pm)) || (ok && named == m.ULID) {
			continue
		}
		well, err := r.replacedWell(ctx, parent)
		if err != nil {
			return err
		}
		if !well {
			continue
		}
		r.logger.Warn("withdrawing a rewrite its source's deletion mark does not name", "block", m.ULID.String(), "source", parent.String(), "mark", pm.Details)
		if err := block.MarkForDeletion(ctx, r.bkt, m.ULID, r.now(), withdrawnPrefix+"duplicate child of "+parent.String()); err != nil {
			return err
		}
	}
	return nil
}

// repairMarks rewrites the deletion marks lethe wrote that do not decode (cut short by a crash on
// a bucket whose uploads are not atomic), or that name a block since withdrawn (two workers that
// wrote the mark at the same moment). A marked block with live, whole rewrites gets a mark
// naming the one the winner rule picks; a block lethe was rewriting, or one lethe wrote, without
// any loses the mark: it is live again, and the next plan decides. Any other block's mark is left
// to its writer.
func (r *Runner) repairMarks(ctx context.Context, l *block.Listing) error {
	var set *tombstones.Set
	// Marks that do not decode first: another block's mark may name one of their blocks, and
	// whether that block was withdrawn is only known once its own mark is set right.
	marks := map[ulid.ULID]*block.DeletionMark{}
	for _, id := range l.Marked {
		name := path.Join(id.String(), block.DeletionMarkFilename)
		rc, err := r.bkt.Get(ctx, name)
		if r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
			continue
		}
		if err != nil {
			return errors.Wrapf(err, "read deletion mark of %s", id)
		}
		raw, err := io.ReadAll(rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return errors.Wrapf(err, "read deletion mark of %s", id)
		}
		var m block.DeletionMark
		if json.Unmarshal(raw, &m) == nil {
			marks[id] = &m
			continue
		}
		if err := r.repairMark(ctx, id, &set); err != nil {
			return err
		}
	}
	for _, id := range l.Marked {
		m, ok := marks[id]
		if !ok {
			continue
		}
		broken, err := r.namesWithdrawn(ctx, m)
		if err != nil {
			return err
		}
		if !broken {
			continue
		}
		r.logger.Warn("the deletion mark names a withdrawn block", "block", id.String(), "mark", m.Details)
		if err := r.repairMark(ctx, id, &set); err != nil {
			return err
		}
	}
	return nil
}

// repairMark rewrites a block's deletion mark that does not decode or names a withdrawn block
// (see repairMarks); *set is the tombstones, read on first need.
func (r *Runner) repairMark(ctx context.Context, id ulid.ULID, set **tombstones.Set) error {
	name := path.Join(id.String(), block.DeletionMarkFilename)
	if *set == nil {
		s, err := r.store.Sync(ctx)
		if err != nil {
			return err
		}
		*set = s
	}
	cs, err := r.children(ctx, id, *set)
	if err != nil {
		return err
	}
	if len(cs) > 0 {
		best := mostApplied(cs)
		r.logger.Warn("rewriting a deletion mark", "block", id.String(), "replacement", best.id.String())
		return block.WriteMarker(ctx, r.bkt, id, block.DeletionMarkFilename, block.DeletionMark{
			ID: id, DeletionTime: r.now().Unix(), Version: 1, Details: markDetails(best.id.String(), best.applied),
		})
	}
	ours, err := r.bkt.Exists(ctx, path.Join(id.String(), block.NoCompactMarkFilename))
	if err != nil {
		return err
	}
	if !ours {
		meta, err := block.ReadMeta(ctx, r.bkt, id)
		ours = err == nil && len(meta.Compaction.Parents) == 1 && rewrittenFrom(meta, meta.Compaction.Parents[0].ULID)
	}
	if !ours {
		r.logger.Error("a deletion mark that does not decode or names a withdrawn block, on a block lethe did not mark; leaving it", "block", id.String())
		return nil
	}
	r.logger.Warn("removing a deletion mark lethe wrote that does not decode or names a withdrawn block; the block is live again", "block", id.String())
	if err := r.bkt.Delete(ctx, name); err != nil && !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return errors.Wrapf(err, "remove deletion mark of %s", id)
	}
	return nil
}

// namesWithdrawn reports whether a replacement mark names a block that was withdrawn.
func (r *Runner) namesWithdrawn(ctx context.Context, m *block.DeletionMark) (bool, error) {
	named, ok := replacement(m)
	if !ok || named == (ulid.ULID{}) {
		return false, nil
	}
	nm, err := r.deletionMark(ctx, named)
	if err != nil || nm == nil {
		return false, err
	}
	return withdrawn(nm), nil
}
