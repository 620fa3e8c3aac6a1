package chunkcut

import (
	"encoding/binary"
	"testing"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

const res5m = int64(300_000)

// t0 is 2026-11-01T00:00:00Z.
const t0 = int64(1793491200000)

type tv struct {
	t int64
	v float64
}

// thanosAggr builds an aggregate chunk the way Thanos' downsampler does from raw counter samples:
// per 5m window its count, sum, min, max and the counter with resets applied, stamped at the
// window's end or the last raw sample; the counter aggregate starts with the first raw sample
// and ends with the last raw value at the last window's timestamp. It returns the chunk and the
// windows' samples per aggregate.
func thanosAggr(t testing.TB, raw []tv) ([]byte, [AggrTypes][]tv) {
	t.Helper()
	var want [AggrTypes][]tv
	want[AggrCounter] = append(want[AggrCounter], raw[0])
	var (
		counter, last float64
		i             int
	)
	lastT := raw[len(raw)-1].t
	for i < len(raw) {
		end := min(raw[i].t-raw[i].t%res5m+res5m-1, lastT)
		var n, sum float64
		lo, hi := raw[i].v, raw[i].v
		for ; i < len(raw) && raw[i].t <= end; i++ {
			v := raw[i].v
			switch {
			case n == 0 && len(want[AggrCount]) == 0:
				counter = v
			case v >= last:
				counter += v - last
			default:
				counter += v
			}
			last = v
			n, sum, lo, hi = n+1, sum+v, min(lo, v), max(hi, v)
		}
		for k, v := range []float64{n, sum, lo, hi, counter} {
			want[k] = append(want[k], tv{end, v})
		}
	}
	want[AggrCounter] = append(want[AggrCounter], tv{want[AggrCount][len(want[AggrCount])-1].t, raw[len(raw)-1].v})
	var cs [AggrTypes]chunkenc.Chunk
	for k := range cs {
		c := chunkenc.NewXORChunk()
		app, err := c.Appender()
		testutil.Ok(t, err)
		for _, s := range want[k] {
			app.Append(0, s.t, s.v)
		}
		cs[k] = c
	}
	return encodeAggr(cs), want
}

func aggrSamples(t *testing.T, b []byte) [AggrTypes][]tv {
	t.Helper()
	cs, err := parseAggr(b)
	testutil.Ok(t, err)
	var out [AggrTypes][]tv
	for k, c := range cs {
		it := c.Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			ts, v := it.At()
			out[k] = append(out[k], tv{ts, v})
		}
		testutil.Ok(t, it.Err())
	}
	return out
}

func TestCutAggr(t *testing.T) {
	// A counter sampled every minute for 2h from t0 + 30s, with a reset at 00:47.
	var raw []tv
	for m := int64(0); m < 120; m++ {
		v := float64(1000 + 7*m)
		if m >= 47 {
			v = float64(3 * (m - 47))
		}
		raw = append(raw, tv{t0 + 30_000 + m*60_000, v})
	}
	chk, want := thanosAggr(t, raw)
	testutil.Equals(t, want, aggrSamples(t, chk), "the aggregate chunk round-trips")
	windows := len(want[AggrCount])
	testutil.Equals(t, 24, windows)
	minute := func(m int64) int64 { return t0 + m*60_000 }

	for _, tc := range []struct {
		name string
		ivs  tombstones.Intervals
		// gone are the indexes of the windows that must go.
		gone []int
	}{
		{"two raw minutes inside window 3", tombstones.Intervals{{Mint: minute(16), Maxt: minute(17)}}, []int{3}},
		{"windows 4 to 9, across the reset", tombstones.Intervals{{Mint: minute(20), Maxt: minute(49)}}, []int{4, 5, 6, 7, 8, 9}},
		{"the first window", tombstones.Intervals{{Mint: minute(-10), Maxt: minute(2)}}, []int{0}},
		{"the last two windows", tombstones.Intervals{{Mint: minute(112), Maxt: minute(500)}}, []int{22, 23}},
		{"a deleted range between two samples of window 10 still takes it", tombstones.Intervals{{Mint: minute(52) + 40_000, Maxt: minute(52) + 50_000}}, []int{10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, mint, maxt, ok, err := Aggr(chk, tc.ivs, res5m)
			testutil.Ok(t, err)
			testutil.Assert(t, ok && out != nil)
			got := aggrSamples(t, out)
			gone := map[int]bool{}
			for _, i := range tc.gone {
				gone[i] = true
			}
			var exp [AggrTypes][]tv
			for k := AggrCount; k < AggrCounter; k++ {
				for i, s := range want[k] {
					if !gone[i] {
						exp[k] = append(exp[k], s)
					}
				}
			}
			testutil.Equals(t, exp[AggrCount][0].t, mint)
			testutil.Equals(t, exp[AggrCount][len(exp[AggrCount])-1].t, maxt)
			// The counter keeps its first raw sample and the windows before the first that goes,
			// then the max of the last of those as its last raw value.
			first := windows
			for _, i := range tc.gone {
				first = min(first, i)
			}
			if first > 0 {
				exp[AggrCounter] = append(exp[AggrCounter], want[AggrCounter][:first+1]...)
				exp[AggrCounter] = append(exp[AggrCounter], want[AggrMax][first-1])
			}
			testutil.Equals(t, exp, got)
			// No sample of any aggregate lies in a deleted range, nor its window.
			for k := range got {
				for _, s := range got[k] {
					testutil.Assert(t, !tc.ivs.Overlaps(WindowStart(s.t, res5m), s.t), "aggregate %d keeps %v", k, s)
				}
			}
		})
	}

	t.Run("every window", func(t *testing.T) {
		out, _, _, ok, err := Aggr(chk, tombstones.Intervals{{Mint: minute(-5), Maxt: minute(200)}}, res5m)
		testutil.Ok(t, err)
		testutil.Assert(t, ok && out == nil)
	})
	t.Run("corrupt", func(t *testing.T) {
		huge := binary.AppendUvarint(nil, ^uint64(0))
		for _, b := range [][]byte{{}, {5, 1, 2}, {1}, append(huge, 1, 2, 3), append(append([]byte{}, chk...), 0)} {
			_, _, _, _, err := Aggr(b, tombstones.Intervals{{Mint: minute(0), Maxt: minute(1)}}, res5m)
			testutil.NotOk(t, err, "%v", b)
		}
	})
}

// TestCutAggrHistograms: Thanos downsamples native histograms into a count (floats), a sum and a
// counter (float histograms, the sum a gauge) per window; cutting keeps the other windows'
// count and sum as they were, and the counter up to the first window cut.
func TestCutAggrHistograms(t *testing.T) {
	var cs [AggrTypes]chunkenc.Chunk
	cs[AggrCount], cs[AggrSum], cs[AggrCounter] = chunkenc.NewXORChunk(), chunkenc.NewFloatHistogramChunk(), chunkenc.NewFloatHistogramChunk()
	var apps [AggrTypes]chunkenc.Appender
	for k, c := range cs {
		if c != nil {
			app, err := c.Appender()
			testutil.Ok(t, err)
			apps[k] = app
		}
	}
	type window struct {
		t            int64
		count        float64
		sum, counter string
	}
	var want []window
	for w := int64(0); w < 24; w++ {
		ts := t0 + (w+1)*res5m - 1
		sum := synth.ExponentialHistogram(uint64(w), float64(w), []int64{w, 2 * w, 1}).ToFloat(nil)
		sum.CounterResetHint = histogram.GaugeType
		counter := synth.ExponentialHistogram(uint64(10*w), float64(10*w), []int64{10 * w, 20 * w, 10 * w}).ToFloat(nil)
		apps[AggrCount].Append(0, ts, 5)
		for k, fh := range map[int]*histogram.FloatHistogram{AggrSum: sum, AggrCounter: counter} {
			next, _, app, err := apps[k].AppendFloatHistogram(nil, 0, ts, fh, false)
			testutil.Ok(t, err)
			testutil.Assert(t, next == nil, "one chunk per aggregate")
			apps[k] = app
		}
		want = append(want, window{ts, 5, sum.String(), counter.String()})
	}
	read := func(b []byte) []window {
		cs, err := parseAggr(b)
		testutil.Ok(t, err)
		var out []window
		it := cs[AggrCount].Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			ts, v := it.At()
			out = append(out, window{t: ts, count: v})
		}
		testutil.Ok(t, it.Err())
		for _, k := range []int{AggrSum, AggrCounter} {
			it := cs[k].Iterator(nil)
			for i := 0; it.Next() == chunkenc.ValFloatHistogram; i++ {
				ts, fh := it.AtFloatHistogram(nil)
				testutil.Equals(t, out[i].t, ts)
				if k == AggrSum {
					out[i].sum = fh.String()
				} else {
					out[i].counter = fh.String()
				}
			}
			testutil.Ok(t, it.Err())
		}
		return out
	}
	chk := encodeAggr(cs)
	testutil.Equals(t, want, read(chk))

	// Windows 5 to 7 and the last one.
	ivs := tombstones.Intervals{{Mint: t0 + 5*res5m + 1000, Maxt: t0 + 7*res5m + 1000}, {Mint: t0 + 23*res5m + 1000, Maxt: t0 + 23*res5m + 2000}}
	out, mint, maxt, ok, err := Aggr(chk, ivs, res5m)
	testutil.Ok(t, err)
	testutil.Assert(t, ok && out != nil)
	exp := append(append([]window{}, want[:5]...), want[8:23]...)
	// The counter, a running total through the deleted windows, keeps the windows before them.
	for i := 5; i < len(exp); i++ {
		exp[i].counter = ""
	}
	testutil.Equals(t, exp, read(out))
	testutil.Equals(t, exp[0].t, mint)
	testutil.Equals(t, exp[len(exp)-1].t, maxt)
}

// TestCutAggrLeaksNothingOfAGauge: the counter aggregate is a running total over the raw
// samples, gauges included; a value it holds after a deleted window would give the deleted
// samples away (here the jump from 10 to 1000 and back).
func TestCutAggrLeaksNothingOfAGauge(t *testing.T) {
	var raw []tv
	for m := int64(0); m < 30; m++ {
		v := 10.0
		if m >= 10 && m < 15 {
			v = 1000
		}
		raw = append(raw, tv{t0 + 30_000 + m*60_000, v})
	}
	chk, _ := thanosAggr(t, raw)
	out, _, _, ok, err := Aggr(chk, tombstones.Intervals{{Mint: t0 + 600_000, Maxt: t0 + 899_999}}, res5m)
	testutil.Ok(t, err)
	testutil.Assert(t, ok && out != nil)
	for k, ss := range aggrSamples(t, out) {
		for _, s := range ss {
			testutil.Assert(t, s.v < 1000, "aggregate %d holds %v, which only the deleted samples explain", k, s)
		}
	}
}

// FuzzCutAggr: whatever the bytes of an aggregate chunk, cutting them returns an error or a
// chunk, never panics, and a chunk it returns parses again.
func FuzzCutAggr(f *testing.F) {
	var raw []tv
	for m := int64(0); m < 20; m++ {
		raw = append(raw, tv{t0 + m*60_000, float64(m % 7)})
	}
	chk, _ := thanosAggr(f, raw)
	f.Add(chk, int64(300_000), int64(400_000))
	f.Add([]byte{0, 0, 0, 0, 0}, int64(0), int64(1))
	f.Add([]byte{3, 1, 0, 0, 0}, int64(0), int64(1))
	f.Fuzz(func(t *testing.T, b []byte, from, length int64) {
		ivs := tombstones.Intervals{{Mint: t0 + from, Maxt: t0 + from + max(length, 0)}}
		out, _, _, ok, err := Aggr(b, ivs, res5m)
		if err != nil || !ok || out == nil {
			return
		}
		if _, err := parseAggr(out); err != nil {
			t.Fatalf("cut chunk does not parse: %v", err)
		}
	})
}
