package block

import (
	"context"
	"fmt"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"
)

// Count is how many series of one block a set of selectors matches.
type Count struct {
	Meta *Meta
	// Matched series have at least one chunk in the time range.
	Matched int
	// Total is the block's series count from meta.json.
	Total uint64
	// BytesFetched is how much of the index was downloaded.
	BytesFetched int64
}

// CountSeries counts the series of a block that any of the selectors matches and that have data in
// [mint, maxt] (inclusive). As in Thanos, a block's external labels are labels of each of its
// series and override series labels of the same name: matchers on them are decided by the block's
// meta.json alone, the others by the block's postings.
func CountSeries(ctx context.Context, bkt objstore.BucketReader, meta *Meta, selectors [][]*labels.Matcher, mint, maxt int64) (c Count, err error) {
	c = Count{Meta: meta, Total: meta.Stats.NumSeries}
	ext := meta.ExternalLabels()

	var lists [][]*labels.Matcher
	for _, sel := range selectors {
		if rest, ok := SplitExternal(sel, ext); ok {
			lists = append(lists, rest)
		}
	}
	if len(lists) == 0 || !meta.Overlaps(mint, maxt) {
		return c, nil
	}

	ix, err := OpenIndex(ctx, bkt, meta.ULID)
	if err != nil {
		return c, err
	}
	defer errcapture.Do(&err, ix.Close, "close index of %s", meta.ULID)
	defer func() {
		c.BytesFetched = ix.BytesFetched()
		// A read error explains whatever decoding error followed it.
		if ix.Err() != nil {
			err = errors.Wrapf(ix.Err(), "block %s", meta.ULID)
		}
	}()
	defer recoverCorrupt(&err, meta)

	its := make([]index.Postings, 0, len(lists))
	for _, ms := range lists {
		if len(ms) == 0 {
			k, v := index.AllPostingsKey()
			p, err := ix.Postings(ctx, k, v)
			if err != nil {
				return c, errors.Wrapf(err, "block %s: all postings", meta.ULID)
			}
			its = append(its, p)
			continue
		}
		p, err := tsdb.PostingsForMatchers(ctx, ix.Reader, ms...)
		if err != nil {
			return c, errors.Wrapf(err, "block %s: postings", meta.ULID)
		}
		its = append(its, p)
	}
	p := index.Merge(ctx, its...)
	var (
		builder labels.ScratchBuilder
		chks    []chunks.Meta
	)
	for p.Next() {
		if err := ix.Series(storage.SeriesRef(p.At()), &builder, &chks); err != nil {
			return c, errors.Wrapf(err, "block %s: series", meta.ULID)
		}
		for _, chk := range chks {
			if chk.MinTime <= maxt && mint <= chk.MaxTime {
				c.Matched++
				break
			}
		}
	}
	if err := p.Err(); err != nil {
		return c, errors.Wrapf(err, "block %s: postings", meta.ULID)
	}
	return c, nil
}

// recoverCorrupt turns a panic of Prometheus' index decoder on corrupt bytes into an error.
func recoverCorrupt(err *error, meta *Meta) {
	if r := recover(); r != nil {
		*err = errors.Newf("block %s: corrupt index: %v", meta.ULID, fmt.Sprint(r))
	}
}

// Matches is what selectors match across a bucket's live blocks.
type Matches struct {
	// Series is the sum over blocks of matched series; a series stored in several blocks counts once
	// per block.
	Series int
	// Blocks is how many blocks hold matched series; BlocksRead how many indexes were opened.
	Blocks, BlocksRead int
	BytesFetched       int64
	// Problems are blocks that could not be read; their series are not counted.
	Problems []Problem
}

// CountMatches counts, block by block, the series that any selector matches with samples in
// [mint, maxt]. Only blocks overlapping the range are read, and of those only the index parts
// needed. Unreadable blocks are reported in Problems, not as an error.
func CountMatches(ctx context.Context, bkt objstore.BucketReader, selectors [][]*labels.Matcher, mint, maxt int64) (Matches, error) {
	l, err := List(ctx, bkt)
	if err != nil {
		return Matches{}, err
	}
	res := Matches{Problems: l.Problems}
	for _, meta := range l.Blocks {
		if !meta.Overlaps(mint, maxt) {
			continue
		}
		c, err := CountSeries(ctx, bkt, meta, selectors, mint, maxt)
		res.BytesFetched += c.BytesFetched
		if c.BytesFetched > 0 {
			res.BlocksRead++
		}
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.Problems = append(res.Problems, Problem{Block: meta.ULID, Err: err})
			continue
		}
		if c.Matched > 0 {
			res.Series += c.Matched
			res.Blocks++
		}
	}
	return res, nil
}
