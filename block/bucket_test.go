package block_test

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/synth"
)

// bucketKinds are the buckets every bucket-level test runs against.
var bucketKinds = []struct {
	name string
	new  func(t testing.TB) objstore.Bucket
}{
	{name: "inmem", new: func(testing.TB) objstore.Bucket { return objstore.NewInMemBucket() }},
	{name: "filesystem", new: func(t testing.TB) objstore.Bucket {
		bkt, err := filesystem.NewBucket(t.TempDir())
		testutil.Ok(t, err)
		return bkt
	}},
}

// uploadSynth writes a real TSDB block and uploads it as a Thanos block.
func uploadSynth(t testing.TB, bkt objstore.Bucket, b synth.Block) ulid.ULID {
	t.Helper()
	id, err := synth.Upload(context.Background(), bkt, t.TempDir(), b)
	testutil.Ok(t, err)
	return id
}

func upload(t testing.TB, bkt objstore.Bucket, name, content string) {
	t.Helper()
	testutil.Ok(t, bkt.Upload(context.Background(), name, strings.NewReader(content)))
}

func simpleBlock(mint int64, ext map[string]string) synth.Block {
	return synth.Block{
		Series: []labels.Labels{
			labels.FromStrings("__name__", "up", "job", "api"),
			labels.FromStrings("__name__", "up", "job", "web"),
		},
		MinTime: mint, MaxTime: mint + 60_000, Step: 15_000,
		External: ext,
	}
}

func problemIDs(ps []block.Problem) []ulid.ULID {
	ids := make([]ulid.ULID, 0, len(ps))
	for _, p := range ps {
		ids = append(ids, p.Block)
	}
	slices.SortFunc(ids, func(a, b ulid.ULID) int { return a.Compare(b) })
	return ids
}

func TestList(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)

			// The later block is written first, so that ULID order is not MinTime order.
			late := uploadSynth(t, bkt, simpleBlock(10*3600_000, map[string]string{"cluster": "eu1"}))
			early := uploadSynth(t, bkt, simpleBlock(2*3600_000, nil))

			marked := uploadSynth(t, bkt, simpleBlock(0, map[string]string{"cluster": "eu1"}))
			upload(t, bkt, path.Join(marked.String(), block.DeletionMarkFilename),
				`{"id":"`+marked.String()+`","deletion_time":1743465600,"version":1}`)

			// Half uploaded: chunks and index, no meta.json yet.
			partial := uploadSynth(t, bkt, simpleBlock(5*3600_000, nil))
			testutil.Ok(t, bkt.Delete(ctx, path.Join(partial.String(), block.MetaFilename)))
			exists, err := bkt.Exists(ctx, path.Join(partial.String(), block.IndexFilename))
			testutil.Ok(t, err)
			testutil.Assert(t, exists, "partial block lost its index")

			corrupt := uploadSynth(t, bkt, simpleBlock(6*3600_000, nil))
			upload(t, bkt, path.Join(corrupt.String(), block.MetaFilename), `{"ulid": "01JQ8Z5V9X3W2K7M4N6P8R0T2V", "minTime": `)

			// Not blocks.
			upload(t, bkt, "tombstones/01JQ8Z5V9X3W2K7M4N6P8R0T2V.json", `{"matchers":"{job=\"api\"}"}`)
			upload(t, bkt, "lethe/plans/01JQ8Z5V9X3W2K7M4N6P8R0T2V.json", `{}`)
			upload(t, bkt, "lethe/lease", `x`)
			// An object, not a folder, whose name is a ULID.
			upload(t, bkt, "01JQ8Z5V9X3W2K7M4N6P8R0T3A", `x`)
			upload(t, bkt, "debug/meta.json", thanosMetaJSON)

			l, err := block.List(ctx, bkt)
			testutil.Ok(t, err)

			testutil.Equals(t, 2, len(l.Blocks))
			testutil.Equals(t, early, l.Blocks[0].ULID)
			testutil.Equals(t, late, l.Blocks[1].ULID)
			testutil.Equals(t, int64(2*3600_000), l.Blocks[0].MinTime)
			testutil.Equals(t, int64(2*3600_000+45_001), l.Blocks[0].MaxTime)
			testutil.Equals(t, uint64(2), l.Blocks[0].Stats.NumSeries)
			testutil.Equals(t, 0, l.Blocks[0].ExternalLabels().Len())
			testutil.Equals(t, labels.FromStrings("cluster", "eu1"), l.Blocks[1].ExternalLabels())
			testutil.Equals(t, "sidecar", l.Blocks[1].Thanos.Source)

			testutil.Equals(t, []ulid.ULID{marked}, l.Marked)

			// A folder without meta.json is a partial upload, not a bad block.
			testutil.Equals(t, []ulid.ULID{partial}, l.Partial)
			testutil.Equals(t, []ulid.ULID{corrupt}, problemIDs(l.Problems))
			for _, p := range l.Problems {
				testutil.Assert(t, p.Err != nil, "problem without an error: %v", p.Block)
				testutil.Assert(t, strings.Contains(p.Err.Error(), p.Block.String()), "problem %v does not name its block: %v", p.Block, p.Err)
				testutil.Assert(t, strings.Contains(p.Err.Error(), "decode meta.json"), "corrupt meta.json problem: %v", p.Err)
			}
		})
	}
}

func TestList_SameMinTimeSortsByULID(t *testing.T) {
	ctx := context.Background()
	bkt := objstore.NewInMemBucket()
	ids := []ulid.ULID{
		ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T3C"),
		ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T3A"),
		ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T3B"),
		ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T39"),
	}
	mints := []int64{100, 100, 100, 50}
	for i, id := range ids {
		m := &block.Meta{}
		m.ULID, m.MinTime, m.MaxTime, m.Version = id, mints[i], 200, 1
		b, err := block.EncodeMeta(m)
		testutil.Ok(t, err)
		upload(t, bkt, path.Join(id.String(), block.MetaFilename), string(b))
	}
	l, err := block.List(ctx, bkt)
	testutil.Ok(t, err)
	var got []ulid.ULID
	for _, m := range l.Blocks {
		got = append(got, m.ULID)
	}
	testutil.Equals(t, []ulid.ULID{ids[3], ids[1], ids[2], ids[0]}, got)
	testutil.Equals(t, 0, len(l.Marked))
	testutil.Equals(t, 0, len(l.Problems))
}

func TestList_MisplacedMeta(t *testing.T) {
	ctx := context.Background()
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			bkt := bk.new(t)
			folder := ulid.MustParse("01JQ8Z5V9X3W2K7M4N6P8R0T3A")
			upload(t, bkt, path.Join(folder.String(), block.MetaFilename), thanosMetaJSON)

			l, err := block.List(ctx, bkt)
			testutil.Ok(t, err)
			testutil.Equals(t, 0, len(l.Blocks))
			testutil.Equals(t, []ulid.ULID{folder}, problemIDs(l.Problems))
			testutil.Assert(t, strings.Contains(l.Problems[0].Err.Error(), "01JQ8Z5V9X3W2K7M4N6P8R0T2V"), "%v", l.Problems[0].Err)
		})
	}
}

func TestList_EmptyBucket(t *testing.T) {
	for _, bk := range bucketKinds {
		t.Run(bk.name, func(t *testing.T) {
			l, err := block.List(context.Background(), bk.new(t))
			testutil.Ok(t, err)
			testutil.Equals(t, 0, len(l.Blocks)+len(l.Marked)+len(l.Problems))
		})
	}
}

func TestList_CanceledContext(t *testing.T) {
	bkt, err := filesystem.NewBucket(t.TempDir())
	testutil.Ok(t, err)
	uploadSynth(t, bkt, simpleBlock(0, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l, err := block.List(ctx, bkt)
	testutil.NotOk(t, err)
	testutil.Assert(t, l == nil, "listing returned with an error: %+v", l)
}

// TestOpenIndexFileMapsTheTables: a local index's symbol table and postings offset table are read
// through a memory map, not fetched into the heap, and everything read through it is what
// Prometheus' reader reads.
func TestOpenIndexFileMapsTheTables(t *testing.T) {
	var series []labels.Labels
	for i := 0; i < 20_000; i++ {
		series = append(series, labels.FromStrings("__name__", "req", "session", fmt.Sprintf("a-long-unique-session-value-%08d", i)))
	}
	_, dir, err := synth.Write(context.Background(), t.TempDir(), synth.Block{Series: series, MinTime: 0, MaxTime: 60_000, Step: 15_000})
	testutil.Ok(t, err)
	path := filepath.Join(dir, block.IndexFilename)
	want, err := index.NewFileReader(path, index.DecodePostingsRaw)
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, want.Close()) }()
	ix, err := block.OpenIndexFile(path, 8<<20) // Holds the whole index: nothing is fetched twice.
	testutil.Ok(t, err)
	defer func() { testutil.Ok(t, ix.Close()) }()

	ctx := context.Background()
	k, v := index.AllPostingsKey()
	p, err := ix.Postings(ctx, k, v)
	testutil.Ok(t, err)
	var (
		b1, b2 labels.ScratchBuilder
		c1, c2 []chunks.Meta
		n      int
	)
	for p.Next() {
		testutil.Ok(t, ix.Series(p.At(), &b1, &c1))
		testutil.Ok(t, want.Series(p.At(), &b2, &c2))
		testutil.Equals(t, b2.Labels(), b1.Labels())
		testutil.Equals(t, c2, c1)
		n++
	}
	testutil.Ok(t, p.Err())
	testutil.Ok(t, ix.Err())
	testutil.Equals(t, len(series), n)
	raw, err := os.ReadFile(path)
	testutil.Ok(t, err)
	toc, err := index.NewTOCFromByteSlice(byteSlice(raw))
	testutil.Ok(t, err)
	info, err := os.Stat(path)
	testutil.Ok(t, err)
	// Pages are 64 KiB: the first is read to learn the format, and one at each end of the series
	// and postings may hold part of a table.
	testutil.Assert(t, toc.Series-toc.Symbols > 500_000, "a symbol table of %d bytes is too small to tell", toc.Series-toc.Symbols)
	testutil.Assert(t, uint64(info.Size())-toc.PostingsTable > 500_000, "a postings offset table of %d bytes is too small to tell", uint64(info.Size())-toc.PostingsTable)
	testutil.Assert(t, ix.BytesFetched() <= int64(toc.PostingsTable-toc.Series)+3*64<<10,
		"fetched %d bytes of a %d-byte index whose series and postings lie in [%d, %d): the tables went through the heap", ix.BytesFetched(), info.Size(), toc.Series, toc.PostingsTable)
}
