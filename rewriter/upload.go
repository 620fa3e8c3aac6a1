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
	rec, err := json.Marshal(uploadRecordBody{Block: meta.ULID, Source: source, Started: r.now(), Owner: r.cfg.Owner})
	if err != nil {
		return err
	}
	if err := r.bkt.Upload(ctx, uploadRecord(meta.ULID), bytes.NewReader(rec)); err != nil {
		return errors.Wrap(err, "record upload")
	}
	// A failed upload is left as it is, with its record: another worker running the same job
	// may have uploaded the same block whole, and its source may be marked for it already. A
	// later run's clean-up removes it once it is stale.
	if err := block.Upload(ctx, r.bkt, dir, meta); err != nil {
		return err
	}
	// Another worker's clean-up, taking this one for gone, may have removed files meanwhile: a
	// block that is not whole must not stay visible.
	if err := complete(ctx, r.bkt, meta); err != nil {
		if errors.Is(err, errIncomplete) {
			if derr := r.bkt.Delete(context.WithoutCancel(ctx), path.Join(meta.ULID.String(), block.MetaFilename)); derr != nil && !r.bkt.IsObjNotFoundErr(errors.Cause(derr)) {
				r.logger.Warn("hide an incomplete new block", "new_block", meta.ULID.String(), "err", derr)
			}
		}
		return errors.Wrap(err, "check the uploaded block")
	}
	r.atPhase("upload-meta")
	// Another worker's clean-up may have removed the record of the finished upload already.
	if err := r.bkt.Delete(ctx, uploadRecord(meta.ULID)); err != nil && !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return errors.Wrap(err, "remove upload record")
	}
	return nil
}

// cleanUploads removes what crashed runs left half uploaded: blocks named in lethe/uploads/ that
// never got a whole meta.json, that no job of this run will complete, and that are stale: no live
// worker holds the lease of their source, and their worker is known gone or started them longer
// ago than Config.StaleUploadAfter. Another shard's or a retried pod's upload in progress stays.
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
		// Done is a meta.json that decodes: a crash while it was written leaves it cut short.
		_, err = block.ReadMeta(ctx, r.bkt, child)
		done, cut := err == nil, errors.Is(err, block.ErrUnreadableMeta)
		if err != nil && !cut && !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
			return err
		}
		if cut {
			// Another worker may have finished the same block and marked its source before this
			// one's crash cut its meta.json short: that replacement must not be deleted.
			marked, err := r.sourceMarked(ctx, name)
			if err != nil {
				return err
			}
			if marked {
				r.logger.Warn("new block's meta.json is cut short and its source is marked: leaving it for an operator", "block", child.String())
				continue
			}
		}
		if !done && current[child] {
			continue // This run's job overwrites it.
		}
		if !done {
			stale, err := r.staleUpload(ctx, name)
			if err != nil {
				return err
			}
			if !stale {
				r.logger.Info("leaving a partial upload another worker may still be writing", "block", child.String())
				continue
			}
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

// uploadRecordBody is what an upload record holds.
type uploadRecordBody struct {
	Block   ulid.ULID `json:"block"`
	Source  ulid.ULID `json:"source"`
	Started time.Time `json:"started"`
	// Owner is the worker that writes the block (Config.Owner); records written before it was
	// recorded have none.
	Owner string `json:"owner,omitempty"`
}

// staleUpload reports whether the upload the record names was left by a worker that is gone.
func (r *Runner) staleUpload(ctx context.Context, name string) (bool, error) {
	rec, found, derr, err := r.readUploadRecord(ctx, name)
	if err != nil || !found {
		return false, err // Not found: its worker finished it meanwhile.
	}
	if derr != nil {
		r.logger.Warn("unreadable upload record; judging it by its age alone", "record", name, "err", derr)
	}
	held, gone := false, false
	if rec.Source != (ulid.ULID{}) {
		l, err := r.readLease(ctx, rec.Source)
		if err != nil {
			return false, err
		}
		if l != nil && l.Owner != r.cfg.Owner {
			gone = r.cfg.OwnerGone(l.Owner)
			held = !gone && r.now().Before(l.Expires)
		}
	}
	if held {
		return false, nil
	}
	// A worker that died or ended without finishing (a failed upload is left as it is) holds no
	// lease any more; known gone, its upload need not wait out the age bound.
	if !gone && rec.Owner != "" && rec.Owner != r.cfg.Owner {
		gone = r.cfg.OwnerGone(rec.Owner)
	}
	return gone || rec.Started.IsZero() || r.now().Sub(rec.Started) > r.cfg.StaleUploadAfter, nil
}

// sourceMarked reports whether the source named by an upload record is marked for deletion; a
// record that names none counts as marked, so that nothing is deleted on its word.
func (r *Runner) sourceMarked(ctx context.Context, record string) (bool, error) {
	rec, found, derr, err := r.readUploadRecord(ctx, record)
	if err != nil || !found {
		return false, err // A record gone meanwhile: its worker finished the upload.
	}
	if derr != nil || rec.Source == (ulid.ULID{}) {
		return true, nil
	}
	return r.bkt.Exists(ctx, path.Join(rec.Source.String(), block.DeletionMarkFilename))
}

// readUploadRecord reads an upload record: found is false when it is gone, derr says it does not
// decode (rec is then empty), err is the bucket's failure.
func (r *Runner) readUploadRecord(ctx context.Context, name string) (rec uploadRecordBody, found bool, derr, err error) {
	rc, err := r.bkt.Get(ctx, name)
	if r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return rec, false, nil, nil
	}
	if err != nil {
		return rec, false, nil, errors.Wrapf(err, "read upload record %s", name)
	}
	derr = json.NewDecoder(rc).Decode(&rec)
	if err := rc.Close(); err != nil {
		return rec, false, nil, errors.Wrapf(err, "read upload record %s", name)
	}
	return rec, true, derr, nil
}
