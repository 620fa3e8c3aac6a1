package e2e

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/internal/synth"
)

// TestProxyUpstreamFastPathAndReplicas: in front of a real Prometheus, a query no tombstone can
// touch is the upstream's own answer (gzip passed through), a tombstone added through one proxy's
// API masks there at once and on a second proxy within its refresh interval, and error envelopes
// are byte for byte Prometheus'.
func TestProxyUpstreamFastPathAndReplicas(t *testing.T) {
	var series []labels.Labels
	for u := 0; u < 5; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
		series = append(series, labels.FromStrings("__name__", "up", "job", "node", "instance", fmt.Sprint(u)))
	}
	_, dir, err := synth.Write(context.Background(), t.TempDir(), synth.Block{Series: series, MinTime: blockStart, MaxTime: blockStart + 7_200_000, Step: 15_000})
	testutil.Ok(t, err)
	upstream := startPrometheus(t, []string{dir})

	bucketDir := t.TempDir()
	tokenFile := t.TempDir() + "/token"
	const token = "e2e-admin-token-0123456789"
	testutil.Ok(t, os.WriteFile(tokenFile, []byte(token), 0o600))
	a := startProxy(t, bucketDir, "--upstream.url="+upstream.URL, "--tombstones.refresh-interval=200ms", "--web.admin-token-file="+tokenFile)
	b := startProxy(t, bucketDir, "--upstream.url="+upstream.URL, "--tombstones.refresh-interval=200ms")

	at := fmt.Sprint(blockStart/1000 + 3600)
	ask := func(p *proxyProc, path string, form url.Values, gz bool) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, p.URL+path, strings.NewReader(form.Encode()))
		testutil.Ok(t, err)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		resp, err := http.DefaultClient.Do(req)
		testutil.Ok(t, err)
		defer resp.Body.Close()
		var body io.Reader = resp.Body
		if resp.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(resp.Body)
			testutil.Ok(t, err)
			body = zr
		}
		raw, err := io.ReadAll(body)
		testutil.Ok(t, err)
		return resp.StatusCode, resp.Header, string(raw)
	}

	// Add a tombstone through proxy a's API; it masks on a at once.
	req, err := http.NewRequest(http.MethodPost, a.URL+"/api/v1/admin/tsdb/delete_series",
		strings.NewReader(url.Values{"match[]": {`http_requests_total{user_id="3"}`}, "end": {fmt.Sprint(blockStart/1000 + 7200)}}.Encode()))
	testutil.Ok(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	testutil.Ok(t, err)
	resp.Body.Close()
	testutil.Equals(t, http.StatusNoContent, resp.StatusCode)

	masked := url.Values{"query": {`count(http_requests_total)`}, "time": {at}}
	_, _, got := ask(a, "/api/v1/query", masked, false)
	testutil.Assert(t, strings.Contains(got, `"4"`), "proxy a: %s", got)
	// Proxy b sees it within its refresh interval.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, got = ask(b, "/api/v1/query", masked, false)
		if strings.Contains(got, `"4"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	testutil.Assert(t, strings.Contains(got, `"4"`), "proxy b after its refresh interval: %s", got)

	// A query about another metric cannot meet the tombstone: it is the upstream's own answer,
	// compressed as the client asked.
	untouched := url.Values{"query": {`sum by (job) (up)`}, "time": {at}}
	code, hdr, got := ask(a, "/api/v1/query", untouched, true)
	testutil.Equals(t, http.StatusOK, code)
	testutil.Equals(t, "gzip", hdr.Get("Content-Encoding"))
	_, want := upstream.Post(t, "/api/v1/query", untouched)
	testutil.Equals(t, string(want), got)
	n, ok := a.metric(t, "lethe_proxy_fast_path_requests_total")
	testutil.Assert(t, ok && n >= 1, "fast path counter %v", n)

	// Errors look exactly like Prometheus' own.
	for _, form := range []url.Values{
		{"query": {`rate(up[5m]`}},
		{"query": {`up`}, "time": {"yesterday"}},
		{"query": {`sum(up) by`}},
	} {
		code, _, got := ask(a, "/api/v1/query", form, false)
		wantCode, want := upstream.Post(t, "/api/v1/query", form)
		testutil.Equals(t, wantCode, code, form.Encode())
		testutil.Equals(t, string(want), got, form.Encode())
	}
}
