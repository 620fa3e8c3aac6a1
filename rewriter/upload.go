package rewriter

import (
	"bytes"
	"context"
	"encoding/json"
	"path"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/block"
)

func uploadRecord(child ulid.ULID) string { return StatePrefix + "uploads/" + child.String() + ".json" }

// upload sends the new block, meta.json last. A record in lethe/uploads/ names the block while
// it is incomplete, so that a later run can clean what a crash left half uploaded.
func (r *Runner) upload(ctx context.Context, dir string, meta *block.Meta, source ulid.ULID) error {
	rec, err := json.Marshal(map[string]any{"block": meta.ULID, "source": source, "started": r.now()})
	if err != nil {
		return err
	}
	if err := r.bkt.Upload(ctx, uploadRecord(meta.ULID), bytes.NewReader(rec)); err != nil {
		return errors.Wrap(err, "record upload")
	}
	if err := block.Upload(ctx, r.bkt, dir, meta); err != nil {
		// Leave no half block behind: without meta.json it is invisible, but it is garbage.
		if derr := block.Delete(context.WithoutCancel(ctx), r.bkt, meta.ULID); derr != nil {
			r.logger.Warn("clean partial upload; the next run retries", "block", meta.ULID.String(), "err", derr)
		}
		return err
	}
	r.atPhase("upload-meta")
	return errors.Wrap(r.bkt.Delete(ctx, uploadRecord(meta.ULID)), "remove upload record")
}

// cleanUploads removes what crashed runs left half uploaded: blocks named in lethe/uploads/ that
// never got their meta.json and that no job of this run will complete.
func (r *Runner) cleanUploads(ctx context.Context, todo []*Job) error {
	current := map[ulid.ULID]bool{}
	for _, j := range todo {
		current[ChildID(j.Block, j.Tombstones)] = true
	}
	var recs []string
	if err := r.bkt.Iter(ctx, StatePrefix+"uploads/", func(name string) error {
		recs = append(recs, name)
		return nil
	}); err != nil {
		return errors.Wrap(err, "list upload records")
	}
	for _, name := range recs {
		child, err := ulid.ParseStrict(strings.TrimSuffix(path.Base(name), ".json"))
		if err != nil {
			continue
		}
		done, err := r.bkt.Exists(ctx, path.Join(child.String(), block.MetaFilename))
		if err != nil {
			return err
		}
		if !done && current[child] {
			continue // This run's job overwrites it.
		}
		if !done {
			if err := block.Delete(ctx, r.bkt, child); err != nil {
				return err
			}
			r.logger.Info("removed a partial upload left by an earlier run", "block", child.String())
		}
		if err := r.bkt.Delete(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// deleteMarked deletes the blocks lethe marked once their mark is older than the delete delay.
func (r *Runner) deleteMarked(ctx context.Context) ([]ulid.ULID, error) {
	l, err := block.List(ctx, r.bkt)
	if err != nil {
		return nil, err
	}
	var deleted []ulid.ULID
	for _, id := range l.Marked {
		m, err := block.ReadDeletionMark(ctx, r.bkt, id)
		if err != nil || !strings.HasPrefix(m.Details, "lethe-rewriter:") {
			continue
		}
		if r.now().Sub(time.Unix(m.DeletionTime, 0)) < r.cfg.DeleteDelay {
			continue
		}
		if err := block.Delete(ctx, r.bkt, id); err != nil {
			return deleted, err
		}
		r.logger.Info("deleted replaced block", "block", id.String())
		deleted = append(deleted, id)
	}
	return deleted, nil
}
