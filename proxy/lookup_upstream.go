package proxy

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
)

// anySeries reports whether the upstream holds a series the matchers select in the querier's
// window, by its series endpoint with limit=1 (Prometheus 3 stops at the first; a server that
// ignores the limit answers the same, only more slowly).
func (q *upstreamQuerier) anySeries(ctx context.Context, ms []*labels.Matcher) (bool, error) {
	series, _, err := q.seriesEndpoint(ctx, ms, 1)
	return len(series) > 0, err
}

// A Prometheus answers a look-up over a window one block after the other, in one goroutine: the
// question a masked look-up cannot do without (what the series outside the tombstones carry, which
// walks the postings of every value) is asked over parts of a long window at once, cut where
// Prometheus' 2h blocks begin, so that each part reads its own blocks. The union of the parts'
// answers is the window's answer: a look-up answers for every block overlapping its window.
const (
	// maxWindowParts is how many parts a window is cut into at most.
	maxWindowParts = 4
	// minWindowPart is how long a part is at least: 3 blocks of 2h.
	minWindowPart = 6 * 3600 * 1000
	// upstreamBlockRange is the range Prometheus' blocks are aligned to.
	upstreamBlockRange = 2 * 3600 * 1000
)

// windowParts returns queriers over parts of the querier's window, or nil where it is too short
// to cut.
func (q *upstreamQuerier) windowParts() []storage.LabelQuerier {
	span := q.maxt - q.mint + 1 // Negative past the largest time: not cut.
	if q.mint < 0 || span < 2*minWindowPart {
		return nil
	}
	n := min(maxWindowParts, span/minWindowPart)
	step := span / n
	var out []storage.LabelQuerier
	lo := q.mint
	for i := int64(1); i <= n; i++ {
		hi := q.maxt
		if i < n {
			// The part ends before the block boundary nearest its share of the window.
			hi = (q.mint+i*step+upstreamBlockRange/2)/upstreamBlockRange*upstreamBlockRange - 1
		}
		if hi < lo {
			continue
		}
		out = append(out, &upstreamQuerier{u: q.u, snap: q.snap, mint: lo, maxt: hi})
		lo = hi + 1
	}
	if len(out) < 2 {
		return nil
	}
	return out
}

// listSeries returns up to limit series that the matchers select in the querier's window, by the
// series endpoint with limit (Thanos Query and Prometheus 3 stop at the limit).
func (q *upstreamQuerier) listSeries(ctx context.Context, ms []*labels.Matcher, limit int) ([]labels.Labels, error) {
	series, _, err := q.seriesEndpoint(ctx, ms, limit)
	return series, err
}

// seriesEndpoint asks the upstream's series endpoint for the series the matchers select in the
// querier's window, at most limit of them (0: all), and returns them with its warnings.
func (q *upstreamQuerier) seriesEndpoint(ctx context.Context, ms []*labels.Matcher, limit int) ([]labels.Labels, []string, error) {
	params := passThrough(ctx)
	params.Set("match[]", (&parser.VectorSelector{LabelMatchers: ms}).String())
	params.Set("start", formatTime(q.mint))
	params.Set("end", formatTime(q.maxt))
	if limit > 0 {
		params.Set("limit", strconv.Itoa(limit))
	}
	data, warnings, err := q.u.apiGet(ctx, "/api/v1/series", params)
	if err != nil {
		return nil, nil, err
	}
	var series []map[string]string
	if err := json.Unmarshal(data, &series); err != nil {
		return nil, nil, errors.Wrap(err, "decode upstream series")
	}
	out := make([]labels.Labels, len(series))
	for i, s := range series {
		out[i] = labels.FromMap(s)
	}
	return out, warnings, nil
}
