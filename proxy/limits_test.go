package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
)

func TestRequestBounds(t *testing.T) {
	f := newFixture(t, nil)
	p, _ := securedProxy(t, f, Config{AdminToken: adminToken, Limits: Limits{MaxBodyBytes: 2048, MaxQueryLength: 200, MaxRange: 6 * time.Hour}})
	start := fmt.Sprint(t0 / 1000)
	within := fmt.Sprint((t0 + 6*3_600_000) / 1000)
	beyond := fmt.Sprint((t0 + 6*3_600_000 + 1000) / 1000)
	long := "http_requests_total{job=\"" + strings.Repeat("a", 200) + "\"}"
	for _, tc := range []struct {
		name   string
		method string
		path   string
		form   url.Values
		code   int
		msg    string
	}{
		{"range within the bound", http.MethodPost, "/api/v1/query_range", url.Values{"query": {"up"}, "start": {start}, "end": {within}, "step": {"60"}}, http.StatusOK, ""},
		{"range beyond the bound", http.MethodPost, "/api/v1/query_range", url.Values{"query": {"up"}, "start": {start}, "end": {beyond}, "step": {"60"}}, http.StatusBadRequest,
			"the time range 6h0m1s from start to end is longer than the limit of 6h0m0s"},
		{"range in RFC 3339", http.MethodGet, "/api/v1/query_range", url.Values{"query": {"up"}, "start": {"2026-11-01T00:00:00Z"}, "end": {"2026-11-02T00:00:00Z"}, "step": {"60"}}, http.StatusBadRequest,
			"the time range 24h0m0s from start to end is longer than the limit of 6h0m0s"},
		{"bad times are the endpoint's to refuse", http.MethodGet, "/api/v1/query_range", url.Values{"query": {"up"}, "start": {"yesterday"}, "end": {within}, "step": {"60"}}, http.StatusBadRequest,
			`invalid parameter \"start\"`},
		{"series over all time", http.MethodGet, "/api/v1/series", url.Values{"match[]": {"up"}, "start": {"0"}, "end": {within}}, http.StatusOK, ""},
		{"long query", http.MethodGet, "/api/v1/query", url.Values{"query": {long}}, http.StatusBadRequest,
			`parameter \"query\" is 227 bytes long, longer than the limit of 200`},
		{"long match[]", http.MethodGet, "/api/v1/series", url.Values{"match[]": {"up", long}}, http.StatusBadRequest,
			`parameter \"match[]\" is 227 bytes long, longer than the limit of 200`},
		{"long label match[]", http.MethodGet, "/api/v1/label/job/values", url.Values{"match[]": {long}}, http.StatusBadRequest,
			`parameter \"match[]\" is 227 bytes long`},
		{"large body", http.MethodPost, "/api/v1/query", url.Values{"query": {"up"}, "padding": {strings.Repeat("x", 2048)}}, http.StatusRequestEntityTooLarge,
			"request body larger than 2048 bytes"},
		{"large body to the deletion API", http.MethodPost, "/api/v1/tombstones", url.Values{"match[]": {"up"}, "reason": {strings.Repeat("x", 2048)}}, http.StatusRequestEntityTooLarge,
			"request body larger than 2048 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.path
			var form url.Values
			if tc.method == http.MethodGet {
				target += "?" + tc.form.Encode()
			} else {
				form = tc.form
			}
			rec := serve(p, tc.method, target, form, bearer(adminToken))
			testutil.Equals(t, tc.code, rec.Code, rec.Body.String())
			if tc.msg != "" {
				testutil.Assert(t, strings.Contains(rec.Body.String(), `"status":"error","errorType":"bad_data"`), rec.Body.String())
				testutil.Assert(t, strings.Contains(rec.Body.String(), tc.msg), rec.Body.String())
			}
		})
	}
	// Nothing was registered by the refused deletion request.
	testutil.Equals(t, 0, len(f.mask.live))

	// The defaults hold a year-long dashboard and refuse more.
	d, _ := securedProxy(t, f, Config{})
	testutil.Equals(t, Limits{MaxBodyBytes: DefaultMaxBodyBytes, MaxQueryLength: DefaultMaxQueryLength, MaxRange: DefaultMaxRange}, d.cfg.Limits)
	year := url.Values{"query": {"up"}, "start": {start}, "end": {fmt.Sprint(t0/1000 + 365*86400)}, "step": {"3600"}}
	testutil.Equals(t, http.StatusOK, serve(d, http.MethodGet, "/api/v1/query_range?"+year.Encode(), nil, nil).Code)
	year.Set("end", fmt.Sprint(t0/1000+367*86400))
	testutil.Equals(t, http.StatusBadRequest, serve(d, http.MethodGet, "/api/v1/query_range?"+year.Encode(), nil, nil).Code)
}
