package e2e

// Helpers of the lethe-rewriter end-to-end tests (rewriter_test.go): buckets of real blocks,
// tombstones registered through the lethe CLI, the rewriter and Thanos run as processes, and the
// bucket's state read back with Prometheus' own tsdb package.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
)

// rwFarEnd is the explicit end of the tombstones with an open end: far past every test block.
const rwFarEnd = blockStart + 400*24*3_600_000

// rwDueFlags make a tombstone due and overdue the moment it is written.
var rwDueFlags = []string{"--undelete-window", "0s", "--max-wait", "0s"}

// rwNewBucket returns an empty FILESYSTEM bucket in a new directory.
func rwNewBucket(t *testing.T) cliBucket {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bucket")
	testutil.Ok(t, os.MkdirAll(dir, 0o755))
	return cliBucket{dir: dir, conf: "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"}
}

// rwCopyBucket copies a bucket (blocks, tombstones, everything) into a new directory: the same
// block and tombstone ULIDs, so that two runs on two copies can be compared block for block.
func rwCopyBucket(t *testing.T, src cliBucket) cliBucket {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "bucket")
	testutil.Ok(t, os.CopyFS(dst, os.DirFS(src.dir)))
	return cliBucket{dir: dst, conf: "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dst + "}"}
}

// rwUpload uploads block directories written by synth.Write as Thanos blocks with external labels
// ext (nil: plain Prometheus blocks) and returns their ULIDs.
func rwUpload(t *testing.T, b cliBucket, dirs []string, ext map[string]string) []ulid.ULID {
	t.Helper()
	bkt, err := filesystem.NewBucket(b.dir)
	testutil.Ok(t, err)
	var ids []ulid.ULID
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, block.MetaFilename))
		testutil.Ok(t, err)
		meta, err := block.DecodeMeta(raw)
		testutil.Ok(t, err)
		if ext != nil {
			meta.Thanos = &block.Thanos{Version: 1, Labels: ext, Source: "sidecar"}
		}
		testutil.Ok(t, block.Upload(context.Background(), bkt, dir, meta))
		ids = append(ids, meta.ULID)
	}
	return ids
}

// rwAddTombstone registers d with `lethe tombstone add` and returns its id; flags default to
// rwDueFlags.
func rwAddTombstone(t *testing.T, b cliBucket, d batteryDeletion, flags ...string) string {
	t.Helper()
	if flags == nil {
		flags = rwDueFlags
	}
	rfc := func(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }
	args := []string{"tombstone", "add", "--reason", "rewriter e2e: " + d.name, "--author", "e2e"}
	for _, m := range d.matchers {
		args = append(args, "--match", m)
	}
	if d.start != math.MinInt64 {
		args = append(args, "--start", rfc(d.start))
	}
	end := d.end
	if end == math.MaxInt64 {
		end = rwFarEnd
	}
	args = append(args, "--end", rfc(end))
	r := b.run(t, append(args, flags...)...)
	testutil.Equals(t, 0, r.code, "lethe %v: %s", args, r.stderr)
	id := strings.TrimSpace(r.stdout)
	_, err := ulid.ParseStrict(id)
	testutil.Ok(t, err, "lethe tombstone add printed %q", r.stdout)
	return id
}

// rewriter runs lethe-rewriter on the bucket: sub is plan or run; run gets its own --tmp.dir.
func (b cliBucket) rewriter(t *testing.T, sub string, args ...string) result {
	t.Helper()
	full := []string{b.conf, sub}
	if sub == "run" {
		full = append(full, "--tmp.dir", t.TempDir())
	}
	return rwRunRewriter(t, append(full, args...)...)
}

func rwRunRewriter(t *testing.T, args ...string) result {
	t.Helper()
	return runBinary(t, binaries.rewriter, 2*time.Minute, nil, args...)
}

// rwPlan is `lethe-rewriter plan --output json`.
type rwPlan struct {
	Jobs []struct {
		Block          string   `json:"block"`
		MinTime        int64    `json:"min_time"`
		MaxTime        int64    `json:"max_time"`
		Resolution     int64    `json:"resolution"`
		Tombstones     []string `json:"tombstones"`
		Series         uint64   `json:"series"`
		SeriesAffected int      `json:"series_affected"`
		DeletedShare   float64  `json:"deleted_share"`
		Overdue        bool     `json:"overdue"`
		Decision       string   `json:"decision"`
		Reason         string   `json:"reason"`
	} `json:"jobs"`
	Problems []string `json:"problems"`
	Due      []string `json:"due"`
	Pending  []struct {
		Tombstone string    `json:"tombstone"`
		DueAt     time.Time `json:"due_at"`
		Deadline  time.Time `json:"deadline"`
		Blocks    []string  `json:"blocks"`
	} `json:"pending"`
}

func (b cliBucket) rewriterPlan(t *testing.T, args ...string) rwPlan {
	t.Helper()
	r := b.rewriter(t, "plan", append([]string{"--output", "json"}, args...)...)
	testutil.Equals(t, 0, r.code, "plan: %s", r.stderr)
	var p rwPlan
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	testutil.Ok(t, dec.Decode(&p), "plan --output json: %s", r.stdout)
	return p
}

// rwSeries are the samples of one series: timestamp → value rendered exactly (a float's bits, a
// histogram's String()).
type rwSeries struct {
	lset    labels.Labels
	samples map[int64]string
}

// rwSamples maps a series' labels (String()) to its samples.
type rwSamples map[string]*rwSeries

// notIn returns the samples of s that other lacks or holds with another value.
func (s rwSamples) notIn(other rwSamples) rwSamples {
	out := rwSamples{}
	for k, se := range s {
		o := other[k]
		for ts, v := range se.samples {
			if o == nil || o.samples[ts] != v {
				if out[k] == nil {
					out[k] = &rwSeries{lset: se.lset, samples: map[int64]string{}}
				}
				out[k].samples[ts] = v
			}
		}
	}
	return out
}

func (s rwSamples) count() int {
	n := 0
	for _, se := range s {
		n += len(se.samples)
	}
	return n
}

// rwReadBlockSamples reads every sample of a block directory with Prometheus' tsdb package, on a
// copy (so that nothing is ever written into the bucket), and adds them to into. A sample that is
// already in into with another value is an error.
func rwReadBlockSamples(t *testing.T, dir string, into rwSamples) (dups int) {
	t.Helper()
	cp := filepath.Join(t.TempDir(), filepath.Base(dir))
	testutil.Ok(t, os.MkdirAll(filepath.Join(cp, block.ChunksDirname), 0o755))
	for _, f := range []string{block.MetaFilename, block.IndexFilename} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		testutil.Ok(t, err)
		testutil.Ok(t, os.WriteFile(filepath.Join(cp, f), b, 0o644))
	}
	testutil.Ok(t, os.CopyFS(filepath.Join(cp, block.ChunksDirname), os.DirFS(filepath.Join(dir, block.ChunksDirname))))
	b, err := tsdb.OpenBlock(slog.New(slog.DiscardHandler), cp, nil, nil)
	testutil.Ok(t, err, "open block %s", dir)
	defer func() { testutil.Ok(t, b.Close()) }()
	q, err := tsdb.NewBlockQuerier(b, math.MinInt64, math.MaxInt64)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, q.Close()) }()
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, ".+"))
	var it chunkenc.Iterator
	for ss.Next() {
		s := ss.At()
		key := s.Labels().String()
		se := into[key]
		if se == nil {
			se = &rwSeries{lset: s.Labels(), samples: map[int64]string{}}
			into[key] = se
		}
		it = s.Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			var ts int64
			var v string
			switch vt {
			case chunkenc.ValFloat:
				var f float64
				ts, f = it.At()
				v = strconv.FormatUint(math.Float64bits(f), 16)
			case chunkenc.ValHistogram:
				var h interface{ String() string }
				ts, h = it.AtHistogram(nil)
				v = "h" + h.String()
			case chunkenc.ValFloatHistogram:
				var h interface{ String() string }
				ts, h = it.AtFloatHistogram(nil)
				v = "fh" + h.String()
			}
			if old, ok := se.samples[ts]; ok {
				dups++
				if old != v {
					t.Errorf("series %s at %d: two live blocks disagree: %s vs %s", key, ts, old, v)
				}
			}
			se.samples[ts] = v
		}
		testutil.Ok(t, it.Err())
	}
	testutil.Ok(t, ss.Err())
	return dups
}

// rwState is what the bucket holds at one look.
type rwState struct {
	listing *block.Listing
	// samples of every live block together; dups counts samples held by two live blocks.
	samples rwSamples
	dups    int
	// partial are block folders without meta.json.
	partial []string
}

func (s rwState) liveIDs() []string {
	var out []string
	for _, m := range s.listing.Blocks {
		out = append(out, m.ULID.String())
	}
	sort.Strings(out)
	return out
}

func (s rwState) markedIDs() []string {
	var out []string
	for _, id := range s.listing.Marked {
		out = append(out, id.String())
	}
	sort.Strings(out)
	return out
}

func rwReadState(t *testing.T, b cliBucket) rwState {
	t.Helper()
	bkt, err := filesystem.NewBucket(b.dir)
	testutil.Ok(t, err)
	l, err := block.List(context.Background(), bkt)
	testutil.Ok(t, err)
	st := rwState{listing: l, samples: rwSamples{}}
	for _, m := range l.Blocks {
		st.dups += rwReadBlockSamples(t, filepath.Join(b.dir, m.ULID.String()), st.samples)
	}
	ents, err := os.ReadDir(b.dir)
	testutil.Ok(t, err)
	for _, e := range ents {
		if _, err := ulid.ParseStrict(e.Name()); err != nil || !e.IsDir() {
			continue
		}
		// An empty directory is no object: a FILESYSTEM bucket leaves one when a process dies
		// between removing a folder's last file and the folder, where an object store has none.
		if _, err := os.Stat(filepath.Join(b.dir, e.Name(), block.MetaFilename)); os.IsNotExist(err) && rwHoldsFiles(t, filepath.Join(b.dir, e.Name())) {
			st.partial = append(st.partial, e.Name())
		}
	}
	return st
}

// rwDiffSamples describes how got differs from want, or returns "".
func rwDiffSamples(want, got rwSamples) string {
	flat := func(s rwSamples) map[string]map[int64]string {
		out := make(map[string]map[int64]string, len(s))
		for k, se := range s {
			out[k] = se.samples
		}
		return out
	}
	return diffSamples(flat(want), flat(got), func(t int64) string { return fmt.Sprint(t) })
}

// diffSamples describes how got differs from want (series key -> timestamp -> value): counts of
// missing, extra and changed samples with up to eight examples, or "" when they are equal.
func diffSamples[V comparable](want, got map[string]map[int64]V, stamp func(int64) string) string {
	var missing, extra, changed, nWant, nGot int
	var ex []string
	note := func(f string, a ...any) {
		if len(ex) < 8 {
			ex = append(ex, fmt.Sprintf(f, a...))
		}
	}
	keys := map[string]bool{}
	for k, w := range want {
		keys[k] = true
		nWant += len(w)
	}
	for k, g := range got {
		keys[k] = true
		nGot += len(g)
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		w, g := want[k], got[k]
		var ts []int64
		for t := range w {
			ts = append(ts, t)
		}
		for t := range g {
			if _, ok := w[t]; !ok {
				ts = append(ts, t)
			}
		}
		slices.Sort(ts)
		for _, t := range ts {
			wv, wok := w[t]
			gv, gok := g[t]
			switch {
			case wok && !gok:
				missing++
				note("missing %s @%s", k, stamp(t))
			case !wok && gok:
				extra++
				note("extra %s @%s", k, stamp(t))
			case wv != gv:
				changed++
				note("changed %s @%s: want %v got %v", k, stamp(t), wv, gv)
			}
		}
	}
	if missing+extra+changed == 0 {
		return ""
	}
	return fmt.Sprintf("%d samples missing, %d extra, %d changed (of %d wanted, %d got); e.g.\n  %s",
		missing, extra, changed, nWant, nGot, strings.Join(ex, "\n  "))
}

// rwExpectedAfter returns the samples of all that survive the deletions: a sample is deleted when
// any selector of a deletion matches its series' labels plus the external labels ext and its
// timestamp is in the deletion's inclusive range. It is the rewriter's oracle at the sample level,
// independent of any lethe code.
func rwExpectedAfter(t *testing.T, all rwSamples, dels []batteryDeletion, ext map[string]string) rwSamples {
	t.Helper()
	type sel struct {
		ms         []*labels.Matcher
		start, end int64
	}
	var sels []sel
	for _, d := range dels {
		for _, m := range d.matchers {
			ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(m)
			testutil.Ok(t, err, m)
			end := d.end
			if end == math.MaxInt64 {
				end = rwFarEnd
			}
			sels = append(sels, sel{ms: ms, start: d.start, end: end})
		}
	}
	out := rwSamples{}
	for k, se := range all {
		b := labels.NewBuilder(se.lset)
		for n, v := range ext {
			b.Set(n, v)
		}
		full := b.Labels()
		var ivs [][2]int64
		for _, s := range sels {
			match := true
			for _, m := range s.ms {
				if !m.Matches(full.Get(m.Name)) {
					match = false
					break
				}
			}
			if match {
				ivs = append(ivs, [2]int64{s.start, s.end})
			}
		}
		kept := map[int64]string{}
		for ts, v := range se.samples {
			gone := false
			for _, iv := range ivs {
				if iv[0] <= ts && ts <= iv[1] {
					gone = true
					break
				}
			}
			if !gone {
				kept[ts] = v
			}
		}
		if len(kept) > 0 {
			out[k] = &rwSeries{lset: se.lset, samples: kept}
		}
	}
	return out
}

// rwSamplesOfDirs reads block directories (not from a bucket).
func rwSamplesOfDirs(t *testing.T, dirs []string) rwSamples {
	t.Helper()
	out := rwSamples{}
	for _, d := range dirs {
		rwReadBlockSamples(t, d, out)
	}
	return out
}

// rwCheckBlocksComplete checks that every block folder with meta.json holds the files its
// thanos.files lists, with their sizes, and an index and chunks: meta.json was uploaded last.
func rwCheckBlocksComplete(t *testing.T, b cliBucket) {
	t.Helper()
	rwEachBlockMeta(t, b, func(name string, raw []byte) {
		meta, err := block.DecodeMeta(raw)
		testutil.Ok(t, err, "block %s: meta.json", name)
		for _, f := range []string{block.IndexFilename, filepath.Join(block.ChunksDirname, "000001")} {
			_, err := os.Stat(filepath.Join(b.dir, name, f))
			testutil.Ok(t, err, "block %s has meta.json but no %s", name, f)
		}
		if meta.Thanos == nil || len(meta.Thanos.Files) == 0 {
			return
		}
		var files []struct {
			RelPath   string `json:"rel_path"`
			SizeBytes int64  `json:"size_bytes"`
		}
		testutil.Ok(t, json.Unmarshal(meta.Thanos.Files, &files))
		for _, f := range files {
			fi, err := os.Stat(filepath.Join(b.dir, name, filepath.FromSlash(f.RelPath)))
			testutil.Ok(t, err, "block %s: meta.json lists %s", name, f.RelPath)
			if f.SizeBytes > 0 {
				testutil.Equals(t, f.SizeBytes, fi.Size(), "block %s: size of %s", name, f.RelPath)
			}
		}
	})
}

// rwEachBlockMeta calls fn with the name and meta.json bytes of every block folder of the bucket
// that holds a meta.json.
func rwEachBlockMeta(t *testing.T, b cliBucket, fn func(name string, raw []byte)) {
	t.Helper()
	ents, err := os.ReadDir(b.dir)
	testutil.Ok(t, err)
	for _, e := range ents {
		if _, err := ulid.ParseStrict(e.Name()); err != nil || !e.IsDir() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(b.dir, e.Name(), block.MetaFilename))
		if os.IsNotExist(err) {
			continue
		}
		testutil.Ok(t, err)
		fn(e.Name(), raw)
	}
}

// rwCheckNoUncoveredOverlap applies Thanos' deduplication rule to the live blocks: two live blocks
// of one external-label group and resolution whose time ranges overlap must be one block's
// compaction sources included in the other's (the deduplication filter then drops the covered
// one); otherwise queriers and the compactor see the same series twice.
func rwCheckNoUncoveredOverlap(t *testing.T, l *block.Listing) {
	t.Helper()
	group := func(m *block.Meta) string {
		return fmt.Sprintf("%s@%d", m.ExternalLabels().String(), m.Resolution())
	}
	subset := func(a, b *block.Meta) bool {
		for _, s := range a.Compaction.Sources {
			if !slices.Contains(b.Compaction.Sources, s) {
				return false
			}
		}
		return true
	}
	for i, a := range l.Blocks {
		for _, b := range l.Blocks[i+1:] {
			if group(a) != group(b) || !(a.MinTime < b.MaxTime && b.MinTime < a.MaxTime) {
				continue
			}
			if !subset(a, b) && !subset(b, a) {
				t.Errorf("live blocks %s (sources %v) and %s (sources %v) overlap and neither covers the other's sources",
					a.ULID, a.Compaction.Sources, b.ULID, b.Compaction.Sources)
			}
		}
	}
}

// rwObjectsContaining returns the objects of live blocks (not under tombstones/ or lethe/, not
// in a block marked for deletion) whose bytes contain secret.
func rwObjectsContaining(t *testing.T, b cliBucket, l *block.Listing, secret string) (hits []string, scanned int) {
	t.Helper()
	marked := map[string]bool{}
	for _, id := range l.Marked {
		marked[id.String()] = true
	}
	testutil.Ok(t, filepath.WalkDir(b.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.dir, p)
		top, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
		if d.IsDir() {
			if top == "tombstones" || top == "lethe" || marked[top] {
				return filepath.SkipDir
			}
			return nil
		}
		c, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		scanned++
		if bytes.Contains(c, []byte(secret)) {
			hits = append(hits, rel)
		}
		return nil
	}))
	return hits, scanned
}

// rwThanosPath returns the pinned Thanos binary (toolPath).
func rwThanosPath(t *testing.T) string { return toolPath(t, "thanos", "LETHE_THANOS") }

// rwRunThanos runs the thanos binary and returns its output.
func rwRunThanos(t *testing.T, args ...string) result {
	t.Helper()
	return runBinary(t, rwThanosPath(t), 2*time.Minute, nil, args...)
}

// rwHoldsFiles reports whether a directory holds a file, at any depth.
func rwHoldsFiles(t *testing.T, dir string) bool {
	t.Helper()
	found := false
	testutil.Ok(t, filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			found = true
			return filepath.SkipAll
		}
		return nil
	}))
	return found
}
