package block_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
)

// sels parses PromQL series selectors.
func sels(t testing.TB, ss ...string) [][]*labels.Matcher {
	t.Helper()
	out := make([][]*labels.Matcher, 0, len(ss))
	for _, s := range ss {
		ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(s)
		testutil.Ok(t, err, s)
		out = append(out, ms)
	}
	return out
}

const (
	fixMin  = int64(1_000_000)
	fixLast = fixMin + 45_000 // last sample; the block's MaxTime is fixLast+1.
)

// fixtureSeries are the series of the fixture block, whose external labels are {cluster="eu1"}.
// The last one carries a cluster label of its own, which the external label overrides.
var fixtureSeries = []labels.Labels{
	labels.FromStrings("__name__", "http_requests_total", "job", "api", "instance", "a"),
	labels.FromStrings("__name__", "http_requests_total", "job", "api", "instance", "b"),
	labels.FromStrings("__name__", "http_requests_total", "job", "web", "instance", "a"),
	labels.FromStrings("__name__", "up", "job", "api", "instance", "a"),
	labels.FromStrings("__name__", "up", "job", "web", "instance", "c", "cluster", "us1"),
}

func fixtureBlock(ext map[string]string) synth.Block {
	return synth.Block{Series: fixtureSeries, MinTime: fixMin, MaxTime: fixMin + 60_000, Step: 15_000, External: ext}
}

func readMeta(t testing.TB, bkt objstore.BucketReader, id ulid.ULID) *block.Meta {
	t.Helper()
	m, err := block.ReadMeta(context.Background(), bkt, id)
	testutil.Ok(t, err)
	return m
}

func TestCountSeries_Matchers(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)
			meta := readMeta(t, bkt, uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"})))
			testutil.Equals(t, fixMin, meta.MinTime)
			testutil.Equals(t, fixLast+1, meta.MaxTime)

			for _, tc := range []struct {
				name       string
				selectors  []string
				mint, maxt int64
				want       int
				// noIndex: decided by meta.json alone, the index is not read.
				noIndex bool
			}{
				{name: "equality", selectors: []string{`{__name__="http_requests_total"}`}, want: 3},
				{name: "metric name", selectors: []string{`up`}, want: 2},
				{name: "two equalities", selectors: []string{`{job="api", instance="a"}`}, want: 2},
				{name: "no such value", selectors: []string{`{job="nope"}`}, want: 0},
				{name: "regex", selectors: []string{`{job=~"a.*"}`}, want: 3},
				{name: "regex is anchored", selectors: []string{`{job=~"ap"}`}, want: 0},
				{name: "regex alternation", selectors: []string{`{instance=~"b|c"}`}, want: 2},
				{name: "not equal", selectors: []string{`{__name__="http_requests_total", job!="api"}`}, want: 1},
				{name: "not regex", selectors: []string{`{__name__!~"http.*"}`}, want: 2},
				{name: "only negative", selectors: []string{`{job!="api"}`}, want: 2},
				{name: "empty matches absent label", selectors: []string{`{nosuchlabel=""}`}, want: 5},
				{name: "empty does not match present label", selectors: []string{`{instance=""}`}, want: 0},
				{name: "union counts a series once", selectors: []string{`{job="api"}`, `{__name__="up"}`}, want: 4},
				{name: "same selector twice", selectors: []string{`{job="api"}`, `{job="api"}`}, want: 3},
				{name: "union with a disjoint selector", selectors: []string{`{instance="b"}`, `{instance="c"}`}, want: 2},
				{name: "no selectors", selectors: nil, want: 0, noIndex: true},

				{name: "external label matches all series", selectors: []string{`{cluster="eu1"}`}, want: 5},
				{name: "external label regex", selectors: []string{`{cluster=~"eu.*", instance="a"}`}, want: 3},
				{name: "other cluster", selectors: []string{`{cluster="us1"}`}, want: 0, noIndex: true},
				{name: "other cluster with series matchers", selectors: []string{`{cluster="us1", job="api"}`}, want: 0, noIndex: true},
				{name: "negative external label", selectors: []string{`{cluster!="eu1"}`}, want: 0, noIndex: true},
				{name: "negative external label, other value", selectors: []string{`{cluster!="us1", job="web"}`}, want: 2},
				{name: "external label overrides series label", selectors: []string{`{cluster="eu1", instance="c"}`}, want: 1},
				{name: "union, one selector excluded by external label", selectors: []string{`{cluster="us1"}`, `{job="web"}`}, want: 2},

				{name: "range before the block", selectors: []string{`{job=~".+"}`}, mint: 0, maxt: fixMin - 1, want: 0, noIndex: true},
				{name: "range after the block", selectors: []string{`{job=~".+"}`}, mint: fixLast + 1, maxt: fixLast + 1_000_000, want: 0, noIndex: true},
				{name: "range touching the first sample", selectors: []string{`{job=~".+"}`}, mint: 0, maxt: fixMin, want: 5},
				{name: "range touching the last sample", selectors: []string{`{job=~".+"}`}, mint: fixLast, maxt: fixLast + 1_000_000, want: 5},
				{name: "range of the last sample's ms", selectors: []string{`{job="web"}`}, mint: fixLast, maxt: fixLast, want: 2},
				{name: "range inside the block", selectors: []string{`{job="web"}`}, mint: fixMin + 1, maxt: fixMin + 2, want: 2},
			} {
				t.Run(tc.name, func(t *testing.T) {
					mint, maxt := tc.mint, tc.maxt
					if mint == 0 && maxt == 0 {
						mint, maxt = 0, fixLast+1_000_000
					}
					c, err := block.CountSeries(ctx, bkt, meta, sels(t, tc.selectors...), mint, maxt)
					testutil.Ok(t, err)
					testutil.Equals(t, tc.want, c.Matched)
					testutil.Equals(t, uint64(len(fixtureSeries)), c.Total)
					testutil.Equals(t, meta, c.Meta)
					if tc.noIndex {
						testutil.Equals(t, int64(0), c.BytesFetched)
					} else {
						testutil.Assert(t, c.BytesFetched > 0, "index was not read")
					}
				})
			}
		})
	}
}

func TestCountSeries_PlainPrometheusBlock(t *testing.T) {
	ctx := context.Background()
	bkt := objstore.NewInMemBucket()
	meta := readMeta(t, bkt, uploadSynth(t, bkt, fixtureBlock(nil)))
	testutil.Assert(t, meta.Thanos == nil)

	for _, tc := range []struct {
		sel  string
		want int
	}{
		// Without external labels, cluster is an ordinary series label.
		{`{cluster="us1"}`, 1},
		{`{cluster="eu1"}`, 0},
		{`{cluster=""}`, 4},
		{`{job=~".+"}`, 5},
	} {
		c, err := block.CountSeries(ctx, bkt, meta, sels(t, tc.sel), 0, fixLast)
		testutil.Ok(t, err)
		testutil.Equals(t, tc.want, c.Matched, tc.sel)
	}
}

// writeTimedBlock writes a block whose series each have their own sample timestamps, and uploads it.
func writeTimedBlock(t testing.TB, bkt objstore.Bucket, ext map[string]string, series map[string][]int64) *block.Meta {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	w, err := tsdb.NewBlockWriter(slog.New(slog.DiscardHandler), dir, 100_000)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, w.Close()) }()
	app := w.Appender(ctx)
	for name, tss := range series {
		ls := labels.FromStrings("__name__", name)
		for _, ts := range tss {
			_, err := app.Append(0, ls, ts, float64(ts))
			testutil.Ok(t, err)
		}
	}
	testutil.Ok(t, app.Commit())
	id, err := w.Flush(ctx)
	testutil.Ok(t, err)
	raw, err := os.ReadFile(filepath.Join(dir, id.String(), block.MetaFilename))
	testutil.Ok(t, err)
	meta, err := block.DecodeMeta(raw)
	testutil.Ok(t, err)
	if ext != nil {
		meta.Thanos = &block.Thanos{Version: 1, Labels: ext, Source: "test"}
	}
	testutil.Ok(t, block.Upload(ctx, bkt, filepath.Join(dir, id.String()), meta))
	return readMeta(t, bkt, id)
}

func TestCountSeries_ChunkTimeRange(t *testing.T) {
	ctx := context.Background()
	bkt := objstore.NewInMemBucket()
	var early, late []int64
	for i := int64(0); i < 10; i++ {
		early = append(early, i*100)    // 0..900
		late = append(late, 5000+i*100) // 5000..5900
	}
	meta := writeTimedBlock(t, bkt, map[string]string{"cluster": "eu1"}, map[string][]int64{"early": early, "late": late})
	testutil.Equals(t, int64(0), meta.MinTime)
	testutil.Equals(t, int64(5901), meta.MaxTime)

	for _, tc := range []struct {
		mint, maxt int64
		want       int
	}{
		{0, 10_000, 2},
		{0, 0, 1},
		{900, 900, 1},
		{901, 4999, 0}, // in the block's range, but between the two series' chunks.
		{2000, 3000, 0},
		{4999, 5000, 1},
		{5900, 5900, 1},
		{900, 5000, 2},
		{5901, 10_000, 0},
	} {
		c, err := block.CountSeries(ctx, bkt, meta, sels(t, `{__name__=~".+"}`), tc.mint, tc.maxt)
		testutil.Ok(t, err)
		testutil.Equals(t, tc.want, c.Matched, "[%d, %d]", tc.mint, tc.maxt)
		if tc.mint > 5900 {
			testutil.Equals(t, int64(0), c.BytesFetched)
		} else {
			testutil.Assert(t, c.BytesFetched > 0)
		}
	}
}

// bigBlock is a block of many series with few samples each, shared by the tests that need one.
var bigBlock struct {
	once sync.Once
	dir  string
	meta *block.Meta
	err  error
}

const bigSeries = 20_000

func bigSeriesLabels(i int) labels.Labels {
	return labels.FromStrings(
		"__name__", "node_cpu_seconds_total",
		"cpu", fmt.Sprint(i%16),
		"env", "prod",
		"instance", fmt.Sprintf("h%05d", i),
		"job", "node",
		"mode", []string{"user", "system", "idle", "iowait", "irq", "softirq", "steal", "nice"}[i%8],
		"os", "linux",
		"rack", fmt.Sprint(i%40),
		"zone", []string{"eu1-a", "eu1-b", "eu1-c"}[i%3],
	)
}

// uploadBig uploads the big block (written once per test binary) to bkt.
func uploadBig(t testing.TB, bkt objstore.Bucket) *block.Meta {
	t.Helper()
	bigBlock.once.Do(func() {
		series := make([]labels.Labels, bigSeries)
		for i := range series {
			series[i] = bigSeriesLabels(i)
		}
		tmp, err := os.MkdirTemp("", "lethe-block-test-")
		if err != nil {
			bigBlock.err = err
			return
		}
		bigBlock.meta, bigBlock.dir, bigBlock.err = synth.Write(context.Background(), tmp, synth.Block{
			Series: series, MinTime: 0, MaxTime: 30_000, Step: 15_000,
			External: map[string]string{"cluster": "eu1"},
		})
	})
	testutil.Ok(t, bigBlock.err)
	testutil.Ok(t, block.Upload(context.Background(), bkt, bigBlock.dir, bigBlock.meta))
	return readMeta(t, bkt, bigBlock.meta.ULID)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bigBlock.dir != "" {
		_ = os.RemoveAll(filepath.Dir(bigBlock.dir))
	}
	os.Exit(code)
}

func indexSize(t testing.TB, bkt objstore.BucketReader, id ulid.ULID) int64 {
	t.Helper()
	attrs, err := bkt.Attributes(context.Background(), path.Join(id.String(), block.IndexFilename))
	testutil.Ok(t, err)
	return attrs.Size
}

func TestOpenIndex_ReadsOnlyTheHeaderParts(t *testing.T) {
	bkt := objstore.NewInMemBucket()
	meta := uploadBig(t, bkt)
	size := indexSize(t, bkt, meta.ULID)

	ix, err := block.OpenIndex(context.Background(), bkt, meta.ULID)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, ix.Close()) }()
	testutil.Ok(t, ix.Err())
	t.Logf("index %d bytes, %d fetched to open it", size, ix.BytesFetched())
	testutil.Assert(t, ix.BytesFetched() > 0)
	testutil.Assert(t, ix.BytesFetched() < size/2, "opening fetched %d of %d bytes", ix.BytesFetched(), size)

	vals, err := ix.SortedLabelValues(context.Background(), "zone", nil)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"eu1-a", "eu1-b", "eu1-c"}, vals)
}

// TestCountSeries_RangedReads is the point of ranged reads: a selector matching one series of a big
// block downloads a small part of its index.
func TestCountSeries_RangedReads(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)
			meta := uploadBig(t, bkt)
			size := indexSize(t, bkt, meta.ULID)
			testutil.Equals(t, uint64(bigSeries), meta.Stats.NumSeries)

			for _, sel := range []string{
				`{instance="h12345"}`,
				`{__name__="node_cpu_seconds_total", instance="h00007", mode="nice"}`,
			} {
				c, err := block.CountSeries(ctx, bkt, meta, sels(t, sel), 0, 30_000)
				testutil.Ok(t, err)
				testutil.Equals(t, 1, c.Matched, sel)
				testutil.Equals(t, uint64(bigSeries), c.Total)
				t.Logf("%s: index %d bytes, %d fetched", sel, size, c.BytesFetched)
				testutil.Assert(t, c.BytesFetched > 0)
				testutil.Assert(t, c.BytesFetched < size/2,
					"%s matched 1 series and fetched %d of the index's %d bytes", sel, c.BytesFetched, size)
			}

			// A selector no series matches stops at the postings.
			c, err := block.CountSeries(ctx, bkt, meta, sels(t, `{instance="nope"}`), 0, 30_000)
			testutil.Ok(t, err)
			testutil.Equals(t, 0, c.Matched)
			testutil.Assert(t, c.BytesFetched < size/2, "fetched %d of %d bytes", c.BytesFetched, size)
		})
	}
}

// TestCountSeries_CostPerSeries checks that reading a matched series costs about the series, not the
// index: counting 100 series of the big block must not allocate (copy) the index once per label.
func TestCountSeries_CostPerSeries(t *testing.T) {
	ctx := context.Background()
	bkt := objstore.NewInMemBucket()
	meta := uploadBig(t, bkt)
	size := indexSize(t, bkt, meta.ULID)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c, err := block.CountSeries(ctx, bkt, meta, sels(t, `{instance=~"h000.."}`), 0, 30_000)
	runtime.ReadMemStats(&after)
	testutil.Ok(t, err)
	testutil.Equals(t, 100, c.Matched)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("index %d bytes; counting 100 series fetched %d bytes and allocated %d bytes", size, c.BytesFetched, alloc)
	testutil.Assert(t, alloc < uint64(8*size), "counting 100 series allocated %d bytes, %d times the index size", alloc, alloc/uint64(size))
}

// byteSlice is an index.ByteSlice over bytes in memory.
type byteSlice []byte

func (b byteSlice) Len() int                    { return len(b) }
func (b byteSlice) Range(start, end int) []byte { return b[start:end] }

func getObject(t testing.TB, bkt objstore.BucketReader, name string) []byte {
	t.Helper()
	rc, err := bkt.Get(context.Background(), name)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, rc.Close()) }()
	b, err := io.ReadAll(rc)
	testutil.Ok(t, err)
	return b
}

func fill(b []byte, from, to int, v byte) []byte {
	out := append([]byte(nil), b...)
	for i := from; i < to; i++ {
		out[i] = v
	}
	return out
}

// corruptions of an index object.
var corruptions = []struct {
	name string
	f    func(t testing.TB, b []byte) []byte
}{
	{name: "garbage", f: func(_ testing.TB, b []byte) []byte {
		out := make([]byte, len(b))
		rand.New(rand.NewSource(42)).Read(out)
		return out
	}},
	{name: "truncated to half", f: func(_ testing.TB, b []byte) []byte { return b[:len(b)/2] }},
	{name: "empty", f: func(_ testing.TB, b []byte) []byte { return nil }},
	{name: "bad magic", f: func(_ testing.TB, b []byte) []byte { return fill(b, 0, 4, 0) }},
	{name: "bad TOC", f: func(_ testing.TB, b []byte) []byte { return fill(b, len(b)-52, len(b), 0xff) }},
	{name: "symbols overwritten", f: func(t testing.TB, b []byte) []byte {
		toc, err := index.NewTOCFromByteSlice(byteSlice(b))
		testutil.Ok(t, err)
		return fill(b, int(toc.Symbols)+4, int(toc.Series), 0xa5)
	}},
	{name: "series overwritten", f: func(t testing.TB, b []byte) []byte {
		toc, err := index.NewTOCFromByteSlice(byteSlice(b))
		testutil.Ok(t, err)
		return fill(b, int(toc.Series), int(toc.LabelIndices), 0xff)
	}},
	{name: "postings overwritten", f: func(t testing.TB, b []byte) []byte {
		toc, err := index.NewTOCFromByteSlice(byteSlice(b))
		testutil.Ok(t, err)
		return fill(b, int(toc.Postings), int(toc.LabelIndicesTable), 0xff)
	}},
	{name: "postings offset table overwritten", f: func(t testing.TB, b []byte) []byte {
		toc, err := index.NewTOCFromByteSlice(byteSlice(b))
		testutil.Ok(t, err)
		return fill(b, int(toc.PostingsTable)+4, len(b)-52, 0x11)
	}},
}

func TestCountSeries_CorruptIndex(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			for _, cr := range corruptions {
				t.Run(cr.name, func(t *testing.T) {
					bkt := bk.new(t)
					meta := readMeta(t, bkt, uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"})))
					name := path.Join(meta.ULID.String(), block.IndexFilename)
					good := getObject(t, bkt, name)
					bad := cr.f(t, good)
					testutil.Assert(t, string(bad) != string(good), "corruption changed nothing")
					testutil.Ok(t, bkt.Upload(ctx, name, strings.NewReader(string(bad))))
					testutil.Equals(t, int64(len(bad)), indexSize(t, bkt, meta.ULID))

					// Selectors that read postings and series of every kind.
					for _, sel := range [][]string{
						{`{job="api"}`},
						{`{job=~"a.+"}`, `{instance!="a"}`},
						{`{cluster="eu1"}`},
					} {
						var (
							c   block.Count
							err error
						)
						func() {
							defer func() {
								if r := recover(); r != nil {
									t.Fatalf("CountSeries panicked on a corrupt index: %v", r)
								}
							}()
							c, err = block.CountSeries(ctx, bkt, meta, sels(t, sel...), 0, fixLast)
						}()
						testutil.NotOk(t, err, "selectors %v counted %d series on a corrupt index", sel, c.Matched)
						testutil.Assert(t, strings.Contains(err.Error(), meta.ULID.String()), "error does not name the block: %v", err)
					}
				})
			}
		})
	}
}

func TestCountSeries_MissingIndex(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)
			meta := readMeta(t, bkt, uploadSynth(t, bkt, fixtureBlock(nil)))
			testutil.Ok(t, bkt.Delete(ctx, path.Join(meta.ULID.String(), block.IndexFilename)))

			c, err := block.CountSeries(ctx, bkt, meta, sels(t, `{job="api"}`), 0, fixLast)
			testutil.NotOk(t, err)
			testutil.Assert(t, strings.Contains(err.Error(), meta.ULID.String()), "%v", err)
			testutil.Equals(t, 0, c.Matched)
			testutil.Equals(t, int64(0), c.BytesFetched)
		})
	}
}

func TestCountMatches(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)
			// Two good blocks holding the same series, at different times.
			good1 := uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"}))
			good2 := uploadSynth(t, bkt, synth.Block{Series: fixtureSeries, MinTime: 10 * fixMin, MaxTime: 10*fixMin + 60_000, Step: 15_000,
				External: map[string]string{"cluster": "eu2"}})

			truncated := uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"}))
			name := path.Join(truncated.String(), block.IndexFilename)
			b := getObject(t, bkt, name)
			upload(t, bkt, name, string(b[:len(b)/2]))

			garbage := uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"}))
			upload(t, bkt, path.Join(garbage.String(), block.IndexFilename), strings.Repeat("\xde\xad\xbe\xef", 1000))

			noIndex := uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"}))
			testutil.Ok(t, bkt.Delete(ctx, path.Join(noIndex.String(), block.IndexFilename)))

			partial := uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"}))
			testutil.Ok(t, bkt.Delete(ctx, path.Join(partial.String(), block.MetaFilename)))

			marked := uploadSynth(t, bkt, fixtureBlock(map[string]string{"cluster": "eu1"}))
			upload(t, bkt, path.Join(marked.String(), block.DeletionMarkFilename), `{"id":"`+marked.String()+`","deletion_time":1,"version":1}`)

			// The partial upload (no meta.json) is no block yet, and no problem either.
			l, err := block.List(ctx, bkt)
			testutil.Ok(t, err)
			testutil.Equals(t, []ulid.ULID{partial}, l.Partial)
			wantProblems := []ulid.ULID{truncated, garbage, noIndex}
			sortedIDs := func(ids []ulid.ULID) []ulid.ULID {
				ps := make([]block.Problem, 0, len(ids))
				for _, id := range ids {
					ps = append(ps, block.Problem{Block: id})
				}
				return problemIDs(ps)
			}

			for _, tc := range []struct {
				name                       string
				selectors                  []string
				mint, maxt                 int64
				series, blocks, blocksRead int
				problems                   []ulid.ULID
			}{
				{name: "all", selectors: []string{`{job=~".+"}`}, mint: 0, maxt: 100 * fixMin,
					series: 10, blocks: 2, blocksRead: 2, problems: wantProblems},
				{name: "union", selectors: []string{`{job="api"}`, `up`}, mint: 0, maxt: 100 * fixMin,
					series: 8, blocks: 2, blocksRead: 2, problems: wantProblems},
				// The other blocks are of cluster eu1: decided by their meta.json, the bad indexes are not read.
				{name: "one cluster", selectors: []string{`{cluster="eu2", job="web"}`}, mint: 0, maxt: 100 * fixMin,
					series: 2, blocks: 1, blocksRead: 1},
				{name: "no match", selectors: []string{`{job="nope"}`}, mint: 0, maxt: 100 * fixMin,
					series: 0, blocks: 0, blocksRead: 2, problems: wantProblems},
				// Only good2 overlaps: the bad blocks are not read, so there is no problem.
				{name: "late range", selectors: []string{`{job=~".+"}`}, mint: 10 * fixMin, maxt: 100 * fixMin,
					series: 5, blocks: 1, blocksRead: 1},
				{name: "range before every block", selectors: []string{`{job=~".+"}`}, mint: 0, maxt: fixMin - 1,
					series: 0, blocks: 0, blocksRead: 0},
			} {
				t.Run(tc.name, func(t *testing.T) {
					res, err := block.CountMatches(ctx, bkt, sels(t, tc.selectors...), tc.mint, tc.maxt)
					testutil.Ok(t, err)
					testutil.Equals(t, tc.series, res.Series)
					testutil.Equals(t, tc.blocks, res.Blocks)
					testutil.Equals(t, tc.blocksRead, res.BlocksRead)
					testutil.Equals(t, sortedIDs(tc.problems), problemIDs(res.Problems))
					testutil.Equals(t, tc.blocksRead > 0, res.BytesFetched > 0)
					for _, p := range res.Problems {
						testutil.Assert(t, p.Err != nil && strings.Contains(p.Err.Error(), p.Block.String()), "problem %v: %v", p.Block, p.Err)
					}
				})
			}
			testutil.Assert(t, good1 != good2)
		})
	}
}
