package chunkcut

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/tombstones"
)

// The kept prefix of a float chunk is byte for byte the chunk Prometheus' appender writes for
// those samples, for every cut, over values and timestamps that use every branch of the encoding.
func TestXORKeptPrefixIsTheEncodingOfThePrefix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	series := map[string]func(i int, prev float64) float64{
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
	}
	gaps := []int64{15_000, 15_000, 15_001, 14_000, 16_000, 50_000, 15_000 + 70_000, 15_000, 1 << 40, 15_000, 15_000 - 500_000 + 600_000}
	for name, value := range series {
		t.Run(name, func(t *testing.T) {
			var ts []int64
			var vs []float64
			tm, v := int64(1_000_000), 0.0
			for i := 0; i < 120; i++ {
				tm += gaps[rng.IntN(len(gaps))]
				v = value(i, v)
				ts, vs = append(ts, tm), append(vs, v)
			}
			full := xorChunkOf(t, ts, vs)
			for k := 1; k < len(ts); k++ {
				m, ok, err := xorKeptPrefix(full, tombstones.Intervals{{Mint: ts[k], Maxt: math.MaxInt64}})
				testutil.Ok(t, err)
				testutil.Assert(t, ok, "k=%d: a deleted end is a kept prefix", k)
				want := xorChunkOf(t, ts[:k], vs[:k])
				testutil.Equals(t, want.Bytes(), m.Chunk.Bytes(), "k=%d", k)
				testutil.Equals(t, ts[0], m.MinTime)
				testutil.Equals(t, ts[k-1], m.MaxTime)
			}
		})
	}
}

// Any other cut is left to re-encoding: a surviving sample after the deleted range, a deleted
// start, nothing deleted.
func TestXORKeptPrefixLeavesOtherCuts(t *testing.T) {
	ts := []int64{10, 20, 30, 40, 50}
	c := xorChunkOf(t, ts, []float64{1, 2, 3, 4, 5})
	for _, ivs := range []tombstones.Intervals{
		{{Mint: 20, Maxt: 30}},
		{{Mint: 0, Maxt: 20}},
		{{Mint: 60, Maxt: 70}},
		{{Mint: 0, Maxt: 100}},
	} {
		_, ok, err := xorKeptPrefix(c, ivs)
		testutil.Ok(t, err)
		testutil.Assert(t, !ok, "%v", ivs)
	}
	_, ok, err := xorKeptPrefix(c, tombstones.Intervals{{Mint: 35, Maxt: 100}})
	testutil.Ok(t, err)
	testutil.Assert(t, ok)
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

// A chunk cut short is an error, not a panic or a wrong prefix.
func TestXORKeptPrefixTruncatedChunk(t *testing.T) {
	ts := []int64{10, 20, 35, 40, 1 << 40}
	c := xorChunkOf(t, ts, []float64{1, 2.5, -3, 4e300, 5})
	for n := 0; n < len(c.Bytes()); n++ {
		short, err := chunkenc.FromData(chunkenc.EncXOR, c.Bytes()[:n])
		testutil.Ok(t, err)
		_, ok, err := xorKeptPrefix(short, tombstones.Intervals{{Mint: 40, Maxt: math.MaxInt64}})
		testutil.NotOk(t, err, "%d bytes", n)
		testutil.Assert(t, !ok)
	}
}
