package rewriter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/thanos-io/objstore"
	"golang.org/x/sync/errgroup"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/tombstones"
)

// StatePrefix is where the rewriter keeps its working state (leases); safe to delete when idle.
const StatePrefix = "lethe/"

// Config of a run.
type Config struct {
	Threshold   float64
	Limits      Limits
	Concurrency int
	TmpDir      string
	DryRun      bool
	// DeleteDelay is how long blocks the rewriter marked stay before it deletes them; 0 leaves
	// deletion to a Thanos compactor.
	DeleteDelay time.Duration
	// Shard and Shards split the jobs between workers: this one takes the blocks whose hash
	// modulo Shards is Shard.
	Shard, Shards int
	// LeaseTTL is how long a job's lease keeps other workers off its block; a running job renews
	// it every third of that.
	LeaseTTL time.Duration
	// Owner names this worker in leases.
	Owner string
	// OwnerGone reports whether the worker named in a lease is known to have died (for instance, a
	// process of this host that no longer runs), so that its lease need not be waited out.
	OwnerGone func(owner string) bool
	// CheckpointEvery is how often a job saves a checkpoint to the bucket while it streams a
	// block, so that a crash redoes at most that much; 0 saves one only at the time budget.
	CheckpointEvery time.Duration
	// ExitAt, when set, makes the run exit the process right after the named phase: a test hook
	// for crash tests (download, rewrite, upload-chunks, upload-meta, mark).
	ExitAt string
}

// Report is what a run did.
type Report struct {
	Plan      *Plan       `json:"plan"`
	Rewritten []Rewritten `json:"rewritten"`
	// Stopped is set when the time budget ended the run with work left.
	Stopped bool `json:"stopped"`
	// Bad are blocks that could not be planned or rewritten.
	Bad     []string    `json:"bad"`
	Applied []ulid.ULID `json:"applied"`
	Deleted []ulid.ULID `json:"deleted"`
	// Leased are jobs left to other live workers.
	Leased []ulid.ULID `json:"leased"`
}

// Rewritten is one finished job.
type Rewritten struct {
	Source        ulid.ULID   `json:"source"`
	Block         ulid.ULID   `json:"block"`
	Tombstones    []ulid.ULID `json:"tombstones"`
	SeriesIn      int         `json:"series_in"`
	SeriesOut     int         `json:"series_out"`
	ChunksCopied  int         `json:"chunks_copied"`
	ChunksRecoded int         `json:"chunks_reencoded"`
	ChunksDropped int         `json:"chunks_dropped"`
	Seconds       float64     `json:"seconds"`
}

// Runner plans and runs the jobs.
type Runner struct {
	bkt    objstore.Bucket
	store  *tombstones.Store
	logger *slog.Logger
	now    func() time.Time
	cfg    Config

	blocksDone   prometheus.Counter
	blocksFailed prometheus.Counter
	seriesDone   prometheus.Counter
	bytesDone    prometheus.Counter
	jobsPlanned  *prometheus.GaugeVec
}

// NewRunner returns a runner; reg may be nil.
func NewRunner(bkt objstore.Bucket, store *tombstones.Store, logger *slog.Logger, reg prometheus.Registerer, cfg Config) *Runner {
	if cfg.Limits.BatchSeries <= 0 {
		cfg.Limits.BatchSeries = 10_000
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.Shards <= 0 {
		cfg.Shards = 1
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10 * time.Minute
	}
	if cfg.OwnerGone == nil {
		cfg.OwnerGone = func(string) bool { return false }
	}
	f := promauto.With(reg)
	return &Runner{
		bkt: bkt, store: store, logger: logger, now: store.Now, cfg: cfg,
		blocksDone:   f.NewCounter(prometheus.CounterOpts{Name: "lethe_rewriter_blocks_rewritten_total", Help: "Blocks rewritten with their due tombstones applied."}),
		blocksFailed: f.NewCounter(prometheus.CounterOpts{Name: "lethe_rewriter_blocks_failed_total", Help: "Blocks that could not be planned or rewritten."}),
		seriesDone:   f.NewCounter(prometheus.CounterOpts{Name: "lethe_rewriter_series_streamed_total", Help: "Series streamed through the deleter."}),
		bytesDone:    f.NewCounter(prometheus.CounterOpts{Name: "lethe_rewriter_chunk_bytes_read_total", Help: "Chunk bytes read by the deleter."}),
		jobsPlanned:  f.NewGaugeVec(prometheus.GaugeOpts{Name: "lethe_rewriter_jobs", Help: "Jobs in the last plan by decision."}, []string{"decision"}),
	}
}

// PlanOnly returns the plan without changing anything.
func (r *Runner) PlanOnly(ctx context.Context) (*Plan, error) {
	set, err := r.store.Sync(ctx)
	if err != nil {
		return nil, err
	}
	return NewPlanner(r.bkt, r.logger, r.cfg.Threshold, r.store.RedactionKey()).Plan(ctx, set)
}

// Run plans, rewrites the blocks the plan decides to rewrite, and records what it applied.
func (r *Runner) Run(ctx context.Context) (*Report, error) {
	set, err := r.store.Sync(ctx)
	if err != nil {
		return nil, err
	}
	plan, err := NewPlanner(r.bkt, r.logger, r.cfg.Threshold, r.store.RedactionKey()).Plan(ctx, set)
	if err != nil {
		return nil, err
	}
	rep := &Report{Plan: plan, Rewritten: []Rewritten{}, Bad: slices.Clone(plan.Problems), Applied: []ulid.ULID{}, Deleted: []ulid.ULID{}}
	var todo []*Job
	counts := map[string]int{DecisionRewrite: 0, DecisionSkip: 0}
	for _, j := range plan.Jobs {
		counts[j.Decision]++
		if j.Decision == DecisionRewrite && r.mine(j.Block) {
			todo = append(todo, j)
		}
	}
	for d, n := range counts {
		r.jobsPlanned.WithLabelValues(d).Set(float64(n))
	}
	r.logger.Info("plan", "due_tombstones", len(plan.Due), "jobs", len(plan.Jobs), "rewrite", len(todo), "skip", counts[DecisionSkip], "bad_blocks", len(plan.Problems))
	if r.cfg.DryRun {
		return rep, nil
	}
	if err := r.cleanUploads(ctx, todo); err != nil {
		return rep, err
	}
	// Raw blocks with an overdue tombstone must not be downsampled before they are rewritten.
	for _, j := range todo {
		if j.Overdue && j.Resolution == 0 {
			if err := block.WriteMarker(ctx, r.bkt, j.Block, block.NoDownsampleMarkFilename, block.NoDownsampleMark{
				ID: j.Block, Version: 1, NoDownsampleTime: r.now().Unix(), Reason: "lethe-tombstone", Details: "lethe-rewriter: an overdue tombstone must be applied first",
			}); err != nil {
				return rep, err
			}
		}
	}

	var (
		start = time.Now()
		mu    sync.Mutex
		done  int
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.cfg.Concurrency)
	for _, j := range todo {
		mu.Lock()
		stopped := rep.Stopped
		mu.Unlock()
		if stopped || (!r.cfg.Limits.Deadline.IsZero() && time.Now().After(r.cfg.Limits.Deadline)) {
			mu.Lock()
			rep.Stopped = true
			mu.Unlock()
			break
		}
		g.Go(func() error {
			res, err := r.runJob(gctx, j)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrBudget):
				rep.Stopped = true
				return nil
			case errors.Is(err, errLeased):
				rep.Leased = append(rep.Leased, j.Block)
				return nil
			case err != nil && gctx.Err() != nil:
				return gctx.Err()
			case err != nil:
				r.blocksFailed.Inc()
				rep.Bad = append(rep.Bad, fmt.Sprintf("block %s: %s", j.Block, err))
				r.logger.Error("rewrite failed; the block is left as it was", "block", j.Block.String(), "err", err)
				return nil
			case res != nil:
				rep.Rewritten = append(rep.Rewritten, *res)
			}
			done++
			elapsed := time.Since(start)
			left := time.Duration(float64(elapsed) / float64(done) * float64(len(todo)-done))
			r.logger.Info("progress", "blocks_done", done, "blocks_total", len(todo), "elapsed", elapsed.Round(time.Second).String(), "eta", left.Round(time.Second).String())
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}
	if r.cfg.DeleteDelay > 0 {
		if rep.Deleted, err = r.deleteMarked(ctx); err != nil {
			return rep, err
		}
	}
	if !rep.Stopped {
		if rep.Applied, err = r.recordApplied(ctx, set, plan, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// mine reports whether this worker's shard owns the block.
func (r *Runner) mine(id ulid.ULID) bool {
	if r.cfg.Shards <= 1 {
		return true
	}
	h := fnv.New32a()
	_, _ = h.Write(id[:])
	return int(h.Sum32()%uint32(r.cfg.Shards)) == r.cfg.Shard
}

// ChildID derives the new block's ULID from the source and the tombstones applied: the same job
// always yields the same ULID, so a rerun or a second worker overwrites instead of duplicating.
func ChildID(source ulid.ULID, applied []ulid.ULID) ulid.ULID {
	h := sha256.New()
	_, _ = h.Write(source[:])
	for _, id := range applied {
		_, _ = h.Write(id[:])
	}
	id, err := ulid.New(source.Time(), bytes.NewReader(h.Sum(nil)))
	if err != nil {
		// ulid.New only fails on a short entropy read; 32 bytes are plenty.
		return source
	}
	return id
}

// errLeased is a job left to the live worker that holds its lease.
var errLeased = errors.New("leased by another worker")

// RewrittenSources are the compaction sources of a rewritten block: the source's, plus one ID
// derived from them. Thanos' deduplication then sees the source as covered (its sources are a
// strict subset), as it would with the new block's own ULID. But a raw block and the blocks
// downsampled from it share their sources, so their rewrites add the same ID: Thanos' downsampler,
// which downsamples a raw block unless every one of its sources appears in some 5m block, leaves the
// rewritten raw block alone beside the rewritten 5m block. With the new block's own ULID it
// downsampled the raw block again, and the compactor halted on the overlap.
func RewrittenSources(sources []ulid.ULID) []ulid.ULID {
	sorted := slices.Clone(sources)
	slices.SortFunc(sorted, func(a, b ulid.ULID) int { return a.Compare(b) })
	sorted = slices.Compact(sorted)
	h := sha256.New()
	_, _ = h.Write([]byte("lethe rewrite of"))
	for _, id := range sorted {
		_, _ = h.Write(id[:])
	}
	var ms uint64
	if len(sorted) > 0 {
		ms = sorted[len(sorted)-1].Time()
	}
	id, err := ulid.New(ms, bytes.NewReader(h.Sum(nil)))
	if err != nil {
		return append(sorted, ulid.ULID{}) // Not reached: 32 bytes of entropy are plenty.
	}
	return append(sorted, id)
}

// lease keeps other workers off a block; objstore has no conditional writes, so two workers may
// still meet, which the rewrite's idempotence makes harmless.
type lease struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
}

func leaseName(id ulid.ULID) string { return StatePrefix + "leases/" + id.String() + ".json" }

func (r *Runner) takeLease(ctx context.Context, id ulid.ULID) (bool, error) {
	rc, err := r.bkt.Get(ctx, leaseName(id))
	if err == nil {
		var l lease
		derr := json.NewDecoder(rc).Decode(&l)
		_ = rc.Close()
		if derr == nil && l.Owner != r.cfg.Owner && r.now().Before(l.Expires) && !r.cfg.OwnerGone(l.Owner) {
			return false, nil
		}
	} else if !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return false, errors.Wrap(err, "read lease")
	}
	b, _ := json.Marshal(lease{Owner: r.cfg.Owner, Expires: r.now().Add(r.cfg.LeaseTTL)})
	return true, errors.Wrap(r.bkt.Upload(ctx, leaseName(id), bytes.NewReader(b)), "write lease")
}

func (r *Runner) exitAt(phase string) {
	if r.cfg.ExitAt == phase {
		r.logger.Warn("exiting at phase as asked (crash test)", "phase", phase)
		os.Exit(137)
	}
}

// runJob rewrites one block. Every step can be repeated: a crash anywhere leaves either the old
// block alone, or the old block plus a complete new one that the next run finds and finishes.
func (r *Runner) runJob(ctx context.Context, j *Job) (*Rewritten, error) {
	started := time.Now()
	childID := ChildID(j.Block, j.Tombstones)
	log := r.logger.With("block", j.Block.String(), "new_block", childID.String(), "tombstones", ulidStrings(j.Tombstones))
	ok, err := r.takeLease(ctx, j.Block)
	if err != nil {
		return nil, err
	}
	if !ok {
		log.Warn("block is leased by another live worker; leaving it to that one")
		return nil, errLeased
	}
	renewCtx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(r.cfg.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-renewCtx.Done():
				return
			case <-t.C:
				if _, err := r.takeLease(renewCtx, j.Block); err != nil && renewCtx.Err() == nil {
					log.Warn("renew lease", "err", err)
				}
			}
		}
	}()
	defer func() {
		stopRenew()
		<-renewed
		if err := r.bkt.Delete(context.WithoutCancel(ctx), leaseName(j.Block)); err != nil && !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
			log.Warn("release lease", "err", err)
		}
	}()

	done := &Rewritten{Source: j.Block, Block: childID, Tombstones: j.Tombstones}
	exists, err := r.bkt.Exists(ctx, path.Join(childID.String(), block.MetaFilename))
	if err != nil {
		return nil, err
	}
	if exists {
		log.Info("new block already uploaded by an earlier run; finishing the job")
	} else {
		if err := block.WriteMarker(ctx, r.bkt, j.Block, block.NoCompactMarkFilename, block.NoCompactMark{
			ID: j.Block, Version: 1, NoCompactTime: r.now().Unix(), Reason: "manual", Details: "lethe-rewriter: being rewritten",
		}); err != nil {
			return nil, err
		}
		st, meta, dir, err := r.rewriteJob(ctx, j, childID, log)
		if dir != "" {
			defer func() {
				if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
					log.Warn("remove work dir", "err", err)
				}
			}()
		}
		if err != nil {
			return nil, err
		}
		done.SeriesIn, done.SeriesOut = st.seriesIn, st.seriesOut
		done.ChunksCopied, done.ChunksRecoded, done.ChunksDropped = st.chunksCopied, st.chunksRewritten, st.chunksGone
		if st.seriesOut == 0 {
			// Every sample is deleted: no empty block is uploaded, the source only goes.
			if err := r.dropCheckpoint(ctx, childID); err != nil {
				log.Warn("remove checkpoint", "err", err)
			}
			if err := block.MarkForDeletion(ctx, r.bkt, j.Block, r.now(), markDetails("nothing (every sample deleted)", j.Tombstones)); err != nil {
				return nil, err
			}
			r.blocksDone.Inc()
			done.Seconds = time.Since(started).Seconds()
			log.Info("block deleted whole: no sample survives", "series_in", done.SeriesIn, "seconds", done.Seconds)
			return done, nil
		}
		if err := r.upload(ctx, dir, meta, j.Block); err != nil {
			return nil, err
		}
	}
	if err := r.dropCheckpoint(ctx, childID); err != nil {
		log.Warn("remove checkpoint", "err", err)
	}

	// Two workers that planned different tombstone sets for one block must not leave two
	// children: the one that finds another child withdraws its own.
	others, err := r.otherChildren(ctx, j.Block, childID)
	if err != nil {
		return nil, err
	}
	if len(others) > 0 {
		log.Warn("another rewrite of this block exists; withdrawing this one", "other", ulidStrings(others))
		return nil, block.MarkForDeletion(ctx, r.bkt, childID, r.now(), "lethe-rewriter: duplicate child of "+j.Block.String())
	}
	if err := block.MarkForDeletion(ctx, r.bkt, j.Block, r.now(), markDetails(childID.String(), j.Tombstones)); err != nil {
		return nil, err
	}
	r.exitAt("mark")
	r.blocksDone.Inc()
	done.Seconds = time.Since(started).Seconds()
	log.Info("block rewritten", "series_in", done.SeriesIn, "series_out", done.SeriesOut, "chunks_copied", done.ChunksCopied,
		"chunks_reencoded", done.ChunksRecoded, "chunks_dropped", done.ChunksDropped, "seconds", done.Seconds)
	return done, nil
}

// markDetails records in the deletion mark what replaced the block and why.
func markDetails(replacement string, applied []ulid.ULID) string {
	return "lethe-rewriter: replaced by " + replacement + " applying " + strings.Join(ulidStrings(applied), ",")
}

func ulidStrings(ids []ulid.ULID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

// rewriteJob downloads the block and writes the new one; it returns the new block's directory.
func (r *Runner) rewriteJob(ctx context.Context, j *Job, childID ulid.ULID, log *slog.Logger) (stats, *block.Meta, string, error) {
	work, err := os.MkdirTemp(r.cfg.TmpDir, "lethe-rewrite-"+j.Block.String()+"-")
	if err != nil {
		return stats{}, nil, "", errors.Wrap(err, "create work dir")
	}
	dst := filepath.Join(work, childID.String())
	src := filepath.Join(work, j.Block.String())
	phase := time.Now()
	if err := block.Download(ctx, r.bkt, j.Block, src); err != nil {
		return stats{}, nil, dst, err
	}
	r.exitAt("download")
	log.Debug("downloaded", "seconds", time.Since(phase).Seconds())
	resume, err := r.loadCheckpoint(ctx, j, childID, dst)
	if err != nil {
		return stats{}, nil, dst, err
	}
	if resume != nil {
		log.Info("resuming from a checkpoint", "series_done", resume.PostingsDone, "series_total", j.Series)
	}
	set, err := r.store.Sync(ctx)
	if err != nil {
		return stats{}, nil, dst, err
	}
	var applied []*tombstones.Tombstone
	for _, id := range j.Tombstones {
		e, ok := set.Get(id)
		if !ok {
			return stats{}, nil, dst, errors.Newf("tombstone %s vanished from the bucket", id)
		}
		applied = append(applied, e.Tombstone)
	}
	ix, err := tombstones.NewIndex(applied, r.store.RedactionKey())
	if err != nil {
		return stats{}, nil, dst, err
	}
	d := &deleter{logger: log, limits: r.cfg.Limits, ix: ix, applied: applied, ext: j.meta.ExternalLabels(), resolution: j.Resolution,
		checkpointEvery: r.cfg.CheckpointEvery}
	prev := resume
	save := func(ctx context.Context, cp *checkpoint) error {
		cp.Source, cp.Block, cp.Tombstones = j.Block, childID, j.Tombstones
		if err := r.saveCheckpoint(ctx, cp, prev, dst); err != nil {
			return err
		}
		prev = cp
		log.Info("checkpoint saved", "series_done", cp.PostingsDone, "series_total", j.Series)
		r.exitAt("checkpoint")
		return nil
	}
	d.save = save
	var lastSeries int
	var lastBytes int64
	begin := time.Now()
	d.progress = func(series int, bytes int64) {
		r.seriesDone.Add(float64(max(series-lastSeries, 0)))
		r.bytesDone.Add(float64(max(bytes-lastBytes, 0)))
		lastSeries, lastBytes = series, bytes
		secs := time.Since(begin).Seconds()
		log.Info("streaming", "series_done", series, "series_total", j.Series, "series_per_second", int(float64(series)/max(secs, 1e-3)),
			"bytes_per_second", int(float64(bytes)/max(secs, 1e-3)))
	}
	st, cp, err := d.rewrite(ctx, src, dst, resume)
	if errors.Is(err, ErrBudget) && cp != nil {
		log.Info("time budget reached; saving a checkpoint for the next run")
		if serr := save(ctx, cp); serr != nil {
			return st, nil, dst, serr
		}
		return st, nil, dst, ErrBudget
	}
	if err != nil {
		return st, nil, dst, err
	}
	r.exitAt("rewrite")
	log.Debug("rewritten", "seconds", time.Since(phase).Seconds())
	meta, err := r.childMeta(j, childID, st, dst)
	if err != nil {
		return st, nil, dst, err
	}
	// The new block must open with Prometheus' own reader before it goes anywhere.
	b, err := block.EncodeMeta(meta)
	if err != nil {
		return st, nil, dst, err
	}
	if err := os.WriteFile(filepath.Join(dst, block.MetaFilename), b, 0o644); err != nil {
		return st, nil, dst, err
	}
	pb, err := tsdb.OpenBlock(r.logger, dst, nil, nil)
	if err != nil {
		return st, nil, dst, errors.Wrap(err, "the new block does not open")
	}
	log.Debug("verified with Prometheus' block reader", "seconds", time.Since(phase).Seconds())
	if err := pb.Close(); err != nil {
		return st, nil, dst, err
	}
	return st, meta, dst, nil
}

// rewriteEntry is the entry lethe adds to thanos.rewrites: the parent and the tombstone ids
// applied, never their matchers.
type rewriteEntry struct {
	Sources          []ulid.ULID        `json:"sources"`
	DeletionsApplied []deletionsApplied `json:"deletions_applied"`
}

// appliedRequestPrefix starts the request id under which a tombstone is named in
// thanos.rewrites; the id follows.
const appliedRequestPrefix = "lethe-tombstone-"

type deletionsApplied struct {
	Matchers  []string `json:"matchers"`
	RequestID string   `json:"request_id"`
}

// childMeta is the source's meta.json for the new block: same range, resolution, external labels
// and source; compaction sources are RewrittenSources, so that Thanos' dedup filter sees the
// source as covered; the rewrite is recorded in thanos.rewrites (a plain Prometheus block records
// the tombstones applied in its lethe section).
func (r *Runner) childMeta(j *Job, childID ulid.ULID, st stats, dir string) (*block.Meta, error) {
	raw, err := block.EncodeMeta(j.meta)
	if err != nil {
		return nil, err
	}
	m, err := block.DecodeMeta(raw)
	if err != nil {
		return nil, err
	}
	m.ULID = childID
	m.Stats.NumSeries = uint64(st.seriesOut)
	m.Stats.NumSamples = st.samplesOut
	m.Stats.NumChunks = uint64(st.chunksCopied + st.chunksRewritten)
	m.Stats.NumFloatSamples, m.Stats.NumHistogramSamples = 0, 0
	m.Stats.NumTombstones = 0
	m.Compaction.Sources = RewrittenSources(m.Compaction.Sources)
	m.Compaction.Parents = []tsdb.BlockDesc{{ULID: j.Block, MinTime: j.MinTime, MaxTime: j.MaxTime}}
	if m.Thanos == nil {
		applied := slices.Clone(j.Tombstones)
		if m.Lethe != nil {
			applied = append(applied, m.Lethe.TombstonesApplied...)
		}
		slices.SortFunc(applied, func(a, b ulid.ULID) int { return a.Compare(b) })
		m.Lethe = &block.Lethe{TombstonesApplied: slices.Compact(applied)}
	}
	if m.Thanos != nil {
		var rewrites []json.RawMessage
		if len(m.Thanos.Rewrites) > 0 {
			if err := json.Unmarshal(m.Thanos.Rewrites, &rewrites); err != nil {
				return nil, errors.Wrap(err, "decode thanos.rewrites")
			}
		}
		entry := rewriteEntry{Sources: []ulid.ULID{j.Block}}
		for _, id := range j.Tombstones {
			entry.DeletionsApplied = append(entry.DeletionsApplied, deletionsApplied{Matchers: []string{}, RequestID: appliedRequestPrefix + id.String()})
		}
		b, err := json.Marshal(entry)
		if err != nil {
			return nil, err
		}
		if m.Thanos.Rewrites, err = json.Marshal(append(rewrites, b)); err != nil {
			return nil, err
		}
		if m.Thanos.Files, err = fileList(dir); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// fileList is thanos.files for the new block.
func fileList(dir string) (json.RawMessage, error) {
	type file struct {
		RelPath   string `json:"rel_path"`
		SizeBytes int64  `json:"size_bytes,omitempty"`
	}
	var files []file
	chunkFiles, err := os.ReadDir(filepath.Join(dir, block.ChunksDirname))
	if err != nil {
		return nil, err
	}
	for _, f := range chunkFiles {
		info, err := f.Info()
		if err != nil {
			return nil, err
		}
		files = append(files, file{RelPath: path.Join(block.ChunksDirname, f.Name()), SizeBytes: info.Size()})
	}
	info, err := os.Stat(filepath.Join(dir, block.IndexFilename))
	if err != nil {
		return nil, err
	}
	files = append(files, file{RelPath: block.IndexFilename, SizeBytes: info.Size()}, file{RelPath: block.MetaFilename})
	return json.Marshal(files)
}

func uploadRecord(child ulid.ULID) string { return StatePrefix + "uploads/" + child.String() + ".json" }

// upload sends the new block, meta.json last. A record in lethe/uploads/ names the block while
// it is incomplete, so that a later run can clean what a crash left half uploaded.
func (r *Runner) upload(ctx context.Context, dir string, meta *block.Meta, source ulid.ULID) error {
	rec, err := json.Marshal(map[string]any{"block": meta.ULID, "source": source, "started": r.now()})
	if err != nil {
		return err
	}
	if err := r.bkt.Upload(ctx, uploadRecord(meta.ULID), bytes.NewReader(rec)); err != nil {
		return errors.Wrap(err, "record upload")
	}
	if err := block.Upload(ctx, r.bkt, dir, meta); err != nil {
		// Leave no half block behind: without meta.json it is invisible, but it is garbage.
		if derr := block.Delete(context.WithoutCancel(ctx), r.bkt, meta.ULID); derr != nil {
			r.logger.Warn("clean partial upload; the next run retries", "block", meta.ULID.String(), "err", derr)
		}
		return err
	}
	r.exitAt("upload-meta")
	return errors.Wrap(r.bkt.Delete(ctx, uploadRecord(meta.ULID)), "remove upload record")
}

// cleanUploads removes what crashed runs left half uploaded: blocks named in lethe/uploads/ that
// never got their meta.json and that no job of this run will complete.
func (r *Runner) cleanUploads(ctx context.Context, todo []*Job) error {
	current := map[ulid.ULID]bool{}
	for _, j := range todo {
		current[ChildID(j.Block, j.Tombstones)] = true
	}
	var recs []string
	if err := r.bkt.Iter(ctx, StatePrefix+"uploads/", func(name string) error {
		recs = append(recs, name)
		return nil
	}); err != nil {
		return errors.Wrap(err, "list upload records")
	}
	for _, name := range recs {
		child, err := ulid.ParseStrict(strings.TrimSuffix(path.Base(name), ".json"))
		if err != nil {
			continue
		}
		done, err := r.bkt.Exists(ctx, path.Join(child.String(), block.MetaFilename))
		if err != nil {
			return err
		}
		if !done && current[child] {
			continue // This run's job overwrites it.
		}
		if !done {
			if err := block.Delete(ctx, r.bkt, child); err != nil {
				return err
			}
			r.logger.Info("removed a partial upload left by an earlier run", "block", child.String())
		}
		if err := r.bkt.Delete(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// otherChildren returns live blocks other than child that were rewritten from source.
func (r *Runner) otherChildren(ctx context.Context, source, child ulid.ULID) ([]ulid.ULID, error) {
	l, err := block.List(ctx, r.bkt)
	if err != nil {
		return nil, err
	}
	var out []ulid.ULID
	for _, m := range l.Blocks {
		if m.ULID == child || m.ULID == source || m.Thanos == nil || len(m.Thanos.Rewrites) == 0 {
			continue
		}
		var rewrites []rewriteEntry
		if err := json.Unmarshal(m.Thanos.Rewrites, &rewrites); err != nil {
			continue
		}
		for _, rw := range rewrites {
			if slices.Contains(rw.Sources, source) {
				out = append(out, m.ULID)
			}
		}
	}
	return out, nil
}

// recordApplied writes the applied record of every due tombstone that no live block holds data of
// any more and whose replaced blocks are gone.
func (r *Runner) recordApplied(ctx context.Context, set *tombstones.Set, first *Plan, rep *Report) ([]ulid.ULID, error) {
	if len(first.Problems) > 0 {
		return nil, nil // A block we cannot read may hold the data.
	}
	// What this run did not finish still holds data.
	done := map[ulid.ULID]bool{}
	children := map[ulid.ULID]bool{}
	for _, rw := range rep.Rewritten {
		done[rw.Source] = true
		children[rw.Block] = true
	}
	pending := map[ulid.ULID]bool{}
	for _, j := range first.Jobs {
		if done[j.Block] {
			continue
		}
		for _, id := range j.Tombstones {
			pending[id] = true
		}
	}
	// Blocks that appeared during the run (a compactor's output, say) are planned too; the
	// blocks the first plan read and this run's own new blocks are not read again.
	later, err := NewPlanner(r.bkt, r.logger, r.cfg.Threshold, r.store.RedactionKey()).plan(ctx, set, func(m *block.Meta) bool {
		return !first.seen[m.ULID] && !children[m.ULID]
	})
	if err != nil {
		return nil, err
	}
	if len(later.Problems) > 0 {
		return nil, nil
	}
	for _, j := range later.Jobs {
		for _, id := range j.Tombstones {
			pending[id] = true
		}
	}
	plan := first
	replaced, err := r.replacedBlocks(ctx)
	if err != nil {
		return nil, err
	}
	var applied []ulid.ULID
	for _, id := range plan.Due {
		if pending[id] {
			continue
		}
		blocks, waiting := replaced[id]
		if waiting && blocks.stillThere {
			continue
		}
		if _, err := r.store.MarkApplied(ctx, id, blocks.ids); err != nil {
			return applied, err
		}
		applied = append(applied, id)
	}
	return applied, nil
}

type replacedSet struct {
	ids        []ulid.ULID
	stillThere bool
}

// replacedBlocks maps each tombstone to the marked blocks lethe replaced applying it.
func (r *Runner) replacedBlocks(ctx context.Context) (map[ulid.ULID]replacedSet, error) {
	l, err := block.List(ctx, r.bkt)
	if err != nil {
		return nil, err
	}
	out := map[ulid.ULID]replacedSet{}
	for _, id := range l.Marked {
		m, err := block.ReadDeletionMark(ctx, r.bkt, id)
		if err != nil {
			continue
		}
		_, list, ok := strings.Cut(m.Details, " applying ")
		if !ok || !strings.HasPrefix(m.Details, "lethe-rewriter:") {
			continue
		}
		for _, s := range strings.Split(list, ",") {
			t, err := ulid.ParseStrict(s)
			if err != nil {
				continue
			}
			rs := out[t]
			rs.ids = append(rs.ids, id)
			rs.stillThere = true
			out[t] = rs
		}
	}
	return out, nil
}

// deleteMarked deletes the blocks lethe marked once their mark is older than the delete delay.
func (r *Runner) deleteMarked(ctx context.Context) ([]ulid.ULID, error) {
	l, err := block.List(ctx, r.bkt)
	if err != nil {
		return nil, err
	}
	var deleted []ulid.ULID
	for _, id := range l.Marked {
		m, err := block.ReadDeletionMark(ctx, r.bkt, id)
		if err != nil || !strings.HasPrefix(m.Details, "lethe-rewriter:") {
			continue
		}
		if r.now().Sub(time.Unix(m.DeletionTime, 0)) < r.cfg.DeleteDelay {
			continue
		}
		if err := block.Delete(ctx, r.bkt, id); err != nil {
			return deleted, err
		}
		r.logger.Info("deleted replaced block", "block", id.String())
		deleted = append(deleted, id)
	}
	return deleted, nil
}

func checkpointPrefix(child ulid.ULID) string { return StatePrefix + "jobs/" + child.String() + "/" }

// loadCheckpoint fetches the checkpoint of the job and its output files, if a run left one.
func (r *Runner) loadCheckpoint(ctx context.Context, j *Job, child ulid.ULID, dst string) (*checkpoint, error) {
	rc, err := r.bkt.Get(ctx, checkpointPrefix(child)+"checkpoint.json")
	if r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return nil, nil
	}
	if err != nil {
		return nil, errors.Wrap(err, "read checkpoint")
	}
	cp := &checkpoint{}
	derr := json.NewDecoder(rc).Decode(cp)
	if err := rc.Close(); err != nil {
		return nil, errors.Wrap(err, "read checkpoint")
	}
	if derr != nil {
		// A run killed while uploading it, to a bucket whose uploads are not atomic (a
		// FILESYSTEM bucket): starting over writes the same bytes.
		r.logger.Warn("ignoring an unreadable checkpoint; the job starts over", "block", j.Block.String(), "err", derr)
		return nil, nil
	}
	if cp.Source != j.Block || cp.Block != child || !slices.Equal(cp.Tombstones, j.Tombstones) {
		r.logger.Warn("ignoring a checkpoint of another job", "block", j.Block.String())
		return nil, nil
	}
	if cp.Format != checkpointFormat {
		// Written by another version: starting over writes the same bytes.
		r.logger.Warn("ignoring a checkpoint of another format; the job starts over", "block", j.Block.String(), "format", cp.Format)
		return nil, nil
	}
	// Two workers on one job can race (leases are not atomic): a part missing, or shorter than
	// the checkpoint says, belongs to another worker's checkpoint. Starting over writes the same
	// bytes.
	for _, p := range cp.Parts {
		err := downloadPart(ctx, r.bkt, checkpointPrefix(child)+p.Object, filepath.Join(dst, filepath.FromSlash(p.File)), p.Offset, p.Size)
		if errors.Is(err, errShortPart) || r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
			r.logger.Warn("ignoring a checkpoint whose files are shorter than it says; the job starts over", "block", j.Block.String(), "part", p.Object, "err", err)
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	// Each part was checked as it came down; together they must cover every file.
	covered := cp.covered()
	for _, f := range cp.files() {
		if covered[f.Name] < f.Size {
			r.logger.Warn("ignoring a checkpoint whose parts do not cover its files; the job starts over", "block", j.Block.String(), "file", f.Name)
			return nil, nil
		}
	}
	return cp, nil
}

// saveCheckpoint uploads what the output files gained since the previous checkpoint, each new
// range as an object of its own (a checkpoint costs what it adds, not the whole output so far),
// then the checkpoint itself, last.
func (r *Runner) saveCheckpoint(ctx context.Context, cp, prev *checkpoint, dst string) error {
	var had map[string]int64
	if prev != nil {
		cp.Parts = slices.Clone(prev.Parts)
		had = prev.covered()
	}
	for _, f := range cp.files() {
		from := had[f.Name]
		if f.Size <= from {
			continue
		}
		p := checkpointPart{File: f.Name, Offset: from, Size: f.Size - from, Object: fmt.Sprintf("parts/%s.%020d", f.Name, from)}
		if err := uploadPart(ctx, r.bkt, filepath.Join(dst, filepath.FromSlash(f.Name)), p.Offset, p.Size, checkpointPrefix(cp.Block)+p.Object); err != nil {
			return err
		}
		cp.Parts = append(cp.Parts, p)
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	return errors.Wrap(r.bkt.Upload(ctx, checkpointPrefix(cp.Block)+"checkpoint.json", bytes.NewReader(b)), "upload checkpoint")
}

// uploadPart uploads size bytes of the file at path from off.
func uploadPart(ctx context.Context, bkt objstore.Bucket, path string, off, size int64, name string) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer errcapture.Do(&err, f.Close, "close %s", path)
	return errors.Wrapf(bkt.Upload(ctx, name, io.NewSectionReader(f, off, size)), "upload %s", name)
}

// downloadPart writes the object, size bytes, into the file at path from off.
func downloadPart(ctx context.Context, bkt objstore.BucketReader, name, path string, off, size int64) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	rc, err := bkt.Get(ctx, name)
	if err != nil {
		return errors.Wrapf(err, "get %s", name)
	}
	defer errcapture.Do(&err, rc.Close, "close %s", name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer errcapture.Do(&err, f.Close, "close %s", path)
	n, err := io.Copy(io.NewOffsetWriter(f, off), rc)
	if err != nil {
		return errors.Wrapf(err, "download %s", name)
	}
	if n != size {
		return errors.Wrapf(errShortPart, "%s holds %d bytes, its checkpoint %d", name, n, size)
	}
	return nil
}

var errShortPart = errors.New("checkpoint part of another size")

// dropCheckpoint removes a finished job's checkpoint, the checkpoint object first.
func (r *Runner) dropCheckpoint(ctx context.Context, child ulid.ULID) error {
	p := checkpointPrefix(child)
	if err := r.bkt.Delete(ctx, p+"checkpoint.json"); err != nil && !r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return err
	}
	return r.bkt.Iter(ctx, p, func(name string) error {
		return r.bkt.Delete(ctx, name)
	}, objstore.WithRecursiveIter())
}
