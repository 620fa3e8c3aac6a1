package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/internal/synth"
)

// TestProxyInFrontOfThanosQueryAtMaxSourceResolution: Thanos Query asked with
// max_source_resolution=5m answers from the 5m block the real compactor made, whose aggregates are
// stamped at their window's last sample. Two raw samples at the start of a window are deleted:
// the window's aggregate, stamped after them, still holds them. Through lethe-proxy
// --upstream.url, a query the tombstone may meet is evaluated from raw samples (with a warning
// saying so), and answers as Thanos over the bucket the rewriter cleaned, read raw; a query no
// tombstone meets is forwarded whole and answers as Thanos at 5m.
func TestProxyInFrontOfThanosQueryAtMaxSourceResolution(t *testing.T) {
	thxThanosPath(t)
	b := thxNewBucket(t)
	var series []labels.Labels
	for u := 0; u < 8; u++ {
		series = append(series, labels.FromStrings("__name__", "thx_load", "job", "api", "user_id", strconv.Itoa(u)))
	}
	thxUpload(t, b, synth.Block{Series: series, MinTime: blockStart, MaxTime: blockStart + 48*thxHour, Step: 60_000,
		External: map[string]string{"cluster": "thx-ds"}})
	thxCompactTo5m(t, b, 1)

	// 30:00 and 30:01 of user 5, the first two samples of the 5m window [30:00, 30:05).
	del := thxDeletion{`{user_id="5"}`, blockStart + 30*thxHour, blockStart + 30*thxHour + 60_000}
	thxTombstone(t, b, del)
	truth := thxCopyBucket(t, b)
	r := thxRewriterRun(t, truth)
	testutil.Equals(t, 0, r.code, "lethe-rewriter run:\n%s", thxTail(r.stderr))

	_, query := thxStartStoreAndQuerier(t, b)
	_, truthQuery := thxStartStoreAndQuerier(t, truth)
	proxy := startProxy(t, b.dir, "--upstream.url="+query.URL)

	at := func(h, m int64) string { return formatPromTime(blockStart + h*thxHour + m*60_000) }
	rangeOf := func(q, from, to, step, res string) url.Values {
		v := url.Values{"query": {q}, "start": {from}, "end": {to}, "step": {step}}
		if res != "" {
			v.Set("max_source_resolution", res)
		}
		return v
	}
	masked := []url.Values{
		rangeOf(`thx_load{user_id="5"}`, at(29, 0), at(31, 30), "60", "5m"),
		rangeOf(`avg_over_time(thx_load{user_id="5"}[5m])`, at(29, 0), at(31, 30), "60", "5m"),
		rangeOf(`max_over_time(thx_load[10m])`, at(29, 0), at(31, 30), "60", "5m"),
		rangeOf(`sum(thx_load)`, at(29, 30), at(30, 30), "30", "5m"),
		rangeOf(`count_over_time(thx_load{user_id="5"}[5m])`, at(29, 50), at(30, 20), "60", "auto"),
		rangeOf(`avg_over_time(thx_load{user_id="5"}[1h])`, at(30, 0), at(35, 0), "3600", "auto"),
	}
	differs := 0
	for _, params := range masked {
		got := thxGetAt(t, http.DefaultClient, proxy.URL, "/api/v1/query_range", params)
		raw := url.Values{}
		for k, v := range params {
			raw[k] = v
		}
		raw.Set("max_source_resolution", "0s")
		want := thxGet(t, truthQuery, "/api/v1/query_range", raw)
		testutil.Equals(t, thxResultString(t, want), thxResultString(t, got), "%v through lethe vs Thanos over the rewritten bucket, raw", params)
		res := params.Get("max_source_resolution")
		testutil.Assert(t, slices.ContainsFunc(got.Warnings, func(w string) bool { return strings.Contains(w, "max_source_resolution="+res+" is not applied") }),
			"%v: no warning that the resolution is not applied: %v", params, got.Warnings)
		if thxResultString(t, thxGet(t, query, "/api/v1/query_range", params)) != thxResultString(t, want) {
			differs++
		}
	}
	t.Logf("%d of %d masked queries answer otherwise when Thanos is asked at their resolution directly", differs, len(masked))
	testutil.Assert(t, differs > 0, "no query read the 5m block: the test proves nothing")

	// No tombstone meets user 2, nor the hours before the deletion: forwarded, at 5m.
	for _, params := range []url.Values{
		rangeOf(`thx_load{user_id="2"}`, at(10, 0), at(12, 0), "300", "5m"),
		rangeOf(`avg_over_time(thx_load[30m])`, at(20, 0), at(28, 0), "600", "5m"),
	} {
		got := thxGetAt(t, http.DefaultClient, proxy.URL, "/api/v1/query_range", params)
		testutil.Equals(t, thxResultString(t, thxGet(t, query, "/api/v1/query_range", params)), thxResultString(t, got), "%v through lethe vs Thanos", params)
		testutil.Equals(t, 0, len(got.Warnings), "%v: %v", params, got.Warnings)
	}
}

// thxCompactTo5m runs the real compactor over the bucket and checks that it made want 5m blocks.
func thxCompactTo5m(t *testing.T, b cliBucket, want int) {
	t.Helper()
	thxCompact(t, b)
	n := 0
	for _, m := range thxListing(t, b).Blocks {
		if m.Resolution() == thxRes5m {
			n++
		}
	}
	testutil.Equals(t, want, n, "5m blocks made by thanos compact")
}

// thxResultString is an answer's result, series sorted by labels, for comparison.
func thxResultString(t *testing.T, r thxProm) string {
	t.Helper()
	out := make([]string, 0, len(r.Data.Result))
	for _, s := range r.Data.Result {
		out = append(out, fmt.Sprintf("%v %v %v", labels.FromMap(s.Metric), s.Values, s.Value))
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// TestStoreSourceReadsDownsampledAggregates: lethe-proxy --upstream.store=<thanos query's gRPC
// address> keeps max_source_resolution's meaning, as Thanos Query does: each series is read as
// the aggregate its function wants (min, max, count, sum, counter, or sum over count), from the 5m
// blocks the real compactor made of two replicas, the replicas deduplicated. An aggregate whose
// window a deleted range meets is cut by its windows before it is read; the truth is Thanos Query
// asked the same over the bucket the rewriter cleaned (its 5m blocks cut the same way). Thanos
// Query over lethe's StoreAPI filter answers the same: a counter it asks for alone is cut by the
// count's windows, which lethe asks the store for beside it.
func TestStoreSourceReadsDownsampledAggregates(t *testing.T) {
	thxThanosPath(t)
	b := thxNewBucket(t)
	var series []labels.Labels
	for u := 0; u < 8; u++ {
		series = append(series, labels.FromStrings("__name__", "thx_load", "job", "api", "user_id", strconv.Itoa(u)))
	}
	for u := 0; u < 4; u++ {
		series = append(series, labels.FromStrings("__name__", "thx_requests_total", "job", "api", "user_id", strconv.Itoa(u)))
	}
	resetAt := blockStart + 20*thxHour + 25*60_000
	value := func(s int, ts int64) float64 {
		n := (ts - blockStart) / 60_000
		if s < 8 {
			return float64(n%17+int64(s)) + float64(n%5)/4
		}
		if s == 11 && ts >= resetAt {
			n = (ts - resetAt) / 60_000 // user 3's counter restarts.
		}
		return float64(n * int64(s-6))
	}
	for _, replica := range []string{"r0", "r1"} {
		thxUpload(t, b, synth.Block{Series: series, MinTime: blockStart, MaxTime: blockStart + 48*thxHour, Step: 60_000, Value: value,
			Histograms: []labels.Labels{labels.FromStrings("__name__", "thx_latency_seconds", "job", "api", "user_id", "5")},
			External:   map[string]string{"cluster": "thx-ds", "replica": replica}})
	}
	thxCompactTo5m(t, b, 2)

	// User 5's first two samples of the window [30:00, 30:05); user 2's counter over six windows.
	thxTombstone(t, b, thxDeletion{`{user_id="5"}`, blockStart + 30*thxHour, blockStart + 30*thxHour + 60_000})
	thxTombstone(t, b, thxDeletion{`thx_requests_total{user_id="2"}`, blockStart + 20*thxHour + 10*60_000, blockStart + 20*thxHour + 40*60_000})
	truth := thxCopyBucket(t, b)
	r := thxRewriterRun(t, truth)
	testutil.Equals(t, 0, r.code, "lethe-rewriter run:\n%s", thxTail(r.stderr))

	_, storeGRPC := sapiStore(t, b)
	_, truthGRPC := sapiStore(t, truth)
	ts := blockStart + 30*thxHour
	direct, directGRPC := ssrcQuerier(t, storeGRPC, `count(thx_load)`, ts)
	want, _ := ssrcQuerier(t, truthGRPC, `count(thx_load)`, ts)
	proxy := startProxy(t, b.dir, "--upstream.store="+directGRPC, "--upstream.replica-label=replica")
	filtered, _ := ssrcQuerier(t, sapiFilter(t, b, &sapiClock{now: time.Now()}, storeGRPC), `count(thx_load)`, ts)

	at := func(h, m int64) string { return formatPromTime(blockStart + h*thxHour + m*60_000) }
	rangeOf := func(q, from, to, step, res string) (string, url.Values) {
		return "/api/v1/query_range", url.Values{"query": {q}, "start": {from}, "end": {to}, "step": {step}, "max_source_resolution": {res}}
	}
	instant := func(q, ts, res string) (string, url.Values) {
		return "/api/v1/query", url.Values{"query": {q}, "time": {ts}, "max_source_resolution": {res}}
	}
	type request struct {
		path   string
		params url.Values
	}
	var requests []request
	add := func(path string, params url.Values) { requests = append(requests, request{path, params}) }
	add(rangeOf(`thx_load{user_id="5"}`, at(29, 0), at(31, 30), "60", "5m"))
	add(rangeOf(`avg_over_time(thx_load{user_id="5"}[10m])`, at(29, 0), at(31, 30), "60", "5m"))
	add(rangeOf(`max_over_time(thx_load[10m])`, at(29, 0), at(31, 30), "120", "5m"))
	add(rangeOf(`min_over_time(thx_load{user_id="5"}[30m])`, at(28, 0), at(33, 0), "1800", "auto"))
	add(rangeOf(`sum(thx_load)`, at(29, 30), at(30, 30), "30", "5m"))
	add(rangeOf(`count_over_time(thx_load{user_id="5"}[15m])`, at(29, 30), at(30, 30), "60", "5m"))
	add(rangeOf(`sum_over_time(thx_load{user_id="5"}[15m])`, at(29, 30), at(30, 30), "60", "5m"))
	add(rangeOf(`rate(thx_requests_total[30m])`, at(19, 0), at(22, 0), "300", "5m"))
	add(rangeOf(`increase(thx_requests_total{user_id=~"2|3"}[1h])`, at(19, 0), at(23, 0), "1800", "auto"))
	add(rangeOf(`sum by (job) (rate(thx_requests_total[1h]))`, at(18, 0), at(24, 0), "1800", "auto"))
	add(instant(`max_over_time(thx_load{user_id="5"}[1h])`, at(30, 30), "5m"))
	add(instant(`thx_requests_total{user_id="2"}`, at(20, 30), "1h"))
	add(rangeOf(`thx_latency_seconds`, at(29, 0), at(31, 0), "60", "5m"))
	add(rangeOf(`histogram_quantile(0.9, rate(thx_latency_seconds[30m]))`, at(28, 0), at(32, 0), "300", "5m"))
	add(rangeOf(`histogram_count(sum_over_time(thx_latency_seconds[15m]))`, at(29, 0), at(31, 0), "300", "5m"))

	differs := 0
	for _, req := range requests {
		got := thxGetAt(t, http.DefaultClient, proxy.URL, req.path, req.params)
		truthAnswer := thxGet(t, want, req.path, req.params)
		testutil.Equals(t, thxResultString(t, truthAnswer), thxResultString(t, got), "%s %v through lethe vs Thanos over the rewritten bucket", req.path, req.params)
		testutil.Assert(t, len(thxResultString(t, got)) > 0, "%s %v: no data", req.path, req.params)
		testutil.Equals(t, 0, len(got.Warnings), "%s %v: %v", req.path, req.params, got.Warnings)
		testutil.Equals(t, thxResultString(t, truthAnswer), thxResultString(t, thxGet(t, filtered, req.path, req.params)), "%s %v through Thanos Query over lethe's StoreAPI filter", req.path, req.params)
		if thxResultString(t, thxGet(t, direct, req.path, req.params)) != thxResultString(t, truthAnswer) {
			differs++
		}
		raw := url.Values{}
		for k, v := range req.params {
			raw[k] = v
		}
		raw.Set("max_source_resolution", "0s")
		if thxResultString(t, thxGet(t, want, req.path, raw)) != thxResultString(t, truthAnswer) {
			differs += 100 // Read from aggregates: raw data answers otherwise.
		}
	}
	t.Logf("of %d requests, %d answer otherwise from the querier asked directly, %d from raw data", len(requests), differs%100, differs/100)
	testutil.Assert(t, differs%100 > 0, "no request meets a deleted sample: the test proves nothing")
	testutil.Assert(t, differs/100 > len(requests)/2, "most requests answer as raw data does: the 5m blocks were not read")
}
