package block

import (
	"context"
	stderrors "errors"
	"io"
	"os"
	"path"

	"github.com/efficientgo/core/errcapture"
	"github.com/efficientgo/core/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/tsdb/fileutil"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/thanos-io/objstore"
)

// pageSize is the unit of ranged reads of an index. Neighbouring missing pages are fetched in one
// request.
const pageSize = 64 << 10

// maxCachedPages bounds the pages kept: 64 MiB.
const maxCachedPages = 1024

// rangedIndex is an index.ByteSlice over an object, fetched page by page on demand, as Thanos'
// store gateway reads index parts instead of whole indexes. ByteSlice cannot return errors, so the
// first one is kept and the caller must check Err after every use of the reader: until then a
// failed range reads as zeros, which the index decoder rejects.
type rangedIndex struct {
	read func(off, length int) ([]byte, error)
	name string
	size int
	// pages holds at most maxPages pages; the oldest go first, so memory stays bounded however
	// large the index.
	pages    map[int][]byte
	order    []int
	maxPages int
	err      error
	// symbols is the index from its start to the end of the symbol table. Prometheus' symbol
	// lookups ask for the whole object (Range(0, Len())) and then only read the symbol table, so
	// those requests are answered from this copy instead of downloading the whole index.
	symbolsEnd int
	symbols    []byte
	// mapped, for a local file, is the file mapped into memory: the symbol table and the postings
	// offset table (from tablesStart on), which readers read whole, are read from it instead of
	// copied, so that large tables take page cache the kernel can reclaim rather than heap. Series
	// and postings still go through the bounded page cache, so that streaming every series does
	// not leave the whole index resident.
	mapped      []byte
	tablesStart int
	// fetched counts bytes downloaded, for tests and logs.
	fetched int64
}

func (r *rangedIndex) Len() int { return r.size }

func (r *rangedIndex) Range(start, end int) []byte {
	if r.mapped != nil && r.symbolsEnd > 0 && start >= 0 && start <= end && end <= r.size &&
		(end <= r.symbolsEnd || r.tablesStart > 0 && start >= r.tablesStart || start == 0 && end == r.size) {
		return r.mapped[start:end]
	}
	if start == 0 && end == r.size && r.symbolsEnd > 0 {
		if r.symbols == nil {
			r.symbols = r.Range(0, r.symbolsEnd)
		}
		return r.symbols
	}
	if start < 0 || end > r.size || start > end {
		r.setErr(errors.Newf("%s: range [%d, %d) outside object of %d bytes", r.name, start, end, r.size))
		return make([]byte, max(end-start, 0))
	}
	first, last := start/pageSize, (end-1)/pageSize
	if end == start {
		return nil
	}
	r.fetch(first, last)
	defer r.trim(first, last)
	if first == last {
		p := r.pages[first]
		off := first * pageSize
		if p == nil {
			return make([]byte, end-start)
		}
		return p[start-off : end-off]
	}
	out := make([]byte, 0, end-start)
	for pg := first; pg <= last; pg++ {
		p := r.pages[pg]
		off := pg * pageSize
		lo, hi := max(start, off)-off, min(end, off+pageSize)-off
		if p == nil {
			out = append(out, make([]byte, hi-lo)...)
			continue
		}
		out = append(out, p[lo:hi]...)
	}
	return out
}

// trim drops the oldest pages beyond the bound, never those of the range just read.
func (r *rangedIndex) trim(first, last int) {
	if len(r.pages) <= r.maxPages {
		return
	}
	var keep []int
	for len(r.pages) > r.maxPages && len(r.order) > 0 {
		pg := r.order[0]
		r.order = r.order[1:]
		if pg >= first && pg <= last {
			keep = append(keep, pg)
			continue
		}
		delete(r.pages, pg)
	}
	r.order = append(r.order, keep...)
}

// fetch downloads the missing pages in [first, last], a run of neighbours per request.
func (r *rangedIndex) fetch(first, last int) {
	for pg := first; pg <= last; pg++ {
		if _, ok := r.pages[pg]; ok || r.err != nil {
			continue
		}
		runEnd := pg
		for runEnd+1 <= last {
			if _, ok := r.pages[runEnd+1]; ok {
				break
			}
			runEnd++
		}
		off := pg * pageSize
		length := min((runEnd+1)*pageSize, r.size) - off
		b, err := r.read(off, length)
		if err != nil {
			r.setErr(err)
			return
		}
		r.fetched += int64(length)
		for p := pg; p <= runEnd; p++ {
			lo := (p - pg) * pageSize
			r.pages[p] = b[lo:min(lo+pageSize, len(b))]
			r.order = append(r.order, p)
		}
		pg = runEnd
	}
}

// bucketRange reads a range of an object.
func bucketRange(ctx context.Context, bkt objstore.BucketReader, name string) func(off, length int) ([]byte, error) {
	return func(off, length int) (_ []byte, err error) {
		rc, err := bkt.GetRange(ctx, name, int64(off), int64(length))
		if err != nil {
			return nil, errors.Wrapf(err, "get range of %s", name)
		}
		defer errcapture.Do(&err, rc.Close, "close range of %s", name)
		b := make([]byte, length)
		if _, err := io.ReadFull(rc, b); err != nil {
			return nil, errors.Wrapf(err, "read range [%d, %d) of %s", off, off+length, name)
		}
		return b, nil
	}
}

func (r *rangedIndex) setErr(err error) {
	if r.err == nil {
		r.err = err
	}
}

// Index is a block's index read from the bucket by ranged reads.
type Index struct {
	*index.Reader
	src    *rangedIndex
	closer io.Closer
}

// Err returns the first read error. Check it after using the reader: a decoding error that
// follows a read error is a consequence of it.
func (ix *Index) Err() error { return ix.src.err }

// BytesFetched returns how many bytes of the index were downloaded so far.
func (ix *Index) BytesFetched() int64 { return ix.src.fetched }

// OpenIndex opens a block's index for ranged reads. Opening reads the table of contents, the symbol
// table and the postings offset table, as Thanos' index header does; postings and series are read
// when used. The context bounds every later read.
func OpenIndex(ctx context.Context, bkt objstore.BucketReader, id ulid.ULID) (*Index, error) {
	name := path.Join(id.String(), IndexFilename)
	attrs, err := bkt.Attributes(ctx, name)
	if err != nil {
		return nil, errors.Wrapf(err, "block %s: stat index", id)
	}
	ix, err := openRanged(bucketRange(ctx, bkt, name), name, int(attrs.Size), nil, maxCachedPages, nil)
	if err != nil {
		return nil, errors.Wrapf(err, "block %s", id)
	}
	return ix, nil
}

// OpenIndexFile opens a local index file with reads of its pages into a cache of at most
// cacheBytes rather than a memory map, so that streaming a large block does not keep the whole
// index resident.
func OpenIndexFile(path string, cacheBytes int) (*Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.Wrap(err, "open index")
	}
	info, err := f.Stat()
	if err != nil {
		return nil, stderrors.Join(err, f.Close())
	}
	read := func(off, length int) ([]byte, error) {
		b := make([]byte, length)
		if _, err := f.ReadAt(b, int64(off)); err != nil {
			return nil, errors.Wrapf(err, "read range [%d, %d) of %s", off, off+length, path)
		}
		return b, nil
	}
	var (
		mapped []byte
		closer io.Closer = f
	)
	if info.Size() > 0 {
		m, err := fileutil.OpenMmapFileWithSize(path, int(info.Size()))
		if err != nil {
			return nil, stderrors.Join(errors.Wrap(err, "map index"), f.Close())
		}
		mapped, closer = m.Bytes(), closers{f, m}
	}
	ix, err := openRanged(read, path, int(info.Size()), closer, max(cacheBytes/pageSize, 1), mapped)
	if err != nil {
		return nil, stderrors.Join(err, closer.Close())
	}
	return ix, nil
}

// closers closes all of its closers.
type closers []io.Closer

func (cs closers) Close() error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return stderrors.Join(errs...)
}

func openRanged(read func(off, length int) ([]byte, error), name string, size int, closer io.Closer, maxPages int, mapped []byte) (*Index, error) {
	src := &rangedIndex{read: read, name: name, size: size, pages: map[int][]byte{}, maxPages: maxPages, mapped: mapped}
	// Index format v2 (every Prometheus since 2.x) addresses symbols by number, so its symbol
	// lookups never look past the symbol table. Version 1 computes offsets from the object's
	// length and keeps whole-object reads.
	if src.size > 5 && src.Range(4, 5)[0] == index.FormatV2 {
		if toc, err := index.NewTOCFromByteSlice(src); err == nil && toc.Series > toc.Symbols && toc.Series <= uint64(src.size) {
			src.symbolsEnd = int(toc.Series)
			if toc.PostingsTable > toc.Series && toc.PostingsTable < uint64(src.size) {
				src.tablesStart = int(toc.PostingsTable)
			}
		}
	}
	r, err := newReader(src)
	if src.err != nil {
		return nil, errors.Wrap(src.err, "read index")
	}
	if err != nil {
		return nil, errors.Wrap(err, "open index")
	}
	return &Index{Reader: r, src: src, closer: closer}, nil
}

// Close closes the reader and the file under it.
func (ix *Index) Close() error {
	err := ix.Reader.Close()
	if ix.closer != nil {
		err = stderrors.Join(err, ix.closer.Close())
	}
	return err
}

// newReader opens an index reader, turning a decoder panic on corrupt bytes into an error.
func newReader(src *rangedIndex) (r *index.Reader, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = errors.Newf("corrupt index: %v", p)
		}
	}()
	return index.NewReader(src, index.DecodePostingsRaw)
}

// Bytes returns the index's bytes as the reader reads them, for decoding its sections directly.
// Check Err after using them.
func (ix *Index) Bytes() index.ByteSlice { return ix.src }
