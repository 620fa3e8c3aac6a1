package e2e

// lethe-rewriter's output against real Thanos components (thanos v0.42.5, run as processes): a
// downsampled block that Thanos' compactor made is rewritten and read back by Thanos' store
// gateway and querier, and a running compactor meets rewritten blocks, both after the source was
// marked and when only the new block made it to the bucket.

import (
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/rewriter"
)

// TestThanosDownsampledBlockRewrite: Thanos' compactor downsamples a 48h raw block to 5m; two
// due, overdue tombstones each delete part of one series (user 3: two whole hours; user 7: two raw
// samples in the first 5m window of an aggregate chunk, before that chunk's MinTime);
// lethe-rewriter rewrites the raw and the 5m block. In the new 5m block, the aggregate chunks
// lose the windows a deleted range meets, in every aggregate, and keep the other windows' values;
// chunks it does not meet are byte for byte the old ones (CONTRACT.md: deleted data never
// survives in an aggregate); `thanos tools bucket verify` passes;
// a Thanos store gateway and querier serve it at max_source_resolution=5m, with nothing of the
// deleted samples; and later compactor passes (README: run both side by side) neither fail nor
// leave overlapping 5m blocks.
func TestThanosDownsampledBlockRewrite(t *testing.T) {
	thxThanosPath(t) // fail early without the binary
	b := thxNewBucket(t)
	ext := map[string]string{"cluster": "thx-ds"}
	var series []labels.Labels
	for u := 0; u < 16; u++ {
		series = append(series, labels.FromStrings("__name__", "thx_load", "job", "api", "user_id", strconv.Itoa(u)))
	}
	rawMeta, rawDir := thxUpload(t, b, synth.Block{Series: series, MinTime: blockStart, MaxTime: blockStart + 48*thxHour, Step: 60_000, External: ext})

	// One compactor pass downsamples the 48h block (>= 40h) to 5m.
	thxCompact(t, b)
	l := thxListing(t, b)
	var ds *block.Meta
	for _, m := range l.Blocks {
		switch m.Resolution() {
		case 0:
			testutil.Equals(t, rawMeta.ULID, m.ULID, "raw blocks after downsampling")
		case thxRes5m:
			testutil.Assert(t, ds == nil, "two 5m blocks")
			ds = m
		default:
			t.Fatalf("block %s of resolution %d", m.ULID, m.Resolution())
		}
	}
	testutil.Assert(t, ds != nil, "thanos compact made no 5m block: %v", l.Blocks)
	testutil.Equals(t, []ulid.ULID{rawMeta.ULID}, ds.Compaction.Sources)
	before := thxReadChunks(t, filepath.Join(b.dir, ds.ULID.String()))
	t.Logf("Thanos' 5m block %s: %d series, %d chunks", ds.ULID, ds.Stats.NumSeries, ds.Stats.NumChunks)

	keyOf := func(user int) string {
		return labels.FromStrings("__name__", "thx_load", "job", "api", "user_id", strconv.Itoa(user)).String()
	}
	// A deletion of whole aggregation windows: [10:00, 12:00) of user 3.
	delA := thxDeletion{`{user_id="3"}`, blockStart + 10*thxHour, blockStart + 12*thxHour - 1}
	// A deletion of two raw samples that lie in the first aggregation window of one of user 7's
	// aggregate chunks, before that chunk's MinTime (its first aggregate's timestamp, the
	// window's end) and after the previous chunk's MaxTime.
	chB := before[keyOf(7)]
	var delB thxDeletion
	for i := 1; i < len(chB); i++ {
		c := chB[i]
		w := thxWindowStart(c, thxRes5m)
		if c.MinTime >= blockStart+24*thxHour && c.MinTime == w+thxRes5m-1 && chB[i-1].MaxTime < w {
			delB = thxDeletion{`{user_id="7"}`, w, w + 60_000}
			t.Logf("user 7: deleting [%s, %s], in the first window of aggregate chunk %d %v (previous chunk ends %s)",
				thxTime(delB.start), thxTime(delB.end), i, c, thxTime(chB[i-1].MaxTime))
			break
		}
	}
	testutil.Assert(t, delB.selector != "", "no aggregate chunk of user 7 starts a window: %v", chB)
	dels := map[string]thxDeletion{keyOf(3): delA, keyOf(7): delB}
	idA, idB := thxTombstone(t, b, delA), thxTombstone(t, b, delB)

	r := thxRewriterRun(t, b)
	testutil.Equals(t, 0, r.code, "lethe-rewriter run:\n%s", thxTail(r.stderr))

	l = thxListing(t, b)
	var rawChild, dsChild *block.Meta
	for _, m := range l.Blocks {
		switch m.Resolution() {
		case 0:
			rawChild = m
		case thxRes5m:
			dsChild = m
		}
	}
	testutil.Equals(t, 2, len(l.Blocks), "live blocks after the rewrite")
	testutil.Assert(t, rawChild != nil && dsChild != nil, "live blocks after the rewrite: %v", l.Blocks)
	testutil.Assert(t, rawChild.ULID != rawMeta.ULID && dsChild.ULID != ds.ULID, "a source is still live")
	after := thxReadChunks(t, filepath.Join(b.dir, dsChild.ULID.String()))

	t.Run("new 5m block replaces the source", func(t *testing.T) {
		testutil.Assert(t, thxMarked(t, b, ds.ULID, block.DeletionMarkFilename), "5m source %s has no deletion mark", ds.ULID)
		testutil.Assert(t, thxMarked(t, b, rawMeta.ULID, block.DeletionMarkFilename), "raw source %s has no deletion mark", rawMeta.ULID)
		testutil.Equals(t, thxRes5m, dsChild.Thanos.Downsample.Resolution)
		testutil.Equals(t, ext, dsChild.Thanos.Labels)
		testutil.Equals(t, ds.MinTime, dsChild.MinTime)
		testutil.Equals(t, ds.MaxTime, dsChild.MaxTime)
		testutil.Equals(t, ds.Compaction.Level, dsChild.Compaction.Level)
		testutil.Equals(t, rewriter.RewrittenSources(ds.Compaction.Sources), dsChild.Compaction.Sources)
		testutil.Equals(t, [][]ulid.ULID{{ds.ULID}}, thxRewrites(t, dsChild))
		testutil.Equals(t, uint64(len(after)), dsChild.Stats.NumSeries)
		n := 0
		for _, cs := range after {
			n += len(cs)
		}
		testutil.Equals(t, uint64(n), dsChild.Stats.NumChunks)
	})

	t.Run("series no tombstone covers keep every chunk byte for byte", func(t *testing.T) {
		testutil.Equals(t, len(before), len(after), "series in the 5m block")
		for key, old := range before {
			if _, ok := dels[key]; ok {
				continue
			}
			testutil.Equals(t, old, after[key], "series %s", key)
		}
	})

	// An aggregate chunk none of whose windows meets the deleted range stays as bytes; one whose
	// windows all meet it goes; the others lose exactly the windows that meet it in count, sum,
	// min and max, and keep the other windows' values; the counter keeps what precedes the cut.
	checkDeleted := func(t *testing.T, key string, d thxDeletion, id string) {
		if !slices.Contains(thxAppliedTombstones(t, dsChild), id) {
			t.Errorf("the new 5m block's thanos.rewrites does not name tombstone %s of %s among the tombstones applied: %s", id, key, dsChild.Thanos.Rewrites)
		}
		meets := func(ts int64) bool { return thxMeets(ts-ts%thxRes5m, ts, d.start, d.end) }
		got := after[key]
		var cut, gone int
		for _, c := range before[key] {
			ts, _ := thxAggrSamples(t, c, thxAggrCount)
			var keep []int
			for i, x := range ts {
				if !meets(x) {
					keep = append(keep, i)
				}
			}
			switch {
			case len(keep) == len(ts):
				testutil.Assert(t, len(got) > 0, "%s: chunk %v is missing", key, c)
				testutil.Equals(t, c, got[0], "%s: a chunk the deletion does not meet", key)
				got = got[1:]
				continue
			case len(keep) == 0:
				gone++
				continue
			}
			cut++
			testutil.Assert(t, len(got) > 0, "%s: chunk %v, cut, is missing", key, c)
			n := got[0]
			got = got[1:]
			testutil.Equals(t, ts[keep[0]], n.MinTime, "%s: first window of the cut chunk %v", key, c)
			testutil.Equals(t, ts[keep[len(keep)-1]], n.MaxTime, "%s: last window of the cut chunk %v", key, c)
			for _, typ := range []int{thxAggrCount, thxAggrSum, thxAggrMin, thxAggrMax} {
				ots, ovs := thxAggrSamples(t, c, typ)
				var wts []int64
				var wvs []float64
				for _, i := range keep {
					wts, wvs = append(wts, ots[i]), append(wvs, ovs[i])
				}
				nts, nvs := thxAggrSamples(t, n, typ)
				testutil.Equals(t, wts, nts, "%s: windows of aggregate %d of the cut chunk %v", key, typ, c)
				testutil.Equals(t, wvs, nvs, "%s: values of aggregate %d of the cut chunk %v", key, typ, c)
			}
			// The counter, a running total, keeps only what lies before the first window cut,
			// and ends with a last raw value stamped at its last window.
			firstCut := ts[len(ts)-1] + 1
			for _, x := range ts {
				if meets(x) {
					firstCut = x
					break
				}
			}
			octs, ocvs := thxAggrSamples(t, c, thxAggrCounter)
			ncts, ncvs := thxAggrSamples(t, n, thxAggrCounter)
			var pts []int64
			var pvs []float64
			for i, x := range octs {
				if x < firstCut && !meets(x) && i < len(octs)-1 {
					pts, pvs = append(pts, x), append(pvs, ocvs[i])
				}
			}
			if len(ncts) > 0 {
				testutil.Equals(t, ncts[len(ncts)-2], ncts[len(ncts)-1], "%s: the cut counter's last raw value shares its last window's timestamp", key)
				ncts, ncvs = ncts[:len(ncts)-1], ncvs[:len(ncvs)-1]
			}
			testutil.Equals(t, pts, ncts, "%s: counter windows of the cut chunk %v", key, c)
			testutil.Equals(t, pvs, ncvs, "%s: counter values of the cut chunk %v", key, c)
		}
		testutil.Equals(t, 0, len(got), "%s: chunks left over", key)
		testutil.Assert(t, cut+gone > 0, "the deletion meets no chunk of %s", key)
		t.Logf("%s: of %d aggregate chunks, %d lose some windows and %d all of them, for [%s, %s]", key, len(before[key]), cut, gone, thxTime(d.start), thxTime(d.end))
		for _, c := range after[key] {
			ts, _ := thxAggrSamples(t, c, thxAggrCount)
			for _, x := range ts {
				if meets(x) {
					t.Errorf("%s: aggregate at %s (window from %s) in chunk %v summarises deleted samples [%s, %s]",
						key, thxTime(x), thxTime(x-x%thxRes5m), c, thxTime(d.start), thxTime(d.end))
				}
			}
			ts, _ = thxAggrSamples(t, c, thxAggrCounter)
			for _, x := range ts {
				if d.start <= x && x <= d.end {
					t.Errorf("%s: the counter aggregate of chunk %v holds the deleted raw sample at %s", key, c, thxTime(x))
				}
			}
		}
	}
	t.Run("deletion of whole windows cuts the aggregate chunks it meets", func(t *testing.T) {
		checkDeleted(t, keyOf(3), delA, idA)
	})
	t.Run("deletion inside the first window of an aggregate chunk cuts that window only", func(t *testing.T) {
		checkDeleted(t, keyOf(7), delB, idB)
	})

	t.Run("raw block", func(t *testing.T) {
		testutil.Assert(t, thxMarked(t, b, rawMeta.ULID, block.NoDownsampleMarkFilename), "overdue raw source %s has no no-downsample mark", rawMeta.ULID)
		all := thxSamples{}
		thxReadSamples(t, rawDir, all)
		want := thxExpected(t, all, []thxDeletion{delA, delB}, ext, math.MinInt64, math.MaxInt64)
		got := thxSamples{}
		thxReadSamples(t, filepath.Join(b.dir, rawChild.ULID.String()), got)
		testutil.Equals(t, "", thxDiff(want, got))
	})

	t.Run("thanos tools bucket verify", func(t *testing.T) {
		// index_known_issues on the two new blocks (by id); overlapped_blocks on the whole bucket
		// (it takes no ids), where Thanos' own filters see the marked sources covered.
		v := thxThanos(t, "tools", "bucket", "verify", b.conf, "--log.level=debug", "--issues=index_known_issues",
			"--id="+dsChild.ULID.String(), "--id="+rawChild.ULID.String())
		out := v.stdout + v.stderr
		testutil.Equals(t, 0, v.code, "thanos tools bucket verify --issues=index_known_issues:\n%s", out)
		for _, id := range []ulid.ULID{dsChild.ULID, rawChild.ULID} {
			testutil.Assert(t, strings.Contains(out, `msg="no issue" id=`+id.String()), "thanos verify did not pass %s:\n%s", id, out)
		}
		v2 := thxThanos(t, "tools", "bucket", "verify", b.conf, "--log.level=debug", "--issues=overlapped_blocks")
		out2 := v2.stdout + v2.stderr
		testutil.Equals(t, 0, v2.code, "thanos tools bucket verify --issues=overlapped_blocks:\n%s", out2)
		testutil.Assert(t, strings.Contains(out2, "verified issue") || strings.Contains(out2, "started verifying issue"), "thanos verify ran no check:\n%s", out2)
		for _, o := range []string{out, out2} {
			for _, bad := range []string{"detected issue", "level=warn", "level=error"} {
				testutil.Assert(t, !strings.Contains(o, bad), "thanos verify logged %q:\n%s", bad, o)
			}
		}
	})

	t.Run("thanos store gateway and querier", func(t *testing.T) {
		store, q := thxStartStoreAndQuerier(t, b)
		at := func(d time.Duration) int64 { return blockStart + d.Milliseconds() }
		rng := func(query string, from, to int64, step time.Duration, res string) thxProm {
			return thxGet(t, q, "/api/v1/query_range", url.Values{
				"query": {query}, "start": {formatPromTime(from)}, "end": {formatPromTime(to)},
				"step": {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)}, "max_source_resolution": {res},
			})
		}
		points := func(r thxProm) (n int, distinct int) {
			seen := map[string]bool{}
			for _, s := range r.Data.Result {
				for _, v := range s.Values {
					n++
					seen[fmt.Sprint(v[1])] = true
				}
			}
			return n, len(seen)
		}
		// The 5m block serves: one value per 5m window, where raw data has one per minute.
		n5, d5 := points(rng(`thx_load{user_id="4"}`, at(2*time.Hour), at(3*time.Hour), time.Minute, "5m"))
		nRaw, dRaw := points(rng(`thx_load{user_id="4"}`, at(2*time.Hour), at(3*time.Hour), time.Minute, "0s"))
		t.Logf("user 4 over [02:00, 03:00] each minute: %d points with %d distinct values at 5m, %d with %d raw", n5, d5, nRaw, dRaw)
		testutil.Equals(t, 61, n5)
		testutil.Assert(t, d5 <= 13 && dRaw >= 60, "max_source_resolution=5m does not read the 5m block: %d distinct values (raw: %d)", d5, dRaw)

		in := [2]int64{at(10*time.Hour + 20*time.Minute), at(11*time.Hour + 40*time.Minute)}
		for _, res := range []string{"5m", "0s"} {
			n, _ := points(rng(`thx_load{user_id="4"}`, in[0], in[1], 5*time.Minute, res))
			testutil.Assert(t, n > 0, "user 4 has no data in [10:20, 11:40] at %s", res)
			n, _ = points(rng(`thx_load{user_id="3"}`, in[0], in[1], 5*time.Minute, res))
			testutil.Equals(t, 0, n, "user 3's deleted window [10:20, 11:40] at resolution %s", res)
			n, _ = points(rng(`thx_load{user_id="3"}`, at(2*time.Hour), at(8*time.Hour), 5*time.Minute, res))
			testutil.Equals(t, 73, n, "user 3 outside the deleted window at resolution %s", res)
		}
		c := thxGet(t, q, "/api/v1/query", url.Values{"query": {`count(thx_load)`}, "time": {formatPromTime(at(20 * time.Hour))}, "max_source_resolution": {"5m"}})
		testutil.Equals(t, 1, len(c.Data.Result))
		testutil.Equals(t, "16", fmt.Sprint(c.Data.Result[0].Value[1]))
		// User 7's aggregate chunk that met its two deleted minutes (29:00-29:01) lost that one
		// window only: at 5m, user 7 is back right after it.
		c = thxGet(t, q, "/api/v1/query", url.Values{"query": {`count(thx_load)`}, "time": {formatPromTime(at(30 * time.Hour))}, "max_source_resolution": {"5m"}})
		testutil.Equals(t, 1, len(c.Data.Result))
		testutil.Equals(t, "16", fmt.Sprint(c.Data.Result[0].Value[1]))

		// Counter functions read the counter aggregate, which the cut emptied in user 7's chunk
		// and shortened in user 3's: Thanos answers them, with no value for those windows.
		for _, user := range []string{"3", "7"} {
			r := rng(`rate(thx_load{user_id="`+user+`"}[30m])`, at(0), at(47*time.Hour), 30*time.Minute, "5m")
			n, _ := points(r)
			t.Logf("rate of user %s at 5m over the block, each 30m: %d points", user, n)
			testutil.Assert(t, n > 0, "no rate for user %s at 5m", user)
		}

		// The store gateway sees the two marked sources (it ignores deletion marks for 24h) and its
		// deduplication filter drops them, covered by the new blocks' compaction.sources.
		testutil.Equals(t, 2.0, store.metric(t, `thanos_blocks_meta_synced{state="duplicate"}`), "blocks the store gateway dropped as covered")
		testutil.Equals(t, 2.0, store.metric(t, `thanos_blocks_meta_synced{state="loaded"}`), "blocks the store gateway loaded")

		// User 7's deleted samples must survive in no aggregate: the smallest value of the 5m
		// window that held them (min_over_time reads the min aggregate) is the raw data's.
		w := delB.start - delB.start%thxRes5m + thxRes5m - 1
		minOf := func(res string) string {
			r := thxGet(t, q, "/api/v1/query", url.Values{"query": {`min_over_time(thx_load{user_id="7"}[5m])`}, "time": {formatPromTime(w)}, "max_source_resolution": {res}})
			if len(r.Data.Result) == 0 {
				return "none"
			}
			return fmt.Sprint(r.Data.Result[0].Value[1])
		}
		min5, minRaw := minOf("5m"), minOf("0s")
		t.Logf("min_over_time(thx_load{user_id=\"7\"}[5m]) at %s: %s at 5m, %s raw", thxTime(w), min5, minRaw)
		if min5 != "none" && min5 != minRaw {
			t.Errorf("at max_source_resolution=5m, min_over_time of user 7 over (%s, %s] is %s where the raw data left gives %s: the aggregate still holds the deleted samples [%s, %s]",
				thxTime(w-thxRes5m), thxTime(w), min5, minRaw, thxTime(delB.start), thxTime(delB.end))
		}
	})

	// README: run the rewriter and a Thanos compactor side by side. Later compactor passes over
	// the rewritten raw and 5m blocks must neither fail nor leave two 5m blocks that overlap with
	// neither covering the other's sources (queriers would read both; the compactor halts on them).
	t.Run("later compactor passes", func(t *testing.T) {
		for pass := 1; pass <= 2; pass++ {
			thxCompact(t, b)
			l := thxListing(t, b)
			t.Logf("after pass %d: %v", pass, thxIDs(l))
			thxCheckNoUncoveredOverlap(t, l)
		}
	})
}

// thxStartStoreAndQuerier starts a Thanos store gateway on the bucket and a querier in front of it
// (gRPC on free 127.0.0.1 ports) and waits until the querier answers with the store's data.
func thxStartStoreAndQuerier(t *testing.T, b cliBucket) (store, query *benchProc) {
	t.Helper()
	bin := thxThanosPath(t)
	var storeGRPC string
	store = startBenchProc(t, "thanos-store", t.TempDir(), bin, func(addr string) []string {
		storeGRPC = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		return []string{"store", b.conf, "--data-dir=" + t.TempDir(), "--http-address=" + addr, "--grpc-address=" + storeGRPC,
			"--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=info"}
	})
	query = startBenchProc(t, "thanos-query", t.TempDir(), bin, func(addr string) []string {
		return []string{"query", "--http-address=" + addr, "--grpc-address=" + fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			"--endpoint=" + storeGRPC, "--http-grace-period=0s", "--grpc-grace-period=0s", "--log.level=info"}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("thanos store log (%s):\n%s\nthanos query log:\n%s", store.logFile, store.logTail(), query.logTail())
		}
	})
	deadline := time.Now().Add(thxQueryTimeout)
	for {
		select {
		case <-store.done:
			log := store.logTail()
			hint := ""
			if strings.Contains(log, "extgrpc.(*nonPoolingCodec).Marshal") {
				hint = "\nThe store gateway crashed marshalling its gRPC answer (pkg/extgrpc): Thanos v0.42.5 must be built " +
					"with -tags slicelabels, as its .promu.yml does; without it, labelpb casts Prometheus' stringlabels to " +
					"[]ZLabel and Size() reads garbage. Build the binary with that tag (tools/build.sh thanos) or point LETHE_THANOS at one."
			}
			t.Fatalf("thanos store exited (%v)%s; log:\n%s", store.waitErr, hint, log)
		default:
		}
		r := thxGet(t, query, "/api/v1/query", url.Values{"query": {`count(thx_load)`}, "time": {formatPromTime(blockStart + 30*thxHour)}, "max_source_resolution": {"5m"}})
		if len(r.Data.Result) > 0 {
			return store, query
		}
		if time.Now().After(deadline) {
			t.Fatalf("thanos query does not answer from the store gateway after %v; store log:\n%s\nquery log:\n%s", thxQueryTimeout, store.logTail(), query.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestThanosCompactorWithRewrittenBlock runs Thanos' compactor (one pass, default compaction
// levels, default delete delay) on a bucket of five adjacent 2h blocks where lethe-rewriter
// rewrote three: CONTRACT.md says that the new block's compaction.sources (the source's plus its
// own ULID) make Thanos' deduplication filter treat the source as covered, so the compactor drops
// it, neither halts on the overlap nor garbage-collects the new block. The compactor must exit 0
// and compact the new blocks into an 8h block that holds exactly the surviving samples, with none
// of the deleted samples or label values; then a pass with --delete-delay=0s deletes every
// replaced block and loses nothing. The same holds when the compactor runs while only the new
// block of the first job is in the bucket (the rewriter stopped after uploading its meta.json,
// before marking the source), and the next rewriter run finishes the work on the compacted block.
func TestThanosCompactorWithRewrittenBlock(t *testing.T) {
	thxThanosPath(t)
	const secret = "s3cr3t-thx-leak"
	ext := map[string]string{"cluster": "thx-compact"}
	tpl := thxNewBucket(t)
	var (
		sources []*block.Meta
		all     = thxSamples{}
	)
	for i := int64(0); i < 5; i++ {
		var series []labels.Labels
		for u := 0; u < 12; u++ {
			series = append(series, labels.FromStrings("__name__", "thx_requests_total", "job", "api", "user_id", strconv.Itoa(u)))
		}
		if i == 1 || i == 2 {
			series = append(series, labels.FromStrings("__name__", "thx_requests_total", "job", "api", "token", secret))
		}
		m, dir := thxUpload(t, tpl, synth.Block{Series: series, MinTime: blockStart + i*2*thxHour, MaxTime: blockStart + (i+1)*2*thxHour, Step: 60_000, External: ext})
		sources = append(sources, m)
		thxReadSamples(t, dir, all)
	}
	dels := []thxDeletion{
		{`{user_id="3"}`, blockStart + 90*60_000, blockStart + 270*60_000}, // blocks 0, 1 and 2
		{`{token="` + secret + `"}`, blockStart, blockStart + 10*thxHour},  // blocks 1 and 2, whole series
	}
	for _, d := range dels {
		thxTombstone(t, tpl, d)
	}
	want := thxExpected(t, all, dels, ext, math.MinInt64, math.MaxInt64)
	testutil.Assert(t, want.count() < all.count(), "the deletions delete nothing")
	rewritten := sources[:3] // the blocks with deleted samples
	eightHours := blockStart + 8*thxHour

	// checkLive checks that the live blocks hold exactly wantNow, with no sample twice and no byte
	// of the secret when it must be gone, and returns the live 8h block.
	checkLive := func(t *testing.T, b cliBucket, wantNow thxSamples, secretGone bool) (*block.Meta, *block.Listing) {
		t.Helper()
		l := thxListing(t, b)
		testutil.Equals(t, 2, len(l.Blocks), "live blocks: %v", thxIDs(l))
		big, last := l.Blocks[0], l.Blocks[1]
		testutil.Equals(t, [2]int64{blockStart, eightHours}, [2]int64{big.MinTime, big.MaxTime}, "the compacted block's range")
		testutil.Equals(t, sources[4].ULID, last.ULID, "the newest block (never compacted: Thanos leaves the newest block alone)")
		got, dups := thxLiveSamples(t, b, l)
		testutil.Equals(t, 0, dups, "samples held by two live blocks")
		testutil.Equals(t, "", thxDiff(wantNow, got))
		if secretGone {
			testutil.Equals(t, []string(nil), thxFilesContaining(t, b, []ulid.ULID{big.ULID, last.ULID}, secret), "live block files holding the deleted label value")
		}
		return big, l
	}

	t.Run("source marked", func(t *testing.T) {
		b := thxCopyBucket(t, tpl)
		r := thxRewriterRun(t, b)
		testutil.Equals(t, 0, r.code, "lethe-rewriter run:\n%s", thxTail(r.stderr))
		l := thxListing(t, b)
		children := map[ulid.ULID]*block.Meta{}
		for _, m := range l.Blocks {
			if rws := thxRewrites(t, m); len(rws) > 0 {
				testutil.Equals(t, 1, len(rws[0]))
				children[rws[0][0]] = m
			}
		}
		testutil.Equals(t, 3, len(children), "new blocks: %v", thxIDs(l))
		var covered []ulid.ULID
		for _, s := range rewritten {
			c := children[s.ULID]
			testutil.Assert(t, c != nil, "block %s was not rewritten", s.ULID)
			testutil.Assert(t, thxMarked(t, b, s.ULID, block.DeletionMarkFilename), "source %s is not marked", s.ULID)
			testutil.Equals(t, rewriter.RewrittenSources([]ulid.ULID{s.ULID}), c.Compaction.Sources)
			covered = append(covered, s.ULID, c.ULID)
		}
		covered = append(covered, sources[3].ULID)

		// The default delete delay (48h): the compactor's fetcher still sees the freshly marked
		// sources (it ignores marks younger than delete-delay/2), so only its deduplication filter
		// can keep them out of the plan.
		thxCompact(t, b)
		big, l := checkLive(t, b, want, true)
		testutil.Equals(t, 2, big.Compaction.Level)
		for _, id := range covered {
			thxSourcesCovered(t, b, id, big)
			testutil.Assert(t, thxMarked(t, b, id, block.DeletionMarkFilename), "block %s, compacted into %s, is not marked", id, big.ULID)
		}
		testutil.Equals(t, len(covered), len(l.Marked), "marked blocks")

		// --delete-delay=0s: the compactor deletes every marked block; nothing is lost.
		thxCompact(t, b, "--delete-delay=0s")
		checkLive(t, b, want, true)
		testutil.Equals(t, thxSorted(big.ULID, sources[4].ULID), thxBlockFolders(t, b), "block folders left")
	})

	// The control: with the sources `thanos tools bucket rewrite` writes (the new block's own ULID
	// only), the very same compactor pass fails on the overlap, which is what the test above would
	// catch.
	t.Run("control: sources of the new block's own ULID only", func(t *testing.T) {
		b := thxCopyBucket(t, tpl)
		r := thxRewriterRun(t, b)
		testutil.Equals(t, 0, r.code, "lethe-rewriter run:\n%s", thxTail(r.stderr))
		n := 0
		for _, m := range thxListing(t, b).Blocks {
			if len(thxRewrites(t, m)) == 0 {
				continue
			}
			m.Compaction.Sources = []ulid.ULID{m.ULID}
			raw, err := block.EncodeMeta(m)
			testutil.Ok(t, err)
			testutil.Ok(t, os.WriteFile(filepath.Join(b.dir, m.ULID.String(), block.MetaFilename), raw, 0o644))
			n++
		}
		testutil.Equals(t, 3, n, "new blocks")
		c := thxThanos(t, thxCompactFlags(t, b)...)
		halt := ""
		for _, line := range strings.Split(c.stderr, "\n") {
			if strings.Contains(line, "overlap") {
				halt = line
			}
		}
		t.Logf("thanos compact exits %d: %s", c.code, halt)
		testutil.Assert(t, c.code != 0 && halt != "", "thanos compact did not fail on the overlap (exit %d):\n%s", c.code, thxTail(c.stderr))
	})

	t.Run("only the child uploaded", func(t *testing.T) {
		b := thxCopyBucket(t, tpl)
		r := thxRewriterRun(t, b, "--debug.exit-at=upload-meta")
		testutil.Equals(t, 137, r.code, "lethe-rewriter run --debug.exit-at=upload-meta:\n%s", thxTail(r.stderr))
		l := thxListing(t, b)
		testutil.Equals(t, 6, len(l.Blocks), "live blocks: %v", thxIDs(l))
		testutil.Equals(t, 0, len(l.Marked), "marked blocks")
		var child *block.Meta
		for _, m := range l.Blocks {
			if rws := thxRewrites(t, m); len(rws) > 0 {
				testutil.Assert(t, child == nil, "two new blocks")
				child = m
			}
		}
		testutil.Assert(t, child != nil, "no new block: %v", thxIDs(l))
		testutil.Equals(t, rewriter.RewrittenSources([]ulid.ULID{sources[0].ULID}), child.Compaction.Sources)

		// The compactor meets the source and its child, both live and overlapping.
		thxCompact(t, b)
		// Only the first block's deletions are applied so far; the others are compacted as they were.
		wantNow := thxExpected(t, all, dels, ext, sources[0].MinTime, sources[0].MaxTime)
		big, _ := checkLive(t, b, wantNow, false)
		for _, id := range []ulid.ULID{sources[0].ULID, child.ULID, sources[1].ULID, sources[2].ULID, sources[3].ULID} {
			thxSourcesCovered(t, b, id, big)
			testutil.Assert(t, thxMarked(t, b, id, block.DeletionMarkFilename), "block %s, covered by %s, is not marked", id, big.ULID)
		}

		// The next rewriter run applies the rest to the compacted block.
		r = thxRewriterRun(t, b)
		testutil.Equals(t, 0, r.code, "lethe-rewriter run:\n%s", thxTail(r.stderr))
		final, _ := checkLive(t, b, want, true)
		testutil.Equals(t, [][]ulid.ULID{{big.ULID}}, thxRewrites(t, final))
		testutil.Equals(t, rewriter.RewrittenSources(big.Compaction.Sources), final.Compaction.Sources)
		testutil.Assert(t, thxMarked(t, b, big.ULID, block.DeletionMarkFilename), "the compacted block is not marked after its rewrite")

		// The compactor again, deleting what is marked: nothing is lost.
		thxCompact(t, b, "--delete-delay=0s")
		checkLive(t, b, want, true)
		testutil.Equals(t, thxSorted(final.ULID, sources[4].ULID), thxBlockFolders(t, b), "block folders left")
	})
}

// thxSourcesCovered asserts that a compacted block includes block id: every compaction source of
// id is one of its own (Thanos' compactor takes the union of its inputs' sources).
func thxSourcesCovered(t *testing.T, b cliBucket, id ulid.ULID, big *block.Meta) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(b.dir, id.String(), block.MetaFilename))
	testutil.Ok(t, err)
	m, err := block.DecodeMeta(raw)
	testutil.Ok(t, err)
	for _, s := range m.Compaction.Sources {
		testutil.Assert(t, slices.Contains(big.Compaction.Sources, s), "the compacted block %s lacks source %s of %s (sources %v)", big.ULID, s, id, big.Compaction.Sources)
	}
}
