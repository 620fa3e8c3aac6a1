package proxy

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"

	"github.com/lethe-project/lethe/tombstones"
)

// grafanaRequest is one request as Grafana's Prometheus data source sends it (Grafana 11/12):
// method, path, form and the headers it sets.
type grafanaRequest struct {
	name   string
	method string
	path   string
	form   url.Values
}

func (f *fixture) grafana(t *testing.T, r grafanaRequest) (int, string) {
	t.Helper()
	var req *http.Request
	var err error
	if r.method == http.MethodPost {
		req, err = http.NewRequest(http.MethodPost, f.srv.URL+r.path, strings.NewReader(r.form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		req, err = http.NewRequest(http.MethodGet, f.srv.URL+r.path+"?"+r.form.Encode(), nil)
	}
	testutil.Ok(t, err)
	req.Header.Set("User-Agent", "Grafana/12.2.0")
	req.Header.Set("X-Grafana-Org-Id", "1")
	req.Header.Set("Accept", "application/json, text/plain, */*")
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultClient.Do(req)
	testutil.Ok(t, err)
	defer resp.Body.Close()
	var body io.Reader = resp.Body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(resp.Body)
		testutil.Ok(t, err)
		body = zr
	}
	b, err := io.ReadAll(body)
	testutil.Ok(t, err)
	return resp.StatusCode, string(b)
}

func TestGrafanaDataSourceRequests(t *testing.T) {
	f := newFixture(t, nil)
	f.tombstone(t, `{token="s3cr3t"}`, tombstones.BeginningOfTime, t0+10*3_600_000)
	start, end := fmt.Sprint(t0/1000), fmt.Sprint((t0+4*3_600_000)/1000)
	now := fmt.Sprint((t0 + 3_600_000) / 1000)

	for _, tc := range []struct {
		req  grafanaRequest
		want string // A substring the answer must hold.
		deny string // A substring it must not hold.
	}{
		// "Save & test": the health check is an instant query of 1+1, then buildinfo.
		{req: grafanaRequest{"health check", http.MethodGet, "/api/v1/query", url.Values{"query": {"1+1"}, "time": {now}}},
			want: `{"status":"success","data":{"resultType":"scalar","result":[` + now + `,"2"]}}`},
		{req: grafanaRequest{"buildinfo", http.MethodGet, "/api/v1/status/buildinfo", nil}, want: `"version":"3.16.0"`},
		// The label browser and the query editor's autocomplete.
		{req: grafanaRequest{"label names", http.MethodGet, "/api/v1/labels", url.Values{"start": {start}, "end": {end}}},
			want: `["__name__","job","user_id"]`, deny: "token"},
		{req: grafanaRequest{"metric names", http.MethodGet, "/api/v1/label/__name__/values", url.Values{"start": {start}, "end": {end}}},
			want: `["http_requests_total"]`},
		{req: grafanaRequest{"label values with match", http.MethodGet, "/api/v1/label/token/values",
			url.Values{"match[]": {`http_requests_total`}, "start": {start}, "end": {end}}}, want: `"data":[]`},
		{req: grafanaRequest{"series for the browser", http.MethodGet, "/api/v1/series",
			url.Values{"match[]": {`{__name__="http_requests_total"}`}, "start": {start}, "end": {end}}}, want: `"user_id":"3"`, deny: "s3cr3t"},
		{req: grafanaRequest{"metadata", http.MethodGet, "/api/v1/metadata", nil}, want: `{"status":"success","data":{}}`},
		// A dashboard panel: query_range by POST form, Grafana's default.
		{req: grafanaRequest{"panel", http.MethodPost, "/api/v1/query_range", url.Values{
			"query": {`sum by (job) (rate(http_requests_total[5m]))`}, "start": {start}, "end": {end}, "step": {"60"}}},
			want: `"resultType":"matrix"`},
		{req: grafanaRequest{"panel raw", http.MethodPost, "/api/v1/query_range", url.Values{
			"query": {`http_requests_total`}, "start": {start}, "end": {end}, "step": {"300"}}},
			want: `"user_id":"0"`, deny: "s3cr3t"},
		{req: grafanaRequest{"exemplars", http.MethodPost, "/api/v1/query_exemplars", url.Values{
			"query": {`http_requests_total`}, "start": {start}, "end": {end}}}, want: `{"status":"success","data":[]}`},
		{req: grafanaRequest{"format query", http.MethodPost, "/api/v1/format_query", url.Values{"query": {`sum(rate(x[5m]))by(job)`}}},
			want: `"sum by (job) (rate(x[5m]))"`},
	} {
		t.Run(tc.req.name, func(t *testing.T) {
			code, body := f.grafana(t, tc.req)
			testutil.Equals(t, http.StatusOK, code, body)
			testutil.Assert(t, json.Valid([]byte(body)), body)
			testutil.Assert(t, strings.Contains(body, tc.want), "want %s in %s", tc.want, body)
			if tc.deny != "" {
				testutil.Assert(t, !strings.Contains(body, tc.deny), "%s leaked into %s", tc.deny, body)
			}
		})
	}
}
