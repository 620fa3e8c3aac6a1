// Command benchtable reads `go test -bench` output on stdin and prints the markdown table of
// `make bench`: for every benchmark that reports lethe-ms, baseline-ms and lethe/baseline (the
// e2e BenchmarkDashboard comparisons), lethe's time beside the baseline's, the ratio and its
// target, and the peak RSS of both sides and of the upstream. With -count > 1 each figure is the
// median of the runs. It exits 1 if the input holds a failure or no comparison at all.
//
//	go test -run '^$' -bench Dashboard -benchtime 20x ./e2e/ | go run ./tools/benchtable
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

// targets are the bounds on lethe/baseline, by comparison group.
var targets = map[string]struct {
	what  string
	bound float64
	le    bool // the bound is inclusive
}{
	"untouched":            {"untouched queries: lethe-proxy vs the upstream Prometheus asked directly", 1.05, true},
	"masked":               {"masked queries: lethe-proxy vs Prometheus after its own delete_series + clean_tombstones", 1.5, true},
	"tombstones10k":        {"untouched queries: lethe-proxy with 10,000 tombstones they do not touch vs with none", 1.10, false},
	"tombstones10k-masked": {"masked queries: lethe-proxy with 10,000 more tombstones they do not touch vs without", 1.10, false},
}

// row is one comparison: its metrics, one value per run.
type row struct {
	group, lethe, base string
	metrics            map[string][]float64
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

func main() {
	rows, header, failed, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(rows) > 0 {
		printTable(os.Stdout, rows, header)
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
			if _, ok := metrics["lethe/baseline"]; !ok {
				continue
			}
			rw := byName[name]
			if rw == nil {
				parts := strings.Split(name, "/")
				rw = &row{group: name, lethe: "lethe", base: "baseline", metrics: map[string][]float64{}}
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

func printTable(w io.Writer, rows []*row, header []string) {
	if len(header) > 0 {
		fmt.Fprintf(w, "%s\n\n", strings.Join(header, ", "))
	}
	fmt.Fprintln(w, "| comparison | lethe | baseline | lethe / baseline | target | met | peak RSS lethe | peak RSS baseline | peak RSS upstream |")
	fmt.Fprintln(w, "| --- | --- | --- | ---: | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		ratio := median(r.metrics["lethe/baseline"])
		what, target, met := r.group, "-", "-"
		if t, ok := targets[r.group]; ok {
			what = t.what + " (`" + r.group + "`)"
			op, ok := "<", ratio < t.bound
			if t.le {
				op, ok = "≤", ratio <= t.bound
			}
			target = fmt.Sprintf("%s %.2fx", op, t.bound)
			met = map[bool]string{true: "yes", false: "**no**"}[ok]
		}
		fmt.Fprintf(w, "| %s | %s %s | %s %s | %.3fx | %s | %s | %s | %s | %s |\n", what,
			r.lethe, ms(r.metrics["lethe-ms"]), r.base, ms(r.metrics["baseline-ms"]), ratio, target, met,
			mib(r.metrics["lethe-peak-RSS-MiB"]), mib(r.metrics["baseline-peak-RSS-MiB"]), mib(r.metrics["upstream-peak-RSS-MiB"]))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Times: median of one dashboard refresh (its panels one after another); ratio: median of the")
	fmt.Fprintln(w, "paired refreshes, the two sides run alternately. Peak RSS: each process' VmHWM over the")
	fmt.Fprintln(w, "comparison; the upstream Prometheus is the one lethe-proxy reads from (and the direct baseline).")
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
