package rewriter

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

// Limits pace the deleter: it works in batches of series and waits between batches so that the
// averages stay under the rates; it stops at the deadline.
type Limits struct {
	BatchSeries     int
	SeriesPerSecond float64
	BytesPerSecond  float64
	Deadline        time.Time
}

// ErrBudget stops a rewrite at the time budget; the run resumes it later.
var ErrBudget = errors.New("time budget exhausted")

// stats of one rewrite.
type stats struct {
	seriesIn, seriesOut, seriesDropped        int
	chunksCopied, chunksRewritten, chunksGone int
	bytesRead                                 int64
	samplesOut                                uint64
}

// rawPool reads chunks of encodings Prometheus does not know, such as Thanos' downsampled
// aggregate chunks, as opaque bytes: they are copied or dropped, never decoded.
type rawPool struct{ chunkenc.Pool }

func (p rawPool) Get(e chunkenc.Encoding, b []byte) (chunkenc.Chunk, error) {
	if c, err := p.Pool.Get(e, b); err == nil {
		return c, nil
	}
	return &rawChunk{enc: e, b: b}, nil
}

func (p rawPool) Put(c chunkenc.Chunk) error {
	if _, ok := c.(*rawChunk); ok {
		return nil
	}
	return p.Pool.Put(c)
}

type rawChunk struct {
	enc chunkenc.Encoding
	b   []byte
}

func (c *rawChunk) Bytes() []byte                                { return c.b }
func (c *rawChunk) Encoding() chunkenc.Encoding                  { return c.enc }
func (c *rawChunk) NumSamples() int                              { return 0 }
func (c *rawChunk) Compact()                                     {}
func (c *rawChunk) Reset(b []byte)                               { c.b = b }
func (c *rawChunk) Iterator(chunkenc.Iterator) chunkenc.Iterator { return chunkenc.NewNopIterator() }
func (c *rawChunk) Appender() (chunkenc.Appender, error) {
	return nil, errors.Newf("chunk encoding %d cannot be appended to", c.enc)
}

// deleter rewrites one downloaded block.
type deleter struct {
	logger *slog.Logger
	limits Limits
	ix     *tombstones.Index
	ext    labels.Labels
	// progress is called after every batch with the series done so far.
	progress func(done int, bytes int64)
}

// rewrite writes the block in src again under dst (a new block directory named newID) without the
// samples the index deletes, and returns the new block's stats. Unaffected chunks are copied as
// bytes; chunks that a deleted range meets are re-encoded; chunks inside one are dropped; a series
// with no sample left leaves the index, and so do the symbols only such series used.
func (d *deleter) rewrite(ctx context.Context, src, dst string, newID ulid.ULID) (st stats, err error) {
	ir, err := index.NewFileReader(filepath.Join(src, block.IndexFilename), index.DecodePostingsRaw)
	if err != nil {
		return st, errors.Wrap(err, "open index")
	}
	defer errcapture.Do(&err, ir.Close, "close index")
	cr, err := chunks.NewDirReader(filepath.Join(src, block.ChunksDirname), rawPool{chunkenc.NewPool()})
	if err != nil {
		return st, errors.Wrap(err, "open chunks")
	}
	defer errcapture.Do(&err, cr.Close, "close chunks")

	// Pass 1: which series lose every sample.
	dropped, err := d.droppedSeries(ctx, ir, cr)
	if err != nil {
		return st, err
	}
	removable, err := removableSymbols(ctx, ir, dropped)
	if err != nil {
		return st, err
	}

	// Pass 2: write the new block.
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return st, err
	}
	cw, err := chunks.NewWriter(filepath.Join(dst, block.ChunksDirname))
	if err != nil {
		return st, errors.Wrap(err, "create chunk writer")
	}
	defer func() {
		if cw != nil {
			_ = cw.Close()
		}
	}()
	iw, err := index.NewWriter(ctx, filepath.Join(dst, block.IndexFilename))
	if err != nil {
		return st, errors.Wrap(err, "create index writer")
	}
	defer func() {
		if iw != nil {
			_ = iw.Close()
		}
	}()
	syms := ir.Symbols()
	for syms.Next() {
		if _, ok := removable[syms.At()]; ok {
			continue
		}
		if err := iw.AddSymbol(syms.At()); err != nil {
			return st, errors.Wrap(err, "add symbol")
		}
	}
	if err := syms.Err(); err != nil {
		return st, errors.Wrap(err, "read symbols")
	}

	k, v := index.AllPostingsKey()
	all, err := ir.Postings(ctx, k, v)
	if err != nil {
		return st, err
	}
	var (
		builder  labels.ScratchBuilder
		chks     []chunks.Meta
		ivs      tombstones.Intervals
		ref      storage.SeriesRef
		batch    int
		started  = time.Now()
		batchEnd = time.Now()
	)
	for all.Next() {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if err := ir.Series(all.At(), &builder, &chks); err != nil {
			return st, errors.Wrap(err, "read series")
		}
		st.seriesIn++
		if _, gone := dropped[all.At()]; gone {
			st.seriesDropped++
			continue
		}
		lset := builder.Labels()
		ivs = d.ix.Intervals(lset, d.ext, ivs[:0])
		out, err := d.rewriteChunks(cr, chks, ivs, &st)
		if err != nil {
			return st, errors.Wrapf(err, "series %s", redactedLabels(lset))
		}
		if len(out) == 0 {
			// Pass 1 found a sample; a chunk that decodes to none contradicts it.
			return st, errors.Newf("series %s lost every sample in pass 2 only", redactedLabels(lset))
		}
		if err := cw.WriteChunks(out...); err != nil {
			return st, errors.Wrap(err, "write chunks")
		}
		if err := iw.AddSeries(ref, lset, out...); err != nil {
			return st, errors.Wrap(err, "add series")
		}
		ref++
		st.seriesOut++
		for _, c := range out {
			st.samplesOut += uint64(c.Chunk.NumSamples())
		}
		if batch++; batch >= d.limits.BatchSeries {
			batch = 0
			d.progress(st.seriesIn, st.bytesRead)
			if err := d.pace(ctx, st, started, &batchEnd); err != nil {
				return st, err
			}
		}
	}
	if err := all.Err(); err != nil {
		return st, errors.Wrap(err, "postings")
	}
	d.progress(st.seriesIn, st.bytesRead)
	err = cw.Close()
	cw = nil
	if err != nil {
		return st, errors.Wrap(err, "close chunk writer")
	}
	err = iw.Close()
	iw = nil
	if err != nil {
		return st, errors.Wrap(err, "close index writer")
	}
	return st, nil
}

// pace sleeps so that the series and byte rates stay under their limits, and stops at the
// deadline.
func (d *deleter) pace(ctx context.Context, st stats, started time.Time, _ *time.Time) error {
	var wait time.Duration
	if d.limits.SeriesPerSecond > 0 {
		wait = max(wait, time.Duration(float64(st.seriesIn)/d.limits.SeriesPerSecond*float64(time.Second))-time.Since(started))
	}
	if d.limits.BytesPerSecond > 0 {
		wait = max(wait, time.Duration(float64(st.bytesRead)/d.limits.BytesPerSecond*float64(time.Second))-time.Since(started))
	}
	if !d.limits.Deadline.IsZero() && time.Now().Add(wait).After(d.limits.Deadline) {
		return ErrBudget
	}
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// droppedSeries returns the series that keep no sample. Only series a tombstone covers are looked
// at, and only their chunks that a deleted range meets without covering are decoded.
func (d *deleter) droppedSeries(ctx context.Context, ir *index.Reader, cr *chunks.Reader) (map[storage.SeriesRef]struct{}, error) {
	dropped := map[storage.SeriesRef]struct{}{}
	k, v := index.AllPostingsKey()
	all, err := ir.Postings(ctx, k, v)
	if err != nil {
		return nil, err
	}
	var (
		builder labels.ScratchBuilder
		chks    []chunks.Meta
		ivs     tombstones.Intervals
	)
	for all.Next() {
		if err := ir.Series(all.At(), &builder, &chks); err != nil {
			return nil, errors.Wrap(err, "read series")
		}
		ivs = d.ix.Intervals(builder.Labels(), d.ext, ivs[:0])
		if len(ivs) == 0 {
			continue
		}
		survives := false
		for _, c := range chks {
			switch {
			case !ivs.Overlaps(c.MinTime, c.MaxTime):
				survives = true
			case covers(ivs, c.MinTime, c.MaxTime):
			case !ivs.Covers(c.MinTime) || !ivs.Covers(c.MaxTime):
				// The first or last sample is outside every deleted range.
				survives = true
			default:
				chk, _, err := cr.ChunkOrIterable(c)
				if err != nil {
					return nil, errors.Wrap(err, "read chunk")
				}
				survives = tombstones.NewIterator(chk.Iterator(nil), ivs).Next() != chunkenc.ValNone
			}
			if survives {
				break
			}
		}
		if !survives {
			dropped[all.At()] = struct{}{}
		}
	}
	return dropped, all.Err()
}

// covers reports whether one interval covers all of [mint, maxt].
func covers(ivs tombstones.Intervals, mint, maxt int64) bool {
	for _, iv := range ivs {
		if iv.Mint <= mint && maxt <= iv.Maxt {
			return true
		}
	}
	return false
}

// removableSymbols returns the strings that only dropped series use: a leaked label value leaves
// the index with them. A string any surviving series uses, as a label name or value, stays.
func removableSymbols(ctx context.Context, ir *index.Reader, dropped map[storage.SeriesRef]struct{}) (map[string]struct{}, error) {
	if len(dropped) == 0 {
		return nil, nil
	}
	cands := map[string]struct{}{}
	var (
		builder labels.ScratchBuilder
		chks    []chunks.Meta
	)
	for ref := range dropped {
		if err := ir.Series(ref, &builder, &chks); err != nil {
			return nil, err
		}
		builder.Labels().Range(func(l labels.Label) {
			cands[l.Name] = struct{}{}
			cands[l.Value] = struct{}{}
		})
	}
	names, err := ir.LabelNames(ctx)
	if err != nil {
		return nil, err
	}
	usedBySurvivor := func(p index.Postings) (bool, error) {
		for p.Next() {
			if _, gone := dropped[p.At()]; !gone {
				return true, nil
			}
		}
		return false, p.Err()
	}
	removable := map[string]struct{}{}
	for s := range cands {
		used, err := usedBySurvivor(ir.PostingsForAllLabelValues(ctx, s))
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			if used {
				break
			}
			p, err := ir.Postings(ctx, n, s)
			if err != nil {
				return nil, err
			}
			if used, err = usedBySurvivor(p); err != nil {
				return nil, err
			}
		}
		if !used {
			removable[s] = struct{}{}
		}
	}
	return removable, nil
}

// rewriteChunks returns the series' chunks without the deleted samples.
func (d *deleter) rewriteChunks(cr *chunks.Reader, chks []chunks.Meta, ivs tombstones.Intervals, st *stats) ([]chunks.Meta, error) {
	out := make([]chunks.Meta, 0, len(chks))
	for _, c := range chks {
		chk, _, err := cr.ChunkOrIterable(c)
		if err != nil {
			return nil, errors.Wrap(err, "read chunk")
		}
		st.bytesRead += int64(len(chk.Bytes()))
		switch {
		case !ivs.Overlaps(c.MinTime, c.MaxTime):
			st.chunksCopied++
			out = append(out, chunks.Meta{Chunk: chk, MinTime: c.MinTime, MaxTime: c.MaxTime})
		case covers(ivs, c.MinTime, c.MaxTime):
			st.chunksGone++
		default:
			if _, raw := chk.(*rawChunk); raw {
				// An aggregate chunk whose window meets a deleted range is dropped whole: deleted
				// data never survives in an aggregate.
				st.chunksGone++
				continue
			}
			re, err := reencode(chk, ivs)
			if err != nil {
				return nil, err
			}
			st.chunksRewritten++
			out = append(out, re...)
		}
	}
	return out, nil
}

// reencode writes the samples of a chunk that no interval covers into new chunks of the same
// encoding.
func reencode(chk chunkenc.Chunk, ivs tombstones.Intervals) ([]chunks.Meta, error) {
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

// redactedLabels names a series in errors and logs by its metric name only: its other label
// values may be what is being deleted.
func redactedLabels(ls labels.Labels) string {
	return ls.Get(labels.MetricName) + "{...}"
}
