package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/internal/synth"
)

// TestProxyQueryAPIMode runs lethe-proxy with --upstream.read=query-api, the path for upstreams
// without remote read (Thanos Query, Mimir, VictoriaMetrics), in front of a real Prometheus, and
// compares it with a Prometheus after its own delete_series and clean_tombstones, on float data.
func TestProxyQueryAPIMode(t *testing.T) {
	var series []labels.Labels
	for u := 0; u < 6; u++ {
		for _, path := range []string{"/a", "/b"} {
			series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u), "path", path))
		}
	}
	series = append(series, labels.FromStrings("__name__", "node_load1", "job", "node", "instance", "n1"))
	_, dir, err := synth.Write(context.Background(), t.TempDir(), synth.Block{Series: series, MinTime: blockStart, MaxTime: blockStart + 7_200_000, Step: 15_000,
		Value: func(i int, ts int64) float64 { return float64(i) + float64((ts-blockStart)/15_000%97) }})
	testutil.Ok(t, err)
	upstream := startPrometheus(t, []string{dir})
	oracle := startPrometheus(t, []string{dir})

	bucketDir := t.TempDir()
	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + bucketDir + "}"
	p := startProxy(t, bucketDir, "--upstream.url="+upstream.URL, "--upstream.read=query-api", "--tombstones.refresh-interval=100ms")

	at := func(d time.Duration) time.Time { return time.UnixMilli(blockStart).Add(d) }
	deletions := []struct {
		match      string
		start, end time.Time
	}{
		{`{user_id="2"}`, at(30 * time.Minute), at(90 * time.Minute)},
		{`http_requests_total{path="/b",user_id="4"}`, at(0), at(3 * time.Hour)},
	}
	for _, d := range deletions {
		r := runLethe(t, conf, "tombstone", "add", "--match", d.match, "--start", d.start.UTC().Format(time.RFC3339), "--end", d.end.UTC().Format(time.RFC3339), "--query.url", upstream.URL)
		testutil.Equals(t, 0, r.code, r.stderr)
		s, e := d.start, d.end
		oracle.DeleteSeries(t, []string{d.match}, &s, &e)
	}
	oracle.CleanTombstones(t)
	p.waitMetric(t, "lethe_proxy_tombstones_loaded", float64(len(deletions)))

	ask := func(base, path string, form url.Values) string {
		t.Helper()
		resp, err := http.PostForm(base+path, form)
		testutil.Ok(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		testutil.Ok(t, err)
		return fmt.Sprint(resp.StatusCode) + " " + normalizeJSON(t, b)
	}
	n := 0
	for _, q := range []string{
		`http_requests_total`, `http_requests_total{user_id="2"}`, `sum by (user_id) (rate(http_requests_total[5m]))`,
		`count_over_time(http_requests_total[20m])`, `max_over_time(http_requests_total{path="/b"}[1h:1m])`,
		`http_requests_total offset 10m`, `absent(http_requests_total{user_id="4",path="/b"})`, `node_load1`,
	} {
		for _, d := range []time.Duration{10 * time.Minute, 30 * time.Minute, 45 * time.Minute, 90 * time.Minute, 100 * time.Minute} {
			form := url.Values{"query": {q}, "time": {formatPromTime(at(d).UnixMilli())}}
			testutil.Equals(t, ask(oracle.URL, "/api/v1/query", form), ask(p.URL, "/api/v1/query", form), "%s at +%v", q, d)
			n++
		}
		form := url.Values{"query": {q}, "start": {formatPromTime(at(0).UnixMilli())}, "end": {formatPromTime(at(2 * time.Hour).UnixMilli())}, "step": {"60"}}
		testutil.Equals(t, ask(oracle.URL, "/api/v1/query_range", form), ask(p.URL, "/api/v1/query_range", form), "range %s", q)
		n++
	}
	form := url.Values{"match[]": {`{user_id="2"}`}, "start": {formatPromTime(at(40 * time.Minute).UnixMilli())}, "end": {formatPromTime(at(80 * time.Minute).UnixMilli())}}
	testutil.Equals(t, ask(oracle.URL, "/api/v1/series", form), ask(p.URL, "/api/v1/series", form))
	t.Logf("%d comparisons in query-api mode", n+1)
}
