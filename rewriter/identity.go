package rewriter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/tsdb"

	"github.com/lethe-project/lethe/block"
)

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
