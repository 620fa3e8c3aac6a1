package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/internal/synth"
)

// writePromBlocks writes n consecutive 2h blocks from blockStart of nSeries
// http_requests_total{job="api",user_id="<i>"} series sampled every step, and returns their dirs.
func writePromBlocks(t *testing.T, n, nSeries int, step time.Duration) []string {
	t.Helper()
	var series []labels.Labels
	for u := 0; u < nSeries; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
	}
	tmp := t.TempDir()
	var dirs []string
	for i := int64(0); i < int64(n); i++ {
		_, dir, err := synth.Write(context.Background(), tmp, synth.Block{
			Series:  series,
			MinTime: blockStart + i*7_200_000,
			MaxTime: blockStart + (i+1)*7_200_000,
			Step:    step.Milliseconds(),
		})
		testutil.Ok(t, err)
		dirs = append(dirs, dir)
	}
	return dirs
}

// vectorByUser decodes an instant query's vector answer into user_id → value.
func vectorByUser(t *testing.T, body []byte) map[string]string {
	t.Helper()
	var r struct {
		Data struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	testutil.Ok(t, json.Unmarshal(body, &r), string(body))
	testutil.Equals(t, "vector", r.Data.ResultType, string(body))
	out := map[string]string{}
	for _, s := range r.Data.Result {
		out[s.Metric["user_id"]] = s.Value[1].(string)
	}
	return out
}

// stringsData decodes a labels or label values answer.
func stringsData(t *testing.T, status int, body []byte) []string {
	t.Helper()
	testutil.Equals(t, http.StatusOK, status, string(body))
	var r struct {
		Status string   `json:"status"`
		Data   []string `json:"data"`
	}
	testutil.Ok(t, json.Unmarshal(body, &r), string(body))
	testutil.Equals(t, "success", r.Status, string(body))
	sort.Strings(r.Data)
	return r.Data
}

func blockDirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	testutil.Ok(t, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestPrometheusHarnessDeleteOracle runs two real Prometheus servers on copies of the same two
// blocks, deletes one user's middle hour on one of them (delete_series + clean_tombstones) and
// checks, with real queries, what that oracle answers compared to the untouched server.
func TestPrometheusHarnessDeleteOracle(t *testing.T) {
	const (
		nSeries = 30
		step    = 15 * time.Second
	)
	dirs := writePromBlocks(t, 2, nSeries, step)

	began := time.Now()
	upstream := startPrometheus(t, dirs)
	oracle := startPrometheus(t, dirs)
	t.Logf("both servers up in %v", time.Since(began).Round(time.Millisecond))

	at := func(d time.Duration) time.Time { return time.UnixMilli(blockStart).Add(d).UTC() }
	delStart, delEnd := at(90*time.Minute), at(150*time.Minute) // 01:30 .. 02:30, across both blocks
	perHour := fmt.Sprint(int(time.Hour / step))                // samples in a 1h window: 240
	cot := `count_over_time(http_requests_total{user_id="3"}[1h])`

	// Before any deletion both servers hold the same data.
	testutil.Equals(t, normalizeJSON(t, upstream.Query(t, cot, delEnd)), normalizeJSON(t, oracle.Query(t, cot, delEnd)))
	testutil.Equals(t, map[string]string{"3": perHour}, vectorByUser(t, oracle.Query(t, cot, delEnd)))

	seriesOf := func(p *prometheusProc, start, end time.Time) string {
		status, body := p.Get(t, "/api/v1/series", url.Values{
			"match[]": {`{user_id="3"}`},
			"start":   {formatPromTime(start.UnixMilli())},
			"end":     {formatPromTime(end.UnixMilli())},
		})
		testutil.Equals(t, http.StatusOK, status, string(body))
		return normalizeJSON(t, body)
	}
	user3 := `{"data":[{"__name__":"http_requests_total","job":"api","user_id":"3"}],"status":"success"}`
	none := `{"data":[],"status":"success"}`
	labelValues := func(p *prometheusProc, match ...string) []string {
		params := url.Values{"start": {formatPromTime(delStart.UnixMilli())}, "end": {formatPromTime(delEnd.UnixMilli())}}
		if len(match) > 0 {
			params["match[]"] = match
		}
		status, body := p.Get(t, "/api/v1/label/user_id/values", params)
		return stringsData(t, status, body)
	}

	dataBefore := blockDirNames(t, oracle.dataDir)
	t0 := time.Now()
	status, body := oracle.Post(t, "/api/v1/admin/tsdb/delete_series", url.Values{
		"match[]": {`{user_id="3"}`},
		"start":   {delStart.Format(time.RFC3339Nano)},
		"end":     {delEnd.Format(time.RFC3339Nano)},
	})
	t.Logf("delete_series: %d %q in %v", status, body, time.Since(t0).Round(time.Microsecond))
	testutil.Equals(t, http.StatusNoContent, status, string(body))
	testutil.Equals(t, "", string(body))

	// Tombstones alone already mask queries: no need to wait for clean_tombstones.
	testutil.Equals(t, map[string]string{}, vectorByUser(t, oracle.Query(t, cot, delEnd)))
	// But the series endpoint does not apply tombstones: over only the deleted hour it still
	// lists the series until clean_tombstones rewrites the blocks (checked again below).
	testutil.Equals(t, user3, seriesOf(oracle, delStart, delEnd))
	testutil.Equals(t, []string{"3"}, labelValues(oracle, `{user_id="3"}`))

	t0 = time.Now()
	status, body = oracle.Post(t, "/api/v1/admin/tsdb/clean_tombstones", nil)
	t.Logf("clean_tombstones: %d %q in %v", status, body, time.Since(t0).Round(time.Microsecond))
	testutil.Equals(t, http.StatusNoContent, status, string(body))
	testutil.Equals(t, "", string(body))
	dataAfter := blockDirNames(t, oracle.dataDir)
	t.Logf("oracle data dir before clean: %v, after: %v", dataBefore, dataAfter)
	// clean_tombstones rewrites every block holding tombstones under a new ULID (synchronously:
	// the old directories are gone when it answers).
	testutil.Equals(t, len(dataBefore), len(dataAfter))
	for _, d := range dirs {
		testutil.Assert(t, !slices.Contains(dataAfter, filepath.Base(d)), "block %s not rewritten: %v", filepath.Base(d), dataAfter)
	}

	// Through the helpers, a second cycle on an already-clean range is a no-op that still succeeds.
	oracle.DeleteSeries(t, []string{`{user_id="3"}`}, &delStart, &delEnd)
	oracle.CleanTombstones(t)

	// The whole deleted hour: 240 samples on the untouched server, nothing on the oracle.
	testutil.Equals(t, map[string]string{"3": perHour}, vectorByUser(t, upstream.Query(t, cot, delEnd)))
	testutil.Equals(t, map[string]string{}, vectorByUser(t, oracle.Query(t, cot, delEnd)))
	// Both bounds of delete_series are inclusive: the sample at start and the one at end are gone.
	testutil.Equals(t, map[string]string{"3": fmt.Sprint(int(time.Hour/step) - 1)}, vectorByUser(t, oracle.Query(t, cot, delStart)))
	testutil.Equals(t, map[string]string{"3": "1"}, vectorByUser(t, oracle.Query(t, cot, delEnd.Add(step))))
	// Half the window in the deleted hour: (01:00, 01:30) keeps 01:00:15 .. 01:29:45.
	testutil.Equals(t, map[string]string{"3": fmt.Sprint(int(30*time.Minute/step) - 1)}, vectorByUser(t, oracle.Query(t, cot, at(2*time.Hour))))
	// Other users are untouched.
	other := `count_over_time(http_requests_total{user_id="4"}[1h])`
	testutil.Equals(t, map[string]string{"4": perHour}, vectorByUser(t, oracle.Query(t, other, delEnd)))
	// An instant selector looks back 5m: just inside the deleted hour the oracle still answers
	// with the last sample before it, 01:29:45; from 5m in it has nothing.
	ts := `timestamp(http_requests_total{user_id="3"})`
	testutil.Equals(t, map[string]string{"3": fmt.Sprint(delStart.Add(-step).Unix())},
		vectorByUser(t, oracle.Query(t, ts, delStart.Add(4*time.Minute))))
	testutil.Equals(t, map[string]string{}, vectorByUser(t, oracle.Query(t, ts, delStart.Add(5*time.Minute))))

	// Outside the deleted range both servers answer identically.
	for _, r := range [][2]time.Time{
		{at(0), delStart.Add(-step)},
		{delEnd.Add(step), at(4*time.Hour - step)},
	} {
		q := `http_requests_total{user_id=~"3|4"}`
		u, o := upstream.QueryRange(t, q, r[0], r[1], step), oracle.QueryRange(t, q, r[0], r[1], step)
		testutil.Equals(t, normalizeJSON(t, u), normalizeJSON(t, o), "range %v", r)
	}
	testutil.Equals(t, normalizeJSON(t, upstream.Query(t, cot, delStart.Add(-step))), normalizeJSON(t, oracle.Query(t, cot, delStart.Add(-step))))
	// Inside it they differ.
	testutil.Assert(t, normalizeJSON(t, upstream.Query(t, cot, at(2*time.Hour))) != normalizeJSON(t, oracle.Query(t, cot, at(2*time.Hour))))

	// /api/v1/series: over the whole range both still have the series; over only the deleted hour
	// the oracle has none.
	testutil.Equals(t, user3, seriesOf(upstream, at(0), at(4*time.Hour)))
	testutil.Equals(t, user3, seriesOf(oracle, at(0), at(4*time.Hour)))
	testutil.Equals(t, user3, seriesOf(upstream, delStart, delEnd))
	testutil.Equals(t, none, seriesOf(oracle, delStart, delEnd))

	// Label values restricted to the deleted hour. Observed on v0.316.0 after clean_tombstones:
	// the oracle still lists "3", with or without match[]={user_id="3"}. Label values come from the
	// index of every block overlapping [start, end], not from samples, and both blocks still hold
	// user 3's series for its samples outside the hour. So the label endpoints are no oracle for
	// time-restricted deletions: Prometheus itself "leaks" the value there.
	all := make([]string, nSeries)
	for i := range all {
		all[i] = fmt.Sprint(i)
	}
	sort.Strings(all)
	t.Logf("oracle label values of user_id over the deleted hour: %v; with match[]={user_id=\"3\"}: %v",
		labelValues(oracle), labelValues(oracle, `{user_id="3"}`))
	testutil.Equals(t, all, labelValues(upstream))
	testutil.Equals(t, all, labelValues(oracle))
	testutil.Equals(t, []string{"3"}, labelValues(upstream, `{user_id="3"}`))
	testutil.Equals(t, []string{"3"}, labelValues(oracle, `{user_id="3"}`))
}

func TestPrometheusHarnessNormalizeJSON(t *testing.T) {
	a := `{"status":"success","data":{"resultType":"matrix","result":[
		{"metric":{"user_id":"4","__name__":"x"},"values":[[1793491200,"1.50"],[1793491215.5,"2"]]},
		{"metric":{"__name__":"x","user_id":"3"},"values":[[1793491200,"1e3"]]}]},"warnings":["b","a"]}`
	b := `{"warnings":["a","b"],"data":{"result":[
		{"values":[[1793491200,"1e3"]],"metric":{"user_id":"3","__name__":"x"}},
		{"metric":{"__name__":"x","user_id":"4"},"values":[[1793491200,"1.50"],[1793491215.5,"2"]]}],"resultType":"matrix"},"status":"success"}`
	testutil.Equals(t, normalizeJSON(t, []byte(a)), normalizeJSON(t, []byte(b)))
	// Values and timestamps are kept exactly as written.
	testutil.Equals(t, `{"data":{"result":[{"metric":{"__name__":"x","user_id":"3"},"values":[[1793491200,"1e3"]]},{"metric":{"__name__":"x","user_id":"4"},"values":[[1793491200,"1.50"],[1793491215.5,"2"]]}],"resultType":"matrix"},"status":"success","warnings":["a","b"]}`,
		normalizeJSON(t, []byte(a)))
	// A different value is a different answer.
	c := []byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1.0"]}]}}`)
	d := []byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]}]}}`)
	testutil.Assert(t, normalizeJSON(t, c) != normalizeJSON(t, d))

	testutil.Equals(t, `{"data":[{"a":"1"},{"a":"2","b":"1"}],"status":"success"}`,
		normalizeJSON(t, []byte(`{"status":"success","data":[{"b":"1","a":"2"},{"a":"1"}]}`)))
	testutil.Equals(t, `{"data":["a","b","c"],"status":"success"}`,
		normalizeJSON(t, []byte(`{"status":"success","data":["c","a","b"]}`)))
}

func TestPrometheusHarnessExternalLabels(t *testing.T) {
	testutil.Equals(t, "global: {}\n", prometheusConfig(prometheusOptions{}))
	labels := map[string]string{"replica": "a: b", "cluster": "eu1"}
	testutil.Equals(t, "global:\n  external_labels:\n    cluster: \"eu1\"\n    replica: \"a: b\"\n",
		prometheusConfig(prometheusOptions{ExternalLabels: labels}))

	// A real server accepts the config and reports the labels.
	p := startPrometheusWith(t, prometheusOptions{ExternalLabels: labels}, writePromBlocks(t, 1, 2, time.Minute))
	status, body := p.Get(t, "/api/v1/status/config", nil)
	testutil.Equals(t, http.StatusOK, status, string(body))
	var r struct {
		Data struct {
			YAML string `json:"yaml"`
		} `json:"data"`
	}
	testutil.Ok(t, json.Unmarshal(body, &r))
	testutil.Assert(t, strings.Contains(r.Data.YAML, "cluster: eu1") && strings.Contains(r.Data.YAML, "replica: 'a: b'"), r.Data.YAML)
}

func TestPrometheusHarnessBinaryFromEnv(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-prometheus")
	t.Setenv("LETHE_PROMETHEUS", missing)
	_, err := findPrometheus()
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), "LETHE_PROMETHEUS="+missing), err.Error())

	notExec := filepath.Join(t.TempDir(), "prometheus")
	testutil.Ok(t, os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644))
	t.Setenv("LETHE_PROMETHEUS", notExec)
	_, err = findPrometheus()
	testutil.NotOk(t, err)
	testutil.Assert(t, strings.Contains(err.Error(), "not an executable"), err.Error())

	root, err := repoRoot()
	testutil.Ok(t, err)
	_, err = os.Stat(filepath.Join(root, "go.mod"))
	testutil.Ok(t, err)
}
