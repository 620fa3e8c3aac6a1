package block_test

// Native fuzz targets for reading blocks lethe did not write: meta.json, a corrupt index (read
// from the bucket by the planner and the CLI, from a local file by the rewriter) and corrupt chunks
// (read by the proxy in bucket mode). Every reader must answer with an error, never panic or hang.
// The seed corpora (the f.Add calls and testdata/fuzz/<target>/) run with every `go test`; a
// fuzzing run is `go test ./block -run '^$' -fuzz '^FuzzIndex$' -fuzztime 30s`.

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"math"
	"os"
	"path"
	"path/filepath"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// fuzzReadDeadline bounds one read of a corrupt input: longer is a hang.
const fuzzReadDeadline = 10 * time.Second

// withDeadline runs read and fails the test if it does not return within fuzzReadDeadline. A
// panic in read fails the test as a panic (the fuzzer records the input).
func withDeadline(t *testing.T, what string, read func()) {
	t.Helper()
	done := make(chan struct{})
	var panicked any
	go func() {
		defer close(done)
		defer func() { panicked = recover() }()
		read()
	}()
	timer := time.NewTimer(fuzzReadDeadline)
	defer timer.Stop()
	select {
	case <-done:
		if panicked != nil {
			t.Fatalf("%s panicked: %v", what, panicked)
		}
	case <-timer.C:
		t.Fatalf("%s did not return within %v", what, fuzzReadDeadline)
	}
}

// fuzzBlock writes a small block with float and native histogram series and returns its meta and
// directory.
func fuzzBlock(f *testing.F) (*block.Meta, string) {
	f.Helper()
	meta, dir, err := synth.Write(context.Background(), f.TempDir(), synth.Block{
		Series: []labels.Labels{
			labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", "u1"),
			labels.FromStrings("__name__", "http_requests_total", "job", "web", "user_id", "u2"),
			labels.FromStrings("__name__", "memory_bytes", "instance", "i-0"),
		},
		Histograms: []labels.Labels{labels.FromStrings("__name__", "request_latency_seconds", "job", "api")},
		MinTime:    0,
		MaxTime:    2 * 3_600_000,
		Step:       60_000,
	})
	testutil.Ok(f, err)
	return meta, dir
}

// corrupt returns a copy of b with the mutations applied: muts is read as 5-byte records, a
// little-endian offset (modulo the length) and a byte XORed in there; a cut below len(b) truncates.
func corrupt(b, muts []byte, cut uint32) []byte {
	out := append([]byte(nil), b...)
	for len(muts) >= 5 && len(out) > 0 {
		off := int(binary.LittleEndian.Uint32(muts) % uint32(len(out)))
		out[off] ^= muts[4]
		muts = muts[5:]
	}
	if int64(cut) < int64(len(out)) {
		out = out[:cut]
	}
	return out
}

// fuzzMutationSeeds are mutations of the seed block's files: none, a truncation, flipped bytes at
// the start (magic, version), in the middle and near the end (table of contents, CRCs).
func fuzzMutationSeeds(size int) []struct {
	muts []byte
	cut  uint32
} {
	rec := func(off int, x byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(off))
		return append(b, x)
	}
	return []struct {
		muts []byte
		cut  uint32
	}{
		{nil, math.MaxUint32},
		{nil, uint32(size / 2)},
		{nil, 3},
		{rec(4, 0xff), math.MaxUint32},
		{rec(0, 1), math.MaxUint32},
		{rec(size/2, 0x80), math.MaxUint32},
		{append(rec(size-52, 0xff), rec(size-44, 0x7f)...), math.MaxUint32},
		{append(rec(size-8, 0x01), rec(size-20, 0x10)...), math.MaxUint32},
		{rec(size-1, 0xff), math.MaxUint32},
	}
}

// FuzzIndex corrupts a block's index and reads it as lethe does: from the bucket (the planner's and
// the CLI's CountSeries, which opens the index for ranged reads) and from a local file (the
// rewriter's OpenIndexFile, then every posting, series and symbol). Each must return an error or
// an answer, never panic or hang; the uncorrupted index must count what it holds.
func FuzzIndex(f *testing.F) {
	meta, dir := fuzzBlock(f)
	orig, err := os.ReadFile(filepath.Join(dir, block.IndexFilename))
	testutil.Ok(f, err)
	for _, s := range fuzzMutationSeeds(len(orig)) {
		f.Add(s.muts, s.cut)
	}
	sel := [][]*labels.Matcher{
		{labels.MustNewMatcher(labels.MatchEqual, "__name__", "http_requests_total"), labels.MustNewMatcher(labels.MatchRegexp, "user_id", "u.*")},
		{labels.MustNewMatcher(labels.MatchNotEqual, "job", "web"), labels.MustNewMatcher(labels.MatchNotRegexp, "instance", "x")},
	}
	f.Fuzz(func(t *testing.T, muts []byte, cut uint32) {
		data := corrupt(orig, muts, cut)
		ctx := context.Background()

		bkt := objstore.NewInMemBucket()
		testutil.Ok(t, bkt.Upload(ctx, path.Join(meta.ULID.String(), block.IndexFilename), bytes.NewReader(data)))
		withDeadline(t, "CountSeries", func() {
			c, err := block.CountSeries(ctx, bkt, meta, sel, math.MinInt64, math.MaxInt64)
			if bytes.Equal(data, orig) {
				testutil.Ok(t, err)
				// Both http_requests_total series; job!="web" adds memory_bytes (no job) and the histogram.
				testutil.Equals(t, 4, c.Matched)
			}
		})

		file := filepath.Join(t.TempDir(), block.IndexFilename)
		testutil.Ok(t, os.WriteFile(file, data, 0o644))
		withDeadline(t, "OpenIndexFile and a walk of every series", func() {
			n, err := walkIndexFile(ctx, file)
			if bytes.Equal(data, orig) {
				testutil.Ok(t, err)
				testutil.Equals(t, 4, n)
			}
		})
	})
}

// walkIndexFile reads every symbol, posting and series of an index file, the way the rewriter
// streams a source block, and returns how many series it read.
func walkIndexFile(ctx context.Context, file string) (n int, err error) {
	ix, err := block.OpenIndexFile(file, 1<<16)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := ix.Close(); err == nil {
			err = cerr
		}
		if ix.Err() != nil {
			err = ix.Err()
		}
	}()
	syms := ix.Reader.Symbols()
	for syms.Next() {
	}
	if err := syms.Err(); err != nil {
		return 0, err
	}
	if _, err := ix.Reader.LabelNames(ctx); err != nil {
		return 0, err
	}
	k, v := index.AllPostingsKey()
	p, err := ix.Reader.Postings(ctx, k, v)
	if err != nil {
		return 0, err
	}
	var (
		builder labels.ScratchBuilder
		chks    []chunks.Meta
	)
	for p.Next() {
		if err := ix.Reader.Series(storage.SeriesRef(p.At()), &builder, &chks); err != nil {
			return n, err
		}
		n++
	}
	return n, p.Err()
}

// FuzzChunks corrupts a block's chunk segment and reads every sample through a tombstone mask, as
// lethe-proxy's bucket mode does (tsdb.OpenBlock on the downloaded block, a querier, lethe's
// tombstones.Iterator). It must return an error or samples, never panic or hang; the uncorrupted
// block must give every sample.
func FuzzChunks(f *testing.F) {
	meta, dir := fuzzBlock(f)
	seg := filepath.Join(block.ChunksDirname, "000001")
	orig, err := os.ReadFile(filepath.Join(dir, seg))
	testutil.Ok(f, err)
	for _, s := range fuzzMutationSeeds(len(orig)) {
		f.Add(s.muts, s.cut)
	}
	files := map[string][]byte{}
	for _, name := range []string{block.MetaFilename, block.IndexFilename} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		testutil.Ok(f, err)
		files[name] = b
	}
	logger := slog.New(slog.DiscardHandler)
	pool := chunkenc.NewPool()
	ivs := tombstones.Intervals{{Mint: 30 * 60_000, Maxt: 45 * 60_000}}
	f.Fuzz(func(t *testing.T, muts []byte, cut uint32) {
		data := corrupt(orig, muts, cut)
		bdir := filepath.Join(t.TempDir(), meta.ULID.String())
		testutil.Ok(t, os.MkdirAll(filepath.Join(bdir, block.ChunksDirname), 0o755))
		for name, b := range files {
			testutil.Ok(t, os.WriteFile(filepath.Join(bdir, name), b, 0o644))
		}
		testutil.Ok(t, os.WriteFile(filepath.Join(bdir, seg), data, 0o644))
		withDeadline(t, "reading every sample", func() {
			n, err := readSamples(context.Background(), logger, pool, bdir, meta, ivs)
			if bytes.Equal(data, orig) {
				testutil.Ok(t, err)
				// 4 series, 120 samples each, 15 of them (30m..44m) masked and 45m too: inclusive.
				testutil.Equals(t, 4*(120-16), n)
			}
		})
	})
}

func readSamples(ctx context.Context, logger *slog.Logger, pool chunkenc.Pool, dir string, meta *block.Meta, ivs tombstones.Intervals) (n int, err error) {
	b, err := tsdb.OpenBlock(logger, dir, pool, nil)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := b.Close(); err == nil {
			err = cerr
		}
	}()
	q, err := tsdb.NewBlockQuerier(b, meta.MinTime, meta.MaxTime)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := q.Close(); err == nil {
			err = cerr
		}
	}()
	ss := q.Select(ctx, false, nil, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	var (
		h  histogram.Histogram
		fh histogram.FloatHistogram
	)
	for ss.Next() {
		it := tombstones.NewIterator(ss.At().Iterator(nil), ivs)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			switch vt {
			case chunkenc.ValFloat:
				it.At()
			case chunkenc.ValHistogram:
				it.AtHistogram(&h)
			case chunkenc.ValFloatHistogram:
				it.AtFloatHistogram(&fh)
			}
			n++
		}
		if err := it.Err(); err != nil {
			return n, err
		}
	}
	return n, ss.Err()
}

// fuzzMetaSeeds are meta.json files as Prometheus and Thanos write them, and broken ones.
var fuzzMetaSeeds = []string{
	`{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":0,"maxTime":7200000,"stats":{"numSamples":10,"numSeries":2,"numChunks":2},"compaction":{"level":1,"sources":["01JQ8Z5V9X3W2K7M4N6P8R0T2V"]},"version":1}`,
	`{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":0,"maxTime":7200000,"version":1,"thanos":{"version":1,"labels":{"cluster":"eu1","replica":"a"},"downsample":{"resolution":300000},"source":"sidecar"}}`,
	`{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":7200000,"maxTime":0,"version":1}`,
	`{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V","minTime":0,"maxTime":1,"version":2}`,
	`{"ulid":"", "version":1}`,
	`{"ulid":"01JQ8Z5V9X3W2K7M4N6P8R0T2V", "minTime": `,
	`null`, `[]`, `{}`,
}

// FuzzDecodeMeta: meta.json decodes to a meta that readers can rely on (version 1, an id,
// minTime <= maxTime) or to an error, and what lethe encodes of a decoded meta decodes the same.
func FuzzDecodeMeta(f *testing.F) {
	for _, s := range fuzzMetaSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := block.DecodeMeta(b)
		if err != nil {
			testutil.Assert(t, m == nil, "a meta and an error: %v", err)
			return
		}
		testutil.Equals(t, 1, m.Version)
		testutil.Assert(t, m.MinTime <= m.MaxTime, "minTime %d after maxTime %d", m.MinTime, m.MaxTime)
		m.ExternalLabels()
		m.Resolution()
		enc, err := block.EncodeMeta(m)
		testutil.Ok(t, err)
		again, err := block.DecodeMeta(enc)
		testutil.Ok(t, err, "re-encoded meta.json does not decode: %s", enc)
		enc2, err := block.EncodeMeta(again)
		testutil.Ok(t, err)
		testutil.Equals(t, string(enc), string(enc2))
	})
}
