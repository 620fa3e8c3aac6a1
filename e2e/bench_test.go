package e2e

// The proxy benchmarks of `make bench`: a Grafana dashboard's queries, timed through lethe-proxy
// and against what a user would query instead, side by side in one run.
//
//	untouched/proxy-vs-direct        lethe-proxy (3 tombstones, none touching these queries) in
//	                                 front of a Prometheus, vs that Prometheus asked directly
//	masked/proxy-vs-oracle           lethe-proxy masking the 3 deletions over that Prometheus, vs
//	                                 a Prometheus that got them by delete_series + clean_tombstones
//	tombstones10k/proxy10k-vs-proxy0 untouched queries: lethe-proxy holding 10,000 tombstones none
//	                                 of them touches, vs one holding none
//	tombstones10k-masked/proxy10k-vs-proxy3
//	                                 masked queries: the 3 tombstones they hit plus those 10,000,
//	                                 vs the 3 alone
//
// One dashboard refresh runs its panels one after another. Each iteration refreshes it once on
// each side, alternating which side goes first, so that whatever else the machine does slows both
// alike; each leaf reports the median refresh time of each side (lethe-ms, baseline-ms), the
// median of the paired ratios (lethe/baseline) and the peak RSS (VmHWM) of each side's process
// and of the upstream Prometheus over the comparison.
// The servers are built once per `go test -bench` run, by BenchmarkDashboard itself (benchmarks
// never run without -bench), and every answer is checked once before timing: through the proxy it
// must equal the baseline's, so the benchmark times correct work. tools/benchtable turns the
// output into the table of ratios.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// The dashboard's data: dashBlocks consecutive 2h blocks from blockStart, a sample every 15s, for
// two jobs (api and web) of dashInstances instances each: http_requests_total by status and
// user_id, and a classic histogram http_request_duration_seconds by route.
const (
	dashBlocks    = 3
	dashStep      = int64(15_000)
	dashEnd       = blockStart + dashBlocks*7_200_000 // exclusive; the dashboard's "now"
	dashUsers     = 50
	dashInstances = 4
	// dashOtherTombstones is how many tombstones the 10k proxies hold that no query touches.
	dashOtherTombstones = 10_000
)

var (
	dashStatuses = []string{"200", "404", "500"}
	dashRoutes   = []string{"/login", "/search", "/cart", "/checkout", "/profile"}
	dashLe       = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, math.Inf(1)}
)

// dashAt is a time of the dashboard's data: blockStart plus d.
func dashAt(d time.Duration) int64 { return blockStart + d.Milliseconds() }

// dashDeletions are the masked set: registered as lethe tombstones and, on the oracle, as
// delete_series calls. All are in job="api"; the untouched dashboard looks at job="web".
var dashDeletions = []struct {
	matcher    string
	start, end int64 // inclusive milliseconds
}{
	{`{job="api",user_id="7"}`, blockStart, dashEnd},                                   // a user, everything
	{`{job="api",user_id="13"}`, dashAt(150 * time.Minute), dashAt(210 * time.Minute)}, // a user, one hour
	{`{job="api",instance="api-3"}`, dashAt(4 * time.Hour), dashAt(270 * time.Minute)}, // an instance, 30 minutes
}

// dashQuery is one Grafana panel's query: a range query over the last rng at step, or an instant
// query at the dashboard's end when rng is 0.
type dashQuery struct {
	name string
	expr string
	rng  time.Duration
	step time.Duration
}

// dashQueries is the dashboard for one job; %[1]s is the job.
func dashQueries(job string) []dashQuery {
	qs := []dashQuery{
		{"requests by status", `sum by (status) (rate(http_requests_total{job="%[1]s"}[5m]))`, 6 * time.Hour, 30 * time.Second},
		{"error ratio", `sum(rate(http_requests_total{job="%[1]s",status="500"}[5m])) / sum(rate(http_requests_total{job="%[1]s"}[5m]))`, 6 * time.Hour, 60 * time.Second},
		{"top users", `topk(5, sum by (user_id) (rate(http_requests_total{job="%[1]s"}[5m])))`, 3 * time.Hour, 30 * time.Second},
		{"p99 latency", `histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{job="%[1]s"}[5m])))`, 6 * time.Hour, 30 * time.Second},
		{"p50 latency by route", `histogram_quantile(0.5, sum by (le, route) (rate(http_request_duration_seconds_bucket{job="%[1]s"}[5m])))`, 3 * time.Hour, 15 * time.Second},
		{"mean latency by instance", `sum by (instance) (rate(http_request_duration_seconds_sum{job="%[1]s"}[5m])) / sum by (instance) (rate(http_request_duration_seconds_count{job="%[1]s"}[5m]))`, 6 * time.Hour, 60 * time.Second},
		{"series per instance", `count by (instance) (http_requests_total{job="%[1]s"})`, time.Hour, 15 * time.Second},
		{"raw 5xx series of one instance", `http_requests_total{job="%[1]s",instance="%[1]s-1",status="500"}`, time.Hour, 15 * time.Second},
		{"requests in the last hour (stat)", `sum(increase(http_requests_total{job="%[1]s"}[1h]))`, 0, 0},
	}
	for i := range qs {
		qs[i].expr = fmt.Sprintf(qs[i].expr, job)
	}
	return qs
}

// request returns the API path and form of the query.
func (q dashQuery) request() (string, url.Values) {
	end := dashEnd
	if q.rng == 0 {
		return "/api/v1/query", url.Values{"query": {q.expr}, "time": {formatPromTime(end)}}
	}
	return "/api/v1/query_range", url.Values{
		"query": {q.expr},
		"start": {formatPromTime(end - q.rng.Milliseconds())},
		"end":   {formatPromTime(end)},
		"step":  {strconv.FormatFloat(q.step.Seconds(), 'f', -1, 64)},
	}
}

// dashData returns the series and their values: counters that grow at a series-dependent rate
// modulated by a 1h-ish wave (never decreasing, so no resets), continuous across blocks. The
// buckets of one histogram share their wave, so they stay cumulative in le.
func dashData() ([]labels.Labels, func(int, int64) float64) {
	type gen struct{ rate, phase float64 }
	var series []labels.Labels
	var gens []gen
	add := func(rate, phase float64, kv ...string) {
		series = append(series, labels.FromStrings(kv...))
		gens = append(gens, gen{rate, phase})
	}
	statusRate := []float64{1, 0.1, 0.02}
	for _, job := range []string{"api", "web"} {
		for i := 0; i < dashInstances; i++ {
			inst := fmt.Sprintf("%s-%d", job, i)
			for s, status := range dashStatuses {
				for u := 0; u < dashUsers; u++ {
					add(statusRate[s]*float64(1+u%7)*(1+0.1*float64(i)), float64(u)/7,
						"__name__", "http_requests_total", "job", job, "instance", inst, "status", status, "user_id", strconv.Itoa(u))
				}
			}
			for r, route := range dashRoutes {
				rate, phase, median := 2*float64(r+1), float64(i*len(dashRoutes)+r)/3, 0.02*float64(r+1)
				for _, le := range dashLe {
					cdf := 1.0
					if !math.IsInf(le, 1) {
						cdf = 0.5 * math.Erfc(-math.Log(le/median)/math.Sqrt2)
					}
					add(rate*cdf, phase, "__name__", "http_request_duration_seconds_bucket", "job", job, "instance", inst, "route", route,
						"le", strconv.FormatFloat(le, 'g', -1, 64))
				}
				add(rate, phase, "__name__", "http_request_duration_seconds_count", "job", job, "instance", inst, "route", route)
				add(rate*median*1.3, phase, "__name__", "http_request_duration_seconds_sum", "job", job, "instance", inst, "route", route)
			}
		}
	}
	return series, func(i int, ts int64) float64 {
		t := float64(ts-blockStart) / 1000
		return gens[i].rate * (t + 300 + 300*math.Sin(t/600+gens[i].phase))
	}
}

// dashFixture is the servers the benchmarks query.
type dashFixture struct {
	upstream, oracle *benchProc
	// proxy0 has no tombstone, proxy3 the masked set, proxy10k dashOtherTombstones others and
	// proxy3and10k both; all in front of upstream.
	proxy0, proxy3, proxy10k, proxy3and10k *benchProc
	client                                 *http.Client
	untouched, masked                      []dashQuery
	// summary is one line on the set-up, logged by the first comparison: a benchmark with
	// sub-benchmarks shows its own log only with -v, and a leaf only its first 10 lines.
	summary string
}

func BenchmarkDashboard(b *testing.B) {
	fx := newDashFixture(b)
	for _, c := range []struct {
		group       string
		lethe, base dashSide
		queries     []dashQuery
	}{
		{"untouched", dashSide{"proxy", fx.proxy3}, dashSide{"direct", fx.upstream}, fx.untouched},
		{"masked", dashSide{"proxy", fx.proxy3}, dashSide{"oracle", fx.oracle}, fx.masked},
		{"tombstones10k", dashSide{"proxy10k", fx.proxy10k}, dashSide{"proxy0", fx.proxy0}, fx.untouched},
		{"tombstones10k-masked", dashSide{"proxy10k", fx.proxy3and10k}, dashSide{"proxy3", fx.proxy3}, fx.masked},
	} {
		b.Run(c.group+"/"+c.lethe.name+"-vs-"+c.base.name, func(b *testing.B) {
			if fx.summary != "" {
				b.Log(fx.summary)
				fx.summary = ""
			}
			fx.compare(b, c.lethe, c.base, c.queries)
		})
	}
}

// dashSide is one side of a comparison: the server its queries go to.
type dashSide struct {
	name string
	proc *benchProc
}

// compare times the dashboard on both sides, alternately (lethe first on even iterations, the
// baseline first on odd ones), so that whatever else the machine does slows both alike. It
// reports the median time of one dashboard on each side (lethe-ms, baseline-ms), the median of
// the paired ratios (lethe/baseline), and the peak RSS over the comparison of each side's process
// and of the upstream Prometheus (which a proxy's work loads too). ns/op is one dashboard on both
// sides.
func (fx *dashFixture) compare(b *testing.B, lethe, base dashSide, queries []dashQuery) {
	sides := []dashSide{lethe, base}
	reqs := make([][]dashRequest, len(sides))
	for s, side := range sides {
		for _, q := range queries {
			path, form := q.request()
			reqs[s] = append(reqs[s], dashRequest{name: q.name, url: side.proc.URL + path, body: form.Encode()})
		}
	}
	// Peaks of this comparison alone: the processes have served others before.
	for _, p := range []*benchProc{lethe.proc, base.proc, fx.upstream} {
		if err := p.resetPeakRSS(); err != nil {
			b.Logf("peak RSS of %s is its peak so far: %v", p.name, err)
		}
	}
	var totals [2][]time.Duration                      // [side][iteration]
	panels := make([][2][]time.Duration, len(queries)) // [query][side][iteration]
	for i := 0; b.Loop(); i++ {
		for k := range sides {
			s := k
			if i%2 == 1 {
				s = 1 - k
			}
			var total time.Duration
			for q, r := range reqs[s] {
				t0 := time.Now()
				if err := fx.run(r); err != nil {
					b.Fatal(err)
				}
				d := time.Since(t0)
				panels[q][s] = append(panels[q][s], d)
				total += d
			}
			totals[s] = append(totals[s], total)
		}
	}
	b.StopTimer()
	ratios := make([]float64, len(totals[0]))
	for i := range ratios {
		ratios[i] = float64(totals[0][i]) / float64(totals[1][i])
	}
	b.ReportMetric(dashMedianDuration(totals[0]).Seconds()*1000, "lethe-ms")
	b.ReportMetric(dashMedianDuration(totals[1]).Seconds()*1000, "baseline-ms")
	b.ReportMetric(dashMedian(ratios), "lethe/baseline")
	for _, m := range []struct {
		unit string
		proc *benchProc
	}{{"lethe-peak-RSS-MiB", lethe.proc}, {"baseline-peak-RSS-MiB", base.proc}, {"upstream-peak-RSS-MiB", fx.upstream}} {
		if mib, err := m.proc.peakRSSMiB(); err == nil {
			b.ReportMetric(mib, m.unit)
		} else {
			b.Logf("peak RSS of %s: %v", m.proc.name, err)
		}
	}
	for q, p := range panels {
		l, bl := dashMedianDuration(p[0]), dashMedianDuration(p[1])
		b.Logf("%-34s %s %8.2f ms  %s %8.2f ms  %5.2fx", queries[q].name, lethe.name, l.Seconds()*1000, base.name, bl.Seconds()*1000, float64(l)/float64(bl))
	}
}

func dashMedianDuration(ds []time.Duration) time.Duration {
	fs := make([]float64, len(ds))
	for i, d := range ds {
		fs[i] = float64(d)
	}
	return time.Duration(dashMedian(fs))
}

func dashMedian(fs []float64) float64 {
	if len(fs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(fs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

type dashRequest struct{ name, url, body string }

// run POSTs the query, as Grafana does, and reads the whole answer.
func (fx *dashFixture) run(r dashRequest) error {
	resp, err := fx.client.Post(r.url, "application/x-www-form-urlencoded", strings.NewReader(r.body))
	if err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s: %d %s", r.name, r.url, resp.StatusCode, body)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// get POSTs the query and returns the answer, which must be a success.
func (fx *dashFixture) get(p *benchProc, q dashQuery) ([]byte, error) {
	path, form := q.request()
	resp, err := fx.client.PostForm(p.URL+path, form)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", p.name, q.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %d %s", p.name, q.name, resp.StatusCode, body)
	}
	return body, nil
}

func newDashFixture(b *testing.B) *dashFixture {
	b.Helper()
	began := time.Now()
	ctx := context.Background()
	fx := &dashFixture{
		// No Accept-Encoding: Prometheus gzips its answers when asked and lethe-proxy (as of
		// writing) does not, which on loopback would time gzip rather than the proxy.
		client:    &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DisableCompression: true}},
		untouched: dashQueries("web"),
		masked:    dashQueries("api"),
	}
	b.Cleanup(fx.client.CloseIdleConnections)
	promBin, err := findPrometheus()
	if err != nil {
		b.Fatalf("no prometheus binary (set LETHE_PROMETHEUS or make `tools/build.sh prometheus` work): %v", err)
	}
	tmp := b.TempDir()

	// The blocks.
	series, value := dashData()
	var blockDirs []string
	var metas []*block.Meta
	for i := int64(0); i < dashBlocks; i++ {
		meta, dir, err := synth.Write(ctx, filepath.Join(tmp, "blocks"), synth.Block{
			Series: series, MinTime: blockStart + i*7_200_000, MaxTime: blockStart + (i+1)*7_200_000, Step: dashStep, Value: value,
		})
		if err != nil {
			b.Fatal(err)
		}
		blockDirs, metas = append(blockDirs, dir), append(metas, meta)
	}
	nSamples := int64(len(series)) * (dashEnd - blockStart) / dashStep
	b.Logf("data: %d blocks, %d series, %d samples, written in %v", dashBlocks, len(series), nSamples, time.Since(began).Round(time.Millisecond))

	// The two Prometheus servers; the oracle deletes the masked set itself.
	fx.upstream = startBenchPrometheus(b, "prometheus-upstream", promBin, filepath.Join(tmp, "upstream"), blockDirs, metas)
	fx.oracle = startBenchPrometheus(b, "prometheus-oracle", promBin, filepath.Join(tmp, "oracle"), blockDirs, metas)
	for _, d := range dashDeletions {
		if err := fx.admin(fx.oracle, "/api/v1/admin/tsdb/delete_series", url.Values{
			"match[]": {d.matcher}, "start": {formatPromTime(d.start)}, "end": {formatPromTime(d.end)},
		}); err != nil {
			b.Fatal(err)
		}
	}
	if err := fx.admin(fx.oracle, "/api/v1/admin/tsdb/clean_tombstones", nil); err != nil {
		b.Fatal(err)
	}

	// The tombstones: four FILESYSTEM buckets.
	bucket := func(name string) (string, *tombstones.Store) {
		dir := filepath.Join(tmp, name)
		bkt, err := filesystem.NewBucket(dir)
		if err != nil {
			b.Fatal(err)
		}
		return dir, tombstones.NewStore(bkt, nil)
	}
	bucket0, _ := bucket("bucket-0")
	bucket3, store3 := bucket("bucket-3")
	bucket10k, store10k := bucket("bucket-10k")
	bucket3and10k, store3and10k := bucket("bucket-3-and-10k")
	for _, d := range dashDeletions {
		spec := tombstones.Spec{Selectors: []string{d.matcher}, Start: &d.start, End: &d.end, Reason: "benchmark", Author: "bench"}
		for _, s := range []*tombstones.Store{store3, store3and10k} {
			if _, err := s.Add(ctx, spec); err != nil {
				b.Fatal(err)
			}
		}
	}
	// Tombstones over the dashboard's whole time range, of series no panel asks for: each proxy
	// has to rule them out, by matchers, for every selector of every query.
	otherStart, otherEnd := int64(blockStart), int64(dashEnd)
	for i := 0; i < dashOtherTombstones; i++ {
		t, err := store10k.Build(tombstones.Spec{
			Selectors: []string{`{__name__="other_metric",user_id="` + strconv.Itoa(i) + `"}`},
			Start:     &otherStart, End: &otherEnd, Reason: "benchmark", Author: "bench",
		})
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range []*tombstones.Store{store10k, store3and10k} {
			if err := s.Put(ctx, t); err != nil {
				b.Fatal(err)
			}
		}
	}

	fx.proxy0 = startBenchProxy(b, "lethe-proxy-0", filepath.Join(tmp, "proxy-0"), bucket0, fx.upstream.URL, 0)
	fx.proxy3 = startBenchProxy(b, "lethe-proxy-3", filepath.Join(tmp, "proxy-3"), bucket3, fx.upstream.URL, len(dashDeletions))
	fx.proxy10k = startBenchProxy(b, "lethe-proxy-10k", filepath.Join(tmp, "proxy-10k"), bucket10k, fx.upstream.URL, dashOtherTombstones)
	fx.proxy3and10k = startBenchProxy(b, "lethe-proxy-3-and-10k", filepath.Join(tmp, "proxy-3-and-10k"), bucket3and10k, fx.upstream.URL,
		len(dashDeletions)+dashOtherTombstones)

	fast := fx.validate(b)
	fx.summary = fmt.Sprintf("set-up in %v: %d blocks, %d series, %d samples; all answers checked; %s",
		time.Since(began).Round(time.Millisecond), dashBlocks, len(series), nSamples, fast)
	return fx
}

// validate checks every answer once: through a proxy it must equal the baseline's, and every
// masked query must really be masked (its oracle answer differs from the untouched upstream's).
// It returns how many queries the proxy answered on its fast path.
func (fx *dashFixture) validate(b *testing.B) string {
	b.Helper()
	fast0 := fx.proxy3.metric(b, "lethe_proxy_fast_path_requests_total")
	check := func(queries []dashQuery, want *benchProc, same []*benchProc, differ *benchProc) {
		for _, q := range queries {
			wantBody, err := fx.get(want, q)
			if err != nil {
				b.Fatal(err)
			}
			norm := dashNormalize(b, want, q, wantBody)
			for _, p := range same {
				body, err := fx.get(p, q)
				if err != nil {
					b.Fatal(err)
				}
				if got := dashNormalize(b, p, q, body); got != norm {
					b.Fatalf("%s: %s answers differently from %s:\n%s\n%s", q.name, p.name, want.name, dashClip(got), dashClip(norm))
				}
			}
			if differ != nil {
				body, err := fx.get(differ, q)
				if err != nil {
					b.Fatal(err)
				}
				if dashNormalize(b, differ, q, body) == norm {
					b.Fatalf("%s: no deletion changes the answer, so it is no masked query", q.name)
				}
			}
			b.Logf("answer %-9s %-34s %7d bytes, %3d series", map[bool]string{true: "masked", false: "untouched"}[differ != nil], q.name, len(wantBody), dashResultLen(wantBody))
		}
	}
	check(fx.untouched, fx.upstream, []*benchProc{fx.oracle, fx.proxy0, fx.proxy3, fx.proxy10k, fx.proxy3and10k}, nil)
	fast1 := fx.proxy3.metric(b, "lethe_proxy_fast_path_requests_total")
	check(fx.masked, fx.oracle, []*benchProc{fx.proxy3, fx.proxy3and10k}, fx.upstream)
	fast2 := fx.proxy3.metric(b, "lethe_proxy_fast_path_requests_total")
	return fmt.Sprintf("%s answered %v of %d untouched and %v of %d masked queries on its fast path (by the upstream)",
		fx.proxy3.name, fast1-fast0, len(fx.untouched), fast2-fast1, len(fx.masked))
}

func (fx *dashFixture) admin(p *benchProc, path string, form url.Values) error {
	resp, err := fx.client.PostForm(p.URL+path, form)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("%s %s %v: %d %s", p.name, path, form, resp.StatusCode, body)
	}
	return nil
}

func dashNormalize(b *testing.B, p *benchProc, q dashQuery, body []byte) string {
	b.Helper()
	s, err := dashNormalizeJSON(body)
	if err != nil {
		b.Fatalf("%s %s: %v", p.name, q.name, err)
	}
	return s
}

// dashNormalizeJSON is normalizeJSON for a testing.TB-free caller: a query answer with its results
// sorted by labels and its warnings and infos sorted.
func dashNormalizeJSON(body []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return "", fmt.Errorf("not a Prometheus API answer: %v: %s", err, dashClip(string(body)))
	}
	if doc["status"] != "success" {
		return "", fmt.Errorf("not a success: %s", dashClip(string(body)))
	}
	for _, k := range []string{"warnings", "infos"} {
		if l, ok := doc[k].([]any); ok {
			sortByKey(l, func(v any) string { s, _ := v.(string); return s })
		}
	}
	if data, ok := doc["data"].(map[string]any); ok {
		if res, ok := data["result"].([]any); ok && (data["resultType"] == "matrix" || data["resultType"] == "vector") {
			sortByKey(res, func(v any) string { m, _ := v.(map[string]any); return canonicalJSON(m["metric"]) })
		}
	}
	out, err := json.Marshal(doc)
	return string(out), err
}

func dashResultLen(body []byte) int {
	var r struct {
		Data struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	_ = json.Unmarshal(body, &r)
	return len(r.Data.Result)
}

func dashClip(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

// benchProc is a server process started for the benchmarks and stopped by the benchmark's
// cleanup. (The tests' prometheusProc and proxyProc take a *testing.T; a benchmark has a B.)
type benchProc struct {
	name    string
	URL     string
	logFile string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	client  *http.Client
}

// startBenchProc runs bin with args(listen address) in dir and waits until /-/ready answers 200,
// retrying on a lost race for the free port.
func startBenchProc(tb testing.TB, name, dir, bin string, args func(addr string) []string) *benchProc {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		logFile := filepath.Join(dir, fmt.Sprintf("%s-%d.log", name, attempt))
		logf, err := os.Create(logFile)
		if err != nil {
			tb.Fatal(err)
		}
		cmd := exec.Command(bin, args(addr)...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
		p := &benchProc{name: name, URL: "http://" + addr, logFile: logFile, cmd: cmd, done: make(chan struct{}),
			client: &http.Client{Timeout: 30 * time.Second}}
		began := time.Now()
		if err := cmd.Start(); err != nil {
			logf.Close()
			tb.Fatalf("start %s: %v", bin, err)
		}
		go func() {
			p.waitErr = cmd.Wait()
			logf.Close()
			close(p.done)
		}()
		tb.Cleanup(func() { p.stop(tb) })
		ready, exited := p.waitReady()
		if ready {
			tb.Logf("%s %s (pid %d) ready after %v", name, p.URL, cmd.Process.Pid, time.Since(began).Round(time.Millisecond))
			return p
		}
		tail := p.logTail()
		if !exited || !strings.Contains(tail, "address already in use") || attempt == 3 {
			tb.Fatalf("%s did not get ready (exited: %v, %v); log:\n%s", name, exited, p.waitErr, tail)
		}
	}
}

func (p *benchProc) waitReady() (ready, exited bool) {
	deadline := time.Now().Add(promReadyTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return false, true
		default:
		}
		if resp, err := p.client.Get(p.URL + "/-/ready"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true, false
			}
		}
		time.Sleep(promPollEvery)
	}
	return false, false
}

func (p *benchProc) stop(tb testing.TB) {
	stopProcess(tb, p.name, p.cmd, p.done, promStopTimeout)
}

func (p *benchProc) logTail() string { return fileTail(p.logFile) }

// peakRSSMiB is the process' peak resident set size so far (VmHWM), in MiB.
func (p *benchProc) peakRSSMiB() (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", p.cmd.Process.Pid)
}

// resetPeakRSS sets the process' VmHWM to its current RSS (Linux' clear_refs).
func (p *benchProc) resetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.cmd.Process.Pid), []byte("5"), 0)
}

// metric returns the value of an unlabelled metric on /metrics, or NaN if it is absent.
func (p *benchProc) metric(tb testing.TB, name string) float64 {
	tb.Helper()
	resp, err := p.client.Get(p.URL + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				tb.Fatalf("%s: %q: %v", p.name, sc.Text(), err)
			}
			return v
		}
	}
	return math.NaN()
}

// startBenchPrometheus runs Prometheus on copies of blockDirs and waits until it serves every block.
func startBenchPrometheus(tb testing.TB, name, bin, dir string, blockDirs []string, metas []*block.Meta) *benchProc {
	tb.Helper()
	data := filepath.Join(dir, "data")
	for _, src := range blockDirs {
		if err := os.CopyFS(filepath.Join(data, filepath.Base(src)), os.DirFS(src)); err != nil {
			tb.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(prometheusConfig(prometheusOptions{})), 0o644); err != nil {
		tb.Fatal(err)
	}
	p := startBenchProc(tb, name, dir, bin, func(addr string) []string {
		return []string{
			"--config.file=" + conf,
			"--storage.tsdb.path=" + data,
			"--web.listen-address=" + addr,
			"--web.enable-admin-api",
			"--storage.tsdb.retention.time=100y",
			"--log.level=warn",
		}
	})
	// Prometheus may load blocks after /-/ready: wait until every block answers.
	deadline := time.Now().Add(promReadyTimeout)
	for _, m := range metas {
		q := url.Values{
			"query": {fmt.Sprintf(`count(last_over_time({__name__=~".+"}[%dms]))`, m.MaxTime-m.MinTime)},
			"time":  {formatPromTime(m.MaxTime - 1)},
		}
		for {
			resp, err := p.client.Get(p.URL + "/api/v1/query?" + q.Encode())
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK && !isEmptyResult(body) {
					break
				}
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s does not serve block %s after %v; log:\n%s", name, m.ULID, promReadyTimeout, p.logTail())
			}
			time.Sleep(promPollEvery)
		}
	}
	return p
}

// startBenchProxy runs lethe-proxy in front of upstream with a FILESYSTEM bucket at bucketDir and
// waits until it has loaded the bucket's tombstones.
func startBenchProxy(tb testing.TB, name, dir, bucketDir, upstream string, wantTombstones int) *benchProc {
	tb.Helper()
	p := startBucketProxy(tb, name, dir, bucketDir, "--upstream.url="+upstream)
	p.waitGauges(tb, dashProxyReadyTimeout, gauge{"lethe_proxy_tombstones_loaded", wantTombstones})
	return p
}

// startBucketProxy runs lethe-proxy with a FILESYSTEM bucket at bucketDir, a data dir in dir and
// the extra flags args (none: the proxy serves the bucket's blocks).
func startBucketProxy(tb testing.TB, name, dir, bucketDir string, args ...string) *benchProc {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	conf := filepath.Join(dir, "bucket.yml")
	if err := os.WriteFile(conf, []byte("type: FILESYSTEM\nconfig:\n  directory: "+strconv.Quote(bucketDir)+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	return startBenchProc(tb, name, dir, binaries.proxy, func(addr string) []string {
		return append([]string{
			"--objstore.config-file=" + conf,
			"--web.listen-address=" + addr,
			"--data-dir=" + filepath.Join(dir, "data"),
			"--log.level=warn",
		}, args...)
	})
}

// gauge is a metric and the value a process must report for it.
type gauge struct {
	name string
	want int
}

// waitGauges waits until the process reports every gauge at its value, for at most timeout.
func (p *benchProc) waitGauges(tb testing.TB, timeout time.Duration, gauges ...gauge) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var missed []string
		for _, g := range gauges {
			if got := p.metric(tb, g.name); got != float64(g.want) {
				missed = append(missed, fmt.Sprintf("%s is %v, want %d", g.name, got, g.want))
			}
		}
		if len(missed) == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s after %v: %s; log:\n%s", p.name, timeout, strings.Join(missed, ", "), p.logTail())
		}
		time.Sleep(promPollEvery)
	}
}

const dashProxyReadyTimeout = 60 * time.Second
