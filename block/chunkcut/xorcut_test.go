package chunkcut

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/tombstones"
)

// xorTestSeries are values and timestamps that use every branch of the XOR encoding.
func xorTestSeries(rng *rand.Rand) map[string][2][]float64 {
	value := map[string]func(i int, prev float64) float64{
		"constant": func(int, float64) float64 { return 42 },
		"counter":  func(i int, _ float64) float64 { return float64(i * 7) },
		"random":   func(int, float64) float64 { return rng.NormFloat64() * 1e6 },
		"mixed": func(i int, prev float64) float64 {
			switch i % 5 {
			case 0:
				return prev
			case 1:
				return math.Float64frombits(rng.Uint64())
			default:
				return prev + float64(rng.IntN(1000))/8
			}
		},
		"gauge": func(int, float64) float64 { return float64(rng.IntN(4)) * 0.25 },
	}
	regular := map[string]bool{"counter": true}
	gaps := []int64{15_000, 15_000, 15_001, 14_000, 16_000, 50_000, 15_000 + 70_000, 15_000, 1 << 40, 15_000, 15_000 - 500_000 + 600_000}
	out := map[string][2][]float64{}
	for name, f := range value {
		var ts, vs []float64
		tm, v := int64(1_000_000), 0.0
		for i := 0; i < 120; i++ {
			if regular[name] {
				tm += 15_000 // Scraped at a regular interval, as most series are.
			} else {
				tm += gaps[rng.IntN(len(gaps))]
			}
			v = f(i, v)
			ts, vs = append(ts, float64(tm)), append(vs, v)
		}
		out[name] = [2][]float64{ts, vs}
	}
	return out
}

// What xorCut leaves of a float chunk is byte for byte the chunk Prometheus' appender writes
// for the kept samples, for every cut: a deleted end, start or middle, several holes, nothing
// deleted, everything deleted.
func TestXORCutIsTheEncodingOfTheKeptSamples(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for name, s := range xorTestSeries(rng) {
		t.Run(name, func(t *testing.T) {
			ts := make([]int64, len(s[0]))
			for i, f := range s[0] {
				ts[i] = int64(f)
			}
			vs := s[1]
			full := xorChunkOf(t, ts, vs)
			var cuts []tombstones.Intervals
			for k := 0; k <= len(ts); k++ {
				if k < len(ts) {
					cuts = append(cuts, tombstones.Intervals{{Mint: ts[k], Maxt: math.MaxInt64}}) // Kept prefix of k.
					cuts = append(cuts, tombstones.Intervals{{Mint: math.MinInt64, Maxt: ts[k]}}) // Kept suffix after k.
				}
				if k > 0 && k < len(ts) {
					cuts = append(cuts, tombstones.Intervals{{Mint: ts[k-1] + 1, Maxt: ts[k] - 1}}) // Between samples: nothing.
				}
			}
			for range 300 {
				var ivs tombstones.Intervals
				for range 1 + rng.IntN(4) {
					a, b := rng.IntN(len(ts)), rng.IntN(len(ts))
					ivs = ivs.Add(tombstones.Interval{Mint: ts[min(a, b)], Maxt: ts[max(a, b)]})
				}
				cuts = append(cuts, ivs)
			}
			cuts = append(cuts, tombstones.Intervals{{Mint: math.MinInt64, Maxt: math.MaxInt64}})
			for _, ivs := range cuts {
				var kt []int64
				var kv []float64
				for i := range ts {
					if !ivs.Covers(ts[i]) {
						kt, kv = append(kt, ts[i]), append(kv, vs[i])
					}
				}
				got, ok, err := xorCut(full, ivs)
				testutil.Ok(t, err)
				testutil.Assert(t, ok)
				if len(kt) == 0 {
					testutil.Equals(t, 0, len(got), "%v", ivs)
					continue
				}
				testutil.Equals(t, 1, len(got), "%v", ivs)
				testutil.Equals(t, xorChunkOf(t, kt, kv).Bytes(), got[0].Chunk.Bytes(), "%v", ivs)
				testutil.Equals(t, kt[0], got[0].MinTime)
				testutil.Equals(t, kt[len(kt)-1], got[0].MaxTime)
			}
		})
	}
}

// Only float chunks are cut by copying bits.
func TestXORCutLeavesOtherEncodings(t *testing.T) {
	_, ok, err := xorCut(chunkenc.NewHistogramChunk(), tombstones.Intervals{{Mint: 0, Maxt: 10}})
	testutil.Ok(t, err)
	testutil.Assert(t, !ok)
}

func xorChunkOf(t *testing.T, ts []int64, vs []float64) chunkenc.Chunk {
	t.Helper()
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	testutil.Ok(t, err)
	for i := range ts {
		app.Append(0, ts[i], vs[i])
	}
	return c
}

// A chunk cut short is an error, not a panic or a wrong cut, whatever is deleted.
func TestXORCutTruncatedChunk(t *testing.T) {
	ts := []int64{10, 20, 35, 40, 1 << 40}
	c := xorChunkOf(t, ts, []float64{1, 2.5, -3, 4e300, 5})
	for n := 0; n < len(c.Bytes()); n++ {
		short, err := chunkenc.FromData(chunkenc.EncXOR, c.Bytes()[:n])
		testutil.Ok(t, err)
		for _, ivs := range []tombstones.Intervals{{{Mint: 40, Maxt: math.MaxInt64}}, {{Mint: 0, Maxt: 20}}, {{Mint: 30, Maxt: 36}}} {
			_, ok, err := xorCut(short, ivs)
			testutil.NotOk(t, err, "%d bytes, %v", n, ivs)
			testutil.Assert(t, !ok)
		}
	}
}

// BenchmarkXORCut cuts the first 40 of 120 samples of a gauge and of a counter off: the common
// cut of a deleted range that ends inside a chunk.
func BenchmarkXORCut(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, name := range []string{"counter", "gauge", "random"} {
		s := xorTestSeries(rng)[name]
		c := chunkenc.NewXORChunk()
		app, err := c.Appender()
		testutil.Ok(b, err)
		for i := range s[0] {
			app.Append(0, int64(s[0][i]), s[1][i])
		}
		ivs := tombstones.Intervals{{Mint: math.MinInt64, Maxt: int64(s[0][39])}}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, _, err := xorCut(c, ivs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
