package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/proxy"
	"github.com/lethe-project/lethe/tombstones"
)

const loadToken = "load-test-admin-token-0123456789"

// loadCase is one request a Grafana dashboard sends, with its answer through lethe while the load
// tombstone is not in force (Prometheus' own) and while it is (Prometheus' after delete_series).
type loadCase struct {
	name           string
	path           string
	params         url.Values
	plain, deleted string
}

// loadCases are dashboard panels over hours and days, and label browsing, over 24h of data.
func loadCases() []loadCase {
	sec := func(d time.Duration) string { return fmt.Sprint((blockStart + d.Milliseconds()) / 1000) }
	rng := func(q string, from, to, step time.Duration) url.Values {
		return url.Values{"query": {q}, "start": {sec(from)}, "end": {sec(to)}, "step": {fmt.Sprint(int(step.Seconds()))}}
	}
	window := func(from, to time.Duration, kv ...string) url.Values {
		v := url.Values{"start": {sec(from)}, "end": {sec(to)}}
		for i := 0; i < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v
	}
	day := 24 * time.Hour
	return []loadCase{
		{name: "rate by user over a day", path: "/api/v1/query_range", params: rng(`sum by (user_id) (rate(http_requests_total[5m]))`, 0, day, 5*time.Minute)},
		{name: "rate by user over 6 hours", path: "/api/v1/query_range", params: rng(`sum by (user_id) (rate(http_requests_total{job="api"}[2m]))`, 4*time.Hour, 10*time.Hour, time.Minute)},
		{name: "count over two days", path: "/api/v1/query_range", params: rng(`count(http_requests_total)`, -day, day, 10*time.Minute)},
		{name: "last value by user over 3 hours", path: "/api/v1/query_range", params: rng(`max by (user_id) (http_requests_total)`, 5*time.Hour, 8*time.Hour, 30*time.Second)},
		{name: "samples per user in the last hour", path: "/api/v1/query", params: url.Values{"query": {`count_over_time(http_requests_total[1h])`}, "time": {sec(7 * time.Hour)}}},
		{name: "sum now", path: "/api/v1/query", params: url.Values{"query": {`sum(http_requests_total)`}, "time": {sec(6 * time.Hour)}}},
		{name: "series in the deleted hours", path: "/api/v1/series", params: window(5*time.Hour+30*time.Minute, 8*time.Hour+30*time.Minute, "match[]", `http_requests_total`)},
		{name: "series over the day", path: "/api/v1/series", params: window(0, day, "match[]", `{job="api"}`)},
		{name: "labels", path: "/api/v1/labels", params: window(5*time.Hour+30*time.Minute, 8*time.Hour+30*time.Minute)},
		// Prometheus answers label values from the index of the blocks in the window: only the 6h-8h
		// block loses the users' series.
		{name: "user values in the deleted hours", path: "/api/v1/label/user_id/values", params: window(6*time.Hour+10*time.Minute, 7*time.Hour+50*time.Minute)},
		{name: "user values of a metric over the day", path: "/api/v1/label/user_id/values", params: window(0, day, "match[]", `http_requests_total`)},
	}
}

type loadClient struct{ client *http.Client }

func (c loadClient) do(base string, lc loadCase, post bool) (int, []byte, time.Duration, error) {
	began := time.Now()
	var resp *http.Response
	var err error
	if post && !strings.HasPrefix(lc.path, "/api/v1/label/") { // Label values are GET only, as in Prometheus.
		resp, err = c.client.PostForm(base+lc.path, lc.params)
	} else {
		resp, err = c.client.Get(base + lc.path + "?" + lc.params.Encode())
	}
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, time.Since(began), err
}

// loadStats are the latencies of one phase.
type loadStats struct {
	mu        sync.Mutex
	latencies []time.Duration
}

func (s *loadStats) add(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latencies = append(s.latencies, d)
}

func (s *loadStats) quantiles() (n int, p50, p99 time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.latencies) == 0 {
		return 0, 0, 0
	}
	l := slices.Clone(s.latencies)
	slices.Sort(l)
	return len(l), l[len(l)/2], l[len(l)*99/100]
}

// loadDuration is how long the dashboards run: 15s in make test, LETHE_LOAD_DURATION (e.g. 5m)
// for the long variant.
func loadDuration(t *testing.T) time.Duration {
	if v := os.Getenv("LETHE_LOAD_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		testutil.Ok(t, err)
		return d
	}
	return 15 * time.Second
}

// settledGoroutines closes the test clients' idle connections, waits (bounded) until the server
// side of them is gone and returns the goroutine count, without and with the goroutines of kept-alive
// client connections (the proxy's idle pool to the upstream, bounded by the concurrency).
func settledGoroutines(cl loadClient) (own, all int) {
	cl.client.CloseIdleConnections()
	n := runtime.NumGoroutine()
	for i := 0; i < 50; i++ {
		time.Sleep(20 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			break
		}
		n = m
	}
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	for _, rec := range strings.Split(b.String(), "\n\n") {
		var count int
		if _, err := fmt.Sscanf(rec, "%d @", &count); err != nil {
			continue
		}
		all += count
		if !strings.Contains(rec, "net/http.(*persistConn)") {
			own += count
		}
	}
	return own, all
}

func heapAfterGC() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestProxyUnderDashboardLoad runs many Grafana-like clients through lethe-proxy in front of a real
// Prometheus while a tombstone is added and cancelled over and over: every answer given while the
// tombstone's state is settled must be Prometheus' own (cancelled) or Prometheus' after
// delete_series + clean_tombstones (in force); answers in flight across a change may be either,
// never anything else. No request may fail, and the proxy's goroutines and heap must not grow.
func TestProxyUnderDashboardLoad(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dirs := writePromBlocks(t, 12, 20, time.Minute)
	deletion := batteryDeletion{name: "two users for four hours", matchers: []string{`{job="api",user_id=~"3|7"}`}, start: blockStart + 5*3_600_000, end: blockStart + 9*3_600_000}
	untouched := startPrometheus(t, dirs)
	oracle := startOracle(t, dirs, []batteryDeletion{deletion})

	cl := loadClient{client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	cases := loadCases()
	discriminating := 0
	for i := range cases {
		c := &cases[i]
		code, body, _, err := cl.do(untouched.URL, *c, false)
		c.plain = normalizeAnswer(t, code, body, err)
		testutil.Equals(t, http.StatusOK, code, "%s on Prometheus: %s", c.name, body)
		code, body, _, err = cl.do(oracle.URL, *c, false)
		c.deleted = normalizeAnswer(t, code, body, err)
		testutil.Equals(t, http.StatusOK, code, "%s on the oracle: %s", c.name, body)
		if c.plain != c.deleted {
			discriminating++
		} else {
			t.Logf("%s: the deletion does not change the answer", c.name)
		}
	}
	// A load whose answers the tombstone never changes proves nothing. Over the whole day the
	// users' series and label values remain, and no label name goes.
	testutil.Assert(t, discriminating >= len(cases)-3, "only %d of %d requests see the deletion", discriminating, len(cases))

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	store := tombstones.NewStore(objstore.NewInMemBucket(), reg, tombstones.WithLogger(logger))
	mask := proxy.NewMask(store, logger, reg, time.Minute)
	testutil.Ok(t, mask.Refresh(ctx))
	u, err := url.Parse(untouched.URL)
	testutil.Ok(t, err)
	up, err := proxy.NewUpstream(ctx, proxy.UpstreamConfig{URL: u, Timeout: 30 * time.Second}, logger, reg)
	testutil.Ok(t, err)
	srv := httptest.NewServer(proxy.New(mask, up, logger, reg, proxy.Config{AdminToken: loadToken}))
	defer srv.Close()
	refreshed := make(chan error, 1)
	go func() { refreshed <- mask.Run(ctx, 100*time.Millisecond) }()

	const clients = 24
	// Warm up as many connections and engine pools as the load uses, then take the baseline.
	var warm sync.WaitGroup
	for w := 0; w < clients; w++ {
		warm.Add(1)
		go func() {
			defer warm.Done()
			for _, c := range cases {
				code, body, _, err := cl.do(srv.URL, c, w%2 == 0)
				if got := normalizeAnswer(t, code, body, err); got != c.plain {
					t.Errorf("warm-up %s: %s", c.name, clip(got, 300))
				}
			}
		}()
	}
	warm.Wait()
	goroutinesBefore, allBefore := settledGoroutines(cl)
	heapBefore := heapAfterGC()

	// epoch is even while the tombstone's state is settled (masked when epoch/2 is odd), odd while
	// an add or a cancel is under way.
	var epoch atomic.Int64
	var changes, wrong, failed, inFlightChanges, settledMasked, settledPlain atomic.Int64
	var firstWrong atomic.Value
	admin := func(path string, form url.Values) (string, error) {
		req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(form.Encode()))
		if err != nil {
			return "", err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+loadToken)
		resp, err := cl.client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %d %s", path, resp.StatusCode, b)
		}
		var r struct {
			Data struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return "", err
		}
		return r.Data.ID, err
	}

	duration := loadDuration(t)
	deadline := time.Now().Add(duration)
	lethe := &loadStats{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rfc := func(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }
		for time.Now().Before(deadline) {
			epoch.Add(1)
			id, err := admin("/api/v1/tombstones", url.Values{"match[]": deletion.matchers, "start": {rfc(deletion.start)}, "end": {rfc(deletion.end)},
				"author": {"load test"}, "reason": {"masking under load"}})
			epoch.Add(1)
			if err != nil {
				failed.Add(1)
				firstWrong.CompareAndSwap(nil, "add: "+err.Error())
				return
			}
			time.Sleep(700 * time.Millisecond)
			epoch.Add(1)
			_, err = admin("/api/v1/tombstones/"+id+"/cancel", url.Values{"author": {"load test"}, "reason": {"next round"}})
			epoch.Add(1)
			if err != nil {
				failed.Add(1)
				firstWrong.CompareAndSwap(nil, "cancel: "+err.Error())
				return
			}
			changes.Add(2)
			time.Sleep(700 * time.Millisecond)
		}
	}()
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Now().Before(deadline) && i < w+1_000_000; i++ {
				c := cases[i%len(cases)]
				before := epoch.Load()
				code, body, took, err := cl.do(srv.URL, c, i%2 == 0)
				after := epoch.Load()
				got := normalizeAnswer(t, code, body, err)
				lethe.add(took)
				settled := before == after && before%2 == 0
				switch {
				case settled && (before/2)%2 == 1 && got == c.deleted:
					settledMasked.Add(1)
				case settled && (before/2)%2 == 0 && got == c.plain:
					settledPlain.Add(1)
				case !settled && (got == c.deleted || got == c.plain):
					inFlightChanges.Add(1)
				case code != http.StatusOK:
					failed.Add(1)
					firstWrong.CompareAndSwap(nil, c.name+": "+got)
				default:
					wrong.Add(1)
					firstWrong.CompareAndSwap(nil, fmt.Sprintf("%s (epoch %d..%d): %s", c.name, before, after, clip(got, 400)))
				}
			}
		}()
	}
	wg.Wait()

	// The direct comparison: the same dashboards straight to Prometheus, for a third of the time.
	direct := &loadStats{}
	directDeadline := time.Now().Add(duration / 3)
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Now().Before(directDeadline) && i < w+1_000_000; i++ {
				c := cases[i%len(cases)]
				code, _, took, err := cl.do(untouched.URL, c, i%2 == 0)
				if err == nil && code == http.StatusOK {
					direct.add(took)
				}
			}
		}()
	}
	wg.Wait()

	goroutinesAfter, allAfter := settledGoroutines(cl)
	heapAfter := heapAfterGC()
	cancel()
	testutil.Ok(t, <-refreshed)

	n, p50, p99 := lethe.quantiles()
	dn, dp50, dp99 := direct.quantiles()
	t.Logf("load: %d clients for %v; %d requests through lethe (%d while the tombstone was in force, %d while cancelled, %d across a change), %d tombstone changes; %d wrong, %d failed",
		clients, duration, n, settledMasked.Load(), settledPlain.Load(), inFlightChanges.Load(), changes.Load(), wrong.Load(), failed.Load())
	t.Logf("latency through lethe p50 %v p99 %v; straight to Prometheus (%d requests) p50 %v p99 %v",
		p50.Round(time.Microsecond), p99.Round(time.Microsecond), dn, dp50.Round(time.Microsecond), dp99.Round(time.Microsecond))
	t.Logf("goroutines besides idle connections %d before, %d after (%d and %d in all); heap after GC %.1f MiB before, %.1f MiB after",
		goroutinesBefore, goroutinesAfter, allBefore, allAfter, float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20))

	testutil.Equals(t, int64(0), wrong.Load(), "first: %v", firstWrong.Load())
	testutil.Equals(t, int64(0), failed.Load(), "first: %v", firstWrong.Load())
	testutil.Assert(t, changes.Load() >= 4, "only %d tombstone changes", changes.Load())
	testutil.Assert(t, n >= 10*len(cases), "only %d requests", n)
	testutil.Assert(t, settledMasked.Load() >= int64(len(cases)) && settledPlain.Load() >= int64(len(cases)), "too few settled answers: %d masked, %d plain", settledMasked.Load(), settledPlain.Load())
	// The clients have stopped: what is left is what was there after the warm-up (the refresh loop,
	// idle upstream connections), give or take a few idle connections.
	if goroutinesAfter > goroutinesBefore {
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Log(clip(b.String(), 6000))
	}
	testutil.Assert(t, goroutinesAfter <= goroutinesBefore+8, "goroutines grew from %d to %d", goroutinesBefore, goroutinesAfter)
	testutil.Assert(t, heapAfter <= heapBefore+64<<20, "heap grew from %d to %d bytes", heapBefore, heapAfter)
}
