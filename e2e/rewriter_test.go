package e2e

// End-to-end tests of lethe-rewriter: the binary, run on FILESYSTEM buckets of real blocks with
// tombstones registered by the lethe CLI, checked against a real Prometheus that got the same
// deletions through its admin API, against real Thanos tools, against an independent sample-level
// oracle, and across crashes (the hidden --debug.exit-at hook and kill -9).

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/rewriter"
)

// rwSecret is a label value only the deleted series carry: after the rewrite no byte of a live
// block may hold it.
const rwSecret = "s3cr3t-7f3a9c2e-leaked-token"

// rwExt are the external labels of the rewriter tests' blocks (Thanos blocks).
var rwExt = map[string]string{"cluster": "eu1", "replica": "a"}

// rwBatteryDeletions are the battery's deletions plus the leaked token's series, forever.
func rwBatteryDeletions() []batteryDeletion {
	return append(slices.Clone(batteryDeletions),
		batteryDeletion{"a leaked token", []string{`{token="` + rwSecret + `"}`}, math.MinInt64, math.MaxInt64})
}

// rwWriteBatteryBlocks writes the battery's three blocks plus one series that carries rwSecret.
func rwWriteBatteryBlocks(t *testing.T) []string {
	t.Helper()
	floats, value, hists, hist := batterySeries()
	secret := len(floats)
	floats = append(floats, labels.FromStrings("__name__", "leaked_token_info", "job", "api", "instance", "i-0", "token", rwSecret))
	val := func(i int, ts int64) float64 {
		if i == secret {
			return 1
		}
		return value(i, ts)
	}
	tmp := t.TempDir()
	var dirs []string
	for i := int64(0); i < batteryBlocks; i++ {
		_, dir, err := synth.Write(context.Background(), tmp, synth.Block{
			Series: floats, Value: val, Histograms: hists, Histogram: hist,
			MinTime: blockStart + i*7_200_000, MaxTime: blockStart + (i+1)*7_200_000, Step: batteryStep,
		})
		testutil.Ok(t, err)
		dirs = append(dirs, dir)
	}
	return dirs
}

// rwTemplate is a bucket ready for a run: blocks and due tombstones. Tests copy it, so that runs
// on the copies name the same blocks and tombstones.
type rwTemplate struct {
	bucket   cliBucket
	dirs     []string
	blocks   []string // source ULIDs, in time order
	dels     []batteryDeletion
	tombs    []string // tombstone ids, in the order of dels
	original rwSamples
	want     rwSamples // what must survive
}

// rwSmallDeletions: one job per block, with whole series, partial ranges, a block boundary, a
// native histogram and a series that leaves one block entirely.
func rwSmallDeletions() []batteryDeletion {
	return []batteryDeletion{
		{"the leaked token", []string{`{token="` + rwSecret + `"}`}, math.MinInt64, math.MaxInt64},
		{"one user across a block boundary", []string{`{user_id="3"}`}, bt(90 * time.Minute), bt(150 * time.Minute)},
		{"a native histogram's short window", []string{`request_latency_seconds{instance="i-1"}`}, bt(4*time.Hour + 7500*time.Millisecond), bt(4*time.Hour + 20*time.Minute)},
		{"a gauge for one whole block", []string{`memory_bytes{instance="i-2"}`}, bt(2 * time.Hour), bt(4*time.Hour) - 1},
	}
}

// rwNewSmallTemplate writes three 2h Thanos blocks of 40 users, 3 gauges, the leaked token and
// two native histograms, a sample a minute, and registers rwSmallDeletions due and overdue.
func rwNewSmallTemplate(t *testing.T) rwTemplate {
	t.Helper()
	var series []labels.Labels
	for u := 0; u < 40; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
	}
	for i := 0; i < 3; i++ {
		series = append(series, labels.FromStrings("__name__", "memory_bytes", "job", "api", "instance", fmt.Sprintf("i-%d", i)))
	}
	series = append(series, labels.FromStrings("__name__", "leaked_token_info", "job", "api", "token", rwSecret))
	hists := []labels.Labels{
		labels.FromStrings("__name__", "request_latency_seconds", "job", "api", "instance", "i-0"),
		labels.FromStrings("__name__", "request_latency_seconds", "job", "api", "instance", "i-1"),
	}
	tmp := t.TempDir()
	tp := rwTemplate{bucket: rwNewBucket(t), dels: rwSmallDeletions()}
	for i := int64(0); i < 3; i++ {
		_, dir, err := synth.Write(context.Background(), tmp, synth.Block{
			Series: series, Histograms: hists,
			MinTime: blockStart + i*7_200_000, MaxTime: blockStart + (i+1)*7_200_000, Step: 60_000,
		})
		testutil.Ok(t, err)
		tp.dirs = append(tp.dirs, dir)
	}
	for _, id := range rwUpload(t, tp.bucket, tp.dirs, rwExt) {
		tp.blocks = append(tp.blocks, id.String())
	}
	for _, d := range tp.dels {
		tp.tombs = append(tp.tombs, rwAddTombstone(t, tp.bucket, d))
	}
	tp.original = rwSamplesOfDirs(t, tp.dirs)
	tp.want = rwExpectedAfter(t, tp.original, tp.dels, rwExt)
	return tp
}

// rwFinal is what a finished run leaves, to compare runs.
type rwFinal struct {
	live, marked []string
	samples      rwSamples
}

func rwFinalOf(st rwState) rwFinal {
	return rwFinal{live: st.liveIDs(), marked: st.markedIDs(), samples: st.samples}
}

// rwCheckFinal compares a finished bucket with the uninterrupted run's.
func rwCheckFinal(t *testing.T, b cliBucket, want rwFinal) {
	t.Helper()
	st := rwReadState(t, b)
	testutil.Equals(t, want.live, st.liveIDs(), "live blocks")
	testutil.Equals(t, want.marked, st.markedIDs(), "blocks marked for deletion")
	testutil.Equals(t, "", rwDiffSamples(want.samples, st.samples))
	testutil.Equals(t, 0, st.dups, "samples held by two live blocks")
	testutil.Equals(t, 0, len(st.listing.Problems), "problems: %v", st.listing.Problems)
	testutil.Equals(t, []string(nil), st.partial, "block folders without meta.json left behind")
	rwCheckBlocksComplete(t, b)
	rwCheckNoUncoveredOverlap(t, st.listing)
}

// rwCheckCrashInvariants checks a bucket a crashed run left: every sample that survives the
// deletions is still readable from the live blocks, no live sample is one that never existed, no
// two live blocks overlap unless Thanos' dedup rule covers one with the other, and every block
// with meta.json is complete.
func rwCheckCrashInvariants(t *testing.T, b cliBucket, tp rwTemplate) rwState {
	t.Helper()
	st := rwReadState(t, b)
	// want ⊆ live samples ⊆ original.
	missing := tp.want.notIn(st.samples)
	testutil.Equals(t, 0, missing.count(), "surviving samples not readable after the crash: %s", rwDiffSamples(missing, rwSamples{}))
	extra := st.samples.notIn(tp.original)
	testutil.Equals(t, 0, extra.count(), "live samples that were never written: %s", rwDiffSamples(rwSamples{}, extra))
	rwCheckNoUncoveredOverlap(t, st.listing)
	rwCheckBlocksComplete(t, b)
	// A folder without meta.json is never a block: block.List reports it as a problem.
	for _, p := range st.partial {
		for _, m := range st.listing.Blocks {
			testutil.Assert(t, m.ULID.String() != p, "partial block %s listed as a block", p)
		}
	}
	return st
}

// rwChildrenOf maps each source ULID to the live block rewritten from it.
func rwChildrenOf(t *testing.T, l *block.Listing) map[string]*block.Meta {
	t.Helper()
	out := map[string]*block.Meta{}
	for _, m := range l.Blocks {
		if len(m.Compaction.Parents) == 1 && m.Compaction.Parents[0].ULID != m.ULID {
			out[m.Compaction.Parents[0].ULID.String()] = m
		}
	}
	return out
}

// TestRewriterMatchesPrometheusCleanTombstones rewrites the battery's blocks (counters, gauges,
// classic and native histograms, plus a series carrying a secret) with the battery's deletions
// applied, and compares a fresh Prometheus on the surviving blocks with an oracle Prometheus that
// got the same deletions through delete_series + clean_tombstones: every instant and range query,
// series and label look-up of the battery must answer exactly the same.
func TestRewriterMatchesPrometheusCleanTombstones(t *testing.T) {
	began := time.Now()
	dels := rwBatteryDeletions()
	dirs := rwWriteBatteryBlocks(t)
	b := rwNewBucket(t)
	sources := rwUpload(t, b, dirs, rwExt)
	var tombs []string
	for _, d := range dels {
		tombs = append(tombs, rwAddTombstone(t, b, d))
	}

	p := b.rewriterPlan(t)
	sortedTombs := slices.Sorted(slices.Values(tombs))
	testutil.Equals(t, sortedTombs, p.Due)
	testutil.Equals(t, []string{}, p.Problems)
	testutil.Equals(t, batteryBlocks, len(p.Jobs), "jobs: %+v", p.Jobs)
	jobTombs := map[string][]string{}
	for _, j := range p.Jobs {
		testutil.Equals(t, "rewrite", j.Decision, "job %s", j.Block)
		testutil.Assert(t, j.Overdue, "job %s not overdue", j.Block)
		jobTombs[j.Block] = j.Tombstones
	}

	r := b.rewriter(t, "run")
	testutil.Equals(t, 0, r.code, "run: %s", r.stderr)
	t.Logf("rewriter run done at %v", time.Since(began).Round(time.Millisecond))

	st := rwReadState(t, b)
	var srcIDs []string
	for _, id := range sources {
		srcIDs = append(srcIDs, id.String())
	}
	sort.Strings(srcIDs)
	testutil.Equals(t, srcIDs, st.markedIDs(), "the sources are marked for deletion")
	testutil.Equals(t, batteryBlocks, len(st.listing.Blocks))
	testutil.Equals(t, 0, len(st.listing.Problems))
	testutil.Equals(t, 0, st.dups)

	// Sample by sample, against an oracle independent of any lethe or Prometheus deletion code.
	original := rwSamplesOfDirs(t, dirs)
	want := rwExpectedAfter(t, original, dels, rwExt)
	testutil.Assert(t, want.count() < original.count(), "the deletions delete nothing")
	testutil.Equals(t, "", rwDiffSamples(want, st.samples))
	t.Logf("%d of %d samples survive the %d deletions", want.count(), original.count(), len(dels))

	// meta.json of the new blocks.
	children := rwChildrenOf(t, st.listing)
	testutil.Equals(t, batteryBlocks, len(children))
	for src, m := range children {
		raw, err := os.ReadFile(filepath.Join(b.dir, m.ULID.String(), block.MetaFilename))
		testutil.Ok(t, err)
		testutil.Assert(t, m.Thanos != nil, "child %s has no thanos section", m.ULID)
		testutil.Equals(t, rwExt, m.Thanos.Labels)
		testutil.Assert(t, slices.Contains(rwIDs(m.Compaction.Sources), src), "child %s: sources %v lack %s", m.ULID, m.Compaction.Sources, src)
		testutil.Equals(t, rewriter.RewrittenSources(ulidsOf(t, src)), m.Compaction.Sources, "child %s", m.ULID)
		var rewrites []struct {
			Sources          []string `json:"sources"`
			DeletionsApplied []struct {
				Matchers  []string `json:"matchers"`
				RequestID string   `json:"request_id"`
			} `json:"deletions_applied"`
		}
		testutil.Ok(t, json.Unmarshal(m.Thanos.Rewrites, &rewrites), "thanos.rewrites of %s: %s", m.ULID, m.Thanos.Rewrites)
		testutil.Equals(t, 1, len(rewrites))
		testutil.Equals(t, []string{src}, rewrites[0].Sources)
		var applied []string
		for _, d := range rewrites[0].DeletionsApplied {
			testutil.Equals(t, 0, len(d.Matchers), "child %s: thanos.rewrites holds matchers %v", m.ULID, d.Matchers)
			id, ok := strings.CutPrefix(d.RequestID, "lethe-tombstone-")
			testutil.Assert(t, ok, "request_id %q", d.RequestID)
			applied = append(applied, id)
		}
		sort.Strings(applied)
		testutil.Equals(t, jobTombs[src], applied, "child %s applied", m.ULID)
		for _, d := range dels {
			for _, sel := range d.matchers {
				testutil.Assert(t, !strings.Contains(string(raw), sel), "meta.json of %s holds the matcher %s", m.ULID, sel)
			}
		}
		testutil.Assert(t, !strings.Contains(string(raw), rwSecret), "meta.json of %s holds the secret", m.ULID)
		// Stats agree with what the block holds.
		own := rwSamples{}
		rwReadBlockSamples(t, filepath.Join(b.dir, m.ULID.String()), own)
		testutil.Equals(t, uint64(own.count()), m.Stats.NumSamples, "child %s: numSamples", m.ULID)
		testutil.Equals(t, uint64(len(own)), m.Stats.NumSeries, "child %s: numSeries", m.ULID)
	}

	// No byte of a surviving block holds a label value only deleted series carried; the replaced
	// blocks (still there until the delete delay) do, which shows the scan can find it.
	for _, secret := range []string{rwSecret, "/admin"} {
		hits, scanned := rwObjectsContaining(t, b, st.listing, secret)
		testutil.Assert(t, scanned >= 3*batteryBlocks, "scanned only %d objects", scanned)
		testutil.Equals(t, []string(nil), hits, "objects of live blocks holding %q", secret)
		found := false
		for _, id := range srcIDs {
			c, err := os.ReadFile(filepath.Join(b.dir, id, block.IndexFilename))
			testutil.Ok(t, err)
			found = found || strings.Contains(string(c), secret)
		}
		testutil.Assert(t, found, "control: the source blocks' indexes do not hold %q", secret)
	}

	// A fresh Prometheus on the live blocks, downloaded from the bucket, against the oracle.
	var liveDirs []string
	for _, m := range st.listing.Blocks {
		liveDirs = append(liveDirs, filepath.Join(b.dir, m.ULID.String()))
	}
	fresh := startPrometheus(t, liveDirs)
	oracle := startOracle(t, dirs, dels)
	t.Logf("fresh and oracle Prometheus ready at %v", time.Since(began).Round(time.Millisecond))

	status, body := fresh.Get(t, "/api/v1/label/token/values", nil)
	testutil.Equals(t, []string{}, stringsData(t, status, body))

	n, byKind, mismatches := rwComparePrometheus(t, oracle, fresh, batteryCases())
	t.Logf("%d comparisons (%v) in total %v; %d mismatches", n, byKind, time.Since(began).Round(time.Millisecond), len(mismatches))
	if len(mismatches) > 0 {
		show := mismatches
		if len(show) > 25 {
			show = show[:25]
		}
		t.Errorf("%d of %d answers of the fresh Prometheus on the rewritten blocks differ from the oracle's:\n%s", len(mismatches), n, strings.Join(show, "\n"))
	}
}

// rwComparePrometheus sends every case (as GET) to both servers and returns the differing answers,
// described.
func rwComparePrometheus(t *testing.T, oracle, got *prometheusProc, cases []batteryCase) (int, map[string]int, []string) {
	t.Helper()
	cl := batteryClient{client: &http.Client{Timeout: time.Minute}}
	var (
		mu         sync.Mutex
		mismatches []string
		byKind     = map[string]int{}
		n          int
		wg         sync.WaitGroup
		work       = make(chan batteryCase)
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				s, b, err := cl.do(oracle.URL, c, false)
				want := normalizeAnswer(t, s, b, err)
				s, b, err = cl.do(got.URL, c, false)
				have := normalizeAnswer(t, s, b, err)
				mu.Lock()
				n++
				byKind[c.kind]++
				if want != have {
					o, h := focus(want, have)
					mismatches = append(mismatches, fmt.Sprintf("%s %s\n  oracle: %s\n  fresh:  %s", c.kind, c, clip(o, 600), clip(h, 600)))
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
	sort.Strings(mismatches)
	return n, byKind, mismatches
}

// TestRewriterThanosVerify checks the rewritten blocks with Thanos' own tools: `thanos tools
// bucket verify` finds no index issue in them and no overlap or duplicated compaction in the
// bucket, and `thanos tools bucket inspect` lists them with their external labels and stats.
func TestRewriterThanosVerify(t *testing.T) {
	rwThanosPath(t) // fail early without the binary
	tp := rwNewSmallTemplate(t)
	b := tp.bucket
	r := b.rewriter(t, "run")
	testutil.Equals(t, 0, r.code, "run: %s", r.stderr)
	st := rwReadState(t, b)
	children := rwChildrenOf(t, st.listing)
	testutil.Equals(t, len(tp.blocks), len(children))
	var newIDs []string
	for _, m := range children {
		newIDs = append(newIDs, m.ULID.String())
	}
	sort.Strings(newIDs)

	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + b.dir + "}"
	args := []string{"tools", "bucket", "verify", conf, "--log.level=debug", "--issues=index_known_issues"}
	for _, id := range newIDs {
		args = append(args, "--id="+id)
	}
	v := rwRunThanos(t, args...)
	out := v.stdout + v.stderr
	testutil.Equals(t, 0, v.code, "thanos %v:\n%s", args, out)
	testutil.Assert(t, !strings.Contains(out, "detected issue"), "thanos verify index_known_issues found an issue:\n%s", out)
	for _, id := range newIDs {
		testutil.Assert(t, strings.Contains(out, `msg="no issue" id=`+id), "thanos verify did not check %s:\n%s", id, out)
	}
	testutil.Assert(t, !strings.Contains(out, "level=warn") && !strings.Contains(out, "level=error"), "thanos verify warned:\n%s", out)

	// Overlaps and duplicated compactions are checked over the whole bucket (the marked sources
	// are filtered out by Thanos, as its compactor does).
	v = rwRunThanos(t, "tools", "bucket", "verify", conf, "--log.level=debug", "--issues=overlapped_blocks", "--issues=duplicated_compaction")
	out = v.stdout + v.stderr
	testutil.Equals(t, 0, v.code, "thanos verify:\n%s", out)
	testutil.Assert(t, !strings.Contains(out, "level=warn") && !strings.Contains(out, "level=error"), "thanos verify overlapped_blocks/duplicated_compaction warned:\n%s", out)
	testutil.Assert(t, strings.Contains(out, "verified issue") || strings.Contains(out, "started verifying issue"), "thanos verify ran no check:\n%s", out)

	in := rwRunThanos(t, "tools", "bucket", "inspect", conf, "--output=csv")
	testutil.Equals(t, 0, in.code, "thanos inspect:\n%s%s", in.stdout, in.stderr)
	rows, err := csv.NewReader(strings.NewReader(in.stdout)).ReadAll()
	testutil.Ok(t, err, "inspect csv: %s", in.stdout)
	testutil.Assert(t, len(rows) > 1, "inspect listed nothing: %s", in.stdout)
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, h := range []string{"ULID", "LABELS", "#SERIES", "#SAMPLES"} {
		_, ok := col[h]
		testutil.Assert(t, ok, "inspect has no %s column: %v", h, rows[0])
	}
	byID := map[string][]string{}
	for _, row := range rows[1:] {
		byID[row[col["ULID"]]] = row
	}
	for _, m := range children {
		row, ok := byID[m.ULID.String()]
		testutil.Assert(t, ok, "thanos inspect does not list %s:\n%s", m.ULID, in.stdout)
		testutil.Equals(t, "cluster=eu1,replica=a", row[col["LABELS"]], "labels of %s", m.ULID)
		testutil.Equals(t, fmt.Sprint(m.Stats.NumSeries), strings.ReplaceAll(row[col["#SERIES"]], ",", ""), "series of %s", m.ULID)
		testutil.Equals(t, fmt.Sprint(m.Stats.NumSamples), strings.ReplaceAll(row[col["#SAMPLES"]], ",", ""), "samples of %s", m.ULID)
	}
	t.Logf("thanos inspect:\n%s", in.stdout)
}

// TestRewriterCrashAtEveryPhase crashes the rewriter right after each phase (the hidden
// --debug.exit-at hook), and with kill -9 at random moments, checks what every crash leaves, and
// that a rerun ends where an uninterrupted run ends.
func TestRewriterCrashAtEveryPhase(t *testing.T) {
	tp := rwNewSmallTemplate(t)

	ref := rwCopyBucket(t, tp.bucket)
	r := ref.rewriter(t, "run")
	testutil.Equals(t, 0, r.code, "uninterrupted run: %s", r.stderr)
	refState := rwReadState(t, ref)
	want := rwFinalOf(refState)
	testutil.Equals(t, "", rwDiffSamples(tp.want, want.samples), "the uninterrupted run")
	testutil.Equals(t, tp.blocks, want.marked)
	children := rwChildrenOf(t, refState.listing)
	testutil.Equals(t, len(tp.blocks), len(children))
	first := children[tp.blocks[0]].ULID.String() // the first job's new block

	for _, tc := range []struct {
		phase string
		args  []string
		// after checks the crashed bucket against the first job's source and new block.
		after func(t *testing.T, st rwState)
		// tamper changes the crashed bucket before the rerun.
		tamper func(t *testing.T, b cliBucket)
	}{
		{phase: "download", after: func(t *testing.T, st rwState) {
			testutil.Equals(t, tp.blocks, st.liveIDs(), "nothing uploaded yet")
		}},
		// A checkpoint saved while streaming the first block, with no time budget.
		{phase: "checkpoint", args: []string{"--checkpoint.interval=1ns", "--batch.series=2"}, after: func(t *testing.T, st rwState) {
			testutil.Equals(t, tp.blocks, st.liveIDs(), "nothing uploaded yet")
		}},
		{phase: "rewrite", after: func(t *testing.T, st rwState) {
			testutil.Equals(t, tp.blocks, st.liveIDs(), "nothing uploaded yet")
		}},
		{phase: "upload-meta", after: func(t *testing.T, st rwState) {
			testutil.Equals(t, slices.Sorted(slices.Values(append(slices.Clone(tp.blocks), first))), st.liveIDs(), "new block uploaded, source not yet marked")
		}},
		{phase: "mark", after: func(t *testing.T, st rwState) {
			testutil.Equals(t, []string{tp.blocks[0]}, st.markedIDs())
		}},
		// A kill during the upload leaves the new block's chunks and index without meta.json: made
		// here by hand, with no lease left behind (as after the crashed run's lease expired).
		{phase: "", tamper: func(t *testing.T, b cliBucket) {
			src := filepath.Join(ref.dir, first)
			dst := filepath.Join(b.dir, first)
			testutil.Ok(t, os.CopyFS(filepath.Join(dst, block.ChunksDirname), os.DirFS(filepath.Join(src, block.ChunksDirname))))
			raw, err := os.ReadFile(filepath.Join(src, block.IndexFilename))
			testutil.Ok(t, err)
			testutil.Ok(t, os.WriteFile(filepath.Join(dst, block.IndexFilename), raw, 0o644))
			st := rwCheckCrashInvariants(t, b, tp)
			testutil.Equals(t, []string{first}, st.partial)
		}},
	} {
		name := tc.phase
		if tc.tamper != nil {
			name = "upload (partial new block)"
		}
		t.Run(name, func(t *testing.T) {
			b := rwCopyBucket(t, tp.bucket)
			if tc.phase != "" {
				r := b.rewriter(t, "run", append([]string{"--debug.exit-at=" + tc.phase}, tc.args...)...)
				testutil.Equals(t, 137, r.code, "run --debug.exit-at=%s: %s", tc.phase, r.stderr)
				tc.after(t, rwCheckCrashInvariants(t, b, tp))
			}
			if tc.args != nil {
				r := b.rewriter(t, "run", tc.args...)
				testutil.Assert(t, strings.Contains(r.stderr, "resuming from a checkpoint"), "the rerun did not resume: %s", r.stderr)
				rwCheckRerun(t, r)
				rwCheckFinal(t, b, want)
				return
			}
			if tc.tamper != nil {
				tc.tamper(t, b)
			}
			r := b.rewriter(t, "run")
			rwCheckRerun(t, r)
			rwCheckFinal(t, b, want)
		})
	}

	t.Run("kill -9", func(t *testing.T) {
		b := rwCopyBucket(t, tp.bucket)
		rng := rand.New(rand.NewPCG(20261124, 7))
		tmp := t.TempDir()
		for i := 0; i < 6; i++ {
			delay := 150*time.Millisecond + time.Duration(rng.Int64N(int64(1800*time.Millisecond)))
			cmd := exec.Command(binaries.rewriter, b.conf, "run", "--tmp.dir", tmp, "--rate.series-per-second=40", "--batch.series=1", "--checkpoint.interval=100ms")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			testutil.Ok(t, cmd.Start())
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			ended := false
			select {
			case err := <-done:
				ended = true
				t.Logf("kill #%d: the run ended by itself before %v: %v", i, delay, err)
			case <-time.After(delay):
				testutil.Ok(t, cmd.Process.Kill())
				<-done
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			t.Logf("kill #%d after %v; last log line: %s", i, delay, clip(lines[len(lines)-1], 300))
			st := rwCheckCrashInvariants(t, b, tp)
			t.Logf("kill #%d: live %d, marked %d, partial %v", i, len(st.listing.Blocks), len(st.listing.Marked), st.partial)
			if ended && cmd.ProcessState.ExitCode() == 0 && !slices.Equal(want.live, st.liveIDs()) {
				t.Errorf("kill #%d: a run exited 0 (done) with jobs left: live blocks %v, want %v; skipped: %s",
					i, st.liveIDs(), want.live, rwGrep(stderr.String(), "skipping"))
			}
		}
		r := b.rewriter(t, "run")
		rwCheckRerun(t, r)
		rwCheckFinal(t, b, want)
	})
}

// rwCheckRerun checks the run after a crash: it finishes the crashed run's work and exits 0.
func rwCheckRerun(t *testing.T, r result) {
	t.Helper()
	if skipped := rwGrep(r.stderr, "leased by another worker"); skipped != "" {
		t.Errorf("the rerun skipped blocks leased by the crashed (dead) run, and exited %d:\n%s", r.code, skipped)
	}
	if r.code != 0 {
		t.Errorf("the rerun after the crash exited %d, want 0; bad blocks: %s", r.code, rwGrep(r.stderr, "bad block"))
	}
}

// rwGrep returns the lines of s that contain sub.
func rwGrep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, clip(l, 400))
		}
	}
	return strings.Join(out, "\n")
}

// rwByteSlice is an index file in memory, for index.NewTOCFromByteSlice.
type rwByteSlice []byte

func (b rwByteSlice) Len() int                    { return len(b) }
func (b rwByteSlice) Range(start, end int) []byte { return b[start:end] }

// TestRewriterExitCodesAndDryRun checks the exit statuses of CONTRACT.md and what each run leaves.
func TestRewriterExitCodesAndDryRun(t *testing.T) {
	tp := rwNewSmallTemplate(t)

	t.Run("nothing due", func(t *testing.T) {
		b := rwNewBucket(t)
		rwUpload(t, b, tp.dirs, rwExt)
		empty := b.snapshot(t)
		r := b.rewriter(t, "run")
		testutil.Equals(t, 0, r.code, "no tombstones: %s", r.stderr)
		testutil.Equals(t, empty, b.snapshot(t))

		// A tombstone inside its undelete window (the default 24h) is not due.
		rwAddTombstone(t, b, tp.dels[0], []string{}...)
		before := b.snapshot(t)
		p := b.rewriterPlan(t)
		testutil.Equals(t, []string{}, p.Due)
		testutil.Equals(t, 0, len(p.Jobs))
		r = b.rewriter(t, "run")
		testutil.Equals(t, 0, r.code, "pending tombstone: %s", r.stderr)
		testutil.Equals(t, before, b.snapshot(t))
	})

	t.Run("dry run", func(t *testing.T) {
		b := rwCopyBucket(t, tp.bucket)
		before := b.snapshot(t)
		r := b.rewriter(t, "run", "--dry-run")
		testutil.Equals(t, 0, r.code, "dry run: %s", r.stderr)
		testutil.Equals(t, before, b.snapshot(t))
		testutil.Assert(t, strings.Contains(r.stderr, `"rewrite":3`), "dry run does not log the plan: %s", r.stderr)
	})

	t.Run("plan json", func(t *testing.T) {
		b := rwCopyBucket(t, tp.bucket)
		before := b.snapshot(t)
		p := b.rewriterPlan(t)
		testutil.Equals(t, slices.Sorted(slices.Values(tp.tombs)), p.Due)
		testutil.Equals(t, []string{}, p.Problems)
		testutil.Equals(t, len(tp.blocks), len(p.Jobs))
		want := map[string][]string{ // block → the tombstones with data in it
			tp.blocks[0]: {tp.tombs[0], tp.tombs[1]},
			tp.blocks[1]: {tp.tombs[0], tp.tombs[1], tp.tombs[3]},
			tp.blocks[2]: {tp.tombs[0], tp.tombs[2]},
		}
		for i, j := range p.Jobs {
			testutil.Equals(t, tp.blocks[i], j.Block)
			testutil.Equals(t, "rewrite", j.Decision)
			testutil.Equals(t, "a tombstone's deadline has passed", j.Reason)
			testutil.Assert(t, j.Overdue)
			testutil.Equals(t, slices.Sorted(slices.Values(want[j.Block])), j.Tombstones, "tombstones of %s", j.Block)
			testutil.Equals(t, blockStart+int64(i)*7_200_000, j.MinTime)
			testutil.Assert(t, j.DeletedShare > 0 && j.DeletedShare < 0.2, "deleted share %v", j.DeletedShare)
		}
		table := b.rewriter(t, "plan")
		testutil.Equals(t, 0, table.code, table.stderr)
		testutil.Assert(t, strings.HasPrefix(table.stdout, "BLOCK "), table.stdout)
		for _, id := range tp.blocks {
			testutil.Assert(t, strings.Contains(table.stdout, id), "table lacks %s: %s", id, table.stdout)
		}
		testutil.Equals(t, before, b.snapshot(t), "plan wrote to the bucket")
	})

	t.Run("corrupt index", func(t *testing.T) {
		b := rwCopyBucket(t, tp.bucket)
		bad := tp.blocks[1]
		name := filepath.Join(b.dir, bad, block.IndexFilename)
		raw, err := os.ReadFile(name)
		testutil.Ok(t, err)
		toc, err := index.NewTOCFromByteSlice(rwByteSlice(raw))
		testutil.Ok(t, err)
		for i := toc.Series; i < toc.LabelIndices; i++ {
			raw[i] = 0xff
		}
		testutil.Ok(t, os.WriteFile(name, raw, 0o644))
		before := b.snapshot(t)

		r := b.rewriter(t, "run")
		testutil.Equals(t, 4, r.code, "run with a corrupt block: %s", r.stderr)
		testutil.Assert(t, strings.Contains(r.stderr, bad), "the logs do not name the bad block %s: %s", bad, r.stderr)
		after := b.snapshot(t)
		var added []string
		for k, v := range before {
			if strings.HasPrefix(k, "/"+bad+"/") {
				testutil.Equals(t, v, after[k], "object %s of the bad block changed", k)
			}
		}
		for k := range after {
			if _, ok := before[k]; !ok && strings.HasPrefix(k, "/"+bad+"/") {
				added = append(added, k)
			}
		}
		testutil.Equals(t, []string(nil), added, "objects added to the bad block")
		bkt := rwListing(t, b)
		testutil.Equals(t, []string{tp.blocks[0], tp.blocks[2]}, rwIDs(bkt.Marked))
		var live []string
		for _, m := range bkt.Blocks {
			live = append(live, m.ULID.String())
		}
		testutil.Assert(t, slices.Contains(live, bad), "the bad block is no longer live: %v", live)
		testutil.Equals(t, 3, len(live))
	})

	t.Run("time budget", func(t *testing.T) {
		b := rwCopyBucket(t, tp.bucket)
		r := b.rewriter(t, "run", "--rate.series-per-second=20", "--batch.series=1", "--time-budget=700ms")
		testutil.Equals(t, 3, r.code, "run with a tiny budget: %s", r.stderr)
		st := rwCheckCrashInvariants(t, b, tp)
		testutil.Assert(t, len(st.listing.Marked) < len(tp.blocks), "the budget stopped nothing: %v", st.markedIDs())
		r = b.rewriter(t, "run")
		testutil.Equals(t, 0, r.code, "the next run: %s", r.stderr)
		st = rwReadState(t, b)
		testutil.Equals(t, tp.blocks, st.markedIDs())
		testutil.Equals(t, "", rwDiffSamples(tp.want, st.samples))
		testutil.Equals(t, []string(nil), st.partial)
	})

	t.Run("threshold", func(t *testing.T) {
		b := rwNewBucket(t)
		ids := rwUpload(t, b, writePromBlocks(t, 1, 100, time.Minute), rwExt)
		// One user of 100 for the whole block: about 1% of the samples; due, deadline in 14 days.
		id := rwAddTombstone(t, b, batteryDeletion{"one user", []string{`{user_id="7"}`}, math.MinInt64, math.MaxInt64}, "--undelete-window", "0s")
		p := b.rewriterPlan(t)
		testutil.Equals(t, []string{id}, p.Due)
		testutil.Equals(t, 1, len(p.Jobs))
		j := p.Jobs[0]
		testutil.Equals(t, ids[0].String(), j.Block)
		testutil.Equals(t, "skip", j.Decision)
		testutil.Assert(t, !j.Overdue)
		testutil.Assert(t, j.DeletedShare > 0.005 && j.DeletedShare < 0.02, "deleted share %v", j.DeletedShare)
		before := b.snapshot(t)
		r := b.rewriter(t, "run")
		testutil.Equals(t, 0, r.code, r.stderr)
		testutil.Equals(t, before, b.snapshot(t), "a skipped block was touched")

		// Under a lower threshold the same block is rewritten.
		p = b.rewriterPlan(t, "--threshold", "0.005")
		testutil.Equals(t, "rewrite", p.Jobs[0].Decision)
		r = b.rewriter(t, "run", "--threshold", "0.005")
		testutil.Equals(t, 0, r.code, r.stderr)
		testutil.Equals(t, []string{ids[0].String()}, rwIDs(rwListing(t, b).Marked))
	})
}

func rwListing(t *testing.T, b cliBucket) *block.Listing {
	t.Helper()
	bkt, err := filesystem.NewBucket(b.dir)
	testutil.Ok(t, err)
	l, err := block.List(context.Background(), bkt)
	testutil.Ok(t, err)
	return l
}

func rwIDs[T interface{ String() string }](ids []T) []string {
	out := []string{}
	for _, id := range ids {
		out = append(out, id.String())
	}
	sort.Strings(out)
	return out
}

// ulidsOf parses ULIDs.
func ulidsOf(t *testing.T, ids ...string) []ulid.ULID {
	t.Helper()
	out := make([]ulid.ULID, 0, len(ids))
	for _, id := range ids {
		out = append(out, ulid.MustParseStrict(id))
	}
	return out
}
