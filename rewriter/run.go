package rewriter

import (
	"context"
	"fmt"
	"hash/fnv"
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
	// Retries is how many times a bucket call that failed for a reason that may pass is tried in
	// all (0: 4); RetryBackoff the first wait between two tries (0: 200ms), doubled after each.
	Retries      int
	RetryBackoff time.Duration
	// StaleUploadAfter is how old a partial upload whose source no live worker leases must be
	// before a run removes it; 0 is LeaseTTL.
	StaleUploadAfter time.Duration
	// CheckpointEvery is how often a job saves a checkpoint to the bucket while it streams a
	// block, so that a crash redoes at most that much; 0 saves one only at the time budget.
	CheckpointEvery time.Duration
	// AtPhase, when set, is called right after each phase of a job (download, checkpoint,
	// rewrite, upload-meta, mark): crash tests stop the process there, other tests pause it.
	AtPhase func(phase string)
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
	if cfg.Retries <= 0 {
		cfg.Retries = 4
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 200 * time.Millisecond
	}
	bkt = &retryBucket{Bucket: bkt, attempts: cfg.Retries, backoff: cfg.RetryBackoff, logger: logger}
	if cfg.StaleUploadAfter <= 0 {
		cfg.StaleUploadAfter = cfg.LeaseTTL
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

// planIndexBudget bounds the bytes of the planner's copies of indexes that wait for their jobs.
const planIndexBudget = 1 << 30

// Run plans, rewrites the blocks the plan decides to rewrite, and records what it applied.
func (r *Runner) Run(ctx context.Context) (*Report, error) {
	set, err := r.store.Sync(ctx)
	if err != nil {
		return nil, err
	}
	if !r.cfg.DryRun {
		// What crashed or racing workers left is set right first, so that the plan sees it.
		l, err := block.List(ctx, r.bkt)
		if err != nil {
			return nil, err
		}
		if err := r.repairMarks(ctx, l); err != nil {
			return nil, err
		}
		if err := r.withdrawOrphans(ctx, l); err != nil {
			return nil, err
		}
	}
	planner := NewPlanner(r.bkt, r.logger, r.cfg.Threshold, r.store.RedactionKey())
	if !r.cfg.DryRun {
		// The planner's downloads of whole indexes are kept here for the jobs; what a job does
		// not take goes at the end of the run. Without it, the planner reads indexes by ranges.
		if dir, err := os.MkdirTemp(r.cfg.TmpDir, "lethe-plan-"); err != nil {
			r.logger.Warn("cannot create the plan's dir in the tmp dir; the planner reads indexes by ranges", "err", err)
		} else {
			defer func() {
				if err := os.RemoveAll(dir); err != nil {
					r.logger.Warn("remove the plan's dir", "err", err)
				}
			}()
			planner.indexDir = dir
		}
	}
	plan, err := planner.Plan(ctx, set)
	if err != nil {
		return nil, err
	}
	rep := &Report{Plan: plan, Rewritten: []Rewritten{}, Bad: slices.Clone(plan.Problems), Applied: []ulid.ULID{}, Deleted: []ulid.ULID{}}
	var (
		todo []*Job
		kept int64
	)
	counts := map[string]int{DecisionRewrite: 0, DecisionSkip: 0}
	for _, j := range plan.Jobs {
		if j.Decision == DecisionRewrite && unadopted(j, plan) {
			// Another worker's new block, uploaded, whose source it does not replace yet: that
			// worker's job (or the next run's job of the source) decides whether it ever will.
			j.Decision, j.Reason = DecisionSkip, "a new block whose source is still live"
		}
		counts[j.Decision]++
		if j.Decision != DecisionRewrite || !r.mine(j.Block) {
			j.dropIndex(r.logger)
			continue
		}
		// The jobs keep the planner's copies of their indexes, in their order, while the copies
		// waiting for their jobs take at most planIndexBudget of the tmp dir (the first
		// Concurrency jobs keep theirs in any case); the others download theirs when they start.
		if j.index != "" {
			info, err := os.Stat(j.index)
			if err == nil && (len(todo) < r.cfg.Concurrency || kept+info.Size() <= planIndexBudget) {
				kept += info.Size()
			} else {
				j.dropIndex(r.logger)
			}
		}
		todo = append(todo, j)
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
			case errors.Is(err, errCancelled):
				r.logger.Warn("a tombstone of the job was cancelled while it ran; the block is left as it was", "block", j.Block.String(), "err", err)
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

// unadopted reports whether the job's block is a rewrite lethe made of a block that is still live.
func unadopted(j *Job, plan *Plan) bool {
	if j.meta == nil || len(j.meta.Compaction.Parents) != 1 {
		return false
	}
	parent := j.meta.Compaction.Parents[0].ULID
	return plan.seen[parent] && rewrittenFrom(j.meta, parent)
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

// atPhase calls the AtPhase hook, if any, at the end of a phase.
func (r *Runner) atPhase(phase string) {
	if r.cfg.AtPhase != nil {
		r.cfg.AtPhase(phase)
	}
}

// runJob rewrites one block. Every step can be repeated: a crash anywhere leaves either the old
// block alone, or the old block plus a complete new one that the next run finds and finishes.
func (r *Runner) runJob(ctx context.Context, j *Job) (*Rewritten, error) {
	started := time.Now()
	log := r.logger.With("block", j.Block.String(), "tombstones", ulidStrings(j.Tombstones))
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

	// Another worker may have replaced the block since the plan.
	replaced, err := r.replacedWell(ctx, j.Block)
	if err != nil {
		return nil, err
	}
	if replaced {
		log.Info("block already replaced by another worker; nothing to do")
		return nil, nil
	}
	childID, err := r.childFor(ctx, j)
	if err != nil {
		return nil, err
	}
	log = log.With("new_block", childID.String())
	done := &Rewritten{Source: j.Block, Block: childID, Tombstones: j.Tombstones}
	// repl replaces the block: the new one, or none when no sample survives.
	repl := childID
	uploaded, err := r.uploaded(ctx, childID)
	if err != nil {
		return nil, err
	}
	if uploaded {
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
			repl = ulid.ULID{}
		} else if err := r.upload(ctx, dir, meta, j.Block); err != nil {
			return nil, err
		}
	}
	if repl != (ulid.ULID{}) {
		if err := r.dropCheckpoint(ctx, childID); err != nil {
			log.Warn("remove checkpoint", "err", err)
		}
	}
	adopted, err := r.replace(ctx, j, repl, log)
	if err != nil || !adopted {
		return nil, err
	}
	r.atPhase("mark")
	r.blocksDone.Inc()
	done.Seconds = time.Since(started).Seconds()
	if repl == (ulid.ULID{}) {
		log.Info("block deleted whole: no sample survives", "series_in", done.SeriesIn, "seconds", done.Seconds)
		return done, nil
	}
	log.Info("block rewritten", "series_in", done.SeriesIn, "series_out", done.SeriesOut, "chunks_copied", done.ChunksCopied,
		"chunks_reencoded", done.ChunksRecoded, "chunks_dropped", done.ChunksDropped, "seconds", done.Seconds)
	return done, nil
}

func ulidStrings(ids []ulid.ULID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

// rewriteJob downloads the block's index and writes the new block, streaming the source's chunks
// from the bucket; it returns the new block's directory.
func (r *Runner) rewriteJob(ctx context.Context, j *Job, childID ulid.ULID, log *slog.Logger) (stats, *block.Meta, string, error) {
	work, err := os.MkdirTemp(r.cfg.TmpDir, "lethe-rewrite-"+j.Block.String()+"-")
	if err != nil {
		return stats{}, nil, "", errors.Wrap(err, "create work dir")
	}
	dst := filepath.Join(work, childID.String())
	phase := time.Now()
	segments, err := chunkObjects(ctx, r.bkt, j.Block)
	if err != nil {
		return stats{}, nil, dst, err
	}
	index := filepath.Join(work, j.Block.String()+"-"+block.IndexFilename)
	// The planner's copy, when it downloaded the index whole: blocks do not change. Pass 1's
	// result comes with it when the planner could decide it.
	var found *pass1
	if j.index != "" && os.Rename(j.index, index) == nil {
		found = j.found
	} else if err := block.DownloadIndex(ctx, r.bkt, j.Block, index); err != nil {
		return stats{}, nil, dst, err
	}
	j.index, j.found = "", nil
	src := bucketSource(ctx, r.bkt, index, segments)
	r.atPhase("download")
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
		if e.State(set.At) == tombstones.StateCancelled {
			return stats{}, nil, dst, errors.Wrapf(errCancelled, "tombstone %s", id)
		}
		applied = append(applied, e.Tombstone)
	}
	ix, err := tombstones.NewIndex(applied, r.store.RedactionKey())
	if err != nil {
		return stats{}, nil, dst, err
	}
	d := &deleter{logger: log, limits: r.cfg.Limits, ix: ix, applied: applied, ext: j.meta.ExternalLabels(), resolution: j.Resolution,
		checkpointEvery: r.cfg.CheckpointEvery, found: found}
	prev := resume
	save := func(ctx context.Context, cp *checkpoint) error {
		cp.Source, cp.Block, cp.Tombstones = j.Block, childID, j.Tombstones
		if err := r.saveCheckpoint(ctx, cp, prev, dst); err != nil {
			return err
		}
		prev = cp
		log.Info("checkpoint saved", "series_done", cp.PostingsDone, "series_total", j.Series)
		r.atPhase("checkpoint")
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
	st, cp, err := d.rewriteFrom(ctx, src, dst, resume)
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
	r.atPhase("rewrite")
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
