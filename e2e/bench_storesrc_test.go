package e2e

// BenchmarkStoreSource: a node-exporter-like counter block of two replicas behind `thanos store`
// and `thanos query`; each dashboard query is asked of the querier directly, of lethe-proxy
// reading through the querier's StoreAPI (--upstream.store, replicas deduplicated by lethe) and of
// lethe-proxy reading through its query API (--upstream.url), and of lethe-proxy with both (the
// StoreAPI read from, the query API as the fast path for what no tombstone can touch), untouched
// and under a tombstone.
// Each leaf reports the median time of each side, the median paired ratio to the querier, and
// the peak RSS (VmHWM) of every process over the leaf. Every answer through --upstream.store is
// first checked against the querier's (untouched) so that the timing is of correct work. The last
// side, stores, is lethe-proxy reading the store gateway itself (--upstream.store=<store>, the
// querier as fast path): the series travel one gRPC hop, as to the querier asked directly. All of it
// on a block 1x (3,200 series a replica) and 4x the size, each its own stack.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
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
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/thanos-io/objstore/providers/filesystem"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/internal/storepb/labelpb"
)

const (
	ssrcBenchInstances = 100
	ssrcBenchCPUs      = 8
	ssrcBenchT0        = sapiT0
)

var ssrcBenchModes = []string{"idle", "user", "system", "iowait"}

// ssrcBenchWrite writes the 2h block of one replica into bkt: instances node-exporter-like
// instances of 8 CPUs and 4 modes.
func ssrcBenchWrite(b *testing.B, bkt *filesystem.Bucket, replica string, instances int) {
	dir := b.TempDir()
	w, err := tsdb.NewBlockWriter(slog.New(slog.DiscardHandler), dir, 2*thxHour)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	app := w.Appender(ctx)
	var series []labels.Labels
	for i := 0; i < instances; i++ {
		for c := 0; c < ssrcBenchCPUs; c++ {
			for _, m := range ssrcBenchModes {
				series = append(series, labels.FromStrings("__name__", "node_cpu_seconds_total", "job", []string{"node", "db"}[i%2],
					"instance", fmt.Sprintf("i-%d", i), "cpu", strconv.Itoa(c), "mode", m))
			}
		}
	}
	for ts := ssrcBenchT0; ts < ssrcBenchT0+2*thxHour; ts += sapiStep {
		for k, ls := range series {
			if _, err := app.Append(0, ls, ts, float64(k%13+1)*float64(ts-ssrcBenchT0)/1000); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := app.Commit(); err != nil {
		b.Fatal(err)
	}
	id, err := w.Flush(ctx)
	if err != nil {
		b.Fatal(err)
	}
	bdir := filepath.Join(dir, id.String())
	raw, err := os.ReadFile(filepath.Join(bdir, block.MetaFilename))
	if err != nil {
		b.Fatal(err)
	}
	meta, err := block.DecodeMeta(raw)
	if err != nil {
		b.Fatal(err)
	}
	meta.Thanos = &block.Thanos{Version: 1, Labels: map[string]string{"cluster": "c1", "replica": replica}, Source: "sidecar"}
	if err := block.Upload(ctx, bkt, bdir, meta); err != nil {
		b.Fatal(err)
	}
}

func ssrcBenchPort(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func ssrcBenchGet(b *testing.B, p *benchProc, path string, params url.Values) string {
	resp, err := p.client.Get(p.URL + path + "?" + params.Encode())
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b.Fatalf("%s %s: %d %.500s", p.name, params.Get("query"), resp.StatusCode, body)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		b.Fatalf("%s: %v: %.200s", p.name, err, body)
	}
	if data, ok := doc["data"].(map[string]any); ok {
		delete(data, "analysis") // Thanos' empty query analysis.
	}
	norm, err := json.Marshal(doc)
	if err != nil {
		b.Fatal(err)
	}
	return string(norm)
}

func BenchmarkStoreSource(b *testing.B) {
	for _, size := range []struct {
		name      string
		instances int
	}{{"1x", ssrcBenchInstances}, {"4x", 4 * ssrcBenchInstances}} {
		b.Run(size.name, func(b *testing.B) { benchStoreSource(b, size.instances) })
	}
}

// ssrcBenchBucket writes the two replicas' blocks of instances instances into a new FILESYSTEM
// bucket, registers the benches' tombstone (instance i-3 from 00:30 to 00:50) and returns the
// bucket's --objstore.config flag.
func ssrcBenchBucket(b *testing.B, instances int) string {
	bucketDir := filepath.Join(b.TempDir(), "bucket")
	if err := os.MkdirAll(bucketDir, 0o755); err != nil {
		b.Fatal(err)
	}
	bkt, err := filesystem.NewBucket(bucketDir)
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range []string{"r0", "r1"} {
		ssrcBenchWrite(b, bkt, r, instances)
	}
	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + bucketDir + "}"
	rfc := func(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }
	out, err := exec.Command(binaries.lethe, conf, "tombstone", "add", "--match", `node_cpu_seconds_total{instance="i-3"}`,
		"--start", rfc(ssrcBenchT0+30*sapiMin), "--end", rfc(ssrcBenchT0+50*sapiMin),
		"--undelete-window", "0s", "--max-wait", "0s", "--reason", "bench", "--author", "bench").CombinedOutput()
	if err != nil {
		b.Fatalf("lethe tombstone add: %v: %s", err, out)
	}
	return conf
}

// benchStoreSource is BenchmarkStoreSource on a block of instances instances a replica, its own
// stack.
func benchStoreSource(b *testing.B, instances int) {
	thanos := toolPath(b, "thanos", "LETHE_THANOS")
	conf := ssrcBenchBucket(b, instances)

	storeGRPC := ssrcBenchPort(b)
	startBenchProc(b, "thanos-store", b.TempDir(), thanos, func(addr string) []string {
		return []string{"store", conf, "--data-dir=" + b.TempDir(), "--http-address=" + addr, "--grpc-address=" + storeGRPC,
			"--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=warn"}
	})
	queryGRPC := ssrcBenchPort(b)
	querier := startBenchProc(b, "thanos-query", b.TempDir(), thanos, func(addr string) []string {
		return []string{"query", "--http-address=" + addr, "--grpc-address=" + queryGRPC, "--endpoint=" + storeGRPC,
			"--query.replica-label=replica", "--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=warn"}
	})
	proxyArgs := func(dir string, extra ...string) func(string) []string {
		return func(addr string) []string {
			return append([]string{conf, "--web.listen-address=" + addr, "--data-dir=" + filepath.Join(dir, "data"), "--log.level=warn"}, extra...)
		}
	}
	dir := b.TempDir()
	viaStore := startBenchProc(b, "lethe-proxy-store", dir, binaries.proxy, proxyArgs(dir, "--upstream.store="+queryGRPC, "--upstream.replica-label=replica"))
	dir = b.TempDir()
	viaAPI := startBenchProc(b, "lethe-proxy-api", dir, binaries.proxy, proxyArgs(dir, "--upstream.url="+querier.URL))
	dir = b.TempDir()
	viaBoth := startBenchProc(b, "lethe-proxy-both", dir, binaries.proxy, proxyArgs(dir, "--upstream.store="+queryGRPC, "--upstream.replica-label=replica", "--upstream.url="+querier.URL))
	dir = b.TempDir()
	viaStores := startBenchProc(b, "lethe-proxy-stores", dir, binaries.proxy, proxyArgs(dir, "--upstream.store="+storeGRPC, "--upstream.replica-label=replica", "--upstream.url="+querier.URL))

	end := formatPromTime(ssrcBenchT0 + 2*thxHour - sapiMin)
	start := formatPromTime(ssrcBenchT0 + sapiMin)
	queries := []struct{ name, expr string }{
		{"untouched-rate", `sum by (job) (rate(node_cpu_seconds_total{instance!="i-3"}[5m]))`},
		{"untouched-raw", `node_cpu_seconds_total{instance="i-7",mode="user"}`},
		{"masked-rate", `sum by (job) (rate(node_cpu_seconds_total[5m]))`},
		{"masked-instance", `sum by (mode) (rate(node_cpu_seconds_total{instance="i-3"}[5m]))`},
	}
	// Wait for the store to serve the blocks, then check the answers.
	deadline := time.Now().Add(thxQueryTimeout)
	for {
		r := ssrcBenchGet(b, querier, "/api/v1/query", url.Values{"query": {`count(node_cpu_seconds_total)`}, "time": {end}})
		if strings.Contains(r, `"value"`) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("thanos query serves no data: %s", r)
		}
		time.Sleep(200 * time.Millisecond)
	}
	params := func(expr string) url.Values {
		return url.Values{"query": {expr}, "start": {start}, "end": {end}, "step": {"15"}}
	}
	for _, q := range queries[:2] {
		want := ssrcBenchGet(b, querier, "/api/v1/query_range", params(q.expr))
		for _, p := range []*benchProc{viaStore, viaStores} {
			if got := ssrcBenchGet(b, p, "/api/v1/query_range", params(q.expr)); got != want {
				b.Fatalf("%s through %s differs from the querier:\n%.500s\n%.500s", q.name, p.name, got, want)
			}
		}
	}
	procs := []*benchProc{querier, viaStore, viaAPI, viaBoth, viaStores}
	for _, q := range queries {
		b.Run(q.name, func(b *testing.B) {
			for _, p := range procs {
				_ = p.resetPeakRSS()
			}
			var tq, ts, ta, tb, tg, rs, ra, rb, rg []float64
			timed := func(p *benchProc) float64 {
				began := time.Now()
				ssrcBenchGet(b, p, "/api/v1/query_range", params(q.expr))
				return float64(time.Since(began).Microseconds()) / 1000
			}
			for i := 0; i < b.N; i++ {
				d, s, a, both, g := timed(querier), timed(viaStore), timed(viaAPI), timed(viaBoth), timed(viaStores)
				tq, ts, ta, tb, tg = append(tq, d), append(ts, s), append(ta, a), append(tb, both), append(tg, g)
				rs, ra, rb, rg = append(rs, s/d), append(ra, a/d), append(rb, both/d), append(rg, g/d)
			}
			med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
			b.ReportMetric(med(tq), "querier-ms")
			b.ReportMetric(med(ts), "store-ms")
			b.ReportMetric(med(ta), "api-ms")
			b.ReportMetric(med(rs), "store/querier")
			b.ReportMetric(med(ra), "api/querier")
			b.ReportMetric(med(tb), "both-ms")
			b.ReportMetric(med(rb), "both/querier")
			b.ReportMetric(med(tg), "stores-ms")
			b.ReportMetric(med(rg), "stores/querier")
			for _, p := range procs {
				if mib, err := p.peakRSSMiB(); err == nil {
					b.ReportMetric(mib, p.name+"-MiB")
				}
			}
		})
	}
}

// ssrcFilterInstances sizes BenchmarkStoreAPIFilter's 1x block: 12,800 series a replica; the 4x
// block has 4 times the instances.
const ssrcFilterInstances = 400

// BenchmarkStoreAPIFilter: lethe-proxy's StoreAPI mode (--store.endpoint, --grpc-address) in front
// of `thanos store`, beside the store asked directly, in one run: a Thanos Query pointed at each
// answering the dashboard's heaviest query (query-*), and a StoreAPI client pulling every series'
// chunks through one Series call (series-*; the throughput the issue bounds). Untouched: a range
// no tombstone meets; masked: the whole block under a tombstone of one instance's 20 minutes.
// Each leaf reports the median time of each side, the median paired ratio lethe/store (time; the
// throughput ratio is its inverse), and the peak RSS (VmHWM) of lethe-proxy, of the querier
// pointed at the store, of the one pointed at lethe, and of the store; and the median CPU time
// (user and system) lethe-proxy spent on a request beside the store's on it directly, which the
// other processes on the machine do not blur as they do the times. All of it on a block 1x and
// 4x the size (the groups filter-* and filter4x-*), each its own stack.
func BenchmarkStoreAPIFilter(b *testing.B) {
	for _, size := range []struct {
		name, group string
		instances   int
	}{{"1x", "filter", ssrcFilterInstances}, {"4x", "filter4x", 4 * ssrcFilterInstances}} {
		b.Run(size.name, func(b *testing.B) { benchStoreAPIFilter(b, size.instances, size.group) })
	}
}

func benchStoreAPIFilter(b *testing.B, instances int, group string) {
	thanos := toolPath(b, "thanos", "LETHE_THANOS")
	conf := ssrcBenchBucket(b, instances)

	storeGRPC := ssrcBenchPort(b)
	store := startBenchProc(b, "thanos-store", b.TempDir(), thanos, func(addr string) []string {
		return []string{"store", conf, "--data-dir=" + b.TempDir(), "--http-address=" + addr, "--grpc-address=" + storeGRPC,
			"--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=warn"}
	})
	letheGRPC := ssrcBenchPort(b)
	dir := b.TempDir()
	lethe := startBenchProc(b, "lethe-proxy-filter", dir, binaries.proxy, func(addr string) []string {
		return []string{conf, "--store.endpoint=" + storeGRPC, "--grpc-address=" + letheGRPC, "--web.listen-address=" + addr,
			"--data-dir=" + filepath.Join(dir, "data"), "--log.level=warn"}
	})
	querier := func(name, endpoint string) *benchProc {
		return startBenchProc(b, name, b.TempDir(), thanos, func(addr string) []string {
			return []string{"query", "--http-address=" + addr, "--grpc-address=" + ssrcBenchPort(b), "--endpoint=" + endpoint,
				"--query.replica-label=replica", "--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=warn"}
		})
	}
	direct, viaLethe := querier("thanos-query-store", storeGRPC), querier("thanos-query-lethe", letheGRPC)

	end := formatPromTime(ssrcBenchT0 + 2*thxHour - sapiMin)
	for _, q := range []*benchProc{direct, viaLethe} {
		deadline := time.Now().Add(thxQueryTimeout)
		for {
			r := ssrcBenchGet(b, q, "/api/v1/query", url.Values{"query": {`count(node_cpu_seconds_total)`}, "time": {end}})
			if strings.Contains(r, `"value"`) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s serves no data: %s", q.name, r)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	conn := func(addr string) storepb.StoreClient {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		return storepb.NewStoreClient(c)
	}
	storeClient, letheClient := conn(storeGRPC), conn(letheGRPC)

	// Untouched: the last hour, which the tombstone (minutes 30 to 50) and the rate's 5m window
	// do not meet.
	untouchedFrom, maskedFrom := ssrcBenchT0+60*sapiMin, ssrcBenchT0+sapiMin
	expr := `sum by (job) (rate(node_cpu_seconds_total[5m]))`
	params := func(from int64) url.Values {
		return url.Values{"query": {expr}, "start": {formatPromTime(from)}, "end": {end}, "step": {"15"}}
	}
	// The Series calls are asked as Thanos Query asks them: in batches of 64 series (its
	// store.DefaultResponseBatchSize).
	seriesReq := func(from int64) *storepb.SeriesRequest {
		return &storepb.SeriesRequest{MinTime: from - 5*sapiMin, MaxTime: ssrcBenchT0 + 2*thxHour, ResponseBatchSize: 64,
			Matchers:                []*storepb.LabelMatcher{{Type: storepb.LabelMatcher_EQ, Name: "__name__", Value: "node_cpu_seconds_total"}},
			PartialResponseStrategy: storepb.PartialResponseStrategy_ABORT}
	}
	// pull reads one Series call to its end and returns the series and chunk bytes it carried.
	pull := func(c storepb.StoreClient, req *storepb.SeriesRequest) (series, bytes int) {
		ssrcEachSeries(b, c, req, func(s *storepb.Series) {
			series++
			for _, c := range s.Chunks {
				bytes += len(c.GetRaw().GetData())
			}
		})
		return series, bytes
	}
	if want, got := ssrcBenchGet(b, direct, "/api/v1/query_range", params(untouchedFrom)), ssrcBenchGet(b, viaLethe, "/api/v1/query_range", params(untouchedFrom)); got != want {
		b.Fatalf("the untouched query through lethe differs from the store's:\n%.500s\n%.500s", got, want)
	}
	if ws, wb := pull(storeClient, seriesReq(untouchedFrom)); true {
		if gs, gb := pull(letheClient, seriesReq(untouchedFrom)); gs != ws || gb != wb {
			b.Fatalf("untouched Series through lethe: %d series, %d chunk bytes; the store's: %d, %d", gs, gb, ws, wb)
		}
	}
	// samples counts the samples of one Series call, and those of them the tombstone covers.
	delFrom, delTo := ssrcBenchT0+30*sapiMin, ssrcBenchT0+50*sapiMin
	samples := func(c storepb.StoreClient, req *storepb.SeriesRequest) (n, deleted int) {
		ssrcEachSeries(b, c, req, func(s *storepb.Series) {
			target := slices.ContainsFunc(s.Labels, func(l *labelpb.Label) bool { return l.Name == "instance" && l.Value == "i-3" })
			for _, c := range s.Chunks {
				chk, err := chunkenc.FromData(chunkenc.EncXOR, c.GetRaw().GetData())
				if err != nil {
					b.Fatal(err)
				}
				it := chk.Iterator(nil)
				for it.Next() != chunkenc.ValNone {
					n++
					if t := it.AtT(); target && t >= delFrom && t <= delTo {
						deleted++
					}
				}
				if it.Err() != nil {
					b.Fatal(it.Err())
				}
			}
		})
		return n, deleted
	}
	all, deleted := samples(storeClient, seriesReq(maskedFrom))
	if got, left := samples(letheClient, seriesReq(maskedFrom)); got != all-deleted || left != 0 || deleted == 0 {
		b.Fatalf("masked Series through lethe: %d samples, %d of them deleted; the store's: %d, %d deleted", got, left, all, deleted)
	}

	leaves := []struct {
		group string
		run   func(lethe bool)
	}{
		{group + "-query-untouched", func(l bool) {
			ssrcBenchGet(b, map[bool]*benchProc{false: direct, true: viaLethe}[l], "/api/v1/query_range", params(untouchedFrom))
		}},
		{group + "-query-masked", func(l bool) {
			ssrcBenchGet(b, map[bool]*benchProc{false: direct, true: viaLethe}[l], "/api/v1/query_range", params(maskedFrom))
		}},
		{group + "-series-untouched", func(l bool) {
			pull(map[bool]storepb.StoreClient{false: storeClient, true: letheClient}[l], seriesReq(untouchedFrom))
		}},
		{group + "-series-masked", func(l bool) {
			pull(map[bool]storepb.StoreClient{false: storeClient, true: letheClient}[l], seriesReq(maskedFrom))
		}},
	}
	for _, leaf := range leaves {
		b.Run(leaf.group, func(b *testing.B) {
			b.Run("lethe-vs-store", func(b *testing.B) {
				procs := []*benchProc{store, lethe, direct, viaLethe}
				for _, p := range procs {
					_ = p.resetPeakRSS()
				}
				var tl, ts, ratios, cpuLethe, cpuStore []float64
				timed := func(l bool) float64 {
					began := time.Now()
					leaf.run(l)
					return float64(time.Since(began).Microseconds()) / 1000
				}
				for i := 0; i < b.N; i++ {
					s0 := ssrcCPUms(b, store)
					s := timed(false)
					s1, l0 := ssrcCPUms(b, store), ssrcCPUms(b, lethe)
					l := timed(true)
					cpuStore, cpuLethe = append(cpuStore, s1-s0), append(cpuLethe, ssrcCPUms(b, lethe)-l0)
					ts, tl, ratios = append(ts, s), append(tl, l), append(ratios, l/s)
				}
				med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
				b.ReportMetric(med(tl), "lethe-ms")
				b.ReportMetric(med(ts), "baseline-ms")
				b.ReportMetric(med(ratios), "lethe/baseline")
				b.ReportMetric(1/med(ratios), "throughput-lethe/store")
				b.ReportMetric(med(cpuLethe), "lethe-cpu-ms")
				b.ReportMetric(med(cpuStore), "store-cpu-ms")
				rss := func(p *benchProc, unit string) {
					if mib, err := p.peakRSSMiB(); err == nil {
						b.ReportMetric(mib, unit)
					}
				}
				rss(lethe, "lethe-peak-RSS-MiB")
				rss(store, "upstream-peak-RSS-MiB")
				if strings.Contains(leaf.group, "-query-") {
					rss(direct, "baseline-peak-RSS-MiB")
					rss(viaLethe, "querier-lethe-peak-RSS-MiB")
				}
			})
		})
	}
}

// ssrcCPUms is the CPU time (user and system) the process has used so far, in milliseconds.
func ssrcCPUms(b *testing.B, p *benchProc) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command's name, which ends with the last ')': utime and stime are the
	// 14th and 15th of the line, in clock ticks (USER_HZ, 100 on Linux).
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("%s: /proc stat: %v %v", p.name, err1, err2)
	}
	return (utime + stime) * 10
}

// ssrcEachSeries reads one Series call to its end and calls fn with each series, batched or not.
func ssrcEachSeries(b *testing.B, c storepb.StoreClient, req *storepb.SeriesRequest, fn func(*storepb.Series)) {
	cl, err := c.Series(context.Background(), req)
	if err != nil {
		b.Fatal(err)
	}
	for {
		r, err := cl.Recv()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			b.Fatal(err)
		}
		batch := r.GetBatch().GetSeries()
		if s := r.GetSeries(); s != nil {
			batch = []*storepb.Series{s}
		}
		for _, s := range batch {
			fn(s)
		}
	}
}
