package proxy

import (
	"context"
	"net/url"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
)

// MaskQuerier returns inner with every sample a tombstone of snap covers hidden, as the proxy's
// own sources do: a Source outside this package builds its Querier with it. ext are the external
// labels of inner's series (see maskedQuerier); [mint, maxt] is the querier's window.
func MaskQuerier(inner storage.Querier, snap *Snapshot, ext labels.Labels, mint, maxt int64) storage.Querier {
	return newMaskedQuerier(inner, snap, ext, mint, maxt)
}

// PassThrough returns the Thanos Query parameters (dedup, partial_response,
// max_source_resolution, replicaLabels[], engine) of the request that ctx serves; none outside a
// request.
func PassThrough(ctx context.Context) url.Values { return passThrough(ctx) }
