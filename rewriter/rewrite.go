package rewriter

import (
	"context"
	stderrors "errors"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/block/chunkcut"
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

func isRaw(c chunkenc.Chunk) bool {
	_, ok := c.(*rawChunk)
	return ok
}

// deleter rewrites one downloaded block.
type deleter struct {
	logger *slog.Logger
	limits Limits
	ix     *tombstones.Index
	// applied are the tombstones in ix; pass 1 reads only the series their selectors may match.
	applied []*tombstones.Tombstone
	ext     labels.Labels
	// resolution of a downsampled block: its aggregates summarise windows before their timestamps.
	resolution int64
	// found, when set, is pass 1's result as the planner found it, from chunk metadata.
	found *pass1
	// progress is called after every batch with the series done so far.
	progress func(done int, bytes int64)
	// checkpointEvery, when set, has the deleter hand a checkpoint to save at the first batch
	// boundary after each such interval, so that a crash redoes at most that much of a block.
	checkpointEvery time.Duration
	save            func(context.Context, *checkpoint) error
}

// checkpoint is where a rewrite stopped inside a block: how many series of the source it has
// streamed, and the state of its output. With the output files, it lets a later run go on from
// there and write the same bytes as an uninterrupted run.
type checkpoint struct {
	Source     ulid.ULID   `json:"source"`
	Block      ulid.ULID   `json:"block"`
	Tombstones []ulid.ULID `json:"tombstones"`
	// Format is checkpointFormat; a checkpoint of another format is not resumed.
	Format       int            `json:"format"`
	PostingsDone int            `json:"postings_done"`
	Segments     []segmentState `json:"segments"`
	IndexSize    int64          `json:"index_size"`
	Stats        statsState     `json:"stats"`
	// Parts are the objects that hold the output files as far as checkpointed.
	Parts []checkpointPart `json:"parts"`
}

// checkpointFormat is the format of checkpoints this version writes: 3 carries the output files
// in parts, each checkpoint's additions; 2 carried them whole at each checkpoint, 1 carried a log
// of series instead of the index.
const checkpointFormat = 3

// checkpointPart is Size bytes of the output file File (slash-separated, relative to the new
// block's directory) from Offset, in the object Object under the job's checkpoint prefix.
type checkpointPart struct {
	File   string `json:"file"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	Object string `json:"object"`
}

// files are the output files a checkpoint holds and their sizes, named as in its parts.
func (cp *checkpoint) files() []segmentState {
	fs := []segmentState{{Name: block.IndexFilename, Size: cp.IndexSize}}
	for _, s := range cp.Segments {
		fs = append(fs, segmentState{Name: block.ChunksDirname + "/" + s.Name, Size: s.Size})
	}
	return fs
}

// covered returns, per file, how far from its start the checkpoint's parts hold it.
func (cp *checkpoint) covered() map[string]int64 {
	c := map[string]int64{}
	for _, p := range cp.Parts {
		c[p.File] = max(c[p.File], p.Offset+p.Size)
	}
	return c
}

// statsState is stats as checkpointed.
type statsState struct {
	SeriesIn, SeriesOut, SeriesDropped        int
	ChunksCopied, ChunksRewritten, ChunksGone int
	BytesRead                                 int64
	SamplesOut                                uint64
}

// add adds the counts of o.
func (s *stats) add(o stats) {
	s.seriesIn += o.seriesIn
	s.seriesOut += o.seriesOut
	s.seriesDropped += o.seriesDropped
	s.chunksCopied += o.chunksCopied
	s.chunksRewritten += o.chunksRewritten
	s.chunksGone += o.chunksGone
	s.bytesRead += o.bytesRead
	s.samplesOut += o.samplesOut
}

func (s stats) state() statsState {
	return statsState{s.seriesIn, s.seriesOut, s.seriesDropped, s.chunksCopied, s.chunksRewritten, s.chunksGone, s.bytesRead, s.samplesOut}
}

func (s statsState) stats() stats {
	return stats{s.SeriesIn, s.SeriesOut, s.SeriesDropped, s.ChunksCopied, s.ChunksRewritten, s.ChunksGone, s.BytesRead, s.SamplesOut}
}

// rewrite writes the block in srcDir again under dst without the samples the index deletes.
// Unaffected chunks are copied as bytes; chunks that a deleted range meets are re-encoded; chunks
// inside one are dropped; a series with no sample left leaves the index, and so do the symbols only
// such series used. The chunks are streamed to dst/chunks and the series to dst/index; postings
// follow at the end. When the limits stop it, it returns ErrBudget and a checkpoint of the state
// in dst; given that checkpoint, it goes on from there. Every checkpointEvery it saves one on the
// way.
func (d *deleter) rewrite(ctx context.Context, srcDir, dst string, resume *checkpoint) (st stats, cp *checkpoint, err error) {
	return d.rewriteFrom(ctx, localSource(srcDir), dst, resume)
}

// blockSource is where a rewrite reads the source block: its index, a local file, and its chunk
// segments, local files or the bucket's objects, opened for a sequential or a random reader.
type blockSource struct {
	index  string
	chunks func(sequential bool) (*chunkFiles, error)
}

// localSource is the block in dir.
func localSource(dir string) blockSource {
	return blockSource{index: filepath.Join(dir, block.IndexFilename), chunks: func(sequential bool) (*chunkFiles, error) {
		return openLocalChunks(filepath.Join(dir, block.ChunksDirname), rawPool{chunkenc.NewPool()}, sequential)
	}}
}

// bucketSource is the block whose index is the local file index and whose chunk segments are
// the objects segments (chunkObjects), streamed from the bucket as they are rewritten: the
// chunks, most of the block, need no local copy.
func bucketSource(ctx context.Context, bkt objstore.BucketReader, index string, segments []string) blockSource {
	return blockSource{index: index, chunks: func(sequential bool) (*chunkFiles, error) {
		return openObjectChunks(ctx, bkt, segments, rawPool{chunkenc.NewPool()}, sequential), nil
	}}
}

// rewriteFrom is rewrite from a blockSource.
func (d *deleter) rewriteFrom(ctx context.Context, srcBlock blockSource, dst string, resume *checkpoint) (st stats, cp *checkpoint, err error) {
	// The series are read in order: a small page cache serves them as well as a large one, and
	// it bounds the live heap, which the Go runtime doubles into the peak.
	bix, err := block.OpenIndexFile(srcBlock.index, 1<<20)
	if err != nil {
		return st, nil, err
	}
	defer errcapture.Do(&err, bix.Close, "close index")
	defer func() {
		// A read error explains whatever decoding error followed it.
		if bix.Err() != nil {
			err = errors.Wrap(bix.Err(), "read index")
		}
	}()
	ir := bix.Reader
	// Pass 1 reads few chunks, here and there; pass 2 reads them all in order.
	random, err := srcBlock.chunks(false)
	if err != nil {
		return st, nil, err
	}
	defer errcapture.Do(&err, random.Close, "close chunks")
	cr, err := srcBlock.chunks(true)
	if err != nil {
		return st, nil, err
	}
	defer errcapture.Do(&err, cr.Close, "close chunks")

	// Pass 1: which series lose every sample, and the deleted ranges of those that keep some.
	var (
		dropped  map[storage.SeriesRef]struct{}
		affected *affectedSeries
	)
	if d.found != nil {
		dropped, affected = d.found.dropped, d.found.affected
	} else if dropped, affected, err = d.droppedSeries(ctx, ir, random); err != nil {
		return st, nil, err
	}
	if err := random.Close(); err != nil {
		return st, nil, errors.Wrap(err, "close chunks")
	}

	removable, err := removableSymbols(ctx, ir, dropped)
	if err != nil {
		return st, nil, err
	}

	// Pass 2: stream the series into the output: chunks to the new segments, series to the new
	// index, both in the source's order.
	src, err := newSource(bix)
	if err != nil {
		return st, nil, err
	}
	out, err := openOutput(filepath.Join(dst, block.ChunksDirname), resume)
	if err != nil {
		return st, nil, err
	}
	defer func() {
		if out != nil {
			if cerr := out.close(); err == nil {
				err = cerr
			}
		}
	}()
	indexPath := filepath.Join(dst, block.IndexFilename)
	var iw *indexWriter
	if resume == nil {
		iw, err = createIndex(indexPath, src, removable)
	} else {
		iw, err = resumeIndex(indexPath, resume.IndexSize, src, removable)
	}
	if err != nil {
		return st, nil, err
	}
	defer func() {
		if iw != nil {
			_ = iw.close()
		}
	}()
	skip := 0
	if resume != nil {
		st, skip = resume.Stats.stats(), resume.PostingsDone
	}
	k, v := index.AllPostingsKey()
	all, err := ir.Postings(ctx, k, v)
	if err != nil {
		return st, nil, err
	}
	var (
		batch   int
		started = time.Now()
		saved   = started
		base    = st
		metas   []chunks.Meta
		cut     []outChunk
		pool    = rawPool{chunkenc.NewPool()}
	)
	// snapshot makes the output durable up to the series done and describes it.
	snapshot := func(done int) (*checkpoint, error) {
		if err := stderrors.Join(out.flush(), iw.flush()); err != nil {
			return nil, err
		}
		return &checkpoint{Format: checkpointFormat, PostingsDone: done, Segments: slices.Clone(out.segments), IndexSize: iw.size(), Stats: st.state()}, nil
	}
	// The series are read and their chunks cut in one goroutine, and written in this one, in
	// the source's order: the output is the same as one goroutine's.
	p := d.startSeriesReader(ctx, all, skip, dropped, affected, src, cr)
	defer p.stop()
	for b := range p.batches {
		if b.err != nil {
			return st, nil, b.err
		}
		for j := range b.items {
			it := &b.items[j]
			st.add(it.st)
			st.seriesIn++
			if it.dropped {
				st.seriesDropped++
			} else {
				metas = metas[:0]
				for _, c := range it.chunks {
					cs := []outChunk{c}
					if c.cut {
						// Cut here rather than in the reader: the two goroutines share the work.
						if cut, err = d.cutChunk(pool, c, it.ivs, cut[:0], &st); err != nil {
							return st, nil, errors.Wrapf(err, "series %d of the postings", it.index)
						}
						cs = cut
					}
					for _, c := range cs {
						var ref chunks.ChunkRef
						switch {
						case c.record != nil:
							ref, err = out.writeRecord(c.record, len(c.data))
						case c.crc >= 0:
							ref, err = out.writeChunkBytes(c.enc, c.data, uint32(c.crc))
						default:
							ref, err = out.writeChunkBytes(c.enc, c.data, chunkCRC(c.enc, c.data))
						}
						if err != nil {
							return st, nil, err
						}
						metas = append(metas, chunks.Meta{Ref: ref, MinTime: c.mint, MaxTime: c.maxt})
						st.samplesOut += uint64(c.samples)
					}
				}
				if len(metas) == 0 {
					// Pass 1 found a sample; a chunk that decodes to none contradicts it.
					return st, nil, errors.Newf("series %d of the postings lost every sample in pass 2 only", it.index)
				}
				st.seriesOut++
				if err := iw.addSeries(it.refs, metas); err != nil {
					return st, nil, err
				}
			}
			if batch++; batch < d.limits.BatchSeries {
				continue
			}
			batch = 0
			d.progress(st.seriesIn, st.bytesRead)
			if err := d.pace(ctx, st, base, started); err != nil {
				if !errors.Is(err, ErrBudget) {
					return st, nil, err
				}
				cp, serr := snapshot(it.index + 1)
				if serr != nil {
					return st, nil, serr
				}
				return st, cp, ErrBudget
			}
			if d.checkpointEvery > 0 && time.Since(saved) >= d.checkpointEvery {
				cp, err := snapshot(it.index + 1)
				if err != nil {
					return st, nil, err
				}
				if err := d.save(ctx, cp); err != nil {
					return st, nil, errors.Wrap(err, "save checkpoint")
				}
				saved = time.Now()
			}
		}
		p.done(b)
	}
	p.stop()
	if err := all.Err(); err != nil {
		return st, nil, errors.Wrap(err, "postings")
	}
	d.progress(st.seriesIn, st.bytesRead)
	err = out.close()
	out = nil
	if err != nil {
		return st, nil, errors.Wrap(err, "close output")
	}
	// The streaming's buffers are garbage now: collected before the postings' tables are built,
	// they are not on the heap beside them at its peak.
	runtime.GC()
	survivors, err := ir.Postings(ctx, k, v)
	if err != nil {
		return st, nil, err
	}
	err = iw.finish(ctx, src, index.Without(survivors, index.NewListPostings(sortedRefs(dropped))))
	iw = nil
	return st, nil, err
}

func sortedRefs(m map[storage.SeriesRef]struct{}) []storage.SeriesRef {
	refs := make([]storage.SeriesRef, 0, len(m))
	for r := range m {
		refs = append(refs, r)
	}
	slices.Sort(refs)
	return refs
}

// outChunk is one chunk of the output as it goes from the series reader to the writer.
type outChunk struct {
	enc  chunkenc.Encoding
	data []byte
	// cut is a source chunk that a deleted range meets without covering it, to be cut.
	cut bool
	// record is a copied chunk as the segments store it, written as it is.
	record []byte
	// crc is the checksum a copied chunk keeps, -1 for a chunk written anew.
	crc        int64
	samples    int
	mint, maxt int64
}

// seriesItem is one series of the source, in postings order: dropped, or its label symbols and
// its chunks without the deleted samples.
type seriesItem struct {
	index   int // In the postings of all series.
	dropped bool
	refs    []uint32
	chunks  []outChunk
	// ivs are the deleted ranges of the series.
	ivs tombstones.Intervals
	// st counts the chunks copied, re-encoded and dropped and the bytes read.
	st stats
}

// seriesBatch is some consecutive series; their chunks' bytes are in its arena. err ends the
// stream.
type seriesBatch struct {
	items  []seriesItem
	arena  []byte
	refs   []uint32
	chunks []outChunk
	ivs    []tombstones.Interval
	err    error
}

// readerBatchSeries is how many series go from the reader to the writer at once.
const readerBatchSeries = 256

// seriesReader reads the series in a goroutine, a few batches ahead of the writer.
type seriesReader struct {
	batches chan *seriesBatch
	free    chan *seriesBatch
	quit    chan struct{}
	exited  chan struct{}
	stopped bool
}

// startSeriesReader starts reading the series of all from the skip-th on: the dropped ones are
// only counted; the others' chunks are read from cr and cut by their deleted ranges in affected.
func (d *deleter) startSeriesReader(ctx context.Context, all index.Postings, skip int, dropped map[storage.SeriesRef]struct{}, affected *affectedSeries, src *source, cr *chunkFiles) *seriesReader {
	const depth = 4
	p := &seriesReader{batches: make(chan *seriesBatch, depth), free: make(chan *seriesBatch, depth+2),
		quit: make(chan struct{}), exited: make(chan struct{})}
	for range depth + 2 {
		p.free <- &seriesBatch{}
	}
	go func() {
		defer close(p.exited)
		defer close(p.batches)
		var (
			chks   []chunks.Meta
			refs   []uint32
			ivs    tombstones.Intervals
			b      *seriesBatch
			cursor int
		)
		send := func() bool {
			// The chunks read keep the arena they were read into.
			b.arena, cr.arena = cr.arena, nil
			select {
			case p.batches <- b:
				b = nil
				return true
			case <-p.quit:
				return false
			}
		}
		fail := func(err error) {
			if b == nil {
				b = &seriesBatch{}
			}
			b.items, b.err = b.items[:0], err
			send()
		}
		for i := 0; all.Next(); i++ {
			if i < skip {
				continue
			}
			if err := ctx.Err(); err != nil {
				fail(err)
				return
			}
			if b == nil {
				select {
				case b = <-p.free:
				case <-p.quit:
					return
				}
				b.items, b.refs, b.chunks, b.ivs, b.err = b.items[:0], b.refs[:0], b.chunks[:0], b.ivs[:0], nil
				cr.arena = b.arena[:0]
			}
			it := seriesItem{index: i}
			if _, gone := dropped[all.At()]; gone {
				it.dropped = true
			} else {
				// The series' labels are not looked up: its label symbols are copied as numbers,
				// and its deleted ranges are pass 1's.
				if err := src.series(all.At(), nil, &chks, &refs); err != nil {
					fail(errors.Wrap(err, "read series"))
					return
				}
				ivs = affected.intervals(all.At(), &cursor)
				n := len(b.chunks)
				var err error
				if b.chunks, err = d.rewriteChunks(cr, chks, ivs, b.chunks, &it.st); err != nil {
					fail(errors.Wrapf(err, "series %s", src.name(all.At())))
					return
				}
				if len(b.chunks) == n {
					// Pass 1 found a sample; a chunk that decodes to none contradicts it.
					fail(errors.Newf("series %s lost every sample in pass 2 only", src.name(all.At())))
					return
				}
				r, v := len(b.refs), len(b.ivs)
				b.refs, b.ivs = append(b.refs, refs...), append(b.ivs, ivs...)
				// Later appends that move b.refs or b.chunks leave these where they are.
				it.refs, it.chunks = b.refs[r:len(b.refs):len(b.refs)], b.chunks[n:len(b.chunks):len(b.chunks)]
				it.ivs = b.ivs[v:len(b.ivs):len(b.ivs)]
				cr.release()
			}
			b.items = append(b.items, it)
			if len(b.items) >= readerBatchSeries && !send() {
				return
			}
		}
		if b != nil && len(b.items) > 0 && !send() {
			return
		}
	}()
	return p
}

// done gives a batch written back for reuse.
func (p *seriesReader) done(b *seriesBatch) {
	select {
	case p.free <- b:
	default:
	}
}

// stop stops the reader and waits until it has.
func (p *seriesReader) stop() {
	if p.stopped {
		return
	}
	p.stopped = true
	close(p.quit)
	for range p.batches {
	}
	<-p.exited
}

// pace sleeps so that the series and byte rates of this run (st less what a checkpoint brought in
// base) stay under their limits, and stops at the deadline.
func (d *deleter) pace(ctx context.Context, st, base stats, started time.Time) error {
	var wait time.Duration
	if d.limits.SeriesPerSecond > 0 {
		wait = max(wait, time.Duration(float64(st.seriesIn-base.seriesIn)/d.limits.SeriesPerSecond*float64(time.Second))-time.Since(started))
	}
	if d.limits.BytesPerSecond > 0 {
		wait = max(wait, time.Duration(float64(st.bytesRead-base.bytesRead)/d.limits.BytesPerSecond*float64(time.Second))-time.Since(started))
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

// affectedSeries are the series that a deleted range meets and that keep a sample, ascending,
// with their deleted ranges: the ranges of refs[i] are ivs[ends[i-1]:ends[i]].
type affectedSeries struct {
	refs []storage.SeriesRef
	ends []int
	ivs  []tombstones.Interval
}

func (a *affectedSeries) add(ref storage.SeriesRef, ivs tombstones.Intervals) {
	a.refs = append(a.refs, ref)
	a.ivs = append(a.ivs, ivs...)
	a.ends = append(a.ends, len(a.ivs))
}

// intervals returns the deleted ranges of the series ref, none if it is not affected. Asked in
// ascending order of ref, it walks the series once from cursor, which starts at 0.
func (a *affectedSeries) intervals(ref storage.SeriesRef, cursor *int) tombstones.Intervals {
	i := *cursor
	for i < len(a.refs) && a.refs[i] < ref {
		i++
	}
	*cursor = i
	if i == len(a.refs) || a.refs[i] != ref {
		return nil
	}
	start := 0
	if i > 0 {
		start = a.ends[i-1]
	}
	return a.ivs[start:a.ends[i]:a.ends[i]]
}

// pass1 is what pass 1 finds: the series that keep no sample, and the deleted ranges of the
// others a tombstone meets.
type pass1 struct {
	dropped  map[storage.SeriesRef]struct{}
	affected *affectedSeries
}

// survivesByMeta decides from the chunk metadata of a raw block's series whether it keeps a
// sample: it does if the first or last sample of a chunk is outside every deleted range, it does
// not if every chunk's time range is deleted; otherwise (decided is false) a chunk must be read.
func survivesByMeta(chks []chunks.Meta, ivs tombstones.Intervals) (survives, decided bool) {
	decided = true
	for _, c := range chks {
		switch {
		case ivs.CoversRange(c.MinTime, c.MaxTime):
		case !ivs.Covers(c.MinTime) || !ivs.Covers(c.MaxTime):
			return true, true
		default:
			decided = false
		}
	}
	return false, decided
}

// droppedSeries returns the series that keep no sample, and the deleted ranges of the others
// that a tombstone covers. Only series a tombstone's selectors may match are looked at (every
// other series keeps all its samples), and only their chunks that a deleted range meets without
// covering are decoded.
func (d *deleter) droppedSeries(ctx context.Context, ir *index.Reader, cr *chunkFiles) (map[storage.SeriesRef]struct{}, *affectedSeries, error) {
	dropped := map[storage.SeriesRef]struct{}{}
	affected := &affectedSeries{}
	all, err := selectPostings(ctx, ir, d.applied, d.ext)
	if err != nil {
		return nil, nil, errors.Wrap(err, "postings")
	}
	var (
		builder labels.ScratchBuilder
		chks    []chunks.Meta
		ivs     tombstones.Intervals
	)
	last := storage.SeriesRef(0)
	for i := 0; all.Next(); i++ {
		if i > 0 && all.At() <= last {
			return nil, nil, errors.Newf("postings out of order: series %d after %d", all.At(), last)
		}
		last = all.At()
		if err := ir.Series(all.At(), &builder, &chks); err != nil {
			return nil, nil, errors.Wrap(err, "read series")
		}
		ivs = d.ix.Intervals(builder.Labels(), d.ext, ivs[:0])
		if len(ivs) == 0 {
			continue
		}
		survives := false
		for _, c := range chks {
			if mint := chunkcut.WindowStart(c.MinTime, d.resolution); !ivs.Overlaps(mint, c.MaxTime) {
				survives = true
				break
			}
			if ivs.CoversRange(c.MinTime, c.MaxTime) {
				continue
			}
			if d.resolution == 0 && (!ivs.Covers(c.MinTime) || !ivs.Covers(c.MaxTime)) {
				// The first or last sample of a raw block's chunk is outside every deleted range:
				// known without reading the chunk (a read from the bucket each). Only an
				// aggregate chunk of a downsampled block loses whole windows and must be read.
				survives = true
				break
			}
			chk, _, err := cr.chunk(c)
			if err != nil {
				return nil, nil, errors.Wrap(err, "read chunk")
			}
			switch {
			case isRaw(chk):
				m, err := d.cutRaw(chk, ivs)
				if err != nil {
					return nil, nil, err
				}
				survives = m != nil
			case !ivs.Covers(c.MinTime) || !ivs.Covers(c.MaxTime):
				// The first or last sample is outside every deleted range.
				survives = true
			default:
				survives = tombstones.NewIterator(chk.Iterator(nil), ivs).Next() != chunkenc.ValNone
			}
			if survives {
				break
			}
		}
		if survives {
			affected.add(all.At(), ivs)
		} else {
			dropped[all.At()] = struct{}{}
		}
		cr.reset()
	}
	return dropped, affected, all.Err()
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

// rewriteChunks appends to out the series' chunks without those the deleted ranges cover: those
// no deleted range meets as they are, with their checksums, those one meets marked to be cut
// (cutChunk).
func (d *deleter) rewriteChunks(cr *chunkFiles, chks []chunks.Meta, ivs tombstones.Intervals, out []outChunk, st *stats) ([]outChunk, error) {
	for _, c := range chks {
		chk, crc, err := cr.chunk(c)
		if err != nil {
			return out, errors.Wrap(err, "read chunk")
		}
		st.bytesRead += int64(len(chk.Bytes()))
		switch {
		case !ivs.Overlaps(chunkcut.WindowStart(c.MinTime, d.resolution), c.MaxTime):
			st.chunksCopied++
			out = append(out, outChunk{enc: chk.Encoding(), data: chk.Bytes(), record: cr.record, crc: int64(crc), samples: chk.NumSamples(), mint: c.MinTime, maxt: c.MaxTime})
		case ivs.CoversRange(c.MinTime, c.MaxTime):
			st.chunksGone++
		default:
			out = append(out, outChunk{enc: chk.Encoding(), data: chk.Bytes(), cut: true, crc: -1, mint: c.MinTime, maxt: c.MaxTime})
		}
	}
	return out, nil
}

// cutChunk appends to out what is left of the chunk c without the samples in ivs, re-encoded.
func (d *deleter) cutChunk(pool chunkenc.Pool, c outChunk, ivs tombstones.Intervals, out []outChunk, st *stats) ([]outChunk, error) {
	chk, err := pool.Get(c.enc, c.data)
	if err != nil {
		return out, errors.Wrap(err, "read chunk")
	}
	defer func() { _ = pool.Put(chk) }()
	add := func(m chunks.Meta) {
		out = append(out, outChunk{enc: m.Chunk.Encoding(), data: m.Chunk.Bytes(), crc: -1, samples: m.Chunk.NumSamples(), mint: m.MinTime, maxt: m.MaxTime})
	}
	if isRaw(chk) {
		// An aggregate chunk loses the windows a deleted range meets: deleted data never
		// survives in an aggregate. One that cannot be cut goes whole.
		m, err := d.cutRaw(chk, ivs)
		if err != nil {
			return out, err
		}
		if m == nil {
			st.chunksGone++
			return out, nil
		}
		st.chunksRewritten++
		add(*m)
		return out, nil
	}
	re, err := chunkcut.Raw(chk, ivs)
	if err != nil {
		return out, err
	}
	st.chunksRewritten++
	for _, m := range re {
		add(m)
	}
	return out, nil
}

// cutRaw cuts a chunk of an encoding Prometheus does not know: a Thanos aggregate chunk loses the
// windows a deleted range meets (nil if none is left); any other chunk, or an aggregate chunkcut.Aggr
// cannot cut, is dropped whole (nil).
func (d *deleter) cutRaw(chk chunkenc.Chunk, ivs tombstones.Intervals) (*chunks.Meta, error) {
	if chk.Encoding() != chunkcut.AggrEncoding {
		return nil, nil
	}
	b, mint, maxt, ok, err := chunkcut.Aggr(chk.Bytes(), ivs, d.resolution)
	if err != nil || !ok || b == nil {
		return nil, errors.Wrap(err, "cut aggregate chunk")
	}
	return &chunks.Meta{Chunk: &rawChunk{enc: chunkcut.AggrEncoding, b: b}, MinTime: mint, MaxTime: maxt}, nil
}

// redactedLabels names a series in errors and logs by its metric name only: its other label
// values may be what is being deleted.
func redactedLabels(ls labels.Labels) string {
	return ls.Get(model.MetricNameLabel) + "{...}"
}
