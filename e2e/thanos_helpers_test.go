package e2e

// Helpers of thanos_test.go: the thanos binary run as a process (compactor, store gateway,
// querier, bucket tools) against buckets that lethe-rewriter rewrote, and the blocks read back
// with Prometheus' own tsdb packages, aggregate chunks included. Every name here starts with thx
// so that this file stands alone beside the other end-to-end helpers.

import (
	"bytes"
	"context"
	"encoding/binary"
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
	"sort"
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
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
)

// Bounds of every process the Thanos tests run.
const (
	thxCommandTimeout = 2 * time.Minute
	thxQueryTimeout   = 60 * time.Second
	thxRes5m          = int64(5 * 60 * 1000)
	thxHour           = int64(3_600_000)
)

// thxThanosPath returns the pinned Thanos binary (toolPath).
func thxThanosPath(t *testing.T) string { return toolPath(t, "thanos", "LETHE_THANOS") }

// thxExec runs a command to completion, bounded by thxCommandTimeout; a command that outlives it
// fails the test (a halted compactor would).
func thxExec(t *testing.T, bin string, args ...string) result {
	t.Helper()
	return runBinary(t, bin, thxCommandTimeout, nil, args...)
}

func thxRedactArgs(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		out[i] = strings.ReplaceAll(a, "\n", " ")
	}
	return out
}

func thxTail(s string) string {
	const n = 12 << 10
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

// thxThanos runs the thanos binary with args.
func thxThanos(t *testing.T, args ...string) result {
	t.Helper()
	return thxExec(t, thxThanosPath(t), args...)
}

// thxCompactFlags are the flags of every compactor pass: one pass (no --wait), blocks of any age
// (--consistency-delay=0s), the default compaction levels (2h, 8h, 2d, 14d) and downsampling.
func thxCompactFlags(t *testing.T, b cliBucket) []string {
	return []string{"compact", b.conf,
		"--data-dir=" + t.TempDir(),
		"--http-address=127.0.0.1:0",
		"--http-grace-period=0s",
		"--consistency-delay=0s",
		"--compact.concurrency=1",
		"--downsample.concurrency=1",
		"--log.level=debug",
	}
}

// thxCompact runs one pass of the Thanos compactor and requires exit status 0 and no halt.
func thxCompact(t *testing.T, b cliBucket, extra ...string) result {
	t.Helper()
	args := append(thxCompactFlags(t, b), extra...)
	began := time.Now()
	r := thxThanos(t, args...)
	t.Logf("thanos %s: exit %d after %v", strings.Join(thxRedactArgs(append([]string{"compact", "--objstore.config=<bucket>"}, args[2:]...)), " "), r.code, time.Since(began).Round(time.Millisecond))
	for _, line := range strings.Split(r.stderr, "\n") {
		for _, k := range []string{"compact blocks", "downsampled", "marking compacted block", "Found overlapping", "halt", "critical", "deleting block", "Deleted block", "level=error", "level=warn"} {
			if strings.Contains(line, k) {
				t.Logf("  compactor: %s", line)
				break
			}
		}
	}
	testutil.Equals(t, 0, r.code, "thanos compact exited %d:\n%s", r.code, thxTail(r.stderr))
	for _, bad := range []string{"critical error detected", "halting", "level=error"} {
		testutil.Assert(t, !strings.Contains(r.stderr, bad), "thanos compact logged %q:\n%s", bad, thxTail(r.stderr))
	}
	return r
}

// thxRewriterRun runs `lethe-rewriter run` on the bucket with its own --tmp.dir.
func thxRewriterRun(t *testing.T, b cliBucket, args ...string) result {
	t.Helper()
	full := append([]string{b.conf, "run", "--tmp.dir", t.TempDir()}, args...)
	return thxExec(t, binaries.rewriter, full...)
}

// thxDeletion is one tombstone: a selector and an inclusive range in milliseconds.
type thxDeletion struct {
	selector   string
	start, end int64
}

// thxTombstone registers d with `lethe tombstone add`, due and overdue at once, and returns its id.
func thxTombstone(t *testing.T, b cliBucket, d thxDeletion) string {
	t.Helper()
	rfc := func(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }
	r := b.run(t, "tombstone", "add", "--match", d.selector, "--start", rfc(d.start), "--end", rfc(d.end),
		"--undelete-window", "0s", "--max-wait", "0s", "--reason", "thanos e2e", "--author", "e2e")
	testutil.Equals(t, 0, r.code, "lethe tombstone add %v: %s", d, r.stderr)
	id := strings.TrimSpace(r.stdout)
	_, err := ulid.ParseStrict(id)
	testutil.Ok(t, err, "lethe tombstone add printed %q", r.stdout)
	return id
}

// thxNewBucket returns an empty FILESYSTEM bucket.
func thxNewBucket(t *testing.T) cliBucket {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bucket")
	testutil.Ok(t, os.MkdirAll(dir, 0o755))
	return thxBucketAt(dir)
}

func thxBucketAt(dir string) cliBucket {
	return cliBucket{dir: dir, conf: "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"}
}

// thxCopyBucket copies a bucket, ULIDs and all.
func thxCopyBucket(t *testing.T, src cliBucket) cliBucket {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "bucket")
	testutil.Ok(t, os.CopyFS(dst, os.DirFS(src.dir)))
	return thxBucketAt(dst)
}

// thxUpload writes a block with synth and uploads it; it returns its meta and the local copy. The
// block's range is [blk.MinTime, blk.MaxTime), as a block Prometheus cut from its head at range
// boundaries has (tsdb's block writer would end it right after the last sample), so that Thanos'
// compactor plans it like one.
func thxUpload(t *testing.T, b cliBucket, blk synth.Block) (*block.Meta, string) {
	t.Helper()
	meta, dir, err := synth.Write(context.Background(), t.TempDir(), blk)
	testutil.Ok(t, err)
	meta.MaxTime = blk.MaxTime
	bkt, err := filesystem.NewBucket(b.dir)
	testutil.Ok(t, err)
	testutil.Ok(t, block.Upload(context.Background(), bkt, dir, meta))
	return meta, dir
}

func thxListing(t *testing.T, b cliBucket) *block.Listing {
	t.Helper()
	bkt, err := filesystem.NewBucket(b.dir)
	testutil.Ok(t, err)
	l, err := block.List(context.Background(), bkt)
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(l.Problems), "bucket has problem blocks: %v", l.Problems)
	return l
}

// thxBlockFolders are the ULID-named folders of the bucket.
func thxBlockFolders(t *testing.T, b cliBucket) []string {
	t.Helper()
	ents, err := os.ReadDir(b.dir)
	testutil.Ok(t, err)
	var out []string
	for _, e := range ents {
		if _, err := ulid.ParseStrict(e.Name()); err == nil && e.IsDir() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func thxMarked(t *testing.T, b cliBucket, id ulid.ULID, marker string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(b.dir, id.String(), marker))
	if os.IsNotExist(err) {
		return false
	}
	testutil.Ok(t, err)
	return true
}

// thxRewrites decodes thanos.rewrites: the parents each rewrite names.
func thxRewrites(t *testing.T, m *block.Meta) [][]ulid.ULID {
	t.Helper()
	if m.Thanos == nil || len(m.Thanos.Rewrites) == 0 {
		return nil
	}
	var rws []struct {
		Sources []ulid.ULID `json:"sources"`
	}
	testutil.Ok(t, json.Unmarshal(m.Thanos.Rewrites, &rws), "thanos.rewrites of %s: %s", m.ULID, m.Thanos.Rewrites)
	var out [][]ulid.ULID
	for _, rw := range rws {
		out = append(out, rw.Sources)
	}
	return out
}

// thxAppliedTombstones returns the tombstone ids that thanos.rewrites records as applied.
func thxAppliedTombstones(t *testing.T, m *block.Meta) []string {
	t.Helper()
	testutil.Assert(t, m.Thanos != nil && len(m.Thanos.Rewrites) > 0, "block %s has no thanos.rewrites", m.ULID)
	var rws []struct {
		DeletionsApplied []struct {
			RequestID string `json:"request_id"`
		} `json:"deletions_applied"`
	}
	testutil.Ok(t, json.Unmarshal(m.Thanos.Rewrites, &rws), "thanos.rewrites of %s: %s", m.ULID, m.Thanos.Rewrites)
	var out []string
	for _, rw := range rws {
		for _, d := range rw.DeletionsApplied {
			out = append(out, strings.TrimPrefix(d.RequestID, "lethe-tombstone-"))
		}
	}
	return out
}

// thxSamples maps a series (labels, String()) to its float samples: timestamp → value bits.
type thxSamples map[string]map[int64]uint64

func (s thxSamples) count() int {
	n := 0
	for _, se := range s {
		n += len(se)
	}
	return n
}

// thxReadSamples reads every float sample of a raw block directory with Prometheus' tsdb package,
// on a copy so that nothing is written into the bucket, and adds them to into; it returns how many
// samples were already there (held by another block too).
func thxReadSamples(t *testing.T, dir string, into thxSamples) (dups int) {
	t.Helper()
	cp := filepath.Join(t.TempDir(), filepath.Base(dir))
	testutil.Ok(t, os.MkdirAll(cp, 0o755))
	for _, f := range []string{block.MetaFilename, block.IndexFilename, block.ChunksDirname} {
		src := filepath.Join(dir, f)
		if f == block.ChunksDirname {
			testutil.Ok(t, os.CopyFS(filepath.Join(cp, f), os.DirFS(src)))
			continue
		}
		raw, err := os.ReadFile(src)
		testutil.Ok(t, err)
		testutil.Ok(t, os.WriteFile(filepath.Join(cp, f), raw, 0o644))
	}
	pb, err := tsdb.OpenBlock(slog.New(slog.DiscardHandler), cp, nil, nil)
	testutil.Ok(t, err, "open block %s", dir)
	defer func() { testutil.Ok(t, pb.Close()) }()
	q, err := tsdb.NewBlockQuerier(pb, math.MinInt64, math.MaxInt64)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, q.Close()) }()
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, ".+"))
	var it chunkenc.Iterator
	for ss.Next() {
		key := ss.At().Labels().String()
		if into[key] == nil {
			into[key] = map[int64]uint64{}
		}
		it = ss.At().Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			testutil.Equals(t, chunkenc.ValFloat, vt, "series %s of %s", key, dir)
			ts, v := it.At()
			if old, ok := into[key][ts]; ok {
				dups++
				testutil.Equals(t, old, math.Float64bits(v), "series %s at %d: two blocks disagree", key, ts)
			}
			into[key][ts] = math.Float64bits(v)
		}
		testutil.Ok(t, it.Err())
	}
	testutil.Ok(t, ss.Err())
	return dups
}

// thxLiveSamples reads every live (unmarked) block of the bucket; dups counts samples that two
// live blocks hold.
func thxLiveSamples(t *testing.T, b cliBucket, l *block.Listing) (thxSamples, int) {
	t.Helper()
	out, dups := thxSamples{}, 0
	for _, m := range l.Blocks {
		testutil.Equals(t, int64(0), m.Resolution(), "block %s", m.ULID)
		dups += thxReadSamples(t, filepath.Join(b.dir, m.ULID.String()), out)
	}
	return out, dups
}

// thxSelector is one deletion's parsed selector and its inclusive range.
type thxSelector struct {
	ms         []*labels.Matcher
	start, end int64
}

func thxSelectors(t *testing.T, dels []thxDeletion) []thxSelector {
	t.Helper()
	sels := make([]thxSelector, 0, len(dels))
	for _, d := range dels {
		ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(d.selector)
		testutil.Ok(t, err, d.selector)
		sels = append(sels, thxSelector{ms, d.start, d.end})
	}
	return sels
}

// matches reports whether every matcher of the selector matches ls.
func (s thxSelector) matches(ls labels.Labels) bool {
	for _, m := range s.ms {
		if !m.Matches(ls.Get(m.Name)) {
			return false
		}
	}
	return true
}

// thxExpected returns the samples of all that survive the deletions, applied only to samples in
// [from, to): a sample goes when a deletion's selector matches its labels plus the external labels
// ext and its timestamp is in the deletion's inclusive range. It uses no lethe code.
func thxExpected(t *testing.T, all thxSamples, dels []thxDeletion, ext map[string]string, from, to int64) thxSamples {
	t.Helper()
	sels := thxSelectors(t, dels)
	out := thxSamples{}
	for key, se := range all {
		lset, err := parser.NewParser(parser.Options{}).ParseMetricSelector(key)
		testutil.Ok(t, err, key)
		full := labels.NewBuilder(labels.EmptyLabels())
		for _, m := range lset {
			full.Set(m.Name, m.Value)
		}
		for n, v := range ext {
			full.Set(n, v)
		}
		ls := full.Labels()
		var ivs [][2]int64
		for _, s := range sels {
			if s.matches(ls) {
				ivs = append(ivs, [2]int64{max(s.start, from), min(s.end, to-1)})
			}
		}
		kept := map[int64]uint64{}
		for ts, v := range se {
			gone := false
			for _, iv := range ivs {
				gone = gone || (iv[0] <= ts && ts <= iv[1])
			}
			if !gone {
				kept[ts] = v
			}
		}
		if len(kept) > 0 {
			out[key] = kept
		}
	}
	return out
}

// thxDiff describes how got differs from want, or returns "".
func thxDiff(want, got thxSamples) string { return diffSamples(want, got, thxTime) }

func thxTime(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z") }

// thxFilesContaining returns the files of the given block folders whose bytes contain secret.
func thxFilesContaining(t *testing.T, b cliBucket, ids []ulid.ULID, secret string) []string {
	t.Helper()
	var hits []string
	for _, id := range ids {
		testutil.Ok(t, filepath.WalkDir(filepath.Join(b.dir, id.String()), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			c, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(c, []byte(secret)) {
				rel, _ := filepath.Rel(b.dir, p)
				hits = append(hits, rel)
			}
			return nil
		}))
	}
	return hits
}

// thxRawPool reads chunks of any encoding: those Prometheus knows as it does, the others (Thanos'
// aggregate chunks, encoding 0xff) as opaque bytes.
type thxRawPool struct{ chunkenc.Pool }

func (p thxRawPool) Get(e chunkenc.Encoding, b []byte) (chunkenc.Chunk, error) {
	if c, err := p.Pool.Get(e, b); err == nil {
		return c, nil
	}
	return &thxRawChunk{enc: e, b: b}, nil
}

func (p thxRawPool) Put(c chunkenc.Chunk) error {
	if _, ok := c.(*thxRawChunk); ok {
		return nil
	}
	return p.Pool.Put(c)
}

type thxRawChunk struct {
	enc chunkenc.Encoding
	b   []byte
}

func (c *thxRawChunk) Bytes() []byte                                { return c.b }
func (c *thxRawChunk) Encoding() chunkenc.Encoding                  { return c.enc }
func (c *thxRawChunk) NumSamples() int                              { return 0 }
func (c *thxRawChunk) Compact()                                     {}
func (c *thxRawChunk) Reset(b []byte)                               { c.b = b }
func (c *thxRawChunk) Iterator(chunkenc.Iterator) chunkenc.Iterator { return chunkenc.NewNopIterator() }
func (c *thxRawChunk) Appender() (chunkenc.Appender, error) {
	return nil, fmt.Errorf("chunk encoding %d cannot be appended to", c.enc)
}

// thxChunk is one chunk of a series as the index and the chunk files hold it.
type thxChunk struct {
	MinTime, MaxTime int64
	Enc              chunkenc.Encoding
	Bytes            []byte
}

func (c thxChunk) String() string {
	return fmt.Sprintf("[%s, %s] enc %d, %d bytes", thxTime(c.MinTime), thxTime(c.MaxTime), c.Enc, len(c.Bytes))
}

// thxReadChunks reads every series of a block directory and its chunks' bytes, keyed by the
// series' labels (String()).
func thxReadChunks(t *testing.T, dir string) map[string][]thxChunk {
	t.Helper()
	ir, err := index.NewFileReader(filepath.Join(dir, block.IndexFilename), index.DecodePostingsRaw)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, ir.Close()) }()
	cr, err := chunks.NewDirReader(filepath.Join(dir, block.ChunksDirname), thxRawPool{chunkenc.NewPool()})
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, cr.Close()) }()
	k, v := index.AllPostingsKey()
	p, err := ir.Postings(context.Background(), k, v)
	testutil.Ok(t, err)
	out := map[string][]thxChunk{}
	var (
		builder labels.ScratchBuilder
		metas   []chunks.Meta
	)
	for p.Next() {
		testutil.Ok(t, ir.Series(p.At(), &builder, &metas))
		key := builder.Labels().String()
		var cs []thxChunk
		for _, m := range metas {
			c, iter, err := cr.ChunkOrIterable(m)
			testutil.Ok(t, err, "series %s chunk %d", key, m.Ref)
			testutil.Assert(t, iter == nil, "series %s: chunk %d is an iterable", key, m.Ref)
			cs = append(cs, thxChunk{MinTime: m.MinTime, MaxTime: m.MaxTime, Enc: c.Encoding(), Bytes: slices.Clone(c.Bytes())})
		}
		out[key] = cs
	}
	testutil.Ok(t, p.Err())
	return out
}

// Thanos' aggregate types, in the order an aggregate chunk holds them (pkg/compact/downsample).
const (
	thxAggrCount = iota
	thxAggrSum
	thxAggrMin
	thxAggrMax
	thxAggrCounter
)

// thxAggrSamples decodes one aggregate of a Thanos aggregate chunk (a uvarint length, an
// encoding byte and the chunk per aggregate, 0 for an absent one) into its timestamps and values.
func thxAggrSamples(t *testing.T, c thxChunk, typ int) (ts []int64, vs []float64) {
	t.Helper()
	testutil.Equals(t, chunkenc.Encoding(0xff), c.Enc, "not an aggregate chunk")
	b := c.Bytes
	for i := 0; i <= typ; i++ {
		l, n := binary.Uvarint(b)
		testutil.Assert(t, n > 0, "aggregate chunk: bad length")
		b = b[n:]
		if l == 0 {
			if i == typ {
				return nil, nil
			}
			continue
		}
		testutil.Assert(t, len(b) >= int(l)+1, "aggregate chunk: short")
		if i == typ {
			sub, err := chunkenc.FromData(chunkenc.Encoding(b[0]), b[1:int(l)+1])
			testutil.Ok(t, err)
			it := sub.Iterator(nil)
			for it.Next() == chunkenc.ValFloat {
				t, v := it.At()
				ts, vs = append(ts, t), append(vs, v)
			}
			testutil.Ok(t, it.Err())
			return ts, vs
		}
		b = b[int(l)+1:]
	}
	return nil, nil
}

// the start of MinTime's window on; its counter aggregate even holds that first raw sample itself.
func thxWindowStart(c thxChunk, res int64) int64 { return c.MinTime - c.MinTime%res }

// thxMeets reports whether [a, b] and [c, d] (inclusive) share a point.
func thxMeets(a, b, c, d int64) bool { return a <= d && c <= b }

// thxProm is an answer of the Prometheus query API.
type thxProm struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Values [][2]any          `json:"values"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
	Warnings []string `json:"warnings"`
}

// thxGet queries a benchProc's HTTP API and decodes the answer; it fails unless it is a success.
func thxGet(t *testing.T, p *benchProc, path string, params url.Values) thxProm {
	t.Helper()
	return thxGetAt(t, p.client, p.URL, path, params)
}

// thxGetAt is thxGet for any server at base.
func thxGetAt(t *testing.T, client *http.Client, base, path string, params url.Values) thxProm {
	t.Helper()
	resp, err := client.Get(base + path + "?" + params.Encode())
	testutil.Ok(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	testutil.Ok(t, err)
	var r thxProm
	testutil.Ok(t, json.Unmarshal(body, &r), "GET %s %v: %d %s", path, params, resp.StatusCode, body)
	testutil.Equals(t, "success", r.Status, "GET %s %v: %s", path, params, body)
	return r
}

// thxIDs lists a listing's live blocks for messages.
func thxIDs(l *block.Listing) []string {
	var out []string
	for _, m := range l.Blocks {
		out = append(out, fmt.Sprintf("%s [%s, %s) res %d sources %v", m.ULID, thxTime(m.MinTime), thxTime(m.MaxTime), m.Resolution(), m.Compaction.Sources))
	}
	return out
}

func thxSorted(ids ...ulid.ULID) []string {
	var out []string
	for _, id := range ids {
		out = append(out, id.String())
	}
	sort.Strings(out)
	return out
}

// thxCheckNoUncoveredOverlap applies Thanos' deduplication rule to the live blocks: two blocks of
// one external-label set and resolution whose ranges overlap must have one's compaction sources
// within the other's, or queriers read both and the compactor halts on the overlap.
func thxCheckNoUncoveredOverlap(t *testing.T, l *block.Listing) {
	t.Helper()
	within := func(a, b *block.Meta) bool {
		for _, s := range a.Compaction.Sources {
			if !slices.Contains(b.Compaction.Sources, s) {
				return false
			}
		}
		return true
	}
	for i, a := range l.Blocks {
		for _, b := range l.Blocks[i+1:] {
			if a.ExternalLabels().String() != b.ExternalLabels().String() || a.Resolution() != b.Resolution() ||
				!(a.MinTime < b.MaxTime && b.MinTime < a.MaxTime) {
				continue
			}
			if !within(a, b) && !within(b, a) {
				t.Errorf("live blocks of resolution %d overlap and neither covers the other: %s (sources %v) and %s (sources %v)",
					a.Resolution(), a.ULID, a.Compaction.Sources, b.ULID, b.Compaction.Sources)
			}
		}
	}
}
