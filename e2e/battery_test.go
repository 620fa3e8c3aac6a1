package e2e

// The oracle battery: the same generated queries against lethe-proxy and against a real
// Prometheus that got the same deletions through its own admin API (delete_series, then
// clean_tombstones). Every answer must be byte-for-byte the same once normalized.
//
// TestBatteryBucketMode covers lethe-proxy in bucket mode: no --upstream.url, the proxy serves
// the FILESYSTEM bucket's blocks itself. runBattery takes only the proxy's URL and the oracle, so
// the same battery runs unchanged against the proxy in front of an upstream.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
)

// The battery's data: three consecutive 2h blocks from blockStart, a sample every 15s.
const (
	batteryBlocks = 3
	batteryStep   = int64(15_000)
	batteryEnd    = blockStart + batteryBlocks*7_200_000 // exclusive
	// counterReset is when every http_requests_total{job="api",instance="i-1"} restarts from 0.
	counterReset = blockStart + 3*3_600_000 + 10*60_000
	// histogramReset is when request_latency_seconds{job="api",instance="i-1"} restarts; a
	// deletion covers it (and the samples after it in the same chunk).
	histogramReset = blockStart + 4*3_600_000 + 60_000
)

// bt is a battery time: blockStart plus a duration.
func bt(d time.Duration) int64 { return blockStart + d.Milliseconds() }

// batteryDeletion is one deletion, registered as a lethe tombstone and as a delete_series call.
// Start and End are inclusive milliseconds; an open bound is math.MinInt64 / math.MaxInt64.
type batteryDeletion struct {
	name       string
	matchers   []string
	start, end int64
}

func (d batteryDeletion) open() bool { return d.start == math.MinInt64 || d.end == math.MaxInt64 }

// startOracle starts a Prometheus on the block directories and deletes there, with its own
// delete_series and clean_tombstones, what dels delete: the ground truth of a masked query or a
// rewritten bucket.
func startOracle(t *testing.T, dirs []string, dels []batteryDeletion) *prometheusProc {
	t.Helper()
	oracle := startPrometheus(t, dirs)
	for _, d := range dels {
		var start, end *time.Time
		if d.start != math.MinInt64 {
			s := time.UnixMilli(d.start)
			start = &s
		}
		if d.end != math.MaxInt64 {
			e := time.UnixMilli(d.end)
			end = &e
		}
		oracle.DeleteSeries(t, d.matchers, start, end)
	}
	oracle.CleanTombstones(t)
	return oracle
}

var batteryDeletions = []batteryDeletion{
	{"one user across the first block boundary", []string{`{job="api",user_id="u3"}`}, bt(90 * time.Minute), bt(150 * time.Minute)},
	{"one whole series forever", []string{`http_requests_total{job="api",instance="i-0",user_id="u9",path="/admin"}`}, math.MinInt64, math.MaxInt64},
	{"regex over a short window, off the sample grid, over a native histogram reset",
		[]string{`{__name__=~"request_(duration|latency)_seconds.*",instance="i-1"}`}, bt(4*time.Hour + 7500*time.Millisecond), bt(4*time.Hour + 3*time.Minute)},
	{"two selectors, each some series of a metric", []string{`http_requests_total{job="web",path="/b"}`, `memory_bytes{instance="i-1"}`}, bt(5 * time.Hour), bt(5*time.Hour + 20*time.Minute)},
	{"a counter reset", []string{`http_requests_total{job="api",instance="i-1",user_id=~"u[0-3]"}`}, bt(3*time.Hour + 5*time.Minute), bt(3*time.Hour + 15*time.Minute)},
	{"the start of the data", []string{`temperature_celsius{room="a",instance="i-0"}`}, bt(-time.Hour), bt(10 * time.Minute)},
	{"the end of the data and beyond", []string{`temperature_celsius{room="b"}`}, bt(5*time.Hour + 50*time.Minute), bt(7 * time.Hour)},
	{"a single sample", []string{`http_requests_total{job="api",user_id="u5",path="/a"}`}, bt(45 * time.Minute), bt(45 * time.Minute)},
}

// batterySeries returns the float series with their value functions and the native histogram
// series with theirs.
func batterySeries() (floats []labels.Labels, value func(int, int64) float64, hists []labels.Labels, hist func(int, int64) *histogram.Histogram) {
	var gens []func(n int64) float64
	add := func(g func(n int64) float64, kv ...string) {
		floats = append(floats, labels.FromStrings(kv...))
		gens = append(gens, g)
	}
	nReset := (counterReset - blockStart) / batteryStep
	// Counters: whole increments that vary with the series; job="api",instance="i-1" resets.
	k := 0
	counter := func(k int, resets bool) func(int64) float64 {
		r := int64(1 + k%7)
		return func(n int64) float64 {
			if resets && n >= nReset {
				n -= nReset
			}
			return float64(r*n + (n/7)*int64(k%3))
		}
	}
	for _, job := range []struct {
		name      string
		instances int
		users     int
	}{{"api", 3, 8}, {"web", 2, 4}} {
		for i := 0; i < job.instances; i++ {
			for u := 0; u < job.users; u++ {
				for _, path := range []string{"/a", "/b"} {
					inst := fmt.Sprintf("i-%d", i)
					add(counter(k, job.name == "api" && inst == "i-1"), "__name__", "http_requests_total", "job", job.name, "instance", inst, "user_id", fmt.Sprintf("u%d", u), "path", path)
					k++
				}
			}
		}
	}
	// The only series with user_id="u9" and path="/admin": deleted forever.
	add(counter(k, false), "__name__", "http_requests_total", "job", "api", "instance", "i-0", "user_id", "u9", "path", "/admin")
	// Gauges: memory goes up and down in whole steps, temperature in quarters.
	for k, ji := range [][2]string{{"api", "i-0"}, {"api", "i-1"}, {"api", "i-2"}, {"web", "i-0"}, {"web", "i-1"}} {
		add(func(n int64) float64 {
			return 1e6 + float64(1000*k) + 250*math.Abs(float64((n+int64(3*k))%40-20))
		}, "__name__", "memory_bytes", "job", ji[0], "instance", ji[1])
	}
	for k := 0; k < 6; k++ {
		add(func(n int64) float64 {
			return 18 + 0.25*float64((n*int64(k+1)+int64(k))%17)
		}, "__name__", "temperature_celsius", "instance", fmt.Sprintf("i-%d", k/2), "room", []string{"a", "b"}[k%2])
	}
	// A classic histogram per api instance: cumulative _bucket counters, _sum and _count.
	les := []string{"0.1", "0.5", "1", "+Inf"}
	perStep := []int64{1, 3, 4, 5}
	perThird := []int64{0, 1, 1, 2}
	for i := 0; i < 3; i++ {
		inst := fmt.Sprintf("i-%d", i)
		bucket := func(j int) func(int64) float64 {
			return func(n int64) float64 { return float64(int64(i+1)*perStep[j]*n + (n/3)*perThird[j]) }
		}
		for j, le := range les {
			add(bucket(j), "__name__", "request_duration_seconds_bucket", "job", "api", "instance", inst, "le", le)
		}
		add(bucket(len(les)-1), "__name__", "request_duration_seconds_count", "job", "api", "instance", inst)
		add(func(n int64) float64 { return float64(i+1) * float64(n) * 2.5 }, "__name__", "request_duration_seconds_sum", "job", "api", "instance", inst)
	}
	value = func(i int, ts int64) float64 { return gens[i]((ts - blockStart) / batteryStep) }

	// Native histograms (exponential buckets); api/i-1 restarts at histogramReset.
	for _, ji := range [][2]string{{"api", "i-0"}, {"api", "i-1"}, {"api", "i-2"}, {"web", "i-0"}} {
		hists = append(hists, labels.FromStrings("__name__", "request_latency_seconds", "job", ji[0], "instance", ji[1]))
	}
	nHistReset := (histogramReset - blockStart) / batteryStep
	hist = func(i int, ts int64) *histogram.Histogram {
		n := (ts - blockStart) / batteryStep
		if i == 1 && n >= nHistReset {
			n -= nHistReset
		}
		return synth.DefaultHistogram(i, n+1)
	}
	return floats, value, hists, hist
}

// writeBatteryBlocks writes the battery's blocks (plain Prometheus blocks: no external labels) and
// returns their directories.
func writeBatteryBlocks(t *testing.T) []string {
	t.Helper()
	floats, value, hists, hist := batterySeries()
	tmp := t.TempDir()
	var dirs []string
	for i := int64(0); i < batteryBlocks; i++ {
		_, dir, err := synth.Write(context.Background(), tmp, synth.Block{
			Series:     floats,
			Value:      value,
			Histograms: hists,
			Histogram:  hist,
			MinTime:    blockStart + i*7_200_000,
			MaxTime:    blockStart + (i+1)*7_200_000,
			Step:       batteryStep,
		})
		testutil.Ok(t, err)
		dirs = append(dirs, dir)
	}
	return dirs
}

// TestBatteryBucketMode runs the battery against lethe-proxy in bucket mode (no --upstream.url)
// over a FILESYSTEM bucket holding the blocks, with the deletions registered by the lethe CLI
// after the proxy started; the oracle is a real Prometheus on copies of the same blocks.
func TestBatteryBucketMode(t *testing.T) { batteryMode(t, false) }

// TestBatteryUpstreamMode runs the same battery against lethe-proxy in front of a real Prometheus
// (remote read) holding the undeleted blocks.
func TestBatteryUpstreamMode(t *testing.T) { batteryMode(t, true) }

func batteryMode(t *testing.T, upstream bool) {
	began := time.Now()
	dirs := writeBatteryBlocks(t)

	bucketDir := t.TempDir()
	bkt, err := filesystem.NewBucket(bucketDir)
	testutil.Ok(t, err)
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, block.MetaFilename))
		testutil.Ok(t, err)
		meta, err := block.DecodeMeta(raw)
		testutil.Ok(t, err)
		testutil.Ok(t, block.Upload(context.Background(), bkt, dir, meta))
	}
	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + bucketDir + "}"

	untouched := startPrometheus(t, dirs)
	var proxy *proxyProc
	if upstream {
		proxy = startProxy(t, bucketDir, "--tombstones.refresh-interval=100ms", "--upstream.url="+untouched.URL)
	} else {
		proxy = startProxy(t, bucketDir, "--tombstones.refresh-interval=100ms")
		proxy.waitMetric(t, "lethe_proxy_blocks_loaded", batteryBlocks)
	}

	rfc := func(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }
	for _, d := range batteryDeletions {
		args := []string{conf, "tombstone", "add", "--reason", "battery: " + d.name, "--author", "battery"}
		for _, m := range d.matchers {
			args = append(args, "--match", m)
		}
		if d.start != math.MinInt64 {
			args = append(args, "--start", rfc(d.start))
		}
		// An open end: far past the data (the default end, "now", would be the wall clock).
		end := d.end
		if end == math.MaxInt64 {
			end = batteryEnd + 365*24*3_600_000
		}
		args = append(args, "--end", rfc(end))
		r := runLethe(t, args...)
		testutil.Equals(t, 0, r.code, "lethe %v: %s", args[1:], r.stderr)
	}
	// The tombstones were added behind the running proxy's back: it picks them up on refresh.
	proxy.waitMetric(t, "lethe_proxy_tombstones_loaded", float64(len(batteryDeletions)))
	t.Logf("data written, proxy up and %d tombstones registered in %v", len(batteryDeletions), time.Since(began).Round(time.Millisecond))

	oracle := startOracle(t, dirs, batteryDeletions)
	t.Logf("oracle and untouched Prometheus ready at %v", time.Since(began).Round(time.Millisecond))

	res := runBatteryWith(t, proxy.URL, oracle, untouched)
	select {
	case <-proxy.done:
		t.Errorf("lethe-proxy exited during the battery: %v", proxy.waitErr)
	default:
	}
	t.Logf("battery: %d comparisons (%d instant, %d range, %d series, %d label look-ups); %d of them on answers the deletions change; %d mismatches; total %v",
		res.comparisons, res.byKind["query"], res.byKind["query_range"], res.byKind["series"], res.byKind["labels"]+res.byKind["label_values"],
		res.discriminating, res.mismatches, time.Since(began).Round(time.Millisecond))
	// A battery whose answers the deletions never change proves nothing.
	testutil.Assert(t, res.discriminating*6 >= res.comparisons, "only %d of %d comparisons see a deletion", res.discriminating, res.comparisons)
}

// batteryResult counts what a battery run compared.
type batteryResult struct {
	comparisons    int
	byKind         map[string]int
	discriminating int // comparisons where the untouched server's answer differs from the oracle's
	mismatches     int
}

// runBattery compares lethe-proxy at proxyURL with the oracle on every generated query, series and
// label look-up, and fails the test with a readable list of every mismatch.
func runBattery(t *testing.T, proxyURL string, oracle *prometheusProc) batteryResult {
	t.Helper()
	return runBatteryWith(t, proxyURL, oracle, nil)
}

// batteryCase is one comparison: a request to both servers (kind query, query_range, series), or a
// label look-up on the proxy (kind labels, label_values) compared with what the oracle's series
// answer for the same match[] and window implies.
type batteryCase struct {
	kind   string
	path   string
	params url.Values
	group  string // the expression or endpoint, for the summary
	post   bool   // send to the proxy as a POST form
	label  string // label_values: the label name
}

func (c batteryCase) String() string {
	var b strings.Builder
	b.WriteString(c.path)
	if c.post {
		b.WriteString(" (POST)")
	}
	keys := make([]string, 0, len(c.params))
	for k := range c.params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range c.params[k] {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	return b.String()
}

// batteryTimes returns the evaluation times: around every deletion's bounds (start-1ms, start,
// end, end+1ms, the sample before and after, the moment the last sample before the deletion leaves
// the 5m lookback window and a millisecond before, end+5m, the middle), and outside any deletion.
func batteryTimes() []int64 {
	seen := map[int64]bool{}
	var out []int64
	add := func(ms ...int64) {
		for _, m := range ms {
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	lookback := int64(5 * 60_000)
	for _, d := range batteryDeletions {
		if d.start != math.MinInt64 {
			add(d.start-1, d.start, d.start-batteryStep, d.start+lookback-batteryStep-1, d.start+lookback-batteryStep)
		}
		if d.end != math.MaxInt64 {
			add(d.end, d.end+1, d.end+batteryStep, d.end+lookback)
		}
		if !d.open() {
			add(d.start + (d.end-d.start)/2)
		}
	}
	add(blockStart, blockStart+10*60_000+batteryStep, bt(2*time.Hour)-1, bt(2*time.Hour), bt(4*time.Hour), batteryEnd-batteryStep, batteryEnd+4*60_000, batteryEnd+time.Hour.Milliseconds())
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// batteryExpressions returns the PromQL expressions the battery evaluates.
func batteryExpressions() []string {
	at := func(ms int64) string { return formatPromTime(ms) }
	d1, d3, d7 := batteryDeletions[0], batteryDeletions[2], batteryDeletions[7]
	return []string{
		// Raw selectors, instant and range.
		`http_requests_total`,
		`http_requests_total{user_id="u3"}`,
		`{__name__=~"memory_bytes|temperature_celsius"}`,
		`request_latency_seconds`,
		`{__name__=~"request_duration_seconds.*",instance="i-1"}`,
		`http_requests_total{job="api",user_id=~"u3|u5"}[2m]`,
		`request_latency_seconds{instance="i-1"}[3m]`,
		`temperature_celsius[1m]`,
		// Counters.
		`rate(http_requests_total[5m])`,
		`increase(http_requests_total{instance="i-1"}[10m])`,
		`irate(http_requests_total{job="web"}[1m])`,
		`resets(http_requests_total{instance="i-1"}[30m])`,
		`rate(request_duration_seconds_sum[5m]) / rate(request_duration_seconds_count[5m])`,
		// Native histograms.
		`rate(request_latency_seconds[5m])`,
		`histogram_count(increase(request_latency_seconds[10m]))`,
		`resets(request_latency_seconds[30m])`,
		`histogram_sum(request_latency_seconds)`,
		`histogram_avg(rate(request_latency_seconds[5m]))`,
		// *_over_time.
		`count_over_time(http_requests_total[10m])`,
		`count_over_time(request_latency_seconds[5m])`,
		`sum_over_time(memory_bytes[7m])`,
		`min_over_time(temperature_celsius[20m])`,
		`max_over_time(memory_bytes[30m])`,
		`last_over_time(http_requests_total{user_id=~"u[3-5]"}[1h])`,
		`changes(memory_bytes[10m])`,
		`deriv(memory_bytes[10m])`,
		`delta(temperature_celsius[15m])`,
		// Aggregations.
		`sum by (job, user_id) (rate(http_requests_total[5m]))`,
		`count by (instance) (http_requests_total)`,
		`count(http_requests_total)`,
		`avg by (job) (memory_bytes)`,
		`topk(3, rate(http_requests_total[5m]))`,
		`bottomk(2, temperature_celsius)`,
		// Binary operations.
		`memory_bytes / on(job, instance) group_left sum by (job, instance) (rate(http_requests_total[5m]))`,
		`http_requests_total{job="api"} - http_requests_total{job="api"} offset 5m`,
		`temperature_celsius{room="a"} > 20`,
		// Subqueries.
		`max_over_time(rate(http_requests_total{job="api"}[2m])[30m:1m])`,
		`sum_over_time(sum by (instance) (memory_bytes)[15m:45s])`,
		// Offsets.
		`rate(http_requests_total{user_id="u3"}[5m] offset 10m)`,
		`memory_bytes offset -3m`,
		// The @ modifier.
		`sum by (job) (http_requests_total @ ` + at(d1.start+(d1.end-d1.start)/2) + `)`,
		`rate(http_requests_total{user_id="u3"}[5m] @ ` + at(d1.end+1) + `)`,
		`last_over_time(request_latency_seconds[5m] @ ` + at(d3.end) + `)`,
		`count_over_time(http_requests_total{user_id="u5"}[1m] @ ` + at(d7.start) + `)`,
		`count_over_time(temperature_celsius[1h] @ end())`,
		`count_over_time(temperature_celsius[1h] @ start())`,
		// absent.
		`absent(http_requests_total{job="api",user_id="u3"})`,
		`absent_over_time(http_requests_total{job="api",user_id="u3"}[2m])`,
		`absent(request_latency_seconds{instance="i-1"})`,
		`absent_over_time(memory_bytes{instance="i-1",job="web"}[1m])`,
		// histogram_quantile over classic buckets and native histograms.
		`histogram_quantile(0.9, sum by (le) (rate(request_duration_seconds_bucket[5m])))`,
		`histogram_quantile(0.5, rate(request_duration_seconds_bucket{instance="i-1"}[5m]))`,
		`histogram_quantile(0.9, rate(request_latency_seconds[5m]))`,
		`histogram_quantile(0.99, sum by (job) (rate(request_latency_seconds[10m])))`,
		// timestamp().
		`timestamp(http_requests_total{user_id=~"u3|u5"})`,
		`timestamp(temperature_celsius)`,
		`timestamp(request_latency_seconds)`,
	}
}

// batteryRanges returns the range queries' [start, end] and step (milliseconds).
func batteryRanges() [][3]int64 {
	d1, d3, d4, d5, d6, d7 := batteryDeletions[0], batteryDeletions[2], batteryDeletions[3], batteryDeletions[4], batteryDeletions[6], batteryDeletions[7]
	return [][3]int64{
		{blockStart - 5*60_000, batteryEnd + 10*60_000, 5 * 60_000},
		{blockStart + 7_000, batteryEnd, 13*60_000 + 17_000},
		{d1.start - 10*60_000, d1.end + 10*60_000, 30_000},
		{d3.start - 5*60_000, d3.end + 5*60_000, 7_500},
		{d4.start - 60_000, d4.end + 60_000, 60_000},
		{d5.start - 5*60_000, d5.end + 5*60_000, 20_000},
		{d7.start - 60_000, d7.start + 60_000, 5_000},
		{d6.start - 10*60_000, batteryEnd + 10*60_000, 45_000},
	}
}

// batteryMatchSets are the match[] sets of the series and label look-ups; nil means none (labels
// only; the series answer for it is asked with {__name__=~".+"}).
func batteryMatchSets() [][]string {
	return [][]string{
		nil,
		{`{__name__=~".+"}`},
		{`http_requests_total`},
		{`{user_id="u3"}`},
		{`{job="api",user_id="u3"}`},
		{`{path="/admin"}`},
		{`{instance="i-1"}`},
		{`{__name__=~"request_.*"}`},
		{`memory_bytes`, `{room="b"}`},
		{`{user_id="u5",path="/a"}`},
	}
}

// batteryWindows are the [start, end] windows of the series and label look-ups. Each holds at
// least one timestamp of the sample grid: Prometheus' series look-up works on chunks, and a window
// between two samples would test chunk boundaries rather than deletions.
func batteryWindows() [][2]int64 {
	var out [][2]int64
	add := func(s, e int64) {
		if e >= blockStart && s < batteryEnd {
			out = append(out, [2]int64{s, e})
		}
	}
	add(blockStart, batteryEnd-1)
	for _, d := range batteryDeletions {
		s, e := d.start, d.end
		if s == math.MinInt64 {
			s = blockStart
		}
		if e == math.MaxInt64 {
			e = batteryEnd - 1
		}
		add(s, e)
		add(s-batteryStep, s-1)
		add(e+1, e+batteryStep)
		add(s-time.Hour.Milliseconds(), s)
		add(e, e+time.Hour.Milliseconds())
	}
	return out
}

func batteryCases() []batteryCase {
	var cases []batteryCase
	n := 0
	push := func(c batteryCase) {
		// Every other request goes to the proxy as a POST form (label values have no POST).
		c.post = n%2 == 1 && c.kind != "label_values"
		n++
		cases = append(cases, c)
	}
	for _, e := range batteryExpressions() {
		for _, ts := range batteryTimes() {
			push(batteryCase{kind: "query", path: "/api/v1/query", group: e, params: url.Values{"query": {e}, "time": {formatPromTime(ts)}}})
		}
	}
	for _, e := range batteryExpressions() {
		if strings.HasSuffix(e, "]") { // a range vector cannot be a range query's result
			continue
		}
		for _, r := range batteryRanges() {
			push(batteryCase{kind: "query_range", path: "/api/v1/query_range", group: e, params: url.Values{
				"query": {e}, "start": {formatPromTime(r[0])}, "end": {formatPromTime(r[1])}, "step": {formatPromTime(r[2])},
			}})
		}
	}
	labelNames := []string{"__name__", "job", "instance", "user_id", "path", "le", "room"}
	for _, ms := range batteryMatchSets() {
		windows := batteryWindows()
		windows = append(windows, [2]int64{math.MinInt64, math.MaxInt64}) // no start/end
		for _, w := range windows {
			params := url.Values{}
			if ms != nil {
				params["match[]"] = ms
			}
			if w[0] != math.MinInt64 {
				params.Set("start", formatPromTime(w[0]))
				params.Set("end", formatPromTime(w[1]))
			}
			group := strings.Join(ms, ",")
			if ms != nil {
				push(batteryCase{kind: "series", path: "/api/v1/series", group: "series " + group, params: params})
			}
			push(batteryCase{kind: "labels", path: "/api/v1/labels", group: "labels " + group, params: params})
			for _, l := range labelNames {
				push(batteryCase{kind: "label_values", path: "/api/v1/label/" + l + "/values", group: "label values " + l + " " + group, params: params, label: l})
			}
		}
	}
	return cases
}

// batteryMismatch is one comparison whose answers differ.
type batteryMismatch struct {
	c                 batteryCase
	oracle, proxy     string
	proxyIsUnmasked   bool // the proxy answered what the untouched server answers: deleted data leaked
	oracleUnavailable bool
}

type batteryClient struct{ client *http.Client }

func (b batteryClient) do(base string, c batteryCase, post bool) (int, []byte, error) {
	var resp *http.Response
	var err error
	if post {
		resp, err = b.client.PostForm(base+c.path, c.params)
	} else {
		resp, err = b.client.Get(base + c.path + "?" + c.params.Encode())
	}
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// normalizeAnswer is normalizeJSON for answers that may not be JSON: it never fails the test.
func normalizeAnswer(t *testing.T, status int, body []byte, err error) string {
	if err != nil {
		return "request failed: " + err.Error()
	}
	var doc map[string]any
	if json.Unmarshal(body, &doc) != nil {
		return fmt.Sprintf("%d not JSON: %q", status, body)
	}
	return fmt.Sprintf("%d %s", status, normalizeJSON(t, body))
}

// seriesTruth is what a series look-up must answer for one match[] and window.
type seriesTruth struct {
	failure string              // a failed look-up on the reference server, normalized
	series  []map[string]string // the label sets
	// chunkOnly counts the series that Prometheus' /api/v1/series listed with no sample in the
	// window, which the truth leaves out (see truthOf).
	chunkOnly int
}

// truthOf asks a reference server (the oracle, or the untouched server) for the series answer to
// c's match[] and window. Prometheus' /api/v1/series works on chunks: after clean_tombstones a
// deletion that fell inside one chunk leaves a rewritten chunk spanning it, so Prometheus still
// lists the series over a window in which no sample survives, where lethe's contract (series and
// label look-ups answer from the samples that survive in the window) must not. The truth is
// therefore the server's /api/v1/series answer restricted to the series its own query engine
// finds a sample of in the window: last_over_time(SELECTOR[end-start+1ms]) at end covers exactly
// [start, end] and keeps the metric name.
func truthOf(t *testing.T, cl batteryClient, base string, c batteryCase) seriesTruth {
	params := url.Values{}
	for k, v := range c.params {
		params[k] = v
	}
	sels := params["match[]"]
	if len(sels) == 0 {
		sels = []string{`{__name__=~".+"}`}
		params["match[]"] = sels
	}
	sc := batteryCase{kind: "series", path: "/api/v1/series", params: params}
	status, body, err := cl.do(base, sc, false)
	var r struct {
		Status string              `json:"status"`
		Data   []map[string]string `json:"data"`
	}
	if err != nil || status != http.StatusOK || json.Unmarshal(body, &r) != nil || r.Status != "success" {
		return seriesTruth{failure: normalizeAnswer(t, status, body, err)}
	}

	end, span := batteryEnd-1, batteryEnd-blockStart // no start/end: all the data
	if s, e := params.Get("start"), params.Get("end"); s != "" && e != "" {
		startMs, endMs := parseBatteryTime(s), parseBatteryTime(e)
		end, span = endMs, endMs-startMs+1
	}
	sampled := map[string]bool{}
	for _, sel := range sels {
		q := batteryCase{kind: "query", path: "/api/v1/query", params: url.Values{
			"query": {fmt.Sprintf("last_over_time(%s[%dms])", sel, span)},
			"time":  {formatPromTime(end)},
		}}
		status, body, err := cl.do(base, q, false)
		var qr struct {
			Status string `json:"status"`
			Data   struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
				} `json:"result"`
			} `json:"data"`
		}
		if err != nil || status != http.StatusOK || json.Unmarshal(body, &qr) != nil || qr.Status != "success" {
			return seriesTruth{failure: "sample check " + q.String() + ": " + normalizeAnswer(t, status, body, err)}
		}
		for _, m := range qr.Data.Result {
			sampled[canonicalJSON(m.Metric)] = true
		}
	}
	out := seriesTruth{series: []map[string]string{}}
	for _, ls := range r.Data {
		if sampled[canonicalJSON(ls)] {
			out.series = append(out.series, ls)
		} else {
			out.chunkOnly++
		}
	}
	return out
}

// parseBatteryTime parses the battery's own time format (formatPromTime) back to milliseconds.
func parseBatteryTime(s string) int64 {
	var sec, ms int64
	if _, err := fmt.Sscanf(s, "%d.%03d", &sec, &ms); err != nil {
		panic(fmt.Sprintf("battery time %q: %v", s, err))
	}
	if strings.HasPrefix(s, "-") {
		return sec*1000 - ms
	}
	return sec*1000 + ms
}

// expected renders what the proxy must answer to a series, labels or label values look-up.
func (tr seriesTruth) expected(t *testing.T, c batteryCase) string {
	if tr.failure != "" {
		return tr.failure
	}
	var data []any
	switch c.kind {
	case "series":
		for _, ls := range tr.series {
			data = append(data, ls)
		}
	default:
		set := map[string]bool{}
		for _, ls := range tr.series {
			for k, v := range ls {
				if c.kind == "labels" {
					set[k] = true
				} else if k == c.label {
					set[v] = true
				}
			}
		}
		for k := range set {
			data = append(data, k)
		}
	}
	if data == nil {
		data = []any{}
	}
	out, _ := json.Marshal(map[string]any{"status": "success", "data": data})
	return fmt.Sprintf("%d %s", http.StatusOK, normalizeJSON(t, out))
}

// runBatteryWith is runBattery; with untouched (a Prometheus on the same blocks without the
// deletions) it also counts the comparisons whose answer the deletions change, and marks a
// mismatch where the proxy answered what the untouched server answers.
func runBatteryWith(t *testing.T, proxyURL string, oracle, untouched *prometheusProc) batteryResult {
	t.Helper()
	began := time.Now()
	cases := batteryCases()
	t.Logf("battery: %d expressions at %d instants and over %d ranges; series and label look-ups for %d match[] sets over %d windows",
		len(batteryExpressions()), len(batteryTimes()), len(batteryRanges()), len(batteryMatchSets()), len(batteryWindows())+1)
	cl := batteryClient{client: &http.Client{Timeout: time.Minute}}

	// The reference servers' series truths, shared by the look-ups of one match[] and window.
	type truthEntry struct {
		once sync.Once
		tr   seriesTruth
	}
	var truthMu sync.Mutex
	truths := map[string]*truthEntry{}
	truth := func(base string, c batteryCase) seriesTruth {
		key := base + " " + c.params.Encode()
		truthMu.Lock()
		e := truths[key]
		if e == nil {
			e = &truthEntry{}
			truths[key] = e
		}
		truthMu.Unlock()
		e.once.Do(func() { e.tr = truthOf(t, cl, base, c) })
		return e.tr
	}

	var (
		mu         sync.Mutex
		res        = batteryResult{byKind: map[string]int{}}
		mismatches []batteryMismatch
	)
	work := make(chan batteryCase)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				var want, unmasked string
				switch c.kind {
				case "series", "labels", "label_values":
					want = truth(oracle.URL, c).expected(t, c)
					if untouched != nil {
						unmasked = truth(untouched.URL, c).expected(t, c)
					}
				default:
					s, b, err := cl.do(oracle.URL, c, false)
					want = normalizeAnswer(t, s, b, err)
					if untouched != nil {
						s, b, err := cl.do(untouched.URL, c, false)
						unmasked = normalizeAnswer(t, s, b, err)
					}
				}
				s, b, err := cl.do(proxyURL, c, c.post)
				got := normalizeAnswer(t, s, b, err)

				mu.Lock()
				res.comparisons++
				res.byKind[c.kind]++
				if untouched != nil && unmasked != want {
					res.discriminating++
				}
				if got != want {
					mismatches = append(mismatches, batteryMismatch{
						c: c, oracle: want, proxy: got,
						proxyIsUnmasked:   untouched != nil && unmasked != want && got == unmasked,
						oracleUnavailable: !strings.HasPrefix(want, "200 "),
					})
				}
				mu.Unlock()
			}
		}()
	}
	for _, c := range cases {
		work <- c
	}
	close(work)
	wg.Wait()
	res.mismatches = len(mismatches)
	chunkOnly := 0
	for k, e := range truths {
		if strings.HasPrefix(k, oracle.URL+" ") {
			chunkOnly += e.tr.chunkOnly
		}
	}
	t.Logf("battery: the oracle's /api/v1/series listed %d series (over %d look-ups) that have no sample in the window; left out of the truth", chunkOnly, len(truths))
	t.Logf("battery: %d comparisons in %v", res.comparisons, time.Since(began).Round(time.Millisecond))

	if len(mismatches) == 0 {
		return res
	}
	// A readable report: how many per expression or endpoint, then the first mismatches in full.
	perGroup := map[string]int{}
	leaks := 0
	for _, m := range mismatches {
		perGroup[m.c.kind+" "+m.c.group]++
		if m.proxyIsUnmasked {
			leaks++
		}
	}
	groups := make([]string, 0, len(perGroup))
	for g := range perGroup {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d comparisons differ from the oracle (%d where the proxy answered the undeleted data)\n", len(mismatches), res.comparisons, leaks)
	sort.SliceStable(mismatches, func(i, j int) bool { return mismatches[i].c.String() < mismatches[j].c.String() })
	describe := func(w io.Writer, i int, m batteryMismatch, n int) {
		note := ""
		if m.proxyIsUnmasked {
			note = "  [LEAK: proxy answered the undeleted data]"
		}
		o, p := m.oracle, m.proxy
		if n != math.MaxInt {
			o, p = focus(o, p)
		}
		fmt.Fprintf(w, "\n#%d %s %s%s\n  oracle: %s\n  proxy:  %s\n", i+1, m.c.kind, m.c, note, clip(o, n), clip(p, n))
	}
	// LETHE_BATTERY_REPORT=FILE writes every mismatch in full.
	if f := os.Getenv("LETHE_BATTERY_REPORT"); f != "" {
		var full bytes.Buffer
		for i, m := range mismatches {
			describe(&full, i, m, math.MaxInt)
		}
		if err := os.WriteFile(f, full.Bytes(), 0o644); err != nil {
			t.Errorf("write %s: %v", f, err)
		}
	}
	const show = 30
	for i, m := range mismatches {
		if i == show {
			fmt.Fprintf(&b, "\n... and %d more\n", len(mismatches)-show)
			break
		}
		describe(&b, i, m, 1000)
	}
	// The summary last, where a truncated log still shows it.
	fmt.Fprintf(&b, "\nmismatches per expression / endpoint (only the differing series are shown above; LETHE_BATTERY_REPORT=FILE writes every answer in full):\n")
	for _, g := range groups {
		fmt.Fprintf(&b, "  %4d  %s\n", perGroup[g], g)
	}
	t.Error(b.String())
	return res
}

// focus keeps, of two normalized answers "STATUS JSON" with a list of results (query answers) or
// of data items (series, labels), only the elements that differ between them.
func focus(oracle, proxy string) (string, string) {
	type answer struct {
		status string
		doc    map[string]any
		items  []any
	}
	parse := func(s string) (answer, bool) {
		status, body, ok := strings.Cut(s, " ")
		if !ok {
			return answer{}, false
		}
		var doc map[string]any
		if json.Unmarshal([]byte(body), &doc) != nil {
			return answer{}, false
		}
		a := answer{status: status, doc: doc}
		switch d := doc["data"].(type) {
		case []any:
			a.items = d
		case map[string]any:
			if r, ok := d["result"].([]any); ok {
				a.items = r
			} else {
				return answer{}, false
			}
		default:
			return answer{}, false
		}
		return a, true
	}
	o, ok1 := parse(oracle)
	p, ok2 := parse(proxy)
	if !ok1 || !ok2 {
		return oracle, proxy
	}
	inO, inP := map[string]bool{}, map[string]bool{}
	for _, it := range o.items {
		inO[canonicalJSON(it)] = true
	}
	for _, it := range p.items {
		inP[canonicalJSON(it)] = true
	}
	// Matrix rows of the same series on both sides: keep only their differing points.
	byMetric := func(a answer) map[string][]any {
		out := map[string][]any{}
		for _, it := range a.items {
			m, _ := it.(map[string]any)
			for _, k := range []string{"values", "histograms"} {
				if pts, ok := m[k].([]any); ok {
					out[canonicalJSON(m["metric"])+k] = pts
				}
			}
		}
		return out
	}
	oRows, pRows := byMetric(o), byMetric(p)
	render := func(a answer, other map[string]bool, mine, theirs map[string][]any) string {
		var diff []string
		for _, it := range a.items {
			c := canonicalJSON(it)
			if other[c] {
				continue
			}
			m, _ := it.(map[string]any)
			for _, k := range []string{"values", "histograms"} {
				key := canonicalJSON(m["metric"]) + k
				if _, ok := theirs[key]; !ok {
					continue
				}
				seen := map[string]bool{}
				for _, pt := range theirs[key] {
					seen[canonicalJSON(pt)] = true
				}
				var pts []string
				for _, pt := range mine[key] {
					if !seen[canonicalJSON(pt)] {
						pts = append(pts, canonicalJSON(pt))
					}
				}
				n, more := len(pts), ""
				if n > 4 {
					more = fmt.Sprintf(" (+%d more)", n-4)
					pts = pts[:4]
				}
				c = fmt.Sprintf(`{"metric":%s,%q: %d of %d points differ: %s%s}`, canonicalJSON(m["metric"]), k, n, len(mine[key]), strings.Join(pts, ","), more)
			}
			diff = append(diff, c)
		}
		rest := map[string]any{}
		for k, v := range a.doc {
			if k != "data" {
				rest[k] = v
			}
		}
		return fmt.Sprintf("%s %d of %d items differ: [%s] %s", a.status, len(diff), len(a.items), strings.Join(diff, ","), canonicalJSON(rest))
	}
	return render(o, inP, oRows, pRows), render(p, inO, pRows, oRows)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("... (%d bytes)", len(s))
}
