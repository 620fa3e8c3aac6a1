package e2e

// The look-up battery: series, label names and label values through lethe-proxy, against a real
// Prometheus that got the same deletions by delete_series + clean_tombstones, in windows where
// deleted and surviving samples meet. CONTRACT.md: series and label look-ups answer from the
// samples that survive in the requested window; a label value carried only by deleted samples
// never appears. The truth is the oracle's series answer restricted to the series with a sample
// in the window (truthOf), as in the battery.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// The look-up battery's data: two 2h blocks from blockStart, a sample every 15s.
const (
	lookupBlocks = 2
	lookupStep   = int64(15_000)
	lookupEnd    = blockStart + lookupBlocks*7_200_000 // exclusive
	// lookupAbsent is how many tombstones name instances that have no series.
	lookupAbsent = 40
)

// lookupSeries returns node-exporter-like series: ten instances (more than a look-up through
// Thanos asks one by one), i-4 and i-5 of the tenant t-del (deleted whole, with a metric and a
// label only they carry), the others of t-a.
func lookupSeriesSet() []labels.Labels {
	var out []labels.Labels
	for i := 0; i < 10; i++ {
		inst, tenant := fmt.Sprintf("i-%d", i), "t-a"
		if i == 4 || i == 5 {
			tenant = "t-del"
		}
		base := []string{"instance", inst, "job", "node", "tenant", tenant}
		with := func(kv ...string) labels.Labels { return labels.FromStrings(append(slices.Clone(base), kv...)...) }
		out = append(out, with("__name__", "node_load1"), with("__name__", "node_memory_free_bytes"))
		for _, cpu := range []string{"0", "1"} {
			for _, mode := range []string{"idle", "user", "steal"} {
				out = append(out, with("__name__", "node_cpu_seconds_total", "cpu", cpu, "mode", mode))
			}
		}
		if i <= 2 {
			// sdb only on i-2, whose deletion window makes it vanish there.
			out = append(out, with("__name__", "node_disk_io_time_seconds_total", "device", map[bool]string{true: "sdb", false: "sda"}[i == 2]))
		}
		if tenant == "t-del" {
			out = append(out, with("__name__", "tenant_only_metric", "secret", "s"+inst))
		}
	}
	return out
}

// lt is a time of the look-up data: blockStart plus d.
func lt(d time.Duration) int64 { return blockStart + d.Milliseconds() }

var lookupDeletions = []batteryDeletion{
	{"a tenant, all time", []string{`{tenant="t-del"}`}, math.MinInt64, math.MaxInt64},
	{"one mode of a metric for 30 minutes", []string{`node_cpu_seconds_total{mode="steal"}`}, lt(time.Hour), lt(90 * time.Minute)},
	{"an instance for 30 minutes across series", []string{`{instance="i-2"}`}, lt(150 * time.Minute), lt(3 * time.Hour)},
	{"one series' first hour of the second block", []string{`node_load1{instance="i-1"}`}, lt(2 * time.Hour), lt(3 * time.Hour)},
}

// lookupManyDeletions are the deletions of the query-API mode's extra look-ups: more tombstones
// meeting one look-up than the selectors' complement can express (17 five-minute stretches that
// together delete i-0's sda from 10m to 95m), so that the look-up reads their series, and a
// redacted one, whose selector the proxy cannot send exactly. lookupManyRedacted says which are
// written redacted.
var lookupManyDeletions, lookupManyRedacted = func() ([]batteryDeletion, []bool) {
	var dels []batteryDeletion
	var redacted []bool
	for k := 0; k < 17; k++ {
		from := 10*time.Minute + time.Duration(k)*5*time.Minute
		dels = append(dels, batteryDeletion{fmt.Sprintf("i-0's sda, stretch %d", k), []string{`node_disk_io_time_seconds_total{instance="i-0",device="sda"}`}, lt(from), lt(from+5*time.Minute) - 1})
		redacted = append(redacted, false)
	}
	dels = append(dels, batteryDeletion{"i-3's load for 20 minutes, redacted", []string{`node_load1{instance="i-3",job="node"}`}, lt(20 * time.Minute), lt(40 * time.Minute)})
	return dels, append(redacted, true)
}()

// lookupManyWindows are the windows of the extra look-ups: the span of the 17 (sda is deleted
// there on i-0), a part of it that several meet, its edge, and the redacted deletion's interval
// and its edge.
func lookupManyWindows() [][2]int64 {
	first, last, redacted := lookupManyDeletions[0], lookupManyDeletions[16], lookupManyDeletions[17]
	return [][2]int64{
		{first.start, last.end},
		{first.start + 7*time.Minute.Milliseconds(), last.end - 7*time.Minute.Milliseconds()},
		{last.end - lookupStep, last.end + lookupStep},
		{redacted.start, redacted.end},
		{redacted.start - lookupStep, redacted.start},
	}
}

// lookupWindows are the look-ups' windows: all the data, each deletion's own interval, and
// stretches where a deletion's last (or first) sample meets the next surviving one.
func lookupWindows() [][2]int64 {
	out := [][2]int64{{blockStart, lookupEnd - 1}, {math.MinInt64, math.MaxInt64}}
	for _, d := range lookupDeletions[1:] {
		out = append(out,
			[2]int64{d.start, d.end},
			[2]int64{d.start + lookupStep, d.end - lookupStep},
			[2]int64{d.start - lookupStep, d.start},
			[2]int64{d.end, d.end + lookupStep},
			[2]int64{d.end - 5*time.Minute.Milliseconds(), d.end + 5*time.Minute.Milliseconds()},
		)
	}
	return out
}

func lookupCases(matchSets [][]string, windows [][2]int64) []batteryCase {
	var cases []batteryCase
	names := []string{"__name__", "instance", "tenant", "mode", "device", "secret"}
	for _, ms := range matchSets {
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
				cases = append(cases, batteryCase{kind: "series", path: "/api/v1/series", group: "series " + group, params: params})
			}
			cases = append(cases, batteryCase{kind: "labels", path: "/api/v1/labels", group: "labels " + group, params: params})
			for _, n := range names {
				cases = append(cases, batteryCase{kind: "label_values", path: "/api/v1/label/" + n + "/values", group: "label values " + n + " " + group, params: params, label: n})
			}
		}
	}
	return cases
}

// TestLookupBucketMode runs the look-up battery against lethe-proxy serving the bucket's blocks.
func TestLookupBucketMode(t *testing.T) { lookupMode(t, false) }

// TestLookupUpstreamMode runs it against lethe-proxy in front of a Prometheus (remote read).
func TestLookupUpstreamMode(t *testing.T) { lookupMode(t, true) }

// TestLookupQueryAPIMode runs it against lethe-proxy reading the Prometheus through its query
// API, as it reads Thanos Query, Mimir or VictoriaMetrics, with the extra deletions: 17
// tombstones meeting one look-up, and a redacted one.
func TestLookupQueryAPIMode(t *testing.T) { lookupMode(t, true, "--upstream.read=query-api") }

// TestLookupStoreAPIMode runs it against a Thanos Query whose --endpoint is lethe-proxy's StoreAPI
// mode in front of `thanos store` over the bucket: the StoreAPI server's LabelNames/LabelValues.
func TestLookupStoreAPIMode(t *testing.T) { lookupThanos(t, lookupStoreAPI) }

// TestLookupInFrontOfThanosQuery runs it against lethe-proxy --upstream.url=<Thanos Query> over
// `thanos store` over the bucket.
func TestLookupInFrontOfThanosQuery(t *testing.T) { lookupThanos(t, lookupThanosAPI) }

// TestLookupThroughThanosQueryStoreAPI runs it against lethe-proxy --upstream.store=<Thanos
// Query's gRPC> over `thanos store` over the bucket.
func TestLookupThroughThanosQueryStoreAPI(t *testing.T) { lookupThanos(t, lookupThanosStore) }

// The places of lethe in a Thanos stack that the look-up battery runs in.
const (
	lookupStoreAPI    = "storeapi"
	lookupThanosAPI   = "thanos-api"
	lookupThanosStore = "thanos-store"
)

func lookupMode(t *testing.T, upstream bool, flags ...string) {
	lookupBattery(t, upstream, "", flags...)
}

func lookupThanos(t *testing.T, thanos string) {
	thxThanosPath(t) // fail early without the binary
	lookupBattery(t, false, thanos)
}

// lookupBattery is the battery through lethe-proxy in front of the Prometheus (upstream), over
// the bucket, or (thanos) in a Thanos stack over the bucket.
func lookupBattery(t *testing.T, upstream bool, thanos string, flags ...string) {
	matchSets := [][]string{nil, {`node_load1`}, {`{instance="i-2"}`}, {`{tenant="t-del"}`}, {`node_cpu_seconds_total`}, {`{__name__=~"node_.*",mode!="idle"}`}}
	windows := lookupWindows()
	dels := slices.Clone(lookupDeletions)
	redacted := make([]bool, len(dels))
	// The extra deletions wherever the proxy cannot read the upstream's samples by remote read:
	// their selectors are relaxed or sent inexactly to an index it cannot see.
	if slices.Contains(flags, "--upstream.read=query-api") || thanos != "" {
		matchSets = append(matchSets, []string{`{instance="i-0"}`}, []string{`{instance="i-3"}`}, []string{`node_disk_io_time_seconds_total`})
		windows = append(windows, lookupManyWindows()...)
		dels = append(dels, lookupManyDeletions...)
		redacted = append(redacted, lookupManyRedacted...)
	}
	began := time.Now()
	ctx := context.Background()
	series := lookupSeriesSet()
	tmp := t.TempDir()
	var dirs []string
	for i := int64(0); i < lookupBlocks; i++ {
		_, dir, err := synth.Write(ctx, tmp, synth.Block{
			Series: series, MinTime: blockStart + i*7_200_000, MaxTime: blockStart + (i+1)*7_200_000, Step: lookupStep,
			Value: func(s int, ts int64) float64 { return float64(s) + float64(ts-blockStart)/1000 },
		})
		testutil.Ok(t, err)
		dirs = append(dirs, dir)
	}
	bucketDir := t.TempDir()
	bkt, err := filesystem.NewBucket(bucketDir)
	testutil.Ok(t, err)
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, block.MetaFilename))
		testutil.Ok(t, err)
		meta, err := block.DecodeMeta(raw)
		testutil.Ok(t, err)
		testutil.Ok(t, block.Upload(ctx, bkt, dir, meta))
	}

	// The bucket's redaction key, which the proxy reads when it starts.
	key, err := tombstones.LoadOrCreateBucketKey(ctx, bkt)
	testutil.Ok(t, err)

	untouched := startPrometheus(t, dirs)
	var proxy *proxyProc
	// asked is what the look-ups are asked of: the proxy, or the querier in front of it.
	var asked string
	switch {
	case thanos != "":
		_, storeGRPC := sapiStore(t, thxBucketAt(bucketDir))
		ready := func(q *benchProc) *benchProc {
			deadline := time.Now().Add(thxQueryTimeout)
			for len(thxGet(t, q, "/api/v1/query", url.Values{"query": {`count(node_load1)`}, "time": {formatPromTime(lt(time.Hour))}}).Data.Result) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%s serves no data after %v; log:\n%s", q.name, thxQueryTimeout, q.logTail())
				}
				time.Sleep(200 * time.Millisecond)
			}
			return q
		}
		if thanos == lookupStoreAPI {
			grpcAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			proxy = startProxy(t, bucketDir, "--tombstones.refresh-interval=100ms", "--store.endpoint="+storeGRPC, "--grpc-address="+grpcAddr)
			q, _ := lookupQuerier(t, grpcAddr)
			asked = ready(q).URL
		} else {
			q, queryGRPC := lookupQuerier(t, storeGRPC)
			ready(q)
			if thanos == lookupThanosStore {
				proxy = startProxy(t, bucketDir, "--tombstones.refresh-interval=100ms", "--upstream.store="+queryGRPC)
			} else {
				proxy = startProxy(t, bucketDir, "--tombstones.refresh-interval=100ms", "--upstream.url="+q.URL)
			}
		}
	case upstream:
		proxy = startProxy(t, bucketDir, append([]string{"--tombstones.refresh-interval=100ms", "--upstream.url=" + untouched.URL}, flags...)...)
	default:
		proxy = startProxy(t, bucketDir, "--tombstones.refresh-interval=100ms")
		proxy.waitMetric(t, "lethe_proxy_blocks_loaded", lookupBlocks)
	}
	if asked == "" {
		asked = proxy.URL
	}

	// The deletions, and tombstones on instances that have no series (the proxy must rule them
	// out, and they change no answer), written behind the running proxy's back.
	store := tombstones.NewStore(bkt, nil, tombstones.WithRedactionKey(key))
	add := func(sels []string, start, end int64, redact bool) {
		if end == math.MaxInt64 {
			end = lookupEnd + 365*24*3_600_000
		}
		_, err := store.Add(ctx, tombstones.Spec{Selectors: sels, Start: &start, End: &end, Redact: redact, Reason: "look-up battery", Author: "e2e"})
		testutil.Ok(t, err)
	}
	for i, d := range dels {
		add(d.matchers, d.start, d.end, redacted[i])
	}
	for i := 0; i < lookupAbsent; i++ {
		add([]string{fmt.Sprintf(`{instance="gone-%d"}`, i)}, math.MinInt64, lookupEnd, false)
	}
	proxy.waitMetric(t, "lethe_proxy_tombstones_loaded", float64(len(dels)+lookupAbsent))
	oracle := startOracle(t, dirs, dels)
	t.Logf("data, proxy, tombstones and oracle ready in %v", time.Since(began).Round(time.Millisecond))

	cl := batteryClient{client: &http.Client{Timeout: time.Minute}}
	cases := lookupCases(matchSets, windows)
	discriminating, mismatches := 0, 0
	for i, c := range cases {
		want := truthOf(t, cl, oracle.URL, c).expected(t, c)
		unmasked := truthOf(t, cl, untouched.URL, c).expected(t, c)
		if unmasked != want {
			discriminating++
		}
		status, body, err := cl.do(asked, c, i%2 == 1 && c.kind != "label_values")
		if got := normalizeAnswer(t, status, body, err); got != want {
			mismatches++
			if mismatches <= 20 {
				o, p := focus(want, got)
				t.Errorf("%s %s\n  oracle: %s\n  proxy:  %s", c.kind, c, clip(o, 800), clip(p, 800))
			}
		}
	}
	t.Logf("look-ups: %d comparisons, %d of them on answers the deletions change, %d mismatches", len(cases), discriminating, mismatches)
	testutil.Assert(t, discriminating*3 >= len(cases), "only %d of %d look-ups see a deletion", discriminating, len(cases))

	// limit (Prometheus 3) counts what survives masking: as many values as it allows, all from
	// the truth.
	for _, c := range []struct {
		path, label string
		lim         int
		w           [2]int64
	}{
		{"/api/v1/label/instance/values", "instance", 3, [2]int64{lt(150 * time.Minute), lt(3 * time.Hour)}},
		{"/api/v1/label/instance/values", "instance", 2, [2]int64{blockStart, lookupEnd - 1}},
		{"/api/v1/label/__name__/values", "__name__", 4, [2]int64{blockStart, lookupEnd - 1}},
		{"/api/v1/label/mode/values", "mode", 2, [2]int64{lt(time.Hour), lt(90 * time.Minute)}},
		{"/api/v1/labels", "", 6, [2]int64{blockStart, lookupEnd - 1}},
	} {
		kind := "label_values"
		if c.label == "" {
			kind = "labels"
		}
		params := url.Values{"start": {formatPromTime(c.w[0])}, "end": {formatPromTime(c.w[1])}}
		bc := batteryCase{kind: kind, path: c.path, params: params, label: c.label}
		var truth struct{ Data []string }
		_, tb, _ := strings.Cut(truthOf(t, cl, oracle.URL, bc).expected(t, bc), " ")
		testutil.Ok(t, json.Unmarshal([]byte(tb), &truth))
		params.Set("limit", fmt.Sprint(c.lim))
		status, body, err := cl.do(asked, bc, false)
		testutil.Ok(t, err)
		testutil.Equals(t, http.StatusOK, status, string(body))
		var got struct{ Data []string }
		testutil.Ok(t, json.Unmarshal(body, &got))
		testutil.Equals(t, min(c.lim, len(truth.Data)), len(got.Data), "%s limit %d: %v of %v", c.path, c.lim, got.Data, truth.Data)
		for _, v := range got.Data {
			testutil.Assert(t, slices.Contains(truth.Data, v), "%s limit %d: %q is not in %v", c.path, c.lim, v, truth.Data)
		}
	}
}

// lookupQuerier starts a Thanos Query over the StoreAPI endpoint and returns it and its gRPC
// address.
func lookupQuerier(t *testing.T, endpoint string) (*benchProc, string) {
	t.Helper()
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	return startBenchProc(t, "thanos-query", t.TempDir(), thxThanosPath(t), func(addr string) []string {
		return []string{"query", "--http-address=" + addr, "--grpc-address=" + grpcAddr,
			"--endpoint=" + endpoint, "--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=warn"}
	}), grpcAddr
}
