package rewriter

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
)

// errLeased is a job left to the live worker that holds its lease.
var errLeased = errors.New("leased by another worker")

// lease keeps other workers off a block; objstore has no conditional writes, so two workers may
// still meet, which the rewrite's idempotence makes harmless.
type lease struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
}

func leaseName(id ulid.ULID) string { return StatePrefix + "leases/" + id.String() + ".json" }

// readLease returns the block's lease; nil if there is none or it cannot be decoded (a lease cut
// short by a crash keeps no one off).
func (r *Runner) readLease(ctx context.Context, id ulid.ULID) (*lease, error) {
	rc, err := r.bkt.Get(ctx, leaseName(id))
	if r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return nil, nil
	}
	if err != nil {
		return nil, errors.Wrapf(err, "read lease of %s", id)
	}
	var l lease
	derr := json.NewDecoder(rc).Decode(&l)
	_ = rc.Close()
	if derr != nil {
		return nil, nil
	}
	return &l, nil
}

func (r *Runner) takeLease(ctx context.Context, id ulid.ULID) (bool, error) {
	l, err := r.readLease(ctx, id)
	if err != nil {
		return false, err
	}
	if l != nil && l.Owner != r.cfg.Owner && r.now().Before(l.Expires) && !r.cfg.OwnerGone(l.Owner) {
		return false, nil
	}
	b, _ := json.Marshal(lease{Owner: r.cfg.Owner, Expires: r.now().Add(r.cfg.LeaseTTL)})
	return true, errors.Wrap(r.bkt.Upload(ctx, leaseName(id), bytes.NewReader(b)), "write lease")
}
