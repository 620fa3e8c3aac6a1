package proxy

import (
	"context"
	"encoding/json"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// anySeries reports whether the upstream holds a series the matchers select in the querier's
// window, by its series endpoint with limit=1 (Prometheus 3 stops at the first; a server that
// ignores the limit answers the same, only more slowly).
func (q *upstreamQuerier) anySeries(ctx context.Context, ms []*labels.Matcher) (bool, error) {
	params := passThrough(ctx)
	params.Set("match[]", (&parser.VectorSelector{LabelMatchers: ms}).String())
	params.Set("start", formatTime(q.mint))
	params.Set("end", formatTime(q.maxt))
	params.Set("limit", "1")
	data, _, err := q.u.apiGet(ctx, "/api/v1/series", params)
	if err != nil {
		return false, err
	}
	var series []json.RawMessage
	if err := json.Unmarshal(data, &series); err != nil {
		return false, errors.Wrap(err, "decode upstream series")
	}
	return len(series) > 0, nil
}
