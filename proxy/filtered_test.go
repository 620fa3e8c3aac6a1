package proxy

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/tombstones"
)

func snapshotOf(t *testing.T, sels ...string) *Snapshot {
	t.Helper()
	store := tombstones.NewStore(nil, nil, tombstones.WithClock(func() time.Time { return time.UnixMilli(t0) }))
	var ts []*tombstones.Tombstone
	for _, sel := range sels {
		start, end := t0, t0+3_600_000
		tb, err := store.Build(tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end})
		testutil.Ok(t, err)
		ts = append(ts, tb)
	}
	ix, err := tombstones.NewIndex(ts, nil)
	testutil.Ok(t, err)
	return &Snapshot{index: ix, live: ts}
}

// The answers below have the shapes of Prometheus' /api/v1/alerts, /api/v1/rules and
// /api/v1/query_exemplars (docs/querying/api.md).
func TestFilterAlertsAndRules(t *testing.T) {
	snap := snapshotOf(t, `{user_id="3"}`, `{cluster="eu1", job="batch"}`)
	ext := labels.FromStrings("cluster", "eu1")

	got, err := filterAlerts(json.RawMessage(`{"alerts":[
		{"labels":{"alertname":"High","user_id":"3"},"annotations":{},"state":"firing","activeAt":"2026-11-01T00:00:00Z","value":"1e+00"},
		{"labels":{"alertname":"High","user_id":"4"},"annotations":{},"state":"firing","activeAt":"2026-11-01T00:00:00Z","value":"1e+00"},
		{"labels":{"alertname":"Down","job":"batch"},"annotations":{},"state":"pending","activeAt":"2026-11-01T00:00:00Z","value":"0e+00"}]}`), snap, ext)
	testutil.Ok(t, err)
	b, err := json.Marshal(got)
	testutil.Ok(t, err)
	testutil.Equals(t, `{"alerts":[{"activeAt":"2026-11-01T00:00:00Z","annotations":{},"labels":{"alertname":"High","user_id":"4"},"state":"firing","value":"1e+00"}]}`, string(b))

	got, err = filterRules(json.RawMessage(`{"groups":[{"name":"g","file":"r.yml","interval":60,"rules":[
		{"type":"alerting","name":"High","query":"x > 0","alerts":[{"labels":{"alertname":"High","user_id":"3"}},{"labels":{"alertname":"High","user_id":"5"}}],"health":"ok"},
		{"type":"recording","name":"job:x:sum","query":"sum(x)","health":"ok"}]}]}`), snap, ext)
	testutil.Ok(t, err)
	b, err = json.Marshal(got)
	testutil.Ok(t, err)
	testutil.Equals(t, `{"groups":[{"file":"r.yml","interval":60,"name":"g","rules":[{"alerts":[{"labels":{"alertname":"High","user_id":"5"}}],"health":"ok","name":"High","query":"x \u003e 0","type":"alerting"},{"health":"ok","name":"job:x:sum","query":"sum(x)","type":"recording"}]}]}`, string(b))

	_, err = filterAlerts(json.RawMessage(`[1,2]`), snap, ext)
	testutil.NotOk(t, err)
}

func TestFilterExemplars(t *testing.T) {
	snap := snapshotOf(t, `{user_id="3"}`)
	in := float64(t0+60_000) / 1000
	out := float64(t0+2*3_600_000) / 1000
	data, err := json.Marshal([]map[string]any{
		{"seriesLabels": map[string]string{"__name__": "req_bucket", "user_id": "3"}, "exemplars": []map[string]any{
			{"labels": map[string]string{"trace_id": "a"}, "value": "1", "timestamp": in},
			{"labels": map[string]string{"trace_id": "b"}, "value": "2", "timestamp": out},
		}},
		{"seriesLabels": map[string]string{"__name__": "req_bucket", "user_id": "3", "le": "1"}, "exemplars": []map[string]any{
			{"labels": map[string]string{"trace_id": "c"}, "value": "1", "timestamp": in},
		}},
		{"seriesLabels": map[string]string{"__name__": "req_bucket", "user_id": "4"}, "exemplars": []map[string]any{
			{"labels": map[string]string{"trace_id": "d"}, "value": "1", "timestamp": in},
		}},
	})
	testutil.Ok(t, err)
	got, err := filterExemplars(data, snap, labels.EmptyLabels())
	testutil.Ok(t, err)
	b, err := json.Marshal(got)
	testutil.Ok(t, err)
	var traces []string
	var res []struct {
		Exemplars []struct {
			Labels map[string]string `json:"labels"`
		} `json:"exemplars"`
	}
	testutil.Ok(t, json.Unmarshal(b, &res))
	for _, s := range res {
		for _, e := range s.Exemplars {
			traces = append(traces, e.Labels["trace_id"])
		}
	}
	testutil.Equals(t, []string{"b", "d"}, traces)
}

// An alert whose labels do not decode cannot be shown to match no tombstone: it is dropped.
func TestFilterAlertsDropsUndecodableLabels(t *testing.T) {
	snap := snapshotOf(t, `{user_id="3"}`)
	got, err := filterAlerts(json.RawMessage(`{"alerts":[
		{"labels":{"alertname":"High","user_id":"4"},"state":"firing"},
		{"labels":"user_id=3","state":"firing"},
		{"labels":{"alertname":"High","user_id":3},"state":"firing"},
		{"state":"firing"}]}`), snap, labels.EmptyLabels())
	testutil.Ok(t, err)
	b, err := json.Marshal(got)
	testutil.Ok(t, err)
	testutil.Equals(t, `{"alerts":[{"labels":{"alertname":"High","user_id":"4"},"state":"firing"}]}`, string(b))

	got, err = filterRules(json.RawMessage(`{"groups":[{"name":"g","rules":[{"type":"alerting","name":"High","alerts":[
		{"labels":["user_id","3"]},{"labels":{"alertname":"High","user_id":"5"}}]}]}]}`), snap, labels.EmptyLabels())
	testutil.Ok(t, err)
	b, err = json.Marshal(got)
	testutil.Ok(t, err)
	testutil.Equals(t, `{"groups":[{"name":"g","rules":[{"alerts":[{"labels":{"alertname":"High","user_id":"5"}}],"name":"High","type":"alerting"}]}]}`, string(b))
}
