package proxy

import (
	"encoding/json"
	"math"
	"net/http"
	"net/url"

	"github.com/prometheus/prometheus/model/labels"
)

// The upstream endpoints whose answers are forwarded after filtering: Grafana's alerting views use
// rules and alerts, and its exemplar panels query_exemplars.
func (p *Proxy) registerFiltered() {
	up, ok := p.source.(*Upstream)
	if !ok {
		return
	}
	p.handle("/api/v1/rules", p.filtered(up, "/api/v1/rules", []string{"type", "rule_name[]", "rule_group[]", "file[]", "exclude_alerts", "match[]", "group_limit", "group_next_token"}, filterRules), http.MethodGet)
	p.handle("/api/v1/alerts", p.filtered(up, "/api/v1/alerts", nil, filterAlerts), http.MethodGet)
	p.handle("/api/v1/query_exemplars", p.filtered(up, "/api/v1/query_exemplars", []string{"query", "start", "end"}, filterExemplars), http.MethodGet, http.MethodPost)
	// Metric metadata (type, help, unit per metric name) describes metric families, not series,
	// and carries no label values: it is passed on as the upstream gives it.
	p.handle("/api/v1/metadata", p.filtered(up, "/api/v1/metadata", []string{"metric", "limit", "limit_per_metric"}, keepAll), http.MethodGet)
}

func keepAll(data json.RawMessage, _ *Snapshot, _ labels.Labels) (any, error) { return data, nil }

// filterFunc drops from an upstream answer's data what the snapshot masks.
type filterFunc func(data json.RawMessage, snap *Snapshot, ext labels.Labels) (any, error)

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
		out, err := filter(data, snap, up.ExternalLabels())
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

func alertLabels(a alert) map[string]string {
	var ls map[string]string
	_ = json.Unmarshal(a["labels"], &ls)
	return ls
}

func keepAlerts(in []alert, snap *Snapshot, ext labels.Labels) []alert {
	out := make([]alert, 0, len(in))
	for _, a := range in {
		if !masksLabels(snap, alertLabels(a), ext) {
			out = append(out, a)
		}
	}
	return out
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
