package storeapi

import (
	"bytes"
	"context"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/lethe-project/lethe/internal/storepb"
	"github.com/lethe-project/lethe/internal/storepb/labelpb"
	"github.com/lethe-project/lethe/tombstones"
)

func encodeSeries(t *testing.T, ls labels.Labels, chks ...*storepb.AggrChunk) []byte {
	t.Helper()
	s := &storepb.Series{Chunks: chks}
	ls.Range(func(l labels.Label) { s.Labels = append(s.Labels, &labelpb.Label{Name: l.Name, Value: l.Value}) })
	b, err := proto.Marshal(s)
	testutil.Ok(t, err)
	return b
}

// minuteChunk is a raw chunk of one sample a minute over minutes [from, to) after t0.
func minuteChunk(t *testing.T, from, to int64) *storepb.AggrChunk {
	t.Helper()
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	testutil.Ok(t, err)
	for m := from; m < to; m++ {
		app.Append(0, t0+m*60_000, float64(m))
	}
	return &storepb.AggrChunk{MinTime: t0 + from*60_000, MaxTime: t0 + (to-1)*60_000, Raw: &storepb.Chunk{Type: storepb.Chunk_XOR, Data: c.Bytes()}}
}

func TestCompareWireLabelsAsLabelsCompare(t *testing.T) {
	sets := []labels.Labels{
		labels.EmptyLabels(),
		labels.FromStrings("__name__", "up"),
		labels.FromStrings("__name__", "up", "job", "a"),
		labels.FromStrings("__name__", "up", "job", ""),
		labels.FromStrings("__name__", "up", "job", "a", "x", "1"),
		labels.FromStrings("__name__", "up", "jobs", "a"),
		labels.FromStrings("__name__", "upx", "job", "a"),
		labels.FromStrings("a", "z"),
		labels.FromStrings("__name__", "up", "job", "b"),
	}
	for _, a := range sets {
		for _, b := range sets {
			want := labels.Compare(a, b)
			got := compareWireLabels(encodeSeries(t, a, minuteChunk(t, 0, 2)), encodeSeries(t, b))
			testutil.Equals(t, sign(want), sign(got), "%s vs %s", a, b)
		}
	}
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}

func TestWireSeriesLabelsTellsUnsorted(t *testing.T) {
	s := &storepb.Series{Labels: []*labelpb.Label{{Name: "job", Value: "a"}, {Name: "__name__", Value: "up"}}}
	raw, err := proto.Marshal(s)
	testutil.Ok(t, err)
	var b labels.ScratchBuilder
	sorted, err := wireSeriesLabels(raw, &b)
	testutil.Ok(t, err)
	testutil.Assert(t, !sorted)
	fixed, err := sortedWireSeries(raw)
	testutil.Ok(t, err)
	sorted, err = wireSeriesLabels(fixed, &b)
	testutil.Ok(t, err)
	testutil.Assert(t, sorted)
	testutil.Equals(t, labels.FromStrings("__name__", "up", "job", "a"), b.Labels())
}

func TestCutWireSeriesCutsOnlyTheChunksAnIntervalMeets(t *testing.T) {
	ls := labels.FromStrings("__name__", "up", "job", "a")
	first, second := minuteChunk(t, 0, 60), minuteChunk(t, 60, 120)
	raw := encodeSeries(t, ls, first, second)
	all := tombstones.Interval{Mint: t0, Maxt: t0 + 120*60_000}

	// No interval meets a chunk: the very bytes back.
	out, cut, err := cutWireSeries(raw, tombstones.Intervals{{Mint: t0 + 200*60_000, Maxt: t0 + 300*60_000}}, 0, all.Mint, all.Maxt)
	testutil.Ok(t, err)
	testutil.Assert(t, !cut)
	testutil.Assert(t, &out[0] == &raw[0], "an untouched series is not copied")

	// Minutes 70 to 79 deleted: the first chunk goes as encoded, the second is cut.
	ivs := tombstones.Intervals{{Mint: t0 + 70*60_000, Maxt: t0 + 80*60_000 - 1}}
	out, cut, err = cutWireSeries(raw, ivs, 0, all.Mint, all.Maxt)
	testutil.Ok(t, err)
	testutil.Assert(t, cut)
	var got storepb.Series
	testutil.Ok(t, proto.Unmarshal(out, &got))
	testutil.Equals(t, 2, len(got.Labels))
	testutil.Assert(t, len(got.Chunks) >= 2, "%d chunks", len(got.Chunks))
	testutil.Assert(t, bytes.Equal(first.Raw.Data, got.Chunks[0].Raw.Data) && got.Chunks[0].MinTime == first.MinTime && got.Chunks[0].MaxTime == first.MaxTime)
	firstBytes, err := proto.Marshal(first)
	testutil.Ok(t, err)
	testutil.Assert(t, bytes.Contains(out, firstBytes), "the untouched chunk is copied as encoded")
	var ts []int64
	for _, c := range got.Chunks {
		chk, err := decodeChunk(c.Raw)
		testutil.Ok(t, err)
		it := chk.Iterator(nil)
		for it.Next() != chunkenc.ValNone {
			ts = append(ts, it.AtT())
		}
		testutil.Ok(t, it.Err())
	}
	testutil.Equals(t, append(minutes(0, 70), minutes(80, 120)...), ts)

	// The same as cutSeries over the decoded chunks.
	want, err := cutSeries([]*storepb.AggrChunk{first, second}, ivs, 0, all.Mint, all.Maxt)
	testutil.Ok(t, err)
	testutil.Equals(t, len(want), len(got.Chunks))
	for i := range want {
		testutil.Assert(t, proto.Equal(want[i], got.Chunks[i]), "chunk %d", i)
	}

	// Everything deleted: nothing left.
	out, _, err = cutWireSeries(raw, tombstones.Intervals{all}, 0, all.Mint, all.Maxt)
	testutil.Ok(t, err)
	testutil.Assert(t, out == nil)
}

func TestSeriesNoTombstoneMeetsPassAsTheStoreSentThem(t *testing.T) {
	store := &testStore{series: []labels.Labels{a1, a2}}
	direct := &fixture{client: storepb.NewStoreClient(serve(t, func(g *grpc.Server) { storepb.RegisterStoreServer(g, store) }))}
	f := newFixture(t, []*testStore{store}, deletion{`other{job="x"}`, t0, t0 + 60_000})
	want, err := direct.series(t, upRequest(storepb.PartialResponseStrategy_WARN))
	testutil.Ok(t, err)
	got, err := f.series(t, upRequest(storepb.PartialResponseStrategy_WARN))
	testutil.Ok(t, err)
	testutil.Equals(t, want, got)
	testutil.Equals(t, []string{a1.String(), a2.String()}, got.series)

	// With a limit, lethe counts the series itself.
	req := upRequest(storepb.PartialResponseStrategy_WARN)
	req.Limit = 1
	got, err = f.series(t, req)
	testutil.Ok(t, err)
	testutil.Equals(t, []string{a1.String()}, got.series)
}

func TestOneStoreMaskedPassesUnchangedMessagesWhole(t *testing.T) {
	b3 := labels.FromStrings("__name__", "up", "job", "e", "replica", "r0")
	store := &testStore{series: []labels.Labels{a1, a2, b3}}
	f := newFixture(t, []*testStore{store}, deletion{`up{job="c"}`, t0 - 1, t0 + 7_200_000}, deletion{`up{job="e"}`, t0 + 10*60_000, t0 + 20*60_000 - 1})
	got, err := f.series(t, upRequest(storepb.PartialResponseStrategy_WARN))
	testutil.Ok(t, err)
	testutil.Equals(t, []string{a1.String(), b3.String()}, got.series)
	testutil.Equals(t, minutes(0, 60), got.samples[a1.String()])
	testutil.Equals(t, append(minutes(0, 10), minutes(20, 60)...), got.samples[b3.String()])
	testutil.Equals(t, []string{"store warning"}, got.warnings)

	// Label look-ups read the series the store's messages carry, whole or not.
	ctx := context.Background()
	vals, err := f.client.LabelValues(ctx, &storepb.LabelValuesRequest{Label: "job", Start: t0, End: t0 + 3_600_000})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"a", "e"}, vals.Values)
	names, err := f.client.LabelNames(ctx, &storepb.LabelNamesRequest{Start: t0, End: t0 + 3_600_000})
	testutil.Ok(t, err)
	testutil.Equals(t, []string{"__name__", "job", "replica"}, names.Names)
}
