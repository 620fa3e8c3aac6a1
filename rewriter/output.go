package rewriter

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
)

// segmentSize is where a chunk segment file is cut, as Prometheus does.
const segmentSize = chunks.DefaultChunkSegmentSize

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// output writes a new block's chunk segments, in Prometheus' format. Its layout depends only on
// the chunks written, never on where a run was interrupted: a job resumed from a checkpoint
// writes the same bytes as one that ran through, so two workers on one job upload identical
// objects.
type output struct {
	chunksDir string
	seg       *os.File
	segW      *writeBehind
	segSeq    int // 0-based; the file is named seq+1.
	segSize   int64
	buf       []byte
	segments  []segmentState
}

// segmentState is a chunk segment as checkpointed.
type segmentState struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// openOutput starts the chunk segments in chunksDir, or continues those a checkpoint left there:
// the last one is cut back to its checkpointed size and appended to.
func openOutput(chunksDir string, resume *checkpoint) (*output, error) {
	o := &output{chunksDir: chunksDir}
	if err := os.MkdirAll(chunksDir, 0o755); err != nil {
		return nil, err
	}
	if resume == nil {
		return o, nil
	}
	o.segments = append(o.segments, resume.Segments...)
	if n := len(o.segments); n > 0 {
		last := o.segments[n-1]
		var err error
		if o.seg, err = truncated(filepath.Join(chunksDir, last.Name), last.Size); err != nil {
			return nil, err
		}
		o.segSeq, o.segSize = n-1, last.Size
		o.segW = newWriteBehind(o.seg)
	}
	return o, nil
}

// truncated opens a file for appending after cutting it to size.
func truncated(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return nil, errors.Wrap(err, "open checkpointed file")
	}
	// A file shorter than its checkpoint says (another worker's upload of the same job raced
	// this checkpoint's) must not be padded with zeros.
	if info, err := f.Stat(); err != nil || info.Size() < size {
		_ = f.Close()
		if err == nil {
			err = errors.Newf("%s holds %d bytes, its checkpoint %d", path, info.Size(), size)
		}
		return nil, errors.Wrap(err, "checkpointed file")
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
		if err := o.segW.Close(); err != nil {
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
	o.seg, o.segW, o.segSize = f, newWriteBehind(f), int64(len(header))
	if _, err := o.segW.Write(header); err != nil {
		return err
	}
	o.segments = append(o.segments, segmentState{Name: name, Size: o.segSize})
	return nil
}

// writeChunk appends a chunk and returns its reference.
func (o *output) writeChunk(c chunkenc.Chunk) (chunks.ChunkRef, error) {
	return o.writeChunkBytes(c.Encoding(), c.Bytes(), chunkCRC(c.Encoding(), c.Bytes()))
}

// chunkCRC is the checksum of a chunk of encoding enc and data data, as its segment stores it.
func chunkCRC(enc chunkenc.Encoding, data []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, []byte{byte(enc)}), castagnoli, data)
}

// writeChunkCRC appends a chunk whose checksum (of its encoding byte and data) is known: a chunk
// copied from the source, whose checksum was checked when it was read, is written without
// computing it again.
func (o *output) writeChunkCRC(c chunkenc.Chunk, crc uint32) (chunks.ChunkRef, error) {
	return o.writeChunkBytes(c.Encoding(), c.Bytes(), crc)
}

// writeRecord appends a chunk as a segment stores it (length, encoding, data, checksum): one
// copied from the source, of dataLen bytes of data. It goes where writeChunkBytes would put the
// same chunk, as the same bytes.
func (o *output) writeRecord(rec []byte, dataLen int) (chunks.ChunkRef, error) {
	ref, err := o.place(dataLen)
	if err != nil {
		return 0, err
	}
	if _, err := o.segW.Write(rec); err != nil {
		return 0, errors.Wrap(err, "write chunk")
	}
	o.segSize += int64(len(rec))
	o.segments[len(o.segments)-1].Size = o.segSize
	return ref, nil
}

// place returns where the next chunk, of dataLen bytes of data, goes: in this segment, or at the
// start of a new one when it could make this one longer than segmentSize.
func (o *output) place(dataLen int) (chunks.ChunkRef, error) {
	size := int64(binary.MaxVarintLen32 + chunks.ChunkEncodingSize + dataLen + crc32.Size)
	if o.seg == nil || (o.segSize > chunks.SegmentHeaderSize && o.segSize+size > segmentSize) {
		if err := o.cut(); err != nil {
			return 0, err
		}
	}
	return chunks.ChunkRef(chunks.NewBlockChunkRef(uint64(o.segSeq), uint64(o.segSize))), nil
}

// writeChunkBytes appends the chunk of encoding enc and data data, whose checksum is crc.
func (o *output) writeChunkBytes(enc chunkenc.Encoding, data []byte, crc uint32) (chunks.ChunkRef, error) {
	ref, err := o.place(len(data))
	if err != nil {
		return 0, err
	}
	o.buf = binary.AppendUvarint(o.buf[:0], uint64(len(data)))
	o.buf = append(o.buf, byte(enc))
	head := len(o.buf)
	o.buf = binary.BigEndian.AppendUint32(o.buf, crc)
	// Header, data and checksum straight into the segment's buffer: the data is not copied twice.
	if _, err := o.segW.Write(o.buf[:head]); err != nil {
		return 0, errors.Wrap(err, "write chunk")
	}
	if _, err := o.segW.Write(data); err != nil {
		return 0, errors.Wrap(err, "write chunk")
	}
	if _, err := o.segW.Write(o.buf[head:]); err != nil {
		return 0, errors.Wrap(err, "write chunk")
	}
	o.segSize += int64(len(o.buf) + len(data))
	o.segments[len(o.segments)-1].Size = o.segSize
	return ref, nil
}

// flush hands everything written to the file system, for a checkpoint or the end. Nothing is
// fsynced: the files are uploaded right after, and only the bucket's copy is ever resumed from or
// served, so a machine crash loses nothing a rerun needs (and fsync on ext4 would also wait for
// other processes' dirty data).
func (o *output) flush() error {
	if o.seg != nil {
		return o.segW.Flush()
	}
	return nil
}

func (o *output) close() error {
	var err error
	if o.seg != nil {
		err = o.segW.Close()
		if cerr := o.seg.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
