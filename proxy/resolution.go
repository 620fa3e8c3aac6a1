package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/efficientgo/core/errors"
)

// Thanos' downsampling: a request's max_source_resolution bounds the resolution of the blocks
// Thanos Query reads. lethe reads it once, as Thanos Query does, for the fast path (how far before
// a query's first sample an aggregate's window may begin), for the raw read through --upstream.url
// (which resolution it did not apply) and for the StoreAPI source (which resolution it reads).

// Thanos' downsampling resolutions.
const (
	resolution5m = 5 * time.Minute
	resolution1h = time.Hour
)

// sourceResolution reads max_source_resolution as Thanos Query does: a duration (seconds as a
// float, or a Prometheus duration), or "auto", which is a fifth of the step of a range query
// (step is zero for an instant query: raw, Thanos' default for instant queries). No parameter is
// raw unless auto is set (Thanos Query's --query.auto-downsampling).
func sourceResolution(param string, step time.Duration, auto bool) (time.Duration, error) {
	var r time.Duration
	if param == "auto" || (param == "" && auto) {
		r = step / 5
	}
	if param != "" && param != "auto" {
		d, err := parseDurationParam(param)
		if err != nil {
			return 0, errors.Wrap(err, "'max_source_resolution' parameter")
		}
		r = d
	}
	if r < 0 {
		return 0, errors.New("negative 'max_source_resolution' is not accepted. Try a positive integer")
	}
	return r, nil
}

// downsampledWindow returns how long before the first sample a query reads the aggregation window
// holding it may begin, in milliseconds, when Thanos Query answers from downsampled blocks: the
// longest of Thanos' resolutions (5m, 1h) that the request's max_source_resolution allows. No
// parameter counts as "auto" (the querier may run with --query.auto-downsampling); "auto" on an
// instant query (step 0) takes the querier's --query.instant.default.max_source_resolution,
// which lethe cannot see, so it counts as the longest, as a value Thanos would refuse does.
func downsampledWindow(param string, step time.Duration) int64 {
	r, err := sourceResolution(param, step, true)
	instantAuto := step == 0 && (param == "" || param == "auto")
	switch {
	case err != nil || instantAuto || r >= resolution1h:
		return resolution1h.Milliseconds()
	case r >= resolution5m:
		return resolution5m.Milliseconds()
	}
	return 0
}

// dynamicLookback is the lookback Thanos Query evaluates a query with at resolution r, its own
// default lookback being base (--query.dynamic-lookback-delta, on by default): at least 1h above
// a 5m resolution (and above base), at least 5m above base, else base.
func dynamicLookback(base, r time.Duration) time.Duration {
	switch {
	case r > max(resolution5m, base):
		return max(base, resolution1h)
	case r > base:
		return max(base, resolution5m)
	}
	return base
}

type resolutionKey struct{}

type requestResolution struct {
	r   time.Duration
	err error
}

// withResolution keeps the request's max_source_resolution, as a source reads it (no parameter:
// raw), in ctx.
func withResolution(ctx context.Context, r *http.Request, route string) context.Context {
	var step time.Duration
	if route == "/api/v1/query_range" {
		step, _ = parseDurationParam(r.Form.Get("step")) // A bad step fails the query itself.
	}
	res, err := sourceResolution(r.Form.Get("max_source_resolution"), step, false)
	return context.WithValue(ctx, resolutionKey{}, requestResolution{r: res, err: err})
}

// SourceResolution returns the max_source_resolution of the request that ctx serves, as Thanos
// Query reads it (no parameter and outside a request: 0, raw), or why it is refused.
func SourceResolution(ctx context.Context) (time.Duration, error) {
	v, _ := ctx.Value(resolutionKey{}).(requestResolution)
	return v.r, v.err
}
