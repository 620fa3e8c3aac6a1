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

func (r *Runner) takeLease(ctx context.Context, id ulid.ULID) (bool, error) {
	rc, err := r.bkt.Get(ctx, leaseName(id))
	if err == nil {
		var l lease
		derr := json.NewDecoder(rc).Decode(&l)
		_ = rc.Close()
		if derr == nil && l.Owner != r.cfg.Owner && r.now().Before(l.Expires) && !r.cfg.OwnerGone(l.Owner) {
			return false, nil
		}
	} else if !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return false, errors.Wrap(err, "read lease")
	}
	b, _ := json.Marshal(lease{Owner: r.cfg.Owner, Expires: r.now().Add(r.cfg.LeaseTTL)})
	return true, errors.Wrap(r.bkt.Upload(ctx, leaseName(id), bytes.NewReader(b)), "write lease")
}
