package tombstones

import (
	"context"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/prometheus/model/labels"
)

// CountSeriesByQuery asks a Prometheus-compatible query API how many series the selectors match
// with samples in [mint, maxt], for stores whose data is not (yet) in the bucket's blocks.
func CountSeriesByQuery(ctx context.Context, url string, selectors [][]*labels.Matcher, mint, maxt int64) (int, error) {
	client, err := api.NewClient(api.Config{Address: url})
	if err != nil {
		return 0, errors.Wrap(err, "query API client")
	}
	matches := make([]string, 0, len(selectors))
	for _, sel := range selectors {
		matches = append(matches, selectorString(sel))
	}
	start, end := APITime(mint), APITime(maxt)
	series, _, _, err := v1.NewAPI(client).Series(ctx, matches, start, end)
	if err != nil {
		return 0, errors.Wrapf(err, "count series through %s", url)
	}
	return len(series), nil
}

// APITime is a tombstone's time as Prometheus' HTTP API accepts it: open ends (the beginning of
// time, far futures) are clamped to the years 1 and 9999.
func APITime(ms int64) time.Time {
	const lo, hi = -62135596800000, 253402300799000 // Years 1 and 9999.
	return time.UnixMilli(min(max(ms, lo), hi)).UTC()
}
