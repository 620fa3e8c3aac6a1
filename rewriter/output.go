package rewriter

import (
	"bufio"
	"encoding/binary"
	stderrors "errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
)

// segmentSize is where a chunk segment file is cut, as Prometheus does.
const segmentSize = chunks.DefaultChunkSegmentSize

// segmentBuffer batches chunk writes into few system calls.
const segmentBuffer = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// output writes a new block's chunk segments, in Prometheus' format, and a log of its series (labels
// and chunk references) from which the index is written at the end. Its layout depends only on
// the chunks written, never on where a run was interrupted: a job resumed from a checkpoint
// writes the same bytes as one that ran through, so two workers on one job upload identical
// objects.
type output struct {
	chunksDir string
	seg       *os.File
	segW      *bufio.Writer
	segSeq    int // 0-based; the file is named seq+1.
	segSize   int64
	log       *os.File
	logSize   int64
	logW      *bufio.Writer
	buf       []byte
	segments  []segmentState
}

// segmentState is a chunk segment as checkpointed.
type segmentState struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// seriesLogName is the series log's name in the work directory and in a checkpoint.
const seriesLogName = "series.log"

// openOutput starts the output (chunk segments in chunksDir, the series log at logPath), or
// continues the one a checkpoint left there: the files are cut back to the checkpointed sizes and
// appended to.
func openOutput(chunksDir, logPath string, resume *checkpoint) (*output, error) {
	o := &output{chunksDir: chunksDir}
	if err := os.MkdirAll(chunksDir, 0o755); err != nil {
		return nil, err
	}
	var err error
	if resume == nil {
		if o.log, err = os.Create(logPath); err != nil {
			return nil, err
		}
		o.logW = bufio.NewWriterSize(o.log, 1<<16)
		return o, nil
	}
	if o.log, err = truncated(logPath, resume.LogSize); err != nil {
		return nil, err
	}
	o.logSize = resume.LogSize
	o.logW = bufio.NewWriterSize(o.log, 1<<16)
	o.segments = append(o.segments, resume.Segments...)
	if n := len(o.segments); n > 0 {
		last := o.segments[n-1]
		if o.seg, err = truncated(filepath.Join(chunksDir, last.Name), last.Size); err != nil {
			return nil, err
		}
		o.segSeq, o.segSize = n-1, last.Size
		o.segW = bufio.NewWriterSize(o.seg, segmentBuffer)
	}
	return o, nil
}

// truncated opens a file for appending after cutting it to size.
func truncated(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return nil, errors.Wrap(err, "open checkpointed file")
	}
	if err := f.Truncate(size); err != nil {
		return nil, errors.Wrap(err, "cut checkpointed file")
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		return nil, err
	}
	return f, nil
}

// cut starts the next segment file.
func (o *output) cut() error {
	if o.seg != nil {
		if err := o.segW.Flush(); err != nil {
			return err
		}
		if err := o.seg.Close(); err != nil {
			return err
		}
		o.segSeq++
	}
	name := fmt.Sprintf("%0.6d", o.segSeq+1)
	f, err := os.Create(filepath.Join(o.chunksDir, name))
	if err != nil {
		return err
	}
	header := make([]byte, chunks.SegmentHeaderSize)
	binary.BigEndian.PutUint32(header, chunks.MagicChunks)
	header[chunks.MagicChunksSize] = 1 // Chunks format v1.
	o.seg, o.segW, o.segSize = f, bufio.NewWriterSize(f, segmentBuffer), int64(len(header))
	if _, err := o.segW.Write(header); err != nil {
		return err
	}
	o.segments = append(o.segments, segmentState{Name: name, Size: o.segSize})
	return nil
}

// writeChunk appends a chunk and returns its reference.
func (o *output) writeChunk(c chunkenc.Chunk) (chunks.ChunkRef, error) {
	data := c.Bytes()
	size := int64(binary.MaxVarintLen32 + chunks.ChunkEncodingSize + len(data) + crc32.Size)
	if o.seg == nil || (o.segSize > chunks.SegmentHeaderSize && o.segSize+size > segmentSize) {
		if err := o.cut(); err != nil {
			return 0, err
		}
	}
	ref := chunks.ChunkRef(chunks.NewBlockChunkRef(uint64(o.segSeq), uint64(o.segSize)))
	o.buf = binary.AppendUvarint(o.buf[:0], uint64(len(data)))
	o.buf = append(o.buf, byte(c.Encoding()))
	o.buf = append(o.buf, data...)
	crc := crc32.Checksum(o.buf[len(o.buf)-len(data)-1:], castagnoli)
	o.buf = binary.BigEndian.AppendUint32(o.buf, crc)
	if _, err := o.segW.Write(o.buf); err != nil {
		return 0, errors.Wrap(err, "write chunk")
	}
	o.segSize += int64(len(o.buf))
	o.segments[len(o.segments)-1].Size = o.segSize
	return ref, nil
}

// logSeries records a series and its chunks for the index.
func (o *output) logSeries(lset labels.Labels, metas []chunks.Meta) error {
	b := binary.AppendUvarint(o.buf[:0], uint64(lset.Len()))
	lset.Range(func(l labels.Label) {
		b = binary.AppendUvarint(b, uint64(len(l.Name)))
		b = append(b, l.Name...)
		b = binary.AppendUvarint(b, uint64(len(l.Value)))
		b = append(b, l.Value...)
	})
	b = binary.AppendUvarint(b, uint64(len(metas)))
	for _, m := range metas {
		b = binary.AppendUvarint(b, uint64(m.Ref))
		b = binary.AppendVarint(b, m.MinTime)
		b = binary.AppendVarint(b, m.MaxTime)
	}
	o.buf = b
	n, err := o.logW.Write(b)
	o.logSize += int64(n)
	return errors.Wrap(err, "write series log")
}

// sync flushes everything to disk, for a checkpoint or the end.
func (o *output) sync() error {
	if err := o.logW.Flush(); err != nil {
		return err
	}
	if err := o.log.Sync(); err != nil {
		return err
	}
	if o.seg != nil {
		if err := o.segW.Flush(); err != nil {
			return err
		}
		return o.seg.Sync()
	}
	return nil
}

func (o *output) close() error {
	err := o.sync()
	if cerr := o.log.Close(); err == nil {
		err = cerr
	}
	if o.seg != nil {
		if cerr := o.seg.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// replaySeries reads the series log back, in the order it was written.
func replaySeries(path string, fn func(lset labels.Labels, metas []chunks.Meta) error) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	r := bufio.NewReaderSize(f, 1<<16)
	var (
		b     labels.ScratchBuilder
		metas []chunks.Meta
		buf   []byte
	)
	// Names and values are read into one buffer and handed to the builder unsafely: Labels()
	// copies them before the buffer is reused.
	readBytes := func(from int) (int, error) {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return 0, err
		}
		if cap(buf) < from+int(n) {
			buf = append(buf[:from], make([]byte, int(n))...)
		}
		buf = buf[:from+int(n)]
		_, err = io.ReadFull(r, buf[from:])
		return from + int(n), err
	}
	var spans [][2]int
	for {
		n, err := binary.ReadUvarint(r)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return errors.Wrap(err, "read series log")
		}
		b.Reset()
		buf, spans = buf[:0], spans[:0]
		end := 0
		for i := uint64(0); i < 2*n; i++ {
			next, err := readBytes(end)
			if err != nil {
				return errors.Wrap(err, "read series log")
			}
			spans = append(spans, [2]int{end, next})
			end = next
		}
		for i := 0; i < len(spans); i += 2 {
			b.Add(unsafeString(buf, spans[i]), unsafeString(buf, spans[i+1]))
		}
		nc, err := binary.ReadUvarint(r)
		if err != nil {
			return errors.Wrap(err, "read series log")
		}
		metas = metas[:0]
		for i := uint64(0); i < nc; i++ {
			ref, err1 := binary.ReadUvarint(r)
			mint, err2 := binary.ReadVarint(r)
			maxt, err3 := binary.ReadVarint(r)
			if err := stderrors.Join(err1, err2, err3); err != nil {
				return errors.Wrap(err, "read series log")
			}
			metas = append(metas, chunks.Meta{Ref: chunks.ChunkRef(ref), MinTime: mint, MaxTime: maxt})
		}
		if err := fn(b.Labels(), metas); err != nil {
			return err
		}
	}
}

// unsafeString views buf[span[0]:span[1]] as a string without copying; the builder copies it in
// Labels(), before buf changes.
func unsafeString(buf []byte, span [2]int) string {
	if span[0] == span[1] {
		return ""
	}
	return unsafe.String(&buf[span[0]], span[1]-span[0])
}
