package proxy

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/tombstones"
)

// Bounds of the preview: how many matched series it names, how far back its graph reaches, how
// many samples it reads for the graph, and the graph's size in pixels.
const (
	previewSeries     = 5
	previewSpan       = 31 * 24 * time.Hour
	previewMaxSamples = 200_000
	graphWidth        = 420
	graphHeight       = 120
)

type previewPage struct {
	pageBase
	Form      addForm
	Tombstone tombstones.View
	// Selectors are what the confirm form sends as match[].
	Selectors []string
	Count     int
	Series    []string
	Graph     *seriesGraph
	// Refused says why confirming would be refused as it stands.
	Refused string
}

// preview shows what a tombstone would delete, writing nothing: the series it matches in its
// range, and one of them before and after masking.
func (pg *page) preview(w http.ResponseWriter, r *http.Request) {
	form := readAddForm(r)
	spec, err := specFromForm(r)
	if err != nil {
		pg.renderList(w, r, http.StatusBadRequest, form, err.Error())
		return
	}
	t, err := pg.p.mask.store.Build(spec)
	if err != nil {
		pg.renderList(w, r, http.StatusBadRequest, form, err.Error())
		return
	}
	sels, err := tombstones.ParseSelectors(spec.Selectors)
	if err != nil {
		pg.renderList(w, r, http.StatusBadRequest, form, err.Error())
		return
	}
	// The preview reads data as a query does: within the query timeout, in one of the query slots.
	ctx, cancel := context.WithTimeout(r.Context(), pg.p.cfg.QueryTimeout)
	defer cancel()
	select {
	case pg.p.slots <- struct{}{}:
		defer func() { <-pg.p.slots }()
	case <-ctx.Done():
		pg.fail(w, r, http.StatusServiceUnavailable, "too many concurrent queries")
		return
	}
	n, err := pg.p.countMatches(ctx, sels, t.Start, t.End)
	if err != nil {
		pg.fail(w, r, http.StatusServiceUnavailable, errors.Wrap(err, "count matching series").Error())
		return
	}
	series, err := pg.matchedSeries(ctx, sels, t.Start, t.End)
	if err != nil {
		pg.fail(w, r, http.StatusServiceUnavailable, errors.Wrap(err, "list matching series").Error())
		return
	}
	data := previewPage{
		pageBase: pg.base(w, r, "Preview deletion"), Form: form, Tombstone: tombstones.NewView(&tombstones.Entry{Tombstone: t}, t.CreatedAt),
		Selectors: spec.Selectors, Count: n,
	}
	shown := series
	if spec.Redact {
		shown = hideRedacted(series, sels)
	}
	for _, s := range shown {
		data.Series = append(data.Series, s.String())
	}
	if n == 0 && !spec.Force {
		data.Refused = "The selectors match no stored series in this range: there is nothing to delete. Tick \"register even if it matches nothing\" to register it anyway."
	}
	if len(series) > 0 {
		if data.Graph, err = pg.graph(ctx, series[0], t); err != nil {
			pg.fail(w, r, http.StatusServiceUnavailable, errors.Wrap(err, "read samples for the preview graph").Error())
			return
		}
		if spec.Redact {
			data.Graph.Series = data.Series[0]
		}
	}
	pg.render(w, http.StatusOK, "preview", data)
}

// hideRedacted shows, on the preview of a redacted tombstone, the values its equality matchers
// would store as digests as "<redacted>", as every later view of it does.
func hideRedacted(series []labels.Labels, sels [][]*labels.Matcher) []labels.Labels {
	out := make([]labels.Labels, 0, len(series))
	for _, s := range series {
		b := labels.NewBuilder(s)
		for _, sel := range sels {
			for _, m := range sel {
				if m.Type == labels.MatchEqual && m.Name != model.MetricNameLabel && m.Value != "" && s.Get(m.Name) == m.Value {
					b.Set(m.Name, "<redacted>")
				}
			}
		}
		out = append(out, b.Labels())
	}
	return out
}

// matchedSeries returns the first few series the selectors select in [mint, maxt], before any
// mask, sorted. An upstream answers from its series endpoint (labels only, no samples).
func (pg *page) matchedSeries(ctx context.Context, sels [][]*labels.Matcher, mint, maxt int64) ([]labels.Labels, error) {
	var out []labels.Labels
	if up, ok := pg.p.source.(*Upstream); ok {
		series, err := up.series(ctx, sels, mint, maxt)
		if err != nil {
			return nil, err
		}
		out = series
	} else {
		snap, err := pg.snapshot(nil)
		if err != nil {
			return nil, err
		}
		q, err := pg.p.source.Querier(snap, mint, maxt)
		if err != nil {
			return nil, err
		}
		defer q.Close()
		for _, sel := range sels {
			ss := q.Select(ctx, true, &storage.SelectHints{Start: mint, End: maxt, Func: "series"}, sel...)
			for i := 0; i < previewSeries && ss.Next(); i++ {
				out = append(out, ss.At().Labels())
			}
			if err := ss.Err(); err != nil {
				return nil, err
			}
		}
	}
	slices.SortFunc(out, labels.Compare)
	out = slices.CompactFunc(out, labels.Equal)
	return out[:min(len(out), previewSeries)], nil
}

// snapshot is a mask over the given tombstones for the page's own reads; it counts into metrics of
// its own, so previews do not show up in the proxy's masking metrics.
func (pg *page) snapshot(live []*tombstones.Tombstone) (*Snapshot, error) {
	ix, err := tombstones.NewIndex(live, pg.p.mask.store.RedactionKey())
	if err != nil {
		return nil, err
	}
	return &Snapshot{index: ix, live: live, metrics: &maskMetrics{
		seriesMasked: prometheus.NewCounter(prometheus.CounterOpts{Name: "preview_series_masked"}),
		seriesHidden: prometheus.NewCounter(prometheus.CounterOpts{Name: "preview_series_hidden"}),
	}}, nil
}

// seriesGraph is one series drawn before and after masking with the new tombstone (and every live
// one) over the tombstone's range, with some of the time around it.
type seriesGraph struct {
	Series         string
	From, To       time.Time
	Width, Height  int
	Before, After  plot
	Kept, Removed  int
	Note           string
	RangeX, RangeW string
}

// plot is one drawn line: an SVG path, and the value range it spans.
type plot struct {
	Path     string
	Min, Max string
	Empty    bool
}

type point struct {
	t int64
	v float64
}

func (pg *page) graph(ctx context.Context, series labels.Labels, t *tombstones.Tombstone) (*seriesGraph, error) {
	lo, hi := t.Start, t.End
	g := &seriesGraph{Series: series.String(), Width: graphWidth, Height: graphHeight}
	if span := previewSpan.Milliseconds(); hi-lo > span || lo == tombstones.BeginningOfTime {
		lo = hi - span
		g.Note = "The range reaches back further than the graph: it shows the last 31 days of it."
	}
	pad := max((hi-lo)/4, time.Hour.Milliseconds())
	mint, maxt := lo-pad, hi+pad

	var matchers []*labels.Matcher
	series.Range(func(l labels.Label) {
		matchers = append(matchers, labels.MustNewMatcher(labels.MatchEqual, l.Name, l.Value))
	})
	unmasked, err := pg.snapshot(nil)
	if err != nil {
		return nil, err
	}
	before, err := pg.samples(ctx, unmasked, matchers, mint, maxt)
	if err != nil {
		return nil, err
	}
	// After: what queries will see once it is added to the tombstones in force.
	current, err := pg.p.mask.Current()
	if err != nil {
		return nil, err
	}
	masked, err := pg.snapshot(append(slices.Clone(current.live), t))
	if err != nil {
		return nil, err
	}
	after, err := pg.samples(ctx, masked, matchers, mint, maxt)
	if err != nil {
		return nil, err
	}
	g.Kept, g.Removed = len(after), len(before)-len(after)
	if len(before) == 0 {
		g.Note = strings.TrimSpace(g.Note + " The series has no float samples around the range.")
		g.Before.Empty, g.After.Empty = true, true
		g.From, g.To = time.UnixMilli(lo).UTC(), time.UnixMilli(hi).UTC()
		return g, nil
	}
	// Both plots share the axes of the unmasked series, so the hole shows where it is.
	x0, x1 := before[0].t, before[len(before)-1].t
	if x1 == x0 {
		x1 = x0 + 1
	}
	y0, y1 := before[0].v, before[0].v
	for _, p := range before {
		y0, y1 = math.Min(y0, p.v), math.Max(y1, p.v)
	}
	g.From, g.To = time.UnixMilli(x0).UTC(), time.UnixMilli(x1).UTC()
	gap := typicalStep(before) * 3
	g.Before = drawPlot(before, x0, x1, y0, y1, gap)
	g.After = drawPlot(after, x0, x1, y0, y1, gap)
	rl, rh := max(t.Start, x0), min(t.End, x1)
	if rl <= rh {
		xs := func(ts int64) float64 { return float64(ts-x0) / float64(x1-x0) * graphWidth }
		g.RangeX = strconv.FormatFloat(xs(rl), 'f', 1, 64)
		g.RangeW = strconv.FormatFloat(math.Max(xs(rh)-xs(rl), 1), 'f', 1, 64)
	}
	return g, nil
}

// samples reads the float samples of the series matchers select in [mint, maxt], through the
// source's masked querier, as queries would see them with snap in force.
func (pg *page) samples(ctx context.Context, snap *Snapshot, matchers []*labels.Matcher, mint, maxt int64) ([]point, error) {
	q, err := pg.p.source.Querier(snap, mint, maxt)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	ss := q.Select(ctx, false, &storage.SelectHints{Start: mint, End: maxt}, matchers...)
	var out []point
	var it chunkenc.Iterator
	for ss.Next() {
		it = ss.At().Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone && len(out) < previewMaxSamples; vt = it.Next() {
			if vt != chunkenc.ValFloat {
				continue
			}
			ts, v := it.At()
			if ts < mint || ts > maxt || math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			out = append(out, point{t: ts, v: v})
		}
		if err := it.Err(); err != nil {
			return nil, err
		}
	}
	if err := ss.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b point) int { return cmp.Compare(a.t, b.t) })
	return out, nil
}

// typicalStep is the median distance between samples.
func typicalStep(ps []point) int64 {
	if len(ps) < 2 {
		return 1
	}
	d := make([]int64, 0, len(ps)-1)
	for i := 1; i < len(ps); i++ {
		d = append(d, ps[i].t-ps[i-1].t)
	}
	slices.Sort(d)
	return max(d[len(d)/2], 1)
}

// drawPlot draws the points as an SVG path that breaks where samples are missing (a gap longer
// than gap), keeping each pixel column's lowest and highest value when there are more points than
// pixels.
func drawPlot(ps []point, x0, x1 int64, y0, y1 float64, gap int64) plot {
	out := plot{Min: formatValue(y0), Max: formatValue(y1), Empty: len(ps) == 0}
	if len(ps) == 0 {
		return out
	}
	const margin = 4.0
	xs := func(ts int64) float64 { return float64(ts-x0) / float64(x1-x0) * graphWidth }
	ys := func(v float64) float64 {
		if y1 == y0 {
			return graphHeight / 2
		}
		return margin + (1-(v-y0)/(y1-y0))*(graphHeight-2*margin)
	}
	var b strings.Builder
	move := true
	column, lo, hi := -1, 0.0, 0.0
	flush := func() {
		if column < 0 {
			return
		}
		cmd := "L"
		if move {
			cmd, move = "M", false
		}
		fmt.Fprintf(&b, "%s%d %.1f L%d %.1f ", cmd, column, ys(lo), column, ys(hi))
		column = -1
	}
	for i, p := range ps {
		if i > 0 && p.t-ps[i-1].t > gap {
			flush()
			move = true
		}
		c := int(math.Round(xs(p.t)))
		if c != column {
			flush()
			column, lo, hi = c, p.v, p.v
			continue
		}
		lo, hi = math.Min(lo, p.v), math.Max(hi, p.v)
	}
	flush()
	out.Path = strings.TrimSpace(b.String())
	return out
}

func formatValue(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }
