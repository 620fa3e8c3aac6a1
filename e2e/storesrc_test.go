package e2e

// lethe-proxy's PromQL API reading raw series through Thanos Query's gRPC StoreAPI
// (--upstream.store, replicas deduplicated by lethe with --upstream.replica-label), against the
// ground truth of TestStoreAPIFilterInThanosStack: the same Thanos stack over blocks written
// without the deleted samples. Every helper here starts with ssrc.

import (
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
)

// ssrcQuerier starts a Thanos querier over the endpoint, deduplicating replicas, waits until it
// answers the query at ts with data, and returns it with its gRPC (StoreAPI) address.
func ssrcQuerier(t *testing.T, endpoint, query string, ts int64) (*benchProc, string) {
	t.Helper()
	var grpcAddr string
	q := startBenchProc(t, "thanos-query", t.TempDir(), thxThanosPath(t), func(addr string) []string {
		grpcAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		return []string{"query", "--http-address=" + addr, "--grpc-address=" + grpcAddr,
			"--endpoint=" + endpoint, "--query.replica-label=replica", "--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=info"}
	})
	ssrcWaitData(t, q, query, ts)
	return q, grpcAddr
}

// ssrcWaitData waits until p answers the query at ts with data.
func ssrcWaitData(t *testing.T, p *benchProc, query string, ts int64) {
	t.Helper()
	deadline := time.Now().Add(thxQueryTimeout)
	for {
		r := thxGet(t, p, "/api/v1/query", url.Values{"query": {query}, "time": {formatPromTime(ts)}})
		if len(r.Data.Result) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer %s after %v; log:\n%s", p.name, query, thxQueryTimeout, p.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ssrcProxy starts the lethe-proxy binary over the bucket's tombstones, reading through the
// StoreAPI at store, with replica as the replica label, and extra flags.
func ssrcProxy(t *testing.T, b cliBucket, store string, extra ...string) *benchProc {
	t.Helper()
	dir := t.TempDir()
	p := startBenchProc(t, "lethe-proxy", dir, binaries.proxy, func(addr string) []string {
		return append([]string{b.conf, "--upstream.store=" + store, "--upstream.replica-label=replica",
			"--web.listen-address=" + addr, "--data-dir=" + filepath.Join(dir, "data"), "--log.level=warn"}, extra...)
	})
	ssrcWaitData(t, p, `count(temperature)`, sapiT0+thxHour)
	return p
}

// TestStoreSourceInFrontOfThanosQuery: lethe-proxy --upstream.store=<thanos query's gRPC address>
// answers query, query_range, series, labels and label values as the ground truth querier, native
// histograms included, replicas deduplicated (resets() too), look-ups with no start and end too.
func TestStoreSourceInFrontOfThanosQuery(t *testing.T) {
	masked, truth := sapiBuckets(t, sapiTestBlock, sapiDeletions)
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)
	direct, directGRPC := ssrcQuerier(t, maskedStore, `count(temperature)`, sapiT0+thxHour)
	want, _ := ssrcQuerier(t, truthStore, `count(temperature)`, sapiT0+thxHour)
	viaLethe := ssrcProxy(t, masked, directGRPC)

	at := func(m int64) string { return formatPromTime(sapiT0 + m*sapiMin) }
	same := ssrcCompare(t, viaLethe, want, ssrcBattery())
	t.Logf("%d of %d requests through lethe-proxy --upstream.store equal the ground truth", same, len(ssrcBattery()))

	// All-time look-ups return data.
	for _, p := range []string{"/api/v1/labels", "/api/v1/label/__name__/values"} {
		got := sapiAnswer(t, viaLethe, p, url.Values{})
		testutil.Assert(t, strings.Contains(got, "http_requests_total") || strings.Contains(got, "__name__"), "%s with no start and end: %s", p, got)
	}
	// lethe masked something: the querier asked directly answers otherwise.
	q := url.Values{"query": {`count_over_time(http_requests_total{instance="web-1"}[2h])`}, "time": {at(120)}}
	testutil.Assert(t, sapiAnswer(t, direct, "/api/v1/query", q) != sapiAnswer(t, viaLethe, "/api/v1/query", q), "the querier's own answer equals lethe's: nothing was masked")
}

// TestStoreSourceWithTheQuerierAsFastPath: lethe-proxy --upstream.store=<querier gRPC>
// --upstream.url=<the same querier's HTTP API> answers the battery as the ground truth, sends
// what no tombstone can touch to the querier untouched, and serves the querier's rules and alerts.
func TestStoreSourceWithTheQuerierAsFastPath(t *testing.T) {
	// The secret's series deleted by its name too: {user_id="42"} alone may meet every series
	// at every time, and no request would meet no tombstone.
	dels := append([]thxDeletion{{`auth_tokens_seen_total{user_id="42"}`, sapiDeletions[0].start, sapiDeletions[0].end}}, sapiDeletions[1:]...)
	masked, truth := sapiBuckets(t, sapiTestBlock, dels)
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)
	direct, directGRPC := ssrcQuerier(t, maskedStore, `count(temperature)`, sapiT0+thxHour)
	want, _ := ssrcQuerier(t, truthStore, `count(temperature)`, sapiT0+thxHour)
	viaLethe := ssrcProxy(t, masked, directGRPC, "--upstream.url="+direct.URL)

	fastBefore := ssrcFastPathRequests(t, viaLethe)
	requests := ssrcBattery()
	same := ssrcCompare(t, viaLethe, want, requests)
	fast := ssrcFastPathRequests(t, viaLethe) - fastBefore
	t.Logf("%d of %d requests through lethe-proxy --upstream.store --upstream.url equal the ground truth; %.0f went the fast path", same, len(requests), fast)
	testutil.Assert(t, fast > 0, "no request went the fast path")
	testutil.Assert(t, fast < float64(len(requests)), "every request went the fast path: nothing was masked")
	for _, p := range []string{"/api/v1/rules", "/api/v1/alerts"} {
		got := sapiAnswer(t, viaLethe, p, url.Values{})
		testutil.Assert(t, strings.Contains(got, `"status":"success"`), "%s: %s", p, got)
	}
}

// ssrcFastPathRequests reads lethe_proxy_fast_path_requests_total from the proxy's /metrics.
func ssrcFastPathRequests(t *testing.T, p *benchProc) float64 {
	t.Helper()
	body := sapiAnswerRaw(t, p, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "lethe_proxy_fast_path_requests_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			testutil.Ok(t, err)
			return f
		}
	}
	t.Fatalf("no lethe_proxy_fast_path_requests_total in /metrics")
	return 0
}

// ssrcCompare is sapiCompare between lethe-proxy and a Thanos querier, whose query answers carry
// an empty "analysis" object that Prometheus' API (lethe's) does not have; lethe's fast path
// passes the querier's answer on as it is, so it is left out of both.
func ssrcCompare(t *testing.T, viaLethe, want *benchProc, requests []sapiRequest) int {
	t.Helper()
	return sapiCompareWith(t, viaLethe, want, requests, func(exp string) string {
		return strings.Replace(exp, `"data":{"analysis":{},`, `"data":{`, 1)
	})
}

// ssrcBattery is every request kind inside, across and outside the deleted ranges of
// sapiDeletions, replicas deduplicated, native histograms included, and each query with
// partial_response=false too.
func ssrcBattery() []sapiRequest {
	return sapiRequests([]string{
		`http_requests_total`,
		`rate(http_requests_total[5m])`,
		`sum by (job) (rate(http_requests_total[10m]))`,
		`resets(http_requests_total{job="web",instance="web-1"}[1h])`,
		`resets(http_requests_total{job="web"}[1h])`,
		`increase(http_requests_total{job="web"}[30m])`,
		`temperature`,
		`max_over_time(temperature[15m])`,
		`auth_tokens_seen_total`,
		`count by (token) (auth_tokens_seen_total)`,
		`count({__name__=~".+"})`,
		`count_over_time({job="web"}[30m])`,
		`{job="worker",instance="worker-1"}`,
		`request_duration_seconds`,
		`histogram_quantile(0.5, sum by (job) (rate(request_duration_seconds[10m])))`,
		`histogram_count(rate(request_duration_seconds[5m]))`,
	}, func(e string, at func(m int64) string) []sapiRequest {
		return []sapiRequest{{"/api/v1/query", url.Values{"query": {e}, "time": {at(15)}, "partial_response": {"false"}}}}
	})
}

// TestStoreSourceInStoreAPIMode: lethe-proxy --store.endpoint=<store gateway> (the StoreAPI
// mode, with no --upstream.url) answers its own PromQL API from the store gateway directly,
// deduplicating the replicas itself, as the ground truth querier does.
func TestStoreSourceInStoreAPIMode(t *testing.T) {
	masked, truth := sapiBuckets(t, sapiTestBlock, sapiDeletions)
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)
	want, _ := ssrcQuerier(t, truthStore, `count(temperature)`, sapiT0+thxHour)
	viaLethe := ssrcStoreModeProxy(t, masked, maskedStore)
	requests := ssrcBattery()
	same := ssrcCompare(t, viaLethe, want, requests)
	t.Logf("%d of %d requests through lethe-proxy --store.endpoint equal the ground truth", same, len(requests))
}

// ssrcStoreModeProxy starts the lethe-proxy binary in the StoreAPI mode in front of store, with
// replica as the replica label, and waits until its own HTTP query API answers with data.
func ssrcStoreModeProxy(t *testing.T, b cliBucket, store string) *benchProc {
	t.Helper()
	dir := t.TempDir()
	p := startBenchProc(t, "lethe-proxy", dir, binaries.proxy, func(addr string) []string {
		return []string{b.conf, "--store.endpoint=" + store, "--upstream.replica-label=replica",
			"--grpc-address=" + fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			"--web.listen-address=" + addr, "--data-dir=" + filepath.Join(dir, "data"), "--log.level=warn"}
	})
	ssrcWaitData(t, p, `count(temperature)`, sapiT0+thxHour)
	return p
}

// sapiAnswerRaw is a process's answer to a GET, as it is.
func sapiAnswerRaw(t *testing.T, p *benchProc, path string) string {
	t.Helper()
	resp, err := p.client.Get(p.URL + path)
	testutil.Ok(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	testutil.Equals(t, 200, resp.StatusCode, "%s: %s", path, body)
	return string(body)
}
