package e2e

// Differential fuzzing of lethe-proxy against real Prometheus: generated PromQL (selectors with
// every matcher type, range functions, aggregations with by/without, binary operations with
// on/ignoring/group_left, subqueries, @ and offset) and generated request parameters
// (lookback_delta, step, timeout, limit, stats, several match[], GET and POST) over the battery's
// data and deletions, sent to lethe-proxy in both modes (in front of an untouched Prometheus, and
// over the bucket) and compared with the battery's oracle: a Prometheus that got the same
// deletions through delete_series and clean_tombstones.
//
// Every case is generated from a seed and its index alone (math/rand/v2, PCG(seed, index)), so a
// mismatch replays with LETHE_FUZZ_SEED=<seed> LETHE_FUZZ_CASE=<index>. The seeds are committed in
// testdata/fuzz/proxy_seeds.txt. The default run is fuzzDefaultCases cases spread over the seeds;
// LETHE_FUZZ_CASES=5000 runs more.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	fuzzDefaultCases = 200
	fuzzSeedsFile    = "testdata/fuzz/proxy_seeds.txt"
)

// fuzzCase is one generated request, with where it came from.
type fuzzCase struct {
	batteryCase
	seed  uint64
	index int
}

func (c fuzzCase) replay() string {
	return fmt.Sprintf("LETHE_FUZZ_SEED=%d LETHE_FUZZ_CASE=%d go test ./e2e -run TestFuzzProxy -count=1", c.seed, c.index)
}

// fuzzGen generates PromQL and request parameters over the battery's series.
type fuzzGen struct{ r *rand.Rand }

func (g fuzzGen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }
func (g fuzzGen) chance(p float64) bool    { return g.r.Float64() < p }

// fuzzMetrics are the battery's metric names with the labels their series carry.
var fuzzMetrics = []struct {
	name   string
	labels []string
}{
	{"http_requests_total", []string{"job", "instance", "user_id", "path"}},
	{"memory_bytes", []string{"job", "instance"}},
	{"temperature_celsius", []string{"instance", "room"}},
	{"request_duration_seconds_bucket", []string{"job", "instance", "le"}},
	{"request_duration_seconds_count", []string{"job", "instance"}},
	{"request_duration_seconds_sum", []string{"job", "instance"}},
	{"request_latency_seconds", []string{"job", "instance"}},
}

// fuzzValues are values (and regular expressions for =~ and !~) of each label.
var fuzzValues = map[string][]string{
	"job":      {"api", "web", "db", "api|web", "a.*", ".+", ".*"},
	"instance": {"i-0", "i-1", "i-2", "i-9", "i-[01]", "i-.*", ""},
	"user_id":  {"u0", "u3", "u5", "u9", "u[0-3]", "u3|u5", "u.*", ""},
	"path":     {"/a", "/b", "/admin", "/.*", "/a|/admin"},
	"room":     {"a", "b", "c", "[ab]"},
	"le":       {"0.1", "0.5", "1", "+Inf", "0\\\\..*"},
	"__name__": {"memory_bytes", "http_requests_total", "request_.*", "memory_bytes|temperature_celsius", ".+", "request_(duration|latency)_seconds.*"},
}

var fuzzMatchOps = []string{"=", "!=", "=~", "!~"}

// selector returns a series selector: a metric name (or none) and up to three matchers of every
// type. Without a name it keeps one matcher that cannot match the empty string, as Prometheus
// requires.
func (g fuzzGen) selector() string {
	if g.chance(0.4) {
		// A deletion's own selector, so that many answers meet a deletion.
		d := batteryDeletions[g.r.IntN(len(batteryDeletions))]
		return d.matchers[g.r.IntN(len(d.matchers))]
	}
	m := fuzzMetrics[g.r.IntN(len(fuzzMetrics))]
	var ms []string
	named := g.chance(0.8)
	if !named {
		op := g.pick("=", "=~")
		v := g.pick(fuzzValues["__name__"]...)
		if op == "=" {
			v = m.name
		}
		ms = append(ms, fmt.Sprintf(`__name__%s"%s"`, op, v))
	}
	for n := g.r.IntN(4); n > 0; n-- {
		l := g.pick(append(m.labels, "user_id", "room")...)
		ms = append(ms, fmt.Sprintf(`%s%s"%s"`, l, g.pick(fuzzMatchOps...), g.pick(fuzzValues[l]...)))
	}
	if !named && g.chance(0.3) {
		// A selector by a label alone.
		ms = append(ms[:0], fmt.Sprintf(`%s="%s"`, g.pick("user_id", "instance", "job"), g.pick("u3", "i-1", "api")))
	}
	s := "{" + strings.Join(ms, ",") + "}"
	if named {
		if len(ms) == 0 {
			return m.name
		}
		return m.name + s
	}
	return s
}

func (g fuzzGen) duration() string {
	return g.pick("15s", "30s", "1m", "90s", "2m", "5m", "7m", "10m", "30m", "1h")
}

// at returns an evaluation time near a deletion's bound or anywhere in the data, in milliseconds.
func (g fuzzGen) at() int64 {
	if g.chance(0.6) {
		ts := batteryTimes()
		return ts[g.r.IntN(len(ts))]
	}
	return blockStart - 30*60_000 + g.r.Int64N(batteryEnd-blockStart+time.Hour.Milliseconds())
}

// modifiers appends an offset and an @ modifier, sometimes.
func (g fuzzGen) modifiers(s string) string {
	if g.chance(0.12) {
		s += " @ " + g.pick("start()", "end()", formatPromTime(g.at()))
	}
	if g.chance(0.15) {
		s += " offset " + g.pick("5m", "10m", "-3m", "1h", "30s", "-1m")
	}
	return s
}

func (g fuzzGen) rangeSelector() string { return g.modifiers(g.selector() + "[" + g.duration() + "]") }

func (g fuzzGen) grouping() string {
	var ls []string
	for _, l := range []string{"job", "instance", "user_id", "path", "le", "room", "__name__"} {
		if g.chance(0.3) {
			ls = append(ls, l)
		}
	}
	return g.pick("by", "without") + " (" + strings.Join(ls, ", ") + ")"
}

var fuzzRangeFuncs = []string{"rate", "increase", "irate", "resets", "changes", "delta", "idelta", "deriv",
	"avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
	"present_over_time", "stddev_over_time", "stdvar_over_time", "absent_over_time"}

// rangeFunc applies a function of a range vector to arg.
func (g fuzzGen) rangeFunc(arg string) string {
	if g.chance(0.08) {
		return fmt.Sprintf("quantile_over_time(%s, %s)", g.pick("0", "0.5", "0.9", "1"), arg)
	}
	return g.pick(fuzzRangeFuncs...) + "(" + arg + ")"
}

// expr returns an instant-vector (or scalar) expression nested at most depth deep.
func (g fuzzGen) expr(depth int) string {
	if depth <= 0 {
		if g.chance(0.4) {
			return g.modifiers(g.selector())
		}
		return g.rangeFunc(g.rangeSelector())
	}
	switch g.r.IntN(12) {
	case 0:
		return g.modifiers(g.selector())
	case 1, 2:
		return g.rangeFunc(g.rangeSelector())
	case 3: // subquery
		step := g.pick("", "30s", "1m", "45s", "5m")
		return g.rangeFunc(g.modifiers(fmt.Sprintf("(%s)[%s:%s]", g.expr(depth-1), g.pick("5m", "10m", "30m", "1h"), step)))
	case 4, 5: // aggregation
		arg := g.expr(depth - 1)
		switch g.r.IntN(6) {
		case 0:
			return fmt.Sprintf("%s(%d, %s)", g.pick("topk", "bottomk"), 1+g.r.IntN(3), arg)
		case 1:
			return fmt.Sprintf("quantile %s (%s, %s)", g.grouping(), g.pick("0.1", "0.5", "0.99"), arg)
		case 2:
			return fmt.Sprintf(`count_values %s ("value", %s)`, g.grouping(), arg)
		default:
			return fmt.Sprintf("%s %s (%s)", g.pick("sum", "avg", "min", "max", "count", "group", "stddev"), g.grouping(), arg)
		}
	case 6, 7: // binary operation
		l, r := g.expr(depth-1), g.expr(depth-1)
		op := g.pick("+", "-", "*", "/", "%", ">", "<", ">=", "==", "!=", "and", "or", "unless", "^")
		if g.chance(0.3) && op != "and" && op != "or" && op != "unless" {
			return fmt.Sprintf("%s %s %s", l, op, g.pick("1", "2", "0.5", "100", "-1"))
		}
		if strings.ContainsAny(op[:1], "<>=!") && g.chance(0.4) {
			op += " bool"
		}
		match := ""
		if g.chance(0.5) {
			var ls []string
			for _, x := range []string{"job", "instance", "user_id", "le"} {
				if g.chance(0.4) {
					ls = append(ls, x)
				}
			}
			match = fmt.Sprintf(" %s(%s)", g.pick("on", "ignoring"), strings.Join(ls, ", "))
			if op != "and" && op != "or" && op != "unless" && g.chance(0.5) {
				match += " " + g.pick("group_left", "group_right")
			}
		}
		return fmt.Sprintf("%s %s%s %s", l, op, match, r)
	case 8: // histograms
		switch g.r.IntN(5) {
		case 0:
			return fmt.Sprintf("histogram_quantile(%s, sum %s (rate(request_duration_seconds_bucket%s[%s])))",
				g.pick("0.5", "0.9", "0.99"), g.pick("by (le)", "by (le, instance)", "without (job)"), g.pick("", `{instance="i-1"}`, `{instance=~"i-[12]"}`), g.duration())
		case 1:
			return fmt.Sprintf("histogram_quantile(%s, %s(request_latency_seconds%s[%s]))",
				g.pick("0.5", "0.9"), g.pick("rate", "increase"), g.pick("", `{instance="i-1"}`, `{job!="web"}`), g.duration())
		default:
			return fmt.Sprintf("%s(%s)", g.pick("histogram_count", "histogram_sum", "histogram_avg"),
				g.pick("request_latency_seconds", "rate(request_latency_seconds["+g.duration()+"])", g.modifiers("request_latency_seconds{instance=~\"i-[01]\"}")))
		}
	case 9:
		return fmt.Sprintf(`label_replace(%s, "%s", "$1", "%s", "%s")`, g.expr(depth-1), g.pick("dst", "user_id", "job"), g.pick("instance", "user_id", "job"), g.pick("(.*)", "i-(.*)", "u(\\\\d)"))
	case 10:
		return fmt.Sprintf("absent(%s)", g.modifiers(g.selector()))
	default:
		return fmt.Sprintf("%s(%s)", g.pick("abs", "timestamp", "ceil", "sgn", "sort_desc", "scalar", "-"), g.expr(depth-1))
	}
}

// params adds the optional query parameters: lookback_delta, timeout, limit and stats.
func (g fuzzGen) params(p url.Values) {
	if g.chance(0.25) {
		p.Set("lookback_delta", g.pick("30s", "1m", "5m", "45m", "1h", "3600", "2h"))
	}
	if g.chance(0.1) {
		p.Set("timeout", g.pick("30s", "1m", "120"))
	}
	if g.chance(0.15) {
		p.Set("limit", g.pick("1", "2", "5", "50"))
	}
	if g.chance(0.1) {
		p.Set("stats", g.pick("all", "true"))
	}
}

func (g fuzzGen) timeParam(ms int64) string {
	if g.chance(0.2) {
		return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
	}
	return formatPromTime(ms)
}

var fuzzLabelNames = []string{"__name__", "job", "instance", "user_id", "path", "le", "room"}

// request generates one request.
func (g fuzzGen) request() batteryCase {
	var c batteryCase
	switch n := g.r.IntN(10); {
	case n < 5:
		e := g.expr(1 + g.r.IntN(3))
		c = batteryCase{kind: "query", path: "/api/v1/query", group: e, params: url.Values{"query": {e}, "time": {g.timeParam(g.at())}}}
		g.params(c.params)
	case n < 8:
		e := g.expr(1 + g.r.IntN(3))
		start := g.at() - g.r.Int64N(time.Hour.Milliseconds())
		end := start + []int64{10, 60, 180, 360}[g.r.IntN(4)]*60_000
		step := g.pick("15s", "30s", "60", "1m", "5m", "7.5", "13m17s", "45")
		if g.chance(0.4) {
			// One of the battery's ranges around a deletion.
			rs := batteryRanges()
			r := rs[g.r.IntN(len(rs))]
			start, end, step = r[0], r[1], formatPromTime(r[2])
		}
		c = batteryCase{kind: "query_range", path: "/api/v1/query_range", group: e, params: url.Values{
			"query": {e}, "start": {g.timeParam(start)}, "end": {g.timeParam(end)}, "step": {step},
		}}
		g.params(c.params)
	default:
		params := url.Values{}
		for n := 1 + g.r.IntN(3); n > 0; n-- {
			params.Add("match[]", g.selector())
		}
		if g.chance(0.15) {
			params.Del("match[]")
		}
		if g.chance(0.8) {
			w := batteryWindows()
			win := w[g.r.IntN(len(w))]
			if g.chance(0.4) {
				s := g.at()
				win = [2]int64{s, s + []int64{1, 15_000, 600_000, 3_600_000}[g.r.IntN(4)]}
			}
			params.Set("start", formatPromTime(win[0]))
			params.Set("end", formatPromTime(win[1]))
		}
		if g.chance(0.2) {
			params.Set("limit", g.pick("1", "2", "3", "10"))
		}
		switch g.r.IntN(3) {
		case 0:
			if params.Get("match[]") == "" {
				params.Set("match[]", g.selector())
			}
			c = batteryCase{kind: "series", path: "/api/v1/series", group: "series", params: params}
		case 1:
			c = batteryCase{kind: "labels", path: "/api/v1/labels", group: "labels", params: params}
		default:
			l := g.pick(fuzzLabelNames...)
			c = batteryCase{kind: "label_values", path: "/api/v1/label/" + l + "/values", group: "label values " + l, params: params, label: l}
		}
	}
	c.post = c.kind != "label_values" && g.chance(0.5)
	return c
}

// fuzzCases generates n cases spread over the seeds, or the one case LETHE_FUZZ_SEED and
// LETHE_FUZZ_CASE name.
func fuzzCases(t *testing.T, seeds []uint64, n int) []fuzzCase {
	t.Helper()
	gen := func(seed uint64, i int) fuzzCase {
		g := fuzzGen{r: rand.New(rand.NewPCG(seed, uint64(i)))}
		return fuzzCase{batteryCase: g.request(), seed: seed, index: i}
	}
	if s := os.Getenv("LETHE_FUZZ_CASE"); s != "" {
		i, err := strconv.Atoi(s)
		testutil.Ok(t, err, "LETHE_FUZZ_CASE")
		testutil.Equals(t, 1, len(seeds), "LETHE_FUZZ_CASE needs LETHE_FUZZ_SEED")
		return []fuzzCase{gen(seeds[0], i)}
	}
	var out []fuzzCase
	per := (n + len(seeds) - 1) / len(seeds)
	for _, s := range seeds {
		for i := 0; i < per && len(out) < n; i++ {
			out = append(out, gen(s, i))
		}
	}
	return out
}

// fuzzSeeds reads the committed seeds, or the one LETHE_FUZZ_SEED names.
func fuzzSeeds(t *testing.T) []uint64 {
	t.Helper()
	if s := os.Getenv("LETHE_FUZZ_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		testutil.Ok(t, err, "LETHE_FUZZ_SEED")
		return []uint64{v}
	}
	f, err := os.Open(filepath.FromSlash(fuzzSeedsFile))
	testutil.Ok(t, err)
	defer f.Close()
	var seeds []uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseUint(line, 10, 64)
		testutil.Ok(t, err, "%s: %q", fuzzSeedsFile, line)
		seeds = append(seeds, v)
	}
	testutil.Ok(t, sc.Err())
	testutil.Assert(t, len(seeds) > 0, "no seeds in %s", fuzzSeedsFile)
	return seeds
}

// normalizeFuzzAnswer is normalizeAnswer with one more normalisation Prometheus itself implies:
// stats' timings are wall-clock durations that differ between two identical requests to the same
// server, so they are dropped. The sample counts in stats are kept and compared.
func normalizeFuzzAnswer(t *testing.T, status int, body []byte, err error) string {
	var doc map[string]any
	if err == nil && json.Unmarshal(body, &doc) == nil {
		if data, ok := doc["data"].(map[string]any); ok {
			if st, ok := data["stats"].(map[string]any); ok {
				delete(st, "timings")
				if b, merr := json.Marshal(doc); merr == nil {
					body = b
				}
			}
		}
	}
	if err == nil && status == http.StatusUnprocessableEntity {
		body = fuzzDuplicates.ReplaceAll(body, []byte("${1}[the duplicate series];"))
	}
	return normalizeAnswer(t, status, body, err)
}

// fuzzDuplicates finds the pair of series a many-to-many matching error names. Which pair that is
// depends on the order of the operand's series, which in a range query Prometheus builds from a
// map (promql's rangeEval): the same server names different pairs from one request to the next,
// so the pair is left out of the comparison (the rest of the error is kept).
var fuzzDuplicates = regexp.MustCompile(`(found duplicate series for the match group \{[^}]*\} on the (?:right|left) hand-side of the operation: )\[.*?\];`)

// fuzzOracleStable asks the oracle again, more often for an expression whose answer may depend on
// an order Prometheus does not define (ties in topk and bottomk, count_values, histogram_quantile,
// a limit cutting a vector), and
// reports whether it answered want every time.
func fuzzOracleStable(ask func() string, want string, c batteryCase) bool {
	n, q := 1, c.params.Get("query")
	if c.params.Get("limit") != "" || strings.Contains(q, "topk") || strings.Contains(q, "bottomk") ||
		strings.Contains(q, "count_values") || strings.Contains(q, "histogram_quantile") {
		// histogram_quantile groups its buckets in a map: its output order is random.
		n = 6
	}
	for i := 0; i < n; i++ {
		if ask() != want {
			return false
		}
	}
	return true
}

// fuzzCloseFloats reports whether two normalized answers are the same but for sample values that
// differ in their last digits (a relative 1e-12). Prometheus adds the elements of an aggregation
// (sum, avg, stddev, ...) in the order of its input, which a range query builds from a map, so
// the same server answers 1247.219128924634 or 1247.2191289246498 from one request to the next.
func fuzzCloseFloats(want, got string) bool {
	ws, wj, ok1 := strings.Cut(want, " ")
	gs, gj, ok2 := strings.Cut(got, " ")
	if !ok1 || !ok2 || ws != gs {
		return false
	}
	var w, g any
	if json.Unmarshal([]byte(wj), &w) != nil || json.Unmarshal([]byte(gj), &g) != nil {
		return false
	}
	var close func(a, b any) bool
	close = func(a, b any) bool {
		switch x := a.(type) {
		case map[string]any:
			y, ok := b.(map[string]any)
			if !ok || len(x) != len(y) {
				return false
			}
			for k, v := range x {
				if !close(v, y[k]) {
					return false
				}
			}
			return true
		case []any:
			y, ok := b.([]any)
			if !ok || len(x) != len(y) {
				return false
			}
			for i := range x {
				if !close(x[i], y[i]) {
					return false
				}
			}
			return true
		case string:
			y, ok := b.(string)
			if !ok {
				return false
			}
			if x == y {
				return true
			}
			fx, err1 := strconv.ParseFloat(x, 64)
			fy, err2 := strconv.ParseFloat(y, 64)
			return err1 == nil && err2 == nil && math.Abs(fx-fy) <= 1e-12*math.Max(math.Abs(fx), math.Abs(fy))
		default:
			return a == b
		}
	}
	return close(w, g)
}

// fuzzUnorderedLimit reports whether a query's limit cuts a vector whose order Prometheus does not
// define: histogram_quantile groups its buckets in a map (promql/functions.go), count_values its
// values, topk and bottomk break ties by the order of their input, and a subquery's series come
// out of the map its range evaluation collects them in (promql/engine.go, rangeEval). Any cut of
// the right size is then a right answer.
func fuzzUnorderedLimit(c batteryCase) bool {
	q := c.params.Get("query")
	if c.kind != "query" || c.params.Get("limit") == "" {
		return false
	}
	if strings.Contains(q, "histogram_quantile") || strings.Contains(q, "count_values") || strings.Contains(q, "topk") || strings.Contains(q, "bottomk") {
		return true
	}
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(q)
	if err != nil {
		return false
	}
	sub := false
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if _, ok := n.(*parser.SubqueryExpr); ok {
			sub = true
		}
		return nil
	})
	return sub
}

// fuzzLimitedSubset returns want if got is as good an answer to a query whose limit cuts an
// unordered vector: the same answer but for which results the cut kept, as many of them, each a
// result of the whole answer (the oracle's, without the limit). Otherwise it returns got.
func fuzzLimitedSubset(t *testing.T, cl batteryClient, oracleURL string, c batteryCase, want, got string) string {
	whole := c
	whole.params = url.Values{}
	for k, v := range c.params {
		if k != "limit" {
			whole.params[k] = v
		}
	}
	s, body, err := cl.do(oracleURL, whole, false)
	all := normalizeFuzzAnswer(t, s, body, err)
	type answer struct {
		rest    string
		results []string
	}
	parse := func(a string) (answer, bool) {
		status, js, ok := strings.Cut(a, " ")
		var doc map[string]any
		if !ok || json.Unmarshal([]byte(js), &doc) != nil {
			return answer{}, false
		}
		data, _ := doc["data"].(map[string]any)
		res, ok := data["result"].([]any)
		if !ok {
			return answer{}, false
		}
		out := answer{}
		for _, r := range res {
			out.results = append(out.results, canonicalJSON(r))
		}
		delete(data, "result")
		out.rest = status + " " + canonicalJSON(doc)
		return out, true
	}
	w, ok1 := parse(want)
	g, ok2 := parse(got)
	a, ok3 := parse(all)
	if !ok1 || !ok2 || !ok3 || w.rest != g.rest || len(w.results) != len(g.results) {
		return got
	}
	in := map[string]bool{}
	for _, r := range a.results {
		in[r] = true
	}
	for _, r := range g.results {
		if !in[r] {
			return got
		}
	}
	return want
}

// limitedTruth renders what a series or label look-up with a limit must answer, as Prometheus'
// API does: the sorted answer cut to the limit, with the warning "results truncated due to limit"
// (Prometheus v0.316.0 gives it on /api/v1/series too: asked directly with limit=1 over the
// battery's blocks, with one match[] and with two).
func limitedTruth(t *testing.T, tr seriesTruth, c batteryCase) string {
	limit, err := strconv.Atoi(c.params.Get("limit"))
	if err != nil || limit <= 0 || tr.failure != "" {
		return tr.expected(t, c)
	}
	full := tr.expected(t, c)
	status, body, _ := strings.Cut(full, " ")
	var doc struct {
		Status string `json:"status"`
		Data   []any  `json:"data"`
	}
	testutil.Ok(t, json.Unmarshal([]byte(body), &doc))
	if len(doc.Data) <= limit {
		return full
	}
	if c.kind == "series" {
		sort.Slice(doc.Data, func(i, j int) bool {
			return labels.Compare(labelsOf(doc.Data[i]), labelsOf(doc.Data[j])) < 0
		})
	}
	out := map[string]any{"status": doc.Status, "data": doc.Data[:limit], "warnings": []string{"results truncated due to limit"}}
	b, err := json.Marshal(out)
	testutil.Ok(t, err)
	return status + " " + normalizeJSON(t, b)
}

func labelsOf(v any) labels.Labels {
	m := map[string]string{}
	for k, x := range v.(map[string]any) {
		m[k], _ = x.(string)
	}
	return labels.FromMap(m)
}

// fuzzKnownIssues are mismatches this test found that are reported and not yet fixed. A case a
// predicate accepts is still run, compared and listed in the log, but fails the test only with
// LETHE_FUZZ_STRICT=1. Each predicate accepts only its own difference; delete an entry when its
// fix lands, and the test fails again on any such case. (issue 14's lookback_delta hole, which
// the generator covers with lookback_delta on a quarter of the queries, is fixed on main and has
// no entry: those cases must match.)
var fuzzKnownIssues = []struct {
	issue string
	match func(mode string, c batteryCase, oracle, proxy string) bool
	// panic, if set, is a frame of the panic the issue causes in lethe-proxy's log.
	panic string
}{
	{
		// A series or label look-up over a window that holds no timestamp of the sample grid
		// (e.g. 1ms between two samples): lethe's contract is the series with a sample in the
		// window, which is none; lethe-proxy lists the series whose chunks overlap it (as
		// Prometheus' own /api/v1/series does), sometimes in one mode and not in the other.
		// Nothing deleted is shown: no sample lies in such a window.
		issue: "fuzz: look-ups over a window between two samples list series by chunk overlap",
		match: func(_ string, c batteryCase, oracle, proxy string) bool {
			if c.kind != "series" && c.kind != "labels" && c.kind != "label_values" || c.params.Get("start") == "" {
				return false
			}
			start, end := parseBatteryTime(c.params.Get("start")), parseBatteryTime(c.params.Get("end"))
			first := blockStart + (max(start-blockStart, 0)+batteryStep-1)/batteryStep*batteryStep
			return (first > end || first >= batteryEnd) && strings.HasPrefix(proxy, "200 ")
		},
	},
}

// TestFuzzProxy sends generated requests to lethe-proxy, in front of an untouched Prometheus and
// over the bucket, and to the oracle; every answer must be the oracle's.
func TestFuzzProxy(t *testing.T) {
	began := time.Now()
	seeds := fuzzSeeds(t)
	n := fuzzDefaultCases
	if s := os.Getenv("LETHE_FUZZ_CASES"); s != "" {
		v, err := strconv.Atoi(s)
		testutil.Ok(t, err, "LETHE_FUZZ_CASES")
		n = v
	}
	cases := fuzzCases(t, seeds, n)

	dirs := writeBatteryBlocks(t)
	b := rwNewBucket(t)
	rwUpload(t, b, dirs, nil)
	for _, d := range batteryDeletions {
		rwAddTombstone(t, b, d)
	}
	untouched := startPrometheus(t, dirs)
	proxies := []struct {
		mode string
		p    *proxyProc
	}{
		{"upstream", startProxy(t, b.dir, "--upstream.url="+untouched.URL)},
		{"bucket", startProxy(t, b.dir)},
	}
	for _, px := range proxies {
		px.p.waitMetric(t, "lethe_proxy_tombstones_loaded", float64(len(batteryDeletions)))
	}
	proxies[1].p.waitMetric(t, "lethe_proxy_blocks_loaded", batteryBlocks)
	oracle := startOracle(t, dirs, batteryDeletions)
	t.Logf("fuzz: %d cases from %d seeds; servers ready in %v", len(cases), len(seeds), time.Since(began).Round(time.Millisecond))

	cl := batteryClient{client: &http.Client{Timeout: time.Minute}}
	type mismatch struct {
		c                   fuzzCase
		mode, oracle, proxy string
		leak                bool
		known               string
	}
	var (
		mu             sync.Mutex
		mismatches     []mismatch
		comparisons    int
		discriminating int
		byKind         = map[string]int{}
		errorsBoth     int
		unstable       int
		// Cases with lookback_delta, and of those the ones that see a deletion (issue 14 hole 6).
		withLookback, lookbackDiscriminating int
	)
	answer := func(base string, c batteryCase) string {
		switch c.kind {
		case "series", "labels", "label_values":
			// The truth is the whole answer, cut to the limit afterwards.
			whole := c
			whole.params = url.Values{}
			for k, v := range c.params {
				if k != "limit" {
					whole.params[k] = v
				}
			}
			tr := truthOf(t, cl, base, whole)
			if tr.failure != "" && c.kind != "series" {
				// A look-up that fails fails with the endpoint's own error, which for a bad
				// match[] is not the series endpoint's: Prometheus' labels and label values
				// handlers do not name the parameter.
				s, body, err := cl.do(base, c, false)
				return normalizeFuzzAnswer(t, s, body, err)
			}
			return limitedTruth(t, tr, c)
		}
		s, body, err := cl.do(base, c, false)
		return normalizeFuzzAnswer(t, s, body, err)
	}
	work := make(chan fuzzCase)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				want := answer(oracle.URL, c.batteryCase)
				if (c.kind == "query" || c.kind == "query_range") && !fuzzUnorderedLimit(c.batteryCase) && !fuzzOracleStable(func() string { return answer(oracle.URL, c.batteryCase) }, want, c.batteryCase) {
					// Some answers depend on an order Prometheus does not define (a limit cutting
					// count_values' output, the series an error about duplicates names): the
					// oracle itself answers differently from one request to the next, so no
					// answer is wrong.
					mu.Lock()
					unstable++
					mu.Unlock()
					continue
				}
				unmasked := answer(untouched.URL, c.batteryCase)
				for _, px := range proxies {
					s, body, err := cl.do(px.p.URL, c.batteryCase, c.post)
					got := normalizeFuzzAnswer(t, s, body, err)
					if got != want && fuzzUnorderedLimit(c.batteryCase) {
						got = fuzzLimitedSubset(t, cl, oracle.URL, c.batteryCase, want, got)
					}
					if got != want && fuzzCloseFloats(want, got) {
						got = want
					}
					mu.Lock()
					comparisons++
					byKind[c.kind]++
					if got != want {
						m := mismatch{c: c, mode: px.mode, oracle: want, proxy: got, leak: unmasked != want && got == unmasked}
						for _, k := range fuzzKnownIssues {
							if k.match(px.mode, c.batteryCase, want, got) {
								m.known = k.issue
								break
							}
						}
						mismatches = append(mismatches, m)
					}
					mu.Unlock()
				}
				mu.Lock()
				if unmasked != want {
					discriminating++
				}
				if c.params.Get("lookback_delta") != "" {
					withLookback++
					if unmasked != want {
						lookbackDiscriminating++
					}
				}
				if !strings.HasPrefix(want, "200 ") {
					errorsBoth++
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

	t.Logf("fuzz: %d cases, %d comparisons (%d instant, %d range, %d series, %d label look-ups) in %v; %d cases see a deletion (the untouched server answers differently), %d answered with an error by the oracle, %d not compared because the oracle itself answers differently each time; %d mismatches",
		len(cases), comparisons, byKind["query"], byKind["query_range"], byKind["series"], byKind["labels"]+byKind["label_values"],
		time.Since(began).Round(time.Millisecond), discriminating, errorsBoth, unstable, len(mismatches))

	// Unknown mismatches first, then the known ones, each in seed and case order.
	sort.SliceStable(mismatches, func(i, j int) bool {
		if (mismatches[i].known == "") != (mismatches[j].known == "") {
			return mismatches[i].known == ""
		}
		if mismatches[i].c.seed != mismatches[j].c.seed {
			return mismatches[i].c.seed < mismatches[j].c.seed
		}
		return mismatches[i].c.index < mismatches[j].c.index
	})
	strict := os.Getenv("LETHE_FUZZ_STRICT") == "1"
	replaying, width := os.Getenv("LETHE_FUZZ_CASE") != "", 1500
	if replaying {
		width = math.MaxInt
	}
	var report, full strings.Builder
	failing := 0
	for i, m := range mismatches {
		note := ""
		if m.leak {
			note = " [LEAK: the proxy answered the undeleted data]"
		}
		if m.known != "" {
			note += " [known: " + m.known + "]"
		}
		if m.known == "" || strict {
			failing++
		}
		o, p := focus(m.oracle, m.proxy)
		if replaying {
			o, p = m.oracle, m.proxy // a replayed case shows both answers whole
		}
		line := fmt.Sprintf("\n#%d seed %d case %d, proxy in %s mode%s\n  %s %s\n  oracle: %s\n  proxy:  %s\n  replay: %s\n",
			i+1, m.c.seed, m.c.index, m.mode, note, m.c.kind, m.c.batteryCase, clip(o, width), clip(p, width), m.c.replay())
		if i < 40 {
			report.WriteString(line)
		}
		full.WriteString(line)
	}
	// LETHE_FUZZ_REPORT=FILE writes every mismatch, not only the first 40.
	if f := os.Getenv("LETHE_FUZZ_REPORT"); f != "" {
		testutil.Ok(t, os.WriteFile(f, []byte(full.String()), 0o644))
	}
	if len(mismatches) > 40 {
		fmt.Fprintf(&report, "\n... and %d more\n", len(mismatches)-40)
	}
	perIssue := map[string]int{}
	for _, m := range mismatches {
		k := m.known
		if k == "" {
			k = "(not known)"
		}
		perIssue[k]++
	}
	issues := make([]string, 0, len(perIssue))
	for k := range perIssue {
		issues = append(issues, k)
	}
	sort.Strings(issues)
	fmt.Fprintf(&report, "\nmismatches per issue:\n")
	for _, k := range issues {
		fmt.Fprintf(&report, "  %4d  %s\n", perIssue[k], k)
	}
	t.Logf("fuzz: %d cases with lookback_delta, %d of them see a deletion", withLookback, lookbackDiscriminating)
	// A panic in a proxy (recovered by net/http, so the request just fails) is shown from its first
	// line, which the log tail on failure cuts.
	for _, px := range proxies {
		raw, err := os.ReadFile(px.p.logFile)
		testutil.Ok(t, err)
		panics := strings.Split(string(raw), "http: panic serving ")[1:]
		known := 0
		for _, p := range panics {
			p = clip(p, 3000)
			issue := ""
			for _, k := range fuzzKnownIssues {
				if k.panic != "" && strings.Contains(p, k.panic) {
					issue = k.issue
				}
			}
			if issue == "" || strict {
				t.Errorf("lethe-proxy in %s mode panicked:\n%s", px.mode, p)
				continue
			}
			known++
		}
		if known > 0 {
			t.Logf("lethe-proxy in %s mode: %d panics of known issues", px.mode, known)
		}
	}
	// Cases whose answers the deletions never change prove nothing.
	// (About one case in ten does: most generated expressions meet no deletion.)
	if len(cases) >= 20 && discriminating*12 < len(cases) {
		t.Errorf("only %d of %d cases see a deletion", discriminating, len(cases))
	}
	if failing > 0 {
		t.Errorf("%d of %d comparisons differ from the oracle:%s", len(mismatches), comparisons, report.String())
	} else if len(mismatches) > 0 {
		t.Logf("%d known mismatches (LETHE_FUZZ_STRICT=1 fails on them):%s", len(mismatches), report.String())
	}
}

// TestFuzzProxyGenerator checks the generator without servers: it is deterministic in its seed,
// covers every matcher type, function family, modifier and parameter the fuzz test claims, and
// produces PromQL Prometheus parses.
func TestFuzzProxyGenerator(t *testing.T) {
	seeds := []uint64{1, 2}
	a, b := fuzzCases(t, seeds, 400), fuzzCases(t, seeds, 400)
	testutil.Equals(t, len(a), len(b))
	for i := range a {
		testutil.Equals(t, a[i].batteryCase.String(), b[i].batteryCase.String())
	}
	var all strings.Builder
	methods := map[bool]int{}
	for _, c := range a {
		all.WriteString(c.batteryCase.String())
		all.WriteString("\n")
		methods[c.post]++
	}
	text := all.String()
	for _, want := range []string{`="`, `!="`, `=~"`, `!~"`, "rate(", "increase(", "resets(", "changes(", "_over_time(",
		"histogram_quantile(", "absent(", "label_replace(", " by (", " without (", " on(", " ignoring(", "group_left",
		":", " @ ", " offset ", "lookback_delta=", "step=", "timeout=", "limit=", "stats=", "/api/v1/series", "/api/v1/labels", "/values"} {
		testutil.Assert(t, strings.Contains(text, want), "no generated case has %q", want)
	}
	testutil.Assert(t, regexp.MustCompile(`\[[0-9]+[mh]:[0-9a-z]*\]`).MatchString(text), "no subquery generated")
	testutil.Assert(t, methods[true] > 0 && methods[false] > 0, "methods: %v", methods)
	// Most generated expressions parse; the rest (a many-to-many match, a type error) are asked
	// too, and the proxy must fail them as Prometheus does.
	p := parser.NewParser(parser.Options{})
	queries, parsed := 0, 0
	for _, c := range a {
		if q := c.params.Get("query"); q != "" {
			queries++
			if _, err := p.ParseExpr(q); err == nil {
				parsed++
			}
		}
	}
	t.Logf("%d of %d generated expressions parse", parsed, queries)
	testutil.Assert(t, parsed*10 >= queries*7, "only %d of %d generated expressions parse", parsed, queries)
	multi := 0
	for _, c := range a {
		if len(c.params["match[]"]) > 1 {
			multi++
		}
	}
	testutil.Assert(t, multi > 0, "no case with several match[]")

	// The float tolerance takes last-digit differences only.
	ans := func(v string) string {
		return `200 {"data":{"result":[{"metric":{},"values":[[1793509795.66,"` + v + `"]]}],"resultType":"matrix"},"status":"success"}`
	}
	testutil.Assert(t, fuzzCloseFloats(ans("1247.219128924634"), ans("1247.2191289246498")), "last digits")
	testutil.Assert(t, !fuzzCloseFloats(ans("1247.219128924634"), ans("1247.2191289")), "a real difference")
	testutil.Assert(t, !fuzzCloseFloats(ans("1"), strings.Replace(ans("1"), "1793509795.66", "1793509795.67", 1)), "another timestamp")
	testutil.Assert(t, math.Abs(float64(methods[true]-methods[false])) < 200, "methods: %v", methods)
}
