// Package synth writes real TSDB blocks of generated series with Prometheus' tsdb package and
// uploads them as Thanos blocks. The demo and the tests use it; nothing in production does.
package synth

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
)

// Block describes one block to generate: every series gets a sample every Step milliseconds in
// [MinTime, MaxTime), with Value(series index, timestamp) as its value.
type Block struct {
	Series           []labels.Labels
	MinTime, MaxTime int64
	Step             int64
	// External labels go into meta.json's thanos section; nil writes a plain Prometheus block.
	External map[string]string
	Value    func(series int, ts int64) float64
	// Histograms are native histogram series, sampled on the same timestamps as Series, with
	// Histogram(histogram series index, timestamp) as their sample; a nil Histogram writes
	// DefaultHistogram. A block may hold only histogram series.
	Histograms []labels.Labels
	Histogram  func(series int, ts int64) *histogram.Histogram
}

// DefaultHistogram is a counter native histogram with exponential buckets (schema 0, four
// positive buckets, a zero bucket) after n increments of series-dependent whole counts. Write
// passes n = timestamp/Step, so consecutive blocks continue the same counter.
func DefaultHistogram(series int, n int64) *histogram.Histogram {
	counts := make([]int64, 4)
	for j := range counts {
		counts[j] = n * int64(series+j+1)
	}
	return ExponentialHistogram(uint64(n), float64(n)*0.25*float64(series+1), counts)
}

// ExponentialHistogram returns a counter native histogram of schema 0 with zeroCount in the zero
// bucket (threshold 0.001), the given absolute counts in consecutive positive buckets from
// (0.5, 1], and sum as its sum.
func ExponentialHistogram(zeroCount uint64, sum float64, counts []int64) *histogram.Histogram {
	h := &histogram.Histogram{
		Schema:        0,
		ZeroThreshold: 0.001,
		ZeroCount:     zeroCount,
		Count:         zeroCount,
		Sum:           sum,
	}
	if len(counts) > 0 {
		h.PositiveSpans = []histogram.Span{{Offset: 0, Length: uint32(len(counts))}}
	}
	var prev int64
	for _, c := range counts {
		h.PositiveBuckets = append(h.PositiveBuckets, c-prev) // deltas, as the type wants
		h.Count += uint64(c)
		prev = c
	}
	return h
}

// Write builds the block under dir and returns its meta.json (with the thanos section when
// External is set) and the path of the block directory.
func Write(ctx context.Context, dir string, b Block) (*block.Meta, string, error) {
	if len(b.Series)+len(b.Histograms) == 0 || b.Step <= 0 || b.MaxTime <= b.MinTime {
		return nil, "", errors.New("synth: block needs series, a positive step and MinTime < MaxTime")
	}
	value := b.Value
	if value == nil {
		value = func(i int, ts int64) float64 { return float64(i) + float64(ts-b.MinTime)/1000 }
	}
	hist := b.Histogram
	if hist == nil {
		hist = func(i int, ts int64) *histogram.Histogram { return DefaultHistogram(i, ts/b.Step) }
	}
	w, err := tsdb.NewBlockWriter(slog.New(slog.DiscardHandler), dir, b.MaxTime-b.MinTime)
	if err != nil {
		return nil, "", errors.Wrap(err, "synth: new block writer")
	}
	defer w.Close()
	app := w.Appender(ctx)
	for ts := b.MinTime; ts < b.MaxTime; ts += b.Step {
		for i, ls := range b.Series {
			if _, err := app.Append(0, ls, ts, value(i, ts)); err != nil {
				return nil, "", errors.Wrap(err, "synth: append")
			}
		}
		for i, ls := range b.Histograms {
			if _, err := app.AppendHistogram(0, ls, ts, hist(i, ts), nil); err != nil {
				return nil, "", errors.Wrap(err, "synth: append histogram")
			}
		}
	}
	if err := app.Commit(); err != nil {
		return nil, "", errors.Wrap(err, "synth: commit")
	}
	id, err := w.Flush(ctx)
	if err != nil {
		return nil, "", errors.Wrap(err, "synth: flush")
	}
	bdir := filepath.Join(dir, id.String())
	raw, err := os.ReadFile(filepath.Join(bdir, block.MetaFilename))
	if err != nil {
		return nil, "", errors.Wrap(err, "synth: read meta.json")
	}
	meta, err := block.DecodeMeta(raw)
	if err != nil {
		return nil, "", err
	}
	if b.External != nil {
		meta.Thanos = &block.Thanos{Version: 1, Labels: b.External, Source: "sidecar"}
	}
	return meta, bdir, nil
}

// Upload writes the block and uploads it to bkt.
func Upload(ctx context.Context, bkt objstore.Bucket, tmp string, b Block) (ulid.ULID, error) {
	meta, dir, err := Write(ctx, tmp, b)
	if err != nil {
		return ulid.ULID{}, err
	}
	if err := block.Upload(ctx, bkt, dir, meta); err != nil {
		return ulid.ULID{}, err
	}
	return meta.ULID, os.RemoveAll(dir)
}
