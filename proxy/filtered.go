package proxy

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	"github.com/lethe-project/lethe/tombstones"
)

// The upstream endpoints whose answers are forwarded after filtering: Grafana's alerting views use
// rules and alerts, and its exemplar panels query_exemplars.
func (p *Proxy) registerFiltered() {
	up, ok := p.upstream()
	if !ok {
		return
	}
	p.handle("/api/v1/rules", p.filtered(up, "/api/v1/rules", []string{"type", "rule_name[]", "rule_group[]", "file[]", "exclude_alerts", "match[]", "group_limit", "group_next_token"}, onlyData(filterRules)), http.MethodGet)
	p.handle("/api/v1/alerts", p.filtered(up, "/api/v1/alerts", nil, onlyData(filterAlerts)), http.MethodGet)
	p.handle("/api/v1/query_exemplars", p.filtered(up, "/api/v1/query_exemplars", []string{"query", "start", "end"}, onlyData(filterExemplars)), http.MethodGet, http.MethodPost)
	// Metric metadata (type, help, unit per metric name) describes metric families: a metric stays
	// while any of its series keeps a sample.
	p.handle("/api/v1/metadata", p.filtered(up, "/api/v1/metadata", []string{"metric", "limit", "limit_per_metric"}, up.filterMetadata), http.MethodGet)
}

// filterFunc drops from an upstream answer's data what the snapshot masks.
type filterFunc func(ctx context.Context, data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error)

// onlyData is a filter that decides from the answer alone.
func onlyData(f func(data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error)) filterFunc {
	return func(_ context.Context, data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error) {
		return f(data, snap, ext)
	}
}

func (p *Proxy) filtered(up *Upstream, route string, params []string, filter filterFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		snap, ok := p.admit(w, r)
		if !ok {
			return
		}
		q := url.Values{}
		for _, k := range params {
			if v, ok := r.Form[k]; ok {
				q[k] = v
			}
		}
		data, warnings, err := up.apiGet(r.Context(), route, q)
		if err != nil {
			writeUpstreamError(w, err)
			return
		}
		out, err := filter(r.Context(), data, snap, up.ExternalLabels())
		var se *tombstones.StatusError
		var to tombstones.TimeoutError
		if errors.As(err, &se) || errors.As(err, &to) {
			writeUpstreamError(w, err)
			return
		}
		if err != nil {
			writeError(w, http.StatusBadGateway, "internal", "unexpected upstream answer: "+err.Error())
			return
		}
		writeDataWarnings(w, out, warnings)
	})
}

// masksLabels reports whether any live tombstone matches the label set, at any time.
func masksLabels(snap *Snapshot, ls map[string]string, ext labels.Labels) bool {
	ivs := snap.Intervals(labels.FromMap(ls), ext, nil)
	return ivs.Overlaps(math.MinInt64, math.MaxInt64)
}

// alert is the part of an alert the filter reads; everything else is kept as it came.
type alert map[string]json.RawMessage

// keepAlerts keeps the alerts no live tombstone matches. An alert whose labels do not decode is
// dropped: it cannot be shown to match none.
func keepAlerts(in []alert, snap *Snapshot, ext labels.Labels) []alert {
	out := make([]alert, 0, len(in))
	for _, a := range in {
		var ls map[string]string
		if err := json.Unmarshal(a["labels"], &ls); err != nil {
			continue
		}
		if !masksLabels(snap, ls, ext) {
			out = append(out, a)
		}
	}
	return out
}

// metadataWindow is where filterMetadata looks for a metric's surviving samples: from 1970 on,
// 250 years (a query-API range selector spans at most 292).
const (
	metadataMint = int64(0)
	metadataMaxt = int64(250 * 365 * 24 * time.Hour / time.Millisecond)
)

// filterMetadata drops the metrics whose every series is deleted: a metric stays if any of its
// series keeps a sample anywhere in the store.
func (u *Upstream) filterMetadata(ctx context.Context, data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error) {
	var metrics map[string]json.RawMessage
	if err := json.Unmarshal(data, &metrics); err != nil {
		return nil, err
	}
	for name := range metrics {
		ok, err := u.metricSurvives(ctx, name, snap, ext)
		if err != nil {
			return nil, errors.Wrapf(err, "decide whether metric %s keeps a series", name)
		}
		if !ok {
			delete(metrics, name)
		}
	}
	return metrics, nil
}

// metricSurvives reports whether a series of the metric keeps a sample: at once when no tombstone
// can meet the metric, or when one of its series meets none; else it reads the samples the
// tombstones leave.
func (u *Upstream) metricSurvives(ctx context.Context, name string, snap *Snapshot, ext labels.Labels) (bool, error) {
	sel := []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, name)}
	if !snap.MayMatch(sel, ext, math.MinInt64, math.MaxInt64) {
		return true, nil
	}
	series, err := u.series(ctx, [][]*labels.Matcher{sel}, metadataMint, metadataMaxt)
	if err != nil {
		return false, err
	}
	var ivs tombstones.Intervals
	partial := false
	for _, ls := range series {
		ivs = snap.Intervals(ls, ext, ivs[:0])
		if !ivs.Overlaps(metadataMint, metadataMaxt) {
			return true, nil
		}
		if !ivs.Covers(metadataMint) || !ivs.Covers(metadataMaxt) || len(ivs) > 1 {
			partial = true
		}
	}
	if !partial {
		return false, nil // Every series is deleted over the whole window.
	}
	q, err := u.Querier(snap, metadataMint, metadataMaxt)
	if err != nil {
		return false, err
	}
	defer q.Close()
	ss := q.Select(ctx, false, &storage.SelectHints{Start: metadataMint, End: metadataMaxt, Func: "series"}, sel...)
	if ss.Next() {
		return true, nil
	}
	return false, ss.Err()
}

func filterAlerts(data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error) {
	var d map[string]json.RawMessage
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	var alerts []alert
	if err := json.Unmarshal(d["alerts"], &alerts); err != nil {
		return nil, err
	}
	b, err := json.Marshal(keepAlerts(alerts, snap, ext))
	if err != nil {
		return nil, err
	}
	d["alerts"] = b
	return d, nil
}

func filterRules(data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error) {
	var d map[string]json.RawMessage
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	var groups []map[string]json.RawMessage
	if err := json.Unmarshal(d["groups"], &groups); err != nil {
		return nil, err
	}
	for _, g := range groups {
		var rules []map[string]json.RawMessage
		if err := json.Unmarshal(g["rules"], &rules); err != nil {
			return nil, err
		}
		for _, r := range rules {
			raw, ok := r["alerts"]
			if !ok {
				continue
			}
			var alerts []alert
			if err := json.Unmarshal(raw, &alerts); err != nil {
				return nil, err
			}
			b, err := json.Marshal(keepAlerts(alerts, snap, ext))
			if err != nil {
				return nil, err
			}
			r["alerts"] = b
		}
		b, err := json.Marshal(rules)
		if err != nil {
			return nil, err
		}
		g["rules"] = b
	}
	b, err := json.Marshal(groups)
	if err != nil {
		return nil, err
	}
	d["groups"] = b
	return d, nil
}

// filterExemplars drops exemplars at times a tombstone covers for their series, and series left
// without exemplars.
func filterExemplars(data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error) {
	var series []struct {
		SeriesLabels map[string]string `json:"seriesLabels"`
		Exemplars    []struct {
			Labels    map[string]string `json:"labels"`
			Value     json.RawMessage   `json:"value"`
			Timestamp float64           `json:"timestamp"`
		} `json:"exemplars"`
	}
	if err := json.Unmarshal(data, &series); err != nil {
		return nil, err
	}
	out := series[:0]
	for _, s := range series {
		ivs := snap.Intervals(labels.FromMap(s.SeriesLabels), ext, nil)
		kept := s.Exemplars[:0]
		for _, e := range s.Exemplars {
			if !ivs.Covers(int64(math.Round(e.Timestamp * 1000))) {
				kept = append(kept, e)
			}
		}
		if len(kept) > 0 {
			s.Exemplars = kept
			out = append(out, s)
		}
	}
	return out, nil
}
