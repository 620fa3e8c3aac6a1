package rewriter

import (
	"bufio"
	"context"
	"encoding/binary"
	stderrors "errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/encoding"
	"github.com/prometheus/prometheus/tsdb/index"

	"github.com/lethe-project/lethe/block"
)

// The new block's index is written by indexWriter, in Prometheus' index format v2 and byte for
// byte as Prometheus' index.Writer writes it for the same series (a test holds it to that), but
// from what the source index already knows instead of from scratch:
//
//   - the symbol table is the source's without the removable symbols, so a kept symbol's new
//     number is its source number less the removed numbers below it, and a series entry is
//     written from the source's symbol numbers without looking up any string;
//   - a postings list is the source's, without the series that left, renumbered; a (name, value)
//     that no surviving series has leaves the postings offset table.
//
// It holds one postings list at a time and the renumbering table, 8 bytes per surviving series.
// Prometheus' writer holds a whole label name's postings and maps the file it writes, so its
// memory grows with the block.

// source is the source block's index as the writer reads it: its bytes, table of contents and
// symbol table.
type source struct {
	ix      *block.Index
	bs      index.ByteSlice
	toc     *index.TOC
	symbols *index.Symbols
	// count is the number of symbols.
	count int
	// names and values cache the last strings decoded at each label position: neighbouring
	// series (the index is sorted) share most of them.
	names, values []cachedSymbol
}

type cachedSymbol struct {
	ref uint32
	s   string
	ok  bool
}

func newSource(ix *block.Index) (*source, error) {
	if v := ix.Version(); v != index.FormatV2 {
		return nil, errors.Newf("index format v%d is not supported (Prometheus writes v2 since 2.1): compact the block with a newer Prometheus or Thanos first", v)
	}
	bs := ix.Bytes()
	toc, err := index.NewTOCFromByteSlice(bs)
	if err != nil {
		return nil, errors.Wrap(err, "read table of contents")
	}
	syms, err := index.NewSymbols(bs, index.FormatV2, int(toc.Symbols))
	if err != nil {
		return nil, errors.Wrap(err, "read symbols")
	}
	count := int(binary.BigEndian.Uint32(bs.Range(int(toc.Symbols)+4, int(toc.Symbols)+8)))
	if err := ix.Err(); err != nil {
		return nil, errors.Wrap(err, "read index")
	}
	return &source{ix: ix, bs: bs, toc: toc, symbols: syms, count: count}, nil
}

// series decodes a series entry: its labels into builder (unless it is nil: most series are
// written without their label strings being looked up), its chunks into chks and the symbol
// numbers of its label names and values, in label order, into refs.
func (s *source) series(id storage.SeriesRef, builder *labels.ScratchBuilder, chks *[]chunks.Meta, refs *[]uint32) error {
	d := encoding.NewDecbufUvarintAt(s.bs, int(id)*16, castagnoli)
	if d.Err() != nil {
		return errors.Wrapf(d.Err(), "series %d", id)
	}
	if builder != nil {
		builder.Reset()
	}
	*chks, *refs = (*chks)[:0], (*refs)[:0]
	k := d.Uvarint()
	for i := 0; i < k; i++ {
		nr, vr := uint32(d.Uvarint()), uint32(d.Uvarint())
		if d.Err() != nil {
			return errors.Wrapf(d.Err(), "series %d: labels", id)
		}
		if builder == nil {
			if nr >= uint32(s.count) || vr >= uint32(s.count) {
				return errors.Newf("series %d: symbol %d or %d outside the table of %d", id, nr, vr, s.count)
			}
			*refs = append(*refs, nr, vr)
			continue
		}
		if len(s.names) <= i {
			s.names, s.values = append(s.names, cachedSymbol{}), append(s.values, cachedSymbol{})
		}
		n, err := s.lookup(&s.names[i], nr)
		if err != nil {
			return errors.Wrapf(err, "series %d: label name", id)
		}
		v, err := s.lookup(&s.values[i], vr)
		if err != nil {
			return errors.Wrapf(err, "series %d: label value", id)
		}
		builder.Add(n, v)
		*refs = append(*refs, nr, vr)
	}
	k = d.Uvarint()
	if k == 0 {
		return errors.Wrapf(d.Err(), "series %d", id)
	}
	t0 := d.Varint64()
	maxt := int64(d.Uvarint64()) + t0
	ref := int64(d.Uvarint64())
	*chks = append(*chks, chunks.Meta{Ref: chunks.ChunkRef(ref), MinTime: t0, MaxTime: maxt})
	for i := 1; i < k; i++ {
		mint := int64(d.Uvarint64()) + maxt
		maxt = int64(d.Uvarint64()) + mint
		ref += d.Varint64()
		*chks = append(*chks, chunks.Meta{Ref: chunks.ChunkRef(ref), MinTime: mint, MaxTime: maxt})
	}
	if d.Err() != nil {
		// Checked first: the arguments of a wrap that returns nil cost an allocation per series.
		return errors.Wrapf(d.Err(), "series %d: chunks", id)
	}
	return nil
}

// name names the series id in errors by its metric name only (redactedLabels), or by its number
// if its entry does not decode.
func (s *source) name(id storage.SeriesRef) string {
	var (
		builder labels.ScratchBuilder
		chks    []chunks.Meta
		refs    []uint32
	)
	if err := s.series(id, &builder, &chks, &refs); err != nil {
		return fmt.Sprintf("number %d", id)
	}
	return redactedLabels(builder.Labels())
}

func (s *source) lookup(c *cachedSymbol, ref uint32) (string, error) {
	if c.ok && c.ref == ref {
		return c.s, nil
	}
	str, err := s.symbols.Lookup(ref)
	if err != nil {
		return "", err
	}
	*c = cachedSymbol{ref: ref, s: str, ok: true}
	return str, nil
}

// indexWriter writes the new index. Sections are written in Prometheus' order: symbols, series,
// postings, postings offset table, table of contents; the label indices Prometheus no longer
// writes are empty, as in its own indexes.
type indexWriter struct {
	path string
	f    *os.File
	w    *bufio.Writer
	pos  uint64
	toc  index.TOC
	buf  []byte
	// removed are the source's symbol numbers the new symbol table leaves out, ascending.
	removed []uint32
	// seriesAdded counts the series added by this writer (not those of a resumed index).
	seriesAdded int
}

const indexBuffer = 1 << 20

// postingsPiece is how many series of a postings list are encoded at once.
const postingsPiece = 1024

// createIndex starts the new index at path: its header and symbol table, the source's symbols
// but the removable ones. Series follow with addSeries.
func createIndex(path string, src *source, removable map[string]struct{}) (*indexWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, errors.Wrap(err, "create index")
	}
	iw := &indexWriter{path: path, f: f, w: bufio.NewWriterSize(f, indexBuffer)}
	if err := iw.writeSymbols(src, removable); err != nil {
		return nil, stderrors.Join(err, f.Close())
	}
	return iw, nil
}

func (iw *indexWriter) writeSymbols(src *source, removable map[string]struct{}) error {
	iw.buf = binary.BigEndian.AppendUint32(iw.buf[:0], index.MagicIndex)
	iw.buf = append(iw.buf, index.FormatV2)
	if err := iw.write(iw.buf); err != nil {
		return err
	}
	iw.toc.Symbols = iw.pos
	// Every removable string is a symbol of the source (a label of a dropped series), so the
	// count is known before the symbols are written, and so is the checksum's first word.
	count := src.count - len(removable)
	iw.buf = binary.BigEndian.AppendUint32(iw.buf[:0], 0) // Length, known at the end.
	iw.buf = binary.BigEndian.AppendUint32(iw.buf, uint32(count))
	crc := crc32.New(castagnoli)
	_, _ = crc.Write(iw.buf[4:])
	if err := iw.write(iw.buf); err != nil {
		return err
	}
	it := src.symbols.Iter()
	written := 0
	for ref := uint32(0); it.Next(); ref++ {
		if _, ok := removable[it.At()]; ok {
			iw.removed = append(iw.removed, ref)
			continue
		}
		iw.buf = binary.AppendUvarint(iw.buf[:0], uint64(len(it.At())))
		iw.buf = append(iw.buf, it.At()...)
		_, _ = crc.Write(iw.buf)
		if err := iw.write(iw.buf); err != nil {
			return err
		}
		written++
	}
	if err := it.Err(); err != nil {
		return errors.Wrap(err, "read source symbols")
	}
	if written != count {
		return errors.Newf("wrote %d symbols, expected %d: a removable string is not a symbol of the source", written, count)
	}
	if err := iw.endTable(iw.toc.Symbols, crc, index.ErrSymbolTableTooLarge); err != nil {
		return err
	}
	iw.toc.Series = iw.pos
	return nil
}

// resumeIndex goes on with an index a checkpoint left at size bytes: header, symbols and the
// series written so far.
func resumeIndex(path string, size int64, src *source, removable map[string]struct{}) (*indexWriter, error) {
	f, err := truncated(path, size)
	if err != nil {
		return nil, err
	}
	iw := &indexWriter{path: path, f: f, w: bufio.NewWriterSize(f, indexBuffer), pos: uint64(size)}
	var head [4]byte
	if _, err := f.ReadAt(head[:], 5); err != nil {
		return nil, stderrors.Join(errors.Wrap(err, "read checkpointed index"), f.Close())
	}
	iw.toc.Symbols = 5
	iw.toc.Series = 5 + 4 + uint64(binary.BigEndian.Uint32(head[:])) + 4
	it := src.symbols.Iter()
	for ref := uint32(0); it.Next(); ref++ {
		if _, ok := removable[it.At()]; ok {
			iw.removed = append(iw.removed, ref)
		}
	}
	if err := it.Err(); err != nil {
		return nil, stderrors.Join(errors.Wrap(err, "read source symbols"), f.Close())
	}
	if iw.toc.Series > iw.pos {
		return nil, stderrors.Join(errors.Newf("checkpointed index of %d bytes ends in its symbol table", size), f.Close())
	}
	return iw, nil
}

// symbol is the new number of the source's symbol ref.
func (iw *indexWriter) symbol(ref uint32) uint32 {
	return ref - uint32(sort.Search(len(iw.removed), func(i int) bool { return iw.removed[i] >= ref }))
}

// addSeries writes a series entry: the label symbols as the source numbers them (refs, as
// source.series returns them) and the chunks. Series must come in the source's order.
func (iw *indexWriter) addSeries(refs []uint32, metas []chunks.Meta) error {
	// What Prometheus' writer checks of the chunks: the entry encodes their gaps unsigned.
	for i, c := range metas {
		if c.MaxTime < c.MinTime {
			return errors.Newf("chunk %d ends at %d before it starts at %d", i, c.MaxTime, c.MinTime)
		}
		if i > 0 && (c.MinTime <= metas[i-1].MaxTime || c.Ref < metas[i-1].Ref) {
			return errors.Newf("chunk %d [%d, %d] ref %d does not follow chunk %d [%d, %d] ref %d", i, c.MinTime, c.MaxTime, c.Ref, i-1, metas[i-1].MinTime, metas[i-1].MaxTime, metas[i-1].Ref)
		}
	}
	if pad := iw.pos % 16; pad != 0 {
		if err := iw.write(make([]byte, 16-pad)); err != nil {
			return err
		}
	}
	body := binary.AppendUvarint(iw.buf[:0], uint64(len(refs)/2))
	for _, r := range refs {
		body = binary.AppendUvarint(body, uint64(iw.symbol(r)))
	}
	body = binary.AppendUvarint(body, uint64(len(metas)))
	for i, c := range metas {
		if i == 0 {
			body = binary.AppendVarint(body, c.MinTime)
			body = binary.AppendUvarint(body, uint64(c.MaxTime-c.MinTime))
			body = binary.AppendUvarint(body, uint64(c.Ref))
			continue
		}
		prev := metas[i-1]
		body = binary.AppendUvarint(body, uint64(c.MinTime-prev.MaxTime))
		body = binary.AppendUvarint(body, uint64(c.MaxTime-c.MinTime))
		body = binary.AppendVarint(body, int64(c.Ref)-int64(prev.Ref))
	}
	// The entry is its length, the body and the body's checksum; the body moves up to make room.
	n := len(body)
	var lenBuf [binary.MaxVarintLen32]byte
	l := binary.PutUvarint(lenBuf[:], uint64(n))
	body = append(body, lenBuf[:l]...)
	copy(body[l:], body[:n])
	copy(body, lenBuf[:l])
	body = binary.BigEndian.AppendUint32(body, crc32.Checksum(body[l:l+n], castagnoli))
	iw.buf = body
	iw.seriesAdded++
	return iw.write(body)
}

// size is how much of the index is written; flush hands it to the file system, for a checkpoint
// (not fsynced, as output.flush says why).
func (iw *indexWriter) size() int64 { return int64(iw.pos) }

func (iw *indexWriter) flush() error {
	return errors.Wrap(iw.w.Flush(), "write index")
}

// finish writes the postings, the postings offset table and the table of contents. survivors
// yields the source ids of the series written, in order.
func (iw *indexWriter) finish(ctx context.Context, src *source, survivors index.Postings) (err error) {
	defer func() {
		if cerr := iw.f.Close(); err == nil {
			err = errors.Wrap(cerr, "close index")
		}
	}()
	if err := iw.w.Flush(); err != nil {
		return errors.Wrap(err, "write index")
	}
	renumber, err := iw.renumbering(survivors)
	if err != nil {
		return err
	}
	iw.toc.LabelIndices, iw.toc.Postings = iw.pos, iw.pos

	// The offset table is collected in a temporary file, beside the block's directory rather than
	// in it: it follows the postings.
	tmp, err := os.CreateTemp(filepath.Dir(filepath.Dir(iw.path)), "index-postings-offsets-")
	if err != nil {
		return errors.Wrap(err, "create postings offset table file")
	}
	defer func() {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
	}()
	offsets := bufio.NewWriterSize(tmp, 1<<16)
	var (
		entries uint32
		list    []uint32
		scratch []byte
	)
	writePostings := func(name, value []byte, refs []uint32) error {
		if pad := iw.pos % 4; pad != 0 {
			if err := iw.write(make([]byte, 4-pad)); err != nil {
				return err
			}
		}
		scratch = binary.AppendUvarint(scratch[:0], 2)
		scratch = binary.AppendUvarint(scratch, uint64(len(name)))
		scratch = append(scratch, name...)
		scratch = binary.AppendUvarint(scratch, uint64(len(value)))
		scratch = append(scratch, value...)
		scratch = binary.AppendUvarint(scratch, iw.pos)
		if _, err := offsets.Write(scratch); err != nil {
			return errors.Wrap(err, "write postings offset table file")
		}
		entries++
		if 4+4*uint64(len(refs)) > math.MaxUint32 {
			return errors.Newf("postings list of %d series too large", len(refs))
		}
		// Written a piece at a time: the longest list (every series) needs no buffer of its size.
		b := binary.BigEndian.AppendUint32(iw.buf[:0], uint32(4+4*len(refs)))
		b = binary.BigEndian.AppendUint32(b, uint32(len(refs)))
		crc := crc32.Checksum(b[4:], castagnoli)
		for len(refs) > 0 {
			if err := iw.write(b); err != nil {
				return err
			}
			piece := refs[:min(len(refs), postingsPiece)]
			refs = refs[len(piece):]
			b = b[:0]
			for _, r := range piece {
				b = binary.BigEndian.AppendUint32(b, r)
			}
			crc = crc32.Update(crc, castagnoli, b)
		}
		b = binary.BigEndian.AppendUint32(b, crc)
		iw.buf = b
		return iw.write(b)
	}
	if err := writePostings(nil, nil, renumber.to); err != nil {
		return err
	}
	err = index.ReadPostingsOffsetTable(src.bs, src.toc.PostingsTable, func(name, value []byte, off uint64, _ int) error {
		if len(name) == 0 && len(value) == 0 {
			return nil // The all-postings list, written above.
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		d := encoding.NewDecbufAt(src.bs, int(off), castagnoli)
		n := d.Be32int()
		list = list[:0]
		cursor := 0
		for i := 0; i < n && d.Err() == nil; i++ {
			if id, ok := renumber.find(d.Be32(), &cursor); ok {
				list = append(list, id)
			}
		}
		if d.Err() != nil {
			return errors.Wrapf(d.Err(), "read source postings at %d", off)
		}
		if len(list) == 0 {
			return nil
		}
		return writePostings(name, value, list)
	})
	if err != nil {
		return errors.Wrap(err, "write postings")
	}
	if err := src.ix.Err(); err != nil {
		return errors.Wrap(err, "read source index")
	}
	if err := offsets.Flush(); err != nil {
		return errors.Wrap(err, "write postings offset table file")
	}

	// The postings offset table: length, count, the entries, their checksum.
	iw.toc.LabelIndicesTable, iw.toc.PostingsTable = iw.pos, iw.pos
	iw.buf = binary.BigEndian.AppendUint32(iw.buf[:0], 0)
	iw.buf = binary.BigEndian.AppendUint32(iw.buf, entries)
	crc := crc32.New(castagnoli)
	_, _ = crc.Write(iw.buf[4:])
	if err := iw.write(iw.buf); err != nil {
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return errors.Wrap(err, "read postings offset table file")
	}
	n, err := io.Copy(io.MultiWriter(iw.w, crc), tmp)
	if err != nil {
		return errors.Wrap(err, "copy postings offset table")
	}
	iw.pos += uint64(n)
	if err := iw.endTable(iw.toc.PostingsTable, crc, index.ErrPostingsOffsetTableTooLarge); err != nil {
		return err
	}

	// The table of contents.
	b := iw.buf[:0]
	for _, off := range []uint64{iw.toc.Symbols, iw.toc.Series, iw.toc.LabelIndices, iw.toc.LabelIndicesTable, iw.toc.Postings, iw.toc.PostingsTable} {
		b = binary.BigEndian.AppendUint64(b, off)
	}
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	if err := iw.write(b); err != nil {
		return err
	}
	return iw.flush()
}

// renumbering maps the source ids of the surviving series (from) to their ids in the new index
// (to), both ascending.
type renumbering struct{ from, to []uint32 }

// find returns the new id of the source series id, if it survived. Postings lists are ascending,
// so the search starts at cursor and moves it on: a long list costs a merge, a short one a few
// binary searches.
func (r renumbering) find(id uint32, cursor *int) (uint32, bool) {
	lo, step := *cursor, 1
	hi := lo
	for hi < len(r.from) && r.from[hi] < id {
		lo = hi + 1
		hi += step
		step *= 2
	}
	hi = min(hi, len(r.from))
	i := lo + sort.Search(hi-lo, func(k int) bool { return r.from[lo+k] >= id })
	*cursor = i
	if i < len(r.from) && r.from[i] == id {
		return r.to[i], true
	}
	return 0, false
}

// renumbering pairs the surviving source ids with the entries of the series section written.
func (iw *indexWriter) renumbering(survivors index.Postings) (renumbering, error) {
	r := renumbering{from: make([]uint32, 0, iw.seriesAdded)}
	for survivors.Next() {
		r.from = append(r.from, uint32(survivors.At()))
	}
	if err := survivors.Err(); err != nil {
		return r, errors.Wrap(err, "surviving series")
	}
	f, err := os.Open(iw.path)
	if err != nil {
		return r, err
	}
	defer f.Close()
	rd := bufio.NewReaderSize(io.NewSectionReader(f, int64(iw.toc.Series), int64(iw.pos-iw.toc.Series)), 1<<16)
	r.to = make([]uint32, 0, len(r.from))
	for pos := iw.toc.Series; pos < iw.pos; {
		if pad := pos % 16; pad != 0 {
			if _, err := rd.Discard(int(16 - pad)); err != nil {
				return r, errors.Wrap(err, "read series section")
			}
			pos += 16 - pad
		}
		n, err := binary.ReadUvarint(rd)
		if err != nil {
			return r, errors.Wrap(err, "read series section")
		}
		if _, err := rd.Discard(int(n) + crc32.Size); err != nil {
			return r, errors.Wrap(err, "read series section")
		}
		r.to = append(r.to, uint32(pos/16))
		pos += uint64(uvarintSize(n)) + n + crc32.Size
	}
	if len(r.to) != len(r.from) {
		return r, errors.Newf("index holds %d series, %d survived", len(r.to), len(r.from))
	}
	return r, nil
}

func (iw *indexWriter) write(b []byte) error {
	n, err := iw.w.Write(b)
	iw.pos += uint64(n)
	return errors.Wrap(err, "write index")
}

// endTable ends the table that starts at start: its length (the bytes after the length field)
// goes into that field, and the checksum of its contents after them.
func (iw *indexWriter) endTable(start uint64, crc hash.Hash32, tooLarge error) error {
	size := iw.pos - start - 4
	if size > math.MaxUint32 {
		return errors.Wrapf(tooLarge, "%d bytes", size)
	}
	if err := iw.patch(start, uint32(size)); err != nil {
		return err
	}
	return iw.write(crc.Sum(iw.buf[:0]))
}

// patch writes a 4-byte length at off, behind the buffer.
func (iw *indexWriter) patch(off uint64, v uint32) error {
	if err := iw.w.Flush(); err != nil {
		return errors.Wrap(err, "write index")
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	_, err := iw.f.WriteAt(b[:], int64(off))
	return errors.Wrap(err, "write index")
}

// close gives up an unfinished index.
func (iw *indexWriter) close() error { return iw.f.Close() }
