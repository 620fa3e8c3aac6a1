package rewriter

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/thanos-io/objstore"

	"github.com/lethe-project/lethe/block"
)

// ChildID derives the new block's ULID from the source and the tombstones applied: the same job
// always yields the same ULID, so a rerun or a second worker overwrites instead of duplicating.
// It has the source's time and never is the source's ULID.
func ChildID(source ulid.ULID, applied []ulid.ULID) ulid.ULID {
	return childID(source, applied, 0)
}

// childID is the new block's ULID of a generation: a job whose first new block was withdrawn (a
// duplicate of another worker's, since marked) takes the next one.
func childID(source ulid.ULID, applied []ulid.ULID, generation int) ulid.ULID {
	h := sha256.New()
	_, _ = h.Write(source[:])
	for _, id := range applied {
		_, _ = h.Write(id[:])
	}
	if generation > 0 {
		_, _ = fmt.Fprintf(h, "generation %d", generation)
	}
	// A ULID is 6 bytes of milliseconds and 10 of entropy; these are the bytes ulid.New would
	// write from the hash, without its error for a short entropy read.
	var id ulid.ULID
	copy(id[:6], source[:6])
	copy(id[6:], h.Sum(nil))
	return id
}

// maxGenerations bounds how many new blocks of one job can be withdrawn before it gives up.
const maxGenerations = 8

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
	// The newest source's milliseconds, and 10 bytes of the hash as the entropy.
	var id ulid.ULID
	if len(sorted) > 0 {
		copy(id[:6], sorted[len(sorted)-1][:6])
	}
	copy(id[6:], h.Sum(nil))
	return append(sorted, id)
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

// errIncomplete is a block some of whose files are missing or of another size than its meta.json
// says.
var errIncomplete = errors.New("block is incomplete")

// complete checks that every file the block's meta.json lists is in the bucket at its size; for a
// plain Prometheus block, which lists none, that its index and first chunk file are. A missing or
// short file is errIncomplete; a failure to ask the bucket is returned as it is.
func complete(ctx context.Context, bkt objstore.BucketReader, m *block.Meta) error {
	type file struct {
		RelPath   string `json:"rel_path"`
		SizeBytes int64  `json:"size_bytes,omitempty"`
	}
	var files []file
	if m.Thanos != nil && len(m.Thanos.Files) > 0 {
		if err := json.Unmarshal(m.Thanos.Files, &files); err != nil {
			return errors.Wrapf(errIncomplete, "block %s: decode thanos.files: %v", m.ULID, err)
		}
	} else {
		files = []file{{RelPath: block.IndexFilename}, {RelPath: path.Join(block.ChunksDirname, "000001")}}
	}
	for _, f := range files {
		if f.RelPath == block.MetaFilename {
			continue
		}
		name := path.Join(m.ULID.String(), f.RelPath)
		a, err := bkt.Attributes(ctx, name)
		if bkt.IsObjNotFoundErr(errors.Cause(err)) {
			return errors.Wrapf(errIncomplete, "block %s: %s is missing", m.ULID, f.RelPath)
		}
		if err != nil {
			return errors.Wrapf(err, "block %s: attributes of %s", m.ULID, f.RelPath)
		}
		if f.SizeBytes > 0 && a.Size != f.SizeBytes {
			return errors.Wrapf(errIncomplete, "block %s: %s holds %d bytes, its meta.json says %d", m.ULID, f.RelPath, a.Size, f.SizeBytes)
		}
	}
	return nil
}

// childFor returns the job's new block: the first generation not withdrawn.
func (r *Runner) childFor(ctx context.Context, j *Job) (ulid.ULID, error) {
	for g := 0; g < maxGenerations; g++ {
		id := childID(j.Block, j.Tombstones, g)
		marked, err := r.bkt.Exists(ctx, path.Join(id.String(), block.DeletionMarkFilename))
		if err != nil {
			return ulid.ULID{}, errors.Wrapf(err, "check deletion mark of new block %s", id)
		}
		if !marked {
			return id, nil
		}
	}
	return ulid.ULID{}, errors.Newf("block %s: %d new blocks of this job were withdrawn", j.Block, maxGenerations)
}

// uploaded reports whether the new block is in the bucket whole: meta.json and every file it
// lists. A half upload is uploaded again.
func (r *Runner) uploaded(ctx context.Context, id ulid.ULID) (bool, error) {
	m, err := block.ReadMeta(ctx, r.bkt, id)
	if r.bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return false, nil
	}
	if err != nil {
		// A meta.json cut short by a crash while it was written: the upload record says the
		// upload never finished, and it is uploaded again.
		if !errors.Is(err, block.ErrUnreadableMeta) {
			return false, err
		}
		if partial, perr := r.bkt.Exists(ctx, uploadRecord(id)); perr == nil && partial {
			r.logger.Warn("new block's meta.json unreadable beside its upload record; uploading it again", "new_block", id.String(), "err", err)
			return false, nil
		}
		return false, err
	}
	if err := complete(ctx, r.bkt, m); err != nil {
		if !errors.Is(err, errIncomplete) {
			return false, err
		}
		r.logger.Warn("new block found incomplete", "new_block", id.String(), "err", err)
		return false, nil
	}
	return true, nil
}

// rewrittenFrom reports whether lethe wrote the block from source alone.
func rewrittenFrom(m *block.Meta, source ulid.ULID) bool {
	if len(m.Compaction.Parents) != 1 || m.Compaction.Parents[0].ULID != source {
		return false
	}
	if m.Lethe != nil {
		return true
	}
	if m.Thanos == nil || len(m.Thanos.Rewrites) == 0 {
		return false
	}
	var rewrites []rewriteEntry
	if err := json.Unmarshal(m.Thanos.Rewrites, &rewrites); err != nil || len(rewrites) == 0 {
		return false
	}
	return slices.Contains(rewrites[len(rewrites)-1].Sources, source)
}
