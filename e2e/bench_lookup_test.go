package e2e

// The look-up benchmarks of `make bench`: what Grafana's label browser and dashboard variables
// ask, timed through lethe-proxy and against the Prometheus it reads, side by side in one run.
//
//	lookups1-<request>/proxy-vs-direct    lethe-proxy in front of a Prometheus holding one 2h
//	                                      block of 100,000 node-exporter-like series (a sample
//	                                      every 15s), over the block's 2h, vs that Prometheus
//	lookups1-<request>/bucket-vs-direct   lethe-proxy serving the same block from the bucket
//	lookups1-<request>/thanos-api-vs-query     lethe-proxy --upstream.url=<Thanos Query> vs that
//	                                           querier, which reads `thanos store` over the same
//	                                           FILESYSTEM bucket
//	lookups1-<request>/thanos-store-vs-query   lethe-proxy --upstream.store=<the querier's gRPC>
//	lookups1-<request>/thanos-filter-vs-query  a Thanos Query whose --endpoint is lethe-proxy's
//	                                           StoreAPI mode (--store.endpoint=<the store>) vs
//	                                           the querier over the store (lethe's peak RSS is
//	                                           lethe-proxy's own, not its querier's)
//	lookups12-<request>/...               the same over 12 such blocks (a day, a sample every
//	                                      60s, to keep writing them short), over the day
//
// Every proxy holds the two tombstones ({tenant="t-del"} over all time, and
// node_cpu_seconds_total{mode="steal"} over 30 minutes of the window) and 10,000 more on
// instances that have no series. Each iteration asks once on each side, alternating which side
// goes first; each leaf reports the median time of each side (lethe-ms, baseline-ms), the median
// of the paired ratios (lethe/baseline) and the peak RSS of both sides and of the upstream. Every
// answer through a proxy is checked once, before timing, against what the deletions leave of the
// generated series. tools/benchtable turns the output into the table of ratios.
//
// The bucket-mode proxy remembers per block what the tombstones took out of a look-up (blocks
// and tombstones never change): that check before timing fills it, so its times are those of a
// dashboard's later loads. The first load's cost is BenchmarkLookupBlocks' bucket-cold (proxy/).
//
//	go test -run '^$' -bench Lookups -benchtime 10x ./e2e/ | go run ./tools/benchtable
//	go test -run '^$' -bench 'Lookups/lookups1$' -benchtime 10x ./e2e/   (the one block only)

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

const (
	// lookupBenchInstances instances of lookupBenchPerInstance series: 100,000 series.
	lookupBenchInstances   = 200
	lookupBenchPerInstance = 500
	// lookupBenchDeleted is how many instances the deleted tenant has.
	lookupBenchDeleted = 74
	// lookupBenchOther is how many tombstones name instances that have no series.
	lookupBenchOther = 10_000
)

// lookupBenchSeries returns the node-exporter-like series: per instance 64 CPU series (8 CPUs, 8
// modes), load averages, memory, filesystem, network, disk and vmstat/netstat gauges; the deleted
// tenant's instances also carry a metric and a label no other has.
func lookupBenchSeries() []labels.Labels {
	modes := []string{"idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice"}
	var out []labels.Labels
	for i := 0; i < lookupBenchInstances; i++ {
		tenant := "t-" + strconv.Itoa(i%4)
		if i < lookupBenchDeleted {
			tenant = "t-del"
		}
		base := []string{"instance", fmt.Sprintf("host-%03d:9100", i), "job", "node", "tenant", tenant}
		add := func(kv ...string) { out = append(out, labels.FromStrings(append(slices.Clone(base), kv...)...)) }
		for cpu := 0; cpu < 8; cpu++ {
			for _, mode := range modes {
				add("__name__", "node_cpu_seconds_total", "cpu", strconv.Itoa(cpu), "mode", mode)
			}
		}
		for _, n := range []string{"node_load1", "node_load5", "node_load15"} {
			add("__name__", n)
		}
		for k := 0; k < 40; k++ {
			add("__name__", fmt.Sprintf("node_memory_field%02d_bytes", k))
		}
		for k := 0; k < 6; k++ {
			for _, mp := range []string{"/", "/boot", "/home", "/var", "/tmp"} {
				add("__name__", fmt.Sprintf("node_filesystem_stat%d_bytes", k), "device", "/dev/sda1", "fstype", "ext4", "mountpoint", mp)
			}
		}
		for k := 0; k < 12; k++ {
			for _, dev := range []string{"eth0", "eth1", "lo", "docker0"} {
				add("__name__", fmt.Sprintf("node_network_stat%02d_total", k), "device", dev)
			}
		}
		for k := 0; k < 10; k++ {
			for _, dev := range []string{"sda", "sdb", "nvme0n1"} {
				add("__name__", fmt.Sprintf("node_disk_stat%d_total", k), "device", dev)
			}
		}
		for k := 0; k < 150; k++ {
			add("__name__", fmt.Sprintf("node_vmstat_field%03d", k))
		}
		for k := 0; k < 134; k++ {
			add("__name__", fmt.Sprintf("node_netstat_field%03d", k))
		}
		// A metric and a label only the deleted tenant has.
		if tenant == "t-del" {
			add("__name__", "tenant_billing_events_total", "customer", fmt.Sprintf("c-%d", i))
		} else {
			add("__name__", "node_netstat_field134")
		}
	}
	return out
}

// writeLookupBenchBlock writes one block of the series with a sample every step, committing
// every timestamp (the whole block in one commit would hold every sample in memory).
func writeLookupBenchBlock(ctx context.Context, dir string, series []labels.Labels, mint, maxt, step int64) (*block.Meta, string, error) {
	w, err := tsdb.NewBlockWriter(slog.New(slog.DiscardHandler), dir, maxt-mint)
	if err != nil {
		return nil, "", err
	}
	defer w.Close()
	refs := make([]storage.SeriesRef, len(series))
	for ts := mint; ts < maxt; ts += step {
		app := w.Appender(ctx)
		for i, ls := range series {
			ref, err := app.Append(refs[i], ls, ts, float64(i%97)+float64(ts-mint)/1000)
			if err != nil {
				return nil, "", err
			}
			refs[i] = ref
		}
		if err := app.Commit(); err != nil {
			return nil, "", err
		}
	}
	id, err := w.Flush(ctx)
	if err != nil {
		return nil, "", err
	}
	bdir := filepath.Join(dir, id.String())
	raw, err := os.ReadFile(filepath.Join(bdir, block.MetaFilename))
	if err != nil {
		return nil, "", err
	}
	meta, err := block.DecodeMeta(raw)
	return meta, bdir, err
}

// lookupBenchRequest is one look-up: its path and parameters, and the answer the deletions leave.
type lookupBenchRequest struct {
	name   string
	path   string
	params url.Values
	want   string // normalized
}

// lookupBenchRequests are the four look-ups over [mint, maxt] and what they must answer: the
// deleted tenant's series are gone, the steal series keep their samples outside the 30 minutes.
func lookupBenchRequests(series []labels.Labels, mint, maxt int64) []lookupBenchRequest {
	names, metrics, instances := map[string]struct{}{}, map[string]struct{}{}, map[string]struct{}{}
	var load1 []map[string]string
	for _, ls := range series {
		if ls.Get("tenant") == "t-del" {
			continue
		}
		ls.Range(func(l labels.Label) { names[l.Name] = struct{}{} })
		metrics[ls.Get("__name__")] = struct{}{}
		instances[ls.Get("instance")] = struct{}{}
		if ls.Get("__name__") == "node_load1" {
			load1 = append(load1, ls.Map())
		}
	}
	render := func(data any) string {
		b, _ := json.Marshal(map[string]any{"status": "success", "data": data})
		s, _ := lookupNormalize(b)
		return s
	}
	window := func() url.Values {
		return url.Values{"start": {formatPromTime(mint)}, "end": {formatPromTime(maxt)}}
	}
	series1 := window()
	series1.Set("match[]", "node_load1")
	return []lookupBenchRequest{
		{"labels", "/api/v1/labels", window(), render(sortedSet(names))},
		{"metric-names", "/api/v1/label/__name__/values", window(), render(sortedSet(metrics))},
		{"instances", "/api/v1/label/instance/values", window(), render(sortedSet(instances))},
		{"series-node_load1", "/api/v1/series", series1, render(load1)},
	}
}

func sortedSet(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// lookupNormalize sorts a look-up answer's data (strings, or label sets by their JSON).
func lookupNormalize(body []byte) (string, error) {
	var doc struct {
		Status string `json:"status"`
		Data   []any  `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.Status != "success" {
		return "", fmt.Errorf("not a successful look-up: %v: %s", err, dashClip(string(body)))
	}
	keys := make([]string, len(doc.Data))
	for i, v := range doc.Data {
		b, _ := json.Marshal(v)
		keys[i] = string(b)
	}
	slices.Sort(keys)
	out, err := json.Marshal(keys)
	return string(out), err
}

// lookupBenchSet is one data set: the upstream Prometheus and the two proxies over it, and the
// Thanos stack over the same bucket with lethe in its three places.
type lookupBenchSet struct {
	name     string
	upstream *benchProc
	requests []lookupBenchRequest
	blocks   int64
	sides    []lookupSide
}

// lookupSide is one comparison: a look-up asked of proc (through lethe) beside base, which is
// asked the same without lethe. rss is lethe-proxy's process (proc where nil) and upstream what
// both read from, whose peak RSS is reported with theirs.
type lookupSide struct {
	name                      string // the leaf: <lethe>-vs-<baseline>
	proc, base, rss, upstream *benchProc
}

func BenchmarkLookups(b *testing.B) {
	promBin, err := findPrometheus()
	if err != nil {
		b.Fatalf("no prometheus binary (set LETHE_PROMETHEUS or make `tools/build.sh prometheus` work): %v", err)
	}
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DisableCompression: true}}
	b.Cleanup(client.CloseIdleConnections)
	series := lookupBenchSeries()
	for _, c := range []struct {
		name   string
		blocks int64
		step   int64
	}{{"lookups1", 1, 15_000}, {"lookups12", 12, 60_000}} {
		// One level per data set, so that -bench 'Lookups/lookups1$' sets up only that one.
		b.Run(c.name, func(b *testing.B) {
			set := newLookupBenchSet(b, promBin, client, c.name, series, c.blocks, c.step)
			for _, r := range set.requests {
				for _, side := range set.sides {
					b.Run(set.name+"-"+r.name+"/"+side.name, func(b *testing.B) {
						lookupCompare(b, client, side, r)
					})
				}
			}
		})
	}
}

// newLookupBenchSet writes the blocks, starts the upstream Prometheus on them and two proxies
// (in front of it, and over a bucket holding the blocks) with the tombstones, and the Thanos
// stack (startLookupThanos), and checks every answer through lethe once.
func newLookupBenchSet(b *testing.B, promBin string, client *http.Client, name string, series []labels.Labels, blocks, step int64) *lookupBenchSet {
	b.Helper()
	began := time.Now()
	ctx := context.Background()
	tmp := b.TempDir()
	bucketDir := filepath.Join(tmp, "bucket")
	bkt, err := filesystem.NewBucket(bucketDir)
	if err != nil {
		b.Fatal(err)
	}
	var dirs []string
	var metas []*block.Meta
	for i := int64(0); i < blocks; i++ {
		meta, dir, err := writeLookupBenchBlock(ctx, filepath.Join(tmp, "blocks"), series, blockStart+i*7_200_000, blockStart+(i+1)*7_200_000, step)
		if err != nil {
			b.Fatal(err)
		}
		if err := block.Upload(ctx, bkt, dir, meta); err != nil {
			b.Fatal(err)
		}
		dirs, metas = append(dirs, dir), append(metas, meta)
	}
	written := time.Since(began)
	end := blockStart + blocks*7_200_000 - 1

	// The tombstones: the two, and 10,000 on instances that have no series.
	store := tombstones.NewStore(bkt, nil)
	add := func(sel string, start, end int64) {
		if _, err := store.Add(ctx, tombstones.Spec{Selectors: []string{sel}, Start: &start, End: &end, Reason: "benchmark", Author: "bench"}); err != nil {
			b.Fatal(err)
		}
	}
	add(`{tenant="t-del"}`, math.MinInt64, end+365*24*3_600_000)
	add(`node_cpu_seconds_total{mode="steal"}`, end-time.Hour.Milliseconds(), end-30*time.Minute.Milliseconds())
	otherStart, otherEnd := int64(math.MinInt64), end
	for i := 0; i < lookupBenchOther; i++ {
		t, err := store.Build(tombstones.Spec{Selectors: []string{fmt.Sprintf(`{instance="gone-%05d:9100"}`, i)}, Start: &otherStart, End: &otherEnd, Reason: "benchmark", Author: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		if err := store.Put(ctx, t); err != nil {
			b.Fatal(err)
		}
	}

	set := &lookupBenchSet{name: name, blocks: blocks, requests: lookupBenchRequests(series, blockStart, end)}
	set.upstream = startBenchPrometheus(b, name+"-prometheus", promBin, filepath.Join(tmp, "prometheus"), dirs, metas)
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
	}
	proxy := startBenchProxy(b, name+"-lethe-proxy", filepath.Join(tmp, "proxy"), bucketDir, set.upstream.URL, 2+lookupBenchOther)
	bucket := startLookupBucketProxy(b, name+"-lethe-proxy-bucket", filepath.Join(tmp, "proxy-bucket"), bucketDir, int(blocks), 2+lookupBenchOther)
	set.sides = append([]lookupSide{
		{name: "proxy-vs-direct", proc: proxy, base: set.upstream, upstream: set.upstream},
		{name: "bucket-vs-direct", proc: bucket, base: set.upstream, upstream: set.upstream},
	}, startLookupThanos(b, name, filepath.Join(tmp, "thanos"), bucketDir, end, 2+lookupBenchOther)...)

	for _, r := range set.requests {
		var bases []*benchProc
		for _, side := range set.sides {
			body, err := lookupGet(client, side.proc, r)
			if err != nil {
				b.Fatal(err)
			}
			got, err := lookupNormalize(body)
			if err != nil {
				b.Fatal(err)
			}
			if got != r.want {
				b.Fatalf("%s %s: answer differs from what the deletions leave:\n%s\n%s", side.proc.name, r.name, dashClip(got), dashClip(r.want))
			}
			if !slices.Contains(bases, side.base) {
				bases = append(bases, side.base)
			}
		}
		for _, base := range bases {
			body, err := lookupGet(client, base, r)
			if err != nil {
				b.Fatal(err)
			}
			if got, _ := lookupNormalize(body); got == r.want {
				b.Fatalf("%s %s: the deletions change nothing in the baseline's answer", base.name, r.name)
			}
		}
	}
	b.Logf("%s: %d blocks of %d series (a sample every %ds) written in %v, set up and checked in %v",
		name, blocks, len(series), step/1000, written.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	return set
}

// startLookupThanos starts the Thanos stack over the bucket: `thanos store`, a `thanos query` over
// it (the baseline), lethe-proxy in front of the querier by its query API (--upstream.url) and by
// its StoreAPI (--upstream.store), and lethe-proxy's StoreAPI mode in front of the store with a
// second querier over it. It waits until every one answers with data at end and the proxies hold
// the tombstones, and returns the three comparisons.
func startLookupThanos(b *testing.B, name, dir, bucketDir string, end int64, wantTombstones int) []lookupSide {
	b.Helper()
	thanos := toolPath(b, "thanos", "LETHE_THANOS")
	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + strconv.Quote(bucketDir) + "}"
	storeGRPC := ssrcBenchPort(b)
	store := startBenchProc(b, name+"-thanos-store", filepath.Join(dir, "store"), thanos, func(addr string) []string {
		return []string{"store", conf, "--data-dir=" + filepath.Join(dir, "store", "data"), "--http-address=" + addr, "--grpc-address=" + storeGRPC,
			"--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=warn"}
	})
	querier := func(qname, endpoint string) (*benchProc, string) {
		grpcAddr := ssrcBenchPort(b)
		q := startBenchProc(b, qname, filepath.Join(dir, qname), thanos, func(addr string) []string {
			return []string{"query", "--http-address=" + addr, "--grpc-address=" + grpcAddr, "--endpoint=" + endpoint,
				"--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=warn"}
		})
		return q, grpcAddr
	}
	query, queryGRPC := querier(name+"-thanos-query", storeGRPC)
	viaAPI := startBenchProxy(b, name+"-lethe-proxy-thanos-api", filepath.Join(dir, "api"), bucketDir, query.URL, wantTombstones)
	viaStore := startBucketProxy(b, name+"-lethe-proxy-thanos-store", filepath.Join(dir, "store-source"), bucketDir, "--upstream.store="+queryGRPC)
	letheGRPC := ssrcBenchPort(b)
	filter := startBucketProxy(b, name+"-lethe-proxy-storeapi", filepath.Join(dir, "filter"), bucketDir, "--store.endpoint="+storeGRPC, "--grpc-address="+letheGRPC)
	for _, p := range []*benchProc{viaStore, filter} {
		p.waitGauges(b, dashProxyReadyTimeout, gauge{"lethe_proxy_tombstones_loaded", wantTombstones})
	}
	viaFilter, _ := querier(name+"-thanos-query-lethe", letheGRPC)

	// The store loads the blocks' index headers after it is ready, and a querier learns its
	// endpoint's time range a while after it starts: wait until every one answers at end.
	params := url.Values{"query": {`count(node_load1)`}, "time": {formatPromTime(end)}}
	for _, p := range []*benchProc{query, viaAPI, viaStore, viaFilter} {
		deadline := time.Now().Add(2 * thxQueryTimeout)
		for !strings.Contains(ssrcBenchGet(b, p, "/api/v1/query", params), `"value"`) {
			if time.Now().After(deadline) {
				b.Fatalf("%s serves no data after %v; log:\n%s", p.name, 2*thxQueryTimeout, p.logTail())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return []lookupSide{
		{name: "thanos-api-vs-query", proc: viaAPI, base: query, upstream: store},
		{name: "thanos-store-vs-query", proc: viaStore, base: query, upstream: store},
		{name: "thanos-filter-vs-query", proc: viaFilter, base: query, rss: filter, upstream: store},
	}
}

// startLookupBucketProxy runs lethe-proxy in bucket mode and waits until it serves the blocks and
// holds the tombstones.
func startLookupBucketProxy(tb testing.TB, name, dir, bucketDir string, wantBlocks, wantTombstones int) *benchProc {
	tb.Helper()
	p := startBucketProxy(tb, name, dir, bucketDir)
	p.waitGauges(tb, 2*dashProxyReadyTimeout, gauge{"lethe_proxy_blocks_loaded", wantBlocks}, gauge{"lethe_proxy_tombstones_loaded", wantTombstones})
	return p
}

func lookupGet(client *http.Client, p *benchProc, r lookupBenchRequest) ([]byte, error) {
	resp, err := client.Get(p.URL + r.path + "?" + r.params.Encode())
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", p.name, r.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %d %s", p.name, r.name, resp.StatusCode, dashClip(string(body)))
	}
	return body, nil
}

// lookupCompare times the look-up on both sides, alternately, and reports as
// dashFixture.compare does.
func lookupCompare(b *testing.B, client *http.Client, side lookupSide, r lookupBenchRequest) {
	lethe, base, rss := side.proc, side.base, side.rss
	if rss == nil {
		rss = lethe
	}
	for _, p := range []*benchProc{lethe, base, rss, side.upstream} {
		if err := p.resetPeakRSS(); err != nil {
			b.Logf("peak RSS of %s is its peak so far: %v", p.name, err)
		}
	}
	sides := []*benchProc{lethe, base}
	var times [2][]time.Duration
	for i := 0; b.Loop(); i++ {
		for k := range sides {
			s := k
			if i%2 == 1 {
				s = 1 - k
			}
			t0 := time.Now()
			if _, err := lookupGet(client, sides[s], r); err != nil {
				b.Fatal(err)
			}
			times[s] = append(times[s], time.Since(t0))
		}
	}
	b.StopTimer()
	ratios := make([]float64, len(times[0]))
	for i := range ratios {
		ratios[i] = float64(times[0][i]) / float64(times[1][i])
	}
	b.ReportMetric(dashMedianDuration(times[0]).Seconds()*1000, "lethe-ms")
	b.ReportMetric(dashMedianDuration(times[1]).Seconds()*1000, "baseline-ms")
	b.ReportMetric(dashMedian(ratios), "lethe/baseline")
	for _, m := range []struct {
		unit string
		proc *benchProc
	}{{"lethe-peak-RSS-MiB", rss}, {"baseline-peak-RSS-MiB", base}, {"upstream-peak-RSS-MiB", side.upstream}} {
		if mib, err := m.proc.peakRSSMiB(); err == nil {
			b.ReportMetric(mib, m.unit)
		}
	}
}
