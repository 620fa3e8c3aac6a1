package e2e

// lethe-proxy's PromQL API reading raw series through Thanos Query's gRPC StoreAPI
// (--upstream.store, replicas deduplicated by lethe with --upstream.replica-label), against the
// ground truth of TestStoreAPIFilterInThanosStack: the same Thanos stack over blocks written
// without the deleted samples. Every helper here starts with ssrc.

import (
	"fmt"
	"net/url"
	"path/filepath"
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
// StoreAPI at store, with replica as the replica label.
func ssrcProxy(t *testing.T, b cliBucket, store string) *benchProc {
	t.Helper()
	dir := t.TempDir()
	p := startBenchProc(t, "lethe-proxy", dir, binaries.proxy, func(addr string) []string {
		return []string{b.conf, "--upstream.store=" + store, "--upstream.replica-label=replica",
			"--web.listen-address=" + addr, "--data-dir=" + filepath.Join(dir, "data"), "--log.level=warn"}
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

// ssrcCompare is sapiCompare between lethe-proxy and a Thanos querier, whose query answers carry
// an empty "analysis" object that Prometheus' API (lethe's) does not have.
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
