package chunkcut

import (
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

func TestRawKeepsWhatNoIntervalCovers(t *testing.T) {
	xor := chunkenc.NewXORChunk()
	app, err := xor.Appender()
	testutil.Ok(t, err)
	hc := chunkenc.NewHistogramChunk()
	happ, err := hc.Appender()
	testutil.Ok(t, err)
	for i := int64(0); i < 120; i++ {
		app.Append(0, t0+i*60_000, float64(i))
		var recoded bool
		var next chunkenc.Chunk
		next, recoded, happ, err = happ.AppendHistogram(nil, 0, t0+i*60_000, synth.DefaultHistogram(0, i), false)
		testutil.Ok(t, err)
		testutil.Assert(t, next == nil || recoded, "the test histograms fit one chunk")
		if next != nil {
			hc = next.(*chunkenc.HistogramChunk)
		}
	}
	ivs := tombstones.Intervals{{Mint: t0 + 40*60_000, Maxt: t0 + 60*60_000 - 1}, {Mint: t0 + 119*60_000, Maxt: t0 + 200*60_000}}

	metas, err := Raw(xor, ivs)
	testutil.Ok(t, err)
	var got []int64
	for _, m := range metas {
		testutil.Equals(t, chunkenc.EncXOR, m.Chunk.Encoding())
		it := m.Chunk.Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			ts, v := it.At()
			testutil.Equals(t, float64((ts-t0)/60_000), v)
			testutil.Assert(t, ts >= m.MinTime && ts <= m.MaxTime, "sample %d outside its chunk's [%d, %d]", ts, m.MinTime, m.MaxTime)
			got = append(got, ts)
		}
		testutil.Ok(t, it.Err())
	}
	var want []int64
	for i := int64(0); i < 119; i++ {
		if i < 40 || i >= 60 {
			want = append(want, t0+i*60_000)
		}
	}
	testutil.Equals(t, want, got)

	// A native histogram chunk keeps its histograms, each as it was.
	metas, err = Raw(hc, ivs)
	testutil.Ok(t, err)
	var hts []int64
	for _, m := range metas {
		testutil.Equals(t, chunkenc.EncHistogram, m.Chunk.Encoding())
		it := m.Chunk.Iterator(nil)
		for it.Next() == chunkenc.ValHistogram {
			ts, h := it.AtHistogram(nil)
			exp := synth.DefaultHistogram(0, (ts-t0)/60_000)
			testutil.Equals(t, exp.Count, h.Count)
			testutil.Equals(t, exp.Sum, h.Sum)
			hts = append(hts, ts)
		}
		testutil.Ok(t, it.Err())
	}
	testutil.Equals(t, want, hts)

	// Nothing left: no chunk.
	metas, err = Raw(xor, tombstones.Intervals{{Mint: t0, Maxt: t0 + 200*60_000}})
	testutil.Ok(t, err)
	testutil.Equals(t, 0, len(metas))
}
