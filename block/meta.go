// Package block reads Thanos-layout TSDB blocks in an object-storage bucket: meta.json with its
// "thanos" section, Thanos' markers, and block indexes fetched by ranged reads. Thanos' own
// packages pin an older Prometheus, so the small formats are read here, compatible by test with
// blocks the thanos binary writes.
package block

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/thanos-io/objstore"
)

// Object names inside a block folder.
const (
	MetaFilename          = "meta.json"
	IndexFilename         = "index"
	ChunksDirname         = "chunks"
	DeletionMarkFilename  = "deletion-mark.json"
	NoCompactMarkFilename = "no-compact-mark.json"
)

// Meta is a block's meta.json: Prometheus' block meta plus the section Thanos adds.
type Meta struct {
	tsdb.BlockMeta
	// Thanos is nil for a plain Prometheus block.
	Thanos *Thanos `json:"thanos,omitempty"`
	// Lethe is lethe's record on a plain Prometheus block it rewrote (a Thanos block keeps it in
	// thanos.rewrites).
	Lethe *Lethe `json:"lethe,omitempty"`
}

// Lethe is the "lethe" section of a plain Prometheus block's meta.json.
type Lethe struct {
	// TombstonesApplied are the tombstones applied to the block or to the blocks it was
	// rewritten from: their data is gone from it.
	TombstonesApplied []ulid.ULID `json:"tombstones_applied"`
}

// Thanos is the "thanos" section of meta.json. Fields lethe does not interpret are kept verbatim.
type Thanos struct {
	Version    int               `json:"version,omitempty"`
	Labels     map[string]string `json:"labels"`
	Downsample struct {
		Resolution int64 `json:"resolution"`
	} `json:"downsample"`
	Source       string          `json:"source,omitempty"`
	SegmentFiles []string        `json:"segment_files,omitempty"`
	Files        json.RawMessage `json:"files,omitempty"`
	Rewrites     json.RawMessage `json:"rewrites,omitempty"`
	IndexStats   json.RawMessage `json:"index_stats,omitempty"`
	Extensions   json.RawMessage `json:"extensions,omitempty"`
}

// ExternalLabels returns the block's external labels (none for a plain Prometheus block).
func (m *Meta) ExternalLabels() labels.Labels {
	if m.Thanos == nil {
		return labels.EmptyLabels()
	}
	return labels.FromMap(m.Thanos.Labels)
}

// Resolution returns the downsampling resolution in milliseconds; 0 is raw data.
func (m *Meta) Resolution() int64 {
	if m.Thanos == nil {
		return 0
	}
	return m.Thanos.Downsample.Resolution
}

// Overlaps reports whether the block's samples may fall in [mint, maxt] (inclusive); a block's
// own range is [MinTime, MaxTime).
func (m *Meta) Overlaps(mint, maxt int64) bool { return m.MinTime <= maxt && mint < m.MaxTime }

// DecodeMeta decodes meta.json and checks the fields every reader relies on.
func DecodeMeta(b []byte) (*Meta, error) {
	m := &Meta{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, errors.Wrap(err, "decode meta.json")
	}
	if m.Version != 1 {
		return nil, errors.Newf("unsupported meta.json version %d", m.Version)
	}
	if m.ULID == (ulid.ULID{}) {
		return nil, errors.New("meta.json has no ulid")
	}
	if m.MinTime > m.MaxTime {
		return nil, errors.Newf("meta.json of %s: minTime after maxTime", m.ULID)
	}
	return m, nil
}

// EncodeMeta renders meta.json as Thanos writes it.
func EncodeMeta(m *Meta) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "\t")
	if err := enc.Encode(m); err != nil {
		return nil, errors.Wrapf(err, "encode meta.json of %s", m.ULID)
	}
	return buf.Bytes(), nil
}

// ReadMeta downloads and decodes a block's meta.json.
func ReadMeta(ctx context.Context, bkt objstore.BucketReader, id ulid.ULID) (_ *Meta, err error) {
	rc, err := bkt.Get(ctx, path.Join(id.String(), MetaFilename))
	if err != nil {
		return nil, errors.Wrapf(err, "get meta.json of %s", id)
	}
	defer errcapture.Do(&err, rc.Close, "close meta.json of %s", id)
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, errors.Wrapf(err, "read meta.json of %s", id)
	}
	m, err := DecodeMeta(b)
	if err != nil {
		return nil, unreadableMeta{errors.Wrapf(err, "block %s", id)}
	}
	if m.ULID != id {
		return nil, unreadableMeta{errors.Newf("block %s: meta.json names %s", id, m.ULID)}
	}
	return m, nil
}

// ErrUnreadableMeta matches (errors.Is) ReadMeta's error for a meta.json that is in the bucket
// but does not decode or names another block, as opposed to one the bucket failed to send.
var ErrUnreadableMeta = errors.New("unreadable meta.json")

type unreadableMeta struct{ err error }

func (e unreadableMeta) Error() string        { return e.err.Error() }
func (e unreadableMeta) Unwrap() error        { return e.err }
func (e unreadableMeta) Is(target error) bool { return target == ErrUnreadableMeta }

// SplitExternal decides the matchers on a block's external labels, which are labels of each of
// its series and override series labels of the same name (as in Thanos), and returns the others,
// for the block's postings; ok is false if the external labels rule the block out.
func SplitExternal(ms []*labels.Matcher, ext labels.Labels) (rest []*labels.Matcher, ok bool) {
	for _, m := range ms {
		if ext.Has(m.Name) {
			if !m.Matches(ext.Get(m.Name)) {
				return nil, false
			}
			continue
		}
		rest = append(rest, m)
	}
	return rest, true
}
