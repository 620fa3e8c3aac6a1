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
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/thanos-io/objstore/providers/filesystem"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/storepb"
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

// sapiBlock is what sapiWrite writes: float series with their values and native histograms,
// sampled every step in [mint, maxt).
type sapiBlock struct {
	series []labels.Labels
	value  func(i int, ts int64) float64
	// byReplica, when set, gives each replica's own samples instead of value: the sample of float
	// series i at ts, and whether the replica has one.
	byReplica  func(replica string, i int, ts int64) (float64, bool)
	histograms []labels.Labels
	mint, maxt int64
	step       int64
}

// sapiTestBlock is the 2h block of TestStoreAPIFilterInThanosStack.
var sapiTestBlock = sapiBlock{series: sapiSeries, value: sapiValue, histograms: sapiHistograms, mint: sapiT0, maxt: sapiT0 + 2*thxHour, step: sapiStep}

// sapiWrite writes a block with the replica's external labels, leaving out the samples drop
// says, and uploads it.
func sapiWrite(t *testing.T, bkt *filesystem.Bucket, replica string, blk sapiBlock, drop func(labels.Labels, int64) bool) {
	t.Helper()
	bdir, meta := sapiWriteDir(t, replica, blk, drop)
	testutil.Ok(t, block.Upload(context.Background(), bkt, bdir, meta))
}

// sapiExt are the external labels of a replica's blocks.
func sapiExt(replica string) map[string]string {
	return map[string]string{"cluster": "c1", "replica": replica}
}

// sapiWriteDir writes the block of sapiWrite into a directory and returns it with its meta.
func sapiWriteDir(t *testing.T, replica string, blk sapiBlock, drop func(labels.Labels, int64) bool) (string, *block.Meta) {
	t.Helper()
	ext := sapiExt(replica)
	withExt := func(ls labels.Labels) labels.Labels {
		b := labels.NewBuilder(ls)
		for k, v := range ext {
			b.Set(k, v)
		}
		return b.Labels()
	}
	dir := t.TempDir()
	w, err := tsdb.NewBlockWriter(slog.New(slog.DiscardHandler), dir, blk.maxt-blk.mint)
	testutil.Ok(t, err)
	defer w.Close()
	ctx := context.Background()
	app := w.Appender(ctx)
	for ts := blk.mint; ts < blk.maxt; ts += blk.step {
		for i, ls := range blk.series {
			v, ok := 0.0, true
			if blk.byReplica != nil {
				v, ok = blk.byReplica(replica, i, ts)
			} else {
				v = blk.value(i, ts)
			}
			if ok && !drop(withExt(ls), ts) {
				_, err := app.Append(0, ls, ts, v)
				testutil.Ok(t, err)
			}
		}
		for i, ls := range blk.histograms {
			if !drop(withExt(ls), ts) {
				_, err := app.AppendHistogram(0, ls, ts, synth.DefaultHistogram(i, (ts-blk.mint)/blk.step), nil)
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
	meta.MaxTime = blk.maxt
	meta.Thanos = &block.Thanos{Version: 1, Labels: ext, Source: "sidecar"}
	return bdir, meta
}

// sapiBuckets writes the block for replicas r0 and r1 into two buckets: as it is into the masked
// one, with the deletions registered as tombstones, and without the deleted samples into the truth.
func sapiBuckets(t *testing.T, blk sapiBlock, dels []thxDeletion) (masked, truth cliBucket) {
	t.Helper()
	deleted := sapiDeleted(t, dels)
	masked, truth = thxNewBucket(t), thxNewBucket(t)
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
			sapiWrite(t, bkt, r, blk, b.drop)
		}
	}
	for _, d := range dels {
		thxTombstone(t, masked, d)
	}
	return masked, truth
}

// sapiDeleted reports whether one of the deletions covers the sample.
func sapiDeleted(t *testing.T, dels []thxDeletion) func(labels.Labels, int64) bool {
	sels := thxSelectors(t, dels)
	return func(ls labels.Labels, ts int64) bool {
		for _, s := range sels {
			if ts >= s.start && ts <= s.end && s.matches(ls) {
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
// answers the query at ts with data.
func sapiQuerier(t *testing.T, endpoint, query string, ts int64) *benchProc {
	t.Helper()
	q := startBenchProc(t, "thanos-query", t.TempDir(), thxThanosPath(t), func(addr string) []string {
		return []string{"query", "--http-address=" + addr, "--grpc-address=" + fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			"--endpoint=" + endpoint, "--query.replica-label=replica", "--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=info"}
	})
	deadline := time.Now().Add(thxQueryTimeout)
	for {
		r := thxGet(t, q, "/api/v1/query", url.Values{"query": {query}, "time": {formatPromTime(ts)}})
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

// sapiRequest is one request of the battery.
type sapiRequest struct {
	path   string
	params url.Values
}

// sapiCompare asks both queriers every request and reports each answer through lethe that differs
// from the ground truth, or that holds the deleted secret label value; it returns how many agree.
func sapiCompare(t *testing.T, viaLethe, want *benchProc, requests []sapiRequest) int {
	t.Helper()
	return sapiCompareWith(t, viaLethe, want, requests, func(exp string) string { return exp })
}

// sapiCompareWith is sapiCompare with both answers passed through norm first.
func sapiCompareWith(t *testing.T, viaLethe, want *benchProc, requests []sapiRequest, norm func(string) string) int {
	t.Helper()
	same := 0
	for _, r := range requests {
		got, exp := norm(sapiAnswer(t, viaLethe, r.path, r.params)), norm(sapiAnswer(t, want, r.path, r.params))
		testutil.Assert(t, !strings.Contains(got, "s3cret"), "%s %v leaks the deleted label value: %s", r.path, r.params, got)
		if testing.Verbose() {
			t.Logf("%s %v: %.300s", r.path, r.params, got)
		}
		if got != exp {
			t.Errorf("%s %v\nthrough lethe: %.2000s\nground truth:  %.2000s", r.path, r.params, got, exp)
			continue
		}
		same++
	}
	return same
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

// sapiBattery is every request kind of the battery, inside, across and outside the deleted
// ranges: queries and range queries of every data type, series and label look-ups.
func sapiBattery() []sapiRequest {
	return sapiRequests([]string{
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
	}, nil)
}

// sapiRequests is the battery over exprs: each an instant query at minutes through the deleted
// ranges, two range queries, one with dedup=false and what extra adds for it (at gives a minute's
// time), then the series and label look-ups.
func sapiRequests(exprs []string, extra func(e string, at func(m int64) string) []sapiRequest) []sapiRequest {
	at := func(m int64) string { return formatPromTime(sapiT0 + m*sapiMin) }
	var requests []sapiRequest
	for _, e := range exprs {
		for _, m := range []int64{5, 15, 35, 45, 62, 68, 75, 110} {
			requests = append(requests, sapiRequest{"/api/v1/query", url.Values{"query": {e}, "time": {at(m)}}})
		}
		requests = append(requests,
			sapiRequest{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(0)}, "end": {at(120)}, "step": {"60"}}},
			sapiRequest{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(25)}, "end": {at(55)}, "step": {"15"}}},
			sapiRequest{"/api/v1/query", url.Values{"query": {e}, "time": {at(45)}, "dedup": {"false"}}},
		)
		if extra != nil {
			requests = append(requests, extra(e, at)...)
		}
	}
	for _, m := range []string{`auth_tokens_seen_total`, `{job="web"}`, `{__name__=~".+"}`, `{user_id="42"}`, `request_duration_seconds`} {
		requests = append(requests,
			sapiRequest{"/api/v1/series", url.Values{"match[]": {m}}},
			sapiRequest{"/api/v1/series", url.Values{"match[]": {m}, "start": {at(0)}, "end": {at(120)}}},
			sapiRequest{"/api/v1/series", url.Values{"match[]": {m}, "start": {at(60)}, "end": {at(120)}}},
		)
	}
	for _, p := range []string{"/api/v1/labels", "/api/v1/label/__name__/values", "/api/v1/label/token/values", "/api/v1/label/user_id/values", "/api/v1/label/instance/values", "/api/v1/label/replica/values"} {
		requests = append(requests,
			sapiRequest{p, url.Values{}},
			sapiRequest{p, url.Values{"start": {at(0)}, "end": {at(120)}}},
			sapiRequest{p, url.Values{"match[]": {`auth_tokens_seen_total`}}},
			sapiRequest{p, url.Values{"match[]": {`{job="web"}`}, "start": {at(60)}, "end": {at(120)}}},
		)
	}
	return requests
}

// TestStoreAPIFilterInThanosStack compares what Thanos Query answers through lethe's StoreAPI
// filter with the ground truth: query, query_range, series and label look-ups, inside, across and
// outside the deleted ranges, two replicas deduplicated, a native histogram included. Then it
// makes the tombstones stale and checks that the filter fails closed through the querier.
func TestStoreAPIFilterInThanosStack(t *testing.T) {
	masked, truth := sapiBuckets(t, sapiTestBlock, sapiDeletions)

	clock := &sapiClock{now: time.Now()}
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)
	lethe := sapiFilter(t, masked, clock, maskedStore)
	viaLethe := sapiQuerier(t, lethe, `count(temperature)`, sapiT0+thxHour)
	want := sapiQuerier(t, truthStore, `count(temperature)`, sapiT0+thxHour)

	at := func(m int64) string { return formatPromTime(sapiT0 + m*sapiMin) }
	requests := sapiBattery()
	same := sapiCompare(t, viaLethe, want, requests)
	t.Logf("%d of %d requests through lethe's StoreAPI filter equal the ground truth", same, len(requests))

	// The filter must have had something to do: through lethe, the data differs from the store's.
	direct := sapiQuerier(t, maskedStore, `count(temperature)`, sapiT0+thxHour)
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

// TestStoreAPIFilterDownsampled: the real `thanos compact` downsamples 48h blocks of two replicas
// to 5m, in the masked bucket from all samples and in the truth from what survives the deletions.
// At max_source_resolution=5m, Thanos Query through lethe answers as the truth: every deletion
// covers whole 5m windows, so an aggregate whose window a deleted range meets drops out as the
// window does from the truth's own downsampling. (Counter aggregates are cut harder than that,
// see chunkcut.CutAggregates; rate() is asked of an untouched counter only.)
func TestStoreAPIFilterDownsampled(t *testing.T) {
	thxThanosPath(t) // fail early without the binary
	blk := sapiBlock{
		series: []labels.Labels{
			labels.FromStrings("__name__", "load", "job", "api", "user_id", "0"),
			labels.FromStrings("__name__", "load", "job", "api", "user_id", "1"),
			labels.FromStrings("__name__", "load", "job", "api", "user_id", "2"),
			labels.FromStrings("__name__", "reqs_total", "job", "api", "user_id", "0"),
		},
		value: func(i int, ts int64) float64 {
			m := (ts - sapiT0) / sapiMin
			if i == 3 {
				return float64(m)
			}
			return float64(int64(i*7)+m%23) - float64(m%3)
		},
		mint: sapiT0, maxt: sapiT0 + 48*thxHour, step: sapiMin,
	}
	dels := []thxDeletion{
		{`load{user_id="1"}`, sapiT0 + 10*thxHour, sapiT0 + 12*thxHour - 1},
		{`load{user_id="2",replica="r0"}`, sapiT0 + 20*thxHour, sapiT0 + 20*thxHour + 30*sapiMin - 1},
		{`load{user_id="2"}`, sapiT0 + 30*thxHour + 5*sapiMin, sapiT0 + 30*thxHour + 15*sapiMin - 1},
	}
	masked, truth := sapiBuckets(t, blk, dels)
	for _, b := range []cliBucket{masked, truth} {
		thxCompactTo5m(t, b, 2) // One per replica.
	}

	clock := &sapiClock{now: time.Now()}
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)
	lethe := sapiFilter(t, masked, clock, maskedStore)
	viaLethe := sapiQuerier(t, lethe, `count(load)`, sapiT0+thxHour)
	want := sapiQuerier(t, truthStore, `count(load)`, sapiT0+thxHour)

	at := func(h, m int64) string { return formatPromTime(sapiT0 + h*thxHour + m*sapiMin) }
	var requests []sapiRequest
	for _, e := range []string{
		`min_over_time(load[30m])`, `max_over_time(load[30m])`, `count_over_time(load[30m])`,
		`sum_over_time(load[1h])`, `avg_over_time(load[1h])`, `count(count_over_time(load[10m]))`,
		`rate(reqs_total[1h])`,
	} {
		for _, ts := range []string{at(9, 50), at(10, 20), at(11, 58), at(12, 10), at(20, 15), at(20, 40), at(30, 10), at(30, 30), at(40, 0)} {
			requests = append(requests,
				sapiRequest{"/api/v1/query", url.Values{"query": {e}, "time": {ts}, "max_source_resolution": {"5m"}}},
				sapiRequest{"/api/v1/query", url.Values{"query": {e}, "time": {ts}, "max_source_resolution": {"5m"}, "dedup": {"false"}}},
			)
		}
		requests = append(requests,
			sapiRequest{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(0, 0)}, "end": {at(47, 0)}, "step": {"1800"}, "max_source_resolution": {"5m"}}},
			sapiRequest{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(0, 0)}, "end": {at(47, 0)}, "step": {"1800"}, "max_source_resolution": {"5m"}, "dedup": {"false"}}},
			sapiRequest{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(9, 0)}, "end": {at(13, 0)}, "step": {"300"}, "max_source_resolution": {"5m"}}},
			sapiRequest{"/api/v1/query_range", url.Values{"query": {e}, "start": {at(19, 30)}, "end": {at(21, 0)}, "step": {"300"}, "max_source_resolution": {"5m"}, "dedup": {"false"}}},
		)
	}
	// Deduplicated, the replica whose 5m windows went is filled in by the other: through lethe with
	// every window of the other replica; in the truth, whose r0 chunks Thanos' downsampler cut at
	// other places, Thanos' deduplication switches replicas two windows later (measured: 4 windows
	// of 6 counted in count_over_time(load{user_id="2"}[30m]) at 20:15). Neither shows a deleted
	// sample; the replicas themselves (dedup=false above) agree with the truth. So user 2's
	// deduplicated answers around that deletion are left out here.
	for i, r := range requests {
		if r.params.Get("dedup") == "" && (r.params.Get("time") == at(20, 15) || r.params.Get("time") == at(20, 40) || r.params.Get("start") == at(0, 0)) {
			q := url.Values{}
			for k, v := range r.params {
				q[k] = v
			}
			q.Set("query", strings.ReplaceAll(r.params.Get("query"), "load[", `load{user_id!="2"}[`))
			requests[i].params = q
		}
	}
	same := sapiCompare(t, viaLethe, want, requests)
	t.Logf("%d of %d requests at max_source_resolution=5m through lethe's StoreAPI filter equal the ground truth", same, len(requests))

	// Over the wire, at 5m lethe sends the store's aggregate chunks, without user 1's deleted
	// windows and with the others.
	conn, err := grpc.NewClient(lethe, grpc.WithTransportCredentials(insecure.NewCredentials()))
	testutil.Ok(t, err)
	defer conn.Close()
	cl, err := storepb.NewStoreClient(conn).Series(context.Background(), &storepb.SeriesRequest{
		MinTime: sapiT0, MaxTime: sapiT0 + 48*thxHour, MaxResolutionWindow: thxRes5m,
		Aggregates: []storepb.Aggr{storepb.Aggr_COUNT, storepb.Aggr_SUM},
		Matchers: []*storepb.LabelMatcher{
			{Type: storepb.LabelMatcher_EQ, Name: "__name__", Value: "load"},
			{Type: storepb.LabelMatcher_EQ, Name: "user_id", Value: "1"},
		},
	})
	testutil.Ok(t, err)
	windows := map[string]int{}
	for {
		r, err := cl.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		testutil.Ok(t, err)
		s := r.GetSeries()
		if s == nil {
			continue
		}
		var replica string
		for _, l := range s.Labels {
			if l.Name == "replica" {
				replica = l.Value
			}
		}
		for _, c := range s.Chunks {
			testutil.Assert(t, c.Raw == nil && c.Count != nil, "a 5m chunk without its count aggregate: %v", c)
			chk, err := chunkenc.FromData(chunkenc.EncXOR, c.Count.Data)
			testutil.Ok(t, err)
			it := chk.Iterator(nil)
			for it.Next() != chunkenc.ValNone {
				ts := it.AtT()
				testutil.Assert(t, ts < sapiT0+10*thxHour || ts >= sapiT0+12*thxHour+thxRes5m-1, "replica %s keeps the window of %s", replica, thxTime(ts))
				windows[replica]++
			}
		}
	}
	// 48h of 5m windows less the 24 deleted ones, per replica.
	testutil.Equals(t, map[string]int{"r0": 576 - 24, "r1": 576 - 24}, windows)

	// The 5m data is what answered: the store's own answer (through no filter) differs.
	direct := sapiQuerier(t, maskedStore, `count(load)`, sapiT0+thxHour)
	q := url.Values{"query": {`count_over_time(load{user_id="1"}[1h])`}, "time": {at(11, 0)}, "max_source_resolution": {"5m"}}
	testutil.Assert(t, sapiAnswer(t, direct, "/api/v1/query", q) != sapiAnswer(t, viaLethe, "/api/v1/query", q), "the store's own answer equals lethe's: nothing was masked")
}

// TestStoreAPIModeThroughTheBinary runs the StoreAPI mode as operators do: the lethe-proxy binary
// with --store.endpoint in front of a real store gateway and --grpc-address as Thanos Query's
// --endpoint; the querier through it answers the battery as the ground truth, and lethe's HTTP
// server keeps serving its health and deletion endpoints beside the gRPC one.
func TestStoreAPIModeThroughTheBinary(t *testing.T) {
	masked, truth := sapiBuckets(t, sapiTestBlock, sapiDeletions)
	_, maskedStore := sapiStore(t, masked)
	_, truthStore := sapiStore(t, truth)

	grpcAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	conf := masked.confFile(t)
	lethe := startBenchProc(t, "lethe-proxy", dir, binaries.proxy, func(addr string) []string {
		return []string{"--store.endpoint=" + maskedStore, "--grpc-address=" + grpcAddr, "--web.listen-address=" + addr,
			"--objstore.config-file=" + conf, "--data-dir=" + filepath.Join(dir, "data")}
	})
	viaLethe := sapiQuerier(t, grpcAddr, `count(temperature)`, sapiT0+thxHour)
	want := sapiQuerier(t, truthStore, `count(temperature)`, sapiT0+thxHour)

	requests := sapiBattery()
	same := sapiCompare(t, viaLethe, want, requests)
	t.Logf("%d of %d requests through lethe-proxy --store.endpoint equal the ground truth", same, len(requests))

	for _, path := range []string{"/-/ready", "/-/healthy", "/metrics"} {
		resp, err := lethe.client.Get(lethe.URL + path)
		testutil.Ok(t, err)
		testutil.Ok(t, resp.Body.Close())
		testutil.Equals(t, http.StatusOK, resp.StatusCode, path)
	}
}
