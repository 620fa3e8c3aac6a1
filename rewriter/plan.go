// Package rewriter removes tombstoned samples from the bucket's blocks for good: a planner cuts
// the work into one job per affected block, and a deleter streams each block in batches of series
// at a bounded rate, writes it again without the deleted samples, uploads it and marks the old one
// for deletion.
package rewriter

import (
	"context"
	"encoding/json"
	stderrors "errors"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/block/chunkcut"
	"github.com/lethe-project/lethe/tombstones"
)

// Decisions of the planner.
const (
	DecisionRewrite = "rewrite"
	DecisionSkip    = "skip"
)

// Job is the work on one block: apply every due tombstone that covers some of its data, at once.
type Job struct {
	Block      ulid.ULID `json:"block"`
	MinTime    int64     `json:"min_time"`
	MaxTime    int64     `json:"max_time"`
	Resolution int64     `json:"resolution"`
	// Tombstones are the due tombstones with data in the block, sorted.
	Tombstones []ulid.ULID `json:"tombstones"`
	// Series is the job's size: the series the rewrite streams.
	Series uint64 `json:"series"`
	// SeriesAffected have samples under a tombstone.
	SeriesAffected int `json:"series_affected"`
	// DeletedShare estimates the samples under tombstones over all samples, from chunk metadata.
	DeletedShare float64 `json:"deleted_share"`
	// Overdue is set when a tombstone's deadline has passed.
	Overdue  bool   `json:"overdue"`
	Decision string `json:"decision"`
	Reason   string `json:"reason"`

	meta *block.Meta
	// index, when set, is a local copy of the block's index that the planner downloaded whole;
	// the rewrite takes it rather than downloading it again, and with it found, when set: pass
	// 1's result, which the planner could decide from chunk metadata.
	index string
	found *pass1
}

// Plan is what a run would do.
type Plan struct {
	Jobs []*Job `json:"jobs"`
	// Problems are blocks that could not be planned (unreadable index, partial upload).
	Problems []string `json:"problems"`
	// Due are the tombstones the plan applies.
	Due []ulid.ULID `json:"due"`

	// seen are the live blocks the plan looked at.
	seen map[ulid.ULID]bool
}

// Planner plans jobs from the bucket's blocks and tombstones.
type Planner struct {
	bkt       objstore.BucketReader
	logger    *slog.Logger
	threshold float64
	key       *tombstones.RedactionKey
	// indexDir, when set, is where the planner downloads whole the indexes of the blocks whose
	// tombstones select many series (wholeIndexPays), for their jobs to reuse.
	indexDir string
}

// NewPlanner returns a planner; threshold is the deleted share from which a block is rewritten
// before any deadline (Prometheus' 5% is 0.05).
func NewPlanner(bkt objstore.BucketReader, logger *slog.Logger, threshold float64, key *tombstones.RedactionKey) *Planner {
	return &Planner{bkt: bkt, logger: logger, threshold: threshold, key: key}
}

// Plan reads every block's meta.json and the index of each block that a due tombstone may cover.
func (p *Planner) Plan(ctx context.Context, set *tombstones.Set) (*Plan, error) {
	return p.plan(ctx, set, func(*block.Meta) bool { return true })
}

// plan plans the live blocks that keep accepts.
func (p *Planner) plan(ctx context.Context, set *tombstones.Set, keep func(*block.Meta) bool) (*Plan, error) {
	plan := &Plan{Jobs: []*Job{}, Problems: []string{}, Due: []ulid.ULID{}, seen: map[ulid.ULID]bool{}}
	var due []*tombstones.Tombstone
	overdue := map[ulid.ULID]bool{}
	for _, e := range set.Entries {
		if e.State(set.At) == tombstones.StateDue {
			due = append(due, e.Tombstone)
			plan.Due = append(plan.Due, e.ID)
			overdue[e.ID] = e.Overdue(set.At)
		}
	}
	if len(due) == 0 {
		return plan, nil
	}
	ix, err := tombstones.NewIndex(due, p.key)
	if err != nil {
		return nil, err
	}
	listing, err := block.List(ctx, p.bkt)
	if err != nil {
		return nil, err
	}
	for _, pr := range listing.Problems {
		// A new block whose upload record is still there is a partial upload (its meta.json cut
		// short by a crash): the run's clean-up removes it, or its job uploads it again.
		if errors.Is(pr.Err, block.ErrUnreadableMeta) {
			partial, err := p.bkt.Exists(ctx, uploadRecord(pr.Block))
			if err != nil {
				return nil, errors.Wrapf(err, "check upload record of %s", pr.Block)
			}
			if partial {
				continue
			}
		}
		plan.Problems = append(plan.Problems, pr.Err.Error())
	}
	for _, meta := range listing.Blocks {
		if !keep(meta) {
			continue
		}
		plan.seen[meta.ULID] = true
		applied, err := appliedTo(meta)
		if err != nil {
			// Planning it anyway is safe: a rewrite that deletes nothing more only costs time.
			p.logger.Warn("cannot read which tombstones were applied to the block", "block", meta.ULID.String(), "err", err)
		}
		cands := slices.DeleteFunc(candidates(due, meta, ix), func(t *tombstones.Tombstone) bool { return applied[t.ID] })
		if len(cands) == 0 {
			continue
		}
		job, err := p.planBlock(ctx, meta, cands, ix)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			plan.Problems = append(plan.Problems, err.Error())
			p.logger.Warn("cannot plan block", "block", meta.ULID.String(), "err", err)
			continue
		}
		if job == nil {
			continue
		}
		for _, id := range job.Tombstones {
			job.Overdue = job.Overdue || overdue[id]
		}
		switch {
		case job.Overdue:
			job.Decision, job.Reason = DecisionRewrite, "a tombstone's deadline has passed"
		case job.DeletedShare >= p.threshold:
			job.Decision, job.Reason = DecisionRewrite, "deleted share reaches the threshold"
		default:
			job.Decision, job.Reason = DecisionSkip, "deleted share below the threshold and no deadline passed"
		}
		if job.Decision == DecisionSkip {
			job.dropIndex(p.logger)
		}
		plan.Jobs = append(plan.Jobs, job)
	}
	return plan, nil
}

// dropIndex removes the job's local copy of its index, if it has one.
func (j *Job) dropIndex(logger *slog.Logger) {
	if j.index == "" {
		return
	}
	if err := os.Remove(j.index); err != nil {
		logger.Warn("remove the planner's copy of the index", "block", j.Block.String(), "err", err)
	}
	j.index, j.found = "", nil
}

// appliedTo returns the tombstones lethe applied to the block or to the blocks it was rewritten
// from, as its thanos.rewrites records them (or, for a plain Prometheus block, its lethe
// section). Their data is gone from the block even where chunk metadata suggests otherwise: a
// chunk a deletion cut in the middle keeps its time range across the hole, and would be planned
// again at every run.
func appliedTo(meta *block.Meta) (map[ulid.ULID]bool, error) {
	if meta.Lethe != nil {
		applied := map[ulid.ULID]bool{}
		for _, id := range meta.Lethe.TombstonesApplied {
			applied[id] = true
		}
		return applied, nil
	}
	if meta.Thanos == nil || len(meta.Thanos.Rewrites) == 0 {
		return nil, nil
	}
	var rewrites []rewriteEntry
	if err := json.Unmarshal(meta.Thanos.Rewrites, &rewrites); err != nil {
		return nil, errors.Wrap(err, "decode thanos.rewrites")
	}
	applied := map[ulid.ULID]bool{}
	for _, rw := range rewrites {
		for _, d := range rw.DeletionsApplied {
			if id, ok := strings.CutPrefix(d.RequestID, appliedRequestPrefix); ok {
				u, err := ulid.Parse(id)
				if err != nil {
					return nil, errors.Wrapf(err, "thanos.rewrites request id %q", d.RequestID)
				}
				applied[u] = true
			}
		}
	}
	return applied, nil
}

// candidates are the due tombstones whose time range meets the block and whose selectors the
// block's external labels do not rule out.
func candidates(due []*tombstones.Tombstone, meta *block.Meta, ix *tombstones.Index) []*tombstones.Tombstone {
	ext := meta.ExternalLabels()
	var out []*tombstones.Tombstone
	for _, t := range due {
		if !t.Overlaps(meta.MinTime, meta.MaxTime-1) {
			continue
		}
		for _, sel := range t.Selectors() {
			if extAllows(t, sel, ext, ix) {
				out = append(out, t)
				break
			}
		}
	}
	return out
}

func extAllows(t *tombstones.Tombstone, sel []*labels.Matcher, ext labels.Labels, ix *tombstones.Index) bool {
	for _, m := range sel {
		if ext.Has(m.Name) && !ix.MatcherMatches(t, m, ext.Get(m.Name)) {
			return false
		}
	}
	return true
}

// postingMatchers are the matchers of a selector that the block's postings can answer: not those
// on external labels (decided by meta.json) and not redacted ones (digests, checked per series).
func postingMatchers(t *tombstones.Tombstone, sel []*labels.Matcher, ext labels.Labels) []*labels.Matcher {
	var out []*labels.Matcher
	for _, m := range sel {
		if ext.Has(m.Name) || (t.Redacted() && m.Type == labels.MatchEqual && m.Name != model.MetricNameLabel && m.Value != "") {
			continue
		}
		out = append(out, m)
	}
	return out
}

// selectPostings returns the postings of every series that any candidate selector may match.
func selectPostings(ctx context.Context, ir tsdb.IndexReader, cands []*tombstones.Tombstone, ext labels.Labels) (index.Postings, error) {
	var its []index.Postings
	for _, t := range cands {
		for _, sel := range t.Selectors() {
			ms := postingMatchers(t, sel, ext)
			if len(ms) == 0 {
				k, v := index.AllPostingsKey()
				p, err := ir.Postings(ctx, k, v)
				if err != nil {
					return nil, err
				}
				its = append(its, p)
				continue
			}
			p, err := tsdb.PostingsForMatchers(ctx, ir, ms...)
			if err != nil {
				return nil, err
			}
			its = append(its, p)
		}
	}
	return index.Merge(ctx, its...), nil
}

// wholeIndexPays reports whether the series the tombstones select are enough of the block's for
// the planner to download its index whole: a page of a ranged read holds about a thousand series
// entries, so from one selected series in a few hundred on, ranged reads fetch nearly every page
// of the series, in as many requests, where one download fetches them all, and the rewrite needs
// the whole index anyway.
func wholeIndexPays(selected int, series uint64) bool {
	return selected > 0 && uint64(selected)*256 >= series
}

// downloadIndex downloads a block's index into indexDir and opens it.
func (p *Planner) downloadIndex(ctx context.Context, id ulid.ULID) (*block.Index, string, error) {
	path := filepath.Join(p.indexDir, id.String()+"-"+block.IndexFilename)
	if err := block.DownloadIndex(ctx, p.bkt, id, path); err != nil {
		return nil, "", err
	}
	ir, err := block.OpenIndexFile(path, 1<<20)
	if err != nil {
		return nil, "", stderrors.Join(err, os.Remove(path))
	}
	return ir, path, nil
}

func (p *Planner) planBlock(ctx context.Context, meta *block.Meta, cands []*tombstones.Tombstone, ix *tombstones.Index) (_ *Job, err error) {
	ir, err := block.OpenIndex(ctx, p.bkt, meta.ULID)
	if err != nil {
		return nil, err
	}
	var local string
	defer func() { errcapture.Do(&err, ir.Close, "close index of %s", meta.ULID) }()
	defer func() {
		if r := recover(); r != nil {
			err = errors.Newf("block %s: corrupt index: %v", meta.ULID, r)
		}
		if ir.Err() != nil {
			err = errors.Wrapf(ir.Err(), "block %s", meta.ULID)
		}
		if err != nil && local != "" {
			_ = os.Remove(local)
		}
	}()
	ext := meta.ExternalLabels()
	postings, err := selectPostings(ctx, ir.Reader, cands, ext)
	if err != nil {
		return nil, errors.Wrapf(err, "block %s: postings", meta.ULID)
	}
	if p.indexDir != "" {
		refs, err := index.ExpandPostings(postings)
		if err != nil {
			return nil, errors.Wrapf(err, "block %s: postings", meta.ULID)
		}
		if ir.Err() != nil {
			// Checked before the ranged reader goes: a failed read decodes as zeros.
			return nil, errors.Wrapf(ir.Err(), "block %s", meta.ULID)
		}
		postings = index.NewListPostings(refs)
		if wholeIndexPays(len(refs), meta.Stats.NumSeries) {
			// The series are read from a local copy, which the rewrite then takes: plan and
			// rewrite share one download of the index.
			whole, path, derr := p.downloadIndex(ctx, meta.ULID)
			switch {
			case derr != nil:
				p.logger.Warn("cannot download the index whole; reading it by ranges", "block", meta.ULID.String(), "err", derr)
			default:
				if cerr := ir.Close(); cerr != nil {
					p.logger.Warn("close index", "block", meta.ULID.String(), "err", cerr)
				}
				ir, local = whole, path
			}
		}
	}
	perChunk := 0.0
	if meta.Stats.NumChunks > 0 {
		perChunk = float64(meta.Stats.NumSamples) / float64(meta.Stats.NumChunks)
	}
	var (
		builder labels.ScratchBuilder
		chks    []chunks.Meta
		ivs     tombstones.Intervals
		deleted float64
		hit     = map[ulid.ULID]struct{}{}
		job     = &Job{Block: meta.ULID, MinTime: meta.MinTime, MaxTime: meta.MaxTime, Resolution: meta.Resolution(), Series: meta.Stats.NumSeries, meta: meta}
		// found is pass 1's result for the job, while chunk metadata decides it: in a raw block
		// whose index is local, so that the job takes it with the index.
		found *pass1
	)
	if local != "" && meta.Resolution() == 0 {
		found = &pass1{dropped: map[storage.SeriesRef]struct{}{}, affected: &affectedSeries{}}
	}
	for postings.Next() {
		if err := ir.Series(storage.SeriesRef(postings.At()), &builder, &chks); err != nil {
			return nil, errors.Wrapf(err, "block %s: series", meta.ULID)
		}
		lset := builder.Labels()
		ivs = ix.Intervals(lset, ext, ivs[:0])
		var share float64
		for _, c := range chks {
			share += coveredFraction(ivs, chunkcut.WindowStart(c.MinTime, meta.Resolution()), c.MaxTime)
		}
		if share == 0 {
			continue
		}
		job.SeriesAffected++
		deleted += share * perChunk
		if found != nil {
			switch survives, decided := survivesByMeta(chks, ivs); {
			case !decided:
				found = nil
			case survives:
				found.affected.add(postings.At(), ivs)
			default:
				found.dropped[postings.At()] = struct{}{}
			}
		}
		ix.Matching(lset, ext, func(t *tombstones.Tombstone) {
			if t.Overlaps(meta.MinTime, meta.MaxTime-1) {
				hit[t.ID] = struct{}{}
			}
		})
	}
	if err := postings.Err(); err != nil {
		return nil, errors.Wrapf(err, "block %s: postings", meta.ULID)
	}
	if job.SeriesAffected == 0 {
		if local != "" {
			return nil, os.Remove(local)
		}
		return nil, nil
	}
	job.index, job.found = local, found
	for id := range hit {
		job.Tombstones = append(job.Tombstones, id)
		if !slices.ContainsFunc(cands, func(t *tombstones.Tombstone) bool { return t.ID == id }) {
			// A tombstone the candidates' postings did not look for (one applied before): pass 1
			// visits series the planner did not.
			found = nil
		}
	}
	slices.SortFunc(job.Tombstones, func(a, b ulid.ULID) int { return a.Compare(b) })
	if meta.Stats.NumSamples > 0 {
		job.DeletedShare = min(deleted/float64(meta.Stats.NumSamples), 1)
	}
	return job, nil
}

// coveredFraction estimates the share of a chunk's samples in [mint, maxt] that the intervals
// cover, assuming samples spread evenly over the chunk's time range.
func coveredFraction(ivs tombstones.Intervals, mint, maxt int64) float64 {
	if len(ivs) == 0 {
		return 0
	}
	span := float64(maxt-mint) + 1
	var covered float64
	for _, iv := range ivs {
		lo, hi := max(iv.Mint, mint), min(iv.Maxt, maxt)
		if lo <= hi {
			covered += float64(hi-lo) + 1
		}
	}
	return math.Min(covered/span, 1)
}
