package proxy

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// testUpstream is a Prometheus-compatible server on 127.0.0.1:0 for the upstream-mode tests:
// remote read from Prometheus' own read handler over a TSDB of two 2h blocks, and the query API
// from a bucket-mode lethe-proxy without tombstones over the same blocks. A fault, when set,
// answers every request in its place.
type testUpstream struct {
	srv   *httptest.Server
	real  http.Handler
	fault atomic.Pointer[fault]
}

// fault answers an upstream request in place of the real server.
type fault struct {
	name  string
	serve func(u *testUpstream, w http.ResponseWriter, r *http.Request)
}

func startTestUpstream(t *testing.T) *testUpstream {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	series := []labels.Labels{labels.FromStrings("__name__", "node_load1", "instance", "n1")}
	for u := 0; u < 4; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
	}
	series = append(series,
		labels.FromStrings("__name__", "secret_total", "job", "api"),
		labels.FromStrings("__name__", "session_active", "user", "a"),
		labels.FromStrings("__name__", "session_active", "user", "b"))
	hists := []labels.Labels{labels.FromStrings("__name__", "request_latency_seconds", "job", "hist", "user_id", "secret-user")}
	dir := t.TempDir()
	bkt := objstore.NewInMemBucket()
	for i := int64(0); i < 2; i++ {
		meta, bdir, err := synth.Write(ctx, dir, synth.Block{
			Series: series, Histograms: hists, MinTime: t0 + i*7_200_000, MaxTime: t0 + (i+1)*7_200_000, Step: 60_000,
			Value: func(s int, ts int64) float64 { return float64(s) + float64((ts-t0)/60_000) },
		})
		testutil.Ok(t, err)
		testutil.Ok(t, block.Upload(ctx, bkt, bdir, meta))
	}
	testutil.Ok(t, os.Mkdir(filepath.Join(dir, "wal"), 0o755)) // The read-only DB reads a head from it.
	db, err := tsdb.OpenDBReadOnly(dir, t.TempDir(), logger)
	testutil.Ok(t, err)
	t.Cleanup(func() { testutil.Ok(t, db.Close()) })

	reg := prometheus.NewRegistry()
	blocks := NewBucketBlocks(bkt, t.TempDir(), logger, reg)
	testutil.Ok(t, blocks.Sync(ctx))
	t.Cleanup(func() { testutil.Ok(t, blocks.Close()) })
	none := NewMask(tombstones.NewStore(objstore.NewInMemBucket(), reg), logger, reg, time.Hour)
	testutil.Ok(t, none.Refresh(ctx))
	mux := http.NewServeMux()
	// The read-only DB opens its blocks anew for every querier: one remote read at a time.
	read := remote.NewReadHandler(logger, prometheus.NewRegistry(), db, func() config.Config { return config.Config{} }, 0, 4, 1<<20)
	var reading sync.Mutex
	mux.HandleFunc("/api/v1/read", func(w http.ResponseWriter, r *http.Request) {
		reading.Lock()
		defer reading.Unlock()
		read.ServeHTTP(w, r)
	})
	mux.Handle("/", New(none, blocks, logger, reg, Config{LookbackDelta: 10 * time.Minute}))
	// The flags of a Prometheus started with --query.lookback-delta=10m, as the server above is.
	mux.HandleFunc("/api/v1/status/flags", func(w http.ResponseWriter, _ *http.Request) {
		writeData(w, map[string]string{"query.lookback-delta": "10m", "query.timeout": "2m"})
	})
	// Metadata as Prometheus gives it, one entry per metric name, and one for a metric with no
	// stored series.
	mux.HandleFunc("/api/v1/metadata", func(w http.ResponseWriter, _ *http.Request) {
		meta := map[string][]map[string]string{}
		for _, name := range []string{"node_load1", "http_requests_total", "secret_total", "session_active", "request_latency_seconds", "ghost_metric"} {
			meta[name] = []map[string]string{{"type": "gauge", "help": "help of " + name, "unit": ""}}
		}
		writeData(w, meta)
	})

	u := &testUpstream{real: mux}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := u.fault.Load(); f != nil {
			f.serve(u, w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// realAnswer is what the real server answers to r.
func (u *testUpstream) realAnswer(r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	u.real.ServeHTTP(rec, r)
	return rec
}

// lethe is a lethe-proxy in front of a test upstream, with its own tombstone bucket.
type lethe struct {
	srv   *httptest.Server
	store *tombstones.Store
	mask  *Mask
}

func startLethe(t *testing.T, up *testUpstream, cfg UpstreamConfig) *lethe {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	u, err := url.Parse(up.srv.URL)
	testutil.Ok(t, err)
	cfg.URL = u
	source, err := NewUpstream(ctx, cfg, logger, reg)
	testutil.Ok(t, err)
	l := &lethe{store: tombstones.NewStore(objstore.NewInMemBucket(), reg)}
	l.mask = NewMask(l.store, logger, reg, time.Hour)
	testutil.Ok(t, l.mask.Refresh(ctx))
	l.srv = httptest.NewServer(New(l.mask, source, logger, reg, Config{}))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *lethe) tombstone(t *testing.T, sel string, start, end int64) {
	t.Helper()
	_, err := l.store.Add(context.Background(), tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end, Force: true})
	testutil.Ok(t, err)
	testutil.Ok(t, l.mask.Refresh(context.Background()))
}

// ask sends a GET to lethe and returns the status, the raw body and how long it took.
func (l *lethe) ask(t *testing.T, p string, params url.Values) (int, string, time.Duration) {
	t.Helper()
	began := time.Now()
	resp, err := http.Get(l.srv.URL + p + "?" + params.Encode())
	testutil.Ok(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	return resp.StatusCode, string(b), time.Since(began)
}

// envelope decodes a Prometheus API answer, failing unless it is one.
func envelope(t *testing.T, body string) apiResponse {
	t.Helper()
	var r apiResponse
	testutil.Ok(t, json.Unmarshal([]byte(body), &r), "not a Prometheus API answer: %q", body)
	return r
}

var upstreamModes = []string{ReadRemoteRead, ReadQueryAPI}

// TestUpstreamErrorsNameNoDeletedSeries: no error lethe answers with carries the labels of a series
// a tombstone covers, whether lethe builds the message from an upstream series (the native
// histograms the query API cannot carry) or the upstream's own message names the series.
func TestUpstreamErrorsNameNoDeletedSeries(t *testing.T) {
	up := startTestUpstream(t)
	at := url.Values{"time": {formatTime(t0 + 20*60_000)}} // inside the tombstones below
	query := func(q string) url.Values {
		v := url.Values{"query": {q}}
		v.Set("time", at.Get("time"))
		return v
	}

	// The query API cannot carry native histograms: lethe refuses them without naming the series.
	l := startLethe(t, up, UpstreamConfig{Read: ReadQueryAPI})
	l.tombstone(t, `{user_id="secret-user"}`, t0, t0+1_800_000)
	for _, q := range []string{`request_latency_seconds`, `{user_id=~"secret.*"}`, `rate(request_latency_seconds[5m])`} {
		code, body, _ := l.ask(t, "/api/v1/query", query(q))
		r := envelope(t, body)
		testutil.Equals(t, "error", r.Status, body)
		testutil.Assert(t, code >= 400, "%d %s", code, body)
		testutil.Assert(t, strings.Contains(r.Error, "native histograms"), body)
		testutil.Assert(t, !strings.Contains(body, "secret-user"), "%s: %s", q, body)
	}

	// The upstream's own error message names the covered series.
	for _, mode := range upstreamModes {
		l := startLethe(t, up, UpstreamConfig{Read: mode})
		l.tombstone(t, `http_requests_total{user_id="1"}`, t0, t0+1_800_000)
		up.fault.Store(&fault{name: "error naming a series", serve: func(_ *testUpstream, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = w.Write([]byte(`{"status":"error","errorType":"execution","error":"cannot read http_requests_total{job=\"api\", user_id=\"1\"}: value 17 broke"}`))
		}})
		for _, q := range []string{`http_requests_total{user_id="1"}`, `sum(http_requests_total)`} {
			code, body, _ := l.ask(t, "/api/v1/query", query(q))
			r := envelope(t, body)
			testutil.Equals(t, "error", r.Status, body)
			testutil.Assert(t, code >= 400, "%d %s", code, body)
			testutil.Assert(t, !strings.Contains(body, `user_id=\"1\"`) && !strings.Contains(body, "value 17"), "%s %s: %s", mode, q, body)
		}
		up.fault.Store(nil)
	}
}

// stall waits until the client gives up (bounded, so a missing deadline fails the test rather
// than hanging it).
func stall(r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body) // Until the body is read, the server does not notice the client leave.
	select {
	case <-r.Context().Done():
	case <-time.After(20 * time.Second):
	}
}

// cut writes the status line and headers of a real answer and the first half of its body, then
// closes the connection: the body ends before its declared length (or before the last chunk).
func cut(chunked bool) func(u *testUpstream, w http.ResponseWriter, r *http.Request) {
	return func(u *testUpstream, w http.ResponseWriter, r *http.Request) {
		rec := u.realAnswer(r)
		body := rec.Body.Bytes()
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", rec.Code, http.StatusText(rec.Code), rec.Header().Get("Content-Type"))
		half := body[:len(body)/2]
		if chunked {
			fmt.Fprintf(buf, "Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(half), half)
		} else {
			fmt.Fprintf(buf, "Content-Length: %d\r\n\r\n%s", len(body), half)
		}
		_ = buf.Flush()
	}
}

var upstreamFaults = []fault{
	{"503 with Prometheus' envelope", func(_ *testUpstream, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"status":"error","errorType":"unavailable","error":"overloaded"}`))
	}},
	{"502 from a load balancer", func(_ *testUpstream, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("<html><body>502 Bad Gateway</body></html>"))
	}},
	{"malformed JSON", func(_ *testUpstream, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":]}}`))
	}},
	{"gzip-compressed malformed JSON", func(_ *testUpstream, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		_, _ = zw.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{}`))
		_ = zw.Close()
	}},
	{"malformed protobuf", func(_ *testUpstream, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse")
		_, _ = w.Write([]byte("\x07\x00\x00\x00garbage that is no frame at all"))
	}},
	{"truncated body", func(u *testUpstream, w http.ResponseWriter, r *http.Request) { cut(false)(u, w, r) }},
	{"truncated stream", func(u *testUpstream, w http.ResponseWriter, r *http.Request) { cut(true)(u, w, r) }},
	{"no answer", func(_ *testUpstream, _ http.ResponseWriter, r *http.Request) { stall(r) }},
	{"stalled stream", func(u *testUpstream, w http.ResponseWriter, r *http.Request) {
		rec := u.realAnswer(r)
		w.Header().Set("Content-Type", rec.Header().Get("Content-Type"))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
		w.(http.Flusher).Flush()
		stall(r)
	}},
}

// upstreamProbes are lethe requests that reach the upstream: masked (a tombstone on
// http_requests_total of user 1 meets them) and untouched (the fast path).
func upstreamProbes() []struct {
	name string
	path string
	form url.Values
} {
	ts := formatTime
	at, start, end := ts(t0+3_600_000), ts(t0), ts(t0+4*3_600_000)
	return []struct {
		name string
		path string
		form url.Values
	}{
		{"masked query", "/api/v1/query", url.Values{"query": {`sum(http_requests_total)`}, "time": {at}}},
		{"masked range query", "/api/v1/query_range", url.Values{"query": {`http_requests_total`}, "start": {start}, "end": {end}, "step": {"60"}}},
		{"untouched query", "/api/v1/query", url.Values{"query": {`node_load1`}, "time": {at}}},
		{"untouched range query", "/api/v1/query_range", url.Values{"query": {`node_load1`}, "start": {start}, "end": {end}, "step": {"15"}}},
		{"masked series", "/api/v1/series", url.Values{"match[]": {`{user_id="1"}`}, "start": {start}, "end": {end}}},
		{"untouched series", "/api/v1/series", url.Values{"match[]": {`node_load1`}, "start": {start}, "end": {end}}},
		// Not over the native histogram series, which the query API cannot carry.
		{"label names", "/api/v1/labels", url.Values{"match[]": {`{job="api"}`}, "start": {start}, "end": {end}}},
		{"label values", "/api/v1/label/user_id/values", url.Values{"match[]": {`{job="api"}`}, "start": {start}, "end": {end}}},
		{"metadata", "/api/v1/metadata", nil},
		{"alerts", "/api/v1/alerts", nil},
	}
}

// TestUpstreamThatFails: whatever a failing upstream does (5xx, malformed or truncated JSON and
// protobuf, no answer, a stream that stalls), every lethe request ends within the upstream
// deadline with a Prometheus error envelope: never a success carrying part of the data.
func TestUpstreamThatFails(t *testing.T) {
	up := startTestUpstream(t)
	const timeout = 300 * time.Millisecond
	for _, mode := range upstreamModes {
		// Told what it would discover, so that lethe starts without a call bound by the short deadline.
		none := labels.EmptyLabels()
		l := startLethe(t, up, UpstreamConfig{Read: mode, Timeout: timeout, ExternalLabels: &none, LookbackDelta: 10 * time.Minute})
		l.tombstone(t, `http_requests_total{user_id="1"}`, t0, t0+1_800_000)
		// Healthy, the data probes succeed (rules and alerts are not served by the test upstream).
		for _, p := range upstreamProbes() {
			code, body, _ := l.ask(t, p.path, p.form)
			if p.path == "/api/v1/alerts" {
				testutil.Assert(t, code >= 400 && envelope(t, body).Status == "error", "%d %s", code, body)
				continue
			}
			testutil.Assert(t, code == http.StatusOK, "%s %s: %d %s", mode, p.name, code, body)
		}
		faults := 0
		for _, f := range upstreamFaults {
			up.fault.Store(&f)
			// All probes at once: each waits out the deadline on the stalling faults.
			probes := upstreamProbes()
			type outcome struct {
				code int
				body string
				took time.Duration
				err  error
			}
			outcomes := make([]outcome, len(probes))
			var wg sync.WaitGroup
			for i, p := range probes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					began := time.Now()
					resp, err := http.Get(l.srv.URL + p.path + "?" + p.form.Encode())
					if err != nil {
						outcomes[i].err = err
						return
					}
					defer resp.Body.Close()
					b, err := io.ReadAll(resp.Body)
					outcomes[i] = outcome{code: resp.StatusCode, body: string(b), took: time.Since(began), err: err}
				}()
			}
			wg.Wait()
			for i, p := range probes {
				testutil.Ok(t, outcomes[i].err)
				code, body, took := outcomes[i].code, outcomes[i].body, outcomes[i].took
				r := envelope(t, body)
				what := fmt.Sprintf("%s, %s, %s: %d %s", mode, f.name, p.name, code, body)
				testutil.Equals(t, "error", r.Status, what)
				testutil.Assert(t, code >= 400 && r.ErrorType != "" && r.Error != "", what)
				testutil.Assert(t, took < 10*time.Second, "%s took %v", what, took)
				if f.name == "no answer" || f.name == "stalled stream" {
					testutil.Assert(t, strings.Contains(r.Error, "--upstream.timeout=300ms"), what)
					if strings.Contains(p.path, "query") {
						testutil.Equals(t, "timeout", r.ErrorType, what)
					}
				}
				faults++
			}
		}
		up.fault.Store(nil)
		t.Logf("%s: %d failing upstream answers, each an error envelope", mode, faults)
	}
}

// TestUpstreamAnswerBounds: an answer larger than the response bound, or a remote-read frame larger
// than the frame bound, is refused with an error that names the bound.
func TestUpstreamAnswerBounds(t *testing.T) {
	up := startTestUpstream(t)
	ts := formatTime
	rangeOf := func(q string) url.Values {
		return url.Values{"query": {q}, "start": {ts(t0)}, "end": {ts(t0 + 4*3_600_000)}, "step": {"15"}}
	}
	for _, mode := range upstreamModes {
		l := startLethe(t, up, UpstreamConfig{Read: mode, MaxResponseBytes: 256})
		l.tombstone(t, `http_requests_total{user_id="1"}`, t0, t0+1_800_000)
		for _, q := range []string{`node_load1`, `http_requests_total`} {
			code, body, _ := l.ask(t, "/api/v1/query_range", rangeOf(q))
			r := envelope(t, body)
			testutil.Equals(t, "error", r.Status, body)
			testutil.Assert(t, code >= 400, "%d %s", code, body)
			testutil.Assert(t, strings.Contains(r.Error, "256 bytes"), "%s %s: %s", mode, q, body)
		}
		// A small answer passes.
		code, body, _ := l.ask(t, "/api/v1/query", url.Values{"query": {`node_load1`}, "time": {ts(t0 + 3_600_000)}})
		testutil.Equals(t, http.StatusOK, code, body)
	}
	l := startLethe(t, up, UpstreamConfig{Read: ReadRemoteRead, ChunkedReadLimit: 64})
	l.tombstone(t, `http_requests_total{user_id="1"}`, t0, t0+1_800_000)
	code, body, _ := l.ask(t, "/api/v1/query_range", rangeOf(`http_requests_total`))
	r := envelope(t, body)
	testutil.Equals(t, "error", r.Status, body)
	testutil.Assert(t, code >= 400 && strings.Contains(r.Error, "64"), "%d %s", code, body)
}

// TestUpstreamMetadataDropsDeletedMetrics: /api/v1/metadata leaves out a metric whose every series
// is deleted, whether tombstones cover its series for all time or only wherever they have samples,
// and keeps a metric while any of its series keeps a sample.
func TestUpstreamMetadataDropsDeletedMetrics(t *testing.T) {
	up := startTestUpstream(t)
	names := func(l *lethe) []string {
		t.Helper()
		code, body, _ := l.ask(t, "/api/v1/metadata", nil)
		testutil.Equals(t, http.StatusOK, code, body)
		var meta map[string]json.RawMessage
		testutil.Ok(t, json.Unmarshal(envelope(t, body).Data, &meta))
		var out []string
		for name := range meta {
			out = append(out, name)
		}
		slices.Sort(out)
		return out
	}
	for _, mode := range upstreamModes {
		l := startLethe(t, up, UpstreamConfig{Read: mode})
		testutil.Equals(t, []string{"ghost_metric", "http_requests_total", "node_load1", "request_latency_seconds", "secret_total", "session_active"}, names(l))

		l.tombstone(t, `secret_total`, tombstones.BeginningOfTime, math.MaxInt64)                     // all its series, for all time
		l.tombstone(t, `session_active{user="a"}`, t0-3_600_000, t0+5*3_600_000)                      // all its samples
		l.tombstone(t, `session_active{user="b"}`, t0, t0+3_600_000)                                  // the first hour
		l.tombstone(t, `http_requests_total{user_id="1"}`, tombstones.BeginningOfTime, math.MaxInt64) // one of four series
		testutil.Equals(t, []string{"ghost_metric", "http_requests_total", "node_load1", "request_latency_seconds", "session_active"}, names(l), mode)

		// Now user b's samples are all deleted too: no series of session_active keeps one.
		l.tombstone(t, `session_active{user="b"}`, t0+3_600_000, t0+5*3_600_000)
		testutil.Equals(t, []string{"ghost_metric", "http_requests_total", "node_load1", "request_latency_seconds"}, names(l), mode)
	}
}

// TestUpstreamLookbackDeltaIsTheUpstreams: with no lookback of its own configured, lethe evaluates
// with the upstream's --query.lookback-delta (10m here), on the fast path and in its own engine
// alike, and a request's lookback_delta overrides it on both.
func TestUpstreamLookbackDeltaIsTheUpstreams(t *testing.T) {
	up := startTestUpstream(t)
	at := formatTime(t0 + 4*3_600_000 + 8*60_000) // 9m after the last sample
	for _, mode := range upstreamModes {
		l := startLethe(t, up, UpstreamConfig{Read: mode})
		l.tombstone(t, `http_requests_total{user_id="1"}`, t0, t0+1_800_000)
		for _, q := range []string{`node_load1`, `sum(http_requests_total)`} { // the fast path, the engine
			for lookback, want := range map[string]int{"": 1, "1m": 0, "600": 1, "5m": 0} {
				form := url.Values{"query": {q}, "time": {at}}
				if lookback != "" {
					form.Set("lookback_delta", lookback)
				}
				code, body, _ := l.ask(t, "/api/v1/query", form)
				testutil.Equals(t, http.StatusOK, code, body)
				var d struct {
					Result []vectorSample `json:"result"`
				}
				testutil.Ok(t, json.Unmarshal(envelope(t, body).Data, &d))
				testutil.Equals(t, want, len(d.Result), "%s %s lookback_delta=%q: %s", mode, q, lookback, body)
			}
		}
	}
}

func TestAcceptsGzip(t *testing.T) {
	for accept, want := range map[string]bool{
		"": false, "gzip": true, "GZIP": true, "deflate, gzip;q=1.0, *;q=0.5": true, "gzip;q=0": false,
		"gzip; q=0.001": true, "br": false, "identity": false, "x-gzip": false,
	} {
		testutil.Equals(t, want, acceptsGzip(accept), accept)
	}
}

// TestUpstreamDownsampledAggregatesNeverMeetATombstone: Thanos Query answers max_source_resolution
// from downsampled blocks, whose aggregates are stamped inside windows of 5m or 1h that may begin
// before the query's first sample. A query whose window starts after a deleted range, within one
// resolution of it, is not the fast path's to forward; and lethe's engine reads raw samples,
// telling the client, whatever resolution it asked for.
func TestUpstreamDownsampledAggregatesNeverMeetATombstone(t *testing.T) {
	up := startTestUpstream(t)
	var mu sync.Mutex
	var seen []url.Values
	up.fault.Store(&fault{name: "record", serve: func(u *testUpstream, w http.ResponseWriter, r *http.Request) {
		testutil.Ok(t, r.ParseForm())
		if r.URL.Path == "/api/v1/query" || r.URL.Path == "/api/v1/query_range" {
			mu.Lock()
			seen = append(seen, url.Values{"path": {r.URL.Path}, "max_source_resolution": r.Form["max_source_resolution"]})
			mu.Unlock()
		}
		u.real.ServeHTTP(w, r)
	}})
	l := startLethe(t, up, UpstreamConfig{Read: ReadQueryAPI})
	// Deleted until 00:30; the query's first sample is read from 00:40 (10m lookback, the
	// upstream's, before 00:50).
	l.tombstone(t, `http_requests_total{user_id="1"}`, t0, t0+1_800_000)
	start, end := t0+3_000_000, t0+6_600_000
	rate := `sum(rate(http_requests_total[5m]))`
	for _, c := range []struct {
		resolution, step string
		fastPath         bool
		query            string
	}{
		// Thanos looks back 1h above a resolution longer than the upstream's 10m lookback.
		{"15m", "60", false, `http_requests_total{user_id="1"}`},
		{"5m", "60", true, `http_requests_total{user_id="1"}`},
		{"", "60", true, rate},
		{"0s", "60", true, rate},
		{"5m", "60", true, rate}, // A 5m window that holds 00:40 begins after 00:30.
		{"1h", "60", false, rate},
		{"auto", "60", true, rate},     // A fifth of a minute: raw.
		{"auto", "21600", false, rate}, // A fifth of 6h: 1h windows.
		{"", "21600", false, rate},     // A querier may auto-downsample without the parameter.
	} {
		mu.Lock()
		seen = nil
		mu.Unlock()
		form := url.Values{"query": {c.query}, "start": {formatTime(start)}, "end": {formatTime(end)}, "step": {c.step}}
		if c.resolution != "" {
			form.Set("max_source_resolution", c.resolution)
		}
		code, body, _ := l.ask(t, "/api/v1/query_range", form)
		testutil.Equals(t, http.StatusOK, code, body)
		var warned struct {
			Warnings []string `json:"warnings"`
		}
		testutil.Ok(t, json.Unmarshal([]byte(body), &warned))
		mu.Lock()
		got := slices.Clone(seen)
		mu.Unlock()
		testutil.Assert(t, len(got) > 0, "max_source_resolution=%q step %s: no upstream query", c.resolution, c.step)
		if c.fastPath {
			testutil.Equals(t, []url.Values{{"path": {"/api/v1/query_range"}, "max_source_resolution": form["max_source_resolution"]}}, got,
				"max_source_resolution=%q step %s: forwarded whole", c.resolution, c.step)
			continue
		}
		for _, v := range got {
			testutil.Equals(t, url.Values{"path": {"/api/v1/query"}, "max_source_resolution": {"0s"}}, v,
				"max_source_resolution=%q step %s: lethe's engine reads raw samples", c.resolution, c.step)
		}
		testutil.Equals(t, c.resolution != "", slices.ContainsFunc(warned.Warnings, func(w string) bool {
			return strings.Contains(w, "max_source_resolution="+c.resolution+" is not applied")
		}), "max_source_resolution=%q step %s: warnings %v", c.resolution, c.step, warned.Warnings)
	}
}
