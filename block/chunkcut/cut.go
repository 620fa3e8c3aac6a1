// Package chunkcut cuts chunks at deleted ranges: raw XOR and native histogram chunks are
// re-encoded without the deleted samples, and Thanos' downsampled aggregate chunks lose the
// windows a deleted range meets. The rewriter writes what it returns into new blocks; the StoreAPI
// filter sends it to Thanos Query. It knows nothing of either.
package chunkcut

import (
	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"

	"github.com/lethe-project/lethe/tombstones"
)

// WindowStart is where the raw samples behind a chunk begin. Thanos stamps a downsampled
// aggregate with the end of its window, so an aggregate chunk starting at t also summarises raw
// samples from the start of t's window on; a raw chunk (resolution 0) starts where it says.
func WindowStart(t, resolution int64) int64 {
	if resolution <= 0 {
		return t
	}
	w := t % resolution
	if w < 0 {
		w += resolution
	}
	return t - w
}

// Raw writes the samples of a chunk that no interval covers into new chunks of the same
// encoding.
func Raw(chk chunkenc.Chunk, ivs tombstones.Intervals) ([]chunks.Meta, error) {
	// A float chunk keeps the bits of most of its kept samples (xorCut).
	if out, ok, err := xorCut(chk, ivs); err != nil || ok {
		return out, err
	}
	it := tombstones.NewIterator(chk.Iterator(nil), ivs)
	var (
		out  []chunks.Meta
		cur  *chunks.Meta
		app  chunkenc.Appender
		emit = func() {
			if cur != nil {
				out = append(out, *cur)
			}
		}
		start = func(c chunkenc.Chunk, t int64) error {
			emit()
			a, err := c.Appender()
			if err != nil {
				return err
			}
			cur, app = &chunks.Meta{Chunk: c, MinTime: t, MaxTime: t}, a
			return nil
		}
	)
	for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
		t, st := it.AtT(), it.AtST()
		if cur == nil {
			c, err := chunkenc.NewEmptyChunk(chk.Encoding())
			if err != nil {
				return nil, err
			}
			if err := start(c, t); err != nil {
				return nil, err
			}
		}
		var (
			next    chunkenc.Chunk
			recoded bool
			err     error
		)
		switch vt {
		case chunkenc.ValFloat:
			_, v := it.At()
			app.Append(st, t, v)
		case chunkenc.ValHistogram:
			_, h := it.AtHistogram(nil)
			next, recoded, app, err = app.AppendHistogram(nil, st, t, h, false)
		case chunkenc.ValFloatHistogram:
			_, fh := it.AtFloatHistogram(nil)
			next, recoded, app, err = app.AppendFloatHistogram(nil, st, t, fh, false)
		}
		if err != nil {
			return nil, errors.Wrap(err, "re-encode")
		}
		switch {
		case next != nil && recoded:
			cur.Chunk = next
		case next != nil:
			out = append(out, *cur)
			cur = &chunks.Meta{Chunk: next, MinTime: t}
		}
		cur.MaxTime = t
	}
	if err := it.Err(); err != nil {
		return nil, errors.Wrap(err, "decode chunk")
	}
	emit()
	return out, nil
}
