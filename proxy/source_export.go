package proxy

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/efficientgo/core/errors"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
)

// MaskQuerier returns inner with every sample a tombstone of snap covers hidden, as the proxy's
// own sources do: a Source outside this package builds its Querier with it. ext are the external
// labels of inner's series (see maskedQuerier); [mint, maxt] is the querier's window.
func MaskQuerier(inner storage.Querier, snap *Snapshot, ext labels.Labels, mint, maxt int64) storage.Querier {
	return newMaskedQuerier(inner, snap, ext, mint, maxt)
}

// RequestContext returns ctx with the parameters of r (its form parsed) as the proxy hands them to
// its source for the route: PassThrough's and max_source_resolution (SourceResolution).
func RequestContext(ctx context.Context, r *http.Request, route string) context.Context {
	return withResolution(context.WithValue(ctx, passThroughKey{}, passThroughOf(r)), r, route)
}

// ReplicaLabelsAllowed fails a request whose replicaLabels[] names a label that allowed (lethe's
// --upstream.replica-label) does not: tombstones naming a replica label are split off by those and
// applied before the replicas merge; a label only the request makes a replica label would be
// dropped from the series before a tombstone naming it could match them.
func ReplicaLabelsAllowed(ctx context.Context, allowed []string) error {
	for _, l := range passThrough(ctx)["replicaLabels[]"] {
		if !slices.Contains(allowed, l) {
			return errors.Newf("replicaLabels[]=%s: not one of lethe-proxy's replica labels (--upstream.replica-label: %s), by which tombstones on one replica are applied", l, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// PassThrough returns the Thanos Query parameters (dedup, partial_response,
// max_source_resolution, replicaLabels[], engine) of the request that ctx serves; none outside a
// request.
func PassThrough(ctx context.Context) url.Values { return passThrough(ctx) }
