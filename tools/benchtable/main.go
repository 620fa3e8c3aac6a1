// Command benchtable reads `go test -bench` output on stdin and prints the markdown tables of
// `make bench`: for every benchmark that reports lethe-ms, baseline-ms and lethe/baseline, lethe's
// time beside the baseline's, the ratio and its target, and peak memory. One table per benchmark:
// BenchmarkDashboard (lethe-proxy; the peak RSS of both sides and of the upstream) and
// BenchmarkRewrite (lethe-rewriter; the peak RSS and peak anonymous RSS of both sides, their
// ratios and the memory target); BenchmarkLookups' rows carry issue 17's rule max(1.5x, +50 ms) as
// met/missed, and a second table compares each look-up's ratio over 12 blocks with 1. With -count > 1 each figure is the median of the runs. It exits 1
// if the input holds a failure or no comparison at all.
//
//	go test -run '^$' -bench Dashboard -benchtime 20x ./e2e/ | go run ./tools/benchtable
//	go test -run '^$' -bench Rewrite -benchtime 3x ./e2e/ | go run ./tools/benchtable
package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// target is a bound on a ratio lethe / baseline.
type target struct {
	what  string
	bound float64
	le    bool // the bound is inclusive
}

// targets are the bounds on lethe/baseline, by comparison group.
var targets = map[string]target{
	"untouched":            {"untouched queries: lethe-proxy vs the upstream Prometheus asked directly", 1.05, true},
	"masked":               {"masked queries: lethe-proxy vs Prometheus after its own delete_series + clean_tombstones", 1.5, true},
	"tombstones10k":        {"untouched queries: lethe-proxy with 10,000 tombstones they do not touch vs with none", 1.10, false},
	"tombstones10k-masked": {"masked queries: lethe-proxy with 10,000 more tombstones they do not touch vs without", 1.10, false},
}

// The StoreAPI filter's Series throughput is at least 0.8 of the store's own (issue 13): lethe's
// time at most 1.25x the store's, at both block sizes, through Thanos Query and asked directly.
func init() {
	for _, size := range []string{"filter", "filter4x"} {
		for _, via := range []string{"query", "series"} {
			for _, data := range []string{"untouched", "masked"} {
				g := size + "-" + via + "-" + data
				targets[g] = target{"StoreAPI filter, " + data + " data, " + map[string]string{"query": "Thanos Query over lethe vs over the store", "series": "Series pulled from lethe vs from the store"}[via], 1.25, true}
			}
		}
	}
}

// rewriteTargets are the bounds for BenchmarkRewrite, by comparison (group/lethe-vs-base):
// on the time ratio (bound 0: none, the ratio is only stated) and on the peak RSS ratio.
var rewriteTargets = map[string]struct {
	what         string
	time, memory target
}{
	"rewrite/lethe-vs-thanos": {"lethe-rewriter vs `thanos tools bucket rewrite`, same block, same deletions: 1.5x faster",
		target{bound: 1 / 1.5, le: true}, target{bound: 1}},
	"rewrite4x/lethe-vs-thanos": {"the same on the 4x block (4x the series)", target{bound: 1 / 1.5, le: true}, target{bound: 1}},
	"rewrite/lethe-vs-copy": {"lethe-rewriter vs a streamed copy of the block's objects through the bucket: within 3x",
		target{bound: 3, le: true}, target{}},
	"rewrite4x/lethe-vs-copy": {"the same on the 4x block", target{bound: 3, le: true}, target{}},
	"memory/lethe4x-vs-lethe1x": {"lethe-rewriter on 4x the series vs 1x, same --batch.series: time linear (4x/1x time), peak memory flat",
		target{bound: 4.4, le: true}, target{bound: 1.25, le: true}},
}

// storeSourceSides are BenchmarkStoreSource's lethe-proxy sides, each timed beside Thanos Query
// asked directly (querier-ms): its metric prefix and how lethe-proxy reads.
var storeSourceSides = []struct{ side, how string }{
	{"store", "--upstream.store=querier"},
	{"both", "--upstream.store=querier --upstream.url"},
	{"stores", "--upstream.store=store gateway --upstream.url"},
	{"api", "--upstream.url"},
}

// storeSourceRows turns one BenchmarkStoreSource leaf, which times every side in one run, into a
// comparison per side.
func storeSourceRows(name string, metrics map[string]float64) []*row {
	parts := strings.Split(name, "/")
	group := strings.Join(parts[1:], "/")
	var rows []*row
	for _, s := range storeSourceSides {
		ratio, ok := metrics[s.side+"/querier"]
		if !ok {
			continue
		}
		m := map[string][]float64{
			"lethe-ms": {metrics[s.side+"-ms"]}, "baseline-ms": {metrics["querier-ms"]}, "lethe/baseline": {ratio},
			"lethe-peak-RSS-MiB": {metrics["lethe-proxy-"+s.side+"-MiB"]}, "baseline-peak-RSS-MiB": {metrics["thanos-query-MiB"]},
		}
		rows = append(rows, &row{bench: parts[0], group: group, lethe: "lethe " + s.how, base: "Thanos Query", metrics: m})
	}
	return rows
}

// storeSourceTarget is issue 13's bound on a BenchmarkStoreSource comparison: untouched 1.05x,
// masked 1.5x of Thanos Query alone.
func storeSourceTarget(group string) (target, bool) {
	switch q := group[strings.LastIndex(group, "/")+1:]; {
	case strings.HasPrefix(q, "untouched"):
		return target{"untouched, in front of Thanos Query", 1.05, true}, true
	case strings.HasPrefix(q, "masked"):
		return target{"masked, in front of Thanos Query", 1.5, true}, true
	}
	return target{}, false
}

// row is one comparison: its metrics, one value per run.
type row struct {
	bench, group, lethe, base string
	metrics                   map[string][]float64
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

func main() {
	rows, header, failed, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(rows) > 0 {
		printTables(os.Stdout, rows, header)
	}
	switch {
	case failed:
		fmt.Fprintln(os.Stderr, "benchtable: the benchmark run failed (see its output)")
		os.Exit(1)
	case len(rows) == 0:
		fmt.Fprintln(os.Stderr, "benchtable: no comparison (lethe-ms, baseline-ms, lethe/baseline) in the input")
		os.Exit(1)
	}
}

func parse(r io.Reader) (rows []*row, header []string, failed bool, err error) {
	byName := map[string]*row{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "FAIL") || strings.HasPrefix(strings.TrimSpace(line), "--- FAIL") || strings.HasPrefix(line, "panic:"):
			failed = true
		case len(f) >= 2 && (f[0] == "cpu:" || f[0] == "goos:" || f[0] == "goarch:"):
			if !slices.Contains(header, line) {
				header = append(header, line)
			}
		case len(f) >= 4 && strings.HasPrefix(f[0], "Benchmark") && len(f)%2 == 0:
			if _, err := strconv.Atoi(f[1]); err != nil {
				continue
			}
			name := procsSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
			metrics := map[string]float64{}
			for i := 2; i+1 < len(f); i += 2 {
				v, err := strconv.ParseFloat(f[i], 64)
				if err != nil {
					continue
				}
				metrics[f[i+1]] = v
			}
			if _, ok := metrics["querier-ms"]; ok {
				rows = append(rows, storeSourceRows(name, metrics)...)
				continue
			}
			if _, ok := metrics["lethe/baseline"]; !ok {
				continue
			}
			rw := byName[name]
			if rw == nil {
				parts := strings.Split(name, "/")
				rw = &row{bench: parts[0], group: name, lethe: "lethe", base: "baseline", metrics: map[string][]float64{}}
				if len(parts) >= 3 {
					rw.group = parts[len(parts)-2]
					if l, b, ok := strings.Cut(parts[len(parts)-1], "-vs-"); ok {
						rw.lethe, rw.base = l, b
					}
				}
				byName[name] = rw
				rows = append(rows, rw)
			}
			for k, v := range metrics {
				rw.metrics[k] = append(rw.metrics[k], v)
			}
		}
	}
	return rows, header, failed, sc.Err()
}

// printTables prints the header and one table per benchmark, in the order they came.
func printTables(w io.Writer, rows []*row, header []string) {
	if len(header) > 0 {
		fmt.Fprintf(w, "%s\n\n", strings.Join(header, ", "))
	}
	var benches []string
	byBench := map[string][]*row{}
	for _, r := range rows {
		if _, ok := byBench[r.bench]; !ok {
			benches = append(benches, r.bench)
		}
		byBench[r.bench] = append(byBench[r.bench], r)
	}
	for i, b := range benches {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if b == "Rewrite" {
			printRewriteTable(w, byBench[b])
		} else {
			printTable(w, byBench[b])
		}
	}
}

func printTable(w io.Writer, rows []*row) {
	fmt.Fprintln(w, "| comparison | lethe | baseline | lethe / baseline | target | met | peak RSS lethe | peak RSS baseline | peak RSS upstream |")
	fmt.Fprintln(w, "| --- | --- | --- | ---: | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		ratio := median(r.metrics["lethe/baseline"])
		what, target, met := r.group, "-", "-"
		t, ok := targets[r.group]
		if r.bench == "StoreSource" {
			t, ok = storeSourceTarget(r.group)
		}
		if ok {
			what = t.what + " (`" + r.group + "`)"
			op, ok := "<", ratio < t.bound
			if t.le {
				op, ok = "≤", ratio <= t.bound
			}
			target = fmt.Sprintf("%s %.2fx", op, t.bound)
			met = map[bool]string{true: "yes", false: "**no**"}[ok]
		} else if strings.HasPrefix(r.group, "lookups") {
			target, met = lookupTarget(r)
		}
		fmt.Fprintf(w, "| %s | %s %s | %s %s | %.3fx | %s | %s | %s | %s | %s |\n", what,
			r.lethe, ms(r.metrics["lethe-ms"]), r.base, ms(r.metrics["baseline-ms"]), ratio, target, met,
			mib(r.metrics["lethe-peak-RSS-MiB"]), mib(r.metrics["baseline-peak-RSS-MiB"]), mib(r.metrics["upstream-peak-RSS-MiB"]))
	}
	printLookupGrowth(w, rows)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Times: median of one dashboard refresh (its panels one after another); ratio: median of the")
	fmt.Fprintln(w, "paired refreshes, the two sides run alternately. Peak RSS: each process' VmHWM over the")
	fmt.Fprintln(w, "comparison; the upstream Prometheus is the one lethe-proxy reads from (and the direct baseline).")
}

// printRewriteTable prints the BenchmarkRewrite comparisons: times and their ratio, peak RSS
// (VmHWM) and peak anonymous RSS of each side and their ratios, and the targets.
func printRewriteTable(w io.Writer, rows []*row) {
	fmt.Fprintln(w, "| comparison | lethe | baseline | time lethe / baseline | target | met | peak RSS (anon) lethe | peak RSS (anon) baseline | RSS (anon) lethe / baseline | target | met | CPU lethe | CPU baseline |")
	fmt.Fprintln(w, "| --- | --- | --- | ---: | --- | --- | --- | --- | ---: | --- | --- | --- | --- |")
	for _, r := range rows {
		key := r.group + "/" + r.lethe + "-vs-" + r.base
		t, ok := rewriteTargets[key]
		what := key
		if ok {
			what = t.what + " (`" + key + "`)"
		}
		ratio, rss, anon := median(r.metrics["lethe/baseline"]), median(r.metrics["RSS-lethe/baseline"]), median(r.metrics["anon-lethe/baseline"])
		timeTarget, timeMet := check(t.time, ratio)
		memTarget, memMet := check(t.memory, rss)
		memRatio := "-"
		if len(r.metrics["RSS-lethe/baseline"]) > 0 {
			memRatio = fmt.Sprintf("%.2fx (%.2fx)", rss, anon)
		}
		fmt.Fprintf(w, "| %s | %s %s | %s %s | %.3fx | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", what,
			r.lethe, ms(r.metrics["lethe-ms"]), r.base, ms(r.metrics["baseline-ms"]), ratio, timeTarget, timeMet,
			mibAnon(r.metrics["lethe-peak-RSS-MiB"], r.metrics["lethe-peak-anon-MiB"]),
			mibAnon(r.metrics["baseline-peak-RSS-MiB"], r.metrics["baseline-peak-anon-MiB"]), memRatio, memTarget, memMet,
			cpuPerGB(r.metrics["lethe-cpu-s/GB"]), cpuPerGB(r.metrics["baseline-cpu-s/GB"]))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Times: median wall time of one run of each side (each on a fresh copy of the bucket); ratios:")
	fmt.Fprintln(w, "median of the paired runs, the two sides run alternately. Peak RSS: each process' VmHWM, which")
	fmt.Fprintln(w, "counts the pages of mmapped block files it touched; anon: its peak RssAnon (heap and stacks).")
	fmt.Fprintln(w, "The memory target is on peak RSS. CPU: user + system seconds per GB of source block (median).")
	fmt.Fprintln(w, "The copy runs in the benchmark's process: no memory figures, its CPU is its thread's.")
}

func cpuPerGB(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f s/GB", median(v))
}

// check returns the target cell and whether ratio meets t; "-" for no target.
func check(t target, ratio float64) (string, string) {
	if t.bound == 0 {
		return "-", "-"
	}
	op, ok := "<", ratio < t.bound
	if t.le {
		op, ok = "≤", ratio <= t.bound
	}
	return fmt.Sprintf("%s %.2fx", op, t.bound), map[bool]string{true: "yes", false: "**no**"}[ok]
}

func mibAnon(rss, anon []float64) string {
	if len(rss) == 0 {
		return "-"
	}
	if len(anon) == 0 {
		return mib(rss)
	}
	return fmt.Sprintf("%s (%s)", mib(rss), mib(anon))
}

func ms(v []float64) string {
	if len(v) == 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f ms", median(v))
}

func mib(v []float64) string {
	if len(v) == 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f MiB", median(v))
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// lookupTarget is issue 17's rule for a look-up: lethe's median time at most 1.5x the baseline's
// or the baseline's plus 50 ms, whichever is larger.
func lookupTarget(r *row) (string, string) {
	lethe, base := median(r.metrics["lethe-ms"]), median(r.metrics["baseline-ms"])
	if math.IsNaN(lethe) || math.IsNaN(base) {
		return "-", "-"
	}
	bound := max(1.5*base, base+50)
	return fmt.Sprintf("≤ max(1.5x, +50 ms) = %.1f ms", bound), map[bool]string{true: "met", false: "**missed**"}[lethe <= bound]
}

// printLookupGrowth prints, for every look-up measured over 12 blocks and over 1, the ratio of
// their lethe/baseline ratios: issue 17 wants it not to grow with the number of blocks.
func printLookupGrowth(w io.Writer, rows []*row) {
	one := map[string]*row{}
	for _, r := range rows {
		if rest, ok := strings.CutPrefix(r.group, "lookups1-"); ok {
			one[rest+"/"+r.lethe] = r
		}
	}
	first := true
	for _, r := range rows {
		rest, ok := strings.CutPrefix(r.group, "lookups12-")
		if !ok || one[rest+"/"+r.lethe] == nil {
			continue
		}
		if first {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "| look-up | side | ratio 1 block | ratio 12 blocks | 12 / 1 | grows |")
			fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | --- |")
			first = false
		}
		r1, r12 := median(one[rest+"/"+r.lethe].metrics["lethe/baseline"]), median(r.metrics["lethe/baseline"])
		fmt.Fprintf(w, "| %s | %s | %.2fx | %.2fx | %.2f | %s |\n", rest, r.lethe, r1, r12, r12/r1,
			map[bool]string{true: "**yes**", false: "no"}[r12/r1 > 1])
	}
}
