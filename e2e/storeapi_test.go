package e2e

// lethe's StoreAPI filter inside a real Thanos stack: `thanos store` over a FILESYSTEM bucket of
// two replicas, lethe's filter in front of it (in this process), `thanos query` in front of
// lethe. The ground truth is the same Thanos stack over a bucket whose blocks were written without
// the deleted samples. Every helper here starts with sapi.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/proxy"
	"github.com/lethe-project/lethe/proxy/storeapi"
	"github.com/lethe-project/lethe/tombstones"
)

// sapiT0 is 2026-11-01T00:00:00Z, a 2h block boundary.
const (
	sapiT0   = int64(1793491200000)
	sapiStep = int64(15_000)
	sapiMin  = int64(60_000)
)

// sapiSeries are the test's float series; sapiHistograms its native histogram series.
var (
	sapiSeries = []labels.Labels{
		labels.FromStrings("__name__", "http_requests_total", "job", "web", "instance", "web-1"),
		labels.FromStrings("__name__", "http_requests_total", "job", "web", "instance", "web-2"),
		labels.FromStrings("__name__", "temperature", "job", "sensor", "room", "a"),
		labels.FromStrings("__name__", "temperature", "job", "sensor", "room", "b"),
		labels.FromStrings("__name__", "auth_tokens_seen_total", "job", "auth", "user_id", "42", "token", "s3cret-token"),
		labels.FromStrings("__name__", "auth_tokens_seen_total", "job", "auth", "user_id", "7", "token", "public"),
	}
	sapiHistograms = []labels.Labels{
		labels.FromStrings("__name__", "request_duration_seconds", "job", "worker", "instance", "worker-1"),
	}
	// sapiDeletions cover a whole series (with its secret label value), parts of a counter and of
	// a native histogram across chunk boundaries, and one replica's part of a gauge.
	sapiDeletions = []thxDeletion{
		{`{user_id="42"}`, sapiT0 - thxHour, sapiT0 + 3*thxHour},
		{`http_requests_total{instance="web-1"}`, sapiT0 + 30*sapiMin, sapiT0 + 50*sapiMin},
		{`request_duration_seconds{job="worker"}`, sapiT0 + 60*sapiMin + 7_000, sapiT0 + 70*sapiMin},
		{`temperature{room="a",replica="r0"}`, sapiT0 + 10*sapiMin, sapiT0 + 20*sapiMin},
	}
)

// sapiValue is a float series' sample: counters grow with a reset at 01:05 for web-2, gauges swing.
func sapiValue(i int, ts int64) float64 {
	m := float64(ts-sapiT0) / float64(sapiMin)
	switch {
	case i == 1 && ts >= sapiT0+65*sapiMin:
		return m - 65
	case i == 2 || i == 3:
		return float64(20+i) + float64(int64(m)%17) - float64(int64(m)%5)
	}
	return float64(i+1) * m
}

// sapiWrite writes a 2h block of the test's series with the replica's external labels, leaving
// out the samples drop says, and uploads it.
func sapiWrite(t *testing.T, bkt *filesystem.Bucket, replica string, drop func(labels.Labels, int64) bool) {
	t.Helper()
	ext := map[string]string{"cluster": "c1", "replica": replica}
	withExt := func(ls labels.Labels) labels.Labels {
		b := labels.NewBuilder(ls)
		for k, v := range ext {
			b.Set(k, v)
		}
		return b.Labels()
	}
	dir := t.TempDir()
	w, err := tsdb.NewBlockWriter(slog.New(slog.DiscardHandler), dir, 2*thxHour)
	testutil.Ok(t, err)
	defer w.Close()
	ctx := context.Background()
	app := w.Appender(ctx)
	for ts := sapiT0; ts < sapiT0+2*thxHour; ts += sapiStep {
		for i, ls := range sapiSeries {
			if !drop(withExt(ls), ts) {
				_, err := app.Append(0, ls, ts, sapiValue(i, ts))
				testutil.Ok(t, err)
			}
		}
		for i, ls := range sapiHistograms {
			if !drop(withExt(ls), ts) {
				var h *histogram.Histogram = synth.DefaultHistogram(i, (ts-sapiT0)/sapiStep)
				_, err := app.AppendHistogram(0, ls, ts, h, nil)
				testutil.Ok(t, err)
			}
		}
	}
	testutil.Ok(t, app.Commit())
	id, err := w.Flush(ctx)
	testutil.Ok(t, err)
	bdir := dir + "/" + id.String()
	raw, err := os.ReadFile(bdir + "/" + block.MetaFilename)
	testutil.Ok(t, err)
	meta, err := block.DecodeMeta(raw)
	testutil.Ok(t, err)
	meta.MaxTime = sapiT0 + 2*thxHour
	meta.Thanos = &block.Thanos{Version: 1, Labels: ext, Source: "sidecar"}
	testutil.Ok(t, block.Upload(ctx, bkt, bdir, meta))
}

// sapiDeleted reports whether one of the deletions covers the sample.
func sapiDeleted(t *testing.T) func(labels.Labels, int64) bool {
	type sel struct {
		ms         []*labels.Matcher
		start, end int64
	}
	var sels []sel
	for _, d := range sapiDeletions {
		ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(d.selector)
		testutil.Ok(t, err)
		sels = append(sels, sel{ms, d.start, d.end})
	}
	return func(ls labels.Labels, ts int64) bool {
		for _, s := range sels {
			if ts < s.start || ts > s.end {
				continue
			}
			matches := true
			for _, m := range s.ms {
				matches = matches && m.Matches(ls.Get(m.Name))
			}
			if matches {
				return true
			}
		}
		return false
	}
}

// sapiStore starts a Thanos store gateway over the bucket and returns it with its gRPC address.
func sapiStore(t *testing.T, b cliBucket) (*benchProc, string) {
	t.Helper()
	var grpcAddr string
	p := startBenchProc(t, "thanos-store", t.TempDir(), thxThanosPath(t), func(addr string) []string {
		grpcAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		return []string{"store", b.conf, "--data-dir=" + t.TempDir(), "--http-address=" + addr, "--grpc-address=" + grpcAddr,
			"--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=info"}
	})
	return p, grpcAddr
}

// sapiQuerier starts a Thanos querier over the endpoint, deduplicating replicas, and waits until it
// answers with data.
func sapiQuerier(t *testing.T, endpoint string) *benchProc {
	t.Helper()
	q := startBenchProc(t, "thanos-query", t.TempDir(), thxThanosPath(t), func(addr string) []string {
		return []string{"query", "--http-address=" + addr, "--grpc-address=" + fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			"--endpoint=" + endpoint, "--query.replica-label=replica", "--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=info"}
	})
	deadline := time.Now().Add(thxQueryTimeout)
	for {
		r := thxGet(t, q, "/api/v1/query", url.Values{"query": {`count(temperature)`}, "time": {formatPromTime(sapiT0 + thxHour)}})
		if len(r.Data.Result) > 0 {
			return q
		}
		if time.Now().After(deadline) {
			t.Fatalf("thanos query over %s does not answer after %v; log:\n%s", endpoint, thxQueryTimeout, q.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sapiClock is a clock the test moves.
type sapiClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *sapiClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *sapiClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// sapiFilter serves lethe's StoreAPI filter on 127.0.0.1:0 in front of the stores, with the
// tombstones of the bucket, and returns its address.
func sapiFilter(t *testing.T, b cliBucket, clock *sapiClock, stores ...string) string {
	t.Helper()
	bkt, err := filesystem.NewBucket(b.dir)
	testutil.Ok(t, err)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	mask := proxy.NewMask(tombstones.NewStore(bkt, reg, tombstones.WithClock(clock.Now)), logger, reg, time.Minute)
	testutil.Ok(t, mask.Refresh(context.Background()))
	sts, closeStores, err := storeapi.Dial(stores)
	testutil.Ok(t, err)
	srv := storeapi.NewGRPCServer(storeapi.NewServer(logger, reg, mask, sts))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	testutil.Ok(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		testutil.Ok(t, <-served)
		testutil.Ok(t, closeStores())
	})
	return l.Addr().String()
}

// sapiAnswer is a querier's normalized answer to one request.
func sapiAnswer(t *testing.T, p *benchProc, path string, params url.Values) string {
	t.Helper()
	resp, err := p.client.Get(p.URL + path + "?" + params.Encode())
	testutil.Ok(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	return normalizeAnswer(t, resp.StatusCode, body, nil)
}

// TestStoreAPIFilterInThanosStack compares what Thanos Query answers through lethe's StoreAPI
// filter with the ground truth: query, query_range, series and label look-ups, inside, across and
// outside the deleted ranges, two replicas deduplicated, a native histogram included. Then it
// makes the tombstones stale and checks that the filter fails closed through the querier.
func TestStoreAPIFilterInThanosStack(t *testing.T) {
	deleted := sapiDeleted(t)
	masked, truth := thxNewBucket(t), thxNewBucket(t)
	for _, b := range []struct {
		bucket cliBucket
		drop   func(labels.Labels, int64) bool
	}{
		{masked, func(labels.Labels, int64) bool { return false }},
		{truth, deleted},
	} {
		bkt, err := filesystem.NewBucket(b.bucket.dir)
		testutil.Ok(t, err)
		for _, r := range []string{"r0", "r1"} {
			sapiWrite(t, bkt, r, b.drop)
		}
	}
	for _, d := range sapiDeletions {
		thxTombstone(t, masked, d)
	}

	clock := &sapiClock{now: time.Now()}
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)
	lethe := sapiFilter(t, masked, clock, maskedStore)
	viaLethe := sapiQuerier(t, lethe)
	want := sapiQuerier(t, truthStore)

	at := func(m int64) string { return formatPromTime(sapiT0 + m*sapiMin) }
	type request struct {
		path   string
		params url.Values
	}
	var requests []request
	exprs := []string{
		`http_requests_total`,
		`rate(http_requests_total[5m])`,
		`sum by (job) (rate(http_requests_total[10m]))`,
		`resets(http_requests_total{job="web"}[1h])`,
		`temperature`,
		`max_over_time(temperature[15m])`,
		`auth_tokens_seen_total`,
		`count by (token) (auth_tokens_seen_total)`,
		`count({__name__=~".+"})`,
		`count_over_time({job="web"}[30m])`,
		`request_duration_seconds`,
		`histogram_quantile(0.5, sum by (job) (rate(request_duration_seconds[10m])))`,
		`histogram_count(rate(request_duration_seconds[5m]))`,
	}
	for _, e := range exprs {
		for _, m := range []int64{5, 15, 35, 45, 62, 68, 75, 110} {
			requests = append(requests, request{"/api/v1/query", url.Values{"query": {e}, "time": {at(m)}}})
		}
		requests = append(requests,
			request{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(0)}, "end": {at(120)}, "step": {"60"}}},
			request{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(25)}, "end": {at(55)}, "step": {"15"}}},
			request{"/api/v1/query", url.Values{"query": {e}, "time": {at(45)}, "dedup": {"false"}}},
		)
	}
	for _, m := range []string{`auth_tokens_seen_total`, `{job="web"}`, `{__name__=~".+"}`, `{user_id="42"}`, `request_duration_seconds`} {
		requests = append(requests,
			request{"/api/v1/series", url.Values{"match[]": {m}}},
			request{"/api/v1/series", url.Values{"match[]": {m}, "start": {at(0)}, "end": {at(120)}}},
			request{"/api/v1/series", url.Values{"match[]": {m}, "start": {at(60)}, "end": {at(120)}}},
		)
	}
	for _, p := range []string{"/api/v1/labels", "/api/v1/label/__name__/values", "/api/v1/label/token/values", "/api/v1/label/user_id/values", "/api/v1/label/instance/values", "/api/v1/label/replica/values"} {
		requests = append(requests,
			request{p, url.Values{}},
			request{p, url.Values{"start": {at(0)}, "end": {at(120)}}},
			request{p, url.Values{"match[]": {`auth_tokens_seen_total`}}},
			request{p, url.Values{"match[]": {`{job="web"}`}, "start": {at(60)}, "end": {at(120)}}},
		)
	}

	same := 0
	for _, r := range requests {
		got, exp := sapiAnswer(t, viaLethe, r.path, r.params), sapiAnswer(t, want, r.path, r.params)
		testutil.Assert(t, !strings.Contains(got, "s3cret"), "%s %v leaks the deleted label value: %s", r.path, r.params, got)
		if testing.Verbose() {
			t.Logf("%s %v: %.300s", r.path, r.params, got)
		}
		if got != exp {
			t.Errorf("%s %v\nthrough lethe: %s\nground truth:  %s", r.path, r.params, got, exp)
			continue
		}
		same++
	}
	t.Logf("%d of %d requests through lethe's StoreAPI filter equal the ground truth", same, len(requests))

	// The filter must have had something to do: through lethe, the data differs from the store's.
	direct := sapiQuerier(t, maskedStore)
	q := url.Values{"query": {`count_over_time(http_requests_total{instance="web-1"}[2h])`}, "time": {at(120)}}
	testutil.Assert(t, sapiAnswer(t, direct, "/api/v1/query", q) != sapiAnswer(t, viaLethe, "/api/v1/query", q), "the store's own answer equals lethe's: nothing was masked")

	// Stale tombstones: the filter fails closed, and the querier with it: with partial responses
	// (Thanos' default) no series and the reason as a warning, without them an error.
	clock.Add(2 * time.Minute)
	q = url.Values{"query": {`temperature`}, "time": {at(15)}}
	stale := sapiAnswer(t, viaLethe, "/api/v1/query", q)
	testutil.Assert(t, strings.Contains(stale, `"result":[]`) && strings.Contains(stale, "tombstones are stale"), "a query with stale tombstones: %s", stale)
	q.Set("partial_response", "false")
	stale = sapiAnswer(t, viaLethe, "/api/v1/query", q)
	testutil.Assert(t, !strings.Contains(stale, `"status":"success"`) && strings.Contains(stale, "tombstones are stale"), "a query with stale tombstones, no partial response: %s", stale)
}
