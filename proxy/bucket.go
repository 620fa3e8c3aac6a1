package proxy

import (
	"context"
	stderrors "errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
)

// BucketBlocks serves the raw-resolution blocks of a bucket, copied to a local directory and read
// with Prometheus' tsdb package. Sync picks up new blocks and lets go of blocks that were marked
// for deletion or removed, with no restart.
type BucketBlocks struct {
	bkt    objstore.BucketReader
	dir    string
	logger *slog.Logger
	pool   chunkenc.Pool

	mu     sync.RWMutex
	blocks map[ulid.ULID]*localBlock

	loaded   prometheus.Gauge
	problems prometheus.Gauge
}

type localBlock struct {
	b   *tsdb.Block
	ext labels.Labels
	// lookups remembers what the tombstones took out of the block's label look-ups.
	lookups *lookupCache
}

// NewBucketBlocks keeps its copies of the blocks under dir.
func NewBucketBlocks(bkt objstore.BucketReader, dir string, logger *slog.Logger, reg prometheus.Registerer) *BucketBlocks {
	f := promauto.With(reg)
	return &BucketBlocks{
		bkt: bkt, dir: dir, logger: logger, pool: chunkenc.NewPool(),
		blocks:   map[ulid.ULID]*localBlock{},
		loaded:   f.NewGauge(prometheus.GaugeOpts{Name: "lethe_proxy_blocks_loaded", Help: "Blocks served from the bucket."}),
		problems: f.NewGauge(prometheus.GaugeOpts{Name: "lethe_proxy_blocks_problems", Help: "Blocks of the bucket that could not be served at the last sync."}),
	}
}

// OpenBucketBlocks creates dir if need be and syncs the blocks of the bucket once: the proxy in
// bucket mode serves what the bucket held when it started, then what each Run tick finds.
func OpenBucketBlocks(ctx context.Context, bkt objstore.BucketReader, dir string, logger *slog.Logger, reg prometheus.Registerer) (*BucketBlocks, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, errors.Wrapf(err, "create the blocks' directory %s", dir)
	}
	s := NewBucketBlocks(bkt, dir, logger, reg)
	if err := s.Sync(ctx); err != nil {
		return nil, stderrors.Join(errors.Wrap(err, "initial block sync"), s.Close())
	}
	return s, nil
}

// Run syncs the blocks every interval until ctx is done. A failed sync is logged and leaves the
// blocks of the last one served; the next tick tries again.
func (s *BucketBlocks) Run(ctx context.Context, interval time.Duration) error {
	every(ctx, interval, func() {
		if err := s.Sync(ctx); err != nil && ctx.Err() == nil {
			s.logger.Error("block sync", "err", err)
		}
	})
	return nil
}

// Sync makes the local set match the bucket's live raw blocks.
func (s *BucketBlocks) Sync(ctx context.Context) error {
	l, err := block.List(ctx, s.bkt)
	if err != nil {
		return err
	}
	problems := len(l.Problems)
	want := map[ulid.ULID]*block.Meta{}
	for _, m := range l.Blocks {
		if m.Resolution() == 0 {
			want[m.ULID] = m
		}
	}
	s.mu.RLock()
	var add []*block.Meta
	var drop []ulid.ULID
	for id, m := range want {
		if _, ok := s.blocks[id]; !ok {
			add = append(add, m)
		}
	}
	for id := range s.blocks {
		if _, ok := want[id]; !ok {
			drop = append(drop, id)
		}
	}
	s.mu.RUnlock()

	for _, m := range add {
		lb, err := s.open(ctx, m)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			problems++
			s.logger.Warn("cannot serve block", "block", m.ULID.String(), "err", err)
			continue
		}
		s.mu.Lock()
		s.blocks[m.ULID] = lb
		s.mu.Unlock()
		s.logger.Info("serving block", "block", m.ULID.String(), "series", m.Stats.NumSeries)
	}
	for _, id := range drop {
		s.mu.Lock()
		lb := s.blocks[id]
		delete(s.blocks, id)
		s.mu.Unlock()
		// Close waits for the queries still reading the block.
		if err := lb.b.Close(); err != nil {
			s.logger.Warn("close block", "block", id.String(), "err", err)
		}
		if err := os.RemoveAll(filepath.Join(s.dir, id.String())); err != nil {
			s.logger.Warn("remove block copy", "block", id.String(), "err", err)
		}
		s.logger.Info("no longer serving block", "block", id.String())
	}
	s.mu.RLock()
	s.loaded.Set(float64(len(s.blocks)))
	s.mu.RUnlock()
	s.problems.Set(float64(problems))
	return nil
}

// open downloads a block (if it has no complete local copy yet) and opens it.
func (s *BucketBlocks) open(ctx context.Context, m *block.Meta) (*localBlock, error) {
	dst := filepath.Join(s.dir, m.ULID.String())
	if _, err := os.Stat(filepath.Join(dst, block.MetaFilename)); err != nil {
		if err := block.Download(ctx, s.bkt, m.ULID, dst); err != nil {
			return nil, err
		}
	}
	b, err := tsdb.OpenBlock(s.logger, dst, s.pool, nil)
	if err != nil {
		return nil, errors.Wrapf(err, "open block %s", m.ULID)
	}
	return &localBlock{b: b, ext: m.ExternalLabels(), lookups: newLookupCache()}, nil
}

// Close closes every block.
func (s *BucketBlocks) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for id, lb := range s.blocks {
		if err := lb.b.Close(); err != nil {
			errs = append(errs, errors.Wrapf(err, "close block %s", id))
		}
	}
	s.blocks = map[ulid.ULID]*localBlock{}
	return stderrors.Join(errs...)
}

// Querier returns a querier over the blocks overlapping [mint, maxt], each masked with its own
// external labels, which are also added to its series (as Thanos' store gateway does).
func (s *BucketBlocks) Querier(snap *Snapshot, mint, maxt int64) (storage.Querier, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var qs []storage.Querier
	for _, lb := range s.blocks {
		meta := lb.b.Meta()
		if meta.MinTime > maxt || meta.MaxTime <= mint {
			continue
		}
		q, err := tsdb.NewBlockQuerier(lb.b, mint, maxt)
		if err != nil {
			for _, q := range qs {
				_ = q.Close()
			}
			return nil, errors.Wrapf(err, "query block %s", meta.ULID)
		}
		cq, err := tsdb.NewBlockChunkQuerier(lb.b, mint, maxt)
		if err != nil {
			_ = q.Close()
			for _, q := range qs {
				_ = q.Close()
			}
			return nil, errors.Wrapf(err, "query block %s", meta.ULID)
		}
		// The block holds samples in [MinTime, MaxTime) only: its masking looks no further, so
		// that a tombstone outside the block costs its look-ups nothing.
		mq := newMaskedQuerier(&cachedBlockQuerier{Querier: q, cache: lb.lookups}, snap, lb.ext, max(mint, meta.MinTime), min(maxt, meta.MaxTime-1))
		mq.chunks = cq
		qs = append(qs, &extQuerier{inner: mq, ext: lb.ext})
	}
	return storage.NewMergeQuerier(qs, nil, storage.ChainedSeriesMerge), nil
}

// extQuerier presents a block's series with its external labels: matchers on them are decided by
// the labels alone, and the labels are added to every series.
type extQuerier struct {
	inner storage.Querier
	ext   labels.Labels
}

// split decides the matchers on external labels and returns the others; ok is false if the
// external labels rule the block out.
func (q *extQuerier) split(ms []*labels.Matcher) (rest []*labels.Matcher, ok bool) {
	if rest, ok = block.SplitExternal(ms, q.ext); !ok {
		return nil, false
	}
	if len(rest) == 0 && len(ms) > 0 {
		// Only external-label matchers: every series of the block.
		rest = []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, ".*")}
	}
	return rest, true
}

func (q *extQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	if q.ext.IsEmpty() {
		return q.inner.Select(ctx, sortSeries, hints, ms...)
	}
	rest, ok := q.split(ms)
	if !ok {
		return storage.EmptySeriesSet()
	}
	ss := q.inner.Select(ctx, false, hints, rest...)
	var series []storage.Series
	for ss.Next() {
		s := ss.At()
		series = append(series, &extSeries{Series: s, lset: withExt(s.Labels(), q.ext)})
	}
	if err := ss.Err(); err != nil {
		return storage.ErrSeriesSet(err)
	}
	if sortSeries {
		slices.SortFunc(series, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	}
	return &listSeriesSet{series: series, i: -1, ws: ss.Warnings()}
}

func (q *extQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	rest, ok := q.split(ms)
	if !ok {
		return nil, nil, nil
	}
	if v := q.ext.Get(name); v != "" {
		// Does any series survive the other matchers?
		names, ws, err := q.inner.LabelNames(ctx, &storage.LabelHints{Limit: 1}, rest...)
		if err != nil || len(names) == 0 {
			return nil, ws, err
		}
		return []string{v}, ws, nil
	}
	return q.inner.LabelValues(ctx, name, hints, rest...)
}

func (q *extQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	rest, ok := q.split(ms)
	if !ok {
		return nil, nil, nil
	}
	names, ws, err := q.inner.LabelNames(ctx, hints, rest...)
	if err != nil || len(names) == 0 {
		return names, ws, err
	}
	q.ext.Range(func(l labels.Label) {
		if !slices.Contains(names, l.Name) {
			names = append(names, l.Name)
		}
	})
	slices.Sort(names)
	return names, ws, nil
}

func (q *extQuerier) Close() error { return q.inner.Close() }

// withExt adds external labels to a series' labels, overriding labels of the same name.
func withExt(ls, ext labels.Labels) labels.Labels {
	b := labels.NewBuilder(ls)
	ext.Range(func(l labels.Label) { b.Set(l.Name, l.Value) })
	return b.Labels()
}

type extSeries struct {
	storage.Series
	lset labels.Labels
}

func (s *extSeries) Labels() labels.Labels { return s.lset }

type listSeriesSet struct {
	series []storage.Series
	i      int
	ws     annotations.Annotations
}

func (s *listSeriesSet) Next() bool                        { s.i++; return s.i < len(s.series) }
func (s *listSeriesSet) At() storage.Series                { return s.series[s.i] }
func (s *listSeriesSet) Err() error                        { return nil }
func (s *listSeriesSet) Warnings() annotations.Annotations { return s.ws }
